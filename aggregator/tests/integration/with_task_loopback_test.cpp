// Evaluation reports sent with the next GetTask (TaskRequest.report, issue 14
// item 2: one RPC per agent and round fewer than ReportMetrics), over real gRPC
// on loopback: the rounds come out as with ReportMetrics (which older agents
// keep calling), and a report the aggregator would refuse from ReportMetrics is
// refused from GetTask too.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "fedge.grpc.pb.h"
#include "fedge/aggregator/server.h"
#include "loopback.h"
#include "sim_agent.h"

namespace fedge::aggregator {
namespace {

using namespace testing;  // loopback.h and sim_agent.h

constexpr int kRounds = 2;
constexpr int64_t kHugeClaim = 1'000'000'000'000'000;

JobSpec Spec() {
  JobSpec spec = LoopbackSpec("loopback", kRounds, /*min_agents=*/3);
  spec.rounds.localSteps = 2;
  spec.rounds.batchSize = 10;  // weight cap 20
  return spec;
}

struct JobRun {
  EngineStatus status;
  std::string global_checksum;
  int64_t eval_weights_clamped = 0;
  std::vector<int> reports_with_get_task, report_calls;
};

// Three agents to DONE; agent 2 claims a huge held-out set in every report
// (bounded to its Join declaration and the cap, as with ReportMetrics).
JobRun RunJob(bool inline_reports) {
  JobRun run;
  auto server = StartServer(Spec());
  if (server == nullptr) return run;
  std::vector<std::unique_ptr<SimAgent>> agents;
  for (int i = 0; i < 3; ++i) {
    agents.push_back(std::make_unique<SimAgent>("agent-" + std::to_string(i), i, server->grpc_port()));
    agents.back()->set_inline_reports(inline_reports);
  }
  agents[2]->set_claimed_examples(30, 30, kHugeClaim);
  RunAll(agents);
  run.status = server->engine().GetStatus();
  run.global_checksum = run.status.global_checksum;
  run.eval_weights_clamped = server->metrics().weights_clamped("evaluation", "above_cap");
  for (const auto& a : agents) {
    run.reports_with_get_task.push_back(a->reports_with_get_task());
    run.report_calls.push_back(a->report_calls());
  }
  return run;
}

TEST(WithTaskLoopbackTest, ReportsWithGetTaskGiveTheRoundsAndMetricsOfReportMetrics) {
  const JobRun old_path = RunJob(/*inline_reports=*/false);
  const JobRun new_path = RunJob(/*inline_reports=*/true);

  // Each path was the one taken: the new one made no ReportMetrics call.
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE("agent " + std::to_string(i));
    EXPECT_EQ(old_path.report_calls[i], kRounds);
    EXPECT_EQ(old_path.reports_with_get_task[i], 0);
    EXPECT_EQ(new_path.report_calls[i], 0);
    EXPECT_EQ(new_path.reports_with_get_task[i], kRounds);
  }

  ASSERT_EQ(old_path.status.state, JobState::kSucceeded) << old_path.status.message;
  ASSERT_EQ(new_path.status.state, JobState::kSucceeded) << new_path.status.message;
  EXPECT_EQ(new_path.global_checksum, old_path.global_checksum);
  ASSERT_EQ(old_path.status.rounds.size(), static_cast<size_t>(kRounds));
  ASSERT_EQ(new_path.status.rounds.size(), old_path.status.rounds.size());
  // Weights 10, 20 and min(1e15, 30, 20) = 20; accuracies 0.5, 0.6, 0.7.
  constexpr double kAccuracy = (0.5 * 10 + 0.6 * 20 + 0.7 * 20) / 50.0;
  for (size_t r = 0; r < old_path.status.rounds.size(); ++r) {
    const RoundRecord& o = old_path.status.rounds[r];
    const RoundRecord& n = new_path.status.rounds[r];
    SCOPED_TRACE("round " + std::to_string(o.round));
    EXPECT_EQ(n.round, o.round);
    EXPECT_EQ(n.participants, o.participants);
    EXPECT_EQ(n.evaluators, 3);
    EXPECT_EQ(n.evaluators, o.evaluators);
    EXPECT_EQ(n.eval_examples, 50);
    EXPECT_EQ(n.eval_examples, o.eval_examples);
    ASSERT_TRUE(o.accuracy.has_value());
    ASSERT_TRUE(n.accuracy.has_value());
    EXPECT_NEAR(*o.accuracy, kAccuracy, 1e-12);
    EXPECT_EQ(*n.accuracy, *o.accuracy);
    ASSERT_TRUE(n.loss.has_value());
    ASSERT_TRUE(o.loss.has_value());
    EXPECT_EQ(*n.loss, *o.loss);
    EXPECT_EQ(n.global_version, o.global_version);
    EXPECT_GT(o.bytes_down, 0u);
    EXPECT_EQ(n.bytes_down, o.bytes_down);
    EXPECT_EQ(n.close_reason, o.close_reason);
  }
  EXPECT_EQ(new_path.status.final_accuracy, old_path.status.final_accuracy);
  EXPECT_EQ(old_path.eval_weights_clamped, kRounds);
  EXPECT_EQ(new_path.eval_weights_clamped, old_path.eval_weights_clamped);
}

TEST(WithTaskLoopbackTest, AnInvalidReportWithGetTaskIsRefusedAndLeavesTheRoundAsIt) {
  JobSpec spec = LoopbackSpec("loopback", /*rounds=*/1, /*min_agents=*/3);
  auto server = StartServer(spec);
  ASSERT_NE(server, nullptr);
  const int port = server->grpc_port();
  SimAgent a("agent-a", 0, port), b("agent-b", 1, port), mallory("mallory", 2, port);
  for (SimAgent* s : {&a, &b, &mallory}) s->set_inline_reports(true);

  std::vector<v1::MetricsReport> bad(5);
  for (v1::MetricsReport& r : bad) {
    r.set_phase("evaluate");
    r.set_num_examples(30);
    (*r.mutable_values())["accuracy"] = 0.7;
  }
  (*bad[0].mutable_values())["accuracy"] = 7.0;  // out of [0, 1]
  bad[1].set_num_examples(-5);
  bad[2].set_phase("train");
  bad[3].set_round(99);  // no such evaluation open
  (*bad[4].mutable_values())["loss"] = std::numeric_limits<double>::infinity();
  mallory.set_refused_reports(bad);
  RunAll({&a, &b, &mallory});

  const std::vector<grpc::Status>& refusals = mallory.refusals();
  ASSERT_EQ(refusals.size(), bad.size()) << "the agent never sent its reports with GetTask";
  const grpc::StatusCode want[] = {grpc::StatusCode::INVALID_ARGUMENT, grpc::StatusCode::INVALID_ARGUMENT,
                                   grpc::StatusCode::INVALID_ARGUMENT, grpc::StatusCode::FAILED_PRECONDITION,
                                   grpc::StatusCode::INVALID_ARGUMENT};
  const char* why[] = {"accuracy must be in [0, 1]", "num_examples must be >= 0", "phase \"train\"",
                       "no evaluation of round 99", "loss must be finite"};
  for (size_t i = 0; i < refusals.size(); ++i) {
    SCOPED_TRACE("bad report " + std::to_string(i));
    EXPECT_EQ(refusals[i].error_code(), want[i]);
    EXPECT_NE(refusals[i].error_message().find("evaluation report sent with GetTask was refused"),
              std::string::npos)
        << refusals[i].error_message();
    EXPECT_NE(refusals[i].error_message().find(why[i]), std::string::npos) << refusals[i].error_message();
  }

  // Nothing of the refused reports counted: Mallory's real report (0.7, 30
  // examples) was still taken afterwards, and the round is the honest one.
  EXPECT_EQ(mallory.reports_with_get_task(), 1);
  EngineStatus s = server->engine().GetStatus();
  ASSERT_EQ(s.state, JobState::kSucceeded) << s.message;
  ASSERT_EQ(s.rounds.size(), 1u);
  EXPECT_EQ(s.rounds[0].evaluators, 3);
  EXPECT_EQ(s.rounds[0].eval_examples, 60);
  ASSERT_TRUE(s.rounds[0].accuracy.has_value());
  EXPECT_NEAR(*s.rounds[0].accuracy, (0.5 * 10 + 0.6 * 20 + 0.7 * 30) / 60.0, 1e-12);
  ASSERT_TRUE(s.rounds[0].loss.has_value());
  EXPECT_NEAR(*s.rounds[0].loss, (1.0 * 10 + 0.9 * 20 + 0.8 * 30) / 60.0, 1e-12);
}

}  // namespace
}  // namespace fedge::aggregator
