// JSON mode (OpenAI's response_format {"type": "json_object"}): generation
// constrained so that the reply is a JSON object. JsonPrefix is a byte-level
// pushdown automaton that accepts exactly the prefixes of JSON texts (RFC 8259)
// whose top-level value is an object, with whitespace between tokens bounded
// (JsonWhitespace) and none after the object. JsonConstraint masks,
// before each token is sampled, every token whose bytes would leave that language, and
// every end-of-sequence token until the object is closed (then only those remain).
// Torch-free.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/agent/llm/json_schema.h"

namespace fedge::agent::llm {

// UTF-8 inside JSON strings (RFC 3629: no overlong forms, surrogates or code points
// past U+10FFFF). `state` (0 between characters) packs the continuation bytes still
// due and, before the second byte, the lead's narrower range. Returns -1 for a byte
// that cannot come next, 0 for a continuation byte, 1 for the start of a character.
int Utf8Next(uint16_t* state, unsigned char c);

// Whitespace between JSON tokens, as llama.cpp's json.gbnf bounds it: nothing, one
// space, or a newline and an indent of spaces and tabs, here at most 2 + 4 x depth
// (json.dumps' and JSON.stringify's pretty-printing fit; a model that would pad with
// whitespace, as a small model given a free hand does, cannot). `run` (0 after a
// non-whitespace byte) is the state; false for a byte the run cannot take.
bool JsonWhitespace(uint8_t* run, unsigned char c, int depth);

class JsonPrefix {
 public:
  // Objects and arrays nest at most this deep; a deeper one is refused.
  static constexpr int kMaxDepth = 32;

  // Takes one byte; false (and the state unchanged in meaning: do not use it further)
  // if the bytes so far are no longer a prefix of a JSON object.
  bool Feed(unsigned char c);
  // Feed of each byte; false at the first refused one.
  bool FeedAll(std::string_view bytes);
  // The bytes so far are a whole JSON object.
  bool Complete() const { return state_ == State::kDone; }

 private:
  enum class State : uint8_t {
    kStart,           // before the top-level object (whitespace)
    kValue,           // a value is expected
    kKeyOrEnd,        // after '{': a key or '}'
    kKey,             // after ',' in an object: a key
    kColon,           // after a key
    kCommaOrEnd,      // after a value inside an object or array
    kValueOrEnd,      // after '[': a value or ']'
    kString,          // inside a string
    kEscape,          // after '\' in a string
    kUnicode,         // inside \uXXXX (hex_left_ digits to go)
    kMinus,           // number: after '-'
    kZero,            // number: integer part "0"
    kDigits,          // number: integer part [1-9][0-9]*
    kDot,             // number: after '.'
    kFraction,        // number: fraction digits
    kExponent,        // number: after 'e' / 'E'
    kExponentSign,    // number: after the exponent's sign
    kExponentDigits,  // number: exponent digits
    kLiteral,         // inside true / false / null
    kDone,            // the top-level object closed (nothing may follow)
  };
  // Whitespace between tokens (JsonWhitespace).
  bool Space(unsigned char c);
  // After a value ended (a string, number, literal, object or array closed): where
  // the enclosing container, or the top level, goes next.
  void ValueEnded();
  // A byte that ends a number (or a literal's end) given to the state after it.
  bool FeedAfterValue(unsigned char c);
  bool StartValue(unsigned char c);

  State state_ = State::kStart;
  bool string_is_key_ = false;
  uint8_t hex_left_ = 0;
  uint16_t utf8_ = 0;       // Utf8Next's state inside a string
  uint8_t literal_at_ = 0;  // bytes of literal_ matched
  const char* literal_ = nullptr;
  int depth_ = 0;
  uint8_t space_run_ = 0;                // JsonWhitespace's state
  std::array<char, kMaxDepth> stack_{};  // '{' or '['
};

// The constraint over a vocabulary: `token_bytes[id]` is the text token `id` stands
// for (BpeTokenizer::TokenBytes; empty for special and unknown ids, which are never
// allowed), `end_ids` the end-of-sequence ids. The reply is any JSON object
// (JsonPrefix), or with a schema one the schema accepts (JsonSchemaPrefix).
class JsonConstraint {
 public:
  JsonConstraint(const std::vector<std::string>* token_bytes, std::vector<int64_t> end_ids);
  JsonConstraint(const std::vector<std::string>* token_bytes, std::vector<int64_t> end_ids,
                 std::shared_ptr<const JsonSchema> schema);

  // Sets logits[id] to -infinity for every token the reply may not continue with.
  // Returns how many remain allowed (0: nothing can follow; the caller ends).
  int64_t Mask(float* logits, int64_t vocab_size) const;
  // The sampled token: its bytes are fed (an end id changes nothing).
  void Accept(int32_t id);
  bool Complete() const { return schema_prefix_ ? schema_prefix_->Complete() : prefix_.Complete(); }

 private:
  template <typename Fits>
  int64_t MaskWith(float* logits, int64_t vocab_size, bool complete, const Fits& fits) const;

  const std::vector<std::string>* token_bytes_;
  std::vector<int64_t> end_ids_;
  JsonPrefix prefix_;
  std::optional<JsonSchemaPrefix> schema_prefix_;
  mutable std::optional<JsonSchemaPrefix> scratch_;  // Mask's copy, kept for its storage
  mutable std::vector<uint8_t> pairs_;               // Mask's verdicts on two-byte prefixes
};

}  // namespace fedge::agent::llm
