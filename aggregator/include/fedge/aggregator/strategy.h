// Aggregation strategies: how a round's validated updates become the next
// global model. The round engine feeds updates one at a time as they arrive
// (Begin -> Add* -> Finish), so streaming strategies (the FedAvg family and the
// server optimizers) keep O(model) memory; strategies that need every update
// (median, trimmed mean, Krum) buffer them and say so (NeedsAllUpdates), and
// accept at most MaxUpdates() per round.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "fedge/job_spec.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::aggregator {

// What the round engine knows about a round beyond its updates; set before
// each Begin. Only SCAFFOLD reads it.
struct RoundContext {
  int64_t population = 0;    // agents in the job (N), participants or not
  int64_t local_steps = 0;   // K of the round's training task
  double learning_rate = 0;  // the local learning rate of the round's task (after the schedule)
};

class AggregationStrategy {
 public:
  virtual ~AggregationStrategy() = default;
  virtual std::string_view name() const = 0;
  // Starts a round whose updates are deltas against `global`; drops the
  // previous round's updates (state carried across rounds, such as optimizer
  // moments, is kept).
  virtual void Begin(const TensorBundle& global) = 0;
  // Folds in one update already validated by the engine (layout, finite).
  // On error the strategy's state is unchanged. A buffering strategy answers
  // RESOURCE_EXHAUSTED past MaxUpdates().
  virtual Status Add(const TensorBundle& delta, int64_t num_examples) = 0;
  // Number of updates folded in since Begin.
  virtual int count() const = 0;
  // The next global model. FAILED_PRECONDITION if no update was added (or,
  // for Krum, too few for its neighbour count). On error, state carried
  // across rounds is unchanged.
  virtual StatusOr<TensorBundle> Finish(const TensorBundle& global) = 0;

  // True if the strategy keeps every update of a round in memory.
  virtual bool NeedsAllUpdates() const { return false; }
  // Most updates accepted per round; 0: unbounded.
  virtual int MaxUpdates() const { return 0; }

  // Called by the engine before each Begin with the round's context.
  virtual void SetRoundContext(const RoundContext& /*context*/) {}
  // SCAFFOLD: the server control variate c, encoded (EncodeBundle, fp32, zstd),
  // handed to the agents with every training task; an empty string while c is
  // still 0 (before the first Finish). nullptr for every other strategy: the
  // task then carries no control variate.
  virtual std::shared_ptr<const std::string> ServerControl() const { return nullptr; }

  // State that survives rounds (server-optimizer m, v, step), as tensors so
  // it is checkpointed exactly; empty for stateless strategies.
  virtual TensorBundle SaveState() const { return {}; }
  // Restores SaveState()'s output. INVALID_ARGUMENT if it does not belong to
  // this strategy (a stateless strategy accepts only an empty bundle).
  virtual Status RestoreState(const TensorBundle& state);
};

// Builds the strategy named by spec.strategy.name, wrapped with norm clipping
// when spec.clipNorm > 0 and norm rejection when spec.maxUpdateNorm > 0.
// INVALID_ARGUMENT for an unknown name or out-of-range parameters.
StatusOr<std::unique_ptr<AggregationStrategy>> MakeStrategy(const StrategySpec& spec);

// As above, with the LoRA aggregation of `adapter` (lora_aggregation.h): with
// aggregation "product" the LoRA factors are re-factored from the exact
// average of B·A (inside the norm bounding, so clipped updates are what is
// multiplied). INVALID_ARGUMENT also for an unsupported combination.
StatusOr<std::unique_ptr<AggregationStrategy>> MakeStrategy(const StrategySpec& spec,
                                                            const AdapterSpec& adapter);

// Local learning rate for round `round` (1-based) of `total_rounds` under
// spec.rounds.learningRateSchedule: "linear" base * (1 - (r - 1) / R), "cosine"
// base * (1 + cos(pi (r - 1) / R)) / 2, anything else (the validator admits only
// "constant") base. Round 1 gets base; round is clamped to [1, R]. A pure function of
// the round number, which the checkpoint holds, so a restarted aggregator hands out
// the same rate.
double ScheduledLearningRate(double base, std::string_view schedule, int64_t round, int64_t total_rounds);

// L2 norm of every value of `bundle` taken together.
double L2Norm(const TensorBundle& bundle);

// OK if `bound` is 0 (off) or norm <= bound; otherwise INVALID_ARGUMENT
// "norm N exceeds bound B".
Status CheckNormBound(double norm, double bound);

}  // namespace fedge::aggregator
