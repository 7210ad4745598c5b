// The report of `fedge run` (run_report.h): how a run ended in, what the user
// sees, the summary and the exit code out.
#include "fedge/cli/run_report.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

namespace fedge::cli {
namespace {

RunPlan Plan() {
  RunPlan plan;
  plan.spec.name = "rep";
  plan.spec.namespace_ = "default";
  plan.work_dir = "/w";
  return plan;
}

RoundStatus Round(int64_t n, std::optional<double> loss, std::optional<double> accuracy) {
  RoundStatus r;
  r.round = n;
  r.participants = 2;
  r.loss = loss;
  r.accuracy = accuracy;
  return r;
}

TEST(ReportRunTest, SucceededRunShowsAccuracyAgainstBaselinesAndExitsZero) {
  RunOutcome outcome;
  outcome.end = RunOutcome::End::kSucceeded;
  outcome.wall_seconds = 12.34;
  JobStatus last;
  last.state = "Succeeded";
  last.rounds = {Round(1, 1.5, 0.3), Round(2, 1.0, 0.45)};
  last.final_accuracy = 0.5;
  outcome.last_status = last;
  outcome.failed_agents = {{"agent-1", "exit code 7", 3.5, 1}};
  DataBaselines baselines;
  baselines.majority_baseline = 0.15;
  baselines.chance = 0.04;

  const RunReport report = ReportRun(Plan(), outcome, baselines);
  EXPECT_EQ(report.exit_code, kExitOk);
  EXPECT_EQ(report.err, "");
  EXPECT_NE(report.out.find("job default/rep succeeded in 12.3 s"), std::string::npos) << report.out;
  EXPECT_NE(report.out.find("final accuracy     0.5000"), std::string::npos) << report.out;
  EXPECT_NE(report.out.find("majority baseline  0.1500"), std::string::npos) << report.out;
  EXPECT_NE(report.out.find("chance             0.0400"), std::string::npos) << report.out;
  ASSERT_TRUE(report.summary.has_value());
  auto j = nlohmann::json::parse(RunSummaryJson(*report.summary));
  EXPECT_EQ(j["job"], "default/rep");
  EXPECT_EQ(j["rounds"].size(), 2u);
  EXPECT_DOUBLE_EQ(j["final_accuracy"].get<double>(), 0.5);
  ASSERT_EQ(j["failed_agents"].size(), 1u);
  EXPECT_EQ(j["failed_agents"][0]["name"], "agent-1");
  EXPECT_EQ(j["failed_agents"][0]["during_round"], 1);
}

TEST(ReportRunTest, FinalAccuracyFallsBackToTheLastRound) {
  RunOutcome outcome;
  outcome.end = RunOutcome::End::kSucceeded;
  JobStatus last;
  last.rounds = {Round(1, 1.5, 0.3), Round(2, 1.0, 0.45)};
  outcome.last_status = last;
  const RunReport report = ReportRun(Plan(), outcome, {});
  ASSERT_TRUE(report.summary.has_value());
  EXPECT_EQ(report.summary->final_accuracy, 0.45);
  EXPECT_NE(report.out.find("final accuracy     0.4500"), std::string::npos) << report.out;
  EXPECT_NE(report.out.find("majority baseline  -"), std::string::npos) << report.out;
}

TEST(ReportRunTest, CausalLmRunShowsLossAndPerplexity) {
  RunOutcome outcome;
  outcome.end = RunOutcome::End::kSucceeded;
  JobStatus last;
  last.rounds = {Round(1, 2.0, std::nullopt), Round(2, 1.0, std::nullopt)};
  outcome.last_status = last;
  const RunReport report = ReportRun(Plan(), outcome, {});
  EXPECT_EQ(report.exit_code, kExitOk);
  EXPECT_NE(report.out.find("final held-out loss 1.0000"), std::string::npos) << report.out;
  EXPECT_NE(report.out.find("final perplexity    2.72"), std::string::npos) << report.out;
  EXPECT_EQ(report.out.find("final accuracy"), std::string::npos) << report.out;
}

TEST(ReportRunTest, FailedAndInterruptedRunsPointAtTheLogsWithoutASummary) {
  RunOutcome outcome;
  outcome.end = RunOutcome::End::kFailed;
  RunReport report = ReportRun(Plan(), outcome, {});
  EXPECT_EQ(report.exit_code, kExitJobFailed);
  EXPECT_EQ(report.err, "job failed; logs in /w/logs\n");
  EXPECT_EQ(report.out, "");
  EXPECT_FALSE(report.summary.has_value());

  outcome.end = RunOutcome::End::kInterrupted;
  report = ReportRun(Plan(), outcome, {});
  EXPECT_EQ(report.exit_code, kExitInterrupted);
  EXPECT_EQ(report.err, "interrupted; logs in /w/logs\n");
  EXPECT_FALSE(report.summary.has_value());
}

}  // namespace
}  // namespace fedge::cli
