// Resumable uploads through the real gRPC service: a SubmitUpdate stream that
// ends before its declared size keeps its bytes under the upload id, the
// agent asks GetUploadStatus and sends only the rest.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>

#include "../test_util.h"
#include "fedge.grpc.pb.h"
#include "fedge/aggregator/server.h"
#include "loopback.h"
#include "sim_agent.h"

namespace fedge::aggregator {
namespace {

constexpr char kJob[] = "ns/resume";

// The loopback layout with a "lora_a" of 300 values: an update of more than 1000 bytes.
TensorBundle Layout(float value) { return testing::Layout(value, /*a_size=*/300); }

// One agent that uploads by hand, in ranges.
class ResumeClient {
 public:
  explicit ResumeClient(int port) : agent_("agent-0", 0, port, kJob) {
    agent_.set_declared_layout(Layout(0));
    agent_.set_claimed_examples(/*join=*/100, /*update=*/5, /*eval=*/100);
  }

  bool Join() { return agent_.Join(); }
  const std::string& error() const { return agent_.error(); }

  v1::Task GetTask() {
    v1::Task task;
    EXPECT_TRUE(agent_.GetTask(&task).ok());
    return task;
  }

  // Streams bytes[offset, offset + send) of `bytes` under `upload_id`, then
  // half-closes (as a dropped link ends the server's read loop).
  v1::SubmitUpdateResponse Submit(const std::string& bytes, int64_t round, int64_t base, bool is_delta,
                                  const std::string& upload_id, uint64_t offset, uint64_t send) {
    v1::UpdateHeader h;
    h.set_round(round);
    h.set_base_version(base);
    h.set_num_examples(5);
    h.set_is_delta(is_delta);
    h.set_upload_id(upload_id);
    h.set_offset(offset);
    grpc::Status s;
    v1::SubmitUpdateResponse response = agent_.SubmitRange(h, bytes, offset, send, /*chunk=*/100, &s);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }

  v1::UploadStatus Status(const std::string& upload_id) {
    v1::UploadStatusRequest req;
    *req.mutable_header() = agent_.Header();
    req.set_upload_id(upload_id);
    v1::UploadStatus status;
    grpc::ClientContext ctx;
    grpc::Status s = agent_.stub()->GetUploadStatus(&ctx, req, &status);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return status;
  }

 private:
  testing::SimAgent agent_;
};

std::string Encode(const TensorBundle& b) {
  auto e = EncodeBundle(b, EncodeOptions{Codec::kFp32, 64, /*zstd=*/false, 3});
  EXPECT_TRUE(e.ok());
  return e.ok() ? *e : "";
}

TEST(ResumeLoopbackTest, BrokenUploadResumesFromTheHeldOffsetOverGrpc) {
  JobSpec spec = testing::LoopbackSpec("resume", /*rounds=*/1, /*min_agents=*/1);
  ServerOptions options;
  options.grpc_address = "127.0.0.1:0";
  options.http_address = "";
  options.retry_after_ms = 10;
  auto server = AggregatorServer::Create(spec, options);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ASSERT_TRUE((*server)->Start().ok());

  ResumeClient client((*server)->grpc_port());
  ASSERT_TRUE(client.Join()) << client.error();
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
