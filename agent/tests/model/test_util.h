// Helpers shared by the model tests: where the real model and goldens live.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace fedge::agent::testing {

// FEDGE_MODEL_DIR, else ${FEDGE_SOURCE_DIR}/.fedge/models/all-MiniLM-L6-v2; "" if
// neither names an existing directory with model.safetensors.
inline std::string ModelDir() {
  namespace fs = std::filesystem;
  std::string dir;
  if (const char* env = std::getenv("FEDGE_MODEL_DIR"); env != nullptr && *env != '\0') {
    dir = env;
  } else if (const char* src = std::getenv("FEDGE_SOURCE_DIR"); src != nullptr && *src != '\0') {
    dir = std::string(src) + "/.fedge/models/all-MiniLM-L6-v2";
  } else {
    dir = std::string(FEDGE_GOLDEN_DIR) + "/../../.fedge/models/all-MiniLM-L6-v2";
  }
  return fs::exists(fs::path(dir) / "model.safetensors") ? dir : "";
}

inline constexpr const char* kNoModelMessage =
    "all-MiniLM-L6-v2 not found: set FEDGE_MODEL_DIR or run scripts/fetch-model.sh "
    "(it goes to .fedge/models/all-MiniLM-L6-v2)";

#define FEDGE_REQUIRE_MODEL(dir_var)                               \
  const std::string dir_var = ::fedge::agent::testing::ModelDir(); \
  if (dir_var.empty()) GTEST_SKIP() << ::fedge::agent::testing::kNoModelMessage

inline nlohmann::json ReadGolden(const std::string& name) {
  std::ifstream in(std::string(FEDGE_GOLDEN_DIR) + "/" + name);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

// The transformers goldens of one tiny causal LM ("tiny_llama", "tiny_qwen2", ...)
// from tests/golden/make_llm_goldens.py.
inline nlohmann::json LlmModelGolden(const std::string& name) {
  return ReadGolden("llm/llm_goldens.json")["models"][name];
}

}  // namespace fedge::agent::testing
