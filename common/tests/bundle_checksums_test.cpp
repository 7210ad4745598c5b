// ChecksumBundle: both checksums of an upload from one SHA-256 pass, and
// DecodeBundle taking the trailer verdict from it (issue 14, item 2).
#include <gtest/gtest.h>

#include <string>

#include "fedge/tensor_bundle.h"

namespace fedge {
namespace {

std::string Encoded() {
  TensorBundle b;
  b.tensors.push_back(NamedTensor{"a", {3, 5}, std::vector<float>(15, 0.25f)});
  b.tensors.push_back(NamedTensor{"b", {7}, {1, -2, 3, -4, 5, -6, 7}});
  auto enc = EncodeBundle(b, EncodeOptions{Codec::kInt8, 4, /*zstd=*/true, 3});
  EXPECT_TRUE(enc.ok());
  return *enc;
}

TEST(BundleChecksumsTest, MatchesSha256HexAndTheTrailer) {
  const std::string bytes = Encoded();
  const BundleChecksums c = ChecksumBundle(bytes);
  EXPECT_EQ(c.sha256_hex, Sha256Hex(bytes));
  EXPECT_TRUE(c.trailer_matches);
  // Known vector: SHA-256 of "abc" (FIPS 180-2); too short to have a trailer.
  const BundleChecksums abc = ChecksumBundle("abc");
  EXPECT_EQ(abc.sha256_hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_FALSE(abc.trailer_matches);
}

TEST(BundleChecksumsTest, ACorruptPayloadOrTrailerFailsBoth) {
  const std::string good = Encoded();
  for (size_t at : {size_t{40}, good.size() / 2, good.size() - 1}) {  // payload ... last trailer byte
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ 0x01);
    const BundleChecksums c = ChecksumBundle(bad);
    EXPECT_EQ(c.sha256_hex, Sha256Hex(bad));
    EXPECT_NE(c.sha256_hex, Sha256Hex(good));
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

}  // namespace
}  // namespace fedge
