// Rényi differential privacy (RDP) accountant for client-level DP-FedAvg (issue 12): each
// round samples every eligible agent independently with probability q (Poisson sampling),
// clips each update to an L2 norm C and adds Gaussian noise of standard deviation σ·C to
// the sum. That round is the Poisson-subsampled Gaussian mechanism with noise multiplier σ;
// its RDP at order α is
//
//   ε_α = log A_α / (α - 1),  A_α = Σ_{k=0..α} C(α,k) (1-q)^(α-k) q^k exp((k² - k) / (2σ²))
//
// for integer α (Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled
// Gaussian Mechanism", Sec. 3.3); q = 1 gives α / (2σ²). Rounds compose by adding RDP per
// order, and (ε, δ) follows from Canonne, Kamath, Steinke 2020 (also Balle et al. 2020,
// Prop. 12): ε = min_α ε_α + log(1 - 1/α) - log(δ α) / (α - 1), floored at 0.
//
// Only integer orders are used (2..64, 128, 256, 512): the bound is then the one Google's
// dp-accounting computes on the same orders (goldens in aggregator/tests/data/), and at most
// slightly above what it reports with its default grid, which adds fractional orders.
// Thread-compatible; not thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "fedge/status.h"

namespace fedge::aggregator {

// RDP of one Poisson-subsampled Gaussian round at integer `order` >= 2; +inf when
// `noise_multiplier` is 0 (and q > 0), 0 when q is 0.
double SubsampledGaussianRdp(double sampling_rate, double noise_multiplier, int order);

class RdpAccountant {
 public:
  static const std::vector<int>& DefaultOrders();

  explicit RdpAccountant(std::vector<int> orders = DefaultOrders());

  // Composes `rounds` rounds of the mechanism. InvalidArgument for q outside [0, 1],
  // a negative or non-finite σ, or rounds < 0.
  Status Compose(double noise_multiplier, double sampling_rate, int64_t rounds = 1);

  // The (ε, δ)-DP guarantee of everything composed so far: ε for `delta` in (0, 1).
  // +inf when no finite bound exists (σ = 0 was composed). `best_order` gets the order
  // that gave it, when non-null.
  double Epsilon(double delta, int* best_order = nullptr) const;

  // ε after one more round with these parameters (the budget check before a round).
  double EpsilonAfter(double noise_multiplier, double sampling_rate, double delta) const;

  // Per-order RDP so far, for checkpoints; Restore takes it back (same orders).
  const std::vector<double>& rdp() const { return rdp_; }
  const std::vector<int>& orders() const { return orders_; }
  Status Restore(const std::vector<double>& rdp);

 private:
  std::vector<int> orders_;
  std::vector<double> rdp_;
};

}  // namespace fedge::aggregator
