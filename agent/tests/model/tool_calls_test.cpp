// Tool calls in Qwen2.5's and Qwen3's Hermes format: the tools and calls rendered as
// their templates render them (tests/golden/llm/chat_templates.json "tool_cases":
// jinja2 with transformers' tojson), JSON written as Python's json.dumps, and calls
// read out of a reply as vLLM's hermes parser reads them.
#include "fedge/agent/llm/tool_calls.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "fedge/agent/llm/chat_template.h"
#include "fedge/file_util.h"

namespace fedge::agent::llm {
namespace {

using ordered_json = nlohmann::ordered_json;

TEST(ToolCallsTest, ToolsAndCallsRenderAsTheTemplatesDo) {
  auto text = ReadFile(std::string(FEDGE_GOLDEN_DIR) + "/llm/chat_templates.json");
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  const ordered_json goldens = ordered_json::parse(*text);
  int checked = 0;
  for (const auto& [name, format] : std::vector<std::pair<std::string, ChatFormat>>{
           {"qwen2_5", ChatFormat::kChatMl}, {"qwen3", ChatFormat::kQwen3}}) {
    const std::string chat_template = goldens["formats"][name]["template"].get<std::string>();
    EXPECT_TRUE(ChatTakesTools(format, chat_template)) << name;
    for (const ordered_json& c : goldens["tool_cases"][name]) {
      ChatTemplateOptions options;
      options.add_generation_prompt = c["add_generation_prompt"].get<bool>();
      options.default_system = ChatDefaultSystem(format, chat_template);
      if (!c["tools"].is_null()) {
        for (const ordered_json& tool : c["tools"]) options.tools.push_back(PythonJsonDumps(tool));
      }
      std::vector<ChatMessage> messages;
      for (const ordered_json& m : c["messages"]) {
        ChatMessage message{m["role"].get<std::string>(), m["content"].get<std::string>()};
        if (m.contains("tool_calls")) {
          for (const ordered_json& call : m["tool_calls"]) {
            message.tool_calls.push_back({call["function"]["name"].get<std::string>(),
                                          PythonJsonDumps(call["function"]["arguments"])});
          }
        }
        messages.push_back(std::move(message));
      }
      auto rendered = ApplyChatTemplate(format, messages, options);
      ASSERT_TRUE(rendered.ok()) << rendered.status().ToString();
      EXPECT_EQ(*rendered, c["text"].get<std::string>()) << name << " " << c["messages"].dump();
      ++checked;
    }
  }
  EXPECT_EQ(checked, 20);
  // Templates without the Hermes instructions take no tools.
  EXPECT_FALSE(
      ChatTakesTools(ChatFormat::kChatMl, goldens["formats"]["qwen2"]["template"].get<std::string>()));
  EXPECT_FALSE(
      ChatTakesTools(ChatFormat::kLlama32, goldens["formats"]["llama3_2"]["template"].get<std::string>()));
}

TEST(ToolCallsTest, DumpsJsonAsPython) {
  const ordered_json v = ordered_json::parse(
      R"({"z": 1, "a": [true, null, 2.5, -3, 1e-05, 100000.0], "s": "q\"b\\s\n\t\u0001é東", "o": {}, "e": []})");
  EXPECT_EQ(
      PythonJsonDumps(v),
      "{\"z\": 1, \"a\": [true, null, 2.5, -3, 1e-05, 100000.0], \"s\": \"q\\\"b\\\\s\\n\\t\\u0001é東\", "
      "\"o\": {}, \"e\": []}");
}

TEST(ToolCallsTest, ReadsCallsAsVllmsHermesParser) {
  // One call, text before it.
  ParsedToolCalls p = ParseToolCalls(
      "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
      "{\"city\":\"Paris\"}}\n</tool_call>");
  ASSERT_TRUE(p.called);
  EXPECT_EQ(p.content, "Let me check.\n");
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(p.calls[0].arguments, "{\"city\": \"Paris\"}");
  // Two calls, the second never closed (cut off after its JSON): both read; the text
  // between them is dropped as vLLM drops it.
  p = ParseToolCalls(
      "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call> and <tool_call>\n{\"name\": \"b\", "
      "\"arguments\": {\"x\": [1]}}\n");
  ASSERT_TRUE(p.called);
  EXPECT_EQ(p.content, "");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[1].name, "b");
  EXPECT_EQ(p.calls[1].arguments, "{\"x\": [1]}");
  // No tag: all content.
  p = ParseToolCalls("Paris is sunny.");
  EXPECT_FALSE(p.called);
  EXPECT_EQ(p.content, "Paris is sunny.");
  // Any unreadable block makes the whole reply content, nothing called.
  for (const char* bad :
       {"<tool_call>{\"name\": \"a\"}</tool_call>",                                 // no arguments
        "<tool_call>{\"arguments\": {}}</tool_call>",                               // no name
        "<tool_call>{\"name\": 7, \"arguments\": {}}</tool_call>",                  // name not a string
        "<tool_call>not json</tool_call>",                                          // not JSON
        "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{",  // cut off
        "<tool_call></tool_call>"}) {
    p = ParseToolCalls(bad);
    EXPECT_FALSE(p.called) << bad;
    EXPECT_EQ(p.content, bad);
    EXPECT_TRUE(p.calls.empty()) << bad;
  }
}

}  // namespace
}  // namespace fedge::agent::llm
