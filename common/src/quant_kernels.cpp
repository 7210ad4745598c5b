// Compiled with -O3 -ffp-contract=off (common/CMakeLists.txt): the loops
// below are written for the vectoriser, and contraction stays off so that a
// clone with FMA rounds exactly like the baseline one (and like the scalar
// code these kernels replaced).
#include "fedge/quant_kernels.h"

#include <algorithm>
#include <cstring>

// One clone per instruction set; the loader picks the best the CPU has.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FEDGE_KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FEDGE_KERNEL
#endif

namespace fedge {

FEDGE_KERNEL void DequantizeInt8(const int8_t* codes, const float* scales, size_t n, uint32_t block_size,
                                 float* out) {
  for (size_t begin = 0, b = 0; begin < n; begin += block_size, ++b) {
    const size_t end = std::min<size_t>(n, begin + block_size);
    const float s = scales[b];
    for (size_t i = begin; i < end; ++i) out[i] = static_cast<float>(codes[i]) * s;
  }
}

FEDGE_KERNEL void DequantizeInt8Accumulate(const int8_t* codes, const float* scales, size_t n,
                                           uint32_t block_size, double weight, double* sum) {
  for (size_t begin = 0, b = 0; begin < n; begin += block_size, ++b) {
    const size_t end = std::min<size_t>(n, begin + block_size);
    const float s = scales[b];
    for (size_t i = begin; i < end; ++i) {
      sum[i] += weight * static_cast<double>(static_cast<float>(codes[i]) * s);
    }
  }
}

FEDGE_KERNEL void AccumulateWeighted(const float* values, size_t n, double weight, double* sum) {
  for (size_t i = 0; i < n; ++i) sum[i] += weight * static_cast<double>(values[i]);
}

FEDGE_KERNEL bool AllFinite(const float* values, size_t n) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, values + i, sizeof(bits));
    bad |= static_cast<uint32_t>((bits & 0x7F800000u) == 0x7F800000u);  // all-ones exponent: Inf/NaN
  }
  return bad == 0;
}

FEDGE_KERNEL double SumSquares(const float* values, size_t n) {
  constexpr size_t kLanes = 8;
  double partial[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t k = 0; k < kLanes; ++k) {
      const double x = static_cast<double>(values[i + k]);
      partial[k] += x * x;
    }
  }
  for (size_t k = 0; i < n; ++i, ++k) {
    const double x = static_cast<double>(values[i]);
    partial[k] += x * x;
  }
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) +
         ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

FEDGE_KERNEL int8_t MinCode(const int8_t* codes, size_t n) {
  int8_t m = INT8_MAX;
  for (size_t i = 0; i < n; ++i) m = std::min(m, codes[i]);
  return m;
}

}  // namespace fedge
