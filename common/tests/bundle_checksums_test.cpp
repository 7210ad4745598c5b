// ChecksumBundle: both checksums of an upload from one pass (SHA-256, or
// XXH3-128 for bundles with the xxh3 trailer), and DecodeBundle taking the
// trailer verdict from it (issue 14, item 2).
#include <gtest/gtest.h>

#include <string>

#include "fedge/tensor_bundle.h"

namespace fedge {
namespace {

TensorBundle Sample() {
  TensorBundle b;
  b.tensors.push_back(NamedTensor{"a", {3, 5}, std::vector<float>(15, 0.25f)});
  b.tensors.push_back(NamedTensor{"b", {7}, {1, -2, 3, -4, 5, -6, 7}});
  return b;
}

std::string HexOf(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned char c : bytes) {
    hex.push_back(kHex[c >> 4]);
    hex.push_back(kHex[c & 15]);
  }
  return hex;
}

std::string Encoded(ChecksumAlgorithm trailer = ChecksumAlgorithm::kSha256) {
  EncodeOptions eo{Codec::kInt8, 4, /*zstd=*/true, 3};
  eo.trailer = trailer;
  auto enc = EncodeBundle(Sample(), eo);
  EXPECT_TRUE(enc.ok());
  return *enc;
}

TEST(BundleChecksumsTest, MatchesSha256HexAndTheTrailer) {
  const std::string bytes = Encoded();
  const BundleChecksums c = ChecksumBundle(bytes);
  EXPECT_EQ(c.hex, Sha256Hex(bytes));
  EXPECT_TRUE(c.trailer_matches);
  // Known vector: SHA-256 of "abc" (FIPS 180-2); too short to have a trailer.
  const BundleChecksums abc = ChecksumBundle("abc");
  EXPECT_EQ(abc.hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_FALSE(abc.trailer_matches);
}

TEST(BundleChecksumsTest, ACorruptPayloadOrTrailerFailsBoth) {
  const std::string good = Encoded();
  for (size_t at : {size_t{40}, good.size() / 2, good.size() - 1}) {  // payload ... last trailer byte
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ 0x01);
    const BundleChecksums c = ChecksumBundle(bad);
    EXPECT_EQ(c.hex, Sha256Hex(bad));
    EXPECT_NE(c.hex, Sha256Hex(good));
    EXPECT_FALSE(c.trailer_matches) << at;
    DecodeLimits limits;
    limits.checksums = &c;
    auto decoded = DecodeBundle(bad, limits);
    ASSERT_FALSE(decoded.ok());
    EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(decoded.status().message().find("checksum mismatch"), std::string::npos);
  }
}

TEST(BundleChecksumsTest, DecodeWithTheCallersPassGivesTheSameBundle) {
  const std::string bytes = Encoded();
  const BundleChecksums c = ChecksumBundle(bytes);
  DecodeLimits limits;
  limits.checksums = &c;
  auto with = DecodeBundle(bytes, limits);
  auto without = DecodeBundle(bytes);
  ASSERT_TRUE(with.ok()) << with.status().ToString();
  ASSERT_TRUE(without.ok());
  ASSERT_EQ(with->tensors.size(), without->tensors.size());
  for (size_t i = 0; i < with->tensors.size(); ++i)
    EXPECT_EQ(with->tensors[i].values, without->tensors[i].values);
}

// A verdict computed over other bytes (a copy, or an earlier buffer) must not
// vouch for these: DecodeBundle hashes them itself.
TEST(BundleChecksumsTest, AVerdictForOtherBytesIsIgnored) {
  const std::string good = Encoded();
  const BundleChecksums vouched = ChecksumBundle(good);
  ASSERT_TRUE(vouched.trailer_matches);
  std::string bad = good;
  bad[good.size() / 2] = static_cast<char>(bad[good.size() / 2] ^ 0x10);
  DecodeLimits limits;
  limits.checksums = &vouched;
  auto decoded = DecodeBundle(bad, limits);
  ASSERT_FALSE(decoded.ok());
  EXPECT_NE(decoded.status().message().find("checksum mismatch"), std::string::npos);
}

// ---- the XXH3-128 trailer (uploads to an aggregator that offers it) ----

TEST(BundleChecksumsTest, Xxh3TrailerRoundTripsAsVersion2With16Bytes) {
  const std::string sha = Encoded();
  const std::string fast = Encoded(ChecksumAlgorithm::kXxh3_128);
  EXPECT_EQ(fast.size() + 16, sha.size());  // the same body, a 16-byte trailer instead of 32
  auto header = InspectBundle(fast);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(header->version, 2);
  EXPECT_EQ(header->trailer, ChecksumAlgorithm::kXxh3_128);
  EXPECT_EQ(InspectBundle(sha)->trailer, ChecksumAlgorithm::kSha256);
  // The trailer is XXH3-128 of the bytes before it, in canonical order.
  EXPECT_EQ(Xxh3_128Hex(std::string_view(fast).substr(0, fast.size() - 16)),
            HexOf(fast.substr(fast.size() - 16)));
  auto a = DecodeBundle(fast);
  auto b = DecodeBundle(sha);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok());
  ASSERT_EQ(a->tensors.size(), b->tensors.size());
  for (size_t i = 0; i < a->tensors.size(); ++i) EXPECT_EQ(a->tensors[i].values, b->tensors[i].values);
}

TEST(BundleChecksumsTest, Xxh3OnePassMatchesXxh3HexAndTheTrailer) {
  const std::string bytes = Encoded(ChecksumAlgorithm::kXxh3_128);
  const BundleChecksums c = ChecksumBundle(bytes, ChecksumAlgorithm::kXxh3_128);
  EXPECT_EQ(c.algorithm, ChecksumAlgorithm::kXxh3_128);
  EXPECT_EQ(c.hex, Xxh3_128Hex(bytes));
  EXPECT_EQ(c.hex.size(), 32u);
  EXPECT_TRUE(c.trailer_matches);
  // Mixed pairings (not what agents send) still give both verdicts.
  const BundleChecksums mixed = ChecksumBundle(bytes, ChecksumAlgorithm::kSha256);
  EXPECT_EQ(mixed.hex, Sha256Hex(bytes));
  EXPECT_TRUE(mixed.trailer_matches);
  const std::string sha = Encoded();
  const BundleChecksums mixed2 = ChecksumBundle(sha, ChecksumAlgorithm::kXxh3_128);
  EXPECT_EQ(mixed2.hex, Xxh3_128Hex(sha));
  EXPECT_TRUE(mixed2.trailer_matches);
}

// The equivalent of ACorruptPayloadOrTrailerFailsBoth for the fast checksum:
// a flipped bit anywhere (header, payload, trailer) fails the transport
// checksum and the trailer, and DecodeBundle refuses it, with or without the
// caller's pass.
TEST(BundleChecksumsTest, ACorruptXxh3BundleFailsBothAndIsRefused) {
  const std::string good = Encoded(ChecksumAlgorithm::kXxh3_128);
  for (size_t at : {size_t{20}, size_t{40}, good.size() / 2, good.size() - 17, good.size() - 1}) {
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ 0x01);
    const BundleChecksums c = ChecksumBundle(bad, ChecksumAlgorithm::kXxh3_128);
    EXPECT_NE(c.hex, Xxh3_128Hex(good)) << at;
    EXPECT_FALSE(c.trailer_matches) << at;
    for (const BundleChecksums* verdict : {&c, static_cast<const BundleChecksums*>(nullptr)}) {
      DecodeLimits limits;
      limits.checksums = verdict;
      auto decoded = DecodeBundle(bad, limits);
      ASSERT_FALSE(decoded.ok()) << at;
      EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss) << at;
      EXPECT_NE(decoded.status().message().find("checksum mismatch: xxh3-128"), std::string::npos)
          << at << ": " << decoded.status().message();
    }
  }
}

TEST(BundleChecksumsTest, ATruncatedXxh3BundleIsRefused) {
  const std::string good = Encoded(ChecksumAlgorithm::kXxh3_128);
  for (size_t cut : {size_t{1}, size_t{16}, size_t{17}}) {
    auto decoded = DecodeBundle(std::string_view(good).substr(0, good.size() - cut));
    ASSERT_FALSE(decoded.ok()) << cut;
    EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss) << cut;
  }
  // Extra bytes after the 16-byte trailer are refused too.
  auto longer = DecodeBundle(good + std::string(16, '\0'));
  ASSERT_FALSE(longer.ok());
  EXPECT_NE(longer.status().message().find("trailing bytes after the checksum"), std::string::npos);
}

// Version 1 never carries the xxh3 flag: a reader refuses it rather than
// taking a SHA-256 trailer for an XXH3 one.
TEST(BundleChecksumsTest, TheXxh3FlagIsUnknownInVersion1) {
  std::string v1 = Encoded();
  ASSERT_EQ(InspectBundle(v1)->version, 1);
  v1[11] = static_cast<char>(v1[11] | 0x04);
  auto decoded = DecodeBundle(v1);
  ASSERT_FALSE(decoded.ok());
  EXPECT_NE(decoded.status().message().find("unknown flag bits 4 for format version 1"), std::string::npos);
}

}  // namespace
}  // namespace fedge
