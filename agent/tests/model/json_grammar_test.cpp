// JSON mode's automaton against nlohmann's parser: every prefix of a JSON object is
// accepted and only the whole object is complete; random edits of one are accepted as
// complete exactly when nlohmann parses the result as an object. And the constraint's
// mask over a small vocabulary.
#include "fedge/agent/llm/json_grammar.h"

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>

#include "random_json.h"

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
           R"({})", R"( { "a" : 1 })",
           "{\"a\":[1,-0.5e+3,2E-2,0,true,false,null,\"x\\n\\u00e9\\\"\"],\"b\":{\"c\":{}},\"d\":[]}",
           "{\"\xc3\xa9\\u12aF\": \"\xe6\x9d\xb1\\/\\b\\f\\r\\t\\\\\"}",
           R"({"n": [[[[]]], {"k": [{}]}], "z": -12.75})",
           "\n  {\n      \"a\": [\n\t\t\t1\n\t],\n  \"b\": 2\n}",  // indents to 2 + 4 x depth
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
           // Whitespace is bounded (JsonWhitespace): none after the object; between
           // tokens one space, or a newline and an indent of 2 + 4 x depth at most.
           "{} ",
           "  {}",
           "\n   {}",
           "{\"a\":  1}",
           "{\"a\":\t1}",
           "{\"a\":\r\n1}",
           "{\"a\": \n1}",
           "{\"a\":\n       1}",
           "{\"a\":[\n           1]}",
       }) {
    EXPECT_FALSE(Feed(bad).second) << bad;
  }
  // Nesting is bounded.
  std::string deep = "{\"a\":" + std::string(JsonPrefix::kMaxDepth - 1, '[');
  EXPECT_TRUE(Feed(deep).first);
  EXPECT_FALSE(Feed(deep + "[").first);
}

// Strings hold well-formed UTF-8 only (RFC 3629), split across tokens or not.
TEST(JsonGrammarTest, StringsHoldWellFormedUtf8) {
  for (const char* ok :
       {"\xc3\xa9", "\xe6\x9d\xb1", "\xf0\x9f\x98\x80", "\xed\x9f\xbf", "\xf4\x8f\xbf\xbf", "\xe0\xa0\x80"})
    EXPECT_EQ(Feed(std::string("{\"") + ok + "\":1}"), std::make_pair(true, true)) << ok;
  for (const char* bad : {"\x80", "\xc3", "\xc0\xaf", "\xc1\xbf", "\xe0\x80\x80", "\xed\xa0\x80",
                          "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff", "\xc3\xa9\xa9"})
    EXPECT_FALSE(Feed(std::string("{\"") + bad + "\":1}").first) << bad;
}

TEST(JsonGrammarTest, AgreesWithNlohmannOnRandomObjectsAndEditsOfThem) {
  std::mt19937 rng(7);
  const std::string alphabet = kJsonEditAlphabet;
  int edited_valid = 0, edited_invalid = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    nlohmann::json obj = nlohmann::json::object();
    for (int i = 0, n = static_cast<int>(rng() % 4); i < n; ++i)
      obj["k" + std::to_string(i)] = RandomJsonValue(rng, 1);
    // ASCII (non-ASCII text as \u escapes), so that an edit cannot split a UTF-8
    // sequence: nlohmann checks UTF-8, which the automaton leaves to the tokenizer.
    const std::string doc = obj.dump(rng() % 2 == 0 ? -1 : 2, ' ', /*ensure_ascii=*/true);
    for (size_t n = 0; n < doc.size(); ++n) ASSERT_TRUE(Feed(doc.substr(0, n)).first) << doc << " at " << n;
    ASSERT_EQ(Feed(doc), std::make_pair(true, true)) << doc;
    // One to three random edits.
    const std::string edited = RandomEdits(rng, doc, alphabet);
    bool want;
    try {
      want = nlohmann::json::parse(edited).is_object() && WhitespaceFits(edited);
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
  auto allowed = [&] { return AllowedTokens(c, vocab.size()); };
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
