// A one-shot stop flag that sleeping threads can wait on: SIGTERM must end a
// WAIT sleep or a backoff at once, not after it expires.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>

namespace fedge::agent {

class StopSignal {
 public:
  // Sets the flag and wakes every waiter. Idempotent; thread-safe; callable from
  // any thread (not from a signal handler: main forwards signals via sigwait).
  void Stop();
  bool stopped() const;

  // Sleeps up to `duration`; returns false if stopped (before or while waiting).
  bool SleepFor(std::chrono::milliseconds duration);
  // Blocks until Stop().
  void Wait();

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopped_ = false;  // guarded by mu_
};

// Exponential backoff with jitter for reconnects: the n-th delay is drawn
// uniformly from [d/2, d] with d = min(initial * 2^n, max). Randomness is
// injected (a value in [0,1)) so tests are deterministic. Not thread-safe.
class Backoff {
 public:
  Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max,
          std::function<double()> uniform01);
  std::chrono::milliseconds Next();
  void Reset() { attempt_ = 0; }
  int attempt() const { return attempt_; }

 private:
  std::chrono::milliseconds initial_;
  std::chrono::milliseconds max_;
  std::function<double()> uniform01_;
  int attempt_ = 0;
};

}  // namespace fedge::agent
