// Chat templates: turning a list of messages into the prompt text a chat-tuned
// model was trained on, without a Jinja interpreter.
//
//   ChatML (Qwen2/2.5, SmolLM2, fedge's own model):
//     <|im_start|>system\n{content}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n
//     <|im_start|>assistant\n                                (generation prompt)
//   Llama 3:
//     <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>
//     <|start_header_id|>assistant<|end_header_id|>\n\n       (generation prompt)
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fedge/status.h"

namespace fedge::agent::llm {

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant" (others are passed through)
  std::string content;
};

enum class ChatFormat { kChatMl, kLlama3 };

// The format whose marker tokens the tokenizer has (<|im_start|> or
// <|start_header_id|>); nullopt if neither.
std::optional<ChatFormat> DetectChatFormat(const BpeTokenizer& tokenizer);

// Renders `messages`. With `add_generation_prompt` the text ends with the opening
// of an assistant turn, ready for generation. `default_system` is inserted as the
// first message when the conversation has no system message and it is non-empty.
// INVALID_ARGUMENT for an empty role.
StatusOr<std::string> ApplyChatTemplate(ChatFormat format, const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt = true,
                                        std::string_view default_system = "");

// The text that ends an assistant turn in `format` (a stop string for generation).
std::string_view ChatEndOfTurn(ChatFormat format);

}  // namespace fedge::agent::llm
