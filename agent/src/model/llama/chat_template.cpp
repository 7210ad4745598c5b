#include "fedge/agent/llm/chat_template.h"

namespace fedge::agent::llm {

std::optional<ChatFormat> DetectChatFormat(const BpeTokenizer& tokenizer) {
  if (tokenizer.TokenToId("<|im_start|>") && tokenizer.TokenToId("<|im_end|>")) return ChatFormat::kChatMl;
  if (tokenizer.TokenToId("<|start_header_id|>") && tokenizer.TokenToId("<|eot_id|>"))
    return ChatFormat::kLlama3;
  return std::nullopt;
}

std::string_view ChatEndOfTurn(ChatFormat format) {
  return format == ChatFormat::kChatMl ? "<|im_end|>" : "<|eot_id|>";
}

StatusOr<std::string> ApplyChatTemplate(ChatFormat format, const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt, std::string_view default_system) {
  std::vector<ChatMessage> all;
  bool has_system = !messages.empty() && messages.front().role == "system";
  if (!has_system && !default_system.empty()) all.push_back({"system", std::string(default_system)});
  all.insert(all.end(), messages.begin(), messages.end());
  std::string out;
  if (format == ChatFormat::kLlama3) out = "<|begin_of_text|>";
  for (const ChatMessage& m : all) {
    if (m.role.empty()) return InvalidArgumentError("chat template: a message has no role");
    if (format == ChatFormat::kChatMl) {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    } else {
      out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
    }
  }
  if (add_generation_prompt) {
    out += format == ChatFormat::kChatMl ? "<|im_start|>assistant\n"
                                         : "<|start_header_id|>assistant<|end_header_id|>\n\n";
  }
  return out;
}

}  // namespace fedge::agent::llm
