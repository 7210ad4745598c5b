// Fuzz target: the tensor-bundle decoder (fedge::DecodeBundle, fedge::InspectBundle),
// which reads every update an agent uploads and every global the aggregator sends.
//
// Besides "no crash, no sanitizer report, no allocation beyond -rss_limit_mb", it checks
// properties a correct decoder has:
//  - DecodeBundle respects its DecodeLimits (small here: 1 Mi elements);
//  - a bundle DecodeBundle accepts is one EncodeBundle can write: re-encoding it as fp32
//    succeeds and decodes back to the same names, shapes and bits;
//  - InspectBundle agrees with DecodeBundle (accepts what it accepts; same count/codec);
//  - decoding with DecodeLimits::expected_layout agrees with CheckSameLayout.
// A violated property prints what differed and aborts (libFuzzer saves the input).
//
// The SHA-256 trailer would stop almost every mutation at the checksum check, so each
// input is decoded twice: as is (the checksum and length checks), and "repaired" — the
// last 32 bytes dropped, stored_size set to what follows the 36-byte header and a correct
// SHA-256 appended (docs/formats.md) — so mutations reach the table and value decoders.
// For a real bundle both are the same bytes.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <openssl/evp.h>

#include "fedge/tensor_bundle.h"
#include "fuzz_util.h"

namespace {

using fedge::fuzz::Fail;

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Names and shapes of make_seeds.cpp's sample bundle (most seeds), values ignored.
const fedge::TensorBundle& SeedLayout() {
  static const fedge::TensorBundle layout = [] {
    fedge::TensorBundle b;
    for (auto [name, shape] : std::vector<std::pair<const char*, std::vector<int64_t>>>{
             {"encoder.layer.0.attention.self.query.lora_A", {4, 24}},
             {"encoder.layer.0.attention.self.query.lora_B", {24, 4}},
             {"classifier.bias", {5}},
             {"scale", {}},
             {"empty", {0, 3}}}) {
      fedge::NamedTensor t;
      t.name = name;
      t.shape = shape;
      t.values.resize(static_cast<size_t>(t.NumElements()));
      b.tensors.push_back(std::move(t));
    }
    return b;
  }();
  return layout;
}

constexpr size_t kHeaderBytes = 36;
constexpr size_t kChecksumBytes = 32;

// The input with a consistent stored_size and checksum (see the overview), or "" when
// it is too short to hold a header.
std::string Repaired(std::string_view in) {
  if (in.size() < kHeaderBytes + kChecksumBytes) return "";
  std::string out(in.substr(0, in.size() - kChecksumBytes));
  const uint64_t stored = out.size() - kHeaderBytes;
  for (int i = 0; i < 8; ++i) out[28 + i] = static_cast<char>((stored >> (8 * i)) & 0xFF);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(out.data(), out.size(), digest, &len, EVP_sha256(), nullptr) != 1 || len != kChecksumBytes) {
    Fail("SHA-256 failed", "");
  }
  out.append(reinterpret_cast<const char*>(digest), len);
  return out;
}

void Check(std::string_view bytes) {
  fedge::DecodeLimits limits;
  limits.max_total_elements = 1u << 20;
  limits.max_tensors = 1024;
  limits.max_encoded_bytes = 1u << 24;

  auto header = fedge::InspectBundle(bytes);
  auto decoded = fedge::DecodeBundle(bytes, limits);
  if (!decoded.ok()) return;

  if (!header.ok()) Fail("InspectBundle rejects a bundle DecodeBundle accepts", header.status().ToString());
  if (header->tensor_count != decoded->tensors.size()) {
    Fail("header tensor_count differs from the decoded bundle",
         std::to_string(header->tensor_count) + " vs " + std::to_string(decoded->tensors.size()));
  }
  if (decoded->tensors.size() > limits.max_tensors) Fail("max_tensors exceeded", "");
  uint64_t elements = 0;
  for (const auto& t : decoded->tensors) {
    const int64_t n = t.NumElements();
    if (n < 0 || static_cast<uint64_t>(n) != t.values.size()) {
      Fail("decoded tensor's values do not match its shape", t.name);
    }
    elements += t.values.size();
  }
  if (elements > limits.max_total_elements) Fail("max_total_elements exceeded", std::to_string(elements));

  fedge::EncodeOptions fp32;
  fp32.codec = fedge::Codec::kFp32;
  fp32.zstd = false;
  auto reencoded = fedge::EncodeBundle(*decoded, fp32);
  if (!reencoded.ok()) {
    Fail("EncodeBundle refuses a bundle DecodeBundle accepted", reencoded.status().ToString());
  }
  auto again = fedge::DecodeBundle(*reencoded);
  if (!again.ok()) Fail("fp32 re-encoding does not decode", again.status().ToString());
  if (again->tensors.size() != decoded->tensors.size()) Fail("re-decoded tensor count differs", "");
  for (size_t i = 0; i < again->tensors.size(); ++i) {
    const auto& a = decoded->tensors[i];
    const auto& b = again->tensors[i];
    if (a.name != b.name || a.shape != b.shape || !SameBits(a.values, b.values)) {
      Fail("fp32 round trip changed a tensor", a.name);
    }
  }

  // DecodeLimits::expected_layout (the aggregator decodes an update against the global's
  // layout) accepts exactly the bundles CheckSameLayout accepts: the bundle's own layout
  // and, for the seeds' layout, only a bundle of those names and shapes.
  const fedge::TensorBundle* layouts[] = {&*decoded, &SeedLayout()};
  for (const fedge::TensorBundle* layout : layouts) {
    fedge::DecodeLimits with_layout = limits;
    with_layout.expected_layout = layout;
    auto checked = fedge::DecodeBundle(bytes, with_layout);
    const fedge::Status same = fedge::CheckSameLayout(*layout, *decoded);
    if (checked.ok() != same.ok()) {
      Fail("expected_layout disagrees with CheckSameLayout",
           checked.status().ToString() + " vs " + same.ToString());
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  Check(bytes);
  const std::string repaired = Repaired(bytes);
  if (!repaired.empty() && repaired != bytes) Check(repaired);
  return 0;
}
