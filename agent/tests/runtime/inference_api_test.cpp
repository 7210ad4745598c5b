#define _TURN_OFF_PLATFORM_STRING
#include <gtest/gtest.h>

#include <cpprest/http_client.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "fake_classifier.h"
#include "fedge/agent/runtime/inference_api.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/agent/runtime/state_store.h"
#include "serving_test_util.h"

namespace fedge::agent {
namespace {

using nlohmann::json;
using testing::FakeClassifier;
using testing::Post;
using testing::TestLabels;

class InferenceApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TestDir("api-test");
    auto model = std::make_unique<FakeClassifier>(TestLabels());
    fake_ = model.get();
    global_ = fake_->ExportTrainable();
    serving_ = std::make_unique<ServingModel>(std::move(model), "ns/job");
    store_ = std::make_unique<StateStore>(dir_.string(), "ns/job");
    api_ = std::make_unique<InferenceApi>(serving_.get(), store_.get(), &metrics_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void MakeReady(int64_t version = 3) { ASSERT_TRUE(serving_->Install(global_, version).ok()); }

  static json Body(const HttpResponse& r) { return json::parse(r.body); }

  // Asserts an OpenAI-shaped error with the given status and code.
  static void ExpectError(const HttpResponse& r, int status, const std::string& code) {
    EXPECT_EQ(r.status, status) << r.body;
    json b = json::parse(r.body, nullptr, false);
    ASSERT_TRUE(b.is_object()) << r.body;
    ASSERT_TRUE(b.contains("error")) << r.body;
    EXPECT_TRUE(b["error"]["message"].is_string());
    EXPECT_FALSE(b["error"]["message"].get<std::string>().empty());
    EXPECT_TRUE(b["error"]["type"].is_string());
    EXPECT_EQ(b["error"]["code"], code) << r.body;
  }

  std::filesystem::path dir_;
  FakeClassifier* fake_ = nullptr;
  TensorBundle global_;
  std::unique_ptr<ServingModel> serving_;
  std::unique_ptr<StateStore> store_;
  AgentMetrics metrics_;
  std::unique_ptr<InferenceApi> api_;
};

TEST_F(InferenceApiTest, ServesNothingBeforeAGlobalModelIsInstalled) {
  ExpectError(api_->Classify(Post("/v1/classify", R"({"input": "dog"})")), 503, "model_not_ready");
  ExpectError(api_->Embeddings(Post("/v1/embeddings", R"({"input": "dog"})")), 503, "model_not_ready");
  EXPECT_EQ(api_->Readyz({}).status, 503);
  EXPECT_EQ(api_->Healthz({}).status, 200);
  MakeReady();
  EXPECT_EQ(api_->Readyz({}).status, 200);
  EXPECT_EQ(Body(api_->Readyz({}))["model"], "ns/job@v3");
}

TEST_F(InferenceApiTest, ClassifyReturnsLabelScoreAndTopFiveScores) {
  MakeReady();
  HttpResponse r =
      api_->Classify(Post("/v1/classify", R"({"input": ["a dog", "an old oak tree"], "model": "x"})"));
  ASSERT_EQ(r.status, 200) << r.body;
  json b = Body(r);
  EXPECT_EQ(b["object"], "list");
  EXPECT_EQ(b["model"], "ns/job@v3");
  ASSERT_EQ(b["data"].size(), 2u);
  auto expected = *fake_->Classify({"a dog", "an old oak tree"});
  for (size_t i = 0; i < 2; ++i) {
    const json& d = b["data"][i];
    EXPECT_EQ(d["object"], "classification");
    EXPECT_EQ(d["index"], i);
    EXPECT_EQ(d["label"], TestLabels()[static_cast<size_t>(expected[i].label)]);
    EXPECT_NEAR(d["score"].get<double>(), expected[i].probabilities[static_cast<size_t>(expected[i].label)],
                1e-6);
    ASSERT_EQ(d["scores"].size(), 5u) << "top 5 of 7 labels";
    // Re-parse preserving key order: the wire order is best first.
    nlohmann::ordered_json ordered = nlohmann::ordered_json::parse(r.body)["data"][i]["scores"];
    double prev = 2;
    for (auto& [label, p] : ordered.items()) {
      EXPECT_LE(p.get<double>(), prev) << "scores are sorted, best first";
      prev = p.get<double>();
    }
    EXPECT_EQ(d["scores"][d["label"].get<std::string>()], d["score"]);
  }
  EXPECT_EQ(b["usage"]["prompt_tokens"], (2 + 2) + (4 + 2));
}

TEST_F(InferenceApiTest, ClassifyAcceptsASingleString) {
  MakeReady();
  HttpResponse r = api_->Classify(Post("/v1/classify", R"({"input": "a dog"})"));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Body(r)["data"].size(), 1u);
}

TEST_F(InferenceApiTest, EmbeddingsHaveTheOpenAIShape) {
  MakeReady(5);
  HttpResponse r = api_->Embeddings(
      Post("/v1/embeddings",
           R"({"input": ["a small cat", "dog"], "model": "anything", "encoding_format": "float"})"));
  ASSERT_EQ(r.status, 200) << r.body;
  json b = Body(r);
  EXPECT_EQ(b["object"], "list");
  EXPECT_EQ(b["model"], "ns/job@v5");
  ASSERT_EQ(b["data"].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(b["data"][i]["object"], "embedding");
    EXPECT_EQ(b["data"][i]["index"], i);
    ASSERT_EQ(b["data"][i]["embedding"].size(), 4u);
    double norm = 0;
    for (auto& x : b["data"][i]["embedding"]) norm += x.get<double>() * x.get<double>();
    EXPECT_NEAR(norm, 1.0, 1e-5);
  }
  EXPECT_EQ(b["usage"]["prompt_tokens"], 5 + 3);
  EXPECT_EQ(b["usage"]["total_tokens"], 5 + 3);
}

TEST_F(InferenceApiTest, RejectsBadInputWithOpenAIErrors) {
  MakeReady();
  for (auto fn : {&InferenceApi::Classify, &InferenceApi::Embeddings}) {
    auto call = [&](const std::string& body) { return (api_.get()->*fn)(Post("/v1/x", body)); };
    ExpectError(call("{not json"), 400, "invalid_json");
    ExpectError(call("[1, 2]"), 400, "invalid_json");
    ExpectError(call(R"({"nope": 1})"), 400, "missing_input");
    ExpectError(call(R"({"input": ""})"), 400, "empty_input");
    ExpectError(call(R"({"input": "   "})"), 400, "empty_input");
    ExpectError(call(R"({"input": []})"), 400, "empty_input");
    ExpectError(call(R"({"input": ["ok", ""]})"), 400, "empty_input");
    ExpectError(call(R"({"input": 42})"), 400, "invalid_type");
    ExpectError(call(R"({"input": ["ok", 42]})"), 400, "invalid_type");
    ExpectError(call(R"({"input": "ok", "model": 7})"), 400, "invalid_type");
    json many = {{"input", std::vector<std::string>(65, "word")}};
    ExpectError(call(many.dump()), 400, "too_many_inputs");
    json huge = {{"input", std::string(20000, 'x')}};
    ExpectError(call(huge.dump()), 400, "input_too_long");
    std::string words;
    for (int i = 0; i < 600; ++i) words += "w ";
    ExpectError(call(json{{"input", words}}.dump()), 400, "context_length_exceeded");
  }
  ExpectError(api_->Embeddings(Post("/v1/embeddings", R"({"input": "x", "encoding_format": "int8"})")), 400,
              "invalid_value");
  ExpectError(api_->Embeddings(Post("/v1/embeddings", R"({"input": "x", "dimensions": 2})")), 400,
              "unsupported_value");
  ExpectError(api_->Embeddings(Post("/v1/embeddings", R"({"input": [1, 2, 3]})")), 400, "unsupported_input");
  ExpectError(api_->Embeddings(Post("/v1/embeddings", R"({"input": "x", "truncate": true})")), 400,
              "unknown_parameter");
  // 64 inputs is the limit, not above it.
  json max = {{"input", std::vector<std::string>(64, "word")}};
  EXPECT_EQ(api_->Classify(Post("/v1/classify", max.dump())).status, 200);
}

TEST_F(InferenceApiTest, FeedbackIsValidatedAndAppendedToTheStateDir) {
  HttpResponse ok =
      api_->Feedback(Post("/v1/feedback", R"({"text": "a tabby cat", "label": "noun.animal"})"));
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(Body(ok)["stored"], true);
  ASSERT_EQ(api_->Feedback(Post("/v1/feedback", R"({"text": "oak", "label": 1})")).status, 200);
  ExpectError(api_->Feedback(Post("/v1/feedback", R"({"text": "x", "label": "noun.dragon"})")), 400,
              "unknown_label");
  ExpectError(api_->Feedback(Post("/v1/feedback", R"({"text": "x", "label": 99})")), 400, "unknown_label");
  ExpectError(api_->Feedback(Post("/v1/feedback", R"({"text": "x"})")), 400, "missing_label");
  ExpectError(api_->Feedback(Post("/v1/feedback", R"({"label": "noun.act"})")), 400, "missing_text");
  ExpectError(api_->Feedback(Post("/v1/feedback", R"({"text": "", "label": "noun.act"})")), 400,
              "empty_input");
  ExpectError(api_->Feedback(Post("/v1/feedback", "nope")), 400, "invalid_json");

  std::ifstream in(store_->FeedbackPath());
  std::vector<json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["text"], "a tabby cat");
  EXPECT_EQ(lines[0]["label"], "noun.animal");
  EXPECT_EQ(lines[1]["label"], "noun.plant");
  EXPECT_GT(lines[1]["ts_ms"].get<int64_t>(), 0);
}

TEST_F(InferenceApiTest, SwappingTheGlobalNeverFailsOrOverlapsRequests) {
  MakeReady(1);
  fake_->slow_classify = true;
  std::atomic<bool> done{false};
  std::atomic<int> failures{0}, served{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&] {
      while (!done) {
        HttpResponse r = api_->Classify(Post("/v1/classify", R"({"input": ["a dog", "a cat"]})"));
        if (r.status != 200) ++failures;
        ++served;
      }
    });
  }
  TensorBundle next = global_;
  for (int v = 2; v <= 200; ++v) {
    next.tensors[1].values[0] = float(v) * 0.01f;
    ASSERT_TRUE(serving_->Install(next, v).ok());
  }
  // Let requests run against the last version too before stopping.
  while (served < 50) std::this_thread::yield();
  done = true;
  for (auto& c : clients) c.join();
  EXPECT_EQ(failures, 0);
  EXPECT_FALSE(fake_->concurrent_use->load()) << "a request and a swap used the model at the same time";
  EXPECT_EQ(serving_->version(), 200);
}

TEST_F(InferenceApiTest, InstallOfAMismatchedBundleKeepsServingTheOldOne) {
  MakeReady(4);
  TensorBundle wrong;
  wrong.tensors.push_back({"classifier.weight", {1}, {0.0f}});
  EXPECT_FALSE(serving_->Install(wrong, 5).ok());
  EXPECT_EQ(serving_->version(), 4);
  EXPECT_EQ(api_->Classify(Post("/v1/classify", R"({"input": "dog"})")).status, 200);
}

TEST_F(InferenceApiTest, RoutesAndMetricsOverRealHttp) {
  HttpServer server("127.0.0.1:0");
  api_->Register(server);
  ASSERT_TRUE(server.Start().ok());
  web::http::client::http_client client("http://127.0.0.1:" + std::to_string(server.port()));
  auto request = [&](const std::string& method, const std::string& path, const std::string& body) {
    web::http::http_request req(method);
    req.set_request_uri(path);
    if (!body.empty()) req.set_body(body, "application/json");
    auto resp = client.request(req).get();
    return std::make_pair(static_cast<int>(resp.status_code()), resp.extract_string(true).get());
  };
  EXPECT_EQ(request("GET", "/healthz", "").first, 200);
  EXPECT_EQ(request("GET", "/readyz", "").first, 503);
  EXPECT_EQ(request("POST", "/v1/classify", R"({"input": "dog"})").first, 503);
  MakeReady(2);
  EXPECT_EQ(request("GET", "/readyz", "").first, 200);
  auto [code, body] = request("POST", "/v1/classify", R"({"input": "dog"})");
  EXPECT_EQ(code, 200) << body;
  EXPECT_EQ(json::parse(body)["model"], "ns/job@v2");
  EXPECT_EQ(request("POST", "/v1/embeddings", R"({"input": "dog"})").first, 200);
  EXPECT_EQ(request("POST", "/v1/classify", "{").first, 400);

  auto [mcode, metrics] = request("GET", "/metrics", "");
  EXPECT_EQ(mcode, 200);
  for (const char* name :
       {"fedge_agent_train_steps_total", "fedge_agent_train_loss", "fedge_agent_rounds_participated_total",
        "fedge_agent_bytes_sent_total", "fedge_agent_bytes_received_total", "fedge_agent_update_bytes",
        "fedge_agent_update_raw_bytes", "fedge_agent_global_version", "fedge_agent_eval_accuracy",
        "fedge_agent_inference_duration_seconds_bucket"}) {
    EXPECT_NE(metrics.find(name), std::string::npos) << name;
  }
  EXPECT_NE(metrics.find(R"(fedge_agent_inference_requests_total{code="200",endpoint="/v1/classify"} 1)"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find(R"(fedge_agent_inference_requests_total{code="503",endpoint="/v1/classify"} 1)"),
            std::string::npos);
  EXPECT_NE(metrics.find(R"(fedge_agent_inference_requests_total{code="400",endpoint="/v1/classify"} 1)"),
            std::string::npos);
  server.Stop();
}

}  // namespace
}  // namespace fedge::agent
