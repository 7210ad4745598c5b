// A simulated agent for the loopback tests: a plain C++ gRPC client that
// follows protocol v1 the way fedge-agent does (small bundles, no libtorch),
// with knobs a hostile agent turns (claimed example counts, its own update or
// initial state, raw uploads).
#pragma once

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "../test_util.h"
#include "fedge.grpc.pb.h"
#include "fedge/tensor_bundle.h"

namespace fedge::aggregator::testing {

// The trainable layout of the loopback jobs: "lora_a" [a_size], "lora_b" [2, 2],
// every value `value`.
inline TensorBundle Layout(float value, int64_t a_size = 3) {
  TensorBundle b;
  b.tensors.push_back(NamedTensor{"lora_a", {a_size}, std::vector<float>(a_size, value)});
  b.tensors.push_back(NamedTensor{"lora_b", {2, 2}, std::vector<float>(4, value)});
  return b;
}

// Follows the protocol until DONE. "Training" adds (index + 1) to every
// parameter unless set_delta() or set_train() says otherwise.
class SimAgent {
 public:
  SimAgent(std::string id, int index, int port, std::string job = "ns/loopback")
      : id_(std::move(id)),
        job_(std::move(job)),
        index_(index),
        stub_(v1::Aggregator::NewStub(
            grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()))),
        initial_(Layout(0)),
        declared_layout_(Layout(0)) {}
  // Over `channel` (e.g. TLS) instead of a plaintext one to 127.0.0.1.
  SimAgent(std::string id, int index, const std::shared_ptr<grpc::Channel>& channel,
           std::string job = "ns/loopback")
      : id_(std::move(id)),
        job_(std::move(job)),
        index_(index),
        stub_(v1::Aggregator::NewStub(channel)),
        initial_(Layout(0)),
        declared_layout_(Layout(0)) {}

  int64_t examples() const { return 10 * (index_ + 1); }
  double accuracy() const { return 0.5 + 0.1 * index_; }
  const std::string& session() const { return session_; }
  const std::string& id() const { return id_; }

  // What the agent claims: at Join, in each update's header and in each
  // evaluation report (default: examples()).
  void set_claimed_examples(int64_t join, int64_t update, int64_t eval) {
    claimed_join_ = join;
    claimed_update_ = update;
    claimed_eval_ = eval;
  }
  void set_accuracy(double accuracy) { accuracy_ = accuracy; }
  // JoinRequest.token (default: none).
  void set_token(std::string token) { token_ = std::move(token); }
  // Declares Capabilities.evaluates_before_training: a TRAIN task with
  // evaluate_global gets the evaluation (what Report would send) in the
  // update's header.
  void set_evaluates_before_training(bool on) { evaluates_before_training_ = on; }
  int reports() const { return reports_; }  // ReportMetrics calls
  int evaluations_with_update() const { return evaluations_with_update_; }
  // The delta this agent sends for every TRAIN task.
  void set_delta(TensorBundle delta) { delta_ = std::move(delta); }
  // The state it uploads for INITIALIZE and the layout it declares at Join.
  void set_initial(TensorBundle initial) { initial_ = std::move(initial); }
  void set_declared_layout(TensorBundle layout) { declared_layout_ = std::move(layout); }
  // (global the agent trained from) -> its trained state: the agent uploads
  // trained - global for every TRAIN task. Overrides set_delta().
  using TrainFn = std::function<TensorBundle(const TensorBundle& global)>;
  void set_train(TrainFn train) { train_ = std::move(train); }
  // The global this agent last trained from with set_train()'s function.
  const TensorBundle& last_base() const { return last_base_; }

  // Runs until DONE (true) or, with stop_after_round > 0, until it reported
  // the evaluation of that round; false on a protocol failure (see error()).
  bool Run(int64_t stop_after_round = 0, std::chrono::seconds limit = std::chrono::seconds(60)) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    if (!Join()) return false;
    while (std::chrono::steady_clock::now() < deadline) {
      v1::TaskRequest req;
      *req.mutable_header() = Header();
      req.set_held_version(held_version_);
      v1::Task task;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      grpc::Status s = stub_->GetTask(&ctx, req, &task);
      if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
        if (!Join()) return false;
        continue;
      }
      if (!s.ok()) return Fail("GetTask: " + s.error_message());
      switch (task.kind()) {
        case v1::TASK_KIND_WAIT:
          std::this_thread::sleep_for(std::chrono::milliseconds(task.retry_after_ms()));
          break;
        case v1::TASK_KIND_INITIALIZE:
          if (!Submit(0, 0, initial_, /*is_delta=*/false)) return false;
          ++initialized_;
          break;
        case v1::TASK_KIND_TRAIN: {
          TensorBundle global;
          if (!Fetch(task, &global)) return false;
          const TensorBundle delta = Train(global);
          evaluate_version_ = task.evaluate_global() ? task.global_version() : 0;
          if (!Submit(task.round(), task.global_version(), delta, true)) return false;
          if (evaluate_version_ > 0) ++evaluations_with_update_;
          evaluate_version_ = 0;
          ++trained_;
          break;
        }
        case v1::TASK_KIND_EVALUATE: {
          TensorBundle global;
          if (!Fetch(task, &global)) return false;
          if (!Report(task)) return false;
          if (stop_after_round > 0 && task.round() >= stop_after_round) return true;
          break;
        }
        case v1::TASK_KIND_DONE:
          final_version_ = task.global_version();
          return true;
        default:
          return Fail("unexpected task kind " + std::to_string(task.kind()));
      }
    }
    return Fail("no DONE before the test deadline");
  }

  // Sends a header declaring `total_bytes`, then tries to stream that much.
  v1::SubmitUpdateResponse SubmitRaw(uint64_t total_bytes, grpc::Status* status) {
    v1::SubmitUpdateResponse response;
    grpc::ClientContext ctx;
    auto writer = stub_->SubmitUpdate(&ctx, &response);
    v1::UpdateChunk chunk;
    v1::UpdateHeader* h = chunk.mutable_header();
    *h->mutable_header() = Header();
    h->set_round(1);
    h->set_base_version(1);
    h->set_num_examples(1);
    h->set_total_bytes(total_bytes);
    h->set_is_delta(true);
    writer->Write(chunk);
    std::string block(1 << 20, 'x');
    for (uint64_t sent = 0; sent < total_bytes; sent += block.size()) {
      v1::UpdateChunk data;
      data.set_data(block);
      if (!writer->Write(data)) break;  // the server answered early
    }
    writer->WritesDone();
    *status = writer->Finish();
    return response;
  }

  // Streams `bytes` as one update (16 KiB chunks) under `header` (its
  // RequestHeader, total_bytes and checksum are filled in here).
  v1::SubmitUpdateResponse SubmitBytes(v1::UpdateHeader header, const std::string& bytes,
                                       grpc::Status* status) {
    return SubmitRange(std::move(header), bytes, 0, bytes.size(), 16 << 10, status);
  }

  // Streams bytes[offset, offset + send) of `bytes` in messages of `chunk`
  // bytes under `header` (its RequestHeader, and the total_bytes and checksum
  // of the whole of `bytes`, are filled in here), then half-closes: a range
  // that stops short ends the stream as a dropped link does.
  v1::SubmitUpdateResponse SubmitRange(v1::UpdateHeader header, const std::string& bytes, uint64_t offset,
                                       uint64_t send, uint64_t chunk, grpc::Status* status) {
    v1::SubmitUpdateResponse response;
    grpc::ClientContext ctx;
    auto writer = stub_->SubmitUpdate(&ctx, &response);
    v1::UpdateChunk first;
    *header.mutable_header() = Header();
    header.set_total_bytes(bytes.size());
    header.set_checksum(Sha256Hex(bytes));
    *first.mutable_header() = header;
    writer->Write(first);
    for (uint64_t at = offset; at < offset + send; at += chunk) {
      v1::UpdateChunk data;
      data.set_data(bytes.substr(at, std::min<uint64_t>(chunk, offset + send - at)));
      if (!writer->Write(data)) break;  // the server answered early
    }
    writer->WritesDone();
    *status = writer->Finish();
    return response;
  }

  grpc::Status GetTaskWithSession(const std::string& session, v1::Task* task) {
    v1::TaskRequest req;
    *req.mutable_header() = Header();
    req.mutable_header()->set_session(session);
    grpc::ClientContext ctx;
    return stub_->GetTask(&ctx, req, task);
  }

  grpc::Status GetTask(v1::Task* task) { return GetTaskWithSession(session_, task); }

  bool Join() {
    v1::JoinRequest req;
    *req.mutable_header() = Header();
    req.set_node_name("node-" + id_);
    req.set_token(token_);
    v1::Capabilities* caps = req.mutable_capabilities();
    caps->set_num_train_examples(claimed_join_.value_or(examples()));
    caps->set_num_eval_examples(claimed_eval_.value_or(examples()));
    caps->set_evaluates_before_training(evaluates_before_training_);
    DeclareLayout(declared_layout_, caps);
    v1::JoinResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->Join(&ctx, req, &resp);
    if (!s.ok()) return Fail("Join: " + s.error_message());
    session_ = resp.session();
    return true;
  }

  v1::RequestHeader Header() const {
    v1::RequestHeader h;
    h.set_protocol_version(1);
    h.set_job(job_);
    h.set_agent_id(id_);
    h.set_session(session_);
    return h;
  }

  v1::Aggregator::Stub* stub() { return stub_.get(); }
  const std::string& error() const { return error_; }
  int trained() const { return trained_; }
  int initialized() const { return initialized_; }
  int64_t final_version() const { return final_version_; }

  bool Fetch(const v1::Task& task, TensorBundle* out) {
    v1::FetchGlobalRequest req;
    *req.mutable_header() = Header();
    req.set_version(task.global_version());
    grpc::ClientContext ctx;
    auto reader = stub_->FetchGlobal(&ctx, req);
    v1::GlobalChunk chunk;
    std::string bytes;
    while (reader->Read(&chunk)) {
      if (chunk.offset() != bytes.size()) return Fail("gap in FetchGlobal stream");
      if (chunk.version() != task.global_version()) return Fail("wrong version streamed");
      bytes += chunk.data();
    }
    grpc::Status s = reader->Finish();
    if (!s.ok()) return Fail("FetchGlobal: " + s.error_message());
    if (Sha256Hex(bytes) != task.global_checksum()) return Fail("global checksum mismatch");
    auto bundle = DecodeBundle(bytes);
    if (!bundle.ok()) return Fail("decode global: " + bundle.status().ToString());
    *out = std::move(*bundle);
    held_version_ = task.global_version();
    return true;
  }

 private:
  TensorBundle Train(const TensorBundle& global) {
    if (!train_) return delta_ ? *delta_ : Layout(static_cast<float>(index_ + 1));
    TensorBundle delta = train_(global);
    for (NamedTensor& t : delta.tensors) {
      const NamedTensor* g = global.Find(t.name);
      for (size_t i = 0; i < t.values.size(); ++i) t.values[i] -= g->values[i];
    }
    last_base_ = global;
    return delta;
  }

  bool Fail(std::string message) {
    error_ = id_ + ": " + std::move(message);
    return false;
  }

  // Like fedge-agent, tries again (after a pause) when the aggregator is
  // out of upload capacity or still holds an earlier stream of this agent.
  bool Submit(int64_t round, int64_t base, const TensorBundle& bundle, bool is_delta) {
    for (int attempt = 1;; ++attempt) {
      bool retry = false;
      if (SubmitOnce(round, base, bundle, is_delta, &retry)) return true;
      if (!retry || attempt >= 100) return false;
      error_.clear();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  bool SubmitOnce(int64_t round, int64_t base, const TensorBundle& bundle, bool is_delta, bool* retry) {
    auto encoded = EncodeBundle(bundle, EncodeOptions{Codec::kFp32, 64, /*zstd=*/true, 3});
    if (!encoded.ok()) return Fail("encode: " + encoded.status().ToString());
    v1::UpdateHeader h;
    h.set_round(round);
    h.set_base_version(base);
    h.set_num_examples(claimed_update_.value_or(examples()));
    h.set_train_loss(1.0);
    h.set_is_delta(is_delta);
    h.set_raw_bytes(bundle.Fp32Bytes());
    if (evaluate_version_ > 0) {
      v1::Evaluation* e = h.mutable_evaluation();
      e->set_global_version(evaluate_version_);
      e->set_num_examples(claimed_eval_.value_or(examples()));
      (*e->mutable_values())["accuracy"] = accuracy_.value_or(accuracy());
      (*e->mutable_values())["loss"] = 1.0 - 0.1 * index_;
    }
    grpc::Status s;
    // 16-byte messages: several chunks even for a tiny bundle.
    v1::SubmitUpdateResponse response = SubmitRange(h, *encoded, 0, encoded->size(), /*chunk=*/16, &s);
    *retry = s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ||
             (s.ok() && response.reason_code() == "upload_busy");
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
    req.set_num_examples(claimed_eval_.value_or(examples()));
    (*req.mutable_values())["accuracy"] = accuracy_.value_or(accuracy());
    (*req.mutable_values())["loss"] = 1.0 - 0.1 * index_;
    v1::MetricsAck ack;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->ReportMetrics(&ctx, req, &ack);
    if (!s.ok()) return Fail("ReportMetrics: " + s.error_message());
    ++reports_;
    return true;
  }

  std::string id_;
  std::string job_;
  int index_;
  std::unique_ptr<v1::Aggregator::Stub> stub_;
  std::string session_;
  int64_t held_version_ = 0;
  int trained_ = 0;
  int initialized_ = 0;
  int64_t final_version_ = 0;
  std::optional<int64_t> claimed_join_, claimed_update_, claimed_eval_;
  std::optional<double> accuracy_;
  bool evaluates_before_training_ = false;
  int64_t evaluate_version_ = 0;  // of the TRAIN task being submitted; 0: no evaluation asked
  int reports_ = 0;
  int evaluations_with_update_ = 0;
  std::optional<TensorBundle> delta_;
  TrainFn train_;
  TensorBundle last_base_;
  TensorBundle initial_;
  TensorBundle declared_layout_;
  std::string token_;
  std::string error_;
};

}  // namespace fedge::aggregator::testing
