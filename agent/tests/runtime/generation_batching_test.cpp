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

namespace fedge::agent {
namespace {

using nlohmann::json;

const std::string kTinyLlama =
    (std::filesystem::path(__FILE__).parent_path() / "../../../tests/golden/llm/tiny_llama").string();

HttpRequest Post(const std::string& path, const std::string& body) {
  HttpRequest r;
  r.method = "POST";
  r.path = path;
  r.body = body;
  return r;
}

TEST(GenerationBatchingTest, ConcurrentCompletionsShareDecodeStepsAndAnswerAsAlone) {
  LlmModelOptions o;
  o.model_dir = kTinyLlama;
  o.lora.rank = 2;
  o.lora.targets = {"q_proj", "v_proj"};
  o.lora.seed = 3;
  o.num_threads = 1;
  auto model = LlmModel::Load(o);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  TensorBundle global = (*model)->ExportTrainable();
  ServingModel serving(std::move(*model), "ns/gen");
  ASSERT_TRUE(serving.Install(global, 3).ok());
  AgentMetrics metrics;
  InferenceApi api(&serving, nullptr, &metrics);

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
