// Federated averaging (McMahan et al., 2017) over tensor-bundle deltas:
//   new_global = global + sum_i n_i * delta_i / sum_i n_i
// The accumulator keeps one running weighted sum shaped like the model, so the
// aggregator's memory is O(model), not O(agents x model).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::aggregator {

// Running sum of weighted deltas shaped like a reference bundle. Not thread-safe.
class WeightedDeltaSum {
 public:
  // Zeros shaped like `layout` (names and shapes; values are ignored).
  explicit WeightedDeltaSum(const TensorBundle& layout);

  // Adds weight * delta. INVALID_ARGUMENT (and the sum unchanged) if the weight
  // is not a positive finite number, the layout differs from the reference, or
  // a value is not finite.
  Status Add(const TensorBundle& delta, double weight);

  // Returns global + scale * (sum / total_weight), in `global`'s tensor order
  // (scale 1: global + the mean, bit for bit as without it).
  // FAILED_PRECONDITION if nothing was added; INVALID_ARGUMENT if `global`'s
  // layout differs from the reference.
  StatusOr<TensorBundle> ApplyMean(const TensorBundle& global, double scale = 1.0) const;

  int count() const { return count_; }
  double total_weight() const { return total_weight_; }

 private:
  TensorBundle layout_;                            // names and shapes only
  std::unordered_map<std::string, size_t> index_;  // name -> position in sums_
  std::vector<std::vector<double>> sums_;          // double: weights reach 1e6+
  double total_weight_ = 0;
  int count_ = 0;
};

struct WeightedDelta {
  const TensorBundle* delta;  // not owned
  double weight;              // e.g. the agent's num_examples
};

// Pure FedAvg over a list of deltas (see file comment). Errors as in
// WeightedDeltaSum::Add / ApplyMean (no deltas: FAILED_PRECONDITION).
StatusOr<TensorBundle> FedAvg(const TensorBundle& global, const std::vector<WeightedDelta>& deltas);

// True if every value of `bundle` is finite; otherwise names the first offender.
Status CheckFinite(const TensorBundle& bundle);

}  // namespace fedge::aggregator
