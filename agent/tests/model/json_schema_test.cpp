// Structured outputs' automaton (json_schema.h). With no constraint it agrees with
// JSON mode's JsonPrefix byte for byte; with pydantic-shaped schemas, every prefix of
// a text generated from the schema is accepted and random edits of it are complete
// exactly when a reference validator written here (over ordered_json, with the
// documented narrowing: schema key order, json.dumps literals) accepts them. Then
// each keyword's edges, the refusals, and the constraint's mask.
#include "fedge/agent/llm/json_schema.h"

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>

#include "fedge/agent/llm/json_grammar.h"
#include "random_json.h"

namespace fedge::agent::llm {
namespace {

using Ordered = nlohmann::ordered_json;

std::shared_ptr<const JsonSchema> Compile(const std::string& schema) {
  auto s = CompileJsonSchema(schema);
  EXPECT_TRUE(s.ok()) << s.status().message() << "\n" << schema;
  return s.ok() ? *s : nullptr;
}

// Accepted as a prefix, and whether complete.
std::pair<bool, bool> Feed(const std::shared_ptr<const JsonSchema>& schema, std::string_view text) {
  JsonSchemaPrefix p(schema);
  const bool ok = p.FeedAll(text);
  return {ok, ok && p.Complete()};
}

TEST(JsonSchemaTest, AnObjectSchemaAgreesWithJsonModeOnEveryPrefix) {
  const auto schema = Compile(R"({"type": "object"})");
  std::mt19937 rng(11);
  const std::string alphabet = std::string(kJsonEditAlphabet) + " \n";
  int complete = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    nlohmann::json obj = nlohmann::json::object();
    for (int i = 0, n = static_cast<int>(rng() % 4); i < n; ++i)
      obj["k" + std::to_string(i)] = RandomJsonValue(rng, 1);
    const std::string doc = obj.dump(rng() % 2 == 0 ? -1 : 2, ' ', true);
    for (const std::string& text :
         {doc, RandomEdits(rng, doc, alphabet), "  " + RandomEdits(rng, doc, alphabet)}) {
      // Byte by byte: the same verdict and the same completeness at every step.
      JsonPrefix want;
      JsonSchemaPrefix got(schema);
      for (size_t i = 0; i < text.size(); ++i) {
        const bool w = want.Feed(static_cast<unsigned char>(text[i]));
        ASSERT_EQ(got.Feed(static_cast<unsigned char>(text[i])), w) << text << " at " << i;
        if (!w) break;
        ASSERT_EQ(got.Complete(), want.Complete()) << text << " at " << i;
        complete += want.Complete() ? 1 : 0;
      }
    }
  }
  EXPECT_GT(complete, 1500);
}

// The reference: does `v` (parsed keeping key order) satisfy `s`, within the
// narrowing json_schema.h documents? `root` resolves $ref.
bool Valid(const Ordered& v, const nlohmann::json& s, const nlohmann::json& root) {
  if (s.is_boolean()) return s.get<bool>();
  if (s.contains("$ref")) {
    const std::string ref = s["$ref"];
    return Valid(v, ref == "#" ? root : root["$defs"][ref.substr(8)], root);
  }
  if (s.contains("anyOf")) {
    for (const auto& option : s["anyOf"])
      if (Valid(v, option, root)) return true;
    return false;
  }
  if (s.contains("enum") || s.contains("const")) {
    const nlohmann::json values = s.contains("enum") ? s["enum"] : nlohmann::json::array({s["const"]});
    for (const auto& x : values)
      if (x.dump() == v.dump()) return true;
    return false;
  }
  std::vector<std::string> types;
  if (s.contains("type")) {
    if (s["type"].is_string()) {
      types.push_back(s["type"]);
    } else {
      for (const auto& t : s["type"]) types.push_back(t);
    }
  }
  auto fits = [&](const std::string& t) {
    if (t == "null") return v.is_null();
    if (t == "boolean") return v.is_boolean();
    if (t == "integer") return v.is_number_integer() || v.is_number_unsigned();
    if (t == "number") return v.is_number();
    if (t == "string") {
      if (!v.is_string()) return false;
      size_t chars = 0;
      for (unsigned char c : v.get<std::string>()) chars += (c & 0xC0) != 0x80 ? 1 : 0;
      return chars >= s.value("minLength", 0u) && chars <= s.value("maxLength", 1u << 30);
    }
    if (t == "array") {
      if (!v.is_array() || v.size() < s.value("minItems", 0u) || v.size() > s.value("maxItems", 1u << 30))
        return false;
      for (const auto& x : v)
        if (!Valid(x, s.contains("items") ? s["items"] : nlohmann::json(true), root)) return false;
      return true;
    }
    if (!v.is_object()) return false;  // object
    const nlohmann::json props = s.value("properties", nlohmann::json::object());
    if (props.empty()) {
      const nlohmann::json extra = s.value("additionalProperties", nlohmann::json(true));
      for (const auto& [k, x] : v.items())
        if (!Valid(x, extra, root)) return false;
      return true;
    }
    // Listed keys only, in the schema's order (the schemas below list them sorted,
    // so nlohmann's order is theirs), each required one present.
    std::vector<std::string> order;
    for (const auto& [k, x] : props.items()) order.push_back(k);
    size_t at = 0;
    for (const auto& [k, x] : v.items()) {
      while (at < order.size() && order[at] != k) ++at;
      if (at == order.size() || !Valid(x, props[k], root)) return false;
      ++at;
    }
    for (const auto& r : s.value("required", nlohmann::json::array()))
      if (!v.contains(r.get<std::string>())) return false;
    return true;
  };
  if (types.empty()) types = {"object", "array", "string", "number", "null", "boolean"};
  for (const std::string& t : types)
    if (fits(t)) return true;
  return false;
}

// A value the schema accepts, keys in order; optional properties left out at random.
Ordered Generate(std::mt19937& rng, const nlohmann::json& s, const nlohmann::json& root, int depth) {
  if (s.contains("$ref")) {
    const std::string ref = s["$ref"];
    return Generate(rng, ref == "#" ? root : root["$defs"][ref.substr(8)], root, depth + 1);
  }
  if (s.contains("anyOf")) {
    // Past a depth, the last option (the schemas below end recursion there).
    const size_t n = s["anyOf"].size();
    return Generate(rng, s["anyOf"][depth > 3 ? n - 1 : rng() % n], root, depth + 1);
  }
  if (s.contains("enum")) return Ordered::parse(s["enum"][rng() % s["enum"].size()].dump());
  if (s.contains("const")) return Ordered::parse(s["const"].dump());
  const std::string type = s["type"].is_string() ? s["type"].get<std::string>()
                                                 : s["type"][rng() % s["type"].size()].get<std::string>();
  if (type == "null") return nullptr;
  if (type == "boolean") return rng() % 2 == 0;
  if (type == "integer") return static_cast<int64_t>(rng() % 20000) - 10000;
  if (type == "number")
    return std::ldexp(static_cast<double>(rng() % 100000) - 50000, -static_cast<int>(rng() % 9));
  if (type == "string") {
    const size_t lo = s.value("minLength", size_t{0}), hi = std::min(s.value("maxLength", size_t{6}), lo + 6);
    std::string out;
    static const char* const kPieces[] = {"a", "\"", "\\", "\n", "/", "\xc3\xa9", " ", "\xe6\x9d\xb1"};
    for (size_t i = 0, n = lo + rng() % (hi - lo + 1); i < n; ++i) out += kPieces[rng() % 8];
    return out;
  }
  if (type == "array") {
    Ordered a = Ordered::array();
    const size_t lo = s.value("minItems", size_t{0}), hi = std::min(s.value("maxItems", size_t{3}), lo + 3);
    for (size_t i = 0, n = depth > 4 ? lo : lo + rng() % (hi - lo + 1); i < n; ++i)
      a.push_back(Generate(rng, s["items"], root, depth + 1));
    return a;
  }
  Ordered o = Ordered::object();
  const nlohmann::json props = s.value("properties", nlohmann::json::object());
  const nlohmann::json required = s.value("required", nlohmann::json::array());
  for (const auto& [k, x] : props.items()) {
    const bool req = std::find(required.begin(), required.end(), k) != required.end();
    if (req || rng() % 2 == 0) o[k] = Generate(rng, x, root, depth + 1);
  }
  if (props.empty() && s.contains("additionalProperties") && s["additionalProperties"].is_object()) {
    for (int i = 0, n = static_cast<int>(rng() % 3); i < n; ++i)
      o["x" + std::to_string(i)] = Generate(rng, s["additionalProperties"], root, depth + 1);
  }
  return o;
}

// Pydantic-shaped schemas (keys listed sorted, so that the reference can read their
// order from nlohmann::json).
const char* const kSchemas[] = {
    // An event with an enum, an optional field, a nested model by $ref, a list.
    R"({"$defs": {"Place": {"additionalProperties": false, "properties": {"city": {"maxLength": 4, "type": "string"},
          "zip": {"type": "integer"}}, "required": ["city"], "title": "Place", "type": "object"},
        "Sky": {"enum": ["clear", "cloudy", "rain", 1, 10, null], "title": "Sky"}},
       "additionalProperties": false,
       "properties": {"a_sky": {"$ref": "#/$defs/Sky"}, "b_note": {"anyOf": [{"type": "string"}, {"type": "null"}],
          "default": null}, "c_places": {"items": {"$ref": "#/$defs/Place"}, "maxItems": 2, "minItems": 1,
          "type": "array"}, "d_ok": {"type": "boolean"}, "e_score": {"type": "number"}},
       "required": ["a_sky", "c_places", "e_score"], "title": "Event", "type": "object"})",
    // A recursive tree; a free map of integers; a type list; a const.
    R"({"$defs": {"Node": {"properties": {"kids": {"items": {"$ref": "#/$defs/Node"}, "type": "array"},
          "name": {"minLength": 1, "type": "string"}}, "required": ["name", "kids"], "type": "object"}},
       "properties": {"counts": {"additionalProperties": {"type": "integer"}, "type": "object"},
          "kind": {"const": "tree"}, "maybe": {"type": ["integer", "null"]}, "root": {"$ref": "#/$defs/Node"}},
       "required": ["kind", "root"], "type": "object"})",
    // Two objects in an anyOf that share their first key.
    R"({"properties": {"shape": {"anyOf": [
          {"properties": {"kind": {"const": "circle"}, "r": {"type": "number"}}, "required": ["kind", "r"],
           "type": "object"},
          {"properties": {"kind": {"const": "circle2"}, "w": {"type": "integer"}}, "required": ["kind", "w"],
           "type": "object"}]}}, "required": ["shape"], "type": "object"})",
};

TEST(JsonSchemaTest, AcceptsWhatTheSchemaAcceptsAndNothingElse) {
  std::mt19937 rng(5);
  int valid = 0, invalid = 0;
  for (const char* text : kSchemas) {
    const nlohmann::json s = nlohmann::json::parse(text);
    const auto schema = Compile(text);
    ASSERT_NE(schema, nullptr);
    for (int trial = 0; trial < 1000; ++trial) {
      const Ordered v = Generate(rng, s, s, 0);
      ASSERT_TRUE(Valid(v, s, s)) << v.dump();
      const std::string doc = v.dump(rng() % 2 == 0 ? -1 : 2, ' ', true);
      JsonSchemaPrefix p(schema);
      for (size_t i = 0; i < doc.size(); ++i) {
        ASSERT_TRUE(p.Feed(static_cast<unsigned char>(doc[i]))) << doc << " at " << i;
        ASSERT_EQ(p.Complete(), i + 1 == doc.size()) << doc << " at " << i;
      }
      const std::string edited = RandomEdits(rng, doc, std::string(kJsonEditAlphabet) + "xyz");
      bool want;
      try {
        want = Valid(Ordered::parse(edited), s, s) && WhitespaceFits(edited);
      } catch (const nlohmann::json::out_of_range&) {
        continue;  // a number beyond double's range: valid JSON text, beyond nlohmann
      } catch (const nlohmann::json::parse_error&) {
        want = false;
      }
      ASSERT_EQ(Feed(schema, edited).second, want) << edited;
      (want ? valid : invalid)++;
    }
  }
  EXPECT_GT(valid, 150);
  EXPECT_GT(invalid, 1000);
}

TEST(JsonSchemaTest, PropertiesComeInOrderAndRequiredOnesMustBeThere) {
  const auto s =
      Compile(R"({"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "integer"},
      "c": {"type": "integer"}}, "required": ["a"]})");
  EXPECT_EQ(Feed(s, R"({"b":1,"a":2,"c":3})"), std::make_pair(true, true));  // the schema's order, not sorted
  EXPECT_EQ(Feed(s, R"({"a":2})"), std::make_pair(true, true));              // optional ones left out
  EXPECT_EQ(Feed(s, R"({"a":2,"c":3})"), std::make_pair(true, true));
  EXPECT_FALSE(Feed(s, R"({"a":2,"b":1})").first);  // out of order
  EXPECT_FALSE(Feed(s, R"({"c":3})").first);        // past the required "a"
  EXPECT_FALSE(Feed(s, R"({"b":1})").first);        // closed without "a"
  EXPECT_TRUE(Feed(s, R"({"b":1)").first);
  EXPECT_FALSE(Feed(s, R"({"a":2,"a":2})").first);  // once each
  EXPECT_FALSE(Feed(s, R"({"d":1})").first);        // not listed
  EXPECT_FALSE(Feed(s, R"({})").first);
  EXPECT_FALSE(Feed(s, R"({"a":2.5})").first);  // an integer
  EXPECT_FALSE(Feed(s, R"({"a":2e1})").first);
  EXPECT_EQ(Feed(s, "{\n  \"a\": -20\n}"), std::make_pair(true, true));
  // additionalProperties false with no properties: only {}.
  const auto empty = Compile(R"({"type": "object", "additionalProperties": false})");
  EXPECT_EQ(Feed(empty, "{}"), std::make_pair(true, true));
  EXPECT_FALSE(Feed(empty, "{\"").first);
  // A map: any key, values of the given schema.
  const auto map = Compile(R"({"type": "object", "additionalProperties": {"type": "boolean"}})");
  EXPECT_EQ(Feed(map, R"({"x\"y":true,"":false})"), std::make_pair(true, true));
  EXPECT_FALSE(Feed(map, R"({"x":1)").first);
}

TEST(JsonSchemaTest, LiteralsStringsAndArraysKeepTheirBounds) {
  const auto s = Compile(R"({"type": "object", "properties": {
      "e": {"enum": [1, 10, "a", "ab", true, null, {"k": [1]}, 2.5]},
      "s": {"type": "string", "minLength": 2, "maxLength": 3},
      "l": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2}},
      "required": ["e", "s", "l"]})");
  for (const char* e : {"1", "10", "\"a\"", "\"ab\"", "true", "null", "{\"k\":[1]}", "2.5"}) {
    const std::string doc = std::string(R"({"e":)") + e + R"(,"s":"xy","l":[1]})";
    EXPECT_EQ(Feed(s, doc), std::make_pair(true, true)) << doc;
  }
  for (const char* e : {"100", "\"abc\"", "\"b\"", "false", "2.50", "{\"k\": [1]}", "1.0", "0"}) {
    const std::string doc = std::string(R"({"e":)") + e + R"(,"s":"xy","l":[1]})";
    EXPECT_FALSE(Feed(s, doc).second) << doc;
  }
  // Characters, not bytes: é and 東 are one each, as is an escape.
  for (const char* str : {"xy", "xyz", "\xc3\xa9\xe6\x9d\xb1", "\\n\\u0041", "a\\\"b"})
    EXPECT_EQ(Feed(s, std::string(R"({"e":1,"s":")") + str + R"(","l":[1]})"), std::make_pair(true, true))
        << str;
  for (const char* str : {"x", "wxyz", "\xc3\xa9\xe6\x9d\xb1\xc3\xa9\xc3\xa9", "", "\\n\\n\\n\\n"})
    EXPECT_FALSE(Feed(s, std::string(R"({"e":1,"s":")") + str + R"(","l":[1]})").second) << str;
  // A run of continuation bytes is not a character: it cannot outrun maxLength.
  EXPECT_FALSE(Feed(s, std::string(R"({"e":1,"s":"x)") + std::string(40, '\x80')).first);
  EXPECT_FALSE(Feed(s, std::string(R"({"e":1,"s":"x\xc3\xa9\xa9)")).first);
  EXPECT_FALSE(Feed(s, R"({"e":1,"s":"xy","l":[]})").first);       // minItems
  EXPECT_FALSE(Feed(s, R"({"e":1,"s":"xy","l":[1,2,3]})").first);  // maxItems
  EXPECT_EQ(Feed(s, R"({"e":1,"s":"xy","l":[1,2]})"), std::make_pair(true, true));
}

// "format" (date, time, date-time, uuid, ipv4) and "pattern" (an ASCII regular
// expression, compiled to a DFA): strings are held to them byte by byte, written
// without escapes; what the regex subset lacks is refused by name.
TEST(JsonSchemaTest, FormatsAndPatternsHoldStringsToTheirShape) {
  auto holds = [](const std::string& schema, const std::string& value) {
    const auto s =
        Compile(R"({"type": "object", "properties": {"v": )" + schema + R"(}, "required": ["v"]})");
    return s != nullptr && Feed(s, R"({"v": ")" + value + R"("})").second;
  };
  const std::pair<const char*, std::vector<std::pair<std::string, bool>>> cases[] = {
      {R"({"type": "string", "format": "date"})",
       {{"2024-02-29", true},
        {"1999-12-31", true},
        {"2024-13-01", false},
        {"2024-00-10", false},
        {"2024-01-32", false},
        {"24-01-01", false},
        {"2024-1-01", false}}},
      {R"({"type": "string", "format": "date-time"})",
       {{"2024-02-29T23:59:60Z", true},
        {"2024-02-29T08:00:00.125+05:30", true},
        {"2024-02-29T24:00:00Z", false},
        {"2024-02-29 08:00:00Z", false},
        {"2024-02-29T08:00:00", false},
        {"2024-02-29T08:00Z", false}}},
      {R"({"type": "string", "format": "time"})",
       {{"23:05:09Z", true}, {"23:05:09-01:00", true}, {"23:5:09Z", false}}},
      {R"({"format": "uuid"})",
       {{"123e4567-e89b-12d3-a456-426614174000", true},
        {"123E4567-E89B-12D3-A456-426614174000", true},
        {"123e4567e89b12d3a456426614174000", false},
        {"123e4567-e89b-12d3-a456-42661417400g", false}}},
      {R"({"type": "string", "format": "ipv4"})",
       {{"192.168.0.1", true},
        {"255.255.255.255", true},
        {"256.1.1.1", false},
        {"1.2.3", false},
        {"01.2.3.4", false}}},
      {R"({"type": "string", "pattern": "^[A-Z]{2}-\\d{3,4}$"})",
       {{"AB-123", true}, {"ZZ-0000", true}, {"AB-12", false}, {"ab-123", false}, {"AB-12345", false}}},
      // Unanchored: found anywhere, as JSON Schema reads it.
      {R"({"type": "string", "pattern": "ca(t|r)s?"})",
       {{"cat", true}, {"my cars!", true}, {"dog", false}, {"c a t", false}}},
      {R"({"type": "string", "pattern": "^(?:yes|no)$", "maxLength": 2})", {{"no", true}, {"yes", false}}},
      {R"({"type": "string", "pattern": "^a.c$"})", {{"abc", true}, {"a c", true}, {"a\"c", false}}},
  };
  for (const auto& [schema, values] : cases) {
    for (const auto& [value, want] : values) EXPECT_EQ(holds(schema, value), want) << schema << " " << value;
  }
  // Escapes are not written inside a shaped string, even of a character it allows.
  EXPECT_FALSE(holds(R"({"type": "string", "pattern": "^a.c$"})", "a\\u0062c"));
  // The mask agrees: with a vocabulary of digits and dashes, only a date is written.
  const std::vector<std::string> vocab = {"{\"v\": \"", "2024", "-", "13", "02", "29", "\"}", "x", ""};
  JsonConstraint c(&vocab, {8},
                   Compile(R"({"type": "object", "properties": {"v": {"type": "string", "format": "date"}},
                       "required": ["v"]})"));
  c.Accept(0);
  EXPECT_EQ(AllowedTokens(c, vocab.size()),
            (std::vector<int>{1, 3, 4, 5}));  // a year's digits; not '-' or 'x'
  c.Accept(1);
  c.Accept(2);
  EXPECT_EQ(AllowedTokens(c, vocab.size()), (std::vector<int>{4}));  // "02"; "13" is no month, "29" neither
  for (const char* bad : {"email", "hostname"}) {
    auto r = CompileJsonSchema(std::string(R"({"type": "object", "properties": {"v": {"format": ")") + bad +
                               "\"}}}");
    ASSERT_FALSE(r.ok());
    EXPECT_NE(std::string(r.status().message()).find("fedge writes date, time, date-time, uuid and ipv4"),
              std::string::npos);
  }
  // A pattern whose DFA would have 2^30 states is refused within a bounded work.
  for (const char* hostile : {"^(a|b)*a(a|b){30}$", "((a{64}){64}){64}", "^(a|b|c)*a(a|b|c){12}$"}) {
    auto r = CompileJsonSchema(std::string(R"({"type": "object", "properties": {"v": {"pattern": ")") +
                               hostile + "\"}}}");
    EXPECT_FALSE(r.ok()) << hostile;
  }
  for (const char* bad : {"(?=a)", "a{1,99}", "\\p{L}", "a*?", "[a-\\d]", "(a", "é", "a^b"}) {
    auto r = CompileJsonSchema(std::string(R"({"type": "object", "properties": {"v": {"pattern": )") +
                               nlohmann::json(bad).dump() + "}}}");
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok())
      EXPECT_NE(std::string(r.status().message()).find("'pattern' at #/properties/v"), std::string::npos);
  }
}

// The DFAs against std::regex (ECMAScript) as the reference: random strings and
// mutations of matching ones, for each format's expression and a few patterns.
TEST(JsonSchemaTest, PatternsAgreeWithStdRegex) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      // (the schema's "format" or "pattern" member, the ECMAScript expression)
      {R"("format": "date-time")",
       "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)"
       "(\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"},
      {R"("format": "ipv4")",
       "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
       "$"},
      {R"("pattern": "^[A-Z]{2}-\\d{3,4}$")", "^[A-Z]{2}-\\d{3,4}$"},
      {R"("pattern": "(ab|a)+c?")", "(ab|a)+c?"},
      {R"("pattern": "^x[^0-9a]*y$")", "^x[^0-9a]*y$"},
  };
  const std::string alphabet = "0123456789-:.TZ+ABab cxy";
  std::mt19937 rng(9);
  int matched = 0, refused = 0;
  for (const auto& [member, ecma] : cases) {
    const auto schema = Compile(R"({"type": "object", "properties": {"v": {"type": "string", )" + member +
                                R"(}}, "required": ["v"]})");
    ASSERT_NE(schema, nullptr);
    const std::regex reference(ecma, std::regex::ECMAScript);
    std::vector<std::string> seen = {"2024-02-29T23:59:60.5+05:30", "10.0.0.255", "AB-1234", "abac", "xbby"};
    for (int trial = 0; trial < 3000; ++trial) {
      std::string v;
      if (trial % 2 == 0) {
        for (int i = 0, n = static_cast<int>(rng() % 12); i < n; ++i) v += alphabet[rng() % alphabet.size()];
      } else {
        v = RandomEdits(rng, seen[rng() % seen.size()], alphabet);
      }
      // A std::regex with no anchors searches, as JSON Schema's "pattern" does.
      const bool want = std::regex_search(v, reference);
      ASSERT_EQ(Feed(schema, R"({"v": ")" + v + R"("})").second, want) << member << " on '" << v << "'";
      if (want) seen.push_back(v);
      (want ? matched : refused)++;
    }
  }
  EXPECT_GT(matched, 1000);
  EXPECT_GT(refused, 1000);
}

TEST(JsonSchemaTest, AnyOfFollowsEveryReadingAndRecursionIsBounded) {
  // Two objects that agree until the value of "kind": both readings stay open.
  const auto s = Compile(kSchemas[2]);
  EXPECT_EQ(Feed(s, R"({"shape":{"kind":"circle","r":1.5}})"), std::make_pair(true, true));
  EXPECT_EQ(Feed(s, R"({"shape":{"kind":"circle2","w":2}})"), std::make_pair(true, true));
  EXPECT_FALSE(Feed(s, R"({"shape":{"kind":"circle","w":2}})").first);
  EXPECT_FALSE(Feed(s, R"({"shape":{"kind":"circle2","r":1.5}})").first);
  // A tree 40 levels deep is refused at the nesting limit; 10 is not.
  const auto tree =
      Compile(R"({"$defs": {"N": {"type": "object", "properties": {"k": {"$ref": "#/$defs/N"}}}},
      "$ref": "#/$defs/N"})");
  auto nested = [](int n) {
    std::string doc;
    for (int i = 0; i < n; ++i) doc += "{\"k\":";
    doc += "{}";
    for (int i = 0; i < n; ++i) doc += "}";
    return doc;
  };
  EXPECT_EQ(Feed(tree, nested(10)), std::make_pair(true, true));
  EXPECT_FALSE(Feed(tree, nested(40)).first);
  // A schema that is only a reference to itself accepts nothing and does not hang.
  const auto loop = Compile(R"({"type": "object", "properties": {"x": {"$ref": "#/$defs/A"}},
      "$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/A"}]}}})");
  EXPECT_FALSE(Feed(loop, R"({"x":1})").first);
  EXPECT_EQ(Feed(loop, "{}"), std::make_pair(true, true));
}

TEST(JsonSchemaTest, RefusesWhatItCannotHoldByNameAndPlace) {
  auto error = [](const std::string& schema) {
    auto s = CompileJsonSchema(schema);
    return s.ok() ? std::string("ok") : std::string(s.status().message());
  };
  auto code = [](const std::string& schema) { return CompileJsonSchema(schema).status().code(); };
  EXPECT_EQ(code(R"({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}})"),
            StatusCode::kUnimplemented);
  EXPECT_NE(error(R"({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}})")
                .find("'minimum' at #/properties/n is not supported"),
            std::string::npos);
  EXPECT_NE(error(R"({"type": "object", "properties": {"a/b": {"minimum": 1}}})").find("#/properties/a~1b"),
            std::string::npos);
  EXPECT_EQ(code(R"({"type": "object", "oneOf": [{}]})"), StatusCode::kUnimplemented);
  EXPECT_NE(error(R"({"type": "string"})").find("root must be an object"), std::string::npos);
  EXPECT_NE(error(R"({"anyOf": [{"type": "object"}, {"type": "null"}]})").find("root must be an object"),
            std::string::npos);
  EXPECT_NE(error(R"({"type": "object", "required": ["a"]})").find("'a', which 'properties' does not list"),
            std::string::npos);
  EXPECT_NE(
      error(R"({"type": "object", "properties": {"a": {"$ref": "#/$defs/B"}}})").find("names no schema"),
      std::string::npos);
  EXPECT_NE(error(R"({"type": "object", "properties": {"a": {"type": "integer", "enum": ["x"]}}})")
                .find("nothing fits"),
            std::string::npos);
  EXPECT_NE(
      error(R"({"type": "object", "properties": {"a": {"type": "array", "minItems": 3, "maxItems": 2}}})")
          .find("nothing fits"),
      std::string::npos);
  EXPECT_NE(error(R"({"type": "object", "properties": {"a": {"type": "integr"}}})").find("'integr'"),
            std::string::npos);
  EXPECT_NE(error(R"({"type": "object", "properties": {"a": false}})").find("accepts nothing"),
            std::string::npos);
  EXPECT_NE(error("{\"type\": \"object\"").find("not valid JSON"), std::string::npos);
  // Size: a schema of 5,000 properties is refused before it is built.
  std::string big = R"({"type": "object", "properties": {)";
  for (int i = 0; i < 5000; ++i)
    big += (i ? ",\"p" : "\"p") + std::to_string(i) + "\": {\"type\": \"integer\"}";
  big += "}}";
  EXPECT_NE(error(big).find("more than"), std::string::npos);
  // A chain of 2,000 $defs, each referring to the next, is refused by depth, not
  // followed to the end by recursion; 40 are compiled.
  auto chain = [](int n) {
    std::string defs;
    for (int i = 0; i < n; ++i)
      defs +=
          (i ? ", \"d" : "\"d") + std::to_string(i) + "\": {\"type\": \"object\", \"properties\": {\"x\": " +
          (i + 1 < n ? "{\"$ref\": \"#/$defs/d" + std::to_string(i + 1) + "\"}" : std::string("{}")) + "}}";
    return R"({"$defs": {)" + defs + R"(}, "$ref": "#/$defs/d0"})";
  };
  EXPECT_NE(error(chain(2000)).find("nests deeper than 128"), std::string::npos);
  EXPECT_EQ(error(chain(40)), "ok");
  // Annotations are fine.
  EXPECT_EQ(error(R"({"type": "object", "title": "T", "description": "d", "$schema": "x",
      "properties": {"a": {"type": "integer", "title": "A", "default": 1, "examples": [1]}}})"),
            "ok");
}

// tool_choice "required" / a named function: a call to one of the tools, its
// arguments held to that tool's parameters, between the format's wrapper bytes.
TEST(JsonSchemaTest, ToolCallSchemasHoldACallToOneOfTheTools) {
  const std::vector<ToolSchema> tools = {
      {"get_time",
       R"({"type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"]})", true},
      {"add", R"({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
          "required": ["a", "b"]})",
       false},
      {"ping", "", false},                                                            // no parameters
      {"find", R"({"type": "object", "properties": {"q": {"minimum": 1}}})", false},  // not compilable
  };
  auto hermes = CompileToolCallSchema(tools, "arguments", "<tool_call>\n", "\n</tool_call>");
  ASSERT_TRUE(hermes.ok()) << hermes.status().message();
  for (const std::string call :
       {R"({"name": "get_time", "arguments": {"tz": "CET"}})",
        R"({"name": "add", "arguments": {"a": 1, "b": -2}})", R"({"name": "ping", "arguments": {}})",
        R"({"name": "find", "arguments": {"q": [1], "z": null}})"}) {
    const std::string text = "<tool_call>\n" + call + "\n</tool_call>";
    JsonSchemaPrefix p(*hermes);
    for (size_t i = 0; i < text.size(); ++i) {
      ASSERT_TRUE(p.Feed(static_cast<unsigned char>(text[i]))) << text << " at " << i;
      ASSERT_EQ(p.Complete(), i + 1 == text.size()) << text << " at " << i;
    }
  }
  for (const std::string text : {
           std::string(R"({"name": "ping", "arguments": {}})"),                  // no wrapper
           std::string("<tool_call>\n{\"name\": \"pong\", \"arguments\": {}}"),  // no such tool
           std::string("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"PST\"}}"),  // schema
           std::string("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}"),  // required b
           std::string("<tool_call>\n{\"arguments\": {}, \"name\": \"ping\"}"),         // name first
           std::string("<tool_call>\n{\"name\": \"ping\", \"arguments\": []}"),         // an object
           std::string("<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call> "),
       })
    EXPECT_FALSE(Feed(*hermes, text).second) << text;
  // Llama 3's JSON: "parameters", no wrapper.
  auto llama = CompileToolCallSchema({tools[0]}, "parameters", "", "");
  ASSERT_TRUE(llama.ok());
  EXPECT_EQ(Feed(*llama, R"({"name": "get_time", "parameters": {"tz": "UTC"}})"), std::make_pair(true, true));
  EXPECT_FALSE(Feed(*llama, R"({"name": "add")").first);  // not the named tool
  // A strict tool whose schema fedge cannot hold the arguments to is refused by name.
  auto strict = CompileToolCallSchema({{"find", tools[3].parameters, true}}, "arguments", "", "");
  ASSERT_FALSE(strict.ok());
  EXPECT_EQ(strict.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(std::string(strict.status().message()).find("tool 'find' (strict): 'minimum'"), std::string::npos)
      << strict.status().message();
}

// The mask's shortcuts (first bytes judged once, pairs of first bytes judged once
// where few first bytes fit) leave exactly the tokens that feeding each one whole
// leaves, in every state of random replies, for JSON mode and for a schema.
TEST(JsonSchemaTest, TheMaskEqualsFeedingEveryTokenWhole) {
  std::mt19937 rng(3);
  // Tokens of 1 to 4 bytes from JSON's structural bytes, letters, digits, spaces,
  // a newline and UTF-8 pieces; the last id is an end id with no text.
  const std::vector<std::string> pieces = {"{", "}", "[", "]", "\"", ":", ",", " ",  "\n",   "a",    "e",
                                           "1", "0", "-", ".", "t",  "r", "u", "\\", "\xc3", "\xa9", "n"};
  std::vector<std::string> vocab;
  for (int i = 0; i < 1200; ++i) {
    std::string t;
    for (int k = 0, n = 1 + static_cast<int>(rng() % 4); k < n; ++k) t += pieces[rng() % pieces.size()];
    vocab.push_back(t);
  }
  vocab.push_back("");
  const int64_t eos = static_cast<int64_t>(vocab.size()) - 1;
  const auto schema = Compile(kSchemas[0]);
  const nlohmann::json s = nlohmann::json::parse(kSchemas[0]);
  int checked = 0, string_states = 0;
  for (int trial = 0; trial < 16; ++trial) {
    const Ordered v = Generate(rng, s, s, 0);
    const std::string doc = v.dump(trial % 2 == 0 ? -1 : 2, ' ', false);
    for (size_t cut = 0; cut <= doc.size(); cut += 1 + rng() % 5) {
      const std::string prefix = doc.substr(0, cut);
      std::vector<std::string> with_prefix = vocab;
      with_prefix.push_back(prefix);  // the state: fed as one token
      for (const bool use_schema : {false, true}) {
        JsonConstraint c =
            use_schema ? JsonConstraint(&with_prefix, {eos}, schema) : JsonConstraint(&with_prefix, {eos});
        c.Accept(static_cast<int32_t>(vocab.size()));
        std::vector<int> want;
        for (size_t id = 0; id < vocab.size(); ++id) {
          bool ok;
          if (static_cast<int64_t>(id) == eos) {
            ok = c.Complete();
          } else if (use_schema) {
            JsonSchemaPrefix p(schema);
            ok = !c.Complete() && p.FeedAll(prefix + vocab[id]);
          } else {
            JsonPrefix p;
            ok = !c.Complete() && p.FeedAll(prefix + vocab[id]);
          }
          if (ok) want.push_back(static_cast<int>(id));
        }
        ASSERT_EQ(AllowedTokens(c, vocab.size()), want) << (use_schema ? "schema " : "json mode ") << prefix;
        ++checked;
        if (want.size() > vocab.size() / 2) ++string_states;
      }
    }
  }
  EXPECT_GT(checked, 200);
  EXPECT_GT(string_states, 10);  // states where most tokens fit (inside strings) were among them
}

TEST(JsonSchemaTest, ConstraintMasksTokensTheSchemaRefuses) {
  const std::vector<std::string> vocab = {"{",  "}",  "\"ok\"",   ":",  "true", "false", "1",
                                          "\"", "ok", "{\"ok\":", "tr", " ",    "",      "ue"};
  const int64_t eos = 12;
  JsonConstraint c(&vocab, {eos}, Compile(R"({"type": "object", "properties": {"ok": {"type": "boolean"}},
      "required": ["ok"]})"));
  auto allowed = [&] { return AllowedTokens(c, vocab.size()); };
  EXPECT_EQ(allowed(), (std::vector<int>{0, 9, 11}));  // '{', '{"ok":', ' '
  c.Accept(0);
  EXPECT_EQ(allowed(), (std::vector<int>{2, 7, 11}));  // the one key, whole or begun; not '}' (required)
  c.Accept(2);
  c.Accept(3);
  EXPECT_EQ(allowed(), (std::vector<int>{4, 5, 10, 11}));  // a boolean, not 1
  c.Accept(10);                                            // tr
  EXPECT_EQ(allowed(), (std::vector<int>{13}));            // ue
  c.Accept(13);
  EXPECT_EQ(allowed(), (std::vector<int>{1, 11}));
  EXPECT_FALSE(c.Complete());
  c.Accept(1);
  EXPECT_TRUE(c.Complete());
  EXPECT_EQ(allowed(), (std::vector<int>{12}));  // closed: only the end
}

}  // namespace
}  // namespace fedge::agent::llm
