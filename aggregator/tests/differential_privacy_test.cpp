// Central differential privacy in the round engine (issue 12, item 2): clipping, unit
// weights, Gaussian noise calibrated to the fixed denominator, the RDP ledger in
// /v1/status and the checkpoint, the budget stopping rule, and what DP refuses.
#include <gtest/gtest.h>

#include <cmath>

#include "fedge/aggregator/privacy_accountant.h"
#include "fedge/aggregator/round_engine.h"
#include "test_util.h"

namespace fedge::aggregator {
namespace {

constexpr int64_t kTimeoutMs = 10'000;
constexpr size_t kElements = 40'000;

// One tensor "w" of kElements values, all `v` (except w[0] = first, w[1] = second).
TensorBundle Big(float v, float first = 0, float second = 0) {
  TensorBundle b;
  b.tensors.push_back(NamedTensor{"w", {static_cast<int64_t>(kElements)}, std::vector<float>(kElements, v)});
  b.tensors[0].values[0] = first;
  b.tensors[0].values[1] = second;
  return b;
}

EngineOptions DpOptionsFor(int rounds, int agents, double clip, double sigma, double target_epsilon = 0) {
  JobSpec spec;
  spec.name = "dp";
  spec.namespace_ = "ns";
  spec.rounds.total = rounds;
  spec.rounds.timeoutSeconds = kTimeoutMs / 1000;
  EngineOptions o = EngineOptionsFromSpec(spec, agents);
  o.dp.enabled = true;
  o.dp.clip_norm = clip;
  o.dp.noise_multiplier = sigma;
  o.dp.target_epsilon = target_epsilon;
  o.dp.delta = 1e-5;
  o.dp.noise_seed = 7;
  return o;
}

class DifferentialPrivacyTest : public ::testing::Test {
 protected:
  void Make(EngineOptions options, CheckpointStore* store = nullptr) {
    auto engine = RoundEngine::Create(std::move(options), &clock_, store, &metrics_);
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    engine_ = std::move(*engine);
  }
  void Start(const std::vector<std::string>& ids) {
    for (const auto& id : ids) engine_->Join(id, AgentInfo{"node-" + id, 100, 100, Big(0)});
    ASSERT_EQ(engine_->GetTask(ids[0], 0).kind, TaskKind::kInitialize);
    UpdateMeta meta;
    meta.agent_id = ids[0];
    meta.is_delta = false;
    ASSERT_TRUE(engine_->SubmitUpdate(meta, Big(0)).accepted);
  }
  void Submit(const std::string& agent, int64_t round, const TensorBundle& delta, int64_t n) {
    UpdateMeta meta;
    meta.agent_id = agent;
    meta.round = round;
    meta.base_version = engine_->GetStatus().global_version;
    meta.num_examples = n;
    meta.train_loss = 1.0;
    UpdateVerdict v = engine_->SubmitUpdate(meta, delta);
    ASSERT_TRUE(v.accepted) << v.reason;
  }
  // Both agents evaluate the current global: the round completes, the next one starts.
  void Evaluate(const std::vector<std::string>& ids, int64_t round) {
    const int64_t version = engine_->GetStatus().global_version;
    for (const auto& id : ids) {
      EvalReport r{id, round, version, 10, 0.5, 1.0};
      ASSERT_TRUE(engine_->ReportEvaluation(r).ok());
    }
  }
  std::vector<float> Global() { return (*engine_->Global(0))->bundle.Find("w")->values; }

  FakeClock clock_;
  AggregatorMetrics metrics_;
  std::unique_ptr<RoundEngine> engine_;
};

TEST_F(DifferentialPrivacyTest, UpdatesAreClippedCountOnceAndTheSumGetsCalibratedNoise) {
  // C = 1, sigma = 0.5, 2 agents: the global moves by (clip(a) + clip(b) + Z) / 2 with
  // Z ~ N(0, 0.5^2): per value a mean of the clipped updates plus noise of stddev 0.25.
  Make(DpOptionsFor(1, 2, 1.0, 0.5));
  Start({"a", "b"});
  // a: norm 5 in its first two values, claims 1000 examples; b: tiny, claims 1.
  Submit("a", 1, Big(0, 3, 4), 1000);
  Submit("b", 1, Big(0, 0, 0), 1);
  std::vector<float> g = Global();
  // The noise: mean ~0, stddev 0.25 over 39,998 values (3% = well over 4 standard errors).
  double sum = 0, sq = 0;
  for (size_t i = 2; i < kElements; ++i) {
    sum += g[i];
    sq += static_cast<double>(g[i]) * g[i];
  }
  const double n = kElements - 2, mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(sd, 0.25, 0.25 * 0.03);
  // The first two values: clip(a) = (0.6, 0.8), weight 1 like b (not 1000:1), over 2, plus
  // noise of stddev 0.25 (so within 5 sd of (0.3, 0.4)).
  EXPECT_NEAR(g[0], 0.3, 5 * 0.25);
  EXPECT_NEAR(g[1], 0.4, 5 * 0.25);
  EngineStatus s = engine_->GetStatus();
  ASSERT_TRUE(s.privacy.has_value());
  EXPECT_EQ(s.privacy->rounds_accounted, 1);
  RdpAccountant want;
  ASSERT_TRUE(want.Compose(0.5, 1.0).ok());  // both live agents invited: q = 1
  EXPECT_DOUBLE_EQ(s.privacy->epsilon, want.Epsilon(1e-5));
}

TEST_F(DifferentialPrivacyTest, WithoutNoiseTheMeanWouldBeExactSoTheNoiseIsNotAnArtifact) {
  // Same round with sigma tiny: the global is the plain mean of the clipped updates.
  Make(DpOptionsFor(1, 2, 1.0, 1e-9));
  Start({"a", "b"});
  Submit("a", 1, Big(0, 3, 4), 1000);
  Submit("b", 1, Big(0, 0, 1), 1);
  std::vector<float> g = Global();
  EXPECT_NEAR(g[0], 0.3, 1e-6);
  EXPECT_NEAR(g[1], (0.8 + 1.0) / 2, 1e-6);
  EXPECT_NEAR(g[5], 0.0, 1e-6);
}

TEST_F(DifferentialPrivacyTest, TheJobEndsBeforeARoundWouldExceedTheTargetEpsilon) {
  RdpAccountant two, three;
  ASSERT_TRUE(two.Compose(1.0, 1.0, 2).ok());
  ASSERT_TRUE(three.Compose(1.0, 1.0, 3).ok());
  const double target = (two.Epsilon(1e-5) + three.Epsilon(1e-5)) / 2;  // room for 2 rounds, not 3
  Make(DpOptionsFor(5, 2, 1.0, 1.0, target));
  Start({"a", "b"});
  for (int64_t round = 1; round <= 2; ++round) {
    Submit("a", round, Big(0.001f), 10);
    Submit("b", round, Big(-0.001f), 10);
    Evaluate({"a", "b"}, round);
  }
  EngineStatus s = engine_->GetStatus();
  EXPECT_EQ(s.state, JobState::kSucceeded);
  EXPECT_EQ(s.rounds.size(), 2u);
  ASSERT_TRUE(s.privacy.has_value());
  EXPECT_TRUE(s.privacy->budget_exhausted);
  EXPECT_LE(s.privacy->epsilon, target);
  EXPECT_DOUBLE_EQ(s.privacy->epsilon, two.Epsilon(1e-5));
  EXPECT_NE(s.message.find("privacy budget exhausted"), std::string::npos) << s.message;
  EXPECT_EQ(engine_->GetTask("a", 3).kind, TaskKind::kDone);
}

TEST_F(DifferentialPrivacyTest, TheLedgerSurvivesACheckpointAndIsRequiredToResume) {
  testing::TempDir dir;
  CheckpointStore store(dir.path());
  Make(DpOptionsFor(3, 2, 1.0, 1.0), &store);
  Start({"a", "b"});
  Submit("a", 1, Big(0.01f), 10);
  Submit("b", 1, Big(0.02f), 10);
  Evaluate({"a", "b"}, 1);
  const double spent = engine_->GetStatus().privacy->epsilon;
  ASSERT_GT(spent, 0);

  auto saved = store.Load();
  ASSERT_TRUE(saved.ok() && saved->has_value());
  Make(DpOptionsFor(3, 2, 1.0, 1.0));
  ASSERT_TRUE(engine_->Restore(**saved).ok());
  EXPECT_DOUBLE_EQ(engine_->GetStatus().privacy->epsilon, spent)
      << "a resumed job forgot the epsilon it spent";
  EXPECT_EQ(engine_->GetStatus().privacy->rounds_accounted, 1);

  CheckpointData without = **saved;
  without.privacy_rdp.clear();
  Make(DpOptionsFor(3, 2, 1.0, 1.0));
  Status st = engine_->Restore(without);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("privacy ledger"), std::string::npos) << st.message();
}

TEST(DifferentialPrivacyOptionsTest, RefusesWhatTheNoiseCalibrationDoesNotCover) {
  FakeClock clock;
  auto create = [&](EngineOptions o) {
    return RoundEngine::Create(std::move(o), &clock, nullptr, nullptr).status();
  };
  EngineOptions o = DpOptionsFor(1, 2, 1.0, 1.0);
  o.strategy.name = "fedadam";
  EXPECT_NE(create(o).message().find("fedavg or fedprox"), std::string::npos);
  o = DpOptionsFor(1, 2, 1.0, 1.0);
  o.strategy.name = "median";
  EXPECT_FALSE(create(o).ok());
  o = DpOptionsFor(1, 2, 1.0, 1.0);
  o.adapter.aggregation = "product";
  EXPECT_NE(create(o).message().find("factors or frozen-a"), std::string::npos);
  o = DpOptionsFor(1, 2, 1.0, 1.0);
  o.async = true;
  EXPECT_FALSE(create(o).ok());
  EXPECT_NE(create(DpOptionsFor(1, 2, 0.0, 1.0)).message().find("clipNorm"), std::string::npos);
  EXPECT_NE(create(DpOptionsFor(1, 2, 1.0, 0.0)).message().find("noiseMultiplier"), std::string::npos);
  o = DpOptionsFor(1, 2, 1.0, 1.0);
  o.dp.delta = 1.0;
  EXPECT_FALSE(create(o).ok());
  EXPECT_TRUE(create(DpOptionsFor(1, 2, 1.0, 1.0)).ok());
}

}  // namespace
}  // namespace fedge::aggregator
