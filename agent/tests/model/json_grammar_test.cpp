// JSON mode's automaton against nlohmann's parser: every prefix of a JSON object is
// accepted and only the whole object is complete; random edits of one are accepted as
// complete exactly when nlohmann parses the result as an object. And the constraint's
// mask over a small vocabulary.
#include "fedge/agent/llm/json_grammar.h"

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>

namespace fedge::agent::llm {
namespace {

// Accepted as a prefix, and whether complete.
std::pair<bool, bool> Feed(std::string_view text) {
  JsonPrefix p;
  const bool ok = p.FeedAll(text);
  return {ok, ok && p.Complete()};
}

TEST(JsonGrammarTest, AcceptsPrefixesOfObjectsAndCompletesOnlyAtTheEnd) {
  for (const std::string doc : {
           R"({})",
           R"( { "a" : 1 })",
           "{\"a\":[1,-0.5e+3,2E-2,0,true,false,null,\"x\\n\\u00e9\\\"\"],\"b\":{\"c\":{}},\"d\":[]}",
           "{\"\xc3\xa9\\u12aF\": \"\xe6\x9d\xb1\\/\\b\\f\\r\\t\\\\\"}",
           R"({"n": [[[[]]], {"k": [{}]}], "z": -12.75})",
       }) {
    for (size_t n = 0; n < doc.size(); ++n) {
      auto [ok, complete] = Feed(doc.substr(0, n));
      EXPECT_TRUE(ok) << doc.substr(0, n);
      // Complete only once the last '}' is in.
      EXPECT_EQ(complete, doc.find_last_of('}') < n) << doc.substr(0, n);
    }
    EXPECT_EQ(Feed(doc), std::make_pair(true, true)) << doc;
  }
  for (const char* bad : {
           "[]",
           "\"s\"",
           "1",
           "true",
           " x",  // the top-level value is an object
           "{\"a\":1,}",
           "{,}",
           "{\"a\" 1}",
           "{a:1}",
           "{\"a\":01}",  // trailing comma, no colon, bare key
           "{\"a\":-}",
           "{\"a\":1.}",
           "{\"a\":1e}",
           "{\"a\":.5}",
           "{\"a\":+1}",
           "{\"a\":\"\\x\"}",
           "{\"a\":\"\\u12g4\"}",
           "{\"a\":\"\x01\"}",
           "{\"a\":\"\n\"}",
           "{\"a\":tru}",
           "{\"a\":nul }",
           "{\"a\":[1 2]}",
           "{\"a\":[1,]}",
           "{\"a\":1]",
           "{\"a\":[}",
           "{} {}",
           "{}x",
           "{\"a\":1}}",
           // Whitespace is bounded: none after the object, 2 before it, 2 + 4 x depth between.
           "{} ",
           "   {}",
           "{\"a\":       1}",
           "{\"a\":[           1]}",
       }) {
    EXPECT_FALSE(Feed(bad).second) << bad;
  }
  // Nesting is bounded.
  std::string deep = "{\"a\":" + std::string(JsonPrefix::kMaxDepth - 1, '[');
  EXPECT_TRUE(Feed(deep).first);
  EXPECT_FALSE(Feed(deep + "[").first);
}

nlohmann::json RandomValue(std::mt19937& rng, int depth) {
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
      for (int i = 0, n = static_cast<int>(rng() % 4); i < n; ++i) a.push_back(RandomValue(rng, depth + 1));
      return a;
    }
    default: {
      nlohmann::json o = nlohmann::json::object();
      for (int i = 0, n = static_cast<int>(rng() % 4); i < n; ++i)
        o["k" + std::to_string(rng() % 5)] = RandomValue(rng, depth + 1);
      return o;
    }
  }
}

TEST(JsonGrammarTest, AgreesWithNlohmannOnRandomObjectsAndEditsOfThem) {
  std::mt19937 rng(7);
  // No whitespace: the automaton bounds runs of it, nlohmann does not.
  const std::string alphabet = "{}[]\",:0123456789-+.eEtrufalsn\\/ab";
  int edited_valid = 0, edited_invalid = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    nlohmann::json obj = nlohmann::json::object();
    for (int i = 0, n = static_cast<int>(rng() % 4); i < n; ++i)
      obj["k" + std::to_string(i)] = RandomValue(rng, 1);
    // ASCII (non-ASCII text as \u escapes), so that an edit cannot split a UTF-8
    // sequence: nlohmann checks UTF-8, which the automaton leaves to the tokenizer.
    const std::string doc = obj.dump(rng() % 2 == 0 ? -1 : 2, ' ', /*ensure_ascii=*/true);
    for (size_t n = 0; n < doc.size(); ++n) ASSERT_TRUE(Feed(doc.substr(0, n)).first) << doc << " at " << n;
    ASSERT_EQ(Feed(doc), std::make_pair(true, true)) << doc;
    // One to three random edits.
    std::string edited = doc;
    for (int e = 0, n = 1 + static_cast<int>(rng() % 3); e < n; ++e) {
      const size_t at = rng() % (edited.size() + 1);
      const char c = alphabet[rng() % alphabet.size()];
      switch (rng() % 3) {
        case 0:
          edited.insert(at, 1, c);
          break;
        case 1:
          if (at < edited.size()) edited.erase(at, 1);
          break;
        default:
          if (at < edited.size()) edited[at] = c;
      }
    }
    bool want;
    try {
      want = nlohmann::json::parse(edited).is_object();
    } catch (const nlohmann::json::out_of_range&) {
      continue;  // a number out of double's range (2.2E649...): valid JSON text, beyond nlohmann
    } catch (const nlohmann::json::parse_error&) {
      want = false;
    }
    ASSERT_EQ(Feed(edited).second, want) << nlohmann::json(edited).dump(-1, ' ', true);
    (want ? edited_valid : edited_invalid)++;
  }
  // Both sides of the comparison were exercised.
  EXPECT_GT(edited_valid, 100);
  EXPECT_GT(edited_invalid, 100);
}

TEST(JsonGrammarTest, ConstraintMasksTokensThatLeaveJsonAndEndsOnlyWhenClosed) {
  const std::vector<std::string> vocab = {"", "{", "}", "\"a\"", ":", "1", " ", "x", "{\"", "\":1}", "[", ""};
  const int64_t eos = 11;  // special: no text
  JsonConstraint c(&vocab, {eos});
  auto allowed = [&] {
    std::vector<float> logits(vocab.size(), 0.0f);
    const int64_t n = c.Mask(logits.data(), static_cast<int64_t>(logits.size()));
    std::vector<int> out;
    for (size_t i = 0; i < logits.size(); ++i)
      if (!std::isinf(logits[i])) out.push_back(static_cast<int>(i));
    EXPECT_EQ(n, static_cast<int64_t>(out.size()));
    return out;
  };
  EXPECT_EQ(allowed(), (std::vector<int>{1, 6, 8}));  // '{', ' ', '{"'
  c.Accept(8);                                        // {"
  // Inside a key: any text that does not close it early ("a" would), or closes it
  // into a whole member (":1}").
  EXPECT_EQ(allowed(), (std::vector<int>{1, 2, 4, 5, 6, 7, 8, 9, 10}));
  c.Accept(7);  // {"x
  c.Accept(9);  // {"x":1}
  EXPECT_TRUE(c.Complete());
  EXPECT_EQ(allowed(), (std::vector<int>{11}));  // closed: only the end
  // With no end id, nothing may follow a closed object.
  JsonConstraint no_end(&vocab, {});
  no_end.Accept(1);
  no_end.Accept(2);
  std::vector<float> logits(vocab.size(), 0.0f);
  EXPECT_EQ(no_end.Mask(logits.data(), static_cast<int64_t>(logits.size())), 0);
}

}  // namespace
}  // namespace fedge::agent::llm
