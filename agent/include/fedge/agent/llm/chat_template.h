// Chat templates: turning a list of messages into the prompt text a chat-tuned
// model was trained on, without a Jinja interpreter.
//
//   ChatML (Qwen2/2.5, SmolLM2, fedge's own model):
//     <|im_start|>system\n{content}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n
//     <|im_start|>assistant\n                                (generation prompt)
//   Llama 3:
//     <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>
//     <|start_header_id|>assistant<|end_header_id|>\n\n       (generation prompt)
//     Contents are trimmed (Python's strip).
//   Llama 3.1 / 3.3 and Llama 3.2 Instruct: Llama 3 behind a system turn that is
//     always there (the system message, trimmed, after it; tool messages as ipython):
//     <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge
//     Date: December 2023\nToday Date: {date}\n\n{system}<|eot_id|>...
//     {date}: 3.1's template fixes "26 Jul 2024"; 3.2's prints today's ("07 Dec 2026").
//   Tools (Llama 3.1 / 3.2): "Environment: ipython\n" opens the system turn, the first
//     message after the system message becomes a user turn that lists the tools (the
//     template's instructions, each tool as tojson(indent=4) writes it) before its text,
//     an assistant turn's one call is {"name": "...", "parameters": {...}} instead of its
//     text, and a tool message is an ipython turn of its content as a JSON string.
//   Tools (Qwen2.5's ChatML and Qwen3, tool_calls.h): the system turn lists them
//     after the system message ("# Tools ... <tools>\n{tool}\n...</tools> ..."); an
//     assistant turn's calls follow its text as <tool_call>\n{"name": ..., "arguments":
//     ...}\n</tool_call>; consecutive tool messages share one user turn of
//     \n<tool_response>\n{content}\n</tool_response> blocks.
//   Qwen3: ChatML, where an assistant turn before the last user message loses its
//     <think>...</think> reasoning, one after it is written <think>\n{reasoning}\n</think>\n\n
//     {answer} (reasoning empty if it had none), and enable_thinking=false follows the
//     generation prompt with an empty <think>\n\n</think>\n\n (the model answers directly).
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
//   DeepSeek V3:
//     <｜begin▁of▁sentence｜>{system}<｜User｜>{user}<｜Assistant｜>{assistant}<｜end▁of▁sentence｜>
//     <｜Assistant｜>                                       (generation prompt)
//     Every system message, wherever it is, joins the text after the BOS (a blank line
//     between two); nothing else is trimmed or rewritten.
//   DeepSeek-R1 (the R1-Distill Qwen and Llama models): DeepSeek V3's turns with the
//     last system message alone, an assistant turn's text after its last </think>, and
//     the generation prompt <｜Assistant｜><think>\n: the reply starts inside its
//     reasoning (ChatReplyThinks).
//   The [INST] formats have no separate generation prompt (the text ends with [/INST]) and
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

// A call an assistant turn made (tool_calls.h: Qwen2.5's and Qwen3's Hermes format,
// Llama 3.1 / 3.2's JSON).
struct ChatToolCall {
  std::string name;
  std::string arguments;  // JSON, as the template's tojson writes it (PythonJsonDumps)
};

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant" | "tool" (others are passed through)
  std::string content;
  std::vector<ChatToolCall> tool_calls = {};  // assistant turns of formats that take tools
};

enum class ChatFormat {
  kChatMl,
  kLlama3,
  kZephyr,
  kPhi3,
  kLlama2,
  kMistral,
  kGemma,
  kLlama31,
  kLlama32,
  kQwen3,
  kDeepSeekV3,
  kDeepSeekR1
};

// What a template takes besides the messages (transformers' apply_chat_template
// arguments and the template variables fedge knows).
struct ChatTemplateOptions {
  // The text ends with the opening of an assistant turn, ready for generation.
  bool add_generation_prompt = true;
  // Inserted as the first message when the conversation has no system message.
  std::string default_system;
  // Qwen3's enable_thinking: false writes an empty think block after the generation
  // prompt. Other formats have no such switch and ignore it.
  bool enable_thinking = true;
  // Llama 3.1 / 3.2's "Today Date" (date_string); empty: 3.1's "26 Jul 2024", 3.2's
  // today in UTC ("%d %b %Y").
  std::string date_string;
  // The tools offered, each as the template's tojson writes it (PythonJsonDumps of
  // {"type": "function", "function": {...}}): Qwen2.5's and Qwen3's system turn lists
  // them, Llama 3.1 / 3.2's first user turn (indented, as tojson(indent=4) writes
  // them) (ChatToolCalling); other formats have no tools.
  std::vector<std::string> tools;
};

// The format of a model directory's Jinja chat template (`chat_template`, the
// tokenizer_config.json field or the chat_template.jinja file), recognised by its
// markers, else the format whose marker tokens the tokenizer has (<|im_start|>,
// <|start_header_id|>, or <start_of_turn> with <end_of_turn>); nullopt if none (a base
// model: /v1/completions only).
std::optional<ChatFormat> DetectChatFormat(const BpeTokenizer& tokenizer,
                                           std::string_view chat_template = "");

// The system message a ChatML template writes when the conversation has none, as one
// literal string (Qwen2's '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n',
// Qwen2.5's "You are Qwen, created by Alibaba Cloud. ...", SmolLM2's); empty if it has
// no such literal, and for the other formats (Llama 3.1's dated turn is the format's own).
std::string ChatDefaultSystem(ChatFormat format, std::string_view chat_template);

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
                                        const ChatTemplateOptions& options);
StatusOr<std::string> ApplyChatTemplate(ChatFormat format, const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt = true,
                                        std::string_view default_system = "");

// The format's name in messages and docs ("ChatML", "Llama 3.2", "Qwen3", ...).
std::string_view ChatFormatName(ChatFormat format);

// How a reply in `format` carries reasoning: kNone, kOpensWithTag (Qwen3: a reply
// that thinks opens with <think>), or kStartsInside (DeepSeek-R1: the generation
// prompt opened <think>, the reply's reasoning runs to its </think>).
enum class ChatReasoning { kNone, kOpensWithTag, kStartsInside };
ChatReasoning ChatReplyThinks(ChatFormat format);

// How a format's model calls tools (tool_calls.h): kNone, kHermes (Qwen2.5, Qwen3:
// <tool_call>{"name", "arguments"}</tool_call> blocks after any text), kLlama3Json
// (Llama 3.1 / 3.3 / 3.2: the whole reply is {"name", "parameters"} JSON).
enum class ChatToolFormat { kNone, kHermes, kLlama3Json };

// The text that ends an assistant turn in `format` (a stop string for generation).
std::string_view ChatEndOfTurn(ChatFormat format);

}  // namespace fedge::agent::llm
