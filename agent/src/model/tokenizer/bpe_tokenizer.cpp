// Byte-level BPE (see fedge/agent/llm/bpe_tokenizer.h for the pipeline).
//
// The pre-tokenizer regexes are implemented as scanners that reproduce the
// leftmost-first alternation semantics of the patterns, alternative by alternative:
//   GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   Llama-3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   Qwen2:   the Llama-3 pattern with \p{N} (one digit per piece).
#include "fedge/agent/llm/bpe_tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <climits>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "fedge/file_util.h"
#include "tokenizer/unicode_normalize.h"
#include "tokenizer/utf8.h"

namespace fedge::agent::llm {
namespace {

enum UnicodeClass : uint8_t { kL, kN };
struct UnicodeClassRange {
  char32_t first;
  char32_t last;
  UnicodeClass cls;
};
#include "bpe_tokenizer_unicode.inc"

enum class CharClass { kLetter, kNumber, kSpace, kOther };

// Oniguruma's \s for Unicode text: the White_Space property.
bool IsWhiteSpace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

CharClass Classify(char32_t c) {
  if (IsWhiteSpace(c)) return CharClass::kSpace;
  if (c < 0x80) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return CharClass::kLetter;
    if (c >= '0' && c <= '9') return CharClass::kNumber;
    return CharClass::kOther;
  }
  const auto* end = std::end(kUnicodeClassRanges);
  const auto* it = std::upper_bound(std::begin(kUnicodeClassRanges), end, c,
                                    [](char32_t v, const UnicodeClassRange& r) { return v < r.first; });
  if (it == std::begin(kUnicodeClassRanges)) return CharClass::kOther;
  --it;
  if (c > it->last) return CharClass::kOther;
  return it->cls == kL ? CharClass::kLetter : CharClass::kNumber;
}

// Expected continuation count and the allowed range of the first continuation byte.
bool LeadByte(uint8_t b, int* need, uint8_t* lo, uint8_t* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF)
    *need = 1;
  else if (b == 0xE0)
    *need = 2, *lo = 0xA0;
  else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF)
    *need = 2;
  else if (b == 0xED)
    *need = 2, *hi = 0x9F;
  else if (b == 0xF0)
    *need = 3, *lo = 0x90;
  else if (b >= 0xF1 && b <= 0xF3)
    *need = 3;
  else if (b == 0xF4)
    *need = 3, *hi = 0x8F;
  else
    return false;
  return true;
}

// Number of bytes from i that form a valid character (>0), or minus the length of
// the maximal invalid subpart (<0), or 0 if the bytes end inside a valid prefix.
int ScanUtf8Char(std::string_view s, size_t i) {
  auto b = static_cast<uint8_t>(s[i]);
  if (b < 0x80) return 1;
  int need;
  uint8_t lo, hi;
  if (!LeadByte(b, &need, &lo, &hi)) return -1;
  for (int k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return 0;
    auto c = static_cast<uint8_t>(s[i + k]);
    if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) return -k;
  }
  return need + 1;
}

// One decoded code point and where its bytes are. Invalid UTF-8 bytes become
// single-byte "other" characters so that every input byte is tokenized.
struct CodePoint {
  char32_t c;
  uint32_t begin;
  uint32_t end;
  CharClass cls;
};

std::vector<CodePoint> DecodeCodePoints(std::string_view s) {
  std::vector<CodePoint> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    int r = ScanUtf8Char(s, i);
    auto b = static_cast<uint8_t>(s[i]);
    if (r <= 0) {  // invalid or truncated: this byte alone, tokenized as itself
      out.push_back({0xFFFD, static_cast<uint32_t>(i), static_cast<uint32_t>(i + 1), CharClass::kOther});
      ++i;
      continue;
    }
    char32_t c = r == 1 ? b : r == 2 ? (b & 0x1F) : r == 3 ? (b & 0x0F) : (b & 0x07);
    for (int k = 1; k < r; ++k) c = (c << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
    out.push_back({c, static_cast<uint32_t>(i), static_cast<uint32_t>(i + r), Classify(c)});
    i += static_cast<size_t>(r);
  }
  return out;
}

bool IsCrLf(char32_t c) { return c == '\r' || c == '\n'; }

char32_t AsciiLower(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c == 0x17F) return 's';  // LATIN SMALL LETTER LONG S case-folds to s
  return c;
}

// Length (in code points) of a contraction 's 't 're 've 'm 'll 'd at i, or 0.
size_t MatchContraction(const std::vector<CodePoint>& cp, size_t i, bool ignore_case) {
  if (cp[i].c != '\'' || i + 1 >= cp.size()) return 0;
  auto at = [&](size_t k) { return ignore_case ? AsciiLower(cp[k].c) : cp[k].c; };
  char32_t c1 = at(i + 1);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (i + 2 >= cp.size()) return 0;
  char32_t c2 = at(i + 2);
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  return 0;
}

size_t RunOf(const std::vector<CodePoint>& cp, size_t i, CharClass cls, size_t max_len = SIZE_MAX) {
  size_t j = i;
  while (j < cp.size() && cp[j].cls == cls && j - i < max_len) ++j;
  return j;
}

// \s+(?!\S)|\s+ starting at a whitespace character i: the whole run, except that a
// run of two or more followed by a non-space leaves its last character behind.
size_t WhitespaceTail(const std::vector<CodePoint>& cp, size_t i) {
  size_t j = RunOf(cp, i, CharClass::kSpace);
  if (j < cp.size() && j - i >= 2) return j - 1;
  return j;
}

using Spans = std::vector<std::pair<size_t, size_t>>;  // code point index ranges

Spans ScanGpt2(const std::vector<CodePoint>& cp) {
  Spans out;
  size_t i = 0, n = cp.size();
  while (i < n) {
    size_t end;
    if (size_t k = MatchContraction(cp, i, /*ignore_case=*/false)) {
      end = i + k;
    } else if (cp[i].c == ' ' && i + 1 < n && cp[i + 1].cls != CharClass::kSpace) {
      end = RunOf(cp, i + 1, cp[i + 1].cls);
    } else if (cp[i].cls != CharClass::kSpace) {
      end = RunOf(cp, i, cp[i].cls);
    } else {
      end = WhitespaceTail(cp, i);
    }
    out.emplace_back(i, end);
    i = end;
  }
  return out;
}

Spans ScanLlama3(const std::vector<CodePoint>& cp, size_t max_digits) {
  Spans out;
  size_t i = 0, n = cp.size();
  while (i < n) {
    const CodePoint& c = cp[i];
    size_t end = 0;
    if (size_t k = MatchContraction(cp, i, /*ignore_case=*/true)) {
      end = i + k;
    } else if (c.cls == CharClass::kLetter) {
      end = RunOf(cp, i, CharClass::kLetter);
    } else if (c.cls != CharClass::kNumber && !IsCrLf(c.c) && i + 1 < n &&
               cp[i + 1].cls == CharClass::kLetter) {
      end = RunOf(cp, i + 1, CharClass::kLetter);  // [^\r\n\p{L}\p{N}]?\p{L}+
    } else if (c.cls == CharClass::kNumber) {
      end = RunOf(cp, i, CharClass::kNumber, max_digits);
    } else if (c.cls == CharClass::kOther ||
               (c.c == ' ' && i + 1 < n && cp[i + 1].cls == CharClass::kOther)) {
      end = RunOf(cp, c.cls == CharClass::kOther ? i : i + 1, CharClass::kOther);
      while (end < n && IsCrLf(cp[end].c)) ++end;  // [\r\n]*
    } else {
      // \s*[\r\n]+ : up to the last CR/LF of the whitespace run, if it has one.
      size_t run_end = RunOf(cp, i, CharClass::kSpace);
      size_t last_crlf = SIZE_MAX;
      for (size_t k = i; k < run_end; ++k) {
        if (IsCrLf(cp[k].c)) last_crlf = k;
      }
      end = last_crlf != SIZE_MAX ? last_crlf + 1 : WhitespaceTail(cp, i);
    }
    out.emplace_back(i, end);
    i = end;
  }
  return out;
}

// GPT-2's bytes_to_unicode().
std::array<char32_t, 256> MakeByteToUnicode() {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return table;
}

const std::array<char32_t, 256>& ByteTable() {
  static const std::array<char32_t, 256> table = MakeByteToUnicode();
  return table;
}

const std::string kPatternGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const std::string kPatternLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const std::string kPatternQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

enum class SplitKind { kGpt2, kLlama3, kQwen2 };

struct PreTokStep {
  enum Type { kSplit, kDigits, kByteLevel } type;
  SplitKind split = SplitKind::kGpt2;  // kSplit; kByteLevel with use_regex uses kGpt2
  bool individual_digits = false;      // kDigits
  bool use_regex = true;               // kByteLevel
  bool add_prefix_space = false;       // kByteLevel
};

// A Split pre-tokenizer with a {"String": s} pattern on a SentencePiece-style
// tokenizer (Gemma 3's Split(" ", MergedWithPrevious) after its " " -> U+2581
// normalizer). `tokenizers`' SplitDelimiterBehavior: the matched delimiter is its own
// piece (Isolated), dropped (Removed), joined to the piece before or after it, or runs
// of it are one piece (Contiguous).
struct StringSplit {
  enum Behavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous } behavior;
  std::string delimiter;

  // Appends the pieces of `s` to `out` (empty pieces are left out, as `tokenizers`
  // drops them).
  void Apply(const std::string& s, std::vector<std::string>* out) const {
    const size_t d = delimiter.size();
    size_t begin = 0;  // start of the pending piece
    size_t i = 0;      // search position
    auto emit = [&](size_t a, size_t b) {
      if (b > a) out->push_back(s.substr(a, b - a));
    };
    for (size_t hit; (hit = s.find(delimiter, i)) != std::string::npos; i = hit + d) {
      switch (behavior) {
        case kIsolated:
          emit(begin, hit);
          emit(hit, hit + d);
          begin = hit + d;
          break;
        case kRemoved:
          emit(begin, hit);
          begin = hit + d;
          break;
        case kMergedWithPrevious:
          emit(begin, hit + d);
          begin = hit + d;
          break;
        case kMergedWithNext:
          emit(begin, hit);
          begin = hit;
          break;
        case kContiguous: {
          size_t end = hit + d;
          while (s.compare(end, d, delimiter) == 0) end += d;
          emit(begin, hit);
          emit(hit, end);
          begin = end;
          hit = end - d;
          break;
        }
      }
    }
    emit(begin, s.size());
  }
};

// Where the UTF-8 character that ends just before `end` starts: back over at most
// three continuation bytes (a stray byte is a character of its own).
size_t LastCharStart(std::string_view s, size_t end) {
  size_t start = end - 1;
  while (start > 0 && end - start < 4 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return start;
}

// SentencePiece's word marker, U+2581 LOWER ONE EIGHTH BLOCK.
const char kMetaspace[] = "\xE2\x96\x81";

void ReplaceAll(std::string* s, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  std::string out;
  size_t i = 0;
  for (size_t hit; (hit = s->find(from, i)) != std::string::npos; i = hit + from.size()) {
    out.append(*s, i, hit - i);
    out += to;
  }
  if (i == 0) return;
  out.append(*s, i, std::string::npos);
  *s = std::move(out);
}

// The byte a "<0xXX>" token stands for (ByteFallback), or -1.
int FallbackByte(const std::string& token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
  int v = 0;
  for (size_t k = 3; k < 5; ++k) {
    char c = token[k];
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                   : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

struct NormalizerStep {
  enum Type { kNfc, kPrepend, kReplace } type;
  std::string text;     // kPrepend: what is prepended; kReplace: the pattern
  std::string content;  // kReplace: its replacement
};

enum class PrependScheme { kAlways, kFirst, kNever };

struct MetaspaceStep {
  bool enabled = false;
  std::string replacement = kMetaspace;
  PrependScheme scheme = PrependScheme::kAlways;
  bool split = true;
};

struct DecoderStep {
  enum Type { kReplace, kByteFallback, kFuse, kStrip, kMetaspace } type;
  std::string text;            // kReplace: pattern; kStrip: the character; kMetaspace: replacement
  std::string content;         // kReplace: replacement
  size_t start = 0, stop = 0;  // kStrip
  PrependScheme scheme = PrependScheme::kAlways;  // kMetaspace
};

struct AddedToken {
  std::string content;
  int32_t id;
  bool special;
  bool lstrip;
  bool rstrip;
};

// The added tokens as a byte trie: the longest one at a position in O(its length),
// not O(number of added tokens) (Gemma 3 has 6,415, nearly all starting with '<').
class AddedTrie {
 public:
  void Insert(const std::string& content, int32_t index) {
    int32_t node = 0;
    for (char ch : content) {
      const auto b = static_cast<uint8_t>(ch);
      int32_t child = Child(node, b);
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[static_cast<size_t>(node)].next.emplace_back(b, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    if (nodes_[static_cast<size_t>(node)].index < 0) nodes_[static_cast<size_t>(node)].index = index;
  }
  // The index of the longest token `text` has at `i`, -1 if none.
  int32_t LongestAt(std::string_view text, size_t i) const {
    int32_t node = 0, best = -1;
    for (size_t k = i; k < text.size(); ++k) {
      node = Child(node, static_cast<uint8_t>(text[k]));
      if (node < 0) break;
      if (nodes_[static_cast<size_t>(node)].index >= 0) best = nodes_[static_cast<size_t>(node)].index;
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> next;
    int32_t index = -1;
  };
  int32_t Child(int32_t node, uint8_t b) const {
    for (const auto& [byte, child] : nodes_[static_cast<size_t>(node)].next) {
      if (byte == b) return child;
    }
    return -1;
  }
  std::vector<Node> nodes_{Node{}};
};

std::vector<std::string> ApplyStep(const PreTokStep& step, const std::vector<std::string>& pieces) {
  std::vector<std::string> out;
  for (const std::string& piece_in : pieces) {
    std::string piece = piece_in;
    if (step.type == PreTokStep::kByteLevel && step.add_prefix_space && (piece.empty() || piece[0] != ' ')) {
      piece.insert(piece.begin(), ' ');
    }
    if (step.type == PreTokStep::kDigits) {
      size_t i = 0;
      while (i < piece.size()) {
        bool digit = piece[i] >= '0' && piece[i] <= '9';
        size_t j = i + 1;
        if (!digit || !step.individual_digits) {
          while (j < piece.size() && (piece[j] >= '0' && piece[j] <= '9') == digit) ++j;
        }
        out.push_back(piece.substr(i, j - i));
        i = j;
      }
      continue;
    }
    if (step.type == PreTokStep::kByteLevel && !step.use_regex) {
      out.push_back(std::move(piece));
      continue;
    }
    std::vector<CodePoint> cps = DecodeCodePoints(piece);
    SplitKind kind = step.type == PreTokStep::kByteLevel ? SplitKind::kGpt2 : step.split;
    Spans spans = kind == SplitKind::kGpt2     ? ScanGpt2(cps)
                  : kind == SplitKind::kLlama3 ? ScanLlama3(cps, 3)
                                               : ScanLlama3(cps, 1);
    for (auto [a, b] : spans) out.push_back(piece.substr(cps[a].begin, cps[b - 1].end - cps[a].begin));
  }
  return out;
}

}  // namespace

struct BpeTokenizer::Impl {
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;                              // vocab and added tokens
  std::vector<uint8_t> special;                                      // per id
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (a,b) -> (rank, merged id)
  std::vector<AddedToken> added;
  std::array<bool, 256> added_first_byte{};  // bytes an added token starts with
  AddedTrie added_trie;                      // indexes into `added`
  std::vector<PreTokStep> steps;             // byte-level: ends with ByteLevel
  bool ignore_merges = false;
  std::vector<NormalizerStep> normalizers;  // applied to each span between added tokens
  // Byte-level (a ByteLevel pre-tokenizer) or SentencePiece-style (characters).
  bool byte_level = true;
  MetaspaceStep metaspace;                 // SentencePiece-style pre-tokenizer, if any
  std::vector<StringSplit> string_splits;  // SentencePiece-style: Split on strings, in order
  bool byte_fallback = false;
  int32_t unk_id = -1;  // model.unk_token's id, -1 if none
  bool fuse_unk = false;
  std::array<int32_t, 256> byte_id{};  // byte-level: id of each single-byte token, -1 if absent
  std::unordered_map<char32_t, uint8_t> unicode_to_byte;
  std::unordered_map<char32_t, int32_t> char_id;  // SentencePiece-style: one-character tokens
  std::array<int32_t, 256> fallback_id{};         // ids of <0x00>..<0xFF>, -1 if absent
  std::vector<DecoderStep> decoders;              // SentencePiece-style decoder chain
  // SentencePiece-style: a span is one BPE word, so merging ran over the whole span.
  // A merge can cross the start of a marked word only where a vocabulary token has
  // the character before it followed by this marker: elsewhere the span is merged
  // word by word (the same ids; SentencePiece itself splits there), short words
  // taking the fast path.
  std::string word_marker;
  std::unordered_set<std::string> joins_marker;  // characters some token has before a word_marker
  std::vector<int32_t> prefix;                   // post_processor: special tokens before $A
  // TextBytesTable(), built on first use.
  mutable std::once_flag text_bytes_once;
  mutable std::vector<std::string> text_bytes;

  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // Words up to this many symbols (nearly all of them) rescan for the best pair: no
  // allocation, and faster than the heap at this size.
  static constexpr size_t kShortWord = 24;

  void MergeShortWord(std::vector<int32_t>* syms) const {
    std::vector<int32_t>& id = *syms;
    while (id.size() > 1) {
      int32_t best_rank = INT32_MAX, best_id = -1;
      size_t best_pos = 0;
      for (size_t k = 0; k + 1 < id.size(); ++k) {
        auto it = merges.find(PairKey(id[k], id[k + 1]));
        if (it != merges.end() && it->second.first < best_rank) {
          best_rank = it->second.first;
          best_id = it->second.second;
          best_pos = k;
        }
      }
      if (best_id < 0) break;
      id[best_pos] = best_id;
      id.erase(id.begin() + static_cast<std::ptrdiff_t>(best_pos) + 1);
    }
  }

  // Merges the lowest-ranked adjacent pair (leftmost on ties) until none applies: the
  // same order as tokenizers' priority queue, since a merge's rank is always above the
  // ranks of the merges that built its parts. Past kShortWord symbols, a heap of
  // candidate pairs over a linked list keeps this O(n log n) in the word's length:
  // rescanning the word for each merge was quadratic: a 16 KiB prompt (the inference
  // API's cap) of one repeated syllable took 0.54 s on the thread that holds the model
  // (1.5 ms now), and a 1 MiB word in a training line (uncapped) ~38 minutes by the n^2 law.
  void MergeSymbols(std::vector<int32_t>* syms) const {
    const size_t n = syms->size();
    if (n < 2) return;
    if (n <= kShortWord) {
      MergeShortWord(syms);
      return;
    }
    struct Candidate {
      int32_t rank;
      uint32_t left;  // position of the pair's left symbol (positions keep their order)
      int32_t left_id, right_id, merged_id;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::vector<int32_t>& id = *syms;
    std::vector<uint32_t> next(n), prev(n);
    constexpr uint32_t kNone = UINT32_MAX;
    for (size_t k = 0; k < n; ++k) {
      next[k] = k + 1 < n ? static_cast<uint32_t>(k + 1) : kNone;
      prev[k] = k > 0 ? static_cast<uint32_t>(k - 1) : kNone;
    }
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    auto consider = [&](uint32_t left) {
      if (left == kNone || next[left] == kNone) return;
      auto it = merges.find(PairKey(id[left], id[next[left]]));
      if (it != merges.end())
        heap.push({it->second.first, left, id[left], id[next[left]], it->second.second});
    };
    for (size_t k = 0; k + 1 < n; ++k) consider(static_cast<uint32_t>(k));
    std::vector<bool> alive(n, true);
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      // Stale: a symbol of the pair was merged away or changed since it was queued.
      const uint32_t right = next[c.left];
      if (!alive[c.left] || right == kNone || id[c.left] != c.left_id || id[right] != c.right_id) continue;
      id[c.left] = c.merged_id;
      alive[right] = false;
      next[c.left] = next[right];
      if (next[right] != kNone) prev[next[right]] = c.left;
      consider(prev[c.left]);
      consider(c.left);
    }
    size_t out = 0;
    for (size_t k = 0; k < n; k = next[k]) {
      id[out++] = id[k];
      if (next[k] == kNone) break;
    }
    id.resize(out);
  }

  // A character the vocabulary lacks: its bytes as <0xXX> tokens if all exist
  // (byte_fallback), else the unknown token, consecutive ones fused into one
  // (fuse_unk), else nothing (as tokenizers' BPE::merge_word).
  void AddUnknown(std::string_view bytes, std::vector<int32_t>* syms, bool* pending_unk) const {
    if (byte_fallback) {
      bool all = true;
      for (unsigned char b : bytes) all = all && fallback_id[b] >= 0;
      if (all) {
        for (unsigned char b : bytes) syms->push_back(fallback_id[b]);
        *pending_unk = false;
        return;
      }
    }
    if (unk_id < 0) return;
    if (!(fuse_unk && *pending_unk)) syms->push_back(unk_id);
    *pending_unk = true;
  }

  void EncodeWord(const std::string& bytes, std::vector<int32_t>* ids) const {
    if (!byte_level) return EncodeCharacters(bytes, ids);
    std::string mapped;
    for (unsigned char b : bytes) AppendUtf8(ByteTable()[b], &mapped);
    if (ignore_merges) {
      if (auto it = vocab.find(mapped); it != vocab.end()) {
        ids->push_back(it->second);
        return;
      }
    }
    std::vector<int32_t> syms;
    syms.reserve(bytes.size());
    bool pending_unk = false;
    for (unsigned char b : bytes) {
      if (byte_id[b] >= 0) {
        syms.push_back(byte_id[b]);
        pending_unk = false;
      } else {
        AddUnknown({}, &syms, &pending_unk);  // unk token if any, else dropped
      }
    }
    MergeSymbols(&syms);
    ids->insert(ids->end(), syms.begin(), syms.end());
  }

  // SentencePiece-style: the word's characters are the initial symbols. A byte that
  // is not valid UTF-8 is a character no vocabulary has (so <0xXX> or unknown).
  void EncodeCharacters(const std::string& word, std::vector<int32_t>* ids) const {
    if (ignore_merges) {
      if (auto it = vocab.find(word); it != vocab.end()) {
        ids->push_back(it->second);
        return;
      }
    }
    std::vector<int32_t> syms;
    syms.reserve(word.size());
    bool pending_unk = false;
    size_t i = 0;
    while (i < word.size()) {
      const int r = ScanUtf8Char(word, i);
      const size_t len = r > 0 ? static_cast<size_t>(r) : 1;
      auto it = char_id.end();
      if (r > 0) {
        auto b = static_cast<uint8_t>(word[i]);
        char32_t c = r == 1 ? b : r == 2 ? (b & 0x1F) : r == 3 ? (b & 0x0F) : (b & 0x07);
        for (int k = 1; k < r; ++k) c = (c << 6) | (static_cast<uint8_t>(word[i + k]) & 0x3F);
        it = char_id.find(c);
      }
      if (it != char_id.end()) {
        syms.push_back(it->second);
        pending_unk = false;
      } else {
        AddUnknown(std::string_view(word).substr(i, len), &syms, &pending_unk);
      }
      i += len;
    }
    MergeSymbols(&syms);
    ids->insert(ids->end(), syms.begin(), syms.end());
  }

  // Splits before each marker that follows another character ("\u2581the\u2581\u2581cat"
  // -> "\u2581the", "\u2581\u2581cat") unless no vocabulary token joins that character
  // to a marker (joins_marker); one word without a word_marker.
  void EncodeMarkedWords(const std::string& s, std::vector<int32_t>* ids) const {
    const std::string& m = word_marker;
    if (m.empty()) return EncodeCharacters(s, ids);
    size_t begin = 0;
    for (size_t hit = s.find(m, 1); hit != std::string::npos; hit = s.find(m, hit + m.size())) {
      if (hit >= m.size() && s.compare(hit - m.size(), m.size(), m) == 0) continue;  // after a marker
      if (!joins_marker.empty()) {
        const size_t c = LastCharStart(s, hit);
        if (joins_marker.count(s.substr(c, hit - c)) > 0) continue;  // a token spans it
      }
      EncodeCharacters(s.substr(begin, hit - begin), ids);
      begin = hit;
    }
    EncodeCharacters(s.substr(begin), ids);
  }

  // `at_start`: the span begins the text. Prepend and Metaspace "always" mark every
  // span, "first" only the one at the start; none marks the first span of a
  // continuation.
  void EncodeSpan(std::string_view text, bool at_start, bool continuation, std::vector<int32_t>* ids) const {
    const bool mark_any = !(at_start && continuation);
    if (text.empty()) return;
    std::string s(text);
    for (const NormalizerStep& n : normalizers) {
      if (n.type == NormalizerStep::kNfc) {
        s = NfcNormalize(s);
      } else if (n.type == NormalizerStep::kPrepend) {
        if (mark_any && !s.empty()) s.insert(0, n.text);
      } else {
        ReplaceAll(&s, n.text, n.content);
      }
    }
    if (metaspace.enabled) {
      ReplaceAll(&s, " ", metaspace.replacement);
      const bool starts = s.compare(0, metaspace.replacement.size(), metaspace.replacement) == 0;
      if (!starts && mark_any &&
          (metaspace.scheme == PrependScheme::kAlways ||
           (metaspace.scheme == PrependScheme::kFirst && at_start))) {
        s.insert(0, metaspace.replacement);
      }
      if (!metaspace.split) return EncodeMarkedWords(s, ids);
      // Split before each marker (MergedWithNext): "a\u2581\u2581b" -> "a", "\u2581", "\u2581b".
      const std::string& m = metaspace.replacement;
      size_t begin = 0;
      for (size_t hit = s.find(m, 1); hit != std::string::npos; hit = s.find(m, hit + m.size())) {
        if (hit > begin) EncodeCharacters(s.substr(begin, hit - begin), ids);
        begin = hit;
      }
      if (begin < s.size()) EncodeCharacters(s.substr(begin), ids);
      return;
    }
    if (!byte_level && string_splits.empty()) return EncodeMarkedWords(s, ids);
    if (!byte_level) {
      std::vector<std::string> words{std::move(s)}, next;
      for (const StringSplit& split : string_splits) {
        next.clear();
        for (const std::string& w : words) split.Apply(w, &next);
        words.swap(next);
      }
      for (const std::string& w : words) EncodeMarkedWords(w, ids);
      return;
    }
    std::vector<std::string> pieces{std::move(s)};
    for (const PreTokStep& step : steps) pieces = ApplyStep(step, pieces);
    for (const std::string& piece : pieces) {
      if (!piece.empty()) EncodeWord(piece, ids);
    }
  }

  // tokenizers' decoder chain over the token strings (SentencePiece-style).
  std::string DecodeTokens(std::vector<std::string> tokens) const {
    for (const DecoderStep& d : decoders) {
      switch (d.type) {
        case DecoderStep::kReplace:
          for (std::string& t : tokens) ReplaceAll(&t, d.text, d.content);
          break;
        case DecoderStep::kMetaspace:
          // The first token loses every marker (the prepended one), the others read
          // them as spaces.
          for (size_t k = 0; k < tokens.size(); ++k) {
            ReplaceAll(&tokens[k], d.text, k == 0 && d.scheme != PrependScheme::kNever ? "" : " ");
          }
          break;
        case DecoderStep::kByteFallback: {
          // A run of <0xXX> tokens is its bytes if they are valid UTF-8, else one
          // U+FFFD per byte.
          std::vector<std::string> out;
          std::string run;
          size_t run_len = 0;
          auto flush = [&] {
            if (run_len == 0) return;
            if (ValidUtf8(run)) {
              out.push_back(run);
            } else {
              for (size_t k = 0; k < run_len; ++k) out.emplace_back("\xEF\xBF\xBD");
            }
            run.clear();
            run_len = 0;
          };
          for (std::string& t : tokens) {
            int b = FallbackByte(t);
            if (b >= 0) {
              run.push_back(static_cast<char>(b));
              ++run_len;
            } else {
              flush();
              out.push_back(std::move(t));
            }
          }
          flush();
          tokens = std::move(out);
          break;
        }
        case DecoderStep::kFuse: {
          std::string all;
          for (const std::string& t : tokens) all += t;
          tokens.assign(1, std::move(all));
          break;
        }
        case DecoderStep::kStrip:
          for (std::string& t : tokens) {
            size_t a = 0, n = d.text.size();
            for (size_t k = 0; k < d.start && t.compare(a, n, d.text) == 0; ++k) a += n;
            size_t b = t.size();
            for (size_t k = 0; k < d.stop && b >= a + n && t.compare(b - n, n, d.text) == 0; ++k) b -= n;
            t = t.substr(a, b - a);
          }
          break;
      }
    }
    std::string out;
    for (const std::string& t : tokens) out += t;
    return out;
  }

  static bool ValidUtf8(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
      int r = ScanUtf8Char(s, i);
      if (r <= 0) return false;
      i += static_cast<size_t>(r);
    }
    return true;
  }
};

// Reads model.vocab and model.merges of a tokenizer.json into `impl` as nlohmann's
// parser meets them (its parser callback), and drops them from the document. The
// first error is kept (later entries are skipped) and returned by status().
class BpeTokenizer::VocabMergesReader {
 public:
  using json = nlohmann::json;
  using ReadId = std::function<Status(const json&, const std::string&, int32_t*)>;

  VocabMergesReader(Impl* impl, ReadId read_id) : impl_(impl), read_id_(std::move(read_id)) {}

  json::parser_callback_t Callback() {
    return [this](int /*depth*/, json::parse_event_t event, json& parsed) { return On(event, parsed); };
  }
  const Status& status() const { return status_; }
  bool saw_vocab() const { return saw_vocab_; }
  bool saw_merges() const { return saw_merges_; }

  // After the parse: the merges met before the vocab was complete are resolved, and
  // the merge table is built at its final size (no rehashing left behind).
  Status ResolvePending() {
    if (!vocab_done_) BuildVocab();
    for (auto& [a, b] : pending_) {
      if (!status_.ok()) break;
      Resolve(a, b);
    }
    pending_.clear();
    if (!status_.ok()) return status_;
    for (size_t r = 0; r < merges_.size(); ++r) {
      const auto& [a, b, merged] = merges_[r];
      impl_->merges.emplace(Impl::PairKey(a, b), std::make_pair(static_cast<int32_t>(r), merged));
    }
    merges_ = {};
    return status_;
  }

 private:
  enum class Where { kOther, kVocab, kMerges, kMergePair };

  // The container the parser is in, as (kind, the key that led to it).
  Where Here() const {
    const size_t n = stack_.size();
    if (n == 3 && stack_[1] == "model") {
      if (stack_[2] == "vocab") return Where::kVocab;
      if (stack_[2] == "merges") return Where::kMerges;
    }
    if (n == 4 && stack_[1] == "model" && stack_[2] == "merges") return Where::kMergePair;
    return Where::kOther;
  }

  bool On(json::parse_event_t event, json& parsed) {
    using E = json::parse_event_t;
    switch (event) {
      case E::key:
        key_ = parsed.get<std::string>();
        return true;
      case E::object_start:
      case E::array_start: {
        const Where where = Here();
        if (where == Where::kMerges && event == E::array_start) pair_.clear();
        stack_.push_back(where == Where::kOther && !stack_.empty() && in_object_.back() ? key_
                                                                                        : std::string());
        in_object_.push_back(event == E::object_start);
        if (stack_.size() == 3 && stack_[1] == "model") {
          if (stack_[2] == "vocab") {
            if (event == E::object_start)
              saw_vocab_ = true;
            else
              Fail(InvalidArgumentError("tokenizer.json: model.vocab must be an object {token: id}"));
          }
          if (stack_[2] == "merges") {
            if (event == E::array_start)
              saw_merges_ = true;
            else
              Fail(InvalidArgumentError("tokenizer.json: model.merges must be an array"));
          }
        }
        if (where == Where::kVocab) entry_key_ = key_;  // an id that is an object or an array
        return true;
      }
      case E::object_end:
      case E::array_end: {
        const Where closing =
            stack_.size() == 3 && stack_[1] == "model" && stack_[2] == "vocab"    ? Where::kVocab
            : stack_.size() == 4 && stack_[1] == "model" && stack_[2] == "merges" ? Where::kMergePair
                                                                                  : Where::kOther;
        const bool vocab_entry = stack_.size() == 4 && stack_[1] == "model" && stack_[2] == "vocab";
        stack_.pop_back();
        in_object_.pop_back();
        if (closing == Where::kVocab) BuildVocab();
        if (vocab_entry) {  // an id that is an object or an array
          Fail(InvalidArgumentError("tokenizer.json: id of token \"" + entry_key_.substr(0, 64) +
                                    "\" is not an integer"));
          return false;
        }
        if (closing == Where::kMergePair) {
          if (pair_.size() != 2 || event != E::array_end) {
            Fail(InvalidArgumentError("tokenizer.json: a merge is neither \"a b\" nor [a, b]"));
          } else {
            Merge(std::move(pair_[0]), std::move(pair_[1]));
          }
          return false;  // not kept in the document
        }
        return true;
      }
      case E::value: {
        const Where where = Here();
        if (where == Where::kVocab) {
          int32_t id = 0;
          if (status_.ok()) {
            if (Status st = read_id_(parsed, key_, &id); !st.ok()) {
              Fail(std::move(st));
            } else {
              vocab_.push_back({vocab_text_.size(), key_.size(), id});
              vocab_text_ += key_;
            }
          }
          return false;
        }
        if (where == Where::kMerges) {
          if (!parsed.is_string()) {
            Fail(InvalidArgumentError("tokenizer.json: a merge is neither \"a b\" nor [a, b]: " +
                                      parsed.dump().substr(0, 64)));
            return false;
          }
          const std::string& m = parsed.get_ref<const std::string&>();
          const size_t sp = m.find(' ');
          if (sp == std::string::npos || m.find(' ', sp + 1) != std::string::npos) {
            Fail(InvalidArgumentError("tokenizer.json: merge \"" + m.substr(0, 64) +
                                      "\" is not two tokens separated by a space"));
            return false;
          }
          Merge(m.substr(0, sp), m.substr(sp + 1));
          return false;
        }
        if (where == Where::kMergePair) {
          if (!parsed.is_string()) {
            Fail(InvalidArgumentError("tokenizer.json: a merge is neither \"a b\" nor [a, b]"));
          } else {
            pair_.push_back(parsed.get<std::string>());
          }
          return false;
        }
        return true;
      }
      default:
        return true;
    }
  }

  // The vocab map built at its final size once the vocab is read.
  void BuildVocab() {
    vocab_done_ = true;
    for (const VocabEntry& e : vocab_) impl_->vocab[vocab_text_.substr(e.offset, e.size)] = e.id;
    vocab_ = {};
    vocab_text_ = {};
  }

  void Fail(Status st) {
    if (status_.ok()) status_ = std::move(st);
  }

  void Merge(std::string a, std::string b) {
    if (!status_.ok()) return;
    if (vocab_done_) {
      Resolve(a, b);
    } else {
      pending_.emplace_back(std::move(a), std::move(b));
    }
  }

  void Resolve(const std::string& a, const std::string& b) {
    auto ia = impl_->vocab.find(a), ib = impl_->vocab.find(b), im = impl_->vocab.find(a + b);
    if (ia == impl_->vocab.end() || ib == impl_->vocab.end() || im == impl_->vocab.end()) {
      return Fail(InvalidArgumentError("tokenizer.json: merge (" + a + ", " + b +
                                       ") uses a token missing from the vocab"));
    }
    merges_.push_back({ia->second, ib->second, im->second});
  }

  Impl* impl_;
  ReadId read_id_;
  Status status_;
  std::vector<std::string> stack_;  // per open container: the key that led to it ("" in arrays)
  std::vector<bool> in_object_;     // per open container: an object (else an array)
  std::string key_;                 // the last key read
  std::string entry_key_;           // the vocab key whose value is a container
  std::vector<std::string> pair_;   // the [a, b] merge being read
  // Until the vocab is complete, its tokens in one buffer (not a heap string each,
  // whose scattered remains would keep pages of the final tables from being trimmed).
  struct VocabEntry {
    size_t offset, size;
    int32_t id;
  };
  std::vector<VocabEntry> vocab_;
  std::string vocab_text_;
  std::vector<std::pair<std::string, std::string>> pending_;  // merges met before that
  std::vector<std::array<int32_t, 3>> merges_;                // (a, b, merged) in rank order
  bool saw_vocab_ = false, saw_merges_ = false, vocab_done_ = false;
};

StatusOr<BpeTokenizer> BpeTokenizer::FromJson(std::string_view json_text) {
  using nlohmann::json;
  auto impl = std::make_shared<Impl>();
  try {
    // Ids index a table holding one string per id (32 bytes each), so an id must be an
    // integer in [0, max(2^20, size of the JSON)]: a real vocabulary is dense, its largest
    // id below its entry count and so below the file's size. Without the bound a few
    // bytes ("a": 1e8) allocated gigabytes, a negative added-token id wrote outside the
    // table, and a float or an id past int32 was undefined behaviour (found by
    // bench/fuzz/fuzz_bpe_json).
    const int64_t id_limit = std::min<int64_t>(
        std::max<int64_t>(int64_t{1} << 20, static_cast<int64_t>(json_text.size())), INT32_MAX - 1);
    auto read_id = [id_limit](const json& v, const std::string& token, int32_t* out) -> Status {
      const bool ok = v.is_number_unsigned()  ? v.get<uint64_t>() <= static_cast<uint64_t>(id_limit)
                      : v.is_number_integer() ? v.get<int64_t>() >= 0 && v.get<int64_t>() <= id_limit
                                              : false;
      if (!ok) {
        return InvalidArgumentError("tokenizer.json: id " + v.dump() + " of token \"" + token +
                                    "\" is not an integer in [0, " + std::to_string(id_limit) + "]");
      }
      *out = static_cast<int32_t>(v.get<int64_t>());
      return OkStatus();
    };

    // model.vocab and model.merges (nearly all of the file: Gemma 3's hold 262,144
    // tokens and 514,906 merges) are read into the tables as the parser meets them and
    // left out of the document, whose nodes would cost ~7x the file (session 43:
    // Gemma 3's load peaked at 216 MiB).
    VocabMergesReader reader(impl.get(), read_id);
    json j = json::parse(json_text, reader.Callback());
    FEDGE_RETURN_IF_ERROR(reader.status());
    if (!reader.saw_vocab()) return InvalidArgumentError("tokenizer.json: model.vocab is missing");
    if (!reader.saw_merges()) return InvalidArgumentError("tokenizer.json: model.merges is missing");
    const json& model = j.at("model");
    if (model.value("type", std::string("BPE")) != "BPE") {
      return UnimplementedError("tokenizer.json: model.type " + model.value("type", std::string()) +
                                " is not supported (only byte-level BPE)");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(key) && !model[key].is_null() && !model[key].get<std::string>().empty()) {
        return UnimplementedError(std::string("tokenizer.json: model.") + key + " is not supported");
      }
    }
    impl->byte_fallback = model.value("byte_fallback", false);
    impl->fuse_unk = model.value("fuse_unk", false);
    impl->ignore_merges = model.value("ignore_merges", false);

    int32_t max_id = -1;
    for (const auto& [token, id] : impl->vocab) max_id = std::max(max_id, id);
    std::vector<AddedToken> added;
    if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
      for (const json& t : j["added_tokens"]) {
        AddedToken a{t.at("content").get<std::string>(), 0, t.value("special", false),
                     t.value("lstrip", false), t.value("rstrip", false)};
        FEDGE_RETURN_IF_ERROR(read_id(t.at("id"), a.content, &a.id));
        if (a.content.empty()) continue;
        max_id = std::max(max_id, a.id);
        added.push_back(std::move(a));
      }
    }
    impl->id_to_token.assign(static_cast<size_t>(max_id + 1), std::string());
    impl->special.assign(static_cast<size_t>(max_id + 1), 0);
    for (const auto& [token, id] : impl->vocab) impl->id_to_token[static_cast<size_t>(id)] = token;
    for (const AddedToken& a : added) {
      impl->id_to_token[static_cast<size_t>(a.id)] = a.content;
      impl->special[static_cast<size_t>(a.id)] = a.special ? 1 : 0;
    }
    // Longest first, so the leftmost match found first is also the longest there.
    std::stable_sort(added.begin(), added.end(), [](const AddedToken& x, const AddedToken& y) {
      return x.content.size() > y.content.size();
    });
    for (size_t k = 0; k < added.size(); ++k) {
      impl->added_first_byte[static_cast<unsigned char>(added[k].content[0])] = true;
      impl->added_trie.Insert(added[k].content, static_cast<int32_t>(k));
    }
    impl->added = std::move(added);

    if (model.contains("unk_token") && !model["unk_token"].is_null()) {
      const std::string unk = model["unk_token"].get<std::string>();
      auto it = impl->vocab.find(unk);
      if (it == impl->vocab.end()) {
        return InvalidArgumentError("tokenizer.json: model.unk_token \"" + unk + "\" is not in the vocab");
      }
      impl->unk_id = it->second;
    }
    impl->fallback_id.fill(-1);
    for (const auto& [token, id] : impl->vocab) {
      if (int b = FallbackByte(token); b >= 0) impl->fallback_id[static_cast<size_t>(b)] = id;
      if (int r = ScanUtf8Char(token, 0); !token.empty() && r > 0 && static_cast<size_t>(r) == token.size()) {
        impl->char_id[DecodeCodePoints(token)[0].c] = id;
      }
    }
    const auto& table = ByteTable();
    for (int b = 0; b < 256; ++b) {
      impl->unicode_to_byte[table[b]] = static_cast<uint8_t>(b);
      std::string s;
      AppendUtf8(table[b], &s);
      auto it = impl->vocab.find(s);
      impl->byte_id[b] = it == impl->vocab.end() ? -1 : it->second;
    }

    // Merges met before the vocab was complete (a file that orders model.merges
    // first) are resolved now.
    FEDGE_RETURN_IF_ERROR(reader.ResolvePending());

    // Normalizer and decoder strings are a few bytes in every real tokenizer ("\u2581",
    // " "). Bounded, so a hostile tokenizer.json cannot make each space of a 16 KiB
    // prompt a megabyte (Replace) and the prompt gigabytes.
    constexpr size_t kMaxPiece = 16;
    auto short_string = [](const json& v, const std::string& what, std::string* out) -> Status {
      *out = v.get<std::string>();
      if (out->size() > kMaxPiece) {
        return InvalidArgumentError("tokenizer.json: " + what + " is " + std::to_string(out->size()) +
                                    " bytes; at most " + std::to_string(kMaxPiece) + " are supported");
      }
      return OkStatus();
    };
    // A Replace's pattern: {"String": s} (a {"Regex": r} is not supported).
    auto string_pattern = [&](const json& p, const char* what, std::string* out) -> Status {
      const json& pat = p.at("pattern");
      if (!pat.is_object() || !pat.contains("String") || !pat["String"].is_string() ||
          pat["String"].get<std::string>().empty()) {
        return UnimplementedError(std::string("tokenizer.json: ") + what + " Replace pattern " + pat.dump() +
                                  " is not supported (only a non-empty {\"String\": ...})");
      }
      return short_string(pat["String"], std::string(what) + " Replace pattern", out);
    };
    auto parse_normalizer = [&](const json& n) -> Status {
      std::string type = n.is_object() ? n.value("type", std::string("?")) : "?";
      NormalizerStep step{};
      if (type == "NFC") {
        step.type = NormalizerStep::kNfc;
      } else if (type == "Prepend") {
        step.type = NormalizerStep::kPrepend;
        FEDGE_RETURN_IF_ERROR(short_string(n.at("prepend"), "normalizer Prepend", &step.text));
      } else if (type == "Replace") {
        step.type = NormalizerStep::kReplace;
        FEDGE_RETURN_IF_ERROR(string_pattern(n, "normalizer", &step.text));
        FEDGE_RETURN_IF_ERROR(short_string(n.at("content"), "normalizer Replace content", &step.content));
      } else {
        return UnimplementedError("tokenizer.json: normalizer " + type +
                                  " is not supported (null, NFC, Prepend, Replace or a Sequence of these)");
      }
      impl->normalizers.push_back(std::move(step));
      return OkStatus();
    };
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      const json& n = j["normalizer"];
      if (n.is_object() && n.value("type", std::string()) == "Sequence") {
        for (const json& each : n.at("normalizers")) FEDGE_RETURN_IF_ERROR(parse_normalizer(each));
      } else {
        FEDGE_RETURN_IF_ERROR(parse_normalizer(n));
      }
    }
    auto parse_scheme = [](const json& p, PrependScheme* out) -> Status {
      std::string scheme = p.contains("prepend_scheme") && p["prepend_scheme"].is_string()
                               ? p["prepend_scheme"].get<std::string>()
                               : (p.value("add_prefix_space", true) ? "always" : "never");
      if (scheme == "always")
        *out = PrependScheme::kAlways;
      else if (scheme == "first")
        *out = PrependScheme::kFirst;
      else if (scheme == "never")
        *out = PrependScheme::kNever;
      else
        return UnimplementedError("tokenizer.json: Metaspace prepend_scheme " + scheme + " is not supported");
      return OkStatus();
    };
    auto replacement = [](const json& p, std::string* out) -> Status {
      *out = p.value("replacement", std::string(kMetaspace));
      const int r = out->empty() ? 0 : ScanUtf8Char(*out, 0);
      if (r <= 0 || static_cast<size_t>(r) != out->size()) {
        return InvalidArgumentError("tokenizer.json: Metaspace replacement must be one character");
      }
      return OkStatus();
    };
    auto parse_step = [&](const json& p, std::vector<PreTokStep>* steps) -> Status {
      std::string type = p.value("type", std::string());
      PreTokStep step{};
      if (type == "ByteLevel") {
        step.type = PreTokStep::kByteLevel;
        step.use_regex = p.value("use_regex", true);
        step.add_prefix_space = p.value("add_prefix_space", false);
      } else if (type == "Digits") {
        step.type = PreTokStep::kDigits;
        step.individual_digits = p.value("individual_digits", false);
      } else if (type == "Split") {
        step.type = PreTokStep::kSplit;
        std::string behavior = p.value("behavior", std::string("Isolated"));
        const json& pat = p.at("pattern");
        if (pat.is_object() && pat.contains("String")) {
          // On characters (no ByteLevel after it): any behavior, not inverted.
          static const std::map<std::string, StringSplit::Behavior> kBehaviors = {
              {"Isolated", StringSplit::kIsolated},
              {"Removed", StringSplit::kRemoved},
              {"MergedWithPrevious", StringSplit::kMergedWithPrevious},
              {"MergedWithNext", StringSplit::kMergedWithNext},
              {"Contiguous", StringSplit::kContiguous}};
          auto b = kBehaviors.find(behavior);
          if (b == kBehaviors.end() || p.value("invert", false)) {
            return UnimplementedError("tokenizer.json: Split behavior " + behavior +
                                      (p.value("invert", false) ? " with invert" : "") + " is not supported");
          }
          StringSplit split{b->second, {}};
          FEDGE_RETURN_IF_ERROR(short_string(pat["String"], "pre_tokenizer Split pattern", &split.delimiter));
          if (split.delimiter.empty()) {
            return InvalidArgumentError("tokenizer.json: pre_tokenizer Split pattern is an empty string");
          }
          impl->string_splits.push_back(std::move(split));
          return OkStatus();
        }
        if (behavior != "Isolated" || p.value("invert", false)) {
          return UnimplementedError("tokenizer.json: Split behavior " + behavior +
                                    " / invert is not supported with a regex pattern");
        }
        std::string regex = pat.contains("Regex") ? pat["Regex"].get<std::string>() : std::string();
        if (regex == kPatternGpt2)
          step.split = SplitKind::kGpt2;
        else if (regex == kPatternLlama3)
          step.split = SplitKind::kLlama3;
        else if (regex == kPatternQwen2)
          step.split = SplitKind::kQwen2;
        else
          return UnimplementedError("tokenizer.json: Split pattern " + pat.dump() +
                                    " is not one of the GPT-2, Llama-3 or Qwen2 regexes");
      } else if (type == "Metaspace") {
        MetaspaceStep& m = impl->metaspace;
        m.enabled = true;
        FEDGE_RETURN_IF_ERROR(replacement(p, &m.replacement));
        FEDGE_RETURN_IF_ERROR(parse_scheme(p, &m.scheme));
        m.split = p.value("split", true);
        return OkStatus();
      } else {
        return UnimplementedError("tokenizer.json: pre_tokenizer " + type + " is not supported");
      }
      steps->push_back(step);
      return OkStatus();
    };
    const json& pre = j.value("pre_tokenizer", json());
    if (!pre.is_null()) {
      if (pre.value("type", std::string()) == "Sequence") {
        for (const json& p : pre.at("pretokenizers")) FEDGE_RETURN_IF_ERROR(parse_step(p, &impl->steps));
      } else {
        FEDGE_RETURN_IF_ERROR(parse_step(pre, &impl->steps));
      }
    }
    // Byte-level: the steps end with ByteLevel. SentencePiece-style: a Metaspace step
    // alone, or no pre-tokenizer (the normalizer writes the markers).
    impl->byte_level = !impl->steps.empty();
    if (impl->byte_level && impl->steps.back().type != PreTokStep::kByteLevel) {
      return UnimplementedError("tokenizer.json: a Split/Digits pre_tokenizer must be followed by ByteLevel");
    }
    if (!impl->string_splits.empty() && (impl->byte_level || impl->metaspace.enabled)) {
      return UnimplementedError(
          "tokenizer.json: a Split on a string is supported only without ByteLevel and Metaspace "
          "(SentencePiece-style, as Gemma 3 ships it)");
    }
    if (impl->byte_level && impl->metaspace.enabled) {
      return UnimplementedError(
          "tokenizer.json: Metaspace combined with other pre_tokenizers is not supported");
    }
    if (impl->byte_level && impl->byte_fallback) {
      return UnimplementedError(
          "tokenizer.json: byte_fallback with a ByteLevel pre_tokenizer is not supported");
    }

    const json& dec = j.value("decoder", json());
    const std::string dec_type = dec.is_object() ? dec.value("type", std::string("?")) : "null";
    if (impl->byte_level) {
      if (!dec.is_null() && dec_type != "ByteLevel") {
        return UnimplementedError("tokenizer.json: decoder " + dec_type +
                                  " is not supported with a ByteLevel pre_tokenizer (only ByteLevel)");
      }
    } else {
      auto parse_decoder = [&](const json& d) -> Status {
        std::string type = d.is_object() ? d.value("type", std::string("?")) : "?";
        DecoderStep step{};
        if (type == "Replace") {
          step.type = DecoderStep::kReplace;
          FEDGE_RETURN_IF_ERROR(string_pattern(d, "decoder", &step.text));
          FEDGE_RETURN_IF_ERROR(short_string(d.at("content"), "decoder Replace content", &step.content));
        } else if (type == "ByteFallback") {
          step.type = DecoderStep::kByteFallback;
        } else if (type == "Fuse") {
          step.type = DecoderStep::kFuse;
        } else if (type == "Strip") {
          step.type = DecoderStep::kStrip;
          FEDGE_RETURN_IF_ERROR(short_string(d.at("content"), "decoder Strip content", &step.text));
          const int64_t start = d.value("start", int64_t{0}), stop = d.value("stop", int64_t{0});
          if (step.text.empty() || start < 0 || stop < 0 || start > 64 || stop > 64) {
            return InvalidArgumentError(
                "tokenizer.json: decoder Strip needs a character and start/stop in [0, 64]");
          }
          step.start = static_cast<size_t>(start);
          step.stop = static_cast<size_t>(stop);
        } else if (type == "Metaspace") {
          step.type = DecoderStep::kMetaspace;
          FEDGE_RETURN_IF_ERROR(replacement(d, &step.text));
          FEDGE_RETURN_IF_ERROR(parse_scheme(d, &step.scheme));
        } else {
          return UnimplementedError("tokenizer.json: decoder " + type +
                                    " is not supported without a ByteLevel pre_tokenizer (Metaspace, or a "
                                    "Sequence of Replace, ByteFallback, Fuse and Strip)");
        }
        impl->decoders.push_back(std::move(step));
        return OkStatus();
      };
      if (dec.is_null()) {
        return UnimplementedError(
            "tokenizer.json: a tokenizer without a ByteLevel pre_tokenizer needs a decoder");
      }
      if (dec_type == "Sequence") {
        for (const json& d : dec.at("decoders")) FEDGE_RETURN_IF_ERROR(parse_decoder(d));
      } else {
        FEDGE_RETURN_IF_ERROR(parse_decoder(dec));
      }
    }

    // post_processor: the special tokens TemplateProcessing's "single" puts before $A.
    std::function<Status(const json&)> parse_post = [&](const json& p) -> Status {
      if (p.is_null()) return OkStatus();
      std::string type = p.is_object() ? p.value("type", std::string("?")) : "?";
      if (type == "ByteLevel") return OkStatus();  // offsets only
      if (type == "Sequence") {
        for (const json& each : p.at("processors")) FEDGE_RETURN_IF_ERROR(parse_post(each));
        return OkStatus();
      }
      if (type != "TemplateProcessing") {
        return UnimplementedError("tokenizer.json: post_processor " + type +
                                  " is not supported (null, ByteLevel, TemplateProcessing or a Sequence)");
      }
      for (const json& piece : p.at("single")) {
        if (piece.contains("Sequence")) break;
        const std::string name = piece.at("SpecialToken").at("id").get<std::string>();
        const json& ids = p.at("special_tokens").at(name).at("ids");
        for (const json& id : ids) {
          int32_t v = 0;
          FEDGE_RETURN_IF_ERROR(read_id(id, name, &v));
          if (v > max_id) {
            return InvalidArgumentError("tokenizer.json: post_processor token " + name + " id " +
                                        std::to_string(v) + " is not in the vocab");
          }
          impl->prefix.push_back(v);
        }
      }
      return OkStatus();
    };
    FEDGE_RETURN_IF_ERROR(parse_post(j.value("post_processor", json())));

    // The word marker the span is written with (Metaspace without split, or a
    // Replace(" " -> marker) normalizer), if splitting at it cannot change the ids.
    if (!impl->byte_level && !impl->ignore_merges) {
      std::string marker;
      if (impl->metaspace.enabled && !impl->metaspace.split) marker = impl->metaspace.replacement;
      for (const NormalizerStep& n : impl->normalizers) {
        if (!impl->metaspace.enabled && n.type == NormalizerStep::kReplace && n.text == " ")
          marker = n.content;
      }
      const int r = marker.empty() ? 0 : ScanUtf8Char(marker, 0);
      const bool one_char = r > 0 && static_cast<size_t>(r) == marker.size() &&
                            impl->char_id.count(DecodeCodePoints(marker)[0].c) > 0;
      // A merge can join a character to the marker after it only through a token that
      // has them side by side; those characters are recorded, and the span is not
      // split after them (Gemma 3's ">\u2581</" is the one such token in 262,144).
      for (auto it = impl->vocab.begin(); one_char && it != impl->vocab.end(); ++it) {
        const std::string& t = it->first;
        for (size_t hit = t.find(marker, 1); hit != std::string::npos; hit = t.find(marker, hit + 1)) {
          if (hit >= marker.size() && t.compare(hit - marker.size(), marker.size(), marker) == 0) continue;
          impl->joins_marker.insert(t.substr(LastCharStart(t, hit), hit - LastCharStart(t, hit)));
        }
      }
      if (one_char) impl->word_marker = marker;
    }
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(std::string("tokenizer.json: ") + e.what());
  }
  return BpeTokenizer(std::move(impl));
}

StatusOr<BpeTokenizer> BpeTokenizer::Load(const std::string& path) {
  // The file's identity: a rewrite changes its size or mtime, a replacement by rename
  // its inode. No identity (stat failed): ReadFile reports why.
  std::string key;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    key = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) +
          ":" + std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
  }
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<const Impl>> loaded;
  if (!key.empty()) {
    std::lock_guard<std::mutex> lock(mu);
    if (std::shared_ptr<const Impl> impl = loaded[key].lock()) return BpeTokenizer(std::move(impl));
  }
  StatusOr<BpeTokenizer> tok = InternalError("not loaded");
  {
    FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    tok = FromJson(text);
  }
#ifdef __GLIBC__
  // The parsed document (Gemma 3's: ~150 MiB of small nodes) is freed by now; hand
  // the heap it leaves back to the kernel instead of keeping it resident.
  malloc_trim(0);
#endif
  if (!tok.ok()) return tok.status().WithContext(path);
  if (!key.empty()) {
    std::lock_guard<std::mutex> lock(mu);
    for (auto it = loaded.begin(); it != loaded.end();)
      it = it->second.expired() ? loaded.erase(it) : std::next(it);
    loaded[key] = tok->impl_;
  }
  return tok;
}

std::vector<int32_t> BpeTokenizer::Encode(std::string_view text, const EncodeOptions& options) const {
  std::vector<int32_t> ids;
  const Impl& m = *impl_;
  if (options.add_special_tokens) ids = prefix_;
  size_t start = 0;  // beginning of the span not yet encoded
  size_t i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    if (!m.added_first_byte[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    if (const int32_t k = m.added_trie.LongestAt(text, i); k >= 0) hit = &m.added[static_cast<size_t>(k)];
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t span_end = i;
    if (hit->lstrip) {
      while (span_end > start && IsWhiteSpace(static_cast<unsigned char>(text[span_end - 1]))) --span_end;
    }
    m.EncodeSpan(text.substr(start, span_end - start), start == 0, options.continuation, &ids);
    ids.push_back(hit->id);
    i += hit->content.size();
    if (hit->rstrip) {
      while (i < text.size() && IsWhiteSpace(static_cast<unsigned char>(text[i]))) ++i;
    }
    start = i;
  }
  m.EncodeSpan(text.substr(start), start == 0, options.continuation, &ids);
  // The text spelled the prefix itself (a chat template's BOS): not twice.
  const size_t p = options.add_special_tokens ? prefix_.size() : 0;
  if (p > 0 && ids.size() >= 2 * p && std::equal(prefix_.begin(), prefix_.end(), ids.begin() + p)) {
    ids.erase(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(p));
  }
  return ids;
}

BpeTokenizer::BpeTokenizer(std::shared_ptr<const Impl> impl)
    : impl_(std::move(impl)), prefix_(impl_->prefix) {}

const std::vector<int32_t>& BpeTokenizer::SequencePrefix() const { return prefix_; }

BpeTokenizer BpeTokenizer::WithSequencePrefix(std::vector<int32_t> prefix) const {
  BpeTokenizer copy = *this;
  copy.prefix_ = std::move(prefix);
  return copy;
}

bool BpeTokenizer::StripsLeadingSpace() const {
  for (const DecoderStep& d : impl_->decoders) {
    if (d.type == DecoderStep::kStrip && d.text == " " && d.start > 0) return true;
    if (d.type == DecoderStep::kMetaspace && d.scheme != PrependScheme::kNever) return true;
  }
  return false;
}

const std::vector<std::string>& BpeTokenizer::TextBytesTable() const {
  const Impl& m = *impl_;
  std::call_once(m.text_bytes_once, [&] {
    m.text_bytes.resize(m.id_to_token.size());
    for (size_t id = 0; id < m.id_to_token.size(); ++id) {
      if (!IsSpecial(static_cast<int32_t>(id))) m.text_bytes[id] = TokenBytes(static_cast<int32_t>(id));
    }
  });
  return m.text_bytes;
}

std::string BpeTokenizer::TokenBytes(int32_t id) const {
  const Impl& m = *impl_;
  if (id < 0 || static_cast<size_t>(id) >= m.id_to_token.size()) return {};
  const std::string& token = m.id_to_token[static_cast<size_t>(id)];
  if (!m.byte_level) {
    // The decoder's per-token steps: markers as spaces, <0xXX> as its byte (Strip
    // and the Metaspace decoder's first-token rule depend on the sequence: Decode's).
    std::string out = token;
    for (const DecoderStep& d : m.decoders) {
      if (d.type == DecoderStep::kReplace) ReplaceAll(&out, d.text, d.content);
      if (d.type == DecoderStep::kMetaspace) ReplaceAll(&out, d.text, " ");
      if (d.type == DecoderStep::kByteFallback) {
        if (int b = FallbackByte(out); b >= 0) out.assign(1, static_cast<char>(b));
      }
    }
    return out;
  }
  // As tokenizers' ByteLevel decoder: a token whose characters are all byte stand-ins
  // becomes those bytes; any other token (an added token like "<|im_end|>") its own text.
  std::string bytes;
  for (const CodePoint& c : DecodeCodePoints(token)) {
    auto it = m.unicode_to_byte.find(c.c);
    if (it == m.unicode_to_byte.end()) return token;
    bytes.push_back(static_cast<char>(it->second));
  }
  return bytes;
}

std::string BpeTokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& m = *impl_;
  if (!m.byte_level) {
    std::vector<std::string> tokens;
    for (int32_t id : ids) {
      if (id < 0 || static_cast<size_t>(id) >= m.id_to_token.size()) continue;
      if (skip_special && IsSpecial(id)) continue;
      const std::string& token = m.id_to_token[static_cast<size_t>(id)];
      if (!token.empty()) tokens.push_back(token);  // empty: an id no token has
    }
    std::string out;
    AppendUtf8Lossy(m.DecodeTokens(std::move(tokens)), &out);
    return out;
  }
  std::string bytes;
  for (int32_t id : ids) {
    if (skip_special && IsSpecial(id)) continue;
    bytes += TokenBytes(id);
  }
  std::string out;
  AppendUtf8Lossy(bytes, &out);
  return out;
}

std::optional<int32_t> BpeTokenizer::TokenToId(std::string_view token) const {
  for (const AddedToken& a : impl_->added) {
    if (a.content == token) return a.id;
  }
  auto it = impl_->vocab.find(std::string(token));
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::string BpeTokenizer::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->id_to_token.size()) return {};
  return impl_->id_to_token[static_cast<size_t>(id)];
}

bool BpeTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() &&
         impl_->special[static_cast<size_t>(id)];
}

int32_t BpeTokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_to_token.size()); }

StatusOr<BpeTokenizer> ApplyTokenizerConfig(const BpeTokenizer& tokenizer, const std::string& dir) {
  const std::string path = dir + "/tokenizer_config.json";
  if (!std::filesystem::exists(path)) return tokenizer;
  FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgumentError(path + ": not a JSON object");
  static const char* kRebuilding[] = {"LlamaTokenizer",         "LlamaTokenizerFast", "CodeLlamaTokenizer",
                                      "CodeLlamaTokenizerFast", "GemmaTokenizer",     "GemmaTokenizerFast"};
  const std::string cls = j.contains("tokenizer_class") && j["tokenizer_class"].is_string()
                              ? j["tokenizer_class"].get<std::string>()
                              : std::string();
  if (std::find(std::begin(kRebuilding), std::end(kRebuilding), cls) == std::end(kRebuilding) ||
      !j.contains("add_bos_token") || !j["add_bos_token"].is_boolean()) {
    return tokenizer;
  }
  if (!j["add_bos_token"].get<bool>()) return tokenizer.WithSequencePrefix({});
  const nlohmann::json& bos = j.value("bos_token", nlohmann::json());
  const std::string name = bos.is_string() ? bos.get<std::string>()
                           : bos.is_object() && bos.contains("content") && bos["content"].is_string()
                               ? bos["content"].get<std::string>()
                               : std::string();
  auto id = name.empty() ? std::nullopt : tokenizer.TokenToId(name);
  if (!id) {
    return InvalidArgumentError(path + ": add_bos_token is true but bos_token " + bos.dump() +
                                " is not a token of tokenizer.json");
  }
  return tokenizer.WithSequencePrefix({*id});
}

char32_t ByteToUnicode(uint8_t byte) { return ByteTable()[byte]; }

std::vector<std::string> SplitGpt2Pattern(std::string_view text) {
  PreTokStep step{};
  step.type = PreTokStep::kByteLevel;
  step.use_regex = true;
  return ApplyStep(step, {std::string(text)});
}

void AppendUtf8Lossy(std::string_view bytes, std::string* out) {
  size_t i = 0;
  while (i < bytes.size()) {
    int r = ScanUtf8Char(bytes, i);
    if (r > 0) {
      out->append(bytes.substr(i, static_cast<size_t>(r)));
      i += static_cast<size_t>(r);
    } else {
      out->append("\xEF\xBF\xBD");
      i += r < 0 ? static_cast<size_t>(-r) : bytes.size() - i;  // truncated tail: one U+FFFD
    }
  }
}

size_t Utf8CompletePrefix(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    int r = ScanUtf8Char(bytes, i);
    if (r == 0) return i;
    i += static_cast<size_t>(r > 0 ? r : -r);
  }
  return i;
}

}  // namespace fedge::agent::llm
