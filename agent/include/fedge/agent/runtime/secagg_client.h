// The agent's side of secure aggregation over protocol v1 (TrainingConfig.
// secure_aggregation; the protocol itself is secagg/include/fedge/secagg/protocol.h):
// after training, advertise fresh keys, share the secrets with the roster's
// neighbours, upload the masked update, and answer the unmask phase. Each phase's
// RPC is repeated while the aggregator answers ready = false.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include <grpcpp/grpcpp.h>

#include "fedge.grpc.pb.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

struct SecAggHooks {
  // The request header (job, agent, session) for every call.
  std::function<fedge::v1::RequestHeader()> header;
  // Waits between polls; false once the agent is stopping (the round is abandoned).
  std::function<bool(std::chrono::milliseconds)> sleep;
  // Registers the RPC in flight so a Stop() can cancel it; false: stopping.
  std::function<bool(grpc::ClientContext*)> begin_call = [](grpc::ClientContext*) { return true; };
  std::function<void()> end_call = [] {};
  // Asked before "share", "masked" and "unmask": false leaves the round there (the
  // agent drops out). Fault injection for tests; unset: always go on.
  std::function<bool(std::string_view phase)> before_phase;
  std::chrono::milliseconds call_deadline{30'000};
  size_t chunk_bytes = 4u << 20;  // masked input per SecAggSubmitMasked call
  uint64_t seed = 0;              // rounding (and noise) seed; 0: from the CSPRNG
  int64_t feedback_examples = 0;  // reported with the masked input (informational)
};

struct SecAggReport {
  bool unmasked = false;      // the agent answered the unmask phase (its update counts)
  std::string left_at;        // phase the agent left at ("" when it finished), and why
  uint64_t masked_bytes = 0;  // the masked input's size
  uint64_t bytes_sent = 0;    // every SecAgg request's serialized size
  int64_t values = 0;
  int ring_bits = 0;
  int64_t clipped = 0;          // values clipped to the ring's range
  double mask_seconds = 0;      // CPU-side work: shares, masking, unmask answer
  double protocol_seconds = 0;  // wall time of the whole exchange
};

// Runs secure aggregation of `delta` for `round` (see the file comment). The FedAvg
// weight sent under the mask is min(num_examples / config.max_weight, 1), or 1 when
// max_weight is 0. A FAILED_PRECONDITION from the aggregator (the round moved on
// without this agent) is not an error: the report says where the agent left.
// Transport errors are returned as they are.
StatusOr<SecAggReport> RunSecureAggregation(fedge::v1::Aggregator::Stub* stub, int64_t round,
                                            const fedge::v1::SecureAggregationConfig& config,
                                            const TensorBundle& delta, int64_t num_examples,
                                            const SecAggHooks& hooks);

}  // namespace fedge::agent
