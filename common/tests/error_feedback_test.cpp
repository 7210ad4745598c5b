#include "fedge/error_feedback.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "fedge/file_util.h"
#include "fedge/safetensors.h"

namespace fedge {
namespace {

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/fedge_ef_" + std::to_string(getpid()) + "_" + name;
}

EncodeOptions TopK(double fraction, Codec codec = Codec::kInt8) {
  EncodeOptions o;
  o.codec = codec;
  o.topk_fraction = fraction;
  o.zstd = true;
  return o;
}

// A LoRA-like layout: two factors and a bias.
TensorBundle Layout() {
  TensorBundle b;
  b.tensors.push_back({"lora_A", {8, 256}, std::vector<float>(8 * 256, 0.0f)});
  b.tensors.push_back({"lora_B", {256, 8}, std::vector<float>(256 * 8, 0.0f)});
  b.tensors.push_back({"bias", {25}, std::vector<float>(25, 0.0f)});
  return b;
}

// Round t's true update: a small persistent drift (the signal top-k keeps
// dropping, since it is below the threshold of the large noise) plus noise.
TensorBundle TrueUpdate(std::mt19937* rng, const TensorBundle& drift) {
  std::normal_distribution<float> noise(0.0f, 0.02f);
  TensorBundle u = drift;
  for (NamedTensor& t : u.tensors) {
    for (float& v : t.values) v += noise(*rng);
  }
  return u;
}

void AddInto(TensorBundle* acc, const TensorBundle& x) {
  for (NamedTensor& t : acc->tensors) {
    const NamedTensor* o = x.Find(t.name);
    ASSERT_NE(o, nullptr);
    for (size_t i = 0; i < t.values.size(); ++i) t.values[i] += o->values[i];
  }
}

double DistanceL2(const TensorBundle& a, const TensorBundle& b) {
  double sum = 0;
  for (const NamedTensor& t : a.tensors) {
    const NamedTensor* o = b.Find(t.name);
    for (size_t i = 0; i < t.values.size(); ++i) {
      const double d = static_cast<double>(t.values[i]) - o->values[i];
      sum += d * d;
    }
  }
  return std::sqrt(sum);
}

TEST(ErrorFeedbackTest, CarriesWhatTopKDroppedIntoTheNextRound) {
  ErrorFeedback ef;
  TensorBundle delta;
  delta.tensors.push_back({"w", {4}, {1.0f, -4.0f, 0.5f, 3.0f}});
  auto payload = ef.Encode(delta, TopK(0.5, Codec::kFp32));
  ASSERT_TRUE(payload.ok()) << payload.status().ToString();
  EXPECT_EQ(DecodeBundle(*payload)->tensors[0].values, (std::vector<float>{0, -4.0f, 0, 3.0f}));
  ASSERT_TRUE(ef.has_residual());
  EXPECT_EQ(ef.residual().tensors[0].values, (std::vector<float>{1.0f, 0, 0.5f, 0}));
  EXPECT_DOUBLE_EQ(ef.ResidualNorm(), std::sqrt(1.25));

  // Next round: the carried 1.0 now beats the new values.
  TensorBundle next;
  next.tensors.push_back({"w", {4}, {0.5f, 0.1f, 0.2f, -0.3f}});
  const ErrorFeedback::Compensated c = ef.Compensate(next);
  EXPECT_TRUE(c.residual_status.ok());
  EXPECT_EQ(c.bundle.tensors[0].values, (std::vector<float>{1.5f, 0.1f, 0.7f, -0.3f}));
  auto second = ef.Encode(next, TopK(0.5, Codec::kFp32));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(DecodeBundle(*second)->tensors[0].values, (std::vector<float>{1.5f, 0, 0.7f, 0}));
}

// The property error feedback exists for: over many rounds the sum of what was
// sent tracks the sum of the true updates within one residual, while without it
// the dropped drift accumulates round after round.
TEST(ErrorFeedbackTest, SumOfSentUpdatesTracksSumOfTrueUpdates) {
  TensorBundle drift = Layout();
  for (NamedTensor& t : drift.tensors) {
    for (size_t i = 0; i < t.values.size(); ++i) t.values[i] = (i % 2 ? 0.002f : -0.002f);
  }
  std::mt19937 rng(77);
  ErrorFeedback ef;
  TensorBundle sum_true = Layout(), sum_ef = Layout(), sum_plain = Layout();
  std::vector<double> err_ef, err_plain;
  constexpr int kRounds = 60;
  for (int round = 1; round <= kRounds; ++round) {
    const TensorBundle u = TrueUpdate(&rng, drift);
    AddInto(&sum_true, u);
    EncodeOptions o = TopK(0.1);
    o.stochastic_rounding = false;
    auto with = ef.Encode(u, o);
    ASSERT_TRUE(with.ok()) << with.status().ToString();
    AddInto(&sum_ef, *DecodeBundle(*with));
    auto without = EncodeBundle(u, o);
    ASSERT_TRUE(without.ok());
    AddInto(&sum_plain, *DecodeBundle(*without));
    err_ef.push_back(DistanceL2(sum_ef, sum_true));
    err_plain.push_back(DistanceL2(sum_plain, sum_true));
    // Telescoping: sum sent = sum true - residual, up to float rounding.
    ASSERT_NEAR(err_ef.back(), ef.ResidualNorm(), 1e-3 * (1 + ef.ResidualNorm())) << "round " << round;
  }
  const double single_round =
      DistanceL2(drift, Layout()) + 0.02 * std::sqrt(4096 + 25);  // ~norm of one update
  // With feedback the error stays bounded (about one round's update) and does not grow.
  EXPECT_LT(err_ef.back(), 1.5 * single_round);
  EXPECT_LT(err_ef.back(), 1.5 * err_ef[19]);
  // Without it the error grows with the rounds and ends far above.
  EXPECT_GT(err_plain.back(), 2.0 * err_plain[14]);
  EXPECT_GT(err_plain.back(), 4.0 * err_ef.back());
}

TEST(ErrorFeedbackTest, DiscardsAResidualOfAnotherLayoutWithAWarningStatus) {
  ErrorFeedback ef;
  TensorBundle a = Layout();
  a.tensors[0].values[0] = 1.0f;
  ASSERT_TRUE(ef.Encode(a, TopK(0.01)).ok());
  ASSERT_TRUE(ef.has_residual());

  TensorBundle reshaped = Layout();
  reshaped.tensors[0].shape = {16, 128};
  reshaped.tensors[0].values.assign(16 * 128, 0.5f);
  const ErrorFeedback::Compensated c = ef.Compensate(reshaped);
  EXPECT_EQ(c.residual_status.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(c.residual_status.message().find("\"lora_A\" has shape [16,128], expected [8,256]"),
            std::string::npos)
      << c.residual_status.message();
  EXPECT_EQ(c.bundle.tensors[0].values, reshaped.tensors[0].values) << "residual must not be applied";
  EXPECT_FALSE(ef.has_residual());

  // A renamed tensor, through Encode: status reported, payload is the plain update.
  ASSERT_TRUE(ef.Encode(a, TopK(0.01)).ok());
  TensorBundle renamed = a;
  renamed.tensors[2].name = "classifier.bias";
  Status residual_status;
  auto payload = ef.Encode(renamed, TopK(1.0, Codec::kFp32), nullptr, &residual_status);
  ASSERT_TRUE(payload.ok());
  EXPECT_NE(residual_status.message().find("missing tensor \"bias\""), std::string::npos)
      << residual_status.message();
  EXPECT_EQ(DecodeBundle(*payload)->tensors[0].values, a.tensors[0].values);
}

TEST(ErrorFeedbackTest, UpdateRejectsMismatchedBundlesAndRollbackRestores) {
  ErrorFeedback ef;
  TensorBundle a = Layout();
  for (size_t i = 0; i < a.tensors[1].values.size(); ++i)
    a.tensors[1].values[i] = 0.001f * static_cast<float>(i % 97);
  ASSERT_TRUE(ef.Encode(a, TopK(0.001, Codec::kFp32)).ok());
  const TensorBundle kept = ef.residual();
  ASSERT_GT(ef.ResidualNorm(), 0.0);

  TensorBundle b = Layout();
  b.tensors[1].values[4] = 0.5f;
  ASSERT_TRUE(ef.Encode(b, TopK(0.001, Codec::kFp32)).ok());
  EXPECT_NE(DistanceL2(ef.residual(), kept), 0.0);
  ef.Rollback();  // the upload was refused: keep carrying the earlier residual
  EXPECT_EQ(DistanceL2(ef.residual(), kept), 0.0);

  TensorBundle shorter = Layout();
  shorter.tensors.pop_back();
  Status s = ef.Update(shorter, Layout());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("missing tensor \"bias\""), std::string::npos) << s.message();
  EXPECT_FALSE(ef.has_residual());

  // An encoding error changes nothing.
  ASSERT_TRUE(ef.Encode(a, TopK(0.001, Codec::kFp32)).ok());
  const double norm = ef.ResidualNorm();
  EncodeOptions bad = TopK(0.001, Codec::kFp32);
  bad.stochastic_rounding = true;
  EXPECT_FALSE(ef.Encode(a, bad).ok());
  EXPECT_EQ(ef.ResidualNorm(), norm);
}

TEST(ErrorFeedbackTest, LosslessCodecLeavesAZeroResidual) {
  ErrorFeedback ef;
  TensorBundle a = Layout();
  std::mt19937 rng(1);
  a = TrueUpdate(&rng, a);
  EncodeOptions fp32;
  CompressionReport report;
  ASSERT_TRUE(ef.Encode(a, fp32, &report).ok());
  EXPECT_EQ(ef.ResidualNorm(), 0.0);
  EXPECT_EQ(report.values_sent, report.values_total);
  EXPECT_EQ(report.raw_bytes, a.Fp32Bytes());
}

TEST(ErrorFeedbackTest, SavesAndLoadsTheResidualAcrossRestarts) {
  const std::string path = TempPath("roundtrip.safetensors");
  std::mt19937 rng(5);
  TensorBundle drift = Layout();
  ErrorFeedback before;
  for (int round = 0; round < 3; ++round)
    ASSERT_TRUE(before.Encode(TrueUpdate(&rng, drift), TopK(0.05)).ok());
  ASSERT_TRUE(before.Save(path).ok());

  ErrorFeedback after;  // a restarted agent
  Status loaded = after.Load(path);
  ASSERT_TRUE(loaded.ok()) << loaded.ToString();
  ASSERT_EQ(after.residual().tensors.size(), 3u);
  EXPECT_EQ(DistanceL2(after.residual(), before.residual()), 0.0);
  // And it continues exactly where the old process would have.
  const TensorBundle next = TrueUpdate(&rng, drift);
  EXPECT_EQ(*before.Encode(next, TopK(0.05)), *after.Encode(next, TopK(0.05)));

  ErrorFeedback empty;
  ASSERT_TRUE(empty.Save(path).ok());
  ErrorFeedback reloaded;
  ASSERT_TRUE(reloaded.Load(path).ok());
  EXPECT_FALSE(reloaded.has_residual());
  ::unlink(path.c_str());
}

TEST(ErrorFeedbackTest, MissingFileIsNotFound) {
  ErrorFeedback ef;
  Status s = ef.Load(TempPath("does_not_exist.safetensors"));
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.ToString();
  EXPECT_FALSE(ef.has_residual());
}

TEST(ErrorFeedbackTest, CorruptedResidualFileIsAClearError) {
  const std::string path = TempPath("corrupt.safetensors");
  ErrorFeedback ef;
  std::mt19937 rng(9);
  ASSERT_TRUE(ef.Encode(TrueUpdate(&rng, Layout()), TopK(0.1)).ok());
  ASSERT_TRUE(ef.Save(path).ok());
  const std::string good = *ReadFile(path);

  auto expect_unusable = [&](const std::string& bytes, const std::string& reason) {
    ASSERT_TRUE(WriteFileAtomic(path, bytes).ok());
    ErrorFeedback victim;
    ASSERT_TRUE(victim.Encode(TrueUpdate(&rng, Layout()), TopK(0.1)).ok());
    Status s = victim.Load(path);
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
    EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(reason), std::string::npos) << s.message();
    EXPECT_FALSE(victim.has_residual()) << "a failed load must not leave a residual to apply";
  };
  std::string flipped = good;
  flipped[flipped.size() - 5] ^= 0x10;  // inside the last tensor's data
  expect_unusable(flipped, "checksum mismatch");
  expect_unusable(good.substr(0, good.size() - 7), "safetensors");
  expect_unusable("garbage", "safetensors");
  expect_unusable(std::string(), "safetensors");

  // A valid safetensors file that is not a residual (e.g. an exported adapter).
  ASSERT_TRUE(WriteSafetensorsFile(path, Layout(), {{"format", "pt"}}).ok());
  ErrorFeedback other;
  Status s = other.Load(path);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("not an error-feedback residual"), std::string::npos) << s.message();
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace fedge
