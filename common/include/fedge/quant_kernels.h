// Hot loops of the aggregator's update path (issue 14, item 2): blockwise
// int8 dequantization, fused dequantize + weighted accumulation, weighted
// accumulation of float values into double sums, and the finiteness / squared
// norm checks a decoded update goes through.
//
// Every kernel is a plain loop over raw arrays: no allocation, no status, no
// bounds checks beyond what the contract states; callers (the decoder,
// WeightedDeltaSum) validate sizes first. Each is compiled with the
// vectoriser on and in AVX-512 / AVX2 / baseline clones chosen at load time,
// and gives the same result on every clone (element-wise operations only;
// SumSquares fixes its summation order, see below).
//
// Blockwise layout (docs/formats.md): element i of a tensor belongs to block
// i / block_size; its value is float(code[i]) * scale[i / block_size],
// computed in float exactly like the decoder always has.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fedge {

// out[i] = float(codes[i]) * scales[i / block_size] for i in [0, n).
// `scales` holds ceil(n / block_size) entries; block_size >= 1.
void DequantizeInt8(const int8_t* codes, const float* scales, size_t n, uint32_t block_size, float* out);

// The fused kernel: sum[i] += weight * double(float(codes[i]) * scales[i /
// block_size]) for i in [0, n), with no intermediate array. Bit-identical to
// DequantizeInt8 followed by AccumulateWeighted.
void DequantizeInt8Accumulate(const int8_t* codes, const float* scales, size_t n, uint32_t block_size,
                              double weight, double* sum);

// sum[i] += weight * double(values[i]) for i in [0, n).
void AccumulateWeighted(const float* values, size_t n, double weight, double* sum);

// True if no values[i] (i < n) is Inf or NaN. Branch-free over the array.
bool AllFinite(const float* values, size_t n);

// Sum of double(values[i])^2 over [0, n), in 8 interleaved partial sums
// (element i goes to partial i % 8, partials added in order at the end): a
// fixed order, so the result does not depend on the clone, but it may differ
// in the last bits from a strictly sequential sum.
double SumSquares(const float* values, size_t n);

// Smallest code in codes[0, n) (INT8_MAX for n == 0): the int8 codec's codes
// are in [-127, 127], so a minimum of -128 means a malformed bundle.
int8_t MinCode(const int8_t* codes, size_t n);

}  // namespace fedge
