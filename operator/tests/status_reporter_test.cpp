// The aggregator pod's status reporter against a real HTTP /v1/status (fedge's server on
// loopback) and the fake API server.
#include "fedge/op/status_reporter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <future>
#include <mutex>
#include <utility>

#include "fedge/http_server.h"
#include "fedge/op/desired.h"
#include "fedge/op/fake_kube_client.h"

namespace fedge::op {
namespace {

using namespace std::chrono_literals;

// The job ml/wn the reporter writes to (its spec does not matter here).
Json Job() {
  return {{"apiVersion", "fedge.io/v1alpha1"},
          {"kind", "FederatedTrainingJob"},
          {"metadata", {{"name", "wn"}, {"namespace", "ml"}}},
          {"spec", Json::object()}};
}

// What the aggregator serves at /v1/status, changeable while the reporter runs.
class FakeAggregatorStatus {
 public:
  FakeAggregatorStatus() : server_(std::make_unique<HttpServer>("127.0.0.1:0")) {
    server_->Handle("GET", "/v1/status", [this](const HttpRequest&) {
      std::lock_guard<std::mutex> lock(mu_);
      return HttpResponse::Json(200, status_.dump());
    });
    EXPECT_TRUE(server_->Start().ok());
  }
  void SetRound(int64_t completed) {
    std::lock_guard<std::mutex> lock(mu_);
    status_["round"] = completed;
    status_["rounds"].push_back({{"round", completed}, {"participants", 2}});
    status_["global_version"] = completed + 1;
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(server_->port()); }
  void Exit() { server_->Stop(); }  // the aggregator finished: nothing answers any more

 private:
  std::unique_ptr<HttpServer> server_;
  std::mutex mu_;
  Json status_ = {{"round", 0}, {"rounds", Json::array()}};
};

class StatusReporterRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
    opts_.ns = "ml";
    opts_.name = "wn";
    opts_.aggregator_http = agg_.address();
    opts_.interval = 20ms;
    opts_.gone_after = 200ms;
    opts_.final_write_for = 5s;
  }
  std::future<Status> Start() {
    return std::async(std::launch::async, [this] { return RunStatusReporter(&client_, opts_, stop_); });
  }
  int64_t ReportedRound() {
    auto job = client_.Get(res::kJobs, "ml", "wn", {});
    return job.ok() ? job->value("status", Json::object()).value("roundsCompleted", int64_t{-1}) : -1;
  }
  bool WaitForRound(int64_t round) {
    for (int i = 0; i < 500; ++i) {
      if (ReportedRound() == round) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  FakeKubeClient client_;
  FakeAggregatorStatus agg_;
  ReporterOptions opts_;
  std::atomic<bool> stop_{false};
};

TEST_F(StatusReporterRunTest, AFailedWriteFollowedByASuccessfulOneEndsOk) {
  // The chaos suite's API-server restart: one apply refused while the API server was away,
  // later ones written. The reporter used to keep that first error and exit 1 when the
  // aggregator finished, so the finished aggregator pod ended Failed and was recreated.
  agg_.SetRound(1);
  client_.FailNext("apply", "federatedtrainingjobs", UnavailableError("connection refused"));
  auto run = Start();
  agg_.SetRound(2);
  ASSERT_TRUE(WaitForRound(2));
  agg_.Exit();
  ASSERT_EQ(run.wait_for(10s), std::future_status::ready);
  Status st = run.get();
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST_F(StatusReporterRunTest, TheLastProgressIsWrittenAfterTheAggregatorHasGone) {
  agg_.SetRound(3);
  auto run = Start();
  ASSERT_TRUE(WaitForRound(3));
  agg_.SetRound(4);  // the final round, then the aggregator exits
  client_.FailNext("apply", "federatedtrainingjobs", UnavailableError("connection refused"));
  // The reporter's next poll sees round 4 and its apply fails; then nothing answers.
  std::this_thread::sleep_for(100ms);
  agg_.Exit();
  ASSERT_EQ(run.wait_for(10s), std::future_status::ready);
  Status st = run.get();
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(ReportedRound(), 4) << "the final round never reached the job's status";
}

TEST_F(StatusReporterRunTest, AWriteThatNeverSucceedsIsTheExitError) {
  agg_.SetRound(1);
  opts_.final_write_for = 300ms;
  auto run = Start();
  ASSERT_TRUE(WaitForRound(1));
  ASSERT_TRUE(client_.Delete(res::kJobs, "ml", "wn", {}).ok());  // every later apply: NotFound
  agg_.SetRound(2);
  std::this_thread::sleep_for(100ms);
  agg_.Exit();
  ASSERT_EQ(run.wait_for(10s), std::future_status::ready);
  Status st = run.get();
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kNotFound) << st.ToString();
}

// ---- ProgressWriter: one write, its retries and its conflicts, on a FakeClock ------------

// The aggregator's /v1/status after `completed` rounds, as the reporter maps it.
Json Progress(int64_t completed) {
  Json rounds = Json::array();
  for (int64_t r = 1; r <= completed; ++r) rounds.push_back({{"round", r}, {"participants", 2}});
  return ProgressFromAggregator(
      {{"round", completed}, {"rounds", rounds}, {"global_version", completed + 1}});
}

// A FakeKubeClient that runs `after_get` once, right after the next Get of the job: another
// writer acting between a reader's read and its write.
class RacingKubeClient : public FakeKubeClient {
 public:
  StatusOr<Json> Get(const Resource& r, const std::string& ns, const std::string& name,
                     const std::string& subresource = "") override {
    auto got = FakeKubeClient::Get(r, ns, name, subresource);
    if (after_get) std::exchange(after_get, nullptr)();
    return got;
  }
  std::function<void()> after_get;
};

class ProgressWriterTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok()); }
  int64_t ReportedRound() {  // not through Get: reads are counted
    return client_.Objects(res::kJobs)
        .at(0)
        .value("status", Json::object())
        .value("roundsCompleted", int64_t{-1});
  }
  int Applies() { return client_.CountCalls("apply", "federatedtrainingjobs"); }
  int Reads() { return client_.CountCalls("get", "federatedtrainingjobs"); }

  RacingKubeClient client_;
  FakeClock clock_;
  const BackoffPolicy policy_{100ms, 1s, /*jitter=*/0};
  ProgressWriter writer_{&client_, "ml", "wn", &clock_, policy_};
};

TEST_F(ProgressWriterTest, StatusLandsAfterNFailuresEachRetriedAfterItsBackoff) {
  // A 503, a 500, a read that timed out (RestKubeClient's DeadlineExceeded) and a 429.
  client_.FailNext("apply", "federatedtrainingjobs",
                   KubeError("ServiceUnavailable", 503, "etcd leader changed"));
  client_.FailNext("apply", "federatedtrainingjobs", KubeError("InternalError", 500, "storage error"));
  client_.FailNext("get", "federatedtrainingjobs",
                   DeadlineExceededError("Timeout: GET /apis/...: timed out"));
  client_.FailNext("apply", "federatedtrainingjobs", KubeError("TooManyRequests", 429, "slow down"));
  const int kFailures = 4;
  writer_.Offer(Progress(3));
  for (int i = 0; i < kFailures; ++i) {
    SCOPED_TRACE("failure " + std::to_string(i + 1));
    const int reads = Reads();
    EXPECT_FALSE(writer_.WriteIfDue().ok());
    EXPECT_EQ(Reads(), reads + 1) << "one attempt";
    EXPECT_FALSE(writer_.last_error().ok());
    // The operator's one backoff: 100, 200, 400, 800 ms.
    const auto delay = std::chrono::duration_cast<Clock::Duration>(BackoffDelay(policy_, i));
    EXPECT_EQ(writer_.next_attempt() - clock_.Now(), delay);
    clock_.Advance(delay - 1ms);
    EXPECT_TRUE(writer_.WriteIfDue().ok());
    EXPECT_EQ(Reads(), reads + 1) << "retried before its backoff passed";
    clock_.Advance(1ms);
  }
  EXPECT_EQ(ReportedRound(), -1);
  EXPECT_TRUE(writer_.WriteIfDue().ok());
  EXPECT_EQ(ReportedRound(), 3);
  EXPECT_FALSE(writer_.pending());
  EXPECT_TRUE(writer_.last_error().ok());
  EXPECT_EQ(Applies(), 4) << "3 refused + the one that landed";
  // Landing reset the backoff: the next failure waits the initial delay again.
  client_.FailNext("apply", "federatedtrainingjobs", KubeError("ServiceUnavailable", 503, "away"));
  writer_.Offer(Progress(4));
  EXPECT_FALSE(writer_.WriteIfDue().ok());
  EXPECT_EQ(writer_.next_attempt() - clock_.Now(), std::chrono::duration_cast<Clock::Duration>(100ms));
}

TEST_F(ProgressWriterTest, AConflictIsReReadAndReAppliedAtOnce) {
  client_.FailNext("apply", "federatedtrainingjobs",
                   KubeError("Conflict", 409, "the object has been modified; please apply your changes"));
  writer_.Offer(Progress(2));
  EXPECT_TRUE(writer_.WriteIfDue().ok()) << writer_.last_error().ToString();
  EXPECT_EQ(ReportedRound(), 2);
  EXPECT_EQ(Reads(), 2);
  EXPECT_EQ(Applies(), 2);
  // Recognised by the API's reason, not by the message's words: a 500 that says
  // "Conflict" is an ordinary failure, retried after the backoff.
  client_.FailNext("apply", "federatedtrainingjobs", KubeError("InternalError", 500, "Conflict in etcd"));
  writer_.Offer(Progress(3));
  EXPECT_FALSE(writer_.WriteIfDue().ok());
  EXPECT_EQ(Applies(), 3);
  EXPECT_GT(writer_.next_attempt(), clock_.Now());
  // Conflicts without end: after kConflictRetries re-reads it backs off like any failure.
  clock_.Advance(1s);
  for (int i = 0; i <= ProgressWriter::kConflictRetries; ++i)
    client_.FailNext("apply", "federatedtrainingjobs", KubeError("Conflict", 409, "modified"));
  EXPECT_TRUE(IsConflict(writer_.WriteIfDue()));
  EXPECT_EQ(Applies(), 4 + ProgressWriter::kConflictRetries);
  EXPECT_GT(writer_.next_attempt(), clock_.Now());
  EXPECT_EQ(ReportedRound(), 2);
  clock_.Advance(1s);
  EXPECT_TRUE(writer_.WriteIfDue().ok());
  EXPECT_EQ(ReportedRound(), 3);
}

TEST_F(ProgressWriterTest, ACompletedRoundIsNeverDroppedFromStatus) {
  // Progress offered while a write fails replaces it: the write that lands holds round 5.
  client_.FailNext("apply", "federatedtrainingjobs", KubeError("ServiceUnavailable", 503, "away"));
  writer_.Offer(Progress(4));
  EXPECT_FALSE(writer_.WriteIfDue().ok());
  writer_.Offer(Progress(5));
  clock_.Advance(1s);
  EXPECT_TRUE(writer_.WriteIfDue().ok());
  EXPECT_EQ(ReportedRound(), 5);

  // The replaced aggregator pod's reporter (`old`) still retries its round 6 while the new
  // pod's reporter writes round 7 between old's read and old's apply. Old's apply carries
  // the resourceVersion it read: refused (Conflict), re-read, and round 7 stays.
  ProgressWriter old(&client_, "ml", "wn", &clock_, policy_);
  ProgressWriter replacement(&client_, "ml", "wn", &clock_, policy_);
  old.Offer(Progress(6));
  client_.after_get = [&] {
    replacement.Offer(Progress(7));
    ASSERT_TRUE(replacement.WriteIfDue().ok());
  };
  EXPECT_TRUE(old.WriteIfDue().ok()) << old.last_error().ToString();
  EXPECT_EQ(ReportedRound(), 7) << "an older reporter's progress overwrote a completed round";
  EXPECT_FALSE(old.pending()) << "superseded, not retried forever";

  // And a stale progress read before the status moved ahead is never applied at all.
  const int applies = Applies();
  old.Offer(Progress(6));
  EXPECT_TRUE(old.WriteIfDue().ok());
  EXPECT_EQ(Applies(), applies);
  EXPECT_EQ(ReportedRound(), 7);
}

TEST_F(ProgressWriterTest, AWriteThatTimedOutButLandedIsNotWrittenAgain) {
  writer_.Offer(Progress(2));
  // The API server applied it, but the answer never came back.
  Json patch = {{"metadata", {{"name", "wn"}, {"namespace", "ml"}}}, {"status", Progress(2)}};
  ASSERT_TRUE(client_.Apply(res::kJobs, "ml", "wn", patch, {kReporterFieldManager, true, "status"}).ok());
  const int applies = Applies();
  EXPECT_TRUE(writer_.WriteIfDue().ok());
  EXPECT_EQ(Applies(), applies);
  EXPECT_FALSE(writer_.pending());
}

TEST(StatusReporterPrivacyTest, EpsilonSpentAndTheBudgetComeFromTheAggregator) {
  Json agg = Json::parse(R"({"state":"Succeeded","round":2,"global_version":3,"rounds":[{"round":2}],
    "privacy":{"epsilon":3.25,"delta":1e-5,"target_epsilon":4,"noise_multiplier":1.1,"clip_norm":0.5,
               "rounds_accounted":2,"budget_exhausted":true}})");
  Json st = ProgressFromAggregator(agg);
  EXPECT_DOUBLE_EQ(st["epsilonSpent"].get<double>(), 3.25);
  EXPECT_EQ(st["privacy"]["roundsAccounted"], 2);
  EXPECT_EQ(st["privacy"]["budgetExhausted"], true);
  EXPECT_DOUBLE_EQ(st["privacy"]["targetEpsilon"].get<double>(), 4.0);
  agg["privacy"]["epsilon"] = nullptr;  // no finite bound
  EXPECT_GT(ProgressFromAggregator(agg)["epsilonSpent"].get<double>(), 1e300);
  agg.erase("privacy");
  Json off = ProgressFromAggregator(agg);
  EXPECT_EQ(off["epsilonSpent"], 0.0);
  EXPECT_FALSE(off.contains("privacy"));
}

}  // namespace
}  // namespace fedge::op
