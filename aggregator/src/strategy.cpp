#include "fedge/aggregator/strategy.h"

#include <optional>

#include "fedge/aggregator/fedavg.h"

namespace fedge::aggregator {
namespace {

// FedAvg; also the server side of FedProx, whose proximal term lives in the
// agents' local objective (spec.strategy.proximalMu is sent with each task).
class FedAvgStrategy : public AggregationStrategy {
 public:
  explicit FedAvgStrategy(std::string_view name) : name_(name) {}
  std::string_view name() const override { return name_; }
  void Begin(const TensorBundle& global) override { sum_.emplace(global); }
  Status Add(const TensorBundle& delta, int64_t num_examples) override {
    if (!sum_) return FailedPreconditionError("strategy: Add before Begin");
    return sum_->Add(delta, static_cast<double>(num_examples));
  }
  int count() const override { return sum_ ? sum_->count() : 0; }
  StatusOr<TensorBundle> Finish(const TensorBundle& global) override {
    if (!sum_) return FailedPreconditionError("strategy: Finish before Begin");
    return sum_->ApplyMean(global);
  }

 private:
  std::string name_;
  std::optional<WeightedDeltaSum> sum_;
};

}  // namespace

StatusOr<std::unique_ptr<AggregationStrategy>> MakeStrategy(const StrategySpec& spec) {
  if (spec.name == "fedavg" || spec.name == "fedprox") {
    return std::unique_ptr<AggregationStrategy>(std::make_unique<FedAvgStrategy>(spec.name));
  }
  static const char* kPlanned[] = {"fedadam",      "fedyogi", "fedadagrad",   "median",
                                   "trimmed-mean", "krum",    "norm-bounding"};
  for (const char* planned : kPlanned) {
    if (spec.name == planned) {
      return UnimplementedError("spec.strategy.name: \"" + spec.name +
                                "\" is not implemented yet; use fedavg or fedprox");
    }
  }
  return InvalidArgumentError("spec.strategy.name: unknown strategy \"" + spec.name +
                              "\" (known: fedavg, fedprox)");
}

}  // namespace fedge::aggregator
