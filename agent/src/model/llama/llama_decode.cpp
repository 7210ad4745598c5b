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
//
// bf16 / fp16 weights (a model held in its checkpoint's 16-bit dtype) are read as
// they are and widened to fp32 in registers: half the bytes of fp32 per token, the
// same sums as the fp32 kernel on the widened values.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>

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
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return Isa::kAvx2;
  }
  return Isa::kScalar;
}

Isa& ActiveIsa() {
  static Isa isa = DetectIsa();
  return isa;
}

// --- Shared shape ------------------------------------------------------------------
// Every kernel computes y_i = W x_i for nb activation vectors (x_i = x + i * xs,
// y_i = y + i * ys; nb = 1 for a single product) on rows [r0, r1), R weight rows a
// pass: one vector takes R = 4 rows a pass (four independent accumulators hide the
// FMA latency), a batch R = 1 row read once for all its NB vectors, so a decode step
// of B sequences streams the weights once instead of B times. A (row, x_i) dot
// product is summed in the same order for every R and NB (by the plain C++ kernel
// for the rows past the last group of 4 where the vector kernel leaves them to it),
// so a batched step equals B single steps bit for bit.
struct XBatch {
  const float* x;
  int64_t xs;
  float* y;
  int64_t ys;
  int nb;
};

// The weights of one product: fp32, bf16 or fp16 rows, or int8 rows times one scale per row.
template <typename W>
struct Weights {
  const W* w;
  const float* scale;  // int8 only
  int64_t cols;
};

Weights<float> F32Weights(const float* w, int64_t cols) { return {w, nullptr, cols}; }
Weights<int8_t> Int8Weights(const Int8Matrix& m) { return {m.q.data(), m.scale.data(), m.cols}; }
Weights<c10::BFloat16> Bf16Weights(const uint16_t* w, int64_t cols) {
  return {reinterpret_cast<const c10::BFloat16*>(w), nullptr, cols};
}
Weights<c10::Half> F16Weights(const uint16_t* w, int64_t cols) {
  return {reinterpret_cast<const c10::Half*>(w), nullptr, cols};
}

// Row r's output from its dot product `s`: int8 rows carry their scale.
template <typename W>
inline float Scaled(const Weights<W>& m, int64_t r, float s) {
  if constexpr (std::is_same_v<W, int8_t>) {
    return m.scale[static_cast<size_t>(r)] * s;
  } else {
    return s;
  }
}

// The first row that a kernel working in groups of 4 rows leaves to the plain C++
// kernel (the vector kernels whose last columns end in a scalar tail).
constexpr int kGroup = 4;
int64_t GroupEnd(int64_t r0, int64_t r1) { return r0 + (r1 - r0) / kGroup * kGroup; }

// --- plain C++ ---------------------------------------------------------------------
template <typename W>
float DotScalar(const W* row, const float* x, int64_t cols) {
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

template <typename W>
void RowsScalar(const Weights<W>& m, const XBatch& b, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const W* row = m.w + r * m.cols;
    for (int i = 0; i < b.nb; ++i) b.y[i * b.ys + r] = Scaled(m, r, DotScalar(row, b.x + i * b.xs, m.cols));
  }
}

void AxpyScalar(float a, const float* x, float* y, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// The scalar tail of a row's dot product (columns [from, to)) added to `s`. Out of
// line, so every vector kernel that calls it compiles it the same way.
template <typename W>
__attribute__((noinline)) float Tail(const W* w, const float* x, int64_t from, int64_t to, float s) {
  for (int64_t c = from; c < to; ++c) s += static_cast<float>(w[c]) * x[c];
  return s;
}

// --- AVX2 + FMA --------------------------------------------------------------------
__attribute__((target("avx2,fma"))) float Hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx2,fma"))) inline __m256 Load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
// bf16 is the top half of an fp32: widen by a 16-bit shift.
__attribute__((target("avx2,fma"))) inline __m256 Load8(const c10::BFloat16* p) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}
__attribute__((target("avx2,fma,f16c"))) inline __m256 Load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Columns in steps of 8, the last cols % 8 by Tail; rows past the last group of 4
// by RowsScalar.
template <typename W, int R, int NB>
__attribute__((target("avx2,fma,f16c"))) void RowsAvx2(const Weights<W>& m, const XBatch& b, int64_t r0,
                                                       int64_t r1) {
  static_assert(kGroup % R == 0);
  const W* w = m.w;
  const float* x = b.x;
  float* y = b.y;
  const int64_t cols = m.cols, body = cols & ~int64_t{7}, xs = b.xs, ys = b.ys;
  const int64_t end = GroupEnd(r0, r1);
  for (int64_t r = r0; r < end; r += R) {
    const W* row = w + r * cols;
    __m256 acc[R][NB];
#pragma GCC unroll 8
    for (int k = 0; k < R; ++k) {
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) acc[k][i] = _mm256_setzero_ps();
    }
    for (int64_t c = 0; c < body; c += 8) {
      __m256 wv[R];
#pragma GCC unroll 8
      for (int k = 0; k < R; ++k) wv[k] = Load8(row + k * cols + c);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) {
        const __m256 xv = _mm256_loadu_ps(x + i * xs + c);
#pragma GCC unroll 8
        for (int k = 0; k < R; ++k) acc[k][i] = _mm256_fmadd_ps(wv[k], xv, acc[k][i]);
      }
    }
    for (int k = 0; k < R; ++k) {
      for (int i = 0; i < NB; ++i) {
        y[i * ys + r + k] =
            Scaled(m, r + k, Tail(row + k * cols, x + i * xs, body, cols, Hsum256(acc[k][i])));
      }
    }
  }
  RowsScalar(m, XBatch{x, xs, y, ys, NB}, end, r1);
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
__attribute__((target("avx512f"))) inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f"))) inline __m512 Load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
__attribute__((target("avx512f"))) inline __m512 Load16(const c10::BFloat16* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
__attribute__((target("avx512f"))) inline __m512 Load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Columns in steps of 16. fp32 rows: the last cols % 16 by masked loads, every row
// by this kernel (R = 1 past the last group). bf16 / fp16 rows: the same, but the
// last columns by Tail. int8 rows: the last columns by Tail, rows past the last
// group of 4 by RowsScalar.
template <typename W, int R, int NB>
__attribute__((target("avx512f"))) void RowsAvx512(const Weights<W>& m, const XBatch& b, int64_t r0,
                                                   int64_t r1) {
  static_assert(kGroup % R == 0);
  constexpr bool kF32 = std::is_same_v<W, float>;
  constexpr bool kInt8 = std::is_same_v<W, int8_t>;
  const W* w = m.w;
  const float* x = b.x;
  float* y = b.y;
  const int64_t cols = m.cols, body = cols & ~int64_t{15}, xs = b.xs, ys = b.ys;
  const auto tail = static_cast<__mmask16>((1u << (cols - body)) - 1u);
  const int64_t end = kInt8 ? GroupEnd(r0, r1) : r0 + (r1 - r0) / R * R;
  for (int64_t r = r0; r < end; r += R) {
    const W* row = w + r * cols;
    __m512 acc[R][NB];
#pragma GCC unroll 8
    for (int k = 0; k < R; ++k) {
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) acc[k][i] = _mm512_setzero_ps();
    }
    for (int64_t c = 0; c < body; c += 16) {
      __m512 wv[R];
      if constexpr (!kInt8) {
        // The same columns of the next R rows: a row of a decoder is a few KiB, too
        // short a stream for the hardware prefetcher to ramp up on by itself.
#pragma GCC unroll 8
        for (int k = 0; k < R; ++k)
          _mm_prefetch(reinterpret_cast<const char*>(row + (R + k) * cols + c), _MM_HINT_T0);
      }
#pragma GCC unroll 8
      for (int k = 0; k < R; ++k) wv[k] = Load16(row + k * cols + c);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) {
        const __m512 xv = _mm512_loadu_ps(x + i * xs + c);
#pragma GCC unroll 8
        for (int k = 0; k < R; ++k) acc[k][i] = _mm512_fmadd_ps(wv[k], xv, acc[k][i]);
      }
    }
    if constexpr (kF32) {
      if (tail != 0) {
        __m512 wv[R];
#pragma GCC unroll 8
        for (int k = 0; k < R; ++k) wv[k] = _mm512_maskz_loadu_ps(tail, row + k * cols + body);
#pragma GCC unroll 8
        for (int i = 0; i < NB; ++i) {
          const __m512 xv = _mm512_maskz_loadu_ps(tail, x + i * xs + body);
#pragma GCC unroll 8
          for (int k = 0; k < R; ++k) acc[k][i] = _mm512_fmadd_ps(wv[k], xv, acc[k][i]);
        }
      }
    }
    for (int k = 0; k < R; ++k) {
      for (int i = 0; i < NB; ++i) {
        const float s = _mm512_reduce_add_ps(acc[k][i]);
        y[i * ys + r + k] = kF32 ? s : Scaled(m, r + k, Tail(row + k * cols, x + i * xs, body, cols, s));
      }
    }
  }
  if constexpr (kInt8) {
    RowsScalar(m, XBatch{x, xs, y, ys, NB}, end, r1);
  } else if constexpr (R > 1) {
    RowsAvx512<W, 1, NB>(m, b, end, r1);
  }
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

// NB quantized vectors qx[i], outputs at y + i * ys; every row by this kernel (R = 1
// past the last group).
template <int R, int NB>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void RowsVnni(const Int8Matrix& m,
                                                                     const QuantizedX* qx, float* y,
                                                                     int64_t ys, int64_t r0, int64_t r1) {
  const int64_t cols = m.cols;
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i zero = _mm512_setzero_si512();
  const int64_t end = r0 + (r1 - r0) / R * R;
  for (int64_t r = r0; r < end; r += R) {
    const int8_t* row = m.q.data() + r * cols;
    __m512 acc[R][NB];
#pragma GCC unroll 8
    for (int k = 0; k < R; ++k) {
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) acc[k][i] = _mm512_setzero_ps();
    }
    for (int64_t c = 0; c < cols; c += 64) {
      __m512i wv[R];
#pragma GCC unroll 8
      for (int k = 0; k < R; ++k) wv[k] = LoadU8(row + k * cols + c, bias);
#pragma GCC unroll 8
      for (int i = 0; i < NB; ++i) {
        const __m512i xv = _mm512_loadu_si512(reinterpret_cast<const void*>(qx[i].q.data() + c));
        const __m512 sv = _mm512_loadu_ps(qx[i].lane_scale.data() + c / 4);
#pragma GCC unroll 8
        for (int k = 0; k < R; ++k) {
          acc[k][i] =
              _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wv[k], xv)), sv, acc[k][i]);
        }
      }
    }
    for (int k = 0; k < R; ++k) {
      for (int i = 0; i < NB; ++i) {
        y[i * ys + r + k] = m.scale[static_cast<size_t>(r + k)] * (_mm512_reduce_add_ps(acc[k][i]) - qx[i].k);
      }
    }
  }
  if constexpr (R > 1) RowsVnni<1, NB>(m, qx, y, ys, end, r1);
}

// --- Dispatch ----------------------------------------------------------------------
// One product on rows [r0, r1), NB of its vectors starting at x / y (and qx, the
// quantized ones, on the int8 x int8 path).
template <int NB>
void Rows(const Matvec& p, const QuantizedX* qx, const float* x, float* y, int64_t r0, int64_t r1) {
  constexpr int R = NB == 1 ? kGroup : 1;
  if (qx != nullptr) return RowsVnni<R, NB>(*p.q, qx, y, p.y_stride, r0, r1);
  const XBatch b{x, p.x_stride, y, p.y_stride, NB};
  const bool int8 = p.q != nullptr;
  switch (ActiveIsa()) {
    case Isa::kAvx512Vnni:
    case Isa::kAvx512:
      if (int8) return RowsAvx512<int8_t, R, NB>(Int8Weights(*p.q), b, r0, r1);
      if (p.bf16 != nullptr) return RowsAvx512<c10::BFloat16, R, NB>(Bf16Weights(p.bf16, p.cols), b, r0, r1);
      if (p.f16 != nullptr) return RowsAvx512<c10::Half, R, NB>(F16Weights(p.f16, p.cols), b, r0, r1);
      return RowsAvx512<float, R, NB>(F32Weights(p.w, p.cols), b, r0, r1);
    case Isa::kAvx2:
      if (int8) return RowsAvx2<int8_t, R, NB>(Int8Weights(*p.q), b, r0, r1);
      if (p.bf16 != nullptr) return RowsAvx2<c10::BFloat16, R, NB>(Bf16Weights(p.bf16, p.cols), b, r0, r1);
      if (p.f16 != nullptr) return RowsAvx2<c10::Half, R, NB>(F16Weights(p.f16, p.cols), b, r0, r1);
      return RowsAvx2<float, R, NB>(F32Weights(p.w, p.cols), b, r0, r1);
    case Isa::kScalar:
      if (int8) return RowsScalar(Int8Weights(*p.q), b, r0, r1);
      if (p.bf16 != nullptr) return RowsScalar(Bf16Weights(p.bf16, p.cols), b, r0, r1);
      if (p.f16 != nullptr) return RowsScalar(F16Weights(p.f16, p.cols), b, r0, r1);
      return RowsScalar(F32Weights(p.w, p.cols), b, r0, r1);
  }
}

// Rows [r0, r1) of a product, its vectors in groups of up to 8.
void MatvecRows(const Matvec& p, const QuantizedX* qx, int64_t r0, int64_t r1) {
  for (int b0 = 0; b0 < p.batch; b0 += 8) {
    const int nb = std::min(8, p.batch - b0);
    const float* x = p.x + b0 * p.x_stride;
    float* y = p.y + b0 * p.y_stride;
    const QuantizedX* q = qx == nullptr ? nullptr : qx + b0;
    switch (nb) {
      case 1:
        Rows<1>(p, q, x, y, r0, r1);
        break;
      case 2:
        Rows<2>(p, q, x, y, r0, r1);
        break;
      case 3:
        Rows<3>(p, q, x, y, r0, r1);
        break;
      case 4:
        Rows<4>(p, q, x, y, r0, r1);
        break;
      case 5:
        Rows<5>(p, q, x, y, r0, r1);
        break;
      case 6:
        Rows<6>(p, q, x, y, r0, r1);
        break;
      case 7:
        Rows<7>(p, q, x, y, r0, r1);
        break;
      default:
        Rows<8>(p, q, x, y, r0, r1);
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
  Matvec p;
  p.w = w;
  p.cols = cols;
  Rows<1>(p, /*qx=*/nullptr, x, y, r0, r1);
}

void MatvecRowsInt8(const Int8Matrix& q, const float* x, float* y, int64_t r0, int64_t r1) {
  Matvec p;  // RunMatvecs takes the int8 x int8 path where it applies
  p.q = &q;
  p.cols = q.cols;
  Rows<1>(p, /*qx=*/nullptr, x, y, r0, r1);
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
        MatvecRows(p, qx[i], r0, r1);
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
  torch::Tensor w = weight.to(torch::kFloat).contiguous();  // a 16-bit weight widened, one matrix at a time
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
  if (norm.unit_offset()) {  // Gemma: (1 + w)
    for (int64_t i = 0; i < n; ++i) out[i] = (1.0f + w[i]) * (x[i] * inv);
    return;
  }
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

// The MLP's gate activation times up, into gate: SwiGLU, or GeGLU with torch's
// tanh-approximated GELU (Gemma).
void GatedActivation(bool gelu_tanh, float* gate, const float* up, int64_t n) {
  if (gelu_tanh) {
    constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
    constexpr float kKappa = 0.044715f;
    for (int64_t i = 0; i < n; ++i) {
      const float x = gate[i];
      gate[i] = 0.5f * x * (1.0f + std::tanh(kBeta * (x + kKappa * x * x * x))) * up[i];
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

// One query head's attention over cache slots [first, end) of key/value head
// `kv_head` (keys/values [kv_heads, slots, dim]): scores q . k times `scale`,
// softcapped when `softcap` > 0, softmax, the weighted sum of values into `out`.
// `scores` has room for end - first floats.
void AttendHead(const float* keys, const float* values, int64_t slots, int64_t dim, int64_t kv_head,
                const float* q, int64_t first, int64_t end, float scale, float softcap, float* scores,
                float* out) {
  const float* kg = keys + kv_head * slots * dim;
  const int64_t n = end - first;
  decode::MatvecRowsF32(kg + first * dim, dim, q, scores, 0, n);
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    float v = scores[i] * scale;
    if (softcap > 0) v = std::tanh(v / softcap) * softcap;
    mx = std::max(mx, scores[i] = v);
  }
  float total = 0;
  for (int64_t i = 0; i < n; ++i) total += scores[i] = std::exp(scores[i] - mx);
  std::fill_n(out, dim, 0.0f);
  const float* vg = values + (kv_head * slots + first) * dim;
  for (int64_t i = 0; i < n; ++i) decode::Axpy(scores[i] / total, vg + i * dim, out, dim);
}

// The cached slots [first, end) a query at position seq - 1 sees in `attn`'s layer,
// whose cache tensors have `slots` slots (KvCache: position p at slot p % slots).
// Once a sliding layer's ring has wrapped, its W slots are exactly the last W
// positions, in slot order; the sum over them is the same up to rounding.
struct Visible {
  int64_t first, end;
};
Visible VisibleSlots(const LlamaAttentionImpl& attn, int64_t seq, int64_t slots) {
  if (seq > slots) return {0, slots};
  const int64_t w = attn.sliding_window();
  return {w > 0 && seq > w ? seq - w : 0, seq};
}

// Gemma's embedding scale on one row.
void ScaleRow(float* h, int64_t n, float scale) {
  if (scale == 1.0f) return;
  for (int64_t i = 0; i < n; ++i) h[i] *= scale;
}

// logits -> cap * tanh(logits / cap); nothing when cap is 0.
void SoftcapLogits(float* logits, int64_t n, double cap) {
  if (!(cap > 0)) return;
  const auto c = static_cast<float>(cap);
  for (int64_t i = 0; i < n; ++i) logits[i] = std::tanh(logits[i] / c) * c;
}

// Qwen3's per-head RMSNorm of the queries and keys, in place; nothing for other models.
void NormalizeHeads(const LlamaAttentionImpl& attn, float* q, int64_t heads, float* k, int64_t kv_heads,
                    int64_t dim) {
  if (!attn.q_norm) return;
  for (int64_t hd = 0; hd < heads; ++hd) RmsNorm(q + hd * dim, *attn.q_norm, dim, q + hd * dim);
  for (int64_t g = 0; g < kv_heads; ++g) RmsNorm(k + g * dim, *attn.k_norm, dim, k + g * dim);
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

// Points a product at a frozen weight in the dtype it is held in.
void SetWeight(decode::Matvec& m, const torch::Tensor& w) {
  switch (w.scalar_type()) {
    case torch::kBFloat16:
      m.bf16 = reinterpret_cast<const uint16_t*>(w.data_ptr());
      break;
    case torch::kHalf:
      m.f16 = reinterpret_cast<const uint16_t*>(w.data_ptr());
      break;
    default:
      m.w = w.data_ptr<float>();
  }
}

// Row `row` of the embedding table, widened to fp32 into `out`.
void EmbeddingRow(const torch::Tensor& table, int64_t row, float* out) {
  const int64_t n = table.size(1);
  switch (table.scalar_type()) {
    case torch::kBFloat16: {
      const c10::BFloat16* p = table.data_ptr<c10::BFloat16>() + row * n;
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(p[i]);
      break;
    }
    case torch::kHalf: {
      const c10::Half* p = table.data_ptr<c10::Half>() + row * n;
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(p[i]);
      break;
    }
    default: {
      const float* p = table.data_ptr<float>() + row * n;
      std::copy(p, p + n, out);
    }
  }
}

bool HeldWeight(const torch::Tensor& w) {
  const auto t = w.scalar_type();
  return (t == torch::kFloat || t == torch::kBFloat16 || t == torch::kHalf) && w.is_contiguous();
}

decode::Matvec Product(LoraLinearImpl& p, const LlamaDecodeState::Quantized* qz, const float* x, float* y) {
  decode::Matvec m;
  m.rows = p.weight().size(0);
  m.cols = p.weight().size(1);
  if (qz != nullptr) {
    m.q = &qz->m;
  } else {
    SetWeight(m, p.weight());
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
         cache->values[0].is_contiguous() && HeldWeight(model->embed_tokens->weight);
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
  const int64_t seq = past + 1;
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
  s.scores.resize(size(heads * cache->capacity));

  const bool int8 = decode_kernel_ == DecodeKernel::kInt8;
  const auto num_layers = static_cast<int64_t>(model->layers->size());
  if (int8) RefreshInt8(s, *model, lm_head_ ? lm_head_->weight() : model->embed_tokens->weight);
  auto quantized = [&](int64_t l, int i) -> const LlamaDecodeState::Quantized* {
    return int8 ? &s.projections[size(7 * l + i)] : nullptr;
  };

  float* h = s.h.data();
  EmbeddingRow(model->embed_tokens->weight, token, h);
  ScaleRow(h, hidden, model->embed_scale());
  // Per layer the rotary of its kind (Gemma's sliding layers have their own base).
  std::vector<torch::Tensor> cos_t(size(num_layers)), sin_t(size(num_layers));
  for (int64_t l = 0; l < num_layers; ++l) {
    LlamaRotaryImpl& rotary = model->rotary(l);
    if (l > 0 && &rotary == &model->rotary(l - 1)) {
      cos_t[size(l)] = cos_t[size(l - 1)];
      sin_t[size(l)] = sin_t[size(l - 1)];
    } else {
      std::tie(cos_t[size(l)], sin_t[size(l)]) = rotary.CosSin(past, 1);
    }
  }

  for (int64_t l = 0; l < num_layers; ++l) {
    auto& layer = model->layers->at<LlamaDecoderLayerImpl>(static_cast<size_t>(l));
    LlamaAttentionImpl& attn = *layer.self_attn;
    const float* cos = cos_t[size(l)].data_ptr<float>();
    const float* sin = sin_t[size(l)].data_ptr<float>();
    // --- attention ---
    RmsNorm(h, layer.input_layernorm(), hidden, s.xn.data());
    decode::Matvec qkv[3] = {Product(*attn.q_proj, quantized(l, 0), s.xn.data(), s.q.data()),
                             Product(*attn.k_proj, quantized(l, 1), s.xn.data(), s.k.data()),
                             Product(*attn.v_proj, quantized(l, 2), s.xn.data(), s.v.data())};
    decode::RunMatvecs(qkv, 3);
    FinishProjection(*attn.q_proj, s.xn.data(), s.q.data(), s);
    FinishProjection(*attn.k_proj, s.xn.data(), s.k.data(), s);
    FinishProjection(*attn.v_proj, s.xn.data(), s.v.data(), s);
    NormalizeHeads(attn, s.q.data(), heads, s.k.data(), kv_heads, dim);
    for (int64_t hd = 0; hd < heads; ++hd) Rope(s.q.data() + hd * dim, cos, sin, dim);
    float* keys = cache->keys[size(l)].data_ptr<float>();
    float* values = cache->values[size(l)].data_ptr<float>();
    const int64_t slots = cache->slots(size(l)), slot = past % slots;
    for (int64_t g = 0; g < kv_heads; ++g) {
      Rope(s.k.data() + g * dim, cos, sin, dim);
      std::copy_n(s.k.data() + g * dim, dim, keys + (g * slots + slot) * dim);
      std::copy_n(s.v.data() + g * dim, dim, values + (g * slots + slot) * dim);
    }
    // Query head hd reads key/value head hd / rep, the slots it sees.
    const Visible vis = VisibleSlots(attn, seq, slots);
    const float scale = attn.scale(), softcap = static_cast<float>(attn.softcap());
    const int64_t stride = cache->capacity;
    at::parallel_for(0, heads, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t hd = h0; hd < h1; ++hd) {
        AttendHead(keys, values, slots, dim, hd / rep, s.q.data() + hd * dim, vis.first, vis.end, scale,
                   softcap, s.scores.data() + hd * stride, s.attn.data() + hd * dim);
      }
    });
    decode::Matvec o = Product(*attn.o_proj, quantized(l, 3), s.attn.data(), s.o.data());
    decode::RunMatvecs(&o, 1);
    FinishProjection(*attn.o_proj, s.attn.data(), s.o.data(), s);
    if (layer.sandwich_norms()) RmsNorm(s.o.data(), layer.post_attention_layernorm(), hidden, s.o.data());
    for (int64_t i = 0; i < hidden; ++i) h[i] += s.o[size(i)];
    // --- SwiGLU / GeGLU MLP ---
    LlamaMlpImpl& mlp = *layer.mlp;
    RmsNorm(h, layer.sandwich_norms() ? layer.pre_feedforward_layernorm() : layer.post_attention_layernorm(),
            hidden, s.xn.data());
    decode::Matvec gu[2] = {Product(*mlp.gate_proj, quantized(l, 4), s.xn.data(), s.gate.data()),
                            Product(*mlp.up_proj, quantized(l, 5), s.xn.data(), s.up.data())};
    decode::RunMatvecs(gu, 2);
    FinishProjection(*mlp.gate_proj, s.xn.data(), s.gate.data(), s);
    FinishProjection(*mlp.up_proj, s.xn.data(), s.up.data(), s);
    GatedActivation(mlp.gelu_tanh(), s.gate.data(), s.up.data(), inter);
    decode::Matvec down = Product(*mlp.down_proj, quantized(l, 6), s.gate.data(), s.o.data());
    decode::RunMatvecs(&down, 1);
    FinishProjection(*mlp.down_proj, s.gate.data(), s.o.data(), s);
    if (layer.sandwich_norms()) RmsNorm(s.o.data(), layer.post_feedforward_layernorm(), hidden, s.o.data());
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
    SetWeight(head, lm_head_ ? lm_head_->weight() : model->embed_tokens->weight);
  }
  decode::RunMatvecs(&head, 1);
  if (lm_head_) FinishProjection(*lm_head_, s.xn.data(), head.y, s);
  SoftcapLogits(head.y, c.vocab_size, c.final_logit_softcapping);
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
  // Per sequence: its embedding row, and the RoPE tables of its own position (and,
  // for Gemma's sliding layers, of their own base: index batch + i).
  std::vector<torch::Tensor> cos_t(size(2 * batch)), sin_t(size(2 * batch));
  LlamaRotaryImpl* local_rotary = nullptr;
  for (int64_t l = 0; l < num_layers; ++l) {
    if (&model->rotary(l) != &model->rotary()) local_rotary = &model->rotary(l);
  }
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t token = tokens[size(i)];
    EmbeddingRow(model->embed_tokens->weight, token, sb.h.data() + i * hidden);
    ScaleRow(sb.h.data() + i * hidden, hidden, model->embed_scale());
    std::tie(cos_t[size(i)], sin_t[size(i)]) = model->rotary().CosSin(caches[size(i)]->length, 1);
    if (local_rotary != nullptr) {
      std::tie(cos_t[size(batch + i)], sin_t[size(batch + i)]) =
          local_rotary->CosSin(caches[size(i)]->length, 1);
    }
  }
  // What FinishProjection adds (bias, unmerged adapter), row by row.
  auto finish = [&](LoraLinearImpl& p, const float* x, int64_t x_stride, float* y, int64_t y_stride) {
    for (int64_t i = 0; i < batch; ++i) FinishProjection(p, x + i * x_stride, y + i * y_stride, s);
  };

  for (int64_t l = 0; l < num_layers; ++l) {
    auto& layer = model->layers->at<LlamaDecoderLayerImpl>(static_cast<size_t>(l));
    LlamaAttentionImpl& attn = *layer.self_attn;
    const int64_t rope_row = &model->rotary(l) != &model->rotary() ? batch : 0;
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
      const float* cos = cos_t[size(rope_row + i)].data_ptr<float>();
      const float* sin = sin_t[size(rope_row + i)].data_ptr<float>();
      const int64_t slots = cache->slots(size(l)), slot = cache->length % slots;
      float* q = sb.q.data() + i * qdim;
      float* k = sb.k.data() + i * kvdim;
      float* v = sb.v.data() + i * kvdim;
      NormalizeHeads(attn, q, heads, k, kv_heads, dim);
      for (int64_t hd = 0; hd < heads; ++hd) Rope(q + hd * dim, cos, sin, dim);
      float* keys = cache->keys[size(l)].data_ptr<float>();
      float* values = cache->values[size(l)].data_ptr<float>();
      for (int64_t g = 0; g < kv_heads; ++g) {
        Rope(k + g * dim, cos, sin, dim);
        std::copy_n(k + g * dim, dim, keys + (g * slots + slot) * dim);
        std::copy_n(v + g * dim, dim, values + (g * slots + slot) * dim);
      }
    }
    // One task per (sequence, query head); head hd reads key/value head hd / rep,
    // positions first..past of its own sequence.
    const float scale = attn.scale(), softcap = static_cast<float>(attn.softcap());
    at::parallel_for(0, batch * heads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i = t / heads, hd = t % heads;
        const KvCache* cache = caches[size(i)];
        const int64_t slots = cache->slots(size(l));
        const Visible vis = VisibleSlots(attn, cache->length + 1, slots);
        AttendHead(cache->keys[size(l)].data_ptr<float>(), cache->values[size(l)].data_ptr<float>(), slots,
                   dim, hd / rep, sb.q.data() + i * qdim + hd * dim, vis.first, vis.end, scale, softcap,
                   sb.scores.data() + t * max_cap, sb.attn.data() + i * qdim + hd * dim);
      }
    });
    decode::Matvec o =
        BatchProduct(*attn.o_proj, quantized(l, 3), sb.attn.data(), qdim, sb.o.data(), hidden, nb);
    decode::RunMatvecs(&o, 1);
    finish(*attn.o_proj, sb.attn.data(), qdim, sb.o.data(), hidden);
    if (layer.sandwich_norms()) {
      for (int64_t i = 0; i < batch; ++i) {
        float* o_i = sb.o.data() + i * hidden;
        RmsNorm(o_i, layer.post_attention_layernorm(), hidden, o_i);
      }
    }
    for (int64_t i = 0; i < batch * hidden; ++i) sb.h[size(i)] += sb.o[size(i)];
    // --- SwiGLU / GeGLU MLP ---
    LlamaMlpImpl& mlp = *layer.mlp;
    LlamaRmsNormImpl& mlp_norm =
        layer.sandwich_norms() ? layer.pre_feedforward_layernorm() : layer.post_attention_layernorm();
    for (int64_t i = 0; i < batch; ++i) {
      RmsNorm(sb.h.data() + i * hidden, mlp_norm, hidden, sb.xn.data() + i * xdim);
    }
    decode::Matvec gu[2] = {
        BatchProduct(*mlp.gate_proj, quantized(l, 4), sb.xn.data(), xdim, sb.gate.data(), inter, nb),
        BatchProduct(*mlp.up_proj, quantized(l, 5), sb.xn.data(), xdim, sb.up.data(), inter, nb)};
    decode::RunMatvecs(gu, 2);
    finish(*mlp.gate_proj, sb.xn.data(), xdim, sb.gate.data(), inter);
    finish(*mlp.up_proj, sb.xn.data(), xdim, sb.up.data(), inter);
    GatedActivation(mlp.gelu_tanh(), sb.gate.data(), sb.up.data(), batch * inter);
    decode::Matvec down =
        BatchProduct(*mlp.down_proj, quantized(l, 6), sb.gate.data(), inter, sb.o.data(), hidden, nb);
    decode::RunMatvecs(&down, 1);
    finish(*mlp.down_proj, sb.gate.data(), inter, sb.o.data(), hidden);
    if (layer.sandwich_norms()) {
      for (int64_t i = 0; i < batch; ++i) {
        float* o_i = sb.o.data() + i * hidden;
        RmsNorm(o_i, layer.post_feedforward_layernorm(), hidden, o_i);
      }
    }
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
    SetWeight(head, lm_head_ ? lm_head_->weight() : model->embed_tokens->weight);
  }
  decode::RunMatvecs(&head, 1);
  if (lm_head_) finish(*lm_head_, sb.xn.data(), xdim, head.y, c.vocab_size);
  SoftcapLogits(head.y, batch * c.vocab_size, c.final_logit_softcapping);
  return logits;
}

}  // namespace fedge::agent::llm
