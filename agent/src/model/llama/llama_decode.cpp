// The single-token decode step of LlamaForCausalLm on raw pointers.
//
// One generated token reads every weight of the model once (538 MB for a
// SmolLM2-135M-shaped model in fp32), so decode speed is weight-streaming speed.
// The batched libtorch path spends it on ~20 tensor ops per layer, each allocating
// its output, and its one-row GEMMs stream weights at half the rate of a plain
// matrix-vector product. Here a step is: embedding row -> per layer RMSNorm, one
// threaded pass over q/k/v, RoPE, the new key/value written in place into the
// preallocated cache, attention per head, o_proj, RMSNorm, one pass over gate/up,
// SiLU, down_proj -> final RMSNorm -> LM head; every intermediate lives in scratch
// buffers owned by the model. The arithmetic is the batched path's in another
// summation order (decode logits match a full forward to ~1e-6).
//
// kInt8 reads weight-only int8 copies of the projections and the LM head (one
// scale per output channel) and keeps activations fp32: 1 byte per weight instead
// of 4. The copies are rebuilt whenever an fp32 weight changes (detected by the
// tensor's version counter: LoRA Merge on install, LoadWeights), so a merged
// adapter is quantized together with its base weight; an unmerged adapter is
// applied in fp32 on top (y += s * B (A x)).
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "llama/llama.h"
#include "llama/llama_decode.h"

namespace fedge::agent::llm {

using fedge::agent::LoraLinearImpl;

namespace decode {
namespace {

// kAvx512Vnni: the AVX-512 fp32 kernels, and int8 products as int8 x int8 dot
// products (vpdpbusd) against the activation quantized per 32-element block.
enum class Isa { kScalar, kAvx2, kAvx512, kAvx512Vnni };

Isa DetectIsa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vnni")) {
    return Isa::kAvx512Vnni;
  }
  if (__builtin_cpu_supports("avx512f")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
  return Isa::kScalar;
}

Isa& ActiveIsa() {
  static Isa isa = DetectIsa();
  return isa;
}

// --- plain C++ ---------------------------------------------------------------------
float DotF32Scalar(const float* row, const float* x, int64_t cols) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += row[c + k] * x[c + k];
  }
  float sum = 0;
  for (; c < cols; ++c) sum += row[c] * x[c];
  for (float a : acc) sum += a;
  return sum;
}

float DotInt8Scalar(const int8_t* row, const float* x, int64_t cols) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += static_cast<float>(row[c + k]) * x[c + k];
  }
  float sum = 0;
  for (; c < cols; ++c) sum += static_cast<float>(row[c]) * x[c];
  for (float a : acc) sum += a;
  return sum;
}

void RowsF32Scalar(const float* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) y[r] = DotF32Scalar(w + r * cols, x, cols);
}

void RowsInt8Scalar(const Int8Matrix& m, const float* x, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    y[r] = m.scale[static_cast<size_t>(r)] * DotInt8Scalar(m.q.data() + r * m.cols, x, m.cols);
  }
}

void AxpyScalar(float a, const float* x, float* y, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// --- AVX2 + FMA --------------------------------------------------------------------
__attribute__((target("avx2,fma"))) float Hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The scalar tail of a row's dot product (columns [from, to)) added to `s`. One
// out-of-line function for the single-row and the B-row kernels, so both compile
// it the same way (contracted to FMA or not) and their sums stay bit-equal.
__attribute__((noinline)) float TailF32(const float* w, const float* x, int64_t from, int64_t to, float s) {
  for (int64_t c = from; c < to; ++c) s += w[c] * x[c];
  return s;
}
__attribute__((noinline)) float TailInt8(const int8_t* q, const float* x, int64_t from, int64_t to, float s) {
  for (int64_t c = from; c < to; ++c) s += static_cast<float>(q[c]) * x[c];
  return s;
}

__attribute__((target("avx2,fma"))) void RowsF32Avx2(const float* w, int64_t cols, const float* x, float* y,
                                                     int64_t r0, int64_t r1) {
  const int64_t body = cols & ~int64_t{7};
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const float* w0 = w + r * cols;
    const float* w1 = w0 + cols;
    const float* w2 = w1 + cols;
    const float* w3 = w2 + cols;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
           a3 = _mm256_setzero_ps();
    for (int64_t c = 0; c < body; c += 8) {
      __m256 xv = _mm256_loadu_ps(x + c);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + c), xv, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + c), xv, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + c), xv, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + c), xv, a3);
    }
    y[r] = TailF32(w0, x, body, cols, Hsum256(a0));
    y[r + 1] = TailF32(w1, x, body, cols, Hsum256(a1));
    y[r + 2] = TailF32(w2, x, body, cols, Hsum256(a2));
    y[r + 3] = TailF32(w3, x, body, cols, Hsum256(a3));
  }
  RowsF32Scalar(w, cols, x, y, r, r1);
}

__attribute__((target("avx2,fma"))) __m256 LoadInt8x8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

__attribute__((target("avx2,fma"))) void RowsInt8Avx2(const Int8Matrix& m, const float* x, float* y,
                                                      int64_t r0, int64_t r1) {
  const int64_t cols = m.cols, body = cols & ~int64_t{7};
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const int8_t* q0 = m.q.data() + r * cols;
    const int8_t* q1 = q0 + cols;
    const int8_t* q2 = q1 + cols;
    const int8_t* q3 = q2 + cols;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
           a3 = _mm256_setzero_ps();
    for (int64_t c = 0; c < body; c += 8) {
      __m256 xv = _mm256_loadu_ps(x + c);
      a0 = _mm256_fmadd_ps(LoadInt8x8(q0 + c), xv, a0);
      a1 = _mm256_fmadd_ps(LoadInt8x8(q1 + c), xv, a1);
      a2 = _mm256_fmadd_ps(LoadInt8x8(q2 + c), xv, a2);
      a3 = _mm256_fmadd_ps(LoadInt8x8(q3 + c), xv, a3);
    }
    float s[4] = {Hsum256(a0), Hsum256(a1), Hsum256(a2), Hsum256(a3)};
    const int8_t* rows[4] = {q0, q1, q2, q3};
    for (int k = 0; k < 4; ++k) {
      y[r + k] = m.scale[static_cast<size_t>(r + k)] * TailInt8(rows[k], x, body, cols, s[k]);
    }
  }
  RowsInt8Scalar(m, x, y, r, r1);
}

__attribute__((target("avx2,fma"))) void AxpyAvx2(float a, const float* x, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    _mm256_storeu_ps(y + d, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + d), _mm256_loadu_ps(y + d)));
  }
  for (; d < n; ++d) y[d] += a * x[d];
}

// --- AVX-512 -----------------------------------------------------------------------
__attribute__((target("avx512f"))) void RowsF32Avx512(const float* w, int64_t cols, const float* x, float* y,
                                                      int64_t r0, int64_t r1) {
  const int64_t body = cols & ~int64_t{15};
  const auto tail = static_cast<__mmask16>((1u << (cols - body)) - 1u);
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const float* w0 = w + r * cols;
    const float* w1 = w0 + cols;
    const float* w2 = w1 + cols;
    const float* w3 = w2 + cols;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
           a3 = _mm512_setzero_ps();
    for (int64_t c = 0; c < body; c += 16) {
      __m512 xv = _mm512_loadu_ps(x + c);
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + c), xv, a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + c), xv, a1);
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + c), xv, a2);
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + c), xv, a3);
    }
    if (tail != 0) {
      __m512 xv = _mm512_maskz_loadu_ps(tail, x + body);
      a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w0 + body), xv, a0);
      a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w1 + body), xv, a1);
      a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w2 + body), xv, a2);
      a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w3 + body), xv, a3);
    }
    y[r] = _mm512_reduce_add_ps(a0);
    y[r + 1] = _mm512_reduce_add_ps(a1);
    y[r + 2] = _mm512_reduce_add_ps(a2);
    y[r + 3] = _mm512_reduce_add_ps(a3);
  }
  for (; r < r1; ++r) {
    const float* w0 = w + r * cols;
    __m512 a0 = _mm512_setzero_ps();
    for (int64_t c = 0; c < body; c += 16)
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + c), _mm512_loadu_ps(x + c), a0);
    if (tail != 0) {
      a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w0 + body), _mm512_maskz_loadu_ps(tail, x + body), a0);
    }
    y[r] = _mm512_reduce_add_ps(a0);
  }
}

__attribute__((target("avx512f"))) __m512 LoadInt8x16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

__attribute__((target("avx512f"))) void RowsInt8Avx512(const Int8Matrix& m, const float* x, float* y,
                                                       int64_t r0, int64_t r1) {
  const int64_t cols = m.cols, body = cols & ~int64_t{15};
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const int8_t* q0 = m.q.data() + r * cols;
    const int8_t* q1 = q0 + cols;
    const int8_t* q2 = q1 + cols;
    const int8_t* q3 = q2 + cols;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
           a3 = _mm512_setzero_ps();
    for (int64_t c = 0; c < body; c += 16) {
      __m512 xv = _mm512_loadu_ps(x + c);
      a0 = _mm512_fmadd_ps(LoadInt8x16(q0 + c), xv, a0);
      a1 = _mm512_fmadd_ps(LoadInt8x16(q1 + c), xv, a1);
      a2 = _mm512_fmadd_ps(LoadInt8x16(q2 + c), xv, a2);
      a3 = _mm512_fmadd_ps(LoadInt8x16(q3 + c), xv, a3);
    }
    float s[4] = {_mm512_reduce_add_ps(a0), _mm512_reduce_add_ps(a1), _mm512_reduce_add_ps(a2),
                  _mm512_reduce_add_ps(a3)};
    const int8_t* rows[4] = {q0, q1, q2, q3};
    for (int k = 0; k < 4; ++k) {
      y[r + k] = m.scale[static_cast<size_t>(r + k)] * TailInt8(rows[k], x, body, cols, s[k]);
    }
  }
  RowsInt8Scalar(m, x, y, r, r1);
}

__attribute__((target("avx512f"))) void AxpyAvx512(float a, const float* x, float* y, int64_t n) {
  const __m512 av = _mm512_set1_ps(a);
  int64_t d = 0;
  for (; d + 16 <= n; d += 16) {
    _mm512_storeu_ps(y + d, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + d), _mm512_loadu_ps(y + d)));
  }
  for (; d < n; ++d) y[d] += a * x[d];
}

// --- AVX-512 VNNI: int8 weights x int8 activations ---------------------------------
// x is quantized like llama.cpp's Q8_0 activations: blocks of 32, scale max|x|/127.
// vpdpbusd multiplies unsigned by signed bytes, so the weights enter as q + 128
// (an XOR with 0x80) and the excess 128 * sum(xq) of each 4-byte lane, which does
// not depend on the row, is subtracted once per product:
//   y_r = s_r * (sum_c  lane_scale_c . float(dpbusd(q_c + 128, xq_c))  -  k)
// Needs cols % 64 == 0 (one 64-byte load = two blocks).
struct QuantizedX {
  std::vector<int8_t> q;
  std::vector<float> lane_scale;  // 16 per 64 columns: lanes 0-7 block 2c, 8-15 block 2c+1
  float k = 0;                    // sum over lanes of lane_scale * 128 * (sum of its 4 xq)
};

void QuantizeX(const float* x, int64_t cols, QuantizedX* out) {
  out->q.resize(static_cast<size_t>(cols));
  out->lane_scale.resize(static_cast<size_t>(cols / 4));
  double k = 0;
  for (int64_t b = 0; b < cols / 32; ++b) {
    float amax = 0;
    for (int64_t j = 0; j < 32; ++j) amax = std::max(amax, std::abs(x[b * 32 + j]));
    const float scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
    for (int64_t lane = 0; lane < 8; ++lane) {
      int32_t sum = 0;
      for (int64_t j = 0; j < 4; ++j) {
        const int64_t c = b * 32 + lane * 4 + j;
        const auto v = static_cast<int8_t>(std::clamp(std::nearbyint(x[c] * inv), -127.0f, 127.0f));
        out->q[static_cast<size_t>(c)] = v;
        sum += v;
      }
      out->lane_scale[static_cast<size_t>(b * 8 + lane)] = scale;
      k += static_cast<double>(scale) * 128.0 * sum;
    }
  }
  out->k = static_cast<float>(k);
}

// 64 int8 weights as q + 128 (unsigned), vpdpbusd's first operand.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline __m512i LoadU8(const int8_t* p, __m512i bias) {
  return _mm512_xor_si512(_mm512_loadu_si512(reinterpret_cast<const void*>(p)), bias);
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) void RowsInt8Vnni(const Int8Matrix& m,
                                                                         const QuantizedX& qx, float* y,
                                                                         int64_t r0, int64_t r1) {
  const int64_t cols = m.cols;
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  const int8_t* xq = qx.q.data();
  const float* ls = qx.lane_scale.data();
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const int8_t* q0 = m.q.data() + r * cols;
    const int8_t* q1 = q0 + cols;
    const int8_t* q2 = q1 + cols;
    const int8_t* q3 = q2 + cols;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
           a3 = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c += 64) {
      const __m512i xv = _mm512_loadu_si512(reinterpret_cast<const void*>(xq + c));
      const __m512 sv = _mm512_loadu_ps(ls + c / 4);
      const __m512i zero = _mm512_setzero_si512();
      a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, LoadU8(q0 + c, bias), xv)), sv, a0);
      a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, LoadU8(q1 + c, bias), xv)), sv, a1);
      a2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, LoadU8(q2 + c, bias), xv)), sv, a2);
      a3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, LoadU8(q3 + c, bias), xv)), sv, a3);
    }
    y[r] = m.scale[static_cast<size_t>(r)] * (_mm512_reduce_add_ps(a0) - qx.k);
    y[r + 1] = m.scale[static_cast<size_t>(r + 1)] * (_mm512_reduce_add_ps(a1) - qx.k);
    y[r + 2] = m.scale[static_cast<size_t>(r + 2)] * (_mm512_reduce_add_ps(a2) - qx.k);
    y[r + 3] = m.scale[static_cast<size_t>(r + 3)] * (_mm512_reduce_add_ps(a3) - qx.k);
  }
  for (; r < r1; ++r) {
    const int8_t* q0 = m.q.data() + r * cols;
    __m512 a0 = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c += 64) {
      const __m512i xv = _mm512_loadu_si512(reinterpret_cast<const void*>(xq + c));
      a0 = _mm512_fmadd_ps(
          _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), LoadU8(q0 + c, bias), xv)),
          _mm512_loadu_ps(ls + c / 4), a0);
    }
    y[r] = m.scale[static_cast<size_t>(r)] * (_mm512_reduce_add_ps(a0) - qx.k);
  }
}

// --- B-row kernels -----------------------------------------------------------------
// y_i = W x_i for nb activation vectors (x_i = x + i * xs, y_i = y + i * ys): each
// weight row is read once and dotted with every x_i, so a decode step of B sequences
// streams the weights once instead of B times. Every (row, x_i) dot product is summed
// in the order the single-row kernel of the same ISA uses (rows that kernel leaves to
// its scalar remainder included), so a batched step equals B single steps exactly.
struct XBatch {
  const float* x;
  int64_t xs;
  float* y;
  int64_t ys;
  int nb;
};

void RowsF32BatchScalar(const float* w, int64_t cols, const XBatch& b, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    for (int i = 0; i < b.nb; ++i) b.y[i * b.ys + r] = DotF32Scalar(w + r * cols, b.x + i * b.xs, cols);
  }
}

void RowsInt8BatchScalar(const Int8Matrix& m, const XBatch& b, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* row = m.q.data() + r * m.cols;
    for (int i = 0; i < b.nb; ++i) {
      b.y[i * b.ys + r] = m.scale[static_cast<size_t>(r)] * DotInt8Scalar(row, b.x + i * b.xs, m.cols);
    }
  }
}

// The first row that a single-row kernel working in groups of 4 rows leaves to its
// scalar remainder.
int64_t GroupEnd(int64_t r0, int64_t r1) { return r0 + (r1 - r0) / 4 * 4; }

template <int NB>
__attribute__((target("avx2,fma"))) void RowsF32BatchAvx2(const float* w, int64_t cols, const float* x,
                                                          int64_t xs, float* y, int64_t ys, int64_t r0,
                                                          int64_t r1) {
  const int64_t body = cols & ~int64_t{7};
  const int64_t end = GroupEnd(r0, r1);
  for (int64_t r = r0; r < end; ++r) {
    const float* row = w + r * cols;
    __m256 acc[NB];
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t c = 0; c < body; c += 8) {
      const __m256 wv = _mm256_loadu_ps(row + c);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) acc[i] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i * xs + c), acc[i]);
    }
    for (int i = 0; i < NB; ++i) {
      y[i * ys + r] = TailF32(row, x + i * xs, body, cols, Hsum256(acc[i]));
    }
  }
  RowsF32BatchScalar(w, cols, XBatch{x, xs, y, ys, NB}, end, r1);
}

template <int NB>
__attribute__((target("avx2,fma"))) void RowsInt8BatchAvx2(const Int8Matrix& m, const float* x, int64_t xs,
                                                           float* y, int64_t ys, int64_t r0, int64_t r1) {
  const int64_t cols = m.cols, body = cols & ~int64_t{7};
  const int64_t end = GroupEnd(r0, r1);
  for (int64_t r = r0; r < end; ++r) {
    const int8_t* row = m.q.data() + r * cols;
    __m256 acc[NB];
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t c = 0; c < body; c += 8) {
      const __m256 wv = LoadInt8x8(row + c);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) acc[i] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i * xs + c), acc[i]);
    }
    for (int i = 0; i < NB; ++i) {
      y[i * ys + r] =
          m.scale[static_cast<size_t>(r)] * TailInt8(row, x + i * xs, body, cols, Hsum256(acc[i]));
    }
  }
  RowsInt8BatchScalar(m, XBatch{x, xs, y, ys, NB}, end, r1);
}

template <int NB>
__attribute__((target("avx512f"))) void RowsF32BatchAvx512(const float* w, int64_t cols, const float* x,
                                                           int64_t xs, float* y, int64_t ys, int64_t r0,
                                                           int64_t r1) {
  const int64_t body = cols & ~int64_t{15};
  const auto tail = static_cast<__mmask16>((1u << (cols - body)) - 1u);
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = w + r * cols;
    __m512 acc[NB];
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < body; c += 16) {
      const __m512 wv = _mm512_loadu_ps(row + c);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) acc[i] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + i * xs + c), acc[i]);
    }
    if (tail != 0) {
      const __m512 wv = _mm512_maskz_loadu_ps(tail, row + body);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) {
        acc[i] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(tail, x + i * xs + body), acc[i]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) y[i * ys + r] = _mm512_reduce_add_ps(acc[i]);
  }
}

template <int NB>
__attribute__((target("avx512f"))) void RowsInt8BatchAvx512(const Int8Matrix& m, const float* x, int64_t xs,
                                                            float* y, int64_t ys, int64_t r0, int64_t r1) {
  const int64_t cols = m.cols, body = cols & ~int64_t{15};
  const int64_t end = GroupEnd(r0, r1);
  for (int64_t r = r0; r < end; ++r) {
    const int8_t* row = m.q.data() + r * cols;
    __m512 acc[NB];
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < body; c += 16) {
      const __m512 wv = LoadInt8x16(row + c);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) acc[i] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + i * xs + c), acc[i]);
    }
    for (int i = 0; i < NB; ++i) {
      y[i * ys + r] = m.scale[static_cast<size_t>(r)] *
                      TailInt8(row, x + i * xs, body, cols, _mm512_reduce_add_ps(acc[i]));
    }
  }
  RowsInt8BatchScalar(m, XBatch{x, xs, y, ys, NB}, end, r1);
}

template <int NB>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void RowsInt8BatchVnni(const Int8Matrix& m,
                                                                              const QuantizedX* qx, float* y,
                                                                              int64_t ys, int64_t r0,
                                                                              int64_t r1) {
  const int64_t cols = m.cols;
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* row = m.q.data() + r * cols;
    __m512 acc[NB];
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c += 64) {
      const __m512i wv = LoadU8(row + c, bias);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) {
        const __m512i xv = _mm512_loadu_si512(reinterpret_cast<const void*>(qx[i].q.data() + c));
        const __m512 sv = _mm512_loadu_ps(qx[i].lane_scale.data() + c / 4);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wv, xv)), sv, acc[i]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) {
      y[i * ys + r] = m.scale[static_cast<size_t>(r)] * (_mm512_reduce_add_ps(acc[i]) - qx[i].k);
    }
  }
}

// One product of a batched Matvec on rows [r0, r1), NB of its activation vectors
// starting at x / y (and qx, the quantized ones, on the int8 x int8 path).
template <int NB>
void RowsBatch(const Matvec& p, const QuantizedX* qx, const float* x, float* y, int64_t r0, int64_t r1) {
  if (qx != nullptr) return RowsInt8BatchVnni<NB>(*p.q, qx, y, p.y_stride, r0, r1);
  const bool int8 = p.q != nullptr;
  switch (ActiveIsa()) {
    case Isa::kAvx512Vnni:
    case Isa::kAvx512:
      if (int8) return RowsInt8BatchAvx512<NB>(*p.q, x, p.x_stride, y, p.y_stride, r0, r1);
      return RowsF32BatchAvx512<NB>(p.w, p.cols, x, p.x_stride, y, p.y_stride, r0, r1);
    case Isa::kAvx2:
      if (int8) return RowsInt8BatchAvx2<NB>(*p.q, x, p.x_stride, y, p.y_stride, r0, r1);
      return RowsF32BatchAvx2<NB>(p.w, p.cols, x, p.x_stride, y, p.y_stride, r0, r1);
    case Isa::kScalar:
      if (int8) return RowsInt8BatchScalar(*p.q, XBatch{x, p.x_stride, y, p.y_stride, NB}, r0, r1);
      return RowsF32BatchScalar(p.w, p.cols, XBatch{x, p.x_stride, y, p.y_stride, NB}, r0, r1);
  }
}

// Rows [r0, r1) of a product with p.batch > 1, its vectors in groups of up to 8.
void MatvecRowsBatch(const Matvec& p, const QuantizedX* qx, int64_t r0, int64_t r1) {
  for (int b0 = 0; b0 < p.batch; b0 += 8) {
    const int nb = std::min(8, p.batch - b0);
    const float* x = p.x + b0 * p.x_stride;
    float* y = p.y + b0 * p.y_stride;
    const QuantizedX* q = qx == nullptr ? nullptr : qx + b0;
    switch (nb) {
      case 1:
        RowsBatch<1>(p, q, x, y, r0, r1);
        break;
      case 2:
        RowsBatch<2>(p, q, x, y, r0, r1);
        break;
      case 3:
        RowsBatch<3>(p, q, x, y, r0, r1);
        break;
      case 4:
        RowsBatch<4>(p, q, x, y, r0, r1);
        break;
      case 5:
        RowsBatch<5>(p, q, x, y, r0, r1);
        break;
      case 6:
        RowsBatch<6>(p, q, x, y, r0, r1);
        break;
      case 7:
        RowsBatch<7>(p, q, x, y, r0, r1);
        break;
      default:
        RowsBatch<8>(p, q, x, y, r0, r1);
        break;
    }
  }
}

constexpr int64_t kRowBlock = 16;  // rows per unit of the thread split

}  // namespace

Int8Matrix Int8Matrix::Quantize(const float* w, int64_t rows, int64_t cols) {
  Int8Matrix m;
  m.rows = rows;
  m.cols = cols;
  m.q.resize(static_cast<size_t>(rows * cols));
  m.scale.resize(static_cast<size_t>(rows));
  at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = w + r * cols;
      float amax = 0;
      for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::abs(row[c]));
      const float scale = amax / 127.0f;
      const float inv = scale > 0 ? 1.0f / scale : 0.0f;
      m.scale[static_cast<size_t>(r)] = scale;
      int8_t* out = m.q.data() + r * cols;
      for (int64_t c = 0; c < cols; ++c) {
        out[c] = static_cast<int8_t>(std::clamp(std::nearbyint(row[c] * inv), -127.0f, 127.0f));
      }
    }
  });
  return m;
}

void MatvecRowsF32(const float* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  switch (ActiveIsa()) {
    case Isa::kAvx512Vnni:
    case Isa::kAvx512:
      return RowsF32Avx512(w, cols, x, y, r0, r1);
    case Isa::kAvx2:
      return RowsF32Avx2(w, cols, x, y, r0, r1);
    case Isa::kScalar:
      return RowsF32Scalar(w, cols, x, y, r0, r1);
  }
}

void MatvecRowsInt8(const Int8Matrix& q, const float* x, float* y, int64_t r0, int64_t r1) {
  switch (ActiveIsa()) {
    case Isa::kAvx512Vnni:  // RunMatvecs takes the int8 x int8 path where it applies
    case Isa::kAvx512:
      return RowsInt8Avx512(q, x, y, r0, r1);
    case Isa::kAvx2:
      return RowsInt8Avx2(q, x, y, r0, r1);
    case Isa::kScalar:
      return RowsInt8Scalar(q, x, y, r0, r1);
  }
}

void Axpy(float a, const float* x, float* y, int64_t n) {
  switch (ActiveIsa()) {
    case Isa::kAvx512Vnni:
    case Isa::kAvx512:
      return AxpyAvx512(a, x, y, n);
    case Isa::kAvx2:
      return AxpyAvx2(a, x, y, n);
    case Isa::kScalar:
      return AxpyScalar(a, x, y, n);
  }
}

std::string_view KernelIsa() {
  switch (ActiveIsa()) {
    case Isa::kAvx512Vnni:
      return "avx512vnni";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kScalar:
      return "scalar";
  }
  return "scalar";
}

bool ForceKernelIsa(std::string_view name) {
  Isa best = DetectIsa();
  Isa want;
  if (name == "avx512vnni") {
    want = Isa::kAvx512Vnni;
  } else if (name == "avx512") {
    want = Isa::kAvx512;
  } else if (name == "avx2") {
    want = Isa::kAvx2;
  } else if (name == "scalar") {
    want = Isa::kScalar;
  } else {
    return false;
  }
  if (static_cast<int>(want) > static_cast<int>(best)) return false;
  ActiveIsa() = want;
  return true;
}

void RunMatvecs(const Matvec* products, int count) {
  int64_t blocks[8];
  TORCH_CHECK(count > 0 && count <= 8, "RunMatvecs: 1..8 products");
  int64_t total = 0, weights = 0;
  for (int i = 0; i < count; ++i) {
    TORCH_CHECK(products[i].batch >= 1, "RunMatvecs: batch must be >= 1");
    blocks[i] = (products[i].rows + kRowBlock - 1) / kRowBlock;
    total += blocks[i];
    weights += products[i].rows * products[i].cols;
  }
  // int8 x int8 products: each distinct x (all `batch` vectors of it) quantized
  // once, before the threads start.
  const QuantizedX* qx[8] = {};
  static thread_local std::vector<QuantizedX> quantized[8];
  if (ActiveIsa() == Isa::kAvx512Vnni) {
    for (int i = 0; i < count; ++i) {
      const Matvec& p = products[i];
      if (p.q == nullptr || p.cols % 64 != 0) continue;
      for (int j = 0; j < i && qx[i] == nullptr; ++j) {
        const Matvec& o = products[j];
        if (qx[j] != nullptr && o.x == p.x && o.cols == p.cols && o.batch == p.batch &&
            (p.batch == 1 || o.x_stride == p.x_stride)) {
          qx[i] = qx[j];
        }
      }
      if (qx[i] == nullptr) {
        quantized[i].resize(static_cast<size_t>(p.batch));
        for (int b = 0; b < p.batch; ++b) QuantizeX(p.x + b * p.x_stride, p.cols, &quantized[i][b]);
        qx[i] = quantized[i].data();
      }
    }
  }
  // Small products (a LoRA rank-r factor) are not worth waking a second thread.
  const int64_t grain = weights < (int64_t{1} << 16) ? total : 1;
  at::parallel_for(0, total, grain, [&](int64_t b0, int64_t b1) {
    int64_t base = 0;
    for (int i = 0; i < count && b0 < b1; ++i) {
      const int64_t lo = std::max(b0, base), hi = std::min(b1, base + blocks[i]);
      if (lo < hi) {
        const Matvec& p = products[i];
        const int64_t r0 = (lo - base) * kRowBlock, r1 = std::min(p.rows, (hi - base) * kRowBlock);
        if (p.batch > 1) {
          MatvecRowsBatch(p, qx[i], r0, r1);
        } else if (qx[i] != nullptr) {
          RowsInt8Vnni(*p.q, *qx[i], p.y, r0, r1);
        } else if (p.q != nullptr) {
          MatvecRowsInt8(*p.q, p.x, p.y, r0, r1);
        } else {
          MatvecRowsF32(p.w, p.cols, p.x, p.y, r0, r1);
        }
      }
      base += blocks[i];
    }
  });
}

}  // namespace decode

std::string_view DecodeKernelName(DecodeKernel kernel) {
  switch (kernel) {
    case DecodeKernel::kTorch:
      return "torch";
    case DecodeKernel::kF32:
      return "f32";
    case DecodeKernel::kInt8:
      return "int8";
  }
  return "f32";
}

// Scratch of one decode step and the int8 copies. Owned by one model; used by one
// decode step at a time (the model is not thread-safe).
struct LlamaDecodeState {
  std::vector<float> h, xn, q, k, v, attn, o, gate, up, lora_tmp, scores;
  // DecodeStepBatch: the same, one row per sequence.
  struct Batch {
    std::vector<float> h, xn, q, k, v, attn, o, gate, up, scores;
  } batch;

  // An int8 copy and the fp32 tensor state it was made from.
  struct Quantized {
    decode::Int8Matrix m;
    const void* data = nullptr;
    int64_t version = -1;
  };
  std::vector<Quantized> projections;  // 7 per layer: q, k, v, o, gate, up, down
  Quantized head;
};

namespace {

// The version counter of a normal tensor: in-place writes (copy_, add_) bump it.
// Inference tensors have none; they are only written inside InferenceMode, by
// code that would also rebuild the model.
int64_t VersionOf(const torch::Tensor& t) {
  return t.is_inference() ? 0 : static_cast<int64_t>(t._version());
}

void Refresh(LlamaDecodeState::Quantized& qz, const torch::Tensor& weight) {
  const int64_t version = VersionOf(weight);
  if (qz.data == weight.data_ptr() && qz.version == version) return;
  torch::Tensor w = weight.contiguous();
  qz.m = decode::Int8Matrix::Quantize(w.data_ptr<float>(), w.size(0), w.size(1));
  qz.data = weight.data_ptr();
  qz.version = version;
}

// Brings every int8 copy up to date with its fp32 weight (7 per layer, then the head).
void RefreshInt8(LlamaDecodeState& s, LlamaModelImpl& model, const torch::Tensor& head) {
  const auto num_layers = static_cast<int64_t>(model.layers->size());
  s.projections.resize(static_cast<size_t>(7 * num_layers));
  for (int64_t l = 0; l < num_layers; ++l) {
    auto& layer = model.layers->at<LlamaDecoderLayerImpl>(static_cast<size_t>(l));
    LoraLinearImpl* projs[7] = {layer.self_attn->q_proj.get(), layer.self_attn->k_proj.get(),
                                layer.self_attn->v_proj.get(), layer.self_attn->o_proj.get(),
                                layer.mlp->gate_proj.get(),    layer.mlp->up_proj.get(),
                                layer.mlp->down_proj.get()};
    for (int i = 0; i < 7; ++i) Refresh(s.projections[static_cast<size_t>(7 * l + i)], projs[i]->weight());
  }
  Refresh(s.head, head);
}

void RmsNorm(const float* x, const LlamaRmsNormImpl& norm, int64_t n, float* out) {
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(x[i]) * x[i];
  const auto variance = static_cast<float>(acc / static_cast<double>(n));
  const float inv = 1.0f / std::sqrt(variance + static_cast<float>(norm.eps()));
  const float* w = norm.weight().data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

// Rotate-half RoPE of one head in place: x*cos + rotate_half(x)*sin.
void Rope(float* x, const float* cos, const float* sin, int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos[i] + (-b) * sin[i];
    x[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}

// What a projection's forward adds after x W^T: its bias and an unmerged adapter.
void FinishProjection(LoraLinearImpl& p, const float* x, float* y, LlamaDecodeState& s) {
  const torch::Tensor& bias = p.bias();
  if (bias.defined()) {
    const float* b = bias.data_ptr<float>();
    for (int64_t i = 0; i < bias.numel(); ++i) y[i] += b[i];
  }
  if (!p.has_lora() || p.merged()) return;
  torch::Tensor a = p.lora_A().contiguous(), b = p.lora_B().contiguous();
  const int64_t rank = a.size(0);
  s.lora_tmp.resize(static_cast<size_t>(rank));
  decode::MatvecRowsF32(a.data_ptr<float>(), a.size(1), x, s.lora_tmp.data(), 0, rank);
  const auto scaling = static_cast<float>(p.scaling());
  for (float& t : s.lora_tmp) t *= scaling;
  // y += B t, row by row (B is [out, rank]).
  const float* bp = b.data_ptr<float>();
  for (int64_t r = 0; r < b.size(0); ++r) {
    float sum = 0;
    for (int64_t j = 0; j < rank; ++j) sum += bp[r * rank + j] * s.lora_tmp[static_cast<size_t>(j)];
    y[r] += sum;
  }
}

decode::Matvec Product(LoraLinearImpl& p, const LlamaDecodeState::Quantized* qz, const float* x, float* y) {
  decode::Matvec m;
  m.rows = p.weight().size(0);
  m.cols = p.weight().size(1);
  if (qz != nullptr) {
    m.q = &qz->m;
  } else {
    m.w = p.weight().data_ptr<float>();
  }
  m.x = x;
  m.y = y;
  return m;
}

// `Product` over the rows of a decode step of `batch` sequences (x_b, y_b `stride` apart).
decode::Matvec BatchProduct(LoraLinearImpl& p, const LlamaDecodeState::Quantized* qz, const float* x,
                            int64_t x_stride, float* y, int64_t y_stride, int batch) {
  decode::Matvec m = Product(p, qz, x, y);
  m.batch = batch;
  m.x_stride = x_stride;
  m.y_stride = y_stride;
  return m;
}

}  // namespace

bool LlamaForCausalLmImpl::CanDecodeFast(const torch::Tensor& ids, const KvCache* cache) const {
  if (cache == nullptr || is_training() || torch::GradMode::is_enabled()) return false;
  if (ids.dim() != 2 || ids.size(0) != 1 || ids.size(1) != 1) return false;
  if (cache->keys.empty()) return false;
  const torch::Tensor& k = cache->keys[0];
  return k.size(0) == 1 && k.scalar_type() == torch::kFloat && k.is_contiguous() &&
         cache->values[0].is_contiguous() && model->embed_tokens->weight.scalar_type() == torch::kFloat;
}

torch::Tensor LlamaForCausalLmImpl::DecodeStep(int64_t token, KvCache* cache) {
  const LlamaConfig& c = config_;
  const int64_t past = cache->length;
  TORCH_CHECK(token >= 0 && token < c.vocab_size, "token id ", token, " outside the vocabulary of ",
              c.vocab_size);
  TORCH_CHECK(past + 1 <= cache->capacity, "KV cache full: ", past + 1, " > ", cache->capacity);
  TORCH_CHECK(past < model->rotary().max_positions(), "position ", past + 1,
              " beyond max_position_embeddings ", model->rotary().max_positions());
  if (!decode_) decode_ = std::make_shared<LlamaDecodeState>();
  LlamaDecodeState& s = *decode_;
  const int64_t hidden = c.hidden_size, heads = c.num_attention_heads, kv_heads = c.num_key_value_heads;
  const int64_t dim = c.head_dim, inter = c.intermediate_size, rep = heads / kv_heads;
  const int64_t cap = cache->capacity, seq = past + 1;
  auto size = [](int64_t n) { return static_cast<size_t>(n); };
  s.h.resize(size(hidden));
  s.xn.resize(size(std::max(hidden, heads * dim)));
  s.q.resize(size(heads * dim));
  s.k.resize(size(kv_heads * dim));
  s.v.resize(size(kv_heads * dim));
  s.attn.resize(size(heads * dim));
  s.o.resize(size(hidden));
  s.gate.resize(size(inter));
  s.up.resize(size(inter));
  s.scores.resize(size(heads * cap));

  const bool int8 = decode_kernel_ == DecodeKernel::kInt8;
  const auto num_layers = static_cast<int64_t>(model->layers->size());
  if (int8) RefreshInt8(s, *model, lm_head_ ? lm_head_->weight() : model->embed_tokens->weight);
  auto quantized = [&](int64_t l, int i) -> const LlamaDecodeState::Quantized* {
    return int8 ? &s.projections[size(7 * l + i)] : nullptr;
  };

  float* h = s.h.data();
  const float* embed = model->embed_tokens->weight.data_ptr<float>();
  std::copy(embed + token * hidden, embed + (token + 1) * hidden, h);
  auto [cos_t, sin_t] = model->rotary().CosSin(past, 1);
  const float* cos = cos_t.data_ptr<float>();
  const float* sin = sin_t.data_ptr<float>();
  const float inv_sqrt_d = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));

  for (int64_t l = 0; l < num_layers; ++l) {
    auto& layer = model->layers->at<LlamaDecoderLayerImpl>(static_cast<size_t>(l));
    LlamaAttentionImpl& attn = *layer.self_attn;
    // --- attention ---
    RmsNorm(h, layer.input_layernorm(), hidden, s.xn.data());
    decode::Matvec qkv[3] = {Product(*attn.q_proj, quantized(l, 0), s.xn.data(), s.q.data()),
                             Product(*attn.k_proj, quantized(l, 1), s.xn.data(), s.k.data()),
                             Product(*attn.v_proj, quantized(l, 2), s.xn.data(), s.v.data())};
    decode::RunMatvecs(qkv, 3);
    FinishProjection(*attn.q_proj, s.xn.data(), s.q.data(), s);
    FinishProjection(*attn.k_proj, s.xn.data(), s.k.data(), s);
    FinishProjection(*attn.v_proj, s.xn.data(), s.v.data(), s);
    for (int64_t hd = 0; hd < heads; ++hd) Rope(s.q.data() + hd * dim, cos, sin, dim);
    float* keys = cache->keys[size(l)].data_ptr<float>();
    float* values = cache->values[size(l)].data_ptr<float>();
    for (int64_t g = 0; g < kv_heads; ++g) {
      Rope(s.k.data() + g * dim, cos, sin, dim);
      std::copy_n(s.k.data() + g * dim, dim, keys + (g * cap + past) * dim);
      std::copy_n(s.v.data() + g * dim, dim, values + (g * cap + past) * dim);
    }
    // Query head hd reads key/value head hd / rep, positions 0..past.
    at::parallel_for(0, heads, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t hd = h0; hd < h1; ++hd) {
        const int64_t g = hd / rep;
        float* sc = s.scores.data() + hd * cap;
        decode::MatvecRowsF32(keys + g * cap * dim, dim, s.q.data() + hd * dim, sc, 0, seq);
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < seq; ++i) mx = std::max(mx, sc[i] *= inv_sqrt_d);
        float total = 0;
        for (int64_t i = 0; i < seq; ++i) total += sc[i] = std::exp(sc[i] - mx);
        float* out = s.attn.data() + hd * dim;
        std::fill_n(out, dim, 0.0f);
        const float* vg = values + g * cap * dim;
        for (int64_t i = 0; i < seq; ++i) decode::Axpy(sc[i] / total, vg + i * dim, out, dim);
      }
    });
    decode::Matvec o = Product(*attn.o_proj, quantized(l, 3), s.attn.data(), s.o.data());
    decode::RunMatvecs(&o, 1);
    FinishProjection(*attn.o_proj, s.attn.data(), s.o.data(), s);
    for (int64_t i = 0; i < hidden; ++i) h[i] += s.o[size(i)];
    // --- SwiGLU MLP ---
    LlamaMlpImpl& mlp = *layer.mlp;
    RmsNorm(h, layer.post_attention_layernorm(), hidden, s.xn.data());
    decode::Matvec gu[2] = {Product(*mlp.gate_proj, quantized(l, 4), s.xn.data(), s.gate.data()),
                            Product(*mlp.up_proj, quantized(l, 5), s.xn.data(), s.up.data())};
    decode::RunMatvecs(gu, 2);
    FinishProjection(*mlp.gate_proj, s.xn.data(), s.gate.data(), s);
    FinishProjection(*mlp.up_proj, s.xn.data(), s.up.data(), s);
    for (int64_t i = 0; i < inter; ++i) {
      const float g = s.gate[size(i)];
      s.gate[size(i)] = g / (1.0f + std::exp(-g)) * s.up[size(i)];
    }
    decode::Matvec down = Product(*mlp.down_proj, quantized(l, 6), s.gate.data(), s.o.data());
    decode::RunMatvecs(&down, 1);
    FinishProjection(*mlp.down_proj, s.gate.data(), s.o.data(), s);
    for (int64_t i = 0; i < hidden; ++i) h[i] += s.o[size(i)];
  }
  cache->length = seq;

  RmsNorm(h, model->norm(), hidden, s.xn.data());
  torch::Tensor logits = torch::empty({1, 1, c.vocab_size}, torch::kFloat);
  decode::Matvec head;
  head.rows = c.vocab_size;
  head.cols = hidden;
  head.x = s.xn.data();
  head.y = logits.data_ptr<float>();
  if (int8) {
    head.q = &s.head.m;
  } else {
    head.w = (lm_head_ ? lm_head_->weight() : model->embed_tokens->weight).data_ptr<float>();
  }
  decode::RunMatvecs(&head, 1);
  if (lm_head_) FinishProjection(*lm_head_, s.xn.data(), head.y, s);
  return logits;
}

// DecodeStepBatch: one decode step for B independent sequences (continuous
// batching). Sequence i feeds tokens[i] at position caches[i]->length of its own
// batch-1 KvCache (lengths and capacities may differ); every cache advances by one.
// Returns logits [B, V]. Row i equals the single DecodeStep of sequence i bit for
// bit (same kernels, same summation order); the projections, MLP and LM head run as
// one B-row pass that reads each weight once per step instead of B times, attention
// runs per sequence. Preconditions (c10::Error otherwise, nothing advanced): eval
// mode without gradients, B >= 1 distinct caches of the fast path's layout (batch
// 1, fp32, contiguous), tokens in the vocabulary, room in every cache. With
// DecodeKernel::kTorch it runs B libtorch steps (the reference). Not thread-safe:
// it uses the model's decode scratch, like DecodeStep.
torch::Tensor LlamaForCausalLmImpl::DecodeStepBatch(const std::vector<int64_t>& tokens,
                                                    const std::vector<KvCache*>& caches) {
  const LlamaConfig& c = config_;
  const auto batch = static_cast<int64_t>(tokens.size());
  TORCH_CHECK(batch >= 1, "DecodeStepBatch: no sequences");
  TORCH_CHECK(caches.size() == tokens.size(), "DecodeStepBatch: ", tokens.size(), " tokens for ",
              caches.size(), " caches");
  TORCH_CHECK(!is_training() && !torch::GradMode::is_enabled(),
              "DecodeStepBatch: needs eval mode without gradients (torch::InferenceMode)");
  for (int64_t i = 0; i < batch; ++i) {
    const KvCache* cache = caches[static_cast<size_t>(i)];
    const int64_t token = tokens[static_cast<size_t>(i)];
    TORCH_CHECK(cache != nullptr, "DecodeStepBatch: sequence ", i, " has no cache");
    for (int64_t j = 0; j < i; ++j) {
      TORCH_CHECK(caches[static_cast<size_t>(j)] != cache, "DecodeStepBatch: sequences ", j, " and ", i,
                  " share a cache");
    }
    TORCH_CHECK(CanDecodeFast(torch::zeros({1, 1}, torch::kLong), cache), "DecodeStepBatch: sequence ", i,
                "'s cache is not a batch-1 fp32 contiguous KvCache");
    TORCH_CHECK(token >= 0 && token < c.vocab_size, "token id ", token, " outside the vocabulary of ",
                c.vocab_size);
    TORCH_CHECK(cache->length + 1 <= cache->capacity, "KV cache of sequence ", i,
                " full: ", cache->length + 1, " > ", cache->capacity);
    TORCH_CHECK(cache->length < model->rotary().max_positions(), "position ", cache->length + 1,
                " beyond max_position_embeddings ", model->rotary().max_positions());
  }
  if (decode_kernel_ == DecodeKernel::kTorch) {
    // The reference: one libtorch step per sequence.
    std::vector<torch::Tensor> rows;
    for (int64_t i = 0; i < batch; ++i) {
      torch::Tensor id = torch::full({1, 1}, tokens[static_cast<size_t>(i)], torch::kLong);
      rows.push_back(forward(id, caches[static_cast<size_t>(i)], /*last_only=*/true).view({1, c.vocab_size}));
    }
    return torch::cat(rows, 0);
  }
  if (!decode_) decode_ = std::make_shared<LlamaDecodeState>();
  LlamaDecodeState& s = *decode_;
  LlamaDecodeState::Batch& sb = s.batch;
  const int64_t hidden = c.hidden_size, heads = c.num_attention_heads, kv_heads = c.num_key_value_heads;
  const int64_t dim = c.head_dim, inter = c.intermediate_size, rep = heads / kv_heads;
  const int64_t qdim = heads * dim, kvdim = kv_heads * dim, xdim = std::max(hidden, qdim);
  const auto nb = static_cast<int>(batch);
  int64_t max_cap = 0;
  for (const KvCache* cache : caches) max_cap = std::max(max_cap, cache->capacity);
  auto size = [](int64_t n) { return static_cast<size_t>(n); };
  sb.h.resize(size(batch * hidden));
  sb.xn.resize(size(batch * xdim));
  sb.q.resize(size(batch * qdim));
  sb.k.resize(size(batch * kvdim));
  sb.v.resize(size(batch * kvdim));
  sb.attn.resize(size(batch * qdim));
  sb.o.resize(size(batch * hidden));
  sb.gate.resize(size(batch * inter));
  sb.up.resize(size(batch * inter));
  sb.scores.resize(size(batch * heads * max_cap));

  const bool int8 = decode_kernel_ == DecodeKernel::kInt8;
  const auto num_layers = static_cast<int64_t>(model->layers->size());
  if (int8) RefreshInt8(s, *model, lm_head_ ? lm_head_->weight() : model->embed_tokens->weight);
  auto quantized = [&](int64_t l, int i) -> const LlamaDecodeState::Quantized* {
    return int8 ? &s.projections[size(7 * l + i)] : nullptr;
  };
  // Per sequence: its embedding row, and the RoPE tables of its own position.
  const float* embed = model->embed_tokens->weight.data_ptr<float>();
  std::vector<torch::Tensor> cos_t(size(batch)), sin_t(size(batch));
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t token = tokens[size(i)];
    std::copy(embed + token * hidden, embed + (token + 1) * hidden, sb.h.data() + i * hidden);
    std::tie(cos_t[size(i)], sin_t[size(i)]) = model->rotary().CosSin(caches[size(i)]->length, 1);
  }
  const float inv_sqrt_d = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
  // What FinishProjection adds (bias, unmerged adapter), row by row.
  auto finish = [&](LoraLinearImpl& p, const float* x, int64_t x_stride, float* y, int64_t y_stride) {
    for (int64_t i = 0; i < batch; ++i) FinishProjection(p, x + i * x_stride, y + i * y_stride, s);
  };

  for (int64_t l = 0; l < num_layers; ++l) {
    auto& layer = model->layers->at<LlamaDecoderLayerImpl>(static_cast<size_t>(l));
    LlamaAttentionImpl& attn = *layer.self_attn;
    // --- attention: q/k/v for all rows in one pass, then attention per sequence ---
    for (int64_t i = 0; i < batch; ++i) {
      RmsNorm(sb.h.data() + i * hidden, layer.input_layernorm(), hidden, sb.xn.data() + i * xdim);
    }
    decode::Matvec qkv[3] = {
        BatchProduct(*attn.q_proj, quantized(l, 0), sb.xn.data(), xdim, sb.q.data(), qdim, nb),
        BatchProduct(*attn.k_proj, quantized(l, 1), sb.xn.data(), xdim, sb.k.data(), kvdim, nb),
        BatchProduct(*attn.v_proj, quantized(l, 2), sb.xn.data(), xdim, sb.v.data(), kvdim, nb)};
    decode::RunMatvecs(qkv, 3);
    finish(*attn.q_proj, sb.xn.data(), xdim, sb.q.data(), qdim);
    finish(*attn.k_proj, sb.xn.data(), xdim, sb.k.data(), kvdim);
    finish(*attn.v_proj, sb.xn.data(), xdim, sb.v.data(), kvdim);
    for (int64_t i = 0; i < batch; ++i) {
      KvCache* cache = caches[size(i)];
      const float* cos = cos_t[size(i)].data_ptr<float>();
      const float* sin = sin_t[size(i)].data_ptr<float>();
      const int64_t cap = cache->capacity, past = cache->length;
      float* q = sb.q.data() + i * qdim;
      float* k = sb.k.data() + i * kvdim;
      float* v = sb.v.data() + i * kvdim;
      for (int64_t hd = 0; hd < heads; ++hd) Rope(q + hd * dim, cos, sin, dim);
      float* keys = cache->keys[size(l)].data_ptr<float>();
      float* values = cache->values[size(l)].data_ptr<float>();
      for (int64_t g = 0; g < kv_heads; ++g) {
        Rope(k + g * dim, cos, sin, dim);
        std::copy_n(k + g * dim, dim, keys + (g * cap + past) * dim);
        std::copy_n(v + g * dim, dim, values + (g * cap + past) * dim);
      }
    }
    // One task per (sequence, query head); head hd reads key/value head hd / rep,
    // positions 0..past of its own sequence.
    at::parallel_for(0, batch * heads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i = t / heads, hd = t % heads, g = hd / rep;
        const KvCache* cache = caches[size(i)];
        const int64_t cap = cache->capacity, seq = cache->length + 1;
        const float* keys = cache->keys[size(l)].data_ptr<float>();
        const float* values = cache->values[size(l)].data_ptr<float>();
        float* sc = sb.scores.data() + t * max_cap;
        decode::MatvecRowsF32(keys + g * cap * dim, dim, sb.q.data() + i * qdim + hd * dim, sc, 0, seq);
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < seq; ++j) mx = std::max(mx, sc[j] *= inv_sqrt_d);
        float total = 0;
        for (int64_t j = 0; j < seq; ++j) total += sc[j] = std::exp(sc[j] - mx);
        float* out = sb.attn.data() + i * qdim + hd * dim;
        std::fill_n(out, dim, 0.0f);
        const float* vg = values + g * cap * dim;
        for (int64_t j = 0; j < seq; ++j) decode::Axpy(sc[j] / total, vg + j * dim, out, dim);
      }
    });
    decode::Matvec o =
        BatchProduct(*attn.o_proj, quantized(l, 3), sb.attn.data(), qdim, sb.o.data(), hidden, nb);
    decode::RunMatvecs(&o, 1);
    finish(*attn.o_proj, sb.attn.data(), qdim, sb.o.data(), hidden);
    for (int64_t i = 0; i < batch * hidden; ++i) sb.h[size(i)] += sb.o[size(i)];
    // --- SwiGLU MLP ---
    LlamaMlpImpl& mlp = *layer.mlp;
    for (int64_t i = 0; i < batch; ++i) {
      RmsNorm(sb.h.data() + i * hidden, layer.post_attention_layernorm(), hidden, sb.xn.data() + i * xdim);
    }
    decode::Matvec gu[2] = {
        BatchProduct(*mlp.gate_proj, quantized(l, 4), sb.xn.data(), xdim, sb.gate.data(), inter, nb),
        BatchProduct(*mlp.up_proj, quantized(l, 5), sb.xn.data(), xdim, sb.up.data(), inter, nb)};
    decode::RunMatvecs(gu, 2);
    finish(*mlp.gate_proj, sb.xn.data(), xdim, sb.gate.data(), inter);
    finish(*mlp.up_proj, sb.xn.data(), xdim, sb.up.data(), inter);
    for (int64_t i = 0; i < batch * inter; ++i) {
      const float g = sb.gate[size(i)];
      sb.gate[size(i)] = g / (1.0f + std::exp(-g)) * sb.up[size(i)];
    }
    decode::Matvec down =
        BatchProduct(*mlp.down_proj, quantized(l, 6), sb.gate.data(), inter, sb.o.data(), hidden, nb);
    decode::RunMatvecs(&down, 1);
    finish(*mlp.down_proj, sb.gate.data(), inter, sb.o.data(), hidden);
    for (int64_t i = 0; i < batch * hidden; ++i) sb.h[size(i)] += sb.o[size(i)];
  }
  for (KvCache* cache : caches) ++cache->length;

  for (int64_t i = 0; i < batch; ++i) {
    RmsNorm(sb.h.data() + i * hidden, model->norm(), hidden, sb.xn.data() + i * xdim);
  }
  torch::Tensor logits = torch::empty({batch, c.vocab_size}, torch::kFloat);
  decode::Matvec head;
  head.rows = c.vocab_size;
  head.cols = hidden;
  head.x = sb.xn.data();
  head.y = logits.data_ptr<float>();
  head.batch = nb;
  head.x_stride = xdim;
  head.y_stride = c.vocab_size;
  if (int8) {
    head.q = &s.head.m;
  } else {
    head.w = (lm_head_ ? lm_head_->weight() : model->embed_tokens->weight).data_ptr<float>();
  }
  decode::RunMatvecs(&head, 1);
  if (lm_head_) finish(*lm_head_, sb.xn.data(), xdim, head.y, c.vocab_size);
  return logits;
}

}  // namespace fedge::agent::llm
