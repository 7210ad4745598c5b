#include "fedge/aggregator/strategy.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <sstream>
#include <vector>

#include "fedge/aggregator/fedavg.h"
#include "fedge/aggregator/lora_aggregation.h"

namespace fedge::aggregator {

Status AggregationStrategy::RestoreState(const TensorBundle& state) {
  if (state.tensors.empty()) return OkStatus();
  return InvalidArgumentError("strategy " + std::string(name()) + " keeps no state across rounds, but the " +
                              "checkpoint holds " + std::to_string(state.tensors.size()) + " state tensors");
}

double L2Norm(const TensorBundle& bundle) {
  double sum = 0;
  for (const NamedTensor& t : bundle.tensors) {
    for (float x : t.values) sum += static_cast<double>(x) * static_cast<double>(x);
  }
  return std::sqrt(sum);
}

Status CheckNormBound(double norm, double bound) {
  if (bound <= 0 || norm <= bound) return OkStatus();
  std::ostringstream msg;
  msg.precision(6);
  msg << "norm " << norm << " exceeds bound " << bound;
  return InvalidArgumentError(msg.str());
}

double ScheduledLearningRate(double base, std::string_view schedule, int64_t round, int64_t total_rounds) {
  if (total_rounds < 1) return base;
  const double r = static_cast<double>(std::clamp<int64_t>(round, 1, total_rounds));
  const double progress = (r - 1) / static_cast<double>(total_rounds);  // in [0, 1)
  if (schedule == "linear") return base * (1 - progress);
  constexpr double kPi = 3.14159265358979323846;
  if (schedule == "cosine") return base * (1 + std::cos(kPi * progress)) / 2;
  return base;
}

namespace {

// Zeros shaped like `layout`.
TensorBundle Zeros(const TensorBundle& layout) {
  TensorBundle out;
  for (const NamedTensor& t : layout.tensors)
    out.tensors.push_back(NamedTensor{t.name, t.shape, std::vector<float>(t.values.size(), 0.0f)});
  return out;
}

// A strategy's per-coordinate state (momentum, control variate), or zeros shaped
// like `global` while it is empty (before the first round). INVALID_ARGUMENT,
// with `what` as context, if the state's layout is not `global`'s.
StatusOr<TensorBundle> StateOrZeros(const TensorBundle& state, const TensorBundle& global,
                                    const std::string& what) {
  TensorBundle out = state.tensors.empty() ? Zeros(global) : state;
  FEDGE_RETURN_IF_ERROR(CheckSameLayout(global, out).WithContext(what));
  return out;
}

// Checkpoint names of strategy state: `state` holds `bundle`'s tensors as
// prefix + name ("v/encoder.w").
void AppendPrefixed(std::string_view prefix, const TensorBundle& bundle, TensorBundle* state) {
  for (const NamedTensor& t : bundle.tensors)
    state->tensors.push_back(NamedTensor{std::string(prefix) + t.name, t.shape, t.values});
}

// The reverse of AppendPrefixed for one tensor: if `t` is named prefix + name,
// appends it to `out` as name and returns true; otherwise false.
bool TakePrefixed(std::string_view prefix, const NamedTensor& t, TensorBundle* out) {
  if (t.name.rfind(prefix, 0) != 0) return false;
  out->tensors.push_back(NamedTensor{t.name.substr(prefix.size()), t.shape, t.values});
  return true;
}

// The reverse of AppendPrefixed for a state of one bundle: INVALID_ARGUMENT,
// with `what` as context, if a tensor is not named prefix + name.
StatusOr<TensorBundle> TakeAllPrefixed(std::string_view prefix, const TensorBundle& state,
                                       std::string_view what) {
  TensorBundle out;
  for (const NamedTensor& t : state.tensors) {
    if (!TakePrefixed(prefix, t, &out)) {
      return InvalidArgumentError(std::string(what) + ": unexpected tensor \"" + t.name + "\"");
    }
  }
  return out;
}

// Base of the strategies that fold each update into the example-weighted sum
// of the round's deltas as it arrives (FedAvg and the server optimizers on its
// mean). Subclasses say what a round's sum does to the global model.
class WeightedSumStrategy : public AggregationStrategy {
 public:
  explicit WeightedSumStrategy(std::string_view name) : name_(name) {}
  std::string_view name() const override { return name_; }
  void Begin(const TensorBundle& global) override { sum_.emplace(global); }
  Status Add(const TensorBundle& delta, int64_t num_examples) override {
    if (!sum_) return FailedPreconditionError("strategy: Add before Begin");
    return sum_->Add(delta, static_cast<double>(num_examples));
  }
  int count() const override { return sum_ ? sum_->count() : 0; }
  StatusOr<TensorBundle> Finish(const TensorBundle& global) override {
    if (!sum_) return FailedPreconditionError("strategy: Finish before Begin");
    return Step(global, *sum_);
  }

 protected:
  // The new global model from `global` and the round's sum (Begin was called).
  virtual StatusOr<TensorBundle> Step(const TensorBundle& global, const WeightedDeltaSum& sum) = 0;

  // The example-weighted mean delta of the round, in `global`'s tensor order.
  static StatusOr<TensorBundle> MeanDelta(const TensorBundle& global, const WeightedDeltaSum& sum) {
    return sum.ApplyMean(Zeros(global));
  }

 private:
  std::string name_;
  std::optional<WeightedDeltaSum> sum_;
};

// FedAvg; also the server side of FedProx, whose proximal term lives in the
// agents' local objective (spec.strategy.proximalMu is sent with each task).
class FedAvgStrategy : public WeightedSumStrategy {
 public:
  using WeightedSumStrategy::WeightedSumStrategy;

 protected:
  StatusOr<TensorBundle> Step(const TensorBundle& global, const WeightedDeltaSum& sum) override {
    return sum.ApplyMean(global);
  }
};

// FedAvgM (Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical Data Distribution
// for Federated Visual Classification"): server momentum on the example-weighted mean
// delta D, with server learning rate 1:
//   v = beta v + D,   x = x + v
// beta = 0 is FedAvg. v is kept as float32 exactly as checkpointed, so a restored
// aggregator continues bit-for-bit.
class FedAvgMStrategy : public WeightedSumStrategy {
 public:
  FedAvgMStrategy(std::string_view name, double beta) : WeightedSumStrategy(name), beta_(beta) {}
  TensorBundle SaveState() const override {
    TensorBundle state;
    AppendPrefixed("v/", v_, &state);
    return state;
  }
  Status RestoreState(const TensorBundle& state) override {
    FEDGE_ASSIGN_OR_RETURN(v_, TakeAllPrefixed("v/", state, "momentum state"));
    return OkStatus();
  }

 protected:
  StatusOr<TensorBundle> Step(const TensorBundle& global, const WeightedDeltaSum& sum) override {
    FEDGE_ASSIGN_OR_RETURN(TensorBundle mean, MeanDelta(global, sum));
    FEDGE_ASSIGN_OR_RETURN(TensorBundle v, StateOrZeros(v_, global, "momentum state"));
    TensorBundle out = global;
    for (NamedTensor& x : out.tensors) {
      const std::vector<float>& d = mean.Find(x.name)->values;
      std::vector<float>& vt = v.Find(x.name)->values;
      for (size_t i = 0; i < x.values.size(); ++i) {
        vt[i] = static_cast<float>(beta_ * static_cast<double>(vt[i]) + static_cast<double>(d[i]));
        x.values[i] = static_cast<float>(static_cast<double>(x.values[i]) + static_cast<double>(vt[i]));
      }
    }
    v_ = std::move(v);
    return out;
  }

 private:
  double beta_;
  TensorBundle v_;  // empty until the first round
};

// SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for
// Federated Learning", Algorithm 1 with option II control variates), server side.
// Each agent keeps its control variate c_i (agent node state) and corrects every
// local step by (c - c_i); after K local steps at learning rate eta it sets
//   c_i+ = c_i - c + (x - y_i) / (K eta)
// so  Delta c_i = c_i+ - c_i = -c - Delta y_i / (K eta),  with Delta y_i = y_i - x the
// model delta it uploads. The server knows c, K and eta (it hands them out), so it
// derives Delta c_i from Delta y_i exactly instead of receiving it: the second upload
// of the paper costs no bytes here. With the round's participants S of N agents:
//   x = x + eta_g sum_i n_i Delta y_i / sum_i n_i   (example-weighted, as FedAvg at eta_g 1)
//   c = c + (1/N) sum_{i in S} Delta c_i = (1 - |S|/N) c - sum_{i in S} Delta y_i / (N K eta)
// (the paper's c update, unweighted; it does not depend on eta_g). eta_g is the paper's
// global step size (spec.strategy.globalLearningRate, default 1). The equivalence needs
// every agent to run the K steps at the eta of the task (the agent checks it) and to
// see the Delta y_i the server folds in: a lossy codec's error feedback carries the
// difference into the next round, as it does for the model. c is kept as float32 exactly as
// checkpointed and handed out, so a restored aggregator continues bit-for-bit.
class ScaffoldStrategy : public WeightedSumStrategy {
 public:
  ScaffoldStrategy(std::string_view name, double global_learning_rate)
      : WeightedSumStrategy(name), eta_g_(global_learning_rate), control_(std::make_shared<std::string>()) {}
  void SetRoundContext(const RoundContext& context) override { context_ = context; }
  void Begin(const TensorBundle& global) override {
    WeightedSumStrategy::Begin(global);
    plain_.emplace(global);
  }
  Status Add(const TensorBundle& delta, int64_t num_examples) override {
    if (!plain_) return FailedPreconditionError("strategy: Add before Begin");
    // Both sums or neither: check with the plain sum first (weight 1 is always valid).
    WeightedDeltaSum plain = *plain_;
    FEDGE_RETURN_IF_ERROR(plain.Add(delta, 1.0));
    FEDGE_RETURN_IF_ERROR(WeightedSumStrategy::Add(delta, num_examples));
    plain_ = std::move(plain);
    return OkStatus();
  }
  std::shared_ptr<const std::string> ServerControl() const override { return control_; }
  TensorBundle SaveState() const override {
    TensorBundle state;
    AppendPrefixed("c/", c_, &state);
    return state;
  }
  Status RestoreState(const TensorBundle& state) override {
    FEDGE_ASSIGN_OR_RETURN(TensorBundle c, TakeAllPrefixed("c/", state, "scaffold state"));
    return SetControl(std::move(c));
  }

 protected:
  // `weighted` is n_i Delta y_i (the model); plain_ is Delta y_i (the control variate).
  StatusOr<TensorBundle> Step(const TensorBundle& global, const WeightedDeltaSum& weighted) override {
    const double k_eta = static_cast<double>(context_.local_steps) * context_.learning_rate;
    if (!(k_eta > 0) || context_.population < 1) {
      return FailedPreconditionError(
          "scaffold: the round context has no local steps, learning rate or agents");
    }
    const int64_t participants = plain_->count();
    // More participants than agents (an agent that left after it answered):
    // the paper's N is at least |S|.
    const double n = static_cast<double>(std::max<int64_t>(context_.population, participants));
    FEDGE_ASSIGN_OR_RETURN(TensorBundle out, weighted.ApplyMean(global, eta_g_));
    FEDGE_ASSIGN_OR_RETURN(TensorBundle mean_dy, MeanDelta(global, *plain_));
    FEDGE_ASSIGN_OR_RETURN(TensorBundle c, StateOrZeros(c_, global, "scaffold control variate"));
    const double keep = 1.0 - static_cast<double>(participants) / n;
    const double scale = static_cast<double>(participants) / (n * k_eta);  // sum = count * mean
    for (NamedTensor& ct : c.tensors) {
      const std::vector<float>& d = mean_dy.Find(ct.name)->values;
      for (size_t i = 0; i < ct.values.size(); ++i) {
        ct.values[i] =
            static_cast<float>(keep * static_cast<double>(ct.values[i]) - scale * static_cast<double>(d[i]));
      }
    }
    FEDGE_RETURN_IF_ERROR(SetControl(std::move(c)));
    return out;
  }

 private:
  // c_ = c and control_ = Encode(c), or neither.
  Status SetControl(TensorBundle c) {
    FEDGE_ASSIGN_OR_RETURN(std::shared_ptr<const std::string> encoded, Encode(c));
    c_ = std::move(c);
    control_ = std::move(encoded);
    return OkStatus();
  }

  static StatusOr<std::shared_ptr<const std::string>> Encode(const TensorBundle& c) {
    if (c.tensors.empty()) return std::shared_ptr<const std::string>(std::make_shared<std::string>());
    EncodeOptions eo;
    eo.codec = Codec::kFp32;
    eo.zstd = true;
    eo.zstd_min_saving = 0;  // sent to every agent, like the global (EngineOptions::global_encoding)
    FEDGE_ASSIGN_OR_RETURN(std::string bytes, EncodeBundle(c, eo));
    return std::shared_ptr<const std::string>(std::make_shared<std::string>(std::move(bytes)));
  }

  double eta_g_;  // global step size
  RoundContext context_;
  std::optional<WeightedDeltaSum> plain_;       // Delta y_i: the control variate
  TensorBundle c_;                              // empty until the first round
  std::shared_ptr<const std::string> control_;  // Encode(c_); never null
};

// Server optimizers of Reddi et al. 2021 ("Adaptive Federated Optimization",
// Algorithm 2). The pseudo-gradient is the example-weighted mean delta D:
//   m = b1 m + (1 - b1) D
//   v = v + D^2                              (adagrad)
//   v = b2 v + (1 - b2) D^2                  (adam)
//   v = v - (1 - b2) D^2 sign(v - D^2)       (yogi)
//   x = x + eta m / (sqrt(v) + tau)
// m and v start at 0 (as Flower and FedML do; the paper allows v0 >= tau^2)
// and there is no bias correction (the paper has none). m and v are kept as
// float32 exactly as checkpointed, and every step reads them back the same
// way, so a restored aggregator continues bit-for-bit.
class ServerOptimizerStrategy : public WeightedSumStrategy {
 public:
  enum class Variant { kAdagrad, kAdam, kYogi };
  ServerOptimizerStrategy(std::string_view name, Variant variant, const StrategySpec& spec)
      : WeightedSumStrategy(name),
        variant_(variant),
        eta_(spec.serverLearningRate),
        b1_(spec.beta1),
        b2_(spec.beta2),
        tau_(spec.tau) {}

  TensorBundle SaveState() const override {
    TensorBundle state;
    if (m_.tensors.empty()) return state;
    AppendPrefixed("m/", m_, &state);
    AppendPrefixed("v/", v_, &state);
    // float32 holds integers exactly up to 2^24 rounds.
    state.tensors.push_back(NamedTensor{"step", {1}, {static_cast<float>(step_)}});
    return state;
  }

  Status RestoreState(const TensorBundle& state) override {
    if (state.tensors.empty()) {
      m_ = {};
      v_ = {};
      step_ = 0;
      return OkStatus();
    }
    TensorBundle m, v;
    std::optional<int64_t> step;
    for (const NamedTensor& t : state.tensors) {
      if (TakePrefixed("m/", t, &m) || TakePrefixed("v/", t, &v)) continue;
      if (t.name == "step" && t.values.size() == 1) {
        step = static_cast<int64_t>(t.values[0]);
      } else {
        return InvalidArgumentError("optimizer state: unexpected tensor \"" + t.name + "\"");
      }
    }
    if (!step) return InvalidArgumentError("optimizer state: no step");
    FEDGE_RETURN_IF_ERROR(CheckSameLayout(m, v).WithContext("optimizer state: m and v differ"));
    m_ = std::move(m);
    v_ = std::move(v);
    step_ = *step;
    return OkStatus();
  }

 protected:
  StatusOr<TensorBundle> Step(const TensorBundle& global, const WeightedDeltaSum& sum) override {
    FEDGE_ASSIGN_OR_RETURN(TensorBundle mean, MeanDelta(global, sum));
    FEDGE_ASSIGN_OR_RETURN(TensorBundle m, StateOrZeros(m_, global, "optimizer state m"));
    FEDGE_ASSIGN_OR_RETURN(TensorBundle v, StateOrZeros(v_, global, "optimizer state v"));
    TensorBundle out = global;
    for (size_t ti = 0; ti < out.tensors.size(); ++ti) {
      NamedTensor& x = out.tensors[ti];
      const std::vector<float>& d = mean.Find(x.name)->values;
      std::vector<float>& mt = m.Find(x.name)->values;
      std::vector<float>& vt = v.Find(x.name)->values;
      for (size_t i = 0; i < x.values.size(); ++i) {
        const double di = d[i], d2 = di * di;
        const double mi = b1_ * static_cast<double>(mt[i]) + (1 - b1_) * di;
        const double vp = vt[i];
        double vi = 0;
        switch (variant_) {
          case Variant::kAdagrad:
            vi = vp + d2;
            break;
          case Variant::kAdam:
            vi = b2_ * vp + (1 - b2_) * d2;
            break;
          case Variant::kYogi: {
            const double diff = vp - d2;
            const double sign = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : 0.0);
            vi = vp - (1 - b2_) * d2 * sign;
            break;
          }
        }
        mt[i] = static_cast<float>(mi);
        vt[i] = static_cast<float>(vi);
        const double step =
            eta_ * static_cast<double>(mt[i]) / (std::sqrt(static_cast<double>(vt[i])) + tau_);
        x.values[i] = static_cast<float>(static_cast<double>(x.values[i]) + step);
      }
    }
    m_ = std::move(m);
    v_ = std::move(v);
    ++step_;
    return out;
  }

 private:
  Variant variant_;
  double eta_, b1_, b2_, tau_;
  TensorBundle m_, v_;  // empty until the first Finish
  int64_t step_ = 0;
};

// Base of the strategies that need every update. They ignore num_examples:
// weighting by a self-reported count would hand a Byzantine agent the
// weight it claims.
class BufferingStrategy : public AggregationStrategy {
 public:
  BufferingStrategy(std::string_view name, int max_updates) : name_(name), max_(max_updates) {}
  std::string_view name() const override { return name_; }
  bool NeedsAllUpdates() const override { return true; }
  int MaxUpdates() const override { return max_; }
  void Begin(const TensorBundle& global) override {
    layout_ = global;
    begun_ = true;
    updates_.clear();
  }
  Status Add(const TensorBundle& delta, int64_t num_examples) override {
    if (!begun_) return FailedPreconditionError("strategy: Add before Begin");
    if (num_examples <= 0) return InvalidArgumentError("num_examples must be > 0");
    if (static_cast<int>(updates_.size()) >= max_) {
      return ResourceExhaustedError(name_ + " holds every update and is full (" + std::to_string(max_) +
                                    " updates, spec.strategy.maxBufferedUpdates)");
    }
    FEDGE_RETURN_IF_ERROR(CheckSameLayout(layout_, delta));
    FEDGE_RETURN_IF_ERROR(CheckFinite(delta));
    updates_.push_back(delta);
    return OkStatus();
  }
  int count() const override { return static_cast<int>(updates_.size()); }
  StatusOr<TensorBundle> Finish(const TensorBundle& global) override {
    if (updates_.empty()) return FailedPreconditionError("no updates to aggregate");
    FEDGE_RETURN_IF_ERROR(CheckSameLayout(layout_, global));
    return Combine(global);
  }

 protected:
  virtual StatusOr<TensorBundle> Combine(const TensorBundle& global) const = 0;
  std::string name_;
  int max_;
  bool begun_ = false;
  TensorBundle layout_;
  std::vector<TensorBundle> updates_;
};

// Coordinate-wise: each coordinate of the new global is global + reduce(the
// n update values at that coordinate, sorted ascending).
template <typename Reduce>
TensorBundle Coordinatewise(const TensorBundle& global, const std::vector<TensorBundle>& updates,
                            Reduce reduce) {
  TensorBundle out = global;
  std::vector<double> column(updates.size());
  for (NamedTensor& x : out.tensors) {
    std::vector<const std::vector<float>*> cols;
    for (const TensorBundle& u : updates) cols.push_back(&u.Find(x.name)->values);
    for (size_t i = 0; i < x.values.size(); ++i) {
      for (size_t k = 0; k < cols.size(); ++k) column[k] = (*cols[k])[i];
      std::sort(column.begin(), column.end());
      x.values[i] = static_cast<float>(static_cast<double>(x.values[i]) + reduce(column));
    }
  }
  return out;
}

// Coordinate-wise median (Yin et al. 2018); the mean of the middle two for
// an even count.
class MedianStrategy : public BufferingStrategy {
 public:
  using BufferingStrategy::BufferingStrategy;

 protected:
  StatusOr<TensorBundle> Combine(const TensorBundle& global) const override {
    return Coordinatewise(global, updates_, [](const std::vector<double>& c) {
      const size_t n = c.size();
      return n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2;
    });
  }
};

// Coordinate-wise trimmed mean (Yin et al. 2018): drops floor(beta n) values
// from each end and averages the rest.
class TrimmedMeanStrategy : public BufferingStrategy {
 public:
  TrimmedMeanStrategy(std::string_view name, int max_updates, double beta)
      : BufferingStrategy(name, max_updates), beta_(beta) {}

 protected:
  StatusOr<TensorBundle> Combine(const TensorBundle& global) const override {
    const size_t n = updates_.size();
    const size_t k = static_cast<size_t>(std::floor(beta_ * static_cast<double>(n)));
    if (2 * k >= n) {  // unreachable for beta < 0.5; kept against a bad spec
      return FailedPreconditionError("trimmed mean trims " + std::to_string(k) + " from each end of " +
                                     std::to_string(n) + " updates: nothing left");
    }
    return Coordinatewise(global, updates_, [k](const std::vector<double>& c) {
      double sum = 0;
      for (size_t i = k; i < c.size() - k; ++i) sum += c[i];
      return sum / static_cast<double>(c.size() - 2 * k);
    });
  }

 private:
  double beta_;
};

// Krum and Multi-Krum (Blanchard et al. 2017): each update's score is the
// sum of squared L2 distances to its n - f - 2 nearest other updates; the m
// lowest-scored updates are averaged (Krum: m = 1; Multi-Krum default m = n - f).
// Ties go to the earlier arrival.
class KrumStrategy : public BufferingStrategy {
 public:
  KrumStrategy(std::string_view name, int max_updates, int f, int m)
      : BufferingStrategy(name, max_updates), f_(f), m_(m) {}

 protected:
  StatusOr<TensorBundle> Combine(const TensorBundle& global) const override {
    const int n = static_cast<int>(updates_.size());
    const int neighbours = n - f_ - 2;
    if (neighbours < 1) {
      return FailedPreconditionError(name_ + " with f = " + std::to_string(f_) + " needs at least f + 3 = " +
                                     std::to_string(f_ + 3) + " updates, got " + std::to_string(n));
    }
    std::vector<std::vector<double>> dist(n, std::vector<double>(n, 0.0));
    for (int i = 0; i < n; ++i) {
      for (int j = i + 1; j < n; ++j) {
        double d = 0;
        for (const NamedTensor& a : updates_[i].tensors) {
          const std::vector<float>& b = updates_[j].Find(a.name)->values;
          for (size_t k = 0; k < a.values.size(); ++k) {
            const double diff = static_cast<double>(a.values[k]) - static_cast<double>(b[k]);
            d += diff * diff;
          }
        }
        dist[i][j] = dist[j][i] = d;
      }
    }
    std::vector<double> score(n);
    for (int i = 0; i < n; ++i) {
      std::vector<double> others;
      for (int j = 0; j < n; ++j) {
        if (j != i) others.push_back(dist[i][j]);
      }
      std::sort(others.begin(), others.end());
      score[i] = std::accumulate(others.begin(), others.begin() + neighbours, 0.0);
    }
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] < score[b]; });
    const int m = std::clamp(m_ > 0 ? m_ : n - f_, 1, n);
    TensorBundle out = global;
    for (NamedTensor& x : out.tensors) {
      std::vector<double> sum(x.values.size(), 0.0);
      for (int s = 0; s < m; ++s) {
        const std::vector<float>& u = updates_[order[s]].Find(x.name)->values;
        for (size_t k = 0; k < sum.size(); ++k) sum[k] += u[k];
      }
      for (size_t k = 0; k < sum.size(); ++k) {
        x.values[k] = static_cast<float>(static_cast<double>(x.values[k]) + sum[k] / m);
      }
    }
    return out;
  }

 private:
  int f_, m_;
};

// Norm bounding around any strategy: rejects updates whose L2 norm exceeds
// max_norm, then scales the rest down to at most clip (Sun et al. 2019,
// "Can you really backdoor federated learning?").
class NormBoundedStrategy : public AggregationStrategy {
 public:
  NormBoundedStrategy(std::unique_ptr<AggregationStrategy> inner, double clip, double max_norm)
      : inner_(std::move(inner)), clip_(clip), max_norm_(max_norm) {}
  std::string_view name() const override { return inner_->name(); }
  void Begin(const TensorBundle& global) override { inner_->Begin(global); }
  Status Add(const TensorBundle& delta, int64_t num_examples) override {
    const double norm = L2Norm(delta);
    FEDGE_RETURN_IF_ERROR(CheckNormBound(norm, max_norm_));
    if (clip_ <= 0 || norm <= clip_) return inner_->Add(delta, num_examples);
    TensorBundle clipped = delta;
    const double scale = clip_ / norm;
    for (NamedTensor& t : clipped.tensors) {
      for (float& x : t.values) x = static_cast<float>(static_cast<double>(x) * scale);
    }
    return inner_->Add(clipped, num_examples);
  }
  int count() const override { return inner_->count(); }
  void SetRoundContext(const RoundContext& context) override { inner_->SetRoundContext(context); }
  std::shared_ptr<const std::string> ServerControl() const override { return inner_->ServerControl(); }
  StatusOr<TensorBundle> Finish(const TensorBundle& global) override { return inner_->Finish(global); }
  bool NeedsAllUpdates() const override { return inner_->NeedsAllUpdates(); }
  int MaxUpdates() const override { return inner_->MaxUpdates(); }
  TensorBundle SaveState() const override { return inner_->SaveState(); }
  Status RestoreState(const TensorBundle& state) override { return inner_->RestoreState(state); }

 private:
  std::unique_ptr<AggregationStrategy> inner_;
  double clip_, max_norm_;
};

StatusOr<std::unique_ptr<AggregationStrategy>> MakeInner(const StrategySpec& spec) {
  using Ptr = std::unique_ptr<AggregationStrategy>;
  const std::string& n = spec.name;
  if (n == "fedavg" || n == "fedprox") return Ptr(std::make_unique<FedAvgStrategy>(n));
  if (n == "fedavgm") {
    if (!(spec.serverMomentum >= 0 && spec.serverMomentum < 1)) {
      return InvalidArgumentError("spec.strategy.serverMomentum: must be in [0, 1)");
    }
    return Ptr(std::make_unique<FedAvgMStrategy>(n, spec.serverMomentum));
  }
  if (n == "scaffold") {
    // The server derives each Delta c_i from the update it folds in; an update
    // scaled on the way (norm clipping) would make c disagree with the agents' c_i.
    if (spec.clipNorm > 0 || spec.maxUpdateNorm > 0) {
      return InvalidArgumentError(
          "spec.strategy: scaffold does not compose with clipNorm or maxUpdateNorm (a clipped update "
          "breaks the control variates); set both to 0");
    }
    if (!(spec.globalLearningRate > 0)) {
      return InvalidArgumentError("spec.strategy.globalLearningRate: must be > 0");
    }
    return Ptr(std::make_unique<ScaffoldStrategy>(n, spec.globalLearningRate));
  }
  if (n == "fedadam" || n == "fedyogi" || n == "fedadagrad") {
    if (!(spec.serverLearningRate > 0) || !(spec.beta1 >= 0 && spec.beta1 < 1) ||
        !(spec.beta2 >= 0 && spec.beta2 < 1) || !(spec.tau > 0)) {
      return InvalidArgumentError("spec.strategy: " + n +
                                  " needs serverLearningRate > 0, beta1 and beta2 in [0, 1), tau > 0");
    }
    using V = ServerOptimizerStrategy::Variant;
    const V variant = n == "fedadam" ? V::kAdam : (n == "fedyogi" ? V::kYogi : V::kAdagrad);
    return Ptr(std::make_unique<ServerOptimizerStrategy>(n, variant, spec));
  }
  if (n == "median" || n == "trimmed-mean" || n == "krum" || n == "multi-krum") {
    if (spec.maxBufferedUpdates < 1) {
      return InvalidArgumentError("spec.strategy.maxBufferedUpdates: must be >= 1, got " +
                                  std::to_string(spec.maxBufferedUpdates));
    }
    if (n == "median") return Ptr(std::make_unique<MedianStrategy>(n, spec.maxBufferedUpdates));
    if (n == "trimmed-mean") {
      if (!(spec.trimFraction >= 0 && spec.trimFraction < 0.5)) {
        return InvalidArgumentError("spec.strategy.trimFraction: must be in [0, 0.5)");
      }
      return Ptr(std::make_unique<TrimmedMeanStrategy>(n, spec.maxBufferedUpdates, spec.trimFraction));
    }
    if (spec.byzantineClients < 0 || spec.multiKrumM < 0) {
      return InvalidArgumentError("spec.strategy: byzantineClients and multiKrumM must be >= 0");
    }
    return Ptr(std::make_unique<KrumStrategy>(n, spec.maxBufferedUpdates, spec.byzantineClients,
                                              n == "krum" ? 1 : spec.multiKrumM));
  }
  return InvalidArgumentError(
      "spec.strategy.name: unknown strategy \"" + n +
      "\" (known: fedavg, fedprox, fedavgm, scaffold, fedadam, fedyogi, fedadagrad, median, "
      "trimmed-mean, krum, multi-krum)");
}

}  // namespace

StatusOr<std::unique_ptr<AggregationStrategy>> MakeStrategy(const StrategySpec& spec) {
  return MakeStrategy(spec, AdapterSpec{});
}

StatusOr<std::unique_ptr<AggregationStrategy>> MakeStrategy(const StrategySpec& spec,
                                                            const AdapterSpec& adapter) {
  FEDGE_ASSIGN_OR_RETURN(std::unique_ptr<AggregationStrategy> inner, MakeInner(spec));
  FEDGE_ASSIGN_OR_RETURN(inner, WrapForLora(std::move(inner), spec, adapter));
  if (spec.clipNorm < 0 || spec.maxUpdateNorm < 0) {
    return InvalidArgumentError("spec.strategy: clipNorm and maxUpdateNorm must be >= 0");
  }
  if (spec.clipNorm == 0 && spec.maxUpdateNorm == 0) return inner;
  return std::unique_ptr<AggregationStrategy>(
      std::make_unique<NormBoundedStrategy>(std::move(inner), spec.clipNorm, spec.maxUpdateNorm));
}

}  // namespace fedge::aggregator
