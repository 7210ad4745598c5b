// Local inference over HTTP, OpenAI-compatible where OpenAI has the call (the
// unmodified `openai` Python client is the test: tests/e2e/openai_client_test.py;
// docs/inference-api.md lists what is supported and what is refused):
//   GET  /v1/models, /v1/models/<job>
//     -> {"object": "list", "data": [{"id": "<job>", "object": "model", "created",
//         "owned_by": "fedge", "global_version": N, "served_as": "<job>@v<N>", "ready"}]}
//        The id is the job key ("namespace/name"), stable across rounds; the global
//        version is metadata. Other ids get 404 (the HTTP server's exact routes).
//   POST /v1/classify    {"input": "text" | ["a", ...], "model"?: string}
//     -> {"object": "list", "model": "<job>@v<version>",
//         "data": [{"object": "classification", "index": 0, "label": "noun.animal",
//                   "score": 0.93, "scores": {<top 5 labels>: prob}}]}
//   POST /v1/embeddings  {"input": string | [string], "model"?, "encoding_format"?:
//                         "float" | "base64", "dimensions"?: the model's size}
//     -> {"object": "list", "model": ..., "data": [{"object": "embedding", "index": 0,
//         "embedding": [...] | "<base64 of little-endian float32>"}],
//         "usage": {"prompt_tokens": N, "total_tokens": N}}
//   POST /v1/feedback    {"text": string, "label": one of the job's labels}, or on a
//     causal-LM job {"prompt": string, "completion": the preferred completion}
//     -> {"object": "feedback", "stored", "duplicate", "examples", "dropped"}
//     (StateStore::AddFeedback; 403 feedback_disabled when spec.feedback.enabled
//     is false)
//   POST /v1/completions, /v1/chat/completions (causal-LM jobs; fields in
//     openai_request.h): OpenAI's text_completion / chat.completion objects, or with
//     "stream": true server-sent events "data: <chunk>\n\n" (text_completion /
//     chat.completion.chunk objects, one per piece of final text as the model
//     produces it), an optional usage chunk (stream_options.include_usage) and
//     "data: [DONE]". A client that disconnects mid-stream ends its generation at the
//     next token. Errors found after the stream started arrive as one
//     "data: {\"error\": {...}}" event.
//   Generation responses carry a llama.cpp-style "timings" object (prompt_n,
//     prompt_ms, prompt_per_token_ms, prompt_per_second, predicted_n,
//     predicted_ms, predicted_per_token_ms, predicted_per_second): in the body,
//     or in a stream's last chunk (the one with finish_reason) and its usage chunk.
//   GET /healthz (alive), GET /readyz (200 once a global model serves; never
//   waits for inference), GET /metrics
// Errors: {"error": {"message", "type", "param", "code"}} with 400 for bad or
// unsupported input (code unsupported_parameter / unknown_parameter name the
// field), 401 (type authentication_error) for a missing or wrong API token, 503
// before a global model is installed, 507 (code feedback_log_full) when the
// feedback log reached its cap, 429 (type "requests", code
// rate_limit_exceeded, with Retry-After) when the scheduler's queue is full.
// Handlers never throw.
//
// Scheduling: every request that needs the model goes through one
// RequestScheduler (scheduler.h): classify and embeddings requests that wait
// together run as one padded batch; generation runs one request at a time in
// the same queue. A client that disconnects while its request waits is
// dropped without running (the request is counted with code 499).
//
// Authentication: with an ApiTokenFile every /v1/* request needs
// "Authorization: Bearer <token>"; /healthz, /readyz and /metrics stay open for
// kubelet probes and Prometheus. Without one the API is open (loopback/dev).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "fedge/agent/llm/chat_template.h"
#include "fedge/agent/runtime/openai_request.h"
#include "fedge/agent/runtime/scheduler.h"
#include "fedge/http_server.h"

namespace fedge::agent {

class ApiTokenFile;
class ServingModel;
class StateStore;
class AgentMetrics;
class TrainableModel;

// Steady-clock timestamps of one generation, taken on its thread: the source of
// a response's "timings" and of the per-token metrics.
struct GenerationTimes {
  std::chrono::steady_clock::time_point arrived;  // the handler began (before queueing for the model)
  std::chrono::steady_clock::time_point started;  // model held, prompt tokenized: the prompt pass begins
  std::chrono::steady_clock::time_point first;    // first generated token (valid if tokens > 0)
  std::chrono::steady_clock::time_point last;     // latest generated token (valid if tokens > 0)
  std::chrono::steady_clock::time_point ended;    // generation returned
  int64_t prompt_tokens = 0;                      // set when the prompt pass begins
  int64_t tokens = 0;                             // generated so far
  bool ran = false;                               // the prompt pass began
};

// llama.cpp's server "timings", with its meaning: prompt_ms runs from the
// prompt pass's start to the first generated token (its sampling included; to
// the generation's end when none was generated), predicted_ms from the first
// generated token to the last, predicted_n counts every generated token (the
// first too). per_token_ms = ms / n; per_second = n / ms * 1000, 0 when ms or n
// is 0 (one generated token spans no time).
struct GenerationTimings {
  int64_t prompt_n = 0;
  double prompt_ms = 0;
  double prompt_per_token_ms = 0;
  double prompt_per_second = 0;
  int64_t predicted_n = 0;
  double predicted_ms = 0;
  double predicted_per_token_ms = 0;
  double predicted_per_second = 0;
};
GenerationTimings ComputeTimings(const GenerationTimes& times);

// Handlers over plain HttpRequest/HttpResponse; all thread-safe. The pointed-to
// objects must outlive this one. `store` may be null (feedback then answers 503);
// `tokens` may be null (no authentication).
class InferenceApi {
 public:
  // `scheduling.max_input_tokens` is replaced by `limits.max_input_tokens`.
  InferenceApi(ServingModel* model, StateStore* store, AgentMetrics* metrics, InferenceLimits limits = {},
               ApiTokenFile* tokens = nullptr, SchedulerOptions scheduling = {});
  ~InferenceApi();

  // Registers every route above plus GET /metrics on `server` (before Start);
  // the /v1/* routes check Authenticate first.
  void Register(HttpServer& server);

  // nullopt when the request may proceed (no token file, or a matching bearer
  // token); otherwise the 401 to answer, which says what header to send.
  std::optional<HttpResponse> Authenticate(const HttpRequest& request) const;

  HttpResponse Models(const HttpRequest& request);
  HttpResponse Model(const HttpRequest& request);
  HttpResponse Classify(const HttpRequest& request);
  HttpResponse Embeddings(const HttpRequest& request);
  // Causal-LM jobs only (400 on a BERT job, as /v1/classify is on a causal-LM job).
  // With "stream": true the response's `stream` producer generates on the calling
  // worker thread while it writes; otherwise the body is complete on return.
  HttpResponse Completions(const HttpRequest& request);
  HttpResponse ChatCompletions(const HttpRequest& request);
  HttpResponse Feedback(const HttpRequest& request);
  HttpResponse Healthz(const HttpRequest& request);
  HttpResponse Readyz(const HttpRequest& request);

  // The queue in front of the model (tests, benchmarks).
  RequestScheduler& scheduler() { return *scheduler_; }

 private:
  HttpResponse Generate(const HttpRequest& request, GenerationEndpoint endpoint);
  // Runs `req` on the served causal LM (prompt rendered, prompt tokens checked
  // against the context). With `dry_run` it stops after those checks (a stream's
  // checks before its 200 goes out). `on_text` gets final text as it is produced;
  // `*version` the global that answered. Unless `dry_run`, fills `*times` (whose
  // `arrived` the caller set) and records the per-token metrics as tokens come.
  // `gone` (may be null) drops the request from the queue if its client leaves.
  // `*reading` (when given) is set to how the chat reply is read: the way the
  // model's chat format thinks (Qwen3, DeepSeek-R1; kNone otherwise: the reply is
  // split into reasoning_content and content), and whether tool calls are read out
  // of it (tools offered, tool_choice not "none").
  struct ChatReplyReading {
    llm::ChatReasoning reasoning = llm::ChatReasoning::kNone;
    llm::ChatToolFormat tools = llm::ChatToolFormat::kNone;  // kNone: no tools offered
  };
  Status RunGeneration(const GenerationRequest& req, bool dry_run, const llm::TextCallback& on_text,
                       llm::GenerationResult* result, int64_t* version, GenerationTimes* times,
                       const RequestScheduler::GoneFn& gone, ChatReplyReading* reading = nullptr);
  // The SSE producer for a streamed generation that arrived at `arrived`.
  void StreamGeneration(const GenerationRequest& req, std::chrono::steady_clock::time_point arrived,
                        const RequestScheduler::GoneFn& gone, HttpStreamWriter& writer);
  // Runs `fn` alone on the model through the scheduler's queue.
  Status UseModel(const std::function<Status(TrainableModel& model, int64_t version)>& fn,
                  const RequestScheduler::GoneFn& gone);
  // The HTTP answer to a scheduler or model error (429 with Retry-After, 499, ...).
  HttpResponse SchedulerError(const Status& st) const;
  std::string JsonModel(int64_t version) const;

  ServingModel* model_;
  StateStore* store_;
  AgentMetrics* metrics_;
  InferenceLimits limits_;
  ApiTokenFile* tokens_;
  int64_t created_;                                // unix seconds this API was built: the models' "created"
  std::atomic<bool> feedback_full_logged_{false};  // the "log is full" warning was written
  std::unique_ptr<RequestScheduler> scheduler_;    // last: stopped first when this is destroyed
};

}  // namespace fedge::agent
