#include "fedge/agent/llm/json_schema.h"

#include <algorithm>
#include <array>
#include <bitset>
#include <limits>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "fedge/agent/llm/json_grammar.h"

namespace fedge::agent::llm {
namespace {

using Json = nlohmann::json;
using Frame = JsonSchemaPrefix::Frame;
using Alternative = JsonSchemaPrefix::Alternative;

constexpr uint32_t kUnbounded = std::numeric_limits<uint32_t>::max();
constexpr uint16_t kCountMax = std::numeric_limits<uint16_t>::max();  // counts saturate here

enum class Kind : uint8_t { kAnyOf, kObject, kArray, kString, kNumber, kInteger, kLiterals };

struct Property {
  std::string key;  // as json.dumps writes it, quotes included
  uint32_t node = 0;
  bool required = false;
};

// The regular expression's DFA over bytes: next[state * 128 + byte] (kDead: none).
struct AsciiDfa {
  static constexpr uint16_t kDead = 0xFFFF;
  std::vector<uint16_t> next;
  std::vector<bool> accept;
};

struct Node {
  Kind kind = Kind::kAnyOf;
  std::vector<uint32_t> options;     // kAnyOf (one option: an alias, as $ref makes)
  std::vector<Property> properties;  // kObject, in the schema's order
  // kObject: next_required[i] is the first required property at or after i
  // (properties.size() if none); one entry per property and one past the end.
  std::vector<uint32_t> next_required;
  int64_t additional = -1;  // kObject listing no properties: the values' node; -1 takes no key
  uint32_t items = 0;       // kArray
  uint32_t min_items = 0, max_items = kUnbounded;
  uint32_t min_length = 0, max_length = kUnbounded;  // kString, in characters
  int32_t dfa = -1;                   // kString with a format or pattern: JsonSchema::dfas[dfa] (no escapes)
  std::vector<std::string> literals;  // kLiterals: JSON texts, sorted
};

bool IsSpace(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(unsigned char c) { return c >= '0' && c <= '9'; }
bool IsHex(unsigned char c) { return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

}  // namespace

class JsonSchema {
 public:
  JsonSchema() {
    Node any_string;
    any_string.kind = Kind::kString;
    nodes.push_back(std::move(any_string));
  }
  std::vector<Node> nodes;
  uint32_t root = 0;
  uint32_t any_string = 0;     // node 0: keys of objects that list no properties
  int64_t any = -1;            // the node of any JSON value, once built
  std::vector<AsciiDfa> dfas;  // formats and patterns
  std::string before, after;   // bytes the value comes between
};

namespace {

// --- ASCII regular expressions, for "format" and "pattern" -------------------------
//
// A subset of ECMA-262 regular expressions over printable ASCII, compiled to a DFA:
// literals, '.', classes [a-z0-9_] and [^...], \d \w \s (\s is the space alone), escapes
// of metacharacters, groups (...) and (?:...), '|', and the quantifiers ? * + {n}
// {n,} {n,m}. A string held to one is written without escapes, so '"', '\' and
// control characters are never in it.

struct Regex {
  enum Kind { kSet, kCat, kAlt, kRep } kind = kSet;
  std::bitset<128> set;
  std::vector<Regex> parts;
  int min = 0, max = -1;  // kRep; max -1: no bound
};

// Bytes a string without escapes may hold: printable ASCII but '"' and '\'.
std::bitset<128> Printable() {
  std::bitset<128> b;
  for (int c = 0x20; c < 0x7f; ++c) b.set(static_cast<size_t>(c));
  b.reset('"');
  b.reset('\\');
  return b;
}

class RegexParser {
 public:
  explicit RegexParser(std::string_view text) : text_(text) {}

  StatusOr<Regex> Parse() {
    FEDGE_ASSIGN_OR_RETURN(Regex r, Alternation(0));
    if (at_ != text_.size()) return Error("unbalanced ')'");
    return r;
  }

 private:
  Status Error(const std::string& what) const {
    return UnimplementedError("the regular expression '" + std::string(text_.substr(0, 80)) + "' at byte " +
                              std::to_string(at_) + ": " + what);
  }
  bool More() const { return at_ < text_.size(); }

  StatusOr<Regex> Alternation(int depth) {
    if (depth > 32) return Error("groups nest too deep");
    Regex alt;
    alt.kind = Regex::kAlt;
    for (;;) {
      Regex cat;
      cat.kind = Regex::kCat;
      while (More() && text_[at_] != '|' && text_[at_] != ')') {
        FEDGE_ASSIGN_OR_RETURN(Regex atom, Atom(depth));
        FEDGE_ASSIGN_OR_RETURN(Regex rep, Quantified(std::move(atom)));
        cat.parts.push_back(std::move(rep));
      }
      alt.parts.push_back(std::move(cat));
      if (!More() || text_[at_] != '|') break;
      ++at_;
    }
    return alt;
  }

  StatusOr<Regex> Quantified(Regex atom) {
    if (!More()) return atom;
    int min = -2, max = -1;
    const char q = text_[at_];
    if (q == '?') {
      min = 0, max = 1;
    } else if (q == '*') {
      min = 0;
    } else if (q == '+') {
      min = 1;
    } else if (q == '{') {
      size_t end = text_.find('}', at_);
      if (end == std::string_view::npos) return Error("'{' without '}'");
      const std::string body(text_.substr(at_ + 1, end - at_ - 1));
      const size_t comma = body.find(',');
      auto number = [](const std::string& digits) {
        return !digits.empty() && digits.size() <= 4 &&
                       std::all_of(digits.begin(), digits.end(), [](char d) { return d >= '0' && d <= '9'; })
                   ? std::stoi(digits)
                   : -1;
      };
      min = number(body.substr(0, comma));
      max = comma == std::string::npos ? min : comma + 1 == body.size() ? -1 : number(body.substr(comma + 1));
      if (min < 0 || (comma != std::string::npos && comma + 1 != body.size() && max < 0) ||
          (max >= 0 && max < min) || min > 64 || max > 64)
        return Error("a repetition {n,m} with 0 <= n <= m <= 64");
      at_ = end;
    } else {
      return atom;
    }
    ++at_;
    if (More() && (text_[at_] == '?' || text_[at_] == '+')) return Error("lazy or possessive quantifiers");
    Regex rep;
    rep.kind = Regex::kRep;
    rep.min = min;
    rep.max = max;
    rep.parts.push_back(std::move(atom));
    return rep;
  }

  // An escape after '\' (at_ on the escaped byte), as a set.
  StatusOr<std::bitset<128>> Escape() {
    if (!More()) return Error("a trailing '\\'");
    const char e = text_[at_++];
    std::bitset<128> b;
    if (e == 'd' || e == 'w') {
      for (char c = '0'; c <= '9'; ++c) b.set(static_cast<size_t>(c));
      if (e == 'w') {
        for (char c = 'a'; c <= 'z'; ++c) b.set(static_cast<size_t>(c));
        for (char c = 'A'; c <= 'Z'; ++c) b.set(static_cast<size_t>(c));
        b.set('_');
      }
    } else if (e == 's') {
      b.set(' ');
    } else if (std::string_view(".^$|?*+()[]{}/-\\").find(e) != std::string_view::npos) {
      b.set(static_cast<size_t>(static_cast<unsigned char>(e)));
    } else {
      return Error(std::string("the escape '\\") + e + "'");
    }
    return b;
  }

  StatusOr<Regex> Atom(int depth) {
    const char c = text_[at_++];
    Regex atom;
    if (c == '(') {
      if (text_.substr(at_, 2) == "?:")
        at_ += 2;
      else if (More() && text_[at_] == '?')
        return Error("lookaround and named groups");
      FEDGE_ASSIGN_OR_RETURN(atom, Alternation(depth + 1));
      if (!More() || text_[at_] != ')') return Error("'(' without ')'");
      ++at_;
      return atom;
    }
    if (c == '[') {
      const bool negate = More() && text_[at_] == '^';
      if (negate) ++at_;
      std::bitset<128> set;
      bool first = true;
      while (More() && (text_[at_] != ']' || first)) {
        first = false;
        std::bitset<128> item;
        int lo = static_cast<unsigned char>(text_[at_++]);
        if (lo == '\\') {
          FEDGE_ASSIGN_OR_RETURN(item, Escape());
          set |= item;
          continue;
        }
        int hi = lo;
        if (at_ + 1 < text_.size() && text_[at_] == '-' && text_[at_ + 1] != ']') {
          hi = static_cast<unsigned char>(text_[at_ + 1]);
          at_ += 2;
          if (hi == '\\') return Error("an escape closing a range");
        }
        if (lo > hi || hi > 127) return Error("a range outside ASCII or backwards");
        for (int x = lo; x <= hi; ++x) set.set(static_cast<size_t>(x));
      }
      if (!More()) return Error("'[' without ']'");
      ++at_;
      atom.set = negate ? ~set : set;
    } else if (c == '\\') {
      FEDGE_ASSIGN_OR_RETURN(atom.set, Escape());
    } else if (c == '.') {
      atom.set = Printable();
    } else if (std::string_view("^$)|?*+{}").find(c) != std::string_view::npos) {
      return Error(std::string("'") + c + "' here (anchors only at the two ends)");
    } else if (static_cast<unsigned char>(c) >= 0x80) {
      return Error("non-ASCII characters");
    } else {
      atom.set.set(static_cast<size_t>(c));
    }
    atom.set &= Printable();
    return atom;
  }

  std::string_view text_;
  size_t at_ = 0;
};

class NfaBuilder {
 public:
  int New() {
    edges_.emplace_back();
    eps_.emplace_back();
    return static_cast<int>(edges_.size() - 1);
  }
  // The state reached from `from` by `r`; false past the state budget.
  bool Build(const Regex& r, int from, int* to) {
    if (edges_.size() > 4000) return false;
    switch (r.kind) {
      case Regex::kSet:
        *to = New();
        edges_[static_cast<size_t>(from)].push_back({r.set, *to});
        return true;
      case Regex::kCat: {
        int at = from;
        for (const Regex& p : r.parts)
          if (!Build(p, at, &at)) return false;
        *to = at;
        return true;
      }
      case Regex::kAlt: {
        const int end = New();
        for (const Regex& p : r.parts) {
          const int start = New();
          eps_[static_cast<size_t>(from)].push_back(start);
          int out;
          if (!Build(p, start, &out)) return false;
          eps_[static_cast<size_t>(out)].push_back(end);
        }
        *to = end;
        return true;
      }
      case Regex::kRep: {
        int at = from;
        for (int i = 0; i < r.min; ++i)
          if (!Build(r.parts[0], at, &at)) return false;
        const int end = New();
        eps_[static_cast<size_t>(at)].push_back(end);
        if (r.max < 0) {
          int out;
          if (!Build(r.parts[0], end, &out)) return false;
          eps_[static_cast<size_t>(out)].push_back(end);
        } else {
          for (int i = r.min; i < r.max; ++i) {
            int out;
            if (!Build(r.parts[0], at, &out)) return false;
            eps_[static_cast<size_t>(out)].push_back(end);
            at = out;
          }
        }
        *to = end;
        return true;
      }
    }
    return false;
  }

  // Subset construction from `start` with `accept` the final state. The work (NFA
  // states visited) is bounded, so a hostile pattern costs a bounded time to refuse.
  StatusOr<AsciiDfa> Determinize(int start, int accept) const {
    constexpr size_t kMaxWork = 4'000'000;
    size_t work = 0;
    std::vector<char> mark(edges_.size(), 0);
    auto closure = [&](std::vector<int> set) {
      for (int s : set) mark[static_cast<size_t>(s)] = 1;
      for (size_t i = 0; i < set.size(); ++i) {
        for (int e : eps_[static_cast<size_t>(set[i])]) {
          if (!mark[static_cast<size_t>(e)]) {
            mark[static_cast<size_t>(e)] = 1;
            set.push_back(e);
          }
        }
      }
      for (int s : set) mark[static_cast<size_t>(s)] = 0;
      work += set.size();
      std::sort(set.begin(), set.end());
      return set;
    };
    AsciiDfa dfa;
    std::map<std::vector<int>, uint16_t> ids;
    std::vector<std::vector<int>> sets = {closure({start})};
    ids[sets[0]] = 0;
    for (size_t i = 0; i < sets.size(); ++i) {
      dfa.accept.push_back(std::binary_search(sets[i].begin(), sets[i].end(), accept));
      dfa.next.resize((i + 1) * 128, AsciiDfa::kDead);
      for (int c = 0; c < 128; ++c) {
        std::vector<int> moved;
        for (int s : sets[i])
          for (const auto& [set, to] : edges_[static_cast<size_t>(s)])
            if (set.test(static_cast<size_t>(c)) && !mark[static_cast<size_t>(to)]) {
              mark[static_cast<size_t>(to)] = 1;
              moved.push_back(to);
            }
        for (int m : moved) mark[static_cast<size_t>(m)] = 0;
        work += sets[i].size();
        if (work > kMaxWork) return UnimplementedError("the regular expression is too complex to compile");
        if (moved.empty()) continue;
        std::vector<int> target = closure(moved);
        auto it = ids.find(target);
        if (it == ids.end()) {
          if (sets.size() >= 4096)
            return UnimplementedError("the regular expression needs more than 4,096 states");
          it = ids.emplace(target, static_cast<uint16_t>(sets.size())).first;
          sets.push_back(target);
        }
        dfa.next[i * 128 + static_cast<size_t>(c)] = it->second;
      }
    }
    return dfa;
  }

 private:
  std::vector<std::vector<std::pair<std::bitset<128>, int>>> edges_;
  std::vector<std::vector<int>> eps_;
};

// `pattern` (JSON Schema: found anywhere in the string unless anchored with ^ and $).
StatusOr<AsciiDfa> CompileRegex(std::string pattern) {
  const bool head = !pattern.empty() && pattern.front() == '^';
  const bool tail = pattern.size() > (head ? 1u : 0u) && pattern.back() == '$' &&
                    (pattern.size() < 2 || pattern[pattern.size() - 2] != '\\');
  std::string body = pattern.substr(head ? 1 : 0, pattern.size() - (head ? 1 : 0) - (tail ? 1 : 0));
  body = (head ? "" : ".*") + std::string("(?:") + body + ")" + (tail ? "" : ".*");
  FEDGE_ASSIGN_OR_RETURN(Regex r, RegexParser(body).Parse());
  NfaBuilder nfa;
  const int start = nfa.New();
  int end;
  if (!nfa.Build(r, start, &end))
    return UnimplementedError("the regular expression '" + pattern + "' is too large");
  return nfa.Determinize(start, end);
}

// The formats fedge writes (RFC 3339's, as OpenAI's structured outputs list them).
const char* FormatRegex(const std::string& format) {
  static const std::map<std::string, const char*> k = {
      {"date", "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"},
      {"time",
       "^([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
       "$"},
      {"date-time",
       "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)"
       "(\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"},
      {"uuid", "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"},
      {"ipv4",
       "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
       "$"},
  };
  auto it = k.find(format);
  return it == k.end() ? nullptr : it->second;
}

const std::set<std::string>& Annotations() {
  static const std::set<std::string> k = {"title",    "description", "default",  "examples",
                                          "$schema",  "$id",         "$comment", "deprecated",
                                          "readOnly", "writeOnly",   "$defs",    "definitions"};
  return k;
}

const std::set<std::string>& Constraints() {
  static const std::set<std::string> k = {"type",      "properties", "required", "additionalProperties",
                                          "items",     "minItems",   "maxItems", "minLength",
                                          "maxLength", "enum",       "const",    "anyOf",
                                          "allOf",     "$ref",       "format",   "pattern"};
  return k;
}

// A key of a JSON pointer (RFC 6901): '~' as "~0", '/' as "~1".
std::string PointerKey(const std::string& key) {
  std::string out;
  for (char c : key) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Dumps(const Json& value) { return value.dump(-1, ' ', false, Json::error_handler_t::replace); }

class Compiler {
 public:
  Compiler(const Json& doc, const JsonSchemaLimits& limits, JsonSchema* out)
      : doc_(doc), limits_(limits), out_(out) {}

  // Compiles the document. Its node is an alias, made first so that "#" can be
  // referred to before it is built.
  StatusOr<uint32_t> CompileDocument() {
    FEDGE_ASSIGN_OR_RETURN(root_alias_, Add(Node{}));
    FEDGE_ASSIGN_OR_RETURN(uint32_t root, Compile(doc_, "#"));
    out_->nodes[root_alias_].options = {root};
    return root_alias_;
  }

  StatusOr<uint32_t> Add(Node node) {
    if (out_->nodes.size() >= limits_.max_nodes)
      return InvalidArgumentError("the schema is too large: more than " + std::to_string(limits_.max_nodes) +
                                  " types, properties and enums");
    out_->nodes.push_back(std::move(node));
    return static_cast<uint32_t>(out_->nodes.size() - 1);
  }

 private:
  // Any JSON value (true, or a schema with no constraint), built once.
  StatusOr<uint32_t> Any() {
    if (out_->any >= 0) return static_cast<uint32_t>(out_->any);
    FEDGE_ASSIGN_OR_RETURN(uint32_t any, Add(Node{}));
    out_->any = any;
    Node object;
    object.kind = Kind::kObject;
    object.additional = any;
    object.next_required = {0};
    Node array;
    array.kind = Kind::kArray;
    array.items = any;
    Node number;
    number.kind = Kind::kNumber;
    Node literals;
    literals.kind = Kind::kLiterals;
    literals.literals = {"false", "null", "true"};
    std::vector<uint32_t> options = {out_->any_string};
    for (Node* n : {&object, &array, &number, &literals}) {
      FEDGE_ASSIGN_OR_RETURN(uint32_t id, Add(std::move(*n)));
      options.push_back(id);
    }
    out_->nodes[any].options = std::move(options);
    return any;
  }

  Status Count(const Json& s, const char* key, const std::string& where, uint32_t* out) {
    if (!s.contains(key)) return OkStatus();
    const Json& v = s[key];
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
      return InvalidArgumentError(std::string("'") + key + "' at " + where +
                                  " must be a non-negative integer");
    *out = static_cast<uint32_t>(std::min<uint64_t>(v.get<uint64_t>(), kUnbounded));
    return OkStatus();
  }

  // A minimum and maximum count (minLength / maxLength, minItems / maxItems): the
  // minimum within what the automaton counts, a maximum past it unbounded.
  Status Bounds(const Json& s, const char* min_key, const char* max_key, const std::string& where,
                uint32_t* min, uint32_t* max) {
    FEDGE_RETURN_IF_ERROR(Count(s, min_key, where, min));
    FEDGE_RETURN_IF_ERROR(Count(s, max_key, where, max));
    if (*min > *max)
      return InvalidArgumentError(std::string("'") + min_key + "' at " + where + " is above '" + max_key +
                                  "': nothing fits");
    if (*min > kCountMax - 1u)
      return InvalidArgumentError(std::string("'") + min_key + "' at " + where + " is above " +
                                  std::to_string(kCountMax - 1));
    if (*max >= kCountMax) *max = kUnbounded;
    return OkStatus();
  }

  // A string's "format" or "pattern", as a DFA its bytes follow.
  Status Shape(const Json& s, const std::string& where, Node* node) {
    if (s.contains("format") && s.contains("pattern"))
      return UnimplementedError("'format' and 'pattern' together at " + where +
                                " are not supported: use one");
    std::string regex;
    if (s.contains("format")) {
      if (!s["format"].is_string()) return InvalidArgumentError("'format' at " + where + " must be a string");
      const char* r = FormatRegex(s["format"].get<std::string>());
      if (r == nullptr)
        return UnimplementedError("'format' '" + s["format"].get<std::string>() + "' at " + where +
                                  " is not supported: fedge writes date, time, date-time, uuid and ipv4");
      regex = r;
    } else if (s.contains("pattern")) {
      if (!s["pattern"].is_string())
        return InvalidArgumentError("'pattern' at " + where + " must be a string");
      regex = s["pattern"].get<std::string>();
    } else {
      return OkStatus();
    }
    auto dfa = CompileRegex(regex);
    if (!dfa.ok())
      return Status(dfa.status().code(), std::string(s.contains("format") ? "'format'" : "'pattern'") +
                                             " at " + where + ": " + dfa.status().message());
    if (out_->dfas.size() >= 64)
      return InvalidArgumentError("the schema has more than 64 formats and patterns");
    node->dfa = static_cast<int32_t>(out_->dfas.size());
    out_->dfas.push_back(std::move(dfa).value());
    return OkStatus();
  }

  StatusOr<uint32_t> Ref(const Json& ref, const std::string& where) {
    if (!ref.is_string()) return InvalidArgumentError("'$ref' at " + where + " must be a string");
    const auto name = ref.get<std::string>();
    if (name == "#") return root_alias_;
    if (auto it = refs_.find(name); it != refs_.end()) return it->second;
    const Json* target = nullptr;
    for (const char* defs : {"#/$defs/", "#/definitions/"}) {
      const std::string prefix = defs;
      if (name.compare(0, prefix.size(), prefix) != 0) continue;
      std::string key;
      for (size_t i = prefix.size(); i < name.size(); ++i) {  // RFC 6901 unescaping
        if (name[i] == '~' && i + 1 < name.size() && (name[i + 1] == '0' || name[i + 1] == '1')) {
          key += name[++i] == '0' ? '~' : '/';
        } else if (name[i] == '/') {
          return UnimplementedError("'$ref' " + name + " at " + where +
                                    " is not supported: refer to a schema in '$defs' (#/$defs/Name)");
        } else {
          key += name[i];
        }
      }
      const std::string section = prefix.substr(2, prefix.size() - 3);
      if (doc_.is_object() && doc_.contains(section) && doc_[section].is_object() &&
          doc_[section].contains(key))
        target = &doc_[section][key];
    }
    if (target == nullptr)
      return InvalidArgumentError("'$ref' " + name + " at " + where +
                                  " names no schema: fedge resolves \"#\", \"#/$defs/Name\" and "
                                  "\"#/definitions/Name\" within the schema");
    FEDGE_ASSIGN_OR_RETURN(uint32_t alias, Add(Node{}));
    refs_[name] = alias;  // before compiling it: the schema may refer to itself
    FEDGE_ASSIGN_OR_RETURN(uint32_t id, Compile(*target, name));
    out_->nodes[alias].options = {id};
    return alias;
  }

  // Schemas nest at most this deep, counting each $ref followed (a chain of $defs
  // is as deep as its length): the compiler recurses.
  static constexpr int kMaxDepth = 128;

  StatusOr<uint32_t> Compile(const Json& s, const std::string& where) {
    if (depth_ >= kMaxDepth)
      return InvalidArgumentError("the schema nests deeper than " + std::to_string(kMaxDepth) +
                                  " levels at " + where + " (each $ref followed counts)");
    ++depth_;
    StatusOr<uint32_t> node = CompileAt(s, where);
    --depth_;
    return node;
  }

  StatusOr<uint32_t> CompileAt(const Json& s, const std::string& where) {
    if (s.is_boolean()) {
      if (s.get<bool>()) return Any();
      return InvalidArgumentError("the schema at " + where + " is false: it accepts nothing");
    }
    if (!s.is_object()) return InvalidArgumentError("the schema at " + where + " must be an object");
    std::vector<std::string> constraints;
    for (const auto& [key, value] : s.items()) {
      if (Constraints().count(key) != 0) {
        constraints.push_back(key);
      } else if (Annotations().count(key) == 0) {
        return UnimplementedError(
            "'" + key + "' at " + where +
            " is not supported: fedge holds replies to type, properties, required, additionalProperties, "
            "items, minItems, maxItems, minLength, maxLength, enum, const, anyOf and $ref");
      }
    }
    auto only = [&](const char* keyword) -> Status {
      for (const std::string& k : constraints) {
        if (k != keyword)
          return UnimplementedError("'" + k + "' beside '" + keyword + "' at " + where +
                                    " is not supported: put the constraints in the schema it names");
      }
      return OkStatus();
    };
    if (s.contains("$ref")) {
      FEDGE_RETURN_IF_ERROR(only("$ref"));
      return Ref(s["$ref"], where);
    }
    if (s.contains("allOf")) {
      FEDGE_RETURN_IF_ERROR(only("allOf"));
      if (!s["allOf"].is_array() || s["allOf"].size() != 1)
        return UnimplementedError("'allOf' at " + where + " is supported with one schema only");
      return Compile(s["allOf"][0], where + "/allOf/0");
    }
    if (s.contains("anyOf")) {
      FEDGE_RETURN_IF_ERROR(only("anyOf"));
      const Json& list = s["anyOf"];
      if (!list.is_array() || list.empty())
        return InvalidArgumentError("'anyOf' at " + where + " must be a non-empty array of schemas");
      Node node;
      for (size_t i = 0; i < list.size(); ++i) {
        FEDGE_ASSIGN_OR_RETURN(uint32_t id, Compile(list[i], where + "/anyOf/" + std::to_string(i)));
        node.options.push_back(id);
      }
      return Add(std::move(node));
    }
    std::vector<std::string> types;
    if (s.contains("type")) {
      const Json& t = s["type"];
      if (t.is_string()) {
        types.push_back(t.get<std::string>());
      } else if (t.is_array() && !t.empty() &&
                 std::all_of(t.begin(), t.end(), [](const Json& x) { return x.is_string(); })) {
        for (const Json& x : t) types.push_back(x.get<std::string>());
      } else {
        return InvalidArgumentError("'type' at " + where +
                                    " must be a type name or a non-empty array of them");
      }
      for (const std::string& t : types) {
        static const std::set<std::string> kTypes = {"object",  "array",   "string", "number",
                                                     "integer", "boolean", "null"};
        if (kTypes.count(t) == 0)
          return InvalidArgumentError("'type' at " + where + " names '" + t +
                                      "', which is not a JSON Schema type (object, array, string, number, "
                                      "integer, boolean, null)");
      }
    }
    if (s.contains("enum") || s.contains("const")) return Literals(s, types, where);
    if (types.empty()) {
      for (const char* k : {"properties", "required", "additionalProperties"})
        if (s.contains(k)) types = {"object"};
      for (const char* k : {"items", "minItems", "maxItems"})
        if (types.empty() && s.contains(k)) types = {"array"};
      for (const char* k : {"minLength", "maxLength", "format", "pattern"})
        if (types.empty() && s.contains(k)) types = {"string"};
      if (types.empty()) return Any();
    }
    if (types.size() == 1) return Typed(s, types[0], where);
    Node node;
    for (const std::string& t : types) {
      FEDGE_ASSIGN_OR_RETURN(uint32_t id, Typed(s, t, where));
      node.options.push_back(id);
    }
    return Add(std::move(node));
  }

  StatusOr<uint32_t> Literals(const Json& s, const std::vector<std::string>& types,
                              const std::string& where) {
    std::vector<Json> values;
    if (s.contains("enum")) {
      if (!s["enum"].is_array() || s["enum"].empty())
        return InvalidArgumentError("'enum' at " + where + " must be a non-empty array");
      values.assign(s["enum"].begin(), s["enum"].end());
    }
    if (s.contains("const")) {
      if (!values.empty() && std::find(values.begin(), values.end(), s["const"]) == values.end())
        return InvalidArgumentError("'const' at " + where + " is not one of its 'enum' values: nothing fits");
      values = {s["const"]};
    }
    auto of_type = [&](const Json& v) {
      if (types.empty()) return true;
      for (const std::string& t : types) {
        if ((t == "object" && v.is_object()) || (t == "array" && v.is_array()) ||
            (t == "string" && v.is_string()) || (t == "number" && v.is_number()) ||
            (t == "integer" && (v.is_number_integer() || v.is_number_unsigned())) ||
            (t == "boolean" && v.is_boolean()) || (t == "null" && v.is_null()))
          return true;
      }
      return false;
    };
    Node node;
    node.kind = Kind::kLiterals;
    for (const Json& v : values) {
      if (of_type(v)) node.literals.push_back(Dumps(v));
    }
    if (node.literals.empty())
      return InvalidArgumentError("no 'enum' or 'const' value at " + where +
                                  " is of its 'type': nothing fits");
    std::sort(node.literals.begin(), node.literals.end());
    node.literals.erase(std::unique(node.literals.begin(), node.literals.end()), node.literals.end());
    if (node.literals.size() > limits_.max_enum_values)
      return InvalidArgumentError("'enum' at " + where + " has more than " +
                                  std::to_string(limits_.max_enum_values) + " values");
    return Add(std::move(node));
  }

  StatusOr<uint32_t> Typed(const Json& s, const std::string& type, const std::string& where) {
    Node node;
    if (type == "boolean" || type == "null") {
      node.kind = Kind::kLiterals;
      node.literals =
          type == "null" ? std::vector<std::string>{"null"} : std::vector<std::string>{"false", "true"};
    } else if (type == "number" || type == "integer") {
      node.kind = type == "number" ? Kind::kNumber : Kind::kInteger;
    } else if (type == "string") {
      node.kind = Kind::kString;
      FEDGE_RETURN_IF_ERROR(Bounds(s, "minLength", "maxLength", where, &node.min_length, &node.max_length));
      FEDGE_RETURN_IF_ERROR(Shape(s, where, &node));
    } else if (type == "array") {
      node.kind = Kind::kArray;
      FEDGE_RETURN_IF_ERROR(Bounds(s, "minItems", "maxItems", where, &node.min_items, &node.max_items));
      if (s.contains("items")) {
        if (s["items"].is_array())
          return UnimplementedError("'items' at " + where + " is an array (tuple validation): not supported");
        FEDGE_ASSIGN_OR_RETURN(node.items, Compile(s["items"], where + "/items"));
      } else {
        FEDGE_ASSIGN_OR_RETURN(node.items, Any());
      }
    } else {  // object
      node.kind = Kind::kObject;
      if (s.contains("properties")) {
        const Json& props = s["properties"];
        if (!props.is_object())
          return InvalidArgumentError("'properties' at " + where + " must be an object of schemas");
        if (props.size() > limits_.max_properties)
          return InvalidArgumentError("'properties' at " + where + " has more than " +
                                      std::to_string(limits_.max_properties) + " properties");
        for (const auto& [key, value] : props.items()) {
          Property p;
          p.key = Dumps(Json(key));
          FEDGE_ASSIGN_OR_RETURN(p.node, Compile(value, where + "/properties/" + PointerKey(key)));
          node.properties.push_back(std::move(p));
        }
        // nlohmann's object sorts keys; the schema's order is the text's.
        OrderAsWritten(props, &node.properties);
      }
      if (s.contains("required")) {
        const Json& req = s["required"];
        if (!req.is_array())
          return InvalidArgumentError("'required' at " + where + " must be an array of names");
        for (const Json& name : req) {
          if (!name.is_string()) return InvalidArgumentError("'required' at " + where + " must hold names");
          const std::string key = Dumps(name);
          auto it = std::find_if(node.properties.begin(), node.properties.end(),
                                 [&](const Property& p) { return p.key == key; });
          if (it == node.properties.end())
            return UnimplementedError("'required' at " + where + " names '" + name.get<std::string>() +
                                      "', which 'properties' does not list: list it (fedge writes only the "
                                      "listed properties)");
          it->required = true;
        }
      }
      if (s.contains("additionalProperties")) {
        const Json& ap = s["additionalProperties"];
        if (!(ap.is_boolean() && !ap.get<bool>())) {
          FEDGE_ASSIGN_OR_RETURN(uint32_t id, Compile(ap, where + "/additionalProperties"));
          node.additional = id;
        }
      } else if (node.properties.empty()) {
        FEDGE_ASSIGN_OR_RETURN(uint32_t id, Any());
        node.additional = id;
      }
      if (!node.properties.empty()) node.additional = -1;
      node.next_required.assign(node.properties.size() + 1, static_cast<uint32_t>(node.properties.size()));
      for (size_t i = node.properties.size(); i-- > 0;)
        node.next_required[i] =
            node.properties[i].required ? static_cast<uint32_t>(i) : node.next_required[i + 1];
    }
    return Add(std::move(node));
  }

  // nlohmann::json (std::map) iterates keys sorted; the order a strict-mode reply
  // follows is the order the schema's text lists them in, which ordered_json keeps.
  void OrderAsWritten(const Json& props, std::vector<Property>* properties) {
    auto it = order_.find(&props);
    if (it == order_.end()) return;
    std::vector<Property> ordered;
    for (const std::string& key : it->second) {
      const std::string dumped = Dumps(Json(key));
      for (Property& p : *properties) {
        if (p.key == dumped) ordered.push_back(std::move(p));
      }
    }
    *properties = std::move(ordered);
  }

 public:
  // The key order of every "properties" object, read from the text with
  // ordered_json (the pointer is the same value's address in doc_).
  std::map<const Json*, std::vector<std::string>> order_;

 private:
  const Json& doc_;
  const JsonSchemaLimits& limits_;
  JsonSchema* out_;
  std::map<std::string, uint32_t> refs_;
  uint32_t root_alias_ = 0;
  int depth_ = 0;
};

// Records, for each "properties" object in `doc`, its keys in the order of
// `ordered` (the same document parsed keeping order).
void RecordOrder(const Json& doc, const nlohmann::ordered_json& ordered,
                 std::map<const Json*, std::vector<std::string>>* order, int depth) {
  if (depth > 256) return;
  if (doc.is_object()) {
    for (const auto& [key, value] : ordered.items()) {
      if (!doc.contains(key)) continue;
      const Json& child = doc[key];
      if (key == "properties" && child.is_object()) {
        std::vector<std::string>& keys = (*order)[&child];
        for (const auto& [k, v] : value.items()) keys.push_back(k);
      }
      RecordOrder(child, value, order, depth + 1);
    }
  } else if (doc.is_array()) {
    for (size_t i = 0; i < doc.size() && i < ordered.size(); ++i)
      RecordOrder(doc[i], ordered[i], order, depth + 1);
  }
}

// --- the automaton ------------------------------------------------------------------

enum State : uint8_t {
  kRootBefore,  // matching the schema's `before` bytes (a: bytes matched)
  kRootValue,
  kRootAfter,  // matching its `after` bytes (a: bytes matched)
  kRootDone,
  kObjKeyOrEnd,    // after '{'
  kObjKey,         // after ','
  kObjKeyBytes,    // inside a listed key: b the first candidate, c its bytes matched
  kObjFreeKey,     // a key string (any name) is open above this frame
  kObjColon,       // after a key
  kObjValue,       // after ':'
  kObjCommaOrEnd,  // after a value
  kArrValueOrEnd,  // after '['
  kArrValue,       // after ','
  kArrCommaOrEnd,  // after a value
  kStr,
  kStrEscape,
  kStrUnicode,
  kNumMinus,
  kNumZero,
  kNumDigits,
  kNumDot,
  kNumFraction,
  kNumExponent,
  kNumExponentSign,
  kNumExponentDigits,
  kLiteral,  // a the first candidate literal, b its bytes matched
};

constexpr size_t kMaxFrames = JsonPrefix::kMaxDepth + 2;  // the root, containers, one scalar

struct Stack {
  uint16_t size = 0;
  uint8_t depth = 0;
  uint8_t space_run = 0;
  std::array<Frame, kMaxFrames> f;
  Frame& top() { return f[size - 1u]; }
};

bool SameFrames(const Frame* x, const Frame* y, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (x[i].node != y[i].node || x[i].state != y[i].state || x[i].hex_left != y[i].hex_left ||
        x[i].a != y[i].a || x[i].b != y[i].b || x[i].c != y[i].c)
      return false;
  }
  return true;
}

uint16_t Inc(uint16_t v) { return v == kCountMax ? v : static_cast<uint16_t>(v + 1); }

// Steps one stack over one byte; every stack it can become is emitted into `out`.
class Stepper {
 public:
  Stepper(const JsonSchema& schema, std::vector<Frame>* frames, std::vector<Alternative>* alternatives)
      : schema_(schema),
        nodes_(schema.nodes),
        any_string_(schema.any_string),
        frames_(frames),
        alternatives_(alternatives) {}

  void Step(Stack& st, unsigned char c) {
    Frame& t = st.top();
    const Node& n = nodes_[t.node];
    const bool ws = IsSpace(c);
    switch (static_cast<State>(t.state)) {
      case kRootValue:
        if (ws) return Space(st, c);
        return StartValue(st, t.node, c, 0);
      case kRootBefore:
      case kRootAfter: {
        const std::string& bytes = t.state == kRootBefore ? schema_.before : schema_.after;
        if (static_cast<unsigned char>(bytes[t.a]) != c) return;
        if (++t.a == bytes.size()) {
          t.state = t.state == kRootBefore ? kRootValue : kRootDone;
          t.a = 0;
        }
        return Emit(st);
      }
      case kRootDone:
        return;
      case kObjKeyOrEnd:
      case kObjKey:
        if (ws) return Space(st, c);
        if (c == '}' && t.state == kObjKeyOrEnd && n.next_required[t.a] == n.properties.size())
          return Close(st);
        if (c != '"') return;
        if (!n.properties.empty()) {
          if (t.a >= n.properties.size()) return;
          t.state = kObjKeyBytes;
          t.b = t.a;
          t.c = 1;
          return Emit(st);
        }
        if (n.additional < 0) return;
        t.state = kObjFreeKey;
        return Push(st, Frame{any_string_, kStr, 0, 0, 0, 0});
      case kObjKeyBytes: {
        // Candidates: the properties from t.a up to the first required one.
        const size_t end = std::min<size_t>(n.next_required[t.a] + 1u, n.properties.size());
        const std::string& matched = n.properties[t.b].key;
        for (size_t j = t.b; j < end; ++j) {
          const std::string& key = n.properties[j].key;
          if (key.size() > t.c && key[t.c] == static_cast<char>(c) &&
              key.compare(0, t.c, matched, 0, t.c) == 0) {
            t.b = static_cast<uint16_t>(j);
            ++t.c;
            if (t.c == key.size()) {
              t.state = kObjColon;
              t.a = static_cast<uint16_t>(j + 1);
            }
            return Emit(st);
          }
        }
        return;
      }
      case kObjFreeKey:
        return;  // a string frame is above it
      case kObjColon:
        if (ws) return Space(st, c);
        if (c != ':') return;
        t.state = kObjValue;
        return Emit(st);
      case kObjValue:
        if (ws) return Space(st, c);
        return StartValue(
            st, n.properties.empty() ? static_cast<uint32_t>(n.additional) : n.properties[t.b].node, c, 0);
      case kObjCommaOrEnd:
        if (ws) return Space(st, c);
        if (c == ',' && (n.properties.empty() || t.a < n.properties.size())) {
          t.state = kObjKey;
          return Emit(st);
        }
        if (c == '}' && n.next_required[t.a] == n.properties.size()) return Close(st);
        return;
      case kArrValueOrEnd:
        if (ws) return Space(st, c);
        if (c == ']' && n.min_items == 0) return Close(st);
        if (n.max_items == 0) return;
        t.state = kArrValue;
        return StartValue(st, n.items, c, 0);
      case kArrValue:
        if (ws) return Space(st, c);
        return StartValue(st, n.items, c, 0);
      case kArrCommaOrEnd:
        if (ws) return Space(st, c);
        if (c == ',' && t.a < n.max_items) {
          t.state = kArrValue;
          return Emit(st);
        }
        if (c == ']' && t.a >= n.min_items) return Close(st);
        return;
      case kStr:
        if (n.dfa >= 0) {  // a format or pattern: c holds the DFA's state
          const AsciiDfa& dfa = schema_.dfas[static_cast<size_t>(n.dfa)];
          if (c == '"') {
            if (!dfa.accept[t.c] || t.b < n.min_length) return;
            return EndValue(st);
          }
          if (c >= 0x80 || dfa.next[t.c * 128u + c] == AsciiDfa::kDead || t.b >= n.max_length) return;
          t.c = dfa.next[t.c * 128u + c];
          t.b = Inc(t.b);
          return Emit(st);
        }
        if (t.c != 0) {  // inside a UTF-8 character (c holds Utf8Next's state)
          if (Utf8Next(&t.c, c) != 0) return;
          return Emit(st);
        }
        if (c == '"') {
          if (t.b < n.min_length) return;
          return EndValue(st);
        }
        if (c < 0x20) return;  // control characters must be escaped
        if (c == '\\') {
          t.state = kStrEscape;
        } else if (Utf8Next(&t.c, c) < 0) {
          return;
        }
        if (t.b >= n.max_length) return;
        t.b = Inc(t.b);
        return Emit(st);
      case kStrEscape:
        if (c == 'u') {
          t.hex_left = 4;
          t.state = kStrUnicode;
          return Emit(st);
        }
        if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
          t.state = kStr;
          return Emit(st);
        }
        return;
      case kStrUnicode:
        if (!IsHex(c)) return;
        if (--t.hex_left == 0) t.state = kStr;
        return Emit(st);
      case kNumMinus:
        if (c == '0' || (c >= '1' && c <= '9')) {
          t.state = c == '0' ? kNumZero : kNumDigits;
          return Emit(st);
        }
        return;
      case kNumZero:
      case kNumDigits:
        if (IsDigit(c) && t.state == kNumDigits) return Emit(st);
        if (n.kind == Kind::kNumber && (c == '.' || c == 'e' || c == 'E')) {
          t.state = c == '.' ? kNumDot : kNumExponent;
          return Emit(st);
        }
        return EndValueAndFeed(st, c);
      case kNumDot:
        if (!IsDigit(c)) return;
        t.state = kNumFraction;
        return Emit(st);
      case kNumFraction:
        if (IsDigit(c)) return Emit(st);
        if (c == 'e' || c == 'E') {
          t.state = kNumExponent;
          return Emit(st);
        }
        return EndValueAndFeed(st, c);
      case kNumExponent:
        if (c == '+' || c == '-') {
          t.state = kNumExponentSign;
          return Emit(st);
        }
        [[fallthrough]];
      case kNumExponentSign:
        if (!IsDigit(c)) return;
        t.state = kNumExponentDigits;
        return Emit(st);
      case kNumExponentDigits:
        if (IsDigit(c)) return Emit(st);
        return EndValueAndFeed(st, c);
      case kLiteral: {
        const int64_t j = NextLiteral(n, t.a, t.b, c);
        if (j >= 0) {
          t.a = static_cast<uint16_t>(j);
          ++t.b;
          return Emit(st);
        }
        if (n.literals[t.a].size() != t.b) return;
        return EndValueAndFeed(st, c);  // a whole literal, ended by what follows it
      }
    }
  }

 private:
  // The first literal after `from` (the first with the `matched` bytes so far) that
  // continues with c; -1 if none. The literals are sorted, so the ones sharing a
  // prefix are adjacent.
  static int64_t NextLiteral(const Node& n, size_t from, size_t matched, unsigned char c) {
    const std::string& prefix = n.literals[from];
    for (size_t j = from; j < n.literals.size(); ++j) {
      const std::string& lit = n.literals[j];
      if (lit.compare(0, matched, prefix, 0, matched) != 0) break;
      if (lit.size() > matched && static_cast<unsigned char>(lit[matched]) >= c) {
        return static_cast<unsigned char>(lit[matched]) == c ? static_cast<int64_t>(j) : -1;
      }
    }
    return -1;
  }

  void Emit(const Stack& st) {
    if (alternatives_->size() >= JsonSchemaPrefix::kMaxAlternatives) return;
    for (const Alternative& alt : *alternatives_) {
      if (alt.size == st.size && alt.depth == st.depth && alt.space_run == st.space_run &&
          SameFrames(frames_->data() + alt.begin, st.f.data(), st.size))
        return;
    }
    Alternative alt;
    alt.begin = static_cast<uint32_t>(frames_->size());
    alt.size = st.size;
    alt.depth = st.depth;
    alt.space_run = st.space_run;
    frames_->insert(frames_->end(), st.f.begin(), st.f.begin() + st.size);
    alternatives_->push_back(alt);
  }

  void Space(Stack& st, unsigned char c) {
    if (JsonWhitespace(&st.space_run, c, st.depth)) Emit(st);
  }

  void Push(Stack& st, const Frame& frame) {
    if (st.size == kMaxFrames) return;
    st.f[st.size++] = frame;
    Emit(st);
  }

  // The value on top ended: pop it; the frame below takes note.
  void Pop(Stack& st) {
    --st.size;
    Frame& p = st.top();
    switch (p.state) {
      case kRootValue:
        p.state = schema_.after.empty() ? kRootDone : kRootAfter;
        break;
      case kObjValue:
        p.state = kObjCommaOrEnd;
        break;
      case kObjFreeKey:
        p.state = kObjColon;
        break;
      case kArrValue:
        p.state = kArrCommaOrEnd;
        p.a = Inc(p.a);
        break;
      default:
        break;
    }
  }
  void EndValue(Stack& st) {
    Pop(st);
    Emit(st);
  }
  void EndValueAndFeed(Stack& st, unsigned char c) {
    Pop(st);
    Step(st, c);
  }
  void Close(Stack& st) {
    --st.depth;
    EndValue(st);
  }

  void StartValue(Stack& st, uint32_t node, unsigned char c, int expansions) {
    const Node& n = nodes_[node];
    switch (n.kind) {
      case Kind::kAnyOf:
        // Each reading that can start with c; a schema that only refers to itself
        // ({"$ref": "#/$defs/A"} for A) is cut off here.
        if (expansions > 16) return;
        for (size_t i = 0; i < n.options.size(); ++i) {
          if (i + 1 == n.options.size()) return StartValue(st, n.options[i], c, expansions + 1);
          Stack copy = st;
          StartValue(copy, n.options[i], c, expansions + 1);
        }
        return;
      case Kind::kObject:
      case Kind::kArray:
        if (c != (n.kind == Kind::kObject ? '{' : '[') || st.depth == JsonPrefix::kMaxDepth) return;
        ++st.depth;
        return Push(st, Frame{node, n.kind == Kind::kObject ? kObjKeyOrEnd : kArrValueOrEnd, 0, 0, 0, 0});
      case Kind::kString:
        if (c != '"') return;
        return Push(st, Frame{node, kStr, 0, 0, 0, 0});
      case Kind::kNumber:
      case Kind::kInteger:
        if (c == '-') return Push(st, Frame{node, kNumMinus, 0, 0, 0, 0});
        if (c == '0') return Push(st, Frame{node, kNumZero, 0, 0, 0, 0});
        if (c >= '1' && c <= '9') return Push(st, Frame{node, kNumDigits, 0, 0, 0, 0});
        return;
      case Kind::kLiterals:
        for (size_t j = 0; j < n.literals.size(); ++j) {
          if (static_cast<unsigned char>(n.literals[j][0]) == c)
            return Push(st, Frame{node, kLiteral, 0, static_cast<uint16_t>(j), 1, 0});
        }
        return;
    }
  }

  const JsonSchema& schema_;
  const std::vector<Node>& nodes_;
  uint32_t any_string_;
  std::vector<Frame>* frames_;
  std::vector<Alternative>* alternatives_;
};

}  // namespace

namespace {

// Whether every value `node` accepts is an object (the root's requirement).
bool OnlyObjects(const JsonSchema& schema, uint32_t node, int depth) {
  const Node& n = schema.nodes[node];
  if (n.kind == Kind::kObject) return true;
  if (n.kind != Kind::kAnyOf || depth > 32) return false;
  return std::all_of(n.options.begin(), n.options.end(),
                     [&](uint32_t option) { return OnlyObjects(schema, option, depth + 1); });
}

// `text` compiled into `schema` (which other documents may share); the node of its root.
StatusOr<uint32_t> CompileDocument(std::string_view text, const JsonSchemaLimits& limits,
                                   JsonSchema* schema) {
  Json doc = Json::parse(text.begin(), text.end(), nullptr, false);
  if (doc.is_discarded()) return InvalidArgumentError("the schema is not valid JSON");
  const auto ordered = nlohmann::ordered_json::parse(text.begin(), text.end(), nullptr, false);
  Compiler compiler(doc, limits, schema);
  RecordOrder(doc, ordered, &compiler.order_, 0);
  FEDGE_ASSIGN_OR_RETURN(uint32_t root, compiler.CompileDocument());
  // OpenAI's structured outputs take an object at the root; so does this server (a
  // reply that is a bare number could never be known to have ended).
  if (!OnlyObjects(*schema, root, 0))
    return InvalidArgumentError(
        "the schema's root must be an object ({\"type\": \"object\", ...}), as OpenAI's structured outputs "
        "require");
  return root;
}

}  // namespace

StatusOr<std::shared_ptr<const JsonSchema>> CompileJsonSchema(std::string_view text,
                                                              const JsonSchemaLimits& limits) {
  auto schema = std::make_shared<JsonSchema>();
  FEDGE_ASSIGN_OR_RETURN(schema->root, CompileDocument(text, limits, schema.get()));
  return std::shared_ptr<const JsonSchema>(std::move(schema));
}

StatusOr<std::shared_ptr<const JsonSchema>> CompileToolCallSchema(const std::vector<ToolSchema>& tools,
                                                                  std::string_view arguments_key,
                                                                  std::string before, std::string after,
                                                                  const JsonSchemaLimits& limits) {
  if (tools.empty()) return InvalidArgumentError("a tool call needs a tool to call");
  auto schema = std::make_shared<JsonSchema>();
  schema->before = std::move(before);
  schema->after = std::move(after);
  Node calls;  // anyOf: one call object per tool
  for (const ToolSchema& tool : tools) {
    const size_t mark = schema->nodes.size();
    StatusOr<uint32_t> arguments = tool.parameters.empty()
                                       ? StatusOr<uint32_t>(UnimplementedError("no parameters"))
                                       : CompileDocument(tool.parameters, limits, schema.get());
    if (!arguments.ok()) {
      if (tool.strict && !tool.parameters.empty())
        return Status(arguments.status().code(),
                      "tool '" + tool.name + "' (strict): " + std::string(arguments.status().message()));
      // Not strict: what fedge cannot hold the arguments to, any object holds.
      schema->nodes.resize(std::max(mark, size_t{1}));
      if (schema->any >= static_cast<int64_t>(schema->nodes.size())) schema->any = -1;
      arguments = CompileDocument(R"({"type": "object"})", limits, schema.get());
      if (!arguments.ok()) return arguments.status();
    }
    Node name;
    name.kind = Kind::kLiterals;
    name.literals = {Dumps(Json(tool.name))};
    Node call;
    call.kind = Kind::kObject;
    call.properties.push_back(Property{"\"name\"", static_cast<uint32_t>(schema->nodes.size()), true});
    schema->nodes.push_back(std::move(name));
    call.properties.push_back(Property{Dumps(Json(std::string(arguments_key))), *arguments, true});
    call.next_required = {0, 1, 2};
    if (schema->nodes.size() >= limits.max_nodes)
      return InvalidArgumentError("the tools' schemas are too large: more than " +
                                  std::to_string(limits.max_nodes) + " types, properties and enums");
    calls.options.push_back(static_cast<uint32_t>(schema->nodes.size()));
    schema->nodes.push_back(std::move(call));
  }
  schema->root = static_cast<uint32_t>(schema->nodes.size());
  schema->nodes.push_back(std::move(calls));
  return std::shared_ptr<const JsonSchema>(std::move(schema));
}

JsonSchemaPrefix::JsonSchemaPrefix(std::shared_ptr<const JsonSchema> schema) : schema_(std::move(schema)) {
  Frame root;
  root.node = schema_->root;
  root.state = schema_->before.empty() ? kRootValue : kRootBefore;
  frames_.push_back(root);
  alternatives_.push_back(Alternative{0, 1, 0, 0});
}

namespace {

// The common bytes, taken in place when one reading is open: a string's ordinary
// characters, a number's digits, a literal's next byte. Exactly what Stepper::Step
// does with them; false leaves the byte to it.
bool StepInPlace(const JsonSchema& schema, const Node& n, Frame& t, unsigned char c) {
  switch (t.state) {
    case kStr: {
      if (n.dfa >= 0) {
        const AsciiDfa& dfa = schema.dfas[static_cast<size_t>(n.dfa)];
        if (c == '"' || c >= 0x80 || dfa.next[t.c * 128u + c] == AsciiDfa::kDead || t.b >= n.max_length)
          return false;
        t.c = dfa.next[t.c * 128u + c];
        t.b = Inc(t.b);
        return true;
      }
      if (t.c == 0 && (c < 0x20 || c == '"' || c == '\\')) return false;
      uint16_t utf8 = t.c;
      const int r = Utf8Next(&utf8, c);
      if (r < 0 || (r > 0 && t.b >= n.max_length)) return false;
      if (r > 0) t.b = Inc(t.b);
      t.c = utf8;
      return true;
    }
    case kNumDigits:
    case kNumFraction:
    case kNumExponentDigits:
      return IsDigit(c);
    case kLiteral: {
      const std::string& lit = n.literals[t.a];
      if (lit.size() <= t.b || static_cast<unsigned char>(lit[t.b]) != c) return false;
      ++t.b;  // the same candidate goes on (the first with these bytes stays the first)
      return true;
    }
    default:
      return false;
  }
}

}  // namespace

bool JsonSchemaPrefix::Feed(unsigned char c) {
  if (alternatives_.size() == 1) {
    Alternative& alt = alternatives_[0];
    Frame& top = frames_[alt.begin + alt.size - 1u];
    if (StepInPlace(*schema_, schema_->nodes[top.node], top, c)) {
      if (!IsSpace(c)) alt.space_run = 0;
      return true;
    }
  }
  next_frames_.clear();
  next_alternatives_.clear();
  Stepper stepper(*schema_, &next_frames_, &next_alternatives_);
  Stack st;
  for (const Alternative& alt : alternatives_) {
    st.size = alt.size;
    st.depth = alt.depth;
    st.space_run = IsSpace(c) ? alt.space_run : 0;
    std::copy(frames_.begin() + alt.begin, frames_.begin() + alt.begin + alt.size, st.f.begin());
    stepper.Step(st, c);
  }
  frames_.swap(next_frames_);
  alternatives_.swap(next_alternatives_);
  return !alternatives_.empty();
}

bool JsonSchemaPrefix::FeedAll(std::string_view bytes) {
  for (const char c : bytes) {
    if (!Feed(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool JsonSchemaPrefix::Complete() const {
  return std::any_of(alternatives_.begin(), alternatives_.end(), [&](const Alternative& alt) {
    return alt.size == 1 && frames_[alt.begin].state == kRootDone;
  });
}

void JsonSchemaPrefix::CopyTo(JsonSchemaPrefix* out) const {
  if (out->schema_ != schema_) out->schema_ = schema_;
  out->frames_ = frames_;
  out->alternatives_ = alternatives_;
}

}  // namespace fedge::agent::llm
