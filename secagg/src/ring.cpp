#include "fedge/secagg/ring.h"

#include <algorithm>
#include <cmath>

namespace fedge::secagg {

namespace {

constexpr size_t kMaxBlock = 1024;

uint32_t Mask(int bits) { return bits == 32 ? 0xFFFFFFFFu : ((1u << bits) - 1); }

// Block sizes covering n with no padding: 1024s, then the binary digits of the rest.
std::vector<size_t> Blocks(size_t n) {
  std::vector<size_t> blocks(n / kMaxBlock, kMaxBlock);
  size_t rest = n % kMaxBlock;
  for (size_t b = kMaxBlock / 2; b >= 1; b /= 2) {
    if (rest & b) blocks.push_back(b);
  }
  return blocks;
}

// Orthonormal Walsh-Hadamard transform (its own inverse).
void Wht(double* v, size_t n) {
  for (size_t h = 1; h < n; h *= 2) {
    for (size_t i = 0; i < n; i += 2 * h) {
      for (size_t j = i; j < i + h; ++j) {
        const double a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
    }
  }
  const double s = 1.0 / std::sqrt(static_cast<double>(n));
  for (size_t i = 0; i < n; ++i) v[i] *= s;
}

}  // namespace

StatusOr<RingSpec> ChooseRing(int max_agents) {
  if (max_agents < 1) return InvalidArgumentError("secure aggregation needs at least one agent");
  for (int bits : {16, 32}) {
    const int64_t half = (int64_t{1} << (bits - 1)) - 1;
    const int64_t levels = half / max_agents;
    if (levels >= kMinLevels) return RingSpec{bits, levels};
  }
  return InvalidArgumentError("too many agents (" + std::to_string(max_agents) +
                              ") for a 32-bit secure-aggregation ring at int8 resolution");
}

void Rotate(std::vector<double>* values, uint64_t seed, bool inverse) {
  std::vector<double>& v = *values;
  const size_t n = v.size();
  if (n == 0) return;
  // std::mt19937_64's output is fixed by the standard; the distributions are not, so
  // indices and signs are drawn from raw words.
  std::mt19937_64 rng(seed);
  std::vector<size_t> perm(n);
  for (size_t i = 0; i < n; ++i) perm[i] = i;
  for (size_t i = n - 1; i > 0; --i) std::swap(perm[i], perm[rng() % (i + 1)]);
  std::vector<double> sign(n);
  for (size_t i = 0; i < n; ++i) sign[i] = (rng() & 1) ? -1.0 : 1.0;
  const std::vector<size_t> blocks = Blocks(n);
  if (!inverse) {
    std::vector<double> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = v[perm[i]] * sign[i];
    size_t off = 0;
    for (size_t b : blocks) {
      Wht(out.data() + off, b);
      off += b;
    }
    v.swap(out);
  } else {
    size_t off = 0;
    for (size_t b : blocks) {
      Wht(v.data() + off, b);
      off += b;
    }
    std::vector<double> out(n);
    for (size_t i = 0; i < n; ++i) out[perm[i]] = v[i] * sign[i];
    v.swap(out);
  }
}

std::vector<uint32_t> QuantizeToRing(const std::vector<double>& values, double range, const RingSpec& ring,
                                     std::mt19937_64& rng, int64_t* clipped) {
  std::vector<uint32_t> out(values.size());
  const double scale = static_cast<double>(ring.levels) / range;
  const double lv = static_cast<double>(ring.levels);
  const uint32_t mask = Mask(ring.bits);
  int64_t clips = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    double x = std::isfinite(values[i]) ? values[i] * scale : 0.0;
    if (x > lv || x < -lv) {
      ++clips;
      x = std::clamp(x, -lv, lv);
    }
    const double fl = std::floor(x);
    // Unbiased: round up with probability equal to the fractional part.
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    const int64_t q = static_cast<int64_t>(fl) + (u < x - fl ? 1 : 0);
    out[i] = static_cast<uint32_t>(static_cast<uint64_t>(q)) & mask;
  }
  if (clipped) *clipped = clips;
  return out;
}

std::vector<double> DecodeRing(const std::vector<uint32_t>& ring_values, double range, const RingSpec& ring) {
  std::vector<double> out(ring_values.size());
  const double step = range / static_cast<double>(ring.levels);
  const int64_t modulus = int64_t{1} << ring.bits;
  const int64_t half = int64_t{1} << (ring.bits - 1);
  for (size_t i = 0; i < ring_values.size(); ++i) {
    int64_t v = static_cast<int64_t>(ring_values[i] & Mask(ring.bits));
    if (v >= half) v -= modulus;
    out[i] = static_cast<double>(v) * step;
  }
  return out;
}

void RingAdd(std::vector<uint32_t>* acc, const std::vector<uint32_t>& x, int bits, int sign) {
  const uint32_t mask = Mask(bits);
  std::vector<uint32_t>& a = *acc;
  for (size_t i = 0; i < a.size() && i < x.size(); ++i) a[i] = (sign > 0 ? a[i] + x[i] : a[i] - x[i]) & mask;
}

std::string PackRing(const std::vector<uint32_t>& ring_values, int bits) {
  const size_t width = static_cast<size_t>(bits / 8);
  std::string out(ring_values.size() * width, '\0');
  for (size_t i = 0; i < ring_values.size(); ++i) {
    for (size_t b = 0; b < width; ++b)
      out[i * width + b] = static_cast<char>((ring_values[i] >> (8 * b)) & 0xFF);
  }
  return out;
}

StatusOr<std::vector<uint32_t>> UnpackRing(const std::string& bytes, int bits, size_t count) {
  const size_t width = static_cast<size_t>(bits / 8);
  if (bytes.size() != count * width) {
    return InvalidArgumentError("masked input has " + std::to_string(bytes.size()) + " bytes; expected " +
                                std::to_string(count * width) + " (" + std::to_string(count) + " values of " +
                                std::to_string(bits) + " bits)");
  }
  std::vector<uint32_t> out(count);
  for (size_t i = 0; i < count; ++i) {
    uint32_t v = 0;
    for (size_t b = 0; b < width; ++b)
      v |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[i * width + b])) << (8 * b);
    out[i] = v;
  }
  return out;
}

}  // namespace fedge::secagg
