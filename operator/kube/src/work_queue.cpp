#include "fedge/op/work_queue.h"

#include <algorithm>
#include <cmath>

#include "fedge/op/backoff.h"

namespace fedge::op {

WorkQueue::WorkQueue(Clock* clock, RateLimitOptions opts)
    : clock_(clock), opts_(opts), tokens_(opts.burst), last_refill_(clock->Now()) {}

WorkQueue::~WorkQueue() { ShutDown(); }

void WorkQueue::AddLocked(const std::string& key) {
  if (shutdown_ || dirty_.count(key)) return;
  dirty_.insert(key);
  if (processing_.count(key)) return;  // re-queued by Done()
  queue_.push_back(key);
  cv_.notify_one();
}

void WorkQueue::Add(const std::string& key) {
  std::lock_guard<std::mutex> l(mu_);
  AddLocked(key);
}

void WorkQueue::AddAfter(const std::string& key, Clock::Duration delay) {
  std::lock_guard<std::mutex> l(mu_);
  if (shutdown_) return;
  if (delay <= Clock::Duration::zero()) {
    AddLocked(key);
    return;
  }
  // Keep only the earliest pending delayed add per key.
  Clock::TimePoint at = clock_->Now() + delay;
  for (auto it = delayed_.begin(); it != delayed_.end(); ++it) {
    if (it->second == key) {
      if (it->first <= at) return;
      delayed_.erase(it);
      break;
    }
  }
  delayed_.emplace(at, key);
  cv_.notify_all();  // a waiting Get() may need an earlier wake-up
}

Clock::Duration WorkQueue::NextDelay(const std::string& key) {
  std::lock_guard<std::mutex> l(mu_);
  int n = failures_[key]++;
  double per_key =
      std::chrono::duration<double>(BackoffDelay({opts_.base_delay, opts_.max_delay, /*jitter=*/0}, n))
          .count();
  // Token bucket: refill, then take a token; a negative balance is time to wait.
  Clock::TimePoint now = clock_->Now();
  double elapsed = std::chrono::duration<double>(now - last_refill_).count();
  last_refill_ = now;
  tokens_ = std::min<double>(opts_.burst, tokens_ + elapsed * opts_.qps);
  tokens_ -= 1;
  double bucket = tokens_ >= 0 ? 0.0 : -tokens_ / opts_.qps;
  double d = std::max(per_key, bucket);
  return std::chrono::duration_cast<Clock::Duration>(std::chrono::duration<double>(d));
}

void WorkQueue::AddRateLimited(const std::string& key) { AddAfter(key, NextDelay(key)); }

void WorkQueue::Forget(const std::string& key) {
  std::lock_guard<std::mutex> l(mu_);
  failures_.erase(key);
}

int WorkQueue::NumRequeues(const std::string& key) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = failures_.find(key);
  return it == failures_.end() ? 0 : it->second;
}

void WorkQueue::PromoteDueLocked() {
  Clock::TimePoint now = clock_->Now();
  while (!delayed_.empty() && delayed_.begin()->first <= now) {
    std::string key = delayed_.begin()->second;
    delayed_.erase(delayed_.begin());
    AddLocked(key);
  }
}

std::optional<std::string> WorkQueue::Get() {
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    if (shutdown_) return std::nullopt;
    PromoteDueLocked();
    if (!queue_.empty()) break;
    if (delayed_.empty()) {
      cv_.wait(l);
    } else {
      clock_->WaitUntil(l, cv_, delayed_.begin()->first);
    }
  }
  std::string key = queue_.front();
  queue_.pop_front();
  dirty_.erase(key);
  processing_.insert(key);
  return key;
}

void WorkQueue::Done(const std::string& key) {
  std::lock_guard<std::mutex> l(mu_);
  processing_.erase(key);
  if (dirty_.count(key) && !shutdown_) {
    queue_.push_back(key);
    cv_.notify_one();
  }
}

void WorkQueue::ShutDown() {
  std::lock_guard<std::mutex> l(mu_);
  shutdown_ = true;
  cv_.notify_all();
}

bool WorkQueue::shutting_down() const {
  std::lock_guard<std::mutex> l(mu_);
  return shutdown_;
}

size_t WorkQueue::Len() const {
  std::lock_guard<std::mutex> l(mu_);
  return queue_.size();
}

size_t WorkQueue::ProcessingLen() const {
  std::lock_guard<std::mutex> l(mu_);
  return processing_.size();
}

size_t WorkQueue::DelayedLen() const {
  std::lock_guard<std::mutex> l(mu_);
  return delayed_.size();
}

}  // namespace fedge::op
