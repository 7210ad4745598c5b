// What the three parts of the tensor bundle share; not a public header.
//
//   tensor_bundle.cpp     the wire format: header, tensor table, limits and
//                         layout checks; EncodeBundle, DecodeBundle,
//                         InspectBundle, MaxEncodedBytes
//   tensor_codecs.cpp     the value codecs: one tensor's values <-> its data
//                         section (fp32/fp16/bf16, blockwise int8/int4 with
//                         stochastic rounding, top-k indices)
//   tensor_bundle_io.cpp  the bytes under the format: the body as a plain or
//                         zstd byte source, zstd compression, SHA-256
//
// Decoding is a single forward pass over a BodySource, so that nothing is
// allocated from a declared size before the bytes that justify it have
// arrived: a hostile header that claims 4 GiB of tensors but carries 100 bytes
// costs 100 bytes, and a zip bomb is cut off at the declared body size, itself
// capped by DecodeLimits.
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::internal {

// Sizes the checksum pass needs (the rest of the layout: tensor_bundle.cpp).
constexpr size_t kHeaderBytes = 36;
constexpr size_t kChecksumBytes = 32;     // the SHA-256 trailer (the longest)
constexpr size_t kXxh3TrailerBytes = 16;  // the XXH3-128 trailer
// Header byte 11 and its bits the checksum pass needs (ChecksumBundle reads
// the trailer's algorithm before the header is validated).
constexpr size_t kFlagsOffset = 11;
constexpr uint8_t kFlagXxh3Trailer = 0x04;  // version 2: the trailer is XXH3-128
inline size_t TrailerBytes(ChecksumAlgorithm a) {
  return a == ChecksumAlgorithm::kXxh3_128 ? kXxh3TrailerBytes : kChecksumBytes;
}

// Every bundle error says it is one: "tensor bundle: <message>".
inline Status BundleError(StatusCode code, std::string message) {
  return Status(code, "tensor bundle: " + message);
}
// Malformed input (DATA_LOSS).
inline Status Corrupt(std::string message) { return BundleError(StatusCode::kDataLoss, std::move(message)); }
// Options or declared sizes outside what is allowed (INVALID_ARGUMENT).
inline Status Invalid(std::string message) {
  return BundleError(StatusCode::kInvalidArgument, std::move(message));
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

inline float GetF32(const char* p) { return std::bit_cast<float>(GetLe<uint32_t>(p)); }

inline void StoreLe16(char* p, uint16_t v) {
  p[0] = static_cast<char>(v & 0xFF);
  p[1] = static_cast<char>(v >> 8);
}

inline void StoreF32(char* p, float f) {
  const uint32_t v = std::bit_cast<uint32_t>(f);
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(p, &v, 4);
  } else {
    for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  }
}

// ---- varints (unsigned LEB128): top-k counts in the table, index gaps ----

inline void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

inline size_t VarintLen(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

inline uint64_t CeilDiv(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

// ---- the body as a byte stream (tensor_bundle_io.cpp) ----

// Yields the body's bytes in order; Read fails rather than return fewer bytes.
class BodySource {
 public:
  virtual ~BodySource() = default;
  virtual Status Read(size_t n, char* out) = 0;
  // Called after the last expected byte: checks nothing is left over.
  virtual Status Finish() = 0;
};

// The body stored as `stored`: itself, or (zstd) a zstd frame that must
// decompress to exactly `body_size` bytes. DATA_LOSS if the frame's declared
// content size disagrees, or an uncompressed body is not body_size bytes.
StatusOr<std::unique_ptr<BodySource>> OpenBody(std::string_view stored, bool zstd, uint64_t body_size);

// One zstd frame holding `body` (its content size recorded in the frame
// header). INVALID_ARGUMENT for a level outside zstd's range.
StatusOr<std::string> CompressBody(std::string_view body, int level);

// SHA-256 through a per-thread context (thread-safe).
std::array<unsigned char, 32> Sha256(std::string_view bytes);
// XXH3-128 of `bytes` in canonical (big-endian) byte order.
std::array<unsigned char, 16> Xxh3_128(std::string_view bytes);
// The trailer of `covered` under `algorithm` (TrailerBytes(algorithm) bytes).
std::string Trailer(ChecksumAlgorithm algorithm, std::string_view covered);
// Lowercase hex of a digest.
std::string HexDigest(const std::array<unsigned char, 32>& digest);
std::string HexDigest(const std::array<unsigned char, 16>& digest);

// ---- value codecs (tensor_codecs.cpp) ----

// Bytes of a tensor's value data for `n` elements (dense data, or the kept
// values of a sparse tensor).
uint64_t DataBytes(Codec codec, uint32_t block_size, uint64_t n);

// Stochastic rounding draws from a counter-based generator: element i of a
// tensor gets a uniform that depends only on (seed, tensor position, i), so
// the bytes do not depend on iteration order or threads.
struct Rounding {
  bool stochastic = false;
  uint64_t stream = 0;  // SplitMix64 of seed and tensor position

  static Rounding ForTensor(bool stochastic, uint64_t seed, size_t tensor_position);
  // Uniform in [0, 1), 53 bits.
  double Uniform(uint64_t i) const;
};

// Writes the value data of v[0, n) (DataBytes(codec, block_size, n) bytes) at
// dst. Values are already known to be finite. `index_map` (may be null) maps
// positions to the tensor's element indices for error messages (top-k).
// INVALID_ARGUMENT, naming the tensor and element, for a value the codec
// cannot represent.
Status EncodeValues(Codec codec, uint32_t block_size, const std::string& name, const float* v, size_t n,
                    const uint64_t* index_map, const Rounding& rounding, char* dst);

// A tensor's top-k entries as a top-k bundle carries them.
struct TopKSelection {
  // Element indices (ascending) of the k = ceil(fraction * n) largest |v[i]|,
  // at least one for a non-empty tensor; ties go to the lower index.
  std::vector<uint64_t> indices;
  std::vector<float> kept;  // the values at `indices`
  // The index section: the first index, then the gaps, as varints.
  std::string index_bytes;
};
TopKSelection SelectTopK(const std::vector<float>& values, double fraction);

// One row of the tensor table.
struct TableEntry {
  std::string name;
  std::vector<int64_t> shape;
  uint64_t elements = 0;
  // Top-k bundles: entries carried and bytes of their index section.
  uint64_t kept = 0;
  uint64_t index_bytes = 0;
};

// Decodes `n` values of `codec` from src into *values (which it resizes as
// bytes arrive). DATA_LOSS, prefixed with `what`, for a non-finite value, an
// invalid scale or an out-of-range code.
Status DecodeValues(Codec codec, uint32_t block_size, const std::string& what, uint64_t n, BodySource* src,
                    std::vector<float>* values);

// A top-k tensor's data: `e.index_bytes` of varint index gaps, then `e.kept`
// values in the codec, expanded to e.elements dense values (zeros elsewhere)
// only after both parts have arrived and validated. The caller has checked
// e.elements <= e.kept * max_sparse_expansion, which bounds that expansion.
Status DecodeSparseValues(Codec codec, uint32_t block_size, const TableEntry& e, BodySource* src,
                          std::vector<float>* values);

}  // namespace fedge::internal
