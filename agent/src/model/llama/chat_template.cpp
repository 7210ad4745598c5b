#include "fedge/agent/llm/chat_template.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "fedge/file_util.h"

namespace fedge::agent::llm {
namespace {

bool Has(std::string_view text, std::string_view marker) {
  return text.find(marker) != std::string_view::npos;
}

// Python's str.strip(): the Llama 2 template strips each message.
std::string Strip(std::string_view s) {
  const char* ws = " \t\n\r\f\v";
  const size_t a = s.find_first_not_of(ws);
  if (a == std::string_view::npos) return {};
  return std::string(s.substr(a, s.find_last_not_of(ws) - a + 1));
}

// [INST] formats: a user message, then assistant and user in turn.
Status CheckAlternation(const std::vector<ChatMessage>& turns, std::string_view name) {
  for (size_t i = 0; i < turns.size(); ++i) {
    if ((turns[i].role == "user") != (i % 2 == 0) ||
        (turns[i].role != "user" && turns[i].role != "assistant")) {
      return InvalidArgumentError(std::string(name) +
                                  " chat template: after an optional first system message the roles must "
                                  "alternate user/assistant/user/..., starting with user (message " +
                                  std::to_string(i) + " is \"" + turns[i].role + "\")");
    }
  }
  return OkStatus();
}

}  // namespace

std::optional<ChatFormat> DetectChatFormat(const BpeTokenizer& tokenizer, std::string_view chat_template) {
  if (Has(chat_template, "<|im_start|>")) return ChatFormat::kChatMl;
  if (Has(chat_template, "<|start_header_id|>")) return ChatFormat::kLlama3;
  // Phi-3's turns look like Zephyr's but end with <|end|>, not </s>.
  if (Has(chat_template, "<|user|>") && Has(chat_template, "<|assistant|>"))
    return Has(chat_template, "<|end|>") ? ChatFormat::kPhi3 : ChatFormat::kZephyr;
  if (Has(chat_template, "[INST]") && Has(chat_template, "<<SYS>>")) return ChatFormat::kLlama2;
  if (Has(chat_template, "[INST]")) return ChatFormat::kMistral;
  if (tokenizer.TokenToId("<|im_start|>") && tokenizer.TokenToId("<|im_end|>")) return ChatFormat::kChatMl;
  if (tokenizer.TokenToId("<|start_header_id|>") && tokenizer.TokenToId("<|eot_id|>"))
    return ChatFormat::kLlama3;
  return std::nullopt;
}

StatusOr<std::string> ReadChatTemplate(const std::string& dir) {
  auto field = [](const std::string& path, const nlohmann::json& j) -> StatusOr<std::string> {
    if (!j.is_object() || !j.contains("chat_template") || j["chat_template"].is_null()) return std::string();
    const nlohmann::json& t = j["chat_template"];
    if (t.is_string()) return t.get<std::string>();
    if (t.is_array()) {  // [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
      for (const nlohmann::json& each : t) {
        if (each.is_object() && each.value("name", std::string()) == "default" && each.contains("template") &&
            each["template"].is_string())
          return each["template"].get<std::string>();
      }
      return std::string();
    }
    return InvalidArgumentError(path + ": chat_template is neither a string nor a list of named templates");
  };
  auto json_file = [&](const std::string& name) -> StatusOr<std::string> {
    const std::string path = dir + "/" + name;
    if (!std::filesystem::exists(path)) return std::string();
    FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return InvalidArgumentError(path + ": not valid JSON");
    return field(path, j);
  };
  FEDGE_ASSIGN_OR_RETURN(std::string from_config, json_file("tokenizer_config.json"));
  if (!from_config.empty()) return from_config;
  if (std::filesystem::exists(dir + "/chat_template.jinja")) return ReadFile(dir + "/chat_template.jinja");
  return json_file("chat_template.json");
}

std::string_view ChatEndOfTurn(ChatFormat format) {
  switch (format) {
    case ChatFormat::kChatMl:
      return "<|im_end|>";
    case ChatFormat::kLlama3:
      return "<|eot_id|>";
    case ChatFormat::kPhi3:
      return "<|end|>";
    default:
      return "</s>";
  }
}

StatusOr<std::string> ApplyChatTemplate(ChatFormat format, const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt, std::string_view default_system) {
  std::vector<ChatMessage> all;
  bool has_system = !messages.empty() && messages.front().role == "system";
  if (!has_system && !default_system.empty()) all.push_back({"system", std::string(default_system)});
  all.insert(all.end(), messages.begin(), messages.end());
  for (const ChatMessage& m : all) {
    if (m.role.empty()) return InvalidArgumentError("chat template: a message has no role");
  }
  std::string out;
  if (format == ChatFormat::kLlama2 || format == ChatFormat::kMistral) {
    std::string system;
    std::vector<ChatMessage> turns = all;
    if (!turns.empty() && turns.front().role == "system") {
      system = turns.front().content;
      turns.erase(turns.begin());
    }
    FEDGE_RETURN_IF_ERROR(CheckAlternation(turns, format == ChatFormat::kLlama2 ? "Llama 2" : "Mistral"));
    if (format == ChatFormat::kMistral) out = "<s>";
    for (size_t i = 0; i < turns.size(); ++i) {
      const ChatMessage& m = turns[i];
      if (format == ChatFormat::kLlama2) {
        std::string content = m.content;
        if (i == 0 && !system.empty()) content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
        out += m.role == "user" ? "<s>[INST] " + Strip(content) + " [/INST]" : " " + Strip(content) + " </s>";
      } else {
        std::string content = m.content;
        if (i == 0 && !system.empty()) content = system + "\n\n" + content;
        out += m.role == "user" ? "[INST] " + content + " [/INST]" : content + "</s>";
      }
    }
    return out;  // the generation prompt is the closing [/INST]
  }
  if (format == ChatFormat::kLlama3) out = "<|begin_of_text|>";
  for (const ChatMessage& m : all) {
    if (format == ChatFormat::kChatMl) {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    } else if (format == ChatFormat::kLlama3) {
      out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
    } else {  // Zephyr, Phi-3: other roles are skipped, as their templates do
      if (m.role == "system" || m.role == "user" || m.role == "assistant")
        out += "<|" + m.role + "|>\n" + m.content + (format == ChatFormat::kPhi3 ? "<|end|>\n" : "</s>\n");
    }
  }
  if (add_generation_prompt) {
    out += format == ChatFormat::kChatMl   ? "<|im_start|>assistant\n"
           : format == ChatFormat::kLlama3 ? "<|start_header_id|>assistant<|end_header_id|>\n\n"
                                           : "<|assistant|>\n";
  } else if (format == ChatFormat::kPhi3) {
    out += "<|endoftext|>";
  }
  return out;
}

}  // namespace fedge::agent::llm
