// Unicode normalization form C (UAX #15) for tokenizer.json's NFC normalizer
// (Qwen2.5's tokenizer has one). Torch-free; the tables are generated from Python's
// unicodedata by gen_normalization_tables.py.
#pragma once

#include <string>
#include <string_view>

namespace fedge::agent {

// Hangul syllables (Unicode ch. 3.12): S = SBase + (L * VCount + V) * TCount + T.
namespace hangul {
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kSCount = kLCount * kVCount * kTCount;
}  // namespace hangul

// Appends the jamo L V [T] of Hangul syllable `c` to `out` (a container of char32_t)
// and returns true; false, appending nothing, for any other code point.
template <typename Container>
bool AppendHangulJamo(char32_t c, Container* out) {
  using namespace hangul;
  if (c < kSBase || c >= kSBase + kSCount) return false;
  char32_t s = c - kSBase;
  out->push_back(kLBase + s / (kVCount * kTCount));
  out->push_back(kVBase + (s % (kVCount * kTCount)) / kTCount);
  if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
  return true;
}

// `utf8` in NFC: canonical decomposition, canonical ordering of combining marks,
// canonical composition (Hangul algorithmically). Bytes that are not valid UTF-8 are
// copied unchanged and block composition across them. ASCII-only text returns as is.
std::string NfcNormalize(std::string_view utf8);

}  // namespace fedge::agent
