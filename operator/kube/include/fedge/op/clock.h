// Clock: the operator's one source of time, injectable so tests of backoff, rate limits,
// delayed requeues, leases, deadlines, TTLs and certificate renewal set or advance time
// instead of sleeping. Two readings: a monotonic one (Now: waits, queues, leases) and the
// wall clock (WallNow: what API timestamps and certificates compare with).
#pragma once

#include <chrono>
#include <condition_variable>
#include <ctime>
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
  // Wall-clock seconds since the epoch (deadlines and TTLs compare with API timestamps;
  // certificates are issued and renewed by it).
  virtual std::time_t WallNow() const { return std::time(nullptr); }
  // WallNow for API timestamps (RFC 3339, UTC, seconds).
  std::string NowRfc3339() const;
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

// Time moves only through Advance() (both readings), which wakes every waiter so it
// re-checks, and SetWallNow() (the wall clock alone). The wall clock starts at
// 2026-01-01T00:00:00Z.
class FakeClock : public Clock {
 public:
  FakeClock() = default;
  explicit FakeClock(std::time_t wall_now) : wall_(std::chrono::system_clock::from_time_t(wall_now)) {}
  TimePoint Now() const override;
  void WaitUntil(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                 TimePoint deadline) override;
  void Advance(Duration d);
  std::time_t WallNow() const override;
  void SetWallNow(std::time_t t);

 private:
  mutable std::mutex mu_;
  TimePoint now_{std::chrono::hours(1000)};      // guarded by mu_
  std::chrono::system_clock::time_point wall_ =  // guarded by mu_
      std::chrono::system_clock::from_time_t(1767225600);
  std::set<std::pair<std::condition_variable*, std::mutex*>> waiters_;  // guarded by mu_
};

}  // namespace fedge::op
