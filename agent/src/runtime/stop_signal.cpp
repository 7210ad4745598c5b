#include "fedge/agent/runtime/stop_signal.h"

#include <algorithm>

namespace fedge::agent {

void StopSignal::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
}

bool StopSignal::stopped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopped_;
}

bool StopSignal::SleepFor(std::chrono::milliseconds duration) {
  std::unique_lock<std::mutex> lock(mu_);
  return !cv_.wait_for(lock, duration, [this] { return stopped_; });
}

void StopSignal::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return stopped_; });
}

Backoff::Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max,
                 std::function<double()> uniform01)
    : initial_(std::max(initial, std::chrono::milliseconds(1))),
      max_(std::max(max, initial_)),
      uniform01_(std::move(uniform01)) {}

std::chrono::milliseconds Backoff::Next() {
  // Doubling stops once the cap is reached, so the shift never overflows.
  int64_t d = initial_.count();
  for (int i = 0; i < attempt_ && d < max_.count(); ++i) d *= 2;
  d = std::min<int64_t>(d, max_.count());
  ++attempt_;
  double u = std::clamp(uniform01_(), 0.0, 1.0);
  int64_t jittered = d / 2 + static_cast<int64_t>(u * static_cast<double>(d - d / 2));
  return std::chrono::milliseconds(std::max<int64_t>(jittered, 1));
}

}  // namespace fedge::agent
