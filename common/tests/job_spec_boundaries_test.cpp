// The boundary table tests/cluster/spec_boundaries.json through ParseJobSpec (and so
// ValidateJobSpec): every row must get the verdict the table states. The same table is
// sent to a real kube-apiserver with the CRD installed by
// tests/cluster/spec_boundaries_test.py, so the two validators agree row by row (issue
// 11: blockSize >= 8 vs >= 1, maxSeqLen [8, 8192] vs [2, 32768], llama + frozen-a
// refused only by the agent, ...).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "fedge/job_spec.h"

namespace fedge {
namespace {

using Json = nlohmann::json;

// ctest sets FEDGE_SOURCE_DIR; run by hand, the table is found from this file's path.
std::string TablePath() {
  const std::string rel = "tests/cluster/spec_boundaries.json";
  if (const char* src = std::getenv("FEDGE_SOURCE_DIR")) return std::string(src) + "/" + rel;
  return (std::filesystem::path(__FILE__).parent_path() / "../.." / rel).string();
}

// The table's shorthands: {"$repeat": [s, n]}, {"$list": [p, n]}, {"$map": [p, n]}
// (tests/cluster/spec_boundaries_test.py expands them the same way).
Json Expand(const Json& v) {
  if (v.is_object() && v.size() == 1) {
    const std::string key = v.begin().key();
    const Json& arg = v.begin().value();
    if (key == "$repeat") {
      std::string out;
      for (int i = 0; i < arg[1].get<int>(); ++i) out += arg[0].get<std::string>();
      return out;
    }
    if (key == "$list" || key == "$map") {
      Json out = key == "$list" ? Json::array() : Json::object();
      for (int i = 0; i < arg[1].get<int>(); ++i) {
        const std::string item = arg[0].get<std::string>() + std::to_string(i);
        if (key == "$list") {
          out.push_back(item);
        } else {
          out[item] = "v";
        }
      }
      return out;
    }
  }
  if (v.is_object()) {
    Json out = Json::object();
    for (const auto& [k, item] : v.items()) out[k] = Expand(item);
    return out;
  }
  if (v.is_array()) {
    Json out = Json::array();
    for (const auto& item : v) out.push_back(Expand(item));
    return out;
  }
  return v;
}

// `base` with each "dotted.path": value of `set` applied (null deletes the field).
Json Apply(Json base, const Json& set) {
  for (const auto& [path, value] : set.items()) {
    Json* cur = &base;
    std::stringstream ss(path);
    std::string key, next;
    std::getline(ss, key, '.');
    while (std::getline(ss, next, '.')) {
      cur = &(*cur)[key];
      key = next;
    }
    if (value.is_null()) {
      cur->erase(key);
    } else {
      (*cur)[key] = Expand(value);
    }
  }
  return base;
}

Json LoadTable() {
  std::ifstream in(TablePath());
  EXPECT_TRUE(in) << "cannot read " << TablePath();
  return Json::parse(in, nullptr, /*allow_exceptions=*/false);
}

TEST(JobSpecBoundariesTest, EveryRowGetsTheVerdictTheApiServerGives) {
  const Json table = LoadTable();
  ASSERT_TRUE(table.is_object() && table.contains("rows")) << TablePath() << " is not the boundary table";
  ASSERT_GT(table["rows"].size(), 100u);
  int valid = 0, invalid = 0;
  for (const Json& row : table["rows"]) {
    const Json manifest = Apply(table["base"], row["set"]);
    auto spec = ParseJobSpec(manifest.dump());
    const bool want = row["valid"].get<bool>();
    EXPECT_EQ(spec.ok(), want) << row["set"].dump().substr(0, 200) << ": expected "
                               << (want ? "valid" : "invalid") << ", got "
                               << (spec.ok() ? "valid" : spec.status().ToString());
    (want ? valid : invalid)++;
    if (spec.ok()) {
      // A valid spec survives the resolved manifest the local runner hands its children.
      auto again = ParseJobSpec(JobSpecToYaml(*spec));
      ASSERT_TRUE(again.ok()) << again.status().ToString();
      EXPECT_EQ(*again, *spec) << row["set"].dump().substr(0, 200);
    } else {
      // Every rejection names a field.
      const std::string msg = spec.status().message();
      EXPECT_TRUE(msg.find("spec.") != std::string::npos || msg.find("metadata.") != std::string::npos ||
                  msg.find("apiVersion") != std::string::npos)
          << msg;
    }
  }
  // Both verdicts are exercised, so the test fails if the parser accepted or refused everything.
  EXPECT_GT(valid, 50);
  EXPECT_GT(invalid, 50);
}

// Regression (issue 11): llama + frozen-a was refused only when the agent started, after
// the operator had made the pods; now the validator refuses it.
TEST(JobSpecBoundariesTest, LlamaWithFrozenARejectedBeforeAnyPodExists) {
  JobSpec spec;
  spec.apiVersion = "fedge.io/v1alpha1";
  spec.kind = "FederatedTrainingJob";
  spec.name = "gen";
  spec.model.path = "/m";
  spec.model.family = "llama";
  spec.model.task = "causal-lm";
  spec.data.path = "/d";
  ASSERT_TRUE(ValidateJobSpec(spec).ok()) << ValidateJobSpec(spec).ToString();
  spec.adapter.aggregation = "frozen-a";
  Status st = ValidateJobSpec(spec);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("spec.adapter.aggregation: frozen-a is not supported for llama"),
            std::string::npos)
      << st.message();
}

// Regression (issue 11): the CRD said blockSize >= 8 while the codecs take 1..65536.
TEST(JobSpecBoundariesTest, BlockSizeOneIsValidLikeTheCodec) {
  auto spec = ParseJobSpec(Apply(LoadTable()["base"], {{"spec.compression.blockSize", 1}}).dump());
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->compression.blockSize, 1);
}

}  // namespace
}  // namespace fedge
