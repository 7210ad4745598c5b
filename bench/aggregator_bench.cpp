// fedge_bench_aggregator: what the aggregator's own work costs per round.
//
// 1. FedAvg: folding 4 updates into the streaming accumulator and applying the
//    mean, against a bare loop doing the same arithmetic (baseline, same run).
// 2. Transport: one agent's round trip (FetchGlobal of the fp32+zstd global,
//    SubmitUpdate of an int8 delta that closes the round, which includes
//    decode, validation, FedAvg and re-encoding the next global) over gRPC on
//    loopback, against the same calls made in-process on the ProtocolHandler
//    (baseline, same run): the ratio is what the gRPC transport adds.
// Sizes: the quickstart update (83,353 values: LoRA r8 on query/value of
// MiniLM-L6 + a 25-class head) and a full MiniLM-sized bundle (22.7M values).
#include <grpcpp/grpcpp.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "fedge.grpc.pb.h"
#include "fedge/aggregator/fedavg.h"
#include "fedge/aggregator/protocol_handler.h"
#include "fedge/aggregator/server.h"
#include "fedge/log.h"

namespace {

using namespace fedge;
using namespace fedge::aggregator;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

TensorBundle Random(int64_t elements, uint32_t seed, float stddev) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  TensorBundle b;
  const int64_t kTensor = 384 * 384;
  for (int64_t done = 0, i = 0; done < elements; ++i) {
    int64_t n = std::min(kTensor, elements - done);
    NamedTensor t{"t" + std::to_string(i), {n}, std::vector<float>(static_cast<size_t>(n))};
    for (float& v : t.values) v = normal(rng);
    b.tensors.push_back(std::move(t));
    done += n;
  }
  return b;
}

void BenchFedAvg(int64_t elements) {
  TensorBundle global = Random(elements, 1, 0.02f);
  std::vector<TensorBundle> deltas;
  for (uint32_t i = 0; i < 4; ++i) deltas.push_back(Random(elements, 10 + i, 0.001f));

  // Each variant runs 3 times; the best time counts (the first run pays page faults).
  double baseline = 1e9, ours = 1e9;
  TensorBundle baseline_out, ours_out;
  for (int rep = 0; rep < 3; ++rep) {
    auto start = Clock::now();
    std::vector<std::vector<double>> sums;
    for (const auto& t : global.tensors) sums.emplace_back(t.values.size(), 0.0);
    double total = 0;
    for (size_t d = 0; d < deltas.size(); ++d) {
      const double w = 10.0 * static_cast<double>(d + 1);
      for (size_t k = 0; k < sums.size(); ++k) {
        const auto& v = deltas[d].tensors[k].values;
        for (size_t i = 0; i < v.size(); ++i) sums[k][i] += w * v[i];
      }
      total += w;
    }
    baseline_out = global;
    for (size_t k = 0; k < sums.size(); ++k) {
      auto& v = baseline_out.tensors[k].values;
      for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(v[i] + sums[k][i] / total);
    }
    baseline = std::min(baseline, Seconds(start));

    start = Clock::now();
    WeightedDeltaSum sum(global);
    for (size_t d = 0; d < deltas.size(); ++d) {
      if (!sum.Add(deltas[d], 10.0 * static_cast<double>(d + 1)).ok()) std::abort();
    }
    auto out = sum.ApplyMean(global);
    ours = std::min(ours, Seconds(start));
    if (!out.ok()) std::abort();
    ours_out = std::move(*out);
  }
  if (ours_out.tensors[0].values[0] != baseline_out.tensors[0].values[0]) std::abort();
  std::printf("fedavg   %10lld values x 4 updates: %8.2f ms (bare loop %8.2f ms, ratio %.2f)\n",
              static_cast<long long>(elements), ours * 1e3, baseline * 1e3, ours / baseline);
}

JobSpec Spec() {
  JobSpec spec;
  spec.name = "bench";
  spec.namespace_ = "bench";
  spec.rounds.total = 1000;
  spec.rounds.timeoutSeconds = 600;
  spec.agents.minAgents = 1;
  return spec;
}

v1::RequestHeader Header(const std::string& session) {
  v1::RequestHeader h;
  h.set_protocol_version(1);
  h.set_job("bench/bench");
  h.set_agent_id("agent-0");
  h.set_session(session);
  return h;
}

v1::UpdateHeader MakeUpdateHeader(const std::string& session, int64_t round, int64_t base, bool delta,
                                  const std::string& bytes) {
  v1::UpdateHeader h;
  *h.mutable_header() = Header(session);
  h.set_round(round);
  h.set_base_version(base);
  h.set_num_examples(100);
  h.set_total_bytes(bytes.size());
  h.set_checksum(Sha256Hex(bytes));
  h.set_is_delta(delta);
  return h;
}

// What fedge-agent declares at Join: example counts and its trainable layout.
void Declare(const TensorBundle& layout, v1::Capabilities* caps) {
  caps->set_num_train_examples(100);
  caps->set_num_eval_examples(100);
  for (const NamedTensor& t : layout.tensors) {
    v1::TensorShape* shape = caps->add_trainable_layout();
    shape->set_name(t.name);
    for (int64_t d : t.shape) shape->add_dims(d);
  }
}

// The two ways of talking to the aggregator the benchmark compares.
// The evaluation every simulated agent reports for `task`: 10 examples, accuracy 0.5.
v1::MetricsReport EvaluationReport(const std::string& session, const v1::Task& task) {
  v1::MetricsReport req;
  *req.mutable_header() = Header(session);
  req.set_round(task.round());
  req.set_global_version(task.global_version());
  req.set_phase("evaluate");
  req.set_num_examples(10);
  (*req.mutable_values())["accuracy"] = 0.5;
  return req;
}

struct Transport {
  virtual ~Transport() = default;
  virtual std::string Join(const TensorBundle& layout) = 0;
  virtual v1::Task GetTask(const std::string& session) = 0;
  virtual std::string Fetch(const std::string& session, int64_t version) = 0;
  virtual bool Submit(const v1::UpdateHeader& header, const std::string& bytes) = 0;
  virtual void Report(const std::string& session, const v1::Task& task) = 0;
};

struct GrpcTransport : Transport {
  explicit GrpcTransport(int port) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(8 << 20);
    stub = v1::Aggregator::NewStub(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                                             grpc::InsecureChannelCredentials(), args));
  }
  std::string Join(const TensorBundle& layout) override {
    v1::JoinRequest req;
    *req.mutable_header() = Header("");
    Declare(layout, req.mutable_capabilities());
    v1::JoinResponse resp;
    grpc::ClientContext ctx;
    if (!stub->Join(&ctx, req, &resp).ok()) std::abort();
    return resp.session();
  }
  v1::Task GetTask(const std::string& session) override {
    v1::TaskRequest req;
    *req.mutable_header() = Header(session);
    v1::Task task;
    grpc::ClientContext ctx;
    if (!stub->GetTask(&ctx, req, &task).ok()) std::abort();
    return task;
  }
  std::string Fetch(const std::string& session, int64_t version) override {
    v1::FetchGlobalRequest req;
    *req.mutable_header() = Header(session);
    req.set_version(version);
    grpc::ClientContext ctx;
    auto reader = stub->FetchGlobal(&ctx, req);
    v1::GlobalChunk chunk;
    std::string bytes;
    while (reader->Read(&chunk)) bytes += chunk.data();
    if (!reader->Finish().ok()) std::abort();
    return bytes;
  }
  bool Submit(const v1::UpdateHeader& header, const std::string& bytes) override {
    v1::SubmitUpdateResponse resp;
    grpc::ClientContext ctx;
    auto writer = stub->SubmitUpdate(&ctx, &resp);
    v1::UpdateChunk first;
    *first.mutable_header() = header;
    writer->Write(first);
    for (size_t off = 0; off < bytes.size(); off += kMaxChunkBytes) {
      v1::UpdateChunk c;
      c.set_data(bytes.substr(off, kMaxChunkBytes));
      if (!writer->Write(c)) break;
    }
    writer->WritesDone();
    return writer->Finish().ok() && resp.accepted();
  }
  void Report(const std::string& session, const v1::Task& task) override {
    v1::MetricsAck ack;
    grpc::ClientContext ctx;
    if (!stub->ReportMetrics(&ctx, EvaluationReport(session, task), &ack).ok()) std::abort();
  }
  std::unique_ptr<v1::Aggregator::Stub> stub;
};

struct InProcessTransport : Transport {
  explicit InProcessTransport(ProtocolHandler* h) : handler(h) {}
  std::string Join(const TensorBundle& layout) override {
    v1::JoinRequest req;
    *req.mutable_header() = Header("");
    Declare(layout, req.mutable_capabilities());
    v1::JoinResponse resp;
    if (!handler->Join(req, &resp).ok()) std::abort();
    return resp.session();
  }
  v1::Task GetTask(const std::string& session) override {
    v1::TaskRequest req;
    *req.mutable_header() = Header(session);
    v1::Task task;
    if (!handler->GetTask(req, &task).ok()) std::abort();
    return task;
  }
  std::string Fetch(const std::string& session, int64_t version) override {
    v1::FetchGlobalRequest req;
    *req.mutable_header() = Header(session);
    req.set_version(version);
    std::string bytes;
    if (!handler
             ->FetchGlobal(req,
                           [&](const v1::GlobalChunk& c) {
                             bytes += c.data();
                             return true;
                           })
             .ok()) {
      std::abort();
    }
    return bytes;
  }
  bool Submit(const v1::UpdateHeader& header, const std::string& bytes) override {
    v1::SubmitUpdateResponse resp;
    bool rejected = false;
    if (!handler->BeginUpdate(header, &resp, &rejected).ok() || rejected) return false;
    std::string buffer;
    for (size_t off = 0; off < bytes.size(); off += kMaxChunkBytes) {
      if (!handler->AppendChunk(header, bytes.substr(off, kMaxChunkBytes), &buffer, &resp)) return false;
    }
    return handler->FinishUpdate(header, buffer).accepted();
  }
  void Report(const std::string& session, const v1::Task& task) override {
    if (!handler->ReportMetrics(EvaluationReport(session, task)).ok()) std::abort();
  }
  ProtocolHandler* handler;
};

struct RoundTimes {
  double fetch = 0, submit = 0;
  size_t global_bytes = 0, update_bytes = 0;
};

RoundTimes RunRounds(Transport& t, const TensorBundle& initial, const std::string& delta_bytes, int rounds) {
  std::string session = t.Join(initial);
  v1::Task task = t.GetTask(session);
  if (task.kind() != v1::TASK_KIND_INITIALIZE) std::abort();
  auto init = EncodeBundle(initial, EncodeOptions{Codec::kFp32, 64, false, 3});
  if (!t.Submit(MakeUpdateHeader(session, 0, 0, false, *init), *init)) std::abort();
  RoundTimes times;
  for (int r = 0; r < rounds; ++r) {
    task = t.GetTask(session);
    if (task.kind() != v1::TASK_KIND_TRAIN) std::abort();
    auto start = Clock::now();
    std::string global = t.Fetch(session, task.global_version());
    times.fetch += Seconds(start);
    times.global_bytes = global.size();
    start = Clock::now();
    if (!t.Submit(MakeUpdateHeader(session, task.round(), task.global_version(), true, delta_bytes),
                  delta_bytes)) {
      std::abort();
    }
    times.submit += Seconds(start);
    times.update_bytes = delta_bytes.size();
    task = t.GetTask(session);
    if (task.kind() != v1::TASK_KIND_EVALUATE) std::abort();
    t.Report(session, task);
  }
  times.fetch /= rounds;
  times.submit /= rounds;
  return times;
}

void BenchTransport(int64_t elements, int rounds) {
  TensorBundle initial = Random(elements, 1, 0.02f);
  auto delta = EncodeBundle(Random(elements, 2, 0.001f), EncodeOptions{Codec::kInt8, 64, true, 3});
  if (!delta.ok()) std::abort();

  ServerOptions options;
  options.grpc_address = "127.0.0.1:0";
  options.http_address = "";
  auto server = AggregatorServer::Create(Spec(), options);
  if (!server.ok() || !(*server)->Start().ok()) std::abort();
  GrpcTransport grpc_transport((*server)->grpc_port());
  RoundTimes over_grpc = RunRounds(grpc_transport, initial, *delta, rounds);
  (*server)->Shutdown(std::chrono::seconds(1));

  auto engine = RoundEngine::Create(EngineOptionsFromSpec(Spec(), 1), SystemClock::Get(), nullptr, nullptr);
  if (!engine.ok()) std::abort();
  ProtocolHandler handler(engine->get(), nullptr, ProtocolOptions{});
  InProcessTransport local(&handler);
  RoundTimes in_process = RunRounds(local, initial, *delta, rounds);

  std::printf("transport %9lld values: global %9zu B, int8 update %9zu B (mean of %d rounds)\n",
              static_cast<long long>(elements), over_grpc.global_bytes, over_grpc.update_bytes, rounds);
  std::printf("  FetchGlobal   gRPC %8.2f ms (%7.1f MB/s)  in-process %8.2f ms  ratio %.2f\n",
              over_grpc.fetch * 1e3, static_cast<double>(over_grpc.global_bytes) / over_grpc.fetch / 1e6,
              in_process.fetch * 1e3, over_grpc.fetch / in_process.fetch);
  std::printf(
      "  SubmitUpdate  gRPC %8.2f ms (%7.1f MB/s)  in-process %8.2f ms  ratio %.2f"
      "  (incl. decode, validate, FedAvg, re-encode global)\n",
      over_grpc.submit * 1e3, static_cast<double>(over_grpc.update_bytes) / over_grpc.submit / 1e6,
      in_process.submit * 1e3, over_grpc.submit / in_process.submit);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t big = 22'700'000;
  int rounds = 3;
  CLI::App app{"fedge_bench_aggregator: FedAvg and transport costs of the aggregator"};
  app.add_option("--big-elements", big, "values of the large bundle (default: all-MiniLM-L6-v2 size)");
  app.add_option("--rounds", rounds, "rounds per transport measurement");
  CLI11_PARSE(app, argc, argv);
  fedge::log::Init("bench", fedge::log::Level::kWarn);
  for (int64_t n : {int64_t{83'353}, big}) BenchFedAvg(n);
  for (int64_t n : {int64_t{83'353}, big}) BenchTransport(n, rounds);
  return 0;
}
