// The feedback log under attack (issue 10): /v1/feedback appended without limit
// and wrote a world-readable file. Real HttpServer on a loopback port.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

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

namespace fs = std::filesystem;
using nlohmann::json;
using testing::FakeClassifier;
using testing::HttpCall;
using testing::HttpReply;
using testing::TestLabels;

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

std::vector<json> ReadLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

class FeedbackLogTest : public ::testing::Test {
 protected:
  // `labels` empty: a causal-LM job's model (no labels), whose feedback is a
  // prompt and a preferred completion.
  void Start(uint64_t max_bytes, bool enabled = true, std::vector<std::string> labels = TestLabels()) {
    dir_ = testing::TestDir("feedback");
    auto model = std::make_unique<FakeClassifier>(std::move(labels));
    serving_ = std::make_unique<ServingModel>(std::move(model), "ns/job");
    StateStoreOptions options;
    options.feedback_max_bytes = max_bytes;
    options.feedback_enabled = enabled;
    store_ = std::make_unique<StateStore>(dir_.string(), "ns/job", options);
    api_ = std::make_unique<InferenceApi>(serving_.get(), store_.get(), &metrics_);
    ASSERT_NO_FATAL_FAILURE(testing::StartApiServer(*api_, &server_));
  }
  void TearDown() override {
    if (server_) server_->Stop();
    fs::remove_all(dir_);
  }
  HttpReply Post(const std::string& text) {
    return HttpCall(server_->port(), "POST", "/v1/feedback",
                    json{{"text", text}, {"label", "noun.animal"}}.dump());
  }

  fs::path dir_;
  std::unique_ptr<ServingModel> serving_;
  std::unique_ptr<StateStore> store_;
  AgentMetrics metrics_;
  std::unique_ptr<InferenceApi> api_;
  std::unique_ptr<HttpServer> server_;
};

// Regression: a client could grow feedback.jsonl until the node's disk filled.
TEST_F(FeedbackLogTest, CapRefusesEntriesBeyondItAndKeepsEarlierFeedback) {
  Start(/*max_bytes=*/1000);
  std::vector<std::string> stored;
  HttpReply refused;
  for (int i = 0; i < 100 && refused.status == 0; ++i) {
    std::string text = "entry " + std::to_string(i) + " " + std::string(40, 'x');
    HttpReply r = Post(text);
    if (r.status == 200) {
      stored.push_back(text);
    } else {
      refused = r;
    }
  }
  ASSERT_EQ(refused.status, 507) << refused.error << refused.body;
  json err = json::parse(refused.body);
  EXPECT_EQ(err["error"]["code"], "feedback_log_full");
  EXPECT_NE(err["error"]["message"].get<std::string>().find("--feedback-max-bytes"), std::string::npos);
  EXPECT_EQ(err["error"]["message"].get<std::string>().find(dir_.string()), std::string::npos)
      << "the client learns no server paths";
  ASSERT_GE(stored.size(), 5u);

  const uint64_t size_when_full = fs::file_size(store_->FeedbackPath());
  EXPECT_LE(size_when_full, 1000u);
  // Later entries, even ones that would fit a byte-sized remainder, stay out...
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Post("more " + std::string(40, 'y')).status, 507);
  EXPECT_EQ(fs::file_size(store_->FeedbackPath()), size_when_full) << "nothing is stored beyond the cap";
  // ...while everything accepted before is intact, in order, line by line.
  std::vector<json> lines = ReadLines(store_->FeedbackPath());
  ASSERT_EQ(lines.size(), stored.size());
  for (size_t i = 0; i < stored.size(); ++i) EXPECT_EQ(lines[i]["text"], stored[i]);

  HttpReply metrics = HttpCall(server_->port(), "GET", "/metrics");
  EXPECT_NE(metrics.body.find("fedge_agent_feedback_log_full_total 6"), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find("fedge_agent_feedback_log_bytes " + std::to_string(size_when_full)),
            std::string::npos)
      << metrics.body;
  EXPECT_NE(
      metrics.body.find(R"(fedge_agent_inference_requests_total{code="507",endpoint="/v1/feedback"} 6)"),
      std::string::npos);
}

TEST_F(FeedbackLogTest, PerRequestTextLimitStays) {
  Start(/*max_bytes=*/1 << 20);
  HttpReply r = Post(std::string(16385, 'x'));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "input_too_long");
  EXPECT_FALSE(fs::exists(store_->FeedbackPath()));
}

// Regression: feedback.jsonl was created 0644 (0666 & ~umask): user text
// readable by every account on the node.
TEST_F(FeedbackLogTest, LogIsCreatedOwnerOnlyEvenUnderALooseUmask) {
  Start(/*max_bytes=*/1 << 20);
  mode_t old = ::umask(0);
  HttpReply r = Post("a tabby cat");
  ::umask(old);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(ModeOf(store_->FeedbackPath()), 0600u);
}

TEST_F(FeedbackLogTest, ExistingWorldReadableLogIsTightenedAndKept) {
  Start(/*max_bytes=*/1 << 20);
  fs::create_directories(dir_);
  {
    std::ofstream out(store_->FeedbackPath());
    out << R"({"text":"old entry","label":"noun.plant","ts_ms":1})"
        << "\n";
  }
  ::chmod(store_->FeedbackPath().c_str(), 0644);
  ASSERT_EQ(Post("a tabby cat").status, 200);
  EXPECT_EQ(ModeOf(store_->FeedbackPath()), 0600u);
  std::vector<json> lines = ReadLines(store_->FeedbackPath());
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["text"], "old entry");
  EXPECT_EQ(lines[1]["text"], "a tabby cat");
}

// A symlink planted at the log's name must not redirect the append (or the
// chmod) to another file.
TEST_F(FeedbackLogTest, SymlinkAtTheLogsNameIsNotFollowed) {
  Start(/*max_bytes=*/1 << 20);
  fs::create_directories(dir_);
  fs::path target = dir_ / "elsewhere.txt";
  {
    std::ofstream out(target);
    out << "precious\n";
  }
  ::chmod(target.c_str(), 0644);
  fs::create_symlink(target, store_->FeedbackPath());
  HttpReply r = Post("a tabby cat");
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "feedback_store_error");
  std::ifstream in(target);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "precious\n");
  EXPECT_EQ(ModeOf(target.string()), 0644u);
}

// Issue 13 item 5: the same text and label count once; the reply says so.
TEST_F(FeedbackLogTest, RepostedFeedbackIsADuplicateAndWritesNothing) {
  Start(/*max_bytes=*/1 << 20);
  HttpReply first = Post("a tabby cat");
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(json::parse(first.body)["stored"], true);
  const uint64_t size = fs::file_size(store_->FeedbackPath());
  HttpReply again = Post("a tabby cat");
  ASSERT_EQ(again.status, 200) << again.body;
  json reply = json::parse(again.body);
  EXPECT_EQ(reply["stored"], false);
  EXPECT_EQ(reply["duplicate"], true);
  EXPECT_EQ(reply["examples"], 1);
  EXPECT_EQ(fs::file_size(store_->FeedbackPath()), size);
}

TEST_F(FeedbackLogTest, DisabledFeedbackIsA403AndStoresNothing) {
  Start(/*max_bytes=*/1 << 20, /*enabled=*/false);
  HttpReply r = Post("a tabby cat");
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "feedback_disabled");
  EXPECT_NE(json::parse(r.body)["error"]["message"].get<std::string>().find("spec.feedback.enabled"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(store_->FeedbackPath()));
}

TEST_F(FeedbackLogTest, GenerativeFieldsOnAClassifierJobAreA400) {
  Start(/*max_bytes=*/1 << 20);
  HttpReply r = HttpCall(server_->port(), "POST", "/v1/feedback",
                         json{{"prompt", "hi"}, {"completion", "hello"}}.dump());
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(json::parse(r.body)["error"]["message"].get<std::string>().find("\"label\""), std::string::npos)
      << r.body;
  EXPECT_FALSE(fs::exists(store_->FeedbackPath()));
}

TEST_F(FeedbackLogTest, GenerativeJobStoresPromptAndPreferredCompletion) {
  Start(/*max_bytes=*/1 << 20, /*enabled=*/true, /*labels=*/{});
  auto post = [&](const json& body) {
    return HttpCall(server_->port(), "POST", "/v1/feedback", body.dump());
  };
  HttpReply ok = post({{"prompt", "violin:"}, {"completion", " a bowed string instrument"}});
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_FALSE(json::parse(ok.body).contains("label"));
  HttpReply text_label = post({{"text", "violin"}, {"label", "noun.artifact"}});
  EXPECT_EQ(text_label.status, 400) << text_label.body;
  EXPECT_NE(json::parse(text_label.body)["error"]["message"].get<std::string>().find("\"completion\""),
            std::string::npos);
  HttpReply no_completion = post({{"prompt", "violin:"}});
  EXPECT_EQ(no_completion.status, 400);
  EXPECT_EQ(json::parse(no_completion.body)["error"]["code"], "missing_completion");
  HttpReply too_long = post({{"prompt", "violin:"}, {"completion", std::string(16385, 'x')}});
  EXPECT_EQ(too_long.status, 400);
  EXPECT_EQ(json::parse(too_long.body)["error"]["code"], "input_too_long");
  auto held = store_->Feedback();
  ASSERT_TRUE(held.ok());
  ASSERT_EQ(held->size(), 1u);
  EXPECT_EQ((*held)[0].text, "violin:");
  EXPECT_EQ((*held)[0].completion, " a bowed string instrument");
}

}  // namespace
}  // namespace fedge::agent
