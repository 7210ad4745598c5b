// Real gRPC server on 127.0.0.1:0 driven by plain C++ gRPC clients that play
// agents (small bundles, no libtorch), plus kill-and-restart on a checkpoint dir.
#define _TURN_OFF_PLATFORM_STRING
#include <cpprest/http_client.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <fstream>
#include <thread>

#include "../test_util.h"
#include "fedge.grpc.pb.h"
#include "fedge/aggregator/server.h"
#include "loopback.h"
#include "sim_agent.h"

namespace fedge::aggregator {
namespace {

using namespace std::chrono_literals;
using namespace testing;  // loopback.h and sim_agent.h

constexpr char kJob[] = "ns/loopback";

JobSpec Spec(int rounds) { return testing::LoopbackSpec("loopback", rounds, /*min_agents=*/3); }

std::vector<std::unique_ptr<SimAgent>> MakeAgents(int port) {
  std::vector<std::unique_ptr<SimAgent>> agents;
  for (int i = 0; i < 3; ++i)
    agents.push_back(std::make_unique<SimAgent>("agent-" + std::to_string(i), i, port));
  return agents;
}

// A started server for `spec` with MakeAgents()' three agents run to DONE on it
// (into *agents); null (and a test failure) if the server did not start.
std::unique_ptr<AggregatorServer> RunThreeAgents(const JobSpec& spec,
                                                 std::vector<std::unique_ptr<SimAgent>>* agents) {
  auto server = StartServer(spec);
  if (server == nullptr) return nullptr;
  *agents = MakeAgents(server->grpc_port());
  RunAll(*agents);
  return server;
}

std::string HttpGet(int port, const std::string& path, int* status) {
  web::http::client::http_client client("http://127.0.0.1:" + std::to_string(port));
  auto response = client.request(web::http::methods::GET, path).get();
  *status = response.status_code();
  return response.extract_string(true).get();
}

// Weighted by examples 10, 20, 30: deltas 1, 2, 3 -> 14/6 per round.
constexpr double kRoundStep = (1 * 10 + 2 * 20 + 3 * 30) / 60.0;
constexpr double kAccuracy = (0.5 * 10 + 0.6 * 20 + 0.7 * 30) / 60.0;

TEST(ServerLoopbackTest, ThreeAgentsRunTwoRoundsOverGrpc) {
  std::vector<std::unique_ptr<SimAgent>> agents;
  auto server = RunThreeAgents(Spec(2), &agents);
  ASSERT_NE(server, nullptr);

  EngineStatus s = server->engine().GetStatus();
  EXPECT_EQ(s.state, JobState::kSucceeded);
  EXPECT_EQ(s.global_version, 3);
  for (const auto& a : agents) {
    EXPECT_EQ(a->trained(), 2);
    EXPECT_EQ(a->final_version(), 3);
  }
  auto global = server->engine().Global(0);
  ASSERT_TRUE(global.ok());
  for (float v : (*global)->bundle.Find("lora_b")->values) EXPECT_NEAR(v, 2 * kRoundStep, 1e-5);
  EXPECT_TRUE(server->engine().AllAgentsDone());

  int code = 0;
  std::string body = HttpGet(server->http_port(), "/v1/status", &code);
  ASSERT_EQ(code, 200) << body;
  auto j = nlohmann::json::parse(body);
  EXPECT_EQ(j["job"], kJob);
  EXPECT_EQ(j["state"], "Succeeded");
  EXPECT_EQ(j["round"], 2);
  EXPECT_EQ(j["total_rounds"], 2);
  EXPECT_EQ(j["global_version"], 3);
  EXPECT_EQ(j["agents_joined"], 3);
  EXPECT_EQ(j["global_checksum"], s.global_checksum);
  ASSERT_EQ(j["rounds"].size(), 2u);
  for (int r = 0; r < 2; ++r) {
    const auto& rec = j["rounds"][r];
    EXPECT_EQ(rec["round"], r + 1);
    EXPECT_EQ(rec["participants"], 3);
    EXPECT_NEAR(rec["accuracy"].get<double>(), kAccuracy, 1e-9);
    EXPECT_EQ(rec["eval_examples"], 60);
    EXPECT_GT(rec["bytes_up"].get<uint64_t>(), 0u);
    EXPECT_GT(rec["bytes_down"].get<uint64_t>(), 0u);
    EXPECT_EQ(rec["global_version"], r + 2);
    EXPECT_TRUE(rec.contains("loss") && rec.contains("seconds"));
  }
  EXPECT_NEAR(j["final_accuracy"].get<double>(), kAccuracy, 1e-9);

  std::string metrics = HttpGet(server->http_port(), "/metrics", &code);
  EXPECT_EQ(code, 200);
  EXPECT_NE(metrics.find("fedge_aggregator_rounds_completed_total 2"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("fedge_aggregator_updates_received_total 7"), std::string::npos);  // 1 init + 6
  EXPECT_NE(metrics.find("fedge_aggregator_global_version 3"), std::string::npos);
  EXPECT_EQ(HttpGet(server->http_port(), "/healthz", &code), "ok\n");
  HttpGet(server->http_port(), "/readyz", &code);
  EXPECT_EQ(code, 200);
}

// The server's completion queues (ServerOptions::grpc_threads, default 2):
// one queue serves every call on one thread; four spread them over threads
// that poll the same sockets. Both run the same rounds to the same global.
TEST(ServerLoopbackTest, OneOrFourCompletionQueuesServeTheSameRounds) {
  for (int threads : {1, 4}) {
    SCOPED_TRACE("grpc_threads " + std::to_string(threads));
    ServerOptions options = LoopbackOptions();
    options.grpc_threads = threads;
    auto server = StartServer(Spec(2), options);
    ASSERT_NE(server, nullptr);
    auto agents = MakeAgents(server->grpc_port());
    RunAll(agents);
    EngineStatus s = server->engine().GetStatus();
    EXPECT_EQ(s.state, JobState::kSucceeded);
    EXPECT_EQ(s.global_version, 3);
    for (const auto& a : agents) EXPECT_EQ(a->trained(), 2);
    auto global = server->engine().Global(0);
    ASSERT_TRUE(global.ok());
    for (float v : (*global)->bundle.Find("lora_b")->values) EXPECT_NEAR(v, 2 * kRoundStep, 1e-5);
    server->Shutdown(std::chrono::seconds(2));
  }
}

// Agents that evaluate before training (as fedge-agent does): each round's
// global is evaluated with the next round's updates, the last in a phase of its
// own. The rounds, the global and every record's evaluation are those of the
// evaluation phase (--blocking-evaluation), with a ReportMetrics per agent only
// for the last round.
TEST(ServerLoopbackTest, EvaluationWithTheNextRoundsUpdatesGivesThePhasesRecords) {
  std::vector<nlohmann::json> runs;
  for (bool blocking : {true, false}) {
    SCOPED_TRACE(blocking ? "--blocking-evaluation" : "evaluation with the next round's updates");
    ServerOptions options = LoopbackOptions();
    options.blocking_evaluation = blocking;
    auto server = StartServer(Spec(3), options);
    ASSERT_NE(server, nullptr);
    auto agents = MakeAgents(server->grpc_port());
    for (auto& a : agents) a->set_evaluates_before_training(true);
    RunAll(agents);
    EngineStatus s = server->engine().GetStatus();
    EXPECT_EQ(s.state, JobState::kSucceeded);
    EXPECT_EQ(s.global_version, 4);
    ASSERT_EQ(s.rounds.size(), 3u);
    for (const RoundRecord& r : s.rounds) {
      ASSERT_TRUE(r.accuracy.has_value()) << "round " << r.round;
      EXPECT_NEAR(*r.accuracy, kAccuracy, 1e-9);
      EXPECT_EQ(r.evaluators, 3);
      EXPECT_EQ(r.eval_examples, 60);
    }
    EXPECT_NEAR(*s.final_accuracy, kAccuracy, 1e-9);
    for (const auto& a : agents) {
      EXPECT_EQ(a->trained(), 3);
      EXPECT_EQ(a->reports(), blocking ? 3 : 1);
      EXPECT_EQ(a->evaluations_with_update(), blocking ? 0 : 2);
    }
    auto global = server->engine().Global(0);
    ASSERT_TRUE(global.ok());
    for (float v : (*global)->bundle.Find("lora_b")->values) EXPECT_NEAR(v, 3 * kRoundStep, 1e-5);
    int code = 0;
    auto j = nlohmann::json::parse(HttpGet(server->http_port(), "/v1/status", &code));
    ASSERT_EQ(code, 200);
    for (auto& r : j["rounds"]) {  // what may differ between the runs
      r.erase("seconds");
      r.erase("bytes_down");
    }
    runs.push_back(j["rounds"]);
    server->Shutdown(std::chrono::seconds(2));
  }
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0], runs[1]);
}

TEST(ServerLoopbackTest, AsyncModeRunsBufferedRoundsOverGrpc) {
  JobSpec spec = Spec(3);
  spec.rounds.mode = "async";
  spec.rounds.asyncBufferSize = 3;  // each agent gives one update per version: every version takes all three
  std::vector<std::unique_ptr<SimAgent>> agents;
  auto server = RunThreeAgents(spec, &agents);
  ASSERT_NE(server, nullptr);

  EngineStatus s = server->engine().GetStatus();
  EXPECT_EQ(s.state, JobState::kSucceeded);
  EXPECT_EQ(s.global_version, 4);
  ASSERT_EQ(s.rounds.size(), 3u);
  for (const RoundRecord& r : s.rounds) {
    EXPECT_EQ(r.participants, 3);
    EXPECT_EQ(r.close_reason, "buffer_full");
  }
  // Only the final version is evaluated.
  EXPECT_FALSE(s.rounds[0].accuracy.has_value());
  EXPECT_NEAR(*s.final_accuracy, kAccuracy, 1e-9);
  for (const auto& a : agents) EXPECT_EQ(a->trained(), 3);
  auto global = server->engine().Global(0);
  ASSERT_TRUE(global.ok());
  // Nobody is ever stale here (the buffer needs all three on the same version).
  for (float v : (*global)->bundle.Find("lora_b")->values) EXPECT_NEAR(v, 3 * kRoundStep, 1e-5);
}

TEST(ServerLoopbackTest, OversizeUpdateIsAnsweredBeforeItsDataArrives) {
  ServerOptions options = LoopbackOptions();
  options.max_update_bytes = 1 << 20;
  JobSpec spec = Spec(1);
  spec.agents.minAgents = 1;
  auto server = StartServer(spec, options);
  ASSERT_NE(server, nullptr);
  SimAgent agent("agent-0", 0, server->grpc_port());
  ASSERT_TRUE(agent.Join());
  grpc::Status status;
  v1::SubmitUpdateResponse r = agent.SubmitRaw(64ull << 20, &status);  // 64 MiB declared
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(r.accepted());
  EXPECT_NE(r.reason().find("exceeds the limit"), std::string::npos) << r.reason();
  EXPECT_EQ(server->metrics().updates_rejected("too_large"), 1);
}

TEST(ServerLoopbackTest, KillAndRestartPreservesHistoryAndGlobal) {
  testing::TempDir dir;
  std::string old_session;
  RoundRecord round1;
  {
    auto server = StartServer(Spec(2), LoopbackOptions(dir.path()));
    ASSERT_NE(server, nullptr);
    auto agents = MakeAgents(server->grpc_port());
    RunAll(agents, /*stop_after_round=*/1);
    EngineStatus s = server->engine().GetStatus();
    ASSERT_EQ(s.rounds.size(), 1u);
    EXPECT_EQ(s.round, 2);
    round1 = s.rounds[0];
    old_session = agents[0]->session();
    server->Shutdown(1s);
  }  // the first aggregator is gone

  auto server = StartServer(Spec(2), LoopbackOptions(dir.path()));
  ASSERT_NE(server, nullptr);
  EngineStatus s = server->engine().GetStatus();
  EXPECT_EQ(s.state, JobState::kWaitingForAgents);
  EXPECT_EQ(s.global_version, 2);
  ASSERT_EQ(s.rounds.size(), 1u);

  auto agents = MakeAgents(server->grpc_port());
  v1::Task task;
  grpc::Status stale = agents[0]->GetTaskWithSession(old_session, &task);
  EXPECT_EQ(stale.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(stale.error_message().find("rejoin"), std::string::npos);

  RunAll(agents);
  s = server->engine().GetStatus();
  EXPECT_EQ(s.state, JobState::kSucceeded);
  EXPECT_EQ(s.global_version, 3);
  ASSERT_EQ(s.rounds.size(), 2u);
  EXPECT_EQ(s.rounds[0].round, 1);
  EXPECT_EQ(s.rounds[0].accuracy, round1.accuracy);
  EXPECT_EQ(s.rounds[0].bytes_up, round1.bytes_up);
  EXPECT_EQ(s.rounds[1].round, 2);
  for (const auto& a : agents) EXPECT_EQ(a->trained(), 1);  // only round 2 was left
  auto global = server->engine().Global(0);
  ASSERT_TRUE(global.ok());
  for (float v : (*global)->bundle.Find("lora_a")->values) EXPECT_NEAR(v, 2 * kRoundStep, 1e-5);
}

// Drives a job by hand up to the end of round 1's training: two agents,
// tensors deliberately not in name order.
struct HandDriven {
  TensorBundle Unsorted(float v) {
    return TensorBundle{{NamedTensor{"z.lora_B", {2, 2}, std::vector<float>(4, v)},
                         NamedTensor{"a.lora_A", {3}, std::vector<float>(3, v)}}};
  }
  void Run(int port) {
    a = std::make_unique<SimAgent>("agent-0", 0, port);
    b = std::make_unique<SimAgent>("agent-1", 1, port);
    for (SimAgent* s : {a.get(), b.get()}) {
      s->set_declared_layout(Unsorted(0));
      ASSERT_TRUE(s->Join());
    }
    v1::Task task;
    ASSERT_TRUE(a->GetTask(&task).ok());
    ASSERT_EQ(task.kind(), v1::TASK_KIND_INITIALIZE);
    grpc::Status status;
    v1::UpdateHeader init;
    init.set_round(0);
    init.set_is_delta(false);
    auto enc = EncodeBundle(Unsorted(1), EncodeOptions{Codec::kFp32, 64, /*zstd=*/true, 3});
    ASSERT_TRUE(a->SubmitBytes(init, *enc, &status).accepted());
    for (SimAgent* s : {a.get(), b.get()}) {
      ASSERT_TRUE(s->GetTask(&task).ok());
      ASSERT_EQ(task.kind(), v1::TASK_KIND_TRAIN);
      TensorBundle global;
      ASSERT_TRUE(s->Fetch(task, &global)) << s->error();
      v1::UpdateHeader h;
      h.set_round(1);
      h.set_base_version(task.global_version());
      h.set_is_delta(true);
      h.set_num_examples(10);
      auto delta = EncodeBundle(Unsorted(s == a.get() ? 1 : 3), EncodeOptions{Codec::kFp32, 64, true, 3});
      ASSERT_TRUE(s->SubmitBytes(h, *delta, &status).accepted());
    }
  }
  std::unique_ptr<SimAgent> a, b;
};

// Regression (issue 10, item 11): a round's new global was checkpointed only
// after its evaluation, so an aggregator that died while agents evaluated
// restarted from the previous round; and the restored global re-encoded to a
// new checksum when its tensors were not in name order.
TEST(ServerLoopbackTest, AggregatorKilledDuringEvaluationResumesWithTheRoundsGlobalAndChecksum) {
  testing::TempDir dir;
  JobSpec spec = Spec(2);
  spec.agents.minAgents = 2;
  std::string checksum;
  std::vector<float> values;
  {
    auto server = StartServer(spec, LoopbackOptions(dir.path()));
    ASSERT_NE(server, nullptr);
    HandDriven job;
    job.Run(server->grpc_port());
    EngineStatus s = server->engine().GetStatus();
    ASSERT_EQ(s.phase, Phase::kEvaluate);  // nobody has evaluated yet
    ASSERT_EQ(s.global_version, 2);
    EXPECT_EQ(s.checkpoint.saved_version, 2);
    checksum = s.global_checksum;
    values = (*server->engine().Global(0))->bundle.tensors[0].values;
    server->Shutdown(1s);
  }  // killed while the agents evaluate

  auto server = AggregatorServer::Create(spec, LoopbackOptions(dir.path()));
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  EngineStatus s = (*server)->engine().GetStatus();
  EXPECT_EQ(s.global_version, 2);          // the old aggregator: 1, round 1 lost
  EXPECT_EQ(s.global_checksum, checksum);  // the old aggregator: re-sorted tensors, another checksum
  ASSERT_EQ(s.rounds.size(), 1u);
  EXPECT_FALSE(s.rounds[0].accuracy.has_value());  // the evaluation never happened
  EXPECT_EQ(s.round, 2);
  auto global = (*server)->engine().Global(0);
  ASSERT_TRUE(global.ok());
  EXPECT_EQ((*global)->bundle.tensors[0].name, "z.lora_B");
  EXPECT_EQ((*global)->bundle.tensors[0].values, values);
}

// Issue 10, item 11: a checkpoint that cannot be written is counted and shown
// in /v1/status (the operator turns it into a condition); the job goes on.
TEST(ServerLoopbackTest, CheckpointFailuresAreCountedAndShownInStatus) {
  testing::TempDir dir;
  const std::string blocked = dir.path() + "/checkpoints";
  auto server = StartServer(Spec(1), LoopbackOptions(blocked));
  ASSERT_NE(server, nullptr);
  std::ofstream(blocked) << "a file where the checkpoint directory should be\n";
  auto agents = MakeAgents(server->grpc_port());
  RunAll(agents);
  EXPECT_EQ(server->engine().GetStatus().state, JobState::kSucceeded);
  // Initial state, after aggregation, after evaluation: three attempts.
  EXPECT_EQ(server->metrics().checkpoint_failures(), 3);
  int code = 0;
  auto j = nlohmann::json::parse(HttpGet(server->http_port(), "/v1/status", &code));
  ASSERT_EQ(code, 200);
  ASSERT_TRUE(j.contains("checkpoint")) << j.dump();
  EXPECT_EQ(j["checkpoint"]["ok"], false);
  EXPECT_EQ(j["checkpoint"]["failures"], 3);
  // The names the operator's status reporter turns into the CheckpointFailing condition.
  EXPECT_EQ(j["checkpoint"]["consecutive_failures"], 1);
  EXPECT_EQ(j["checkpoint"]["failures_total"], 3);
  EXPECT_NE(j["checkpoint"]["last_error"].get<std::string>().find("checkpoints"), std::string::npos)
      << j["checkpoint"].dump();
  std::string metrics = HttpGet(server->http_port(), "/metrics", &code);
  EXPECT_NE(metrics.find("fedge_aggregator_checkpoint_failures_total 3"), std::string::npos) << metrics;
}

// A node that joins after the job finished gets the final global from an
// aggregator started with serve_final on the job's checkpoint: DONE with the
// checkpointed version, whose bytes it fetches; nothing is trained.
TEST(ServerLoopbackTest, ServeFinalHandsTheCheckpointedGlobalToAnAgentThatJoinsLate) {
  testing::TempDir dir;
  {
    auto server = StartServer(Spec(3), LoopbackOptions(dir.path()));
    ASSERT_NE(server, nullptr);
    auto agents = MakeAgents(server->grpc_port());
    RunAll(agents, /*stop_after_round=*/1);
    ASSERT_EQ(server->engine().GetStatus().rounds.size(), 1u);
    server->Shutdown(1s);
  }
  ServerOptions options = LoopbackOptions(dir.path());
  options.serve_final = true;
  auto server = StartServer(Spec(3), options);
  ASSERT_NE(server, nullptr);
  EngineStatus s = server->engine().GetStatus();
  EXPECT_EQ(s.state, JobState::kSucceeded);
  EXPECT_EQ(s.global_version, 2);
  auto checkpointed = server->engine().Global(0);
  ASSERT_TRUE(checkpointed.ok());

  // One agent alone (the job's minAgents is 3): it is not waited for, it is told DONE.
  SimAgent late("agent-late", 7, server->grpc_port());
  ASSERT_TRUE(late.Join()) << late.error();
  v1::Task task;
  ASSERT_TRUE(late.GetTask(&task).ok());
  ASSERT_EQ(task.kind(), v1::TASK_KIND_DONE) << task.DebugString();
  EXPECT_EQ(task.global_version(), 2);
  TensorBundle global;
  ASSERT_TRUE(late.Fetch(task, &global)) << late.error();  // checks the checksum
  ASSERT_NE(global.Find("lora_a"), nullptr);
  EXPECT_EQ(global.Find("lora_a")->values, (*checkpointed)->bundle.Find("lora_a")->values);
  // Another late agent runs its whole loop: DONE at once, no training.
  SimAgent other("agent-other", 8, server->grpc_port());
  ASSERT_TRUE(other.Run()) << other.error();
  EXPECT_EQ(other.final_version(), 2);
  EXPECT_EQ(other.trained(), 0);
  s = server->engine().GetStatus();
  EXPECT_EQ(s.global_version, 2);
  EXPECT_EQ(s.rounds.size(), 1u);
}

TEST(ServerLoopbackTest, ServeFinalWithoutACheckpointSaysWhy) {
  testing::TempDir dir;
  ServerOptions options = LoopbackOptions(dir.path());
  options.serve_final = true;
  auto server = AggregatorServer::Create(Spec(3), options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(server.status().message().find("no checkpoint in " + dir.path()), std::string::npos)
      << server.status().ToString();
  options.checkpoint_dir.clear();
  server = AggregatorServer::Create(Spec(3), options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedge::aggregator
