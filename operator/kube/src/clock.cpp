#include "fedge/op/clock.h"

#include <ctime>

namespace fedge::op {

std::string Clock::NowRfc3339() const {
  std::time_t t = WallNow();
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

RealClock* RealClock::Get() {
  static RealClock clock;
  return &clock;
}

Clock::TimePoint FakeClock::Now() const {
  std::lock_guard<std::mutex> l(mu_);
  return now_;
}

void FakeClock::WaitUntil(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                          TimePoint deadline) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (now_ >= deadline) return;
    waiters_.insert({&cv, lock.mutex()});
  }
  // Woken by Advance() or by the owner's own notify; the caller re-checks either way.
  cv.wait(lock);
  std::lock_guard<std::mutex> l(mu_);
  waiters_.erase({&cv, lock.mutex()});
}

std::time_t FakeClock::WallNow() const {
  std::lock_guard<std::mutex> l(mu_);
  return std::chrono::system_clock::to_time_t(wall_);
}

void FakeClock::SetWallNow(std::time_t t) {
  std::lock_guard<std::mutex> l(mu_);
  wall_ = std::chrono::system_clock::from_time_t(t);
}

void FakeClock::Advance(Duration d) {
  std::set<std::pair<std::condition_variable*, std::mutex*>> waiters;
  {
    std::lock_guard<std::mutex> l(mu_);
    now_ += d;
    wall_ += std::chrono::duration_cast<std::chrono::system_clock::duration>(d);
    waiters = waiters_;
  }
  // Taking the waiter's mutex orders this notify after its wait began: no lost wake-up.
  for (auto [cv, m] : waiters) {
    std::lock_guard<std::mutex> l(*m);
    cv->notify_all();
  }
}

}  // namespace fedge::op
