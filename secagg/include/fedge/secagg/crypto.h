// Cryptographic building blocks of secure aggregation, all from OpenSSL:
// X25519 key agreement, HKDF-SHA256, AES-256-GCM sealing (share transport) and an
// AES-256-CTR pseudo-random generator that expands a 32-byte seed into ring
// elements (pairwise and self masks). Byte strings are std::string. Every function
// is thread-safe and returns an error status (never throws) when OpenSSL fails or an
// input has the wrong size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/status.h"

namespace fedge::secagg {

using Bytes = std::string;

inline constexpr size_t kKeyBytes = 32;  // X25519 keys, AES-256 keys, PRG seeds

// Fresh random bytes from OpenSSL's CSPRNG. INTERNAL if it fails.
StatusOr<Bytes> RandomBytes(size_t n);

struct KeyPair {
  Bytes public_key;   // 32 bytes
  Bytes private_key;  // 32 bytes (raw X25519 scalar)
};

// A new X25519 key pair.
StatusOr<KeyPair> GenerateKeyPair();

// The X25519 public key of a raw 32-byte private key.
StatusOr<Bytes> PublicKeyOf(const Bytes& private_key);

// X25519(private_key, peer_public_key) run through HKDF-SHA256 with `context` as
// info: a 32-byte key both ends derive alike. INVALID_ARGUMENT for a key of the
// wrong size or a low-order peer key (all-zero shared secret).
StatusOr<Bytes> AgreeKey(const Bytes& private_key, const Bytes& peer_public_key, std::string_view context);

// HKDF-SHA256 (RFC 5869) of `ikm` with `salt` and `info`, `length` bytes.
StatusOr<Bytes> Hkdf(std::string_view ikm, std::string_view salt, std::string_view info, size_t length);

// AES-256-GCM: nonce (12 random bytes) | ciphertext | tag (16). `aad` is
// authenticated, not encrypted.
StatusOr<Bytes> Seal(const Bytes& key, std::string_view aad, std::string_view plaintext);
// Inverse of Seal; PERMISSION_DENIED when the tag does not verify (wrong key,
// wrong aad, tampered bytes).
StatusOr<Bytes> Open(const Bytes& key, std::string_view aad, std::string_view sealed);

// Adds sign x PRG(seed) element-wise to `ring` modulo 2^bits (bits 16 or 32; sign
// +1 or -1). PRG(seed): the AES-256-CTR keystream under key `seed` (32 bytes) and a
// zero IV, read as little-endian `bits`-bit words, one per element. Deterministic:
// both ends of a pair, or the aggregator reconstructing a dropped agent's masks,
// get the same words.
Status AddPrgMask(const Bytes& seed, int bits, int sign, std::vector<uint32_t>* ring);

}  // namespace fedge::secagg
