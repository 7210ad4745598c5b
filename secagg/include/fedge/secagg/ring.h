// Encoding real-valued updates as elements of Z_2^bits so that masked sums are exact.
//
// An agent's clipped update x (||x|| <= C) is rotated by a public random orthonormal
// map (a seeded permutation, random signs, and Walsh-Hadamard transforms on
// power-of-two blocks: every rotated coordinate is a signed average of up to 1024
// permuted ones, so a few large entries cannot dominate the range), each coordinate
// is clipped to [-range, range], scaled to `levels` steps per range and
// stochastically rounded (unbiased) to an integer in [-levels, levels], and stored
// modulo 2^bits. `levels` is chosen so that the sum of `max_agents` such integers
// lies in (-2^(bits-1), 2^(bits-1)): the ring never wraps, and the signed value of
// the masked sum is exactly the sum of the agents' integers.
//
// ChooseRing takes the smallest ring of {16, 32} bits that still leaves at least
// kMinLevels (int8 resolution) per agent: Z_2^16 up to 256 agents (2 bytes per
// value), Z_2^32 beyond. Not thread-safe state: none; functions are pure.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "fedge/status.h"

namespace fedge::secagg {

inline constexpr int64_t kMinLevels = 127;

struct RingSpec {
  int bits = 16;       // 16 or 32
  int64_t levels = 0;  // integer steps per `range`, per agent
};

// See the file comment. INVALID_ARGUMENT if max_agents < 1 or above what 32 bits
// hold at kMinLevels.
StatusOr<RingSpec> ChooseRing(int max_agents);

// Bytes one ring element takes on the wire (bits / 8).
inline size_t RingElementBytes(const RingSpec& ring) { return static_cast<size_t>(ring.bits / 8); }

// The public random rotation (see the file comment), in place; `inverse` undoes it.
// Orthonormal: norms are kept, and the inverse of the forward map is exact up to
// floating-point rounding.
void Rotate(std::vector<double>* values, uint64_t seed, bool inverse);

// Clip to [-range, range], scale, stochastically round with `rng`, reduce modulo
// 2^bits. `clipped` (optional) counts the coordinates that were clipped.
std::vector<uint32_t> QuantizeToRing(const std::vector<double>& values, double range, const RingSpec& ring,
                                     std::mt19937_64& rng, int64_t* clipped = nullptr);

// The signed value of every element (two's complement over `bits`) times range / levels.
std::vector<double> DecodeRing(const std::vector<uint32_t>& ring_values, double range, const RingSpec& ring);

// acc += sign * x (mod 2^bits). Sizes must match.
void RingAdd(std::vector<uint32_t>* acc, const std::vector<uint32_t>& x, int bits, int sign = 1);

// Little-endian packing, bits / 8 bytes per element.
std::string PackRing(const std::vector<uint32_t>& ring_values, int bits);
// INVALID_ARGUMENT unless `bytes` holds exactly `count` elements.
StatusOr<std::vector<uint32_t>> UnpackRing(const std::string& bytes, int bits, size_t count);

}  // namespace fedge::secagg
