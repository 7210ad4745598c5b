// The aggregator pod's status reporter against a real HTTP /v1/status (fedge's server on
// loopback) and the fake API server.
#include "fedge/op/status_reporter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>

#include "fedge/http_server.h"
#include "fedge/op/fake_kube_client.h"

namespace fedge::op {
namespace {

using namespace std::chrono_literals;

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
    Json job = {{"apiVersion", "fedge.io/v1alpha1"},
                {"kind", "FederatedTrainingJob"},
                {"metadata", {{"name", "wn"}, {"namespace", "ml"}}},
                {"spec", Json::object()}};
    ASSERT_TRUE(client_.Create(res::kJobs, "ml", job).ok());
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
