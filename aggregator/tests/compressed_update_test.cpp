// Updates encoded with the v2 bundle codecs (int4, top-k) travel through the
// protocol handler like v1 ones: the job's compression settings reach the
// agents in TrainingConfig, the aggregator decodes the updates, aggregates the
// decoded values, and its round record and metrics count the encoded bytes.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <utility>
#include <vector>

#include "fedge/tensor_bundle.h"
#include "protocol_fixture.h"

namespace fedge::aggregator {
namespace {

TensorBundle Ramp(float scale) {
  TensorBundle b;
  NamedTensor t{"w", {4, 64}, {}};
  for (int i = 0; i < 256; ++i) t.values.push_back(scale * static_cast<float>((i * 37) % 101 - 50));
  b.tensors.push_back(std::move(t));
  return b;
}

class CompressedUpdateTest : public testing::ProtocolFixture {
 protected:
  void SetUp() override {
    JobSpec spec = testing::UnitStepJob("demo", /*rounds=*/1);
    spec.compression.codec = "int4";
    spec.compression.topKFraction = 0.1;
    spec.compression.errorFeedback = true;
    spec.compression.stochasticRounding = true;
    MakeHandler(spec, ProtocolOptions{});
  }

  void Join(const std::string& agent) { ASSERT_TRUE(JoinDeclaring(agent, Ramp(0)).ok()); }

  // `data` as agent's update of `round` (base version = round), in one chunk.
  v1::SubmitUpdateResponse Submit(const std::string& agent, const std::string& data, int64_t round,
                                  uint64_t raw_bytes) {
    v1::UpdateHeader h = UpdateHeaderFor(agent, data, round, /*base=*/round, /*is_delta=*/round > 0);
    h.set_raw_bytes(raw_bytes);
    return ProtocolFixture::Submit(h, data, /*chunk=*/data.size());
  }
};

TEST_F(CompressedUpdateTest, TopKInt4UpdatesAreDecodedAggregatedAndCountedEncoded) {
  Join("a");
  Join("b");
  ASSERT_EQ(GetTask("a").kind(), v1::TASK_KIND_INITIALIZE);
  auto init = EncodeBundle(Ramp(0), EncodeOptions{});
  ASSERT_TRUE(init.ok());
  ASSERT_TRUE(Submit("a", *init, 0, 1024).accepted());

  v1::Task task = GetTask("b");
  ASSERT_EQ(task.kind(), v1::TASK_KIND_TRAIN);
  EXPECT_EQ(task.config().update_codec(), "int4");
  EXPECT_DOUBLE_EQ(task.config().topk_fraction(), 0.1);
  EXPECT_TRUE(task.config().error_feedback());
  EXPECT_TRUE(task.config().stochastic_rounding());

  EncodeOptions eo;
  eo.codec = Codec::kInt4;
  eo.topk_fraction = 0.1;
  eo.stochastic_rounding = true;
  std::map<std::string, std::string> sent;
  uint64_t encoded_total = 0;
  for (const auto& [agent, seed] : {std::pair{"a", 1}, std::pair{"b", 2}}) {
    eo.seed = seed;
    auto data = EncodeBundle(Ramp(agent == std::string("a") ? 0.01f : -0.03f), eo);
    ASSERT_TRUE(data.ok()) << data.status().ToString();
    auto header = InspectBundle(*data);
    ASSERT_TRUE(header.ok());
    ASSERT_EQ(header->version, 2);  // the new format, not v1
    ASSERT_TRUE(header->sparse);
    sent[agent] = *data;
    encoded_total += data->size();
    auto r = Submit(agent, *data, 1, 1024);
    ASSERT_TRUE(r.accepted()) << r.reason();
  }

  // The new global is the initial one plus the mean of what was decoded.
  auto global = engine_->Global(0);
  ASSERT_TRUE(global.ok());
  ASSERT_EQ((*global)->version, 2);
  auto got = DecodeBundle((*global)->encoded);
  auto da = DecodeBundle(sent["a"]);
  auto db = DecodeBundle(sent["b"]);
  ASSERT_TRUE(got.ok() && da.ok() && db.ok());
  const auto& g = got->Find("w")->values;
  int nonzero = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const float want = 0.5f * (da->Find("w")->values[i] + db->Find("w")->values[i]);
    EXPECT_NEAR(g[i], want, 1e-2f * (1.0f + std::abs(want))) << i;  // the global's own codec rounds
    nonzero += want != 0;
  }
  EXPECT_GT(nonzero, 0);
  EXPECT_LE(nonzero, 2 * 26);  // ceil(0.1 * 256) kept per update

  for (const std::string agent : {"a", "b"}) {
    v1::MetricsReport report;
    *report.mutable_header() = Header(agent);
    report.set_round(1);
    report.set_global_version(2);
    report.set_phase("evaluate");
    report.set_num_examples(4);
    (*report.mutable_values())["accuracy"] = 0.5;
    ASSERT_TRUE(handler_->ReportMetrics(report).ok());
  }
  EngineStatus s = engine_->GetStatus();
  ASSERT_EQ(s.rounds.size(), 1u);
  EXPECT_EQ(s.rounds[0].bytes_up, encoded_total);
  EXPECT_EQ(s.rounds[0].raw_bytes_up, 2048u);
  EXPECT_LT(s.rounds[0].bytes_up * 4, s.rounds[0].raw_bytes_up);
}

TEST_F(CompressedUpdateTest, CorruptV2UpdateIsRejectedAndTheGlobalUnchanged) {
  Join("a");
  Join("b");
  ASSERT_EQ(GetTask("a").kind(), v1::TASK_KIND_INITIALIZE);
  auto init = EncodeBundle(Ramp(1), EncodeOptions{});
  ASSERT_TRUE(init.ok());
  ASSERT_TRUE(Submit("a", *init, 0, 1024).accepted());
  auto before = engine_->Global(0);
  ASSERT_TRUE(before.ok());

  EncodeOptions eo;
  eo.codec = Codec::kInt4;
  eo.topk_fraction = 0.1;
  eo.zstd = false;
  auto data = EncodeBundle(Ramp(0.5f), eo);
  ASSERT_TRUE(data.ok());
  std::string truncated = data->substr(0, data->size() - 40);
  auto r = Submit("b", truncated, 1, 1024);
  EXPECT_FALSE(r.accepted());
  EXPECT_NE(r.reason().find("cannot decode the update"), std::string::npos) << r.reason();
  EXPECT_EQ(metrics_.updates_rejected("decode"), 1);
  auto after = engine_->Global(0);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ((*after)->checksum, (*before)->checksum);
}

}  // namespace
}  // namespace fedge::aggregator

namespace fedge::aggregator {
namespace {

// The aggregator refuses an upload whose declared size exceeds
// MaxEncodedBytes(global layout) before reading it: no honest encoding may be
// larger. Random values (incompressible for zstd), every codec, dense and
// top-k (all entries kept: the most index bytes), block size 1 (a scale per
// value) and 64.
TEST(MaxEncodedBytesTest, NoEncodingOfTheLayoutIsLarger) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0, 1);
  TensorBundle b;
  for (auto [name, shape] : {std::pair<std::string, std::vector<int64_t>>{"layer.0.lora_A", {8, 384}},
                             {"layer.0.lora_B", {384, 8}},
                             {"classifier.weight", {25, 384}},
                             {"classifier.bias", {25}},
                             {"scalar", {}}}) {
    NamedTensor t{name, shape, {}};
    for (int64_t i = 0; i < t.NumElements(); ++i) t.values.push_back(normal(rng));
    b.tensors.push_back(std::move(t));
  }
  const uint64_t most = MaxEncodedBytes(b);
  for (Codec codec : {Codec::kFp32, Codec::kFp16, Codec::kBf16, Codec::kInt8, Codec::kInt4}) {
    for (int block : {1, 64}) {
      for (double topk : {0.0, 1.0, 0.5}) {
        for (bool zstd : {false, true}) {
          EncodeOptions o{codec, block, zstd, 3};
          o.topk_fraction = topk;
          auto e = EncodeBundle(b, o);
          ASSERT_TRUE(e.ok()) << e.status().ToString();
          EXPECT_LE(e->size(), most) << CodecName(codec) << " block " << block << " topk " << topk;
        }
      }
    }
  }
  // ... and the bound is not absurdly loose: within 16 bytes per value.
  EXPECT_LT(most, 16 * static_cast<uint64_t>(b.NumElements()) + (256 << 10));
}

TEST(MaxEncodedBytesTest, DecoderRefusesAnotherLayoutFromTheTable) {
  TensorBundle global{{NamedTensor{"a", {2}, {0, 0}}, NamedTensor{"b", {1, 2}, {0, 0}}}};
  DecodeLimits limits;
  limits.expected_layout = &global;
  auto encode = [](const TensorBundle& t) {
    auto e = EncodeBundle(t, EncodeOptions{Codec::kFp32, 64, /*zstd=*/true, 3});
    return e.ok() ? *e : std::string();
  };
  // Same tensors in another order: fine.
  auto ok = DecodeBundle(
      encode(TensorBundle{{NamedTensor{"b", {1, 2}, {3, 4}}, NamedTensor{"a", {2}, {1, 2}}}}), limits);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->Find("b")->values, (std::vector<float>{3, 4}));
  for (const auto& [what, bundle] : std::vector<std::pair<std::string, TensorBundle>>{
           {"unexpected tensor \"c\"", {{NamedTensor{"a", {2}, {1, 2}}, NamedTensor{"c", {1, 2}, {1, 2}}}}},
           {"tensor \"b\" has shape [2,1], expected [1,2]",
            {{NamedTensor{"a", {2}, {1, 2}}, NamedTensor{"b", {2, 1}, {1, 2}}}}},
           {"1 tensors, expected 2", {{NamedTensor{"a", {2}, {1, 2}}}}}}) {
    auto r = DecodeBundle(encode(bundle), limits);
    EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << what;
    EXPECT_NE(r.status().message().find("layout mismatch: " + what), std::string::npos)
        << r.status().message();
  }
}

}  // namespace
}  // namespace fedge::aggregator
