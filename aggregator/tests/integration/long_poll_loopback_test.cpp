// GetTask long-poll (TaskRequest.wait_ms, issue 14 item 2) over real gRPC on
// 127.0.0.1:0: a WAIT answer is held until the task changes or the wait ends,
// a request without wait_ms is answered at once (older agents), and shutdown
// answers every held call.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>

#include "../test_util.h"
#include "fedge.grpc.pb.h"
#include "fedge/aggregator/server.h"
#include "loopback.h"
#include "sim_agent.h"

namespace fedge::aggregator {
namespace {

using namespace std::chrono_literals;
using testing::SimAgent;
using testing::StartServer;

JobSpec Spec() { return testing::LoopbackSpec("loopback", /*rounds=*/1, /*min_agents=*/2); }

struct Answer {
  grpc::Status status;
  v1::Task task;
  std::chrono::milliseconds took{0};
};

// GetTask with `wait_ms`, given up by the client after `client_deadline`.
std::future<Answer> AskTask(SimAgent& agent, uint32_t wait_ms, std::chrono::milliseconds client_deadline) {
  return std::async(std::launch::async, [&agent, wait_ms, client_deadline] {
    Answer a;
    v1::TaskRequest req;
    *req.mutable_header() = agent.Header();
    req.set_wait_ms(wait_ms);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + client_deadline);
    const auto start = std::chrono::steady_clock::now();
    a.status = agent.stub()->GetTask(&ctx, req, &a.task);
    a.took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    return a;
  });
}

// The held call is answered when the second agent's Join moves the job to
// initializing: it would otherwise sit out its 20 s and the client would give
// up after 10 s (DEADLINE_EXCEEDED).
TEST(LongPollLoopbackTest, HeldWaitIsAnsweredWhenTheTaskChanges) {
  auto server = StartServer(Spec());
  ASSERT_NE(server, nullptr);
  SimAgent a("agent-0", 0, server->grpc_port()), b("agent-1", 1, server->grpc_port());
  ASSERT_TRUE(a.Join()) << a.error();
  std::future<Answer> held = AskTask(a, 20'000, 10s);
  // Not answered while the job still waits for agents (one of two joined).
  EXPECT_EQ(held.wait_for(300ms), std::future_status::timeout);
  ASSERT_TRUE(b.Join()) << b.error();
  Answer answer = held.get();
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  EXPECT_EQ(answer.task.kind(), v1::TASK_KIND_INITIALIZE);
  server->Shutdown(1s);
}

TEST(LongPollLoopbackTest, HeldWaitEndsWithWaitAfterItsTime) {
  auto server = StartServer(Spec());
  ASSERT_NE(server, nullptr);
  SimAgent a("agent-0", 0, server->grpc_port());
  ASSERT_TRUE(a.Join()) << a.error();
  Answer answer = AskTask(a, 400, 10s).get();
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  EXPECT_EQ(answer.task.kind(), v1::TASK_KIND_WAIT);
  EXPECT_GE(answer.took, 400ms);  // held for the wait, not answered at once
  server->Shutdown(1s);
}

// Agents that do not ask for a wait (wait_ms 0, every agent before this
// field) still get their WAIT at once and poll: a held call would blow the
// 2 s client deadline of this request.
TEST(LongPollLoopbackTest, RequestsWithoutWaitAreAnsweredAtOnce) {
  auto server = StartServer(Spec());
  ASSERT_NE(server, nullptr);
  SimAgent a("agent-0", 0, server->grpc_port());
  ASSERT_TRUE(a.Join()) << a.error();
  Answer answer = AskTask(a, 0, 2s).get();
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  EXPECT_EQ(answer.task.kind(), v1::TASK_KIND_WAIT);
  EXPECT_EQ(answer.task.retry_after_ms(), 10);
  server->Shutdown(1s);
}

// Shutdown answers held calls (they would otherwise keep gRPC's shutdown
// waiting for their reactors).
TEST(LongPollLoopbackTest, ShutdownAnswersHeldCalls) {
  auto server = StartServer(Spec());
  ASSERT_NE(server, nullptr);
  SimAgent a("agent-0", 0, server->grpc_port());
  ASSERT_TRUE(a.Join()) << a.error();
  std::future<Answer> held = AskTask(a, 20'000, 15s);
  ASSERT_EQ(held.wait_for(300ms), std::future_status::timeout);  // held
  server->Shutdown(1s);
  Answer answer = held.get();
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  EXPECT_EQ(answer.task.kind(), v1::TASK_KIND_WAIT);
  EXPECT_LT(answer.took, 10s);
}

}  // namespace
}  // namespace fedge::aggregator
