// Every strategy against results computed by hand (or by the few lines of
// independent Python quoted in the comments), never by the code under test.
#include "fedge/aggregator/strategy.h"

#include <gtest/gtest.h>

#include <cmath>

#include "fedge/aggregator/checkpoint.h"

#include "test_util.h"

namespace fedge::aggregator {
namespace {

using testing::SmallBundle;
using testing::TempDir;

StrategySpec Spec(const std::string& name) {
  StrategySpec s;
  s.name = name;
  return s;
}

std::unique_ptr<AggregationStrategy> Make(const StrategySpec& spec) {
  auto s = MakeStrategy(spec);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(*s) : nullptr;
}

TensorBundle W(float w0, float w1) {
  TensorBundle b;
  b.tensors.push_back(NamedTensor{"w", {2}, {w0, w1}});
  return b;
}

// One round: Begin, Add each (delta, n), Finish.
TensorBundle Round(AggregationStrategy& s, const TensorBundle& global,
                   const std::vector<std::pair<TensorBundle, int64_t>>& updates) {
  s.Begin(global);
  for (const auto& [delta, n] : updates) {
    Status st = s.Add(delta, n);
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  auto next = s.Finish(global);
  EXPECT_TRUE(next.ok()) << next.status().ToString();
  return next.ok() ? *next : TensorBundle{};
}

std::vector<float> Vals(const TensorBundle& b, const std::string& name) { return b.Find(name)->values; }

// Server optimizers, eta = 0.1, b1 = 0.9, b2 = 0.99, tau = 0.1, x0 = 0, m0 = v0 = 0.
// Round 1: deltas w = (1, -1) with n = 1 and (3, -3) with n = 3 -> D = (2.5, -2.5).
// Round 2: one delta (1, -0.1) with n = 5                      -> D = (1, -0.1).
// Coordinate 0, by hand:
//   m1 = 0.1 * 2.5 = 0.25;   m2 = 0.9 * 0.25 + 0.1 * 1 = 0.325
//   adam:    v1 = 0.01 * 6.25 = 0.0625, x1 = 0.1 * 0.25 / (0.25 + 0.1) = 0.0714285714
//            v2 = 0.99 * 0.0625 + 0.01 = 0.071875, x2 = x1 + 0.1 * 0.325 / (sqrt(v2) + 0.1) = 0.1597209642
//   yogi:    v1 = 0 - 0.01 * 6.25 * sign(0 - 6.25) = 0.0625, x1 = 0.0714285714
//            v2 = 0.0625 - 0.01 * 1 * sign(0.0625 - 1) = 0.0725, x2 = 0.1594428564
//   adagrad: v1 = 6.25, x1 = 0.1 * 0.25 / 2.6 = 0.0096153846
//            v2 = 7.25, x2 = x1 + 0.1 * 0.325 / (sqrt(7.25) + 0.1) = 0.0212533581
// Coordinate 1 (D2 = -0.1, D2^2 = 0.01):
//   m1 = -0.25, m2 = 0.9 * -0.25 + 0.1 * -0.1 = -0.235
//   adam:    v2 = 0.99 * 0.0625 + 0.01 * 0.01 = 0.061975, x2 = -0.0714285714 - 0.0235 / (sqrt(0.061975) +
//   0.1)
//            = -0.1387738906
//   yogi:    v2 = 0.0625 - 0.01 * 0.01 * sign(0.0625 - 0.01) = 0.0624, x2 = -0.1386098332
//   adagrad: v2 = 6.26, x2 = -0.0096153846 - 0.0235 / (sqrt(6.26) + 0.1) = -0.0186469016
// (python: x1 = -0.1*0.25/(0.25+0.1); x1 + 0.1*-0.235/(math.sqrt(0.061975)+0.1))
struct OptCase {
  const char* name;
  float x1_0, x1_1, x2_0, x2_1;
};

class ServerOptimizerTest : public ::testing::TestWithParam<OptCase> {};

TEST_P(ServerOptimizerTest, MatchesHandComputedTwoRounds) {
  const OptCase& c = GetParam();
  StrategySpec spec = Spec(c.name);
  spec.serverLearningRate = 0.1;
  spec.beta1 = 0.9;
  spec.beta2 = 0.99;
  spec.tau = 0.1;
  auto s = Make(spec);
  ASSERT_TRUE(s);
  EXPECT_FALSE(s->NeedsAllUpdates());
  TensorBundle x1 = Round(*s, W(0, 0), {{W(1, -1), 1}, {W(3, -3), 3}});
  EXPECT_NEAR(Vals(x1, "w")[0], c.x1_0, 1e-6);
  EXPECT_NEAR(Vals(x1, "w")[1], c.x1_1, 1e-6);
  TensorBundle x2 = Round(*s, x1, {{W(1, -0.1f), 5}});
  EXPECT_NEAR(Vals(x2, "w")[0], c.x2_0, 1e-6);
  EXPECT_NEAR(Vals(x2, "w")[1], c.x2_1, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, ServerOptimizerTest,
    ::testing::Values(OptCase{"fedadam", 0.0714285714f, -0.0714285714f, 0.1597209642f, -0.1387738906f},
                      OptCase{"fedyogi", 0.0714285714f, -0.0714285714f, 0.1594428564f, -0.1386098332f},
                      OptCase{"fedadagrad", 0.0096153846f, -0.0096153846f, 0.0212533581f, -0.0186469016f}),
    [](const ::testing::TestParamInfo<OptCase>& info) { return std::string(info.param.name); });

TEST(ServerOptimizerStateTest, SaveRestoreContinuesBitForBit) {
  StrategySpec spec = Spec("fedyogi");
  auto a = Make(spec);
  auto b = Make(spec);
  TensorBundle x1 = Round(*a, W(0.5f, -0.25f), {{W(0.3f, -0.7f), 2}, {W(-0.1f, 0.9f), 7}});
  TensorBundle state = a->SaveState();
  ASSERT_EQ(state.tensors.size(), 3u);  // m/w, v/w, step
  EXPECT_EQ(state.Find("step")->values, std::vector<float>{1});
  ASSERT_TRUE(b->RestoreState(state).ok());
  TensorBundle xa = Round(*a, x1, {{W(0.2f, 0.1f), 3}});
  TensorBundle xb = Round(*b, x1, {{W(0.2f, 0.1f), 3}});
  EXPECT_EQ(Vals(xa, "w"), Vals(xb, "w"));
  // Without the state the second round differs: the state matters.
  auto fresh = Make(spec);
  TensorBundle xf = Round(*fresh, x1, {{W(0.2f, 0.1f), 3}});
  EXPECT_NE(Vals(xa, "w"), Vals(xf, "w"));
}

TEST(ServerOptimizerStateTest, RejectsForeignState) {
  auto s = Make(Spec("fedadam"));
  TensorBundle bogus;
  bogus.tensors.push_back(NamedTensor{"momentum", {1}, {1}});
  EXPECT_EQ(s->RestoreState(bogus).code(), StatusCode::kInvalidArgument);
  auto avg = Make(Spec("fedavg"));
  EXPECT_TRUE(avg->SaveState().tensors.empty());
  EXPECT_EQ(avg->RestoreState(bogus).code(), StatusCode::kInvalidArgument);
}

// Five updates per coordinate; the a[0] values are 1, 7, 3, 100, -50, the
// other coordinates their negatives and two constant rows. Global is 10.
std::vector<std::pair<TensorBundle, int64_t>> FiveUpdates() {
  return {{SmallBundle(1, -1, 0, 4), 1},
          {SmallBundle(7, -7, 0, 4), 1000},  // weights are ignored by robust strategies
          {SmallBundle(3, -3, 0, 4), 1},
          {SmallBundle(100, -100, 0, 4), 1},
          {SmallBundle(-50, 50, 0, 4), 1}};
}

TEST(MedianTest, OddAndEvenCounts) {
  auto s = Make(Spec("median"));
  EXPECT_TRUE(s->NeedsAllUpdates());
  // sorted 1: -50 1 3 7 100 -> 3; sorted 2: -100 -7 -3 -1 50 -> -3
  TensorBundle out = Round(*s, SmallBundle(10, 10, 10, 10), FiveUpdates());
  EXPECT_EQ(Vals(out, "a"), (std::vector<float>{13, 7}));
  EXPECT_EQ(Vals(out, "b"), (std::vector<float>{10, 14}));
  // Without -50: 1 3 7 100 -> (3 + 7) / 2 = 5
  auto four = FiveUpdates();
  four.pop_back();
  out = Round(*s, SmallBundle(10, 10, 10, 10), four);
  EXPECT_EQ(Vals(out, "a"), (std::vector<float>{15, 5}));
}

TEST(TrimmedMeanTest, TrimsFloorBetaNFromEachEnd) {
  StrategySpec spec = Spec("trimmed-mean");
  spec.trimFraction = 0.2;  // floor(0.2 * 5) = 1: drop -50 and 100 -> (1 + 3 + 7) / 3
  auto s = Make(spec);
  TensorBundle out = Round(*s, SmallBundle(10, 10, 10, 10), FiveUpdates());
  EXPECT_NEAR(Vals(out, "a")[0], 10 + 11.0 / 3, 1e-5);
  EXPECT_NEAR(Vals(out, "a")[1], 10 - 11.0 / 3, 1e-5);
  spec.trimFraction = 0.19;  // floor(0.95) = 0: plain mean (1 + 7 + 3 + 100 - 50) / 5 = 12.2
  s = Make(spec);
  out = Round(*s, SmallBundle(10, 10, 10, 10), FiveUpdates());
  EXPECT_NEAR(Vals(out, "a")[0], 22.2, 1e-5);
  spec.trimFraction = 0.4;  // floor(2) = 2: only the median is left
  s = Make(spec);
  out = Round(*s, SmallBundle(10, 10, 10, 10), FiveUpdates());
  EXPECT_FLOAT_EQ(Vals(out, "a")[0], 13);
}

// Krum with n = 5, f = 1: score = sum of the 2 smallest squared distances.
// Points (value v placed at a[0] and b[1], so squared distances are 2 (dv)^2;
// the factor 2 does not change the order): v = 0, 1, 2.5, 3, 100.
//   score/2: v=0: 1 + 6.25 = 7.25;  v=1: 1 + 2.25 = 3.25;  v=2.5: 0.25 + 2.25 = 2.5
//            v=3: 0.25 + 4 = 4.25;  v=100: 97^2 + 97.5^2 = 18915.25
// Order: 2.5, 1, 3, 0, 100.
std::vector<std::pair<TensorBundle, int64_t>> KrumUpdates() {
  std::vector<std::pair<TensorBundle, int64_t>> out;
  for (float v : {0.0f, 1.0f, 2.5f, 3.0f, 100.0f}) out.push_back({SmallBundle(v, 0, 0, v), 1});
  return out;
}

TEST(KrumTest, PicksTheUpdateWithTheLowestScore) {
  StrategySpec spec = Spec("krum");
  spec.byzantineClients = 1;
  auto s = Make(spec);
  TensorBundle out = Round(*s, SmallBundle(1, 1, 1, 1), KrumUpdates());
  EXPECT_EQ(Vals(out, "a"), (std::vector<float>{3.5f, 1}));
  EXPECT_EQ(Vals(out, "b"), (std::vector<float>{1, 3.5f}));
}

TEST(KrumTest, MultiKrumAveragesTheMBest) {
  StrategySpec spec = Spec("multi-krum");
  spec.byzantineClients = 1;
  spec.multiKrumM = 3;  // mean(2.5, 1, 3) = 6.5 / 3
  auto s = Make(spec);
  TensorBundle out = Round(*s, SmallBundle(1, 1, 1, 1), KrumUpdates());
  EXPECT_NEAR(Vals(out, "a")[0], 1 + 6.5 / 3, 1e-6);
  spec.multiKrumM = 0;  // n - f = 4: mean(2.5, 1, 3, 0) = 1.625; the outlier never enters
  s = Make(spec);
  out = Round(*s, SmallBundle(1, 1, 1, 1), KrumUpdates());
  EXPECT_FLOAT_EQ(Vals(out, "a")[0], 2.625f);
  EXPECT_FLOAT_EQ(Vals(out, "b")[1], 2.625f);
}

TEST(KrumTest, TooFewUpdatesForTheNeighbourCountFail) {
  StrategySpec spec = Spec("krum");
  spec.byzantineClients = 1;
  auto s = Make(spec);
  s->Begin(SmallBundle(0, 0, 0, 0));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(s->Add(SmallBundle(1, 1, 1, 1), 1).ok());
  auto out = s->Finish(SmallBundle(0, 0, 0, 0));
  EXPECT_EQ(out.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(out.status().message().find("at least f + 3 = 4 updates, got 3"), std::string::npos);
}

TEST(BufferingStrategyTest, RefusesUpdatesPastTheBound) {
  StrategySpec spec = Spec("median");
  spec.maxBufferedUpdates = 2;
  auto s = Make(spec);
  EXPECT_EQ(s->MaxUpdates(), 2);
  s->Begin(SmallBundle(0, 0, 0, 0));
  ASSERT_TRUE(s->Add(SmallBundle(1, 1, 1, 1), 1).ok());
  ASSERT_TRUE(s->Add(SmallBundle(3, 3, 3, 3), 1).ok());
  EXPECT_EQ(s->Add(SmallBundle(5, 5, 5, 5), 1).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(s->count(), 2);
  auto out = s->Finish(SmallBundle(0, 0, 0, 0));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(Vals(*out, "a"), (std::vector<float>{2, 2}));
}

TEST(NormBoundTest, ClipsBeforeAveraging) {
  StrategySpec spec = Spec("fedavg");
  spec.clipNorm = 1;
  auto s = Make(spec);
  // (3, 4) has norm 5 -> (0.6, 0.8); (0.3, 0) is within the bound.
  // Mean with equal weights: (0.45, 0.4).
  TensorBundle out =
      Round(*s, SmallBundle(0, 0, 0, 0), {{SmallBundle(3, 4, 0, 0), 1}, {SmallBundle(0.3f, 0, 0, 0), 1}});
  EXPECT_NEAR(Vals(out, "a")[0], 0.45, 1e-6);
  EXPECT_NEAR(Vals(out, "a")[1], 0.4, 1e-6);
}

TEST(NormBoundTest, ClipsUnderABufferingStrategyToo) {
  StrategySpec spec = Spec("trimmed-mean");
  spec.trimFraction = 0;  // the unweighted mean, so the clip shows
  spec.clipNorm = 2;
  auto s = Make(spec);
  // Norms: (0, 0, 0, 10) -> 10, clipped to (0, 0, 0, 2); the others are 1.
  // b[1] = (2 + 1 + 0) / 3 = 1 (unclipped it would be 11/3); a[0] = (0 + 0 + 1) / 3.
  TensorBundle out =
      Round(*s, SmallBundle(0, 0, 0, 0),
            {{SmallBundle(0, 0, 0, 10), 1}, {SmallBundle(0, 0, 0, 1), 1}, {SmallBundle(1, 0, 0, 0), 1}});
  EXPECT_FLOAT_EQ(Vals(out, "b")[1], 1);
  EXPECT_FLOAT_EQ(Vals(out, "a")[0], 1.0f / 3);
  EXPECT_TRUE(s->NeedsAllUpdates());  // the wrapper passes the inner strategy's nature through
}

TEST(NormBoundTest, RejectsUpdatesBeyondTheBound) {
  StrategySpec spec = Spec("fedadam");
  spec.maxUpdateNorm = 4;
  auto s = Make(spec);
  s->Begin(SmallBundle(0, 0, 0, 0));
  Status st = s->Add(SmallBundle(3, 4, 0, 0), 1);  // norm 5
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "norm 5 exceeds bound 4");
  EXPECT_EQ(s->count(), 0);
  EXPECT_TRUE(s->Add(SmallBundle(0, 4, 0, 0), 1).ok());  // exactly at the bound
  EXPECT_DOUBLE_EQ(L2Norm(SmallBundle(1, 2, 2, 4)), 5.0);
}

TEST(MakeStrategyTest, UnknownNameAndBadParametersAreRejected) {
  EXPECT_EQ(MakeStrategy(Spec("sgd")).status().code(), StatusCode::kInvalidArgument);
  StrategySpec spec = Spec("fedadam");
  spec.tau = 0;
  EXPECT_EQ(MakeStrategy(spec).status().code(), StatusCode::kInvalidArgument);
  spec = Spec("trimmed-mean");
  spec.trimFraction = 0.5;
  EXPECT_EQ(MakeStrategy(spec).status().code(), StatusCode::kInvalidArgument);
  for (const char* name : {"fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "median", "trimmed-mean",
                           "krum", "multi-krum"}) {
    auto s = MakeStrategy(Spec(name));
    ASSERT_TRUE(s.ok()) << name;
    EXPECT_EQ((*s)->name(), name);
  }
}

}  // namespace
}  // namespace fedge::aggregator

namespace fedge::aggregator {
namespace {

// FedAvgM, beta = 0.5, x0 = (1, 1), v0 = 0. Deltas by hand:
// Round 1: (2, 0) n = 1 and (4, -4) n = 3 -> D = ((2 + 12) / 4, -12 / 4) = (3.5, -3)
//          v1 = (3.5, -3), x1 = (4.5, -2)
// Round 2: (1, 1) n = 2                   -> D = (1, 1)
//          v2 = 0.5 v1 + D = (2.75, -0.5), x2 = (7.25, -2.5)
// beta = 0 is FedAvg: x1 = (4.5, -2), x2 = (5.5, -1).
TEST(FedAvgMTest, ServerMomentumByHand) {
  StrategySpec spec = Spec("fedavgm");
  spec.serverMomentum = 0.5;
  auto s = Make(spec);
  ASSERT_NE(s, nullptr);
  TensorBundle x1 = Round(*s, W(1, 1), {{W(2, 0), 1}, {W(4, -4), 3}});
  EXPECT_EQ(Vals(x1, "w"), (std::vector<float>{4.5f, -2.0f}));
  TensorBundle x2 = Round(*s, x1, {{W(1, 1), 2}});
  EXPECT_EQ(Vals(x2, "w"), (std::vector<float>{7.25f, -2.5f}));

  spec.serverMomentum = 0.0;
  auto plain = Make(spec);
  TensorBundle y1 = Round(*plain, W(1, 1), {{W(2, 0), 1}, {W(4, -4), 3}});
  EXPECT_EQ(Vals(Round(*plain, y1, {{W(1, 1), 2}}), "w"), (std::vector<float>{5.5f, -1.0f}));
}

TEST(FedAvgMTest, MomentumSurvivesACheckpointAndForeignStateIsRefused) {
  StrategySpec spec = Spec("fedavgm");
  spec.serverMomentum = 0.5;
  auto a = Make(spec);
  TensorBundle x1 = Round(*a, W(1, 1), {{W(2, 0), 1}, {W(4, -4), 3}});
  auto b = Make(spec);
  ASSERT_TRUE(b->RestoreState(a->SaveState()).ok());
  EXPECT_EQ(Vals(Round(*b, x1, {{W(1, 1), 2}}), "w"), (std::vector<float>{7.25f, -2.5f}));
  TensorBundle foreign;
  foreign.tensors.push_back(NamedTensor{"m/w", {2}, {0, 0}});
  EXPECT_FALSE(Make(spec)->RestoreState(foreign).ok());
  spec.serverMomentum = 1.0;
  EXPECT_FALSE(MakeStrategy(spec).ok()) << "beta 1 never forgets: refused";
}

// SCAFFOLD (option II), N = 2 agents, K = 2 local steps, eta = 0.5 (K eta = 1),
// x0 = (1, 2, 3), c0 = 0. By hand:
// Round 1, both agents: dy1 = (0.25, -0.5, 0.75) n = 1, dy2 = (0.5, 0, -0.25) n = 3
//   x1 = x0 + (1 dy1 + 3 dy2) / 4 = (1 + 1.75 / 4, 2 - 0.5 / 4, 3 + 0 / 4) = (1.4375, 1.875, 3)
//   the agents' c_i = c_i - c - dy_i / (K eta):  c_1 = (-0.25, 0.5, -0.75), c_2 = (-0.5, 0, 0.25)
//   c1 = mean(c_1, c_2) = (-0.375, 0.25, -0.25)
// Round 2, agent 1 only (|S| = 1 of N = 2): dy1 = (0.125, 0.125, 0.125) n = 1
//   x2 = x1 + dy1 = (1.5625, 2, 3.125)
//   c_1 = (-0.25, 0.5, -0.75) - c1 - dy1 = (0, 0.125, -0.625), c_2 unchanged
//   c2 = mean(c_1, c_2) = (-0.25, 0.0625, -0.1875)
TensorBundle V3(float a, float b, float c) {
  TensorBundle t;
  t.tensors.push_back(NamedTensor{"w", {3}, {a, b, c}});
  return t;
}

TensorBundle DecodedControl(const AggregationStrategy& s) {
  std::shared_ptr<const std::string> c = s.ServerControl();
  EXPECT_NE(c, nullptr);
  if (c == nullptr || c->empty()) return {};
  auto b = DecodeBundle(*c);
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  return b.ok() ? *b : TensorBundle{};
}

TEST(ScaffoldTest, ControlVariatesByHandWithPartialParticipation) {
  auto s = Make(Spec("scaffold"));
  ASSERT_NE(s, nullptr);
  ASSERT_NE(s->ServerControl(), nullptr) << "scaffold hands c out with every task";
  EXPECT_TRUE(s->ServerControl()->empty()) << "c = 0 before the first round";
  s->SetRoundContext(RoundContext{/*population=*/2, /*local_steps=*/2, /*learning_rate=*/0.5});
  TensorBundle x1 = Round(*s, V3(1, 2, 3), {{V3(0.25f, -0.5f, 0.75f), 1}, {V3(0.5f, 0, -0.25f), 3}});
  EXPECT_EQ(Vals(x1, "w"), (std::vector<float>{1.4375f, 1.875f, 3.0f}));
  EXPECT_EQ(Vals(DecodedControl(*s), "w"), (std::vector<float>{-0.375f, 0.25f, -0.25f}));
  TensorBundle x2 = Round(*s, x1, {{V3(0.125f, 0.125f, 0.125f), 1}});
  EXPECT_EQ(Vals(x2, "w"), (std::vector<float>{1.5625f, 2.0f, 3.125f}));
  EXPECT_EQ(Vals(DecodedControl(*s), "w"), (std::vector<float>{-0.25f, 0.0625f, -0.1875f}));
  // Other strategies hand out no control variate.
  EXPECT_EQ(Make(Spec("fedavg"))->ServerControl(), nullptr);
  EXPECT_EQ(Make(Spec("fedavgm"))->ServerControl(), nullptr);
}

TEST(ScaffoldTest, ControlVariateSurvivesACheckpointAndForeignStateIsRefused) {
  TempDir dir;
  CheckpointStore store(dir.path());
  auto a = Make(Spec("scaffold"));
  a->SetRoundContext(RoundContext{2, 2, 0.5});
  TensorBundle x1 = Round(*a, V3(1, 2, 3), {{V3(0.25f, -0.5f, 0.75f), 1}, {V3(0.5f, 0, -0.25f), 3}});
  CheckpointData d;
  d.job = "ns/demo";
  d.completed_round = 1;
  d.total_rounds = 2;
  d.global_version = 2;
  d.global_checksum = "abc";
  d.global = x1;
  d.strategy_state = a->SaveState();
  ASSERT_TRUE(store.Save(d).ok());
  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value()) << loaded.status().ToString();

  // A restarted aggregator: the same c handed out, and round 2 as if never stopped.
  auto b = Make(Spec("scaffold"));
  ASSERT_TRUE(b->RestoreState((*loaded)->strategy_state).ok());
  EXPECT_EQ(*b->ServerControl(), *a->ServerControl());
  b->SetRoundContext(RoundContext{2, 2, 0.5});
  TensorBundle x2 = Round(*b, (*loaded)->global, {{V3(0.125f, 0.125f, 0.125f), 1}});
  EXPECT_EQ(Vals(x2, "w"), (std::vector<float>{1.5625f, 2.0f, 3.125f}));
  EXPECT_EQ(Vals(DecodedControl(*b), "w"), (std::vector<float>{-0.25f, 0.0625f, -0.1875f}));

  TensorBundle foreign;
  foreign.tensors.push_back(NamedTensor{"v/w", {3}, {0, 0, 0}});
  EXPECT_FALSE(Make(Spec("scaffold"))->RestoreState(foreign).ok());
  EXPECT_FALSE(Make(Spec("fedavgm"))->RestoreState(a->SaveState()).ok()) << "c is not momentum";
}

// The same two rounds with the global step size eta_g = 1.5 (spec.strategy.globalLearningRate):
// the global moves by 1.5 times the example-weighted mean delta, c exactly as at eta_g = 1.
//   x1 = x0 + 1.5 (0.4375, -0.125, 0) = (1.65625, 1.8125, 3),   c1 = (-0.375, 0.25, -0.25)
//   x2 = x1 + 1.5 (0.125, 0.125, 0.125) = (1.84375, 2, 3.1875), c2 = (-0.25, 0.0625, -0.1875)
// Round 2 also runs on a strategy restored from round 1's checkpointed state (eta_g comes
// from the spec, c from the checkpoint).
TEST(ScaffoldTest, GlobalStepSizeScalesTheModelStepNotTheControlVariate) {
  StrategySpec spec = Spec("scaffold");
  spec.globalLearningRate = 1.5;
  auto s = Make(spec);
  ASSERT_NE(s, nullptr);
  s->SetRoundContext(RoundContext{2, 2, 0.5});
  TensorBundle x1 = Round(*s, V3(1, 2, 3), {{V3(0.25f, -0.5f, 0.75f), 1}, {V3(0.5f, 0, -0.25f), 3}});
  EXPECT_EQ(Vals(x1, "w"), (std::vector<float>{1.65625f, 1.8125f, 3.0f}));
  EXPECT_EQ(Vals(DecodedControl(*s), "w"), (std::vector<float>{-0.375f, 0.25f, -0.25f}));

  auto restored = Make(spec);
  ASSERT_TRUE(restored->RestoreState(s->SaveState()).ok());
  for (AggregationStrategy* each : {s.get(), restored.get()}) {
    each->SetRoundContext(RoundContext{2, 2, 0.5});
    TensorBundle x2 = Round(*each, x1, {{V3(0.125f, 0.125f, 0.125f), 1}});
    EXPECT_EQ(Vals(x2, "w"), (std::vector<float>{1.84375f, 2.0f, 3.1875f}));
    EXPECT_EQ(Vals(DecodedControl(*each), "w"), (std::vector<float>{-0.25f, 0.0625f, -0.1875f}));
  }

  for (double bad : {0.0, -1.0}) {
    spec.globalLearningRate = bad;
    auto refused = MakeStrategy(spec);
    ASSERT_FALSE(refused.ok()) << bad;
    EXPECT_NE(refused.status().message().find("globalLearningRate"), std::string::npos);
  }
}

TEST(ScaffoldTest, RefusesWhatBreaksTheControlVariates) {
  StrategySpec spec = Spec("scaffold");
  spec.clipNorm = 1;
  auto clipped = MakeStrategy(spec);
  ASSERT_FALSE(clipped.ok());
  EXPECT_NE(clipped.status().message().find("clipNorm"), std::string::npos) << clipped.status().ToString();
  spec.clipNorm = 0;
  spec.maxUpdateNorm = 2;
  EXPECT_FALSE(MakeStrategy(spec).ok());
  AdapterSpec product;
  product.aggregation = "product";
  product.rank = 2;
  EXPECT_FALSE(MakeStrategy(Spec("scaffold"), product).ok()) << "product re-factors the updates";
  // No round context (K, eta, N): Finish fails and c stays 0.
  auto s = Make(Spec("scaffold"));
  s->Begin(V3(1, 2, 3));
  ASSERT_TRUE(s->Add(V3(1, 1, 1), 1).ok());
  EXPECT_EQ(s->Finish(V3(1, 2, 3)).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(s->ServerControl()->empty());
}

// Local learning-rate schedules, base 0.01, R = 5, by hand:
//   linear: 0.01 * (1 - (r - 1) / 5) = 0.01, 0.008, 0.006, 0.004, 0.002
//   cosine: 0.01 * (1 + cos(pi (r - 1) / 5)) / 2 = 0.01, 0.0090451, 0.0065451, 0.0034549, 0.0009549
TEST(LearningRateScheduleTest, LinearAndCosineByHand) {
  const double linear[5] = {0.01, 0.008, 0.006, 0.004, 0.002};
  const double cosine[5] = {0.01, 0.0090451, 0.0065451, 0.0034549, 0.0009549};
  for (int r = 1; r <= 5; ++r) {
    EXPECT_DOUBLE_EQ(ScheduledLearningRate(0.01, "constant", r, 5), 0.01);
    EXPECT_NEAR(ScheduledLearningRate(0.01, "linear", r, 5), linear[r - 1], 1e-12) << "round " << r;
    EXPECT_NEAR(ScheduledLearningRate(0.01, "cosine", r, 5), cosine[r - 1], 1e-7) << "round " << r;
  }
  // Rounds outside [1, R] are clamped (async versions past the end, round 0 = initialize).
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(0.01, "linear", 0, 5), 0.01);
  EXPECT_NEAR(ScheduledLearningRate(0.01, "linear", 9, 5), 0.002, 1e-12);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(0.01, "cosine", 3, 0), 0.01) << "no rounds: the base rate";
}

// FedAdam with beta2 0.99, tau 1000 and eta 2000: the large-tau settings below.
StrategySpec LargeTauFedAdam(double beta1) {
  StrategySpec spec = Spec("fedadam");
  spec.beta1 = beta1;
  spec.beta2 = 0.99;
  spec.tau = 1000;
  spec.serverLearningRate = 2000;
  return spec;
}

// With tau far above sqrt(v) (here sqrt(v) = sqrt(1 - b2) |D| <= 0.37, tau = 1000) a server
// optimizer's step is eta m / tau: FedAdam with b1 = 0 is FedAvg with server learning rate
// eta / tau, and with b1 = beta and eta = tau / (1 - beta) it is FedAvgM (m / (1 - beta)
// follows v = beta v + D). bench/experiment relies on both for its server-learning-rate
// configurations. Same rounds as ServerMomentumByHand: x0 = (1, 1), D1 = (3.5, -3), D2 = (1, 1).
// By hand (b2 = 0.99): b1 = 0, eta = 2000:
//   x1 = 1 + 2000 * 3.5 / (sqrt(0.01 * 12.25) + 1000) = 7.9975509, 1 - 6000 / 1000.3 = -4.9982005
//   x2 = x1 + 2000 / (sqrt(0.99 * 0.1225 + 0.01) + 1000) = 9.9968265; -2.9988299
// FedAvg at server lr 2: x1 = (8, -5), x2 = (10, -3); the gap is the factor 1 / (1 + sqrt(v) / tau).
TEST(ServerOptimizerTest, LargeTauWithoutMomentumIsFedAvgWithAServerLearningRate) {
  StrategySpec spec = LargeTauFedAdam(/*beta1=*/0);
  auto s = Make(spec);
  ASSERT_NE(s, nullptr);
  TensorBundle x1 = Round(*s, W(1, 1), {{W(2, 0), 1}, {W(4, -4), 3}});
  EXPECT_NEAR(Vals(x1, "w")[0], 7.9975509, 1e-5);
  EXPECT_NEAR(Vals(x1, "w")[1], -4.9982005, 1e-5);
  TensorBundle x2 = Round(*s, x1, {{W(1, 1), 2}});
  EXPECT_NEAR(Vals(x2, "w")[0], 9.9968265, 1e-5);
  EXPECT_NEAR(Vals(x2, "w")[1], -2.9988299, 1e-5);
  EXPECT_NEAR(Vals(x2, "w")[0], 10.0, 4e-3);
  EXPECT_NEAR(Vals(x2, "w")[1], -3.0, 4e-3);
}

// b1 = 0.5, eta = tau / (1 - 0.5) = 2000, other settings as above. By hand:
//   m1 = 0.5 D1 = (1.75, -1.5): x1 = 1 + 2000 * 1.75 / 1000.35 = 4.4987754; -1.9991003
//   m2 = 0.5 m1 + 0.5 D2 = (1.375, -0.25): x2 = 7.2477794; -2.4989429
// FedAvgM beta 0.5 on the same rounds (ServerMomentumByHand): (4.5, -2), (7.25, -2.5).
TEST(ServerOptimizerTest, LargeTauWithMomentumIsFedAvgM) {
  StrategySpec spec = LargeTauFedAdam(/*beta1=*/0.5);
  auto adam = Make(spec);
  StrategySpec m = Spec("fedavgm");
  m.serverMomentum = 0.5;
  auto avgm = Make(m);
  ASSERT_NE(adam, nullptr);
  ASSERT_NE(avgm, nullptr);
  TensorBundle a1 = Round(*adam, W(1, 1), {{W(2, 0), 1}, {W(4, -4), 3}});
  TensorBundle m1 = Round(*avgm, W(1, 1), {{W(2, 0), 1}, {W(4, -4), 3}});
  EXPECT_NEAR(Vals(a1, "w")[0], 4.4987754, 1e-5);
  EXPECT_NEAR(Vals(a1, "w")[1], -1.9991003, 1e-5);
  TensorBundle a2 = Round(*adam, a1, {{W(1, 1), 2}});
  TensorBundle m2 = Round(*avgm, m1, {{W(1, 1), 2}});
  EXPECT_NEAR(Vals(a2, "w")[0], 7.2477794, 1e-5);
  EXPECT_NEAR(Vals(a2, "w")[1], -2.4989429, 1e-5);
  for (int i = 0; i < 2; ++i) EXPECT_NEAR(Vals(a2, "w")[i], Vals(m2, "w")[i], 4e-3);
}

}  // namespace
}  // namespace fedge::aggregator
