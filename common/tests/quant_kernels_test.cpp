// The aggregator's update-path kernels (quant_kernels.h): hand-checked values,
// odd lengths, block boundaries, and agreement of the fused kernel with the
// two-step path it replaces.
#include "fedge/quant_kernels.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace fedge {
namespace {

TEST(QuantKernelsTest, DequantizeInt8HandCheckedAcrossBlocks) {
  // Block size 3, 7 elements: blocks [0,3) [3,6) [6,7) with scales 0.5, 2, 0.25.
  const std::vector<int8_t> codes = {1, -2, 127, 3, -127, 0, 8};
  const std::vector<float> scales = {0.5f, 2.0f, 0.25f};
  std::vector<float> out(codes.size(), -1.0f);
  DequantizeInt8(codes.data(), scales.data(), codes.size(), 3, out.data());
  const std::vector<float> want = {0.5f, -1.0f, 63.5f, 6.0f, -254.0f, 0.0f, 2.0f};
  EXPECT_EQ(out, want);
}

TEST(QuantKernelsTest, DequantizeInt8WritesExactlyNValues) {
  const std::vector<int8_t> codes = {4, 5, 6};
  const std::vector<float> scales = {1.0f};
  std::vector<float> out(5, -7.0f);  // two guard values past n
  DequantizeInt8(codes.data(), scales.data(), 3, 64, out.data());
  EXPECT_EQ(out, (std::vector<float>{4, 5, 6, -7, -7}));
  DequantizeInt8(codes.data(), scales.data(), 0, 64, out.data());  // n = 0 touches nothing
  EXPECT_EQ(out, (std::vector<float>{4, 5, 6, -7, -7}));
}

TEST(QuantKernelsTest, DequantizeInt8AccumulateHandChecked) {
  // Block size 2: scales 0.5 (elements 0-1), 4 (2-3), 1 (4).
  const std::vector<int8_t> codes = {2, -4, 1, -1, 127};
  const std::vector<float> scales = {0.5f, 4.0f, 1.0f};
  std::vector<double> sum = {10, 10, 10, 10, 10, 99};  // sum[5] is past n
  DequantizeInt8Accumulate(codes.data(), scales.data(), 5, 2, /*weight=*/3.0, sum.data());
  EXPECT_EQ(sum, (std::vector<double>{13, 4, 22, -2, 391, 99}));
  DequantizeInt8Accumulate(codes.data(), scales.data(), 5, 2, /*weight=*/0.5, sum.data());
  EXPECT_EQ(sum, (std::vector<double>{13.5, 3, 24, -4, 454.5, 99}));
}

// The fused kernel must equal dequantize-then-accumulate bit for bit, for
// every length around the vector widths and block boundaries.
TEST(QuantKernelsTest, FusedKernelMatchesTwoStepPathBitForBit) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> code(-127, 127);
  std::uniform_real_distribution<float> scale(0.0f, 0.01f);
  for (uint32_t block : {1u, 3u, 7u, 16u, 64u, 65u, 1000u}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{15}, size_t{16}, size_t{17}, size_t{63},
                     size_t{64}, size_t{65}, size_t{127}, size_t{129}, size_t{1001}, size_t{4099}}) {
      std::vector<int8_t> codes(n);
      for (int8_t& c : codes) c = static_cast<int8_t>(code(rng));
      std::vector<float> scales((n + block - 1) / block);
      for (float& s : scales) s = scale(rng);
      std::vector<double> start(n);
      for (double& x : start) x = scale(rng) * 100.0;
      const double weight = 37.0 / 3.0;

      std::vector<float> values(n);
      DequantizeInt8(codes.data(), scales.data(), n, block, values.data());
      std::vector<double> two_step = start;
      AccumulateWeighted(values.data(), n, weight, two_step.data());
      std::vector<double> fused = start;
      DequantizeInt8Accumulate(codes.data(), scales.data(), n, block, weight, fused.data());
      std::vector<double> scalar = start;  // the loop the decoder and FedAvg used to run
      for (size_t i = 0; i < n; ++i) {
        scalar[i] += weight * static_cast<double>(static_cast<float>(codes[i]) * scales[i / block]);
      }
      ASSERT_EQ(fused, two_step) << "block " << block << " n " << n;
      ASSERT_EQ(fused, scalar) << "block " << block << " n " << n;
    }
  }
}

TEST(QuantKernelsTest, AccumulateWeightedHandChecked) {
  const std::vector<float> v = {1.0f, -2.0f, 0.5f};
  std::vector<double> sum = {1, 1, 1, 5};
  AccumulateWeighted(v.data(), 3, 2.0, sum.data());
  EXPECT_EQ(sum, (std::vector<double>{3, -3, 2, 5}));
}

TEST(QuantKernelsTest, AllFiniteFindsInfAndNanAnywhere) {
  for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{33}, size_t{100}}) {
    std::vector<float> v(n, 1.5f);
    EXPECT_TRUE(AllFinite(v.data(), n)) << n;
    for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                      std::numeric_limits<float>::quiet_NaN()}) {
      for (size_t at : {size_t{0}, n / 2, n - 1}) {
        std::vector<float> w = v;
        w[at] = bad;
        EXPECT_FALSE(AllFinite(w.data(), n)) << "n " << n << " at " << at;
        EXPECT_TRUE(AllFinite(w.data(), at)) << "only [0, n) is read";
      }
    }
  }
  EXPECT_TRUE(AllFinite(nullptr, 0));
  const float big[] = {std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                       std::numeric_limits<float>::denorm_min()};
  EXPECT_TRUE(AllFinite(big, 3));
}

TEST(QuantKernelsTest, SumSquaresHandCheckedAndOddLengths) {
  const std::vector<float> v = {3.0f, 4.0f};
  EXPECT_EQ(SumSquares(v.data(), 2), 25.0);
  EXPECT_EQ(SumSquares(v.data(), 0), 0.0);
  // 1..n squared: n(n+1)(2n+1)/6, exact in double for these n.
  for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{17}, size_t{1001}}) {
    std::vector<float> w(n);
    for (size_t i = 0; i < n; ++i) w[i] = static_cast<float>(i + 1);
    const double want =
        static_cast<double>(n) * static_cast<double>(n + 1) * static_cast<double>(2 * n + 1) / 6;
    EXPECT_EQ(SumSquares(w.data(), n), want) << n;
  }
  // Squares in double: float's largest value does not overflow.
  const float big[] = {std::numeric_limits<float>::max()};
  EXPECT_TRUE(std::isfinite(SumSquares(big, 1)));
  // A non-finite value makes the sum non-finite (the engine relies on it).
  const float nan[] = {1.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
  EXPECT_FALSE(std::isfinite(SumSquares(nan, 3)));
}

TEST(QuantKernelsTest, MinCodeFindsMinus128Anywhere) {
  for (size_t n : {size_t{1}, size_t{15}, size_t{16}, size_t{17}, size_t{200}}) {
    std::vector<int8_t> c(n, 5);
    EXPECT_EQ(MinCode(c.data(), n), 5);
    c[n - 1] = -128;
    EXPECT_EQ(MinCode(c.data(), n), -128) << n;
    c[n - 1] = -127;
    c[0] = -128;
    EXPECT_EQ(MinCode(c.data(), n), -128) << n;
  }
  EXPECT_EQ(MinCode(nullptr, 0), INT8_MAX);
}

}  // namespace
}  // namespace fedge
