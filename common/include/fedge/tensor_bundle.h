// Tensor bundles: the unit fedge moves between agents and the aggregator.
//
// A bundle is an ordered list of named float32 tensors (LoRA factors, a head,
// or deltas of them). On the wire a bundle is encoded with a codec:
//   fp32, fp16, bf16         element-wise
//   int8                     blockwise symmetric: per block of `block_size`
//                            values one float32 scale, int8 codes; blocks
//                            run per tensor (never span two tensors)
// optionally zstd-compressed on top, with a SHA-256 checksum of the payload.
// The encoded form is self-describing (magic, format version, codec, names,
// dtypes, shapes); the decoder validates every field against its limits and
// rejects malformed or hostile input with a status that says what was wrong.
// Wire layout: docs/formats.md.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/status.h"

namespace fedge {

struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;  // row-major; size == product(shape)

  // product(shape) (1 for a scalar, shape {}); -1 if a dim is negative or the
  // product overflows int64.
  int64_t NumElements() const;
};

struct TensorBundle {
  std::vector<NamedTensor> tensors;

  const NamedTensor* Find(std::string_view name) const;
  NamedTensor* Find(std::string_view name);
  int64_t NumElements() const;
  // Bytes the bundle's values take as float32 (the baseline for codec ratios).
  uint64_t Fp32Bytes() const;
};

enum class Codec : uint8_t { kFp32 = 0, kFp16 = 1, kBf16 = 2, kInt8 = 3 };

// "fp32" | "fp16" | "bf16" | "int8".
StatusOr<Codec> ParseCodec(std::string_view name);
std::string_view CodecName(Codec codec);

struct EncodeOptions {
  Codec codec = Codec::kFp32;
  int block_size = 64;      // values per scale for blockwise codecs; 1..65536
  bool zstd = true;
  int zstd_level = 3;
};

struct DecodeLimits {
  uint64_t max_encoded_bytes = 1ull << 31;     // 2 GiB
  uint64_t max_total_elements = 1ull << 30;    // 4 GiB as float32
  uint32_t max_tensors = 1u << 16;
  uint32_t max_name_bytes = 1024;
  uint32_t max_rank = 8;
};

// Encodes `bundle`. Fails (INVALID_ARGUMENT) if a tensor's values do not match
// its shape, a name is empty, repeated, not UTF-8 or over 1024 bytes, the rank
// is over 8, a value is NaN/Inf, or a value does not fit the codec (fp16:
// |x| >= 65520; bf16: rounds to Inf). Per-element error bounds: fp32 exact,
// fp16 2^-11 relative, bf16 2^-8 relative, int8 scale/2 (docs/formats.md).
StatusOr<std::string> EncodeBundle(const TensorBundle& bundle, const EncodeOptions& options);

// Decodes bytes produced by EncodeBundle. Every malformed input (bad magic,
// unknown version or codec, truncation, trailing bytes, checksum mismatch,
// shape/size overflow, oversized counts, non-finite values, zstd errors) is
// rejected with DATA_LOSS or INVALID_ARGUMENT and a reason. Memory use is
// bounded by the bytes actually decoded, never by sizes the input declares.
StatusOr<TensorBundle> DecodeBundle(std::string_view bytes, const DecodeLimits& limits = {});

// Lowercase hex SHA-256 of `bytes`.
std::string Sha256Hex(std::string_view bytes);

// Checks that `other` has exactly the tensor names and shapes of `reference`
// (same order not required). The error names the first mismatch.
Status CheckSameLayout(const TensorBundle& reference, const TensorBundle& other);

}  // namespace fedge
