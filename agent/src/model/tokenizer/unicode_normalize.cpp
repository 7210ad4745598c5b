#include "tokenizer/unicode_normalize.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tokenizer/utf8.h"

namespace fedge::agent {
namespace {

struct CombiningClassRange {
  char32_t first;
  char32_t last;
  uint8_t ccc;
};
struct Decomposition {
  char32_t code;
  uint16_t offset;  // into kDecompositionData
  uint8_t length;
};
struct Composition {
  char32_t first;
  char32_t second;
  char32_t composite;
};

#include "tokenizer/normalization_tables.inc"

// A byte that is not valid UTF-8 travels as this marker | byte: no class, no
// decomposition, composes with nothing.
constexpr char32_t kRawByte = 0x80000000;

using namespace hangul;

uint8_t CombiningClass(char32_t c) {
  if (c < 0x300 || c >= kRawByte) return 0;
  auto it = std::upper_bound(std::begin(kCombiningClassRanges), std::end(kCombiningClassRanges), c,
                             [](char32_t x, const CombiningClassRange& r) { return x < r.first; });
  if (it == std::begin(kCombiningClassRanges)) return 0;
  --it;
  return c <= it->last ? it->ccc : 0;
}

void Decompose(char32_t c, std::vector<char32_t>* out) {
  if (AppendHangulJamo(c, out)) return;
  if (c >= 0xC0 && c < kRawByte) {
    auto it = std::lower_bound(std::begin(kDecompositions), std::end(kDecompositions), c,
                               [](const Decomposition& d, char32_t x) { return d.code < x; });
    if (it != std::end(kDecompositions) && it->code == c) {
      out->insert(out->end(), kDecompositionData + it->offset, kDecompositionData + it->offset + it->length);
      return;
    }
  }
  out->push_back(c);
}

// The primary composite of (first, second), or 0.
char32_t Compose(char32_t first, char32_t second) {
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase && second < kVBase + kVCount) {
    return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
  }
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 && second > kTBase &&
      second < kTBase + kTCount) {
    return first + (second - kTBase);
  }
  auto it =
      std::lower_bound(std::begin(kCompositions), std::end(kCompositions), std::make_pair(first, second),
                       [](const Composition& c, const std::pair<char32_t, char32_t>& k) {
                         return c.first != k.first ? c.first < k.first : c.second < k.second;
                       });
  if (it != std::end(kCompositions) && it->first == first && it->second == second) return it->composite;
  return 0;
}

// Code points of `s`; an invalid or truncated sequence yields kRawByte | byte per byte.
std::vector<char32_t> DecodeLossless(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    auto b = static_cast<uint8_t>(s[i]);
    int n = b < 0x80                   ? 1
            : (b >= 0xC2 && b <= 0xDF) ? 2
            : (b >= 0xE0 && b <= 0xEF) ? 3
            : (b >= 0xF0 && b <= 0xF4) ? 4
                                       : 0;
    char32_t c = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
    bool ok = n > 0 && i + static_cast<size_t>(n) <= s.size();
    for (int k = 1; ok && k < n; ++k) {
      auto t = static_cast<uint8_t>(s[i + static_cast<size_t>(k)]);
      ok = (t & 0xC0) == 0x80;
      c = (c << 6) | (t & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not characters.
    if (ok &&
        ((n == 3 && c < 0x800) || (n == 4 && (c < 0x10000 || c > 0x10FFFF)) || (c >= 0xD800 && c <= 0xDFFF)))
      ok = false;
    if (!ok) {
      out.push_back(kRawByte | b);
      ++i;
      continue;
    }
    out.push_back(c);
    i += static_cast<size_t>(n);
  }
  return out;
}

}  // namespace

std::string NfcNormalize(std::string_view utf8) {
  if (std::all_of(utf8.begin(), utf8.end(), [](char ch) { return static_cast<uint8_t>(ch) < 0x80; })) {
    return std::string(utf8);
  }
  std::vector<char32_t> decoded;
  for (char32_t c : DecodeLossless(utf8)) Decompose(c, &decoded);

  // Canonical ordering: a stable sort of each run of non-starters by class.
  for (size_t i = 0; i < decoded.size();) {
    if (CombiningClass(decoded[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < decoded.size() && CombiningClass(decoded[j]) != 0) ++j;
    std::stable_sort(decoded.begin() + static_cast<std::ptrdiff_t>(i),
                     decoded.begin() + static_cast<std::ptrdiff_t>(j),
                     [](char32_t a, char32_t b) { return CombiningClass(a) < CombiningClass(b); });
    i = j;
  }

  // Canonical composition: each character joins the last starter unless a character
  // between them is a starter or has a class >= its own (it is blocked).
  std::vector<char32_t> composed;
  composed.reserve(decoded.size());
  size_t starter = SIZE_MAX;
  int last_class = -1;  // class of the last character kept after the starter; -1: none
  for (char32_t c : decoded) {
    int cls = CombiningClass(c);
    bool blocked = last_class != -1 && (last_class == 0 || last_class >= cls);
    if (starter != SIZE_MAX && !blocked) {
      if (char32_t p = Compose(composed[starter], c); p != 0) {
        composed[starter] = p;
        continue;
      }
    }
    if (cls == 0) {
      starter = composed.size();
      last_class = -1;
    } else {
      last_class = cls;
    }
    composed.push_back(c);
  }

  std::string out;
  out.reserve(utf8.size());
  for (char32_t c : composed) {
    if (c >= kRawByte) {
      out.push_back(static_cast<char>(c & 0xFF));
    } else {
      AppendUtf8(c, &out);
    }
  }
  return out;
}

}  // namespace fedge::agent
