// Matrix-vector kernels of the single-token decode step (llama_decode.cpp).
//
// Decoding one token reads every weight once and does two flops per weight, so
// its speed is the rate at which the weights stream from memory. These kernels
// read each matrix row once with wide loads (AVX-512 or AVX2+FMA, chosen at run
// time; plain C++ otherwise) and split rows across torch's intra-op threads,
// instead of libtorch's generic one-row GEMM path. Internal header.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace fedge::agent::llm::decode {

// Weight-only int8 copy of an fp32 [rows, cols] matrix, one scale per output
// channel (row): w[r][c] ~= scale[r] * q[r][c], scale[r] = max_c |w[r][c]| / 127,
// round to nearest. A zero row has scale 0.
struct Int8Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<int8_t> q;
  std::vector<float> scale;

  static Int8Matrix Quantize(const float* w, int64_t rows, int64_t cols);
};

// One y = W x of a batch of products that share a thread split. Exactly one of
// `w` (fp32, row-major, rows x cols), `bf16` / `f16` (the same layout in 16 bits,
// widened to fp32 as they are read: with cols % 16 == 0 the result equals the fp32
// kernel's on the widened matrix bit for bit) and `q` (int8) is set. `y` has `rows` floats;
// `x` has `cols`. Neither may alias `y`.
//
// With batch B > 1 it is B products of the same weight, y_b = W x_b for b < B, x_b
// at x + b * x_stride and y_b at y + b * y_stride (the rows of a decode step of B
// sequences): each weight row is read once for all B vectors, and each y_b[r] is
// summed in exactly the order of the batch-1 kernel of the same ISA, so the result
// equals B separate products bit for bit.
struct Matvec {
  const float* w = nullptr;
  const uint16_t* bf16 = nullptr;
  const uint16_t* f16 = nullptr;
  const Int8Matrix* q = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* x = nullptr;
  float* y = nullptr;
  int batch = 1;
  int64_t x_stride = 0;  // floats between x_b and x_{b+1} (batch > 1)
  int64_t y_stride = 0;  // floats between y_b and y_{b+1} (batch > 1)
};

// Runs every product (1..8; each may be batched), rows split across torch's intra-op threads
// (at::parallel_for). On "avx512vnni", an int8 product with cols % 64 == 0 also
// quantizes its x to int8 (blocks of 32, scale max|x|/127, as llama.cpp's Q8_0
// activations) and runs int8 x int8 dot products; elsewhere int8 weights are
// dequantized against the fp32 x (MatvecRowsInt8).
void RunMatvecs(const Matvec* products, int count);

// Single-threaded y[r] = dot(W[r], x) for rows [r0, r1): what RunMatvecs runs per chunk.
void MatvecRowsF32(const float* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1);
void MatvecRowsInt8(const Int8Matrix& q, const float* x, float* y, int64_t r0, int64_t r1);

// y[d] += a * x[d] for d < n.
void Axpy(float a, const float* x, float* y, int64_t n);

// "avx512vnni", "avx512", "avx2" or "scalar": the kernels this CPU runs.
std::string_view KernelIsa();
// Makes every later call run the kernels of `isa` (one of the names above) for
// tests and benchmarks; false (and no change) if unknown or this CPU lacks it.
// Not thread-safe: call before decoding.
bool ForceKernelIsa(std::string_view isa);

}  // namespace fedge::agent::llm::decode
