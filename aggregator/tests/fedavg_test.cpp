#include "fedge/aggregator/fedavg.h"

#include <gtest/gtest.h>

#include <cmath>

#include "fedge/aggregator/strategy.h"
#include "test_util.h"

namespace fedge::aggregator {
namespace {

using testing::SmallBundle;

TEST(FedAvgTest, WeightedMeanMatchesHandComputedValues) {
  TensorBundle global = SmallBundle(1, 2, 0.5f, -1);
  TensorBundle d1 = SmallBundle(1, 0, 2, 4);    // weight 1
  TensorBundle d2 = SmallBundle(-1, 4, -1, 0);  // weight 3
  // sum n*d = a: [1-3, 0+12] = [-2, 12]; b: [2-3, 4+0] = [-1, 4]; / 4
  // -> a: [-0.5, 3], b: [-0.25, 1]; plus global.
  auto out = FedAvg(global, {{&d1, 1}, {&d2, 3}});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_FLOAT_EQ(out->Find("a")->values[0], 0.5f);
  EXPECT_FLOAT_EQ(out->Find("a")->values[1], 5.0f);
  EXPECT_FLOAT_EQ(out->Find("b")->values[0], 0.25f);
  EXPECT_FLOAT_EQ(out->Find("b")->values[1], 0.0f);
  EXPECT_EQ(out->Find("b")->shape, (std::vector<int64_t>{1, 2}));
}

TEST(FedAvgTest, SingleUpdateIsAppliedWhole) {
  TensorBundle global = SmallBundle(1, 1, 1, 1);
  TensorBundle d = SmallBundle(0.25f, -0.5f, 2, 0);
  auto out = FedAvg(global, {{&d, 1234}});
  ASSERT_TRUE(out.ok());
  EXPECT_FLOAT_EQ(out->Find("a")->values[0], 1.25f);
  EXPECT_FLOAT_EQ(out->Find("a")->values[1], 0.5f);
  EXPECT_FLOAT_EQ(out->Find("b")->values[0], 3.0f);
}

TEST(FedAvgTest, MatchesTensorsByNameNotPosition) {
  TensorBundle global = SmallBundle(0, 0, 0, 0);
  TensorBundle d = SmallBundle(1, 2, 3, 4);
  std::swap(d.tensors[0], d.tensors[1]);
  auto out = FedAvg(global, {{&d, 2}});
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->tensors[0].name, "a");  // global's order
  EXPECT_FLOAT_EQ(out->Find("a")->values[1], 2.0f);
  EXPECT_FLOAT_EQ(out->Find("b")->values[1], 4.0f);
}

TEST(FedAvgTest, RejectsWrongLayoutBadWeightAndNonFinite) {
  TensorBundle global = SmallBundle(0, 0, 0, 0);
  WeightedDeltaSum sum(global);
  TensorBundle wrong_shape = SmallBundle(1, 2, 3, 4);
  wrong_shape.tensors[1].shape = {2, 1};
  EXPECT_EQ(sum.Add(wrong_shape, 1).code(), StatusCode::kInvalidArgument);
  TensorBundle extra = SmallBundle(1, 2, 3, 4);
  extra.tensors.push_back(NamedTensor{"c", {1}, {1}});
  EXPECT_EQ(sum.Add(extra, 1).code(), StatusCode::kInvalidArgument);
  TensorBundle renamed = SmallBundle(1, 2, 3, 4);
  renamed.tensors[0].name = "z";
  EXPECT_EQ(sum.Add(renamed, 1).code(), StatusCode::kInvalidArgument);
  TensorBundle nan = SmallBundle(1, NAN, 3, 4);
  EXPECT_EQ(sum.Add(nan, 1).code(), StatusCode::kInvalidArgument);
  TensorBundle ok = SmallBundle(1, 2, 3, 4);
  EXPECT_EQ(sum.Add(ok, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(sum.Add(ok, -2).code(), StatusCode::kInvalidArgument);
  // None of the failures changed the sum.
  EXPECT_EQ(sum.count(), 0);
  EXPECT_EQ(sum.ApplyMean(global).status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(sum.Add(ok, 2).ok());
  auto out = sum.ApplyMean(global);
  ASSERT_TRUE(out.ok());
  EXPECT_FLOAT_EQ(out->Find("a")->values[1], 2.0f);
}

TEST(FedAvgTest, LargeWeightsKeepPrecision) {
  // Float accumulation of 1e7-weighted values would lose the small delta.
  TensorBundle global = SmallBundle(0, 0, 0, 0);
  TensorBundle big = SmallBundle(1e-3f, 0, 0, 0);
  TensorBundle small = SmallBundle(1e-3f + 1e-6f, 0, 0, 0);
  auto out = FedAvg(global, {{&big, 1e7}, {&small, 1e7}});
  ASSERT_TRUE(out.ok());
  EXPECT_NEAR(out->Find("a")->values[0], 1e-3 + 0.5e-6, 1e-9);
}

TEST(StrategyTest, BuildsFedAvgAndFedProxAndRefusesUnknownNamesClearly) {
  StrategySpec spec;
  spec.name = "fedavg";
  ASSERT_TRUE(MakeStrategy(spec).ok());
  spec.name = "fedprox";
  ASSERT_TRUE(MakeStrategy(spec).ok());
  spec.name = "nonsense";
  auto bad = MakeStrategy(spec);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("spec.strategy.name"), std::string::npos);
}

TEST(StrategyTest, FedAvgStrategyStreamsUpdates) {
  StrategySpec spec;
  auto strategy = MakeStrategy(spec);
  ASSERT_TRUE(strategy.ok());
  TensorBundle global = SmallBundle(1, 2, 0.5f, -1);
  (*strategy)->Begin(global);
  ASSERT_TRUE((*strategy)->Add(SmallBundle(1, 0, 2, 4), 1).ok());
  ASSERT_TRUE((*strategy)->Add(SmallBundle(-1, 4, -1, 0), 3).ok());
  EXPECT_EQ((*strategy)->count(), 2);
  auto out = (*strategy)->Finish(global);
  ASSERT_TRUE(out.ok());
  EXPECT_FLOAT_EQ(out->Find("a")->values[1], 5.0f);
  (*strategy)->Begin(global);  // a new round forgets the last one
  EXPECT_EQ((*strategy)->count(), 0);
}

}  // namespace
}  // namespace fedge::aggregator
