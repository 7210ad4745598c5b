// The tensor bundle wire format (docs/formats.md): the 36-byte header, the
// tensor table, the checks of every declared size against DecodeLimits and
// an expected layout, and the checksum trailer (SHA-256, or XXH3-128). Each tensor's data section is
// written and read by the value codecs (tensor_codecs.cpp); the body's bytes
// come from tensor_bundle_io.cpp (plain or zstd). How decoding stays bounded
// by the bytes received: tensor_bundle_internal.h.
#include "fedge/tensor_bundle.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <unordered_map>
#include <unordered_set>

#include "tensor_bundle_internal.h"

namespace fedge {
namespace {

using internal::BodySource;
using internal::BundleError;
using internal::CeilDiv;
using internal::Corrupt;
using internal::DataBytes;
using internal::GetLe;
using internal::Invalid;
using internal::kChecksumBytes;
using internal::kHeaderBytes;
using internal::PutLe;
using internal::PutVarint;
using internal::TableEntry;
using internal::VarintLen;

constexpr char kMagic[8] = {'F', 'E', 'D', 'G', 'E', 'B', 'N', '1'};
constexpr uint16_t kFormatVersion = 1;    // dense fp32, fp16, bf16, int8
constexpr uint16_t kFormatVersionV2 = 2;  // adds int4 and top-k (sparse)
constexpr uint8_t kFlagZstd = 0x01;
constexpr uint8_t kFlagSparse = 0x02;  // version 2
using internal::kFlagXxh3Trailer;      // 0x04, version 2
constexpr uint8_t kDtypeFloat32 = 0;
constexpr int kMaxBlockSize = 65536;

Status Mismatch(std::string message) {
  return BundleError(StatusCode::kFailedPrecondition, "layout mismatch: " + std::move(message));
}

// Saturating arithmetic for size bounds (limits may be set to the maximum).
uint64_t SatAdd(uint64_t a, uint64_t b) {
  uint64_t r;
  return __builtin_add_overflow(a, b, &r) ? std::numeric_limits<uint64_t>::max() : r;
}
uint64_t SatMul(uint64_t a, uint64_t b) {
  uint64_t r;
  return __builtin_mul_overflow(a, b, &r) ? std::numeric_limits<uint64_t>::max() : r;
}

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
  const uint8_t known =
      header.version >= kFormatVersionV2 ? (kFlagZstd | kFlagSparse | kFlagXxh3Trailer) : kFlagZstd;
  if (flags & ~known) {
    return Invalid("unknown flag bits " + std::to_string(flags & ~known) + " for format version " +
                   std::to_string(header.version));
  }
  header.zstd = flags & kFlagZstd;
  header.sparse = flags & kFlagSparse;
  header.trailer = (flags & kFlagXxh3Trailer) ? ChecksumAlgorithm::kXxh3_128 : ChecksumAlgorithm::kSha256;
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
  if (!(options.zstd_min_saving >= 0.0 && options.zstd_min_saving < 1.0)) {
    return Invalid("zstd_min_saving " + std::to_string(options.zstd_min_saving) +
                   " is outside [0, 1); 0 keeps every zstd body");
  }
  const bool sparse = fraction > 0.0;
  const DecodeLimits defaults;
  if (bundle.tensors.size() > defaults.max_tensors) {
    return Invalid(std::to_string(bundle.tensors.size()) + " tensors exceed the limit of " +
                   std::to_string(defaults.max_tensors));
  }

  // Top-k bundles: per tensor, the entries its data section carries.
  std::vector<internal::TopKSelection> topk(sparse ? bundle.tensors.size() : 0);
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
    topk[ti] = internal::SelectTopK(t.values, fraction);
    const internal::TopKSelection& plan = topk[ti];
    PutVarint(&body, plan.kept.size());
    PutVarint(&body, plan.index_bytes.size());
    data_bytes += plan.index_bytes.size() + DataBytes(codec, block_size, plan.kept.size());
    values_sent += plan.kept.size();
  }
  size_t offset = body.size();
  body.resize(body.size() + data_bytes);
  for (size_t ti = 0; ti < bundle.tensors.size(); ++ti) {
    const NamedTensor& t = bundle.tensors[ti];
    const auto rounding = internal::Rounding::ForTensor(options.stochastic_rounding, options.seed, ti);
    if (!sparse) {
      FEDGE_RETURN_IF_ERROR(internal::EncodeValues(codec, block_size, t.name, t.values.data(),
                                                   t.values.size(), nullptr, rounding, body.data() + offset));
      offset += DataBytes(codec, block_size, t.values.size());
      continue;
    }
    const internal::TopKSelection& plan = topk[ti];
    std::memcpy(body.data() + offset, plan.index_bytes.data(), plan.index_bytes.size());
    offset += plan.index_bytes.size();
    FEDGE_RETURN_IF_ERROR(internal::EncodeValues(codec, block_size, t.name, plan.kept.data(),
                                                 plan.kept.size(), plan.indices.data(), rounding,
                                                 body.data() + offset));
    offset += DataBytes(codec, block_size, plan.kept.size());
  }

  std::string stored;
  bool zstd = options.zstd;
  if (zstd) {
    FEDGE_ASSIGN_OR_RETURN(stored, internal::CompressBody(body, options.zstd_level));
    // Not worth the reader's decompression: store the body plain.
    const double saved = body.empty() ? 0.0 : 1.0 - static_cast<double>(stored.size()) / body.size();
    if (options.zstd_min_saving > 0.0 && saved < options.zstd_min_saving) {
      zstd = false;
      stored.clear();
    }
  }
  const std::string& payload = zstd ? stored : body;

  // Version 1 whenever it can express the bundle, so version-1 readers and
  // byte-exact fixtures keep working for the codecs they know.
  const bool xxh3 = options.trailer == ChecksumAlgorithm::kXxh3_128;
  const bool needs_v2 = sparse || codec == Codec::kInt4 || xxh3;
  std::string out;
  out.reserve(kHeaderBytes + payload.size() + kChecksumBytes);
  out.append(kMagic, sizeof(kMagic));
  PutLe<uint16_t>(&out, needs_v2 ? kFormatVersionV2 : kFormatVersion);
  out.push_back(static_cast<char>(codec));
  out.push_back(
      static_cast<char>((zstd ? kFlagZstd : 0) | (sparse ? kFlagSparse : 0) | (xxh3 ? kFlagXxh3Trailer : 0)));
  PutLe<uint32_t>(&out, block_size);
  PutLe<uint32_t>(&out, static_cast<uint32_t>(bundle.tensors.size()));
  PutLe<uint64_t>(&out, body.size());
  PutLe<uint64_t>(&out, payload.size());
  out += payload;
  out += internal::Trailer(options.trailer, out);
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
  uint64_t body = 0;
  for (const NamedTensor& t : layout.tensors) {
    int64_t n = 0;
    if (!CheckedElements(t.shape, &n)) return std::numeric_limits<uint64_t>::max();
    const uint64_t elems = static_cast<uint64_t>(n);
    // Table entry, plus the two varints of a top-k entry.
    body = SatAdd(body, 2 + t.name.size() + 2 + 8 * t.shape.size() + 20);
    // Per value at worst: int8 code + a 4-byte scale (block size 1) + an index varint.
    body = SatAdd(body, SatMul(elems, 5 + VarintLen(elems == 0 ? 0 : elems - 1)));
  }
  // zstd's worst case (ZSTD_COMPRESSBOUND) for an incompressible body.
  const uint64_t stored = SatAdd(SatAdd(body, body / 256), 128 << 10);
  return SatAdd(stored, kHeaderBytes + kChecksumBytes);
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
  const size_t trailer_bytes = internal::TrailerBytes(header.trailer);
  const std::string algorithm(ChecksumAlgorithmName(header.trailer));
  if (stored_size > available || available - stored_size < trailer_bytes) {
    return Corrupt("truncated payload: header declares " + std::to_string(stored_size) +
                   " stored bytes plus a " + std::to_string(trailer_bytes) + "-byte " + algorithm +
                   " checksum, " + std::to_string(available) + " present");
  }
  if (available - stored_size > trailer_bytes) {
    return Corrupt(std::to_string(available - stored_size - trailer_bytes) +
                   " trailing bytes after the checksum");
  }
  // Here the layout is exact: header, stored_size bytes, the trailer.
  const std::string_view covered = bytes.substr(0, kHeaderBytes + stored_size);
  bool trailer_matches;
  if (limits.checksums != nullptr && limits.checksums->data == bytes.data() &&
      limits.checksums->size == bytes.size()) {
    trailer_matches = limits.checksums->trailer_matches;  // hashed in the caller's pass
  } else {
    trailer_matches = internal::Trailer(header.trailer, covered) == bytes.substr(covered.size());
  }
  if (!trailer_matches) {
    return Corrupt("checksum mismatch: " + algorithm + " of header and payload does not match the trailer");
  }

  // Cap the body before decompressing: the largest body the limits permit
  // (saturating, since limits may be set to the maximum).
  // A top-k entry adds two varints (<= 10 bytes each) to the table.
  const uint64_t per_entry =
      2 + uint64_t{limits.max_name_bytes} + 2 + 8 * uint64_t{limits.max_rank} + (sparse ? 20 : 0);
  const uint64_t max_table = SatMul(count, per_entry);
  const uint64_t elems = limits.max_total_elements;
  uint64_t max_data = 0;
  switch (codec) {
    case Codec::kFp32:
      max_data = SatMul(4, elems);
      break;
    case Codec::kFp16:
    case Codec::kBf16:
      max_data = SatMul(2, elems);
      break;
    case Codec::kInt8:
      max_data = SatAdd(elems, SatMul(4, SatAdd(elems / block_size, count)));
      break;
    case Codec::kInt4:
      max_data = SatAdd(SatAdd(elems / 2, count), SatMul(4, SatAdd(elems / block_size, count)));
      break;
  }
  if (sparse) max_data = SatAdd(max_data, SatMul(10, elems));  // index varints
  const uint64_t max_body = SatAdd(max_table, max_data);
  if (body_size > max_body) {
    return Invalid("declared body size " + std::to_string(body_size) + " exceeds what the limits allow (" +
                   std::to_string(max_body) + " bytes)");
  }
  const std::string_view stored = bytes.substr(kHeaderBytes, stored_size);
  FEDGE_ASSIGN_OR_RETURN(const std::unique_ptr<BodySource> src,
                         internal::OpenBody(stored, header.zstd, body_size));

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
      FEDGE_RETURN_IF_ERROR(internal::DecodeSparseValues(codec, block_size, e, src.get(), &t.values));
    } else {
      FEDGE_RETURN_IF_ERROR(internal::DecodeValues(codec, block_size, "tensor \"" + e.name + "\"", e.elements,
                                                   src.get(), &t.values));
    }
    bundle.tensors.push_back(std::move(t));
  }
  FEDGE_RETURN_IF_ERROR(src->Finish());
  return bundle;
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
