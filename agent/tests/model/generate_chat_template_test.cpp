// Chat templates against the strings the models' Jinja templates produce
// (transformers' apply_chat_template for Qwen2.5 / Llama 3 without a default system;
// for Zephyr / Phi-3 / Llama 2 / Mistral / Gemma 3, tests/golden/llm/chat_templates.json:
// the shipped templates rendered by jinja2 as transformers renders them).
#include "fedge/agent/llm/chat_template.h"

#include <gtest/gtest.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "fedge/file_util.h"

namespace fedge::agent::llm {
namespace {

const std::vector<ChatMessage> kConversation = {
    {"system", "You are terse."}, {"user", "Define dog."}, {"assistant", "A canine."}, {"user", "And cat?"}};

TEST(ChatTemplateTest, ChatMlMatchesQwenTemplate) {
  auto text = ApplyChatTemplate(ChatFormat::kChatMl, kConversation);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text,
            "<|im_start|>system\nYou are terse.<|im_end|>\n"
            "<|im_start|>user\nDefine dog.<|im_end|>\n"
            "<|im_start|>assistant\nA canine.<|im_end|>\n"
            "<|im_start|>user\nAnd cat?<|im_end|>\n"
            "<|im_start|>assistant\n");
  auto no_prompt = ApplyChatTemplate(ChatFormat::kChatMl, {{"user", "hi"}}, /*add_generation_prompt=*/false,
                                     /*default_system=*/"Be brief.");
  ASSERT_TRUE(no_prompt.ok());
  EXPECT_EQ(*no_prompt, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n");
}

TEST(ChatTemplateTest, Llama3MatchesItsTemplate) {
  auto text = ApplyChatTemplate(ChatFormat::kLlama3, {{"user", "Define dog."}});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nDefine dog.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(ChatEndOfTurn(ChatFormat::kLlama3), "<|eot_id|>");
}

TEST(ChatTemplateTest, RejectsMessageWithoutRole) {
  EXPECT_EQ(ApplyChatTemplate(ChatFormat::kChatMl, {{"", "x"}}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, DetectsFormatFromSpecialTokens) {
  auto tok = BpeTokenizer::Load(std::string(FEDGE_GOLDEN_DIR) + "/llm/tok_qwen2/tokenizer.json");
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(DetectChatFormat(*tok), ChatFormat::kChatMl);
}

nlohmann::json ChatGoldens() {
  auto text = ReadFile(std::string(FEDGE_GOLDEN_DIR) + "/llm/chat_templates.json");
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return nlohmann::json::parse(*text)["formats"];
}

TEST(ChatTemplateTest, ShippedTemplatesMatchTheirJinjaRendering) {
  auto tok = BpeTokenizer::Load(std::string(FEDGE_GOLDEN_DIR) + "/llm/tok_llama2/tokenizer.json");
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(DetectChatFormat(*tok), std::nullopt);  // no marker tokens: a base model
  const std::vector<std::pair<std::string, ChatFormat>> formats = {
      {"zephyr", ChatFormat::kZephyr},
      {"phi3", ChatFormat::kPhi3},
      {"llama2", ChatFormat::kLlama2},
      {"mistral", ChatFormat::kMistral},
      {"gemma", ChatFormat::kGemma},
      {"llama3_1", ChatFormat::kLlama31},
      {"llama3_2", ChatFormat::kLlama32},
      {"qwen3", ChatFormat::kQwen3},
      {"qwen2", ChatFormat::kChatMl},
      {"qwen2_5", ChatFormat::kChatMl},
      {"deepseek_v3", ChatFormat::kDeepSeekV3},
      {"deepseek_r1_distill", ChatFormat::kDeepSeekR1}};
  nlohmann::json goldens = ChatGoldens();
  int checked = 0;
  for (const auto& [name, format] : formats) {
    const nlohmann::json& g = goldens[name];
    EXPECT_EQ(DetectChatFormat(*tok, g["template"].get<std::string>()), format) << name;
    for (const auto& c : g["cases"]) {
      std::vector<ChatMessage> messages;
      for (const auto& m : c["messages"]) messages.push_back({m["role"], m["content"]});
      ChatTemplateOptions options;
      options.add_generation_prompt = c["add_generation_prompt"].get<bool>();
      options.enable_thinking = c.value("enable_thinking", true);
      if (name == "llama3_2") options.date_string = "07 Dec 2026";  // the day the golden was rendered on
      options.default_system = ChatDefaultSystem(format, g["template"].get<std::string>());
      auto text = ApplyChatTemplate(format, messages, options);
      ASSERT_TRUE(text.ok()) << text.status().ToString();
      EXPECT_EQ(*text, c["text"].get<std::string>()) << name << " " << c["messages"].dump();
      ++checked;
    }
  }
  EXPECT_EQ(checked, 104);
  EXPECT_EQ(ChatEndOfTurn(ChatFormat::kPhi3), "<|end|>");
  EXPECT_EQ(ChatEndOfTurn(ChatFormat::kZephyr), "</s>");
  EXPECT_EQ(ChatEndOfTurn(ChatFormat::kGemma), "<end_of_turn>");
  EXPECT_EQ(ChatEndOfTurn(ChatFormat::kLlama32), "<|eot_id|>");
  EXPECT_EQ(ChatEndOfTurn(ChatFormat::kQwen3), "<|im_end|>");
  EXPECT_EQ(ChatEndOfTurn(ChatFormat::kDeepSeekR1), "<｜end▁of▁sentence｜>");
  EXPECT_EQ(ChatReplyThinks(ChatFormat::kQwen3), ChatReasoning::kOpensWithTag);
  EXPECT_EQ(ChatReplyThinks(ChatFormat::kDeepSeekR1), ChatReasoning::kStartsInside);
  EXPECT_EQ(ChatReplyThinks(ChatFormat::kDeepSeekV3), ChatReasoning::kNone);
  EXPECT_EQ(ChatReplyThinks(ChatFormat::kChatMl), ChatReasoning::kNone);
}

// The default system message a ChatML template writes, read from the template's
// literal; none where the template concatenates or has none.
TEST(ChatTemplateTest, DefaultSystemIsTheTemplatesLiteral) {
  nlohmann::json goldens = ChatGoldens();
  EXPECT_EQ(ChatDefaultSystem(ChatFormat::kChatMl, goldens["qwen2"]["template"].get<std::string>()),
            "You are a helpful assistant.");
  EXPECT_EQ(ChatDefaultSystem(ChatFormat::kChatMl, goldens["qwen2_5"]["template"].get<std::string>()),
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_EQ(ChatDefaultSystem(ChatFormat::kQwen3, goldens["qwen3"]["template"].get<std::string>()), "");
  EXPECT_EQ(ChatDefaultSystem(ChatFormat::kChatMl, goldens["qwen3"]["template"].get<std::string>()), "");
  // A real newline in the literal, an escape other than \n, a Jinja expression.
  EXPECT_EQ(ChatDefaultSystem(ChatFormat::kChatMl, "{{ '<|im_start|>system\nBe kind.<|im_end|>\n' }}"),
            "Be kind.");
  EXPECT_EQ(ChatDefaultSystem(ChatFormat::kChatMl, "{{ '<|im_start|>system\\nTwo\\nlines<|im_end|>' }}"),
            "Two\nlines");
  EXPECT_EQ(ChatDefaultSystem(ChatFormat::kChatMl, "{{ '<|im_start|>system\\nTab\\there<|im_end|>' }}"), "");
  EXPECT_EQ(ChatDefaultSystem(ChatFormat::kChatMl, "{{ '<|im_start|>system\\n{{ x }}<|im_end|>' }}"), "");
  EXPECT_EQ(ChatDefaultSystem(ChatFormat::kLlama3, goldens["qwen2"]["template"].get<std::string>()), "");
}

// Llama 3.2's template prints today's date (transformers' strftime_now); 3.1's a
// fixed one; both take date_string.
TEST(ChatTemplateTest, Llama32DatesItsSystemTurnToday) {
  char today[32];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(today, sizeof today, "%d %b %Y", &tm);
  auto text = ApplyChatTemplate(ChatFormat::kLlama32, {{"user", "hi"}});
  ASSERT_TRUE(text.ok());
  EXPECT_NE(text->find(std::string("\nToday Date: ") + today + "\n\n<|eot_id|>"), std::string::npos) << *text;
  auto fixed = ApplyChatTemplate(ChatFormat::kLlama31, {{"user", "hi"}});
  ASSERT_TRUE(fixed.ok());
  EXPECT_NE(fixed->find("\nToday Date: 26 Jul 2024\n\n<|eot_id|>"), std::string::npos) << *fixed;
  ChatTemplateOptions options;
  options.date_string = "01 Jan 2030";
  auto given = ApplyChatTemplate(ChatFormat::kLlama32, {{"user", "hi"}}, options);
  ASSERT_TRUE(given.ok());
  EXPECT_NE(given->find("\nToday Date: 01 Jan 2030\n\n"), std::string::npos) << *given;
}

// A Gemma directory without a chat template still chats when its tokenizer has
// both turn markers (as Gemma 3's does: ids 105 and 106); one alone is not enough.
TEST(ChatTemplateTest, DetectsGemmaFromItsTurnTokens) {
  auto text = ReadFile(std::string(FEDGE_GOLDEN_DIR) + "/llm/tok_gemma/tokenizer.json");
  ASSERT_TRUE(text.ok());
  nlohmann::json j = nlohmann::json::parse(*text);
  auto add = [&j](const std::string& token) {
    const int id = static_cast<int>(j["model"]["vocab"].size());
    j["model"]["vocab"][token] = id;
    j["added_tokens"].push_back({{"id", id},
                                 {"content", token},
                                 {"single_word", false},
                                 {"lstrip", false},
                                 {"rstrip", false},
                                 {"normalized", false},
                                 {"special", true}});
  };
  add("<start_of_turn>");
  auto one = BpeTokenizer::FromJson(j.dump());
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  EXPECT_EQ(DetectChatFormat(*one), std::nullopt);
  add("<end_of_turn>");
  auto both = BpeTokenizer::FromJson(j.dump());
  ASSERT_TRUE(both.ok()) << both.status().ToString();
  EXPECT_EQ(DetectChatFormat(*both), ChatFormat::kGemma);
  EXPECT_EQ(DetectChatFormat(*both, "{{ '<|im_start|>' }}"), ChatFormat::kChatMl);  // the template wins
}

// Python's str.strip() (Llama 2's .strip(), Gemma's | trim) removes Unicode
// whitespace too, not only ASCII's.
TEST(ChatTemplateTest, StripsUnicodeWhitespaceAsPythonDoes) {
  auto llama2 = ApplyChatTemplate(ChatFormat::kLlama2, {{"user", "\u00a0\u2003hi\u3000\n"}});
  ASSERT_TRUE(llama2.ok());
  EXPECT_EQ(*llama2, "<s>[INST] hi [/INST]");
  auto gemma = ApplyChatTemplate(ChatFormat::kGemma, {{"user", "\u200bhi\u0085"}});
  ASSERT_TRUE(gemma.ok());
  EXPECT_EQ(*gemma, "<bos><start_of_turn>user\n\u200bhi<end_of_turn>\n<start_of_turn>model\n");
}

// The [INST] and Gemma templates raise on roles out of turn; fedge says which message.
TEST(ChatTemplateTest, AlternatingFormatsRefuseRolesOutOfTurn) {
  for (ChatFormat format : {ChatFormat::kLlama2, ChatFormat::kMistral, ChatFormat::kGemma}) {
    for (const std::vector<ChatMessage>& bad :
         std::vector<std::vector<ChatMessage>>{{{"assistant", "first"}},
                                               {{"user", "a"}, {"user", "b"}},
                                               {{"system", "s"}, {"system", "t"}, {"user", "u"}},
                                               {{"user", "a"}, {"tool", "b"}}}) {
      auto text = ApplyChatTemplate(format, bad);
      ASSERT_FALSE(text.ok());
      EXPECT_EQ(text.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(text.status().message().find("alternate"), std::string::npos) << text.status().message();
    }
  }
  // Mistral's template refuses a system message; fedge puts it before the first user's.
  auto with_system = ApplyChatTemplate(ChatFormat::kMistral, {{"system", "Be brief."}, {"user", "Hi"}});
  ASSERT_TRUE(with_system.ok());
  EXPECT_EQ(*with_system, "<s>[INST] Be brief.\n\nHi [/INST]");
  // Gemma's default system message opens the first user turn like a system message.
  auto with_default = ApplyChatTemplate(ChatFormat::kGemma, {{"user", "Hi"}}, /*add_generation_prompt=*/true,
                                        /*default_system=*/"Be brief.");
  ASSERT_TRUE(with_default.ok());
  EXPECT_EQ(*with_default, "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
}

// tokenizer_config.json's chat_template (a string or named list), chat_template.jinja,
// chat_template.json; a directory with none is a base model.
TEST(ChatTemplateTest, ReadsTheTemplateWhereTransformersWritesIt) {
  const auto dir = std::filesystem::temp_directory_path() / ("fedge-chat-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) { std::ofstream(dir / name) << text; };
  auto read = [&] { return ReadChatTemplate(dir.string()); };
  ASSERT_TRUE(read().ok());
  EXPECT_EQ(*read(), "");
  write("chat_template.json", R"({"chat_template": "{{ '[INST] ' }}"})");
  EXPECT_EQ(*read(), "{{ '[INST] ' }}");
  write("chat_template.jinja", "{{ '<|user|>' }}");
  EXPECT_EQ(*read(), "{{ '<|user|>' }}");
  write("tokenizer_config.json", R"({"chat_template": [{"name": "tool_use", "template": "x"},
                                                       {"name": "default", "template": "<<SYS>> [INST]"}]})");
  EXPECT_EQ(*read(), "<<SYS>> [INST]");
  write("tokenizer_config.json", R"({"chat_template": "<|im_start|>"})");
  EXPECT_EQ(*read(), "<|im_start|>");
  write("tokenizer_config.json", R"({"chat_template": 7})");
  EXPECT_EQ(read().status().code(), StatusCode::kInvalidArgument);
  write("tokenizer_config.json", "{not json");
  EXPECT_EQ(read().status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(read().status().message().find("tokenizer_config.json"), std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fedge::agent::llm
