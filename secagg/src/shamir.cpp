#include "fedge/secagg/shamir.h"

#include <set>

namespace fedge::secagg {

namespace {

constexpr size_t kWordBytes = 7;
constexpr uint64_t kP = kShamirPrime;

uint64_t Reduce(unsigned __int128 v) {
  // 2^61 = 1 (mod p): fold the high bits down twice.
  uint64_t lo = static_cast<uint64_t>(v & kP);
  uint64_t hi = static_cast<uint64_t>(v >> 61);
  uint64_t r = lo + hi;
  r = (r & kP) + (r >> 61);
  return r >= kP ? r - kP : r;
}
uint64_t Add(uint64_t a, uint64_t b) { return Reduce(static_cast<unsigned __int128>(a) + b); }
uint64_t Sub(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kP - b; }
uint64_t Mul(uint64_t a, uint64_t b) { return Reduce(static_cast<unsigned __int128>(a) * b); }
uint64_t Pow(uint64_t a, uint64_t e) {
  uint64_t r = 1;
  while (e) {
    if (e & 1) r = Mul(r, a);
    a = Mul(a, a);
    e >>= 1;
  }
  return r;
}
uint64_t Inv(uint64_t a) { return Pow(a, kP - 2); }  // Fermat; a != 0

StatusOr<uint64_t> RandomFieldElement() {
  for (;;) {  // rejection sampling: uniform over [0, p)
    FEDGE_ASSIGN_OR_RETURN(Bytes b, RandomBytes(8));
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(b[i])) << (8 * i);
    v &= (uint64_t{1} << 61) - 1;
    if (v < kP) return v;
  }
}

}  // namespace

StatusOr<std::vector<ShamirShare>> ShamirSplit(const Bytes& secret, int threshold,
                                               const std::vector<uint32_t>& xs) {
  if (threshold < 1 || static_cast<size_t>(threshold) > xs.size()) {
    return InvalidArgumentError("Shamir threshold " + std::to_string(threshold) + " must be in [1, " +
                                std::to_string(xs.size()) + "] (the number of share holders)");
  }
  std::set<uint32_t> seen;
  for (uint32_t x : xs) {
    if (x == 0 || !seen.insert(x).second) {
      return InvalidArgumentError("Shamir share points must be distinct and non-zero");
    }
  }
  const size_t words = (secret.size() + kWordBytes - 1) / kWordBytes;
  std::vector<ShamirShare> shares(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    shares[i].x = xs[i];
    shares[i].y.assign(words, 0);
  }
  std::vector<uint64_t> coeffs(static_cast<size_t>(threshold));
  for (size_t w = 0; w < words; ++w) {
    uint64_t word = 0;
    for (size_t b = 0; b < kWordBytes && w * kWordBytes + b < secret.size(); ++b) {
      word |= static_cast<uint64_t>(static_cast<unsigned char>(secret[w * kWordBytes + b])) << (8 * b);
    }
    coeffs[0] = word;
    for (size_t c = 1; c < coeffs.size(); ++c) {
      FEDGE_ASSIGN_OR_RETURN(coeffs[c], RandomFieldElement());
    }
    for (ShamirShare& s : shares) {
      uint64_t acc = 0;  // Horner
      for (size_t c = coeffs.size(); c-- > 0;) acc = Add(Mul(acc, s.x), coeffs[c]);
      s.y[w] = acc;
    }
  }
  return shares;
}

StatusOr<Bytes> ShamirCombine(const std::vector<ShamirShare>& shares, int threshold, size_t secret_bytes) {
  const size_t words = (secret_bytes + kWordBytes - 1) / kWordBytes;
  std::vector<const ShamirShare*> use;
  std::set<uint32_t> seen;
  for (const ShamirShare& s : shares) {
    if (static_cast<int>(use.size()) == threshold) break;
    if (s.x == 0 || !seen.insert(s.x).second) continue;
    if (s.y.size() != words) return InvalidArgumentError("Shamir share has the wrong length");
    for (uint64_t y : s.y) {
      if (y >= kP) return InvalidArgumentError("Shamir share value outside the field");
    }
    use.push_back(&s);
  }
  if (threshold < 1 || static_cast<int>(use.size()) < threshold) {
    return InvalidArgumentError("need " + std::to_string(threshold) + " shares with distinct points, have " +
                                std::to_string(use.size()));
  }
  // Lagrange basis at 0: l_i = prod_{j != i} x_j / (x_j - x_i).
  std::vector<uint64_t> basis(use.size());
  for (size_t i = 0; i < use.size(); ++i) {
    uint64_t num = 1, den = 1;
    for (size_t j = 0; j < use.size(); ++j) {
      if (j == i) continue;
      num = Mul(num, use[j]->x % kP);
      den = Mul(den, Sub(use[j]->x % kP, use[i]->x % kP));
    }
    basis[i] = Mul(num, Inv(den));
  }
  Bytes out(secret_bytes, '\0');
  for (size_t w = 0; w < words; ++w) {
    uint64_t word = 0;
    for (size_t i = 0; i < use.size(); ++i) word = Add(word, Mul(basis[i], use[i]->y[w]));
    if (word >> (8 * kWordBytes)) return InvalidArgumentError("Shamir shares are inconsistent");
    for (size_t b = 0; b < kWordBytes && w * kWordBytes + b < secret_bytes; ++b) {
      out[w * kWordBytes + b] = static_cast<char>((word >> (8 * b)) & 0xFF);
    }
  }
  return out;
}

Bytes EncodeShare(const ShamirShare& share) {
  Bytes out;
  out.reserve(4 + 8 * share.y.size());
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((share.x >> (8 * i)) & 0xFF));
  for (uint64_t y : share.y) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((y >> (8 * i)) & 0xFF));
  }
  return out;
}

StatusOr<ShamirShare> DecodeShare(const Bytes& bytes) {
  if (bytes.size() < 4 || (bytes.size() - 4) % 8 != 0) return InvalidArgumentError("malformed Shamir share");
  ShamirShare s;
  for (int i = 0; i < 4; ++i) s.x |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  for (size_t off = 4; off < bytes.size(); off += 8) {
    uint64_t y = 0;
    for (int i = 0; i < 8; ++i)
      y |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[off + i])) << (8 * i);
    if (y >= kP) return InvalidArgumentError("Shamir share value outside the field");
    s.y.push_back(y);
  }
  return s;
}

}  // namespace fedge::secagg
