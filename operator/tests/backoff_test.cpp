// The operator's one exponential backoff (backoff.h): the work queue's per-key requeue
// delays and the informers' reconnect delays.
#include "fedge/op/backoff.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "fedge/op/work_queue.h"

namespace fedge::op {
namespace {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;

TEST(BackoffTest, DoublesFromInitialUpToMaxAndResets) {
  Backoff b({milliseconds(200), milliseconds(1000), /*jitter=*/0});
  EXPECT_EQ(b.Next(), milliseconds(200));
  EXPECT_EQ(b.Next(), milliseconds(400));
  EXPECT_EQ(b.Next(), milliseconds(800));
  EXPECT_EQ(b.Next(), milliseconds(1000));
  EXPECT_EQ(b.Next(), milliseconds(1000));
  EXPECT_EQ(b.failures(), 5);
  b.Reset();
  EXPECT_EQ(b.Next(), milliseconds(200));
}

TEST(BackoffTest, HugeFailureCountsSaturateAtMaxWithoutOverflow) {
  BackoffPolicy p{milliseconds(5), std::chrono::seconds(1000), 0};
  EXPECT_EQ(BackoffDelay(p, 0), milliseconds(5));
  EXPECT_EQ(BackoffDelay(p, 10), milliseconds(5 * 1024));
  EXPECT_EQ(BackoffDelay(p, 5000), std::chrono::seconds(1000));
  EXPECT_EQ(BackoffDelay(p, -3), milliseconds(5)) << "a negative count is the first delay";
}

TEST(BackoffTest, JitterSpreadsDelaysWithinItsBand) {
  Backoff b({milliseconds(1000), milliseconds(1000), /*jitter=*/0.5}, /*seed=*/42);
  nanoseconds lo = std::chrono::hours(1), hi{0};
  for (int i = 0; i < 200; ++i) {
    nanoseconds d = b.Next();
    lo = std::min(lo, d);
    hi = std::max(hi, d);
    ASSERT_GE(d, milliseconds(500));
    ASSERT_LE(d, milliseconds(1500));
  }
  EXPECT_LT(lo, milliseconds(700)) << "spread, not constant";
  EXPECT_GT(hi, milliseconds(1300));
}

// The work queue's per-key delay is the same policy (base 5 ms, doubling, max 1000 s).
TEST(BackoffTest, WorkQueueRequeuesFollowThePolicy) {
  FakeClock clock;
  RateLimitOptions o;
  o.qps = 1e9;  // the token bucket out of the way
  WorkQueue q(&clock, o);
  BackoffPolicy p{o.base_delay, o.max_delay, 0};
  for (int n = 0; n < 6; ++n) {
    // Within a nanosecond: the queue adds its token-bucket wait in double seconds.
    EXPECT_NEAR(static_cast<double>(q.NextDelay("ns/job").count()),
                static_cast<double>(BackoffDelay(p, n).count()), 1.0)
        << n;
  }
}

}  // namespace
}  // namespace fedge::op
