// Helpers the tensor bundle tests share: hand-built encodings (docs/formats.md)
// for hostile-input tests, and decode assertions.
#pragma once

#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/tensor_bundle.h"

namespace fedge::bundle_test {

// Wire layout constants from docs/formats.md; the tests build hostile inputs by hand.
inline constexpr size_t kHeader = 36;
inline constexpr size_t kTrailer = 32;

template <typename T>
void Put(std::string* s, T v) {
  for (size_t i = 0; i < sizeof(T); ++i)
    s->push_back(static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xFF));
}
template <typename T>
void Set(std::string* s, size_t off, T v) {
  for (size_t i = 0; i < sizeof(T); ++i)
    (*s)[off + i] = static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xFF);
}
inline void PutF32(std::string* s, float f) { Put<uint32_t>(s, std::bit_cast<uint32_t>(f)); }
inline void PutVarint(std::string* s, uint64_t v) {
  while (v >= 0x80) {
    s->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  s->push_back(static_cast<char>(v));
}

inline std::string Unhex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

// Recomputes the SHA-256 trailer so a test reaches the checks behind the checksum.
inline void Reseal(std::string* enc) {
  const std::string digest = Unhex(Sha256Hex(std::string_view(*enc).substr(0, enc->size() - kTrailer)));
  enc->replace(enc->size() - kTrailer, kTrailer, digest);
}

// Builds a sealed encoding of format `version` from a header description and
// an uncompressed/stored body.
inline std::string Assemble(uint8_t codec, uint8_t flags, uint32_t block_size, uint32_t count,
                            const std::string& stored, uint64_t body_size, uint16_t version = 1) {
  std::string out = "FEDGEBN1";
  Put<uint16_t>(&out, version);
  out.push_back(static_cast<char>(codec));
  out.push_back(static_cast<char>(flags));
  Put<uint32_t>(&out, block_size);
  Put<uint32_t>(&out, count);
  Put<uint64_t>(&out, body_size);
  Put<uint64_t>(&out, stored.size());
  out += stored;
  out += std::string(kTrailer, '\0');
  Reseal(&out);
  return out;
}
// A sealed, uncompressed version-1 encoding.
inline std::string AssemblePlain(uint8_t codec, uint32_t block_size, uint32_t count,
                                 const std::string& body) {
  return Assemble(codec, 0, block_size, count, body, body.size());
}
// A sealed, uncompressed version-2 encoding.
inline std::string AssembleV2(uint8_t codec, uint8_t flags, uint32_t block_size, uint32_t count,
                              const std::string& body) {
  return Assemble(codec, flags, block_size, count, body, body.size(), /*version=*/2);
}

// One table entry: name, dtype float32, rank, dims.
inline std::string Entry(const std::string& name, const std::vector<uint64_t>& dims) {
  std::string s;
  Put<uint16_t>(&s, name.size());
  s += name;
  s.push_back(0);
  s.push_back(static_cast<char>(dims.size()));
  for (uint64_t d : dims) Put<uint64_t>(&s, d);
  return s;
}

inline TensorBundle Decode(const std::string& enc) {
  auto d = DecodeBundle(enc);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return d.ok() ? *d : TensorBundle{};
}

// Expects DATA_LOSS or INVALID_ARGUMENT with `reason` in the message.
inline void ExpectRejected(const std::string& enc, const std::string& reason,
                           const DecodeLimits& limits = {}) {
  auto d = DecodeBundle(enc, limits);
  ASSERT_FALSE(d.ok()) << "accepted input that should fail with: " << reason;
  EXPECT_TRUE(d.status().code() == StatusCode::kDataLoss || d.status().code() == StatusCode::kInvalidArgument)
      << d.status().ToString();
  EXPECT_NE(d.status().message().find(reason), std::string::npos)
      << "message \"" << d.status().message() << "\" lacks \"" << reason << "\"";
}

}  // namespace fedge::bundle_test
