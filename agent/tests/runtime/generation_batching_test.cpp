// Continuous batching end to end (issue 13 item 2): concurrent /v1/completions
// requests on the real tiny Llama (tests/golden/llm/tiny_llama) queued together
// run in one decode loop, sharing batched decode steps, and every answer equals
// the answer that request gets alone.
#include <gtest/gtest.h>

#include <filesystem>
#include <future>

#include <nlohmann/json.hpp>

#include "fedge/agent/runtime/inference_api.h"
#include "fedge/agent/runtime/llm_model.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/serving_model.h"
#include "serving_test_util.h"

namespace fedge::agent {
namespace {

using nlohmann::json;
using testing::Post;
using testing::ServeLlm;
using testing::TinyLlmOptions;

TEST(GenerationBatchingTest, ConcurrentCompletionsShareDecodeStepsAndAnswerAsAlone) {
  std::unique_ptr<ServingModel> serving = ServeLlm(TinyLlmOptions(), /*version=*/3);
  ASSERT_NE(serving, nullptr);
  AgentMetrics metrics;
  InferenceApi api(serving.get(), nullptr, &metrics);

  const std::vector<std::string> bodies = {
      R"({"prompt": "dog:", "max_tokens": 12, "temperature": 0})",
      R"({"prompt": "a cat is", "max_tokens": 7, "temperature": 0})",
      R"({"prompt": "the tree of life and the", "max_tokens": 16, "temperature": 0})",
      R"({"prompt": "x", "max_tokens": 3, "temperature": 0})",
      R"({"prompt": "bird:", "max_tokens": 10, "temperature": 0.8, "seed": 5})",
  };
  auto text_of = [](const HttpResponse& r) {
    EXPECT_EQ(r.status, 200) << r.body;
    return json::parse(r.body)["choices"][0]["text"].get<std::string>();
  };
  std::vector<std::string> alone;
  for (const auto& body : bodies) alone.push_back(text_of(api.Completions(Post("/v1/completions", body))));

  // Hold the model so that every request below is queued before the decode loop starts.
  std::promise<void> holding, release;
  std::shared_future<void> released = release.get_future().share();
  std::thread holder([&] {
    Status st = api.scheduler().RunExclusive([&](TrainableModel&, int64_t) {
      holding.set_value();
      released.wait();
      return OkStatus();
    });
    EXPECT_TRUE(st.ok()) << st.ToString();
  });
  holding.get_future().wait();
  std::vector<std::future<HttpResponse>> replies;
  for (size_t i = 0; i < bodies.size(); ++i) {
    replies.push_back(std::async(std::launch::async,
                                 [&, i] { return api.Completions(Post("/v1/completions", bodies[i])); }));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (api.scheduler().queued() < i + 1 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::yield();
    ASSERT_EQ(api.scheduler().queued(), i + 1);
  }
  release.set_value();
  holder.join();
  for (size_t i = 0; i < bodies.size(); ++i) {
    HttpResponse r = replies[i].get();
    EXPECT_EQ(text_of(r), alone[i]) << bodies[i];
    json j = json::parse(r.body);
    EXPECT_EQ(j["model"], "ns/gen@v3");
    EXPECT_GE(j["timings"]["predicted_n"].get<int64_t>(), 1);
  }
}

}  // namespace
}  // namespace fedge::agent
