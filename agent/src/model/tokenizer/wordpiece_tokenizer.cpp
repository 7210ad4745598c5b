#include "fedge/agent/wordpiece_tokenizer.h"

#include <algorithm>
#include <cstdint>

#include "fedge/file_util.h"
#include "tokenizer/unicode_normalize.h"
#include "tokenizer/utf8.h"

namespace fedge::agent {
namespace {

struct CodeRange {
  char32_t first;
  char32_t last;
};
struct CodeMapping {
  char32_t code;
  char32_t out[4];  // 0-terminated unless all four are used
};

#include "unicode_tables.inc"

template <size_t N>
bool InRanges(const CodeRange (&table)[N], char32_t c) {
  auto it = std::upper_bound(std::begin(table), std::end(table), c,
                             [](char32_t v, const CodeRange& r) { return v < r.first; });
  if (it == std::begin(table)) return false;
  --it;
  return c <= it->last;
}

template <size_t N>
const CodeMapping* FindMapping(const CodeMapping (&table)[N], char32_t c) {
  auto it = std::lower_bound(std::begin(table), std::end(table), c,
                             [](const CodeMapping& m, char32_t v) { return m.code < v; });
  if (it == std::end(table) || it->code != c) return nullptr;
  return &*it;
}

// Rust's char::is_whitespace (Unicode White_Space), which Hugging Face uses.
bool IsWhitespace(char32_t c) {
  switch (c) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

bool IsControl(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  return InRanges(kOtherRanges, c);
}

bool IsPunctuation(char32_t c) {
  if (c < 0x80) {
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
  }
  return InRanges(kPunctuationRanges, c);
}

// The CJK blocks BERT treats as ideographs (not Hangul, Hiragana or Katakana).
bool IsCjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// Decodes UTF-8; malformed sequences become U+FFFD (later dropped as BERT drops it).
std::u32string DecodeUtf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char b = static_cast<unsigned char>(s[i]);
    int len = 0;
    char32_t c = 0;
    if (b < 0x80) {
      c = b;
      len = 1;
    } else if ((b & 0xE0) == 0xC0) {
      c = b & 0x1F;
      len = 2;
    } else if ((b & 0xF0) == 0xE0) {
      c = b & 0x0F;
      len = 3;
    } else if ((b & 0xF8) == 0xF0) {
      c = b & 0x07;
      len = 4;
    } else {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    if (i + len > s.size()) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    bool ok = true;
    for (int k = 1; k < len; ++k) {
      unsigned char cb = static_cast<unsigned char>(s[i + k]);
      if ((cb & 0xC0) != 0x80) {
        ok = false;
        break;
      }
      c = (c << 6) | (cb & 0x3F);
    }
    // Reject overlong forms, surrogates and out-of-range values.
    static constexpr char32_t kMinForLen[] = {0, 0, 0x80, 0x800, 0x10000};
    if (!ok || c < kMinForLen[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    out.push_back(c);
    i += len;
  }
  return out;
}

// NFD of one code point with nonspacing marks removed, appended to `out`.
void AppendStripped(char32_t c, std::u32string* out) {
  if (AppendHangulJamo(c, out)) return;
  if (const CodeMapping* m = FindMapping(kDecomposeStripMarks, c)) {
    for (char32_t d : m->out) {
      if (d == 0) break;
      out->push_back(d);
    }
    return;
  }
  if (!InRanges(kNonspacingMarkRanges, c)) out->push_back(c);
}

void AppendLower(char32_t c, std::u32string* out) {
  if (c < 0x80) {
    out->push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return;
  }
  if (const CodeMapping* m = FindMapping(kLowercase, c)) {
    for (char32_t d : m->out) {
      if (d == 0) break;
      out->push_back(d);
    }
    return;
  }
  out->push_back(c);
}

}  // namespace

StatusOr<WordPieceTokenizer> WordPieceTokenizer::FromVocabFile(const std::string& path) {
  FEDGE_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  std::vector<std::string> tokens;
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t nl = bytes.find('\n', pos);
    if (nl == std::string::npos) nl = bytes.size();
    std::string line = bytes.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    tokens.push_back(std::move(line));
    pos = nl + 1;
  }
  auto tok = FromTokens(std::move(tokens));
  if (!tok.ok()) return tok.status().WithContext(path);
  return tok;
}

StatusOr<WordPieceTokenizer> WordPieceTokenizer::FromTokens(std::vector<std::string> tokens) {
  WordPieceTokenizer t;
  t.ids_.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!t.ids_.emplace(tokens[i], static_cast<int64_t>(i)).second) {
      return InvalidArgumentError("vocabulary repeats token '" + tokens[i] + "' at line " +
                                  std::to_string(i + 1));
    }
  }
  t.tokens_ = std::move(tokens);
  t.pad_id_ = t.TokenToId("[PAD]");
  t.unk_id_ = t.TokenToId("[UNK]");
  t.cls_id_ = t.TokenToId("[CLS]");
  t.sep_id_ = t.TokenToId("[SEP]");
  if (t.pad_id_ < 0 || t.unk_id_ < 0 || t.cls_id_ < 0 || t.sep_id_ < 0) {
    return InvalidArgumentError(
        "vocabulary lacks one of [PAD], [UNK], [CLS], [SEP]; is this a BERT vocab.txt?");
  }
  return t;
}

const std::string& WordPieceTokenizer::IdToToken(int64_t id) const {
  static const std::string kEmpty;
  if (id < 0 || id >= vocab_size()) return kEmpty;
  return tokens_[static_cast<size_t>(id)];
}

int64_t WordPieceTokenizer::TokenToId(std::string_view token) const {
  auto it = ids_.find(std::string(token));
  return it == ids_.end() ? -1 : it->second;
}

std::vector<std::string> WordPieceTokenizer::BasicTokenize(std::string_view text) const {
  std::u32string in = DecodeUtf8(text);
  // Steps 1 and 2: clean and isolate CJK ideographs.
  std::u32string cleaned;
  cleaned.reserve(in.size());
  for (char32_t c : in) {
    if (c == 0 || c == 0xFFFD || IsControl(c)) continue;
    if (IsWhitespace(c)) {
      cleaned.push_back(' ');
    } else if (IsCjk(c)) {
      cleaned.push_back(' ');
      cleaned.push_back(c);
      cleaned.push_back(' ');
    } else {
      cleaned.push_back(c);
    }
  }
  // Step 3: NFD + drop Mn. A decomposition never yields an Mn (the table has
  // them removed), so the result needs no second pass.
  std::u32string stripped;
  stripped.reserve(cleaned.size());
  for (char32_t c : cleaned) AppendStripped(c, &stripped);
  // Step 4: lower-case.
  std::u32string lowered;
  lowered.reserve(stripped.size());
  for (char32_t c : stripped) AppendLower(c, &lowered);

  // Split on whitespace, isolating punctuation.
  std::vector<std::string> words;
  std::string current;
  auto flush = [&] {
    if (!current.empty()) words.push_back(std::move(current));
    current.clear();
  };
  for (char32_t c : lowered) {
    if (IsWhitespace(c)) {
      flush();
    } else if (IsPunctuation(c)) {
      flush();
      AppendUtf8(c, &current);
      flush();
    } else {
      AppendUtf8(c, &current);
    }
  }
  flush();
  return words;
}

void WordPieceTokenizer::WordPiece(const std::string& word, std::vector<int64_t>* out) const {
  // Character boundaries, so pieces never split a UTF-8 sequence.
  std::vector<size_t> bounds;
  for (size_t i = 0; i < word.size(); ++i) {
    if ((static_cast<unsigned char>(word[i]) & 0xC0) != 0x80) bounds.push_back(i);
  }
  bounds.push_back(word.size());
  const size_t num_chars = bounds.size() - 1;
  if (num_chars > static_cast<size_t>(kMaxCharsPerWord)) {
    out->push_back(unk_id_);
    return;
  }
  std::vector<int64_t> pieces;
  std::string candidate;
  size_t start = 0;
  while (start < num_chars) {
    int64_t found = -1;
    size_t end = num_chars;
    for (; end > start; --end) {
      candidate.clear();
      if (start > 0) candidate = "##";
      candidate.append(word, bounds[start], bounds[end] - bounds[start]);
      auto it = ids_.find(candidate);
      if (it != ids_.end()) {
        found = it->second;
        break;
      }
    }
    if (found < 0) {
      out->push_back(unk_id_);
      return;
    }
    pieces.push_back(found);
    start = end;
  }
  out->insert(out->end(), pieces.begin(), pieces.end());
}

std::vector<int64_t> WordPieceTokenizer::Tokenize(std::string_view text) const {
  std::vector<int64_t> ids;
  for (const std::string& word : BasicTokenize(text)) WordPiece(word, &ids);
  return ids;
}

std::vector<int64_t> WordPieceTokenizer::Encode(std::string_view text, int max_len) const {
  std::vector<int64_t> body = Tokenize(text);
  if (max_len > 0) {
    size_t room = max_len >= 2 ? static_cast<size_t>(max_len - 2) : 0;
    if (body.size() > room) body.resize(room);
  }
  std::vector<int64_t> ids;
  ids.reserve(body.size() + 2);
  ids.push_back(cls_id_);
  ids.insert(ids.end(), body.begin(), body.end());
  ids.push_back(sep_id_);
  return ids;
}

EncodedBatch WordPieceTokenizer::EncodeBatch(const std::vector<std::string>& texts, int max_len) const {
  std::vector<std::vector<int64_t>> rows;
  rows.reserve(texts.size());
  size_t longest = 0;
  for (const std::string& t : texts) {
    rows.push_back(Encode(t, max_len));
    longest = std::max(longest, rows.back().size());
  }
  EncodedBatch batch;
  batch.batch_size = static_cast<int64_t>(rows.size());
  batch.seq_len = static_cast<int64_t>(longest);
  batch.input_ids.assign(rows.size() * longest, pad_id_);
  batch.attention_mask.assign(rows.size() * longest, 0);
  for (size_t r = 0; r < rows.size(); ++r) {
    std::copy(rows[r].begin(), rows[r].end(), batch.input_ids.begin() + r * longest);
    std::fill_n(batch.attention_mask.begin() + r * longest, rows[r].size(), 1);
  }
  return batch;
}

}  // namespace fedge::agent
