// LoRA aggregation modes end to end over real gRPC (127.0.0.1:0): plain C++
// gRPC clients play agents whose "training" moves their LoRA factors to
// known, agent-specific values, and the test checks the global the
// aggregator publishes against the exact average of B_i·A_i.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cmath>

#include "../test_util.h"
#include "fedge/aggregator/server.h"
#include "loopback.h"
#include "sim_agent.h"

namespace fedge::aggregator {
namespace {

using testing::RunAll;
using testing::SimAgent;
using testing::StartServer;

constexpr char kJob[] = "ns/lora";
constexpr int64_t kOut = 4, kIn = 3, kRank = 3;

JobSpec Spec(const std::string& aggregation) {
  JobSpec spec = testing::LoopbackSpec("lora", /*rounds=*/2, /*min_agents=*/3);
  spec.adapter.rank = kRank;
  spec.adapter.aggregation = aggregation;
  return spec;
}

// A deterministic, agent-specific pseudo-random value in [-1, 1].
float Wiggle(int agent, size_t i, int salt) {
  const uint32_t x = static_cast<uint32_t>((agent + 1) * 2654435761u ^ (i + 1) * 40503u ^ salt * 97u);
  return static_cast<float>((x % 2001u) / 1000.0 - 1.0);
}

TensorBundle State(bool with_a, float fill) {
  TensorBundle s;
  if (with_a)
    s.tensors.push_back(NamedTensor{"q.lora_A", {kRank, kIn}, std::vector<float>(kRank * kIn, fill)});
  s.tensors.push_back(NamedTensor{"q.lora_B", {kOut, kRank}, std::vector<float>(kOut * kRank, 0.0f)});
  s.tensors.push_back(NamedTensor{"classifier.bias", {2}, {0.0f, 0.0f}});
  return s;
}

// Every agent moves each factor it holds by its own pattern.
TensorBundle Train(const TensorBundle& global, int agent) {
  TensorBundle t = global;
  int salt = 0;
  for (NamedTensor& x : t.tensors) {
    ++salt;
    for (size_t i = 0; i < x.values.size(); ++i) x.values[i] += Wiggle(agent, i, salt);
  }
  return t;
}

// (B A)[o][c] for row-major B [kOut, kRank] and A [kRank, kIn].
std::vector<double> Product(const std::vector<float>& b, const std::vector<float>& a) {
  std::vector<double> m(kOut * kIn, 0.0);
  for (int64_t o = 0; o < kOut; ++o)
    for (int64_t c = 0; c < kIn; ++c)
      for (int64_t k = 0; k < kRank; ++k) m[o * kIn + c] += double(b[o * kRank + k]) * a[k * kIn + c];
  return m;
}

// Agent `index` of a LoRA job: starts from (and declares) `initial` and
// trains with Train().
std::unique_ptr<SimAgent> LoraAgent(int index, int port, const TensorBundle& initial) {
  auto agent = std::make_unique<SimAgent>("agent-" + std::to_string(index), index, port, kJob);
  agent->set_initial(initial);
  agent->set_declared_layout(initial);
  agent->set_train([index](const TensorBundle& global) { return Train(global, index); });
  return agent;
}

TEST(LoraLoopbackTest, FrozenAJobRunsAndAveragesBExactly) {
  auto server = StartServer(Spec("frozen-a"));
  ASSERT_NE(server, nullptr);
  std::vector<std::unique_ptr<SimAgent>> agents;
  for (int i = 0; i < 3; ++i) agents.push_back(LoraAgent(i, server->grpc_port(), State(false, 0)));
  RunAll(agents);
  EXPECT_EQ(server->engine().GetStatus().state, JobState::kSucceeded);
  auto global = server->engine().Global(0);
  ASSERT_TRUE(global.ok());
  const TensorBundle& g = (*global)->bundle;
  EXPECT_EQ(g.Find("q.lora_A"), nullptr);
  // With A shared, avg(B_i) A = avg(B_i A): the global B after two rounds is
  // the example-weighted mean of the agents' moves, twice.
  const NamedTensor* b = g.Find("q.lora_B");
  ASSERT_NE(b, nullptr);
  for (size_t i = 0; i < b->values.size(); ++i) {
    double mean = 0;
    for (int a = 0; a < 3; ++a) mean += 10.0 * (a + 1) * Wiggle(a, i, /*salt=*/1) / 60.0;
    EXPECT_NEAR(b->values[i], 2 * mean, 1e-5) << i;
  }
}

TEST(LoraLoopbackTest, FrozenAJobRejectsAnInitialStateWithA) {
  JobSpec spec = Spec("frozen-a");
  spec.agents.minAgents = 1;
  auto server = StartServer(spec);
  ASSERT_NE(server, nullptr);
  // An agent of a factors-mode job (it sends A): the INITIALIZE upload is refused.
  auto agent = LoraAgent(0, server->grpc_port(), State(true, 0.5f));
  EXPECT_FALSE(agent->Run());
  EXPECT_NE(agent->error().find("q.lora_A"), std::string::npos) << agent->error();
  EXPECT_FALSE(server->engine().Global(0).ok());
}

TEST(LoraLoopbackTest, ProductJobPublishesTheExactAverageOfProducts) {
  auto server = StartServer(Spec("product"));
  ASSERT_NE(server, nullptr);
  std::vector<std::unique_ptr<SimAgent>> agents;
  for (int i = 0; i < 3; ++i) agents.push_back(LoraAgent(i, server->grpc_port(), State(true, 0.3f)));
  RunAll(agents);
  EXPECT_EQ(server->engine().GetStatus().state, JobState::kSucceeded);
  auto global = server->engine().Global(0);
  ASSERT_TRUE(global.ok());
  const TensorBundle& g = (*global)->bundle;
  // Round 2's agents trained from the same global (round 1's result, B != 0);
  // rank r = min(out, in), so the re-factored product is exact.
  std::vector<double> want(kOut * kIn, 0.0);
  for (int a = 0; a < 3; ++a) {
    const TensorBundle& base = agents[a]->last_base();
    ASSERT_FALSE(base.tensors.empty());
    const TensorBundle trained = Train(base, a);
    const std::vector<double> p = Product(trained.Find("q.lora_B")->values, trained.Find("q.lora_A")->values);
    for (size_t i = 0; i < want.size(); ++i) want[i] += 10.0 * (a + 1) * p[i] / 60.0;
  }
  const std::vector<double> got = Product(g.Find("q.lora_B")->values, g.Find("q.lora_A")->values);
  double err = 0, norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  EXPECT_LE(std::sqrt(err / norm), 1e-5);
  // The naive alternative is far off: product of the averaged factors.
  std::vector<float> mean_b(kOut * kRank, 0.0f), mean_a(kRank * kIn, 0.0f);
  for (int a = 0; a < 3; ++a) {
    const TensorBundle trained = Train(agents[a]->last_base(), a);
    for (size_t i = 0; i < mean_b.size(); ++i)
      mean_b[i] += (a + 1) * trained.Find("q.lora_B")->values[i] / 6.0f;
    for (size_t i = 0; i < mean_a.size(); ++i)
      mean_a[i] += (a + 1) * trained.Find("q.lora_A")->values[i] / 6.0f;
  }
  const std::vector<double> naive = Product(mean_b, mean_a);
  double naive_err = 0;
  for (size_t i = 0; i < want.size(); ++i) naive_err += (naive[i] - want[i]) * (naive[i] - want[i]);
  EXPECT_GT(std::sqrt(naive_err / norm), 0.05);
}

}  // namespace
}  // namespace fedge::aggregator
