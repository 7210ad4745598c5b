// Per-request serving metrics and the llama.cpp-style "timings" object (issue 13,
// item 2): time to first token and inter-token latency histograms, prompt and
// generated token counters, the waiting / in-flight gauges, over the tiny Llama
// golden (tests/golden/llm/tiny_llama, random weights) behind ServingModel and
// InferenceApi. The metrics are read back from the registry /metrics serves.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <thread>

#include <prometheus/registry.h>
#include <nlohmann/json.hpp>

#include "fedge/agent/runtime/inference_api.h"
#include "fedge/agent/runtime/llm_model.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/serving_model.h"
#include "http_test_client.h"
#include "serving_test_util.h"

namespace fedge::agent {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using testing::Post;
using testing::RecordingWriter;

const std::string kChat = "/v1/chat/completions";
const std::string kCompletions = "/v1/completions";

// One series of the registry: a counter's or gauge's value, or a histogram's
// sample count. -1 when the series does not exist.
double Series(const AgentMetrics& metrics, const std::string& name, const std::string& endpoint = "") {
  for (const auto& family : metrics.registry()->Collect()) {
    if (family.name != name) continue;
    for (const auto& m : family.metric) {
      bool match = endpoint.empty();
      for (const auto& l : m.label) match = match || (l.name == "endpoint" && l.value == endpoint);
      if (!match) continue;
      switch (family.type) {
        case prometheus::MetricType::Counter:
          return m.counter.value;
        case prometheus::MetricType::Gauge:
          return m.gauge.value;
        case prometheus::MetricType::Histogram:
          return static_cast<double>(m.histogram.sample_count);
        default:
          return -1;
      }
    }
  }
  return -1;
}

double Count(const AgentMetrics& metrics, const std::string& name, const std::string& endpoint) {
  return std::max(0.0, Series(metrics, name, endpoint));
}

// The fields llama.cpp's server sends, all present and consistent with each other.
void ExpectConsistentTimings(const json& t, int64_t prompt_tokens, int64_t completion_tokens) {
  for (const char* f : {"prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_n",
                        "predicted_ms", "predicted_per_token_ms", "predicted_per_second"}) {
    ASSERT_TRUE(t.contains(f) && t[f].is_number()) << f << " in " << t.dump();
  }
  EXPECT_EQ(t["prompt_n"].get<int64_t>(), prompt_tokens);
  EXPECT_EQ(t["predicted_n"].get<int64_t>(), completion_tokens);
  const double prompt_ms = t["prompt_ms"], predicted_ms = t["predicted_ms"];
  EXPECT_GT(prompt_ms, 0);
  EXPECT_NEAR(t["prompt_per_token_ms"].get<double>(), prompt_ms / prompt_tokens, 1e-9);
  EXPECT_NEAR(t["prompt_per_second"].get<double>(), prompt_tokens / prompt_ms * 1000, 1e-6);
  ASSERT_GE(completion_tokens, 2) << "the test needs a span between two tokens";
  EXPECT_GT(predicted_ms, 0);
  EXPECT_NEAR(t["predicted_per_token_ms"].get<double>(), predicted_ms / completion_tokens, 1e-9);
  EXPECT_NEAR(t["predicted_per_second"].get<double>(), completion_tokens / predicted_ms * 1000, 1e-6);
}

class GenerationMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LlmModelOptions o = testing::TinyLlmOptions();
    o.max_seq_len = 64;
    serving_ = testing::ServeLlm(o, /*version=*/4);
    ASSERT_NE(serving_, nullptr);
    api_ = std::make_unique<InferenceApi>(serving_.get(), nullptr, &metrics_);
  }

  AgentMetrics metrics_;
  std::unique_ptr<ServingModel> serving_;
  std::unique_ptr<InferenceApi> api_;
};

// Greedy, so the same request generates the same tokens every time.
const std::string kChatRequest =
    R"({"messages": [{"role": "user", "content": "hello there"}], "max_completion_tokens": 12,
        "temperature": 0)";
const std::string kCompletionRequest = R"({"prompt": "once upon a time", "max_tokens": 10, "temperature": 0)";

TEST_F(GenerationMetricsTest, ReplyCarriesTimingsThatAgreeWithItsUsage) {
  HttpResponse r = api_->ChatCompletions(Post(kChat, kChatRequest + "}"));
  ASSERT_EQ(r.status, 200) << r.body;
  json reply = json::parse(r.body);
  ASSERT_TRUE(reply.contains("timings")) << r.body;
  ExpectConsistentTimings(reply["timings"], reply["usage"]["prompt_tokens"],
                          reply["usage"]["completion_tokens"]);
}

TEST_F(GenerationMetricsTest, HistogramsCountOneFirstTokenPerRequestAndOneGapPerLaterToken) {
  int64_t prompt = 0, generated = 0;
  for (int i = 0; i < 2; ++i) {
    HttpResponse r = api_->Completions(Post(kCompletions, kCompletionRequest + "}"));
    ASSERT_EQ(r.status, 200) << r.body;
    json usage = json::parse(r.body)["usage"];
    prompt += usage["prompt_tokens"].get<int64_t>();
    generated += usage["completion_tokens"].get<int64_t>();
  }
  ASSERT_GE(generated, 4);
  EXPECT_EQ(Count(metrics_, "fedge_agent_time_to_first_token_seconds", kCompletions), 2);
  EXPECT_EQ(Count(metrics_, "fedge_agent_inter_token_latency_seconds", kCompletions), generated - 2);
  EXPECT_EQ(Count(metrics_, "fedge_agent_prompt_tokens_total", kCompletions), prompt);
  EXPECT_EQ(Count(metrics_, "fedge_agent_generated_tokens_total", kCompletions), generated);
  // Labelled by the endpoint that generated: nothing went to chat.
  EXPECT_EQ(Count(metrics_, "fedge_agent_time_to_first_token_seconds", kChat), 0);
  EXPECT_EQ(Count(metrics_, "fedge_agent_generated_tokens_total", kChat), 0);
  EXPECT_EQ(Series(metrics_, "fedge_agent_inference_requests_waiting"), 0);
}

TEST_F(GenerationMetricsTest, StreamHasTimingsInItsLastChunkAndUsageChunk) {
  RecordingWriter writer;
  HttpResponse r = api_->ChatCompletions(
      Post(kChat, kChatRequest + R"(, "stream": true, "stream_options": {"include_usage": true}})"));
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_TRUE(r.stream);
  r.stream(writer);
  std::vector<std::string> events = writer.Events();
  ASSERT_GE(events.size(), 4u);
  ASSERT_EQ(events.back(), "[DONE]");
  json usage_chunk = json::parse(events[events.size() - 2]);
  json last = json::parse(events[events.size() - 3]);
  ASSERT_TRUE(usage_chunk["usage"].is_object()) << events[events.size() - 2];
  ASSERT_FALSE(last["choices"][0]["finish_reason"].is_null()) << events[events.size() - 3];
  ASSERT_TRUE(last.contains("timings")) << events[events.size() - 3];
  EXPECT_EQ(usage_chunk["timings"], last["timings"]);
  ExpectConsistentTimings(usage_chunk["timings"], usage_chunk["usage"]["prompt_tokens"],
                          usage_chunk["usage"]["completion_tokens"]);
  for (size_t i = 0; i + 3 < events.size(); ++i) {
    EXPECT_FALSE(json::parse(events[i]).contains("timings")) << "only the last chunks: " << events[i];
  }
  const int64_t n = usage_chunk["usage"]["completion_tokens"];
  // The stream's dry run (checks before the 200) generates nothing and counts nothing.
  EXPECT_EQ(Count(metrics_, "fedge_agent_time_to_first_token_seconds", kChat), 1);
  EXPECT_EQ(Count(metrics_, "fedge_agent_inter_token_latency_seconds", kChat), n - 1);
  EXPECT_EQ(Count(metrics_, "fedge_agent_generated_tokens_total", kChat), n);
  EXPECT_EQ(Count(metrics_, "fedge_agent_prompt_tokens_total", kChat),
            usage_chunk["usage"]["prompt_tokens"].get<double>());
}

TEST_F(GenerationMetricsTest, StreamWithoutUsageStillEndsWithTimings) {
  RecordingWriter writer;
  HttpResponse r = api_->Completions(Post(kCompletions, kCompletionRequest + R"(, "stream": true})"));
  ASSERT_TRUE(r.stream) << r.body;
  r.stream(writer);
  std::vector<std::string> events = writer.Events();
  ASSERT_GE(events.size(), 2u);
  json last = json::parse(events[events.size() - 2]);
  ASSERT_FALSE(last["choices"][0]["finish_reason"].is_null());
  ASSERT_TRUE(last.contains("timings")) << events[events.size() - 2];
  EXPECT_FALSE(last.contains("usage"));
  EXPECT_GE(last["timings"]["predicted_n"].get<int64_t>(), 1);
  EXPECT_EQ(last["timings"]["predicted_n"].get<double>(),
            Count(metrics_, "fedge_agent_generated_tokens_total", kCompletions));
}

// Over the real HTTP server: a request waiting for the model shows in the
// waiting gauge and in its endpoint's in-flight gauge, and both fall back to 0.
TEST_F(GenerationMetricsTest, RequestWaitingForTheModelIsCountedUntilItRuns) {
  HttpServer server("127.0.0.1:0");
  api_->Register(server);
  ASSERT_TRUE(server.Start().ok());

  std::promise<void> holding, release;
  std::future<void> released = release.get_future();
  std::thread holder([&] {
    // Holds the model through the scheduler, so the request below waits in its queue.
    Status st = api_->scheduler().RunExclusive([&](TrainableModel&, int64_t) {
      holding.set_value();
      released.wait();
      return OkStatus();
    });
    EXPECT_TRUE(st.ok());
  });
  holding.get_future().wait();
  auto reply = std::async(std::launch::async, [&] {
    return testing::HttpCall(server.port(), "POST", kCompletions, kCompletionRequest + "}");
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (Series(metrics_, "fedge_agent_inference_requests_waiting") < 1 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(2));
  }
  EXPECT_EQ(Series(metrics_, "fedge_agent_inference_requests_waiting"), 1);
  EXPECT_EQ(Series(metrics_, "fedge_agent_inference_requests_in_flight", kCompletions), 1);
  release.set_value();
  holder.join();
  testing::HttpReply r = reply.get();
  ASSERT_EQ(r.status, 200) << r.error << r.body;
  EXPECT_EQ(Series(metrics_, "fedge_agent_inference_requests_waiting"), 0);
  EXPECT_EQ(Series(metrics_, "fedge_agent_inference_requests_in_flight", kCompletions), 0);
  EXPECT_EQ(Count(metrics_, "fedge_agent_time_to_first_token_seconds", kCompletions), 1);

  // And /metrics serves the new series by their Prometheus names.
  testing::HttpReply m = testing::HttpCall(server.port(), "GET", "/metrics");
  ASSERT_EQ(m.status, 200) << m.error;
  for (const char* name :
       {"fedge_agent_time_to_first_token_seconds_bucket", "fedge_agent_inter_token_latency_seconds_count",
        "fedge_agent_prompt_tokens_total", "fedge_agent_generated_tokens_total",
        "fedge_agent_inference_requests_waiting", "fedge_agent_inference_requests_in_flight"}) {
    EXPECT_NE(m.body.find(name), std::string::npos) << name;
  }
}

TEST(ComputeTimingsTest, FollowsLlamaCppDefinitions) {
  using Clock = std::chrono::steady_clock;
  GenerationTimes t;
  t.arrived = Clock::time_point(milliseconds(1000));
  t.started = Clock::time_point(milliseconds(1100));  // 100 ms waiting for the model: not in timings
  t.first = Clock::time_point(milliseconds(1300));
  t.last = Clock::time_point(milliseconds(1700));
  t.ended = Clock::time_point(milliseconds(1750));
  t.prompt_tokens = 8;
  t.tokens = 5;
  GenerationTimings g = ComputeTimings(t);
  EXPECT_EQ(g.prompt_n, 8);
  EXPECT_DOUBLE_EQ(g.prompt_ms, 200);
  EXPECT_DOUBLE_EQ(g.prompt_per_token_ms, 25);
  EXPECT_DOUBLE_EQ(g.prompt_per_second, 40);
  EXPECT_EQ(g.predicted_n, 5);
  EXPECT_DOUBLE_EQ(g.predicted_ms, 400);
  EXPECT_DOUBLE_EQ(g.predicted_per_token_ms, 80);
  EXPECT_DOUBLE_EQ(g.predicted_per_second, 12.5);
}

TEST(ComputeTimingsTest, NoTokensOrOneTokenGiveZeroRatesNotInfinity) {
  using Clock = std::chrono::steady_clock;
  GenerationTimes t;
  t.started = Clock::time_point(milliseconds(0));
  t.ended = Clock::time_point(milliseconds(50));
  t.prompt_tokens = 4;
  GenerationTimings none = ComputeTimings(t);  // EOS first: the prompt pass is all there was
  EXPECT_DOUBLE_EQ(none.prompt_ms, 50);
  EXPECT_EQ(none.predicted_n, 0);
  EXPECT_DOUBLE_EQ(none.predicted_ms, 0);
  EXPECT_DOUBLE_EQ(none.predicted_per_token_ms, 0);
  EXPECT_DOUBLE_EQ(none.predicted_per_second, 0);

  t.tokens = 1;
  t.first = t.last = Clock::time_point(milliseconds(30));
  GenerationTimings one = ComputeTimings(t);
  EXPECT_DOUBLE_EQ(one.prompt_ms, 30);
  EXPECT_EQ(one.predicted_n, 1);
  EXPECT_DOUBLE_EQ(one.predicted_ms, 0);
  EXPECT_DOUBLE_EQ(one.predicted_per_second, 0);
}

}  // namespace
}  // namespace fedge::agent
