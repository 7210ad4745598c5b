#include "fedge/op/backoff.h"

#include <algorithm>
#include <cmath>

namespace fedge::op {

std::chrono::nanoseconds BackoffDelay(const BackoffPolicy& policy, int failures) {
  const double initial = std::chrono::duration<double>(policy.initial).count();
  const double max = std::chrono::duration<double>(policy.max).count();
  // 2^failures in double saturates to inf, never wraps; min() then caps it.
  double d = std::min(initial * std::pow(2.0, std::max(0, failures)), max);
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(d));
}

Backoff::Backoff(BackoffPolicy policy, uint64_t seed)
    : policy_(policy), rng_(seed ? seed : std::random_device{}()) {}

std::chrono::nanoseconds Backoff::Next() {
  std::chrono::nanoseconds d = BackoffDelay(policy_, failures_);
  if (failures_ < 64) ++failures_;
  if (policy_.jitter <= 0) return d;
  std::uniform_real_distribution<double> u(1 - policy_.jitter, 1 + policy_.jitter);
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d * u(rng_));
}

}  // namespace fedge::op
