#include "fedge/agent/runtime/scheduler.h"

#include <prometheus/gauge.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/log.h"

namespace fedge::agent {

// One submitted request. `kind`, `task`, `texts`, `gone` and `precheck` are
// fixed at submission; the rest is guarded by the scheduler's mu_, except
// `result`, which only the scheduler thread writes while the item is kRunning
// and only the submitter reads once it is kDone.
struct RequestScheduler::Item {
  enum class Kind { kEncode, kExclusive, kGenerate };
  // kQueued: in queue_. kRunning: in a pass another request's thread leads.
  // kLead: its own thread runs the pass (`batch`, itself first). kDone:
  // `status` (and `result`) are final.
  enum class State { kQueued, kRunning, kLead, kDone };

  Kind kind = Kind::kEncode;
  EncodeTask task = EncodeTask::kClassify;
  const std::vector<std::string>* texts = nullptr;
  GoneFn gone;
  Precheck precheck;

  State state = State::kQueued;
  Status status;
  EncodeResult result;
  std::vector<std::shared_ptr<Item>> batch;  // kLead: the pass to run (written before kLead is set)

  // kGenerate. `job` is fixed at submission. `pending_text` (guarded by mu_)
  // is relayed from the decode loop to the submitter; `cancel` is set by the
  // submitter and read by the loop; `generated` is written by the loop before
  // kDone and read by the submitter after.
  const GenerationJob* job = nullptr;
  std::vector<std::string> pending_text;  // deltas in order, each relayed as its own call
  std::atomic<bool> cancel{false};
  llm::GenerationResult generated;
};

struct RequestScheduler::BatchOutcome {
  std::vector<std::shared_ptr<Item>> running;   // joined the pass
  std::vector<std::shared_ptr<Item>> deferred;  // over the token budget: back to the queue's front
  std::vector<std::pair<std::shared_ptr<Item>, Status>> refused;
  bool entered = false;  // the model was reached
  int inputs = 0;
};

namespace {

bool Gone(const RequestScheduler::GoneFn& gone) { return gone && gone(); }

Status ClientGone() {
  return CancelledError(
      "the client closed its connection while the request waited in the queue; it did not run");
}

}  // namespace

Status ValidateSchedulerOptions(const SchedulerOptions& o) {
  if (o.max_batch_size < 1) {
    return InvalidArgumentError("--max-batch-size must be at least 1 (1 turns batching off), got " +
                                std::to_string(o.max_batch_size));
  }
  if (o.max_batch_tokens < 1) {
    return InvalidArgumentError("--max-batch-tokens must be at least 1, got " +
                                std::to_string(o.max_batch_tokens));
  }
  if (o.max_queued_requests < 1) {
    return InvalidArgumentError("--max-queued-requests must be at least 1, got " +
                                std::to_string(o.max_queued_requests));
  }
  if (o.gather_window.count() < 0) {
    return InvalidArgumentError("--batch-gather-window-us must not be negative, got " +
                                std::to_string(o.gather_window.count()));
  }
  if (o.max_decode_batch < 1) {
    return InvalidArgumentError(
        "--max-decode-batch must be at least 1 (1: one sequence per decode step), got " +
        std::to_string(o.max_decode_batch));
  }
  if (o.poll_interval.count() < 1)
    return InvalidArgumentError("the scheduler's poll interval must be >= 1 ms");
  return OkStatus();
}

RequestScheduler::RequestScheduler(ServingModel* model, SchedulerOptions options, AgentMetrics* metrics)
    : model_(model), options_(options), metrics_(metrics) {
  thread_ = std::thread([this] { Run(); });
}

RequestScheduler::~RequestScheduler() { Stop(); }

void RequestScheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      stopping_ = true;
      for (auto& item : queue_) {
        item->state = Item::State::kDone;
        item->status = UnavailableError("the agent is shutting down; the request did not run");
      }
      queue_.clear();
      SetQueueGauge();
    }
  }
  work_cv_.notify_all();
  done_cv_.notify_all();
  {
    std::lock_guard<std::mutex> join(join_mu_);
    if (thread_.joinable()) thread_.join();
    // No loop starts after thread_ ended; the running ones see stopping_.
    std::vector<std::thread> loops;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& t : decode_threads_) loops.push_back(std::move(t.thread));
    }
    for (auto& t : loops) {
      if (t.joinable()) t.join();
    }
  }
  // Passes run on their leaders' threads and touch this object until they end.
  std::unique_lock<std::mutex> lock(mu_);
  work_cv_.wait(lock, [this] { return passes_in_flight_ == 0; });
}

size_t RequestScheduler::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

int RequestScheduler::retry_after_seconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  double passes = std::ceil(static_cast<double>(queue_.size() + 1) / std::max(1, last_batch_requests_));
  double seconds = std::ceil(passes * pass_seconds_);
  return static_cast<int>(std::clamp(seconds, 1.0, 60.0));
}

void RequestScheduler::SetQueueGauge() {
  if (metrics_ != nullptr) metrics_->inference_requests_waiting.Set(static_cast<double>(queue_.size()));
}

Status RequestScheduler::Submit(const std::shared_ptr<Item>& item) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return UnavailableError("the agent is shutting down");
  if (queue_.size() >= options_.max_queued_requests) {
    return ResourceExhaustedError("the inference queue is full: " + std::to_string(queue_.size()) +
                                  " requests are waiting for the model (--max-queued-requests " +
                                  std::to_string(options_.max_queued_requests) +
                                  "); retry after the number of seconds in the Retry-After header");
  }
  queue_.push_back(item);
  SetQueueGauge();
  work_cv_.notify_one();
  return OkStatus();
}

Status RequestScheduler::Wait(const std::shared_ptr<Item>& item) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (item->state == Item::State::kDone) return item->status;
    if (item->state == Item::State::kLead) return OkStatus();
    if (item->state == Item::State::kQueued && Gone(item->gone)) {
      queue_.erase(std::find(queue_.begin(), queue_.end(), item));
      SetQueueGauge();
      item->state = Item::State::kDone;
      item->status = ClientGone();
      work_cv_.notify_all();  // a gather window may be counting it
      return item->status;
    }
    if (item->gone) {
      done_cv_.wait_for(lock, options_.poll_interval);
    } else {
      done_cv_.wait(lock);
    }
  }
}

bool RequestScheduler::Leads(const std::shared_ptr<Item>& item) {
  std::lock_guard<std::mutex> lock(mu_);
  return item->state == Item::State::kLead;
}

void RequestScheduler::Finish(const std::shared_ptr<Item>& item, Status st) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    item->state = Item::State::kDone;
    item->status = std::move(st);
  }
  done_cv_.notify_all();
}

StatusOr<EncodeResult> RequestScheduler::Encode(EncodeTask task, const std::vector<std::string>& texts,
                                                const GoneFn& gone, const Precheck& precheck) {
  if (texts.empty()) return InvalidArgumentError("no inputs");
  auto item = std::make_shared<Item>();
  item->kind = Item::Kind::kEncode;
  item->task = task;
  item->texts = &texts;
  item->gone = gone;
  item->precheck = precheck;
  FEDGE_RETURN_IF_ERROR(Submit(item));
  FEDGE_RETURN_IF_ERROR(Wait(item));
  // Done in another request's pass, or this thread leads the pass (it
  // finishes every request of it, this one too).
  if (Leads(item)) RunBatch(item->batch);
  std::lock_guard<std::mutex> lock(mu_);
  if (!item->status.ok()) return item->status;
  return std::move(item->result);
}

Status RequestScheduler::RunExclusive(const ExclusiveFn& fn, const GoneFn& gone) {
  auto item = std::make_shared<Item>();
  item->kind = Item::Kind::kExclusive;
  item->gone = gone;
  FEDGE_RETURN_IF_ERROR(Submit(item));
  FEDGE_RETURN_IF_ERROR(Wait(item));
  if (!Leads(item)) return InternalError("an exclusive request finished without its turn");
  const auto start = std::chrono::steady_clock::now();
  Status st = model_->Use(fn);
  Finish(item, OkStatus());
  PassEnded(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1);
  return st;
}

void RequestScheduler::PassEnded(double seconds, int requests) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --passes_in_flight_;
    if (requests > 0) {
      last_batch_requests_ = requests;
      pass_seconds_ = 0.8 * pass_seconds_ + 0.2 * seconds;
    }
  }
  work_cv_.notify_all();
}

bool RequestScheduler::ModelFree() const {
  return passes_in_flight_ == 0 || model_->version() != busy_version_;
}

void RequestScheduler::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    // While a pass runs, a new global may be published on another instance:
    // then the next pass need not wait (requests that started on the old
    // instance finish there). Installs do not notify: re-checked every 5 ms.
    while (!stopping_ && (queue_.empty() || !ModelFree())) {
      if (queue_.empty()) {
        work_cv_.wait(lock);
      } else {
        work_cv_.wait_for(lock, std::chrono::milliseconds(5));
      }
    }
    if (stopping_) return;
    if (queue_.front()->kind == Item::Kind::kGenerate) {
      // A decode loop takes the generation requests off the queue itself.
      size_t slot = 0;
      while (slot < decode_threads_.size() && !decode_threads_[slot].ended) ++slot;
      if (slot == decode_threads_.size()) {
        decode_threads_.emplace_back();
      } else if (decode_threads_[slot].thread.joinable()) {
        decode_threads_[slot].thread.join();  // ended: it no longer needs mu_
      }
      decode_threads_[slot].ended = false;
      ++passes_in_flight_;
      busy_version_ = model_->version();
      decode_threads_[slot].thread = std::thread([this, slot] { DecodeLoop(slot); });
      continue;
    }
    std::vector<std::shared_ptr<Item>> work;
    if (!TakeWork(lock, &work)) continue;
    std::shared_ptr<Item> lead = work.front();
    lead->batch = std::move(work);
    lead->state = Item::State::kLead;
    ++passes_in_flight_;
    busy_version_ = model_->version();
    done_cv_.notify_all();
  }
}

bool RequestScheduler::TakeWork(std::unique_lock<std::mutex>& lock,
                                std::vector<std::shared_ptr<Item>>* work) {
  // Requests and inputs of the queued requests that could join a batch led by the head.
  auto batchable = [this](int* requests) {
    const auto& head = queue_.front();
    int inputs = 0;
    *requests = 0;
    for (const auto& item : queue_) {
      if (item->kind != Item::Kind::kEncode || item->task != head->task) continue;
      ++*requests;
      inputs += static_cast<int>(item->texts->size());
    }
    return inputs;
  };
  if (queue_.front()->kind == Item::Kind::kExclusive) {
    work->push_back(queue_.front());
    queue_.pop_front();
    work->front()->state = Item::State::kRunning;
    SetQueueGauge();
    return true;
  }
  // The gather window: only when the previous pass served several requests.
  if (options_.max_batch_size > 1 && last_batch_requests_ > 1 && options_.gather_window.count() > 0) {
    const int expected = last_batch_requests_;
    const auto deadline = std::chrono::steady_clock::now() + options_.gather_window;
    work_cv_.wait_until(lock, deadline, [&] {
      if (stopping_ || queue_.empty() || queue_.front()->kind != Item::Kind::kEncode) return true;
      int requests = 0;
      int inputs = batchable(&requests);
      return requests >= expected || inputs >= options_.max_batch_size;
    });
    if (stopping_ || queue_.empty() || queue_.front()->kind != Item::Kind::kEncode) return false;
  }
  TakeEncodeBatch(/*any_position=*/false, work);
  return !work->empty();
}

void RequestScheduler::TakeEncodeBatch(bool any_position, std::vector<std::shared_ptr<Item>>* work) {
  // The first encoder request and the requests of its task behind it, in
  // order, up to the input limit (the first always). Tokens are checked with
  // the model held.
  auto first = queue_.begin();
  if (any_position) {
    while (first != queue_.end() && (*first)->kind != Item::Kind::kEncode) ++first;
  }
  if (first == queue_.end() || (*first)->kind != Item::Kind::kEncode) return;
  const EncodeTask task = (*first)->task;
  int inputs = 0;
  for (auto it = first; it != queue_.end();) {
    const auto& item = *it;
    if (item->kind != Item::Kind::kEncode || item->task != task) {
      ++it;
      continue;
    }
    int n = static_cast<int>(item->texts->size());
    if (!work->empty() && inputs + n > options_.max_batch_size) break;
    inputs += n;
    item->state = Item::State::kRunning;
    work->push_back(item);
    it = queue_.erase(it);
    if (inputs >= options_.max_batch_size) break;
  }
  SetQueueGauge();
}

void RequestScheduler::RunBatch(const std::vector<std::shared_ptr<Item>>& batch) {
  const auto start = std::chrono::steady_clock::now();
  BatchOutcome out;
  Status st = model_->Use([&](TrainableModel& model, int64_t version) -> Status {
    return RunBatchOn(model, version, batch, &out);
  });
  CompleteBatch(batch, st, out);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  PassEnded(seconds, out.entered ? static_cast<int>(out.running.size()) : 0);
}

Status RequestScheduler::RunBatchOn(TrainableModel& model, int64_t version,
                                    const std::vector<std::shared_ptr<Item>>& batch, BatchOutcome* out) {
  out->entered = true;
  auto& running = out->running;
  auto& deferred = out->deferred;
  auto& refused = out->refused;
  int& inputs = out->inputs;
  const EncodeTask task = batch.front()->task;
  int longest = 0;
  for (auto& item : batch) {
    if (!deferred.empty()) {  // keep arrival order behind the first deferred one
      deferred.push_back(item);
      continue;
    }
    if (Gone(item->gone)) {
      refused.emplace_back(item, ClientGone());
      continue;
    }
    if (item->precheck) {
      Status pre = item->precheck(model);
      if (!pre.ok()) {
        refused.emplace_back(item, std::move(pre));
        continue;
      }
    }
    const auto& texts = *item->texts;
    std::vector<int> counts;
    counts.reserve(texts.size());
    Status too_long;
    for (size_t i = 0; i < texts.size() && too_long.ok(); ++i) {
      int n = model.CountTokens(texts[i]);
      if (n > options_.max_input_tokens) {
        too_long = OutOfRangeError("input " + std::to_string(i) + " has " + std::to_string(n) +
                                   " tokens; this model accepts at most " +
                                   std::to_string(options_.max_input_tokens));
      }
      counts.push_back(n);
    }
    if (!too_long.ok()) {
      refused.emplace_back(item, std::move(too_long));
      continue;
    }
    const int item_longest = *std::max_element(counts.begin(), counts.end());
    const int next_inputs = inputs + static_cast<int>(texts.size());
    const int next_longest = std::max(longest, item_longest);
    if (!running.empty() && static_cast<int64_t>(next_inputs) * next_longest > options_.max_batch_tokens) {
      deferred.push_back(item);
      continue;
    }
    item->result.token_counts = std::move(counts);
    item->result.version = version;
    running.push_back(item);
    inputs = next_inputs;
    longest = next_longest;
  }
  if (running.empty()) return OkStatus();
  std::vector<std::string> texts;
  texts.reserve(static_cast<size_t>(inputs));
  for (const auto& item : running) texts.insert(texts.end(), item->texts->begin(), item->texts->end());
  size_t produced = 0;
  if (task == EncodeTask::kClassify) {
    FEDGE_ASSIGN_OR_RETURN(std::vector<Prediction> predictions, ClassifyWith(model, texts));
    produced = predictions.size();
    if (produced == texts.size()) {
      size_t at = 0;
      for (const auto& item : running) {
        auto first = predictions.begin() + static_cast<std::ptrdiff_t>(at);
        at += item->texts->size();
        item->result.predictions.assign(
            std::make_move_iterator(first),
            std::make_move_iterator(predictions.begin() + static_cast<std::ptrdiff_t>(at)));
      }
    }
  } else {
    FEDGE_ASSIGN_OR_RETURN(std::vector<std::vector<float>> vectors, EmbedWith(model, texts));
    produced = vectors.size();
    if (produced == texts.size()) {
      size_t at = 0;
      for (const auto& item : running) {
        auto first = vectors.begin() + static_cast<std::ptrdiff_t>(at);
        at += item->texts->size();
        item->result.embeddings.assign(
            std::make_move_iterator(first),
            std::make_move_iterator(vectors.begin() + static_cast<std::ptrdiff_t>(at)));
      }
    }
  }
  if (produced != texts.size()) {
    return InternalError("model returned " + std::to_string(produced) + " results for " +
                         std::to_string(texts.size()) + " inputs");
  }
  return OkStatus();
}

void RequestScheduler::CompleteBatch(const std::vector<std::shared_ptr<Item>>& batch, const Status& st,
                                     BatchOutcome& out) {
  for (auto& [item, why] : out.refused) Finish(item, std::move(why));
  if (!out.entered) {
    // Nothing installed yet (or the model could not be reached): every request gets it.
    for (const auto& item : batch) Finish(item, st);
    return;
  }
  const int requests = static_cast<int>(out.running.size());
  for (auto& item : out.running) {
    item->result.batch_requests = requests;
    item->result.batch_inputs = out.inputs;
    Finish(item, st);
  }
  if (metrics_ != nullptr && requests > 0) metrics_->ObserveBatch(requests, out.inputs);
  if (!out.deferred.empty()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = out.deferred.rbegin(); it != out.deferred.rend(); ++it) {
        if (stopping_) {
          (*it)->state = Item::State::kDone;
          (*it)->status = UnavailableError("the agent is shutting down; the request did not run");
          continue;
        }
        (*it)->state = Item::State::kQueued;
        queue_.push_front(*it);
      }
      SetQueueGauge();
    }
    done_cv_.notify_all();
  }
}

StatusOr<llm::GenerationResult> RequestScheduler::Generate(const GenerationJob& job, const GoneFn& gone) {
  auto item = std::make_shared<Item>();
  item->kind = Item::Kind::kGenerate;
  item->job = &job;
  item->gone = gone;
  FEDGE_RETURN_IF_ERROR(Submit(item));
  const bool poll = gone != nullptr || job.cancelled != nullptr;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (!item->pending_text.empty()) {
      std::vector<std::string> deltas;
      deltas.swap(item->pending_text);
      lock.unlock();
      bool stop = false;
      for (const std::string& delta : deltas) {
        // One call per delta (a stream sends token by token, as it did before
        // the decode loop). A delta may show the client gone (a failed write):
        // checked before the next one, as the one-sequence loop checked before
        // each step.
        if (job.on_text) job.on_text(delta);
        if (!stop && !item->cancel.load()) stop = Gone(gone) || (job.cancelled && job.cancelled());
      }
      lock.lock();
      if (stop) item->cancel.store(true);
      continue;
    }
    if (item->state == Item::State::kDone) {
      if (!item->status.ok()) return item->status;
      return std::move(item->generated);
    }
    if (item->state == Item::State::kQueued && Gone(gone)) {
      queue_.erase(std::find(queue_.begin(), queue_.end(), item));
      SetQueueGauge();
      item->state = Item::State::kDone;
      item->status = ClientGone();
      work_cv_.notify_all();
      return item->status;
    }
    if (item->state == Item::State::kRunning && !item->cancel.load()) {
      lock.unlock();
      const bool stop = Gone(gone) || (job.cancelled && job.cancelled());
      lock.lock();
      if (stop) item->cancel.store(true);
      if (!item->pending_text.empty() || item->state == Item::State::kDone) continue;
    }
    if (poll) {
      done_cv_.wait_for(lock, options_.poll_interval);
    } else {
      done_cv_.wait(lock);
    }
  }
}

void RequestScheduler::DecodeLoop(size_t self) {
  struct Sequence {
    std::shared_ptr<Item> item;
    std::unique_ptr<llm::GenerationSession> session;
  };
  std::vector<Sequence> active;
  std::function<Status(const std::vector<llm::GenerationSession*>&)> step;
  // The result of an ended sequence is its request's answer.
  auto finish_sequence = [this](Sequence& seq) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      seq.item->generated = seq.session->result();
      seq.item->state = Item::State::kDone;
      seq.item->status = OkStatus();
    }
    done_cv_.notify_all();
  };
  bool entered = false;
  Status st = model_->Use([&](TrainableModel& model, int64_t version) -> Status {
    entered = true;
    for (;;) {
      std::vector<std::shared_ptr<Item>> admitted, encode;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) break;
        // A newer global: this loop only finishes its sequences.
        const bool current = model_->version() == version;
        size_t room = static_cast<size_t>(options_.max_decode_batch) - active.size();
        bool encoder_waits = false;
        for (auto it = queue_.begin(); current && it != queue_.end();) {
          const auto& item = *it;
          if (item->kind == Item::Kind::kExclusive) break;  // it runs once this loop drained
          if (item->kind == Item::Kind::kEncode) encoder_waits = true;
          if (item->kind == Item::Kind::kGenerate && room > 0) {
            item->state = Item::State::kRunning;
            admitted.push_back(item);
            it = queue_.erase(it);
            --room;
            continue;
          }
          ++it;
        }
        // One encoder batch per step: classify/embeddings are not starved.
        if (encoder_waits) TakeEncodeBatch(/*any_position=*/true, &encode);
        SetQueueGauge();
        if (active.empty() && admitted.empty() && encode.empty()) break;
      }
      if (!encode.empty()) {
        BatchOutcome out;
        Status batch_st = RunBatchOn(model, version, encode, &out);
        CompleteBatch(encode, batch_st, out);
      }
      for (auto& item : admitted) {
        if (Gone(item->gone)) {
          Finish(item, ClientGone());
          continue;
        }
        llm::TextCallback relay;
        if (item->job->on_text) {
          relay = [this, raw = item.get()](std::string_view delta) {
            {
              std::lock_guard<std::mutex> lock(mu_);
              raw->pending_text.emplace_back(delta);
            }
            done_cv_.notify_all();
          };
        }
        auto cancelled = [raw = item.get()] { return raw->cancel.load(); };
        StatusOr<GenerationStart> started = item->job->start(model, version, relay, cancelled);
        if (!started.ok()) {
          Finish(item, started.status());
          continue;
        }
        Sequence seq{item, std::move(started->session)};
        if (seq.session == nullptr) {
          Finish(item, OkStatus());
          continue;
        }
        if (!step) step = std::move(started->step);
        if (seq.session->done()) {
          finish_sequence(seq);
        } else {
          active.push_back(std::move(seq));
        }
      }
      if (active.empty()) continue;
      if (!step) {
        for (auto& seq : active) Finish(seq.item, InternalError("a generation session came without a step"));
        active.clear();
        continue;
      }
      std::vector<llm::GenerationSession*> sessions;
      sessions.reserve(active.size());
      for (auto& seq : active) sessions.push_back(seq.session.get());
      if (metrics_ != nullptr) metrics_->ObserveDecodeStep(static_cast<int>(sessions.size()));
      Status step_st = step(sessions);
      if (!step_st.ok()) {
        for (auto& seq : active) Finish(seq.item, step_st);
        active.clear();
        continue;
      }
      auto ended = std::stable_partition(active.begin(), active.end(),
                                         [](const Sequence& seq) { return !seq.session->done(); });
      for (auto it = ended; it != active.end(); ++it) finish_sequence(*it);
      active.erase(ended, active.end());
    }
    return OkStatus();
  });
  // Stopping: sequences still active end without their answer.
  for (auto& seq : active) {
    Finish(seq.item, UnavailableError("the agent is shutting down; the generation was stopped"));
  }
  if (!entered) {
    // Nothing installed (or the model unreachable): the queued generations get it.
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = queue_.begin(); it != queue_.end();) {
        if ((*it)->kind != Item::Kind::kGenerate) {
          ++it;
          continue;
        }
        (*it)->state = Item::State::kDone;
        (*it)->status = st;
        it = queue_.erase(it);
      }
      SetQueueGauge();
    }
    done_cv_.notify_all();
  }
  PassEnded(0, 0);
  std::lock_guard<std::mutex> lock(mu_);
  decode_threads_[self].ended = true;
}

}  // namespace fedge::agent
