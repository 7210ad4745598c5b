// Malformed requests on every agent route answer 400 in OpenAI's error shape —
// never 500, never a dropped connection (issue 12: "a bad query escape
// answers 500"). Real HttpServer on a loopback port.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "fake_classifier.h"
#include "fedge/agent/runtime/inference_api.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/agent/runtime/state_store.h"
#include "http_test_client.h"
#include "serving_test_util.h"

namespace fedge::agent {
namespace {

using nlohmann::json;
using testing::FakeClassifier;
using testing::HttpCall;
using testing::HttpReply;
using testing::TestLabels;

const char* const kRoutes[] = {"/v1/classify", "/v1/embeddings", "/v1/feedback", "/v1/completions",
                               "/v1/chat/completions"};

class BadRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = std::make_unique<FakeClassifier>(TestLabels());
    TensorBundle global = model->ExportTrainable();
    serving_ = std::make_unique<ServingModel>(std::move(model), "ns/job");
    ASSERT_TRUE(serving_->Install(global, 1).ok());
    dir_ = std::filesystem::temp_directory_path() / ("fedge-bad-request-" + std::to_string(::getpid()));
    store_ = std::make_unique<StateStore>(dir_.string(), "ns/job");
    api_ = std::make_unique<InferenceApi>(serving_.get(), store_.get(), &metrics_);
    ASSERT_NO_FATAL_FAILURE(testing::StartApiServer(*api_, &server_));
  }
  void TearDown() override {
    server_->Stop();
    std::filesystem::remove_all(dir_);
  }

  // Asserts a 400 with OpenAI's error shape; returns its code.
  std::string Expect400(const std::string& target, const std::string& body) {
    SCOPED_TRACE(target + " " + body.substr(0, 80));
    HttpReply r = HttpCall(server_->port(), "POST", target, body);
    EXPECT_EQ(r.status, 400) << r.error << r.body;
    json b = json::parse(r.body, nullptr, false);
    if (!b.is_object() || !b.contains("error") || !b["error"].is_object()) {
      ADD_FAILURE() << "not an OpenAI error: " << r.body;
      return "";
    }
    EXPECT_TRUE(b["error"]["message"].is_string() && !b["error"]["message"].get<std::string>().empty());
    EXPECT_EQ(b["error"]["type"], "invalid_request_error") << r.body;
    return b["error"]["code"].is_string() ? b["error"]["code"].get<std::string>() : "";
  }

  std::filesystem::path dir_;
  std::unique_ptr<ServingModel> serving_;
  std::unique_ptr<StateStore> store_;
  AgentMetrics metrics_;
  std::unique_ptr<InferenceApi> api_;
  std::unique_ptr<HttpServer> server_;
};

TEST_F(BadRequestTest, MalformedJsonIs400OnEveryRoute) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  for (const char* route : kRoutes) {
    for (const std::string& body :
         {std::string(""), std::string("{"), std::string("[1, 2]"), std::string("null"), std::string("42"),
          std::string("\"text\""), std::string("{\"input\": \"\xff\"}"), std::string("{\"a\": 1} trailing"),
          deep}) {
      EXPECT_EQ(Expect400(route, body), "invalid_json");
    }
  }
  EXPECT_FALSE(std::filesystem::exists(store_->FeedbackPath()));
}

TEST_F(BadRequestTest, WrongFieldTypesAndValuesAre400) {
  const std::pair<const char*, const char*> cases[] = {
      {"/v1/classify", R"({"input": {"a": 1}})"},
      {"/v1/classify", R"({"input": [["nested"]]})"},
      {"/v1/classify", R"({"input": "x", "model": ["m"]})"},
      {"/v1/embeddings", R"({"input": "x", "encoding_format": 1})"},
      {"/v1/feedback", R"({"text": 5, "label": "noun.animal"})"},
      {"/v1/feedback", R"({"text": "x", "label": 1.5})"},
      {"/v1/feedback", R"({"text": "x", "label": 18446744073709551615})"},
      {"/v1/feedback", R"({"text": "x", "label": ["noun.animal"]})"},
      {"/v1/completions", R"({"prompt": 5})"},
      {"/v1/completions", R"({"prompt": "x", "max_tokens": "5"})"},
      {"/v1/completions", R"({"prompt": "x", "max_tokens": 1e300})"},
      {"/v1/completions", R"({"prompt": "x", "max_tokens": -1})"},
      {"/v1/completions", R"({"prompt": "x", "temperature": "hot"})"},
      {"/v1/completions", R"({"prompt": "x", "top_p": 0})"},
      {"/v1/completions", R"({"prompt": "x", "seed": 1.5})"},
      {"/v1/completions", R"({"prompt": "x", "stop": [1]})"},
      {"/v1/completions", R"({"prompt": "x", "n": 2})"},
      {"/v1/chat/completions", R"({"messages": [1]})"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user"}]})"},
      {"/v1/chat/completions", R"({"messages": {"role": "user", "content": "x"}})"},
      // Well-formed, but this (BERT) job has no causal LM: still the client's error.
      {"/v1/completions", R"({"prompt": "x"})"},
  };
  for (const auto& [route, body] : cases) EXPECT_NE(Expect400(route, body), "");
  EXPECT_EQ(Expect400("/v1/feedback", R"({"text": "x", "label": 1.5})"), "invalid_type");
  EXPECT_FALSE(std::filesystem::exists(store_->FeedbackPath()));
}

TEST_F(BadRequestTest, ABadQueryEscapeIsAClientErrorNotA500) {
  for (const char* route : kRoutes) {
    HttpReply r =
        HttpCall(server_->port(), "POST", std::string(route) + "?x=%zz&y=%", R"({"input": "a dog"})");
    // 400 or the escape kept literally: either way not the server's fault.
    EXPECT_NE(r.status, 0) << route << " " << r.error;
    EXPECT_LT(r.status, 500) << route << " " << r.body;
  }
}

}  // namespace
}  // namespace fedge::agent
