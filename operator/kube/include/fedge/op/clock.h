// Clock: time as the controller machinery sees it, injectable so tests of backoff, rate
// limits, delayed requeues and leases advance time instead of sleeping.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <string>
#include <utility>

namespace fedge::op {

class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
  // Waits on `cv` (with `lock` held on entry and exit) until notified or `deadline`
  // passes on this clock. Spurious wake-ups are allowed; callers re-check.
  virtual void WaitUntil(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                         TimePoint deadline) = 0;
  // Wall-clock time for API timestamps (RFC 3339, UTC, seconds).
  virtual std::string NowRfc3339() const;
};

class RealClock : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  void WaitUntil(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                 TimePoint deadline) override {
    cv.wait_until(lock, deadline);
  }
  static RealClock* Get();
};

// Time moves only through Advance(), which wakes every waiter so it re-checks.
class FakeClock : public Clock {
 public:
  TimePoint Now() const override;
  void WaitUntil(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                 TimePoint deadline) override;
  void Advance(Duration d);
  std::string NowRfc3339() const override { return "2026-01-01T00:00:00Z"; }

 private:
  mutable std::mutex mu_;
  TimePoint now_{std::chrono::hours(1000)};                             // guarded by mu_
  std::set<std::pair<std::condition_variable*, std::mutex*>> waiters_;  // guarded by mu_
};

}  // namespace fedge::op
