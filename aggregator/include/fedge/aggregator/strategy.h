// Aggregation strategies: how a round's validated updates become the next
// global model. The round engine feeds updates one at a time as they arrive
// (Begin -> Add* -> Finish), so streaming strategies keep O(model) memory and
// strategies that need every update (median, Krum) can buffer them inside.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "fedge/job_spec.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::aggregator {

class AggregationStrategy {
 public:
  virtual ~AggregationStrategy() = default;
  virtual std::string_view name() const = 0;
  // Starts a round whose updates are deltas against `global`; drops prior state.
  virtual void Begin(const TensorBundle& global) = 0;
  // Folds in one update already validated by the engine (layout, finite).
  // On error the strategy's state is unchanged.
  virtual Status Add(const TensorBundle& delta, int64_t num_examples) = 0;
  // Number of updates folded in since Begin.
  virtual int count() const = 0;
  // The next global model. FAILED_PRECONDITION if no update was added.
  virtual StatusOr<TensorBundle> Finish(const TensorBundle& global) = 0;
};

// Builds the strategy named by spec.strategy.name. UNIMPLEMENTED for a known
// name not implemented yet, INVALID_ARGUMENT for an unknown one.
StatusOr<std::unique_ptr<AggregationStrategy>> MakeStrategy(const StrategySpec& spec);

}  // namespace fedge::aggregator
