#include "fedge/aggregator/revoked_pods.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "test_util.h"

namespace fedge::aggregator {
namespace {

std::string Entry(const std::string& uid, int64_t until) {
  return R"({"uid": ")" + uid + R"(", "name": "job-agent-n", "node": "n", "until": )" +
         std::to_string(until) + "}";
}

TEST(RevokedPodsTest, ParsesTheUidsNotYetPastTheirUntil) {
  auto list = ParseRevokedPods(R"({"pods": [)" + Entry("a", 100) + "," + Entry("b", 50) + "]}", 60);
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_EQ(list->uids, (std::set<std::string>{"a"}));
  EXPECT_EQ(list->watched_since_unix_s, 0);
  EXPECT_TRUE(ParseRevokedPods(R"({"pods": []})", 0)->uids.empty());
}

// The attack: a node's token is copied off it, and its pod is deleted while no operator
// runs. The operator that starts later never saw that pod, so no `pods` entry names it;
// watchedSince and livePods still refuse it.
TEST(RevokedPodsTest, ATokenFromBeforeTheOperatorWatchedIsRefusedUnlessItsPodWasLiveThen) {
  auto list = ParseRevokedPods(
      R"({"pods": [)" + Entry("deleted-seen", 900) + R"(], "watchedSince": 500, "livePods": ["live"]})", 600);
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_EQ(list->watched_since_unix_s, 500);
  EXPECT_TRUE(list->Refuses("gone-unseen", 400)) << "issued before the watch, its pod not live then";
  EXPECT_TRUE(list->Refuses("gone-unseen", 499));
  EXPECT_FALSE(list->Refuses("live", 400)) << "its pod was live when the operator listed";
  EXPECT_FALSE(list->Refuses("made-later", 500)) << "a pod made after the watch began";
  EXPECT_FALSE(list->Refuses("made-later", 550));
  EXPECT_TRUE(list->Refuses("deleted-seen", 550)) << "listed: refused whatever its iat";
  EXPECT_FALSE(list->Refuses("gone-unseen", 0)) << "no iat: judged by the list alone";
  // Without watchedSince nothing is refused by its iat.
  auto plain = ParseRevokedPods(R"({"pods": []})", 600);
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->Refuses("gone-unseen", 400));
}

TEST(RevokedPodsTest, RefusesMalformedOrOversizedLists) {
  for (const std::string bad :
       {"", "[]", "{", R"({"pods": {}})", R"({"pods": [1]})", R"({"pods": [{"until": 5}]})",
        R"({"pods": [{"uid": "", "until": 5}]})", R"({"pods": [{"uid": "a"}]})",
        R"({"pods": [{"uid": "a", "until": "5"}]})", R"({"pods": [{"uid": "a", "until": 5.5}]})",
        R"({"pods": [], "watchedSince": 5})", R"({"pods": [], "watchedSince": 0, "livePods": []})",
        R"({"pods": [], "watchedSince": "5", "livePods": []})",
        R"({"pods": [], "watchedSince": 5, "livePods": {}})",
        R"({"pods": [], "watchedSince": 5, "livePods": [""]})",
        R"({"pods": [], "watchedSince": 5, "livePods": [7]})"}) {
    auto r = ParseRevokedPods(bad, 0);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  std::string many = R"({"pods": [)";
  for (size_t i = 0; i <= kMaxRevokedPods; ++i) many += (i ? "," : "") + Entry("u" + std::to_string(i), 9);
  many += "]}";
  EXPECT_NE(ParseRevokedPods(many, 0).status().message().find("entries"), std::string::npos);
  std::string live = R"({"pods": [], "watchedSince": 5, "livePods": [)";
  for (size_t i = 0; i <= kMaxLivePods; ++i)
    live += std::string(i ? "," : "") + "\"u" + std::to_string(i) + "\"";
  live += "]}";
  EXPECT_NE(ParseRevokedPods(live, 0).status().message().find("livePods"), std::string::npos);
  EXPECT_NE(ParseRevokedPods(std::string(kMaxRevokedPodsBytes + 1, ' '), 0).status().message().find("bytes"),
            std::string::npos);
}

// The kubelet's layout for a ConfigMap volume: the key is a symlink into ..data,
// and an update swaps ..data atomically.
class MountedConfigMap {
 public:
  explicit MountedConfigMap(const std::string& dir) : dir_(dir) {}
  void Publish(const std::string& text) {
    const std::string version = "..v" + std::to_string(++version_);
    std::filesystem::create_directory(dir_ + "/" + version);
    std::ofstream(dir_ + "/" + version + "/revoked-pods.json") << text;
    std::filesystem::create_symlink(version, dir_ + "/..data_tmp");
    std::filesystem::rename(dir_ + "/..data_tmp", dir_ + "/..data");
    if (version_ == 1) std::filesystem::create_symlink("..data/revoked-pods.json", path());
  }
  std::string path() const { return dir_ + "/revoked-pods.json"; }

 private:
  std::string dir_;
  int version_ = 0;
};

TEST(RevokedPodsTest, FollowsTheMountedFileAndKeepsTheListWhenAChangeIsBroken) {
  testing::TempDir dir;
  MountedConfigMap cm(dir.path());
  FakeClock clock;
  const int64_t now = clock.NowUnixMs() / 1000;
  // Missing at start: lists none, and is looked for again.
  auto r = RevokedPods::Open(cm.path(), &clock);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  RevokedPods& revoked = **r;
  EXPECT_FALSE(revoked.Revoked("a", 0));

  cm.Publish(R"({"pods": [)" + Entry("a", now + 10) + "]}");
  EXPECT_FALSE(revoked.Revoked("a", 0));  // not looked at within the second
  clock.AdvanceMs(1000);
  EXPECT_TRUE(revoked.Revoked("a", 0));
  EXPECT_EQ(revoked.reloads(), 1);

  cm.Publish(R"({"pods": [)" + Entry("a", now + 10) + "," + Entry("b", now + 20) + "]}");
  EXPECT_TRUE(revoked.Refresh());
  EXPECT_TRUE(revoked.Revoked("b", 0));
  EXPECT_EQ(revoked.size(), 2u);

  cm.Publish("{\"pods\": [trunc");  // broken: both stay refused
  EXPECT_FALSE(revoked.Refresh());
  EXPECT_TRUE(revoked.Revoked("a", 0));
  EXPECT_TRUE(revoked.Revoked("b", 0));

  // Entries lapse at their `until` without a rewrite.
  clock.AdvanceMs(11'000);
  EXPECT_FALSE(revoked.Revoked("a", 0));
  EXPECT_TRUE(revoked.Revoked("b", 0));
  clock.AdvanceMs(10'000);
  EXPECT_FALSE(revoked.Revoked("b", 0));
}

TEST(RevokedPodsTest, AnInvalidFileAtStartIsAnError) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/revoked-pods.json";
  std::ofstream(path) << "not json";
  FakeClock clock;
  auto r = RevokedPods::Open(path, &clock);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().ToString();
}

}  // namespace
}  // namespace fedge::aggregator
