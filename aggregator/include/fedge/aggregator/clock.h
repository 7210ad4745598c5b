// Time source for the round engine. Deadlines are decided against an injected
// Clock so tests drive time explicitly instead of sleeping.
#pragma once

#include <atomic>
#include <cstdint>

namespace fedge::aggregator {

class Clock {
 public:
  virtual ~Clock() = default;
  // Milliseconds since the Unix epoch (deadlines go on the wire in this unit).
  // Thread-safe.
  virtual int64_t NowUnixMs() const = 0;
};

// Wall clock. Thread-safe; the returned pointer lives for the whole process.
class SystemClock : public Clock {
 public:
  int64_t NowUnixMs() const override;
  static SystemClock* Get();
};

// A clock that only moves when told to. Thread-safe.
class FakeClock : public Clock {
 public:
  explicit FakeClock(int64_t start_unix_ms = 1'700'000'000'000) : now_(start_unix_ms) {}
  int64_t NowUnixMs() const override { return now_.load(); }
  void AdvanceMs(int64_t ms) { now_.fetch_add(ms); }
  void SetUnixMs(int64_t ms) { now_.store(ms); }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace fedge::aggregator
