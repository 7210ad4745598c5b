#include "fedge/agent/llm/json_grammar.h"

#include <algorithm>
#include <array>
#include <limits>

namespace fedge::agent::llm {
namespace {

bool IsSpace(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(unsigned char c) { return c >= '0' && c <= '9'; }
bool IsHex(unsigned char c) { return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

}  // namespace

int Utf8Next(uint16_t* state, unsigned char c) {
  const int left = *state & 3;
  if (left > 0) {
    unsigned lo = 0x80, hi = 0xBF;
    switch (*state >> 2) {
      case 1:  // after E0: no overlong 3-byte form
        lo = 0xA0;
        break;
      case 2:  // after ED: no surrogate
        hi = 0x9F;
        break;
      case 3:  // after F0: no overlong 4-byte form
        lo = 0x90;
        break;
      case 4:  // after F4: nothing past U+10FFFF
        hi = 0x8F;
        break;
      default:
        break;
    }
    if (c < lo || c > hi) return -1;
    *state = static_cast<uint16_t>(left - 1);
    return 0;
  }
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    *state = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    *state = static_cast<uint16_t>(2 | ((c == 0xE0 ? 1 : c == 0xED ? 2 : 0) << 2));
  } else if (c >= 0xF0 && c <= 0xF4) {
    *state = static_cast<uint16_t>(3 | ((c == 0xF0 ? 3 : c == 0xF4 ? 4 : 0) << 2));
  } else {
    return -1;  // a stray continuation byte, C0, C1, F5-FF
  }
  return 1;
}

bool JsonWhitespace(uint8_t* run, unsigned char c, int depth) {
  constexpr uint8_t kOneSpace = 255;
  if (*run == 0) {
    if (c == ' ') {
      *run = kOneSpace;
    } else if (c == '\n') {
      *run = 1;
    } else {
      return false;
    }
    return true;
  }
  if (*run == kOneSpace || (c != ' ' && c != '\t') || *run - 1 >= 2 + 4 * depth) return false;
  ++*run;
  return true;
}

bool JsonPrefix::Space(unsigned char c) { return JsonWhitespace(&space_run_, c, depth_); }

void JsonPrefix::ValueEnded() { state_ = depth_ == 0 ? State::kDone : State::kCommaOrEnd; }

bool JsonPrefix::FeedAfterValue(unsigned char c) {
  ValueEnded();
  return Feed(c);
}

bool JsonPrefix::StartValue(unsigned char c) {
  switch (c) {
    case '{':
    case '[':
      if (depth_ == kMaxDepth) return false;
      stack_[static_cast<size_t>(depth_++)] = static_cast<char>(c);
      state_ = c == '{' ? State::kKeyOrEnd : State::kValueOrEnd;
      return true;
    case '"':
      string_is_key_ = false;
      state_ = State::kString;
      return true;
    case '-':
      state_ = State::kMinus;
      return true;
    case '0':
      state_ = State::kZero;
      return true;
    case 't':
    case 'f':
    case 'n':
      literal_ = c == 't' ? "true" : c == 'f' ? "false" : "null";
      literal_at_ = 1;
      state_ = State::kLiteral;
      return true;
    default:
      if (c >= '1' && c <= '9') {
        state_ = State::kDigits;
        return true;
      }
      return false;
  }
}

bool JsonPrefix::Feed(unsigned char c) {
  const bool in_token = state_ == State::kString || state_ == State::kEscape || state_ == State::kUnicode;
  if (!in_token && !IsSpace(c)) space_run_ = 0;
  switch (state_) {
    case State::kStart:
      if (IsSpace(c)) return Space(c);
      if (c != '{') return false;  // the top-level value is an object
      return StartValue(c);
    case State::kDone:
      return false;
    case State::kValue:
      if (IsSpace(c)) return Space(c);
      return StartValue(c);
    case State::kValueOrEnd:
      if (IsSpace(c)) return Space(c);
      if (c == ']') {
        --depth_;
        ValueEnded();
        return true;
      }
      return StartValue(c);
    case State::kKeyOrEnd:
    case State::kKey:
      if (IsSpace(c)) return Space(c);
      if (c == '}' && state_ == State::kKeyOrEnd) {
        --depth_;
        ValueEnded();
        return true;
      }
      if (c != '"') return false;
      string_is_key_ = true;
      state_ = State::kString;
      return true;
    case State::kColon:
      if (IsSpace(c)) return Space(c);
      if (c != ':') return false;
      state_ = State::kValue;
      return true;
    case State::kCommaOrEnd: {
      if (IsSpace(c)) return Space(c);
      const char open = stack_[static_cast<size_t>(depth_ - 1)];
      if (c == ',') {
        state_ = open == '{' ? State::kKey : State::kValue;
        return true;
      }
      if ((c == '}' && open == '{') || (c == ']' && open == '[')) {
        --depth_;
        ValueEnded();
        return true;
      }
      return false;
    }
    case State::kString:
      if (utf8_ != 0) return Utf8Next(&utf8_, c) == 0;  // inside a character
      if (c == '"') {
        if (string_is_key_) {
          state_ = State::kColon;
        } else {
          ValueEnded();
        }
        return true;
      }
      if (c == '\\') {
        state_ = State::kEscape;
        return true;
      }
      return c >= 0x20 && Utf8Next(&utf8_, c) > 0;  // control characters must be escaped
    case State::kEscape:
      if (c == 'u') {
        hex_left_ = 4;
        state_ = State::kUnicode;
        return true;
      }
      if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
        state_ = State::kString;
        return true;
      }
      return false;
    case State::kUnicode:
      if (!IsHex(c)) return false;
      if (--hex_left_ == 0) state_ = State::kString;
      return true;
    case State::kMinus:
      if (c == '0') {
        state_ = State::kZero;
        return true;
      }
      if (c >= '1' && c <= '9') {
        state_ = State::kDigits;
        return true;
      }
      return false;
    case State::kZero:
    case State::kDigits:
      if (IsDigit(c) && state_ == State::kDigits) return true;
      if (c == '.') {
        state_ = State::kDot;
        return true;
      }
      if (c == 'e' || c == 'E') {
        state_ = State::kExponent;
        return true;
      }
      return FeedAfterValue(c);
    case State::kDot:
      if (!IsDigit(c)) return false;
      state_ = State::kFraction;
      return true;
    case State::kFraction:
      if (IsDigit(c)) return true;
      if (c == 'e' || c == 'E') {
        state_ = State::kExponent;
        return true;
      }
      return FeedAfterValue(c);
    case State::kExponent:
      if (c == '+' || c == '-') {
        state_ = State::kExponentSign;
        return true;
      }
      [[fallthrough]];
    case State::kExponentSign:
      if (!IsDigit(c)) return false;
      state_ = State::kExponentDigits;
      return true;
    case State::kExponentDigits:
      if (IsDigit(c)) return true;
      return FeedAfterValue(c);
    case State::kLiteral:
      if (c != static_cast<unsigned char>(literal_[literal_at_])) return false;
      if (literal_[++literal_at_] == '\0') ValueEnded();
      return true;
  }
  return false;
}

bool JsonPrefix::FeedAll(std::string_view bytes) {
  for (const char c : bytes) {
    if (!Feed(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

JsonConstraint::JsonConstraint(const std::vector<std::string>* token_bytes, std::vector<int64_t> end_ids)
    : token_bytes_(token_bytes), end_ids_(std::move(end_ids)) {}

JsonConstraint::JsonConstraint(const std::vector<std::string>* token_bytes, std::vector<int64_t> end_ids,
                               std::shared_ptr<const JsonSchema> schema)
    : token_bytes_(token_bytes), end_ids_(std::move(end_ids)) {
  schema_prefix_.emplace(schema);
  scratch_.emplace(std::move(schema));
}

template <typename Fits>
int64_t JsonConstraint::MaskWith(float* logits, int64_t vocab_size, bool complete, const Fits& fits) const {
  constexpr float kOff = -std::numeric_limits<float>::infinity();
  // Most tokens are refused at their first byte: which first bytes can be taken is
  // found once (256 feeds). Many of the rest (" word" after a value) are refused at
  // their second: each pair of first bytes met is judged once, when first met. Only
  // tokens whose first two bytes fit are fed whole.
  // Inside a string nearly every byte fits and the pairs would only cost: they are
  // judged only where at most half the first bytes fit.
  std::array<bool, 256> first{};
  int first_fit = 0;
  if (!complete) {
    for (int b = 0; b < 256; ++b) {
      const char byte = static_cast<char>(b);
      first[static_cast<size_t>(b)] = fits(std::string_view(&byte, 1));
      first_fit += first[static_cast<size_t>(b)] ? 1 : 0;
    }
  }
  const bool judge_pairs = first_fit <= 128;
  if (judge_pairs) pairs_.assign(size_t{1} << 16, 0);  // 0 not yet judged, 1 fits, 2 does not
  auto pair_fits = [&](const std::string& bytes) {
    uint8_t& verdict =
        pairs_[static_cast<unsigned char>(bytes[0]) << 8 | static_cast<unsigned char>(bytes[1])];
    if (verdict == 0) verdict = fits(std::string_view(bytes.data(), 2)) ? 1 : 2;
    return verdict == 1;
  };
  int64_t allowed = 0;
  for (int64_t id = 0; id < vocab_size; ++id) {
    bool ok;
    if (std::find(end_ids_.begin(), end_ids_.end(), id) != end_ids_.end()) {
      ok = complete;  // the reply may end only with the object closed
    } else if (complete || static_cast<size_t>(id) >= token_bytes_->size() ||
               (*token_bytes_)[static_cast<size_t>(id)].empty()) {
      ok = false;  // after the object nothing but the end; special and unknown ids never
    } else {
      const std::string& bytes = (*token_bytes_)[static_cast<size_t>(id)];
      ok = first[static_cast<unsigned char>(bytes[0])] &&
           (bytes.size() == 1 ||
            (judge_pairs ? pair_fits(bytes) && (bytes.size() == 2 || fits(bytes)) : fits(bytes)));
    }
    if (ok) {
      ++allowed;
    } else {
      logits[id] = kOff;
    }
  }
  return allowed;
}

int64_t JsonConstraint::Mask(float* logits, int64_t vocab_size) const {
  if (schema_prefix_) {
    return MaskWith(logits, vocab_size, schema_prefix_->Complete(), [this](std::string_view bytes) {
      schema_prefix_->CopyTo(&*scratch_);
      return scratch_->FeedAll(bytes);
    });
  }
  return MaskWith(logits, vocab_size, prefix_.Complete(), [this](std::string_view bytes) {
    JsonPrefix next = prefix_;
    return next.FeedAll(bytes);
  });
}

void JsonConstraint::Accept(int32_t id) {
  if (static_cast<size_t>(id) >= token_bytes_->size()) return;
  const std::string& bytes = (*token_bytes_)[static_cast<size_t>(id)];
  if (schema_prefix_) {
    schema_prefix_->FeedAll(bytes);
  } else {
    prefix_.FeedAll(bytes);
  }
}

}  // namespace fedge::agent::llm
