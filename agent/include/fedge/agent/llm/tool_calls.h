// Tool (function) calls in the Hermes format Qwen2.5 and Qwen3 are trained on: the
// tools are listed in the system turn as JSON, the model answers a call as
//   <tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>
// and the results come back as <tool_response> blocks in a user turn. These are the
// pieces outside the templates: JSON written as the templates' `tojson` writes it
// (transformers' filter, Python's json.dumps), and reading the calls out of a reply as
// vLLM's hermes tool parser reads them.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/agent/llm/chat_template.h"

namespace fedge::agent::llm {

// Python's json.dumps(value, ensure_ascii=False): ", " and ": " separators, keys in
// the order given, non-ASCII text as itself, control characters escaped.
std::string PythonJsonDumps(const nlohmann::ordered_json& value);

struct ParsedToolCalls {
  bool called = false;              // at least one call, every one of them readable
  std::string content;              // the text before the first <tool_call> (the whole reply if !called)
  std::vector<ChatToolCall> calls;  // arguments as PythonJsonDumps writes them
};

// The calls in a reply, as vLLM's Hermes2ProToolParser reads them: every
// <tool_call>...</tool_call> block, and an unclosed one running to the end, holds one
// JSON object with "name" (a string) and "arguments"; if any block is not that, the
// reply is all content and nothing is called.
ParsedToolCalls ParseToolCalls(std::string_view reply);

// Whether `format` with this chat template takes tools: Qwen3, or a ChatML template
// that writes the Hermes <tool_call> instructions (Qwen2.5's).
bool ChatTakesTools(ChatFormat format, std::string_view chat_template);

}  // namespace fedge::agent::llm
