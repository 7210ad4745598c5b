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

void Dump(const nlohmann::ordered_json& v, std::string* out) {
  switch (v.type()) {
    case nlohmann::ordered_json::value_t::object: {
      *out += '{';
      bool first = true;
      for (const auto& [key, value] : v.items()) {
        if (!first) *out += ", ";
        first = false;
        DumpString(key, out);
        *out += ": ";
        Dump(value, out);
      }
      *out += '}';
      break;
    }
    case nlohmann::ordered_json::value_t::array: {
      *out += '[';
      for (size_t i = 0; i < v.size(); ++i) {
        if (i > 0) *out += ", ";
        Dump(v[i], out);
      }
      *out += ']';
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

}  // namespace

std::string PythonJsonDumps(const nlohmann::ordered_json& value) {
  std::string out;
  Dump(value, &out);
  return out;
}

ParsedToolCalls ParseToolCalls(std::string_view reply) {
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
    const auto json = nlohmann::ordered_json::parse(TrimJsonSpace(body), nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.is_object() || !json.contains("name") || !json["name"].is_string() ||
        !json.contains("arguments")) {
      out.content = std::string(reply);
      return out;
    }
    calls.push_back({json["name"].get<std::string>(), PythonJsonDumps(json["arguments"])});
    if (at == std::string_view::npos) break;
  }
  out.called = true;
  out.content = std::string(reply.substr(0, first));
  out.calls = std::move(calls);
  return out;
}

bool ChatTakesTools(ChatFormat format, std::string_view chat_template) {
  if (format == ChatFormat::kQwen3) return true;
  return format == ChatFormat::kChatMl && chat_template.find("<tool_call>") != std::string_view::npos &&
         chat_template.find("<tools>") != std::string_view::npos;
}

}  // namespace fedge::agent::llm
