// Backoff: the operator's one exponential backoff. The work queue's per-key requeue delay
// and the informer's reconnect delay are both this policy: initial * 2^failures, capped at
// max, optionally spread by a random factor in [1 - jitter, 1 + jitter] so that many
// watchers cut off together do not reconnect together.
#pragma once

#include <chrono>
#include <cstdint>
#include <random>

namespace fedge::op {

struct BackoffPolicy {
  std::chrono::nanoseconds initial = std::chrono::milliseconds(200);
  std::chrono::nanoseconds max = std::chrono::seconds(30);
  double jitter = 0;  // 0 (none) .. 1
};

// The delay after `failures` earlier failures (0: the first), without jitter:
// min(initial * 2^failures, max). Pure; never overflows.
std::chrono::nanoseconds BackoffDelay(const BackoffPolicy& policy, int failures);

// One retry loop's backoff state. Not thread-safe (one owner, like its loop).
class Backoff {
 public:
  // seed 0: a random seed.
  explicit Backoff(BackoffPolicy policy, uint64_t seed = 0);
  // The delay before the next attempt (jittered); the one after it doubles, up to max.
  std::chrono::nanoseconds Next();
  // After a success: the next delay is `initial` again.
  void Reset() { failures_ = 0; }
  int failures() const { return failures_; }

 private:
  BackoffPolicy policy_;
  int failures_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace fedge::op
