// Resumable uploads through the real gRPC service: a SubmitUpdate stream that
// ends before its declared size keeps its bytes under the upload id, the
// agent asks GetUploadStatus and sends only the rest.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>

#include "../test_util.h"
#include "fedge.grpc.pb.h"
#include "fedge/aggregator/server.h"

namespace fedge::aggregator {
namespace {

constexpr char kJob[] = "ns/resume";

TensorBundle Layout(float value) {
  TensorBundle b;
  b.tensors.push_back(NamedTensor{"lora_a", {300}, std::vector<float>(300, value)});
  b.tensors.push_back(NamedTensor{"lora_b", {2, 2}, std::vector<float>(4, value)});
  return b;
}

class ResumeClient {
 public:
  explicit ResumeClient(int port)
      : stub_(v1::Aggregator::NewStub(
            grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()))) {}

  v1::RequestHeader Header() const {
    v1::RequestHeader h;
    h.set_protocol_version(1);
    h.set_job(kJob);
    h.set_agent_id("agent-0");
    h.set_session(session_);
    return h;
  }

  grpc::Status Join() {
    v1::JoinRequest req;
    *req.mutable_header() = Header();
    req.mutable_capabilities()->set_num_train_examples(100);
    req.mutable_capabilities()->set_num_eval_examples(100);
    testing::DeclareLayout(Layout(0), req.mutable_capabilities());
    v1::JoinResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->Join(&ctx, req, &resp);
    session_ = resp.session();
    return s;
  }

  v1::Task GetTask() {
    v1::TaskRequest req;
    *req.mutable_header() = Header();
    v1::Task task;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub_->GetTask(&ctx, req, &task).ok());
    return task;
  }

  // Streams bytes[offset, offset + send) of `bytes` under `upload_id`, then
  // half-closes (as a dropped link ends the server's read loop).
  v1::SubmitUpdateResponse Submit(const std::string& bytes, int64_t round, int64_t base, bool is_delta,
                                  const std::string& upload_id, uint64_t offset, uint64_t send) {
    v1::SubmitUpdateResponse response;
    grpc::ClientContext ctx;
    auto writer = stub_->SubmitUpdate(&ctx, &response);
    v1::UpdateChunk chunk;
    v1::UpdateHeader* h = chunk.mutable_header();
    *h->mutable_header() = Header();
    h->set_round(round);
    h->set_base_version(base);
    h->set_num_examples(5);
    h->set_total_bytes(bytes.size());
    h->set_checksum(Sha256Hex(bytes));
    h->set_is_delta(is_delta);
    h->set_upload_id(upload_id);
    h->set_offset(offset);
    writer->Write(chunk);
    for (uint64_t at = offset; at < offset + send; at += 100) {
      v1::UpdateChunk data;
      data.set_data(bytes.substr(at, std::min<uint64_t>(100, offset + send - at)));
      if (!writer->Write(data)) break;
    }
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }

  v1::UploadStatus Status(const std::string& upload_id) {
    v1::UploadStatusRequest req;
    *req.mutable_header() = Header();
    req.set_upload_id(upload_id);
    v1::UploadStatus status;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->GetUploadStatus(&ctx, req, &status);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return status;
  }

 private:
  std::unique_ptr<v1::Aggregator::Stub> stub_;
  std::string session_;
};

std::string Encode(const TensorBundle& b) {
  auto e = EncodeBundle(b, EncodeOptions{Codec::kFp32, 64, /*zstd=*/false, 3});
  EXPECT_TRUE(e.ok());
  return e.ok() ? *e : "";
}

TEST(ResumeLoopbackTest, BrokenUploadResumesFromTheHeldOffsetOverGrpc) {
  JobSpec spec;
  // The simulated agents upload exact fp32 deltas; the aggregator refuses an upload
  // in another codec than the job's (the default is int8).
  spec.compression.codec = "fp32";
  spec.name = "resume";
  spec.namespace_ = "ns";
  spec.rounds.total = 1;
  // Learning rate 1: the test's deltas (whole units) are moves AdamW could make,
  // so the default norm bound (2 x lr x steps x sqrt(n)) leaves them alone.
  spec.rounds.learningRate = 1.0;
  spec.rounds.timeoutSeconds = 30;
  spec.agents.minAgents = 1;
  ServerOptions options;
  options.grpc_address = "127.0.0.1:0";
  options.http_address = "";
  options.retry_after_ms = 10;
  auto server = AggregatorServer::Create(spec, options);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->Start().ok());

  ResumeClient client((*server)->grpc_port());
  ASSERT_TRUE(client.Join().ok());
  ASSERT_EQ(client.GetTask().kind(), v1::TASK_KIND_INITIALIZE);
  std::string init = Encode(Layout(1));
  ASSERT_TRUE(client.Submit(init, 0, 0, false, "", 0, init.size()).accepted());
  v1::Task task = client.GetTask();
  ASSERT_EQ(task.kind(), v1::TASK_KIND_TRAIN);

  std::string delta = Encode(Layout(2));
  ASSERT_GT(delta.size(), 1000u);
  v1::SubmitUpdateResponse r = client.Submit(delta, task.round(), task.global_version(), true, "r1", 0, 700);
  EXPECT_FALSE(r.accepted());
  EXPECT_EQ(r.resume_offset(), 700u) << r.reason();
  v1::UploadStatus st = client.Status("r1");
  ASSERT_TRUE(st.found()) << st.message();
  EXPECT_EQ(st.received_bytes(), 700u);
  EXPECT_EQ(st.total_bytes(), delta.size());
  EXPECT_EQ((*server)->engine().GetStatus().global_version, 1);

  r = client.Submit(delta, task.round(), task.global_version(), true, "r1", st.received_bytes(),
                    delta.size() - st.received_bytes());
  EXPECT_TRUE(r.accepted()) << r.reason();
  EXPECT_FALSE(client.Status("r1").found());
  auto global = (*server)->engine().Global(0);
  ASSERT_TRUE(global.ok());
  EXPECT_EQ((*global)->version, 2);
  for (float v : (*global)->bundle.Find("lora_a")->values) EXPECT_FLOAT_EQ(v, 3.0f);
  EXPECT_EQ((*server)->metrics().updates_rejected("incomplete"), 1);
}

}  // namespace
}  // namespace fedge::aggregator
