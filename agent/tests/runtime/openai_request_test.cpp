// The OpenAI request parsers (openai_request.h): what the unmodified `openai`
// client sends is accepted and means what it means at OpenAI; what this server
// does not implement is a 400 naming the field, never silently ignored.
#include "fedge/agent/runtime/openai_request.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstring>

namespace fedge::agent {
namespace {

std::optional<GenerationRequest> Chat(const std::string& body, ApiErrorInfo* error) {
  return ParseGenerationRequest(body, GenerationEndpoint::kChatCompletions, InferenceLimits{}, error);
}
std::optional<GenerationRequest> Completion(const std::string& body, ApiErrorInfo* error) {
  return ParseGenerationRequest(body, GenerationEndpoint::kCompletions, InferenceLimits{}, error);
}

constexpr const char* kHi = R"("messages": [{"role": "user", "content": "hi"}])";

TEST(OpenAiRequestTest, ChatMaxCompletionTokensIsHonouredAndWinsOverMaxTokens) {
  // Regression: max_completion_tokens (what the current client sends) was ignored,
  // so chat replies stopped at 16 tokens.
  ApiErrorInfo e;
  auto r = Chat(std::string("{") + kHi + R"(, "max_completion_tokens": 40})", &e);
  ASSERT_TRUE(r) << e.message;
  EXPECT_EQ(r->options.max_new_tokens, 40);
  r = Chat(std::string("{") + kHi + R"(, "max_tokens": 7, "max_completion_tokens": 40})", &e);
  ASSERT_TRUE(r) << e.message;
  EXPECT_EQ(r->options.max_new_tokens, 40);
  r = Chat(std::string("{") + kHi + R"(, "max_tokens": 7})", &e);
  ASSERT_TRUE(r) << e.message;
  EXPECT_EQ(r->options.max_new_tokens, 7);
  // Chat without a limit runs to the end of the turn (or the context), not 16.
  r = Chat(std::string("{") + kHi + "}", &e);
  ASSERT_TRUE(r) << e.message;
  EXPECT_EQ(r->options.max_new_tokens, InferenceLimits{}.max_generation_tokens);
  // Completions keep OpenAI's default of 16; max_completion_tokens is chat's field.
  auto c = Completion(R"({"prompt": "x"})", &e);
  ASSERT_TRUE(c) << e.message;
  EXPECT_EQ(c->options.max_new_tokens, 16);
  EXPECT_FALSE(Completion(R"({"prompt": "x", "max_completion_tokens": 5})", &e));
  EXPECT_EQ(e.code, "unknown_parameter");
  EXPECT_FALSE(Chat(std::string("{") + kHi + R"(, "max_completion_tokens": 0})", &e));
  EXPECT_EQ(e.param, "max_completion_tokens");
}

TEST(OpenAiRequestTest, ContentAsTextPartsIsJoinedAndDeveloperIsSystem) {
  ApiErrorInfo e;
  auto r = Chat(R"({"messages": [{"role": "developer", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "dog"}, {"type": "text", "text": "cat"}]},
                  {"role": "assistant", "content": "ok", "name": "bot"}]})",
                &e);
  ASSERT_TRUE(r) << e.message;
  ASSERT_EQ(r->messages.size(), 3u);
  EXPECT_EQ(r->messages[0].role, "system");
  EXPECT_EQ(r->messages[1].content, "dog\ncat");
  EXPECT_EQ(r->messages[2].role, "assistant");
  // Other part types are refused, naming the part.
  EXPECT_FALSE(Chat(R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                   {"type": "image_url", "image_url": {"url": "http://x"}}]}]})",
                    &e));
  EXPECT_EQ(e.code, "unsupported_content");
  EXPECT_NE(e.message.find("messages[0].content[1]"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("image_url"), std::string::npos) << e.message;
  for (const char* bad : {R"({"messages": [{"role": "function", "content": "42", "name": "f"}]})",
                          R"({"messages": [{"role": "tool", "content": "42", "tool_call_id": 7}]})",
                          R"({"messages": [{"role": "user", "content": "x",
                               "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f"}}]}]})",
                          R"({"messages": [{"role": "assistant", "content": null,
                               "tool_calls": [{"id": "t", "type": "function"}]}]})",
                          R"({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "t",
                               "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]})",
                          R"({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "t",
                               "type": "function", "function": {"name": "no spaces", "arguments": "{}"}}]}]})",
                          R"({"messages": [{"role": "assistant", "content": null}]})",
                          R"({"messages": [{"role": "wizard", "content": "x"}]})",
                          R"({"messages": [{"role": "user", "content": null}]})",
                          R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})"}) {
    EXPECT_FALSE(Chat(bad, &e)) << bad;
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "messages") << bad;
  }
}

// tools are kept as the chat template's tojson writes them (key order as sent), tool
// messages and assistant tool_calls are read (arguments re-written the same way), and
// malformed tools are refused naming 'tools'.
TEST(OpenAiRequestTest, ToolsAndToolMessagesAreRead) {
  ApiErrorInfo e;
  auto req = Chat(
      R"({"messages": [{"role": "user", "content": "Weather?"},
                       {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"days\":[1,2]}"}}]},
                       {"role": "tool", "tool_call_id": "c1", "content": "21C"}],
          "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
                     "properties": {"city": {"type": "string"}}}, "description": "Weather"}}],
          "tool_choice": "auto", "parallel_tool_calls": false})",
      &e);
  ASSERT_TRUE(req.has_value()) << e.message;
  ASSERT_EQ(req->tools.size(), 1u);
  EXPECT_EQ(
      req->tools[0],
      "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": "
      "\"object\", \"properties\": {\"city\": {\"type\": \"string\"}}}, \"description\": \"Weather\"}}");
  EXPECT_FALSE(req->tool_choice_none);
  ASSERT_EQ(req->messages.size(), 3u);
  EXPECT_EQ(req->messages[1].content, "");
  ASSERT_EQ(req->messages[1].tool_calls.size(), 1u);
  EXPECT_EQ(req->messages[1].tool_calls[0].name, "get_weather");
  EXPECT_EQ(req->messages[1].tool_calls[0].arguments, "{\"city\": \"Paris\", \"days\": [1, 2]}");
  EXPECT_EQ(req->messages[2].role, "tool");
  EXPECT_EQ(req->messages[2].content, "21C");
  req = Chat(R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "none",
                  "tools": [{"type": "function", "function": {"name": "f"}}]})",
             &e);
  ASSERT_TRUE(req.has_value()) << e.message;
  EXPECT_TRUE(req->tool_choice_none);
  // Tools are prompt text: with the messages they stay within max_input_chars.
  InferenceLimits small;
  small.max_input_chars = 100;
  EXPECT_FALSE(ParseGenerationRequest(
      R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f",
          "description": ")" +
          std::string(90, 'd') + R"("}}]})",
      GenerationEndpoint::kChatCompletions, small, &e));
  EXPECT_EQ(e.code, "input_too_long");
  EXPECT_EQ(e.param, "tools");
  // tool_choice "auto" without tools is refused as OpenAI refuses it; "none" is harmless.
  EXPECT_FALSE(Chat(R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"})", &e));
  EXPECT_EQ(e.param, "tool_choice");
  EXPECT_TRUE(Chat(R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "none"})", &e))
      << e.message;
  std::string many = "[";
  for (int i = 0; i < 129; ++i)
    many += std::string(i ? "," : "") + R"({"type": "function", "function": {"name": "f"}})";
  many += "]";
  for (const std::string& tools :
       {std::string(R"({"type": "function"})"), std::string(R"([{"type": "retrieval"}])"),
        std::string(R"([{"type": "function", "function": {}}])"),
        std::string(R"([{"type": "function", "function": {"name": "has space"}}])"),
        std::string(R"([{"type": "function", "function": {"name": "f", "parameters": "{}"}}])"),
        std::string(R"([{"type": "function", "function": {"name": "f", "description": 3}}])"), many}) {
    EXPECT_FALSE(Chat(R"({"messages": [{"role": "user", "content": "x"}], "tools": )" + tools + "}", &e))
        << tools;
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "tools") << tools;
  }
}

TEST(OpenAiRequestTest, UnsupportedFeaturesAreRefusedNamingTheField) {
  const std::pair<const char*, const char*> chat_cases[] = {
      {R"("tool_choice": "any", "tools": [{"type": "function", "function": {"name": "f"}}])", "tool_choice"},
      {R"("tool_choice": {"type": "function", "function": {"name": "f", "x": 1}})", "tool_choice"},
      {R"("functions": [{"name": "f"}])", "functions"},
      {R"("function_call": "auto")", "function_call"},
      {R"("response_format": {"type": "grammar", "grammar": "root ::= x"})", "response_format"},
      {R"("logprobs": true)", "logprobs"},
      {R"("top_logprobs": 3)", "top_logprobs"},
      {R"("n": 2)", "n"},
      {R"("presence_penalty": 0.5)", "presence_penalty"},
      {R"("frequency_penalty": -1)", "frequency_penalty"},
      {R"("logit_bias": {"50256": -100})", "logit_bias"},
      {R"("modalities": ["text", "audio"])", "modalities"},
      {R"("audio": {"voice": "alloy"})", "audio"},
      {R"("reasoning_effort": "low")", "reasoning_effort"},
  };
  for (const auto& [field, param] : chat_cases) {
    ApiErrorInfo e;
    std::string body = std::string("{") + kHi + ", " + field + "}";
    EXPECT_FALSE(Chat(body, &e)) << body;
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.type, "invalid_request_error");
    EXPECT_EQ(e.param, param) << body;
    EXPECT_EQ(e.code, "unsupported_parameter") << body;
  }
  const std::pair<const char*, const char*> completion_cases[] = {
      {R"("logprobs": 0)", "logprobs"}, {R"("echo": true)", "echo"}, {R"("suffix": "end")", "suffix"},
      {R"("best_of": 3)", "best_of"},   {R"("n": 4)", "n"},
  };
  for (const auto& [field, param] : completion_cases) {
    ApiErrorInfo e;
    std::string body = std::string(R"({"prompt": "x", )") + field + "}";
    EXPECT_FALSE(Completion(body, &e)) << body;
    EXPECT_EQ(e.param, param) << body;
    EXPECT_EQ(e.code, "unsupported_parameter") << body;
  }
  // Unknown fields are refused as OpenAI refuses them.
  ApiErrorInfo e;
  EXPECT_FALSE(Chat(std::string("{") + kHi + R"(, "mirostat": 2})", &e));
  EXPECT_EQ(e.param, "mirostat");
  EXPECT_EQ(e.code, "unknown_parameter");
}

// Structured outputs: a json_schema format is compiled into the generation options;
// a malformed one, or one with a keyword fedge cannot hold the reply to, is refused
// naming the field and the schema's place.
TEST(OpenAiRequestTest, JsonSchemaFormatsAreCompiledOrRefusedByName) {
  ApiErrorInfo e;
  auto format = [](const std::string& rf) {
    return std::string("{") + kHi + R"(, "response_format": )" + rf + "}";
  };
  auto ok = Chat(format(R"({"type": "json_schema", "json_schema": {"name": "Event", "strict": true,
      "description": "d", "schema": {"type": "object", "properties": {"a": {"type": "integer"}},
      "required": ["a"], "additionalProperties": false}}})"),
                 &e);
  ASSERT_TRUE(ok) << e.message;
  EXPECT_NE(ok->options.json_schema, nullptr);
  EXPECT_FALSE(ok->options.json_object);
  auto no_schema = Chat(format(R"({"type": "json_schema", "json_schema": {"name": "any"}})"), &e);
  ASSERT_TRUE(no_schema) << e.message;
  EXPECT_NE(no_schema->options.json_schema, nullptr);  // any object
  const struct {
    std::string rf, param, code, says;
  } refused[] = {
      {R"({"type": "json_schema"})", "response_format.json_schema", "invalid_type", "must be an object"},
      {R"({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}})",
       "response_format.json_schema.name", "invalid_value", "1 to 64"},
      {R"({"type": "json_schema", "json_schema": {"name": "a b"}})", "response_format.json_schema.name",
       "invalid_value", "1 to 64"},
      {R"({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}})",
       "response_format.json_schema.strict", "invalid_type", "boolean"},
      {R"({"type": "json_schema", "json_schema": {"name": "x", "format": 1}})",
       "response_format.json_schema.format", "unknown_parameter", "not a field"},
      {R"({"type": "json_object", "json_schema": {"name": "x"}})", "response_format.json_schema",
       "unknown_parameter", "not a field of a json_object"},
      {R"({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties":
          {"n": {"type": "integer", "minimum": 0}}}}})",
       "response_format.json_schema.schema", "unsupported_value",
       "invalid schema for response_format 'x': 'minimum' at #/properties/n is not supported"},
      {R"({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}})",
       "response_format.json_schema.schema", "invalid_value", "root must be an object"},
      {R"({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": ["a"]}}})",
       "response_format.json_schema.schema", "unsupported_value", "'properties' does not list"},
  };
  for (const auto& c : refused) {
    EXPECT_FALSE(Chat(format(c.rf), &e)) << c.rf;
    EXPECT_EQ(e.status, 400) << c.rf;
    EXPECT_EQ(e.param, c.param) << c.rf;
    EXPECT_EQ(e.code, c.code) << c.rf;
    EXPECT_NE(e.message.find(c.says), std::string::npos) << e.message;
  }
}

// The attack: JSON nested 100,000 deep where the request is dumped or compiled
// (a tool's parameters, a response format's schema) would overflow the stack of a
// recursive walk. Refused as too deep, naming the field; 64 levels pass.
TEST(OpenAiRequestTest, DeeplyNestedToolsAndSchemasAreRefused) {
  const int kDeep = 100000;
  const std::string arrays = std::string(kDeep, '[') + std::string(kDeep, ']');
  std::string schema;
  for (int i = 0; i < kDeep; ++i) schema += R"({"type": "object", "properties": {"a": )";
  schema += "{}";
  for (int i = 0; i < kDeep; ++i) schema += "}}";
  const struct {
    std::string field, param;
  } cases[] = {
      {R"("tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "x": )" +
           arrays + "}}}]",
       "tools"},
      {R"("response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object",
          "properties": {"a": {"enum": [)" +
           arrays + "]}}}}}",
       "response_format"},
      {R"("response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": )" + schema +
           "}}",
       "response_format"},
      {R"("messages": [{"role": "user", "content": [{"type": "text", "text": "x", "y": )" + arrays + "}]}]",
       "messages"},
      // A string of JSON inside the request: an earlier call's arguments.
      {R"("messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"id": "c",
          "type": "function", "function": {"name": "f", "arguments": ")" +
           arrays + R"("}}]}])",
       "messages"},
  };
  for (const auto& c : cases) {
    ApiErrorInfo e;
    EXPECT_FALSE(Chat(std::string("{") + kHi + ", " + c.field + "}", &e)) << c.param;
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, c.param);
    EXPECT_NE(e.message.find("too deep"), std::string::npos) << e.message;
  }
  ApiErrorInfo e;
  EXPECT_TRUE(Chat(
      std::string("{") + kHi + R"(, "metadata": )" + std::string(63, '[') + std::string(63, ']') + "}", &e))
      << e.message;
  EXPECT_FALSE(Chat(
      std::string("{") + kHi + R"(, "metadata": )" + std::string(64, '[') + std::string(64, ']') + "}", &e));
  EXPECT_EQ(e.param, "metadata");
}

// tool_choice "required" and a named function: the tools' schemas are kept for the
// call's constraint (narrowed to the named tool); what cannot be honoured is a 400.
TEST(OpenAiRequestTest, RequiredAndNamedToolChoicesKeepTheToolsSchemas) {
  ApiErrorInfo e;
  const std::string tools =
      R"("tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
                   {"type": "function", "function": {"name": "g", "strict": true, "parameters":
                    {"type": "object", "properties": {"q": {"type": "integer", "minimum": 1}}}}}])";
  auto chat = [&](const std::string& rest) { return Chat(std::string("{") + kHi + ", " + rest + "}", &e); };
  auto named = chat(tools + R"(, "tool_choice": {"type": "function", "function": {"name": "f"}})");
  ASSERT_TRUE(named) << e.message;
  EXPECT_TRUE(named->tool_choice_required);
  EXPECT_EQ(named->tool_choice_name, "f");
  ASSERT_EQ(named->tool_schemas.size(), 1u);
  EXPECT_EQ(named->tool_schemas[0].name, "f");
  EXPECT_EQ(nlohmann::json::parse(named->tool_schemas[0].parameters), nlohmann::json({{"type", "object"}}));
  EXPECT_EQ(named->tools.size(), 2u);  // the prompt still lists both
  // "auto" with a strict tool fedge cannot hold: served (nothing is constrained).
  auto automatic = chat(tools);
  ASSERT_TRUE(automatic) << e.message;
  EXPECT_FALSE(automatic->tool_choice_required);
  // "required" with it: refused, naming the tool and the keyword.
  EXPECT_FALSE(chat(tools + R"(, "tool_choice": "required")"));
  EXPECT_EQ(e.param, "tools");
  EXPECT_EQ(e.code, "unsupported_value");
  EXPECT_NE(e.message.find("tool 'g' is strict"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("'minimum'"), std::string::npos) << e.message;
  EXPECT_FALSE(chat(tools + R"(, "tool_choice": {"type": "function", "function": {"name": "h"}})"));
  EXPECT_EQ(e.param, "tool_choice");
  EXPECT_NE(e.message.find("'h'"), std::string::npos);
  EXPECT_FALSE(chat(R"("tools": [], "tool_choice": "required")"));
  EXPECT_EQ(e.param, "tool_choice");
  EXPECT_FALSE(chat(R"("tool_choice": "required")"));
  EXPECT_EQ(e.param, "tool_choice");
}

TEST(OpenAiRequestTest, OffValuesOfUnsupportedFeaturesAreAccepted) {
  ApiErrorInfo e;
  auto r = Chat(std::string("{") + kHi +
                    R"(, "tools": [], "tool_choice": "none", "parallel_tool_calls": false, "logprobs": false,
                    "top_logprobs": null, "n": 1, "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
                    "response_format": {"type": "text"}, "modalities": ["text"], "user": "u1",
                    "metadata": {"k": "v"}, "store": false, "model": "anything"})",
                &e);
  ASSERT_TRUE(r) << e.message;
  EXPECT_FALSE(r->options.json_object);
  // JSON mode is served (json_grammar.h): the generation options carry it.
  auto json_mode = Chat(std::string("{") + kHi + R"(, "response_format": {"type": "json_object"}})", &e);
  ASSERT_TRUE(json_mode) << e.message;
  EXPECT_TRUE(json_mode->options.json_object);
  auto c = Completion(
      R"({"prompt": ["one prompt"], "echo": false, "best_of": 1, "logprobs": null, "suffix": ""})", &e);
  ASSERT_TRUE(c) << e.message;
  EXPECT_EQ(c->prompt, "one prompt");
}

TEST(OpenAiRequestTest, StopSeedSamplingAndStreamingOptions) {
  ApiErrorInfo e;
  auto r = Completion(R"({"prompt": "x", "stop": "\n", "seed": 7, "temperature": 0, "top_p": 0.5, "top_k": 3,
                          "stream": true, "stream_options": {"include_usage": true}})",
                      &e);
  ASSERT_TRUE(r) << e.message;
  EXPECT_EQ(r->options.stop, std::vector<std::string>{"\n"});
  EXPECT_TRUE(r->seed_given);
  EXPECT_EQ(r->options.sampling.seed, 7u);
  EXPECT_EQ(r->options.sampling.temperature, 0.0);
  EXPECT_EQ(r->options.sampling.top_p, 0.5);
  EXPECT_EQ(r->options.sampling.top_k, 3);
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  r = Completion(R"({"prompt": "x", "stop": ["a", "b", "c", "d"]})", &e);
  ASSERT_TRUE(r) << e.message;
  EXPECT_EQ(r->options.stop.size(), 4u);
  EXPECT_FALSE(r->stream);
  EXPECT_FALSE(r->seed_given);
  // Without a seed, two requests sample with different seeds (as OpenAI's do).
  auto again = Completion(R"({"prompt": "x"})", &e);
  ASSERT_TRUE(again);
  EXPECT_NE(r->options.sampling.seed, again->options.sampling.seed);

  for (const char* bad : {R"({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]})",
                          R"({"prompt": "x", "stream_options": {"include_usage": true}})",
                          R"({"prompt": "x", "stream": true, "stream_options": {"include_usage": 1}})",
                          R"({"prompt": "x", "stream": true, "stream_options": {"chunk_size": 4}})",
                          R"({"prompt": "x", "stream": 1})", R"({"prompt": [1, 2, 3]})",
                          R"({"prompt": ["a", "b"]})", R"({"prompt": "x", "top_k": -1})"}) {
    EXPECT_FALSE(Completion(bad, &e)) << bad;
    EXPECT_EQ(e.status, 400) << bad;
    EXPECT_FALSE(e.message.empty());
  }
}

TEST(OpenAiRequestTest, EmbeddingEncodingsDimensionsAndTokenArrays) {
  ApiErrorInfo e;
  auto r = ParseEmbeddingRequest(R"({"input": "x", "model": "m"})", {}, &e);
  ASSERT_TRUE(r) << e.message;
  EXPECT_EQ(r->encoding, EmbeddingEncoding::kFloat);
  EXPECT_FALSE(r->dimensions);
  r = ParseEmbeddingRequest(R"({"input": ["x", "y"], "encoding_format": "base64", "dimensions": 384})", {},
                            &e);
  ASSERT_TRUE(r) << e.message;
  EXPECT_EQ(r->encoding, EmbeddingEncoding::kBase64);
  EXPECT_EQ(r->inputs.size(), 2u);
  EXPECT_EQ(r->dimensions, 384);
  for (const char* bad : {R"({"input": [1, 2]})", R"({"input": [[1, 2], [3]]})"}) {
    EXPECT_FALSE(ParseEmbeddingRequest(bad, {}, &e)) << bad;
    EXPECT_EQ(e.code, "unsupported_input") << bad;
    EXPECT_NE(e.message.find("token ids"), std::string::npos) << e.message;
  }
  EXPECT_FALSE(ParseEmbeddingRequest(R"({"input": "x", "dimensions": 0})", {}, &e));
  EXPECT_EQ(e.param, "dimensions");
  EXPECT_FALSE(ParseEmbeddingRequest(R"({"input": "x", "encoding_format": "binary"})", {}, &e));
  EXPECT_EQ(e.param, "encoding_format");
}

TEST(OpenAiRequestTest, Base64IsLittleEndianFloat32) {
  // 1.0f = 0x3f800000 -> bytes 00 00 80 3f; -2.0f = 0xc0000000 -> 00 00 00 c0.
  EXPECT_EQ(EncodeFloat32Base64({1.0f}), "AACAPw==");
  EXPECT_EQ(EncodeFloat32Base64({1.0f, -2.0f}), "AACAPwAAAMA=");
  EXPECT_EQ(EncodeFloat32Base64({1.0f, -2.0f, 0.5f}), "AACAPwAAAMAAAAA/");
  EXPECT_EQ(EncodeFloat32Base64({}), "");
}

}  // namespace
}  // namespace fedge::agent
