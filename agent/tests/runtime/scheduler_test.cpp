// The serving scheduler (issue 13 item 2): batch formation, the queue bound,
// 429 + Retry-After, clients that leave while queued, and results routed to
// the request that asked. The model is held inside a call on a gate (no
// sleeps) so that requests pile up in the queue; the HTTP tests go over the
// real HttpServer on a loopback port.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <future>
#include <thread>

#include <nlohmann/json.hpp>

#include "fake_classifier.h"
#include "fedge/agent/runtime/inference_api.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/scheduler.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/http_server.h"
#include "http_test_client.h"
#include "serving_test_util.h"

namespace fedge::agent {
namespace {

using nlohmann::json;
using testing::Eventually;
using testing::FakeClassifier;
using testing::HttpCall;
using testing::HttpReply;
using testing::kDeadline;
using testing::TestLabels;

// A FakeClassifier that records every batched call and can hold one on a gate.
class RecordingClassifier : public FakeClassifier, public testing::CallGate {
 public:
  RecordingClassifier() : FakeClassifier(TestLabels()) {}

  StatusOr<std::vector<Prediction>> Classify(const std::vector<std::string>& texts) override {
    Record(texts);
    return FakeClassifier::Classify(texts);
  }
  StatusOr<std::vector<std::vector<float>>> Embed(const std::vector<std::string>& texts) override {
    Record(texts);
    return FakeClassifier::Embed(texts);
  }

  std::vector<std::vector<std::string>> calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  // Records the call, then holds it if the gate is armed (HoldNextCall).
  void Record(const std::vector<std::string>& texts) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      calls_.push_back(texts);
    }
    Pass();
  }

  std::mutex mu_;
  std::vector<std::vector<std::string>> calls_;  // guarded by mu_
};

class SchedulerTest : public ::testing::Test {
 protected:
  void Start(SchedulerOptions options) {
    auto model = std::make_unique<RecordingClassifier>();
    model_ = model.get();
    reference_ = std::make_unique<FakeClassifier>(TestLabels());
    serving_ = std::make_unique<ServingModel>(std::move(model), "ns/job");
    ASSERT_TRUE(serving_->Install(reference_->ExportTrainable(), 7).ok());
    scheduler_ = std::make_unique<RequestScheduler>(serving_.get(), options, &metrics_);
  }

  // Occupies the model with a one-text request held inside Classify.
  std::future<StatusOr<EncodeResult>> Occupy() {
    model_->HoldNextCall();
    auto f = std::async(std::launch::async,
                        [this] { return scheduler_->Encode(EncodeTask::kClassify, occupier_texts_); });
    EXPECT_TRUE(model_->WaitHeld());
    return f;
  }

  // Lets the request Occupy() holds finish; it must succeed.
  void Release(std::future<StatusOr<EncodeResult>>& occupier) {
    model_->Release();
    ASSERT_TRUE(occupier.get().ok());
  }

  std::future<StatusOr<EncodeResult>> Submit(const std::vector<std::string>* texts,
                                             RequestScheduler::GoneFn gone = nullptr,
                                             EncodeTask task = EncodeTask::kClassify) {
    return std::async(std::launch::async,
                      [this, texts, gone, task] { return scheduler_->Encode(task, *texts, gone); });
  }

  bool QueuedReaches(size_t n) {
    return Eventually([&] { return scheduler_->queued() == n; });
  }

  struct Request {
    const std::vector<std::string>* texts;
    RequestScheduler::GoneFn gone = nullptr;
    EncodeTask task = EncodeTask::kClassify;
  };

  // Submits each request once the one before it is queued, so they queue in this
  // order; one that is not queued within kDeadline fails the test.
  template <size_t N>
  std::array<std::future<StatusOr<EncodeResult>>, N> QueueInOrder(const Request (&requests)[N]) {
    std::array<std::future<StatusOr<EncodeResult>>, N> out;
    const size_t queued = scheduler_->queued();
    for (size_t i = 0; i < N; ++i) {
      out[i] = Submit(requests[i].texts, requests[i].gone, requests[i].task);
      EXPECT_TRUE(QueuedReaches(queued + i + 1)) << "request " << i << " was not queued";
    }
    return out;
  }

  // The answer the model gives `texts` alone.
  std::vector<Prediction> Alone(const std::vector<std::string>& texts) {
    return reference_->Classify(texts).value();
  }

  static void ExpectSamePredictions(const std::vector<Prediction>& got, const std::vector<Prediction>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].label, want[i].label) << i;
      EXPECT_EQ(got[i].probabilities, want[i].probabilities) << i;
    }
  }

  const std::vector<std::string> occupier_texts_ = {"occupier"};
  AgentMetrics metrics_;
  RecordingClassifier* model_ = nullptr;
  std::unique_ptr<FakeClassifier> reference_;  // same weights, for expected answers
  std::unique_ptr<ServingModel> serving_;
  std::unique_ptr<RequestScheduler> scheduler_;
};

TEST_F(SchedulerTest, RequestsThatWaitTogetherRunAsOneBatchAndEachGetsItsOwnResults) {
  Start({});
  auto occupier = Occupy();
  // Distinct word counts give distinct predictions: a mix-up would show.
  const std::vector<std::string> a = {"one", "one two three"};
  const std::vector<std::string> b = {"one two three four five six"};
  const std::vector<std::string> c = {"x y", "x y z w", "p q r s t u v w x"};
  auto [fa, fb, fc] = QueueInOrder({{&a}, {&b}, {&c}});
  ASSERT_NO_FATAL_FAILURE(Release(occupier));
  auto ra = fa.get(), rb = fb.get(), rc = fc.get();
  ASSERT_TRUE(ra.ok() && rb.ok() && rc.ok());

  auto calls = model_->calls();
  ASSERT_EQ(calls.size(), 2u);  // the occupier, then ONE pass for the three waiting requests
  EXPECT_EQ(calls[1], (std::vector<std::string>{"one", "one two three", "one two three four five six", "x y",
                                                "x y z w", "p q r s t u v w x"}));
  ExpectSamePredictions(ra->predictions, Alone(a));
  ExpectSamePredictions(rb->predictions, Alone(b));
  ExpectSamePredictions(rc->predictions, Alone(c));
  EXPECT_EQ(ra->token_counts, (std::vector<int>{3, 5}));  // the fake counts words + 2
  EXPECT_EQ(rc->batch_requests, 3);
  EXPECT_EQ(rc->batch_inputs, 6);
  EXPECT_EQ(ra->version, 7);
}

TEST_F(SchedulerTest, MaxBatchSizeOneRunsEveryRequestAlone) {
  SchedulerOptions o;
  o.max_batch_size = 1;
  Start(o);
  auto occupier = Occupy();
  const std::vector<std::string> a = {"a"}, b = {"b b"}, c = {"c c c"};
  auto [fa, fb, fc] = QueueInOrder({{&a}, {&b}, {&c}});
  ASSERT_NO_FATAL_FAILURE(Release(occupier));
  ASSERT_TRUE(fa.get().ok() && fb.get().ok() && fc.get().ok());
  auto calls = model_->calls();
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[1], a);  // in arrival order
  EXPECT_EQ(calls[2], b);
  EXPECT_EQ(calls[3], c);
}

TEST_F(SchedulerTest, BatchesStopAtMaxBatchSizeInputsAndATooLargeRequestRunsAlone) {
  SchedulerOptions o;
  o.max_batch_size = 3;
  Start(o);
  auto occupier = Occupy();
  const std::vector<std::string> a = {"a1", "a2"}, b = {"b1", "b2"}, big = {"c1", "c2", "c3", "c4", "c5"};
  auto [fa, fb, fbig] = QueueInOrder({{&a}, {&b}, {&big}});
  ASSERT_NO_FATAL_FAILURE(Release(occupier));
  ASSERT_TRUE(fa.get().ok() && fb.get().ok());
  auto rbig = fbig.get();
  ASSERT_TRUE(rbig.ok());
  EXPECT_EQ(rbig->predictions.size(), 5u);
  auto calls = model_->calls();
  ASSERT_EQ(calls.size(), 4u);  // a + b would be 4 inputs > 3: each alone; big alone, whole
  EXPECT_EQ(calls[1], a);
  EXPECT_EQ(calls[2], b);
  EXPECT_EQ(calls[3], big);
}

TEST_F(SchedulerTest, ARequestOverTheTokenBudgetWaitsForTheNextPassInOrder) {
  SchedulerOptions o;
  o.max_batch_tokens = 12;  // padded: inputs x longest (the fake: words + 2)
  Start(o);
  auto occupier = Occupy();
  const std::vector<std::string> a = {"w", "w"};           // 2 x 3 = 6
  const std::vector<std::string> b = {"w w w w w w w w"};  // with a: 3 x 10 = 30 > 12
  const std::vector<std::string> c = {"w"};                // behind b: keeps its place
  auto [fa, fb, fc] = QueueInOrder({{&a}, {&b}, {&c}});
  ASSERT_NO_FATAL_FAILURE(Release(occupier));
  ASSERT_TRUE(fa.get().ok() && fb.get().ok() && fc.get().ok());
  auto calls = model_->calls();
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[1], a);
  EXPECT_EQ(calls[2], b);  // 1 x 10 fits alone
  EXPECT_EQ(calls[3], c);  // b + c = 2 x 10 = 20 > 12
}

TEST_F(SchedulerTest, ClassifyAndEmbedRequestsAreBatchedSeparately) {
  Start({});
  auto occupier = Occupy();
  const std::vector<std::string> c1 = {"c one"}, e1 = {"e one two"}, c2 = {"c two three four"};
  auto [f1, f2, f3] = QueueInOrder({{&c1}, {&e1, nullptr, EncodeTask::kEmbed}, {&c2}});
  ASSERT_NO_FATAL_FAILURE(Release(occupier));
  auto r1 = f1.get(), r2 = f2.get(), r3 = f3.get();
  ASSERT_TRUE(r1.ok() && r2.ok() && r3.ok());
  auto calls = model_->calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[1], (std::vector<std::string>{"c one", "c two three four"}));  // both classify requests
  EXPECT_EQ(calls[2], e1);
  EXPECT_EQ(r2->embeddings, reference_->Embed(e1).value());
  ExpectSamePredictions(r3->predictions, Alone(c2));
}

TEST_F(SchedulerTest, RefusesRequestsBeyondMaxQueuedRequestsAtOnce) {
  SchedulerOptions o;
  o.max_queued_requests = 2;
  Start(o);
  auto occupier = Occupy();  // running: does not count
  const std::vector<std::string> t = {"t"};
  auto [f1, f2] = QueueInOrder({{&t}, {&t}});
  auto refused = scheduler_->Encode(EncodeTask::kClassify, t);  // returns without waiting for the model
  EXPECT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("--max-queued-requests 2"), std::string::npos)
      << refused.status().message();
  EXPECT_GE(scheduler_->retry_after_seconds(), 1);
  EXPECT_EQ(scheduler_->RunExclusive([](TrainableModel&, int64_t) { return OkStatus(); }).code(),
            StatusCode::kResourceExhausted);
  ASSERT_NO_FATAL_FAILURE(Release(occupier));
  EXPECT_TRUE(f1.get().ok());
  EXPECT_TRUE(f2.get().ok());
  EXPECT_EQ(model_->calls().size(), 2u);  // the occupier and one pass for both; the refused never ran
  // Room again once the queue drained.
  EXPECT_TRUE(scheduler_->Encode(EncodeTask::kClassify, t).ok());
}

TEST_F(SchedulerTest, AClientThatLeavesWhileQueuedIsDroppedWithoutRunning) {
  Start({});
  auto occupier = Occupy();
  std::atomic<bool> left{false};
  const std::vector<std::string> leaver = {"the client left"};
  const std::vector<std::string> stayer = {"the client stayed"};
  auto fl = Submit(&leaver, [&] { return left.load(); });
  ASSERT_TRUE(QueuedReaches(1));
  auto fs = Submit(&stayer);
  ASSERT_TRUE(QueuedReaches(2));
  left = true;
  auto rl = fl.get();  // returns while the model is still busy: the waiter noticed by itself
  EXPECT_EQ(rl.status().code(), StatusCode::kCancelled) << rl.status().ToString();
  EXPECT_EQ(scheduler_->queued(), 1u);
  ASSERT_NO_FATAL_FAILURE(Release(occupier));
  ASSERT_TRUE(fs.get().ok());
  for (const auto& call : model_->calls()) {
    EXPECT_EQ(std::count(call.begin(), call.end(), leaver[0]), 0) << "a dropped request reached the model";
  }
  EXPECT_EQ(model_->calls().back(), stayer);
}

TEST_F(SchedulerTest, AnInputOverTheTokenLimitFailsOnlyItsOwnRequest) {
  SchedulerOptions o;
  o.max_input_tokens = 5;  // the fake: words + 2
  Start(o);
  auto occupier = Occupy();
  const std::vector<std::string> ok = {"fine"}, bad = {"short", "far too many words here"};
  auto [fok, fbad] = QueueInOrder({{&ok}, {&bad}});
  ASSERT_NO_FATAL_FAILURE(Release(occupier));
  auto rbad = fbad.get();
  EXPECT_EQ(rbad.status().code(), StatusCode::kOutOfRange);
  EXPECT_NE(rbad.status().message().find("input 1 has 7 tokens"), std::string::npos)
      << rbad.status().message();
  auto rok = fok.get();
  ASSERT_TRUE(rok.ok());
  ExpectSamePredictions(rok->predictions, Alone(ok));
  EXPECT_EQ(model_->calls().back(), ok);
}

// Generation's turn: alone on the model. Encoder requests queued behind it of
// the task being batched join the batch ahead of it (it waits one pass more).
TEST_F(SchedulerTest, ExclusiveWorkRunsAloneOnTheModel) {
  Start({});
  auto occupier = Occupy();
  const std::vector<std::string> before = {"before"}, after = {"after"};
  size_t calls_when_exclusive_ran = 0;
  auto fb = Submit(&before);
  ASSERT_TRUE(QueuedReaches(1));
  auto fx = std::async(std::launch::async, [&] {
    return scheduler_->RunExclusive([&](TrainableModel& model, int64_t version) {
      calls_when_exclusive_ran = model_->calls().size();
      // The exclusive function owns the model: it may call it directly.
      auto own = ClassifyWith(model, {"exclusive"});
      if (!own.ok()) return own.status();
      return version == 7 ? OkStatus() : InternalError("wrong version " + std::to_string(version));
    });
  });
  ASSERT_TRUE(QueuedReaches(2));
  auto fa = Submit(&after);
  ASSERT_TRUE(QueuedReaches(3));
  ASSERT_NO_FATAL_FAILURE(Release(occupier));
  ASSERT_TRUE(fb.get().ok());
  Status x = fx.get();
  ASSERT_TRUE(x.ok()) << x.ToString();
  ASSERT_TRUE(fa.get().ok());
  auto calls = model_->calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[1], (std::vector<std::string>{"before", "after"}));
  EXPECT_EQ(calls_when_exclusive_ran, 2u);
  EXPECT_EQ(calls[2], (std::vector<std::string>{"exclusive"}));
  EXPECT_FALSE(model_->concurrent_use->load());
}

TEST_F(SchedulerTest, TheGatherWindowCollectsConcurrentClientsButALoneClientNeverWaitsForIt) {
  SchedulerOptions o;
  o.gather_window = std::chrono::seconds(30);  // far beyond the test's deadline: it must end early
  Start(o);
  // A lone client: the previous pass held one request, so nothing is gathered.
  const std::vector<std::string> lone = {"lone"};
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(scheduler_->Encode(EncodeTask::kClassify, lone).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));

  // Two concurrent requests share a pass...
  auto occupier = Occupy();
  const std::vector<std::string> a = {"a"}, b = {"b"};
  auto [fa, fb] = QueueInOrder({{&a}, {&b}});
  ASSERT_NO_FATAL_FAILURE(Release(occupier));
  ASSERT_TRUE(fa.get().ok() && fb.get().ok());
  // ...so the next request, arriving at an idle model, waits for a second one
  // (not the 30 s window: it ends when as many requests as last time queued).
  const std::vector<std::string> c = {"c"}, d = {"d"};
  auto fc = Submit(&c);
  ASSERT_TRUE(QueuedReaches(1));
  auto fd = Submit(&d);
  ASSERT_TRUE(fc.get().ok() && fd.get().ok());
  auto calls = model_->calls();
  EXPECT_EQ(calls.back(), (std::vector<std::string>{"c", "d"}));
}

TEST_F(SchedulerTest, UnavailableBeforeAGlobalIsInstalledAndAfterStop) {
  auto model = std::make_unique<RecordingClassifier>();
  ServingModel serving(std::move(model), "ns/job");
  RequestScheduler scheduler(&serving, {});
  const std::vector<std::string> t = {"t"};
  EXPECT_EQ(scheduler.Encode(EncodeTask::kClassify, t).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(scheduler.RunExclusive([](TrainableModel&, int64_t) { return OkStatus(); }).code(),
            StatusCode::kUnavailable);
  scheduler.Stop();
  EXPECT_EQ(scheduler.Encode(EncodeTask::kClassify, t).status().code(), StatusCode::kUnavailable);
}

TEST(SchedulerOptionsTest, RefusesOptionsThatCannotWorkNamingTheFlag) {
  SchedulerOptions o;
  EXPECT_TRUE(ValidateSchedulerOptions(o).ok());
  o.max_batch_size = 0;
  EXPECT_NE(ValidateSchedulerOptions(o).message().find("--max-batch-size"), std::string::npos);
  o = {};
  o.max_queued_requests = 0;
  EXPECT_NE(ValidateSchedulerOptions(o).message().find("--max-queued-requests"), std::string::npos);
  o = {};
  o.max_batch_tokens = 0;
  EXPECT_NE(ValidateSchedulerOptions(o).message().find("--max-batch-tokens"), std::string::npos);
}

// Over the real HTTP server: the 429 a client sees, and a client that hangs up
// while its request is queued.
class SchedulerHttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = std::make_unique<RecordingClassifier>();
    model_ = model.get();
    FakeClassifier reference(TestLabels());
    serving_ = std::make_unique<ServingModel>(std::move(model), "ns/job");
    ASSERT_TRUE(serving_->Install(reference.ExportTrainable(), 3).ok());
    SchedulerOptions o;
    o.max_queued_requests = 1;
    o.poll_interval = std::chrono::milliseconds(5);
    api_ = std::make_unique<InferenceApi>(serving_.get(), nullptr, &metrics_, InferenceLimits{}, nullptr, o);
    HttpServerOptions ho;
    ho.worker_threads = 6;
    server_ = std::make_unique<HttpServer>("127.0.0.1:0", ho);
    api_->Register(*server_);
    ASSERT_TRUE(server_->Start().ok());
    port_ = server_->port();
  }
  void TearDown() override {
    model_->Release();
    server_->Stop();
  }

  std::future<HttpReply> Classify(const std::string& text) {
    return std::async(std::launch::async, [this, text] {
      return HttpCall(port_, "POST", "/v1/classify", json{{"input", text}}.dump(), {}, kDeadline);
    });
  }

  // One /v1/classify sent on a raw socket that the caller closes.
  int SendAndKeepOpen(const std::string& text) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    std::string body = json{{"input", text}}.dump();
    std::string req =
        "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body;
    EXPECT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
    return fd;
  }

  AgentMetrics metrics_;
  RecordingClassifier* model_ = nullptr;
  std::unique_ptr<ServingModel> serving_;
  std::unique_ptr<InferenceApi> api_;
  std::unique_ptr<HttpServer> server_;
  int port_ = 0;
};

TEST_F(SchedulerHttpTest, AFullQueueAnswers429WithRetryAfterInOpenAIsShape) {
  model_->HoldNextCall();
  auto running = Classify("running");
  ASSERT_TRUE(model_->WaitHeld());
  auto queued = Classify("queued");
  ASSERT_TRUE(Eventually([&] { return api_->scheduler().queued() == 1; }));

  HttpReply refused = HttpCall(port_, "POST", "/v1/classify", R"({"input": "one too many"})", {}, kDeadline);
  EXPECT_EQ(refused.status, 429) << refused.body;
  ASSERT_TRUE(refused.headers.count("retry-after")) << "429 without Retry-After";
  EXPECT_GE(std::stoi(refused.headers["retry-after"]), 1);
  json err = json::parse(refused.body, nullptr, false);
  ASSERT_TRUE(err.is_object()) << refused.body;
  EXPECT_EQ(err["error"]["type"], "requests");
  EXPECT_EQ(err["error"]["code"], "rate_limit_exceeded");
  EXPECT_TRUE(err["error"].contains("param"));
  EXPECT_NE(err["error"]["message"].get<std::string>().find("--max-queued-requests"), std::string::npos);

  // The queue-length gauge shows the waiting request.
  HttpReply metrics = HttpCall(port_, "GET", "/metrics");
  EXPECT_NE(metrics.body.find("fedge_agent_inference_requests_waiting 1"), std::string::npos) << metrics.body;

  model_->Release();
  EXPECT_EQ(running.get().status, 200);
  HttpReply q = queued.get();
  EXPECT_EQ(q.status, 200) << q.body;
  metrics = HttpCall(port_, "GET", "/metrics");
  EXPECT_NE(metrics.body.find("fedge_agent_inference_requests_waiting 0"), std::string::npos);
  EXPECT_NE(
      metrics.body.find(R"(fedge_agent_inference_requests_total{code="429",endpoint="/v1/classify"} 1)"),
      std::string::npos)
      << metrics.body;
}

TEST_F(SchedulerHttpTest, AClientThatHangsUpWhileQueuedIsDroppedWithoutRunning) {
  model_->HoldNextCall();
  auto running = Classify("running");
  ASSERT_TRUE(model_->WaitHeld());
  int fd = SendAndKeepOpen("hung up while queued");
  ASSERT_TRUE(Eventually([&] { return api_->scheduler().queued() == 1; }));
  ::close(fd);
  // The server notices the closed socket and the waiting handler leaves the
  // queue while the model is still busy.
  ASSERT_TRUE(Eventually([&] { return api_->scheduler().queued() == 0; }))
      << "the dropped request stayed queued";
  model_->Release();
  EXPECT_EQ(running.get().status, 200);
  HttpReply after = HttpCall(port_, "POST", "/v1/classify", R"({"input": "after"})", {}, kDeadline);
  EXPECT_EQ(after.status, 200);
  for (const auto& call : model_->calls()) {
    for (const auto& text : call)
      EXPECT_NE(text, "hung up while queued") << "a dropped request reached the model";
  }
  ASSERT_TRUE(Eventually([&] {
    HttpReply m = HttpCall(port_, "GET", "/metrics");
    return m.body.find(R"(fedge_agent_inference_requests_total{code="499",endpoint="/v1/classify"} 1)") !=
           std::string::npos;
  }));
}

TEST_F(SchedulerHttpTest, AKeepAliveClientIsNotMistakenForOneThatLeft) {
  // Regression guard for the close watch: many requests on one connection
  // must all be answered (a stale watch must not mark later requests gone).
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port_));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  std::string body = R"({"input": "keep alive"})";
  std::string req =
      "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
    std::string got;
    char buf[4096];
    size_t need = std::string::npos;  // header + body bytes, once the header is in
    while (got.size() < need) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      ASSERT_GT(n, 0) << "connection closed at request " << i;
      got.append(buf, static_cast<size_t>(n));
      size_t head = got.find("\r\n\r\n");
      size_t cl = got.find("Content-Length: ");
      if (cl == std::string::npos) cl = got.find("content-length: ");
      if (head != std::string::npos && cl != std::string::npos && cl < head)
        need = head + 4 + std::stoul(got.substr(cl + 16));
    }
    EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  }
  ::close(fd);
}

}  // namespace
}  // namespace fedge::agent
