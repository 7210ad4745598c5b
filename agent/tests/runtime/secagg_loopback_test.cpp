// Secure aggregation end to end (issue 12's done-when test): the real aggregator
// server and real fedge-agent clients (AggregatorClient, secagg_client.cpp) over
// gRPC on loopback, six agents whose trainers make different updates. Checks that
// what the aggregator holds of each agent is uniform noise that does not decode,
// that the unmasked sum gives plain FedAvg's global within quantization error, and
// that rounds complete when two agents drop out after masking or before it.
#include <gtest/gtest.h>

#include <cmath>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>

#include "fake_classifier.h"
#include "fedge/agent/runtime/aggregator_client.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/aggregator/fedavg.h"
#include "fedge/aggregator/server.h"
#include "fedge/job_spec.h"
#include "fedge/secagg/ring.h"

namespace fedge::agent {
namespace {

using testing::FakeClassifier;
using testing::TestLabels;

constexpr int64_t kPadding = 20'000;  // values beside the fake head: a real adapter's order of size

// FakeClassifier's training plus a different random step per agent and round, so
// the agents' updates (and their sum) are not all alike. Records each delta.
class VaryingClassifier : public FakeClassifier {
 public:
  VaryingClassifier(int agent, std::mutex* mu, std::map<int, std::vector<TensorBundle>>* deltas)
      : FakeClassifier(TestLabels(), kPadding), agent_(agent), mu_(mu), deltas_(deltas) {}

  StatusOr<TrainResult> Train(const std::vector<Example>& data, const TrainOptions& options) override {
    TensorBundle before = ExportTrainable();
    auto result = FakeClassifier::Train(data, options);
    if (!result.ok()) return result;
    TensorBundle after = ExportTrainable();
    std::mt19937_64 rng(static_cast<uint64_t>(agent_) * 7919 + options.seed);
    std::normal_distribution<float> step(0.0f, 0.002f);
    TensorBundle delta = after;
    for (size_t t = 0; t < after.tensors.size(); ++t) {
      for (size_t i = 0; i < after.tensors[t].values.size(); ++i) {
        after.tensors[t].values[i] += step(rng);
        delta.tensors[t].values[i] = after.tensors[t].values[i] - before.tensors[t].values[i];
      }
    }
    FEDGE_RETURN_IF_ERROR(ImportTrainable(after));
    std::lock_guard<std::mutex> lock(*mu_);
    (*deltas_)[agent_].push_back(std::move(delta));
    return result;
  }

 private:
  int agent_;
  std::mutex* mu_;
  std::map<int, std::vector<TensorBundle>>* deltas_;
};

struct Held {
  std::string agent_id;
  std::vector<uint32_t> input;
  secagg::RoundParams params;
};

struct Outcome {
  aggregator::EngineStatus status;
  TensorBundle global0, global1;
  std::map<int, std::vector<TensorBundle>> deltas;  // by agent
  std::vector<Held> held;                           // what the aggregator held
  std::vector<double> weights;                      // omega_i by agent
  std::vector<std::string> left_at;
};

// One round, `n` agents; `drop_phase[i]` = the phase agent i refuses ("masked":
// drops after sharing its keys, "unmask": after uploading its masked input).
Outcome RunJob(int n, const std::map<int, std::string>& drop_phase) {
  Outcome out;
  JobSpec spec;
  spec.name = "secagg";
  spec.namespace_ = "default";
  spec.rounds.total = 1;
  spec.rounds.timeoutSeconds = 60;
  spec.rounds.localSteps = 2;
  spec.rounds.batchSize = 4;  // weight cap 8 examples
  spec.rounds.learningRate = 0.01;
  spec.agents.minAgents = n;
  spec.privacy.secureAggregation.enabled = true;
  aggregator::ServerOptions so;
  so.grpc_address = "127.0.0.1:0";
  so.http_address = "";
  so.retry_after_ms = 50;
  so.tick_interval_ms = 50;
  so.secagg_phase_timeout_ms = 2000;  // agents that drop before masking cost this much
  std::mutex mu;
  so.secagg_on_masked_input = [&](const std::string& id, const std::vector<uint32_t>& input,
                                  const secagg::RoundParams& params) {
    std::lock_guard<std::mutex> lock(mu);
    out.held.push_back({id, input, params});
  };
  auto server = aggregator::AggregatorServer::Create(spec, so);
  EXPECT_TRUE(server.ok()) << server.status().ToString();
  if (!server.ok()) return out;
  EXPECT_TRUE((*server)->Start().ok());
  const std::string address = "127.0.0.1:" + std::to_string((*server)->grpc_port());

  out.global0 = FakeClassifier(TestLabels(), kPadding).ExportTrainable();
  struct Agent {
    std::unique_ptr<VaryingClassifier> trainer;
    std::unique_ptr<ServingModel> serving;
    AgentMetrics metrics;
    std::vector<Example> train, eval;
    std::unique_ptr<AggregatorClient> client;
  };
  std::vector<std::unique_ptr<Agent>> agents;
  std::vector<std::future<StatusOr<RunOutcome>>> runs;
  for (int i = 0; i < n; ++i) {
    auto a = std::make_unique<Agent>();
    a->trainer = std::make_unique<VaryingClassifier>(i, &mu, &out.deltas);
    a->serving = std::make_unique<ServingModel>(std::make_unique<FakeClassifier>(TestLabels(), kPadding),
                                                "default/secagg");
    // 4, 6, 8, 10, ... examples: weights 0.5, 0.75, then 1 (the cap is 8).
    for (int e = 0; e < 4 + 2 * i; ++e) a->train.push_back({"text " + std::to_string(e), e % 3});
    for (int e = 0; e < 3; ++e) a->eval.push_back({"eval " + std::to_string(e), e % 3});
    out.weights.push_back(std::min(1.0, (4.0 + 2 * i) / 8.0));
    ClientOptions o;
    o.job = "default/secagg";
    o.agent_id = "agent-" + std::to_string(i);
    o.node_name = "node-" + std::to_string(i);
    o.backoff_initial = std::chrono::milliseconds(20);
    o.backoff_max = std::chrono::milliseconds(200);
    o.jitter_seed = static_cast<uint64_t>(i + 1);
    auto drop = drop_phase.find(i);
    if (drop != drop_phase.end()) {
      const std::string phase = drop->second;
      o.secagg_before_phase = [phase](std::string_view next) { return next != phase; };
    }
    ClientDeps d;
    d.trainer = a->trainer.get();
    d.serving = a->serving.get();
    d.metrics = &a->metrics;
    d.train_data = &a->train;
    d.eval_data = &a->eval;
    a->client = std::make_unique<AggregatorClient>(AggregatorClient::Dial(address), o, d);
    AggregatorClient* client = a->client.get();
    runs.push_back(std::async(std::launch::async, [client] { return client->Run(); }));
    agents.push_back(std::move(a));
  }
  for (int i = 0; i < n; ++i) {
    if (runs[i].wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
      ADD_FAILURE() << "agent " << i << " did not finish within 60 s";
      for (auto& a : agents) a->client->Stop();
    }
    auto outcome = runs[i].get();
    EXPECT_TRUE(outcome.ok()) << outcome.status().ToString();
  }
  out.status = (*server)->engine().GetStatus();
  auto global = (*server)->engine().Global(0);
  EXPECT_TRUE(global.ok());
  if (global.ok()) out.global1 = (*global)->bundle;
  (*server)->Shutdown(std::chrono::milliseconds(500));
  return out;
}

// Plain FedAvg of the recorded deltas of `contributors`, each weighted omega_i.
TensorBundle PlainFedAvg(const Outcome& o, const std::set<int>& contributors) {
  std::vector<aggregator::WeightedDelta> deltas;
  for (int i : contributors) deltas.push_back({&o.deltas.at(i).at(0), o.weights[i]});
  auto avg = aggregator::FedAvg(o.global0, deltas);
  EXPECT_TRUE(avg.ok()) << avg.status().ToString();
  return *avg;
}

std::vector<double> Flat(const TensorBundle& b) {
  std::vector<double> v;
  for (const NamedTensor& t : b.tensors) v.insert(v.end(), t.values.begin(), t.values.end());
  return v;
}

// ||secure - plain|| against the quantization bound: one ring step per rotated value
// per contributor, over the weight sum; plus float rounding of the globals.
void ExpectSecureEqualsPlain(const Outcome& o, const std::set<int>& contributors) {
  ASSERT_FALSE(o.held.empty());
  const secagg::RoundParams& p = o.held[0].params;
  const std::vector<double> secure = Flat(o.global1), plain = Flat(PlainFedAvg(o, contributors)),
                            base = Flat(o.global0);
  ASSERT_EQ(secure.size(), plain.size());
  double wsum = 0;
  for (int i : contributors) wsum += o.weights[i];
  double err2 = 0, step2 = 0;
  for (size_t j = 0; j < secure.size(); ++j) {
    err2 += (secure[j] - plain[j]) * (secure[j] - plain[j]);
    step2 += (plain[j] - base[j]) * (plain[j] - base[j]);
  }
  const double step = p.range / static_cast<double>(p.ring.levels);
  const double bound = step * std::sqrt(static_cast<double>(contributors.size() * secure.size())) / wsum +
                       1e-6 * std::sqrt(step2);
  EXPECT_LE(std::sqrt(err2), bound) << "the unmasked mean differs from plain FedAvg beyond quantization";
  EXPECT_LT(std::sqrt(err2 / step2), 0.02) << "relative error of the round's step";
}

TEST(SecAggLoopbackTest, AggregatorHoldsOnlyUniformMaskedInputsAndTheSumIsFedAvg) {
  Outcome o = RunJob(6, {});
  ASSERT_EQ(aggregator::JobStateName(o.status.state), "Succeeded") << o.status.message;
  ASSERT_EQ(o.status.rounds.size(), 1u);
  EXPECT_EQ(o.status.rounds[0].participants, 6);
  EXPECT_EQ(o.status.rounds[0].close_reason, "secure_aggregation");
  ASSERT_EQ(o.held.size(), 6u);
  const int64_t values = o.global0.NumElements();
  for (const Held& h : o.held) {
    ASSERT_EQ(h.input.size(), static_cast<size_t>(values + 1));
    EXPECT_EQ(h.params.ring.bits, 16);
    // Uniform: chi-square of the high byte over 256 bins (255 degrees of freedom;
    // 340 is p ~ 3e-4). The quantized update alone sits near 0 and scores ~10^6.
    std::vector<double> bins(256, 0);
    for (uint32_t v : h.input) bins[(v >> 8) & 0xFF] += 1;
    const double expect = static_cast<double>(h.input.size()) / 256;
    double chi2 = 0;
    for (double b : bins) chi2 += (b - expect) * (b - expect) / expect;
    EXPECT_LT(chi2, 340) << h.agent_id << "'s masked input is not uniform";
    // Decoded on its own (as an aggregator would), it is nowhere near the update.
    const int agent = std::stoi(h.agent_id.substr(6));
    std::vector<uint32_t> body(h.input.begin(), h.input.end() - 1);
    std::vector<double> decoded = secagg::DecodeRing(body, h.params.range, h.params.ring);
    secagg::Rotate(&decoded, h.params.rotation_seed, /*inverse=*/true);
    const std::vector<double> truth = Flat(o.deltas.at(agent).at(0));
    double err2 = 0, ref2 = 0;
    for (size_t j = 0; j < truth.size(); ++j) {
      err2 += (decoded[j] - o.weights[agent] * truth[j]) * (decoded[j] - o.weights[agent] * truth[j]);
      ref2 += o.weights[agent] * truth[j] * o.weights[agent] * truth[j];
    }
    EXPECT_GT(std::sqrt(err2 / ref2), 100) << h.agent_id << "'s input decodes to its update";
  }
  // Masked bytes per parameter: 2 (Z_2^16), plus one element for the weight.
  EXPECT_EQ(o.status.rounds[0].bytes_up, static_cast<uint64_t>(6 * (values + 1) * 2));
  ExpectSecureEqualsPlain(o, {0, 1, 2, 3, 4, 5});
}

TEST(SecAggLoopbackTest, TwoAgentsDroppingAfterMaskingDoNotStopTheRound) {
  Outcome o = RunJob(6, {{1, "unmask"}, {4, "unmask"}});
  ASSERT_EQ(aggregator::JobStateName(o.status.state), "Succeeded") << o.status.message;
  ASSERT_EQ(o.status.rounds.size(), 1u);
  // Their masked inputs arrived, so their updates count: the others' shares
  // remove their self masks.
  EXPECT_EQ(o.status.rounds[0].participants, 6);
  ExpectSecureEqualsPlain(o, {0, 1, 2, 3, 4, 5});
}

TEST(SecAggLoopbackTest, TwoAgentsDroppingBeforeMaskingAreLeftOutOfTheSum) {
  Outcome o = RunJob(6, {{0, "masked"}, {3, "masked"}});
  ASSERT_EQ(aggregator::JobStateName(o.status.state), "Succeeded") << o.status.message;
  ASSERT_EQ(o.status.rounds.size(), 1u);
  EXPECT_EQ(o.status.rounds[0].participants, 4);
  EXPECT_EQ(o.held.size(), 4u);
  // Their pairwise masks with the survivors were rebuilt from their shared keys.
  ExpectSecureEqualsPlain(o, {1, 2, 4, 5});
}

}  // namespace
}  // namespace fedge::agent
