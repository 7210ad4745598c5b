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
  for (const auto& [name, format] :
       std::vector<std::pair<std::string, ChatFormat>>{{"qwen2_5", ChatFormat::kChatMl},
                                                       {"qwen3", ChatFormat::kQwen3},
                                                       {"llama3_1", ChatFormat::kLlama31},
                                                       {"llama3_2", ChatFormat::kLlama32}}) {
    const std::string chat_template = goldens["formats"][name]["template"].get<std::string>();
    const bool llama = name.rfind("llama", 0) == 0;
    EXPECT_EQ(ChatToolCalling(format, chat_template),
              llama ? ChatToolFormat::kLlama3Json : ChatToolFormat::kHermes)
        << name;
    for (const ordered_json& c : goldens["tool_cases"][name]) {
      ChatTemplateOptions options;
      if (name == "llama3_2") options.date_string = "07 Dec 2026";  // the day the golden was rendered on
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
  EXPECT_EQ(checked, 44);
  // Templates without tool instructions take no tools.
  EXPECT_EQ(ChatToolCalling(ChatFormat::kChatMl, goldens["formats"]["qwen2"]["template"].get<std::string>()),
            ChatToolFormat::kNone);
  EXPECT_EQ(
      ChatToolCalling(ChatFormat::kLlama3, goldens["formats"]["llama3_2"]["template"].get<std::string>()),
      ChatToolFormat::kNone);
  EXPECT_EQ(ChatToolCalling(ChatFormat::kLlama32, ""), ChatToolFormat::kNone);
  EXPECT_EQ(ChatToolCalling(ChatFormat::kGemma, goldens["formats"]["gemma"]["template"].get<std::string>()),
            ChatToolFormat::kNone);
}

// What Llama 3.1 / 3.2's templates raise on is refused by name: two calls in one
// assistant message, tools with no message after the system message to carry them.
TEST(ToolCallsTest, LlamaRefusesWhatItsTemplateRaisesOn) {
  ChatTemplateOptions options;
  options.tools = {R"({"type": "function", "function": {"name": "a"}})"};
  const std::vector<ChatMessage> two_calls = {
      {"user", "Q"}, {"assistant", "", {{"a", "{}"}, {"a", R"({"x": 1})"}}}, {"tool", "1"}, {"tool", "2"}};
  for (const ChatFormat format : {ChatFormat::kLlama31, ChatFormat::kLlama32}) {
    auto text = ApplyChatTemplate(format, two_calls, options);
    ASSERT_FALSE(text.ok());
    EXPECT_NE(text.status().message().find("makes 2 tool calls"), std::string::npos)
        << text.status().message();
    text = ApplyChatTemplate(format, {{"system", "S"}}, options);
    ASSERT_FALSE(text.ok());
    EXPECT_NE(text.status().message().find("first message after the system message"), std::string::npos)
        << text.status().message();
    // Without tools offered, a lone system message is fine.
    EXPECT_TRUE(ApplyChatTemplate(format, {{"system", "S"}}, ChatTemplateOptions{}).ok());
  }
}

TEST(ToolCallsTest, DumpsIndentedJsonAsPython) {
  const ordered_json v = ordered_json::parse(R"({"a": [1, {"b": "é\n"}, []], "o": {}, "n": null})");
  EXPECT_EQ(
      PythonJsonDumps(v, 4),
      "{\n    \"a\": [\n        1,\n        {\n            \"b\": \"é\\n\"\n        },\n        []\n    ],\n"
      "    \"o\": {},\n    \"n\": null\n}");
  EXPECT_EQ(PythonJsonDumps(ordered_json::array(), 4), "[]");
  EXPECT_EQ(PythonJsonDumps(ordered_json(3), 4), "3");
  EXPECT_EQ(PythonJsonDumps(ordered_json::parse(R"({"k": [1]})"), 0), "{\n\"k\": [\n1\n]\n}");
}

// Llama 3.1 / 3.2 replies: the whole reply is its calls (JSON objects, ";" between
// them, "parameters" or "arguments"), as vLLM's llama3_json parser reads them; any
// other reply is content.
TEST(ToolCallsTest, ReadsLlamaJsonCallsAsVllmsLlama3Parser) {
  ParsedToolCalls p = ParseToolCalls("{\"name\": \"get_weather\", \"parameters\": {\"city\":\"Zürich\"}}",
                                     ChatToolFormat::kLlama3Json);
  ASSERT_TRUE(p.called);
  EXPECT_EQ(p.content, "");
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(p.calls[0].arguments, "{\"city\": \"Zürich\"}");
  // Several, whitespace around them, a brace and a ";" inside a string, "arguments".
  p = ParseToolCalls(
      "\n {\"name\": \"a\", \"parameters\": {\"q\": \"x}; {y\"}} ;\n{\"name\": \"b\", \"arguments\": "
      "{\"n\": [1, {\"m\": 2}]}};\n",
      ChatToolFormat::kLlama3Json);
  ASSERT_TRUE(p.called);
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].arguments, "{\"q\": \"x}; {y\"}");
  EXPECT_EQ(p.calls[1].name, "b");
  EXPECT_EQ(p.calls[1].arguments, "{\"n\": [1, {\"m\": 2}]}");
  // "arguments" wins over "parameters", as vLLM reads a call with both.
  p = ParseToolCalls(R"({"name": "a", "parameters": {"p": 1}, "arguments": {"a": 2}})",
                     ChatToolFormat::kLlama3Json);
  ASSERT_TRUE(p.called);
  EXPECT_EQ(p.calls[0].arguments, "{\"a\": 2}");
  // Hermes blocks are not Llama calls, and "parameters" is not Hermes' key.
  EXPECT_FALSE(ParseToolCalls("<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>",
                              ChatToolFormat::kLlama3Json)
                   .called);
  EXPECT_FALSE(ParseToolCalls("<tool_call>{\"name\": \"a\", \"parameters\": {}}</tool_call>").called);
  for (const char* bad : {
           "Paris is sunny.", "",
           "The call is {\"name\": \"a\", \"parameters\": {}}",  // prose first
           "{\"name\": \"a\", \"parameters\": {}} and more",     // prose after
           "{\"name\": \"a\"}",                                  // no arguments
           "{\"parameters\": {}}",                               // no name
           "{\"name\": [\"a\"], \"parameters\": {}}",            // name not a string
           "{\"name\": \"a\", \"parameters\": {}",               // cut off
           "{\"name\": \"a\", \"parameters\": {}} {\"name\": \"b\", \"parameters\": {}}",  // no ";"
           "{\"name\": \"a\", \"parameters\": {}};;",
           "{\"name\": \"a\" \"parameters\": {}}",  // not JSON
       }) {
    p = ParseToolCalls(bad, ChatToolFormat::kLlama3Json);
    EXPECT_FALSE(p.called) << bad;
    EXPECT_EQ(p.content, bad);
    EXPECT_TRUE(p.calls.empty()) << bad;
  }
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
