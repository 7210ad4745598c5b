// The local round's optimizer step that both model families share (train/local_step.h).
#include "train/local_step.h"

#include <gtest/gtest.h>

#include <limits>

namespace fedge::agent {
namespace {

// A 2-vector trained towards `target` with a squared loss.
struct Toy {
  torch::Tensor w = torch::zeros({2}).set_requires_grad(true);
  torch::Tensor Loss(const torch::Tensor& target) { return (w - target).pow(2).sum(); }
};

TEST(LocalRoundTest, AdamWMovesTowardsTheTargetAndFedProxHoldsItBack) {
  const torch::Tensor target = torch::tensor({1.0f, -1.0f});
  auto run = [&](double mu) {
    Toy toy;
    TrainOptions o;
    o.learning_rate = 0.1;
    o.weight_decay = 0;
    o.proximal_mu = mu;
    LocalRound round({toy.w}, {"w"}, o);
    EXPECT_TRUE(round.Start().ok());
    for (int step = 0; step < 50; ++step) EXPECT_TRUE(round.Step(toy.Loss(target), step).ok());
    return toy.w.detach().clone();
  };
  torch::Tensor free = run(0), held = run(100);
  EXPECT_LT((free - target).abs().max().item<float>(), 0.3f);
  EXPECT_LT(held.abs().max().item<float>(), (free.abs().max().item<float>()) / 2) << held;
}

TEST(LocalRoundTest, NonFiniteLossRestoresTheStartAndNamesTheStep) {
  Toy toy;
  {
    torch::NoGradGuard no_grad;
    toy.w.fill_(0.5f);
  }
  LocalRound round({toy.w}, {"w"}, TrainOptions{});
  ASSERT_TRUE(round.Start().ok());
  ASSERT_TRUE(round.Step(toy.Loss(torch::tensor({3.0f, 3.0f})), 0).ok());
  EXPECT_NE(toy.w[0].item<float>(), 0.5f);
  auto bad = round.Step(toy.Loss(torch::tensor({std::numeric_limits<float>::infinity(), 0.0f})), 1);
  ASSERT_EQ(bad.status().code(), StatusCode::kInternal);
  EXPECT_NE(bad.status().message().find("step 1"), std::string::npos) << bad.status().ToString();
  EXPECT_EQ(toy.w[0].item<float>(), 0.5f);
  EXPECT_EQ(toy.w[1].item<float>(), 0.5f);
}

TEST(LocalRoundTest, StepCorrectionMustCoverEveryTensorWithItsShape) {
  Toy toy;
  TrainOptions o;
  auto correction = std::make_shared<TensorBundle>();
  correction->tensors.push_back({"w", {3}, {0, 0, 0}});
  o.step_correction = correction;
  LocalRound round({toy.w}, {"w"}, o);
  EXPECT_EQ(round.Start().code(), StatusCode::kInvalidArgument);
}

TEST(LocalRoundTest, ValidateRefusesNonPositiveLearningRateAndNegativeTerms) {
  TrainOptions o;
  EXPECT_TRUE(ValidateLocalRound(o, "Train").ok());
  o.learning_rate = 0;
  EXPECT_EQ(ValidateLocalRound(o, "Train").code(), StatusCode::kInvalidArgument);
  o = TrainOptions{};
  o.proximal_mu = -1;
  EXPECT_EQ(ValidateLocalRound(o, "Train").code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedge::agent
