// Format version 2 codecs: int4, stochastic rounding (int8/int4) and top-k
// sparsification, including hand-built hostile inputs for the sparse layout.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bundle_test_util.h"
#include "fedge/tensor_bundle.h"

namespace fedge {
namespace {

using bundle_test::AssembleV2;
using bundle_test::Decode;
using bundle_test::Entry;
using bundle_test::ExpectRejected;
using bundle_test::kHeader;
using bundle_test::kTrailer;
using bundle_test::PutF32;
using bundle_test::PutVarint;

constexpr uint8_t kSparse = 0x02;

// A table entry of a sparse tensor: Entry, then its kept count and index section size.
std::string SparseEntry(const std::string& name, const std::vector<uint64_t>& dims, uint64_t kept,
                        uint64_t index_bytes) {
  std::string s = Entry(name, dims);
  PutVarint(&s, kept);
  PutVarint(&s, index_bytes);
  return s;
}

std::string Encode(const TensorBundle& b, const EncodeOptions& o) {
  auto e = EncodeBundle(b, o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? *e : std::string();
}

EncodeOptions Options(Codec codec, bool zstd, double topk = 0, int block_size = 64) {
  EncodeOptions o;
  o.codec = codec;
  o.zstd = zstd;
  o.zstd_min_saving = 0;  // zstd means a zstd body here, whatever it saves
  o.topk_fraction = topk;
  o.block_size = block_size;
  return o;
}

TensorBundle OneTensor(std::vector<float> values) {
  TensorBundle b;
  b.tensors.push_back({"w", {static_cast<int64_t>(values.size())}, std::move(values)});
  return b;
}

TensorBundle Normal(uint32_t seed, size_t n, float stddev = 0.02f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  TensorBundle b = OneTensor(std::move(v));
  b.tensors[0].shape = {static_cast<int64_t>(n / 8), 8};
  return b;
}

// ---- int4 ----

TEST(Int4CodecTest, PacksTwoCodesPerByteLowNibbleFirst) {
  // scale = 7 / 7 = 1; 3.5 ties to the even code 4.
  const std::string enc = Encode(OneTensor({7.0f, -7.0f, 3.5f}), Options(Codec::kInt4, false));
  EXPECT_EQ(enc[8], 2) << "int4 needs format version 2";
  EXPECT_EQ(enc[10], 4);
  const std::string table = Entry("w", {3});
  ASSERT_EQ(enc.size(), kHeader + table.size() + 4 + 2 + kTrailer);
  std::string data;
  PutF32(&data, 1.0f);
  data += std::string("\x97\x04", 2);  // 7 = 0x7 low, -7 = 0x9 high; 4 low, zero padding nibble
  EXPECT_EQ(enc.substr(kHeader + table.size(), 6), data);
  EXPECT_EQ(Decode(enc).tensors[0].values, (std::vector<float>{7.0f, -7.0f, 4.0f}));
}

TEST(Int4CodecTest, CostsHalfAByteAndAScalePerBlock) {
  const TensorBundle b = Normal(3, 1000);
  const size_t overhead = kHeader + kTrailer + Entry("w", {125, 8}).size();
  EXPECT_EQ(Encode(b, Options(Codec::kInt4, false, 0, 64)).size(), overhead + 500 + 4 * 16);
  EXPECT_EQ(Encode(b, Options(Codec::kInt4, false, 0, 1)).size(), overhead + 500 + 4 * 1000);
  const TensorBundle odd = OneTensor({1, 2, 3, 4, 5});
  EXPECT_EQ(Encode(odd, Options(Codec::kInt4, false, 0, 2)).size(),
            kHeader + kTrailer + Entry("w", {5}).size() + 3 + 4 * 3);
}

TEST(Int4CodecTest, RejectsCodeMinus8AndDirtyPadding) {
  std::string body = Entry("w", {3});
  PutF32(&body, 1.0f);
  std::string minus8 = body + std::string("\x81\x00", 2);  // element 1 = 0x8
  ExpectRejected(AssembleV2(4, 0, 64, 1, minus8), "element 1 has the out-of-range int4 code -8");
  std::string padding = body + std::string("\x11\x31", 2);  // high nibble of the last byte is padding
  ExpectRejected(AssembleV2(4, 0, 64, 1, padding), "non-zero padding nibble");
  std::string ok = body + std::string("\x11\x01", 2);
  EXPECT_EQ(Decode(AssembleV2(4, 0, 64, 1, ok)).tensors[0].values, (std::vector<float>{1, 1, 1}));
  std::string neg = Entry("w", {2});
  PutF32(&neg, -1.0f);
  neg += "\x11";
  ExpectRejected(AssembleV2(4, 0, 64, 1, neg), "invalid scale (negative)");
}

// ---- stochastic rounding ----

// Values spread over three blocks of 32 with different scales, at fractional
// positions between codes.
TensorBundle RoundingProbe() {
  std::vector<float> v(96);
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (size_t i = 0; i < v.size(); ++i) v[i] = u(rng) * (i < 32 ? 1.0f : i < 64 ? 0.01f : 3.0f);
  return OneTensor(v);
}

float BlockScale(const std::vector<float>& v, size_t i, size_t block, float qmax) {
  const size_t begin = i / block * block, end = std::min(v.size(), begin + block);
  float amax = 0;
  for (size_t j = begin; j < end; ++j) amax = std::max(amax, std::fabs(v[j]));
  return amax / qmax;
}

class StochasticRoundingTest : public ::testing::TestWithParam<Codec> {};

// E[decoded] = x: over N seeded encodings each element's mean must lie within
// 5 standard errors of x, where the variance of one stochastic rounding is
// scale^2 * p * (1 - p), p = frac(x / scale). The same check fails for
// round-to-nearest, which is what makes it a test of unbiasedness.
TEST_P(StochasticRoundingTest, IsUnbiased) {
  const Codec codec = GetParam();
  const float qmax = codec == Codec::kInt8 ? 127.0f : 7.0f;
  const TensorBundle probe = RoundingProbe();
  const std::vector<float>& x = probe.tensors[0].values;
  constexpr int kDraws = 4000;
  std::vector<double> sum(x.size(), 0.0);
  EncodeOptions o = Options(codec, false, 0, 32);
  o.stochastic_rounding = true;
  for (int s = 0; s < kDraws; ++s) {
    o.seed = static_cast<uint64_t>(s) * 7919 + 1;
    const TensorBundle d = Decode(Encode(probe, o));
    ASSERT_EQ(d.tensors.size(), 1u);
    for (size_t i = 0; i < x.size(); ++i) {
      const float scale = BlockScale(x, i, 32, qmax);
      ASSERT_LT(std::fabs(d.tensors[0].values[i] - x[i]), scale * (1 + 1e-5f)) << "one draw errs by < 1 step";
      sum[i] += d.tensors[0].values[i];
    }
  }
  const TensorBundle nearest = Decode(Encode(probe, Options(codec, false, 0, 32)));
  double z_sum = 0, var_sum = 0;
  int nearest_detected = 0, fractional = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double scale = BlockScale(x, i, 32, qmax);
    const double y = x[i] / scale;
    const double p = y - std::floor(y);
    const double var = scale * scale * p * (1 - p);
    const double tol = 5 * std::sqrt(var / kDraws) + 1e-6 * std::fabs(x[i]);
    const double mean = sum[i] / kDraws;
    EXPECT_LE(std::fabs(mean - x[i]), tol) << "element " << i << " x=" << x[i] << " p=" << p;
    z_sum += mean - x[i];
    var_sum += var;
    if (p > 0.05 && p < 0.95) {
      ++fractional;
      nearest_detected += std::fabs(nearest.tensors[0].values[i] - x[i]) > tol;
    }
  }
  // All elements together: the summed bias is N(0, sum var / N).
  EXPECT_LT(std::fabs(z_sum) / std::sqrt(var_sum / kDraws), 4.0);
  // Round-to-nearest is biased per element by up to scale/2: the tolerance catches it.
  EXPECT_GT(nearest_detected, fractional * 9 / 10) << "tolerance too loose to detect bias";
}

INSTANTIATE_TEST_SUITE_P(BlockwiseCodecs, StochasticRoundingTest,
                         ::testing::Values(Codec::kInt8, Codec::kInt4),
                         [](const auto& info) { return std::string(CodecName(info.param)); });

TEST(StochasticRoundingTest, IsReproducibleForASeedAndDiffersAcrossSeeds) {
  const TensorBundle b = Normal(9, 4096);
  for (Codec codec : {Codec::kInt8, Codec::kInt4}) {
    EncodeOptions o = Options(codec, true);
    o.stochastic_rounding = true;
    o.seed = 12345;
    const std::string a = Encode(b, o), again = Encode(b, o);
    EXPECT_EQ(a, again);
    o.seed = 12346;
    EXPECT_NE(a, Encode(b, o));
    // Same layout and size as nearest rounding; only codes differ.
    EXPECT_EQ(Decode(a).tensors[0].shape, b.tensors[0].shape);
  }
}

TEST(StochasticRoundingTest, RejectedForElementWiseCodecs) {
  for (Codec codec : {Codec::kFp32, Codec::kFp16, Codec::kBf16}) {
    EncodeOptions o = Options(codec, false);
    o.stochastic_rounding = true;
    auto e = EncodeBundle(OneTensor({1.0f}), o);
    ASSERT_FALSE(e.ok());
    EXPECT_NE(e.status().message().find("stochastic_rounding applies to the int8 and int4 codecs only"),
              std::string::npos)
        << e.status().message();
  }
}

// ---- top-k ----

TEST(TopKTest, KeepsTheLargestMagnitudesAndZerosTheRest) {
  // k = ceil(0.3 * 10) = 3: -9, 8 and 7 (ties at |7| go to the lower index).
  const TensorBundle in = OneTensor({1, -9, 0.5f, 7, 2, 8, -7, 0, 3, -1});
  const std::string enc = Encode(in, Options(Codec::kFp32, false, 0.3));
  EXPECT_EQ(enc[8], 2);
  EXPECT_EQ(enc[11], kSparse);
  const TensorBundle out = Decode(enc);
  EXPECT_EQ(out.tensors[0].shape, in.tensors[0].shape);
  EXPECT_EQ(out.tensors[0].values, (std::vector<float>{0, -9, 0, 7, 0, 8, 0, 0, 0, 0}));

  // Layout: table entry + varint k + varint index bytes; then index gaps 1, 2, 2; then 3 fp32 values.
  std::string body = SparseEntry("w", {10}, 3, 3);
  body += std::string("\x01\x02\x02", 3);
  for (float f : {-9.0f, 7.0f, 8.0f}) PutF32(&body, f);
  EXPECT_EQ(enc, AssembleV2(0, kSparse, 0, 1, body));
}

TEST(TopKTest, KeepsAtLeastOneEntryAndAllAtFractionOne) {
  TensorBundle b = OneTensor({0.1f, -0.2f, 0.3f});
  b.tensors.push_back({"bias", {1}, {0.5f}});
  b.tensors.push_back({"empty", {0, 4}, {}});
  const TensorBundle small = Decode(Encode(b, Options(Codec::kFp32, true, kMinTopkFraction)));
  EXPECT_EQ(small.tensors[0].values, (std::vector<float>{0, 0, 0.3f}));
  EXPECT_EQ(small.tensors[1].values, (std::vector<float>{0.5f}));
  EXPECT_TRUE(small.tensors[2].values.empty());
  const TensorBundle all = Decode(Encode(b, Options(Codec::kFp32, true, 1.0)));
  EXPECT_EQ(all.tensors[0].values, b.tensors[0].values);
}

TEST(TopKTest, KeptValuesUseTheValueCodec) {
  const TensorBundle in = Normal(21, 8000, 0.5f);
  for (Codec codec : {Codec::kFp32, Codec::kFp16, Codec::kBf16, Codec::kInt8, Codec::kInt4}) {
    SCOPED_TRACE(std::string(CodecName(codec)));
    const TensorBundle out = Decode(Encode(in, Options(codec, true, 0.1, 32)));
    const std::vector<float>& x = in.tensors[0].values;
    const std::vector<float>& y = out.tensors[0].values;
    ASSERT_EQ(y.size(), x.size());
    // Exactly the top 800 positions are non-zero (no kept value is 0 for these inputs).
    std::vector<float> mags(x.size());
    for (size_t i = 0; i < x.size(); ++i) mags[i] = std::fabs(x[i]);
    std::vector<float> sorted = mags;
    std::nth_element(sorted.begin(), sorted.begin() + 799, sorted.end(), std::greater<float>());
    const float threshold = sorted[799];
    float kept_max = 0;
    for (size_t i = 0; i < x.size(); ++i) kept_max = std::max(kept_max, mags[i]);
    for (size_t i = 0; i < x.size(); ++i) {
      if (mags[i] < threshold) {
        ASSERT_EQ(y[i], 0.0f) << i;
        continue;
      }
      const float err = std::fabs(x[i] - y[i]);
      switch (codec) {
        case Codec::kFp32:
          ASSERT_EQ(err, 0.0f);
          break;
        case Codec::kFp16:
          ASSERT_LE(err, mags[i] * std::ldexp(1.0f, -11));
          break;
        case Codec::kBf16:
          ASSERT_LE(err, mags[i] * std::ldexp(1.0f, -8));
          break;
        // Blocks run over kept values: the block max is at most the tensor max.
        case Codec::kInt8:
          ASSERT_LE(err, kept_max / 127 / 2 * 1.0001f);
          break;
        case Codec::kInt4:
          ASSERT_LE(err, kept_max / 7 / 2 * 1.0001f);
          break;
      }
    }
  }
}

TEST(TopKTest, OnePercentWithInt8AndZstdIsOver30TimesSmallerThanFp32) {
  const TensorBundle in = Normal(5, 100000);
  CompressionReport report;
  auto enc = EncodeBundle(in, Options(Codec::kInt8, true, 0.01), &report);
  ASSERT_TRUE(enc.ok());
  EXPECT_EQ(report.raw_bytes, 400000u);
  EXPECT_EQ(report.encoded_bytes, enc->size());
  EXPECT_EQ(report.values_total, 100000u);
  EXPECT_EQ(report.values_sent, 1000u);
  EXPECT_GT(report.Ratio(), 30.0) << enc->size();
  CompressionReport dense;
  ASSERT_TRUE(EncodeBundle(in, Options(Codec::kInt4, true), &dense).ok());
  EXPECT_EQ(dense.values_sent, 100000u);
  EXPECT_GT(dense.Ratio(), 6.0);
  EXPECT_EQ(CompressionReport{}.Ratio(), 0.0);
}

TEST(TopKTest, EncoderRejectsBadFractions) {
  for (double f :
       {-0.1, 1.5, 1e-5, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    auto e = EncodeBundle(OneTensor({1.0f}), Options(Codec::kFp32, false, f));
    ASSERT_FALSE(e.ok()) << f;
    EXPECT_NE(e.status().message().find("topk_fraction"), std::string::npos) << e.status().message();
  }
}

TEST(TopKTest, InspectBundleReadsTheHeaderOnly) {
  const std::string enc = Encode(Normal(1, 64), Options(Codec::kInt4, true, 0.5, 16));
  auto h = InspectBundle(enc);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->version, 2);
  EXPECT_EQ(h->codec, Codec::kInt4);
  EXPECT_TRUE(h->zstd);
  EXPECT_TRUE(h->sparse);
  EXPECT_EQ(h->block_size, 16u);
  EXPECT_EQ(h->tensor_count, 1u);
  EXPECT_EQ(kHeader + h->stored_size + kTrailer, enc.size());
  auto v1 = InspectBundle(Encode(Normal(1, 64), Options(Codec::kInt8, false)));
  ASSERT_TRUE(v1.ok());
  EXPECT_EQ(v1->version, 1);
  EXPECT_FALSE(v1->sparse);
  EXPECT_FALSE(InspectBundle("FEDGEBN1").ok());
  EXPECT_FALSE(InspectBundle("nope").ok());
}

// ---- hostile sparse inputs ----

std::string SparseFp32(const std::string& entry, const std::string& indices,
                       const std::vector<float>& values) {
  std::string body = entry + indices;
  for (float f : values) PutF32(&body, f);
  return AssembleV2(0, kSparse, 0, 1, body);
}

TEST(TopKDecoderTest, AcceptsAHandBuiltBundle) {
  const TensorBundle ok =
      Decode(SparseFp32(SparseEntry("w", {300}, 2, 3), std::string("\x05\xa0\x01", 3), {1, 2}));
  ASSERT_EQ(ok.tensors[0].values.size(), 300u);
  EXPECT_EQ(ok.tensors[0].values[5], 1.0f);
  EXPECT_EQ(ok.tensors[0].values[165], 2.0f);  // 5 + 160
  EXPECT_EQ(std::count(ok.tensors[0].values.begin(), ok.tensors[0].values.end(), 0.0f), 298);
}

TEST(TopKDecoderTest, RejectsIndicesThatAreNotStrictlyIncreasing) {
  ExpectRejected(SparseFp32(SparseEntry("w", {10}, 2, 2), std::string("\x03\x00", 2), {1, 2}),
                 "indices are not strictly increasing (index 3 repeated at position 1)");
}

TEST(TopKDecoderTest, RejectsIndicesOutOfRange) {
  ExpectRejected(SparseFp32(SparseEntry("w", {10}, 1, 1), "\x0a", {1}),
                 "index 10 at position 0 is out of range for 10");
  ExpectRejected(SparseFp32(SparseEntry("w", {10}, 2, 2), "\x05\x05", {1, 2}),
                 "index 10 at position 1 is out of range");
}

TEST(TopKDecoderTest, RejectsCountsAboveTheElementCount) {
  ExpectRejected(SparseFp32(SparseEntry("w", {2}, 3, 3), std::string("\x00\x01\x01", 3), {1, 2, 3}),
                 "keeps 3 entries but has only 2 elements");
}

TEST(TopKDecoderTest, RejectsInconsistentIndexSections) {
  // Section size outside [k, k * varint length of n-1].
  ExpectRejected(SparseFp32(SparseEntry("w", {10}, 2, 1), "\x01", {1, 2}), "cannot hold 2 indices");
  ExpectRejected(SparseFp32(SparseEntry("w", {10}, 1, 2), std::string("\x81\x00", 2), {1}),
                 "cannot hold 1 indices");
  // Right size, wrong content: a continuation byte runs past the varint length n needs.
  ExpectRejected(SparseFp32(SparseEntry("w", {300}, 1, 2), std::string("\x81\x81", 2), {1}),
                 "varint longer than the 2 bytes 300 elements need");
  ExpectRejected(SparseFp32(SparseEntry("w", {300}, 2, 3), std::string("\x01\x01\x81", 3), {1, 2}),
                 "index section ends inside a varint");
  ExpectRejected(SparseFp32(SparseEntry("w", {300}, 2, 4), std::string("\x81\x80\x80\x01", 4), {1, 2}),
                 "varint longer than the 2 bytes");
  // Non-canonical: 0x81 0x00 encodes 1 in two bytes.
  ExpectRejected(SparseFp32(SparseEntry("w", {300}, 2, 3), std::string("\x81\x00\x01", 3), {1, 2}),
                 "non-canonical");
  // Three varints in a section declared for two.
  ExpectRejected(SparseFp32(SparseEntry("w", {300}, 2, 3), std::string("\x01\x01\x01", 3), {1, 2}),
                 "holds more than the 2 indices");
  // Two one-byte varints where the table declares one index.
  ExpectRejected(SparseFp32(SparseEntry("w", {300}, 1, 2), std::string("\x01\x01", 2), {1}),
                 "holds more than the 1");
  ExpectRejected(SparseFp32(SparseEntry("w", {300}, 2, 3), std::string("\x81\x01\x80", 3), {1, 2}),
                 "index section ends inside a varint");
}

TEST(TopKDecoderTest, RejectsBadTableVarints) {
  std::string e = Entry("w", {10});
  e += std::string("\x81\x00", 2);  // non-canonical kept count
  e += "\x01";
  ExpectRejected(SparseFp32(e, "\x01", {1}), "kept count is a non-canonical varint");
  std::string long_varint = Entry("w", {10}) + std::string(10, '\xff') + "\x01";
  ExpectRejected(SparseFp32(long_varint, "", {}), "kept count overflows 64 bits");
  std::string cut = Entry("w", {10}) + "\x81";
  ExpectRejected(AssembleV2(0, kSparse, 0, 1, cut), "truncated body");
}

TEST(TopKDecoderTest, BoundsTheDenseExpansion) {
  // One kept entry may stand for at most max_sparse_expansion elements.
  ExpectRejected(SparseFp32(SparseEntry("w", {10001}, 1, 1), std::string(1, '\0'), {1}),
                 "fewer than 1 in 10000");
  EXPECT_EQ(
      Decode(SparseFp32(SparseEntry("w", {10000}, 1, 1), std::string(1, '\0'), {1})).tensors[0].values.size(),
      10000u);
  DecodeLimits strict;
  strict.max_sparse_expansion = 4;
  ExpectRejected(SparseFp32(SparseEntry("w", {10}, 2, 2), std::string("\x00\x01", 2), {1, 2}),
                 "fewer than 1 in 4", strict);
  // A huge declared tensor with one entry is refused before any allocation.
  ExpectRejected(SparseFp32(SparseEntry("w", {1ull << 30}, 1, 1), std::string(1, '\0'), {1}),
                 "max_sparse_expansion");
  // An empty sparse tensor needs no entries.
  EXPECT_TRUE(Decode(SparseFp32(SparseEntry("w", {0}, 0, 0), "", {})).tensors[0].values.empty());
}

TEST(TopKDecoderTest, RejectsNonFiniteKeptValues) {
  ExpectRejected(SparseFp32(SparseEntry("w", {10}, 1, 1), "\x04", {std::numeric_limits<float>::infinity()}),
                 "tensor \"w\" (kept values) element 0 is not finite");
}

TEST(TopKDecoderTest, RejectsTruncationAtEveryLength) {
  TensorBundle b = Normal(4, 512);
  b.tensors.push_back({"bias", {7}, {1, 2, 3, 4, 5, 6, 7}});
  for (Codec codec : {Codec::kInt8, Codec::kInt4}) {
    for (bool zstd : {false, true}) {
      const std::string enc = Encode(b, Options(codec, zstd, 0.1, 16));
      for (size_t len = 8; len < enc.size(); ++len) {
        auto d = DecodeBundle(std::string_view(enc).substr(0, len));
        ASSERT_FALSE(d.ok()) << "prefix of " << len << " bytes accepted";
        EXPECT_EQ(d.status().code(), StatusCode::kDataLoss) << d.status().ToString();
      }
    }
  }
}

}  // namespace
}  // namespace fedge
