// Plain functions behind a training round: the delta an agent submits and the
// seed it trains with.
#pragma once

#include <cstdint>
#include <string_view>

#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

// after - base, tensor by tensor, in `after`'s order. INVALID_ARGUMENT (naming
// the tensor) if the two bundles differ in names or shapes.
StatusOr<TensorBundle> ComputeDelta(const TensorBundle& after, const TensorBundle& base);

// Stable 64-bit hash of an agent id (FNV-1a; std::hash differs between builds).
uint64_t HashAgentId(std::string_view agent_id);

// The local training seed for a round: the job's seed mixed with the agent and
// the round (splitmix64), so agents sample different batches, every round
// differs, and a rerun of the same agent and round is reproducible.
uint64_t MixTrainingSeed(uint64_t job_seed, std::string_view agent_id, int64_t round);

}  // namespace fedge::agent
