// FederatedTrainingJob parsing: YAML/JSON → JobSpec with defaults, strict
// field checking (unknown fields under spec are errors, like
// `kubectl --validate=strict`), type checks and semantic validation. Every
// error names the field by its path, shows the bad value and says what is
// allowed; all errors of a manifest are reported at once, joined by "; ".
// Which fields exist, their per-field bounds and the order they are written in
// come from the field table (fedge/job_spec_fields.h); the cross-field rules
// are in ValidateJobSpec.
#include "fedge/job_spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string_view>
#include <type_traits>
#include <variant>

#include "fedge/job_spec_fields.h"
#include "fedge/tensor_bundle.h"  // kMinTopkFraction

namespace fedge {
namespace {

constexpr const char* kApiVersion = "fedge.io/v1alpha1";
constexpr const char* kKind = "FederatedTrainingJob";

std::string Quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string Join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += items[i];
  }
  return out;
}

// Shortest text that parses back to the same double ("0.002", not "0.0020000000000000000").
std::string FormatDouble(double v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v);
  std::string s(buf, res.ptr);
  // Keep a float a float in YAML/JSON ("16" would read back as an integer, which
  // we accept for doubles anyway, but "16.0" documents intent).
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

// Offset of the first byte of `s` that is not valid UTF-8 (overlong forms, surrogates
// and code points above U+10FFFF count as invalid), or npos. Manifests are UTF-8: a
// string with other bytes would not survive JobSpecToYaml (the YAML writer replaces
// them with U+FFFD), so the local runner's children would read another path or label.
size_t FirstInvalidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char b = static_cast<unsigned char>(s[i]);
    size_t len = 1;
    char32_t c = b;
    if (b >= 0x80) {
      if (b >= 0xC2 && b <= 0xDF) {
        len = 2, c = b & 0x1F;
      } else if (b >= 0xE0 && b <= 0xEF) {
        len = 3, c = b & 0x0F;
      } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4, c = b & 0x07;
      } else {
        return i;
      }
      if (i + len > s.size()) return i;
      for (size_t k = 1; k < len; ++k) {
        const unsigned char cb = static_cast<unsigned char>(s[i + k]);
        if ((cb & 0xC0) != 0x80) return i;
        c = (c << 6) | (cb & 0x3F);
      }
      if ((len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10FFFF)) ||
          (c >= 0xD800 && c <= 0xDFFF)) {
        return i;
      }
    }
    i += len;
  }
  return std::string_view::npos;
}

// Number of Unicode code points in valid UTF-8 `s`: the unit of the CRD's maxLength
// and of CEL's size(), so a bound means the same here and at the API server.
size_t CodePoints(std::string_view s) {
  return static_cast<size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

// True for a plain (unquoted) scalar that YAML's core schema and JSON read as a
// number or a boolean: the API server refuses it where the CRD wants a string
// (`labels: [0, 1]`, `nodeSelector: {edge: true}`), so the parser does too.
bool IsPlainNonString(const YAML::Node& node) {
  if (node.Tag() == "!") return false;  // quoted
  const std::string& s = node.Scalar();
  if (s == "true" || s == "True" || s == "TRUE" || s == "false" || s == "False" || s == "FALSE") return true;
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  // strtod also reads "inf", "nan" and hex floats: YAML spells those ".inf", ".nan", 0x...
  const bool numeric_chars = s.find_first_not_of("0123456789+-.eE") == std::string::npos;
  return numeric_chars && end == s.c_str() + s.size();
}

// A short description of a node for "got ..." in error messages.
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return node.Tag() == "!" ? "string " + Quote(node.Scalar()) : node.Scalar();
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "an object";
    case YAML::NodeType::Null:
      return "null";
    default:
      return "nothing";
  }
}

// Walks a manifest collecting errors; never throws (yaml-cpp accessors used here
// only on nodes whose type was checked).
class Reader {
 public:
  std::vector<std::string> errors;

  void Error(const std::string& path, const std::string& msg) { errors.push_back(path + ": " + msg); }

  // Rejects keys of `node` (a map) not in `allowed`.
  // Duplicate keys are errors too: yaml-cpp would silently keep the first.
  void CheckKeys(const YAML::Node& node, const std::string& path, const std::vector<std::string>& allowed) {
    std::set<std::string> seen;
    for (const auto& kv : node) {
      std::string key = kv.first.IsScalar() ? kv.first.Scalar() : Describe(kv.first);
      if (!seen.insert(key).second) Error(Child(path, key), "duplicate field");
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        Error(Child(path, key), "unknown field (allowed: " + Join(allowed, ", ") + ")");
      }
    }
  }

  // Returns the child `key` of map `node` if present and not null.
  static bool Get(const YAML::Node& node, const std::string& key, YAML::Node* out) {
    if (!node.IsMap()) return false;
    for (const auto& kv : node) {
      if (kv.first.IsScalar() && kv.first.Scalar() == key) {
        if (kv.second.IsNull() || !kv.second.IsDefined()) return false;
        *out = kv.second;
        return true;
      }
    }
    return false;
  }

  static std::string Child(const std::string& path, const std::string& key) {
    return path.empty() ? key : path + "." + key;
  }

  // Opens sub-object `key`: false when absent; an error when not an object.
  bool Object(const YAML::Node& node, const std::string& path, const std::string& key, YAML::Node* out) {
    if (!Get(node, key, out)) return false;
    if (!out->IsMap()) {
      Error(Child(path, key), "must be an object, got " + Describe(*out));
      return false;
    }
    return true;
  }

  void String(const YAML::Node& node, const std::string& path, const std::string& key, std::string* out) {
    YAML::Node v;
    if (!Get(node, key, &v)) return;
    if (!IsString(Child(path, key), v)) return;
    *out = v.Scalar();
  }

  // False (and an error) unless `v` is a string scalar in valid UTF-8.
  bool IsString(const std::string& path, const YAML::Node& v) {
    if (!v.IsScalar()) {
      Error(path, "must be a string, got " + Describe(v));
      return false;
    }
    if (IsPlainNonString(v)) {
      Error(path, "must be a string, got " + v.Scalar() + " (write \"" + v.Scalar() + "\" in quotes)");
      return false;
    }
    return Utf8(path, v.Scalar());
  }

  // An error when `s` has more than `max` code points (the CRD's maxLength).
  void MaxChars(const std::string& path, const std::string& s, size_t max) {
    if (CodePoints(s) > max) {
      Error(path,
            "must be at most " + std::to_string(max) + " characters, got " + std::to_string(CodePoints(s)));
    }
  }

  // False (and an error) when `s` is not valid UTF-8.
  bool Utf8(const std::string& path, const std::string& s) {
    const size_t bad = FirstInvalidUtf8(s);
    if (bad == std::string_view::npos) return true;
    Error(path, "is not valid UTF-8 (byte " + std::to_string(bad) + "); write the manifest in UTF-8");
    return false;
  }

  template <typename Int>
  void Integer(const YAML::Node& node, const std::string& path, const std::string& key, Int* out) {
    YAML::Node v;
    if (!Get(node, key, &v)) return;
    const std::string p = Child(path, key);
    if (!v.IsScalar() || v.Tag() == "!") {
      Error(p, "must be an integer, got " + Describe(v));
      return;
    }
    const std::string& s = v.Scalar();
    Int value{};
    auto res = std::from_chars(s.data(), s.data() + s.size(), value);
    if (res.ec == std::errc::result_out_of_range) {
      Error(p, "must be an integer in [" + std::to_string(std::numeric_limits<Int>::min()) + ", " +
                   std::to_string(std::numeric_limits<Int>::max()) + "], got " + s);
      return;
    }
    if (res.ec != std::errc() || res.ptr != s.data() + s.size()) {
      // The API server takes a number with an integral value (5.0, 1e3) for an
      // integer field (kubectl sends it as 5); so does this parser, up to 2^53,
      // where every integer is exact as a double.
      if (!IntegralDecimal(s, &value)) {
        Error(p, "must be an integer, got " + Describe(v));
        return;
      }
    }
    *out = value;
  }

  template <typename Int>
  static bool IntegralDecimal(const std::string& s, Int* out) {
    if (s.empty() || s.find_first_not_of("0123456789+-.eE") != std::string::npos) return false;
    errno = 0;
    char* end = nullptr;
    const double d = std::strtod(s.c_str(), &end);
    constexpr double kExact = 9007199254740992.0;  // 2^53
    if (end != s.c_str() + s.size() || errno == ERANGE || d != std::floor(d) || std::fabs(d) > kExact)
      return false;
    if (d < static_cast<double>(std::numeric_limits<Int>::min()) ||
        d > static_cast<double>(std::numeric_limits<Int>::max())) {
      return false;
    }
    *out = static_cast<Int>(d);
    return true;
  }

  void Double(const YAML::Node& node, const std::string& path, const std::string& key, double* out) {
    YAML::Node v;
    if (!Get(node, key, &v)) return;
    const std::string p = Child(path, key);
    if (!v.IsScalar() || v.Tag() == "!" || v.Scalar().empty()) {
      Error(p, "must be a number, got " + Describe(v));
      return;
    }
    const std::string& s = v.Scalar();
    errno = 0;
    char* end = nullptr;
    double value = std::strtod(s.c_str(), &end);
    if (end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(value)) {
      Error(p, "must be a finite number, got " + Describe(v));
      return;
    }
    *out = value;
  }

  void Bool(const YAML::Node& node, const std::string& path, const std::string& key, bool* out) {
    YAML::Node v;
    if (!Get(node, key, &v)) return;
    if (v.IsScalar() && v.Tag() != "!") {
      const std::string& s = v.Scalar();
      if (s == "true" || s == "True" || s == "TRUE") {
        *out = true;
        return;
      }
      if (s == "false" || s == "False" || s == "FALSE") {
        *out = false;
        return;
      }
    }
    Error(Child(path, key), "must be true or false, got " + Describe(v));
  }

  void StringList(const YAML::Node& node, const std::string& path, const std::string& key,
                  std::vector<std::string>* out) {
    YAML::Node v;
    if (!Get(node, key, &v)) return;
    const std::string p = Child(path, key);
    if (!v.IsSequence()) {
      Error(p, "must be a list of strings, got " + Describe(v));
      return;
    }
    std::vector<std::string> items;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!IsString(p + "[" + std::to_string(i) + "]", v[i])) return;
      items.push_back(v[i].Scalar());
    }
    *out = std::move(items);
  }

  void StringMap(const YAML::Node& node, const std::string& path, const std::string& key,
                 std::map<std::string, std::string>* out) {
    YAML::Node v;
    if (!Get(node, key, &v)) return;
    const std::string p = Child(path, key);
    if (!v.IsMap()) {
      Error(p, "must be an object of strings, got " + Describe(v));
      return;
    }
    std::map<std::string, std::string> items;
    for (const auto& kv : v) {
      std::string k = kv.first.IsScalar() ? kv.first.Scalar() : Describe(kv.first);
      if (!Utf8(p + " key", k) || !IsString(Child(p, k), kv.second)) return;
      items[k] = kv.second.Scalar();
    }
    *out = std::move(items);
  }
};

// ---- validation ----

class Validator {
 public:
  std::vector<std::string> errors;

  template <typename T>
  void AtMost(const std::string& path, T value, T max) {
    if (value > max) errors.push_back(path + ": must be <= " + Str(max) + ", got " + Str(value));
  }
  void Add(const std::string& path, const std::string& msg) { errors.push_back(path + ": " + msg); }

  template <typename T>
  static std::string Str(T v) {
    if constexpr (std::is_floating_point_v<T>) {
      char buf[64];
      auto res = std::to_chars(buf, buf + sizeof(buf), v);
      return std::string(buf, res.ptr);
    } else {
      return std::to_string(v);
    }
  }
};

// DNS-1123 label: the name becomes part of Pod and Service names.
bool IsDns1123Label(const std::string& s) {
  if (s.empty() || s.size() > 63) return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!alnum(s.front()) || !alnum(s.back())) return false;
  return std::all_of(s.begin(), s.end(), [&](char c) { return alnum(c) || c == '-'; });
}

// The CRD's CEL rule on metadata.name (spec fields: the table, job_spec_fields.cpp).
constexpr size_t kMaxJobNameLength = 40;

// ---- the field table: generic checks and reading ----

// A bound as the manifest would write it: integers without ".0".
std::string BoundText(const JobSpecField& f, double bound) {
  if (f.kind == FieldKind::kDouble) {
    char buf[64];
    auto res = std::to_chars(buf, buf + sizeof(buf), bound);
    return std::string(buf, res.ptr);
  }
  return std::to_string(static_cast<long long>(bound));
}

// The length bounds of a string (the CRD's minLength/maxLength, in code points).
void CheckLength(const JobSpecField& f, const std::string& path, const std::string& value,
                 std::optional<double> min, std::optional<double> max, std::vector<std::string>* errors) {
  const size_t n = CodePoints(value);
  const size_t lo = min ? static_cast<size_t>(*min) : 0;
  if (n == 0 && lo >= 1) {
    errors->push_back(path + (f.required_hint.empty() ? ": must not be empty"
                                                      : ": required (" + std::string(f.required_hint) + ")"));
  } else if (max && n > static_cast<size_t>(*max)) {
    errors->push_back(path + ": must be at most " + BoundText(f, *max) + " characters, got " +
                      std::to_string(n));
  } else if (n < lo) {
    errors->push_back(path + ": must be at least " + BoundText(f, *min) + " characters, got " +
                      std::to_string(n));
  }
}

void CheckCount(const JobSpecField& f, const std::string& path, size_t n, std::vector<std::string>* errors) {
  if (f.min && n < static_cast<size_t>(*f.min)) {
    errors->push_back(path + ": must have at least " + BoundText(f, *f.min) + " entries, got " +
                      std::to_string(n));
  } else if (f.max && n > static_cast<size_t>(*f.max)) {
    errors->push_back(path + ": must have at most " + BoundText(f, *f.max) + " entries, got " +
                      std::to_string(n));
  }
}

// The row's own rules (bounds, enum, lengths) for the value `ref` points to.
void CheckField(const JobSpecField& f, const FieldRef& ref, std::vector<std::string>* errors) {
  const std::string path(f.path);
  std::visit(
      [&](auto* p) {
        using T = std::remove_pointer_t<decltype(p)>;
        const T& v = *p;
        if constexpr (std::is_same_v<T, std::string>) {
          if (!f.one_of.empty() && std::find(f.one_of.begin(), f.one_of.end(), v) == f.one_of.end()) {
            std::string allowed;
            for (std::string_view a : f.one_of) allowed += (allowed.empty() ? "" : ", ") + std::string(a);
            errors->push_back(path + ": must be one of " + allowed + "; got " + Quote(v));
          }
          if (f.min || f.max) CheckLength(f, path, v, f.min, f.max, errors);
        } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
          CheckCount(f, path, v.size(), errors);
          for (size_t i = 0; i < v.size(); ++i) {
            CheckLength(f, path + "[" + std::to_string(i) + "]", v[i], f.item_min, f.item_max, errors);
          }
        } else if constexpr (std::is_same_v<T, std::map<std::string, std::string>>) {
          CheckCount(f, path, v.size(), errors);
          for (const auto& [key, value] : v)
            CheckLength(f, path + "." + key, value, f.item_min, f.item_max, errors);
        } else if constexpr (std::is_same_v<T, bool>) {
          // no bounds
        } else {
          const double x = static_cast<double>(v);
          const bool low = f.min && (f.exclusive_min ? !(x > *f.min) : !(x >= *f.min));
          const bool high = f.max && (f.exclusive_max ? !(x < *f.max) : !(x <= *f.max));
          if (!low && !high) return;
          if (!f.allowed.empty()) {
            errors->push_back(path + ": must be " + std::string(f.allowed) + ", got " + Validator::Str(v));
          } else if (f.min && f.max && (f.exclusive_min || f.exclusive_max)) {
            errors->push_back(path + ": must be in " + (f.exclusive_min ? "(" : "[") + BoundText(f, *f.min) +
                              ", " + BoundText(f, *f.max) + (f.exclusive_max ? ")" : "]") + ", got " +
                              Validator::Str(v));
          } else if (low) {
            errors->push_back(path + ": must be " + (f.exclusive_min ? "> " : ">= ") + BoundText(f, *f.min) +
                              ", got " + Validator::Str(v));
          } else {
            errors->push_back(path + ": must be " + (f.exclusive_max ? "< " : "<= ") + BoundText(f, *f.max) +
                              ", got " + Validator::Str(v));
          }
        }
      },
      ref);
}

// Whether a row's value is checked for `spec` and written by JobSpecToYaml:
// differentialPrivacy only when present (its presence enables it); every
// other row always (secureAggregation's rules hold whether or not it is
// enabled, as in the CRD).
bool IsChecked(const JobSpec& spec, std::string_view path) {
  return path.rfind("spec.privacy.differentialPrivacy.", 0) != 0 || spec.privacy.differentialPrivacy.enabled;
}

// Every object path of the table (each proper prefix of a row's path, "spec"
// first) with its keys in table order.
const std::map<std::string, std::vector<std::string>>& ObjectKeys() {
  static const auto* keys = [] {
    auto* m = new std::map<std::string, std::vector<std::string>>();
    for (const JobSpecField& f : JobSpecFields()) {
      const std::string path(f.path);
      for (size_t dot = path.find('.'); dot != std::string::npos;) {
        const size_t next = path.find('.', dot + 1);
        std::vector<std::string>& v = (*m)[path.substr(0, dot)];
        const std::string key =
            path.substr(dot + 1, next == std::string::npos ? std::string::npos : next - dot - 1);
        if (std::find(v.begin(), v.end(), key) == v.end()) v.push_back(key);
        dot = next;
      }
    }
    return m;
  }();
  return *keys;
}

void ReadValue(Reader& r, const YAML::Node& node, const std::string& parent, const std::string& key,
               const FieldRef& ref) {
  std::visit(
      [&](auto* p) {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, std::string>) {
          r.String(node, parent, key, p);
        } else if constexpr (std::is_same_v<T, bool>) {
          r.Bool(node, parent, key, p);
        } else if constexpr (std::is_same_v<T, double>) {
          r.Double(node, parent, key, p);
        } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
          r.StringList(node, parent, key, p);
        } else if constexpr (std::is_same_v<T, std::map<std::string, std::string>>) {
          r.StringMap(node, parent, key, p);
        } else {
          r.Integer(node, parent, key, p);
        }
      },
      ref);
}

// An operator-only row (no JobSpec member): read into a scratch value and
// checked at once, so that a manifest the cluster refuses does not parse.
void ReadOperatorOnly(Reader& r, const YAML::Node& node, const std::string& parent, const std::string& key,
                      const JobSpecField& f) {
  const std::string path = Reader::Child(parent, key);
  YAML::Node present;
  if (!Reader::Get(node, key, &present)) return;
  std::string s;
  int64_t i = 0;
  bool b = false;
  switch (f.kind) {
    case FieldKind::kString:
      r.String(node, parent, key, &s);
      CheckField(f, &s, &r.errors);
      if (path == "spec.aggregator.checkpoint.size") {
        static const std::regex kQuantity("^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$");
        if (!std::regex_match(s, kQuantity))
          r.Error(path, "must be a size like 1Gi, 500Mi or 2G, got " + Quote(s));
      }
      return;
    case FieldKind::kInt64: {
      const size_t before = r.errors.size();
      r.Integer(node, parent, key, &i);
      if (r.errors.size() == before) CheckField(f, &i, &r.errors);
      return;
    }
    case FieldKind::kBool:
      r.Bool(node, parent, key, &b);
      return;
    case FieldKind::kObject: {
      YAML::Node obj;
      r.Object(node, parent, key, &obj);  // e.g. a container's requests and limits, as in a Pod
      return;
    }
    case FieldKind::kIntOrPercent: {
      // As the API server reads an IntOrString: a number (unquoted) or a string, which
      // must be a percentage.
      const std::string& v = present.IsScalar() ? present.Scalar() : std::string();
      const bool quoted = present.Tag() == "!";
      const bool digits =
          !v.empty() && v.size() <= 9 && v.find_first_not_of("0123456789") == std::string::npos;
      const bool percent = v.size() >= 2 && v.size() <= 4 && v.back() == '%' && v[0] != '0' &&
                           v.find_first_not_of("0123456789") == v.size() - 1;
      if (present.IsScalar() && !quoted && digits && std::stoll(v) >= *f.min && std::stoll(v) <= *f.max)
        return;
      if (present.IsScalar() && percent && std::stoi(v) >= 1 && std::stoi(v) <= 100) return;
      r.Error(path, "must be a number of agents from " + BoundText(f, *f.min) + " to " +
                        BoundText(f, *f.max) +
                        " or a percentage of the selected nodes from 1% to 100% (such as \"25%\"), got " +
                        (present.IsScalar() ? (quoted ? Quote(v) : v) : Describe(present)));
      return;
    }
    default:
      r.Error(path, "internal error: no reader for this operator-only field");
  }
}

// Reads the object `node` at `path` ("spec", "spec.model", ...) by the table.
void ReadObject(Reader& r, const YAML::Node& node, const std::string& path, JobSpec* job) {
  const std::vector<std::string>& keys = ObjectKeys().at(path);
  r.CheckKeys(node, path, keys);
  for (const std::string& key : keys) {
    const std::string child = path + "." + key;
    if (const JobSpecField* f = FindJobSpecField(child)) {
      if (f->ref == nullptr) {
        ReadOperatorOnly(r, node, path, key, *f);
      } else {
        ReadValue(r, node, path, key, f->ref(*job));
      }
      continue;
    }
    YAML::Node sub;
    if (!r.Object(node, path, key, &sub)) continue;
    if (child == "spec.privacy.differentialPrivacy") job->privacy.differentialPrivacy.enabled = true;
    ReadObject(r, sub, child, job);
  }
}

void ReadSpec(Reader& r, const YAML::Node& spec, JobSpec* job) { ReadObject(r, spec, "spec", job); }

}  // namespace

Status ValidateJobSpec(const JobSpec& spec) {
  Validator v;
  if (spec.apiVersion != kApiVersion) {
    v.Add("apiVersion", std::string("must be ") + kApiVersion + ", got " + Quote(spec.apiVersion));
  }
  if (spec.kind != kKind) v.Add("kind", std::string("must be ") + kKind + ", got " + Quote(spec.kind));
  if (spec.name.empty()) {
    v.Add("metadata.name", "required");
  } else if (!IsDns1123Label(spec.name) || spec.name.size() > kMaxJobNameLength) {
    v.Add(
        "metadata.name",
        "must be a DNS-1123 label of at most 40 characters (lower-case letters, digits or '-', starting "
        "and ending with a letter or digit; child Services are named <job>-aggregator and <job>-inference), "
        "got " +
            Quote(spec.name));
  }
  if (!IsDns1123Label(spec.namespace_)) {
    v.Add("metadata.namespace", "must be a DNS-1123 label, got " + Quote(spec.namespace_));
  }

  // Every field's own bounds, enum and lengths: the table (job_spec_fields.cpp),
  // which the CRD's schema matches field by field. The rules below relate fields.
  JobSpec& fields = const_cast<JobSpec&>(spec);  // FieldRef is read here, never written
  for (const JobSpecField& f : JobSpecFields()) {
    if (f.ref != nullptr && IsChecked(spec, f.path)) CheckField(f, f.ref(fields), &v.errors);
  }

  const ModelSpec& m = spec.model;
  // The tasks of each family (the table allows the union, as the CRD's enum does).
  if (m.family == "bert" && m.task == "causal-lm") {
    v.Add("spec.model.task", "bert does sequence-classification, token-classification or embedding; got " +
                                 Quote(m.task) + " (causal-lm needs family llama)");
  } else if (m.family == "llama" && m.task != "causal-lm") {
    v.Add("spec.model.task", "llama does causal-lm only; got " + Quote(m.task));
  }
  // Labels are class names whatever the task: unique (the CRD's list-type set).
  const std::set<std::string> unique(m.labels.begin(), m.labels.end());
  if ((m.task == "sequence-classification" || m.task == "token-classification") && unique.size() < 2) {
    v.Add("spec.model.labels",
          "task " + m.task + " needs at least 2 unique labels, got " + std::to_string(unique.size()));
  } else if (unique.size() != m.labels.size()) {
    v.Add("spec.model.labels", "labels must be unique");
  }

  const AdapterSpec& a = spec.adapter;
  // Agent-only until issue 11 (agent/src/runtime/agent.cpp): refused here (and by
  // the CRD's CEL) so that `fedge run` and the operator refuse the job before any
  // pod exists.
  if (m.family == "llama" && a.aggregation == "frozen-a") {
    v.Add("spec.adapter.aggregation",
          "frozen-a is not supported for llama models yet; use factors or product");
  }
  // Aggregator-only until issue 11 (WrapForLora): product re-factors the FedAvg mean of B·A.
  if (a.aggregation == "product" && spec.strategy.name != "fedavg" && spec.strategy.name != "fedprox") {
    v.Add("spec.adapter.aggregation", "product works with strategy fedavg or fedprox, not " +
                                          Quote(spec.strategy.name) + "; use factors or frozen-a with it");
  }

  if ((m.dtype == "bfloat16" || m.dtype == "float16") && m.family != "llama") {
    v.Add("spec.model.dtype", Quote(m.dtype) +
                                  " applies to generative (llama) models only; bert models hold float32 "
                                  "weights (use auto or float32)");
  }
  if (spec.serving.decodeWeights != "float32" && m.family != "llama") {
    v.Add("spec.serving.decodeWeights", Quote(spec.serving.decodeWeights) +
                                            " applies to generative (llama) models only; bert models serve "
                                            "float32");
  }

  const AgentsSpec& ag = spec.agents;
  if (ag.maxAgents > 0 && ag.maxAgents < ag.minAgents) {
    v.Add("spec.agents.maxAgents", "must be 0 (every matching node) or >= spec.agents.minAgents (" +
                                       std::to_string(ag.minAgents) + "), got " +
                                       std::to_string(ag.maxAgents));
  }

  const RoundsSpec& r = spec.rounds;
  if (r.quorum > 0 && ag.maxAgents > 0 && r.quorum > ag.maxAgents) {
    v.Add("spec.rounds.quorum", "must be <= spec.agents.maxAgents (" + std::to_string(ag.maxAgents) +
                                    "): a round never gets more updates than there are agents, got " +
                                    std::to_string(r.quorum));
  } else if (r.quorum > 0) {
    const int most = std::max(ag.minAgents, ag.replicas);
    if (r.quorum > most) {
      v.Add("spec.rounds.quorum",
            "must be <= max(spec.agents.minAgents, spec.agents.replicas) = " + std::to_string(most) +
                " (or 0: every participant), got " + std::to_string(r.quorum));
    }
  }
  // The CRD's int64 (the API server refuses larger integers).
  v.AtMost("spec.rounds.seed", r.seed, uint64_t{std::numeric_limits<int64_t>::max()});
  if (r.mode == "async" && r.asyncBufferSize > std::max(ag.minAgents, ag.replicas)) {
    // Each agent contributes at most one update per global version.
    v.Add("spec.rounds.asyncBufferSize", "must be <= max(spec.agents.minAgents, spec.agents.replicas) = " +
                                             std::to_string(std::max(ag.minAgents, ag.replicas)) +
                                             " in async mode, got " + std::to_string(r.asyncBufferSize));
  }

  const StrategySpec& st = spec.strategy;
  if (st.name == "fedprox" && !(st.proximalMu > 0)) {
    v.Add("spec.strategy.proximalMu",
          "must be > 0 for fedprox (0 is plain fedavg), got " + Validator::Str(st.proximalMu));
  }
  if (st.restrictedStepBelow > 0 && !(st.restrictedStep < 1)) {
    v.Add("spec.strategy.restrictedStepBelow",
          "needs spec.strategy.restrictedStep < 1 (it widens the classes the restricted step acts on), got " +
              Validator::Str(st.restrictedStepBelow) + " with restrictedStep " +
              Validator::Str(st.restrictedStep));
  }
  if (st.globalLearningRate != 1.0 && st.name != "scaffold") {
    v.Add("spec.strategy.globalLearningRate",
          "only scaffold takes a global step size (fedadam, fedyogi and fedadagrad have "
          "serverLearningRate; the others step by the mean update), got " +
              Validator::Str(st.globalLearningRate) + " with " + Quote(st.name));
  }
  if (const DifferentialPrivacySpec& dp = spec.privacy.differentialPrivacy; dp.enabled) {
    const std::string p = "spec.privacy.differentialPrivacy";
    if (dp.mode == "distributed" && !spec.privacy.secureAggregation.enabled) {
      v.Add(p + ".mode",
            "distributed needs spec.privacy.secureAggregation.enabled: the agents' noise shares are "
            "complete and hidden only in a masked sum; or use central (the aggregator adds the noise)");
    }
    // The noise is calibrated to a sum of the clipped updates.
    if (st.name != "fedavg" && st.name != "fedprox") {
      v.Add(p, "needs spec.strategy.name fedavg or fedprox (a mean of the updates), got " + Quote(st.name));
    }
    if (spec.adapter.aggregation == "product") {
      v.Add(p, "needs spec.adapter.aggregation factors or frozen-a (product re-factors the updates)");
    }
    if (spec.rounds.mode == "async") v.Add(p, "needs spec.rounds.mode sync");
  }
  {
    // Field rules hold whether or not it is enabled (as in the CRD).
    const SecureAggregationSpec& sa = spec.privacy.secureAggregation;
    const std::string p = "spec.privacy.secureAggregation";
    if (sa.threshold == 1)
      v.Add(p + ".threshold", "must be 0 (default) or >= 2: one share must not reveal a secret");
    if (sa.neighbours > 0 && sa.threshold > sa.neighbours) {
      v.Add(p + ".threshold", "must be at most neighbours (" + std::to_string(sa.neighbours) + ")");
    }
    if (sa.neighbours > 0 && sa.threshold > 0 && 2 * sa.threshold <= sa.neighbours) {
      v.Add(p + ".threshold",
            "must be above neighbours / 2, so that a lying aggregator cannot collect both "
            "secrets of an agent");
    }
  }
  if (const SecureAggregationSpec& sa = spec.privacy.secureAggregation; sa.enabled) {
    const std::string p = "spec.privacy.secureAggregation";
    static const std::vector<std::string> kLinear = {"fedavg",  "fedprox", "fedavgm",
                                                     "fedadam", "fedyogi", "fedadagrad"};
    if (std::find(kLinear.begin(), kLinear.end(), st.name) == kLinear.end()) {
      v.Add(p,
            "gives the aggregator only the sum of the updates; spec.strategy.name " + Quote(st.name) +
                " needs each agent's update (use fedavg, fedprox, fedavgm, fedadam, fedyogi or fedadagrad)");
    }
    if (spec.adapter.aggregation == "product") {
      v.Add(p, "needs spec.adapter.aggregation factors or frozen-a (product re-factors each agent's update)");
    }
    if (spec.rounds.mode == "async") v.Add(p, "needs spec.rounds.mode sync");
  }
  if (st.name == "scaffold") {
    // The aggregator derives each agent's control-variate change from its update
    // (aggregator/src/strategy.cpp): the update must arrive as trained, in a
    // synchronous round; the agents' step correction exists for the BERT classifier.
    if (spec.rounds.mode == "async") v.Add("spec.strategy.name", "scaffold needs spec.rounds.mode sync");
    if (st.clipNorm > 0 || st.maxUpdateNorm > 0) {
      v.Add("spec.strategy.name",
            "scaffold does not compose with spec.strategy.clipNorm or maxUpdateNorm (a clipped update "
            "breaks the control variates): set both to 0");
    }
    if (spec.model.family != "bert" || spec.model.task != "sequence-classification") {
      v.Add("spec.strategy.name",
            "scaffold is implemented for model.family bert with task sequence-classification only, got " +
                Quote(spec.model.family + "/" + spec.model.task));
    }
  }
  if (st.name == "krum" || st.name == "multi-krum") {
    // Krum's guarantee needs n > 2f + 2 updates per round.
    const int most = std::max(ag.minAgents, ag.replicas);
    if (st.byzantineClients >= 0 && 2 * st.byzantineClients + 3 > most) {
      v.Add("spec.strategy.byzantineClients",
            "krum needs max(spec.agents.minAgents, spec.agents.replicas) >= 2f + 3 = " +
                std::to_string(2 * st.byzantineClients + 3) + ", got " + std::to_string(most));
    }
    if (st.name == "multi-krum" && st.multiKrumM > most) {
      v.Add("spec.strategy.multiKrumM",
            "must be <= max(spec.agents.minAgents, spec.agents.replicas) = " + std::to_string(most) +
                " (or 0: n - f), got " + std::to_string(st.multiKrumM));
    }
  }
  if ((st.name == "median" || st.name == "trimmed-mean" || st.name == "krum" || st.name == "multi-krum") &&
      ag.maxAgents > st.maxBufferedUpdates) {
    v.Add("spec.strategy.maxBufferedUpdates",
          st.name + " buffers every update: must be >= spec.agents.maxAgents (" +
              std::to_string(ag.maxAgents) + "), got " + std::to_string(st.maxBufferedUpdates));
  }

  const CompressionSpec& c = spec.compression;
  if (c.topKFraction > 0 && c.topKFraction < kMinTopkFraction) {
    // kMinTopkFraction spelled as people write it (to_chars would say 1e-04).
    static_assert(kMinTopkFraction == 1e-4);
    v.Add("spec.compression.topKFraction",
          "must be 0 (off) or in [0.0001, 1], got " + Validator::Str(c.topKFraction));
  }
  if (c.stochasticRounding && c.codec != "int8" && c.codec != "int4") {
    v.Add("spec.compression.stochasticRounding",
          "needs a blockwise codec (int8, int4), got codec " + Quote(c.codec));
  }

  if (!v.errors.empty()) return InvalidArgumentError(Join(v.errors, "; "));
  return OkStatus();
}

StatusOr<JobSpec> ParseJobSpec(const std::string& yaml_text) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError("manifest is not valid YAML or JSON: line " +
                                std::to_string(e.mark.line + 1) + ", column " +
                                std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
  if (!root.IsMap()) {
    return InvalidArgumentError("manifest must be an object with apiVersion, kind, metadata and spec, got " +
                                Describe(root));
  }
  JobSpec job;
  Reader r;
  try {
    // status is the controller's; tolerated so a manifest read back from the
    // API server parses.
    r.CheckKeys(root, "", {"apiVersion", "kind", "metadata", "spec", "status"});
    r.String(root, "", "apiVersion", &job.apiVersion);
    r.String(root, "", "kind", &job.kind);
    // Check identity first: a manifest of another kind gets one clear error,
    // not a list of unknown fields.
    if (job.apiVersion != kApiVersion || job.kind != kKind) {
      std::vector<std::string> errs;
      if (job.apiVersion != kApiVersion) {
        errs.push_back(std::string("apiVersion: must be ") + kApiVersion + ", got " + Quote(job.apiVersion));
      }
      if (job.kind != kKind)
        errs.push_back(std::string("kind: must be ") + kKind + ", got " + Quote(job.kind));
      return InvalidArgumentError(Join(errs, "; "));
    }
    YAML::Node meta;
    // metadata carries many server-set fields (uid, labels, managedFields...):
    // only name and namespace matter here, the rest is ignored.
    if (r.Object(root, "", "metadata", &meta)) {
      r.String(meta, "metadata", "name", &job.name);
      r.String(meta, "metadata", "namespace", &job.namespace_);
      if (job.namespace_.empty()) job.namespace_ = "default";
    }
    YAML::Node spec;
    if (r.Object(root, "", "spec", &spec)) {
      ReadSpec(r, spec, &job);
    } else if (r.errors.empty()) {
      r.Error("spec", "required");
    }
  } catch (const YAML::Exception& e) {
    r.Error("manifest", e.what());
  }
  if (!r.errors.empty()) return InvalidArgumentError(Join(r.errors, "; "));
  FEDGE_RETURN_IF_ERROR(ValidateJobSpec(job));
  return job;
}

StatusOr<JobSpec> LoadJobSpec(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot read manifest " + path + ": " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  auto spec = ParseJobSpec(ss.str());
  if (!spec.ok()) return spec.status().WithContext(path);
  return spec;
}

std::string JobSpecToYaml(const JobSpec& spec) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "apiVersion" << YAML::Value << spec.apiVersion;
  out << YAML::Key << "kind" << YAML::Value << spec.kind;
  out << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "name" << YAML::Value << spec.name;
  out << YAML::Key << "namespace" << YAML::Value << spec.namespace_;
  out << YAML::EndMap;
  out << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;

  // Every stored row in table order; objects open and close as the paths change.
  JobSpec& fields = const_cast<JobSpec&>(spec);  // FieldRef is read here, never written
  std::vector<std::string> open = {"spec"};      // the objects entered, outermost first
  for (const JobSpecField& f : JobSpecFields()) {
    if (f.ref == nullptr || !IsChecked(spec, f.path)) continue;
    std::vector<std::string> parts;
    std::stringstream ss{std::string(f.path)};
    for (std::string part; std::getline(ss, part, '.');) parts.push_back(part);
    const std::string key = parts.back();
    parts.pop_back();
    size_t common = 0;
    while (common < open.size() && common < parts.size() && open[common] == parts[common]) ++common;
    for (; open.size() > common; open.pop_back()) out << YAML::EndMap;
    for (size_t i = common; i < parts.size(); ++i) {
      out << YAML::Key << parts[i] << YAML::Value << YAML::BeginMap;
      open.push_back(parts[i]);
    }
    out << YAML::Key << key << YAML::Value;
    std::visit(
        [&out](auto* p) {
          using T = std::remove_pointer_t<decltype(p)>;
          if constexpr (std::is_same_v<T, std::string>) {
            out << YAML::DoubleQuoted << *p;
          } else if constexpr (std::is_same_v<T, bool>) {
            out << YAML::TrueFalseBool << *p;
          } else if constexpr (std::is_same_v<T, double>) {
            out << FormatDouble(*p);
          } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
            out << YAML::Flow << YAML::BeginSeq;
            for (const auto& s : *p) out << YAML::DoubleQuoted << s;
            out << YAML::EndSeq;
          } else if constexpr (std::is_same_v<T, std::map<std::string, std::string>>) {
            out << YAML::Flow << YAML::BeginMap;
            for (const auto& [k, v] : *p)
              out << YAML::Key << YAML::DoubleQuoted << k << YAML::Value << YAML::DoubleQuoted << v;
            out << YAML::EndMap;
          } else {
            out << *p;
          }
        },
        f.ref(fields));
  }
  for (; !open.empty(); open.pop_back()) out << YAML::EndMap;  // ... spec
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace fedge
