#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "fedge/aggregator/server.h"

namespace fedge::aggregator {
namespace {

// `fedge run` parses these names; renaming one breaks the runner.
TEST(StatusJsonTest, HasTheFieldsTheRunnerReads) {
  EngineStatus s;
  s.job = "ns/demo";
  s.state = JobState::kRunning;
  s.round = 2;
  s.total_rounds = 5;
  s.phase = Phase::kEvaluate;
  s.global_version = 3;
  s.global_checksum = "beef";
  s.agents_joined = 4;
  RoundRecord r;
  r.round = 1;
  r.participants = 4;
  r.accuracy = 0.5;
  r.eval_examples = 100;
  r.bytes_up = 4000;
  r.bytes_down = 8000;
  r.seconds = 1.5;
  r.global_version = 2;
  s.rounds.push_back(r);
  auto j = nlohmann::json::parse(StatusJson(s));
  EXPECT_EQ(j["job"], "ns/demo");
  EXPECT_EQ(j["state"], "Running");
  EXPECT_EQ(j["round"], 2);
  EXPECT_EQ(j["total_rounds"], 5);
  EXPECT_EQ(j["phase"], "evaluate");
  EXPECT_EQ(j["global_version"], 3);
  EXPECT_EQ(j["global_checksum"], "beef");
  EXPECT_EQ(j["agents_joined"], 4);
  EXPECT_TRUE(j["final_accuracy"].is_null());
  ASSERT_EQ(j["rounds"].size(), 1u);
  const auto& rec = j["rounds"][0];
  EXPECT_EQ(rec["round"], 1);
  EXPECT_EQ(rec["participants"], 4);
  EXPECT_TRUE(rec["loss"].is_null());
  EXPECT_EQ(rec["accuracy"], 0.5);
  EXPECT_EQ(rec["eval_examples"], 100);
  EXPECT_EQ(rec["bytes_up"], 4000);
  EXPECT_EQ(rec["bytes_down"], 8000);
  EXPECT_EQ(rec["seconds"], 1.5);
  EXPECT_EQ(rec["global_version"], 2);
}

TEST(StatusJsonTest, StateAndPhaseNames) {
  EXPECT_EQ(JobStateName(JobState::kWaitingForAgents), "WaitingForAgents");
  EXPECT_EQ(JobStateName(JobState::kInitializing), "Initializing");
  EXPECT_EQ(JobStateName(JobState::kSucceeded), "Succeeded");
  EXPECT_EQ(JobStateName(JobState::kFailed), "Failed");
  EXPECT_EQ(PhaseName(Phase::kIdle), "idle");
  EXPECT_EQ(PhaseName(Phase::kTrain), "train");
}

}  // namespace
}  // namespace fedge::aggregator
