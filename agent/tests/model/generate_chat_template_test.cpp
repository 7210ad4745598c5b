// Chat templates against the strings the models' Jinja templates produce
// (transformers' apply_chat_template for Qwen2.5 / Llama 3 without a default system).
#include "fedge/agent/llm/chat_template.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace fedge::agent::llm
