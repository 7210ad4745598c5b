// Tensor bundle codecs and the self-describing wire format (docs/formats.md).
//
// Decoding is a single forward pass over a byte source (the stored body, or a
// zstd stream over it) so that nothing is allocated from a declared size before
// the bytes that justify it have arrived: a hostile header that claims 4 GiB
// of tensors but carries 100 bytes costs 100 bytes, and a zip bomb is cut off
// at the declared body size, itself capped by DecodeLimits.
#include "fedge/tensor_bundle.h"

#include <openssl/evp.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <unordered_map>
#include <unordered_set>

#include "fedge/quant_kernels.h"
#include "float16.h"

namespace fedge {
namespace {

using internal::Bf16ToFloat;
using internal::FloatToBf16;
using internal::FloatToHalf;
using internal::HalfToFloat;

constexpr char kMagic[8] = {'F', 'E', 'D', 'G', 'E', 'B', 'N', '1'};
constexpr uint16_t kFormatVersion = 1;    // dense fp32, fp16, bf16, int8
constexpr uint16_t kFormatVersionV2 = 2;  // adds int4 and top-k (sparse)
constexpr size_t kHeaderBytes = 36;
constexpr size_t kChecksumBytes = 32;
constexpr uint8_t kFlagZstd = 0x01;
constexpr uint8_t kFlagSparse = 0x02;  // version 2
constexpr uint8_t kDtypeFloat32 = 0;
constexpr int kMaxBlockSize = 65536;
// Elements decoded per step: bounds scratch memory and keeps allocation
// proportional to bytes actually received.
constexpr size_t kDecodeChunkElements = 1 << 16;

Status BundleError(StatusCode code, std::string message) { return Status(code, "tensor bundle: " + message); }
Status Corrupt(std::string message) { return BundleError(StatusCode::kDataLoss, std::move(message)); }
Status Invalid(std::string message) { return BundleError(StatusCode::kInvalidArgument, std::move(message)); }
Status Mismatch(std::string message) {
  return BundleError(StatusCode::kFailedPrecondition, "layout mismatch: " + std::move(message));
}

// ---- little-endian scalars ----

template <typename T>
void PutLe(std::string* out, T value) {
  static_assert(std::is_integral_v<T>);
  for (size_t i = 0; i < sizeof(T); ++i) {
    out->push_back(static_cast<char>((static_cast<std::make_unsigned_t<T>>(value) >> (8 * i)) & 0xFF));
  }
}

template <typename T>
T GetLe(const char* p) {
  static_assert(std::is_integral_v<T>);
  std::make_unsigned_t<T> v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) {
    v |= static_cast<std::make_unsigned_t<T>>(static_cast<uint8_t>(p[i])) << (8 * i);
  }
  return static_cast<T>(v);
}

float GetF32(const char* p) { return std::bit_cast<float>(GetLe<uint32_t>(p)); }

// ---- shapes ----

bool CheckedElements(const std::vector<int64_t>& shape, int64_t* out) {
  int64_t n = 1;
  bool zero = false;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d == 0) zero = true;
  }
  if (zero) {
    *out = 0;
    return true;
  }
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) return false;
  }
  *out = n;
  return true;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Reject overlong forms, surrogates and code points past U+10FFFF.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
      return false;
    }
    i += len;
  }
  return true;
}

// Why a name is unacceptable, or empty if it is fine.
std::string NameProblem(std::string_view name, uint32_t max_bytes) {
  if (name.empty()) return "empty tensor name";
  if (name.size() > max_bytes) {
    return "tensor name of " + std::to_string(name.size()) + " bytes exceeds the limit of " +
           std::to_string(max_bytes);
  }
  if (name.find('\0') != std::string_view::npos) return "tensor name contains a NUL byte";
  if (!IsValidUtf8(name)) return "tensor name is not valid UTF-8";
  return {};
}

uint64_t CeilDiv(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

// Largest code magnitude of a blockwise codec: codes are in [-qmax, qmax].
int CodeMax(Codec codec) { return codec == Codec::kInt4 ? 7 : 127; }

// Bytes of a tensor's value data for `n` elements (dense data, or the kept
// values of a sparse tensor).
uint64_t DataBytes(Codec codec, uint32_t block_size, uint64_t n) {
  switch (codec) {
    case Codec::kFp32:
      return 4 * n;
    case Codec::kFp16:
    case Codec::kBf16:
      return 2 * n;
    case Codec::kInt8:
      return n + 4 * CeilDiv(n, block_size);
    case Codec::kInt4:
      return CeilDiv(n, 2) + 4 * CeilDiv(n, block_size);
  }
  return 0;
}

// ---- varints (unsigned LEB128) ----

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

size_t VarintLen(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// ---- encoding ----

void StoreLe16(char* p, uint16_t v) {
  p[0] = static_cast<char>(v & 0xFF);
  p[1] = static_cast<char>(v >> 8);
}
void StoreF32(char* p, float f) {
  const uint32_t v = std::bit_cast<uint32_t>(f);
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(p, &v, 4);
  } else {
    for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  }
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Stochastic rounding draws from a counter-based generator: element i of a
// tensor gets a uniform that depends only on (seed, tensor position, i), so
// the bytes do not depend on iteration order or threads.
struct Rounding {
  bool stochastic = false;
  uint64_t stream = 0;  // SplitMix64 of seed and tensor position

  // Uniform in [0, 1), 53 bits.
  double Uniform(uint64_t i) const {
    return static_cast<double>(SplitMix64(stream + i * 0xD1B54A32D192ED03ull) >> 11) * 0x1.0p-53;
  }
};

// Blockwise symmetric quantization of v[0, n): per block of `block_size`
// values one scale = max|x| / qmax, written as float32 at `scales`; codes in
// [-qmax, qmax] are handed to put(i, code).
template <typename Put>
Status QuantizeBlocks(Codec codec, const std::string& name, const float* v, size_t n, uint32_t block_size,
                      const Rounding& rounding, char* scales, Put&& put) {
  const int qmax = CodeMax(codec);
  const float fqmax = static_cast<float>(qmax);
  const size_t blocks = CeilDiv(n, block_size);
  for (size_t b = 0; b < blocks; ++b) {
    const size_t begin = b * block_size, end = std::min(n, begin + block_size);
    float amax = 0.0f;
    for (size_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(v[i]));
    const float scale = amax / fqmax;
    if (!std::isfinite(scale * fqmax)) {
      return Invalid("tensor \"" + name + "\" has values too large for the " + std::string(CodecName(codec)) +
                     " codec; use fp32");
    }
    StoreF32(scales + 4 * b, scale);
    if (scale == 0.0f) {
      for (size_t i = begin; i < end; ++i) put(i, 0);
      continue;
    }
    if (!rounding.stochastic) {
      // Divide rather than multiply by a reciprocal: the rounding of x/scale is
      // what the documented error bound (scale/2) is stated for.
      for (size_t i = begin; i < end; ++i) {
        put(i, static_cast<int>(std::clamp(std::nearbyint(v[i] / scale), -fqmax, fqmax)));
      }
    } else {
      // floor(y + u), u ~ U[0,1): rounds up with probability frac(y), so
      // E[code] = y exactly while |y| <= qmax (which scale guarantees).
      const double dscale = scale;
      for (size_t i = begin; i < end; ++i) {
        const double y = static_cast<double>(v[i]) / dscale;
        const double q = std::clamp(std::floor(y + rounding.Uniform(i)), -static_cast<double>(qmax),
                                    static_cast<double>(qmax));
        put(i, static_cast<int>(q));
      }
    }
  }
  return OkStatus();
}

// Writes the value data of v[0, n) (DataBytes(codec, block_size, n) bytes) at
// dst. Values are already known to be finite. `index_map` (may be null) maps
// positions to the tensor's element indices for error messages (top-k).
Status EncodeValues(Codec codec, uint32_t block_size, const std::string& name, const float* v, size_t n,
                    const uint64_t* index_map, const Rounding& rounding, char* dst) {
  auto element = [&](size_t i) {
    return "tensor \"" + name + "\" element " + std::to_string(index_map ? index_map[i] : i);
  };
  switch (codec) {
    case Codec::kFp32:
      if constexpr (std::endian::native == std::endian::little) {
        if (n != 0) std::memcpy(dst, v, 4 * n);
      } else {
        for (size_t i = 0; i < n; ++i) StoreF32(dst + 4 * i, v[i]);
      }
      return OkStatus();
    case Codec::kFp16:
      for (size_t i = 0; i < n; ++i) {
        if (std::fabs(v[i]) >= 65520.0f) {
          return Invalid(element(i) + " = " + std::to_string(v[i]) +
                         " is outside the fp16 range (|x| < 65520); use bf16 or fp32");
        }
        StoreLe16(dst + 2 * i, FloatToHalf(v[i]));
      }
      return OkStatus();
    case Codec::kBf16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t b = FloatToBf16(v[i]);
        if ((b & 0x7F80u) == 0x7F80u) return Invalid(element(i) + " rounds to infinity in bf16; use fp32");
        StoreLe16(dst + 2 * i, b);
      }
      return OkStatus();
    case Codec::kInt8: {
      char* codes = dst + 4 * CeilDiv(n, block_size);
      return QuantizeBlocks(codec, name, v, n, block_size, rounding, dst, [codes](size_t i, int q) {
        codes[i] = static_cast<char>(static_cast<int8_t>(q));
      });
    }
    case Codec::kInt4: {
      // Two codes per byte, element 2j in the low nibble, 2j+1 in the high
      // nibble, 4-bit two's complement; an odd count leaves a zero high nibble.
      auto* codes = reinterpret_cast<unsigned char*>(dst + 4 * CeilDiv(n, block_size));
      std::memset(codes, 0, CeilDiv(n, 2));
      return QuantizeBlocks(codec, name, v, n, block_size, rounding, dst, [codes](size_t i, int q) {
        codes[i >> 1] =
            static_cast<unsigned char>(codes[i >> 1] | ((static_cast<unsigned>(q) & 0xFu) << (4 * (i & 1))));
      });
    }
  }
  return Invalid("unknown codec");
}

// Element indices (ascending) of the k = ceil(fraction * n) largest |v[i]|,
// at least one for a non-empty tensor; ties go to the lower index so the
// choice is deterministic.
std::vector<uint64_t> TopKIndices(const std::vector<float>& v, double fraction) {
  const size_t n = v.size();
  if (n == 0) return {};
  const auto want = static_cast<size_t>(std::ceil(fraction * static_cast<double>(n)));
  const size_t k = std::clamp<size_t>(want, 1, n);
  std::vector<uint64_t> idx(n);
  for (size_t i = 0; i < n; ++i) idx[i] = i;
  if (k < n) {
    std::nth_element(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                     [&v](uint64_t a, uint64_t b) {
                       const float fa = std::fabs(v[a]), fb = std::fabs(v[b]);
                       return fa > fb || (fa == fb && a < b);
                     });
    idx.resize(k);
    std::sort(idx.begin(), idx.end());
  }
  return idx;
}

// ---- decoding sources ----

// Yields the body's bytes in order; Read fails rather than return fewer bytes.
class BodySource {
 public:
  virtual ~BodySource() = default;
  virtual Status Read(size_t n, char* out) = 0;
  // Called after the last expected byte: checks nothing is left over.
  virtual Status Finish() = 0;
};

class PlainSource : public BodySource {
 public:
  explicit PlainSource(std::string_view data) : data_(data) {}
  Status Read(size_t n, char* out) override {
    if (n > data_.size() - pos_) {
      return Corrupt("truncated body: needs " + std::to_string(n) + " more bytes at offset " +
                     std::to_string(pos_) + " of " + std::to_string(data_.size()));
    }
    std::memcpy(out, data_.data() + pos_, n);
    pos_ += n;
    return OkStatus();
  }
  Status Finish() override {
    if (pos_ != data_.size()) {
      return Corrupt(std::to_string(data_.size() - pos_) + " trailing bytes after the last tensor");
    }
    return OkStatus();
  }

 private:
  std::string_view data_;
  size_t pos_ = 0;
};

class ZstdSource : public BodySource {
 public:
  ZstdSource(std::string_view frame, uint64_t body_size)
      : dctx_(ThreadDCtx()), input_{frame.data(), frame.size(), 0}, body_size_(body_size) {
    ZSTD_DCtx_reset(dctx_, ZSTD_reset_session_and_parameters);
    // The default window limit (128 MiB) already bounds decoder memory; set it
    // explicitly so a library default change cannot widen it.
    ZSTD_DCtx_setParameter(dctx_, ZSTD_d_windowLogMax, 27);
  }

  Status Read(size_t n, char* out) override {
    if (n > body_size_ - produced_) {
      return Corrupt("truncated body: needs " + std::to_string(n) + " more bytes at offset " +
                     std::to_string(produced_) + " of the declared " + std::to_string(body_size_));
    }
    ZSTD_outBuffer output{out, n, 0};
    while (output.pos < output.size) {
      if (frame_done_) {
        return Corrupt("decompressed size mismatch: zstd frame ended after " +
                       std::to_string(produced_ + output.pos) + " bytes, header declares " +
                       std::to_string(body_size_));
      }
      const size_t before_in = input_.pos, before_out = output.pos;
      const size_t ret = ZSTD_decompressStream(dctx_, &output, &input_);
      if (ZSTD_isError(ret)) return Corrupt(std::string("zstd frame error: ") + ZSTD_getErrorName(ret));
      if (ret == 0) {
        frame_done_ = true;
      } else if (input_.pos == before_in && output.pos == before_out) {
        return Corrupt("zstd frame truncated after " + std::to_string(produced_ + output.pos) +
                       " decompressed bytes");
      }
    }
    produced_ += n;
    return OkStatus();
  }

  Status Finish() override {
    if (produced_ != body_size_) {
      return Corrupt("decompressed size mismatch: tensors end at " + std::to_string(produced_) +
                     " bytes, header declares " + std::to_string(body_size_));
    }
    // The frame must end exactly here: no output left, no input after it.
    char extra;
    while (!frame_done_) {
      ZSTD_outBuffer output{&extra, 1, 0};
      const size_t before_in = input_.pos;
      const size_t ret = ZSTD_decompressStream(dctx_, &output, &input_);
      if (ZSTD_isError(ret)) return Corrupt(std::string("zstd frame error: ") + ZSTD_getErrorName(ret));
      if (output.pos != 0) {
        return Corrupt("decompressed size mismatch: zstd frame holds more than the declared " +
                       std::to_string(body_size_) + " bytes");
      }
      if (ret == 0) {
        frame_done_ = true;
      } else if (input_.pos == before_in) {
        return Corrupt("zstd frame truncated (no end of frame)");
      }
    }
    if (input_.pos != input_.size) {
      return Corrupt(std::to_string(input_.size - input_.pos) + " trailing bytes after the zstd frame");
    }
    return OkStatus();
  }

 private:
  // One decompression context per thread, reset for every bundle: creating
  // one per decode (and zeroing its workspace) cost more than decompressing
  // an 83 KB update (issue 14, item 2). A thread decodes one bundle at a time.
  // A context that grew a large window (a large bundle) is freed after its
  // decode rather than kept for the thread's lifetime.
  static constexpr size_t kKeepDCtxBytes = 4u << 20;
  using DCtxPtr = std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)>;
  static DCtxPtr& ThreadSlot() {
    thread_local DCtxPtr ctx(nullptr, &ZSTD_freeDCtx);
    return ctx;
  }
  static ZSTD_DCtx* ThreadDCtx() {
    DCtxPtr& ctx = ThreadSlot();
    if (ctx == nullptr) ctx.reset(ZSTD_createDCtx());
    if (ctx == nullptr) DieBecause("ZSTD_createDCtx failed", InternalError("out of memory"));
    return ctx.get();
  }

 public:
  ~ZstdSource() override {
    if (ZSTD_sizeof_DCtx(dctx_) > kKeepDCtxBytes) ThreadSlot().reset();
  }

 private:
  ZSTD_DCtx* const dctx_;
  ZSTD_inBuffer input_;
  uint64_t body_size_;
  uint64_t produced_ = 0;
  bool frame_done_ = false;
};

// SHA-256 through one EVP context per thread and a digest fetched once
// (EVP_Digest with EVP_sha256() allocates a context and looks the
// implementation up on every call).
class Sha256Context {
 public:
  static Sha256Context& ForThread() {
    thread_local Sha256Context ctx;
    return ctx;
  }
  void Init() { Check(EVP_DigestInit_ex(ctx_.get(), Md(), nullptr), "EVP_DigestInit_ex"); }
  void Update(std::string_view bytes) {
    Check(EVP_DigestUpdate(ctx_.get(), bytes.data(), bytes.size()), "EVP_DigestUpdate");
  }
  // The digest of what was hashed so far; the context may go on hashing.
  std::array<unsigned char, 32> Peek() {
    Check(EVP_MD_CTX_copy_ex(fork_.get(), ctx_.get()), "EVP_MD_CTX_copy_ex");
    return Final(fork_.get());
  }
  std::array<unsigned char, 32> Final() { return Final(ctx_.get()); }

 private:
  Sha256Context() : ctx_(EVP_MD_CTX_new(), &EVP_MD_CTX_free), fork_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
    if (!ctx_ || !fork_) DieBecause("EVP_MD_CTX_new failed", InternalError("OpenSSL"));
  }
  static const EVP_MD* Md() {
    static const EVP_MD* md = [] {
      const EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr);
      return fetched != nullptr ? fetched : EVP_sha256();
    }();
    return md;
  }
  static void Check(int ok, const char* what) {
    if (ok != 1) DieBecause(what, InternalError("OpenSSL SHA-256"));
  }
  static std::array<unsigned char, 32> Final(EVP_MD_CTX* ctx) {
    std::array<unsigned char, 32> digest{};
    unsigned int len = 0;
    Check(EVP_DigestFinal_ex(ctx, digest.data(), &len), "EVP_DigestFinal_ex");
    if (len != digest.size()) DieBecause("SHA-256 digest length", InternalError("OpenSSL"));
    return digest;
  }

  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_, fork_;
};

std::array<unsigned char, 32> Sha256(std::string_view bytes) {
  Sha256Context& ctx = Sha256Context::ForThread();
  ctx.Init();
  ctx.Update(bytes);
  return ctx.Final();
}

std::string HexDigest(const std::array<unsigned char, 32>& digest) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(64);
  for (unsigned char c : digest) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

struct TableEntry {
  std::string name;
  std::vector<int64_t> shape;
  uint64_t elements = 0;
  // Top-k bundles: entries carried and bytes of their index section.
  uint64_t kept = 0;
  uint64_t index_bytes = 0;
};

// Decodes `n` values of `codec` from src into *values (which it resizes).
Status DecodeValues(Codec codec, uint32_t block_size, const std::string& what, uint64_t n, BodySource* src,
                    std::vector<float>* values_out) {
  std::vector<float>& values = *values_out;
  values.clear();
  std::string scratch;
  auto check_finite = [&](float f, uint64_t i) -> Status {
    if (!std::isfinite(f)) {
      return Corrupt(what + " element " + std::to_string(i) + " is not finite");
    }
    return OkStatus();
  };
  if (IsBlockwiseCodec(codec)) {
    // Scales for a tensor come first; they are few (n / block_size), but read
    // them in chunks too so a lying header cannot force a large allocation.
    const uint64_t blocks = CeilDiv(n, block_size);
    std::vector<float> scales;
    for (uint64_t done = 0; done < blocks;) {
      const size_t k = static_cast<size_t>(std::min<uint64_t>(blocks - done, kDecodeChunkElements));
      scratch.resize(4 * k);
      FEDGE_RETURN_IF_ERROR(src->Read(scratch.size(), scratch.data()));
      for (size_t i = 0; i < k; ++i) {
        const float s = GetF32(scratch.data() + 4 * i);
        if (!std::isfinite(s) || s < 0.0f) {
          return Corrupt(what + " block " + std::to_string(done + i) + " has an invalid scale (" +
                         (std::isfinite(s) ? "negative" : "non-finite") + ")");
        }
        scales.push_back(s);
      }
      done += k;
    }
    if (codec == Codec::kInt8) {
      // Steps of whole blocks (block_size <= kDecodeChunkElements), so each
      // step is one call of the vectorised kernel over its own scales.
      const uint64_t step = std::max<uint64_t>(kDecodeChunkElements / block_size, 1) * block_size;
      for (uint64_t done = 0; done < n;) {
        const size_t k = static_cast<size_t>(std::min<uint64_t>(n - done, step));
        scratch.resize(k);
        FEDGE_RETURN_IF_ERROR(src->Read(k, scratch.data()));
        values.resize(done + k);  // grows only as decoded bytes arrive
        float* out = values.data() + done;
        const auto* codes = reinterpret_cast<const int8_t*>(scratch.data());
        DequantizeInt8(codes, scales.data() + done / block_size, k, block_size, out);
        // A code of -128 is malformed; a finite scale times a code can still
        // overflow. Both are rare: find the element only when one happened.
        const bool bad = MinCode(codes, k) == -128 || !AllFinite(out, k);
        if (bad) {
          for (size_t i = 0; i < k; ++i) {
            if (static_cast<int8_t>(scratch[i]) == -128) {
              return Corrupt(what + " element " + std::to_string(done + i) +
                             " has the out-of-range int8 code -128");
            }
            FEDGE_RETURN_IF_ERROR(check_finite(out[i], done + i));
          }
        }
        done += k;
      }
      return OkStatus();
    }
    // int4: two codes per byte, low nibble first.
    const uint64_t code_bytes = CeilDiv(n, 2);
    for (uint64_t done_bytes = 0; done_bytes < code_bytes;) {
      const size_t kb =
          static_cast<size_t>(std::min<uint64_t>(code_bytes - done_bytes, kDecodeChunkElements));
      scratch.resize(kb);
      FEDGE_RETURN_IF_ERROR(src->Read(kb, scratch.data()));
      const uint64_t first = 2 * done_bytes;
      const size_t k = static_cast<size_t>(std::min<uint64_t>(n - first, 2 * uint64_t{kb}));
      values.resize(first + k);
      float* out = values.data() + first;
      auto code = [&](size_t i) {
        const unsigned nibble = (static_cast<uint8_t>(scratch[i >> 1]) >> (4 * (i & 1))) & 0xFu;
        return static_cast<int>(nibble ^ 8u) - 8;  // sign-extend 4-bit two's complement
      };
      bool bad = false;
      for (size_t i = 0; i < k; ++i) {
        const int q = code(i);
        bad |= q == -8;
        out[i] = static_cast<float>(q) * scales[(first + i) / block_size];
        bad |= !std::isfinite(out[i]);
      }
      if (bad) {
        for (size_t i = 0; i < k; ++i) {
          if (code(i) == -8) {
            return Corrupt(what + " element " + std::to_string(first + i) +
                           " has the out-of-range int4 code -8");
          }
          FEDGE_RETURN_IF_ERROR(check_finite(out[i], first + i));
        }
      }
      if (k % 2 == 1 && (static_cast<uint8_t>(scratch[kb - 1]) >> 4) != 0) {
        return Corrupt(what + " has a non-zero padding nibble after its last int4 code");
      }
      done_bytes += kb;
    }
    return OkStatus();
  }
  const size_t width = codec == Codec::kFp32 ? 4 : 2;
  for (uint64_t done = 0; done < n;) {
    const size_t k = static_cast<size_t>(std::min<uint64_t>(n - done, kDecodeChunkElements));
    scratch.resize(k * width);
    FEDGE_RETURN_IF_ERROR(src->Read(scratch.size(), scratch.data()));
    values.resize(done + k);  // grows only as decoded bytes arrive
    float* out = values.data() + done;
    const char* p = scratch.data();
    if (codec == Codec::kFp32) {
      if constexpr (std::endian::native == std::endian::little) {
        std::memcpy(out, p, 4 * k);
      } else {
        for (size_t i = 0; i < k; ++i) out[i] = GetF32(p + 4 * i);
      }
    } else if (codec == Codec::kFp16) {
      for (size_t i = 0; i < k; ++i) out[i] = HalfToFloat(GetLe<uint16_t>(p + 2 * i));
    } else {
      for (size_t i = 0; i < k; ++i) out[i] = Bf16ToFloat(GetLe<uint16_t>(p + 2 * i));
    }
    uint32_t all_exp = 0;  // any element with an all-ones exponent is Inf/NaN
    for (size_t i = 0; i < k; ++i) {
      all_exp |= ((std::bit_cast<uint32_t>(out[i]) & 0x7F800000u) == 0x7F800000u);
    }
    if (all_exp) {
      for (size_t i = 0; i < k; ++i) FEDGE_RETURN_IF_ERROR(check_finite(out[i], done + i));
    }
    done += k;
  }
  return OkStatus();
}

// A top-k tensor's data: `index_bytes` of varint index gaps, then `kept`
// values in the codec. Expands to the dense tensor only after both parts have
// arrived and validated; the table check n <= kept * max_sparse_expansion
// bounds that expansion.
Status DecodeSparseValues(Codec codec, uint32_t block_size, const TableEntry& e, BodySource* src,
                          std::vector<float>* values) {
  const std::string where = "tensor \"" + e.name + "\" ";
  // No index of an n-element tensor (nor any gap) needs more bytes than n - 1.
  const size_t max_len = VarintLen(e.elements == 0 ? 0 : e.elements - 1);
  std::vector<uint64_t> indices;
  std::string scratch;
  uint64_t acc = 0, prev = 0;
  size_t len = 0;
  for (uint64_t done = 0; done < e.index_bytes;) {
    const size_t kb = static_cast<size_t>(std::min<uint64_t>(e.index_bytes - done, kDecodeChunkElements));
    scratch.resize(kb);
    FEDGE_RETURN_IF_ERROR(src->Read(kb, scratch.data()));
    for (size_t j = 0; j < kb; ++j) {
      const auto c = static_cast<uint8_t>(scratch[j]);
      acc |= uint64_t{c & 0x7Fu} << (7 * len);
      ++len;
      if (c & 0x80) {
        if (len == max_len) {
          return Corrupt(where + "index " + std::to_string(indices.size()) +
                         " has a varint longer than the " + std::to_string(max_len) + " bytes " +
                         std::to_string(e.elements) + " elements need");
        }
        continue;
      }
      if (len > 1 && c == 0) {
        return Corrupt(where + "index " + std::to_string(indices.size()) + " is a non-canonical varint");
      }
      if (indices.size() == e.kept) {
        return Corrupt(where + "index section holds more than the " + std::to_string(e.kept) +
                       " indices the table declares");
      }
      uint64_t index = acc;
      if (!indices.empty()) {
        if (acc == 0) {
          return Corrupt(where + "indices are not strictly increasing (index " + std::to_string(prev) +
                         " repeated at position " + std::to_string(indices.size()) + ")");
        }
        index = prev + acc;  // prev < 2^63 and acc < 2^63: no overflow
      }
      if (index >= e.elements) {
        return Corrupt(where + "index " + std::to_string(index) + " at position " +
                       std::to_string(indices.size()) + " is out of range for " + std::to_string(e.elements) +
                       " elements");
      }
      indices.push_back(index);
      prev = index;
      acc = 0;
      len = 0;
    }
    done += kb;
  }
  if (len != 0) return Corrupt(where + "index section ends inside a varint");
  if (indices.size() != e.kept) {
    return Corrupt(where + "index section holds " + std::to_string(indices.size()) +
                   " indices, the table declares " + std::to_string(e.kept));
  }
  std::vector<float> kept;
  FEDGE_RETURN_IF_ERROR(DecodeValues(codec, block_size, where + "(kept values)", e.kept, src, &kept));
  values->assign(static_cast<size_t>(e.elements), 0.0f);
  for (size_t i = 0; i < indices.size(); ++i) (*values)[indices[i]] = kept[i];
  return OkStatus();
}

// Reads one unsigned LEB128 varint of the tensor table; counts its bytes.
Status ReadVarint(BodySource* src, const std::string& what, uint64_t* out, uint64_t* bytes_read) {
  uint64_t v = 0;
  for (int len = 0; len < 10; ++len) {
    char c;
    FEDGE_RETURN_IF_ERROR(src->Read(1, &c));
    const auto b = static_cast<uint8_t>(c);
    if (len == 9 && b > 1) return Corrupt(what + " overflows 64 bits");
    v |= uint64_t{b & 0x7Fu} << (7 * len);
    if (!(b & 0x80)) {
      if (len > 0 && b == 0) return Corrupt(what + " is a non-canonical varint");
      *out = v;
      *bytes_read += static_cast<uint64_t>(len) + 1;
      return OkStatus();
    }
  }
  return Corrupt(what + " is a varint longer than 10 bytes");
}

StatusOr<BundleHeader> ParseHeader(std::string_view bytes) {
  if (bytes.size() < sizeof(kMagic) || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return Invalid("bad magic: not a fedge tensor bundle (expected \"FEDGEBN1\")");
  }
  if (bytes.size() < kHeaderBytes) {
    return Corrupt("truncated header: " + std::to_string(bytes.size()) + " of " +
                   std::to_string(kHeaderBytes) + " bytes");
  }
  const char* h = bytes.data();
  BundleHeader header;
  header.version = GetLe<uint16_t>(h + 8);
  if (header.version != kFormatVersion && header.version != kFormatVersionV2) {
    return Invalid("unknown format version " + std::to_string(header.version) +
                   " (this build reads versions " + std::to_string(kFormatVersion) + " and " +
                   std::to_string(kFormatVersionV2) + ")");
  }
  const auto codec_byte = static_cast<uint8_t>(h[10]);
  if (codec_byte > static_cast<uint8_t>(Codec::kInt4))
    return Invalid("unknown codec id " + std::to_string(codec_byte));
  header.codec = static_cast<Codec>(codec_byte);
  if (header.codec == Codec::kInt4 && header.version < kFormatVersionV2) {
    return Invalid("codec int4 needs format version 2, the header says " + std::to_string(header.version));
  }
  const auto flags = static_cast<uint8_t>(h[11]);
  const uint8_t known = header.version >= kFormatVersionV2 ? (kFlagZstd | kFlagSparse) : kFlagZstd;
  if (flags & ~known) {
    return Invalid("unknown flag bits " + std::to_string(flags & ~known) + " for format version " +
                   std::to_string(header.version));
  }
  header.zstd = flags & kFlagZstd;
  header.sparse = flags & kFlagSparse;
  header.block_size = GetLe<uint32_t>(h + 12);
  if (IsBlockwiseCodec(header.codec) && (header.block_size < 1 || header.block_size > kMaxBlockSize)) {
    return Invalid(std::string(CodecName(header.codec)) + " block size " + std::to_string(header.block_size) +
                   " is outside 1.." + std::to_string(kMaxBlockSize));
  }
  if (!IsBlockwiseCodec(header.codec) && header.block_size != 0) {
    return Invalid("block size must be 0 for the element-wise codec " + std::string(CodecName(header.codec)));
  }
  header.tensor_count = GetLe<uint32_t>(h + 16);
  header.body_size = GetLe<uint64_t>(h + 20);
  header.stored_size = GetLe<uint64_t>(h + 28);
  return header;
}

}  // namespace

int64_t NamedTensor::NumElements() const {
  int64_t n;
  return CheckedElements(shape, &n) ? n : -1;
}

const NamedTensor* TensorBundle::Find(std::string_view name) const {
  for (const NamedTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

NamedTensor* TensorBundle::Find(std::string_view name) {
  for (NamedTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

int64_t TensorBundle::NumElements() const {
  int64_t total = 0;
  for (const NamedTensor& t : tensors) total += static_cast<int64_t>(t.values.size());
  return total;
}

uint64_t TensorBundle::Fp32Bytes() const { return 4 * static_cast<uint64_t>(NumElements()); }

StatusOr<Codec> ParseCodec(std::string_view name) {
  if (name == "fp32") return Codec::kFp32;
  if (name == "fp16") return Codec::kFp16;
  if (name == "bf16") return Codec::kBf16;
  if (name == "int8") return Codec::kInt8;
  if (name == "int4") return Codec::kInt4;
  return InvalidArgumentError("unknown codec \"" + std::string(name) +
                              "\"; expected one of fp32, fp16, bf16, int8, int4");
}

std::string_view CodecName(Codec codec) {
  switch (codec) {
    case Codec::kFp32:
      return "fp32";
    case Codec::kFp16:
      return "fp16";
    case Codec::kBf16:
      return "bf16";
    case Codec::kInt8:
      return "int8";
    case Codec::kInt4:
      return "int4";
  }
  return "unknown";
}

bool IsBlockwiseCodec(Codec codec) { return codec == Codec::kInt8 || codec == Codec::kInt4; }

double CompressionReport::Ratio() const {
  return encoded_bytes == 0 ? 0.0 : static_cast<double>(raw_bytes) / static_cast<double>(encoded_bytes);
}

StatusOr<std::string> EncodeBundle(const TensorBundle& bundle, const EncodeOptions& options) {
  return EncodeBundle(bundle, options, nullptr);
}

StatusOr<std::string> EncodeBundle(const TensorBundle& bundle, const EncodeOptions& options,
                                   CompressionReport* report) {
  const Codec codec = options.codec;
  if (static_cast<uint8_t>(codec) > static_cast<uint8_t>(Codec::kInt4)) return Invalid("unknown codec");
  uint32_t block_size = 0;
  if (IsBlockwiseCodec(codec)) {
    if (options.block_size < 1 || options.block_size > kMaxBlockSize) {
      return Invalid("block_size " + std::to_string(options.block_size) + " is outside 1.." +
                     std::to_string(kMaxBlockSize));
    }
    block_size = static_cast<uint32_t>(options.block_size);
  }
  if (options.stochastic_rounding && !IsBlockwiseCodec(codec)) {
    return Invalid("stochastic_rounding applies to the int8 and int4 codecs only, not " +
                   std::string(CodecName(codec)));
  }
  const double fraction = options.topk_fraction;
  if (!(fraction == 0.0 || (fraction >= kMinTopkFraction && fraction <= 1.0))) {
    return Invalid("topk_fraction " + std::to_string(fraction) + " is outside [" +
                   std::to_string(kMinTopkFraction) + ", 1]; 0 turns top-k off");
  }
  const bool sparse = fraction > 0.0;
  const DecodeLimits defaults;
  if (bundle.tensors.size() > defaults.max_tensors) {
    return Invalid(std::to_string(bundle.tensors.size()) + " tensors exceed the limit of " +
                   std::to_string(defaults.max_tensors));
  }

  // Per tensor, what its data section carries: all values, or the top-k.
  struct Plan {
    std::vector<uint64_t> indices;  // top-k only
    std::vector<float> kept;        // top-k only
    std::string index_bytes;        // top-k only
  };
  std::vector<Plan> plans(sparse ? bundle.tensors.size() : 0);
  std::string body;
  std::unordered_set<std::string_view> seen;
  uint64_t data_bytes = 0, values_sent = 0;
  for (size_t ti = 0; ti < bundle.tensors.size(); ++ti) {
    const NamedTensor& t = bundle.tensors[ti];
    if (std::string problem = NameProblem(t.name, defaults.max_name_bytes); !problem.empty()) {
      return Invalid(problem + (t.name.empty() ? "" : " (\"" + t.name.substr(0, 64) + "\")"));
    }
    if (!seen.insert(t.name).second) return Invalid("duplicate tensor name \"" + t.name + "\"");
    if (t.shape.size() > defaults.max_rank) {
      return Invalid("tensor \"" + t.name + "\" has rank " + std::to_string(t.shape.size()) +
                     ", above the limit of " + std::to_string(defaults.max_rank));
    }
    int64_t n;
    if (!CheckedElements(t.shape, &n)) {
      return Invalid("tensor \"" + t.name + "\" has an invalid shape " + ShapeString(t.shape));
    }
    if (static_cast<uint64_t>(n) != t.values.size()) {
      return Invalid("tensor \"" + t.name + "\" has " + std::to_string(t.values.size()) +
                     " values but shape " + ShapeString(t.shape) + " needs " + std::to_string(n));
    }
    for (size_t i = 0; i < t.values.size(); ++i) {
      if (!std::isfinite(t.values[i])) {
        return Invalid("tensor \"" + t.name + "\" element " + std::to_string(i) + " is not finite");
      }
    }
    PutLe<uint16_t>(&body, static_cast<uint16_t>(t.name.size()));
    body += t.name;
    body.push_back(static_cast<char>(kDtypeFloat32));
    body.push_back(static_cast<char>(t.shape.size()));
    for (int64_t d : t.shape) PutLe<uint64_t>(&body, static_cast<uint64_t>(d));
    if (!sparse) {
      data_bytes += DataBytes(codec, block_size, static_cast<uint64_t>(n));
      values_sent += static_cast<uint64_t>(n);
      continue;
    }
    Plan& plan = plans[ti];
    plan.indices = TopKIndices(t.values, fraction);
    plan.kept.reserve(plan.indices.size());
    uint64_t prev = 0;
    for (size_t j = 0; j < plan.indices.size(); ++j) {
      const uint64_t index = plan.indices[j];
      plan.kept.push_back(t.values[index]);
      PutVarint(&plan.index_bytes, j == 0 ? index : index - prev);
      prev = index;
    }
    PutVarint(&body, plan.kept.size());
    PutVarint(&body, plan.index_bytes.size());
    data_bytes += plan.index_bytes.size() + DataBytes(codec, block_size, plan.kept.size());
    values_sent += plan.kept.size();
  }
  size_t offset = body.size();
  body.resize(body.size() + data_bytes);
  for (size_t ti = 0; ti < bundle.tensors.size(); ++ti) {
    const NamedTensor& t = bundle.tensors[ti];
    Rounding rounding;
    rounding.stochastic = options.stochastic_rounding;
    rounding.stream = SplitMix64(options.seed ^ SplitMix64(ti));
    if (!sparse) {
      FEDGE_RETURN_IF_ERROR(EncodeValues(codec, block_size, t.name, t.values.data(), t.values.size(), nullptr,
                                         rounding, body.data() + offset));
      offset += DataBytes(codec, block_size, t.values.size());
      continue;
    }
    const Plan& plan = plans[ti];
    std::memcpy(body.data() + offset, plan.index_bytes.data(), plan.index_bytes.size());
    offset += plan.index_bytes.size();
    FEDGE_RETURN_IF_ERROR(EncodeValues(codec, block_size, t.name, plan.kept.data(), plan.kept.size(),
                                       plan.indices.data(), rounding, body.data() + offset));
    offset += DataBytes(codec, block_size, plan.kept.size());
  }

  std::string stored;
  if (options.zstd) {
    if (options.zstd_level < ZSTD_minCLevel() || options.zstd_level > ZSTD_maxCLevel()) {
      return Invalid("zstd_level " + std::to_string(options.zstd_level) + " is outside " +
                     std::to_string(ZSTD_minCLevel()) + ".." + std::to_string(ZSTD_maxCLevel()));
    }
    stored.resize(ZSTD_compressBound(body.size()));
    // ZSTD_compress records the content size in the frame header, which the
    // decoder cross-checks against the bundle header.
    const size_t n =
        ZSTD_compress(stored.data(), stored.size(), body.data(), body.size(), options.zstd_level);
    if (ZSTD_isError(n))
      return InternalError(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
    stored.resize(n);
  }
  const std::string& payload = options.zstd ? stored : body;

  // Version 1 whenever it can express the bundle, so version-1 readers and
  // byte-exact fixtures keep working for the codecs they know.
  const bool needs_v2 = sparse || codec == Codec::kInt4;
  std::string out;
  out.reserve(kHeaderBytes + payload.size() + kChecksumBytes);
  out.append(kMagic, sizeof(kMagic));
  PutLe<uint16_t>(&out, needs_v2 ? kFormatVersionV2 : kFormatVersion);
  out.push_back(static_cast<char>(codec));
  out.push_back(static_cast<char>((options.zstd ? kFlagZstd : 0) | (sparse ? kFlagSparse : 0)));
  PutLe<uint32_t>(&out, block_size);
  PutLe<uint32_t>(&out, static_cast<uint32_t>(bundle.tensors.size()));
  PutLe<uint64_t>(&out, body.size());
  PutLe<uint64_t>(&out, payload.size());
  out += payload;
  const auto digest = Sha256(out);
  out.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  if (report != nullptr) {
    report->raw_bytes = bundle.Fp32Bytes();
    report->encoded_bytes = out.size();
    report->values_total = static_cast<uint64_t>(bundle.NumElements());
    report->values_sent = values_sent;
  }
  return out;
}

StatusOr<BundleHeader> InspectBundle(std::string_view bytes) { return ParseHeader(bytes); }

uint64_t MaxEncodedBytes(const TensorBundle& layout) {
  auto sat_add = [](uint64_t a, uint64_t b) {
    uint64_t r;
    return __builtin_add_overflow(a, b, &r) ? std::numeric_limits<uint64_t>::max() : r;
  };
  auto sat_mul = [](uint64_t a, uint64_t b) {
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? std::numeric_limits<uint64_t>::max() : r;
  };
  uint64_t body = 0;
  for (const NamedTensor& t : layout.tensors) {
    int64_t n = 0;
    if (!CheckedElements(t.shape, &n)) return std::numeric_limits<uint64_t>::max();
    const uint64_t elems = static_cast<uint64_t>(n);
    // Table entry, plus the two varints of a top-k entry.
    body = sat_add(body, 2 + t.name.size() + 2 + 8 * t.shape.size() + 20);
    // Per value at worst: int8 code + a 4-byte scale (block size 1) + an index varint.
    body = sat_add(body, sat_mul(elems, 5 + VarintLen(elems == 0 ? 0 : elems - 1)));
  }
  // zstd's worst case (ZSTD_COMPRESSBOUND) for an incompressible body.
  const uint64_t stored = sat_add(sat_add(body, body / 256), 128 << 10);
  return sat_add(stored, kHeaderBytes + kChecksumBytes);
}

StatusOr<TensorBundle> DecodeBundle(std::string_view bytes, const DecodeLimits& limits) {
  if (bytes.size() > limits.max_encoded_bytes) {
    return Invalid("encoded size " + std::to_string(bytes.size()) + " exceeds the limit of " +
                   std::to_string(limits.max_encoded_bytes) + " bytes");
  }
  FEDGE_ASSIGN_OR_RETURN(const BundleHeader header, ParseHeader(bytes));
  const Codec codec = header.codec;
  const uint32_t block_size = header.block_size;
  const uint32_t count = header.tensor_count;
  const bool sparse = header.sparse;
  if (count > limits.max_tensors) {
    return Invalid("tensor count " + std::to_string(count) + " exceeds the limit of " +
                   std::to_string(limits.max_tensors));
  }
  std::unordered_map<std::string_view, const NamedTensor*> expected;
  if (limits.expected_layout != nullptr) {
    if (count != limits.expected_layout->tensors.size()) {
      return Mismatch(std::to_string(count) + " tensors, expected " +
                      std::to_string(limits.expected_layout->tensors.size()));
    }
    for (const NamedTensor& t : limits.expected_layout->tensors) expected.emplace(t.name, &t);
  }
  const uint64_t body_size = header.body_size;
  const uint64_t stored_size = header.stored_size;
  const uint64_t available = bytes.size() - kHeaderBytes;
  if (stored_size > available || available - stored_size < kChecksumBytes) {
    return Corrupt("truncated payload: header declares " + std::to_string(stored_size) +
                   " stored bytes plus a 32-byte checksum, " + std::to_string(available) + " present");
  }
  if (available - stored_size > kChecksumBytes) {
    return Corrupt(std::to_string(available - stored_size - kChecksumBytes) +
                   " trailing bytes after the checksum");
  }
  // Here the layout is exact: header, stored_size bytes, a 32-byte trailer.
  const std::string_view covered = bytes.substr(0, kHeaderBytes + stored_size);
  bool trailer_matches;
  if (limits.checksums != nullptr && limits.checksums->data == bytes.data() &&
      limits.checksums->size == bytes.size()) {
    trailer_matches = limits.checksums->trailer_matches;  // hashed in the caller's pass
  } else {
    const auto digest = Sha256(covered);
    trailer_matches = std::memcmp(digest.data(), bytes.data() + covered.size(), kChecksumBytes) == 0;
  }
  if (!trailer_matches) {
    return Corrupt("checksum mismatch: SHA-256 of header and payload does not match the trailer");
  }

  // Cap the body before decompressing: the largest body the limits permit
  // (saturating, since limits may be set to the maximum).
  auto sat_mul = [](uint64_t a, uint64_t b) {
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? std::numeric_limits<uint64_t>::max() : r;
  };
  auto sat_add = [](uint64_t a, uint64_t b) {
    uint64_t r;
    return __builtin_add_overflow(a, b, &r) ? std::numeric_limits<uint64_t>::max() : r;
  };
  // A top-k entry adds two varints (<= 10 bytes each) to the table.
  const uint64_t per_entry =
      2 + uint64_t{limits.max_name_bytes} + 2 + 8 * uint64_t{limits.max_rank} + (sparse ? 20 : 0);
  const uint64_t max_table = sat_mul(count, per_entry);
  const uint64_t elems = limits.max_total_elements;
  uint64_t max_data = 0;
  switch (codec) {
    case Codec::kFp32:
      max_data = sat_mul(4, elems);
      break;
    case Codec::kFp16:
    case Codec::kBf16:
      max_data = sat_mul(2, elems);
      break;
    case Codec::kInt8:
      max_data = sat_add(elems, sat_mul(4, sat_add(elems / block_size, count)));
      break;
    case Codec::kInt4:
      max_data = sat_add(sat_add(elems / 2, count), sat_mul(4, sat_add(elems / block_size, count)));
      break;
  }
  if (sparse) max_data = sat_add(max_data, sat_mul(10, elems));  // index varints
  const uint64_t max_body = sat_add(max_table, max_data);
  if (body_size > max_body) {
    return Invalid("declared body size " + std::to_string(body_size) + " exceeds what the limits allow (" +
                   std::to_string(max_body) + " bytes)");
  }
  const std::string_view stored = bytes.substr(kHeaderBytes, stored_size);
  std::unique_ptr<BodySource> src;
  if (header.zstd) {
    const unsigned long long frame_size = ZSTD_getFrameContentSize(stored.data(), stored.size());
    if (frame_size == ZSTD_CONTENTSIZE_ERROR) return Corrupt("zstd frame error: payload is not a zstd frame");
    if (frame_size != ZSTD_CONTENTSIZE_UNKNOWN && frame_size != body_size) {
      return Corrupt("decompressed size mismatch: zstd frame declares " + std::to_string(frame_size) +
                     " bytes, header declares " + std::to_string(body_size));
    }
    src = std::make_unique<ZstdSource>(stored, body_size);
  } else {
    if (body_size != stored_size) {
      return Corrupt("body size " + std::to_string(body_size) + " != stored size " +
                     std::to_string(stored_size) + " in an uncompressed bundle");
    }
    src = std::make_unique<PlainSource>(stored);
  }

  // Tensor table.
  std::vector<TableEntry> table;
  std::unordered_set<std::string> seen;
  uint64_t table_bytes = 0, total_elements = 0, data_bytes = 0;
  for (uint32_t i = 0; i < count; ++i) {
    const std::string where = "tensor #" + std::to_string(i);
    char buf[8];
    FEDGE_RETURN_IF_ERROR(src->Read(2, buf));
    const auto name_len = GetLe<uint16_t>(buf);
    if (name_len == 0) return Invalid(where + ": empty tensor name");
    if (name_len > limits.max_name_bytes) {
      return Invalid(where + ": tensor name of " + std::to_string(name_len) + " bytes exceeds the limit of " +
                     std::to_string(limits.max_name_bytes));
    }
    TableEntry e;
    e.name.resize(name_len);
    FEDGE_RETURN_IF_ERROR(src->Read(name_len, e.name.data()));
    if (std::string problem = NameProblem(e.name, limits.max_name_bytes); !problem.empty()) {
      return Invalid(where + ": " + problem);
    }
    if (!seen.insert(e.name).second) return Invalid("duplicate tensor name \"" + e.name + "\"");
    const NamedTensor* want = nullptr;
    if (limits.expected_layout != nullptr) {
      auto it = expected.find(e.name);
      if (it == expected.end()) return Mismatch("unexpected tensor \"" + e.name + "\"");
      want = it->second;
    }
    FEDGE_RETURN_IF_ERROR(src->Read(2, buf));
    if (static_cast<uint8_t>(buf[0]) != kDtypeFloat32) {
      return Invalid("tensor \"" + e.name + "\" has unknown dtype id " +
                     std::to_string(static_cast<uint8_t>(buf[0])));
    }
    const auto rank = static_cast<uint8_t>(buf[1]);
    if (rank > limits.max_rank) {
      return Invalid("tensor \"" + e.name + "\" has rank " + std::to_string(rank) + ", above the limit of " +
                     std::to_string(limits.max_rank));
    }
    for (uint8_t d = 0; d < rank; ++d) {
      FEDGE_RETURN_IF_ERROR(src->Read(8, buf));
      const auto dim = GetLe<uint64_t>(buf);
      if (dim > limits.max_total_elements || dim > uint64_t{std::numeric_limits<int64_t>::max()}) {
        return Invalid("tensor \"" + e.name + "\" dimension " + std::to_string(d) + " = " +
                       std::to_string(dim) + " exceeds the element limit of " +
                       std::to_string(limits.max_total_elements));
      }
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    if (want != nullptr && e.shape != want->shape) {
      return Mismatch("tensor \"" + e.name + "\" has shape " + ShapeString(e.shape) + ", expected " +
                      ShapeString(want->shape));
    }
    int64_t exact;
    if (!CheckedElements(e.shape, &exact)) {
      return Invalid("tensor \"" + e.name + "\" shape " + ShapeString(e.shape) +
                     " overflows the element count");
    }
    const auto n = static_cast<uint64_t>(exact);
    if (n > limits.max_total_elements - total_elements) {
      return Invalid("total element count exceeds the limit of " + std::to_string(limits.max_total_elements) +
                     " at tensor \"" + e.name + "\"");
    }
    total_elements += n;
    e.elements = n;
    table_bytes += 2 + name_len + 2 + 8 * uint64_t{rank};
    if (!sparse) {
      data_bytes += DataBytes(codec, block_size, n);
      table.push_back(std::move(e));
      continue;
    }
    const std::string what = "tensor \"" + e.name + "\"";
    FEDGE_RETURN_IF_ERROR(ReadVarint(src.get(), what + " kept count", &e.kept, &table_bytes));
    FEDGE_RETURN_IF_ERROR(ReadVarint(src.get(), what + " index section size", &e.index_bytes, &table_bytes));
    if (e.kept > n) {
      return Corrupt(what + " keeps " + std::to_string(e.kept) + " entries but has only " +
                     std::to_string(n) + " elements");
    }
    // n <= kept * expansion, written to avoid overflow (n < 2^63).
    const uint64_t expansion = std::max<uint64_t>(limits.max_sparse_expansion, 1);
    if (CeilDiv(n, expansion) > e.kept) {
      return Invalid(what + " keeps " + std::to_string(e.kept) + " of " + std::to_string(n) +
                     " entries, fewer than 1 in " + std::to_string(expansion) + " (max_sparse_expansion)");
    }
    // Each index varint takes 1..VarintLen(n - 1) bytes.
    const uint64_t max_len = VarintLen(n == 0 ? 0 : n - 1);
    if (e.index_bytes < e.kept || e.index_bytes > e.kept * max_len) {
      return Corrupt(what + " index section of " + std::to_string(e.index_bytes) + " bytes cannot hold " +
                     std::to_string(e.kept) + " indices below " + std::to_string(n));
    }
    data_bytes += e.index_bytes + DataBytes(codec, block_size, e.kept);
    table.push_back(std::move(e));
  }
  if (table_bytes + data_bytes != body_size) {
    return Corrupt("body size mismatch: header declares " + std::to_string(body_size) +
                   " bytes, the tensor table implies " + std::to_string(table_bytes + data_bytes));
  }

  TensorBundle bundle;
  bundle.tensors.reserve(table.size());
  for (TableEntry& e : table) {
    NamedTensor t;
    t.name = e.name;
    t.shape = e.shape;
    if (sparse) {
      FEDGE_RETURN_IF_ERROR(DecodeSparseValues(codec, block_size, e, src.get(), &t.values));
    } else {
      FEDGE_RETURN_IF_ERROR(
          DecodeValues(codec, block_size, "tensor \"" + e.name + "\"", e.elements, src.get(), &t.values));
    }
    bundle.tensors.push_back(std::move(t));
  }
  FEDGE_RETURN_IF_ERROR(src->Finish());
  return bundle;
}

std::string Sha256Hex(std::string_view bytes) { return HexDigest(Sha256(bytes)); }

BundleChecksums ChecksumBundle(std::string_view bytes) {
  BundleChecksums out;
  out.size = bytes.size();
  out.data = bytes.data();
  Sha256Context& ctx = Sha256Context::ForThread();
  ctx.Init();
  if (bytes.size() < kHeaderBytes + kChecksumBytes) {
    ctx.Update(bytes);
    out.sha256_hex = HexDigest(ctx.Final());
    return out;
  }
  const size_t covered = bytes.size() - kChecksumBytes;
  ctx.Update(bytes.substr(0, covered));
  const auto trailer = ctx.Peek();
  out.trailer_matches = std::memcmp(trailer.data(), bytes.data() + covered, kChecksumBytes) == 0;
  ctx.Update(bytes.substr(covered));
  out.sha256_hex = HexDigest(ctx.Final());
  return out;
}

Status CheckSameLayout(const TensorBundle& reference, const TensorBundle& other) {
  for (const NamedTensor& r : reference.tensors) {
    const NamedTensor* o = other.Find(r.name);
    if (o == nullptr) return InvalidArgumentError("layout mismatch: missing tensor \"" + r.name + "\"");
    if (o->shape != r.shape) {
      return InvalidArgumentError("layout mismatch: tensor \"" + r.name + "\" has shape " +
                                  ShapeString(o->shape) + ", expected " + ShapeString(r.shape));
    }
  }
  for (const NamedTensor& o : other.tensors) {
    if (reference.Find(o.name) == nullptr) {
      return InvalidArgumentError("layout mismatch: unexpected tensor \"" + o.name + "\"");
    }
  }
  if (other.tensors.size() != reference.tensors.size()) {
    return InvalidArgumentError("layout mismatch: " + std::to_string(other.tensors.size()) +
                                " tensors, expected " + std::to_string(reference.tensors.size()) +
                                " (duplicate names?)");
  }
  return OkStatus();
}

}  // namespace fedge
