// FederatedTrainingJob parsing: YAML/JSON → JobSpec with defaults, strict
// field checking (unknown fields under spec are errors, like
// `kubectl --validate=strict`), type checks and semantic validation. Every
// error names the field by its path, shows the bad value and says what is
// allowed; all errors of a manifest are reported at once, joined by "; ".
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
#include <regex>
#include <set>
#include <sstream>
#include <string_view>

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

constexpr int64_t kMaxTolerationSeconds = 30 * 24 * 3600;

// spec.aggregator and spec.agents.{tolerationSeconds,resources} are read only by
// fedge-operator (from the object, operator/controller/src/desired.cpp); `fedge run`
// ignores them and JobSpec does not carry them. They are checked here against the
// CRD's bounds so that a manifest the cluster accepts parses, and one it refuses
// does not.
void ReadOperatorOnly(Reader& r, const YAML::Node& aggregator) {
  const std::string p = "spec.aggregator";
  r.CheckKeys(aggregator, p, {"checkpoint", "resources"});
  YAML::Node cp;
  if (r.Object(aggregator, p, "checkpoint", &cp)) {
    const std::string pc = p + ".checkpoint";
    r.CheckKeys(cp, pc, {"enabled", "claimName", "storageClassName", "size"});
    bool enabled = true;
    r.Bool(cp, pc, "enabled", &enabled);
    for (const char* key : {"claimName", "storageClassName"}) {
      std::string name;
      r.String(cp, pc, key, &name);
      r.MaxChars(pc + "." + key, name, 253);
    }
    std::string size = "1Gi";
    r.String(cp, pc, "size", &size);
    static const std::regex kQuantity("^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$");
    if (!std::regex_match(size, kQuantity)) {
      r.Error(pc + ".size", "must be a size like 1Gi, 500Mi or 2G, got " + Quote(size));
    }
  }
  YAML::Node resources;
  r.Object(aggregator, p, "resources", &resources);  // a container's requests and limits, as in a Pod
}

void ReadSpec(Reader& r, const YAML::Node& spec, JobSpec* job) {
  const std::string s = "spec";
  r.CheckKeys(spec, s,
              {"model", "adapter", "data", "agents", "rounds", "strategy", "compression", "privacy",
               "runPolicy", "serving", "feedback", "aggregator"});
  YAML::Node n;
  if (r.Object(spec, s, "model", &n)) {
    const std::string p = "spec.model";
    r.CheckKeys(n, p, {"path", "family", "task", "labels", "maxSeqLen"});
    r.String(n, p, "path", &job->model.path);
    r.String(n, p, "family", &job->model.family);
    r.String(n, p, "task", &job->model.task);
    r.StringList(n, p, "labels", &job->model.labels);
    r.Integer(n, p, "maxSeqLen", &job->model.maxSeqLen);
  }
  if (r.Object(spec, s, "adapter", &n)) {
    const std::string p = "spec.adapter";
    r.CheckKeys(n, p, {"rank", "alpha", "dropout", "targetModules", "aggregation"});
    r.Integer(n, p, "rank", &job->adapter.rank);
    r.Double(n, p, "alpha", &job->adapter.alpha);
    r.Double(n, p, "dropout", &job->adapter.dropout);
    r.StringList(n, p, "targetModules", &job->adapter.targetModules);
    r.String(n, p, "aggregation", &job->adapter.aggregation);
  }
  if (r.Object(spec, s, "data", &n)) {
    const std::string p = "spec.data";
    r.CheckKeys(n, p, {"path", "format", "trainFile", "evalFile"});
    r.String(n, p, "path", &job->data.path);
    r.String(n, p, "format", &job->data.format);
    r.String(n, p, "trainFile", &job->data.trainFile);
    r.String(n, p, "evalFile", &job->data.evalFile);
  }
  if (r.Object(spec, s, "agents", &n)) {
    const std::string p = "spec.agents";
    r.CheckKeys(n, p,
                {"nodeSelector", "minAgents", "maxAgents", "replicas", "tolerationSeconds", "resources"});
    r.StringMap(n, p, "nodeSelector", &job->agents.nodeSelector);
    r.Integer(n, p, "minAgents", &job->agents.minAgents);
    r.Integer(n, p, "maxAgents", &job->agents.maxAgents);
    r.Integer(n, p, "replicas", &job->agents.replicas);
    // Operator-only (see ReadOperatorOnly).
    int64_t toleration = 0;
    r.Integer(n, p, "tolerationSeconds", &toleration);
    if (toleration < 0 || toleration > kMaxTolerationSeconds) {
      r.Error(p + ".tolerationSeconds", "must be in [0, " + std::to_string(kMaxTolerationSeconds) +
                                            "] (30 days), got " + std::to_string(toleration));
    }
    YAML::Node resources;
    r.Object(n, p, "resources", &resources);  // a container's requests and limits, as in a Pod
  }
  if (r.Object(spec, s, "rounds", &n)) {
    const std::string p = "spec.rounds";
    r.CheckKeys(n, p,
                {"total", "quorum", "fraction", "timeoutSeconds", "localSteps", "batchSize", "learningRate",
                 "learningRateSchedule", "weightDecay", "maxGradNorm", "seed", "overSelection", "mode",
                 "asyncBufferSize", "stalenessExponent", "maxStaleness"});
    r.Integer(n, p, "total", &job->rounds.total);
    r.Integer(n, p, "quorum", &job->rounds.quorum);
    r.Double(n, p, "fraction", &job->rounds.fraction);
    r.Integer(n, p, "timeoutSeconds", &job->rounds.timeoutSeconds);
    r.Integer(n, p, "localSteps", &job->rounds.localSteps);
    r.Integer(n, p, "batchSize", &job->rounds.batchSize);
    r.Double(n, p, "learningRate", &job->rounds.learningRate);
    r.String(n, p, "learningRateSchedule", &job->rounds.learningRateSchedule);
    r.Double(n, p, "weightDecay", &job->rounds.weightDecay);
    r.Double(n, p, "maxGradNorm", &job->rounds.maxGradNorm);
    r.Integer(n, p, "seed", &job->rounds.seed);
    r.Double(n, p, "overSelection", &job->rounds.overSelection);
    r.String(n, p, "mode", &job->rounds.mode);
    r.Integer(n, p, "asyncBufferSize", &job->rounds.asyncBufferSize);
    r.Double(n, p, "stalenessExponent", &job->rounds.stalenessExponent);
    r.Integer(n, p, "maxStaleness", &job->rounds.maxStaleness);
  }
  if (r.Object(spec, s, "strategy", &n)) {
    const std::string p = "spec.strategy";
    r.CheckKeys(n, p,
                {"name", "proximalMu", "serverLearningRate", "beta1", "beta2", "tau", "serverMomentum",
                 "trimFraction", "byzantineClients", "multiKrumM", "maxBufferedUpdates", "clipNorm",
                 "maxUpdateNorm"});
    StrategySpec& st = job->strategy;
    r.String(n, p, "name", &st.name);
    r.Double(n, p, "proximalMu", &st.proximalMu);
    r.Double(n, p, "serverLearningRate", &st.serverLearningRate);
    r.Double(n, p, "beta1", &st.beta1);
    r.Double(n, p, "beta2", &st.beta2);
    r.Double(n, p, "tau", &st.tau);
    r.Double(n, p, "serverMomentum", &st.serverMomentum);
    r.Double(n, p, "trimFraction", &st.trimFraction);
    r.Integer(n, p, "byzantineClients", &st.byzantineClients);
    r.Integer(n, p, "multiKrumM", &st.multiKrumM);
    r.Integer(n, p, "maxBufferedUpdates", &st.maxBufferedUpdates);
    r.Double(n, p, "clipNorm", &st.clipNorm);
    r.Double(n, p, "maxUpdateNorm", &st.maxUpdateNorm);
  }
  if (r.Object(spec, s, "compression", &n)) {
    const std::string p = "spec.compression";
    r.CheckKeys(n, p, {"codec", "blockSize", "zstd", "topKFraction", "errorFeedback", "stochasticRounding"});
    r.String(n, p, "codec", &job->compression.codec);
    r.Integer(n, p, "blockSize", &job->compression.blockSize);
    r.Bool(n, p, "zstd", &job->compression.zstd);
    r.Double(n, p, "topKFraction", &job->compression.topKFraction);
    r.Bool(n, p, "errorFeedback", &job->compression.errorFeedback);
    r.Bool(n, p, "stochasticRounding", &job->compression.stochasticRounding);
  }
  if (r.Object(spec, s, "privacy", &n)) {
    const std::string p = "spec.privacy";
    r.CheckKeys(n, p, {"tls", "differentialPrivacy", "secureAggregation"});
    r.Bool(n, p, "tls", &job->privacy.tls);
    YAML::Node d;
    if (r.Object(n, p, "differentialPrivacy", &d)) {
      const std::string dp = p + ".differentialPrivacy";
      DifferentialPrivacySpec& out = job->privacy.differentialPrivacy;
      out.enabled = true;
      r.CheckKeys(d, dp, {"mode", "clipNorm", "noiseMultiplier", "targetEpsilon", "delta"});
      r.String(d, dp, "mode", &out.mode);
      r.Double(d, dp, "clipNorm", &out.clipNorm);
      r.Double(d, dp, "noiseMultiplier", &out.noiseMultiplier);
      r.Double(d, dp, "targetEpsilon", &out.targetEpsilon);
      r.Double(d, dp, "delta", &out.delta);
    }
    YAML::Node sa;
    if (r.Object(n, p, "secureAggregation", &sa)) {
      const std::string sp = p + ".secureAggregation";
      SecureAggregationSpec& out = job->privacy.secureAggregation;
      r.CheckKeys(sa, sp, {"enabled", "threshold", "neighbours"});
      r.Bool(sa, sp, "enabled", &out.enabled);
      r.Integer(sa, sp, "threshold", &out.threshold);
      r.Integer(sa, sp, "neighbours", &out.neighbours);
    }
  }
  if (r.Object(spec, s, "runPolicy", &n)) {
    const std::string p = "spec.runPolicy";
    r.CheckKeys(
        n, p,
        {"backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "suspend", "cleanPodPolicy"});
    r.Integer(n, p, "backoffLimit", &job->runPolicy.backoffLimit);
    r.Integer(n, p, "activeDeadlineSeconds", &job->runPolicy.activeDeadlineSeconds);
    r.Integer(n, p, "ttlSecondsAfterFinished", &job->runPolicy.ttlSecondsAfterFinished);
    r.Bool(n, p, "suspend", &job->runPolicy.suspend);
    r.String(n, p, "cleanPodPolicy", &job->runPolicy.cleanPodPolicy);
  }
  if (r.Object(spec, s, "serving", &n)) {
    const std::string p = "spec.serving";
    r.CheckKeys(n, p, {"enabled", "port"});
    r.Bool(n, p, "enabled", &job->serving.enabled);
    r.Integer(n, p, "port", &job->serving.port);
  }
  if (r.Object(spec, s, "feedback", &n)) {
    const std::string p = "spec.feedback";
    r.CheckKeys(n, p, {"enabled", "maxExamples", "weight"});
    r.Bool(n, p, "enabled", &job->feedback.enabled);
    r.Integer(n, p, "maxExamples", &job->feedback.maxExamples);
    r.Double(n, p, "weight", &job->feedback.weight);
  }
  if (r.Object(spec, s, "aggregator", &n)) ReadOperatorOnly(r, n);
}

// ---- validation ----

class Validator {
 public:
  std::vector<std::string> errors;

  template <typename T>
  void AtLeast(const std::string& path, T value, T min) {
    if (value < min) errors.push_back(path + ": must be >= " + Str(min) + ", got " + Str(value));
  }
  template <typename T>
  void AtMost(const std::string& path, T value, T max) {
    if (value > max) errors.push_back(path + ": must be <= " + Str(max) + ", got " + Str(value));
  }
  void Positive(const std::string& path, double value) {
    if (!(value > 0)) errors.push_back(path + ": must be > 0, got " + Str(value));
  }
  void OneOf(const std::string& path, const std::string& value, const std::vector<std::string>& allowed) {
    if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
      errors.push_back(path + ": must be one of " + Join(allowed, ", ") + "; got " + Quote(value));
    }
  }
  void Required(const std::string& path, const std::string& value, const std::string& what) {
    if (value.empty()) errors.push_back(path + ": required (" + what + ")");
  }
  void Add(const std::string& path, const std::string& msg) { errors.push_back(path + ": " + msg); }
  template <typename T>
  void Between(const std::string& path, T value, T min, T max) {
    AtLeast(path, value, min);
    AtMost(path, value, max);
  }
  // The CRD's minLength/maxLength, in code points (strings are valid UTF-8 here).
  void Length(const std::string& path, const std::string& value, size_t min, size_t max) {
    const size_t n = CodePoints(value);
    if (n < min && min == 1) {
      errors.push_back(path + ": must not be empty");
    } else if (n < min || n > max) {
      errors.push_back(path + ": must be " + std::to_string(min) + " to " + std::to_string(max) +
                       " characters long, got " + std::to_string(n));
    }
  }

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

// Bounds the CRD states too (crds/fedge.io_federatedtrainingjobs.yaml; the table in
// tests/cluster/spec_boundaries.json keeps both sides equal).
constexpr size_t kMaxJobNameLength = 40;
constexpr size_t kMaxPathLength = 4096;
constexpr size_t kMaxLabels = 4096;

const std::vector<std::string> kFamilies = {"bert", "llama"};
const std::vector<std::string> kBertTasks = {"sequence-classification", "token-classification", "embedding"};
const std::vector<std::string> kLlamaTasks = {"causal-lm"};
const std::vector<std::string> kAggregations = {"factors", "frozen-a", "product"};
const std::vector<std::string> kStrategies = {"fedavg",  "fedprox",    "fedavgm", "fedadam",
                                              "fedyogi", "fedadagrad", "median",  "trimmed-mean",
                                              "krum",    "multi-krum"};
const std::vector<std::string> kCodecs = {"fp32", "fp16", "bf16", "int8", "int4"};
const std::vector<std::string> kCleanPodPolicies = {"All", "Running", "None"};
const std::vector<std::string> kDataFormats = {"jsonl"};

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

  const ModelSpec& m = spec.model;
  v.Required("spec.model.path", m.path, "a Hugging Face model directory");
  v.Length("spec.model.path", m.path, 0, kMaxPathLength);
  v.OneOf("spec.model.family", m.family, kFamilies);
  if (m.family == "bert") {
    v.OneOf("spec.model.task", m.task, kBertTasks);
  } else if (m.family == "llama") {
    v.OneOf("spec.model.task", m.task, kLlamaTasks);
  }
  // Labels are class names whatever the task: unique (the CRD's list-type set) and
  // non-empty.
  const std::set<std::string> unique(m.labels.begin(), m.labels.end());
  if ((m.task == "sequence-classification" || m.task == "token-classification") && unique.size() < 2) {
    v.Add("spec.model.labels",
          "task " + m.task + " needs at least 2 unique labels, got " + std::to_string(unique.size()));
  } else if (unique.size() != m.labels.size()) {
    v.Add("spec.model.labels", "labels must be unique");
  }
  if (m.labels.size() > kMaxLabels) {
    v.Add("spec.model.labels", "must have at most " + std::to_string(kMaxLabels) + " labels, got " +
                                   std::to_string(m.labels.size()));
  }
  for (size_t i = 0; i < m.labels.size(); ++i) {
    v.Length("spec.model.labels[" + std::to_string(i) + "]", m.labels[i], 1, 256);
  }
  // 2: [CLS] and [SEP] (the agents' own lower limit). The model's
  // max_position_embeddings, checked when an agent loads it, is the real upper
  // limit; 32768 covers the long-context Llama-family models.
  v.Between("spec.model.maxSeqLen", m.maxSeqLen, 2, 32768);

  const AdapterSpec& a = spec.adapter;
  v.Between("spec.adapter.rank", a.rank, 1, 256);
  v.Positive("spec.adapter.alpha", a.alpha);
  if (a.dropout < 0 || a.dropout >= 1) {
    v.Add("spec.adapter.dropout", "must be in [0, 1), got " + Validator::Str(a.dropout));
  }
  if (a.targetModules.empty()) v.Add("spec.adapter.targetModules", "must name at least one module");
  if (a.targetModules.size() > 64) {
    v.Add("spec.adapter.targetModules",
          "must name at most 64 modules, got " + std::to_string(a.targetModules.size()));
  }
  for (size_t i = 0; i < a.targetModules.size(); ++i) {
    v.Length("spec.adapter.targetModules[" + std::to_string(i) + "]", a.targetModules[i], 1, 128);
  }
  v.OneOf("spec.adapter.aggregation", a.aggregation, kAggregations);
  // Agent-only until now (agent/src/runtime/agent.cpp): refused here so that
  // `fedge run` and the operator refuse the job before any pod exists.
  if (m.family == "llama" && a.aggregation == "frozen-a") {
    v.Add("spec.adapter.aggregation",
          "frozen-a is not supported for llama models yet; use factors or product");
  }
  // Aggregator-only until now (WrapForLora): product re-factors the FedAvg mean of B·A.
  if (a.aggregation == "product" && spec.strategy.name != "fedavg" && spec.strategy.name != "fedprox") {
    v.Add("spec.adapter.aggregation", "product works with strategy fedavg or fedprox, not " +
                                          Quote(spec.strategy.name) + "; use factors or frozen-a with it");
  }

  const DataSpec& d = spec.data;
  v.Required("spec.data.path", d.path, "the node-local data directory");
  v.Length("spec.data.path", d.path, 0, kMaxPathLength);
  v.OneOf("spec.data.format", d.format, kDataFormats);
  v.Required("spec.data.trainFile", d.trainFile, "file name of the training set inside spec.data.path");
  v.Length("spec.data.trainFile", d.trainFile, 0, 1024);
  // Empty would name spec.data.path itself, which no agent can read as a file.
  v.Required("spec.data.evalFile", d.evalFile, "file name of the evaluation set inside spec.data.path");
  v.Length("spec.data.evalFile", d.evalFile, 0, 1024);

  const AgentsSpec& ag = spec.agents;
  v.Between("spec.agents.minAgents", ag.minAgents, 1, 10000);
  v.Between("spec.agents.maxAgents", ag.maxAgents, 0, 10000);
  v.Between("spec.agents.replicas", ag.replicas, 0, 1000);
  if (ag.nodeSelector.size() > 32) {
    v.Add("spec.agents.nodeSelector",
          "must have at most 32 labels, got " + std::to_string(ag.nodeSelector.size()));
  }
  for (const auto& [key, value] : ag.nodeSelector) {
    v.Length("spec.agents.nodeSelector." + key, value, 0, 63);  // a label value
  }
  if (ag.maxAgents > 0 && ag.maxAgents < ag.minAgents) {
    v.Add("spec.agents.maxAgents", "must be 0 (every matching node) or >= spec.agents.minAgents (" +
                                       std::to_string(ag.minAgents) + "), got " +
                                       std::to_string(ag.maxAgents));
  }

  const RoundsSpec& r = spec.rounds;
  v.Between("spec.rounds.total", r.total, 1, 100000);
  v.Between("spec.rounds.quorum", r.quorum, 0, 10000);
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
  if (!(r.fraction > 0 && r.fraction <= 1)) {
    v.Add("spec.rounds.fraction", "must be in (0, 1], got " + Validator::Str(r.fraction));
  }
  v.Between("spec.rounds.timeoutSeconds", r.timeoutSeconds, 1, 86400);
  v.Between("spec.rounds.localSteps", r.localSteps, 1, 1000000);
  v.Between("spec.rounds.batchSize", r.batchSize, 1, 65536);
  v.Positive("spec.rounds.learningRate", r.learningRate);
  v.AtMost("spec.rounds.learningRate", r.learningRate, 10.0);
  v.OneOf("spec.rounds.learningRateSchedule", r.learningRateSchedule, {"constant", "linear", "cosine"});
  v.Between("spec.rounds.weightDecay", r.weightDecay, 0.0, 1.0);
  v.AtLeast("spec.rounds.maxGradNorm", r.maxGradNorm, 0.0);
  // The CRD's int64 (the API server refuses larger integers).
  v.AtMost("spec.rounds.seed", r.seed, uint64_t{std::numeric_limits<int64_t>::max()});
  if (!(r.overSelection >= 1 && r.overSelection <= 10)) {
    v.Add("spec.rounds.overSelection", "must be in [1, 10], got " + Validator::Str(r.overSelection));
  }
  v.OneOf("spec.rounds.mode", r.mode, {"sync", "async"});
  v.Between("spec.rounds.asyncBufferSize", r.asyncBufferSize, 1, 100000);
  if (r.mode == "async" && r.asyncBufferSize > std::max(ag.minAgents, ag.replicas)) {
    // Each agent contributes at most one update per global version.
    v.Add("spec.rounds.asyncBufferSize", "must be <= max(spec.agents.minAgents, spec.agents.replicas) = " +
                                             std::to_string(std::max(ag.minAgents, ag.replicas)) +
                                             " in async mode, got " + std::to_string(r.asyncBufferSize));
  }
  v.Between("spec.rounds.stalenessExponent", r.stalenessExponent, 0.0, 10.0);
  v.AtLeast("spec.rounds.maxStaleness", r.maxStaleness, 0);

  const StrategySpec& st = spec.strategy;
  v.OneOf("spec.strategy.name", st.name, kStrategies);
  v.AtLeast("spec.strategy.proximalMu", st.proximalMu, 0.0);
  if (st.name == "fedprox" && !(st.proximalMu > 0)) {
    v.Add("spec.strategy.proximalMu",
          "must be > 0 for fedprox (0 is plain fedavg), got " + Validator::Str(st.proximalMu));
  }
  // Optimizer and robust parameters are checked whatever the strategy, so a
  // typo is caught before someone switches strategies.
  v.Positive("spec.strategy.serverLearningRate", st.serverLearningRate);
  if (!(st.serverMomentum >= 0 && st.serverMomentum < 1)) {
    v.Add("spec.strategy.serverMomentum", "must be in [0, 1), got " + Validator::Str(st.serverMomentum));
  }
  if (!(st.beta1 >= 0 && st.beta1 < 1)) {
    v.Add("spec.strategy.beta1", "must be in [0, 1), got " + Validator::Str(st.beta1));
  }
  if (!(st.beta2 >= 0 && st.beta2 < 1)) {
    v.Add("spec.strategy.beta2", "must be in [0, 1), got " + Validator::Str(st.beta2));
  }
  v.Positive("spec.strategy.tau", st.tau);
  if (!(st.trimFraction >= 0 && st.trimFraction < 0.5)) {
    v.Add("spec.strategy.trimFraction", "must be in [0, 0.5), got " + Validator::Str(st.trimFraction));
  }
  v.AtLeast("spec.strategy.byzantineClients", st.byzantineClients, 0);
  v.AtLeast("spec.strategy.multiKrumM", st.multiKrumM, 0);
  v.AtLeast("spec.strategy.maxBufferedUpdates", st.maxBufferedUpdates, 1);
  v.AtLeast("spec.strategy.clipNorm", st.clipNorm, 0.0);
  v.AtLeast("spec.strategy.maxUpdateNorm", st.maxUpdateNorm, 0.0);
  if (const DifferentialPrivacySpec& dp = spec.privacy.differentialPrivacy; dp.enabled) {
    const std::string p = "spec.privacy.differentialPrivacy";
    v.OneOf(p + ".mode", dp.mode, {"central", "distributed"});
    if (dp.mode == "distributed" && !spec.privacy.secureAggregation.enabled) {
      v.Add(p + ".mode",
            "distributed needs spec.privacy.secureAggregation.enabled: the agents' noise shares are "
            "complete and hidden only in a masked sum; or use central (the aggregator adds the noise)");
    }
    v.Positive(p + ".clipNorm", dp.clipNorm);
    v.Positive(p + ".noiseMultiplier", dp.noiseMultiplier);
    v.AtLeast(p + ".targetEpsilon", dp.targetEpsilon, 0.0);
    if (!(dp.delta > 0 && dp.delta < 1))
      v.Add(p + ".delta", "must be in (0, 1), got " + Validator::Str(dp.delta));
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
    v.AtLeast(p + ".threshold", sa.threshold, 0);
    v.AtLeast(p + ".neighbours", sa.neighbours, 0);
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
  v.OneOf("spec.compression.codec", c.codec, kCodecs);
  v.AtLeast("spec.compression.blockSize", c.blockSize, 1);
  // The codec library's own limit (EncodeOptions::block_size): a larger value
  // would pass here and fail every upload.
  v.AtMost("spec.compression.blockSize", c.blockSize, 65536);
  if (!(c.topKFraction == 0 || (c.topKFraction >= kMinTopkFraction && c.topKFraction <= 1))) {
    // kMinTopkFraction spelled as people write it (to_chars would say 1e-04).
    static_assert(kMinTopkFraction == 1e-4);
    v.Add("spec.compression.topKFraction",
          "must be 0 (off) or in [0.0001, 1], got " + Validator::Str(c.topKFraction));
  }
  if (c.stochasticRounding && c.codec != "int8" && c.codec != "int4") {
    v.Add("spec.compression.stochasticRounding",
          "needs a blockwise codec (int8, int4), got codec " + Quote(c.codec));
  }

  const RunPolicySpec& rp = spec.runPolicy;
  v.Between("spec.runPolicy.backoffLimit", rp.backoffLimit, 0, 1000);
  v.AtLeast("spec.runPolicy.activeDeadlineSeconds", rp.activeDeadlineSeconds, int64_t{0});
  v.AtLeast("spec.runPolicy.ttlSecondsAfterFinished", rp.ttlSecondsAfterFinished, int64_t{-1});
  v.OneOf("spec.runPolicy.cleanPodPolicy", rp.cleanPodPolicy, kCleanPodPolicies);

  v.AtLeast("spec.serving.port", spec.serving.port, 1);
  v.AtMost("spec.serving.port", spec.serving.port, 65535);

  v.Between("spec.feedback.maxExamples", spec.feedback.maxExamples, 1, 100000);
  v.Between("spec.feedback.weight", spec.feedback.weight, 0.01, 0.9);

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
  auto dbl = [](double v) { return FormatDouble(v); };
  auto strings = [&out](const std::vector<std::string>& items) {
    out << YAML::Flow << YAML::BeginSeq;
    for (const auto& s : items) out << YAML::DoubleQuoted << s;
    out << YAML::EndSeq;
  };
  out << YAML::BeginMap;
  out << YAML::Key << "apiVersion" << YAML::Value << spec.apiVersion;
  out << YAML::Key << "kind" << YAML::Value << spec.kind;
  out << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "name" << YAML::Value << spec.name;
  out << YAML::Key << "namespace" << YAML::Value << spec.namespace_;
  out << YAML::EndMap;
  out << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;

  out << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "path" << YAML::Value << YAML::DoubleQuoted << spec.model.path;
  out << YAML::Key << "family" << YAML::Value << spec.model.family;
  out << YAML::Key << "task" << YAML::Value << spec.model.task;
  out << YAML::Key << "labels" << YAML::Value;
  strings(spec.model.labels);
  out << YAML::Key << "maxSeqLen" << YAML::Value << spec.model.maxSeqLen;
  out << YAML::EndMap;

  out << YAML::Key << "adapter" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "rank" << YAML::Value << spec.adapter.rank;
  out << YAML::Key << "alpha" << YAML::Value << dbl(spec.adapter.alpha);
  out << YAML::Key << "dropout" << YAML::Value << dbl(spec.adapter.dropout);
  out << YAML::Key << "targetModules" << YAML::Value;
  strings(spec.adapter.targetModules);
  out << YAML::Key << "aggregation" << YAML::Value << spec.adapter.aggregation;
  out << YAML::EndMap;

  out << YAML::Key << "data" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "path" << YAML::Value << YAML::DoubleQuoted << spec.data.path;
  out << YAML::Key << "format" << YAML::Value << spec.data.format;
  out << YAML::Key << "trainFile" << YAML::Value << YAML::DoubleQuoted << spec.data.trainFile;
  out << YAML::Key << "evalFile" << YAML::Value << YAML::DoubleQuoted << spec.data.evalFile;
  out << YAML::EndMap;

  out << YAML::Key << "agents" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "nodeSelector" << YAML::Value << YAML::Flow << YAML::BeginMap;
  for (const auto& [k, val] : spec.agents.nodeSelector) {
    out << YAML::Key << YAML::DoubleQuoted << k << YAML::Value << YAML::DoubleQuoted << val;
  }
  out << YAML::EndMap;
  out << YAML::Key << "minAgents" << YAML::Value << spec.agents.minAgents;
  out << YAML::Key << "maxAgents" << YAML::Value << spec.agents.maxAgents;
  out << YAML::Key << "replicas" << YAML::Value << spec.agents.replicas;
  out << YAML::EndMap;

  const RoundsSpec& r = spec.rounds;
  out << YAML::Key << "rounds" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "total" << YAML::Value << r.total;
  out << YAML::Key << "quorum" << YAML::Value << r.quorum;
  out << YAML::Key << "fraction" << YAML::Value << dbl(r.fraction);
  out << YAML::Key << "timeoutSeconds" << YAML::Value << r.timeoutSeconds;
  out << YAML::Key << "localSteps" << YAML::Value << r.localSteps;
  out << YAML::Key << "batchSize" << YAML::Value << r.batchSize;
  out << YAML::Key << "learningRate" << YAML::Value << dbl(r.learningRate);
  out << YAML::Key << "learningRateSchedule" << YAML::Value << r.learningRateSchedule;
  out << YAML::Key << "weightDecay" << YAML::Value << dbl(r.weightDecay);
  out << YAML::Key << "maxGradNorm" << YAML::Value << dbl(r.maxGradNorm);
  out << YAML::Key << "seed" << YAML::Value << r.seed;
  out << YAML::Key << "overSelection" << YAML::Value << dbl(r.overSelection);
  out << YAML::Key << "mode" << YAML::Value << r.mode;
  out << YAML::Key << "asyncBufferSize" << YAML::Value << r.asyncBufferSize;
  out << YAML::Key << "stalenessExponent" << YAML::Value << dbl(r.stalenessExponent);
  out << YAML::Key << "maxStaleness" << YAML::Value << r.maxStaleness;
  out << YAML::EndMap;

  out << YAML::Key << "strategy" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "name" << YAML::Value << spec.strategy.name;
  out << YAML::Key << "proximalMu" << YAML::Value << dbl(spec.strategy.proximalMu);
  out << YAML::Key << "serverLearningRate" << YAML::Value << dbl(spec.strategy.serverLearningRate);
  out << YAML::Key << "beta1" << YAML::Value << dbl(spec.strategy.beta1);
  out << YAML::Key << "beta2" << YAML::Value << dbl(spec.strategy.beta2);
  out << YAML::Key << "tau" << YAML::Value << dbl(spec.strategy.tau);
  out << YAML::Key << "serverMomentum" << YAML::Value << dbl(spec.strategy.serverMomentum);
  out << YAML::Key << "trimFraction" << YAML::Value << dbl(spec.strategy.trimFraction);
  out << YAML::Key << "byzantineClients" << YAML::Value << spec.strategy.byzantineClients;
  out << YAML::Key << "multiKrumM" << YAML::Value << spec.strategy.multiKrumM;
  out << YAML::Key << "maxBufferedUpdates" << YAML::Value << spec.strategy.maxBufferedUpdates;
  out << YAML::Key << "clipNorm" << YAML::Value << dbl(spec.strategy.clipNorm);
  out << YAML::Key << "maxUpdateNorm" << YAML::Value << dbl(spec.strategy.maxUpdateNorm);
  out << YAML::EndMap;

  out << YAML::Key << "compression" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "codec" << YAML::Value << spec.compression.codec;
  out << YAML::Key << "blockSize" << YAML::Value << spec.compression.blockSize;
  out << YAML::Key << "zstd" << YAML::Value << YAML::TrueFalseBool << spec.compression.zstd;
  out << YAML::Key << "topKFraction" << YAML::Value << dbl(spec.compression.topKFraction);
  out << YAML::Key << "errorFeedback" << YAML::Value << YAML::TrueFalseBool << spec.compression.errorFeedback;
  out << YAML::Key << "stochasticRounding" << YAML::Value << YAML::TrueFalseBool
      << spec.compression.stochasticRounding;
  out << YAML::EndMap;

  out << YAML::Key << "privacy" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "tls" << YAML::Value << YAML::TrueFalseBool << spec.privacy.tls;
  if (const DifferentialPrivacySpec& dp = spec.privacy.differentialPrivacy; dp.enabled) {
    out << YAML::Key << "differentialPrivacy" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "mode" << YAML::Value << dp.mode;
    out << YAML::Key << "clipNorm" << YAML::Value << dbl(dp.clipNorm);
    out << YAML::Key << "noiseMultiplier" << YAML::Value << dbl(dp.noiseMultiplier);
    out << YAML::Key << "targetEpsilon" << YAML::Value << dbl(dp.targetEpsilon);
    out << YAML::Key << "delta" << YAML::Value << dbl(dp.delta);
    out << YAML::EndMap;
  }
  if (const SecureAggregationSpec& sa = spec.privacy.secureAggregation; sa.enabled) {
    out << YAML::Key << "secureAggregation" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "enabled" << YAML::Value << YAML::TrueFalseBool << true;
    out << YAML::Key << "threshold" << YAML::Value << sa.threshold;
    out << YAML::Key << "neighbours" << YAML::Value << sa.neighbours;
    out << YAML::EndMap;
  }
  out << YAML::EndMap;

  const RunPolicySpec& rp = spec.runPolicy;
  out << YAML::Key << "runPolicy" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "backoffLimit" << YAML::Value << rp.backoffLimit;
  out << YAML::Key << "activeDeadlineSeconds" << YAML::Value << rp.activeDeadlineSeconds;
  out << YAML::Key << "ttlSecondsAfterFinished" << YAML::Value << rp.ttlSecondsAfterFinished;
  out << YAML::Key << "suspend" << YAML::Value << YAML::TrueFalseBool << rp.suspend;
  out << YAML::Key << "cleanPodPolicy" << YAML::Value << rp.cleanPodPolicy;
  out << YAML::EndMap;

  out << YAML::Key << "serving" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "enabled" << YAML::Value << YAML::TrueFalseBool << spec.serving.enabled;
  out << YAML::Key << "port" << YAML::Value << spec.serving.port;
  out << YAML::EndMap;

  out << YAML::Key << "feedback" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "enabled" << YAML::Value << YAML::TrueFalseBool << spec.feedback.enabled;
  out << YAML::Key << "maxExamples" << YAML::Value << spec.feedback.maxExamples;
  out << YAML::Key << "weight" << YAML::Value << dbl(spec.feedback.weight);
  out << YAML::EndMap;

  out << YAML::EndMap;  // spec
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace fedge
