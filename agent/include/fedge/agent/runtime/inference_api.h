// Local inference over HTTP, OpenAI-shaped where a shape exists:
//   POST /v1/classify    {"input": "text" | ["a", ...], "model"?: string}
//     -> {"object": "list", "model": "<job>@v<version>",
//         "data": [{"object": "classification", "index": 0, "label": "noun.animal",
//                   "score": 0.93, "scores": {<top 5 labels>: prob}}]}
//   POST /v1/embeddings  {"input": string | [string], "model"?: string,
//                         "encoding_format"?: "float"}
//     -> {"object": "list", "model": ..., "data": [{"object": "embedding", "index": 0,
//         "embedding": [...]}], "usage": {"prompt_tokens": N, "total_tokens": N}}
//   POST /v1/feedback    {"text": string, "label": one of the job's labels}
//     -> {"object": "feedback", "stored": true}
//   POST /v1/completions {"prompt": string, "max_tokens"?, "temperature"?, "top_p"?,
//                         "seed"?, "stop"?: string | [string]}        (causal-lm jobs)
//     -> {"object": "text_completion", "model", "choices": [{"index": 0, "text",
//         "finish_reason": "stop" | "length"}], "usage": {prompt/completion/total_tokens}}
//   POST /v1/chat/completions {"messages": [{"role", "content"}], same sampling fields}
//     -> {"object": "chat.completion", "choices": [{"message": {"role": "assistant",
//         "content"}, "finish_reason"}], "usage"}  (needs a tokenizer with chat markers)
//   GET /healthz (alive), GET /readyz (200 once a global model serves)
// Errors: {"error": {"message", "type", "param", "code"}} with 400 for bad
// input, 503 before a global model is installed. Handlers never throw.
#pragma once

#include <cstddef>
#include <string>

#include "fedge/http_server.h"

namespace fedge::agent {

class ServingModel;
class StateStore;
class AgentMetrics;

struct InferenceLimits {
  size_t max_inputs = 64;          // strings per request
  size_t max_input_chars = 16384;  // bytes per string, checked before tokenising
  int max_input_tokens = 512;      // BERT's position limit; longer inputs are refused
  size_t max_feedback_chars = 16384;
};

// Handlers over plain HttpRequest/HttpResponse; all thread-safe. The pointed-to
// objects must outlive this one. `store` may be null (feedback then answers 503).
class InferenceApi {
 public:
  InferenceApi(ServingModel* model, StateStore* store, AgentMetrics* metrics, InferenceLimits limits = {});

  // Registers every route above plus GET /metrics on `server` (before Start).
  void Register(HttpServer& server);

  HttpResponse Classify(const HttpRequest& request);
  HttpResponse Embeddings(const HttpRequest& request);
  // Causal-LM jobs only (400 on a BERT job, as /v1/classify is on a causal-LM job).
  HttpResponse Completions(const HttpRequest& request);
  HttpResponse ChatCompletions(const HttpRequest& request);
  HttpResponse Feedback(const HttpRequest& request);
  HttpResponse Healthz(const HttpRequest& request);
  HttpResponse Readyz(const HttpRequest& request);

 private:
  ServingModel* model_;
  StateStore* store_;
  AgentMetrics* metrics_;
  InferenceLimits limits_;
};

}  // namespace fedge::agent
