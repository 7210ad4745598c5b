// RequestScheduler: the one queue in front of the serving model.
//
// Every inference request that needs the model (classify, embeddings,
// generation) is submitted here by its HTTP handler, which blocks until its
// result is ready. One scheduler thread takes work from the queue in arrival
// order and hands each pass to the thread of its first request (the leader),
// which runs it and wakes the others:
//  - Encoder work (classify, embeddings) is batched: the request at the head
//    of the queue and the queued requests of the same task behind it (others
//    keep their place) are concatenated into one padded batch, up to
//    `max_batch_size` inputs and `max_batch_tokens` padded tokens (inputs x
//    the longest input, the shape the encoder pads to), and run as ONE call of
//    Classifier::Classify / Embedder::Embed on the published instance (one forward
//    pass per 32 inputs, the model's own chunk). Each request gets back its
//    own slice, in its own order. A request with more inputs than
//    `max_batch_size` runs alone, whole. `max_batch_size` 1 turns batching
//    off: one request per forward pass, as before the scheduler.
//  - Generation is continuously batched. When a generation request reaches
//    the head of the queue and the model is free, a decode loop starts on its
//    own thread and holds the model while any sequence is active. Between two
//    steps it (1) admits queued generation requests, oldest first, up to
//    `max_decode_batch` active sequences: each is checked and prefilled alone
//    (GenerationJob::start) and joins at the next step; (2) gives one encoder
//    batch its turn if classify/embedding requests wait (so they are never
//    starved by a stream of generations); then (3) runs ONE decode step for
//    every active sequence (GenerationStart::step: CausalLm::StepGenerations,
//    a batched decode step that reads the weights once for all of them).
//    Finished and cancelled sequences leave after the step that ended them;
//    the loop ends when none is left and none waits. Text produced on the loop
//    thread is relayed to the request's own thread, which calls its
//    `on_text` (a stream writes from its own HTTP worker, so a slow client
//    never stalls the batch); `cancelled` and `gone` are polled there and end
//    the sequence at the next step. A loop admits nothing once a newer global
//    is published (its sequences finish on the old instance; the next
//    generation starts a loop on the new one), nor past a queued exclusive
//    request (which runs when the loop has drained).
//  - Exclusive work runs alone: its own thread runs its function on the
//    model.
// One pass at a time per published global: the next pass starts when the
// running one ends, or as soon as a new global is published (it runs on
// another instance, ServingModel's hot swap; the running pass finishes on the
// old one). The version is re-checked every 5 ms while a pass runs.
//
// Gather window: when the model is idle and one request waits, it runs at
// once, unless the previous batch held k > 1 requests (clients are
// concurrent): then the scheduler waits up to `gather_window` for up to k
// requests to queue before it runs. A lone client therefore never waits for
// the window; concurrent clients that resubmit slightly apart share a pass.
//
// Bounded queue: at most `max_queued_requests` requests wait (the ones in the
// running batch do not count); a request beyond that is refused at once with
// RESOURCE_EXHAUSTED (the HTTP layer answers 429 with Retry-After,
// retry_after_seconds()). The bound is at least 1.
//
// Disconnects: a request submitted with a `gone` function (the HTTP server's
// HttpRequest::client_gone) that turns true while it waits is dropped from
// the queue without running, CANCELLED; the waiting thread notices within
// `poll_interval`, and the scheduler re-checks before a request joins a batch.
// Once a request runs it finishes (a generation stops itself through its own
// cancellation hook).
//
// Token checks: each input is counted with the model's tokenizer before its
// request joins a batch; a request with an input above `max_input_tokens` gets
// OUT_OF_RANGE (and its batch-mates are unaffected); so does a failing
// `precheck`. Errors of the batched call itself reach every request of the
// batch. UNAVAILABLE before a global model is installed, and after Stop().
//
// Thread safety: every public method is thread-safe. The scheduler owns one
// thread, plus one per running decode loop; Stop() (also the destructor)
// refuses queued requests with UNAVAILABLE, ends active generations (UNAVAILABLE),
// joins the threads and waits for the passes still running. `model` (and `metrics`,
// may be null) must outlive the scheduler.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fedge/agent/llm/generation.h"
#include "fedge/agent/text_classifier.h"
#include "fedge/status.h"

namespace fedge::agent {

class AgentMetrics;
class ServingModel;

struct SchedulerOptions {
  int max_batch_size = 16;          // inputs per batched call; 1: no batching
  int max_batch_tokens = 4096;      // padded tokens per batched call (inputs x longest)
  size_t max_queued_requests = 64;  // waiting requests; beyond: RESOURCE_EXHAUSTED (429)
  std::chrono::microseconds gather_window{2000};
  int max_input_tokens = 512;                   // per input; longer: OUT_OF_RANGE
  std::chrono::milliseconds poll_interval{50};  // how often a waiter checks `gone`
  int max_decode_batch = 8;                     // sequences per decode step; 1: one at a time
};

// Refuses options that cannot work (batch size, tokens or decode batch < 1,
// negative window); INVALID_ARGUMENT names the flag (--max-batch-size, ...).
Status ValidateSchedulerOptions(const SchedulerOptions& options);

enum class EncodeTask { kClassify, kEmbed };

// What an encoder request gets back, index-aligned with its texts.
struct EncodeResult {
  int64_t version = 0;                         // the global that answered
  std::vector<int> token_counts;               // per input
  std::vector<Prediction> predictions;         // kClassify
  std::vector<std::vector<float>> embeddings;  // kEmbed
  int batch_requests = 0;                      // requests in the forward pass that served this one
  int batch_inputs = 0;                        // inputs in it
};

// What a generation request's start hands the decode loop.
struct GenerationStart {
  // The sequence, prefilled (it may be done already). Null: nothing to
  // generate; the request is answered OK at once (a stream's checks).
  std::unique_ptr<llm::GenerationSession> session;
  // Advances sessions of the model instance that made `session` by one token
  // (CausalLm::StepGenerations). The loop calls the first one it gets for all
  // its sequences: they all come from the instance the loop holds.
  std::function<Status(const std::vector<llm::GenerationSession*>& sessions)> step;
};

// A generation request (RequestScheduler::Generate). The functions must stay
// valid until Generate returns.
struct GenerationJob {
  // Runs on the decode loop's thread with the model held: checks the request
  // and starts its sequence. `on_text` and `cancelled` are the loop's relays:
  // the session must use them as its TextCallback and
  // GenerationOptions::cancelled. A non-OK status is the request's answer.
  std::function<StatusOr<GenerationStart>(TrainableModel& model, int64_t version,
                                          const llm::TextCallback& on_text,
                                          const std::function<bool()>& cancelled)>
      start;
  // Optional. Called on Generate's thread with the generated text, in order.
  llm::TextCallback on_text;
  // Optional. Polled on Generate's thread while the sequence runs (at least
  // every poll_interval); true ends it at the next step (kCancelled).
  std::function<bool()> cancelled;
};

class RequestScheduler {
 public:
  // True once the submitting client has gone away (may be null: never).
  using GoneFn = std::function<bool()>;
  // Runs on the scheduler thread with the model held, before the request joins
  // a batch; a non-OK status is the request's answer (e.g. a bad "dimensions").
  using Precheck = std::function<Status(TrainableModel& model)>;
  using ExclusiveFn = std::function<Status(TrainableModel& model, int64_t version)>;

  RequestScheduler(ServingModel* model, SchedulerOptions options, AgentMetrics* metrics = nullptr);
  ~RequestScheduler();
  RequestScheduler(const RequestScheduler&) = delete;
  RequestScheduler& operator=(const RequestScheduler&) = delete;

  // Classifies or embeds `texts` (non-empty) in a batch with other requests.
  // Blocks until done. Errors: see the overview.
  StatusOr<EncodeResult> Encode(EncodeTask task, const std::vector<std::string>& texts,
                                const GoneFn& gone = nullptr, const Precheck& precheck = nullptr);

  // Runs `fn` alone on the published model, on the calling thread, when its
  // turn comes. Returns fn's status, or the scheduler's own error (queue full,
  // client gone while queued, nothing installed, stopped) without running fn.
  Status RunExclusive(const ExclusiveFn& fn, const GoneFn& gone = nullptr);

  // Generates in the decode loop (see the overview), blocking until the
  // sequence ends; relays its text to job.on_text on this thread. Returns the
  // session's result (empty when start returned no session), start's error,
  // INTERNAL if a decode step failed, or the scheduler's own error (queue
  // full, client gone while queued, nothing installed, stopped) without
  // starting.
  StatusOr<llm::GenerationResult> Generate(const GenerationJob& job, const GoneFn& gone = nullptr);

  void Stop();

  const SchedulerOptions& options() const { return options_; }
  // Requests waiting now (not running).
  size_t queued() const;
  // Seconds a refused client should wait before retrying: the time the queue
  // takes to drain at the recent pass time, at least 1.
  int retry_after_seconds() const;

 private:
  struct Item;
  // The scheduler thread: hands each pass to its first request's thread.
  void Run();
  // With mu_ held (`lock`) and the queue non-empty: takes the next pass (a
  // batch or one exclusive item) off the queue, after the gather window;
  // false if there is none after all.
  bool TakeWork(std::unique_lock<std::mutex>& lock, std::vector<std::shared_ptr<Item>>* work);
  // On the leading request's thread: runs one encoder pass and finishes
  // every request of it (deferred ones go back to the queue's front).
  void RunBatch(const std::vector<std::shared_ptr<Item>>& batch);
  void PassEnded(double seconds, int requests);
  bool ModelFree() const;  // with mu_ held
  Status Submit(const std::shared_ptr<Item>& item);
  // Until the item is done (its status) or leads its pass (OK; see Leads).
  Status Wait(const std::shared_ptr<Item>& item);
  bool Leads(const std::shared_ptr<Item>& item);
  void Finish(const std::shared_ptr<Item>& item, Status st);
  void SetQueueGauge();  // with mu_ held
  // With mu_ held: the encoder requests the head's (or, with `any_position`,
  // the first queued encoder request's) batch takes off the queue.
  void TakeEncodeBatch(bool any_position, std::vector<std::shared_ptr<Item>>* work);
  // What one encoder pass did; RunBatchOn fills it, CompleteBatch answers it.
  struct BatchOutcome;
  Status RunBatchOn(TrainableModel& model, int64_t version, const std::vector<std::shared_ptr<Item>>& batch,
                    BatchOutcome* out);
  void CompleteBatch(const std::vector<std::shared_ptr<Item>>& batch, const Status& st, BatchOutcome& out);
  // The body of a decode loop thread (`self` is its entry in decode_threads_).
  void DecodeLoop(size_t self);

  ServingModel* const model_;
  const SchedulerOptions options_;
  AgentMetrics* const metrics_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;          // the scheduler thread: work queued, a turn ended, stopping
  std::condition_variable done_cv_;          // waiters: an item finished or was granted its turn
  std::deque<std::shared_ptr<Item>> queue_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  int last_batch_requests_ = 1;              // guarded by mu_: requests in the previous pass
  double pass_seconds_ = 0.05;               // guarded by mu_: moving average of a pass
  int passes_in_flight_ = 0;                 // guarded by mu_: handed to a leader, not ended
  int64_t busy_version_ = 0;                 // guarded by mu_: global published when the last pass began
  std::mutex join_mu_;                       // serialises joining thread_ (Stop and the destructor)
  std::thread thread_;
  // Decode loop threads, index-stable (a slot is reused once its loop ended);
  // guarded by mu_. `ended`: the loop will not touch this object again.
  struct DecodeThread {
    std::thread thread;
    bool ended = false;
  };
  std::vector<DecodeThread> decode_threads_;
};

}  // namespace fedge::agent
