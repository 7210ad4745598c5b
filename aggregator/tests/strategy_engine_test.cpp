// Strategies inside the round engine: optimizer state across a restart, norm
// bounds and the buffering bound as rejections with reasons.
#include <gtest/gtest.h>

#include <filesystem>

#include "fedge/aggregator/round_engine.h"
#include "test_util.h"

namespace fedge::aggregator {
namespace {

using testing::SmallBundle;

EngineOptions Options(const StrategySpec& strategy, int total_rounds, int agents) {
  JobSpec spec = testing::TestJob("opt", total_rounds);
  spec.rounds.timeoutSeconds = 10;
  spec.strategy = strategy;
  return EngineOptionsFromSpec(spec, agents);
}

class StrategyEngineTest : public ::testing::Test {
 protected:
  std::unique_ptr<RoundEngine> Make(const EngineOptions& options, CheckpointStore* store) {
    auto engine = RoundEngine::Create(options, &clock_, store, &metrics_);
    EXPECT_TRUE(engine.ok()) << engine.status().ToString();
    return engine.ok() ? std::move(*engine) : nullptr;
  }

  static void JoinAll(RoundEngine& e) {
    e.Join("a", AgentInfo{"node-a", 100, 100, SmallBundle(0, 0, 0, 0)});
    e.Join("b", AgentInfo{"node-b", 100, 100, SmallBundle(0, 0, 0, 0)});
  }

  static void Initialize(RoundEngine& e, const TensorBundle& initial) {
    ASSERT_EQ(e.GetTask("a", 0).kind, TaskKind::kInitialize);
    UpdateMeta meta;
    meta.agent_id = "a";
    meta.is_delta = false;
    ASSERT_TRUE(e.SubmitUpdate(meta, initial).accepted);
  }

  // An engine for `strategy` (one round, agents a and b) with both joined, the
  // global initialized to SmallBundle(1, 2, 3, 4) and round 1 open for training;
  // null (and a failure) otherwise.
  std::unique_ptr<RoundEngine> StartOneRound(const StrategySpec& strategy) {
    auto e = Make(Options(strategy, 1, 2), nullptr);
    if (e == nullptr) return nullptr;
    JoinAll(*e);
    Initialize(*e, SmallBundle(1, 2, 3, 4));
    const TaskKind kind = e->GetTask("a", 1).kind;
    EXPECT_EQ(kind, TaskKind::kTrain);
    return kind == TaskKind::kTrain ? std::move(e) : nullptr;
  }

  static UpdateVerdict Submit(RoundEngine& e, const std::string& agent, int64_t round,
                              const TensorBundle& delta, int64_t n) {
    UpdateMeta meta;
    meta.agent_id = agent;
    meta.round = round;
    meta.base_version = round;  // version r trains round r
    meta.num_examples = n;
    return e.SubmitUpdate(meta, delta);
  }

  // One full round with both agents: train, then evaluate (which checkpoints).
  static void RunRound(RoundEngine& e, int64_t round, const TensorBundle& da, const TensorBundle& db) {
    ASSERT_EQ(e.GetTask("a", round).kind, TaskKind::kTrain);
    ASSERT_TRUE(Submit(e, "a", round, da, 3).accepted);
    ASSERT_TRUE(Submit(e, "b", round, db, 5).accepted);
    for (const char* agent : {"a", "b"}) {
      EvalReport r;
      r.agent_id = agent;
      r.round = round;
      r.global_version = round + 1;
      r.num_examples = 10;
      r.accuracy = 0.5;
      ASSERT_TRUE(e.ReportEvaluation(r).ok());
    }
  }

  static std::string GlobalBytes(RoundEngine& e) {
    auto g = e.Global(0);
    EXPECT_TRUE(g.ok());
    std::string bytes;
    for (const NamedTensor& t : (*g)->bundle.tensors) {
      bytes.append(reinterpret_cast<const char*>(t.values.data()), t.values.size() * sizeof(float));
    }
    return bytes;
  }

  FakeClock clock_;
  AggregatorMetrics metrics_;
};

// Deltas of rounds A, B, C for agents a and b.
const TensorBundle kDeltas[3][2] = {
    {SmallBundle(0.3f, -0.2f, 0.11f, 0.7f), SmallBundle(-0.1f, 0.4f, 0.05f, -0.3f)},
    {SmallBundle(0.2f, 0.1f, -0.07f, 0.2f), SmallBundle(0.05f, -0.6f, 0.3f, 0.01f)},
    {SmallBundle(-0.4f, 0.25f, 0.2f, -0.1f), SmallBundle(0.15f, 0.3f, -0.2f, 0.5f)},
};

TEST_F(StrategyEngineTest, ServerOptimizerStateSurvivesRestartBitForBit) {
  for (const char* name : {"fedadam", "fedyogi", "fedadagrad"}) {
    SCOPED_TRACE(name);
    StrategySpec strategy;
    strategy.name = name;
    strategy.serverLearningRate = 0.05;
    const EngineOptions options = Options(strategy, 3, 2);
    const TensorBundle initial = SmallBundle(1, 2, 3, 4);

    // One aggregator runs A, B, C.
    auto straight = Make(options, nullptr);
    JoinAll(*straight);
    Initialize(*straight, initial);
    for (int r = 0; r < 3; ++r) RunRound(*straight, r + 1, kDeltas[r][0], kDeltas[r][1]);
    ASSERT_EQ(straight->GetStatus().state, JobState::kSucceeded);

    // Another runs A, dies, restarts from its checkpoint, runs B, C.
    testing::TempDir dir;
    CheckpointStore store(dir.path());
    auto first = Make(options, &store);
    JoinAll(*first);
    Initialize(*first, initial);
    RunRound(*first, 1, kDeltas[0][0], kDeltas[0][1]);
    first.reset();
    EXPECT_TRUE(std::filesystem::exists(std::filesystem::path(dir.path()) / "strategy-v2.safetensors"));
    auto loaded = store.Load();
    ASSERT_TRUE(loaded.ok() && loaded->has_value()) << loaded.status().ToString();
    EXPECT_FALSE((*loaded)->strategy_state.tensors.empty());
    CheckpointData without_state = **loaded;
    without_state.strategy_state = {};
    auto restarted = Make(options, &store);
    ASSERT_TRUE(restarted->Restore(std::move(**loaded)).ok());
    JoinAll(*restarted);
    for (int r = 1; r < 3; ++r) RunRound(*restarted, r + 1, kDeltas[r][0], kDeltas[r][1]);
    ASSERT_EQ(restarted->GetStatus().state, JobState::kSucceeded);

    EXPECT_EQ(GlobalBytes(*straight), GlobalBytes(*restarted));
    EXPECT_EQ(straight->GetStatus().global_checksum, restarted->GetStatus().global_checksum);

    // A restart that lost the optimizer state does not match: the state matters.
    auto amnesiac = Make(options, nullptr);
    ASSERT_TRUE(amnesiac->Restore(std::move(without_state)).ok());
    JoinAll(*amnesiac);
    for (int r = 1; r < 3; ++r) RunRound(*amnesiac, r + 1, kDeltas[r][0], kDeltas[r][1]);
    EXPECT_NE(GlobalBytes(*straight), GlobalBytes(*amnesiac));
  }
}

// spec.rounds.learningRateSchedule reaches the TRAIN tasks, round by round, and a
// restarted aggregator hands out the rate of the round it resumes at. Cosine, base 0.1,
// 4 rounds, by hand: 0.1 * (1 + cos(pi * (r - 1) / 4)) / 2 for r = 1..4 =
// 0.1, 0.0853553, 0.05, 0.0146447.
TEST_F(StrategyEngineTest, LearningRateScheduleReachesTrainTasksAcrossARestart) {
  JobSpec spec = testing::TestJob("lr", /*rounds=*/4);
  spec.rounds.timeoutSeconds = 10;
  spec.rounds.learningRate = 0.1;
  spec.rounds.learningRateSchedule = "cosine";
  const EngineOptions options = EngineOptionsFromSpec(spec, 2);
  const float want[4] = {0.1f, 0.0853553f, 0.05f, 0.0146447f};
  testing::TempDir dir;
  CheckpointStore store(dir.path());
  auto first = Make(options, &store);
  JoinAll(*first);
  Initialize(*first, SmallBundle(1, 2, 3, 4));
  for (int r = 1; r <= 2; ++r) {
    TaskInfo t = first->GetTask("b", r);
    ASSERT_EQ(t.kind, TaskKind::kTrain);
    EXPECT_NEAR(t.config.learning_rate, want[r - 1], 1e-6) << "round " << r;
    RunRound(*first, r, kDeltas[r - 1][0], kDeltas[r - 1][1]);
  }
  first.reset();
  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value()) << loaded.status().ToString();
  auto restarted = Make(options, &store);
  ASSERT_TRUE(restarted->Restore(std::move(**loaded)).ok());
  JoinAll(*restarted);
  for (int r = 3; r <= 4; ++r) {
    TaskInfo t = restarted->GetTask("b", r);
    ASSERT_EQ(t.kind, TaskKind::kTrain);
    EXPECT_NEAR(t.config.learning_rate, want[r - 1], 1e-6) << "round " << r;
    RunRound(*restarted, r, kDeltas[(r - 1) % 3][0], kDeltas[(r - 1) % 3][1]);
  }
  EXPECT_EQ(restarted->GetStatus().state, JobState::kSucceeded);

  // The default schedule is constant: every round trains at the base rate.
  spec.rounds.learningRateSchedule = "constant";
  auto flat = Make(EngineOptionsFromSpec(spec, 2), nullptr);
  JoinAll(*flat);
  Initialize(*flat, SmallBundle(1, 2, 3, 4));
  RunRound(*flat, 1, kDeltas[0][0], kDeltas[0][1]);
  EXPECT_FLOAT_EQ(flat->GetTask("b", 2).config.learning_rate, 0.1f);
}

TEST_F(StrategyEngineTest, UpdateBeyondNormBoundIsRejectedCountedAndLeavesGlobal) {
  auto e = StartOneRound({.name = "fedavg", .maxUpdateNorm = 4});
  ASSERT_NE(e, nullptr);
  UpdateVerdict v = Submit(*e, "a", 1, SmallBundle(3, 0, 0, 4), 10);  // norm 5
  EXPECT_FALSE(v.accepted);
  EXPECT_EQ(v.reason_label, "norm_bound");
  EXPECT_EQ(v.reason, "norm 5 exceeds bound 4");
  EXPECT_EQ(metrics_.updates_rejected("norm_bound"), 1);
  EXPECT_EQ(e->GetStatus().global_version, 1);
  // Both agents then answer within the bound; the rejected delta left no trace.
  ASSERT_TRUE(Submit(*e, "a", 1, SmallBundle(2, 0, 0, 0), 10).accepted);
  ASSERT_TRUE(Submit(*e, "b", 1, SmallBundle(0, 0, 0, 2), 10).accepted);
  auto g = e->Global(0);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ((*g)->bundle.Find("a")->values, (std::vector<float>{2, 2}));
  EXPECT_EQ((*g)->bundle.Find("b")->values, (std::vector<float>{3, 5}));
}

TEST_F(StrategyEngineTest, BufferingStrategyRefusesUpdatesPastItsBound) {
  auto e = StartOneRound({.name = "median", .maxBufferedUpdates = 1});
  ASSERT_NE(e, nullptr);
  ASSERT_TRUE(Submit(*e, "a", 1, SmallBundle(1, 1, 1, 1), 10).accepted);
  UpdateVerdict v = Submit(*e, "b", 1, SmallBundle(5, 5, 5, 5), 10);
  EXPECT_FALSE(v.accepted);
  EXPECT_EQ(v.reason_label, "capacity");
  EXPECT_NE(v.reason.find("spec.strategy.maxBufferedUpdates"), std::string::npos) << v.reason;
  EXPECT_EQ(metrics_.updates_rejected("capacity"), 1);
}

}  // namespace
}  // namespace fedge::aggregator
