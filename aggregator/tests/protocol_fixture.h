// A ProtocolHandler over a real RoundEngine (fake clock, no checkpoints) and
// the agent-side steps the protocol tests drive it with, as the gRPC service
// would: the shared base of the handler-level test fixtures.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "fedge/aggregator/clock.h"
#include "fedge/aggregator/metrics.h"
#include "fedge/aggregator/protocol_handler.h"
#include "fedge/aggregator/round_engine.h"
#include "test_util.h"

namespace fedge::aggregator::testing {

class ProtocolFixture : public ::testing::Test {
 protected:
  // A fresh engine for `spec` (job "ns/demo", two agents expected) and a handler over it.
  void MakeHandler(const JobSpec& spec, ProtocolOptions options) {
    auto engine = RoundEngine::Create(EngineOptionsFromSpec(spec, 2), &clock_, nullptr, &metrics_);
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    engine_ = std::move(*engine);
    handler_ = std::make_unique<ProtocolHandler>(engine_.get(), &metrics_, std::move(options));
  }

  // The agent's header for job "ns/demo", with the session its last Join got.
  v1::RequestHeader Header(const std::string& agent, uint32_t version = 1) {
    v1::RequestHeader h;
    h.set_protocol_version(version);
    h.set_job("ns/demo");
    h.set_agent_id(agent);
    h.set_session(sessions_[agent]);
    return h;
  }

  // Joins with 100 train and eval examples, declaring `layout`; keeps the session.
  Status JoinDeclaring(const std::string& agent, const TensorBundle& layout, const std::string& token = "") {
    v1::JoinRequest req;
    *req.mutable_header() = Header(agent);
    req.set_token(token);
    req.mutable_capabilities()->set_num_train_examples(100);
    req.mutable_capabilities()->set_num_eval_examples(100);
    DeclareLayout(layout, req.mutable_capabilities());
    v1::JoinResponse resp;
    Status s = handler_->Join(req, &resp);
    if (s.ok()) sessions_[agent] = resp.session();
    return s;
  }

  v1::Task GetTask(const std::string& agent) {
    v1::TaskRequest req;
    *req.mutable_header() = Header(agent);
    v1::Task task;
    EXPECT_TRUE(handler_->GetTask(req, &task).ok());
    return task;
  }

  // An update header for `data` (10 examples) with its size and checksum.
  v1::UpdateHeader UpdateHeaderFor(const std::string& agent, const std::string& data, int64_t round,
                                   int64_t base, bool is_delta) {
    v1::UpdateHeader h;
    *h.mutable_header() = Header(agent);
    h.set_round(round);
    h.set_base_version(base);
    h.set_num_examples(10);
    h.set_total_bytes(data.size());
    h.set_checksum(Sha256Hex(data));
    h.set_is_delta(is_delta);
    return h;
  }

  // Runs the SubmitUpdate steps the gRPC service runs, in `chunk`-byte pieces.
  v1::SubmitUpdateResponse Submit(const v1::UpdateHeader& header, const std::string& data, size_t chunk = 5) {
    v1::SubmitUpdateResponse response;
    bool rejected = false;
    Status s = handler_->BeginUpdate(header, &response, &rejected);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (rejected) return response;
    std::string buffer;
    for (size_t off = 0; off < data.size(); off += chunk) {
      if (!handler_->AppendChunk(header, data.substr(off, chunk), &buffer, &response)) return response;
    }
    return handler_->FinishUpdate(header, buffer);
  }

  FakeClock clock_;
  AggregatorMetrics metrics_;
  std::unique_ptr<RoundEngine> engine_;
  std::unique_ptr<ProtocolHandler> handler_;
  std::map<std::string, std::string> sessions_;
};

}  // namespace fedge::aggregator::testing
