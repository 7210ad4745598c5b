// The field table (fedge/job_spec_fields.h) against the CRD, field by field, and
// against the parser and the writer it drives. A field added to the CRD and not
// to the table (or the reverse), or a bound, enum or default that differs, fails
// here with the field's path (issue 11: blockSize >= 8 vs >= 1, maxSeqLen [8,
// 8192] vs [2, 32768], dropout <= 1 vs < 1 were such differences).
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

#include "fedge/job_spec.h"
#include "fedge/job_spec_fields.h"

namespace fedge {
namespace {

using Json = nlohmann::json;

std::string SourcePath(const std::string& rel) {
  if (const char* src = std::getenv("FEDGE_SOURCE_DIR")) return std::string(src) + "/" + rel;
  return (std::filesystem::path(__FILE__).parent_path() / "../.." / rel).string();
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The CRD's leaf properties under spec, by dotted path ("spec.model.path").
// An object with `properties` is walked; any other property is a leaf.
void CollectLeaves(const YAML::Node& schema, const std::string& path,
                   std::map<std::string, YAML::Node>* out) {
  if (schema["properties"]) {
    for (const auto& kv : schema["properties"]) {
      CollectLeaves(kv.second, path + "." + kv.first.as<std::string>(), out);
    }
    return;
  }
  (*out)[path] = schema;
}

std::map<std::string, YAML::Node> CrdLeaves() {
  const YAML::Node crd = YAML::LoadFile(SourcePath("crds/fedge.io_federatedtrainingjobs.yaml"));
  const YAML::Node spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
  std::map<std::string, YAML::Node> leaves;
  CollectLeaves(spec, "spec", &leaves);
  return leaves;
}

// The CRD property of the object holding `path` (for its CEL rules).
YAML::Node CrdParent(const std::string& path) {
  const YAML::Node crd = YAML::LoadFile(SourcePath("crds/fedge.io_federatedtrainingjobs.yaml"));
  YAML::Node node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
  std::stringstream ss(path);
  std::vector<std::string> parts;
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  for (size_t i = 0; i + 1 < parts.size(); ++i) node = node["properties"][parts[i]];
  return node;
}

// Bounds the CRD states with a CEL rule instead of its schema (the rule's text
// names the field): exclusive bounds the API server compares wrongly for
// integral values, or that its schema cannot state.
const std::set<std::string> kBoundsByCel = {
    "spec.strategy.trimFraction",                 // maximum 0.5 + rule self < 0.5
    "spec.privacy.differentialPrivacy.clipNorm",  // minimum 0 + rule > 0
    "spec.privacy.differentialPrivacy.noiseMultiplier",
    "spec.privacy.differentialPrivacy.delta",  // [0, 1] + rule (0, 1)
};

// Defaults that differ on purpose, or fields without one.
const std::map<std::string, std::string> kDefaultExceptions = {
    {"spec.model.path", "required"},
    {"spec.data.path", "required"},
    {"spec.model.labels", "none: classification names its own"},
    {"spec.agents.nodeSelector", "none: every node"},
    {"spec.privacy.differentialPrivacy.clipNorm", "required when differentialPrivacy is present"},
    {"spec.privacy.differentialPrivacy.noiseMultiplier", "required when differentialPrivacy is present"},
};

std::string ExpectedType(FieldKind kind) {
  switch (kind) {
    case FieldKind::kString:
      return "string";
    case FieldKind::kInt:
    case FieldKind::kInt64:
    case FieldKind::kUint64:
      return "integer";
    case FieldKind::kDouble:
      return "number";
    case FieldKind::kBool:
      return "boolean";
    case FieldKind::kStringList:
      return "array";
    case FieldKind::kStringMap:
    case FieldKind::kObject:
      return "object";
    case FieldKind::kIntOrPercent:
      return "";  // x-kubernetes-int-or-string: no type
  }
  return "?";
}

std::optional<double> Number(const YAML::Node& n, const char* key) {
  if (!n[key]) return std::nullopt;
  return n[key].as<double>();
}

bool Flag(const YAML::Node& n, const char* key) { return n[key] && n[key].as<bool>(); }

TEST(JobSpecFieldsTest, EveryCrdFieldIsATableRowAndTheReverse) {
  const auto leaves = CrdLeaves();
  ASSERT_GT(leaves.size(), 60u);
  for (const auto& [path, schema] : leaves) {
    EXPECT_NE(FindJobSpecField(path), nullptr) << path << " is in the CRD but not in the field table";
  }
  for (const JobSpecField& f : JobSpecFields()) {
    EXPECT_TRUE(leaves.count(std::string(f.path))) << f.path << " is in the field table but not in the CRD";
  }
}

TEST(JobSpecFieldsTest, TypesBoundsAndEnumsMatchTheCrd) {
  for (const auto& [path, s] : CrdLeaves()) {
    const JobSpecField* f = FindJobSpecField(path);
    if (f == nullptr) continue;  // reported by the test above
    SCOPED_TRACE(path);
    EXPECT_EQ(s["type"] ? s["type"].as<std::string>() : "", ExpectedType(f->kind));
    if (f->kind == FieldKind::kIntOrPercent) {
      // An IntOrString whose CEL rule states both forms and the integer bounds.
      EXPECT_TRUE(Flag(s, "x-kubernetes-int-or-string"));
      const std::string rules = YAML::Dump(s["x-kubernetes-validations"]);
      EXPECT_NE(rules.find("self >= " + std::to_string(static_cast<int>(*f->min))), std::string::npos)
          << rules;
      EXPECT_NE(rules.find("self <= " + std::to_string(static_cast<int>(*f->max))), std::string::npos)
          << rules;
      EXPECT_NE(rules.find("|100)%$"), std::string::npos) << rules;
      continue;
    }
    switch (f->kind) {
      case FieldKind::kInt:
        EXPECT_EQ(s["format"] ? s["format"].as<std::string>() : "", "int32");
        break;
      case FieldKind::kInt64:
      case FieldKind::kUint64:
        EXPECT_EQ(s["format"] ? s["format"].as<std::string>() : "", "int64");
        break;
      case FieldKind::kStringMap:
        EXPECT_TRUE(s["additionalProperties"]) << "a map of strings";
        break;
      case FieldKind::kObject:
        EXPECT_TRUE(Flag(s, "x-kubernetes-preserve-unknown-fields"));
        break;
      default:
        break;
    }
    if (f->kind == FieldKind::kString) {
      EXPECT_EQ(Number(s, "minLength"), f->min);
      EXPECT_EQ(Number(s, "maxLength"), f->max);
      std::vector<std::string> crd_enum;
      if (s["enum"]) crd_enum = s["enum"].as<std::vector<std::string>>();
      EXPECT_EQ(crd_enum, std::vector<std::string>(f->one_of.begin(), f->one_of.end()));
    } else if (f->kind == FieldKind::kStringList) {
      EXPECT_EQ(Number(s, "minItems"), f->min);
      EXPECT_EQ(Number(s, "maxItems"), f->max);
      EXPECT_EQ(Number(s["items"], "minLength"), f->item_min);
      EXPECT_EQ(Number(s["items"], "maxLength"), f->item_max);
    } else if (f->kind == FieldKind::kStringMap) {
      EXPECT_EQ(Number(s, "maxProperties"), f->max);
      EXPECT_EQ(Number(s["additionalProperties"], "maxLength"), f->item_max);
    } else if (kBoundsByCel.count(path)) {
      // The schema's bounds are inclusive; a rule on the field or its object names it.
      EXPECT_EQ(Number(s, "minimum"), f->min);
      EXPECT_EQ(Number(s, "maximum"), f->max);
      std::string rules;
      for (const YAML::Node& holder : {s, CrdParent(path)}) {
        if (holder["x-kubernetes-validations"]) rules += YAML::Dump(holder["x-kubernetes-validations"]);
      }
      const std::string key = path.substr(path.rfind('.') + 1);
      EXPECT_TRUE(rules.find("self <") != std::string::npos || rules.find(key) != std::string::npos)
          << "no CEL rule states the exclusive bound";
    } else {
      EXPECT_EQ(Number(s, "minimum"), f->min);
      EXPECT_EQ(Number(s, "maximum"), f->max);
      EXPECT_EQ(Flag(s, "exclusiveMinimum"), f->exclusive_min);
      EXPECT_EQ(Flag(s, "exclusiveMaximum"), f->exclusive_max);
    }
  }
}

// The CRD's default of each field is JobSpec's (what `fedge run` and the agents
// assume when the manifest leaves it out).
TEST(JobSpecFieldsTest, DefaultsMatchTheCrd) {
  JobSpec defaults;
  for (const auto& [path, s] : CrdLeaves()) {
    const JobSpecField* f = FindJobSpecField(path);
    if (f == nullptr || f->ref == nullptr || kDefaultExceptions.count(path)) continue;
    SCOPED_TRACE(path);
    ASSERT_TRUE(s["default"]) << "the CRD states no default (JobSpec has one)";
    std::visit(
        [&](auto* p) {
          using T = std::remove_pointer_t<decltype(p)>;
          if constexpr (std::is_same_v<T, std::map<std::string, std::string>>) {
            EXPECT_EQ(s["default"].as<T>(), *p);
          } else if constexpr (std::is_same_v<T, double>) {
            EXPECT_DOUBLE_EQ(s["default"].as<double>(), *p);
          } else {
            EXPECT_EQ(s["default"].as<T>(), *p);
          }
        },
        f->ref(defaults));
  }
}

TEST(JobSpecFieldsTest, ChartCopyOfTheCrdIsIdentical) {
  const std::string crd = ReadText(SourcePath("crds/fedge.io_federatedtrainingjobs.yaml"));
  ASSERT_FALSE(crd.empty());
  EXPECT_TRUE(ReadText(SourcePath("helm/fedge/crds/fedge.io_federatedtrainingjobs.yaml")) == crd)
      << "helm/fedge/crds/ differs: copy crds/fedge.io_federatedtrainingjobs.yaml there";
}

Json Base() {
  return Json::parse(R"({"apiVersion": "fedge.io/v1alpha1", "kind": "FederatedTrainingJob",
    "metadata": {"name": "fields"},
    "spec": {"model": {"path": "/m", "labels": ["a", "b"]}, "data": {"path": "/d"},
             "privacy": {"differentialPrivacy": {"clipNorm": 1, "noiseMultiplier": 1}}}})");
}

void Set(Json* manifest, const std::string& path, const Json& value) {
  Json* cur = manifest;
  std::stringstream ss(path);
  for (std::string part; std::getline(ss, part, '.');) cur = &(*cur)[part];
  *cur = value;
}

// Every numeric bound of the table is enforced by ParseJobSpec: a value just
// outside is refused with the field's path (tests/cluster/spec_boundaries.json
// has the values on the bounds, with the other fields they need).
TEST(JobSpecFieldsTest, ParserEnforcesEveryNumericBoundOfTheTable) {
  int probes = 0;
  for (const JobSpecField& f : JobSpecFields()) {
    const bool integer =
        f.kind == FieldKind::kInt || f.kind == FieldKind::kInt64 || f.kind == FieldKind::kUint64;
    if (!integer && f.kind != FieldKind::kDouble) continue;
    const std::string path(f.path);
    auto refused = [&](double value) {
      Json m = Base();
      if (integer) {
        Set(&m, path, static_cast<int64_t>(value));
      } else {
        Set(&m, path, value);
      }
      auto spec = ParseJobSpec(m.dump());
      return !spec.ok() && spec.status().message().find(path + ":") != std::string::npos;
    };
    const double step = integer ? 1 : 1e-6;
    if (f.min) {
      EXPECT_TRUE(refused(f.exclusive_min ? *f.min : *f.min - step)) << path << " below " << *f.min;
      ++probes;
    }
    if (f.max && *f.max < 2147483647) {  // larger: the integer parser's own limit
      EXPECT_TRUE(refused(f.exclusive_max ? *f.max : *f.max + step)) << path << " above " << *f.max;
      ++probes;
    }
  }
  EXPECT_GT(probes, 60);
}

// JobSpecToYaml writes every stored field of the table, and ParseJobSpec reads it back.
TEST(JobSpecFieldsTest, WriterWritesEveryStoredRow) {
  auto spec = ParseJobSpec(Base().dump());
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  const YAML::Node written = YAML::Load(JobSpecToYaml(*spec));
  for (const JobSpecField& f : JobSpecFields()) {
    if (f.ref == nullptr) continue;
    YAML::Node node = written;
    std::stringstream ss{std::string(f.path)};
    for (std::string part; std::getline(ss, part, '.');) node.reset(node[part]);
    EXPECT_TRUE(node.IsDefined() && !node.IsNull()) << f.path << " is not written";
  }
  auto again = ParseJobSpec(JobSpecToYaml(*spec));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(*again, *spec);
}

TEST(JobSpecFieldsTest, CompressionCodecsAreTheEncodersCodecs) {
  for (const std::string& name : CompressionCodecNames()) {
    CompressionSpec c;
    c.codec = name;
    auto eo = EncodeOptionsFor(c);
    ASSERT_TRUE(eo.ok()) << name;
    EXPECT_EQ(CodecName(eo->codec), name);
  }
  // Every compression field reaches the encoder (zstdLevel: issue 11's one-field measure).
  CompressionSpec c;
  c.zstdLevel = 19;
  c.blockSize = 16;
  c.topKFraction = 0.5;
  auto eo = EncodeOptionsFor(c);
  ASSERT_TRUE(eo.ok());
  EXPECT_EQ(eo->zstd_level, 19);
  EXPECT_EQ(eo->block_size, 16);
  EXPECT_EQ(eo->topk_fraction, 0.5);
  CompressionSpec bad;
  bad.codec = "int2";
  EXPECT_FALSE(EncodeOptionsFor(bad).ok());
}

}  // namespace
}  // namespace fedge
