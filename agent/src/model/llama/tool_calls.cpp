#include "fedge/agent/llm/tool_calls.h"

#include <cstdio>

namespace fedge::agent::llm {
namespace {

void DumpString(const std::string& s, std::string* out) {
  *out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          *out += buf;
        } else {
          *out += ch;
        }
    }
  }
  *out += '"';
}

// `indent` < 0: one line; else each member on a line of its own, `depth` levels in.
void Dump(const nlohmann::ordered_json& v, int indent, int depth, std::string* out) {
  // Python: item separator ", " on one line, "," before a newline when indented.
  auto open = [&](char bracket) {
    *out += bracket;
    if (indent >= 0) *out += '\n' + std::string(static_cast<size_t>(indent * (depth + 1)), ' ');
  };
  auto next = [&] {
    if (indent < 0) {
      *out += ", ";
    } else {
      *out += ",\n" + std::string(static_cast<size_t>(indent * (depth + 1)), ' ');
    }
  };
  auto close = [&](char bracket) {
    if (indent >= 0) *out += '\n' + std::string(static_cast<size_t>(indent * depth), ' ');
    *out += bracket;
  };
  switch (v.type()) {
    case nlohmann::ordered_json::value_t::object: {
      if (v.empty()) {
        *out += "{}";
        break;
      }
      open('{');
      bool first = true;
      for (const auto& [key, value] : v.items()) {
        if (!first) next();
        first = false;
        DumpString(key, out);
        *out += ": ";
        Dump(value, indent, depth + 1, out);
      }
      close('}');
      break;
    }
    case nlohmann::ordered_json::value_t::array: {
      if (v.empty()) {
        *out += "[]";
        break;
      }
      open('[');
      for (size_t i = 0; i < v.size(); ++i) {
        if (i > 0) next();
        Dump(v[i], indent, depth + 1, out);
      }
      close(']');
      break;
    }
    case nlohmann::ordered_json::value_t::string:
      DumpString(v.get_ref<const std::string&>(), out);
      break;
    default:  // numbers, booleans, null: JSON's spelling is Python's
      *out += v.dump();
  }
}

// Python's str.isspace() for the ASCII whitespace json.loads skips around a value.
std::string_view TrimJsonSpace(std::string_view s) {
  auto space = [](char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

// One call's JSON object: "name" a string, and the arguments under `args` (Hermes:
// "arguments") or, for Llama, "arguments" else "parameters" (as vLLM reads them).
bool ReadCall(std::string_view body, ChatToolFormat format, std::vector<ChatToolCall>* calls) {
  const auto json = nlohmann::ordered_json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object() || !json.contains("name") || !json["name"].is_string())
    return false;
  const char* args = json.contains("arguments")                                             ? "arguments"
                     : format == ChatToolFormat::kLlama3Json && json.contains("parameters") ? "parameters"
                                                                                            : nullptr;
  if (args == nullptr) return false;
  calls->push_back({json["name"].get<std::string>(), PythonJsonDumps(json[args])});
  return true;
}

// Llama 3.1 / 3.2: the whole reply is calls, `{...}` separated by ";".
ParsedToolCalls ParseLlama3JsonCalls(std::string_view reply) {
  ParsedToolCalls out;
  out.content = std::string(reply);
  std::string_view rest = TrimJsonSpace(reply);
  if (rest.empty() || rest.front() != '{') return out;
  std::vector<ChatToolCall> calls;
  while (!rest.empty()) {
    const size_t end = JsonObjectEnd(rest);
    if (end == std::string_view::npos || !ReadCall(rest.substr(0, end), ChatToolFormat::kLlama3Json, &calls))
      return out;
    rest = TrimJsonSpace(rest.substr(end));
    if (!rest.empty()) {
      if (rest.front() != ';') return out;
      rest = TrimJsonSpace(rest.substr(1));  // a ";" after the last call is harmless
    }
  }
  out.called = true;
  out.content.clear();
  out.calls = std::move(calls);
  return out;
}

}  // namespace

size_t JsonObjectEnd(std::string_view text) {
  if (text.empty() || text.front() != '{') return std::string_view::npos;
  size_t depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (--depth == 0) return i + 1;
    }
  }
  return std::string_view::npos;
}

std::string PythonJsonDumps(const nlohmann::ordered_json& value, int indent) {
  std::string out;
  Dump(value, indent, 0, &out);
  return out;
}

ParsedToolCalls ParseToolCalls(std::string_view reply, ChatToolFormat format) {
  if (format == ChatToolFormat::kLlama3Json) return ParseLlama3JsonCalls(reply);
  static constexpr std::string_view kOpen = "<tool_call>", kClose = "</tool_call>";
  ParsedToolCalls out;
  const size_t first = reply.find(kOpen);
  if (first == std::string_view::npos) {
    out.content = std::string(reply);
    return out;
  }
  std::vector<ChatToolCall> calls;
  for (size_t at = first; at != std::string_view::npos; at = reply.find(kOpen, at)) {
    const size_t begin = at + kOpen.size();
    const size_t close = reply.find(kClose, begin);
    const std::string_view body =
        reply.substr(begin, close == std::string_view::npos ? std::string_view::npos : close - begin);
    at = close == std::string_view::npos ? std::string_view::npos : close + kClose.size();
    if (!ReadCall(TrimJsonSpace(body), ChatToolFormat::kHermes, &calls)) {
      out.content = std::string(reply);
      return out;
    }
    if (at == std::string_view::npos) break;
  }
  out.called = true;
  out.content = std::string(reply.substr(0, first));
  out.calls = std::move(calls);
  return out;
}

ChatToolFormat ChatToolCalling(ChatFormat format, std::string_view chat_template) {
  auto has = [&](std::string_view marker) { return chat_template.find(marker) != std::string_view::npos; };
  if (format == ChatFormat::kQwen3) return ChatToolFormat::kHermes;
  if (format == ChatFormat::kChatMl && has("<tool_call>") && has("<tools>")) return ChatToolFormat::kHermes;
  // Meta's templates (3.1, 3.3, 3.2) put the tools in the first user message.
  if ((format == ChatFormat::kLlama31 || format == ChatFormat::kLlama32) && has("tools_in_user_message") &&
      has("\"parameters\": "))
    return ChatToolFormat::kLlama3Json;
  return ChatToolFormat::kNone;
}

}  // namespace fedge::agent::llm
