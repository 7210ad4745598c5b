// The scheduler's decode loop (continuous batching, issue 13 item 2): queued
// generations share one decode step per token, new ones join between steps,
// the step is bounded by max_decode_batch, finished and cancelled sequences
// leave, classify requests still get their turns while generations never stop,
// and the queue bound and disconnects still apply. The sessions are fakes
// whose step records how many sequences it advanced; the model is held on a
// gate (no sleeps) so that requests pile up in the queue.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <thread>

#include <prometheus/registry.h>

#include "fake_classifier.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/scheduler.h"
#include "fedge/agent/runtime/serving_model.h"
#include "serving_test_util.h"

namespace fedge::agent {
namespace {

using testing::Eventually;
using testing::FakeClassifier;
using testing::kDeadline;
using testing::TestLabels;

// A classifier whose next Classify can be held inside the model.
class GatedClassifier : public FakeClassifier, public testing::CallGate {
 public:
  GatedClassifier() : FakeClassifier(TestLabels()) {}
  StatusOr<std::vector<Prediction>> Classify(const std::vector<std::string>& texts) override {
    Pass();
    return FakeClassifier::Classify(texts);
  }
};

// Generates "<name>0 <name>1 ..." one word per step: `tokens` words, or until
// cancelled when tokens < 0.
class FakeSession : public llm::GenerationSession {
 public:
  FakeSession(std::string name, int tokens, llm::TextCallback on_text, std::function<bool()> cancelled)
      : name_(std::move(name)),
        tokens_(tokens),
        on_text_(std::move(on_text)),
        cancelled_(std::move(cancelled)) {}
  bool done() const override { return done_; }
  const llm::GenerationResult& result() const override { return result_; }

  void Step() {
    if (cancelled_ && cancelled_()) {
      result_.finish_reason = llm::FinishReason::kCancelled;
      done_ = true;
      return;
    }
    const auto n = static_cast<int32_t>(result_.token_ids.size());
    const std::string word = name_ + std::to_string(n) + " ";
    result_.token_ids.push_back(n);
    result_.text += word;
    if (on_text_) on_text_(word);
    if (tokens_ >= 0 && static_cast<int>(result_.token_ids.size()) >= tokens_) {
      result_.finish_reason = llm::FinishReason::kLength;
      done_ = true;
    }
  }

 private:
  std::string name_;
  int tokens_;
  llm::TextCallback on_text_;
  std::function<bool()> cancelled_;
  llm::GenerationResult result_;
  bool done_ = false;
};

// Every decode step the loop ran: how many sequences it advanced.
class StepLog {
 public:
  Status Step(const std::vector<llm::GenerationSession*>& sessions) {
    for (auto* s : sessions) {
      EXPECT_FALSE(s->done()) << "a finished sequence was stepped";
      static_cast<FakeSession*>(s)->Step();
    }
    std::lock_guard<std::mutex> lock(mu_);
    sizes_.push_back(static_cast<int>(sessions.size()));
    return OkStatus();
  }
  std::vector<int> sizes() {
    std::lock_guard<std::mutex> lock(mu_);
    return sizes_;
  }
  size_t steps() { return sizes().size(); }

 private:
  std::mutex mu_;
  std::vector<int> sizes_;
};

// One generation request: its job, the text relayed to its own thread, and
// the thread it ran on.
struct Request {
  std::string name;
  int tokens = 0;
  std::atomic<bool> cancel{false};
  std::atomic<int> starts{0};
  std::string streamed;  // written only on the request's thread
  std::thread::id text_thread;
  GenerationJob job;
};

class DecodeLoopTest : public ::testing::Test {
 protected:
  void Start(SchedulerOptions options) {
    auto model = std::make_unique<GatedClassifier>();
    model_ = model.get();
    FakeClassifier reference(TestLabels());
    serving_ = std::make_unique<ServingModel>(std::move(model), "ns/job");
    ASSERT_TRUE(serving_->Install(reference.ExportTrainable(), 7).ok());
    scheduler_ = std::make_unique<RequestScheduler>(serving_.get(), options, &metrics_);
  }

  std::unique_ptr<Request> MakeRequest(std::string name, int tokens) {
    auto r = std::make_unique<Request>();
    r->name = std::move(name);
    r->tokens = tokens;
    Request* raw = r.get();
    r->job.start = [this, raw](TrainableModel&, int64_t version, const llm::TextCallback& on_text,
                               const std::function<bool()>& cancelled) -> StatusOr<GenerationStart> {
      ++raw->starts;
      if (version != 7) return InternalError("wrong version");
      GenerationStart s;
      s.session = std::make_unique<FakeSession>(raw->name, raw->tokens, on_text, cancelled);
      s.step = [this](const std::vector<llm::GenerationSession*>& sessions) { return log_.Step(sessions); };
      return s;
    };
    r->job.on_text = [raw](std::string_view delta) {
      raw->streamed.append(delta);
      raw->text_thread = std::this_thread::get_id();
    };
    r->job.cancelled = [raw] { return raw->cancel.load(); };
    return r;
  }

  std::future<StatusOr<llm::GenerationResult>> Submit(Request* r, RequestScheduler::GoneFn gone = nullptr) {
    return std::async(std::launch::async, [this, r, gone] {
      auto result = scheduler_->Generate(r->job, gone);
      // The relay ran on this (the requesting) thread.
      if (!r->streamed.empty()) {
        EXPECT_EQ(r->text_thread, std::this_thread::get_id());
      }
      return result;
    });
  }

  // Holds the model with a classify request inside Classify.
  std::future<StatusOr<EncodeResult>> Occupy() {
    model_->HoldNextCall();
    auto f = std::async(std::launch::async,
                        [this] { return scheduler_->Encode(EncodeTask::kClassify, occupier_); });
    EXPECT_TRUE(model_->WaitHeld());
    return f;
  }

  bool QueuedReaches(size_t n) {
    return Eventually([&] { return scheduler_->queued() == n; });
  }

  static std::string Words(const std::string& name, int n) {
    std::string out;
    for (int i = 0; i < n; ++i) out += name + std::to_string(i) + " ";
    return out;
  }

  const std::vector<std::string> occupier_ = {"occupier"};
  // fedge_agent_decode_batch_sequences as the registry /metrics serves exports it.
  prometheus::ClientMetric::Histogram DecodeBatchHistogram() const {
    for (const auto& family : metrics_.registry()->Collect()) {
      if (family.name == "fedge_agent_decode_batch_sequences" && !family.metric.empty()) {
        return family.metric.front().histogram;
      }
    }
    ADD_FAILURE() << "fedge_agent_decode_batch_sequences is not registered";
    return {};
  }

  AgentMetrics metrics_;
  GatedClassifier* model_ = nullptr;
  std::unique_ptr<ServingModel> serving_;
  std::unique_ptr<RequestScheduler> scheduler_;
  StepLog log_;
};

TEST_F(DecodeLoopTest, GenerationsQueuedTogetherShareEveryDecodeStep) {
  Start({});
  auto occupier = Occupy();
  auto a = MakeRequest("a", 4), b = MakeRequest("b", 2), c = MakeRequest("c", 3);
  auto fa = Submit(a.get());
  ASSERT_TRUE(QueuedReaches(1));
  auto fb = Submit(b.get());
  ASSERT_TRUE(QueuedReaches(2));
  auto fc = Submit(c.get());
  ASSERT_TRUE(QueuedReaches(3));
  model_->Release();
  ASSERT_TRUE(occupier.get().ok());
  for (auto* r : {a.get(), b.get(), c.get()}) {
    auto& f = r == a.get() ? fa : r == b.get() ? fb : fc;
    auto got = f.get();
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->text, Words(r->name, r->tokens));
    EXPECT_EQ(r->streamed, got->text);  // every delta reached the client's thread, in order
    EXPECT_EQ(got->finish_reason, llm::FinishReason::kLength);
    EXPECT_EQ(r->starts.load(), 1);
  }
  // One step per token for all three; each leaves after its last token.
  EXPECT_EQ(log_.sizes(), (std::vector<int>{3, 3, 2, 1}));
  // /metrics says the same: 4 decode steps advancing 9 sequences, 2 of them above 2.
  const prometheus::ClientMetric::Histogram h = DecodeBatchHistogram();
  EXPECT_EQ(h.sample_count, 4u);
  EXPECT_DOUBLE_EQ(h.sample_sum, 9.0);
  ASSERT_GE(h.bucket.size(), 3u);  // le 1, 2, 4, ...
  EXPECT_EQ(h.bucket[0].cumulative_count, 1u);
  EXPECT_EQ(h.bucket[1].cumulative_count, 2u);
  EXPECT_EQ(h.bucket[2].cumulative_count, 4u);
}

TEST_F(DecodeLoopTest, MaxDecodeBatchBoundsAStepAndWaitingGenerationsJoinAsSequencesEnd) {
  SchedulerOptions options;
  options.max_decode_batch = 2;
  Start(options);
  auto occupier = Occupy();
  std::vector<std::unique_ptr<Request>> requests;
  std::vector<std::future<StatusOr<llm::GenerationResult>>> futures;
  for (int i = 0; i < 5; ++i) {
    requests.push_back(MakeRequest(std::string(1, static_cast<char>('a' + i)), 1 + i % 2));
    futures.push_back(Submit(requests.back().get()));
    ASSERT_TRUE(QueuedReaches(static_cast<size_t>(i + 1)));
  }
  model_->Release();
  ASSERT_TRUE(occupier.get().ok());
  for (size_t i = 0; i < futures.size(); ++i) {
    auto got = futures[i].get();
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->text, Words(requests[i]->name, requests[i]->tokens));
  }
  // a(1) b(2) | a leaves, c(1) joins | c leaves, b leaves, d(2) e(1) join | e leaves | d
  EXPECT_EQ(log_.sizes(), (std::vector<int>{2, 2, 2, 1}));
  for (int size : log_.sizes()) EXPECT_LE(size, 2);
}

TEST_F(DecodeLoopTest, AGenerationArrivingMidStreamJoinsTheRunningBatchAndACancelledOneLeaves) {
  Start({});
  auto endless = MakeRequest("x", -1);
  auto fx = Submit(endless.get());
  ASSERT_TRUE(Eventually([&] { return log_.steps() >= 2; }));
  auto late = MakeRequest("y", 3);
  auto fy = Submit(late.get());
  auto got = fy.get();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->text, Words("y", 3));
  // It joined the running loop: steps with both sequences, and "x" still runs.
  const auto sizes = log_.sizes();
  EXPECT_EQ(std::count(sizes.begin(), sizes.end(), 2), 3);
  EXPECT_EQ(fx.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  endless->cancel = true;  // e.g. the stream's client went away
  auto x = fx.get();
  ASSERT_TRUE(x.ok()) << x.status().ToString();
  EXPECT_EQ(x->finish_reason, llm::FinishReason::kCancelled);
  EXPECT_EQ(endless->streamed, x->text);
  EXPECT_GE(x->token_ids.size(), 5u);
}

// Regression guard for starvation: a decode loop holds the model as long as a
// sequence is active, so classify requests must get turns between its steps.
TEST_F(DecodeLoopTest, ClassifyIsNotStarvedByGenerationsThatNeverEnd) {
  Start({});
  auto g1 = MakeRequest("g", -1), g2 = MakeRequest("h", -1);
  auto f1 = Submit(g1.get());
  auto f2 = Submit(g2.get());
  ASSERT_TRUE(Eventually([&] { return log_.steps() >= 3; }));
  for (int round = 0; round < 3; ++round) {
    const std::vector<std::string> texts = {"classify me", "and me"};
    auto fc =
        std::async(std::launch::async, [&] { return scheduler_->Encode(EncodeTask::kClassify, texts); });
    ASSERT_EQ(fc.wait_for(kDeadline), std::future_status::ready) << "classify starved by the decode loop";
    auto c = fc.get();
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->predictions.size(), 2u);
    const std::vector<std::string> embed = {"embed me"};
    auto e = scheduler_->Encode(EncodeTask::kEmbed, embed);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
  }
  // The generations were running all along.
  EXPECT_EQ(f1.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  EXPECT_EQ(f2.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  g1->cancel = true;
  g2->cancel = true;
  EXPECT_TRUE(f1.get().ok());
  EXPECT_TRUE(f2.get().ok());
  EXPECT_FALSE(model_->concurrent_use->load());
}

TEST_F(DecodeLoopTest, TheQueueBoundAndClientsThatLeaveWhileQueuedStillApply) {
  SchedulerOptions options;
  options.max_queued_requests = 1;
  Start(options);
  auto occupier = Occupy();
  std::atomic<bool> gone{false};
  auto left = MakeRequest("l", 2);
  auto fl = Submit(left.get(), [&] { return gone.load(); });
  ASSERT_TRUE(QueuedReaches(1));
  auto refused = MakeRequest("r", 2);
  auto r = scheduler_->Generate(refused->job);
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  gone = true;
  EXPECT_EQ(fl.get().status().code(), StatusCode::kCancelled);
  model_->Release();
  ASSERT_TRUE(occupier.get().ok());
  EXPECT_EQ(left->starts.load(), 0);
  EXPECT_EQ(refused->starts.load(), 0);
  EXPECT_TRUE(log_.sizes().empty());
}

TEST_F(DecodeLoopTest, AStartErrorOrAStepErrorAnswersOnlyThoseRequests) {
  Start({});
  auto occupier = Occupy();
  auto bad = MakeRequest("bad", 2), good = MakeRequest("good", 2);
  bad->job.start = [](TrainableModel&, int64_t, const llm::TextCallback&,
                      const std::function<bool()>&) -> StatusOr<GenerationStart> {
    return OutOfRangeError("the prompt is too long");
  };
  auto fb = Submit(bad.get());
  ASSERT_TRUE(QueuedReaches(1));
  auto fg = Submit(good.get());
  ASSERT_TRUE(QueuedReaches(2));
  model_->Release();
  ASSERT_TRUE(occupier.get().ok());
  EXPECT_EQ(fb.get().status().code(), StatusCode::kOutOfRange);
  auto g = fg.get();
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->text, Words("good", 2));
}

TEST_F(DecodeLoopTest, StopEndsRunningGenerationsWithUnavailable) {
  Start({});
  auto endless = MakeRequest("s", -1);
  auto f = Submit(endless.get());
  ASSERT_TRUE(Eventually([&] { return log_.steps() >= 1; }));
  scheduler_->Stop();
  EXPECT_EQ(f.get().status().code(), StatusCode::kUnavailable);
}

// Hot swap: a decode loop on the old global admits nothing once a new one is
// published; a generation that arrives then starts on the new global while the
// old loop's sequence keeps running on its instance.
TEST_F(DecodeLoopTest, AGenerationAfterAnInstallRunsOnTheNewGlobalBesideTheOldLoop) {
  auto model = std::make_unique<GatedClassifier>();
  model_ = model.get();
  FakeClassifier reference(TestLabels());
  serving_ = std::make_unique<ServingModel>(std::move(model), "ns/job", [] {
    return StatusOr<std::unique_ptr<TrainableModel>>(std::unique_ptr<TrainableModel>(new GatedClassifier()));
  });
  ASSERT_TRUE(serving_->Install(reference.ExportTrainable(), 7).ok());
  scheduler_ = std::make_unique<RequestScheduler>(serving_.get(), SchedulerOptions{}, &metrics_);
  auto old_one = MakeRequest("o", -1);
  auto fo = Submit(old_one.get());
  ASSERT_TRUE(Eventually([&] { return log_.steps() >= 2; }));
  ASSERT_TRUE(serving_->Install(reference.ExportTrainable(), 8).ok());
  auto fresh = MakeRequest("n", 3);
  int64_t fresh_version = 0;
  auto start = fresh->job.start;
  fresh->job.start = [&, start](TrainableModel& m, int64_t v, const llm::TextCallback& t,
                                const std::function<bool()>& c) -> StatusOr<GenerationStart> {
    fresh_version = v;
    return start(m, 7, t, c);  // the fake's start insists on 7
  };
  auto got = Submit(fresh.get()).get();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->text, Words("n", 3));
  EXPECT_EQ(fresh_version, 8);
  EXPECT_EQ(fo.wait_for(std::chrono::seconds(0)), std::future_status::timeout) << "the old loop was stopped";
  old_one->cancel = true;
  EXPECT_TRUE(fo.get().ok());
}

TEST(DecodeLoopOptionsTest, RefusesMaxDecodeBatchBelowOneNamingTheFlag) {
  SchedulerOptions o;
  o.max_decode_batch = 0;
  Status st = ValidateSchedulerOptions(o);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("--max-decode-batch"), std::string::npos);
}

}  // namespace
}  // namespace fedge::agent
