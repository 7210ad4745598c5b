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
//   GET /healthz (alive), GET /readyz (200 once a global model serves; never
//   waits for inference), GET /metrics
// Errors: {"error": {"message", "type", "param", "code"}} with 400 for bad
// input, 401 (type authentication_error) for a missing or wrong API token, 503
// before a global model is installed, 507 (code feedback_log_full) when the
// feedback log reached its cap. Handlers never throw.
//
// Authentication: with an ApiTokenFile every /v1/* request needs
// "Authorization: Bearer <token>"; /healthz, /readyz and /metrics stay open for
// kubelet probes and Prometheus. Without one the API is open (loopback/dev).
#pragma once

#include <atomic>
#include <cstddef>
#include <optional>
#include <string>

#include "fedge/http_server.h"

namespace fedge::agent {

class ApiTokenFile;
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
// objects must outlive this one. `store` may be null (feedback then answers 503);
// `tokens` may be null (no authentication).
class InferenceApi {
 public:
  InferenceApi(ServingModel* model, StateStore* store, AgentMetrics* metrics, InferenceLimits limits = {},
               ApiTokenFile* tokens = nullptr);

  // Registers every route above plus GET /metrics on `server` (before Start);
  // the /v1/* routes check Authenticate first.
  void Register(HttpServer& server);

  // nullopt when the request may proceed (no token file, or a matching bearer
  // token); otherwise the 401 to answer, which says what header to send.
  std::optional<HttpResponse> Authenticate(const HttpRequest& request) const;

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
  ApiTokenFile* tokens_;
  std::atomic<bool> feedback_full_logged_{false};  // the "log is full" warning was written
};

}  // namespace fedge::agent
