// Chat templates: turning a list of messages into the prompt text a chat-tuned
// model was trained on, without a Jinja interpreter.
//
//   ChatML (Qwen2/2.5, SmolLM2, fedge's own model):
//     <|im_start|>system\n{content}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n
//     <|im_start|>assistant\n                                (generation prompt)
//   Llama 3:
//     <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>
//     <|start_header_id|>assistant<|end_header_id|>\n\n       (generation prompt)
//   Zephyr (TinyLlama-1.1B-Chat):
//     <|system|>\n{content}</s>\n<|user|>\n{content}</s>\n<|assistant|>\n
//   Phi-3 (Phi-3/3.5-mini-instruct): Zephyr's turns ended by <|end|>
//     <|system|>\n{content}<|end|>\n<|user|>\n{content}<|end|>\n<|assistant|>\n
//     (without the generation prompt the text ends with <|endoftext|>)
//   Llama 2 chat:
//     <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]
//   Mistral Instruct (v0.1/v0.2):
//     <s>[INST] {user} [/INST]{assistant}</s>[INST] {user} [/INST]
//     Its template refuses a system message; fedge puts one before the first user
//     message, separated by a blank line.
//   The last two have no separate generation prompt (the text ends with [/INST]) and
//   need the roles to alternate user/assistant after the system message.
//   Gemma (Gemma 3 instruction-tuned):
//     <bos><start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n{assistant}<end_of_turn>\n
//     <start_of_turn>model\n                                (generation prompt)
//     No system turn: the system text opens the first user turn; contents are trimmed
//     (Python's strip), the system text is not; the roles alternate like [INST]'s.
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

enum class ChatFormat { kChatMl, kLlama3, kZephyr, kPhi3, kLlama2, kMistral, kGemma };

// The format of a model directory's Jinja chat template (`chat_template`, the
// tokenizer_config.json field or the chat_template.jinja file), recognised by its
// markers, else the format whose marker tokens the tokenizer has (<|im_start|>,
// <|start_header_id|>, or <start_of_turn> with <end_of_turn>); nullopt if none (a base
// model: /v1/completions only).
std::optional<ChatFormat> DetectChatFormat(const BpeTokenizer& tokenizer,
                                           std::string_view chat_template = "");

// The chat template of model directory `dir`: tokenizer_config.json's "chat_template"
// (a string, or the "default" entry of a list of {name, template}), else
// chat_template.jinja, else chat_template.json's "chat_template"; empty if none.
// INVALID_ARGUMENT for a file that is not the JSON it should be.
StatusOr<std::string> ReadChatTemplate(const std::string& dir);

// Renders `messages`. With `add_generation_prompt` the text ends with the opening
// of an assistant turn, ready for generation. `default_system` is inserted as the
// first message when the conversation has no system message and it is non-empty.
// INVALID_ARGUMENT for an empty role, and for Llama 2 / Mistral / Gemma a conversation
// whose roles do not alternate user/assistant from a user message (the templates raise).
StatusOr<std::string> ApplyChatTemplate(ChatFormat format, const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt = true,
                                        std::string_view default_system = "");

// The text that ends an assistant turn in `format` (a stop string for generation).
std::string_view ChatEndOfTurn(ChatFormat format);

}  // namespace fedge::agent::llm
