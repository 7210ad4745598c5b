#include "fedge/op/informer.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>

#include "fedge/op/fake_kube_client.h"
#include "fedge/op/leader_election.h"

namespace fedge::op {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// An informer's options for namespace ml.
InformerOptions InMl(int64_t page_size = 500) {
  InformerOptions o;
  o.ns = "ml";
  o.page_size = page_size;
  return o;
}

Json Pod(const std::string& name, const std::string& ns = "ml") {
  return {{"metadata", {{"name", name}, {"namespace", ns}, {"labels", {{"app", "x"}}}}}};
}

// Collects handler calls; waits for a condition with a deadline instead of sleeping.
struct Recorder {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> events;
  void Push(const std::string& e) {
    std::lock_guard<std::mutex> l(mu);
    events.push_back(e);
    cv.notify_all();
  }
  bool WaitFor(const std::string& e, milliseconds timeout = milliseconds(5000)) {
    std::unique_lock<std::mutex> l(mu);
    return cv.wait_for(l, timeout,
                       [&] { return std::find(events.begin(), events.end(), e) != events.end(); });
  }
  InformerHandlers Handlers() {
    return {[this](const ObjectPtr& o) { Push("add " + ObjectKey(*o)); },
            [this](const ObjectPtr&, const ObjectPtr& n) { Push("update " + ObjectKey(*n)); },
            [this](const ObjectPtr& o) { Push("delete " + ObjectKey(*o)); }};
  }
};

TEST(InformerTest, ListsThenWatchesIntoTheCache) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Create(res::kPods, "ml", Pod("a")).ok());
  FakeClock clock;  // no failure here, so no backoff waits on it
  clock.SetWallNow(1'800'000'000);
  InformerOptions opts = InMl(/*page_size=*/1);
  opts.clock = &clock;
  Informer inf(&client, res::kPods, opts);
  Recorder rec;
  inf.AddHandlers(rec.Handlers());
  EXPECT_EQ(inf.synced_at(), 0);
  inf.Start();
  ASSERT_TRUE(inf.WaitForSync(seconds(5)));
  // When the first list was in: what the reconciler's revoked-pods.json calls watchedSince.
  EXPECT_EQ(inf.synced_at(), 1'800'000'000);
  clock.SetWallNow(1'800'000'100);
  EXPECT_TRUE(rec.WaitFor("add ml/a"));
  ASSERT_TRUE(client.Create(res::kPods, "ml", Pod("b")).ok());
  EXPECT_TRUE(rec.WaitFor("add ml/b"));
  ASSERT_TRUE(client.MergePatch(res::kPods, "ml", "a", {{"metadata", {{"labels", {{"v", "2"}}}}}}).ok());
  EXPECT_TRUE(rec.WaitFor("update ml/a"));
  ASSERT_TRUE(client.Delete(res::kPods, "ml", "b").ok());
  EXPECT_TRUE(rec.WaitFor("delete ml/b"));
  EXPECT_EQ(inf.Size(), 1u);
  ASSERT_NE(inf.Get("ml/a"), nullptr);
  EXPECT_EQ((*inf.Get("ml/a"))["metadata"]["labels"]["v"], "2");
  EXPECT_EQ(inf.ListByLabel("app", "x").size(), 1u);
  EXPECT_EQ(inf.synced_at(), 1'800'000'000) << "the first list's, not moved by the watch";
  inf.Stop();
}

TEST(InformerTest, ResumesAfterStreamEndsWithoutRelisting) {
  FakeKubeClient client;
  Informer inf(&client, res::kPods, InMl());
  Recorder rec;
  inf.AddHandlers(rec.Handlers());
  inf.Start();
  ASSERT_TRUE(inf.WaitForSync(seconds(5)));
  // An object arriving through the watch proves the watch is open before we close it.
  ASSERT_TRUE(client.Create(res::kPods, "ml", Pod("before")).ok());
  ASSERT_TRUE(rec.WaitFor("add ml/before"));
  client.CloseWatches();  // like an API server restart or the watch timeout
  ASSERT_TRUE(client.Create(res::kPods, "ml", Pod("after")).ok());
  EXPECT_TRUE(rec.WaitFor("add ml/after"));
  EXPECT_GE(inf.watch_restarts(), 1);
  EXPECT_EQ(inf.relists(), 0);
  EXPECT_EQ(client.CountCalls("list", "pods"), 1);
  inf.Stop();
}

TEST(InformerTest, RelistsOnGoneAndReportsMissedDeletes) {
  FakeKubeClient client;
  ASSERT_TRUE(client.Create(res::kPods, "ml", Pod("old")).ok());
  Informer inf(&client, res::kPods, InMl());
  Recorder rec;
  inf.AddHandlers(rec.Handlers());
  inf.Start();
  ASSERT_TRUE(inf.WaitForSync(seconds(5)));
  ASSERT_TRUE(rec.WaitFor("add ml/old"));
  // While the watch is down, "old" goes away and history is compacted: the resumed
  // watch gets 410 Gone and the informer must re-list to notice the delete.
  client.FailNext("watch", "pods", KubeError("ServiceUnavailable", 503, "down"));
  client.CloseWatches();
  ASSERT_TRUE(client.Delete(res::kPods, "ml", "old").ok());
  ASSERT_TRUE(client.Create(res::kPods, "ml", Pod("new")).ok());
  client.Compact();
  EXPECT_TRUE(rec.WaitFor("delete ml/old"));
  EXPECT_TRUE(rec.WaitFor("add ml/new"));
  EXPECT_GE(inf.relists(), 1);
  EXPECT_EQ(inf.Get("ml/old"), nullptr);
  inf.Stop();
}

TEST(LeaderElectionTest, ExactlyOneCandidateLeadsAndTakeoverWaitsForExpiry) {
  FakeKubeClient client;
  FakeClock clock;
  LeaderElectionOptions a{.ns = "ops", .name = "op", .identity = "a"};
  LeaderElectionOptions b{.ns = "ops", .name = "op", .identity = "b"};
  LeaderElector ea(&client, a, &clock), eb(&client, b, &clock);
  EXPECT_TRUE(ea.TryAcquireOrRenew());
  EXPECT_FALSE(eb.TryAcquireOrRenew());
  clock.Advance(seconds(10));
  EXPECT_TRUE(ea.TryAcquireOrRenew());   // renewed
  EXPECT_FALSE(eb.TryAcquireOrRenew());  // b saw the renewal: its timer restarts
  clock.Advance(seconds(14));
  EXPECT_FALSE(eb.TryAcquireOrRenew());  // 14 s < 15 s lease
  clock.Advance(seconds(2));
  EXPECT_TRUE(eb.TryAcquireOrRenew());  // a stopped renewing: b takes over
  auto lease = client.Get(res::kLeases, "ops", "op");
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ((*lease)["spec"]["holderIdentity"], "b");
  EXPECT_EQ((*lease)["spec"]["leaseTransitions"], 1);
  EXPECT_EQ((*lease)["spec"]["leaseDurationSeconds"], 15);
}

TEST(LeaderElectionTest, StaleWriteLosesOnResourceVersionConflict) {
  FakeKubeClient client;
  FakeClock clock;
  LeaderElector ea(&client, {.ns = "ops", .name = "op", .identity = "a"}, &clock);
  ASSERT_TRUE(ea.TryAcquireOrRenew());
  // Someone else updates the lease between our read and write.
  client.FailNext("update", "leases", KubeError("Conflict", 409, "the object has been modified"));
  EXPECT_FALSE(ea.TryAcquireOrRenew());
  EXPECT_TRUE(ea.TryAcquireOrRenew());
}

}  // namespace
}  // namespace fedge::op
