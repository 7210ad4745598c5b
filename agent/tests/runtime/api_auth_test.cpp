// Bearer-token authentication of the agent's inference API (issue 10: "the
// inference API is open"), over the real HttpServer on a loopback port.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "fake_classifier.h"
#include "fedge/agent/runtime/api_token.h"
#include "fedge/agent/runtime/inference_api.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/agent/runtime/state_store.h"
#include "http_test_client.h"
#include "serving_test_util.h"

namespace fedge::agent {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::FakeClassifier;
using testing::HttpCall;
using testing::HttpReply;
using testing::TestLabels;

// An empty directory of its own for the running test.
fs::path TestDir(const std::string& what) {
  fs::path dir = testing::TestDir(what);
  fs::create_directories(dir);
  return dir;
}

void WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

// A Secret volume as the kubelet lays it out: <dir>/token -> ..data/token,
// ..data -> ..<version>; an update writes a new version directory and swaps
// the ..data symlink atomically.
class SecretVolume {
 public:
  explicit SecretVolume(fs::path dir) : dir_(std::move(dir)) {}
  void Write(const std::string& token_file_text) {
    fs::path version = dir_ / ("..v" + std::to_string(++n_));
    fs::create_directories(version);
    WriteText(version / "token", token_file_text);
    fs::path tmp = dir_ / "..data_tmp";
    fs::remove(tmp);
    fs::create_directory_symlink(version.filename(), tmp);
    fs::rename(tmp, dir_ / "..data");
    if (!fs::is_symlink(dir_ / "token")) fs::create_symlink(fs::path("..data") / "token", dir_ / "token");
  }
  std::string path() const { return (dir_ / "token").string(); }

 private:
  fs::path dir_;
  int n_ = 0;
};

std::map<std::string, std::string> Bearer(const std::string& token) {
  return {{"Authorization", "Bearer " + token}};
}

// Asserts a 401 in OpenAI's error shape that tells the client what to send.
void ExpectUnauthorized(const HttpReply& r, const std::string& code) {
  ASSERT_EQ(r.status, 401) << r.error << r.body;
  json b = json::parse(r.body, nullptr, false);
  ASSERT_TRUE(b.is_object() && b.contains("error")) << r.body;
  EXPECT_EQ(b["error"]["type"], "authentication_error") << r.body;
  EXPECT_EQ(b["error"]["code"], code) << r.body;
  EXPECT_NE(b["error"]["message"].get<std::string>().find("Authorization: Bearer <token>"), std::string::npos)
      << r.body;
  // RFC 6750: a 401 names the scheme the client must use.
  ASSERT_TRUE(r.headers.count("www-authenticate")) << r.body;
  EXPECT_EQ(r.headers.at("www-authenticate").rfind("Bearer realm=\"fedge-agent\"", 0), 0u);
}

class ApiAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TestDir("api-auth");
    secret_ = std::make_unique<SecretVolume>(dir_ / "secret");
    fs::create_directories(dir_ / "secret");
    secret_->Write("s3cret-token-1\n");
    auto tokens = ApiTokenFile::Open(secret_->path(), /*min_recheck=*/std::chrono::milliseconds(0));
    ASSERT_TRUE(tokens.ok()) << tokens.status().ToString();
    tokens_ = std::move(tokens).value();

    auto model = std::make_unique<FakeClassifier>(TestLabels());
    TensorBundle global = model->ExportTrainable();
    serving_ = std::make_unique<ServingModel>(std::move(model), "ns/job");
    ASSERT_TRUE(serving_->Install(global, 1).ok());
    store_ = std::make_unique<StateStore>((dir_ / "state").string(), "ns/job");
    api_ = std::make_unique<InferenceApi>(serving_.get(), store_.get(), &metrics_, InferenceLimits{},
                                          tokens_.get());
    ASSERT_NO_FATAL_FAILURE(testing::StartApiServer(*api_, &server_));
    port_ = server_->port();
  }
  void TearDown() override {
    if (server_) server_->Stop();
    fs::remove_all(dir_);
  }

  HttpReply Classify(const std::map<std::string, std::string>& headers) {
    return HttpCall(port_, "POST", "/v1/classify", R"({"input": "a dog"})", headers);
  }

  fs::path dir_;
  std::unique_ptr<SecretVolume> secret_;
  std::unique_ptr<ApiTokenFile> tokens_;
  std::unique_ptr<ServingModel> serving_;
  std::unique_ptr<StateStore> store_;
  AgentMetrics metrics_;
  std::unique_ptr<InferenceApi> api_;
  std::unique_ptr<HttpServer> server_;
  int port_ = 0;
};

TEST_F(ApiAuthTest, EveryV1RouteRefusesARequestWithoutAToken) {
  const std::map<std::string, std::string> routes = {
      {"/v1/classify", R"({"input": "a dog"})"},
      {"/v1/embeddings", R"({"input": "a dog"})"},
      {"/v1/feedback", R"({"text": "a dog", "label": "noun.animal"})"},
      {"/v1/completions", R"({"prompt": "a dog"})"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}]})"},
  };
  for (const auto& [path, body] : routes) {
    SCOPED_TRACE(path);
    ExpectUnauthorized(HttpCall(port_, "POST", path, body), "missing_api_key");
  }
  EXPECT_FALSE(fs::exists(store_->FeedbackPath())) << "an unauthenticated request stored feedback";
}

TEST_F(ApiAuthTest, WrongOrMalformedTokensAreRefused) {
  ExpectUnauthorized(Classify(Bearer("s3cret-token-2")), "invalid_api_key");
  ExpectUnauthorized(Classify(Bearer("s3cret-token-")), "invalid_api_key");    // a prefix
  ExpectUnauthorized(Classify(Bearer("s3cret-token-12")), "invalid_api_key");  // an extension
  ExpectUnauthorized(Classify({{"Authorization", "Basic czNjcmV0LXRva2VuLTE="}}),
                     "invalid_authorization_header");
  ExpectUnauthorized(Classify({{"Authorization", "Bearer"}}), "invalid_authorization_header");
  ExpectUnauthorized(Classify({{"Authorization", "s3cret-token-1"}}), "invalid_authorization_header");
  ExpectUnauthorized(Classify({{"X-Api-Key", "s3cret-token-1"}}), "missing_api_key");
}

TEST_F(ApiAuthTest, TheRightTokenIsServed) {
  HttpReply r = Classify(Bearer("s3cret-token-1"));
  ASSERT_EQ(r.status, 200) << r.error << r.body;
  EXPECT_EQ(json::parse(r.body)["model"], "ns/job@v1");
  // The scheme is case-insensitive (RFC 7235) and extra spaces are tolerated.
  EXPECT_EQ(Classify({{"Authorization", "bearer   s3cret-token-1 "}}).status, 200);
  HttpReply fb = HttpCall(port_, "POST", "/v1/feedback", R"({"text": "a dog", "label": "noun.animal"})",
                          Bearer("s3cret-token-1"));
  EXPECT_EQ(fb.status, 200) << fb.body;
}

TEST_F(ApiAuthTest, HealthReadinessAndMetricsStayOpen) {
  ExpectUnauthorized(Classify({}), "missing_api_key");
  EXPECT_EQ(HttpCall(port_, "GET", "/healthz").status, 200);
  EXPECT_EQ(HttpCall(port_, "GET", "/readyz").status, 200);
  HttpReply metrics = HttpCall(port_, "GET", "/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(
      metrics.body.find(R"(fedge_agent_inference_requests_total{code="401",endpoint="/v1/classify"} 1)"),
      std::string::npos)
      << metrics.body;
}

TEST_F(ApiAuthTest, RotatedSecretReplacesTheOldTokenWithoutARestart) {
  ASSERT_EQ(Classify(Bearer("s3cret-token-1")).status, 200);
  secret_->Write("rotated-token-2\n");
  ExpectUnauthorized(Classify(Bearer("s3cret-token-1")), "invalid_api_key");
  EXPECT_EQ(Classify(Bearer("rotated-token-2")).status, 200);
  EXPECT_EQ(tokens_->reloads(), 1);

  // A rotation may list the new token next to the old one while clients move.
  secret_->Write("# rotation in progress\nrotated-token-2\nrotated-token-3\n");
  EXPECT_EQ(Classify(Bearer("rotated-token-2")).status, 200);
  EXPECT_EQ(Classify(Bearer("rotated-token-3")).status, 200);

  // A broken file must not lock every client out: the last good tokens stay.
  secret_->Write("\n");
  EXPECT_EQ(Classify(Bearer("rotated-token-3")).status, 200);
  secret_->Write("two tokens on one line\n");
  EXPECT_EQ(Classify(Bearer("rotated-token-3")).status, 200);
  EXPECT_EQ(tokens_->reloads(), 2);
}

TEST(ApiTokenFileTest, OpenRefusesMissingEmptyAndMalformedFiles) {
  fs::path dir = TestDir("api-token");
  auto missing = ApiTokenFile::Open((dir / "nope").string());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope"), std::string::npos);

  WriteText(dir / "empty", "\n  \n# only a comment\n");
  auto empty = ApiTokenFile::Open((dir / "empty").string());
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("no token"), std::string::npos) << empty.status().ToString();

  WriteText(dir / "bad", "good\nhas inner space\n");
  auto bad = ApiTokenFile::Open((dir / "bad").string());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("line 2"), std::string::npos) << bad.status().ToString();

  WriteText(dir / "ok", "  tok-en  \r\n");
  auto ok = ApiTokenFile::Open((dir / "ok").string());
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_TRUE((*ok)->Matches("tok-en"));
  EXPECT_FALSE((*ok)->Matches(""));
  EXPECT_FALSE((*ok)->Matches("tok-en "));
  fs::remove_all(dir);
}

TEST(ApiTokenFileTest, BearerTokenParsesOnlyTheBearerScheme) {
  EXPECT_EQ(BearerToken("Bearer abc"), "abc");
  EXPECT_EQ(BearerToken("BEARER\tabc "), "abc");
  EXPECT_EQ(BearerToken("Bearerabc"), "");
  EXPECT_EQ(BearerToken("Bearer "), "");
  EXPECT_EQ(BearerToken("Basic abc"), "");
  EXPECT_EQ(BearerToken(""), "");
}

}  // namespace
}  // namespace fedge::agent
