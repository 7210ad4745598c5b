#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "fedge/agent/runtime/update.h"
#include "fedge/file_util.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {
namespace {

constexpr char kJob[] = "ns/demo";

// A LoRA-like delta: two factor-shaped tensors, values spread over orders of
// magnitude so top-k has something to choose.
TensorBundle Delta(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  TensorBundle b;
  for (auto [name, rows, cols] : {std::tuple{"layer.0.lora_A", 8, 96}, std::tuple{"layer.0.lora_B", 96, 8}}) {
    NamedTensor t{name, {rows, cols}, {}};
    t.values.resize(static_cast<size_t>(rows) * cols);
    for (float& v : t.values) v = 1e-3f * normal(rng) * std::exp(normal(rng));
    b.tensors.push_back(std::move(t));
  }
  return b;
}

UpdateCodecConfig TopK(double fraction) {
  UpdateCodecConfig c;
  c.encode.codec = Codec::kInt8;
  c.encode.topk_fraction = fraction;
  c.error_feedback = true;
  return c;
}

class UpdateEncoderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("fedge-update-encoder-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    path_ = (dir_ / "state" / "error-feedback.safetensors").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path dir_;
  std::string path_;
};

TEST_F(UpdateEncoderTest, TopKResidualSurvivesARestartOfTheEncoder) {
  const UpdateCodecConfig cfg = TopK(0.1);
  UpdateEncoder continuous("", kJob);  // never restarts, residual in memory
  UpdateEncoder before_restart(path_, kJob);

  auto c1 = continuous.Encode(Delta(1), cfg, 1, 11);
  auto r1 = before_restart.Encode(Delta(1), cfg, 1, 11);
  ASSERT_TRUE(c1.ok() && r1.ok()) << r1.status().ToString();
  EXPECT_EQ(c1->payload, r1->payload);
  EXPECT_FALSE(r1->feedback_applied);  // nothing to carry yet
  continuous.Finish(true);
  before_restart.Finish(true);
  ASSERT_TRUE(before_restart.has_residual());
  EXPECT_GT(before_restart.ResidualNorm(), 0);
  ASSERT_TRUE(std::filesystem::exists(path_));
  ASSERT_TRUE(std::filesystem::exists(path_ + ".json"));

  // A new process: a fresh encoder on the same state dir.
  UpdateEncoder after_restart(path_, kJob);
  auto c2 = continuous.Encode(Delta(2), cfg, 2, 22);
  auto r2 = after_restart.Encode(Delta(2), cfg, 2, 22);
  ASSERT_TRUE(c2.ok() && r2.ok()) << r2.status().ToString();
  EXPECT_TRUE(r2->feedback_applied);
  EXPECT_EQ(r2->payload, c2->payload) << "a restarted agent must send what an uninterrupted one sends";

  // Without the residual round 2 would look different.
  UpdateEncoder amnesiac("", kJob);
  auto fresh = amnesiac.Encode(Delta(2), cfg, 2, 22);
  ASSERT_TRUE(fresh.ok());
  EXPECT_NE(fresh->payload, r2->payload);

  // Error feedback's identity: sent_1 + sent_2 + residual_2 == delta_1 + delta_2.
  after_restart.Finish(true);
  auto s1 = DecodeBundle(r1->payload);
  auto s2 = DecodeBundle(r2->payload);
  ASSERT_TRUE(s1.ok() && s2.ok());
  const TensorBundle d1 = Delta(1), d2 = Delta(2);
  const TensorBundle& res = after_restart.residual();
  for (size_t t = 0; t < d1.tensors.size(); ++t) {
    const auto& name = d1.tensors[t].name;
    for (size_t i = 0; i < d1.tensors[t].values.size(); ++i) {
      const float want = d1.tensors[t].values[i] + d2.tensors[t].values[i];
      const float got = s1->Find(name)->values[i] + s2->Find(name)->values[i] + res.Find(name)->values[i];
      ASSERT_NEAR(got, want, 1e-6f) << name << "[" << i << "]";
    }
  }
  // Top-k 10% of int8 values: far fewer bytes than the dense fp32 delta.
  EXPECT_EQ(r2->report.raw_bytes, d2.Fp32Bytes());
  EXPECT_EQ(r2->report.encoded_bytes, r2->payload.size());
  EXPECT_LT(r2->report.encoded_bytes * 8, r2->report.raw_bytes);
}

TEST_F(UpdateEncoderTest, CorruptResidualIsDiscardedAndTheRoundProceeds) {
  const UpdateCodecConfig cfg = TopK(0.1);
  {
    UpdateEncoder first(path_, kJob);
    ASSERT_TRUE(first.Encode(Delta(1), cfg, 1, 11).ok());
    first.Finish(true);
  }
  auto bytes = ReadFile(path_);
  ASSERT_TRUE(bytes.ok());
  UpdateEncoder amnesiac("", kJob);
  auto expected = amnesiac.Encode(Delta(2), cfg, 2, 22);
  ASSERT_TRUE(expected.ok());

  // Only the residual is damaged: its marker still places it before round 2.
  auto damage = [&](const std::string& residual) {
    ASSERT_TRUE(WriteFileAtomic(path_, residual).ok());
    ASSERT_TRUE(WriteFileAtomic(path_ + ".json", R"({"job": "ns/demo", "round": 1})").ok());
  };
  for (const std::string& corrupt :
       {bytes->substr(0, bytes->size() / 2), std::string("not a safetensors file"), std::string()}) {
    damage(corrupt);
    UpdateEncoder restarted(path_, kJob);
    auto r = restarted.Encode(Delta(2), cfg, 2, 22);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE(r->feedback_applied);
    EXPECT_EQ(r->payload, expected->payload);
    // The round's own residual replaces the corrupt file.
    restarted.Finish(true);
    UpdateEncoder again(path_, kJob);
    auto r3 = again.Encode(Delta(3), cfg, 3, 33);
    ASSERT_TRUE(r3.ok());
    EXPECT_TRUE(r3->feedback_applied);
  }

  // A flipped bit in the tensor data fails the checksum.
  std::string flipped = *bytes;
  flipped[flipped.size() - 3] ^= 0x10;
  damage(flipped);
  UpdateEncoder restarted(path_, kJob);
  auto r = restarted.Encode(Delta(2), cfg, 2, 22);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->feedback_applied);
  EXPECT_EQ(r->payload, expected->payload);

  // Control: the same file undamaged is used.
  damage(*bytes);
  UpdateEncoder intact(path_, kJob);
  auto i = intact.Encode(Delta(2), cfg, 2, 22);
  ASSERT_TRUE(i.ok());
  EXPECT_TRUE(i->feedback_applied);
}

TEST_F(UpdateEncoderTest, ResidualOfAnotherRunOrJobIsNotApplied) {
  const UpdateCodecConfig cfg = TopK(0.1);
  {
    UpdateEncoder first(path_, kJob);
    ASSERT_TRUE(first.Encode(Delta(1), cfg, 4, 11).ok());
    first.Finish(true);
  }
  // Round 2 < 4: a new run of the same job.
  UpdateEncoder new_run(path_, kJob);
  auto r = new_run.Encode(Delta(2), cfg, 2, 22);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->feedback_applied);
  // Another job, later round.
  UpdateEncoder other_job(path_, "ns/other");
  auto o = other_job.Encode(Delta(2), cfg, 9, 22);
  ASSERT_TRUE(o.ok());
  EXPECT_FALSE(o->feedback_applied);
  // The same job at a later round does use it.
  UpdateEncoder later(path_, kJob);
  auto l = later.Encode(Delta(2), cfg, 5, 22);
  ASSERT_TRUE(l.ok());
  EXPECT_TRUE(l->feedback_applied);
  // Without its round marker the residual cannot be placed: discarded.
  std::filesystem::remove(path_ + ".json");
  UpdateEncoder no_marker(path_, kJob);
  auto n = no_marker.Encode(Delta(2), cfg, 5, 22);
  ASSERT_TRUE(n.ok());
  EXPECT_FALSE(n->feedback_applied);
}

TEST_F(UpdateEncoderTest, RejectedUpdateRestoresThePreviousResidual) {
  const UpdateCodecConfig cfg = TopK(0.01);
  UpdateEncoder enc(path_, kJob);
  ASSERT_TRUE(enc.Encode(Delta(1), cfg, 1, 11).ok());
  enc.Finish(true);
  const TensorBundle after_round1 = enc.residual();
  auto on_disk = ReadFile(path_);
  ASSERT_TRUE(on_disk.ok());

  ASSERT_TRUE(enc.Encode(Delta(2), cfg, 2, 22).ok());
  enc.Finish(false);  // the aggregator did not take round 2
  ASSERT_EQ(enc.residual().tensors.size(), after_round1.tensors.size());
  for (size_t t = 0; t < after_round1.tensors.size(); ++t) {
    EXPECT_EQ(enc.residual().tensors[t].values, after_round1.tensors[t].values);
  }
  EXPECT_EQ(*ReadFile(path_), *on_disk);
}

TEST_F(UpdateEncoderTest, LosslessOrDisabledFeedbackKeepsNoResidual) {
  UpdateCodecConfig fp32;  // dense fp32: nothing is dropped
  fp32.error_feedback = true;
  UpdateCodecConfig off = TopK(0.1);
  off.error_feedback = false;
  for (const UpdateCodecConfig& cfg : {fp32, off}) {
    UpdateEncoder enc(path_, kJob);
    auto r = enc.Encode(Delta(1), cfg, 1, 11);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    enc.Finish(true);
    EXPECT_FALSE(enc.has_residual());
    EXPECT_FALSE(std::filesystem::exists(path_));
    EncodeOptions eo;
    eo.codec = cfg.encode.codec;
    eo.topk_fraction = cfg.encode.topk_fraction;
    auto plain = EncodeBundle(Delta(1), eo);
    ASSERT_TRUE(plain.ok());
    EXPECT_EQ(r->payload, *plain);
  }
}

TEST_F(UpdateEncoderTest, Int4WithStochasticRoundingIsReproducibleBySeed) {
  UpdateCodecConfig cfg;
  cfg.encode.codec = Codec::kInt4;
  cfg.encode.stochastic_rounding = true;
  cfg.error_feedback = true;
  UpdateEncoder a("", kJob), b("", kJob), c("", kJob);
  auto ra = a.Encode(Delta(1), cfg, 1, 5);
  auto rb = b.Encode(Delta(1), cfg, 1, 5);
  auto rc = c.Encode(Delta(1), cfg, 1, 6);
  ASSERT_TRUE(ra.ok() && rb.ok() && rc.ok()) << ra.status().ToString();
  EXPECT_EQ(ra->payload, rb->payload);
  EXPECT_NE(ra->payload, rc->payload);
  auto header = InspectBundle(ra->payload);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->codec, Codec::kInt4);
  EXPECT_EQ(header->version, 2);
  // Bad options are an error and leave nothing pending.
  cfg.encode.codec = Codec::kFp16;
  EXPECT_EQ(a.Encode(Delta(2), cfg, 2, 5).status().code(), StatusCode::kInvalidArgument);
}

// SCAFFOLD, the agent's side, on the numbers of the aggregator's
// ScaffoldTest.ControlVariatesByHandWithPartialParticipation (K eta = 1):
//   c = 0:     c_1 = -dy1 = (-0.25, 0.5, -0.75)
//   c = c1 = (-0.375, 0.25, -0.25), dy1 = (0.125, 0.125, 0.125):
//     correction c - c_1 = (-0.125, -0.25, 0.5)
//     c_1+ = c_1 - c1 - dy1 = (0, 0.125, -0.625)
TensorBundle V3(float a, float b, float c) {
  TensorBundle t;
  t.tensors.push_back(NamedTensor{"w", {3}, {a, b, c}});
  return t;
}

TEST(ScaffoldAgentTest, CorrectionAndNextControlByHand) {
  auto c_1 = ScaffoldNextControl(V3(0.25f, -0.5f, 0.75f), nullptr, nullptr, 1.0);
  ASSERT_TRUE(c_1.ok()) << c_1.status().ToString();
  EXPECT_EQ(c_1->Find("w")->values, (std::vector<float>{-0.25f, 0.5f, -0.75f}));
  const TensorBundle c1 = V3(-0.375f, 0.25f, -0.25f);
  auto correction = ScaffoldCorrection(c1, &c1, &*c_1);
  ASSERT_TRUE(correction.ok());
  EXPECT_EQ(correction->Find("w")->values, (std::vector<float>{-0.125f, -0.25f, 0.5f}));
  auto next = ScaffoldNextControl(V3(0.125f, 0.125f, 0.125f), &c1, &*c_1, 1.0);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->Find("w")->values, (std::vector<float>{0.0f, 0.125f, -0.625f}));
  // K eta = 4 divides the delta: c_i = -dy / 4.
  auto quarter = ScaffoldNextControl(V3(1, -2, 4), nullptr, nullptr, 4.0);
  ASSERT_TRUE(quarter.ok());
  EXPECT_EQ(quarter->Find("w")->values, (std::vector<float>{-0.25f, 0.5f, -1.0f}));

  EXPECT_FALSE(ScaffoldNextControl(V3(1, 1, 1), nullptr, nullptr, 0.0).ok());
  TensorBundle other;
  other.tensors.push_back(NamedTensor{"v", {3}, {0, 0, 0}});
  EXPECT_FALSE(ScaffoldCorrection(V3(1, 1, 1), &other, nullptr).ok()) << "c of another layout";
}

TEST_F(UpdateEncoderTest, ScaffoldControlSurvivesARestartOnlyForTheSameJobAndALaterRound) {
  const std::string path = (dir_ / "state" / "scaffold-control.safetensors").string();
  {
    ScaffoldControl fresh(path, kJob);
    EXPECT_FALSE(fresh.Get(1).has_value()) << "a fresh agent starts at c_i = 0";
    fresh.Set(V3(-0.25f, 0.5f, -0.75f), 1);
  }
  ScaffoldControl restarted(path, kJob);
  ASSERT_TRUE(restarted.Get(2).has_value());
  EXPECT_EQ(restarted.Get(2)->Find("w")->values, (std::vector<float>{-0.25f, 0.5f, -0.75f}));
  EXPECT_FALSE(ScaffoldControl(path, "ns/other").Get(2).has_value()) << "another job's c_i";
  EXPECT_FALSE(ScaffoldControl(path, kJob).Get(1).has_value()) << "a new run of the job starts again";
  ASSERT_TRUE(WriteFileAtomic(path, "not safetensors").ok());
  EXPECT_FALSE(ScaffoldControl(path, kJob).Get(2).has_value()) << "a corrupt file is discarded";
}

}  // namespace
}  // namespace fedge::agent
