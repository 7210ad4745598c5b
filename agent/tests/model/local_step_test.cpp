// The local round's optimizer step that both model families share (train/local_step.h).
#include "train/local_step.h"

#include <gtest/gtest.h>

#include <cmath>
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

// Logit adjustment, by hand: labels {0, 0, 0, 1} give pi = (0.75, 0.25); tau = 1 shifts
// zero logits to (log 0.75, log 0.25) (+1e-6 inside each log), whose softmax is pi itself.
TEST(LogitAdjustmentTest, ShiftAndLossMatchAHandComputedExample) {
  torch::Tensor shift = LogitAdjustment({0, 0, 0, 1}, 3, 1.0);
  ASSERT_EQ(shift.sizes().vec(), std::vector<int64_t>({3}));
  EXPECT_NEAR(shift[0].item<float>(), std::log(0.75 + 1e-6), 1e-6);
  EXPECT_NEAR(shift[1].item<float>(), std::log(0.25 + 1e-6), 1e-6);
  EXPECT_NEAR(shift[2].item<float>(), std::log(1e-6), 1e-4);  // class 2 absent locally
  EXPECT_NEAR(LogitAdjustment({0, 0, 0, 1}, 3, 2.0)[1].item<float>(), 2 * std::log(0.25 + 1e-6), 1e-5);

  // Zero logits, two classes: plain cross-entropy is log 2 whatever the target; the
  // adjusted one is -log pi(target): -log 0.25 = 1.3863 for the rare class, -log 0.75 =
  // 0.2877 for the common one.
  torch::Tensor logits = torch::zeros({2, 2});
  torch::Tensor two = LogitAdjustment({0, 0, 0, 1}, 2, 1.0);
  torch::Tensor per_target = torch::tensor({1, 0}, torch::kLong);
  EXPECT_NEAR(LogitAdjustedCrossEntropy(logits, per_target, torch::Tensor()).item<float>(), std::log(2.0),
              1e-6);
  EXPECT_NEAR(LogitAdjustedCrossEntropy(logits.slice(0, 0, 1), per_target.slice(0, 0, 1), two).item<float>(),
              -std::log(0.25), 1e-5);
  EXPECT_NEAR(LogitAdjustedCrossEntropy(logits.slice(0, 1, 2), per_target.slice(0, 1, 2), two).item<float>(),
              -std::log(0.75), 1e-5);
  // Mean over the batch.
  EXPECT_NEAR(LogitAdjustedCrossEntropy(logits, per_target, two).item<float>(),
              (-std::log(0.25) - std::log(0.75)) / 2, 1e-5);
}

// The gradient with respect to the raw logits is softmax(logits + shift) - onehot: with
// zero logits and pi = (0.75, 0.25), an example of the rare class pulls its logit up by
// 0.75 (plain: 0.5) and an example of the common class pushes the rare logit down by only
// 0.25 (plain: 0.5). A class absent locally is hardly pushed down at all.
TEST(LogitAdjustmentTest, ASkewedLocalPriorMovesTheGradientTowardTheRareClass) {
  auto grad = [](int64_t target, const torch::Tensor& shift, int64_t classes) {
    torch::Tensor logits = torch::zeros({1, classes}).set_requires_grad(true);
    LogitAdjustedCrossEntropy(logits, torch::tensor({target}, torch::kLong), shift).backward();
    return logits.grad()[0].clone();
  };
  torch::Tensor shift = LogitAdjustment({0, 0, 0, 1}, 2, 1.0);
  torch::Tensor rare_plain = grad(1, torch::Tensor(), 2), rare_adj = grad(1, shift, 2);
  EXPECT_NEAR(rare_plain[1].item<float>(), -0.5f, 1e-6);
  EXPECT_NEAR(rare_adj[1].item<float>(), -0.75f, 1e-5);
  torch::Tensor common_plain = grad(0, torch::Tensor(), 2), common_adj = grad(0, shift, 2);
  EXPECT_NEAR(common_plain[1].item<float>(), 0.5f, 1e-6);
  EXPECT_NEAR(common_adj[1].item<float>(), 0.25f, 1e-5);
  EXPECT_NEAR(common_adj[0].item<float>(), -0.25f, 1e-5);

  torch::Tensor absent = grad(0, LogitAdjustment({0, 0, 0, 1}, 3, 1.0), 3);
  EXPECT_LT(absent[2].item<float>(), 1e-5f);  // plain: 1/3
  EXPECT_GT(absent[2].item<float>(), 0.0f);
}

TEST(LogitAdjustmentTest, ValidateLocalRoundRefusesANegativeOrNonFiniteTau) {
  TrainOptions o;
  o.logit_adjustment = 1.0;
  EXPECT_TRUE(ValidateLocalRound(o, "Train").ok());
  o.logit_adjustment = -0.5;
  Status st = ValidateLocalRound(o, "Train");
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("logit_adjustment"), std::string::npos) << st.message();
  o.logit_adjustment = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(ValidateLocalRound(o, "Train").code(), StatusCode::kInvalidArgument);
  o.logit_adjustment = std::numeric_limits<double>::infinity();
  EXPECT_EQ(ValidateLocalRound(o, "Train").code(), StatusCode::kInvalidArgument);
}

// spec.rounds.optimizerState keep: a round that continues the previous round's AdamW
// (ReleaseOptimizer -> Start(kept)) takes the same steps as one round twice as long;
// a fresh optimizer restarts the moments, and does not. The target moves between the
// rounds (as the global does), so the kept first moment still points the old way.
TEST(LocalRoundTest, AKeptOptimizerContinuesAsOneLongerRound) {
  const torch::Tensor first_target = torch::tensor({1.0f, -1.0f});
  const torch::Tensor second_target = torch::tensor({-1.0f, 1.0f});
  TrainOptions o;
  o.learning_rate = 0.05;
  o.weight_decay = 0.01;
  auto steps = [&](LocalRound& round, Toy& toy, const torch::Tensor& target) {
    for (int step = 0; step < 5; ++step) ASSERT_TRUE(round.Step(toy.Loss(target), step).ok());
  };
  Toy one;
  LocalRound long_round({one.w}, {"w"}, o);
  ASSERT_TRUE(long_round.Start().ok());
  steps(long_round, one, first_target);
  steps(long_round, one, second_target);

  Toy kept, fresh;
  for (Toy* toy : {&kept, &fresh}) {
    LocalRound first({toy->w}, {"w"}, o);
    ASSERT_TRUE(first.Start().ok());
    steps(first, *toy, first_target);
    LocalRound second({toy->w}, {"w"}, o);
    ASSERT_TRUE(second.Start(toy == &kept ? first.ReleaseOptimizer() : nullptr).ok());
    steps(second, *toy, second_target);
  }
  EXPECT_TRUE(torch::equal(kept.w, one.w)) << kept.w << one.w;
  // Fresh turns at once (about 5 x lr towards the new target); kept first brakes its momentum.
  EXPECT_LT(fresh.w[0].item<float>(), kept.w[0].item<float>() - 0.05f) << fresh.w << kept.w;
}

// The kept optimizer takes the new round's learning rate (e.g. a schedule's).
TEST(LocalRoundTest, AKeptOptimizerStepsAtTheNewRoundsLearningRate) {
  const torch::Tensor target = torch::tensor({1.0f, -1.0f});
  TrainOptions o;
  o.learning_rate = 0.05;
  o.weight_decay = 0;
  Toy toy;
  LocalRound first({toy.w}, {"w"}, o);
  ASSERT_TRUE(first.Start().ok());
  ASSERT_TRUE(first.Step(toy.Loss(target), 0).ok());
  o.learning_rate = 1e-9;
  LocalRound second({toy.w}, {"w"}, o);
  ASSERT_TRUE(second.Start(first.ReleaseOptimizer()).ok());
  torch::Tensor before = toy.w.detach().clone();
  ASSERT_TRUE(second.Step(toy.Loss(target), 0).ok());
  EXPECT_LT((toy.w - before).abs().max().item<float>(), 1e-7f);
}

// The AdamW state of `optimizer` for its only parameter.
torch::optim::AdamWParamState& OnlyState(torch::optim::AdamW& optimizer) {
  EXPECT_EQ(optimizer.state().size(), 1u);
  return static_cast<torch::optim::AdamWParamState&>(*optimizer.state().begin()->second);
}

// spec.rounds.optimizerState keep-second-moment, by hand: after a round of 5 steps the
// next round's Start zeroes exp_avg and keeps exp_avg_sq and the step count; its first
// step is then AdamW's with m = (1 - b1) g corrected as a fresh optimizer's first step
// (by 1 - b1^1), v = b2 v_5 + (1 - b2) g^2 corrected by 1 - b2^6, and the decay lr x wd,
// computed here from the kept v_5 and the toy's gradient 2 (w - target). `keep` (both
// moments) fails the same checks: exp_avg is not 0 and the first step differs.
TEST(LocalRoundTest, AKeptSecondMomentRoundZeroesOnlyTheFirstMoment) {
  const torch::Tensor target = torch::tensor({1.0f, -1.0f});
  const double lr = 0.05, wd = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  struct Seen {
    torch::Tensor m, v, v5, w0, w1, w2;
    int64_t t = 0;
  };
  auto second_round = [&](bool keep_first_moment) {
    Seen seen;
    Toy toy;
    TrainOptions o;
    o.learning_rate = lr;
    o.weight_decay = wd;
    o.max_grad_norm = 0;
    o.keep_optimizer_state = true;
    o.keep_first_moment = keep_first_moment;
    LocalRound first({toy.w}, {"w"}, o);
    EXPECT_TRUE(first.Start().ok());
    for (int step = 0; step < 5; ++step) EXPECT_TRUE(first.Step(toy.Loss(target), step).ok());
    EXPECT_GT(OnlyState(first.optimizer()).exp_avg().abs().min().item<float>(), 0.0f);
    EXPECT_EQ(OnlyState(first.optimizer()).step(), 5);
    seen.v5 = OnlyState(first.optimizer()).exp_avg_sq().clone();
    LocalRound second({toy.w}, {"w"}, o);
    EXPECT_TRUE(second.Start(first.ReleaseOptimizer()).ok());
    seen.m = OnlyState(second.optimizer()).exp_avg().clone();
    seen.v = OnlyState(second.optimizer()).exp_avg_sq().clone();
    seen.t = OnlyState(second.optimizer()).step();
    seen.w0 = toy.w.detach().clone();
    EXPECT_TRUE(second.Step(toy.Loss(target), 0).ok());
    seen.w1 = toy.w.detach().clone();
    return seen;
  };
  // AdamW's step from w with gradient g, first moment m_new (bias-corrected by c1) and
  // second moment v_new (at step t).
  auto adamw = [&](double w, double m_new, double c1, double v_new, int t) {
    return w * (1 - lr * wd) - lr * (m_new / c1) / (std::sqrt(v_new / (1 - std::pow(b2, t))) + eps);
  };
  const Seen kv = second_round(/*keep_first_moment=*/false);
  EXPECT_TRUE(torch::equal(kv.m, torch::zeros({2}))) << kv.m;
  EXPECT_TRUE(torch::equal(kv.v, kv.v5)) << kv.v << kv.v5;
  EXPECT_EQ(kv.t, 5);
  for (int i = 0; i < 2; ++i) {
    const double w = kv.w0[i].item<double>(), g = 2 * (w - target[i].item<double>());
    const double v6 = b2 * kv.v5[i].item<double>() + (1 - b2) * g * g;
    EXPECT_NEAR(kv.w1[i].item<double>(), adamw(w, (1 - b1) * g, 1 - b1, v6, 6), 1e-6) << "coordinate " << i;
  }
  // Negative check: keep (both moments) carries exp_avg, so the same checks fail.
  const Seen k = second_round(/*keep_first_moment=*/true);
  EXPECT_FALSE(torch::equal(k.m, torch::zeros({2}))) << k.m;
  EXPECT_TRUE(torch::equal(k.v, k.v5));
  const double w = k.w0[0].item<double>(), g = 2 * (w - target[0].item<double>());
  const double v6 = b2 * k.v5[0].item<double>() + (1 - b2) * g * g;
  EXPECT_GT(std::abs(k.w1[0].item<double>() - adamw(w, (1 - b1) * g, 1 - b1, v6, 6)), 1e-3)
      << "keep stepped as if its first moment had restarted";
}

// The restricted softmax's factors, by hand: labels {0, 0, 2} of 4 classes with r = 0.5
// give (1, 0.5, 1, 0.5); r = 1 is off (undefined: the logits pass unchanged).
TEST(RestrictedSoftmaxTest, ScaleAndLossMatchAHandComputedExample) {
  torch::Tensor scale = RestrictedSoftmaxScale({0, 0, 2}, 4, 0.5);
  ASSERT_EQ(scale.sizes().vec(), std::vector<int64_t>({4}));
  EXPECT_TRUE(torch::equal(scale, torch::tensor({1.0f, 0.5f, 1.0f, 0.5f})));
  EXPECT_FALSE(RestrictedSoftmaxScale({0, 0, 2}, 4, 1.0).defined());
  // Logits (2, 2) for classes (present 0, absent 1), target 0: plain cross-entropy is
  // log 2; restricted at r = 0.5 the logits are (2, 1): log(1 + e^-1) = 0.31326.
  torch::Tensor logits = torch::tensor({{2.0f, 2.0f}});
  torch::Tensor target = torch::tensor({0}, torch::kLong);
  torch::Tensor two = RestrictedSoftmaxScale({0}, 2, 0.5);
  EXPECT_NEAR(LogitAdjustedCrossEntropy(RestrictLogits(logits, torch::Tensor()), target, torch::Tensor())
                  .item<float>(),
              std::log(2.0), 1e-6);
  EXPECT_NEAR(LogitAdjustedCrossEntropy(RestrictLogits(logits, two), target, torch::Tensor()).item<float>(),
              std::log(1 + std::exp(-1.0)), 1e-6);
  // The gradient on the absent class's raw logit: plain softmax 0.5; restricted
  // r x softmax((2, 1))[1] = 0.5 x 0.26894 = 0.13447.
  torch::Tensor raw = logits.clone().set_requires_grad(true);
  LogitAdjustedCrossEntropy(RestrictLogits(raw, two), target, torch::Tensor()).backward();
  EXPECT_NEAR(raw.grad()[0][1].item<float>(), 0.5 / (1 + std::exp(1.0)), 1e-6);
}

TEST(RestrictedSoftmaxTest, ValidateLocalRoundRefusesRBeyondZeroToOne) {
  TrainOptions o;
  for (double r : {0.5, 1.0, 1e-3}) {
    o.restricted_softmax = r;
    EXPECT_TRUE(ValidateLocalRound(o, "Train").ok()) << r;
  }
  for (double r : {0.0, -0.5, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    o.restricted_softmax = r;
    Status st = ValidateLocalRound(o, "Train");
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << r;
    EXPECT_NE(st.message().find("restricted_softmax"), std::string::npos) << st.message();
  }
}

// The restricted step (TrainOptions::restricted_step) by hand: a [2, 2] tensor W with
// the linear loss sum(W * G), so every step's gradient is G and a fresh AdamW's
// bias-corrected m / sqrt(v) is g / (|g| + eps) at every step. Row 0 has factor 1,
// row 1 factor r = 0.5. AdamW's change at w is -lr wd w - lr g / (|g| + eps) (decay
// and gradient step both scaled for row 1): W[1][0] = 1, g = 3, lr 0.1, wd 0.1 goes
// 1 -> 1 + 0.5 (-0.01 - 0.1) = 0.945 -> 0.945 + 0.5 (-0.00945 - 0.1) = 0.890275, where
// the unrestricted row would be at 0.89 -> 0.7811. Row 0 equals an unrestricted run's
// bit for bit. With the scaling switched off (no ScaleRowSteps) row 1 takes the full
// steps and the checks fail.
TEST(RestrictedStepTest, AnAbsentRowMovesRTimesAsFarEveryStepWeightDecayIncluded) {
  const double lr = 0.1, wd = 0.1, eps = 1e-8, r = 0.5;
  const torch::Tensor g = torch::tensor({{1.0f, -2.0f}, {3.0f, -0.5f}});
  auto run = [&](const torch::Tensor* rows) {
    torch::Tensor w = torch::tensor({{0.5f, -0.5f}, {1.0f, 2.0f}}).set_requires_grad(true);
    TrainOptions o;
    o.learning_rate = lr;
    o.weight_decay = wd;
    o.max_grad_norm = 0;
    LocalRound round({w}, {"head"}, o);
    EXPECT_TRUE(round.Start().ok());
    if (rows != nullptr) EXPECT_TRUE(round.ScaleRowSteps("head", *rows).ok());
    for (int step = 0; step < 2; ++step) EXPECT_TRUE(round.Step((w * g).sum(), step).ok());
    return w.detach().clone();
  };
  const torch::Tensor rows = torch::tensor({1.0f, static_cast<float>(r)});
  const torch::Tensor restricted = run(&rows), full = run(nullptr);
  auto by_hand = [&](double w, double gi, double factor) {
    for (int step = 0; step < 2; ++step) w += factor * (-lr * wd * w - lr * gi / (std::abs(gi) + eps));
    return w;
  };
  EXPECT_NEAR(by_hand(1.0, 3.0, r), 0.890275, 1e-9);
  for (int j = 0; j < 2; ++j) {
    const double w0 = j == 0 ? 1.0 : 2.0, gi = g[1][j].item<double>();
    EXPECT_NEAR(restricted[1][j].item<double>(), by_hand(w0, gi, r), 1e-6) << "absent row, column " << j;
    EXPECT_NEAR(full[1][j].item<double>(), by_hand(w0, gi, 1.0), 1e-6) << "unrestricted row, column " << j;
  }
  EXPECT_TRUE(torch::equal(restricted[0], full[0])) << restricted[0] << full[0];
  // r = 0: the row stays exactly where the round started it.
  const torch::Tensor frozen_rows = torch::tensor({1.0f, 0.0f});
  const torch::Tensor frozen = run(&frozen_rows);
  EXPECT_TRUE(torch::equal(frozen[1], torch::tensor({1.0f, 2.0f}))) << frozen[1];
  EXPECT_TRUE(torch::equal(frozen[0], full[0]));
}

// A bias-like [C] tensor is scaled per entry; an unknown name or factors of another
// length are refused.
// The restricted step's rows with a share threshold, by hand: 1,000 labels of 5 classes,
// counts (995, 1, 4, 0, 0) with class 4 never seen; below = 0.002 allows at most 2 of
// 1,000, so classes 1 (1), 3 and 4 (0) get r = 0.1, classes 0 (995) and 2 (4) get 1.
// below = 0 is the absent classes only (RestrictedSoftmaxScale's vector); r = 1 is off.
TEST(RestrictedStepTest, ClassesAtMostBelowTheShareCountAsAbsent) {
  std::vector<int64_t> labels(995, 0);
  labels.push_back(1);
  for (int i = 0; i < 4; ++i) labels.push_back(2);
  torch::Tensor rows = RestrictedStepRows(labels, 5, 0.1, 0.002);
  EXPECT_TRUE(torch::equal(rows, torch::tensor({1.0f, 0.1f, 1.0f, 0.1f, 0.1f}))) << rows;
  EXPECT_TRUE(
      torch::equal(RestrictedStepRows(labels, 5, 0.1, 0.0), torch::tensor({1.0f, 1.0f, 1.0f, 0.1f, 0.1f})));
  EXPECT_TRUE(torch::equal(RestrictedStepRows(labels, 5, 0.1, 0.0), RestrictedSoftmaxScale(labels, 5, 0.1)));
  EXPECT_TRUE(
      torch::equal(RestrictedStepRows(labels, 5, 0.1, 0.004), torch::tensor({1.0f, 0.1f, 0.1f, 0.1f, 0.1f})))
      << "4 of 1,000 is at most 0.004";
  EXPECT_FALSE(RestrictedStepRows(labels, 5, 1.0, 0.002).defined());
  TrainOptions o;
  o.restricted_step = 0.1;
  for (double below : {0.0, 0.5, 0.999}) {
    o.restricted_step_below = below;
    EXPECT_TRUE(ValidateLocalRound(o, "t").ok()) << below;
  }
  for (double below : {-0.1, 1.0}) {
    o.restricted_step_below = below;
    Status st = ValidateLocalRound(o, "t");
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << below;
    EXPECT_NE(st.message().find("restricted_step_below must be in [0, 1)"), std::string::npos)
        << st.message();
  }
}

TEST(RestrictedStepTest, ScaleRowStepsChecksTheTensorAndTheFactors) {
  torch::Tensor b = torch::zeros({3}).set_requires_grad(true);
  TrainOptions o;
  o.learning_rate = 0.1;
  o.weight_decay = 0;
  LocalRound round({b}, {"bias"}, o);
  ASSERT_TRUE(round.Start().ok());
  EXPECT_EQ(round.ScaleRowSteps("weight", torch::ones({3})).code(), StatusCode::kInvalidArgument);
  Status st = round.ScaleRowSteps("bias", torch::ones({2}));
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("expected [3]"), std::string::npos) << st.message();
  ASSERT_TRUE(round.ScaleRowSteps("bias", torch::tensor({1.0f, 0.25f, 0.0f})).ok());
  ASSERT_TRUE(round.Step((b * torch::tensor({1.0f, 1.0f, 1.0f})).sum(), 0).ok());
  // A fresh AdamW's first step is -lr sign(g) (g / (|g| + eps)).
  EXPECT_NEAR(b[0].item<double>(), -0.1, 1e-6);
  EXPECT_NEAR(b[1].item<double>(), -0.025, 1e-6);
  EXPECT_EQ(b[2].item<float>(), 0.0f);
}

TEST(RestrictedStepTest, ValidateLocalRoundRefusesRBeyondZeroToOne) {
  TrainOptions o;
  for (double r : {0.0, 0.5, 1.0}) {
    o.restricted_step = r;
    EXPECT_TRUE(ValidateLocalRound(o, "Train").ok()) << r;
  }
  for (double r : {-0.1, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    o.restricted_step = r;
    Status st = ValidateLocalRound(o, "Train");
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << r;
    EXPECT_NE(st.message().find("restricted_step must be in [0, 1]"), std::string::npos) << st.message();
  }
}

}  // namespace
}  // namespace fedge::agent
