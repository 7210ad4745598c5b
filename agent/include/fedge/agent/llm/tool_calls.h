// Tool (function) calls in the two formats small models are trained on:
//   Hermes (Qwen2.5, Qwen3): the tools are listed in the system turn as JSON, the model
//     answers a call as
//       <tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>
//     and the results come back as <tool_response> blocks in a user turn.
//   Llama 3.1 / 3.2 JSON: the tools are listed in the first user turn, the model's whole
//     reply is {"name": <function-name>, "parameters": <args-json-object>} (several
//     separated by ";"), and the results come back as ipython turns.
// These are the pieces outside the templates: JSON written as the templates' `tojson`
// writes it (transformers' filter, Python's json.dumps), and reading the calls out of a
// reply as vLLM's hermes and llama3_json tool parsers read them.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/agent/llm/chat_template.h"

namespace fedge::agent::llm {

// Python's json.dumps(value, ensure_ascii=False): ", " and ": " separators, keys in
// the order given, non-ASCII text as itself, control characters escaped. With
// indent >= 0, json.dumps(value, indent=indent): each member on its own line, ","
// and ": " separators, empty objects and arrays as {} and [].
std::string PythonJsonDumps(const nlohmann::ordered_json& value, int indent = -1);

struct ParsedToolCalls {
  bool called = false;              // at least one call, every one of them readable
  std::string content;              // Hermes: the text before the first <tool_call>; Llama: empty
                                    // (the whole reply if !called)
  std::vector<ChatToolCall> calls;  // arguments as PythonJsonDumps writes them
};

// The calls in a reply.
//   kHermes, as vLLM's Hermes2ProToolParser reads them: every
//     <tool_call>...</tool_call> block, and an unclosed one running to the end, holds
//     one JSON object with "name" (a string) and "arguments".
//   kLlama3Json, as vLLM's Llama3JsonToolParser reads a reply that is only calls: the
//     reply (JSON whitespace around it aside) is one or more JSON objects separated by
//     ";", each with "name" (a string) and "arguments" or "parameters". A reply with
//     other text around its JSON is content (vLLM would take a JSON object out of
//     prose; a model quoting JSON would then call a tool).
// If any call is not readable, the reply is all content and nothing is called.
ParsedToolCalls ParseToolCalls(std::string_view reply, ChatToolFormat format = ChatToolFormat::kHermes);

// How `format` with this chat template takes tools: Qwen3, or a ChatML template that
// writes the Hermes <tool_call> instructions (Qwen2.5's): kHermes; Llama 3.1 / 3.2 with
// its template's tool instructions: kLlama3Json; else kNone.
ChatToolFormat ChatToolCalling(ChatFormat format, std::string_view chat_template);

// The position just past the JSON object that opens `text` ('{' first), scanning
// braces outside strings; npos if it does not close.
size_t JsonObjectEnd(std::string_view text);

}  // namespace fedge::agent::llm
