#include "fedge/aggregator/privacy_accountant.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace fedge::aggregator {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// log(exp(a) + exp(b)) without overflow.
double LogAdd(double a, double b) {
  if (a == -kInf) return b;
  if (b == -kInf) return a;
  double hi = std::max(a, b), lo = std::min(a, b);
  return hi + std::log1p(std::exp(lo - hi));
}

double LogBinomial(int n, int k) {
  return std::lgamma(n + 1.0) - std::lgamma(k + 1.0) - std::lgamma(n - k + 1.0);
}

}  // namespace

double SubsampledGaussianRdp(double q, double sigma, int order) {
  if (q == 0) return 0;
  if (sigma == 0) return kInf;
  const double a = static_cast<double>(order);
  if (q == 1) return a / (2 * sigma * sigma);
  const double log_q = std::log(q), log_1mq = std::log1p(-q);
  double log_a = -kInf;
  for (int k = 0; k <= order; ++k) {
    const double kk = static_cast<double>(k);
    log_a = LogAdd(log_a, LogBinomial(order, k) + kk * log_q + (a - kk) * log_1mq +
                              (kk * kk - kk) / (2 * sigma * sigma));
  }
  return log_a / (a - 1);
}

const std::vector<int>& RdpAccountant::DefaultOrders() {
  static const std::vector<int> orders = [] {
    std::vector<int> o;
    for (int a = 2; a <= 64; ++a) o.push_back(a);
    for (int a : {128, 256, 512}) o.push_back(a);
    return o;
  }();
  return orders;
}

RdpAccountant::RdpAccountant(std::vector<int> orders)
    : orders_(std::move(orders)), rdp_(orders_.size(), 0.0) {
  // Orders below 2 have no integer-order formula; drop them rather than mis-account.
  orders_.erase(std::remove_if(orders_.begin(), orders_.end(), [](int a) { return a < 2; }), orders_.end());
  rdp_.assign(orders_.size(), 0.0);
}

Status RdpAccountant::Compose(double sigma, double q, int64_t rounds) {
  if (!(q >= 0 && q <= 1))
    return InvalidArgumentError("sampling rate must be in [0, 1], got " + std::to_string(q));
  if (!(sigma >= 0) || !std::isfinite(sigma)) {
    return InvalidArgumentError("noise multiplier must be finite and >= 0, got " + std::to_string(sigma));
  }
  if (rounds < 0) return InvalidArgumentError("rounds must be >= 0");
  for (size_t i = 0; i < orders_.size(); ++i) {
    rdp_[i] += static_cast<double>(rounds) * SubsampledGaussianRdp(q, sigma, orders_[i]);
  }
  return OkStatus();
}

double RdpAccountant::Epsilon(double delta, int* best_order) const {
  double best = kInf;
  int at = 0;
  if (!(delta > 0 && delta < 1)) return kInf;
  for (size_t i = 0; i < orders_.size(); ++i) {
    const double a = orders_[i], r = rdp_[i];
    double eps;
    if (r < 0) {
      eps = 0;  // numerical noise of an empty composition
    } else if (delta * delta + std::expm1(-r) > 0) {
      eps = 0;  // δ already exceeds what the divergence allows at ε = 0
    } else {
      eps = r + std::log1p(-1 / a) - std::log(delta * a) / (a - 1);
    }
    if (eps < best) {
      best = eps;
      at = orders_[i];
    }
  }
  if (best_order != nullptr) *best_order = at;
  return std::max(0.0, best);
}

double RdpAccountant::EpsilonAfter(double sigma, double q, double delta) const {
  RdpAccountant next = *this;
  if (!next.Compose(sigma, q, 1).ok()) return kInf;
  return next.Epsilon(delta);
}

Status RdpAccountant::Restore(const std::vector<double>& rdp) {
  if (rdp.size() != orders_.size()) {
    return InvalidArgumentError("checkpointed privacy ledger has " + std::to_string(rdp.size()) +
                                " orders, the accountant " + std::to_string(orders_.size()));
  }
  for (double r : rdp) {
    if (!(r >= 0))
      return InvalidArgumentError("checkpointed privacy ledger holds a negative or NaN RDP value");
  }
  rdp_ = rdp;
  return OkStatus();
}

}  // namespace fedge::aggregator
