#include "fedge/agent/runtime/inference_api.h"

#include "fedge/agent/llm/json_schema.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <numeric>
#include <optional>
#include <random>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <nlohmann/json.hpp>

#include "fedge/agent/llm/chat_template.h"
#include "fedge/agent/llm/tool_calls.h"
#include "fedge/agent/runtime/api_token.h"
#include "fedge/agent/runtime/llm_model.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/reasoning.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/agent/runtime/state_store.h"
#include "fedge/agent/text_classifier.h"
#include "fedge/log.h"

namespace fedge::agent {

namespace {

using Json = nlohmann::ordered_json;

constexpr size_t kTopScores = 5;

// Serialises a response. Strings that are not valid UTF-8 (a generated
// completion cut inside a multi-byte character, a model's error text) get
// U+FFFD instead of making dump() throw: handlers never throw.
std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

HttpResponse ApiError(int status, std::string_view message, std::string_view type, std::string_view param,
                      std::string_view code) {
  Json err = {{"message", message}, {"type", type}};
  err["param"] = param.empty() ? Json(nullptr) : Json(param);
  err["code"] = code.empty() ? Json(nullptr) : Json(code);
  return HttpResponse::Json(status, Dump(Json{{"error", err}}));
}

HttpResponse BadRequest(std::string_view message, std::string_view param, std::string_view code) {
  return ApiError(400, message, "invalid_request_error", param, code);
}

HttpResponse FromModelStatus(const Status& st) {
  if (st.code() == StatusCode::kUnavailable) {
    return ApiError(503, st.message(), "unavailable", "", "model_not_ready");
  }
  if (st.code() == StatusCode::kInvalidArgument) return BadRequest(st.message(), "input", "invalid_input");
  // The endpoint does not fit the job's model (e.g. /v1/classify on a causal-lm job).
  if (st.code() == StatusCode::kUnimplemented) return BadRequest(st.message(), "", "unsupported_for_model");
  return ApiError(500, st.message(), "server_error", "", "");
}

// Parses the body as a JSON object; on failure fills *error.
std::optional<Json> ParseObject(const HttpRequest& request, HttpResponse* error) {
  Json body = Json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    *error = BadRequest("request body is not valid JSON", "", "invalid_json");
    return std::nullopt;
  }
  if (!body.is_object()) {
    *error = BadRequest("request body must be a JSON object", "", "invalid_json");
    return std::nullopt;
  }
  return body;
}

HttpResponse ErrorResponse(const ApiErrorInfo& e) {
  return ApiError(e.status, e.message, e.type, e.param, e.code);
}

Json ErrorJson(const ApiErrorInfo& e) {
  Json err = {{"message", e.message}, {"type", e.type}};
  err["param"] = e.param.empty() ? Json(nullptr) : Json(e.param);
  err["code"] = e.code.empty() ? Json(nullptr) : Json(e.code);
  return Json{{"error", err}};
}

// The ApiErrorInfo FromModelStatus would answer (for errors inside a stream).
ApiErrorInfo ErrorInfo(const Status& st) {
  ApiErrorInfo e;
  e.message = st.message();
  if (st.code() == StatusCode::kUnavailable) {
    e.status = 503;
    e.type = "unavailable";
    e.code = "model_not_ready";
  } else if (st.code() == StatusCode::kInvalidArgument) {
    e.param = "input";
    e.code = "invalid_input";
  } else if (st.code() == StatusCode::kOutOfRange) {
    e.code = "context_length_exceeded";
  } else if (st.code() == StatusCode::kUnimplemented) {
    e.code = "unsupported_for_model";
  } else if (st.code() == StatusCode::kResourceExhausted) {
    e.status = 429;
    e.type = "requests";
    e.code = "rate_limit_exceeded";
  } else {
    e.status = 500;
    e.type = "server_error";
  }
  return e;
}

HttpResponse TokenError(const Status& st) {
  if (st.code() == StatusCode::kOutOfRange)
    return BadRequest(st.message(), "input", "context_length_exceeded");
  return FromModelStatus(st);
}

Status NotCausalLm() {
  return UnimplementedError(
      "this job's model is not a causal language model (spec.model.family: bert); "
      "use /v1/classify or /v1/embeddings");
}

Json Usage(const llm::GenerationResult& r) {
  int64_t completion = static_cast<int64_t>(r.token_ids.size());
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", completion},
          {"total_tokens", r.prompt_tokens + completion}};
}

// The route a generation request came in on: the metrics' endpoint label.
const std::string& GenerationRoute(GenerationEndpoint endpoint) {
  static const std::string kCompletions = "/v1/completions";
  static const std::string kChat = "/v1/chat/completions";
  return endpoint == GenerationEndpoint::kChatCompletions ? kChat : kCompletions;
}

double Milliseconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// n per second over `ms`; 0 when nothing was measured (no tokens, or a span of
// zero length: a single generated token has no generation span).
double PerSecond(int64_t n, double ms) {
  return n > 0 && ms > 0 ? static_cast<double>(n) / ms * 1000.0 : 0.0;
}

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// OpenAI-style response id: prefix + 24 random hex digits, unique per response.
std::string ResponseId(const char* prefix) {
  thread_local std::mt19937_64 rng{(static_cast<uint64_t>(std::random_device{}()) << 32) ^
                                   std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id(prefix);
  for (int i = 0; i < 24; ++i) id += kHex[rng() & 15];
  return id;
}

// OpenAI's tool_calls: [{"id": "call_...", "type": "function", "function": {"name",
// "arguments"}}], with each call's "index" in a stream's delta.
Json ToolCallsJson(const std::vector<llm::ChatToolCall>& calls, bool indexed) {
  Json out = Json::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    Json call = {{"id", ResponseId("call_")},
                 {"type", "function"},
                 {"function", {{"name", calls[i].name}, {"arguments", calls[i].arguments}}}};
    if (indexed) call["index"] = i;
    out.push_back(std::move(call));
  }
  return out;
}

Json TimingsJson(const GenerationTimes& times) {
  GenerationTimings t = ComputeTimings(times);
  return {{"prompt_n", t.prompt_n},
          {"prompt_ms", t.prompt_ms},
          {"prompt_per_token_ms", t.prompt_per_token_ms},
          {"prompt_per_second", t.prompt_per_second},
          {"predicted_n", t.predicted_n},
          {"predicted_ms", t.predicted_ms},
          {"predicted_per_token_ms", t.predicted_per_token_ms},
          {"predicted_per_second", t.predicted_per_second}};
}

}  // namespace

GenerationTimings ComputeTimings(const GenerationTimes& times) {
  GenerationTimings t;
  t.prompt_n = times.prompt_tokens;
  t.prompt_ms = Milliseconds((times.tokens > 0 ? times.first : times.ended) - times.started);
  t.prompt_per_token_ms = t.prompt_n > 0 ? t.prompt_ms / static_cast<double>(t.prompt_n) : 0.0;
  t.prompt_per_second = PerSecond(t.prompt_n, t.prompt_ms);
  t.predicted_n = times.tokens;
  t.predicted_ms = times.tokens > 0 ? Milliseconds(times.last - times.first) : 0.0;
  t.predicted_per_token_ms = t.predicted_n > 0 ? t.predicted_ms / static_cast<double>(t.predicted_n) : 0.0;
  t.predicted_per_second = PerSecond(t.predicted_n, t.predicted_ms);
  return t;
}

InferenceApi::InferenceApi(ServingModel* model, StateStore* store, AgentMetrics* metrics,
                           InferenceLimits limits, ApiTokenFile* tokens, SchedulerOptions scheduling)
    : model_(model),
      store_(store),
      metrics_(metrics),
      limits_(limits),
      tokens_(tokens),
      created_(NowSeconds()) {
  scheduling.max_input_tokens = limits_.max_input_tokens;
  scheduler_ = std::make_unique<RequestScheduler>(model_, scheduling, metrics_);
}

InferenceApi::~InferenceApi() { scheduler_->Stop(); }

HttpResponse InferenceApi::SchedulerError(const Status& st) const {
  if (st.code() == StatusCode::kResourceExhausted) {
    // OpenAI's shape for its own rate limits; clients (openai's included) retry after Retry-After.
    HttpResponse r = ApiError(429, st.message(), "requests", "", "rate_limit_exceeded");
    r.headers.emplace_back("Retry-After", std::to_string(scheduler_->retry_after_seconds()));
    return r;
  }
  if (st.code() == StatusCode::kCancelled) {
    // Nobody reads it; nginx's "client closed request", for the metrics.
    return ApiError(499, st.message(), "client_closed_request", "", "client_closed_request");
  }
  return TokenError(st);
}

namespace {

// 401 with RFC 6750's challenge; `bearer_error` is its error attribute ("" for
// a request that sent no credentials at all).
HttpResponse Unauthorized(const std::string& message, std::string_view code, std::string_view bearer_error) {
  HttpResponse r = ApiError(401, message, "authentication_error", "", code);
  std::string challenge = "Bearer realm=\"fedge-agent\"";
  if (!bearer_error.empty()) challenge += ", error=\"" + std::string(bearer_error) + "\"";
  r.headers.emplace_back("WWW-Authenticate", challenge);
  return r;
}

}  // namespace

std::optional<HttpResponse> InferenceApi::Authenticate(const HttpRequest& request) const {
  if (tokens_ == nullptr) return std::nullopt;
  auto header = request.headers.find("authorization");
  if (header == request.headers.end()) {
    return Unauthorized(
        "this agent's API needs a token: send the header 'Authorization: Bearer <token>' with a token from "
        "the "
        "agent's --api-token-file (the job's API token Secret)",
        "missing_api_key", "");
  }
  std::string token = BearerToken(header->second);
  if (token.empty()) {
    return Unauthorized(
        "the Authorization header is not of the form 'Bearer <token>': send 'Authorization: Bearer <token>' "
        "with a token from the agent's --api-token-file",
        "invalid_authorization_header", "invalid_request");
  }
  if (!tokens_->Matches(token)) {
    return Unauthorized(
        "the bearer token is not valid for this agent: send 'Authorization: Bearer <token>' with the current "
        "token from the agent's --api-token-file (it may have been rotated)",
        "invalid_api_key", "invalid_token");
  }
  return std::nullopt;
}

void InferenceApi::Register(HttpServer& server) {
  auto timed = [this](std::string endpoint, HttpResponse (InferenceApi::*fn)(const HttpRequest&)) {
    prometheus::Gauge* in_flight = metrics_ != nullptr ? &metrics_->RequestsInFlight(endpoint) : nullptr;
    return [this, endpoint, fn, in_flight](const HttpRequest& request) {
      auto start = std::chrono::steady_clock::now();
      if (in_flight != nullptr) in_flight->Increment();
      std::optional<HttpResponse> denied = Authenticate(request);
      HttpResponse response = denied ? std::move(*denied) : (this->*fn)(request);
      auto observe = [this, endpoint, start, in_flight](int status) {
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (metrics_ != nullptr) metrics_->ObserveInference(endpoint, status, seconds);
        if (in_flight != nullptr) in_flight->Decrement();
      };
      if (!response.stream) {
        observe(response.status);
      } else {
        // A stream's duration is its whole generation: observed when the producer ends.
        response.stream = [observe, status = response.status,
                           producer = std::move(response.stream)](HttpStreamWriter& writer) {
          producer(writer);
          observe(status);
        };
      }
      return response;
    };
  };
  server.Handle("GET", "/v1/models", timed("/v1/models", &InferenceApi::Models));
  // Exact routes only (the HTTP server has no patterns): the one model this agent serves.
  // Every id: the job's gets the model, any other OpenAI's model_not_found (a prefix route).
  server.Handle("GET", "/v1/models/*", timed("/v1/models/{id}", &InferenceApi::Model));
  server.Handle("POST", "/v1/classify", timed("/v1/classify", &InferenceApi::Classify));
  server.Handle("POST", "/v1/embeddings", timed("/v1/embeddings", &InferenceApi::Embeddings));
  server.Handle("POST", "/v1/completions", timed("/v1/completions", &InferenceApi::Completions));
  server.Handle("POST", "/v1/chat/completions",
                timed("/v1/chat/completions", &InferenceApi::ChatCompletions));
  server.Handle("POST", "/v1/feedback", timed("/v1/feedback", &InferenceApi::Feedback));
  server.Handle("GET", "/healthz", [this](const HttpRequest& r) { return Healthz(r); });
  server.Handle("GET", "/readyz", [this](const HttpRequest& r) { return Readyz(r); });
  if (metrics_ != nullptr) server.HandleMetrics(metrics_->registry());
}

std::string InferenceApi::JsonModel(int64_t version) const {
  Json m = {{"id", model_->job()},  {"object", "model"},         {"created", created_},
            {"owned_by", "fedge"},  {"global_version", version}, {"served_as", model_->ModelName(version)},
            {"ready", version != 0}};
  return Dump(m);
}

HttpResponse InferenceApi::Models(const HttpRequest&) {
  // Lock-free (never waits behind inference): the version is an atomic.
  return HttpResponse::Json(200, R"({"object":"list","data":[)" + JsonModel(model_->version()) + "]}");
}

HttpResponse InferenceApi::Model(const HttpRequest& request) {
  const std::string prefix = "/v1/models/";
  if (request.path.rfind(prefix, 0) != 0 || request.path.substr(prefix.size()) != model_->job()) {
    std::string id = request.path.rfind(prefix, 0) == 0 ? request.path.substr(prefix.size()) : request.path;
    return ApiError(404, "the model '" + id + "' does not exist; this agent serves '" + model_->job() + "'",
                    "invalid_request_error", "model", "model_not_found");
  }
  return HttpResponse::Json(200, JsonModel(model_->version()));
}

HttpResponse InferenceApi::Classify(const HttpRequest& request) {
  ApiErrorInfo error;
  auto texts = ParseClassifyRequest(request.body, limits_, &error);
  if (!texts) return ErrorResponse(error);

  auto batched = scheduler_->Encode(EncodeTask::kClassify, *texts, request.client_gone);
  if (!batched.ok()) return SchedulerError(batched.status());
  const std::vector<Prediction>& predictions = batched->predictions;
  const std::vector<int>& counts = batched->token_counts;
  const int64_t version = batched->version;
  if (predictions.size() != texts->size()) {
    return ApiError(500,
                    "model returned " + std::to_string(predictions.size()) + " predictions for " +
                        std::to_string(texts->size()) + " inputs",
                    "server_error", "", "");
  }

  const auto& labels = model_->labels();
  Json data = Json::array();
  for (size_t i = 0; i < predictions.size(); ++i) {
    const auto& probs = predictions[i].probabilities;
    std::vector<size_t> order(std::min(probs.size(), labels.size()));
    std::iota(order.begin(), order.end(), 0);
    size_t top = std::min(kTopScores, order.size());
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(top), order.end(),
                      [&](size_t a, size_t b) { return probs[a] > probs[b]; });
    Json scores = Json::object();
    for (size_t k = 0; k < top; ++k) scores[labels[order[k]]] = probs[order[k]];
    int label = predictions[i].label;
    if (label < 0 || static_cast<size_t>(label) >= labels.size() ||
        static_cast<size_t>(label) >= probs.size()) {
      return ApiError(500, "model predicted label id " + std::to_string(label) + " outside the label set",
                      "server_error", "", "");
    }
    data.push_back({{"object", "classification"},
                    {"index", i},
                    {"label", labels[static_cast<size_t>(label)]},
                    {"score", probs[static_cast<size_t>(label)]},
                    {"scores", scores}});
  }
  int total = std::accumulate(counts.begin(), counts.end(), 0);
  if (metrics_ != nullptr) metrics_->CountTokens("/v1/classify", total, 0);
  Json out = {{"object", "list"},
              {"model", model_->ModelName(version)},
              {"data", data},
              {"usage", {{"prompt_tokens", total}, {"total_tokens", total}}}};
  return HttpResponse::Json(200, Dump(out));
}

HttpResponse InferenceApi::Embeddings(const HttpRequest& request) {
  ApiErrorInfo error;
  auto req = ParseEmbeddingRequest(request.body, limits_, &error);
  if (!req) return ErrorResponse(error);
  const std::vector<std::string>& texts = req->inputs;

  // Runs in the scheduler with the model held, before the request joins a batch:
  // a "dimensions" other than the model's is refused without computing anything.
  int64_t dims = 0;
  bool dims_refused = false;
  auto precheck = [&](TrainableModel& model) -> Status {
    Embedder* embedder = model.AsEmbedder();
    if (embedder == nullptr) return MissingCapability(model, "embeddings");
    dims = embedder->dimensions();
    if (req->dimensions && *req->dimensions != dims) {
      dims_refused = true;
      return InvalidArgumentError("dimensions");
    }
    return OkStatus();
  };
  auto batched = scheduler_->Encode(EncodeTask::kEmbed, texts, request.client_gone, precheck);
  if (dims_refused) {
    return BadRequest("'dimensions' " + std::to_string(*req->dimensions) +
                          " is not supported: this model's " + "embeddings have " + std::to_string(dims) +
                          " dimensions and are not shortened; omit 'dimensions' or send " +
                          std::to_string(dims),
                      "dimensions", "unsupported_value");
  }
  if (!batched.ok()) return SchedulerError(batched.status());
  const std::vector<std::vector<float>>& vectors = batched->embeddings;
  const std::vector<int>& counts = batched->token_counts;
  const int64_t version = batched->version;
  if (vectors.size() != texts.size()) {
    return ApiError(500,
                    "model returned " + std::to_string(vectors.size()) + " embeddings for " +
                        std::to_string(texts.size()) + " inputs",
                    "server_error", "", "");
  }
  Json data = Json::array();
  for (size_t i = 0; i < vectors.size(); ++i) {
    Json embedding = req->encoding == EmbeddingEncoding::kBase64 ? Json(EncodeFloat32Base64(vectors[i]))
                                                                 : Json(vectors[i]);
    data.push_back({{"object", "embedding"}, {"index", i}, {"embedding", std::move(embedding)}});
  }
  int total = std::accumulate(counts.begin(), counts.end(), 0);
  if (metrics_ != nullptr) metrics_->CountTokens("/v1/embeddings", total, 0);
  Json out = {{"object", "list"},
              {"data", data},
              {"model", model_->ModelName(version)},
              {"usage", {{"prompt_tokens", total}, {"total_tokens", total}}}};
  return HttpResponse::Json(200, Dump(out));
}

HttpResponse InferenceApi::Completions(const HttpRequest& request) {
  return Generate(request, GenerationEndpoint::kCompletions);
}

HttpResponse InferenceApi::ChatCompletions(const HttpRequest& request) {
  return Generate(request, GenerationEndpoint::kChatCompletions);
}

Status InferenceApi::UseModel(const std::function<Status(TrainableModel& model, int64_t version)>& fn,
                              const RequestScheduler::GoneFn& gone) {
  return scheduler_->RunExclusive(fn, gone);
}

Status InferenceApi::RunGeneration(const GenerationRequest& req, bool dry_run,
                                   const llm::TextCallback& on_text, llm::GenerationResult* result,
                                   int64_t* version, GenerationTimes* times,
                                   const RequestScheduler::GoneFn& gone, ChatReplyReading* reading) {
  const std::string& route = GenerationRoute(req.endpoint);
  // `start` runs on the scheduler's decode loop thread with the model held; it
  // writes `version` and `times` there, which this thread reads only after
  // Generate returned (or, for `version`, after the relayed text that follows).
  GenerationJob job;
  job.start = [&](TrainableModel& model, int64_t v, const llm::TextCallback& relay,
                  const std::function<bool()>& cancelled) -> StatusOr<GenerationStart> {
    Generator* lm = model.AsGenerator();
    if (lm == nullptr) return NotCausalLm();
    *version = v;
    llm::GenerationOptions options = req.options;
    std::string prompt = req.prompt;
    if (req.endpoint == GenerationEndpoint::kChatCompletions) {
      auto format = lm->lm().chat_format();
      if (!format) {
        return UnimplementedError(
            "this model has no chat template fedge knows (ChatML, Qwen3, Llama 3, 3.1 or 3.2, Zephyr, Phi-3, "
            "Llama 2, Mistral [INST], Gemma, DeepSeek V3 or DeepSeek-R1, from tokenizer_config.json or its "
            "marker tokens): use "
            "/v1/completions");
      }
      const bool uses_tools =
          !req.tools.empty() ||
          std::any_of(req.messages.begin(), req.messages.end(),
                      [](const llm::ChatMessage& m) { return m.role == "tool" || !m.tool_calls.empty(); });
      const llm::ChatToolFormat tool_format = lm->lm().chat_tool_format();
      if (uses_tools && tool_format == llm::ChatToolFormat::kNone) {
        return UnimplementedError(
            "this model's chat template (" + std::string(llm::ChatFormatName(*format)) +
            ") has no tool calling fedge knows (Qwen2.5's and Qwen3's Hermes <tool_call> "
            "format, Llama 3.1 / 3.2's JSON): remove 'tools', tool messages and tool_calls");
      }
      if ((req.options.json_object || req.options.json_schema) &&
          llm::ChatReplyThinks(*format) == llm::ChatReasoning::kStartsInside) {
        return UnimplementedError("'response_format' json_object / json_schema: this model's reply (" +
                                  std::string(llm::ChatFormatName(*format)) +
                                  ") starts inside its reasoning, which JSON mode would constrain too: send "
                                  "{\"type\": \"text\"}");
      }
      if (req.tool_choice_required) {
        // The reply is one call, decoded under the tools' schemas in the model's format.
        if (llm::ChatReplyThinks(*format) == llm::ChatReasoning::kStartsInside) {
          return UnimplementedError(
              "a required tool call: this model's reply (" + std::string(llm::ChatFormatName(*format)) +
              ") starts inside its reasoning, which the call's constraint would hold too: "
              "send 'tool_choice': \"auto\"");
        }
        const bool hermes = tool_format == llm::ChatToolFormat::kHermes;
        FEDGE_ASSIGN_OR_RETURN(
            options.json_schema,
            llm::CompileToolCallSchema(req.tool_schemas, hermes ? "arguments" : "parameters",
                                       hermes ? "<tool_call>\n" : "", hermes ? "\n</tool_call>" : ""));
      }
      llm::ChatTemplateOptions chat_options;
      chat_options.enable_thinking = req.enable_thinking;
      chat_options.default_system = lm->lm().chat_default_system();
      if (!req.tool_choice_none) chat_options.tools = req.tools;
      FEDGE_ASSIGN_OR_RETURN(prompt, llm::ApplyChatTemplate(*format, req.messages, chat_options));
      if (reading != nullptr) {
        reading->reasoning = llm::ChatReplyThinks(*format);
        reading->tools = chat_options.tools.empty() ? llm::ChatToolFormat::kNone : tool_format;
      }
      options.stop.emplace_back(llm::ChatEndOfTurn(*format));
      options.strip_leading_space = lm->lm().tokenizer().StripsLeadingSpace();
    }
    // With the BOS a Llama-family tokenizer's post_processor adds (not twice when a
    // chat template wrote it), as transformers and llama.cpp encode a prompt.
    std::vector<int32_t> ids = lm->lm().tokenizer().Encode(prompt, {.add_special_tokens = true});
    const int64_t context = lm->lm().config().max_position_embeddings;
    if (static_cast<int64_t>(ids.size()) >= context) {
      return OutOfRangeError("the prompt has " + std::to_string(ids.size()) +
                             " tokens; this model's context is " + std::to_string(context) +
                             " tokens, including the completion: shorten it");
    }
    if (ids.empty()) return InvalidArgumentError("the prompt has no tokens");
    if (dry_run) return GenerationStart{};
    // Timestamps per token; the histograms are observed as tokens come, so a
    // long stream shows in /metrics while it runs.
    options.on_token = [this, times, &route](int32_t) {
      auto now = std::chrono::steady_clock::now();
      if (times->tokens == 0) {
        times->first = now;
        if (metrics_ != nullptr)
          metrics_->ObserveTimeToFirstToken(route,
                                            std::chrono::duration<double>(now - times->arrived).count());
      } else if (metrics_ != nullptr) {
        metrics_->ObserveInterTokenLatency(route, std::chrono::duration<double>(now - times->last).count());
      }
      times->last = now;
      ++times->tokens;
    };
    options.cancelled = cancelled;
    times->prompt_tokens = static_cast<int64_t>(ids.size());
    times->ran = true;
    times->started = std::chrono::steady_clock::now();
    llm::CausalLm* causal = &lm->lm();
    GenerationStart out;
    FEDGE_ASSIGN_OR_RETURN(out.session, causal->StartGeneration(ids, options, relay));
    if (out.session->done()) times->ended = std::chrono::steady_clock::now();
    out.step = [causal](const std::vector<llm::GenerationSession*>& sessions) {
      return causal->StepGenerations(sessions);
    };
    return out;
  };
  job.on_text = on_text;
  job.cancelled = req.options.cancelled;
  auto generated = scheduler_->Generate(job, gone);
  if (times->ran && times->ended == std::chrono::steady_clock::time_point{})
    times->ended = std::chrono::steady_clock::now();
  // Tokens of a generation that was cancelled or failed midway were computed too.
  if (!dry_run && times->ran && metrics_ != nullptr)
    metrics_->CountTokens(route, times->prompt_tokens, times->tokens);
  if (!generated.ok()) return generated.status();
  if (!dry_run) *result = std::move(generated).value();
  return OkStatus();
}

HttpResponse InferenceApi::Generate(const HttpRequest& request, GenerationEndpoint endpoint) {
  const auto arrived = std::chrono::steady_clock::now();
  ApiErrorInfo error;
  auto req = ParseGenerationRequest(request.body, endpoint, limits_, &error);
  if (!req) return ErrorResponse(error);
  llm::GenerationResult result;
  int64_t version = 0;
  GenerationTimes times;
  times.arrived = arrived;
  // A stream's checks run before its 200 goes out, so a bad request still gets its status.
  ChatReplyReading reading;
  Status st = RunGeneration(*req, /*dry_run=*/req->stream, nullptr, &result, &version, &times,
                            request.client_gone, &reading);
  if (st.code() == StatusCode::kResourceExhausted || st.code() == StatusCode::kCancelled)
    return SchedulerError(st);
  if (!st.ok()) return ErrorResponse(ErrorInfo(st));
  if (req->stream) {
    return HttpResponse::EventStream(
        [this, arrived, gone = request.client_gone, req = std::move(*req)](HttpStreamWriter& writer) {
          StreamGeneration(req, arrived, gone, writer);
        });
  }
  const bool chat = endpoint == GenerationEndpoint::kChatCompletions;
  Json choice = {{"index", 0}};
  std::string finish_reason(llm::FinishReasonName(result.finish_reason));
  if (chat) {
    const ChatReplyParts reply = ReadChatReply(result.text, reading.reasoning, reading.tools);
    choice["message"] = {{"role", "assistant"}, {"content", reply.content}, {"refusal", nullptr}};
    if (reading.reasoning != llm::ChatReasoning::kNone) {
      // vLLM's and DeepSeek's field; null when the reply did not think.
      choice["message"]["reasoning_content"] =
          reply.reasoning.empty() ? Json(nullptr) : Json(reply.reasoning);
    }
    if (!reply.calls.empty()) {
      choice["message"]["content"] = reply.content.empty() ? Json(nullptr) : Json(reply.content);
      choice["message"]["tool_calls"] = ToolCallsJson(reply.calls, /*indexed=*/false);
      finish_reason = "tool_calls";
    }
  } else {
    choice["text"] = result.text;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish_reason;
  Json out = {{"id", ResponseId(chat ? "chatcmpl-" : "cmpl-")},
              {"object", chat ? "chat.completion" : "text_completion"},
              {"created", NowSeconds()},
              {"model", model_->ModelName(version)},
              {"system_fingerprint", model_->ModelName(version)},
              {"choices", Json::array({choice})},
              {"usage", Usage(result)},
              {"timings", TimingsJson(times)}};
  return HttpResponse::Json(200, Dump(out));
}

void InferenceApi::StreamGeneration(const GenerationRequest& req,
                                    std::chrono::steady_clock::time_point arrived,
                                    const RequestScheduler::GoneFn& gone, HttpStreamWriter& writer) {
  const bool chat = req.endpoint == GenerationEndpoint::kChatCompletions;
  const std::string id = ResponseId(chat ? "chatcmpl-" : "cmpl-");
  const int64_t created = NowSeconds();
  std::string model_name;
  bool open = true;  // false once a write failed: nothing more is sent
  auto send = [&](const std::string& payload) {
    if (open) open = writer.Write("data: " + payload + "\n\n");
  };
  // One chunk in OpenAI's shape with a single choice (or none, for the usage chunk).
  auto chunk = [&](std::optional<Json> choice, std::optional<Json> usage, std::optional<Json> timings) {
    Json c = {{"id", id},
              {"object", chat ? "chat.completion.chunk" : "text_completion"},
              {"created", created},
              {"model", model_name},
              {"system_fingerprint", model_name},
              {"choices", choice ? Json::array({*choice}) : Json::array()}};
    if (req.include_usage) c["usage"] = usage ? *usage : Json(nullptr);
    if (timings) c["timings"] = *timings;
    send(Dump(c));
  };
  auto text_choice = [&](std::string_view text, const Json& finish_reason, std::string_view reasoning = {}) {
    Json choice = {{"index", 0}};
    if (chat) {
      choice["delta"] = Json::object();
      if (!reasoning.empty()) choice["delta"]["reasoning_content"] = reasoning;
      if (!text.empty()) choice["delta"]["content"] = text;
    } else {
      choice["text"] = text;
    }
    choice["logprobs"] = nullptr;
    choice["finish_reason"] = finish_reason;
    return choice;
  };

  GenerationRequest run = req;
  // Polled on this thread while the sequence runs: a client gone mid-stream ends
  // the generation at the next decode step.
  run.options.cancelled = [&] { return !open || writer.Closed(); };
  bool started = false;
  auto start = [&](int64_t version) {
    if (started) return;
    started = true;
    model_name = model_->ModelName(version);
    if (chat) {
      Json choice = {{"index", 0},
                     {"delta", {{"role", "assistant"}, {"content", ""}}},
                     {"logprobs", nullptr},
                     {"finish_reason", nullptr}};
      chunk(choice, std::nullopt, std::nullopt);
    }
  };
  int64_t version = 0;
  llm::GenerationResult result;
  GenerationTimes times;
  times.arrived = arrived;
  // RunGeneration sets `version` before generating, so every chunk names the global
  // that produced it.
  // A thinking model's reply is split as it streams (ReasoningSplitter holds back a
  // piece that may begin a tag); `reasoning` is set before the first piece arrives.
  // With tools offered, the content then passes a ToolCallStream, which holds it from
  // the first <tool_call> on (Llama: a reply that opens with "{") and reads the calls
  // at the end.
  ChatReplyReading reading;
  std::optional<ReasoningSplitter> splitter;
  std::optional<ToolCallStream> tool_stream;
  auto emit = [&](ReasoningSplitter::Parts parts) {
    if (reading.tools != llm::ChatToolFormat::kNone) {
      if (!tool_stream) tool_stream.emplace(reading.tools);
      parts.content = tool_stream->Feed(parts.content);
    }
    if (!parts.reasoning.empty() || !parts.content.empty())
      chunk(text_choice(parts.content, nullptr, parts.reasoning), std::nullopt, std::nullopt);
  };
  Status st = RunGeneration(
      run, /*dry_run=*/false,
      [&](std::string_view delta) {
        start(version);
        if (reading.reasoning != llm::ChatReasoning::kNone) {
          if (!splitter) splitter.emplace(reading.reasoning);
          emit(splitter->Feed(delta));
        } else if (reading.tools != llm::ChatToolFormat::kNone) {
          emit({"", std::string(delta)});
        } else {
          chunk(text_choice(delta, nullptr), std::nullopt, std::nullopt);
        }
      },
      &result, &version, &times, gone, &reading);
  if (st.code() == StatusCode::kCancelled) return;  // left while queued: nobody is reading
  if (!st.ok()) {
    // The 200 and perhaps some text went out already: the error is one event.
    send(Dump(ErrorJson(ErrorInfo(st))));
    return;
  }
  if (result.finish_reason == llm::FinishReason::kCancelled || !open) return;  // nobody is reading
  start(version);
  if (splitter) emit(splitter->Finish());
  std::string finish_reason(llm::FinishReasonName(result.finish_reason));
  if (tool_stream) {
    llm::ParsedToolCalls calls = tool_stream->Finish();
    if (calls.called) {
      Json choice = {{"index", 0},
                     {"delta", {{"tool_calls", ToolCallsJson(calls.calls, /*indexed=*/true)}}},
                     {"logprobs", nullptr},
                     {"finish_reason", nullptr}};
      chunk(choice, std::nullopt, std::nullopt);
      finish_reason = "tool_calls";
    } else if (!calls.content.empty()) {
      chunk(text_choice(calls.content, nullptr), std::nullopt, std::nullopt);
    }
  }
  const Json timings = TimingsJson(times);
  chunk(text_choice("", finish_reason), std::nullopt, timings);
  if (req.include_usage) chunk(std::nullopt, Usage(result), timings);
  send("[DONE]");
}

HttpResponse InferenceApi::Feedback(const HttpRequest& request) {
  HttpResponse error;
  auto body = ParseObject(request, &error);
  if (!body) return error;
  const Json& b = *body;
  // A causal-LM job's model has no labels: its feedback is a prompt and the
  // preferred completion; a classifier's is a text and one of its labels.
  const auto& labels = model_->labels();
  const bool generative = labels.empty();
  auto bounded_string = [&](const char* key, const char* missing_hint, std::string* out,
                            std::optional<HttpResponse>* err) {
    if (!b.contains(key) || !b[key].is_string()) {
      *err = BadRequest("'" + std::string(key) + "' is required and must be a string" + missing_hint, key,
                        "missing_" + std::string(key));
      return;
    }
    *out = b[key].get<std::string>();
    if (out->empty()) {
      *err = BadRequest("'" + std::string(key) + "' is empty", key, "empty_input");
    } else if (out->size() > limits_.max_feedback_chars) {
      *err = BadRequest("'" + std::string(key) + "' has " + std::to_string(out->size()) + " bytes; at most " +
                            std::to_string(limits_.max_feedback_chars),
                        key, "input_too_long");
    }
  };
  FeedbackEntry entry;
  std::optional<HttpResponse> bad;
  if (generative) {
    if (b.contains("label") || b.contains("text")) {
      return BadRequest(
          "this job generates text (a causal-LM job): feedback is {\"prompt\": ..., \"completion\": the "
          "preferred completion}, not text and label",
          b.contains("label") ? "label" : "text", "invalid_request");
    }
    bounded_string("prompt", "", &entry.text, &bad);
    if (!bad) bounded_string("completion", " (the preferred completion)", &entry.completion, &bad);
    if (bad) return *bad;
  } else {
    if (b.contains("prompt") || b.contains("completion")) {
      return BadRequest(
          "this job classifies text: feedback is {\"text\": ..., \"label\": one of the job's "
          "labels}, not prompt and completion",
          b.contains("prompt") ? "prompt" : "completion", "invalid_request");
    }
    bounded_string("text", "", &entry.text, &bad);
    if (bad) return *bad;
    std::string& label = entry.label;
    if (b.contains("label") && b["label"].is_string()) {
      label = b["label"].get<std::string>();
      if (std::find(labels.begin(), labels.end(), label) == labels.end()) {
        return BadRequest("'label' \"" + (label.size() > 64 ? label.substr(0, 64) + "..." : label) +
                              "\" is not one of the job's " + std::to_string(labels.size()) +
                              " labels (GET /v1/models lists them)",
                          "label", "unknown_label");
      }
    } else if (b.contains("label") && b["label"].is_number_integer()) {
      int64_t id = b["label"].get<int64_t>();
      if (id < 0 || static_cast<size_t>(id) >= labels.size()) {
        return BadRequest(
            "'label' id " + std::to_string(id) + " is outside 0.." + std::to_string(labels.size() - 1),
            "label", "unknown_label");
      }
      label = labels[static_cast<size_t>(id)];
    } else if (b.contains("label") && !b["label"].is_null()) {
      return BadRequest("'label' must be one of the job's labels (a string) or its index (an integer)",
                        "label", "invalid_type");
    } else {
      return BadRequest("'label' is required: one of the job's labels", "label", "missing_label");
    }
  }
  if (store_ == nullptr)
    return ApiError(503, "no state directory configured for feedback", "unavailable", "", "");
  if (!store_->feedback_enabled()) {
    return ApiError(403,
                    "feedback is disabled for this job (spec.feedback.enabled: false); nothing was stored",
                    "permission_error", "", "feedback_disabled");
  }
  entry.ts_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  auto stored = store_->AddFeedback(entry);
  if (stored.status().code() == StatusCode::kResourceExhausted) {
    if (metrics_ != nullptr) metrics_->feedback_log_full_total.Increment();
    // One line when the log fills up, not one per refused request (a flood of
    // them would fill the node's log instead); the counter has them all.
    if (!feedback_full_logged_.exchange(true))
      log::Warn("feedback refused: the log is full",
                {{"path", store_->FeedbackPath()},
                 {"max_bytes", static_cast<int64_t>(store_->feedback_max_bytes())},
                 {"error", stored.status().message()}});
    return ApiError(507,
                    "feedback was not stored: " + stored.status().message() +
                        ". Earlier feedback is kept; the node's operator must collect the log and move it "
                        "away, or raise --feedback-max-bytes, before more is accepted",
                    "insufficient_storage", "", "feedback_log_full");
  }
  if (!stored.ok()) {
    // The detail (paths, errno) goes to the log, not to the client.
    log::Error("feedback could not be stored", {{"error", stored.status().ToString()}});
    return ApiError(
        503, "feedback could not be stored on this node (a disk error; see the agent's log); retry later",
        "unavailable", "", "feedback_store_error");
  }
  feedback_full_logged_ = false;
  if (metrics_ != nullptr) metrics_->feedback_log_bytes.Set(static_cast<double>(stored->log_bytes));
  Json reply{{"object", "feedback"},
             {"stored", !stored->duplicate},
             {"duplicate", stored->duplicate},
             {"examples", stored->examples},
             {"dropped", stored->dropped}};
  if (!generative) reply["label"] = entry.label;
  return HttpResponse::Json(200, Dump(reply));
}

HttpResponse InferenceApi::Healthz(const HttpRequest&) { return HttpResponse::Text(200, "ok\n"); }

HttpResponse InferenceApi::Readyz(const HttpRequest&) {
  int64_t version = model_->version();
  if (version == 0) {
    return HttpResponse::Json(503, Dump(Json{{"ready", false}, {"reason", "no global model installed yet"}}));
  }
  return HttpResponse::Json(
      200, Dump(Json{{"ready", true}, {"model", model_->ModelName(version)}, {"version", version}}));
}

}  // namespace fedge::agent
