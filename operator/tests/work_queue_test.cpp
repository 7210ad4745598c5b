#include "fedge/op/work_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

namespace fedge::op {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(WorkQueueTest, DedupesKeyWhileQueued) {
  FakeClock clock;
  WorkQueue q(&clock);
  q.Add("ns/a");
  q.Add("ns/a");
  q.Add("ns/b");
  EXPECT_EQ(q.Len(), 2u);
  EXPECT_EQ(*q.Get(), "ns/a");
  EXPECT_EQ(*q.Get(), "ns/b");
  EXPECT_EQ(q.Len(), 0u);
}

TEST(WorkQueueTest, DedupesKeyWhileProcessingAndRequeuesOnDone) {
  FakeClock clock;
  WorkQueue q(&clock);
  q.Add("ns/a");
  auto key = q.Get();
  ASSERT_TRUE(key);
  // Added while being processed: not handed out again until Done().
  q.Add("ns/a");
  q.Add("ns/a");
  EXPECT_EQ(q.Len(), 0u);
  q.Done(*key);
  EXPECT_EQ(q.Len(), 1u);
  EXPECT_EQ(*q.Get(), "ns/a");
}

TEST(WorkQueueTest, NeverRunsOneKeyOnTwoWorkers) {
  WorkQueue q;
  std::atomic<int> in_flight{0};
  std::atomic<int> max_in_flight{0};
  std::atomic<int> processed{0};
  auto worker = [&] {
    while (auto key = q.Get()) {
      int now = ++in_flight;
      int prev = max_in_flight.load();
      while (now > prev && !max_in_flight.compare_exchange_weak(prev, now)) {
      }
      std::this_thread::yield();
      q.Add(*key);  // an event arrives mid-reconcile
      --in_flight;
      q.Done(*key);
      if (++processed >= 200) q.ShutDown();
    }
  };
  q.Add("ns/only");
  std::thread a(worker), b(worker), c(worker);
  a.join();
  b.join();
  c.join();
  EXPECT_GE(processed.load(), 200);
  EXPECT_EQ(max_in_flight.load(), 1);
}

TEST(WorkQueueTest, PerKeyBackoffDoublesFrom5msAndCapsAt1000s) {
  FakeClock clock;
  RateLimitOptions opts;
  opts.qps = 1e9;  // isolate the per-key limiter
  opts.burst = 1 << 30;
  WorkQueue q(&clock, opts);
  EXPECT_EQ(q.NextDelay("k"), milliseconds(5));
  EXPECT_EQ(q.NextDelay("k"), milliseconds(10));
  EXPECT_EQ(q.NextDelay("k"), milliseconds(20));
  EXPECT_EQ(q.NumRequeues("k"), 3);
  for (int i = 0; i < 40; ++i) q.NextDelay("k");
  EXPECT_EQ(q.NextDelay("k"), seconds(1000));
  // Another key has its own backoff.
  EXPECT_EQ(q.NextDelay("other"), milliseconds(5));
  q.Forget("k");
  EXPECT_EQ(q.NumRequeues("k"), 0);
  EXPECT_EQ(q.NextDelay("k"), milliseconds(5));
}

TEST(WorkQueueTest, OverallRateLimitDelaysBeyondBurst) {
  FakeClock clock;
  RateLimitOptions opts;
  opts.qps = 10;
  opts.burst = 3;
  WorkQueue q(&clock, opts);
  // Distinct keys: per-key backoff is 5 ms each; the bucket allows 3 then 10/s.
  EXPECT_EQ(q.NextDelay("a"), milliseconds(5));
  EXPECT_EQ(q.NextDelay("b"), milliseconds(5));
  EXPECT_EQ(q.NextDelay("c"), milliseconds(5));
  EXPECT_EQ(q.NextDelay("d"), milliseconds(100));
  EXPECT_EQ(q.NextDelay("e"), milliseconds(200));
  clock.Advance(seconds(10));  // refilled to burst
  EXPECT_EQ(q.NextDelay("f"), milliseconds(5));
}

TEST(WorkQueueTest, AddAfterBecomesReadyOnlyWhenClockPasses) {
  FakeClock clock;
  WorkQueue q(&clock);
  q.AddAfter("ns/a", seconds(30));
  EXPECT_EQ(q.Len(), 0u);
  EXPECT_EQ(q.DelayedLen(), 1u);
  auto got = std::async(std::launch::async, [&] { return q.Get(); });
  EXPECT_EQ(got.wait_for(milliseconds(50)), std::future_status::timeout);
  clock.Advance(seconds(29));
  EXPECT_EQ(got.wait_for(milliseconds(50)), std::future_status::timeout);
  clock.Advance(seconds(1));
  ASSERT_EQ(got.wait_for(seconds(5)), std::future_status::ready);
  EXPECT_EQ(*got.get(), "ns/a");
}

TEST(WorkQueueTest, AddAfterKeepsEarliestDeadline) {
  FakeClock clock;
  WorkQueue q(&clock);
  q.AddAfter("k", seconds(60));
  q.AddAfter("k", seconds(5));
  q.AddAfter("k", seconds(90));
  EXPECT_EQ(q.DelayedLen(), 1u);
  clock.Advance(seconds(5));
  auto key = q.Get();
  ASSERT_TRUE(key);
  EXPECT_EQ(*key, "k");
}

TEST(WorkQueueTest, ShutDownWakesBlockedWorkers) {
  WorkQueue q;
  auto got = std::async(std::launch::async, [&] { return q.Get(); });
  EXPECT_EQ(got.wait_for(milliseconds(20)), std::future_status::timeout);
  q.ShutDown();
  ASSERT_EQ(got.wait_for(seconds(5)), std::future_status::ready);
  EXPECT_FALSE(got.get().has_value());
  q.Add("late");
  EXPECT_EQ(q.Len(), 0u);
}

}  // namespace
}  // namespace fedge::op
