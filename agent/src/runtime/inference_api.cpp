#include "fedge/agent/runtime/inference_api.h"

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
#include "fedge/agent/runtime/api_token.h"
#include "fedge/agent/runtime/llm_model.h"
#include "fedge/agent/runtime/metrics.h"
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

// Validates "input" (string or non-empty array of strings) and "model".
std::optional<std::vector<std::string>> ParseInputs(const Json& body, const InferenceLimits& limits,
                                                    HttpResponse* error) {
  if (body.contains("model") && !body["model"].is_string() && !body["model"].is_null()) {
    *error = BadRequest("'model' must be a string", "model", "invalid_type");
    return std::nullopt;
  }
  if (!body.contains("input") || body["input"].is_null()) {
    *error = BadRequest("'input' is required: a string or an array of strings", "input", "missing_input");
    return std::nullopt;
  }
  const Json& input = body["input"];
  std::vector<std::string> texts;
  if (input.is_string()) {
    texts.push_back(input.get<std::string>());
  } else if (input.is_array()) {
    if (input.empty()) {
      *error = BadRequest("'input' must not be an empty array", "input", "empty_input");
      return std::nullopt;
    }
    if (input.size() > limits.max_inputs) {
      *error = BadRequest("'input' has " + std::to_string(input.size()) + " items; at most " +
                              std::to_string(limits.max_inputs) + " per request",
                          "input", "too_many_inputs");
      return std::nullopt;
    }
    for (size_t i = 0; i < input.size(); ++i) {
      if (!input[i].is_string()) {
        *error = BadRequest("'input[" + std::to_string(i) + "]' must be a string", "input", "invalid_type");
        return std::nullopt;
      }
      texts.push_back(input[i].get<std::string>());
    }
  } else {
    *error = BadRequest("'input' must be a string or an array of strings", "input", "invalid_type");
    return std::nullopt;
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    std::string where = input.is_array() ? "'input[" + std::to_string(i) + "]'" : "'input'";
    if (texts[i].empty() ||
        std::all_of(texts[i].begin(), texts[i].end(), [](unsigned char c) { return std::isspace(c); })) {
      *error = BadRequest(where + " is empty", "input", "empty_input");
      return std::nullopt;
    }
    if (texts[i].size() > limits.max_input_chars) {
      *error = BadRequest(where + " has " + std::to_string(texts[i].size()) + " bytes; at most " +
                              std::to_string(limits.max_input_chars),
                          "input", "input_too_long");
      return std::nullopt;
    }
  }
  return texts;
}

// Counts tokens and refuses inputs above the limit (OpenAI's code for it).
Status CheckTokens(const TextClassifier& model, const std::vector<std::string>& texts, int max_tokens,
                   std::vector<int>* counts) {
  counts->clear();
  for (size_t i = 0; i < texts.size(); ++i) {
    int n = model.CountTokens(texts[i]);
    if (n > max_tokens) {
      return OutOfRangeError("input " + std::to_string(i) + " has " + std::to_string(n) +
                             " tokens; this model accepts at most " + std::to_string(max_tokens));
    }
    counts->push_back(n);
  }
  return OkStatus();
}

HttpResponse TokenError(const Status& st) {
  if (st.code() == StatusCode::kOutOfRange)
    return BadRequest(st.message(), "input", "context_length_exceeded");
  return FromModelStatus(st);
}

// Reads the OpenAI sampling fields shared by /v1/completions and
// /v1/chat/completions into *options; on a bad value fills *error.
bool ParseGeneration(const Json& body, llm::GenerationOptions* options, HttpResponse* error) {
  if (body.contains("model") && !body["model"].is_string() && !body["model"].is_null()) {
    *error = BadRequest("'model' must be a string", "model", "invalid_type");
    return false;
  }
  options->max_new_tokens = 16;  // OpenAI's default for completions
  options->sampling.temperature = 1.0;
  if (body.contains("max_tokens") && !body["max_tokens"].is_null()) {
    const Json& v = body["max_tokens"];
    if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > 4096) {
      *error = BadRequest("'max_tokens' must be an integer in [1, 4096]", "max_tokens", "invalid_value");
      return false;
    }
    options->max_new_tokens = static_cast<int>(v.get<int64_t>());
  }
  if (body.contains("temperature") && !body["temperature"].is_null()) {
    const Json& v = body["temperature"];
    if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 2) {
      *error = BadRequest("'temperature' must be a number in [0, 2]", "temperature", "invalid_value");
      return false;
    }
    options->sampling.temperature = v.get<double>();
  }
  if (body.contains("top_p") && !body["top_p"].is_null()) {
    const Json& v = body["top_p"];
    if (!v.is_number() || !(v.get<double>() > 0) || v.get<double>() > 1) {
      *error = BadRequest("'top_p' must be a number in (0, 1]", "top_p", "invalid_value");
      return false;
    }
    options->sampling.top_p = v.get<double>();
  }
  if (body.contains("seed") && !body["seed"].is_null()) {
    const Json& v = body["seed"];
    if (!v.is_number_integer()) {
      *error = BadRequest("'seed' must be an integer", "seed", "invalid_type");
      return false;
    }
    options->sampling.seed = static_cast<uint64_t>(v.get<int64_t>());
  }
  if (body.contains("n") && !body["n"].is_null() &&
      !(body["n"].is_number_integer() && body["n"].get<int64_t>() == 1)) {
    *error = BadRequest("only 'n': 1 is supported", "n", "unsupported_value");
    return false;
  }
  if (body.contains("stream") && body["stream"].is_boolean() && body["stream"].get<bool>()) {
    *error = BadRequest("'stream': true is not supported", "stream", "unsupported_value");
    return false;
  }
  if (body.contains("stop") && !body["stop"].is_null()) {
    const Json& v = body["stop"];
    std::vector<std::string> stops;
    if (v.is_string()) {
      stops.push_back(v.get<std::string>());
    } else if (v.is_array() && v.size() <= 4 &&
               std::all_of(v.begin(), v.end(), [](const Json& x) { return x.is_string(); })) {
      for (const Json& x : v) stops.push_back(x.get<std::string>());
    } else {
      *error = BadRequest("'stop' must be a string or an array of at most 4 strings", "stop", "invalid_type");
      return false;
    }
    for (const auto& stop : stops) {
      if (stop.empty()) {
        *error = BadRequest("'stop' strings must not be empty", "stop", "invalid_value");
        return false;
      }
      options->stop.push_back(stop);
    }
  }
  return true;
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

}  // namespace

InferenceApi::InferenceApi(ServingModel* model, StateStore* store, AgentMetrics* metrics,
                           InferenceLimits limits, ApiTokenFile* tokens)
    : model_(model), store_(store), metrics_(metrics), limits_(limits), tokens_(tokens) {}

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
    return [this, endpoint, fn](const HttpRequest& request) {
      auto start = std::chrono::steady_clock::now();
      std::optional<HttpResponse> denied = Authenticate(request);
      HttpResponse response = denied ? std::move(*denied) : (this->*fn)(request);
      double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (metrics_ != nullptr) metrics_->ObserveInference(endpoint, response.status, seconds);
      return response;
    };
  };
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

HttpResponse InferenceApi::Classify(const HttpRequest& request) {
  HttpResponse error;
  auto body = ParseObject(request, &error);
  if (!body) return error;
  auto texts = ParseInputs(*body, limits_, &error);
  if (!texts) return error;

  std::vector<Prediction> predictions;
  int64_t version = 0;
  std::vector<int> counts;
  Status st = model_->Use([&](TextClassifier& model, int64_t v) -> Status {
    version = v;
    FEDGE_RETURN_IF_ERROR(CheckTokens(model, *texts, limits_.max_input_tokens, &counts));
    FEDGE_ASSIGN_OR_RETURN(predictions, model.Classify(*texts));
    return OkStatus();
  });
  if (!st.ok()) return TokenError(st);
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
  Json out = {{"object", "list"},
              {"model", model_->ModelName(version)},
              {"data", data},
              {"usage", {{"prompt_tokens", total}, {"total_tokens", total}}}};
  return HttpResponse::Json(200, Dump(out));
}

HttpResponse InferenceApi::Embeddings(const HttpRequest& request) {
  HttpResponse error;
  auto body = ParseObject(request, &error);
  if (!body) return error;
  if (body->contains("encoding_format") && !(*body)["encoding_format"].is_null()) {
    const Json& format = (*body)["encoding_format"];
    if (!format.is_string() || format.get<std::string>() != "float") {
      return BadRequest("'encoding_format' must be \"float\" (base64 is not supported)", "encoding_format",
                        "unsupported_encoding_format");
    }
  }
  auto texts = ParseInputs(*body, limits_, &error);
  if (!texts) return error;

  std::vector<std::vector<float>> vectors;
  std::vector<int> counts;
  int64_t version = 0;
  Status st = model_->Use([&](TextClassifier& model, int64_t v) -> Status {
    version = v;
    FEDGE_RETURN_IF_ERROR(CheckTokens(model, *texts, limits_.max_input_tokens, &counts));
    FEDGE_ASSIGN_OR_RETURN(vectors, model.Embed(*texts));
    return OkStatus();
  });
  if (!st.ok()) return TokenError(st);
  if (vectors.size() != texts->size()) {
    return ApiError(500,
                    "model returned " + std::to_string(vectors.size()) + " embeddings for " +
                        std::to_string(texts->size()) + " inputs",
                    "server_error", "", "");
  }
  Json data = Json::array();
  for (size_t i = 0; i < vectors.size(); ++i) {
    data.push_back({{"object", "embedding"}, {"index", i}, {"embedding", vectors[i]}});
  }
  int total = std::accumulate(counts.begin(), counts.end(), 0);
  Json out = {{"object", "list"},
              {"data", data},
              {"model", model_->ModelName(version)},
              {"usage", {{"prompt_tokens", total}, {"total_tokens", total}}}};
  return HttpResponse::Json(200, Dump(out));
}

HttpResponse InferenceApi::Completions(const HttpRequest& request) {
  HttpResponse error;
  auto body = ParseObject(request, &error);
  if (!body) return error;
  if (!body->contains("prompt") || !(*body)["prompt"].is_string()) {
    return BadRequest("'prompt' is required and must be a string", "prompt", "missing_prompt");
  }
  std::string prompt = (*body)["prompt"].get<std::string>();
  if (prompt.empty()) return BadRequest("'prompt' is empty", "prompt", "empty_input");
  if (prompt.size() > limits_.max_input_chars) {
    return BadRequest("'prompt' has " + std::to_string(prompt.size()) + " bytes; at most " +
                          std::to_string(limits_.max_input_chars),
                      "prompt", "input_too_long");
  }
  llm::GenerationOptions options;
  if (!ParseGeneration(*body, &options, &error)) return error;

  llm::GenerationResult result;
  int64_t version = 0;
  Status st = model_->Use([&](TextClassifier& model, int64_t v) -> Status {
    auto* lm = dynamic_cast<LlmModel*>(&model);
    if (lm == nullptr) return NotCausalLm();
    version = v;
    FEDGE_ASSIGN_OR_RETURN(result, lm->lm().Generate(prompt, options));
    return OkStatus();
  });
  if (!st.ok()) return FromModelStatus(st);
  Json choice = {{"index", 0},
                 {"text", result.text},
                 {"logprobs", nullptr},
                 {"finish_reason", std::string(llm::FinishReasonName(result.finish_reason))}};
  Json out = {{"id", ResponseId("cmpl-")},        {"object", "text_completion"},
              {"created", NowSeconds()},          {"model", model_->ModelName(version)},
              {"choices", Json::array({choice})}, {"usage", Usage(result)}};
  return HttpResponse::Json(200, Dump(out));
}

HttpResponse InferenceApi::ChatCompletions(const HttpRequest& request) {
  HttpResponse error;
  auto body = ParseObject(request, &error);
  if (!body) return error;
  const Json& b = *body;
  if (!b.contains("messages") || !b["messages"].is_array() || b["messages"].empty()) {
    return BadRequest("'messages' is required: a non-empty array of {\"role\", \"content\"}", "messages",
                      "missing_messages");
  }
  std::vector<llm::ChatMessage> messages;
  size_t chars = 0;
  for (size_t i = 0; i < b["messages"].size(); ++i) {
    const Json& m = b["messages"][i];
    std::string where = "'messages[" + std::to_string(i) + "]'";
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
        m["role"].get<std::string>().empty() || !m.contains("content") || !m["content"].is_string()) {
      return BadRequest(where + " must be an object with string 'role' and 'content'", "messages",
                        "invalid_message");
    }
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    chars += messages.back().content.size();
  }
  if (chars > limits_.max_input_chars) {
    return BadRequest("'messages' have " + std::to_string(chars) + " bytes of content; at most " +
                          std::to_string(limits_.max_input_chars),
                      "messages", "input_too_long");
  }
  llm::GenerationOptions options;
  if (!ParseGeneration(b, &options, &error)) return error;

  llm::GenerationResult result;
  int64_t version = 0;
  Status st = model_->Use([&](TextClassifier& model, int64_t v) -> Status {
    auto* lm = dynamic_cast<LlmModel*>(&model);
    if (lm == nullptr) return NotCausalLm();
    version = v;
    auto format = llm::DetectChatFormat(lm->lm().tokenizer());
    if (!format) {
      return UnimplementedError(
          "this model's tokenizer has no chat markers (<|im_start|> or <|start_header_id|>); use "
          "/v1/completions");
    }
    FEDGE_ASSIGN_OR_RETURN(std::string prompt, llm::ApplyChatTemplate(*format, messages));
    llm::GenerationOptions chat = options;
    chat.stop.emplace_back(llm::ChatEndOfTurn(*format));
    FEDGE_ASSIGN_OR_RETURN(result, lm->lm().Generate(prompt, chat));
    return OkStatus();
  });
  if (!st.ok()) return FromModelStatus(st);
  Json choice = {{"index", 0},
                 {"message", {{"role", "assistant"}, {"content", result.text}}},
                 {"logprobs", nullptr},
                 {"finish_reason", std::string(llm::FinishReasonName(result.finish_reason))}};
  Json out = {{"id", ResponseId("chatcmpl-")},    {"object", "chat.completion"},
              {"created", NowSeconds()},          {"model", model_->ModelName(version)},
              {"choices", Json::array({choice})}, {"usage", Usage(result)}};
  return HttpResponse::Json(200, Dump(out));
}

HttpResponse InferenceApi::Feedback(const HttpRequest& request) {
  HttpResponse error;
  auto body = ParseObject(request, &error);
  if (!body) return error;
  const Json& b = *body;
  if (!b.contains("text") || !b["text"].is_string()) {
    return BadRequest("'text' is required and must be a string", "text", "missing_text");
  }
  std::string text = b["text"].get<std::string>();
  if (text.empty()) return BadRequest("'text' is empty", "text", "empty_input");
  if (text.size() > limits_.max_feedback_chars) {
    return BadRequest("'text' has " + std::to_string(text.size()) + " bytes; at most " +
                          std::to_string(limits_.max_feedback_chars),
                      "text", "input_too_long");
  }
  const auto& labels = model_->labels();
  std::string label;
  if (b.contains("label") && b["label"].is_string()) {
    label = b["label"].get<std::string>();
    if (std::find(labels.begin(), labels.end(), label) == labels.end()) {
      return BadRequest("'label' \"" + (label.size() > 64 ? label.substr(0, 64) + "..." : label) +
                            "\" is not one of the job's " + std::to_string(labels.size()) + " labels",
                        "label", "unknown_label");
    }
  } else if (b.contains("label") && b["label"].is_number_integer()) {
    int64_t id = b["label"].get<int64_t>();
    if (id < 0 || static_cast<size_t>(id) >= labels.size()) {
      return BadRequest(
          "'label' id " + std::to_string(id) + " is outside 0.." + std::to_string(labels.size() - 1), "label",
          "unknown_label");
    }
    label = labels[static_cast<size_t>(id)];
  } else if (b.contains("label") && !b["label"].is_null()) {
    return BadRequest("'label' must be one of the job's labels (a string) or its index (an integer)", "label",
                      "invalid_type");
  } else {
    return BadRequest("'label' is required: one of the job's labels", "label", "missing_label");
  }
  if (store_ == nullptr)
    return ApiError(503, "no state directory configured for feedback", "unavailable", "", "");
  int64_t ts_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  auto stored = store_->AppendFeedback(text, label, ts_ms);
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
  if (metrics_ != nullptr) metrics_->feedback_log_bytes.Set(static_cast<double>(*stored));
  return HttpResponse::Json(200, Dump(Json{{"object", "feedback"}, {"stored", true}, {"label", label}}));
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
