// Shamir secret sharing (t-of-n) of byte strings over the prime field
// GF(p), p = 2^61 - 1. A secret is cut into 7-byte words (each < 2^56 < p) and every
// word gets its own random polynomial of degree t - 1 (coefficients from OpenSSL's
// CSPRNG); a share holds the evaluation point x (the holder's index, >= 1) and one
// field element per word. Any t shares with distinct x give the secret back; fewer
// give no information about it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fedge/secagg/crypto.h"
#include "fedge/status.h"

namespace fedge::secagg {

inline constexpr uint64_t kShamirPrime = (uint64_t{1} << 61) - 1;

struct ShamirShare {
  uint32_t x = 0;           // evaluation point, >= 1
  std::vector<uint64_t> y;  // one value in [0, p) per 7-byte word of the secret
};

// One share per entry of `xs` (distinct, >= 1). INVALID_ARGUMENT unless
// 1 <= threshold <= xs.size() and the points are distinct and non-zero.
StatusOr<std::vector<ShamirShare>> ShamirSplit(const Bytes& secret, int threshold,
                                               const std::vector<uint32_t>& xs);

// The secret of `secret_bytes` bytes from at least `threshold` shares (the first
// `threshold` with distinct points are used). INVALID_ARGUMENT for too few shares,
// shares of different lengths or values outside the field.
StatusOr<Bytes> ShamirCombine(const std::vector<ShamirShare>& shares, int threshold, size_t secret_bytes);

// Wire form of a share: x (4 bytes LE) then each y (8 bytes LE).
Bytes EncodeShare(const ShamirShare& share);
StatusOr<ShamirShare> DecodeShare(const Bytes& bytes);

}  // namespace fedge::secagg
