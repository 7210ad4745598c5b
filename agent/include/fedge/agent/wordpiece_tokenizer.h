// WordPieceTokenizer: BERT's uncased tokenizer (Hugging Face `BertNormalizer` +
// `BertPreTokenizer` + `WordPiece`), loaded from a vocab.txt. Torch-free.
//
// Normalisation, in the order Hugging Face applies it:
//   1. clean text: drop U+0000, U+FFFD and "other" code points (Cc, Cf, Co;
//      tab/CR/LF count as whitespace), map whitespace to ' ';
//   2. surround CJK ideographs with spaces (each becomes its own word);
//   3. strip accents: canonical decomposition (NFD) and removal of nonspacing
//      marks (Mn);
//   4. lower-case (per code point, full Unicode mapping).
// Then split on whitespace and isolate every punctuation character (ASCII
// punctuation and Unicode P*), and run greedy longest-match-first WordPiece
// with "##" continuations; a word longer than 100 code points or with an
// unmatchable piece becomes [UNK].
//
// Unicode data (categories, decompositions, lower-case) is generated from
// Python's unicodedata 14.0 (agent/src/model/tokenizer/gen_unicode_tables.py); Hangul
// syllables are decomposed algorithmically. Known limits: unassigned code
// points (Cn) are kept, where the Rust implementation drops them; special
// tokens written literally in the input ("[CLS]") are tokenized as text, not
// matched as special tokens. Invalid UTF-8 bytes are replaced by U+FFFD and
// then dropped by step 1.
//
// Thread safety: immutable after construction; all methods are const and safe
// to call concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fedge/status.h"

namespace fedge::agent {

// A batch of encoded texts padded to a common length (row-major [batch, seq_len]).
struct EncodedBatch {
  int64_t batch_size = 0;
  int64_t seq_len = 0;
  std::vector<int64_t> input_ids;       // [PAD] after each text's [SEP]
  std::vector<int64_t> attention_mask;  // 1 for real tokens, 0 for padding
};

class WordPieceTokenizer {
 public:
  // Reads vocab.txt (one token per line; id = line number). NOT_FOUND if the
  // file is missing, INVALID_ARGUMENT if it lacks [PAD]/[UNK]/[CLS]/[SEP] or
  // repeats a token.
  static StatusOr<WordPieceTokenizer> FromVocabFile(const std::string& path);
  // Same, from the vocabulary in id order.
  static StatusOr<WordPieceTokenizer> FromTokens(std::vector<std::string> tokens);

  // Normalised words after the basic tokenizer (steps 1-4 and the split).
  std::vector<std::string> BasicTokenize(std::string_view text) const;
  // WordPiece ids of `text` without special tokens.
  std::vector<int64_t> Tokenize(std::string_view text) const;
  // [CLS] ids [SEP], truncated so the result has at most `max_len` ids (the
  // [SEP] is kept); max_len <= 0 means no truncation. max_len must be 0 or >= 2.
  std::vector<int64_t> Encode(std::string_view text, int max_len) const;
  // Encode() of every text, padded with [PAD] to the longest one (dynamic padding).
  EncodedBatch EncodeBatch(const std::vector<std::string>& texts, int max_len) const;

  int64_t vocab_size() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t pad_id() const { return pad_id_; }
  int64_t unk_id() const { return unk_id_; }
  int64_t cls_id() const { return cls_id_; }
  int64_t sep_id() const { return sep_id_; }
  // Token text of an id; "" when out of range.
  const std::string& IdToToken(int64_t id) const;
  // Id of a token; -1 when absent.
  int64_t TokenToId(std::string_view token) const;

  static constexpr int kMaxCharsPerWord = 100;

 private:
  WordPieceTokenizer() = default;
  void WordPiece(const std::string& word, std::vector<int64_t>* out) const;

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int64_t> ids_;
  int64_t pad_id_ = -1, unk_id_ = -1, cls_id_ = -1, sep_id_ = -1;
};

}  // namespace fedge::agent
