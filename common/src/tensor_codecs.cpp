// The value codecs: one tensor's float32 values <-> its data section in a
// bundle body (docs/formats.md). Element-wise fp32/fp16/bf16; blockwise
// symmetric int8/int4 (one float32 scale per block, nearest or unbiased
// stochastic rounding); top-k selection with varint-gap indices. The framing
// around these sections is tensor_bundle.cpp's.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "fedge/quant_kernels.h"
#include "fedge/tensor_bundle.h"
#include "float16.h"
#include "tensor_bundle_internal.h"

namespace fedge {
namespace internal {
namespace {

// Elements decoded per step: bounds scratch memory and keeps allocation
// proportional to bytes actually received.
constexpr size_t kDecodeChunkElements = 1 << 16;

// Largest code magnitude of a blockwise codec: codes are in [-qmax, qmax].
int CodeMax(Codec codec) { return codec == Codec::kInt4 ? 7 : 127; }

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

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

Rounding Rounding::ForTensor(bool stochastic, uint64_t seed, size_t tensor_position) {
  Rounding r;
  r.stochastic = stochastic;
  r.stream = SplitMix64(seed ^ SplitMix64(tensor_position));
  return r;
}

double Rounding::Uniform(uint64_t i) const {
  return static_cast<double>(SplitMix64(stream + i * 0xD1B54A32D192ED03ull) >> 11) * 0x1.0p-53;
}

namespace {

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

}  // namespace

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

TopKSelection SelectTopK(const std::vector<float>& v, double fraction) {
  TopKSelection out;
  const size_t n = v.size();
  if (n == 0) return out;
  const auto want = static_cast<size_t>(std::ceil(fraction * static_cast<double>(n)));
  const size_t k = std::clamp<size_t>(want, 1, n);
  std::vector<uint64_t>& idx = out.indices;
  idx.resize(n);
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
  out.kept.reserve(idx.size());
  uint64_t prev = 0;
  for (size_t j = 0; j < idx.size(); ++j) {
    const uint64_t index = idx[j];
    out.kept.push_back(v[index]);
    PutVarint(&out.index_bytes, j == 0 ? index : index - prev);
    prev = index;
  }
  return out;
}

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

}  // namespace internal

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

}  // namespace fedge
