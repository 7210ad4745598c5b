// BPE tokenizer read from a Hugging Face tokenizer.json, producing the same ids as the
// `tokenizers` library, in its two layouts:
//   byte-level (GPT-2, Llama 3, Qwen2/2.5/3, SmolLM2): every byte maps to a stand-in
//     character, so every input encodes;
//   SentencePiece-style (Llama 2, TinyLlama, Mistral, Phi-3, Gemma): spaces become
//     U+2581 (a Prepend/Replace normalizer or a Metaspace pre-tokenizer), words are
//     split into characters, and a character missing from the vocabulary becomes its
//     UTF-8 bytes as <0xXX> tokens (byte_fallback) or the unknown token.
//
// Pipeline (encode): added/special tokens are matched first (leftmost-longest) and
// map straight to their ids; every other span goes through the normalizer and the
// pre-tokenizer
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

// How Encode treats the text's position in a sequence.
struct EncodeOptions {
  // Prepends the post_processor's leading special tokens (Llama's BOS: <s>,
  // <|begin_of_text|>), as `tokenizers`' add_special_tokens does, unless the text's
  // ids already begin with them (a chat template that writes the BOS itself).
  bool add_special_tokens = false;
  // The text continues a sequence (a completion after its prompt): the word-start
  // marker a SentencePiece-style tokenizer prepends to a sequence's first word
  // (Prepend normalizer, Metaspace prepend_scheme) is not prepended to the first span.
  // Byte-level tokenizers encode the same either way.
  bool continuation = false;
};

class BpeTokenizer {
 public:
  // Parses tokenizer.json text. Supported: model.type "BPE" (merges as "a b" strings
  // or [a, b] pairs, ignore_merges, unk_token with fuse_unk, byte_fallback);
  // normalizer null, NFC, Prepend, Replace (string pattern) or a Sequence of these
  // (applied to the text between added tokens, which match on the raw text);
  // pre_tokenizer ByteLevel / Split(GPT-2 | Llama-3 | Qwen2 regex, Isolated) / Digits /
  // Sequence of these ending in ByteLevel, or Metaspace, or null (SentencePiece-style);
  // decoder ByteLevel, Metaspace, or a Sequence of Replace / ByteFallback / Fuse /
  // Strip; post_processor null, ByteLevel, TemplateProcessing or a Sequence of these.
  // Anything else is UNIMPLEMENTED naming the component, so a tokenizer is never
  // silently misread.
  static StatusOr<BpeTokenizer> FromJson(std::string_view json_text);
  // Reads `path` (a tokenizer.json) and parses it; NOT_FOUND if missing. Loads of the
  // same file (device, inode, size and modification time) while one is alive share
  // its tables: an agent's trainer and serving instances hold Gemma 3's 262k-piece
  // tables once (~50 MiB, 1.2 s to parse).
  static StatusOr<BpeTokenizer> Load(const std::string& path);
  // Whether the two hold the same tables (one Load, or Loads of one file).
  bool SharesTablesWith(const BpeTokenizer& other) const { return impl_ == other.impl_; }

  // Token ids of `text`; with default options as `tokenizers`' encode(text,
  // add_special_tokens=False). Total: every byte sequence encodes (bytes a
  // SentencePiece-style vocabulary cannot spell become <0xXX> or the unknown token).
  std::vector<int32_t> Encode(std::string_view text, const EncodeOptions& options = {}) const;

  // The special tokens the post_processor puts before a sequence (BOS), may be empty.
  const std::vector<int32_t>& SequencePrefix() const;
  // This tokenizer (sharing its tables) with another SequencePrefix: transformers'
  // Llama and Gemma tokenizer classes rebuild the post_processor from
  // tokenizer_config.json's add_bos_token (ApplyTokenizerConfig).
  BpeTokenizer WithSequencePrefix(std::vector<int32_t> prefix) const;

  // Whether Decode drops a leading space (a Strip decoder, or Metaspace's first-token
  // rule): what a text that starts a reply should do with its first word's marker.
  bool StripsLeadingSpace() const;

  // UTF-8 text of `ids` as `tokenizers`' decode; unknown ids are skipped, special
  // tokens are dropped when `skip_special` is set.
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  // Raw bytes a single token stands for (empty for unknown ids), for streaming:
  // concatenated they are the text, with a SentencePiece word marker as a space
  // (including a leading one, which Decode strips) and <0xXX> as its byte.
  std::string TokenBytes(int32_t id) const;
  // TokenBytes of every id, special tokens empty (generated text leaves them out):
  // built on first use, once per loaded tokenizer (copies share it). Thread-safe.
  const std::vector<std::string>& TextBytesTable() const;

  // Id of a vocabulary or added token given by its tokenizer.json spelling.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // tokenizer.json spelling of `id`, empty if unknown.
  std::string IdToToken(int32_t id) const;
  bool IsSpecial(int32_t id) const;

  // One past the largest id (vocabulary and added tokens).
  int32_t vocab_size() const;

  struct Impl;
  class VocabMergesReader;  // FromJson's reader of model.vocab / model.merges

 private:
  explicit BpeTokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
  std::vector<int32_t> prefix_;  // the post_processor's, unless WithSequencePrefix replaced it
};

// The BOS as transformers sets it for a model directory `dir`: its Llama and Gemma
// tokenizer classes (tokenizer_config.json "tokenizer_class" LlamaTokenizer[Fast],
// CodeLlamaTokenizer[Fast], GemmaTokenizer[Fast]) rebuild tokenizer.json's
// post_processor from "add_bos_token" (with "bos_token"); other classes keep it.
// `tokenizer` unchanged without such a file; INVALID_ARGUMENT for a file that is not
// JSON or a bos_token the tokenizer lacks.
StatusOr<BpeTokenizer> ApplyTokenizerConfig(const BpeTokenizer& tokenizer, const std::string& dir);

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
