// LoRA aggregation modes end to end over real gRPC (127.0.0.1:0): plain C++
// gRPC clients play agents whose "training" moves their LoRA factors to
// known, agent-specific values, and the test checks the global the
// aggregator publishes against the exact average of B_i·A_i.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <thread>

#include "../test_util.h"
#include "fedge.grpc.pb.h"
#include "fedge/aggregator/server.h"

namespace fedge::aggregator {
namespace {

using namespace std::chrono_literals;

constexpr char kJob[] = "ns/lora";
constexpr auto kTestDeadline = 60s;
constexpr int64_t kOut = 4, kIn = 3, kRank = 3;

// (global the agent trained from, agent index) -> the agent's trained state.
using TrainFn = std::function<TensorBundle(const TensorBundle&, int)>;

// Protocol as fedge-agent follows it (see server_loopback_test.cpp), with the
// initial state and the training step supplied by the test.
class LoraAgent {
 public:
  LoraAgent(int index, int port, TensorBundle initial, TrainFn train)
      : id_("agent-" + std::to_string(index)),
        index_(index),
        initial_(std::move(initial)),
        train_(std::move(train)),
        stub_(v1::Aggregator::NewStub(
            grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()))) {}

  int64_t examples() const { return 10 * (index_ + 1); }
  const std::string& error() const { return error_; }
  // The global this agent last trained from.
  const TensorBundle& last_base() const { return last_base_; }

  bool Run() {
    const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
    if (!Join()) return false;
    while (std::chrono::steady_clock::now() < deadline) {
      v1::TaskRequest req;
      *req.mutable_header() = Header();
      req.set_held_version(held_version_);
      v1::Task task;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + 10s);
      grpc::Status s = stub_->GetTask(&ctx, req, &task);
      if (!s.ok()) return Fail("GetTask: " + s.error_message());
      switch (task.kind()) {
        case v1::TASK_KIND_WAIT:
          std::this_thread::sleep_for(std::chrono::milliseconds(task.retry_after_ms()));
          break;
        case v1::TASK_KIND_INITIALIZE:
          if (!Submit(0, 0, initial_, /*is_delta=*/false)) return false;
          break;
        case v1::TASK_KIND_TRAIN: {
          TensorBundle global;
          if (!Fetch(task, &global)) return false;
          TensorBundle delta = train_(global, index_);
          for (NamedTensor& t : delta.tensors) {
            const NamedTensor* g = global.Find(t.name);
            for (size_t i = 0; i < t.values.size(); ++i) t.values[i] -= g->values[i];
          }
          last_base_ = global;
          if (!Submit(task.round(), task.global_version(), delta, /*is_delta=*/true)) return false;
          break;
        }
        case v1::TASK_KIND_EVALUATE: {
          TensorBundle global;
          if (!Fetch(task, &global) || !Report(task)) return false;
          break;
        }
        case v1::TASK_KIND_DONE:
          return true;
        default:
          return Fail("unexpected task kind " + std::to_string(task.kind()));
      }
    }
    return Fail("no DONE before the test deadline");
  }

 private:
  v1::RequestHeader Header() const {
    v1::RequestHeader h;
    h.set_protocol_version(1);
    h.set_job(kJob);
    h.set_agent_id(id_);
    h.set_session(session_);
    return h;
  }

  bool Fail(std::string message) {
    error_ = id_ + ": " + std::move(message);
    return false;
  }

  bool Join() {
    v1::JoinRequest req;
    *req.mutable_header() = Header();
    req.set_node_name("node-" + id_);
    req.mutable_capabilities()->set_num_train_examples(examples());
    req.mutable_capabilities()->set_num_eval_examples(examples());
    testing::DeclareLayout(initial_, req.mutable_capabilities());
    v1::JoinResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->Join(&ctx, req, &resp);
    if (!s.ok()) return Fail("Join: " + s.error_message());
    session_ = resp.session();
    return true;
  }

  bool Fetch(const v1::Task& task, TensorBundle* out) {
    v1::FetchGlobalRequest req;
    *req.mutable_header() = Header();
    req.set_version(task.global_version());
    grpc::ClientContext ctx;
    auto reader = stub_->FetchGlobal(&ctx, req);
    v1::GlobalChunk chunk;
    std::string bytes;
    while (reader->Read(&chunk)) bytes += chunk.data();
    grpc::Status s = reader->Finish();
    if (!s.ok()) return Fail("FetchGlobal: " + s.error_message());
    auto bundle = DecodeBundle(bytes);
    if (!bundle.ok()) return Fail("decode global: " + bundle.status().ToString());
    *out = std::move(*bundle);
    held_version_ = task.global_version();
    return true;
  }

  bool Submit(int64_t round, int64_t base, const TensorBundle& bundle, bool is_delta) {
    auto encoded = EncodeBundle(bundle, EncodeOptions{Codec::kFp32, 64, /*zstd=*/false, 3});
    if (!encoded.ok()) return Fail("encode: " + encoded.status().ToString());
    v1::SubmitUpdateResponse response;
    grpc::ClientContext ctx;
    auto writer = stub_->SubmitUpdate(&ctx, &response);
    v1::UpdateChunk first;
    v1::UpdateHeader* h = first.mutable_header();
    *h->mutable_header() = Header();
    h->set_round(round);
    h->set_base_version(base);
    h->set_num_examples(examples());
    h->set_total_bytes(encoded->size());
    h->set_checksum(Sha256Hex(*encoded));
    h->set_train_loss(1.0);
    h->set_is_delta(is_delta);
    h->set_raw_bytes(bundle.Fp32Bytes());
    writer->Write(first);
    v1::UpdateChunk data;
    data.set_data(*encoded);
    writer->Write(data);
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    if (!s.ok()) return Fail("SubmitUpdate: " + s.error_message());
    if (!response.accepted()) return Fail("update rejected: " + response.reason());
    return true;
  }

  bool Report(const v1::Task& task) {
    v1::MetricsReport req;
    *req.mutable_header() = Header();
    req.set_round(task.round());
    req.set_global_version(task.global_version());
    req.set_phase("evaluate");
    req.set_num_examples(examples());
    (*req.mutable_values())["accuracy"] = 0.5;
    v1::MetricsAck ack;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->ReportMetrics(&ctx, req, &ack);
    if (!s.ok()) return Fail("ReportMetrics: " + s.error_message());
    return true;
  }

  std::string id_;
  int index_;
  TensorBundle initial_;
  TrainFn train_;
  std::unique_ptr<v1::Aggregator::Stub> stub_;
  std::string session_;
  int64_t held_version_ = 0;
  TensorBundle last_base_;
  std::string error_;
};

JobSpec Spec(const std::string& aggregation) {
  JobSpec spec;
  // The simulated agents upload exact fp32 deltas; the aggregator refuses an upload
  // in another codec than the job's (the default is int8).
  spec.compression.codec = "fp32";
  spec.name = "lora";
  spec.namespace_ = "ns";
  spec.rounds.total = 2;
  // Learning rate 1: the test's deltas (whole units) are moves AdamW could make,
  // so the default norm bound (2 x lr x steps x sqrt(n)) leaves them alone.
  spec.rounds.learningRate = 1.0;
  spec.rounds.timeoutSeconds = 30;
  spec.agents.minAgents = 3;
  spec.adapter.rank = kRank;
  spec.adapter.aggregation = aggregation;
  return spec;
}

ServerOptions LoopbackOptions() {
  ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.http_address = "127.0.0.1:0";
  o.retry_after_ms = 10;
  o.tick_interval_ms = 20;
  return o;
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

void RunAll(std::vector<std::unique_ptr<LoraAgent>>& agents) {
  std::vector<std::thread> threads;
  std::vector<char> ok(agents.size(), 0);
  for (size_t i = 0; i < agents.size(); ++i) threads.emplace_back([&, i] { ok[i] = agents[i]->Run(); });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < agents.size(); ++i) EXPECT_TRUE(ok[i]) << agents[i]->error();
}

TEST(LoraLoopbackTest, FrozenAJobRunsAndAveragesBExactly) {
  auto server = AggregatorServer::Create(Spec("frozen-a"), LoopbackOptions());
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->Start().ok());
  std::vector<std::unique_ptr<LoraAgent>> agents;
  for (int i = 0; i < 3; ++i)
    agents.push_back(std::make_unique<LoraAgent>(i, (*server)->grpc_port(), State(false, 0), Train));
  RunAll(agents);
  EXPECT_EQ((*server)->engine().GetStatus().state, JobState::kSucceeded);
  auto global = (*server)->engine().Global(0);
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
  auto server = AggregatorServer::Create(spec, LoopbackOptions());
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->Start().ok());
  // An agent of a factors-mode job (it sends A): the INITIALIZE upload is refused.
  LoraAgent agent(0, (*server)->grpc_port(), State(true, 0.5f), Train);
  EXPECT_FALSE(agent.Run());
  EXPECT_NE(agent.error().find("q.lora_A"), std::string::npos) << agent.error();
  EXPECT_FALSE((*server)->engine().Global(0).ok());
}

TEST(LoraLoopbackTest, ProductJobPublishesTheExactAverageOfProducts) {
  auto server = AggregatorServer::Create(Spec("product"), LoopbackOptions());
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->Start().ok());
  std::vector<std::unique_ptr<LoraAgent>> agents;
  for (int i = 0; i < 3; ++i)
    agents.push_back(std::make_unique<LoraAgent>(i, (*server)->grpc_port(), State(true, 0.3f), Train));
  RunAll(agents);
  EXPECT_EQ((*server)->engine().GetStatus().state, JobState::kSucceeded);
  auto global = (*server)->engine().Global(0);
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
