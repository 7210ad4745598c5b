// WorkQueue: client-go's rate-limiting work queue semantics for reconcile keys.
//  - Add() de-duplicates: a key waiting in the queue is there once.
//  - A key being processed (between Get() and Done()) is never handed to a second
//    worker; adding it meanwhile marks it dirty and it is re-queued on Done().
//  - AddRateLimited() delays by max(per-key exponential backoff, overall token bucket);
//    Forget() resets the key's backoff after a success.
//  - AddAfter() requeues later (e.g. "check again when the deadline passes").
//  - ShutDown() wakes every Get(); workers finish their in-flight key, then exit.
// Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "fedge/op/clock.h"

namespace fedge::op {

struct RateLimitOptions {
  std::chrono::nanoseconds base_delay = std::chrono::milliseconds(5);
  std::chrono::nanoseconds max_delay = std::chrono::seconds(1000);
  double qps = 10;  // overall bucket, shared by all keys
  int burst = 100;
};

class WorkQueue {
 public:
  explicit WorkQueue(Clock* clock = RealClock::Get(), RateLimitOptions opts = {});
  ~WorkQueue();

  void Add(const std::string& key);
  void AddAfter(const std::string& key, Clock::Duration delay);
  void AddRateLimited(const std::string& key);
  void Forget(const std::string& key);
  int NumRequeues(const std::string& key) const;
  // The delay AddRateLimited would use now, consuming a failure and a token.
  Clock::Duration NextDelay(const std::string& key);

  // Blocks until a key is ready or the queue shuts down (nullopt).
  std::optional<std::string> Get();
  void Done(const std::string& key);

  void ShutDown();
  bool shutting_down() const;
  // Keys ready to process (the work-queue depth metric).
  size_t Len() const;
  // Keys waiting for a delayed add.
  size_t DelayedLen() const;
  // Keys a worker is processing (between Get() and Done()).
  size_t ProcessingLen() const;

 private:
  void AddLocked(const std::string& key);
  void PromoteDueLocked();

  Clock* clock_;
  RateLimitOptions opts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;                         // guarded by mu_
  std::set<std::string> dirty_;                           // guarded by mu_
  std::set<std::string> processing_;                      // guarded by mu_
  std::multimap<Clock::TimePoint, std::string> delayed_;  // guarded by mu_
  std::map<std::string, int> failures_;                   // guarded by mu_
  double tokens_;                                         // guarded by mu_
  Clock::TimePoint last_refill_;                          // guarded by mu_
  bool shutdown_ = false;                                 // guarded by mu_
};

}  // namespace fedge::op
