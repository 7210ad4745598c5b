#include "fedge/aggregator/fedavg.h"

#include <cmath>

#include "fedge/quant_kernels.h"

namespace fedge::aggregator {

WeightedDeltaSum::WeightedDeltaSum(const TensorBundle& layout) {
  layout_.tensors.reserve(layout.tensors.size());
  sums_.reserve(layout.tensors.size());
  for (const NamedTensor& t : layout.tensors) {
    layout_.tensors.push_back(NamedTensor{t.name, t.shape, {}});
    index_[t.name] = sums_.size();
    sums_.emplace_back(t.values.size(), 0.0);
  }
}

Status CheckFinite(const TensorBundle& bundle) {
  for (const NamedTensor& t : bundle.tensors) {
    for (size_t i = 0; i < t.values.size(); ++i) {
      if (!std::isfinite(t.values[i])) {
        return InvalidArgumentError("tensor \"" + t.name + "\" has a non-finite value at index " +
                                    std::to_string(i));
      }
    }
  }
  return OkStatus();
}

namespace {

// Layout check against the stored names and shapes (the values of layout_
// are empty, so CheckSameLayout's shape comparison is what matters).
Status CheckLayout(const TensorBundle& layout, const std::unordered_map<std::string, size_t>& index,
                   const std::vector<std::vector<double>>& sums, const TensorBundle& other) {
  if (other.tensors.size() != layout.tensors.size()) {
    return InvalidArgumentError("layout mismatch: expected " + std::to_string(layout.tensors.size()) +
                                " tensors, got " + std::to_string(other.tensors.size()));
  }
  for (const NamedTensor& t : other.tensors) {
    auto it = index.find(t.name);
    if (it == index.end()) {
      return InvalidArgumentError("layout mismatch: unexpected tensor \"" + t.name + "\"");
    }
    const NamedTensor& ref = layout.tensors[it->second];
    if (ref.shape != t.shape || t.values.size() != sums[it->second].size()) {
      return InvalidArgumentError("layout mismatch: tensor \"" + t.name + "\" has a different shape");
    }
  }
  return OkStatus();
}

}  // namespace

Status WeightedDeltaSum::Add(const TensorBundle& delta, double weight) {
  if (!std::isfinite(weight) || weight <= 0) {
    return InvalidArgumentError("weight must be a positive finite number, got " + std::to_string(weight));
  }
  FEDGE_RETURN_IF_ERROR(CheckLayout(layout_, index_, sums_, delta));
  // Vectorised checks and sums (quant_kernels.h); the slow CheckFinite runs
  // only to name the offending value.
  for (const NamedTensor& t : delta.tensors) {
    if (!AllFinite(t.values.data(), t.values.size())) return CheckFinite(delta);
  }
  for (const NamedTensor& t : delta.tensors) {
    AccumulateWeighted(t.values.data(), t.values.size(), weight, sums_[index_.at(t.name)].data());
  }
  total_weight_ += weight;
  ++count_;
  return OkStatus();
}

StatusOr<TensorBundle> WeightedDeltaSum::ApplyMean(const TensorBundle& global, double scale) const {
  if (count_ == 0) return FailedPreconditionError("no updates to average");
  FEDGE_RETURN_IF_ERROR(CheckLayout(layout_, index_, sums_, global));
  TensorBundle out = global;
  for (NamedTensor& t : out.tensors) {
    const std::vector<double>& sum = sums_[index_.at(t.name)];
    for (size_t i = 0; i < t.values.size(); ++i) {
      t.values[i] = static_cast<float>(static_cast<double>(t.values[i]) + scale * (sum[i] / total_weight_));
    }
  }
  return out;
}

StatusOr<TensorBundle> FedAvg(const TensorBundle& global, const std::vector<WeightedDelta>& deltas) {
  WeightedDeltaSum sum(global);
  for (size_t i = 0; i < deltas.size(); ++i) {
    Status s = sum.Add(*deltas[i].delta, deltas[i].weight);
    if (!s.ok()) return s.WithContext("update " + std::to_string(i));
  }
  return sum.ApplyMean(global);
}

}  // namespace fedge::aggregator
