#include "fedge/agent/runtime/openai_request.h"

#include "fedge/agent/llm/json_schema.h"
#include "fedge/agent/llm/tool_calls.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

namespace fedge::agent {

namespace {

using Json = nlohmann::ordered_json;

// Fills *error with a 400 and returns nullopt-compatible false.
bool Fail(ApiErrorInfo* error, std::string message, std::string param, std::string code) {
  *error = ApiErrorInfo{};
  error->message = std::move(message);
  error->param = std::move(param);
  error->code = std::move(code);
  return false;
}

// Arrays and objects in a request nest at most this deep. What is nested is dumped
// (a tool's parameters into the prompt) or compiled (a response format's schema) by
// recursive walks, which a body of 4 MB of '[' would take past the thread's stack.
constexpr int kMaxRequestDepth = 64;

// Whether `v`, itself `depth` levels in, holds arrays or objects deeper than
// kMaxRequestDepth (walked with a stack of its own, not recursion).
bool NestsTooDeep(const Json& v, int depth) {
  std::vector<std::pair<const Json*, int>> todo = {{&v, depth}};
  while (!todo.empty()) {
    const auto [x, d] = todo.back();
    todo.pop_back();
    if (!x->is_structured()) continue;
    if (d > kMaxRequestDepth) return true;
    for (const Json& child : *x) todo.emplace_back(&child, d + 1);
  }
  return false;
}

// The top-level field within which `body` nests too deep, or nullopt.
std::optional<std::string> TooDeep(const Json& body) {
  for (auto it = body.begin(); it != body.end(); ++it) {
    if (NestsTooDeep(*it, 2)) return it.key();
  }
  return std::nullopt;
}

bool ParseObject(std::string_view text, Json* body, ApiErrorInfo* error) {
  *body = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body->is_discarded()) return Fail(error, "request body is not valid JSON", "", "invalid_json");
  if (!body->is_object()) return Fail(error, "request body must be a JSON object", "", "invalid_json");
  if (auto field = TooDeep(*body))
    return Fail(error,
                "'" + *field + "' nests arrays and objects too deep: at most " +
                    std::to_string(kMaxRequestDepth) + " levels in a request",
                *field, "invalid_value");
  return true;
}

// True when `body` has `key` with a non-null value.
bool Has(const Json& body, const char* key) { return body.contains(key) && !body[key].is_null(); }

bool CheckModel(const Json& body, ApiErrorInfo* error) {
  if (Has(body, "model") && !body["model"].is_string())
    return Fail(error, "'model' must be a string", "model", "invalid_type");
  return true;
}

// Refuses fields outside `known` the way OpenAI does.
bool CheckKnownFields(const Json& body, const std::set<std::string>& known, ApiErrorInfo* error) {
  for (const auto& [key, value] : body.items()) {
    if (known.count(key) == 0) {
      return Fail(error,
                  "unrecognized request argument supplied: '" +
                      (key.size() > 64 ? key.substr(0, 64) + "..." : key) +
                      "' (see docs/inference-api.md for the fields this server supports)",
                  key, "unknown_parameter");
    }
  }
  return true;
}

bool IsBlank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c); });
}

// "input": a string or a non-empty array of strings, each non-blank and within
// the limits. Token arrays get their own message (OpenAI accepts them).
bool ParseTexts(const Json& body, const InferenceLimits& limits, std::vector<std::string>* texts,
                ApiErrorInfo* error) {
  if (!Has(body, "input"))
    return Fail(error, "'input' is required: a string or an array of strings", "input", "missing_input");
  const Json& input = body["input"];
  texts->clear();
  if (input.is_string()) {
    texts->push_back(input.get<std::string>());
  } else if (input.is_array()) {
    if (input.empty()) return Fail(error, "'input' must not be an empty array", "input", "empty_input");
    if (input.size() > limits.max_inputs) {
      return Fail(error,
                  "'input' has " + std::to_string(input.size()) + " items; at most " +
                      std::to_string(limits.max_inputs) + " per request",
                  "input", "too_many_inputs");
    }
    if (input[0].is_number_integer() || input[0].is_array()) {
      return Fail(error,
                  "'input' as token ids is not supported by this server: send the text (a string or an "
                  "array of strings)",
                  "input", "unsupported_input");
    }
    for (size_t i = 0; i < input.size(); ++i) {
      if (!input[i].is_string())
        return Fail(error, "'input[" + std::to_string(i) + "]' must be a string", "input", "invalid_type");
      texts->push_back(input[i].get<std::string>());
    }
  } else {
    return Fail(error, "'input' must be a string or an array of strings", "input", "invalid_type");
  }
  for (size_t i = 0; i < texts->size(); ++i) {
    std::string where = input.is_array() ? "'input[" + std::to_string(i) + "]'" : "'input'";
    if (IsBlank((*texts)[i])) return Fail(error, where + " is empty", "input", "empty_input");
    if ((*texts)[i].size() > limits.max_input_chars) {
      return Fail(error,
                  where + " has " + std::to_string((*texts)[i].size()) + " bytes; at most " +
                      std::to_string(limits.max_input_chars),
                  "input", "input_too_long");
    }
  }
  return true;
}

// A field that must be absent, null or one of the values meaning "off".
bool RefuseUnlessOff(const Json& body, const char* key, const std::function<bool(const Json&)>& off,
                     const std::string& message, ApiErrorInfo* error) {
  if (!Has(body, key) || off(body[key])) return true;
  return Fail(error, message, key, "unsupported_parameter");
}

bool IsFalse(const Json& v) { return v.is_boolean() && !v.get<bool>(); }
bool IsZero(const Json& v) { return v.is_number() && v.get<double>() == 0; }
bool IsEmpty(const Json& v) { return (v.is_array() || v.is_object()) && v.empty(); }

bool ParseMaxTokens(const Json& body, const char* key, const InferenceLimits& limits, std::optional<int>* out,
                    ApiErrorInfo* error) {
  if (!Has(body, key)) return true;
  const Json& v = body[key];
  if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > limits.max_generation_tokens) {
    return Fail(error,
                std::string("'") + key + "' must be an integer in [1, " +
                    std::to_string(limits.max_generation_tokens) + "]",
                key, "invalid_value");
  }
  *out = static_cast<int>(v.get<int64_t>());
  return true;
}

bool ParseSampling(const Json& body, GenerationRequest* req, ApiErrorInfo* error) {
  llm::SamplingOptions& s = req->options.sampling;
  s.temperature = 1.0;  // OpenAI's default
  if (Has(body, "temperature")) {
    const Json& v = body["temperature"];
    if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 2)
      return Fail(error, "'temperature' must be a number in [0, 2]", "temperature", "invalid_value");
    s.temperature = v.get<double>();
  }
  if (Has(body, "top_p")) {
    const Json& v = body["top_p"];
    if (!v.is_number() || !(v.get<double>() > 0) || v.get<double>() > 1)
      return Fail(error, "'top_p' must be a number in (0, 1]", "top_p", "invalid_value");
    s.top_p = v.get<double>();
  }
  if (Has(body, "top_k")) {
    const Json& v = body["top_k"];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 1'000'000)
      return Fail(error, "'top_k' must be a non-negative integer (0: off)", "top_k", "invalid_value");
    s.top_k = static_cast<int>(v.get<int64_t>());
  }
  if (Has(body, "seed")) {
    const Json& v = body["seed"];
    if (!v.is_number_integer()) return Fail(error, "'seed' must be an integer", "seed", "invalid_type");
    s.seed = v.is_number_unsigned() ? v.get<uint64_t>() : static_cast<uint64_t>(v.get<int64_t>());
    req->seed_given = true;
  } else {
    // Without a seed every request samples differently, as OpenAI's do.
    thread_local std::mt19937_64 rng{(static_cast<uint64_t>(std::random_device{}()) << 32) ^
                                     std::random_device{}()};
    s.seed = rng();
  }
  return true;
}

bool ParseStop(const Json& body, std::vector<std::string>* stops, ApiErrorInfo* error) {
  if (!Has(body, "stop")) return true;
  const Json& v = body["stop"];
  if (v.is_string()) {
    stops->push_back(v.get<std::string>());
  } else if (v.is_array() && v.size() <= 4 &&
             std::all_of(v.begin(), v.end(), [](const Json& x) { return x.is_string(); })) {
    for (const Json& x : v) stops->push_back(x.get<std::string>());
  } else {
    return Fail(error, "'stop' must be a string or an array of at most 4 strings", "stop", "invalid_type");
  }
  for (const auto& stop : *stops) {
    if (stop.empty()) return Fail(error, "'stop' strings must not be empty", "stop", "invalid_value");
  }
  return true;
}

bool ParseStreaming(const Json& body, GenerationRequest* req, ApiErrorInfo* error) {
  if (Has(body, "stream")) {
    if (!body["stream"].is_boolean())
      return Fail(error, "'stream' must be a boolean", "stream", "invalid_type");
    req->stream = body["stream"].get<bool>();
  }
  if (!Has(body, "stream_options")) return true;
  const Json& so = body["stream_options"];
  if (!req->stream) {
    return Fail(error, "'stream_options' is only allowed when 'stream' is true", "stream_options",
                "invalid_value");
  }
  if (!so.is_object())
    return Fail(error, "'stream_options' must be an object", "stream_options", "invalid_type");
  for (const auto& [key, value] : so.items()) {
    if (key == "include_usage") {
      if (!value.is_null() && !value.is_boolean()) {
        return Fail(error, "'stream_options.include_usage' must be a boolean", "stream_options.include_usage",
                    "invalid_type");
      }
      req->include_usage = value.is_boolean() && value.get<bool>();
    } else if (key != "include_obfuscation") {  // padding against side channels; nothing to pad here
      return Fail(error, "unrecognized 'stream_options." + key + "'", "stream_options", "unknown_parameter");
    }
  }
  return true;
}

// The feature fields neither endpoint implements: refused unless off.
// response_format (RefuseUnsupported checked its type): json_object is JSON mode;
// json_schema {"name", "schema"?, "strict"?, "description"?} compiles the schema
// (json_schema.h), or takes any object without one.
bool ParseResponseFormat(const Json& body, llm::GenerationOptions* options, ApiErrorInfo* error) {
  if (!Has(body, "response_format")) return true;
  const Json& rf = body["response_format"];
  const std::string type = rf["type"].get<std::string>();
  for (const auto& [key, value] : rf.items()) {
    if (key != "type" && !(type == "json_schema" && key == "json_schema"))
      return Fail(error, "'response_format." + key + "' is not a field of a " + type + " response format",
                  "response_format." + key, "unknown_parameter");
  }
  if (type == "json_object") options->json_object = true;
  if (type != "json_schema") return true;
  if (!rf.contains("json_schema") || !rf["json_schema"].is_object())
    return Fail(error, "'response_format.json_schema' must be an object {\"name\", \"schema\"}",
                "response_format.json_schema", "invalid_type");
  const Json& js = rf["json_schema"];
  for (const auto& [key, value] : js.items()) {
    if (key != "name" && key != "schema" && key != "strict" && key != "description")
      return Fail(error,
                  "'response_format.json_schema." + key +
                      "' is not a field of a JSON schema format (name, schema, strict, description)",
                  "response_format.json_schema." + key, "unknown_parameter");
  }
  const bool name_ok = js.contains("name") && js["name"].is_string() &&
                       !js["name"].get<std::string>().empty() && js["name"].get<std::string>().size() <= 64 &&
                       [&] {
                         for (char c : js["name"].get<std::string>())
                           if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-')
                             return false;
                         return true;
                       }();
  if (!name_ok)
    return Fail(error, "'response_format.json_schema.name' must be 1 to 64 letters, digits, '_' or '-'",
                "response_format.json_schema.name", "invalid_value");
  if (Has(js, "strict") && !js["strict"].is_boolean())
    return Fail(error, "'response_format.json_schema.strict' must be a boolean",
                "response_format.json_schema.strict", "invalid_type");
  if (Has(js, "description") && !js["description"].is_string())
    return Fail(error, "'response_format.json_schema.description' must be a string",
                "response_format.json_schema.description", "invalid_type");
  // No schema: any object (OpenAI's field is optional).
  const std::string schema = Has(js, "schema") ? js["schema"].dump() : std::string(R"({"type": "object"})");
  auto compiled = llm::CompileJsonSchema(schema);
  if (!compiled.ok()) {
    const bool unsupported = compiled.status().code() == StatusCode::kUnimplemented;
    return Fail(error,
                "invalid schema for response_format '" + js["name"].get<std::string>() +
                    "': " + compiled.status().message(),
                "response_format.json_schema.schema", unsupported ? "unsupported_value" : "invalid_value");
  }
  options->json_schema = std::move(compiled).value();
  return true;
}

bool RefuseUnsupported(const Json& body, GenerationEndpoint endpoint, ApiErrorInfo* error) {
  auto n_is_one = [](const Json& v) { return v.is_number_integer() && v.get<int64_t>() == 1; };
  if (!RefuseUnlessOff(body, "n", n_is_one,
                       "only 'n': 1 is supported (one choice per request); send n requests with different "
                       "seeds for more",
                       error))
    return false;
  for (const char* key : {"presence_penalty", "frequency_penalty"}) {
    if (!RefuseUnlessOff(body, key, IsZero,
                         std::string("'") + key + "' is not supported by this server (only 0)", error))
      return false;
  }
  if (!RefuseUnlessOff(body, "logit_bias", IsEmpty, "'logit_bias' is not supported by this server", error))
    return false;
  if (endpoint == GenerationEndpoint::kCompletions) {
    if (!RefuseUnlessOff(
            body, "logprobs", [](const Json&) { return false; }, "'logprobs' is not supported by this server",
            error))
      return false;
    if (!RefuseUnlessOff(body, "echo", IsFalse, "'echo': true is not supported by this server", error))
      return false;
    if (!RefuseUnlessOff(
            body, "suffix", [](const Json& v) { return v.is_string() && v.get<std::string>().empty(); },
            "'suffix' (insertion) is not supported by this server", error))
      return false;
    if (!RefuseUnlessOff(body, "best_of", n_is_one, "only 'best_of': 1 is supported", error)) return false;
    return true;
  }
  if (!RefuseUnlessOff(body, "logprobs", IsFalse, "'logprobs': true is not supported by this server", error))
    return false;
  if (!RefuseUnlessOff(body, "top_logprobs", IsZero, "'top_logprobs' is not supported by this server", error))
    return false;
  // The legacy function-calling fields: 'tools' and 'tool_choice' replaced them.
  for (const char* key : {"functions", "function_call"}) {
    if (!RefuseUnlessOff(
            body, key, IsEmpty,
            std::string("'") + key + "' (legacy function calling) is not supported: send 'tools'", error))
      return false;
  }
  if (Has(body, "response_format")) {
    const Json& rf = body["response_format"];
    std::string type = rf.is_object() && rf.contains("type") && rf["type"].is_string()
                           ? rf["type"].get<std::string>()
                           : std::string();
    // json_object and json_schema: read by ParseResponseFormat.
    if (type != "text" && type != "json_object" && type != "json_schema") {
      return Fail(error,
                  "'response_format' " +
                      (type.empty() ? std::string("must be an object with a 'type'") : "'" + type + "'") +
                      " is not supported by this server: its type is \"text\", \"json_object\" or "
                      "\"json_schema\"",
                  "response_format", "unsupported_parameter");
    }
  }
  if (!RefuseUnlessOff(
          body, "modalities", [](const Json& v) { return v.is_array() && v.size() == 1 && v[0] == "text"; },
          "only 'modalities': [\"text\"] is supported", error))
    return false;
  for (const char* key : {"audio", "prediction", "web_search_options", "reasoning_effort", "verbosity"}) {
    if (!RefuseUnlessOff(
            body, key, [](const Json&) { return false; },
            std::string("'") + key + "' is not supported by this server", error))
      return false;
  }
  return true;
}

// chat_template_kwargs: {"enable_thinking": bool}; other template variables are
// refused by name (fedge renders known formats, not the Jinja template).
bool ParseChatTemplateKwargs(const Json& body, GenerationRequest* req, ApiErrorInfo* error) {
  if (!Has(body, "chat_template_kwargs")) return true;
  const Json& kwargs = body["chat_template_kwargs"];
  if (!kwargs.is_object()) {
    return Fail(error, "'chat_template_kwargs' must be an object", "chat_template_kwargs", "invalid_type");
  }
  for (const auto& [key, value] : kwargs.items()) {
    if (key != "enable_thinking") {
      return Fail(error,
                  "'chat_template_kwargs." + (key.size() > 64 ? key.substr(0, 64) + "..." : key) +
                      "' is not supported: only enable_thinking (Qwen3's thinking switch) is",
                  "chat_template_kwargs", "unsupported_parameter");
    }
    if (!value.is_boolean()) {
      return Fail(error, "'chat_template_kwargs.enable_thinking' must be true or false",
                  "chat_template_kwargs", "invalid_type");
    }
    req->enable_thinking = value.get<bool>();
  }
  return true;
}

// A function name as OpenAI takes it: 1-64 of a-z, A-Z, 0-9, '_' and '-'.
bool IsFunctionName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

std::string Clip(const std::string& s) { return s.size() > 64 ? s.substr(0, 64) + "..." : s; }

// tools: [{"type": "function", "function": {"name", "description"?, "parameters"?,
// "strict"?}}], each kept as the template's tojson writes it (key order as sent);
// tool_choice "auto" or "none" (no tools in the prompt, nothing read as a call);
// parallel_tool_calls a boolean (the format allows several calls either way).
bool ParseTools(const Json& body, const InferenceLimits& limits, GenerationRequest* req,
                ApiErrorInfo* error) {
  if (Has(body, "tool_choice")) {
    const Json& choice = body["tool_choice"];
    const bool named = choice.is_object() && choice.size() == 2 && choice.contains("type") &&
                       choice["type"] == "function" && choice.contains("function") &&
                       choice["function"].is_object() && choice["function"].size() == 1 &&
                       choice["function"].contains("name") && choice["function"]["name"].is_string();
    if (!named && (!choice.is_string() || (choice != "auto" && choice != "none" && choice != "required"))) {
      return Fail(error,
                  "'tool_choice' " +
                      (choice.is_string() ? "'" + Clip(choice.get<std::string>()) + "'"
                                          : choice.dump().substr(0, 64)) +
                      " is not supported: \"auto\", \"none\", \"required\" or {\"type\": \"function\", "
                      "\"function\": {\"name\": ...}}",
                  "tool_choice", "unsupported_parameter");
    }
    req->tool_choice_none = choice == "none";
    req->tool_choice_required = named || choice == "required";
    if (named) req->tool_choice_name = choice["function"]["name"].get<std::string>();
    if (!req->tool_choice_none && !Has(body, "tools")) {
      return Fail(error, "'tool_choice' is only allowed when 'tools' are given", "tool_choice",
                  "invalid_value");
    }
  }
  if (Has(body, "parallel_tool_calls") && !body["parallel_tool_calls"].is_boolean())
    return Fail(error, "'parallel_tool_calls' must be true or false", "parallel_tool_calls", "invalid_type");
  if (!Has(body, "tools")) return true;
  const Json& tools = body["tools"];
  if (!tools.is_array())
    return Fail(error, "'tools' must be an array of function tools", "tools", "invalid_type");
  constexpr size_t kMaxTools = 128;
  if (tools.size() > kMaxTools) {
    return Fail(
        error, "'tools' has " + std::to_string(tools.size()) + " tools; at most " + std::to_string(kMaxTools),
        "tools", "invalid_value");
  }
  for (size_t i = 0; i < tools.size(); ++i) {
    const Json& t = tools[i];
    const std::string where = "'tools[" + std::to_string(i) + "]";
    if (!t.is_object() || !t.contains("type") || t["type"] != "function" || !t.contains("function") ||
        !t["function"].is_object()) {
      return Fail(error, where + "' must be {\"type\": \"function\", \"function\": {\"name\": ...}}", "tools",
                  "invalid_value");
    }
    const Json& f = t["function"];
    if (!f.contains("name") || !f["name"].is_string() || !IsFunctionName(f["name"].get<std::string>())) {
      return Fail(error, where + ".function.name' must be 1-64 characters of a-z, A-Z, 0-9, _ and -", "tools",
                  "invalid_value");
    }
    if (f.contains("description") && !f["description"].is_string())
      return Fail(error, where + ".function.description' must be a string", "tools", "invalid_type");
    if (f.contains("parameters") && !f["parameters"].is_object())
      return Fail(error, where + ".function.parameters' must be a JSON Schema object", "tools",
                  "invalid_type");
    if (f.contains("strict") && !f["strict"].is_null() && !f["strict"].is_boolean())
      return Fail(error, where + ".function.strict' must be a boolean", "tools", "invalid_type");
    req->tools.push_back(llm::PythonJsonDumps(t));
    req->tool_schemas.push_back(
        {f["name"].get<std::string>(), f.contains("parameters") ? f["parameters"].dump() : "",
         f.contains("strict") && f["strict"].is_boolean() && f["strict"].get<bool>()});
  }
  if (!req->tool_choice_name.empty()) {
    auto it = std::find_if(req->tool_schemas.begin(), req->tool_schemas.end(),
                           [&](const llm::ToolSchema& t) { return t.name == req->tool_choice_name; });
    if (it == req->tool_schemas.end())
      return Fail(error,
                  "'tool_choice' names '" + Clip(req->tool_choice_name) + "', which 'tools' does not hold",
                  "tool_choice", "invalid_value");
    req->tool_schemas = {*it};
  }
  if (req->tool_choice_required && req->tool_schemas.empty())
    return Fail(error, "'tool_choice' \"required\" needs at least one tool in 'tools'", "tool_choice",
                "invalid_value");
  // A required call is decoded under the tools' schemas: a strict tool promises its
  // arguments fit, so a schema fedge cannot hold them to is refused here.
  for (size_t i = 0; req->tool_choice_required && i < req->tool_schemas.size(); ++i) {
    const llm::ToolSchema& t = req->tool_schemas[i];
    if (!t.strict || t.parameters.empty()) continue;
    auto compiled = llm::CompileJsonSchema(t.parameters);
    if (!compiled.ok())
      return Fail(
          error,
          "tool '" + t.name +
              "' is strict and its parameters cannot be held to: " + compiled.status().message(),
          "tools",
          compiled.status().code() == StatusCode::kUnimplemented ? "unsupported_value" : "invalid_value");
  }
  // The tools are prompt text too: they count against the same bound as the messages
  // (tokenized on the thread that holds the model).
  size_t chars = 0;
  for (const std::string& tool : req->tools) chars += tool.size();
  for (const llm::ChatMessage& m : req->messages) {
    chars += m.content.size();
    for (const llm::ChatToolCall& call : m.tool_calls) chars += call.name.size() + call.arguments.size();
  }
  if (chars > limits.max_input_chars) {
    return Fail(error,
                "'messages' and 'tools' have " + std::to_string(chars) + " bytes of text; at most " +
                    std::to_string(limits.max_input_chars),
                "tools", "input_too_long");
  }
  return true;
}

// An assistant message's tool_calls: [{"id", "type": "function", "function": {"name",
// "arguments": a JSON object as a string}}] (arguments rewritten as tojson writes them).
bool ParseToolCallsField(const Json& m, const std::string& where, llm::ChatMessage* out,
                         ApiErrorInfo* error) {
  const Json& calls = m["tool_calls"];
  if (!calls.is_array())
    return Fail(error, "'" + where + ".tool_calls' must be an array", "messages", "invalid_message");
  for (size_t k = 0; k < calls.size(); ++k) {
    const Json& c = calls[k];
    const std::string cwhere = "'" + where + ".tool_calls[" + std::to_string(k) + "]";
    if (!c.is_object() || !c.contains("function") || !c["function"].is_object() ||
        (c.contains("type") && c["type"] != "function")) {
      return Fail(error,
                  cwhere + "' must be {\"type\": \"function\", \"function\": {\"name\", \"arguments\"}}",
                  "messages", "invalid_message");
    }
    const Json& f = c["function"];
    if (!f.contains("name") || !f["name"].is_string() || !IsFunctionName(f["name"].get<std::string>())) {
      return Fail(error, cwhere + ".function.name' must be 1-64 characters of a-z, A-Z, 0-9, _ and -",
                  "messages", "invalid_message");
    }
    Json arguments = Json::object();
    if (f.contains("arguments")) {
      if (!f["arguments"].is_string())
        return Fail(error, cwhere + ".function.arguments' must be a string of JSON", "messages",
                    "invalid_message");
      arguments = Json::parse(f["arguments"].get<std::string>(), nullptr, /*allow_exceptions=*/false);
      if (arguments.is_discarded()) {
        return Fail(error, cwhere + ".function.arguments' is not JSON", "messages", "invalid_message");
      }
      if (NestsTooDeep(arguments, 1)) {
        return Fail(error,
                    cwhere + ".function.arguments' nests arrays and objects too deep: at most " +
                        std::to_string(kMaxRequestDepth) + " levels",
                    "messages", "invalid_message");
      }
    }
    out->tool_calls.push_back({f["name"].get<std::string>(), llm::PythonJsonDumps(arguments)});
  }
  return true;
}

bool ParseMessages(const Json& body, const InferenceLimits& limits, std::vector<llm::ChatMessage>* out,
                   ApiErrorInfo* error) {
  if (!Has(body, "messages") || !body["messages"].is_array() || body["messages"].empty()) {
    return Fail(error, "'messages' is required: a non-empty array of {\"role\", \"content\"}", "messages",
                "missing_messages");
  }
  size_t chars = 0;
  const Json& messages = body["messages"];
  for (size_t i = 0; i < messages.size(); ++i) {
    const Json& m = messages[i];
    std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      return Fail(error, "'" + where + "' must be an object with a string 'role' and 'content'", "messages",
                  "invalid_message");
    }
    std::string role = m["role"].get<std::string>();
    if (role == "function") {
      return Fail(error, "'" + where + "' has role 'function' (legacy function calling): send role 'tool'",
                  "messages", "unsupported_parameter");
    }
    if (role == "developer") role = "system";  // OpenAI's newer name for the system prompt
    if (role != "system" && role != "user" && role != "assistant" && role != "tool") {
      return Fail(error,
                  "'" + where + ".role' must be one of system, developer, user, assistant, tool (got '" +
                      (role.size() > 32 ? role.substr(0, 32) + "..." : role) + "')",
                  "messages", "invalid_message");
    }
    if (Has(m, "function_call")) {
      return Fail(error, "'" + where + "' carries a function_call (legacy function calling): send tool_calls",
                  "messages", "unsupported_parameter");
    }
    llm::ChatMessage message{role, ""};
    if (Has(m, "tool_calls")) {
      if (role != "assistant")
        return Fail(error, "'" + where + "' has tool_calls but is not an assistant message", "messages",
                    "invalid_message");
      if (!ParseToolCallsField(m, where, &message, error)) return false;
    }
    if (role == "tool" && Has(m, "tool_call_id") && !m["tool_call_id"].is_string())
      return Fail(error, "'" + where + ".tool_call_id' must be a string", "messages", "invalid_message");
    // An assistant message that calls tools may have no content (null).
    const bool may_be_empty =
        !message.tool_calls.empty() && (!m.contains("content") || m["content"].is_null());
    if (!may_be_empty && !Has(m, "content")) {
      return Fail(error, "'" + where + ".content' is required: a string or an array of text parts",
                  "messages", "invalid_message");
    }
    const Json& content = may_be_empty ? Json("") : m["content"];
    std::string text;
    if (content.is_string()) {
      text = content.get<std::string>();
    } else if (content.is_array()) {
      for (size_t k = 0; k < content.size(); ++k) {
        const Json& part = content[k];
        std::string pwhere = where + ".content[" + std::to_string(k) + "]";
        if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
          return Fail(error, "'" + pwhere + "' must be an object with a 'type'", "messages",
                      "invalid_message");
        }
        std::string type = part["type"].get<std::string>();
        if (type != "text") {
          return Fail(error,
                      "'" + pwhere + "' has type '" + (type.size() > 32 ? type.substr(0, 32) + "..." : type) +
                          "': only text parts are supported (the model reads text only)",
                      "messages", "unsupported_content");
        }
        if (!part.contains("text") || !part["text"].is_string())
          return Fail(error, "'" + pwhere + ".text' must be a string", "messages", "invalid_message");
        if (k > 0) text += "\n";
        text += part["text"].get<std::string>();
      }
    } else {
      return Fail(error, "'" + where + ".content' must be a string or an array of text parts", "messages",
                  "invalid_message");
    }
    chars += text.size();
    for (const llm::ChatToolCall& call : message.tool_calls)
      chars += call.name.size() + call.arguments.size();
    message.content = std::move(text);
    out->push_back(std::move(message));
  }
  if (chars > limits.max_input_chars) {
    return Fail(error,
                "'messages' have " + std::to_string(chars) + " bytes of content; at most " +
                    std::to_string(limits.max_input_chars),
                "messages", "input_too_long");
  }
  return true;
}

bool ParsePrompt(const Json& body, const InferenceLimits& limits, std::string* prompt, ApiErrorInfo* error) {
  if (!Has(body, "prompt"))
    return Fail(error, "'prompt' is required and must be a string", "prompt", "missing_prompt");
  const Json& p = body["prompt"];
  if (p.is_array()) {
    if (!p.empty() && (p[0].is_number_integer() || p[0].is_array())) {
      return Fail(error, "'prompt' as token ids is not supported by this server: send the text", "prompt",
                  "unsupported_input");
    }
    if (p.size() != 1 || !p[0].is_string()) {
      return Fail(error,
                  "'prompt' must be a string or an array of exactly one string (batched prompts are not "
                  "supported; send one request per prompt)",
                  "prompt", "unsupported_input");
    }
    *prompt = p[0].get<std::string>();
  } else if (p.is_string()) {
    *prompt = p.get<std::string>();
  } else {
    return Fail(error, "'prompt' is required and must be a string", "prompt", "missing_prompt");
  }
  if (prompt->empty()) return Fail(error, "'prompt' is empty", "prompt", "empty_input");
  if (prompt->size() > limits.max_input_chars) {
    return Fail(error,
                "'prompt' has " + std::to_string(prompt->size()) + " bytes; at most " +
                    std::to_string(limits.max_input_chars),
                "prompt", "input_too_long");
  }
  return true;
}

}  // namespace

std::optional<std::vector<std::string>> ParseClassifyRequest(std::string_view text,
                                                             const InferenceLimits& limits,
                                                             ApiErrorInfo* error) {
  Json body;
  std::vector<std::string> texts;
  if (!ParseObject(text, &body, error) || !CheckModel(body, error) ||
      !ParseTexts(body, limits, &texts, error))
    return std::nullopt;
  return texts;
}

std::optional<EmbeddingRequest> ParseEmbeddingRequest(std::string_view text, const InferenceLimits& limits,
                                                      ApiErrorInfo* error) {
  Json body;
  EmbeddingRequest req;
  if (!ParseObject(text, &body, error) || !CheckModel(body, error) ||
      !ParseTexts(body, limits, &req.inputs, error) ||
      !CheckKnownFields(body, {"input", "model", "encoding_format", "dimensions", "user"}, error))
    return std::nullopt;
  if (Has(body, "encoding_format")) {
    const Json& f = body["encoding_format"];
    if (f == "float") {
      req.encoding = EmbeddingEncoding::kFloat;
    } else if (f == "base64") {
      req.encoding = EmbeddingEncoding::kBase64;
    } else {
      Fail(error, "'encoding_format' must be \"float\" or \"base64\"", "encoding_format", "invalid_value");
      return std::nullopt;
    }
  }
  if (Has(body, "dimensions")) {
    const Json& d = body["dimensions"];
    if (!d.is_number_integer() || d.get<int64_t>() < 1) {
      Fail(error, "'dimensions' must be a positive integer", "dimensions", "invalid_value");
      return std::nullopt;
    }
    req.dimensions = d.get<int64_t>();
  }
  return req;
}

std::optional<GenerationRequest> ParseGenerationRequest(std::string_view text, GenerationEndpoint endpoint,
                                                        const InferenceLimits& limits, ApiErrorInfo* error) {
  static const std::set<std::string> kCommon = {"model",
                                                "max_tokens",
                                                "temperature",
                                                "top_p",
                                                "top_k",
                                                "n",
                                                "stream",
                                                "stream_options",
                                                "stop",
                                                "seed",
                                                "presence_penalty",
                                                "frequency_penalty",
                                                "logit_bias",
                                                "logprobs",
                                                "user",
                                                "metadata",
                                                "store",
                                                "service_tier",
                                                "safety_identifier",
                                                "prompt_cache_key"};
  static const std::set<std::string> kCompletions = [] {
    std::set<std::string> s = kCommon;
    s.insert({"prompt", "suffix", "echo", "best_of"});
    return s;
  }();
  static const std::set<std::string> kChat = [] {
    std::set<std::string> s = kCommon;
    s.insert({"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
              "parallel_tool_calls", "functions", "function_call", "response_format", "modalities", "audio",
              "prediction", "web_search_options", "reasoning_effort", "verbosity", "chat_template_kwargs"});
    return s;
  }();
  const bool chat = endpoint == GenerationEndpoint::kChatCompletions;
  Json body;
  if (!ParseObject(text, &body, error) || !CheckModel(body, error) ||
      !CheckKnownFields(body, chat ? kChat : kCompletions, error))
    return std::nullopt;
  GenerationRequest req;
  req.endpoint = endpoint;
  if (chat ? !ParseMessages(body, limits, &req.messages, error) ||
                 !ParseChatTemplateKwargs(body, &req, error) || !ParseTools(body, limits, &req, error)
           : !ParsePrompt(body, limits, &req.prompt, error))
    return std::nullopt;
  if (!RefuseUnsupported(body, endpoint, error)) return std::nullopt;
  if (chat && !ParseResponseFormat(body, &req.options, error)) return std::nullopt;
  std::optional<int> max_tokens, max_completion_tokens;
  if (!ParseMaxTokens(body, "max_tokens", limits, &max_tokens, error)) return std::nullopt;
  if (chat && !ParseMaxTokens(body, "max_completion_tokens", limits, &max_completion_tokens, error))
    return std::nullopt;
  // Completions: OpenAI's default of 16. Chat: until the model ends its turn or the
  // context is full (generation stops at the context's end by itself).
  req.options.max_new_tokens =
      max_completion_tokens.value_or(max_tokens.value_or(chat ? limits.max_generation_tokens : 16));
  if (!ParseSampling(body, &req, error) || !ParseStop(body, &req.options.stop, error) ||
      !ParseStreaming(body, &req, error))
    return std::nullopt;
  return req;
}

std::string EncodeFloat32Base64(const std::vector<float>& values) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string bytes;
  bytes.reserve(values.size() * 4);
  for (float f : values) {
    uint32_t bits;
    static_assert(sizeof(bits) == sizeof(f));
    std::memcpy(&bits, &f, sizeof(bits));
    for (int k = 0; k < 4; ++k)
      bytes.push_back(static_cast<char>((bits >> (8 * k)) & 0xff));  // little-endian
  }
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    uint32_t n = (static_cast<uint8_t>(bytes[i]) << 16) | (static_cast<uint8_t>(bytes[i + 1]) << 8) |
                 static_cast<uint8_t>(bytes[i + 2]);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  if (size_t rest = bytes.size() - i; rest > 0) {
    uint32_t n = static_cast<uint8_t>(bytes[i]) << 16;
    if (rest == 2) n |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += rest == 2 ? kAlphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

}  // namespace fedge::agent
