// Shared setup of the loopback tests: a small job, a real AggregatorServer on
// 127.0.0.1:0, and agents run to completion on their own threads.
#pragma once

#include <gtest/gtest.h>

#include <initializer_list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../test_util.h"
#include "fedge/aggregator/server.h"

namespace fedge::aggregator::testing {

// Job "ns/<name>" of `rounds` rounds that starts once `min_agents` agents joined.
inline JobSpec LoopbackSpec(const std::string& name, int rounds, int min_agents) {
  JobSpec spec = UnitStepJob(name, rounds);
  // The simulated agents upload exact fp32 deltas; the aggregator refuses an upload
  // in another codec than the job's (the default is int8).
  spec.compression.codec = "fp32";
  spec.rounds.timeoutSeconds = 30;
  spec.agents.minAgents = min_agents;
  return spec;
}

// gRPC and HTTP on 127.0.0.1:0, fast polling and ticks; checkpoints in
// `checkpoint_dir` (none if empty).
inline ServerOptions LoopbackOptions(const std::string& checkpoint_dir = "") {
  ServerOptions o;
  o.grpc_address = "127.0.0.1:0";
  o.http_address = "127.0.0.1:0";
  o.checkpoint_dir = checkpoint_dir;
  o.retry_after_ms = 10;
  o.tick_interval_ms = 20;
  return o;
}

// A created and started server; null (and a test failure) if either step failed.
inline std::unique_ptr<AggregatorServer> StartServer(const JobSpec& spec,
                                                     ServerOptions options = LoopbackOptions()) {
  auto server = AggregatorServer::Create(spec, std::move(options));
  EXPECT_TRUE(server.ok()) << server.status().ToString();
  if (!server.ok()) return nullptr;
  Status started = (*server)->Start();
  EXPECT_TRUE(started.ok()) << started.ToString();
  return std::move(*server);
}

// Runs agents[i]->Run(args...) for every agent on its own thread; EXPECTs each
// to succeed (else prints its error()). `agents` holds pointers or unique_ptrs.
template <typename Agents, typename... Args>
void RunAll(const Agents& agents, const Args&... args) {
  std::vector<std::thread> threads;
  std::vector<char> ok(agents.size(), 0);
  for (size_t i = 0; i < agents.size(); ++i)
    threads.emplace_back([&, i] { ok[i] = agents[i]->Run(args...); });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < agents.size(); ++i) EXPECT_TRUE(ok[i]) << agents[i]->error();
}
template <typename Agent, typename... Args>
void RunAll(std::initializer_list<Agent*> agents, const Args&... args) {
  RunAll(std::vector<Agent*>(agents), args...);
}

}  // namespace fedge::aggregator::testing
