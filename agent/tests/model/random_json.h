// Random JSON and helpers for the automata's tests (json_grammar_test, json_schema_test).
#pragma once

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace fedge::agent::llm {

// A value nesting below `depth` (deeper ones are scalars or strings); strings mix
// quotes, backslashes, control characters, '/', and 2- and 3-byte UTF-8.
inline nlohmann::json RandomJsonValue(std::mt19937& rng, int depth) {
  std::uniform_int_distribution<int> kind(0, depth > 3 ? 4 : 6);
  switch (kind(rng)) {
    case 0:
      return nullptr;
    case 1:
      return rng() % 2 == 0;
    case 2:
      return static_cast<int64_t>(rng() % 2000) - 1000;
    case 3:
      return std::ldexp(static_cast<double>(rng() % 100000) - 50000, -static_cast<int>(rng() % 20));
    case 4: {
      std::string s;
      static const char* const kPieces[] = {"a", "\"", "\\", "\n", "\x01", "/", "\xc3\xa9", " ", "\u6771"};
      for (int i = 0, n = static_cast<int>(rng() % 6); i < n; ++i) s += kPieces[rng() % 9];
      return s;
    }
    case 5: {
      nlohmann::json a = nlohmann::json::array();
      for (int i = 0, n = static_cast<int>(rng() % 4); i < n; ++i)
        a.push_back(RandomJsonValue(rng, depth + 1));
      return a;
    }
    default: {
      nlohmann::json o = nlohmann::json::object();
      for (int i = 0, n = static_cast<int>(rng() % 4); i < n; ++i)
        o["k" + std::to_string(rng() % 5)] = RandomJsonValue(rng, depth + 1);
      return o;
    }
  }
}

// Bytes for RandomEdits. No whitespace: the automata bound runs of it, nlohmann
// does not.
inline constexpr char kJsonEditAlphabet[] = "{}[]\",:0123456789-+.eEtrufalsn\\/ab";

// One to three insertions, deletions or replacements of alphabet bytes.
inline std::string RandomEdits(std::mt19937& rng, std::string text, const std::string& alphabet) {
  for (int e = 0, n = 1 + static_cast<int>(rng() % 3); e < n; ++e) {
    const size_t at = rng() % (text.size() + 1);
    const char c = alphabet[rng() % alphabet.size()];
    switch (rng() % 3) {
      case 0:
        text.insert(at, 1, c);
        break;
      case 1:
        if (at < text.size()) text.erase(at, 1);
        break;
      default:
        if (at < text.size()) text[at] = c;
    }
  }
  return text;
}

// Whether every run of whitespace outside strings in `text` (a JSON text, or not)
// has a form JsonWhitespace allows at its depth (open brackets before it): one
// space, or '\n' and at most 2 + 4 x depth spaces and tabs; and none after the text
// closes. Written apart from the automata, as their reference.
inline bool WhitespaceFits(const std::string& text) {
  int depth = 0;
  bool in_string = false, escaped = false, closed = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == ' ' || c == '\n' || c == '\t' || c == '\r') {
      size_t end = i;
      while (end < text.size() &&
             (text[end] == ' ' || text[end] == '\n' || text[end] == '\t' || text[end] == '\r'))
        ++end;
      const std::string run = text.substr(i, end - i);
      if (closed) return false;
      const bool one_space = run == " ";
      const bool indent = run[0] == '\n' && run.size() - 1 <= static_cast<size_t>(2 + 4 * depth) &&
                          run.find_first_not_of(" \t", 1) == std::string::npos;
      if (!one_space && !indent) return false;
      i = end - 1;
      continue;
    }
    if (c == '"') in_string = true;
    if (c == '{' || c == '[') ++depth;
    if ((c == '}' || c == ']') && --depth == 0) closed = true;
  }
  return true;
}

// The ids a constraint leaves allowed over a vocabulary of `size` (and a check that
// Mask counts them).
template <typename Constraint>
std::vector<int> AllowedTokens(const Constraint& c, size_t size) {
  std::vector<float> logits(size, 0.0f);
  const int64_t n = c.Mask(logits.data(), static_cast<int64_t>(logits.size()));
  std::vector<int> out;
  for (size_t i = 0; i < logits.size(); ++i)
    if (!std::isinf(logits[i])) out.push_back(static_cast<int>(i));
  EXPECT_EQ(n, static_cast<int64_t>(out.size()));
  return out;
}

}  // namespace fedge::agent::llm
