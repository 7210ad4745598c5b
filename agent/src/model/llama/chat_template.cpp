#include "fedge/agent/llm/chat_template.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "fedge/agent/llm/tool_calls.h"
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

// Today in UTC as strftime's "%d %b %Y" in the C locale ("07 Dec 2026"), as Llama
// 3.2's template prints it through transformers' strftime_now.
std::string TodayUtc() {
  static const char* const kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02d %s %04d", tm.tm_mday, kMonths[tm.tm_mon % 12], tm.tm_year + 1900);
  return buf;
}

std::string Llama3Turn(std::string_view role, std::string_view content) {
  return "<|start_header_id|>" + std::string(role) + "<|end_header_id|>\n\n" + std::string(content) +
         "<|eot_id|>";
}

// Llama 3.1 / 3.3 / 3.2 Instruct: the system turn is always written; with tools it
// says so, and the first message after it lists them (tools_in_user_message, the
// templates' default).
StatusOr<std::string> RenderLlama31(ChatFormat format, const std::vector<ChatMessage>& all,
                                    const ChatTemplateOptions& options) {
  static constexpr std::string_view kFormatAsked =
      "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
      "value}.Do not use variables.\n\n";
  const bool tools = !options.tools.empty();
  std::string system;
  size_t first = 0;
  if (!all.empty() && all.front().role == "system") {
    system = Strip(all.front().content);
    first = 1;
  }
  const std::string date = !options.date_string.empty()     ? options.date_string
                           : format == ChatFormat::kLlama32 ? TodayUtc()
                                                            : "26 Jul 2024";
  std::string out = "<|begin_of_text|>" +
                    Llama3Turn("system", std::string(tools ? "Environment: ipython\n" : "") +
                                             "Cutting Knowledge Date: December 2023\nToday Date: " + date +
                                             "\n\n" + system);
  if (tools) {
    if (first == all.size()) {
      return InvalidArgumentError(std::string(ChatFormatName(format)) +
                                  " chat template: tools go in the first message after the system message, "
                                  "and there is none (the template raises)");
    }
    std::string turn =
        "Given the following functions, please respond with a JSON for a function call with its proper "
        "arguments that best answers the given prompt.\n\n" +
        std::string(kFormatAsked);
    for (const std::string& tool : options.tools) {
      const auto json = nlohmann::ordered_json::parse(tool, nullptr, /*allow_exceptions=*/false);
      if (json.is_discarded()) return InvalidArgumentError("chat template: a tool is not JSON");
      turn += PythonJsonDumps(json, /*indent=*/4) + "\n\n";
    }
    out += Llama3Turn("user", turn + Strip(all[first].content));
    ++first;
  }
  for (size_t i = first; i < all.size(); ++i) {
    const ChatMessage& m = all[i];
    if (m.role == "tool" || m.role == "ipython") {
      // The content is a string, which Jinja's `iterable` test passes: tojson quotes it.
      out += Llama3Turn("ipython", PythonJsonDumps(m.content));
    } else if (!m.tool_calls.empty()) {
      if (m.tool_calls.size() != 1) {
        return InvalidArgumentError(std::string(ChatFormatName(format)) + " chat template: message " +
                                    std::to_string(i) + " makes " + std::to_string(m.tool_calls.size()) +
                                    " tool calls; this model takes one per assistant message (the template "
                                    "raises): send them as separate assistant messages");
      }
      const ChatToolCall& call = m.tool_calls.front();
      out += Llama3Turn("assistant",
                        "{\"name\": \"" + call.name + "\", \"parameters\": " + call.arguments + "}");
    } else {
      out += Llama3Turn(m.role, Strip(m.content));
    }
  }
  if (options.add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool EndsWith(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

// Python's str.strip / lstrip / rstrip of one character.
std::string_view LStrip(std::string_view s, char c) {
  while (!s.empty() && s.front() == c) s.remove_prefix(1);
  return s;
}
std::string_view RStrip(std::string_view s, char c) {
  while (!s.empty() && s.back() == c) s.remove_suffix(1);
  return s;
}

// Qwen2.5's and Qwen3's tools (Hermes): the list after the system message, a call,
// and a tool message in the user turn it shares with its neighbours.
constexpr std::string_view kToolsIntro =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\n<tools>";
constexpr std::string_view kToolsOutro =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n";

// The system turn that lists `tools`, after `system` (and a blank line) when there is one.
std::string ToolsSystemTurn(const std::vector<ChatMessage>& all, const std::vector<std::string>& tools) {
  std::string out = "<|im_start|>system\n";
  if (!all.empty() && all.front().role == "system") out += all.front().content + "\n\n";
  out += kToolsIntro;
  for (const std::string& tool : tools) out += "\n" + tool;
  return out += kToolsOutro;
}

std::string ToolCallText(const ChatToolCall& call) {
  return "<tool_call>\n{\"name\": \"" + call.name + "\", \"arguments\": " + call.arguments +
         "}\n</tool_call>";
}

// all[i] is a tool message: its response block, opening the user turn after a
// non-tool message and closing it before one.
std::string ToolResponse(const std::vector<ChatMessage>& all, size_t i) {
  std::string out;
  if (i == 0 || all[i - 1].role != "tool") out += "<|im_start|>user";
  out += "\n<tool_response>\n" + all[i].content + "\n</tool_response>";
  if (i + 1 == all.size() || all[i + 1].role != "tool") out += "<|im_end|>\n";
  return out;
}

// ChatML as Qwen2.5's template writes it (its tools included; plain ChatML when a
// conversation has none).
std::string RenderChatMl(const std::vector<ChatMessage>& all, const ChatTemplateOptions& options) {
  std::string out;
  size_t first = 0;
  if (!options.tools.empty()) {
    out = ToolsSystemTurn(all, options.tools);
    first = !all.empty() && all.front().role == "system" ? 1 : 0;
  }
  for (size_t i = first; i < all.size(); ++i) {
    const ChatMessage& m = all[i];
    if (m.role == "tool") {
      out += ToolResponse(all, i);
    } else if (m.role == "assistant" && !m.tool_calls.empty()) {
      out += "<|im_start|>assistant";
      if (!m.content.empty()) out += "\n" + m.content;
      for (const ChatToolCall& call : m.tool_calls) out += "\n" + ToolCallText(call);
      out += "<|im_end|>\n";
    } else {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    }
  }
  if (options.add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

// Qwen3's template (tool calls as Qwen2.5's; arguments as tojson writes them).
std::string RenderQwen3(const std::vector<ChatMessage>& all, const ChatTemplateOptions& options) {
  std::string out;
  if (!options.tools.empty()) {
    out = ToolsSystemTurn(all, options.tools);
  } else if (!all.empty() && all.front().role == "system") {
    out = "<|im_start|>system\n" + all.front().content + "<|im_end|>\n";
  }
  // The last user message that is not a wrapped tool response.
  size_t last_query = all.empty() ? 0 : all.size() - 1;
  for (size_t k = all.size(); k-- > 0;) {
    const std::string& c = all[k].content;
    if (all[k].role == "user" && !(StartsWith(c, "<tool_response>") && EndsWith(c, "</tool_response>"))) {
      last_query = k;
      break;
    }
  }
  for (size_t i = 0; i < all.size(); ++i) {
    const ChatMessage& m = all[i];
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string_view content = m.content, reasoning;
      if (const size_t close = content.find("</think>"); close != std::string_view::npos) {
        // The answer after the last </think>; the reasoning before the first one,
        // after the last <think> there.
        std::string_view before = RStrip(content.substr(0, close), '\n');
        if (const size_t open = before.rfind("<think>"); open != std::string_view::npos)
          before = before.substr(open + 7);
        reasoning = LStrip(before, '\n');
        content = LStrip(content.substr(content.rfind("</think>") + 8), '\n');
      }
      out += "<|im_start|>assistant\n";
      if (i > last_query && (i + 1 == all.size() || !reasoning.empty())) {
        out += "<think>\n" + std::string(LStrip(RStrip(reasoning, '\n'), '\n')) + "\n</think>\n\n" +
               std::string(LStrip(content, '\n'));
      } else {
        out += content;
      }
      for (size_t k = 0; k < m.tool_calls.size(); ++k) {
        if (k > 0 || !content.empty()) out += "\n";
        out += ToolCallText(m.tool_calls[k]);
      }
      out += "<|im_end|>\n";
    } else if (m.role == "tool") {
      out += ToolResponse(all, i);
    }  // other roles: the template writes nothing
  }
  if (options.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (!options.enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

constexpr std::string_view kDeepSeekBos = "<｜begin▁of▁sentence｜>";
constexpr std::string_view kDeepSeekEos = "<｜end▁of▁sentence｜>";

// DeepSeek V3's and R1-Distill's templates without tools (a "tool" role is refused
// before this by the API; other roles write nothing, as there).
std::string RenderDeepSeek(ChatFormat format, const std::vector<ChatMessage>& all,
                           const ChatTemplateOptions& options) {
  const bool r1 = format == ChatFormat::kDeepSeekR1;
  std::string system;
  bool first_system = true;
  for (const ChatMessage& m : all) {
    if (m.role != "system") continue;
    if (r1) {
      system = m.content;  // R1: the last one
    } else {
      system += (first_system ? "" : "\n\n") + m.content;
      first_system = false;
    }
  }
  std::string out = std::string(kDeepSeekBos) + system;
  for (const ChatMessage& m : all) {
    if (m.role == "user") {
      out += "<｜User｜>" + m.content;
    } else if (m.role == "assistant") {
      std::string_view content = m.content;
      if (const size_t close = content.rfind("</think>"); r1 && close != std::string_view::npos)
        content.remove_prefix(close + 8);  // Python's split('</think>')[-1]
      out += "<｜Assistant｜>" + std::string(content) + std::string(kDeepSeekEos);
    }
  }
  if (options.add_generation_prompt) out += r1 ? "<｜Assistant｜><think>\n" : "<｜Assistant｜>";
  return out;
}

}  // namespace

std::optional<ChatFormat> DetectChatFormat(const BpeTokenizer& tokenizer, std::string_view chat_template) {
  // Qwen3's template writes the think block its enable_thinking switch controls.
  if (Has(chat_template, "<|im_start|>"))
    return Has(chat_template, "<think>") && Has(chat_template, "enable_thinking") ? ChatFormat::kQwen3
                                                                                  : ChatFormat::kChatMl;
  // Llama 3.1 / 3.3 and 3.2 open with a dated system turn; 3.2's date is today's.
  if (Has(chat_template, "<|start_header_id|>")) {
    if (!Has(chat_template, "Cutting Knowledge Date")) return ChatFormat::kLlama3;
    return Has(chat_template, "strftime_now") ? ChatFormat::kLlama32 : ChatFormat::kLlama31;
  }
  // Phi-3's turns look like Zephyr's but end with <|end|>, not </s>.
  if (Has(chat_template, "<|user|>") && Has(chat_template, "<|assistant|>"))
    return Has(chat_template, "<|end|>") ? ChatFormat::kPhi3 : ChatFormat::kZephyr;
  if (Has(chat_template, "<start_of_turn>")) return ChatFormat::kGemma;
  // DeepSeek: R1's generation prompt opens the reasoning.
  if (Has(chat_template, "<｜User｜>") && Has(chat_template, "<｜Assistant｜>"))
    return Has(chat_template, "<｜Assistant｜><think>") ? ChatFormat::kDeepSeekR1 : ChatFormat::kDeepSeekV3;
  if (Has(chat_template, "[INST]") && Has(chat_template, "<<SYS>>")) return ChatFormat::kLlama2;
  if (Has(chat_template, "[INST]")) return ChatFormat::kMistral;
  if (tokenizer.TokenToId("<|im_start|>") && tokenizer.TokenToId("<|im_end|>")) return ChatFormat::kChatMl;
  if (tokenizer.TokenToId("<|start_header_id|>") && tokenizer.TokenToId("<|eot_id|>"))
    return ChatFormat::kLlama3;
  if (tokenizer.TokenToId("<start_of_turn>") && tokenizer.TokenToId("<end_of_turn>"))
    return ChatFormat::kGemma;
  return std::nullopt;
}

std::string ChatDefaultSystem(ChatFormat format, std::string_view chat_template) {
  if (format != ChatFormat::kChatMl) return "";
  // '<|im_start|>system\n{text}<|im_end|>\n' inside one string literal (the newline
  // written as \n or as itself): {text} holds no quote, Jinja or concatenation; \n is
  // the only escape read (others: not a default).
  static constexpr std::string_view kOpen = "<|im_start|>system", kClose = "<|im_end|>";
  for (size_t at = chat_template.find(kOpen); at != std::string_view::npos;
       at = chat_template.find(kOpen, at + 1)) {
    size_t begin = at + kOpen.size();
    if (chat_template.substr(begin, 2) == "\\n") {
      begin += 2;
    } else if (chat_template.substr(begin, 1) == "\n") {
      begin += 1;
    } else {
      continue;
    }
    const size_t end = chat_template.find(kClose, begin);
    if (end == std::string_view::npos) break;
    const std::string_view text = chat_template.substr(begin, end - begin);
    if (text.empty() || text.find_first_of("'\"{}+") != std::string_view::npos) continue;
    std::string out;
    bool literal = true;
    for (size_t i = 0; i < text.size() && literal; ++i) {
      if (text[i] != '\\') {
        out += text[i];
      } else if (i + 1 < text.size() && text[i + 1] == 'n') {
        out += '\n';
        ++i;
      } else {
        literal = false;
      }
    }
    if (literal) return out;
  }
  return "";
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
    case ChatFormat::kQwen3:
      return "<|im_end|>";
    case ChatFormat::kLlama3:
    case ChatFormat::kLlama31:
    case ChatFormat::kLlama32:
      return "<|eot_id|>";
    case ChatFormat::kPhi3:
      return "<|end|>";
    case ChatFormat::kGemma:
      return "<end_of_turn>";
    case ChatFormat::kZephyr:
    case ChatFormat::kLlama2:
    case ChatFormat::kMistral:
      return "</s>";
    case ChatFormat::kDeepSeekV3:
    case ChatFormat::kDeepSeekR1:
      return kDeepSeekEos;
  }
  return "</s>";
}

ChatReasoning ChatReplyThinks(ChatFormat format) {
  return format == ChatFormat::kQwen3        ? ChatReasoning::kOpensWithTag
         : format == ChatFormat::kDeepSeekR1 ? ChatReasoning::kStartsInside
                                             : ChatReasoning::kNone;
}

std::string_view ChatFormatName(ChatFormat format) {
  switch (format) {
    case ChatFormat::kChatMl:
      return "ChatML";
    case ChatFormat::kLlama3:
      return "Llama 3";
    case ChatFormat::kZephyr:
      return "Zephyr";
    case ChatFormat::kPhi3:
      return "Phi-3";
    case ChatFormat::kLlama2:
      return "Llama 2";
    case ChatFormat::kMistral:
      return "Mistral";
    case ChatFormat::kGemma:
      return "Gemma";
    case ChatFormat::kLlama31:
      return "Llama 3.1";
    case ChatFormat::kLlama32:
      return "Llama 3.2";
    case ChatFormat::kQwen3:
      return "Qwen3";
    case ChatFormat::kDeepSeekV3:
      return "DeepSeek V3";
    case ChatFormat::kDeepSeekR1:
      return "DeepSeek-R1";
  }
  return "?";
}

StatusOr<std::string> ApplyChatTemplate(ChatFormat format, const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt, std::string_view default_system) {
  ChatTemplateOptions options;
  options.add_generation_prompt = add_generation_prompt;
  options.default_system = std::string(default_system);
  return ApplyChatTemplate(format, messages, options);
}

StatusOr<std::string> ApplyChatTemplate(ChatFormat format, const std::vector<ChatMessage>& messages,
                                        const ChatTemplateOptions& options) {
  const bool add_generation_prompt = options.add_generation_prompt;
  std::vector<ChatMessage> all;
  bool has_system = !messages.empty() && messages.front().role == "system";
  if (!has_system && !options.default_system.empty()) all.push_back({"system", options.default_system});
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
  if (format == ChatFormat::kLlama31 || format == ChatFormat::kLlama32)
    return RenderLlama31(format, all, options);
  if (format == ChatFormat::kQwen3) return RenderQwen3(all, options);
  if (format == ChatFormat::kDeepSeekV3 || format == ChatFormat::kDeepSeekR1)
    return RenderDeepSeek(format, all, options);
  if (format == ChatFormat::kChatMl) return RenderChatMl(all, options);
  if (format == ChatFormat::kLlama3) out = "<|begin_of_text|>";
  for (const ChatMessage& m : all) {
    if (format == ChatFormat::kLlama3) {
      out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + Strip(m.content) + "<|eot_id|>";
    } else {  // Zephyr, Phi-3: other roles are skipped, as their templates do
      if (m.role == "system" || m.role == "user" || m.role == "assistant")
        out += "<|" + m.role + "|>\n" + m.content + (format == ChatFormat::kPhi3 ? "<|end|>\n" : "</s>\n");
    }
  }
  if (add_generation_prompt) {
    out += format == ChatFormat::kLlama3 ? "<|start_header_id|>assistant<|end_header_id|>\n\n"
                                         : "<|assistant|>\n";
  } else if (format == ChatFormat::kPhi3) {
    out += "<|endoftext|>";
  }
  return out;
}

}  // namespace fedge::agent::llm
