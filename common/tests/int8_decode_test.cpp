// The int8 decoder's vectorised path (issue 14, item 2): steps of whole
// blocks across the 64K-element decode chunks, exact values against the
// quantizer, and malformed codes / overflowing scales still named by element.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include "bundle_test_util.h"
#include "fedge/tensor_bundle.h"

namespace fedge {
namespace {

using bundle_test::kHeader;
using bundle_test::Reseal;

TensorBundle OneTensor(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.01f);
  NamedTensor t{"t", {static_cast<int64_t>(n)}, std::vector<float>(n)};
  for (float& v : t.values) v = normal(rng);
  return TensorBundle{{t}};
}

// What the decoder must return for `values` under blockwise int8: per block
// scale = max|x| / 127, value = float(nearbyint(x / scale)) * scale.
std::vector<float> Reference(const std::vector<float>& values, uint32_t block) {
  std::vector<float> out(values.size());
  for (size_t begin = 0; begin < values.size(); begin += block) {
    const size_t end = std::min(values.size(), begin + block);
    float amax = 0;
    for (size_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(values[i]));
    const float scale = amax / 127.0f;
    for (size_t i = begin; i < end; ++i) {
      out[i] = scale == 0.0f ? 0.0f : static_cast<float>(std::nearbyint(values[i] / scale)) * scale;
    }
  }
  return out;
}

// Offsets in an uncompressed one-tensor bundle named "t" of rank 1: the
// table entry is 2 + 1 + 2 + 8 bytes, then the scales, then the codes.
size_t ScaleOffset(size_t block_index) { return kHeader + 13 + 4 * block_index; }
size_t CodeOffset(size_t n, uint32_t block, size_t i) {
  return kHeader + 13 + 4 * ((n + block - 1) / block) + i;
}

TEST(Int8DecodeTest, ValuesAreExactAcrossBlocksAndDecodeChunks) {
  // 140,001 elements span three 64K decode steps; block sizes that do and do
  // not divide 65,536, and one block larger than a step's worth of others.
  const size_t n = 140'001;
  const TensorBundle in = OneTensor(n, 5);
  for (uint32_t block : {1u, 3u, 64u, 1000u, 65'535u, 65'536u}) {
    for (bool zstd : {false, true}) {
      EncodeOptions o{Codec::kInt8, static_cast<int>(block), zstd, 3};
      o.zstd_min_saving = 0;  // a zstd body whatever it saves
      auto enc = EncodeBundle(in, o);
      ASSERT_TRUE(enc.ok()) << enc.status().ToString();
      auto out = DecodeBundle(*enc);
      ASSERT_TRUE(out.ok()) << out.status().ToString();
      ASSERT_EQ(out->tensors[0].values, Reference(in.tensors[0].values, block))
          << "block " << block << " zstd " << zstd;
    }
  }
}

TEST(Int8DecodeTest, CodeMinus128IsRejectedNamingItsElement) {
  const size_t n = 140'001;
  const uint32_t block = 1000;
  auto enc = EncodeBundle(OneTensor(n, 6), EncodeOptions{Codec::kInt8, static_cast<int>(block), false, 3});
  ASSERT_TRUE(enc.ok());
  for (size_t at : {size_t{0}, size_t{64'999}, size_t{65'000}, size_t{140'000}}) {  // around a step boundary
    std::string bad = *enc;
    bad[CodeOffset(n, block, at)] = static_cast<char>(0x80);
    Reseal(&bad);
    auto out = DecodeBundle(bad);
    ASSERT_FALSE(out.ok()) << at;
    EXPECT_EQ(out.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(
        out.status().message().find("element " + std::to_string(at) + " has the out-of-range int8 code -128"),
        std::string::npos)
        << out.status().message();
  }
}

TEST(Int8DecodeTest, FiniteScaleThatOverflowsIsRejectedAsNotFinite) {
  const size_t n = 140'001;
  const uint32_t block = 1000;
  TensorBundle in = OneTensor(n, 7);
  in.tensors[0].values[70'123] = 0.5f;  // the largest of its block: code 127
  auto enc = EncodeBundle(in, EncodeOptions{Codec::kInt8, static_cast<int>(block), false, 3});
  ASSERT_TRUE(enc.ok());
  std::string bad = *enc;
  const float huge = 3e38f;  // finite, but 127 x huge is not
  std::memcpy(&bad[ScaleOffset(70'123 / block)], &huge, 4);
  Reseal(&bad);
  auto out = DecodeBundle(bad);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(out.status().message().find("is not finite"), std::string::npos) << out.status().message();
}

}  // namespace
}  // namespace fedge
