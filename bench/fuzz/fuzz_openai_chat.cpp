// Fuzz target: a chat completion request body from untrusted bytes (any pod that
// reaches the agent's port sends one) through ParseGenerationRequest, the rendering
// of what it accepted in the chat formats (the tool formats with its tools), and the
// same bytes read as a model's reply (ReadChatReply: reasoning, and Hermes or Llama
// JSON tool calls). Properties: a parsed request's tools and call arguments are JSON;
// ParseToolCalls' content is the text before the first <tool_call> (Llama: empty) and
// every call's arguments parse; a reply streamed through ReasoningSplitter +
// ToolCallStream in pieces (sizes from the input) adds up to ReadChatReply of the whole.
// Requests with a json_schema format compile what they send. The bytes fed to JSON
// mode's and structured outputs' automata, when complete, are objects nlohmann parses.
#include <algorithm>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/agent/llm/chat_template.h"
#include "fedge/agent/llm/json_grammar.h"
#include "fedge/agent/llm/json_schema.h"
#include "fedge/agent/llm/tool_calls.h"
#include "fedge/agent/runtime/openai_request.h"
#include "fedge/agent/runtime/reasoning.h"
#include "fuzz_util.h"

using fedge::fuzz::Fail;
namespace llm = fedge::agent::llm;

namespace {

bool IsJson(const std::string& s) { return !nlohmann::json::parse(s, nullptr, false).is_discarded(); }

void CheckRequest(std::string_view bytes) {
  fedge::agent::ApiErrorInfo error;
  auto req = fedge::agent::ParseGenerationRequest(bytes, fedge::agent::GenerationEndpoint::kChatCompletions,
                                                  fedge::agent::InferenceLimits{}, &error);
  if (!req) {
    if (error.status < 400 || error.message.empty())
      Fail("a refused request without a 4xx and a message", "");
    return;
  }
  for (const std::string& tool : req->tools) {
    if (!IsJson(tool)) Fail("a tool is not JSON", tool);
  }
  for (const llm::ChatMessage& m : req->messages) {
    for (const llm::ChatToolCall& call : m.tool_calls) {
      if (!IsJson(call.arguments)) Fail("a call's arguments are not JSON", call.arguments);
    }
  }
  for (llm::ChatFormat format :
       {llm::ChatFormat::kChatMl, llm::ChatFormat::kQwen3, llm::ChatFormat::kDeepSeekR1,
        llm::ChatFormat::kLlama32, llm::ChatFormat::kGemma}) {
    llm::ChatTemplateOptions options;
    options.enable_thinking = req->enable_thinking;
    options.date_string = "07 Dec 2026";
    if (format != llm::ChatFormat::kDeepSeekR1 && format != llm::ChatFormat::kGemma)
      options.tools = req->tools;
    (void)llm::ApplyChatTemplate(format, req->messages, options);
  }
}

void CheckReply(std::string_view text, llm::ChatToolFormat format, uint64_t seed) {
  const llm::ParsedToolCalls calls = llm::ParseToolCalls(text, format);
  const size_t first = format == llm::ChatToolFormat::kHermes ? text.find("<tool_call>") : 0;
  if (calls.called) {
    if (calls.calls.empty()) Fail("called without calls", std::string(text));
    if (calls.content != text.substr(0, first)) Fail("content is not the text before the first call", "");
    for (const llm::ChatToolCall& call : calls.calls) {
      if (!IsJson(call.arguments)) Fail("parsed arguments are not JSON", call.arguments);
    }
  } else if (calls.content != text) {
    Fail("not called, but the content is not the whole reply", "");
  }
  for (auto mode :
       {llm::ChatReasoning::kNone, llm::ChatReasoning::kOpensWithTag, llm::ChatReasoning::kStartsInside}) {
    const fedge::agent::ChatReplyParts whole = fedge::agent::ReadChatReply(text, mode, format);
    fedge::agent::ReasoningSplitter splitter(mode);
    fedge::agent::ToolCallStream tools(format);
    std::string reasoning, content;
    auto take = [&](fedge::agent::ReasoningSplitter::Parts p) {
      reasoning += p.reasoning;
      content += tools.Feed(p.content);
    };
    uint64_t s = seed;
    for (size_t i = 0; i < text.size();) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      const size_t n = 1 + (s >> 60);
      const std::string_view piece = text.substr(i, n);
      if (mode == llm::ChatReasoning::kNone) {
        content += tools.Feed(piece);
      } else {
        take(splitter.Feed(piece));
      }
      i += n;
    }
    if (mode != llm::ChatReasoning::kNone) take(splitter.Finish());
    const llm::ParsedToolCalls end = tools.Finish();
    if (!end.called) content += end.content;
    if (reasoning != whole.reasoning) Fail("streamed reasoning differs from the whole reply's", reasoning);
    if (content != whole.content) Fail("streamed content differs from the whole reply's", content);
    if (end.calls.size() != whole.calls.size()) Fail("streamed calls differ from the whole reply's", "");
    for (size_t k = 0; k < end.calls.size(); ++k) {
      if (end.calls[k].name != whole.calls[k].name || end.calls[k].arguments != whole.calls[k].arguments)
        Fail("a streamed call differs from the whole reply's", end.calls[k].name);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  CheckRequest(bytes);
  uint64_t seed = 0;
  for (size_t i = 0; i < std::min<size_t>(size, 8); ++i) seed = seed * 131 + data[i];
  // JSON mode's automaton, and structured outputs' over a schema with every kind of
  // node: what they take as a whole object nlohmann parses as one (unless a number
  // is beyond double's range); the schema's, as one the schema's types allow.
  static const std::shared_ptr<const llm::JsonSchema> kSchema = [] {
    auto s = llm::CompileJsonSchema(
        R"({"$defs": {"N": {"type": "object", "properties": {"k": {"type": "array", "items": {"$ref": "#/$defs/N"},
            "maxItems": 3}, "v": {"anyOf": [{"type": "string", "maxLength": 4}, {"type": "null"}]}},
            "required": ["v"]}},
            "type": "object", "properties": {"e": {"enum": ["a", "ab", 1, 10, true]}, "n": {"type": "number"},
            "i": {"type": "integer"}, "t": {"$ref": "#/$defs/N"}, "m": {"additionalProperties": {"type": "boolean"}}},
            "required": ["e"]})");
    if (!s.ok()) Fail("the fuzz schema does not compile", s.status().message());
    return *s;
  }();
  auto parses_as_object = [&](const char* who) {
    try {
      const auto v = nlohmann::json::parse(bytes);
      if (!v.is_object()) Fail((std::string(who) + " completed a non-object").c_str(), std::string(bytes));
      return std::optional<nlohmann::json>(v);
    } catch (const nlohmann::json::out_of_range&) {
    } catch (const nlohmann::json::exception&) {
      Fail((std::string(who) + " completed text nlohmann refuses").c_str(), std::string(bytes));
    }
    return std::optional<nlohmann::json>();
  };
  llm::JsonPrefix prefix;
  if (prefix.FeedAll(bytes) && prefix.Complete()) parses_as_object("JSON mode");
  llm::JsonSchemaPrefix schema_prefix(kSchema);
  if (schema_prefix.FeedAll(bytes) && schema_prefix.Complete()) {
    if (auto v = parses_as_object("the schema's automaton")) {
      if (!v->contains("e") ||
          !((*v)["e"] == "a" || (*v)["e"] == "ab" || (*v)["e"] == 1 || (*v)["e"] == 10 || (*v)["e"] == true))
        Fail("the schema's automaton completed an object without its required enum", std::string(bytes));
      if (v->contains("i") && !(*v)["i"].is_number_integer() && !(*v)["i"].is_number_unsigned())
        Fail("the schema's automaton completed a non-integer 'i'", std::string(bytes));
    }
  }
  CheckReply(bytes, llm::ChatToolFormat::kHermes, seed);
  CheckReply(bytes, llm::ChatToolFormat::kLlama3Json, seed);
  return 0;
}
