#include "fedge/agent/llm/chat_template.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "fedge/file_util.h"

namespace fedge::agent::llm {
namespace {

bool Has(std::string_view text, std::string_view marker) {
  return text.find(marker) != std::string_view::npos;
}

// The code points Python's str.isspace() accepts.
bool IsPythonSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
         c == 0x3000;
}

// The code point of the UTF-8 sequence s[i, i + n), or U+FFFD (not a space) for a
// malformed one.
char32_t DecodeUtf8(std::string_view s, size_t i, size_t n) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  if (n == 1) return b(0) < 0x80 ? b(0) : 0xfffd;
  if (n > 4) return 0xfffd;
  const unsigned char lead_bits[] = {0, 0, 0x1f, 0x0f, 0x07};
  char32_t c = b(0) & lead_bits[n];
  for (size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xc0) != 0x80) return 0xfffd;
    c = (c << 6) | (b(k) & 0x3f);
  }
  return c;
}

// The byte length of the UTF-8 sequence that starts with `lead` (1 for a stray byte).
size_t Utf8Length(unsigned char lead) { return lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1; }

// Python's str.strip() (and Jinja's `| trim`) of UTF-8 text: Llama 2's template
// strips each message, Llama 3's and Gemma's trim each. Unicode whitespace (U+00A0, U+3000, ...)
// goes too; U+200B and the like stay.
std::string Strip(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    const size_t n = std::min(Utf8Length(static_cast<unsigned char>(s[begin])), s.size() - begin);
    if (!IsPythonSpace(DecodeUtf8(s, begin, n))) break;
    begin += n;
  }
  size_t end = s.size();
  while (end > begin) {
    size_t start = end - 1;  // back over continuation bytes to the sequence's first
    while (start > begin && end - start < 4 && (static_cast<unsigned char>(s[start]) & 0xc0) == 0x80) --start;
    if (start + Utf8Length(static_cast<unsigned char>(s[start])) != end) start = end - 1;
    if (!IsPythonSpace(DecodeUtf8(s, start, end - start))) break;
    end = start;
  }
  return std::string(s.substr(begin, end - begin));
}

// [INST] formats and Gemma: a user message, then assistant and user in turn.
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
  if (Has(chat_template, "<start_of_turn>")) return ChatFormat::kGemma;
  if (Has(chat_template, "[INST]") && Has(chat_template, "<<SYS>>")) return ChatFormat::kLlama2;
  if (Has(chat_template, "[INST]")) return ChatFormat::kMistral;
  if (tokenizer.TokenToId("<|im_start|>") && tokenizer.TokenToId("<|im_end|>")) return ChatFormat::kChatMl;
  if (tokenizer.TokenToId("<|start_header_id|>") && tokenizer.TokenToId("<|eot_id|>"))
    return ChatFormat::kLlama3;
  if (tokenizer.TokenToId("<start_of_turn>") && tokenizer.TokenToId("<end_of_turn>"))
    return ChatFormat::kGemma;
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
    case ChatFormat::kGemma:
      return "<end_of_turn>";
    case ChatFormat::kZephyr:
    case ChatFormat::kLlama2:
    case ChatFormat::kMistral:
      return "</s>";
  }
  return "</s>";
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
  if (format == ChatFormat::kGemma) {
    // No system turn: the system text, untrimmed, opens the first user turn (and is
    // dropped when there is none, as the template drops it).
    std::optional<std::string> system;
    std::vector<ChatMessage> turns = all;
    if (!turns.empty() && turns.front().role == "system") {
      system = turns.front().content;
      turns.erase(turns.begin());
    }
    FEDGE_RETURN_IF_ERROR(CheckAlternation(turns, "Gemma"));
    out = "<bos>";
    for (size_t i = 0; i < turns.size(); ++i) {
      out += turns[i].role == "assistant" ? "<start_of_turn>model\n" : "<start_of_turn>user\n";
      if (i == 0 && system) out += *system + "\n\n";
      out += Strip(turns[i].content) + "<end_of_turn>\n";
    }
    if (add_generation_prompt) out += "<start_of_turn>model\n";
    return out;
  }
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
      out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + Strip(m.content) + "<|eot_id|>";
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
