#include "fedge/aggregator/round_engine.h"

#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <set>

#include "test_util.h"

namespace fedge::aggregator {
namespace {

using testing::SmallBundle;

constexpr int64_t kTimeoutMs = 10'000;

// What a test agent declares at Join: the SmallBundle layout.
AgentInfo Info(const std::string& id, int64_t train, int64_t eval) {
  return AgentInfo{"node-" + id, train, eval, SmallBundle(0, 0, 0, 0)};
}

EngineOptions Options(int total_rounds, int expected, int quorum = 0) {
  JobSpec spec = testing::TestJob("demo", total_rounds);
  spec.rounds.quorum = quorum;
  spec.rounds.timeoutSeconds = kTimeoutMs / 1000;
  spec.rounds.localSteps = 7;
  spec.rounds.batchSize = 5;
  spec.rounds.learningRate = 0.25;
  spec.compression.codec = "int8";
  spec.compression.blockSize = 32;
  spec.strategy.proximalMu = 0.5;
  spec.model.maxSeqLen = 48;
  return EngineOptionsFromSpec(spec, expected);
}

class RoundEngineTest : public ::testing::Test {
 protected:
  void Make(EngineOptions options, CheckpointStore* store = nullptr) {
    auto engine = RoundEngine::Create(std::move(options), &clock_, store, &metrics_);
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    engine_ = std::move(*engine);
  }

  void JoinAll(const std::vector<std::string>& ids) {
    for (const auto& id : ids) sessions_[id] = engine_->Join(id, Info(id, 100, 100));
  }

  // Make(options), every agent of `ids` joined, and the global initialized to
  // zeros by the first: round 1 is open for training.
  void StartFromZeros(EngineOptions options, const std::vector<std::string>& ids,
                      CheckpointStore* store = nullptr) {
    Make(std::move(options), store);
    JoinAll(ids);
    Initialize(ids.front(), SmallBundle(0, 0, 0, 0));
  }

  // EXPECTs the engine in `phase` with global version `version`.
  void ExpectPhaseAndVersion(Phase phase, int64_t version) {
    EngineStatus s = engine_->GetStatus();
    EXPECT_EQ(s.phase, phase);
    EXPECT_EQ(s.global_version, version);
  }

  // Drives INITIALIZE with the first agent; the global becomes `initial`.
  void Initialize(const std::string& agent, const TensorBundle& initial) {
    TaskInfo t = engine_->GetTask(agent, 0);
    ASSERT_EQ(t.kind, TaskKind::kInitialize);
    UpdateMeta meta;
    meta.agent_id = agent;
    meta.round = 0;
    meta.is_delta = false;
    UpdateVerdict v = engine_->SubmitUpdate(meta, initial);
    ASSERT_TRUE(v.accepted) << v.reason;
  }

  UpdateVerdict Submit(const std::string& agent, int64_t round, int64_t base, const TensorBundle& delta,
                       int64_t n = 10, double loss = 1.0) {
    UpdateMeta meta;
    meta.agent_id = agent;
    meta.round = round;
    meta.base_version = base;
    meta.num_examples = n;
    meta.train_loss = loss;
    meta.encoded_bytes = 100;
    meta.raw_bytes = 400;
    return engine_->SubmitUpdate(meta, delta);
  }

  Status Evaluate(const std::string& agent, int64_t round, int64_t version, double accuracy, int64_t n,
                  double loss = 0.5) {
    return engine_->ReportEvaluation(EvalReport{.agent_id = agent,
                                                .round = round,
                                                .global_version = version,
                                                .num_examples = n,
                                                .accuracy = accuracy,
                                                .loss = loss});
  }

  std::vector<float> Values(const std::string& name) {
    auto g = engine_->Global(0);
    EXPECT_TRUE(g.ok());
    return (*g)->bundle.Find(name)->values;
  }

  FakeClock clock_;
  AggregatorMetrics metrics_;
  std::unique_ptr<RoundEngine> engine_;
  std::map<std::string, std::string> sessions_;
};

TEST_F(RoundEngineTest, WaitsForExpectedAgentsThenOneAgentInitializes) {
  Make(Options(2, 2));
  JoinAll({"a"});
  EXPECT_EQ(engine_->GetTask("a", 0).kind, TaskKind::kWait);
  EXPECT_EQ(engine_->GetStatus().state, JobState::kWaitingForAgents);
  JoinAll({"b"});
  EXPECT_EQ(engine_->GetStatus().state, JobState::kInitializing);
  EXPECT_EQ(engine_->GetTask("b", 0).kind, TaskKind::kInitialize);
  TaskInfo other = engine_->GetTask("a", 0);
  EXPECT_EQ(other.kind, TaskKind::kWait);
  EXPECT_GT(other.retry_after_ms, 0);
  // Only the asked agent may upload the initial state.
  UpdateMeta meta;
  meta.agent_id = "a";
  meta.is_delta = false;
  EXPECT_FALSE(engine_->SubmitUpdate(meta, SmallBundle(1, 2, 3, 4)).accepted);
  meta.agent_id = "b";
  ASSERT_TRUE(engine_->SubmitUpdate(meta, SmallBundle(1, 2, 3, 4)).accepted);

  EngineStatus s = engine_->GetStatus();
  EXPECT_EQ(s.state, JobState::kRunning);
  EXPECT_EQ(s.phase, Phase::kTrain);
  EXPECT_EQ(s.global_version, 1);
  TaskInfo t = engine_->GetTask("a", 1);
  ASSERT_EQ(t.kind, TaskKind::kTrain);
  EXPECT_EQ(t.round, 1);
  EXPECT_EQ(t.global_version, 1);
  EXPECT_EQ(t.global_checksum, s.global_checksum);
  EXPECT_EQ(t.deadline_unix_ms, clock_.NowUnixMs() + kTimeoutMs);
  ASSERT_NE(t.config.spec, nullptr);
  EXPECT_EQ(t.config.spec->rounds.localSteps, 7);
  EXPECT_EQ(t.config.spec->rounds.batchSize, 5);
  EXPECT_FLOAT_EQ(t.config.learning_rate, 0.25f);
  EXPECT_EQ(t.config.spec->compression.codec, "int8");
  EXPECT_EQ(t.config.spec->compression.blockSize, 32);
  EXPECT_DOUBLE_EQ(t.config.spec->strategy.proximalMu, 0.5);
  EXPECT_EQ(t.config.spec->model.maxSeqLen, 48);
}

TEST_F(RoundEngineTest, InitializerThatMissesItsDeadlineIsReplaced) {
  Make(Options(1, 2));
  JoinAll({"a", "b"});
  ASSERT_EQ(engine_->GetTask("a", 0).kind, TaskKind::kInitialize);
  EXPECT_EQ(engine_->GetTask("b", 0).kind, TaskKind::kWait);
  clock_.AdvanceMs(kTimeoutMs);
  EXPECT_EQ(engine_->GetTask("b", 0).kind, TaskKind::kInitialize);
}

TEST_F(RoundEngineTest, RoundAggregatesWithFedAvgAndWeightsEvaluation) {
  Make(Options(2, 2));
  JoinAll({"a", "b"});
  Initialize("a", SmallBundle(1, 2, 0.5f, -1));
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 0, 2, 4), /*n=*/1, /*loss=*/2.0).accepted);
  EXPECT_EQ(engine_->GetStatus().phase, Phase::kTrain);
  EXPECT_EQ(engine_->GetTask("a", 1).kind, TaskKind::kWait);  // answered, waiting for b
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(-1, 4, -1, 0), /*n=*/3, /*loss=*/1.0).accepted);

  ExpectPhaseAndVersion(Phase::kEvaluate, 2);
  EXPECT_EQ(Values("a"), (std::vector<float>{0.5f, 5.0f}));
  EXPECT_EQ(Values("b"), (std::vector<float>{0.25f, 0.0f}));

  TaskInfo t = engine_->GetTask("b", 2);
  ASSERT_EQ(t.kind, TaskKind::kEvaluate);
  EXPECT_EQ(t.global_version, 2);
  EXPECT_EQ(t.round, 1);
  ASSERT_TRUE(Evaluate("a", 1, 2, /*accuracy=*/0.5, /*n=*/10, /*loss=*/1.0).ok());
  EXPECT_EQ(Evaluate("a", 1, 2, 0.5, 10).code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(Evaluate("b", 1, 1, 1.0, 30).code(), StatusCode::kFailedPrecondition);  // wrong version
  ASSERT_TRUE(Evaluate("b", 1, 2, /*accuracy=*/1.0, /*n=*/30, /*loss=*/0.2).ok());

  EngineStatus s = engine_->GetStatus();
  ASSERT_EQ(s.rounds.size(), 1u);
  const RoundRecord& r = s.rounds[0];
  EXPECT_EQ(r.round, 1);
  EXPECT_EQ(r.participants, 2);
  EXPECT_DOUBLE_EQ(*r.accuracy, (0.5 * 10 + 1.0 * 30) / 40);  // 0.875
  EXPECT_DOUBLE_EQ(*r.loss, (1.0 * 10 + 0.2 * 30) / 40);
  EXPECT_EQ(r.eval_examples, 40);
  EXPECT_DOUBLE_EQ(*r.train_loss, (2.0 * 1 + 1.0 * 3) / 4);
  EXPECT_EQ(r.bytes_up, 200u);
  EXPECT_EQ(r.global_version, 2);
  EXPECT_EQ(r.close_reason, "all_answered");
  // Round 2 started right away.
  EXPECT_EQ(s.round, 2);
  EXPECT_EQ(s.phase, Phase::kTrain);
  EXPECT_EQ(engine_->GetTask("a", 2).round, 2);
  EXPECT_EQ(metrics_.rounds_completed(), 1);
  EXPECT_FALSE(s.final_accuracy.has_value());
}

TEST_F(RoundEngineTest, DeadlineClosesRoundWithQuorumWhenOneAgentIsDead) {
  StartFromZeros(Options(1, 3, /*quorum=*/2), {"a", "b", "c"});
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(3, 3, 3, 3)).accepted);
  // "c" died; quorum is met but not everyone answered: wait for the deadline.
  clock_.AdvanceMs(kTimeoutMs - 1);
  engine_->Tick();
  EXPECT_EQ(engine_->GetStatus().phase, Phase::kTrain);
  clock_.AdvanceMs(1);
  engine_->Tick();
  ExpectPhaseAndVersion(Phase::kEvaluate, 2);
  EXPECT_EQ(Values("a"), (std::vector<float>{2, 2}));
  // Evaluation also closes at its deadline without the dead agent.
  ASSERT_TRUE(Evaluate("a", 1, 2, 1.0, 5).ok());
  ASSERT_TRUE(Evaluate("b", 1, 2, 0.0, 5).ok());
  clock_.AdvanceMs(kTimeoutMs);
  EngineStatus s = engine_->GetStatus();
  EXPECT_EQ(s.state, JobState::kSucceeded);
  ASSERT_EQ(s.rounds.size(), 1u);
  EXPECT_EQ(s.rounds[0].participants, 2);
  EXPECT_EQ(s.rounds[0].close_reason, "quorum_at_deadline");
  EXPECT_DOUBLE_EQ(*s.final_accuracy, 0.5);
}

TEST_F(RoundEngineTest, MissingQuorumExtendsDeadlineOnceThenFails) {
  StartFromZeros(Options(1, 3, /*quorum=*/2), {"a", "b", "c"});
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  clock_.AdvanceMs(kTimeoutMs);
  TaskInfo t = engine_->GetTask("b", 1);
  ASSERT_EQ(t.kind, TaskKind::kTrain);  // still open: extended
  EXPECT_EQ(t.deadline_unix_ms, clock_.NowUnixMs() + kTimeoutMs);
  clock_.AdvanceMs(kTimeoutMs);
  EngineStatus s = engine_->GetStatus();
  EXPECT_EQ(s.state, JobState::kFailed);
  EXPECT_NE(s.message.find("1 of 2 required updates"), std::string::npos) << s.message;
  EXPECT_EQ(s.global_version, 1);
}

TEST_F(RoundEngineTest, QuorumReachedDuringExtensionClosesAtExtendedDeadline) {
  StartFromZeros(Options(1, 3, /*quorum=*/2), {"a", "b", "c"});
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  clock_.AdvanceMs(kTimeoutMs);
  engine_->Tick();
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);  // late for the first deadline: fine
  clock_.AdvanceMs(kTimeoutMs);
  ExpectPhaseAndVersion(Phase::kEvaluate, 2);
}

TEST_F(RoundEngineTest, QuorumZeroClosesBelowQuorumAfterExtension) {
  StartFromZeros(Options(1, 3, /*quorum=*/0), {"a", "b", "c"});
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  clock_.AdvanceMs(kTimeoutMs);
  EXPECT_EQ(engine_->GetStatus().phase, Phase::kTrain);  // extended once
  clock_.AdvanceMs(kTimeoutMs);
  ExpectPhaseAndVersion(Phase::kEvaluate, 2);
  clock_.AdvanceMs(kTimeoutMs);
  EngineStatus s = engine_->GetStatus();
  ASSERT_EQ(s.rounds.size(), 1u);
  EXPECT_EQ(s.rounds[0].close_reason, "below_quorum_after_extension");
  EXPECT_FALSE(s.rounds[0].accuracy.has_value());  // nobody evaluated
}

TEST_F(RoundEngineTest, LateUpdateForClosedRoundIsRejected) {
  StartFromZeros(Options(2, 2, /*quorum=*/1), {"a", "b"});
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  clock_.AdvanceMs(kTimeoutMs);
  engine_->Tick();
  ASSERT_EQ(engine_->GetStatus().phase, Phase::kEvaluate);
  std::vector<float> before = Values("a");
  UpdateVerdict v = Submit("b", 1, 1, SmallBundle(9, 9, 9, 9));
  EXPECT_FALSE(v.accepted);
  EXPECT_EQ(v.reason,
            "round 1 is closed (quorum_at_deadline, 1 updates): this update arrived late; ask for a task");
  EXPECT_EQ(Values("a"), before);
  EXPECT_EQ(metrics_.updates_rejected("round_closed"), 1);
}

TEST_F(RoundEngineTest, StaleBaseVersionIsRejected) {
  StartFromZeros(Options(1, 1), {"a"});
  UpdateVerdict v = Submit("a", 1, /*base=*/0, SmallBundle(1, 1, 1, 1));
  EXPECT_FALSE(v.accepted);
  EXPECT_NE(v.reason.find("stale base version 0"), std::string::npos) << v.reason;
  EXPECT_EQ(v.reason_label, "stale_base");
  EXPECT_EQ(engine_->GetStatus().phase, Phase::kTrain);
  EXPECT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);  // a correct retry still counts
}

TEST_F(RoundEngineTest, WrongLayoutIsRejectedAndGlobalUnchanged) {
  Make(Options(1, 2));
  JoinAll({"a", "b"});
  Initialize("a", SmallBundle(1, 2, 3, 4));
  TensorBundle wrong = SmallBundle(1, 1, 1, 1);
  wrong.tensors[1].shape = {2};
  UpdateVerdict v = Submit("a", 1, 1, wrong);
  EXPECT_FALSE(v.accepted);
  EXPECT_EQ(v.reason_label, "layout");
  EXPECT_NE(v.reason.find("layout"), std::string::npos);
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(2, 2, 2, 2), 10).accepted);
  // "a" may still answer properly; the rejected delta left no trace.
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(0, 0, 0, 0), 10).accepted);
  EXPECT_EQ(Values("a"), (std::vector<float>{2, 3}));
  EXPECT_EQ(metrics_.updates_rejected("layout"), 1);
}

TEST_F(RoundEngineTest, NonFiniteUpdateIsRejected) {
  Make(Options(1, 1));
  JoinAll({"a"});
  Initialize("a", SmallBundle(1, 2, 3, 4));
  UpdateVerdict v = Submit("a", 1, 1, SmallBundle(1, NAN, 1, 1));
  EXPECT_FALSE(v.accepted);
  EXPECT_EQ(v.reason_label, "non_finite");
  v = Submit("a", 1, 1, SmallBundle(1, 1, INFINITY, 1));
  EXPECT_FALSE(v.accepted);
  EXPECT_EQ(Values("a"), (std::vector<float>{1, 2}));
  EXPECT_EQ(engine_->GetStatus().global_version, 1);
}

TEST_F(RoundEngineTest, NonParticipantAndDuplicateUpdatesAreRejected) {
  EngineOptions o = Options(1, 2);
  o.fraction = 0.5;  // one of two invited
  StartFromZeros(o, {"a", "b"});
  std::string invited = engine_->GetTask("a", 1).kind == TaskKind::kTrain ? "a" : "b";
  std::string other = invited == "a" ? "b" : "a";
  EXPECT_EQ(engine_->GetTask(other, 1).kind, TaskKind::kWait);
  UpdateVerdict v = Submit(other, 1, 1, SmallBundle(1, 1, 1, 1));
  EXPECT_EQ(v.reason_label, "not_participant");
  ASSERT_TRUE(Submit(invited, 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  // The round closed on its only participant; evaluation asks both.
  EXPECT_EQ(engine_->GetTask(other, 2).kind, TaskKind::kEvaluate);
}

TEST_F(RoundEngineTest, UnknownSessionIsRejectedWithRejoinAdvice) {
  Make(Options(1, 1));
  JoinAll({"a"});
  EXPECT_TRUE(engine_->CheckSession("a", sessions_["a"]).ok());
  Status s = engine_->CheckSession("a", "bogus");
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated);
  EXPECT_NE(s.message().find("rejoin"), std::string::npos);
  EXPECT_EQ(engine_->CheckSession("nobody", "").code(), StatusCode::kUnauthenticated);
  // A re-join replaces the old session.
  std::string old = sessions_["a"];
  JoinAll({"a"});
  EXPECT_NE(old, sessions_["a"]);
  EXPECT_EQ(engine_->CheckSession("a", old).code(), StatusCode::kUnauthenticated);
}

TEST_F(RoundEngineTest, SucceededJobHandsOutDone) {
  StartFromZeros(Options(1, 1), {"a"});
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  ASSERT_TRUE(Evaluate("a", 1, 2, 0.75, 4).ok());
  EngineStatus s = engine_->GetStatus();
  EXPECT_EQ(s.state, JobState::kSucceeded);
  EXPECT_DOUBLE_EQ(*s.final_accuracy, 0.75);
  EXPECT_FALSE(engine_->AllAgentsDone());
  TaskInfo t = engine_->GetTask("a", 2);
  EXPECT_EQ(t.kind, TaskKind::kDone);
  EXPECT_EQ(t.global_version, 2);
  EXPECT_TRUE(engine_->AllAgentsDone());
  EXPECT_FALSE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
}

TEST_F(RoundEngineTest, AgentsWithoutDataAnswerWithoutWeight) {
  StartFromZeros(Options(1, 2), {"a", "b"});
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(9, 9, 9, 9), /*n=*/0).accepted);
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(1, 1, 1, 1), /*n=*/5).accepted);
  EXPECT_EQ(Values("a"), (std::vector<float>{1, 1}));  // a's delta carried no weight
  ASSERT_TRUE(Evaluate("a", 1, 2, 0.0, /*n=*/0).ok());
  ASSERT_TRUE(Evaluate("b", 1, 2, 0.8, /*n=*/5).ok());
  EngineStatus s = engine_->GetStatus();
  EXPECT_EQ(s.state, JobState::kSucceeded);  // nobody had to wait for a deadline
  EXPECT_DOUBLE_EQ(*s.final_accuracy, 0.8);
  EXPECT_EQ(Evaluate("a", 1, 2, 0.0, -1).code(), StatusCode::kFailedPrecondition);  // closed by now
}

TEST_F(RoundEngineTest, RoundWithOnlyZeroWeightAnswersKeepsTheGlobal) {
  Make(Options(1, 1));
  JoinAll({"a"});
  Initialize("a", SmallBundle(1, 2, 3, 4));
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(9, 9, 9, 9), /*n=*/0).accepted);
  ExpectPhaseAndVersion(Phase::kEvaluate, 2);
  EXPECT_EQ(Values("a"), (std::vector<float>{1, 2}));
}

TEST_F(RoundEngineTest, DeadAgentsAreLeftOutOfLaterRounds) {
  EngineOptions o = Options(2, 2, /*quorum=*/1);
  o.agent_liveness_ms = kTimeoutMs + 5000;
  StartFromZeros(o, {"a", "b"});
  // "b" never speaks again. Round 1 waits for it until the deadline.
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  clock_.AdvanceMs(kTimeoutMs);
  ASSERT_TRUE(Evaluate("a", 1, 2, 1.0, 1).ok());
  clock_.AdvanceMs(kTimeoutMs);
  engine_->Tick();
  // Round 2 (started 20 s in) invites only "a"; "b" was last heard 20 s ago.
  ASSERT_EQ(engine_->GetTask("a", 2).kind, TaskKind::kTrain);
  ASSERT_TRUE(Submit("a", 2, 2, SmallBundle(1, 1, 1, 1)).accepted);
  EXPECT_EQ(engine_->GetStatus().phase, Phase::kEvaluate);
}

TEST_F(RoundEngineTest, CheckpointResumeContinuesFromLastCompletedRound) {
  testing::TempDir dir;
  CheckpointStore store(dir.path());
  StartFromZeros(Options(3, 2), {"a", "b"}, &store);
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(3, 3, 3, 3)).accepted);
  ASSERT_TRUE(Evaluate("a", 1, 2, 0.5, 10).ok());
  ASSERT_TRUE(Evaluate("b", 1, 2, 0.7, 10).ok());
  // Round 2 is in flight when the aggregator dies.
  ASSERT_TRUE(Submit("a", 2, 2, SmallBundle(5, 5, 5, 5)).accepted);
  std::string checksum = engine_->GetStatus().global_checksum;
  engine_.reset();

  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_TRUE(loaded->has_value());
  EXPECT_EQ((*loaded)->completed_round, 1);
  Make(Options(3, 2), &store);
  ASSERT_TRUE(engine_->Restore(std::move(**loaded)).ok());
  EngineStatus s = engine_->GetStatus();
  EXPECT_EQ(s.state, JobState::kWaitingForAgents);
  EXPECT_EQ(s.global_version, 2);
  EXPECT_EQ(s.global_checksum, checksum);
  ASSERT_EQ(s.rounds.size(), 1u);
  EXPECT_DOUBLE_EQ(*s.rounds[0].accuracy, 0.6);
  EXPECT_EQ(Values("a"), (std::vector<float>{2, 2}));
  // Old sessions are gone: agents rejoin, then round 2 starts over from version 2.
  EXPECT_EQ(engine_->CheckSession("a", sessions_["a"]).code(), StatusCode::kUnauthenticated);
  JoinAll({"a", "b"});
  TaskInfo t = engine_->GetTask("a", 2);
  ASSERT_EQ(t.kind, TaskKind::kTrain);
  EXPECT_EQ(t.round, 2);
  EXPECT_EQ(t.global_version, 2);
  ASSERT_TRUE(Submit("a", 2, 2, SmallBundle(1, 1, 1, 1)).accepted);
  ASSERT_TRUE(Submit("b", 2, 2, SmallBundle(1, 1, 1, 1)).accepted);
  EXPECT_EQ(engine_->GetStatus().global_version, 3);
}

TEST_F(RoundEngineTest, RestoreRefusesAnotherJobsCheckpoint) {
  Make(Options(3, 2));
  CheckpointData data;
  data.job = "other/job";
  data.global_version = 1;
  data.global = SmallBundle(0, 0, 0, 0);
  EXPECT_EQ(engine_->Restore(data).code(), StatusCode::kFailedPrecondition);
}

TEST_F(RoundEngineTest, RestoreOfFinishedJobIsSucceeded) {
  Make(Options(2, 1));
  CheckpointData data;
  data.job = "ns/demo";
  data.completed_round = 2;
  data.total_rounds = 2;
  data.global_version = 3;
  data.global = SmallBundle(0, 0, 0, 0);
  data.final_accuracy = 0.9;
  ASSERT_TRUE(engine_->Restore(data).ok());
  JoinAll({"a"});
  EXPECT_EQ(engine_->GetTask("a", 0).kind, TaskKind::kDone);
  EXPECT_EQ(engine_->GetStatus().state, JobState::kSucceeded);
}

TEST_F(RoundEngineTest, OverSelectionClosesAtTargetAndLaterUploadsAreLate) {
  EngineOptions o = Options(1, 5);
  o.fraction = 0.4;        // target = ceil(5 x 0.4) = 2
  o.over_selection = 2.0;  // invite 4
  StartFromZeros(o, {"a", "b", "c", "d", "e"});
  std::vector<std::string> invited;
  for (const std::string id : {"a", "b", "c", "d", "e"}) {
    if (engine_->GetTask(id, 1).kind == TaskKind::kTrain) invited.push_back(id);
  }
  ASSERT_EQ(invited.size(), 4u);
  ASSERT_TRUE(Submit(invited[0], 1, 1, SmallBundle(1, 1, 1, 1), 1).accepted);
  EXPECT_EQ(engine_->GetStatus().phase, Phase::kTrain);
  ASSERT_TRUE(Submit(invited[1], 1, 1, SmallBundle(3, 3, 3, 3), 3).accepted);
  // Closed at the target without waiting for the other two (or the deadline).
  EngineStatus s = engine_->GetStatus();
  EXPECT_EQ(s.phase, Phase::kEvaluate);
  EXPECT_EQ(Values("a"), (std::vector<float>{2.5f, 2.5f}));  // (1*1 + 3*3) / 4
  UpdateVerdict late = Submit(invited[2], 1, 1, SmallBundle(9, 9, 9, 9));
  EXPECT_FALSE(late.accepted);
  EXPECT_EQ(late.reason_label, "round_closed");
  EXPECT_NE(late.reason.find("target_reached, 2 updates"), std::string::npos) << late.reason;
  EXPECT_NE(late.reason.find("late"), std::string::npos) << late.reason;
  EXPECT_EQ(metrics_.updates_rejected("round_closed"), 1);
  EXPECT_EQ(Values("a"), (std::vector<float>{2.5f, 2.5f}));
  for (const std::string id : {"a", "b", "c", "d", "e"}) ASSERT_TRUE(Evaluate(id, 1, 2, 0.5, 1).ok());
  s = engine_->GetStatus();
  ASSERT_EQ(s.rounds.size(), 1u);
  EXPECT_EQ(s.rounds[0].invited, 4);
  EXPECT_EQ(s.rounds[0].participants, 2);
  EXPECT_EQ(s.rounds[0].close_reason, "target_reached");
}

TEST_F(RoundEngineTest, OverSelectionDeadlineNeedsOnlyTheTarget) {
  EngineOptions o = Options(1, 4);
  o.fraction = 0.5;        // target 2
  o.over_selection = 1.5;  // invite 3
  StartFromZeros(o, {"a", "b", "c", "d"});
  std::vector<std::string> invited;
  for (const std::string id : {"a", "b", "c", "d"}) {
    if (engine_->GetTask(id, 1).kind == TaskKind::kTrain) invited.push_back(id);
  }
  ASSERT_EQ(invited.size(), 3u);
  ASSERT_TRUE(Submit(invited[0], 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  clock_.AdvanceMs(kTimeoutMs);
  engine_->Tick();
  // One of the target two: extended, not closed.
  EXPECT_EQ(engine_->GetStatus().phase, Phase::kTrain);
  ASSERT_TRUE(Submit(invited[1], 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  EXPECT_EQ(engine_->GetStatus().phase, Phase::kEvaluate);
}

TEST_F(RoundEngineTest, ReplayOfAnOldRoundIsRejectedAsReplay) {
  StartFromZeros(Options(2, 1), {"a"});
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  ASSERT_TRUE(Evaluate("a", 1, 2, 0.5, 1).ok());
  ASSERT_EQ(engine_->GetStatus().round, 2);
  std::vector<float> before = Values("a");
  UpdateVerdict v = Submit("a", 1, 1, SmallBundle(1, 1, 1, 1));
  EXPECT_FALSE(v.accepted);
  EXPECT_EQ(v.reason_label, "replay");
  EXPECT_NE(v.reason.find("replay"), std::string::npos) << v.reason;
  EXPECT_EQ(metrics_.updates_rejected("replay"), 1);
  // A rejoin does not reset the replay defence.
  JoinAll({"a"});
  EXPECT_EQ(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).reason_label, "replay");
  EXPECT_EQ(Values("a"), before);
  EXPECT_EQ(engine_->GetStatus().global_version, 2);
}

TEST_F(RoundEngineTest, UpdateFromAnAgentThatNeverJoinedIsRejected) {
  StartFromZeros(Options(1, 1), {"a"});
  UpdateVerdict v = Submit("mallory", 1, 1, SmallBundle(5, 5, 5, 5));
  EXPECT_FALSE(v.accepted);
  EXPECT_EQ(v.reason_label, "unknown_agent");
  EXPECT_EQ(metrics_.updates_rejected("unknown_agent"), 1);
  EXPECT_EQ(Values("a"), (std::vector<float>{0, 0}));
  EXPECT_FALSE(engine_->IsJoined("mallory"));
  EXPECT_TRUE(engine_->IsJoined("a"));
}

TEST_F(RoundEngineTest, AcceptsUpdatesForFollowsTheOpenTrainRound) {
  Make(Options(1, 1));
  JoinAll({"a"});
  EXPECT_FALSE(engine_->AcceptsUpdatesFor(1));
  Initialize("a", SmallBundle(0, 0, 0, 0));
  EXPECT_TRUE(engine_->AcceptsUpdatesFor(1));
  EXPECT_FALSE(engine_->AcceptsUpdatesFor(2));
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  EXPECT_FALSE(engine_->AcceptsUpdatesFor(1));  // evaluating
}

// --- asynchronous (FedBuff) mode -------------------------------------------

EngineOptions AsyncOptions(int total_rounds, int expected, int buffer) {
  EngineOptions o = Options(total_rounds, expected);
  o.async = true;
  o.async_buffer_size = buffer;
  o.staleness_exponent = 0.5;  // weight 1/sqrt(1 + staleness)
  return o;
}

TEST_F(RoundEngineTest, AsyncAggregatesEveryKUpdatesAndWeightsStaleOnesDown) {
  StartFromZeros(AsyncOptions(/*rounds=*/2, /*agents=*/3, /*K=*/2), {"a", "b", "c"});
  // Everybody may train on version 1 at once; nobody is "not selected".
  for (const std::string id : {"a", "b", "c"}) {
    TaskInfo t = engine_->GetTask(id, 1);
    ASSERT_EQ(t.kind, TaskKind::kTrain) << id;
    EXPECT_EQ(t.global_version, 1);
    EXPECT_EQ(t.round, 1);
  }
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1), 1).accepted);
  EXPECT_EQ(engine_->GetTask("a", 1).kind, TaskKind::kWait);  // buffered; waits for version 2
  ASSERT_TRUE(Submit("c", 1, 1, SmallBundle(3, 3, 3, 3), 1).accepted);
  // K = 2 reached: version 2 = 0 + (1 + 3) / 2, no evaluation in between.
  EngineStatus s = engine_->GetStatus();
  EXPECT_EQ(s.global_version, 2);
  EXPECT_EQ(s.phase, Phase::kTrain);
  EXPECT_EQ(s.round, 2);
  ASSERT_EQ(s.rounds.size(), 1u);
  EXPECT_EQ(s.rounds[0].close_reason, "buffer_full");
  EXPECT_EQ(s.rounds[0].participants, 2);
  EXPECT_EQ(Values("a"), (std::vector<float>{2, 2}));
  EXPECT_EQ(engine_->GetTask("a", 2).kind, TaskKind::kTrain);

  // b trained on version 1 (1 version stale): weight 1/sqrt(2). a is fresh.
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(4, 4, 4, 4), 1).accepted);
  ASSERT_TRUE(Submit("a", 2, 2, SmallBundle(2, 2, 2, 2), 1).accepted);
  // version 3 = 2 + (4/sqrt(2) + 2) / 2 = 3 + sqrt(2)
  s = engine_->GetStatus();
  EXPECT_EQ(s.global_version, 3);
  EXPECT_EQ(s.phase, Phase::kEvaluate);  // the last round's version is evaluated
  for (float x : Values("a")) EXPECT_NEAR(x, 3 + std::sqrt(2.0), 1e-6);
  for (const std::string id : {"a", "b", "c"}) ASSERT_TRUE(Evaluate(id, 2, 3, 0.75, 10).ok());
  s = engine_->GetStatus();
  EXPECT_EQ(s.state, JobState::kSucceeded);
  ASSERT_EQ(s.rounds.size(), 2u);
  EXPECT_DOUBLE_EQ(*s.final_accuracy, 0.75);
  EXPECT_FALSE(s.rounds[0].accuracy.has_value());
}

TEST_F(RoundEngineTest, AsyncRejectsReplaysTooStaleAndFutureUpdates) {
  EngineOptions o = AsyncOptions(5, 3, 1);
  o.max_staleness = 1;
  StartFromZeros(o, {"a", "b", "c"});
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1), 1).accepted);  // -> v2
  EXPECT_EQ(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1), 1).reason_label, "replay");
  ASSERT_TRUE(Submit("b", 2, 2, SmallBundle(1, 1, 1, 1), 1).accepted);  // -> v3
  ASSERT_EQ(engine_->GetStatus().global_version, 3);
  UpdateVerdict v = Submit("c", 1, 1, SmallBundle(1, 1, 1, 1), 1);  // 2 versions stale
  EXPECT_EQ(v.reason_label, "too_stale");
  EXPECT_NE(v.reason.find("2 versions stale"), std::string::npos) << v.reason;
  EXPECT_EQ(Submit("c", 3, 7, SmallBundle(1, 1, 1, 1), 1).reason_label, "stale_base");  // never published
  EXPECT_EQ(Submit("c", 9, 3, SmallBundle(1, 1, 1, 1), 1).reason_label, "round_not_open");
  EXPECT_EQ(Values("a"), (std::vector<float>{2, 2}));
  EXPECT_EQ(engine_->GetStatus().global_version, 3);
  ASSERT_TRUE(Submit("c", 2, 2, SmallBundle(2, 2, 2, 2), 1).accepted);  // 1 stale: 2/sqrt(2)
  for (float x : Values("a")) EXPECT_NEAR(x, 2 + std::sqrt(2.0), 1e-6);
}

TEST_F(RoundEngineTest, AsyncPartialBufferIsAggregatedAtTheTimeout) {
  StartFromZeros(AsyncOptions(3, 2, 2), {"a", "b"});
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(2, 2, 2, 2), 1).accepted);
  clock_.AdvanceMs(kTimeoutMs - 1);
  engine_->Tick();
  EXPECT_EQ(engine_->GetStatus().global_version, 1);
  clock_.AdvanceMs(1);
  engine_->Tick();
  EngineStatus s = engine_->GetStatus();
  EXPECT_EQ(s.global_version, 2);
  ASSERT_EQ(s.rounds.size(), 1u);
  EXPECT_EQ(s.rounds[0].close_reason, "buffer_timeout");
  // An empty buffer just keeps waiting.
  clock_.AdvanceMs(3 * kTimeoutMs);
  engine_->Tick();
  EXPECT_EQ(engine_->GetStatus().global_version, 2);
  EXPECT_EQ(engine_->GetStatus().state, JobState::kRunning);
}

TEST(EngineOptionsTest, SpecRoundFieldsReachTheEngine) {
  JobSpec spec;
  spec.rounds.overSelection = 1.5;
  spec.rounds.mode = "async";
  spec.rounds.asyncBufferSize = 7;
  spec.rounds.stalenessExponent = 1.0;
  spec.rounds.maxStaleness = 4;
  EngineOptions o = EngineOptionsFromSpec(spec, 1);
  EXPECT_DOUBLE_EQ(o.over_selection, 1.5);
  EXPECT_TRUE(o.async);
  EXPECT_EQ(o.async_buffer_size, 7);
  EXPECT_DOUBLE_EQ(o.staleness_exponent, 1.0);
  EXPECT_EQ(o.max_staleness, 4);
  EXPECT_FALSE(EngineOptionsFromSpec(JobSpec{}, 1).async);
}

TEST_F(RoundEngineTest, UpdateAndEvaluationWeightsAreBoundedByTheJoinDeclarationAndTheCap) {
  Make(Options(1, 3));  // cap: localSteps 7 x batchSize 5 = 35
  sessions_["a"] = engine_->Join("a", Info("a", 100, 100));
  sessions_["b"] = engine_->Join("b", Info("b", 4, 2));
  sessions_["c"] = engine_->Join("c", Info("c", 10, 10));
  Initialize("a", SmallBundle(0, 0, 0, 0));
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1), /*n=*/100).accepted);   // capped: 35
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(2, 2, 2, 2), /*n=*/1000).accepted);  // its Join: 4
  ASSERT_TRUE(Submit("c", 1, 1, SmallBundle(3, 3, 3, 3), /*n=*/10).accepted);    // as claimed
  EXPECT_EQ(metrics_.weights_clamped("update", "above_cap"), 1);
  EXPECT_EQ(metrics_.weights_clamped("update", "above_join"), 1);
  const float x = (35 * 1 + 4 * 2 + 10 * 3) / 49.0f;
  EXPECT_EQ(Values("a"), (std::vector<float>{x, x}));
  ASSERT_TRUE(Evaluate("a", 1, 2, /*accuracy=*/1.0, /*n=*/100).ok());  // 35
  ASSERT_TRUE(Evaluate("b", 1, 2, /*accuracy=*/0.0, /*n=*/500).ok());  // 2
  ASSERT_TRUE(Evaluate("c", 1, 2, /*accuracy=*/0.5, /*n=*/10).ok());
  EngineStatus s = engine_->GetStatus();
  ASSERT_EQ(s.rounds.size(), 1u);
  EXPECT_DOUBLE_EQ(*s.rounds[0].accuracy, (35 * 1.0 + 2 * 0.0 + 10 * 0.5) / 47);
  EXPECT_EQ(s.rounds[0].eval_examples, 47);
}

TEST_F(RoundEngineTest, UpdatesBeyondTheDefaultNormBoundAreScaledDownToIt) {
  StartFromZeros(Options(1, 2), {"a", "b"});  // bound: 2 x lr 0.25 x 7 steps x sqrt(4) = 7
  ASSERT_DOUBLE_EQ(AutoClipNorm(engine_->options(), 4), 7);
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(100, 0, 0, 0)).accepted);  // norm 100 -> 7
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(0, 1, 0, 0)).accepted);    // within
  EXPECT_EQ(metrics_.updates_clipped(), 1);
  EXPECT_EQ(Values("a"), (std::vector<float>{3.5f, 0.5f}));
}

TEST(EngineOptionsTest, SpecNormSettingsReplaceTheDefaultBound) {
  JobSpec spec;
  EXPECT_EQ(EngineOptionsFromSpec(spec).auto_clip_margin, kAutoClipMargin);
  EXPECT_EQ(EngineOptionsFromSpec(spec).max_weight, 20 * 16);
  spec.strategy.maxUpdateNorm = 5;
  EXPECT_EQ(EngineOptionsFromSpec(spec).auto_clip_margin, 0);
  EXPECT_EQ(AutoClipNorm(EngineOptionsFromSpec(spec), 100), 0);
  spec.strategy.maxUpdateNorm = 0;
  spec.strategy.clipNorm = 5;
  EXPECT_EQ(EngineOptionsFromSpec(spec).auto_clip_margin, 0);
}

// Issue 13 item 5: the feedback examples each agent says it trained on are in
// the round record, by agent, clamped (a self-reported number), and in its JSON.
TEST_F(RoundEngineTest, RoundRecordCountsFeedbackExamplesPerAgentClamped) {
  Make(Options(1, 3));
  JoinAll({"a", "b", "c"});
  Initialize("a", SmallBundle(1, 2, 0.5f, -1));
  const std::map<std::string, int64_t> reported = {{"a", 7}, {"b", 0}, {"c", int64_t{1} << 40}};
  for (const auto& [agent, n] : reported) {
    UpdateMeta meta;
    meta.agent_id = agent;
    meta.round = 1;
    meta.base_version = 1;
    meta.num_examples = 10;
    meta.feedback_examples = n;
    ASSERT_TRUE(engine_->SubmitUpdate(meta, SmallBundle(0, 0, 0, 0)).accepted);
  }
  for (const char* agent : {"a", "b", "c"}) ASSERT_TRUE(Evaluate(agent, 1, 2, 0.5, 10).ok());
  ASSERT_EQ(engine_->GetStatus().rounds.size(), 1u);
  const RoundRecord r = engine_->GetStatus().rounds[0];
  EXPECT_EQ(r.feedback_examples,
            (std::map<std::string, int64_t>{{"a", 7}, {"c", kMaxReportedFeedbackExamples}}));
  auto back = RoundRecordFromJson(RoundRecordToJson(r));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->feedback_examples, r.feedback_examples);
}

// Issue 14, item 2: updates keep zstd only when it saves 10% of the body
// (EncodeOptions::zstd_min_saving), but the global is encoded once and sent to
// every agent: it keeps a zstd body whatever that saves.
TEST_F(RoundEngineTest, TheGlobalKeepsItsZstdBodyWhateverItSaves) {
  Make(Options(1, 1));
  JoinAll({"a"});
  Initialize("a", SmallBundle(1, 2, 0.5f, -1));
  auto global = engine_->Global(1);
  ASSERT_TRUE(global.ok()) << global.status().ToString();
  auto header = InspectBundle((*global)->encoded);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  // 4 floats: zstd saves less than 10% of this body (an update's would be
  // stored plain), yet the global is zstd.
  EXPECT_TRUE(header->zstd);
  EXPECT_GT(header->stored_size * 10, header->body_size * 9);
  auto decoded = DecodeBundle((*global)->encoded);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->tensors.size(), 2u);
}

// Issue 14, item 2: spec.compression.globalCodec fp16 halves the download.
// The agents train from the global as they decoded it (fp16-rounded) and send
// deltas against that; the engine keeps, aggregates and checkpoints its fp32
// global, so two rounds give exactly fp32 start + mean delta + mean delta and
// the rounding never accumulates. Fails if the engine aggregated onto the
// global it sent (the rounded one) or checkpointed that.
TEST_F(RoundEngineTest, AnFp16DownloadLeavesTheFp32GlobalExactOverTwoRounds) {
  EngineOptions options = Options(2, 2);
  ASSERT_EQ(options.global_encoding.codec, Codec::kFp32);  // the default
  JobSpec spec = *options.train.spec;
  spec.compression.globalCodec = "fp16";
  options = EngineOptionsFromSpec(spec, 2);
  ASSERT_EQ(options.global_encoding.codec, Codec::kFp16);
  testing::TempDir dir;
  CheckpointStore store(dir.path());
  Make(std::move(options), &store);
  JoinAll({"a", "b"});
  // None of these is an fp16 value (fp16 has 11 significant bits).
  const TensorBundle start = SmallBundle(0.1f, 1.0f / 3.0f, -0.7f, 2.0009766f + 1.0f / 4096.0f);
  Initialize("a", start);

  // Each agent adds its own step to the decoded global and sends the delta
  // against what it decoded, as fedge-agent does (ComputeDelta(trained, held)).
  const std::map<std::string, std::vector<float>> steps = {{"a", {0.25f, -0.125f, 0.0625f, 0.5f}},
                                                           {"b", {0.75f, 0.375f, -0.1875f, 0.25f}}};
  std::vector<float> expected = {0.1f, 1.0f / 3.0f, -0.7f, 2.0009766f + 1.0f / 4096.0f};
  std::vector<float> from_sent_global =
      expected;  // what aggregating onto the sent (rounded) global would give
  for (int64_t round = 1; round <= 2; ++round) {
    auto global = engine_->Global(0);
    ASSERT_TRUE(global.ok());
    auto header = InspectBundle((*global)->encoded);
    ASSERT_TRUE(header.ok()) << header.status().ToString();
    EXPECT_EQ(header->codec, Codec::kFp16) << "round " << round;
    auto sent = DecodeBundle((*global)->encoded);
    ASSERT_TRUE(sent.ok()) << sent.status().ToString();
    std::vector<float> held = sent->tensors[0].values;
    held.insert(held.end(), sent->tensors[1].values.begin(), sent->tensors[1].values.end());
    std::vector<float> mean(4);
    for (const auto& [agent, step] : steps) {
      TaskInfo t = engine_->GetTask(agent, round);
      ASSERT_EQ(t.kind, TaskKind::kTrain) << agent << " round " << round;
      std::vector<float> delta(4);
      for (size_t i = 0; i < 4; ++i) {
        const float trained = held[i] + step[i];
        delta[i] = trained - held[i];
        mean[i] += delta[i] / 2;  // two agents of equal weight; exact in these values
      }
      UpdateVerdict v =
          Submit(agent, round, round, SmallBundle(delta[0], delta[1], delta[2], delta[3]), /*n=*/10);
      ASSERT_TRUE(v.accepted) << v.reason;
    }
    for (size_t i = 0; i < 4; ++i) {
      expected[i] = static_cast<float>(static_cast<double>(expected[i]) + static_cast<double>(mean[i]));
      from_sent_global[i] = static_cast<float>(static_cast<double>(held[i]) + static_cast<double>(mean[i]));
    }
    ASSERT_TRUE(Evaluate("a", round, round + 1, 0.5, 10).ok());
    ASSERT_TRUE(Evaluate("b", round, round + 1, 0.5, 10).ok());
  }
  EXPECT_EQ(engine_->GetStatus().state, JobState::kSucceeded);
  std::vector<float> got = Values("a");
  const std::vector<float> b = Values("b");
  got.insert(got.end(), b.begin(), b.end());
  EXPECT_EQ(got, expected);
  // The test can tell: the rounded global would have given other values.
  EXPECT_NE(expected, from_sent_global);
  // The checkpoint holds the fp32 global, not the download.
  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value()) << loaded.status().ToString();
  std::vector<float> saved = (*loaded)->global.Find("a")->values;
  const std::vector<float>& saved_b = (*loaded)->global.Find("b")->values;
  saved.insert(saved.end(), saved_b.begin(), saved_b.end());
  EXPECT_EQ(saved, expected);
}

// A global with a value fp16 cannot hold (|x| >= 65520) would decode as Inf:
// that version goes out in fp32 (exact), and the next version that fits goes
// out in fp16 again.
TEST_F(RoundEngineTest, AGlobalOutsideTheFp16RangeIsSentInFp32ForThatVersion) {
  JobSpec spec = *Options(1, 1).train.spec;
  spec.compression.globalCodec = "fp16";
  spec.rounds.learningRate = 40000;  // the default norm bound leaves the delta below alone
  Make(EngineOptionsFromSpec(spec, 1));
  JoinAll({"a"});
  Initialize("a", SmallBundle(70000.0f, 0.1f, -1.5f, 2.0f));
  auto v1 = engine_->Global(0);
  ASSERT_TRUE(v1.ok());
  auto h1 = InspectBundle((*v1)->encoded);
  ASSERT_TRUE(h1.ok());
  EXPECT_EQ(h1->codec, Codec::kFp32);
  auto d1 = DecodeBundle((*v1)->encoded);
  ASSERT_TRUE(d1.ok());
  EXPECT_EQ(d1->tensors[0].values, (std::vector<float>{70000.0f, 0.1f}));  // exact, finite

  ASSERT_EQ(engine_->GetTask("a", 1).kind, TaskKind::kTrain);
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(-69999.0f, 0, 0, 0)).accepted);
  auto v2 = engine_->Global(0);
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ((*v2)->version, 2);
  auto h2 = InspectBundle((*v2)->encoded);
  ASSERT_TRUE(h2.ok());
  EXPECT_EQ(h2->codec, Codec::kFp16);
  EXPECT_EQ((*v2)->bundle.Find("a")->values, (std::vector<float>{1.0f, 0.1f}));
}

// The SCAFFOLD control goes to every agent with each TRAIN task: with
// globalCodec fp16 it is sent in fp16 too (the strategy keeps c in fp32),
// re-encoded once per new control, not per task.
TEST_F(RoundEngineTest, TheScaffoldControlIsSentInTheGlobalCodec) {
  JobSpec spec = *Options(2, 1).train.spec;
  spec.strategy.name = "scaffold";
  spec.compression.globalCodec = "fp16";
  Make(EngineOptionsFromSpec(spec, 1));
  JoinAll({"a"});
  Initialize("a", SmallBundle(0.5f, -0.5f, 0.25f, 1.0f));
  TaskInfo t1 = engine_->GetTask("a", 1);
  ASSERT_EQ(t1.kind, TaskKind::kTrain);
  ASSERT_TRUE(t1.config.scaffold_control != nullptr);
  EXPECT_TRUE(t1.config.scaffold_control->empty());  // c = 0 before the first round
  const std::vector<float> delta = {0.1f, 0.2f, 0.3f, -0.7f};
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(delta[0], delta[1], delta[2], delta[3])).accepted);
  ASSERT_TRUE(Evaluate("a", 1, 2, 0.5, 10).ok());
  TaskInfo t2 = engine_->GetTask("a", 2);
  ASSERT_EQ(t2.kind, TaskKind::kTrain);
  ASSERT_TRUE(t2.config.scaffold_control != nullptr && !t2.config.scaffold_control->empty());
  auto header = InspectBundle(*t2.config.scaffold_control);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(header->codec, Codec::kFp16);
  auto c = DecodeBundle(*t2.config.scaffold_control);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  // One agent of one (keep = 0): c = -delta / (K x eta) = -delta / (7 x 0.25), in fp16.
  std::vector<float> got = c->tensors[0].values;
  got.insert(got.end(), c->tensors[1].values.begin(), c->tensors[1].values.end());
  bool rounded = false;
  for (size_t i = 0; i < 4; ++i) {
    const float exact = static_cast<float>(-static_cast<double>(delta[i]) / 1.75);
    EXPECT_NEAR(got[i], exact, std::abs(exact) / 2048) << i;
    rounded = rounded || got[i] != exact;
  }
  EXPECT_TRUE(rounded) << "the control went out in full precision";
  // Encoded once for this control: the next task carries the same bytes object.
  EXPECT_EQ(engine_->GetTask("a", 2).config.scaffold_control, t2.config.scaffold_control);
}

// --- Evaluation with the next round's updates -------------------------------

// Agents that evaluate before training when a TRAIN task asks (fedge-agent does).
AgentInfo EvaluatingInfo(const std::string& id) {
  AgentInfo info = Info(id, 100, 100);
  info.evaluates_before_training = true;
  return info;
}

EvalReport Evaluation(int64_t version, double accuracy, int64_t n, double loss) {
  EvalReport report;
  report.global_version = version;
  report.num_examples = n;
  report.accuracy = accuracy;
  report.loss = loss;
  return report;
}

class EvaluationWithUpdatesTest : public RoundEngineTest {
 protected:
  // Make(options), `ids` joined declaring evaluates_before_training (those in
  // `phase_only` without it), the global initialized to zeros: round 1 open.
  void Start(EngineOptions options, const std::vector<std::string>& ids,
             const std::set<std::string>& phase_only = {}, CheckpointStore* store = nullptr) {
    Make(std::move(options), store);
    for (const std::string& id : ids)
      sessions_[id] = engine_->Join(id, phase_only.count(id) ? Info(id, 100, 100) : EvaluatingInfo(id));
    Initialize(ids.front(), SmallBundle(0, 0, 0, 0));
  }

  UpdateVerdict SubmitWith(const std::string& agent, int64_t round, int64_t base, const TensorBundle& delta,
                           std::optional<EvalReport> evaluation, int64_t n = 10) {
    UpdateMeta meta;
    meta.agent_id = agent;
    meta.round = round;
    meta.base_version = base;
    meta.num_examples = n;
    meta.train_loss = 1.0;
    meta.encoded_bytes = 100;
    meta.raw_bytes = 400;
    meta.evaluation = std::move(evaluation);
    return engine_->SubmitUpdate(meta, delta);
  }
};

TEST_F(EvaluationWithUpdatesTest, ARoundIsEvaluatedByTheNextRoundsAgentsBeforeTheyTrain) {
  testing::TempDir dir;
  CheckpointStore store(dir.path());
  Start(Options(3, 2), {"a", "b"}, {}, &store);
  // Round 1 has no earlier global to evaluate.
  TaskInfo t1 = engine_->GetTask("a", 1);
  ASSERT_EQ(t1.kind, TaskKind::kTrain);
  EXPECT_FALSE(t1.evaluate_global);
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(3, 3, 3, 3)).accepted);

  // No evaluate phase: round 1 is recorded without its evaluation and round 2
  // trains at once, on version 2, asking for version 2's evaluation first.
  ExpectPhaseAndVersion(Phase::kTrain, 2);
  EngineStatus s = engine_->GetStatus();
  EXPECT_EQ(s.round, 2);
  ASSERT_EQ(s.rounds.size(), 1u);
  EXPECT_FALSE(s.rounds[0].accuracy.has_value());
  EXPECT_EQ(s.rounds[0].evaluators, 0);
  EXPECT_EQ(metrics_.rounds_completed(), 1);
  TaskInfo t = engine_->GetTask("a", 2);
  ASSERT_EQ(t.kind, TaskKind::kTrain);
  EXPECT_EQ(t.round, 2);
  EXPECT_EQ(t.global_version, 2);
  EXPECT_TRUE(t.evaluate_global);

  // a claims 1000 held-out examples: counted as min(1000, 100 declared, 35 =
  // localSteps x batchSize), as ReportMetrics would count them.
  ASSERT_TRUE(SubmitWith("a", 2, 2, SmallBundle(1, 1, 1, 1), Evaluation(2, 0.5, 1000, 1.0)).accepted);
  EXPECT_TRUE(engine_->GetTask("b", 2).evaluate_global);
  EXPECT_FALSE(engine_->GetStatus().rounds[0].accuracy.has_value());  // not before round 2 closes
  ASSERT_TRUE(SubmitWith("b", 2, 2, SmallBundle(1, 1, 1, 1), Evaluation(2, 1.0, 30, 0.2)).accepted);

  // Round 2 closed: round 1's record has the evaluation; round 3 (the last)
  // trains and asks for round 2's.
  s = engine_->GetStatus();
  ASSERT_EQ(s.rounds.size(), 2u);
  EXPECT_DOUBLE_EQ(*s.rounds[0].accuracy, (0.5 * 35 + 1.0 * 30) / 65);
  EXPECT_DOUBLE_EQ(*s.rounds[0].loss, (1.0 * 35 + 0.2 * 30) / 65);
  EXPECT_EQ(s.rounds[0].eval_examples, 65);
  EXPECT_EQ(s.rounds[0].evaluators, 2);
  EXPECT_FALSE(s.rounds[1].accuracy.has_value());
  EXPECT_EQ(s.round, 3);
  EXPECT_EQ(s.phase, Phase::kTrain);
  // The checkpoint of round 2 holds round 1's evaluation.
  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_EQ((*loaded)->completed_round, 2);
  ASSERT_EQ((*loaded)->history.size(), 2u);
  EXPECT_DOUBLE_EQ(*(*loaded)->history[0].accuracy, (0.5 * 35 + 1.0 * 30) / 65);

  TaskInfo t3 = engine_->GetTask("a", 3);
  EXPECT_TRUE(t3.evaluate_global);
  EXPECT_EQ(t3.global_version, 3);
  ASSERT_TRUE(SubmitWith("a", 3, 3, SmallBundle(1, 1, 1, 1), Evaluation(3, 0.25, 10, 2.0)).accepted);
  ASSERT_TRUE(SubmitWith("b", 3, 3, SmallBundle(1, 1, 1, 1), Evaluation(3, 0.75, 10, 1.0)).accepted);

  // The last round is evaluated in a phase of its own: it is the job's result.
  ExpectPhaseAndVersion(Phase::kEvaluate, 4);
  s = engine_->GetStatus();
  ASSERT_EQ(s.rounds.size(), 2u);
  EXPECT_DOUBLE_EQ(*s.rounds[1].accuracy, 0.5);
  EXPECT_EQ(engine_->GetTask("a", 4).kind, TaskKind::kEvaluate);
  ASSERT_TRUE(Evaluate("a", 3, 4, 0.9, 10).ok());
  ASSERT_TRUE(Evaluate("b", 3, 4, 0.7, 10).ok());
  s = engine_->GetStatus();
  EXPECT_EQ(s.state, JobState::kSucceeded);
  ASSERT_EQ(s.rounds.size(), 3u);
  EXPECT_DOUBLE_EQ(*s.final_accuracy, 0.8);
  EXPECT_EQ(metrics_.rounds_completed(), 3);
}

TEST_F(EvaluationWithUpdatesTest, OneAgentThatCannotEvaluateBeforeTrainingKeepsThePhase) {
  Start(Options(3, 2), {"a", "b"}, /*phase_only=*/{"b"});
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  ExpectPhaseAndVersion(Phase::kEvaluate, 2);
  EXPECT_EQ(engine_->GetTask("a", 2).kind, TaskKind::kEvaluate);
}

TEST_F(EvaluationWithUpdatesTest, BlockingEvaluationKeepsThePhase) {
  EngineOptions o = Options(3, 2);
  o.evaluate_with_next_round = false;  // fedge-aggregator --blocking-evaluation
  Start(o, {"a", "b"});
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  ExpectPhaseAndVersion(Phase::kEvaluate, 2);
}

TEST_F(EvaluationWithUpdatesTest, ClientSamplingKeepsThePhase) {
  // Half the agents train each round: the phase asks every live agent, the
  // next round would ask only half of them.
  EngineOptions o = Options(3, 2);
  o.fraction = 0.5;
  Start(o, {"a", "b"});
  const std::string invited = engine_->GetTask("a", 1).kind == TaskKind::kTrain ? "a" : "b";
  ASSERT_TRUE(Submit(invited, 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  ExpectPhaseAndVersion(Phase::kEvaluate, 2);
}

TEST_F(EvaluationWithUpdatesTest, AnUpdateWithANonsenseEvaluationIsRefusedBeforeItsBody) {
  Start(Options(3, 2), {"a", "b"});
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  const std::string checksum = engine_->GetStatus().global_checksum;
  UpdateMeta meta;
  meta.agent_id = "a";
  meta.round = 2;
  meta.base_version = 2;
  meta.num_examples = 10;
  meta.evaluation = Evaluation(2, 1.5, 10, 1.0);
  UpdateVerdict v = engine_->CheckUpdateHeader(meta);
  EXPECT_EQ(v.reason_label, "bad_request");
  EXPECT_NE(v.reason.find("the update's evaluation: accuracy must be in [0, 1]"), std::string::npos)
      << v.reason;
  v = SubmitWith("a", 2, 2, SmallBundle(1, 1, 1, 1), Evaluation(2, 0.5, 10, NAN));
  EXPECT_FALSE(v.accepted);
  EXPECT_NE(v.reason.find("loss must be finite"), std::string::npos) << v.reason;
  v = SubmitWith("a", 2, 2, SmallBundle(1, 1, 1, 1), Evaluation(2, 0.5, -1, 1.0));
  EXPECT_FALSE(v.accepted);
  EXPECT_NE(v.reason.find("num_examples must be >= 0"), std::string::npos) << v.reason;
  EXPECT_EQ(engine_->GetStatus().global_checksum, checksum);  // nothing of them counted

  // An evaluation of another version than the one asked for: the update
  // counts, the evaluation does not.
  ASSERT_TRUE(SubmitWith("a", 2, 2, SmallBundle(1, 1, 1, 1), Evaluation(1, 0.0, 30, 5.0)).accepted);
  ASSERT_TRUE(SubmitWith("b", 2, 2, SmallBundle(1, 1, 1, 1), Evaluation(2, 0.6, 30, 1.0)).accepted);
  EngineStatus s = engine_->GetStatus();
  ASSERT_EQ(s.rounds.size(), 2u);
  EXPECT_EQ(s.rounds[0].evaluators, 1);
  EXPECT_DOUBLE_EQ(*s.rounds[0].accuracy, 0.6);
}

TEST_F(EvaluationWithUpdatesTest, AResumedJobAsksTheNextRoundForTheEvaluationItsLastRoundLacks) {
  testing::TempDir dir;
  CheckpointStore store(dir.path());
  Start(Options(3, 2), {"a", "b"}, {}, &store);
  ASSERT_TRUE(Submit("a", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  ASSERT_TRUE(Submit("b", 1, 1, SmallBundle(1, 1, 1, 1)).accepted);
  // Round 2 is in flight (one evaluation in) when the aggregator dies.
  ASSERT_TRUE(SubmitWith("a", 2, 2, SmallBundle(1, 1, 1, 1), Evaluation(2, 0.1, 10, 1.0)).accepted);
  engine_.reset();

  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_EQ((*loaded)->completed_round, 1);
  Make(Options(3, 2), &store);
  ASSERT_TRUE(engine_->Restore(std::move(**loaded)).ok());
  for (const std::string id : {"a", "b"}) sessions_[id] = engine_->Join(id, EvaluatingInfo(id));
  TaskInfo t = engine_->GetTask("a", 2);
  ASSERT_EQ(t.kind, TaskKind::kTrain);
  EXPECT_EQ(t.round, 2);
  EXPECT_TRUE(t.evaluate_global);
  ASSERT_TRUE(SubmitWith("a", 2, 2, SmallBundle(1, 1, 1, 1), Evaluation(2, 0.5, 10, 1.0)).accepted);
  ASSERT_TRUE(SubmitWith("b", 2, 2, SmallBundle(1, 1, 1, 1), Evaluation(2, 0.7, 10, 1.0)).accepted);
  EngineStatus s = engine_->GetStatus();
  ASSERT_EQ(s.rounds.size(), 2u);
  EXPECT_EQ(s.rounds[0].evaluators, 2);
  EXPECT_DOUBLE_EQ(*s.rounds[0].accuracy, 0.6);
}

}  // namespace
}  // namespace fedge::aggregator
