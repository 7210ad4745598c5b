// Streamed generation (server-sent events) and the OpenAI endpoints around it,
// over the tiny Llama golden (tests/golden/llm/tiny_llama, random weights) behind
// ServingModel and InferenceApi. The stream's producer writes into a recording
// HttpStreamWriter, so the tests see every chunk and can play a client that left.
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "fake_classifier.h"
#include "fedge/agent/runtime/inference_api.h"
#include "fedge/agent/runtime/llm_model.h"
#include "fedge/agent/runtime/serving_model.h"
#include "serving_test_util.h"

namespace fedge::agent {
namespace {

using nlohmann::json;
using testing::Post;
using testing::RecordingWriter;

class OpenAiStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LlmModelOptions o = testing::TinyLlmOptions();
    o.max_seq_len = 32;
    serving_ = testing::ServeLlm(o, /*version=*/4);
    ASSERT_NE(serving_, nullptr);
    api_ = std::make_unique<InferenceApi>(serving_.get(), nullptr, nullptr);
  }

  // Runs a streamed request to the end (or until `writer`'s client leaves).
  void Stream(HttpResponse (InferenceApi::*fn)(const HttpRequest&), const std::string& path,
              const std::string& body, RecordingWriter* writer) {
    HttpResponse r = (api_.get()->*fn)(Post(path, body));
    ASSERT_EQ(r.status, 200) << r.body;
    ASSERT_TRUE(r.stream) << "not a stream: " << r.body;
    EXPECT_EQ(r.content_type, "text/event-stream");
    r.stream(*writer);
  }

  std::unique_ptr<ServingModel> serving_;
  std::unique_ptr<InferenceApi> api_;
};

TEST_F(OpenAiStreamTest, ChatStreamHasOpenAiChunksAndTheSameTextAsTheReply) {
  const std::string request =
      R"({"model": "ns/gen", "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
          "max_completion_tokens": 24, "temperature": 0)";
  HttpResponse whole = api_->ChatCompletions(Post("/v1/chat/completions", request + "}"));
  ASSERT_EQ(whole.status, 200) << whole.body;
  json reply = json::parse(whole.body);
  EXPECT_EQ(reply["object"], "chat.completion");
  EXPECT_EQ(reply["model"], "ns/gen@v4");

  RecordingWriter writer;
  Stream(&InferenceApi::ChatCompletions, "/v1/chat/completions", request + R"(, "stream": true})", &writer);
  std::vector<std::string> events = writer.Events();
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text, id;
  json last;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    json c = json::parse(events[i]);
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    EXPECT_EQ(c["model"], "ns/gen@v4");
    EXPECT_FALSE(c.contains("usage")) << "usage only with stream_options.include_usage";
    if (i == 0) id = c["id"];
    EXPECT_EQ(c["id"], id) << "one id for the whole stream";
    ASSERT_EQ(c["choices"].size(), 1u);
    const json& choice = c["choices"][0];
    EXPECT_EQ(choice["index"], 0);
    if (i == 0) {
      EXPECT_EQ(choice["delta"]["role"], "assistant");
    }
    if (choice["delta"].contains("content")) text += choice["delta"]["content"].get<std::string>();
    if (i + 2 < events.size()) {
      EXPECT_TRUE(choice["finish_reason"].is_null()) << events[i];
    }
    last = c;
  }
  EXPECT_EQ(last["choices"][0]["finish_reason"], reply["choices"][0]["finish_reason"]);
  EXPECT_EQ(text, reply["choices"][0]["message"]["content"].get<std::string>());
  // Token by token: more than the role chunk and the final chunk carry text.
  EXPECT_GT(events.size(), 4u) << whole.body;
}

TEST_F(OpenAiStreamTest, CompletionStreamEndsWithAUsageChunkWhenAsked) {
  const std::string request = R"({"prompt": "the cat", "max_tokens": 20, "temperature": 0.8, "seed": 5)";
  json reply = json::parse(api_->Completions(Post("/v1/completions", request + "}")).body);
  RecordingWriter writer;
  Stream(&InferenceApi::Completions, "/v1/completions",
         request + R"(, "stream": true, "stream_options": {"include_usage": true}})", &writer);
  std::vector<std::string> events = writer.Events();
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  json usage_chunk = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage_chunk["choices"].empty());
  EXPECT_EQ(usage_chunk["usage"], reply["usage"]);
  std::string text;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    json c = json::parse(events[i]);
    EXPECT_EQ(c["object"], "text_completion");
    EXPECT_TRUE(c["usage"].is_null()) << "every chunk but the last has usage: null";
    text += c["choices"][0]["text"].get<std::string>();
  }
  // Same seed, same text, streamed or not.
  EXPECT_EQ(text, reply["choices"][0]["text"].get<std::string>());
}

TEST_F(OpenAiStreamTest, ClientLeavingMidStreamStopsTheGeneration) {
  // The client reads 3 chunks and leaves. Generation must notice before its next
  // token (one poll of Closed() that says so) and write nothing more, instead of
  // generating all 100 tokens for nobody.
  RecordingWriter writer(/*close_after=*/3);
  Stream(&InferenceApi::Completions, "/v1/completions",
         R"({"prompt": "the cat", "max_tokens": 100, "temperature": 1.0, "seed": 1, "stream": true})",
         &writer);
  EXPECT_EQ(writer.chunks.size(), 3u);
  EXPECT_EQ(writer.polls_after_close, 1) << "generation went on after the client left";
  EXPECT_LE(writer.writes_after_close, 1);  // at most the flush of held-back text
}

TEST_F(OpenAiStreamTest, AStreamThatCannotStartGetsARealErrorStatus) {
  std::string long_prompt;
  for (int i = 0; i < 300; ++i) long_prompt += "word ";
  HttpResponse r =
      api_->Completions(Post("/v1/completions", json{{"prompt", long_prompt}, {"stream", true}}.dump()));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_FALSE(r.stream);
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "context_length_exceeded") << r.body;
  r = api_->ChatCompletions(Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}],
      "stream": true, "tools": [{"type": "function", "function": {"name": "f"}}]})"));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_FALSE(r.stream);
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "unsupported_for_model") << r.body;  // no tool format

  // A classifier job: streamed generation is refused up front, naming why.
  auto serving = std::make_unique<ServingModel>(
      std::make_unique<testing::FakeClassifier>(testing::TestLabels()), "ns/cls");
  testing::FakeClassifier probe(testing::TestLabels());
  ASSERT_TRUE(serving->Install(probe.ExportTrainable(), 1).ok());
  InferenceApi api(serving.get(), nullptr, nullptr);
  r = api.ChatCompletions(
      Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "stream": true})"));
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_FALSE(r.stream);
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "unsupported_for_model");
  EXPECT_NE(r.body.find("not a causal language model"), std::string::npos) << r.body;
}

TEST_F(OpenAiStreamTest, ModelsListTheJobWithItsGlobalVersion) {
  HttpRequest get;
  get.method = "GET";
  get.path = "/v1/models";
  json list = json::parse(api_->Models(get).body);
  EXPECT_EQ(list["object"], "list");
  ASSERT_EQ(list["data"].size(), 1u);
  const json& m = list["data"][0];
  EXPECT_EQ(m["id"], "ns/gen");
  EXPECT_EQ(m["object"], "model");
  EXPECT_EQ(m["owned_by"], "fedge");
  EXPECT_TRUE(m["created"].is_number_integer());
  EXPECT_EQ(m["global_version"], 4);
  EXPECT_EQ(m["served_as"], "ns/gen@v4");
  get.path = "/v1/models/ns/gen";
  EXPECT_EQ(json::parse(api_->Model(get).body), m);
  get.path = "/v1/models/other";
  HttpResponse missing = api_->Model(get);
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(json::parse(missing.body)["error"]["code"], "model_not_found");
}

}  // namespace
}  // namespace fedge::agent
