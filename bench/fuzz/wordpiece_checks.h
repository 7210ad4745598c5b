// Properties every WordPieceTokenizer output has, whatever the vocabulary and text;
// shared by fuzz_wordpiece_vocab and fuzz_wordpiece_encode.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "fedge/agent/wordpiece_tokenizer.h"
#include "fuzz_util.h"

namespace fedge::fuzz {

inline void CheckWordPiece(const fedge::agent::WordPieceTokenizer& tok, std::string_view text) {
  const int64_t vocab = tok.vocab_size();
  for (const std::string& word : tok.BasicTokenize(text)) {
    if (word.empty()) Fail("BasicTokenize produced an empty word", std::string(text.substr(0, 64)));
    if (!IsValidUtf8(word)) Fail("BasicTokenize produced invalid UTF-8", word);
    for (char c : word) {
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') Fail("a word holds whitespace", word);
    }
  }
  const std::vector<int64_t> ids = tok.Tokenize(text);
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab) Fail("Tokenize returned an id outside the vocabulary", std::to_string(id));
  }
  for (int max_len : {0, 2, 3, 16}) {
    const std::vector<int64_t> enc = tok.Encode(text, max_len);
    if (enc.size() < 2 || enc.front() != tok.cls_id() || enc.back() != tok.sep_id()) {
      Fail("Encode does not produce [CLS] ... [SEP]", std::to_string(enc.size()) + " ids");
    }
    if (max_len > 0 && enc.size() > static_cast<size_t>(max_len)) {
      Fail("Encode exceeds max_len", std::to_string(enc.size()) + " > " + std::to_string(max_len));
    }
    // Untruncated, the ids between [CLS] and [SEP] are exactly Tokenize's.
    if (max_len == 0 && !std::equal(ids.begin(), ids.end(), enc.begin() + 1, enc.end() - 1)) {
      Fail("Encode(text, 0) differs from [CLS] Tokenize(text) [SEP]", "");
    }
  }
  const size_t half = text.size() / 2;
  const fedge::agent::EncodedBatch batch =
      tok.EncodeBatch({std::string(text), std::string(text.substr(half))}, /*max_len=*/16);
  if (batch.batch_size != 2 || batch.seq_len < 2 || batch.seq_len > 16 ||
      batch.input_ids.size() != static_cast<size_t>(batch.batch_size * batch.seq_len) ||
      batch.attention_mask.size() != batch.input_ids.size()) {
    Fail("EncodeBatch shape is inconsistent", std::to_string(batch.seq_len));
  }
  for (size_t i = 0; i < batch.input_ids.size(); ++i) {
    if (batch.attention_mask[i] == 0 && batch.input_ids[i] != tok.pad_id()) {
      Fail("a masked position is not [PAD]", std::to_string(i));
    }
  }
}

}  // namespace fedge::fuzz
