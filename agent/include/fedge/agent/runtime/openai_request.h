// Parsing and validation of the OpenAI-shaped request bodies the inference API
// serves: pure functions from the JSON body to a request struct or the error
// to answer, so every rule below is unit tested without a model or a socket.
//
// The policy, one place for all of it:
//  - A field this server implements is validated and used.
//  - A field it knows but does not implement (logprobs, response_format other
//    than text, n > 1, penalties, a required tool_choice, ...) is refused with a
//    400 naming the field, unless it carries the value that means "off"
//    (logprobs: false, n: 1, ...): a client must never get an answer that
//    silently ignored what it asked for. Tools are parsed here; whether the
//    model's chat template takes them is decided where the model is known.
//  - Purely informational fields (user, metadata, store, service_tier, ...) are
//    accepted and ignored.
//  - Any other field is refused as OpenAI does ("unrecognized request argument").
// "model" is accepted whatever it names (the agent serves exactly one model,
// like llama.cpp's server); responses name the model and global that answered.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/agent/llm/chat_template.h"
#include "fedge/agent/llm/generation.h"
#include "fedge/agent/llm/json_schema.h"

namespace fedge::agent {

struct InferenceLimits {
  size_t max_inputs = 64;          // strings per request
  size_t max_input_chars = 16384;  // bytes per string (all chat messages together), checked before tokenising
  int max_input_tokens = 512;      // BERT's position limit; longer inputs are refused
  size_t max_feedback_chars = 16384;
  int max_generation_tokens = 4096;  // max_tokens / max_completion_tokens upper bound
};

// An error in OpenAI's shape {"error": {"message", "type", "param", "code"}};
// empty `param` / `code` are sent as null.
struct ApiErrorInfo {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;
  std::string code;
};

// POST /v1/classify: {"input": string | [string], "model"?}. The texts, each
// non-empty and within the limits.
std::optional<std::vector<std::string>> ParseClassifyRequest(std::string_view body,
                                                             const InferenceLimits& limits,
                                                             ApiErrorInfo* error);

enum class EmbeddingEncoding { kFloat, kBase64 };

// POST /v1/embeddings: {"input": string | [string], "model"?, "encoding_format"?:
// "float" | "base64" (absent: float), "dimensions"?, "user"?}. Token arrays are
// refused (this server embeds text). `dimensions` is only checked for type here;
// the handler refuses it unless it equals the model's embedding size.
struct EmbeddingRequest {
  std::vector<std::string> inputs;
  EmbeddingEncoding encoding = EmbeddingEncoding::kFloat;
  std::optional<int64_t> dimensions;
};
std::optional<EmbeddingRequest> ParseEmbeddingRequest(std::string_view body, const InferenceLimits& limits,
                                                      ApiErrorInfo* error);

enum class GenerationEndpoint { kCompletions, kChatCompletions };

// POST /v1/completions and /v1/chat/completions. Supported: prompt (a string, or
// an array holding one string) / messages (roles system, developer (= system),
// user, assistant; content a string or an array of text parts, joined with
// "\n"), max_tokens, max_completion_tokens (chat; wins over max_tokens),
// temperature, top_p, top_k (an extension, as llama.cpp and vLLM have it), seed,
// stop (string or up to 4 strings), n (1), stream, stream_options.include_usage.
// Defaults: max tokens 16 for completions (OpenAI's), up to the context's end for
// chat (capped at limits.max_generation_tokens); temperature 1; a random seed
// when none is given.
struct GenerationRequest {
  GenerationEndpoint endpoint = GenerationEndpoint::kCompletions;
  std::string prompt;                      // kCompletions
  std::vector<llm::ChatMessage> messages;  // kChatCompletions
  llm::GenerationOptions options;          // max_new_tokens, sampling, stop
  bool seed_given = false;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a final usage chunk
  // chat_template_kwargs (vLLM's and SGLang's extension): enable_thinking, Qwen3's
  // switch; formats without one ignore it, as their templates would.
  bool enable_thinking = true;
  // tools (function tools, each as the chat template's tojson writes it) and
  // tool_choice "none" (the tools are left out of the prompt and no call is read).
  std::vector<std::string> tools;
  bool tool_choice_none = false;
  // tool_choice "required" or {"type": "function", "function": {"name"}}: the reply
  // is one call (to the named tool), decoded under a tool-call schema built from
  // `tool_schemas` (json_schema.h's CompileToolCallSchema) once the model's tool
  // format is known.
  bool tool_choice_required = false;
  std::string tool_choice_name;  // non-empty: the one tool it may call
  std::vector<llm::ToolSchema> tool_schemas;
};
std::optional<GenerationRequest> ParseGenerationRequest(std::string_view body, GenerationEndpoint endpoint,
                                                        const InferenceLimits& limits, ApiErrorInfo* error);

// `values` as little-endian IEEE-754 float32 bytes in standard base64 with
// padding: OpenAI's encoding_format "base64" (numpy.frombuffer(b, "<f4") reads it).
std::string EncodeFloat32Base64(const std::vector<float>& values);

}  // namespace fedge::agent
