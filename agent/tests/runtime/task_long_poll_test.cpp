// fedge-agent's GetTask long-poll (issue 14, item 3) against the real
// aggregator server over real gRPC on 127.0.0.1:0. A job that needs two
// agents keeps the first one waiting until the second joins: with the
// long-poll the first agent's GetTask is held at the aggregator (one call),
// with an aggregator that says it does not hold calls
// (JoinResponse.max_task_wait_ms = 0) the agent polls after retry_after_ms.
// Either way the job finishes.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "fake_classifier.h"
#include "fedge/agent/runtime/aggregator_client.h"
#include "fedge/agent/runtime/metrics.h"
#include "fedge/agent/runtime/serving_model.h"
#include "fedge/aggregator/server.h"
#include "fedge/job_spec.h"

namespace fedge::agent {
namespace {

using namespace std::chrono_literals;
using testing::FakeClassifier;
using testing::TestLabels;

constexpr char kJob[] = "default/longpoll";

JobSpec Spec() {
  JobSpec spec;
  spec.name = "longpoll";
  spec.namespace_ = "default";
  spec.rounds.total = 1;
  spec.rounds.timeoutSeconds = 60;
  spec.agents.minAgents = 2;
  return spec;
}

// One fedge-agent client with a fake model, run on its own thread.
class Agent {
 public:
  Agent(int port, const std::string& id)
      : trainer_(TestLabels(), 16), serving_(std::make_unique<FakeClassifier>(TestLabels(), 16), kJob) {
    for (int i = 0; i < 10; ++i) train_.push_back({"text " + std::to_string(i), i % 3});
    for (int i = 0; i < 4; ++i) eval_.push_back({"eval " + std::to_string(i), i % 3});
    ClientOptions o;
    o.job = kJob;
    o.agent_id = id;
    o.node_name = "node-" + id;
    o.backoff_initial = 20ms;
    o.backoff_max = 200ms;
    o.jitter_seed = 1;
    o.task_wait = 10s;
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

 private:
  FakeClassifier trainer_;
  ServingModel serving_;
  AgentMetrics metrics_;
  std::vector<Example> train_, eval_;
  std::unique_ptr<AggregatorClient> client_;
  std::future<StatusOr<RunOutcome>> run_;
};

// Waits (with a deadline) until `cond` holds.
template <typename F>
bool WaitUntil(F cond, std::chrono::milliseconds limit = 20s) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// The first agent waits alone for `window`, then the second joins and the
// job runs. Returns the GetTask calls the aggregator received in the window.
uint64_t RunJob(aggregator::ServerOptions so, std::chrono::milliseconds window, bool expect_parked) {
  so.grpc_address = "127.0.0.1:0";
  so.http_address = "";
  so.retry_after_ms = 20;  // polling: ~50 GetTask calls a second
  so.tick_interval_ms = 20;
  auto server = aggregator::AggregatorServer::Create(Spec(), so);
  EXPECT_TRUE(server.ok()) << server.status().ToString();
  if (!server.ok()) return 0;
  EXPECT_TRUE((*server)->Start().ok());
  aggregator::AggregatorServer& s = **server;

  Agent first(s.grpc_port(), "agent-0");
  // The first GetTask after its Join: from here on it waits for agent-1.
  EXPECT_TRUE(WaitUntil([&] { return s.get_task_calls() >= 1; }));
  if (expect_parked) EXPECT_TRUE(WaitUntil([&] { return s.parked_tasks() == 1; }));
  const uint64_t before = s.get_task_calls();
  // Observing that nothing happens needs a window: a polling agent makes
  // window / retry_after_ms calls in it, a long-polled one none.
  std::this_thread::sleep_for(window);
  const uint64_t calls = s.get_task_calls() - before;
  if (!expect_parked) EXPECT_EQ(s.parked_tasks(), 0u);

  Agent second(s.grpc_port(), "agent-1");
  auto a = first.Wait();
  auto b = second.Wait();
  EXPECT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  if (a.ok()) EXPECT_EQ(*a, RunOutcome::kDone);
  if (b.ok()) EXPECT_EQ(*b, RunOutcome::kDone);
  EXPECT_EQ(aggregator::JobStateName(s.engine().GetStatus().state), "Succeeded");
  s.Shutdown(500ms);
  return calls;
}

TEST(TaskLongPollTest, AgentHoldsOneGetTaskWhileWaitingAndIsAnsweredWhenTheJobMoves) {
  aggregator::ServerOptions so;  // long-polls held up to 20 s (the default)
  const uint64_t calls = RunJob(so, 600ms, /*expect_parked=*/true);
  // The held call is still the one made before the window.
  EXPECT_EQ(calls, 0u);
}

TEST(TaskLongPollTest, AgentPollsAnAggregatorThatDoesNotHoldGetTask) {
  aggregator::ServerOptions so;
  so.max_task_wait_ms = 0;  // JoinResponse.max_task_wait_ms = 0: an aggregator without long-polls
  const uint64_t calls = RunJob(so, 600ms, /*expect_parked=*/false);
  // 600 ms at retry_after_ms = 20: ~30 polls; at least a few even on a loaded machine.
  EXPECT_GE(calls, 5u);
}

}  // namespace
}  // namespace fedge::agent
