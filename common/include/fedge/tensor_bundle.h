// Tensor bundles: the unit fedge moves between agents and the aggregator.
//
// A bundle is an ordered list of named float32 tensors (LoRA factors, a head,
// or deltas of them). On the wire a bundle is encoded with a codec:
//   fp32, fp16, bf16         element-wise
//   int8, int4               blockwise symmetric: per block of `block_size`
//                            values one float32 scale, int8 codes (or two
//                            4-bit codes per byte); blocks run per tensor
//                            (never span two tensors); optionally with
//                            unbiased stochastic rounding
// optionally top-k sparsified (per tensor the largest-magnitude entries, as
// delta-coded indices plus values in the codec above; decoding yields dense
// tensors with zeros elsewhere), optionally zstd-compressed on top, with a
// checksum trailer of the payload: SHA-256 (32 bytes, every version), or
// XXH3-128 (16 bytes, format version 2 with the xxh3 flag; uploads of agents
// whose aggregator offers it). Both guard against accidental corruption
// (truncation, reassembly bugs, bit flips at rest); neither is a signature.
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

// Values are the wire ids; new codecs are appended.
enum class Codec : uint8_t { kFp32 = 0, kFp16 = 1, kBf16 = 2, kInt8 = 3, kInt4 = 4 };

// "fp32" | "fp16" | "bf16" | "int8" | "int4".
StatusOr<Codec> ParseCodec(std::string_view name);
std::string_view CodecName(Codec codec);
// True for the blockwise codecs (int8, int4): they use block_size and scales.
bool IsBlockwiseCodec(Codec codec);

// The checksum algorithms of a bundle's trailer and of the transport
// checksum (UpdateHeader.checksum). Values are the wire ids (the xxh3 flag of
// the bundle header, v1.ChecksumAlgorithm); new ones are appended.
//   kSha256    lowercase hex SHA-256 (64 chars); 32-byte trailer
//   kXxh3_128  lowercase hex of XXH3-128's canonical (big-endian) form
//              (32 chars); 16-byte trailer. Non-cryptographic: ~20x cheaper
//              per byte, for integrity against accidents only.
enum class ChecksumAlgorithm : uint8_t { kSha256 = 0, kXxh3_128 = 1 };
std::string_view ChecksumAlgorithmName(ChecksumAlgorithm algorithm);  // "sha256" | "xxh3-128"

// Smallest non-zero EncodeOptions::topk_fraction. It bounds how far a sparse
// tensor expands on decoding (DecodeLimits::max_sparse_expansion = 1/this).
inline constexpr double kMinTopkFraction = 1e-4;

struct EncodeOptions {
  Codec codec = Codec::kFp32;
  int block_size = 64;  // values per scale for blockwise codecs; 1..65536
  bool zstd = true;
  int zstd_level = 3;
  // Top-k sparsification. 0 = off (dense). Otherwise in [kMinTopkFraction, 1]:
  // per tensor of n elements keep the k = ceil(topk_fraction * n) entries of
  // largest magnitude (ties: lower index first), sent as delta-coded indices
  // plus k values in `codec`. Dropped entries decode as 0; pair it with
  // fedge::ErrorFeedback so they are sent later instead of lost.
  double topk_fraction = 0.0;
  // int8/int4 only (INVALID_ARGUMENT for other codecs): round x/scale down or
  // up at random, up with probability frac(x/scale), so E[decoded] = x
  // (unbiased; per-element error < scale instead of <= scale/2). The random
  // stream is a pure function of (seed, tensor position, element position):
  // the same inputs and seed give the same bytes. Use a fresh seed per round.
  bool stochastic_rounding = false;
  uint64_t seed = 0;
  // With zstd: the body is stored zstd-compressed only when that saves at
  // least this fraction of its bytes, else plain (the header's zstd flag says
  // which; every reader takes both). Blockwise int8 codes of a delta are
  // close to incompressible (about 6% saved on Gaussian deltas) while the
  // aggregator spends ~75 us of CPU per 83 KB decompressing them, once per
  // update of every agent (issue 14, item 2). 0: always zstd. In [0, 1).
  double zstd_min_saving = 0.10;
  // The trailer's checksum. kXxh3_128 writes format version 2 (readers of
  // version 1 only, and builds before the xxh3 flag, refuse it with "unknown
  // flag bits"): use it only towards a reader that offers it (agents: the
  // aggregator's JoinResponse.upload_checksum). Globals and checkpoints keep
  // SHA-256, which every agent reads.
  ChecksumAlgorithm trailer = ChecksumAlgorithm::kSha256;
};

struct BundleChecksums;

struct DecodeLimits {
  uint64_t max_encoded_bytes = 1ull << 31;   // 2 GiB
  uint64_t max_total_elements = 1ull << 30;  // 4 GiB as float32
  uint32_t max_tensors = 1u << 16;
  uint32_t max_name_bytes = 1024;
  uint32_t max_rank = 8;
  // Top-k bundles only: a sparse tensor of n elements must carry at least
  // n / max_sparse_expansion entries, so decoded memory stays within a fixed
  // factor of the bytes received. Must be >= 1.
  uint64_t max_sparse_expansion = 10000;  // = 1 / kMinTopkFraction
  // Optional: the tensors the bundle must hold (names and shapes, any order;
  // values are ignored), e.g. the global model an update is a delta of. Not
  // owned; must outlive the call. Checked in the tensor table, before any
  // value is decoded, so a bundle of another layout costs at most its
  // table; it is FAILED_PRECONDITION "layout mismatch: ...".
  const TensorBundle* expected_layout = nullptr;
  // Optional: ChecksumBundle's result for the very bytes being decoded (same
  // pointer and size, else it is ignored). DecodeBundle then takes the
  // trailer verdict from it instead of hashing the bundle a second time. Not
  // owned; must outlive the call.
  const BundleChecksums* checksums = nullptr;
};

// Both checksums an upload carries, from one pass over its bytes when the
// transport checksum and the trailer use the same algorithm.
struct BundleChecksums {
  // ChecksumHex(algorithm, bytes): what UpdateHeader.checksum declares.
  ChecksumAlgorithm algorithm = ChecksumAlgorithm::kSha256;
  std::string hex;
  // The bundle's own trailer (the last 32 bytes for SHA-256, 16 for
  // XXH3-128, as its header's xxh3 flag says) is the checksum of the bytes
  // before it. Only meaningful for a well-formed layout; DecodeBundle checks
  // the layout before it uses this.
  bool trailer_matches = false;
  // The bytes hashed (identity only, never dereferenced).
  const char* data = nullptr;
  size_t size = 0;
};

// Computes BundleChecksums for `bytes`, the transport checksum with
// `transport`: one pass when the bundle's trailer uses the same algorithm
// (the transport checksum and the trailer used to cost two SHA-256 passes per
// update, then one SHA-256 pass, 57 us at 83 KB; XXH3-128 takes a few us).
// Thread-safe.
BundleChecksums ChecksumBundle(std::string_view bytes,
                               ChecksumAlgorithm transport = ChecksumAlgorithm::kSha256);

// What an encoding saved, for metrics and logs.
struct CompressionReport {
  uint64_t raw_bytes = 0;      // the bundle as dense float32 (TensorBundle::Fp32Bytes)
  uint64_t encoded_bytes = 0;  // the whole encoding: header, body, checksum
  uint64_t values_total = 0;   // dense element count
  uint64_t values_sent = 0;    // elements carried: kept entries under top-k, else all
  // raw_bytes / encoded_bytes; 0 when nothing was encoded.
  double Ratio() const;
};

// The fixed header of an encoded bundle (docs/formats.md).
struct BundleHeader {
  uint16_t version = 0;
  Codec codec = Codec::kFp32;
  bool zstd = false;
  bool sparse = false;  // top-k layout
  ChecksumAlgorithm trailer = ChecksumAlgorithm::kSha256;
  uint32_t block_size = 0;
  uint32_t tensor_count = 0;
  uint64_t body_size = 0;
  uint64_t stored_size = 0;
};

// Encodes `bundle`. Fails (INVALID_ARGUMENT) if a tensor's values do not match
// its shape, a name is empty, repeated, not UTF-8 or over 1024 bytes, the rank
// is over 8, a value is NaN/Inf, or a value does not fit the codec (fp16:
// |x| >= 65520; bf16: rounds to Inf). Per-element error bounds: fp32 exact,
// fp16 2^-11 relative, bf16 2^-8 relative, int8 scale/2 (docs/formats.md).
// Also fails for an unknown codec, block_size outside 1..65536 (blockwise
// codecs), topk_fraction outside {0} U [kMinTopkFraction, 1], or
// stochastic_rounding with a non-blockwise codec. int4: per element
// |x - x'| <= scale/2 with scale = block max/7 (< scale when stochastic).
// Writes format version 1 when the options need nothing newer (dense fp32/
// fp16/bf16/int8, SHA-256 trailer), version 2 for int4, top-k or an
// XXH3-128 trailer.
StatusOr<std::string> EncodeBundle(const TensorBundle& bundle, const EncodeOptions& options);
// Same, and fills `*report` (when not null) on success.
StatusOr<std::string> EncodeBundle(const TensorBundle& bundle, const EncodeOptions& options,
                                   CompressionReport* report);

// Decodes bytes produced by EncodeBundle. Every malformed input (bad magic,
// unknown version or codec, truncation, trailing bytes, checksum mismatch,
// shape/size overflow, oversized counts, non-finite values, zstd errors) is
// rejected with DATA_LOSS or INVALID_ARGUMENT and a reason. Memory use is
// bounded by the bytes actually decoded, never by sizes the input declares
// (top-k bundles decode to dense tensors: at most max_sparse_expansion
// elements per kept entry). Reads format versions 1 and 2.
StatusOr<TensorBundle> DecodeBundle(std::string_view bytes, const DecodeLimits& limits = {});

// The largest encoding EncodeBundle can produce for a bundle with the names
// and shapes of `layout`, whatever the codec and options (sparse int8 with
// block size 1 is the worst case, then zstd's worst-case expansion): an
// upload declaring more bytes than this cannot be such a bundle.
uint64_t MaxEncodedBytes(const TensorBundle& layout);

// Parses and checks the 36-byte header only (magic, version, codec, flags,
// block size; no checksum, no body): cheap, for metrics and for refusing a
// codec other than the negotiated one before decoding. DecodeBundle still
// performs every check.
StatusOr<BundleHeader> InspectBundle(std::string_view bytes);

// Lowercase hex SHA-256 of `bytes`.
std::string Sha256Hex(std::string_view bytes);
// Lowercase hex of XXH3-128 (canonical big-endian form, seed 0) of `bytes`.
std::string Xxh3_128Hex(std::string_view bytes);
// Sha256Hex or Xxh3_128Hex.
std::string ChecksumHex(ChecksumAlgorithm algorithm, std::string_view bytes);

// Checks that `other` has exactly the tensor names and shapes of `reference`
// (same order not required). The error names the first mismatch.
Status CheckSameLayout(const TensorBundle& reference, const TensorBundle& other);

}  // namespace fedge
