// The global sent in fp16 (spec.compression.globalCodec, issue 14 item 2)
// against the real aggregator server over real gRPC on 127.0.0.1:0, with
// fedge-agent's client loop and a fake model whose training adds exact steps.
// Each agent trains from the global as it decoded it (fp16-rounded) and sends
// its delta against that; the aggregator aggregates onto its own fp32 global.
// After two rounds the aggregator's global must be exactly fp32 start + step +
// step: if the agent's delta were not relative to the global it decoded, or
// the aggregator aggregated onto the rounded global it sent, the fp16 rounding
// would end up in the aggregator's global.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <vector>

#include "fake_classifier.h"
#include "fedge/agent/runtime/aggregator_client.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/aggregator/server.h"
#include "fedge/job_spec.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {
namespace {

using namespace std::chrono_literals;
using testing::FakeClassifier;
using testing::TestLabels;

constexpr char kJob[] = "default/fp16global";
constexpr int64_t kPadding = 64;          // values training leaves alone (none is an fp16 value)
constexpr double kLearningRate = 0.0625;  // the fake's steps lr x (i + 1) are exact in float

JobSpec Spec() {
  JobSpec spec;
  spec.name = "fp16global";
  spec.namespace_ = "default";
  spec.rounds.total = 2;
  spec.rounds.timeoutSeconds = 60;
  spec.rounds.learningRate = kLearningRate;
  spec.agents.minAgents = 2;
  spec.compression.codec = "fp32";  // lossless updates: the deltas arrive exactly
  spec.compression.globalCodec = "fp16";
  return spec;
}

// One fedge-agent client with the fake model, run on its own thread.
class Agent {
 public:
  Agent(int port, const std::string& id)
      : trainer_(TestLabels(), kPadding),
        serving_(std::make_unique<FakeClassifier>(TestLabels(), kPadding), kJob) {
    for (int i = 0; i < 10; ++i) train_.push_back({"text " + std::to_string(i), i % 3});
    for (int i = 0; i < 4; ++i) eval_.push_back({"eval " + std::to_string(i), i % 3});
    ClientOptions o;
    o.job = kJob;
    o.agent_id = id;
    o.node_name = "node-" + id;
    o.backoff_initial = 20ms;
    o.backoff_max = 200ms;
    o.jitter_seed = 1;
    ClientDeps d;
    d.trainer = &trainer_;
    d.serving = &serving_;
    d.metrics = &metrics_;
    d.train_data = &train_;
    d.eval_data = &eval_;
    client_ =
        std::make_unique<AggregatorClient>(AggregatorClient::Dial("127.0.0.1:" + std::to_string(port)), o, d);
    run_ = std::async(std::launch::async, [this] { return client_->Run(); });
  }
  ~Agent() {
    client_->Stop();
    if (run_.valid()) run_.wait();
  }
  // The Run() outcome, or a failure after 60 s.
  StatusOr<RunOutcome> Wait() {
    if (run_.wait_for(60s) != std::future_status::ready) {
      client_->Stop();
      run_.wait();
      return DeadlineExceededError("the agent did not finish within 60 s");
    }
    return run_.get();
  }
  const FakeClassifier& trainer() const { return trainer_; }

 private:
  FakeClassifier trainer_;
  ServingModel serving_;
  AgentMetrics metrics_;
  std::vector<Example> train_, eval_;
  std::unique_ptr<AggregatorClient> client_;
  std::future<StatusOr<RunOutcome>> run_;
};

// `global` as an agent decodes it from an fp16 download.
TensorBundle Fp16(const TensorBundle& global) {
  EncodeOptions eo;
  eo.codec = Codec::kFp16;
  auto bytes = EncodeBundle(global, eo);
  EXPECT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto decoded = DecodeBundle(*bytes);
  EXPECT_TRUE(decoded.ok()) << decoded.status().ToString();
  return *decoded;
}

// The fake's local round from `held` (FakeClassifier::Train), minus `held`
// (ComputeDelta): the delta an agent holding `held` sends.
TensorBundle FakeDelta(const TensorBundle& held) {
  TensorBundle delta = held;
  for (NamedTensor& t : delta.tensors) {
    for (size_t i = 0; i < t.values.size(); ++i) {
      float trained = t.values[i];
      if (t.name == "classifier.weight") trained += static_cast<float>(kLearningRate) * float(i + 1);
      if (t.name == "classifier.bias") trained -= static_cast<float>(kLearningRate);
      t.values[i] = trained - t.values[i];
    }
  }
  return delta;
}

// FedAvg's arithmetic (WeightedDeltaSum::ApplyMean): two agents of equal
// weight sending the same delta move the global by exactly that delta.
TensorBundle Apply(const TensorBundle& global, const TensorBundle& delta) {
  TensorBundle out = global;
  for (NamedTensor& t : out.tensors) {
    const std::vector<float>& d = delta.Find(t.name)->values;
    for (size_t i = 0; i < t.values.size(); ++i)
      t.values[i] = static_cast<float>(static_cast<double>(t.values[i]) + static_cast<double>(d[i]));
  }
  return out;
}

TEST(GlobalDownloadTest, AgentsTrainOnTheFp16GlobalAndTheAggregatorsFp32GlobalStaysExact) {
  aggregator::ServerOptions so;
  so.grpc_address = "127.0.0.1:0";
  so.http_address = "";
  so.retry_after_ms = 20;
  so.tick_interval_ms = 20;
  auto server = aggregator::AggregatorServer::Create(Spec(), so);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->Start().ok());
  aggregator::AggregatorServer& s = **server;

  // What the aggregator's global must be: fp32 start + the delta of round 1
  // (against the fp16 v1) + the delta of round 2 (against the fp16 v2).
  const TensorBundle start = FakeClassifier(TestLabels(), kPadding).ExportTrainable();
  TensorBundle expected = start, rounded = start;
  for (int round = 1; round <= 2; ++round) {
    const TensorBundle held = Fp16(expected);
    expected = Apply(expected, FakeDelta(held));
    rounded = Apply(Fp16(rounded), FakeDelta(Fp16(rounded)));  // the global, had it been the download
  }
  // The fp16 rounding is visible at all (the test could fail).
  ASSERT_NE(start.tensors[2].values, Fp16(start).tensors[2].values);
  ASSERT_NE(expected.tensors[2].values, rounded.tensors[2].values);

  {
    Agent a(s.grpc_port(), "agent-0");
    Agent b(s.grpc_port(), "agent-1");
    auto ra = a.Wait();
    auto rb = b.Wait();
    ASSERT_TRUE(ra.ok()) << ra.status().ToString();
    ASSERT_TRUE(rb.ok()) << rb.status().ToString();
    EXPECT_EQ(*ra, RunOutcome::kDone);
    EXPECT_EQ(*rb, RunOutcome::kDone);
    EXPECT_EQ(a.trainer().trains + b.trainer().trains, 4);
    // Each agent ends holding the last global as it was sent: fp16-rounded.
    EXPECT_EQ(a.trainer().ExportTrainable().tensors[2].values, Fp16(expected).tensors[2].values);
  }
  EXPECT_EQ(aggregator::JobStateName(s.engine().GetStatus().state), "Succeeded");
  auto global = s.engine().Global(0);
  ASSERT_TRUE(global.ok()) << global.status().ToString();
  EXPECT_EQ((*global)->version, 3);
  auto header = InspectBundle((*global)->encoded);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->codec, Codec::kFp16);
  for (const NamedTensor& t : expected.tensors) {
    const NamedTensor* got = (*global)->bundle.Find(t.name);
    ASSERT_NE(got, nullptr) << t.name;
    EXPECT_EQ(got->values, t.values) << t.name;
  }
  s.Shutdown(500ms);
}

}  // namespace
}  // namespace fedge::agent
