// The tokenizers real models ship (Gemma 3, Llama 3.1, Qwen3, Llama 2: their
// tokenizer.json and tokenizer_config.json, fetched by scripts/fetch-tokenizers.sh)
// against Hugging Face `tokenizers` on the same files and jinja2 rendering their own
// chat templates (tests/golden/make_real_tokenizer_goldens.py ->
// tests/golden/llm/real_tokenizers.json).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fedge/agent/llm/chat_template.h"
#include "fedge/file_util.h"

namespace fedge::agent::llm {
namespace {

// FEDGE_TOKENIZERS_DIR, else <source>/.fedge/tokenizers; "" if `name` is not there.
std::string TokenizerDir(const std::string& name) {
  std::string root;
  if (const char* env = std::getenv("FEDGE_TOKENIZERS_DIR"); env != nullptr && *env != '\0') {
    root = env;
  } else {
    root = std::string(FEDGE_GOLDEN_DIR) + "/../../.fedge/tokenizers";
  }
  const std::string dir = root + "/" + name;
  return std::filesystem::exists(dir + "/tokenizer.json") ? dir : "";
}

#define FEDGE_REQUIRE_TOKENIZER(dir_var, name)                                                      \
  const std::string dir_var = TokenizerDir(name);                                                   \
  if (dir_var.empty())                                                                              \
  GTEST_SKIP() << "the " << (name) << " tokenizer is not fetched: run scripts/fetch-tokenizers.sh " \
               << "(it goes to .fedge/tokenizers) or set FEDGE_TOKENIZERS_DIR"

const nlohmann::json& Golden() {
  static const nlohmann::json golden = [] {
    auto text = ReadFile(std::string(FEDGE_GOLDEN_DIR) + "/llm/real_tokenizers.json");
    EXPECT_TRUE(text.ok()) << text.status().ToString();
    return text.ok() ? nlohmann::json::parse(*text) : nlohmann::json::object();
  }();
  return golden;
}

// As the serving path loads a model directory: tokenizer.json, then
// tokenizer_config.json's BOS rules.
BpeTokenizer LoadDir(const std::string& dir) {
  auto tok = BpeTokenizer::Load(dir + "/tokenizer.json");
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  if (!tok.ok()) return *BpeTokenizer::FromJson(R"({"model":{"type":"BPE","vocab":{"a":0},"merges":[]}})");
  auto configured = ApplyTokenizerConfig(*tok, dir);
  EXPECT_TRUE(configured.ok()) << configured.status().ToString();
  return configured.ok() ? *configured : *tok;
}

class RealTokenizerTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RealTokenizerTest, EncodesAndDecodesLikeTokenizers) {
  FEDGE_REQUIRE_TOKENIZER(dir, GetParam());
  const nlohmann::json& golden = Golden()["tokenizers"][GetParam()];
  ASSERT_GE(golden["cases"].size(), 250u);
  auto loaded = BpeTokenizer::Load(dir + "/tokenizer.json");
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  const BpeTokenizer& tok = *loaded;
  int failures = 0;
  for (const auto& c : golden["cases"]) {
    const std::string text = c["text"];
    const std::vector<int32_t> want = c["ids"];
    const std::vector<int32_t> got = tok.Encode(text);
    EXPECT_EQ(got, want) << "text: \"" << text << "\"";
    // Unlike `tokenizers`, fedge does not add the BOS to a text that begins with it
    // (a chat template's): <bos><bos>x is one BOS shorter.
    std::vector<int32_t> want_special = c["special_ids"];
    const std::vector<int32_t>& prefix = tok.SequencePrefix();
    if (!prefix.empty() && want_special.size() >= 2 * prefix.size() &&
        std::equal(prefix.begin(), prefix.end(),
                   want_special.begin() + static_cast<std::ptrdiff_t>(prefix.size()))) {
      want_special.erase(want_special.begin(),
                         want_special.begin() + static_cast<std::ptrdiff_t>(prefix.size()));
    }
    EXPECT_EQ(tok.Encode(text, {.add_special_tokens = true}), want_special) << "text: \"" << text << "\"";
    EXPECT_EQ(tok.Decode(want), c["decoded"].get<std::string>()) << "text: \"" << text << "\"";
    if (got != want && ++failures > 10) break;
  }
  for (const auto& c : golden["decode_cases"]) {
    const std::vector<int32_t> ids = c["ids"];
    EXPECT_EQ(tok.Decode(ids), c["text"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(tok.Decode(ids, /*skip_special=*/true), c["skip_special"].get<std::string>())
        << c["ids"].dump();
  }
}

// The directory's own chat template, recognised and rendered as jinja2 renders it.
TEST_P(RealTokenizerTest, ChatTemplateRendersLikeJinja) {
  FEDGE_REQUIRE_TOKENIZER(dir, GetParam());
  const nlohmann::json& chat = Golden()["chat"];
  if (!chat.contains(GetParam())) {
    auto text = ReadChatTemplate(dir);
    ASSERT_TRUE(text.ok());
    EXPECT_EQ(*text, "") << "the golden has no chat cases for " << GetParam() << " but it has a template";
    return;
  }
  const BpeTokenizer tok = LoadDir(dir);
  auto template_text = ReadChatTemplate(dir);
  ASSERT_TRUE(template_text.ok()) << template_text.status().ToString();
  const std::optional<ChatFormat> format = DetectChatFormat(tok, *template_text);
  ASSERT_TRUE(format.has_value()) << GetParam();
  ASSERT_GE(chat[GetParam()].size(), 6u);
  for (const auto& c : chat[GetParam()]) {
    std::vector<ChatMessage> messages;
    for (const auto& m : c["messages"]) messages.push_back({m["role"], m["content"]});
    auto text = ApplyChatTemplate(*format, messages, c["add_generation_prompt"].get<bool>());
    ASSERT_TRUE(text.ok()) << text.status().ToString();
    EXPECT_EQ(*text, c["text"].get<std::string>()) << c["messages"].dump();
  }
}

// Split on a string in each of `tokenizers`' five behaviors, on the golden
// Gemma-layout SentencePiece tokenizer (needs nothing fetched).
TEST(StringSplitTest, EveryBehaviorSplitsLikeTokenizers) {
  auto base_text = ReadFile(std::string(FEDGE_GOLDEN_DIR) + "/llm/tok_gemma/tokenizer.json");
  ASSERT_TRUE(base_text.ok());
  const nlohmann::json base = nlohmann::json::parse(*base_text);
  const nlohmann::json& variants = Golden()["split_string"];
  ASSERT_EQ(variants.size(), 15u);
  for (const auto& v : variants) {
    nlohmann::json j = base;
    j["pre_tokenizer"] = v["pre_tokenizer"];
    auto tok = BpeTokenizer::FromJson(j.dump());
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    for (const auto& c : v["cases"]) {
      const std::vector<int32_t> want = c["ids"];
      EXPECT_EQ(tok->Encode(c["text"].get<std::string>()), want)
          << v["pre_tokenizer"].dump() << " text: \"" << c["text"].get<std::string>() << "\"";
    }
  }
  nlohmann::json inverted = base;
  inverted["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"String", "."}}}, {"behavior", "Isolated"}, {"invert", true}};
  auto refused = BpeTokenizer::FromJson(inverted.dump());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("invert"), std::string::npos) << refused.status().ToString();
}

INSTANTIATE_TEST_SUITE_P(Real, RealTokenizerTest, ::testing::Values("gemma3", "llama3_1", "qwen3", "llama2"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace fedge::agent::llm
