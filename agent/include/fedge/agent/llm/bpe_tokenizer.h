// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json (GPT-2, Llama-3,
// Qwen2, SmolLM2 style), producing the same ids as the `tokenizers` library.
//
// Pipeline (encode): added/special tokens are matched first (leftmost-longest) and
// map straight to their ids; every other span goes through the pre-tokenizer
// (Split with the GPT-2 or the Llama-3/Qwen2 regex, Digits, ByteLevel), each piece's
// bytes are mapped through GPT-2's byte-to-unicode table, and BPE merges (lowest rank
// first, leftmost on ties) turn the piece into vocabulary tokens.
// The regexes are not evaluated by a regex engine (std::regex has no \p{..}):
// they are recognised by their exact text and run as hand-written scanners over a
// generated table of Unicode letters (\p{L}) and numbers (\p{N}).
//
// Decoding maps tokens back to bytes and then to UTF-8; invalid byte sequences (a
// multi-byte character split off at the end, or random ids) become U+FFFD exactly as
// Rust's String::from_utf8_lossy does.
//
// Thread safety: a loaded tokenizer is immutable; all methods are const and safe to
// call concurrently. Copies share the tables.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/status.h"

namespace fedge::agent::llm {

class BpeTokenizer {
 public:
  // Parses tokenizer.json text. Supported: model.type "BPE" (merges as "a b" strings
  // or [a, b] pairs, ignore_merges), normalizer null or NFC (applied to the text
  // between added tokens, which match on the raw text), pre_tokenizer ByteLevel /
  // Split(GPT-2 | Llama-3 | Qwen2 regex, Isolated) / Digits / Sequence of these,
  // decoder ByteLevel. Anything else is UNIMPLEMENTED naming the component, so a
  // tokenizer is never silently misread.
  static StatusOr<BpeTokenizer> FromJson(std::string_view json_text);
  // Reads `path` (a tokenizer.json) and parses it; NOT_FOUND if missing.
  static StatusOr<BpeTokenizer> Load(const std::string& path);

  // Token ids of `text` (no BOS/EOS is added: chat templates and callers add them).
  // Total: every byte sequence encodes (byte-level BPE has no unknown bytes).
  std::vector<int32_t> Encode(std::string_view text) const;

  // UTF-8 text of `ids`; unknown ids are skipped, special tokens are dropped when
  // `skip_special` is set.
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  // Raw bytes a single token stands for (empty for unknown ids).
  std::string TokenBytes(int32_t id) const;

  // Id of a vocabulary or added token given by its tokenizer.json spelling.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // tokenizer.json spelling of `id`, empty if unknown.
  std::string IdToToken(int32_t id) const;
  bool IsSpecial(int32_t id) const;

  // One past the largest id (vocabulary and added tokens).
  int32_t vocab_size() const;

  struct Impl;

 private:
  explicit BpeTokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Appends `bytes` to `out` as valid UTF-8, replacing each maximal invalid subpart
// with U+FFFD (the Unicode / WHATWG / Rust from_utf8_lossy policy).
void AppendUtf8Lossy(std::string_view bytes, std::string* out);

// Length of the longest prefix of `bytes` that does not end inside a multi-byte
// character that later bytes could still complete: what a streaming decoder can emit
// now without risking a spurious U+FFFD.
size_t Utf8CompletePrefix(std::string_view bytes);

// Splits `text` with the GPT-2 pre-tokenizer regex (what ByteLevel(use_regex=true)
// does before BPE); the pieces concatenate to `text`.
std::vector<std::string> SplitGpt2Pattern(std::string_view text);

// GPT-2's table: byte b -> the code point that stands for it inside BPE tokens
// (printable Latin-1 bytes stand for themselves, the rest map to U+0100..).
char32_t ByteToUnicode(uint8_t byte);

}  // namespace fedge::agent::llm
