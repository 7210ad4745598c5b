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

#include "llm_internal/llama.h"
#include "llm_internal/llama_decode.h"

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
void RowsF32Scalar(const float* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = w + r * cols;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
      for (int k = 0; k < 8; ++k) acc[k] += row[c + k] * x[c + k];
    }
    float sum = 0;
    for (; c < cols; ++c) sum += row[c] * x[c];
    for (float a : acc) sum += a;
    y[r] = sum;
  }
}

void RowsInt8Scalar(const Int8Matrix& m, const float* x, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* row = m.q.data() + r * m.cols;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t c = 0;
    for (; c + 8 <= m.cols; c += 8) {
      for (int k = 0; k < 8; ++k) acc[k] += static_cast<float>(row[c + k]) * x[c + k];
    }
    float sum = 0;
    for (; c < m.cols; ++c) sum += static_cast<float>(row[c]) * x[c];
    for (float a : acc) sum += a;
    y[r] = m.scale[static_cast<size_t>(r)] * sum;
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
    float s0 = Hsum256(a0), s1 = Hsum256(a1), s2 = Hsum256(a2), s3 = Hsum256(a3);
    for (int64_t c = body; c < cols; ++c) {
      s0 += w0[c] * x[c], s1 += w1[c] * x[c], s2 += w2[c] * x[c], s3 += w3[c] * x[c];
    }
    y[r] = s0, y[r + 1] = s1, y[r + 2] = s2, y[r + 3] = s3;
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
      for (int64_t c = body; c < cols; ++c) s[k] += static_cast<float>(rows[k][c]) * x[c];
      y[r + k] = m.scale[static_cast<size_t>(r + k)] * s[k];
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
      for (int64_t c = body; c < cols; ++c) s[k] += static_cast<float>(rows[k][c]) * x[c];
      y[r + k] = m.scale[static_cast<size_t>(r + k)] * s[k];
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
    blocks[i] = (products[i].rows + kRowBlock - 1) / kRowBlock;
    total += blocks[i];
    weights += products[i].rows * products[i].cols;
  }
  // int8 x int8 products: each distinct x quantized once, before the threads start.
  const QuantizedX* qx[8] = {};
  static thread_local QuantizedX quantized[8];
  if (ActiveIsa() == Isa::kAvx512Vnni) {
    for (int i = 0; i < count; ++i) {
      const Matvec& p = products[i];
      if (p.q == nullptr || p.cols % 64 != 0) continue;
      for (int j = 0; j < i && qx[i] == nullptr; ++j) {
        if (qx[j] != nullptr && products[j].x == p.x && products[j].cols == p.cols) qx[i] = qx[j];
      }
      if (qx[i] == nullptr) {
        QuantizeX(p.x, p.cols, &quantized[i]);
        qx[i] = &quantized[i];
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
        if (qx[i] != nullptr) {
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
  if (int8) {
    s.projections.resize(size(7 * num_layers));
    for (int64_t l = 0; l < num_layers; ++l) {
      auto& layer = model->layers->at<LlamaDecoderLayerImpl>(static_cast<size_t>(l));
      LoraLinearImpl* projs[7] = {layer.self_attn->q_proj.get(), layer.self_attn->k_proj.get(),
                                  layer.self_attn->v_proj.get(), layer.self_attn->o_proj.get(),
                                  layer.mlp->gate_proj.get(),    layer.mlp->up_proj.get(),
                                  layer.mlp->down_proj.get()};
      for (int i = 0; i < 7; ++i) Refresh(s.projections[size(7 * l + i)], projs[i]->weight());
    }
    Refresh(s.head, lm_head_ ? lm_head_->weight() : model->embed_tokens->weight);
  }
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

}  // namespace fedge::agent::llm
