#include "fedge/aggregator/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "fedge/file_util.h"
#include "test_util.h"

namespace fedge::aggregator {
namespace {

namespace fs = std::filesystem;
using testing::SmallBundle;
using testing::TempDir;

CheckpointData Data(int64_t round, float v) {
  CheckpointData d;
  d.job = "ns/demo";
  d.completed_round = round;
  d.total_rounds = 5;
  d.global_version = round + 1;
  d.global_checksum = "abc";
  d.global = SmallBundle(v, v + 1, v + 2, v + 3);
  for (int64_t r = 1; r <= round; ++r) {
    RoundRecord rec;
    rec.round = r;
    rec.participants = 3;
    rec.accuracy = 0.1 * static_cast<double>(r);
    rec.bytes_up = 1000 + static_cast<uint64_t>(r);
    rec.global_version = r + 1;
    d.history.push_back(rec);
  }
  return d;
}

void Truncate(const std::string& path, size_t keep) {
  auto text = ReadFile(path);
  ASSERT_TRUE(text.ok());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text->substr(0, keep);
}

TEST(CheckpointTest, EmptyOrMissingDirHasNoCheckpoint) {
  TempDir dir;
  auto none = CheckpointStore(dir.path()).Load();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  auto missing = CheckpointStore(dir.path() + "/nope").Load();
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
}

TEST(CheckpointTest, SaveThenLoadRoundTripsEverything) {
  TempDir dir;
  CheckpointStore store(dir.path());
  CheckpointData d = Data(2, 1.5f);
  d.final_accuracy = 0.42;
  ASSERT_TRUE(store.Save(d).ok());
  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_TRUE(loaded->has_value());
  const CheckpointData& l = **loaded;
  EXPECT_EQ(l.job, "ns/demo");
  EXPECT_EQ(l.completed_round, 2);
  EXPECT_EQ(l.global_version, 3);
  EXPECT_EQ(l.global_checksum, "abc");
  EXPECT_DOUBLE_EQ(*l.final_accuracy, 0.42);
  ASSERT_EQ(l.history.size(), 2u);
  EXPECT_DOUBLE_EQ(*l.history[1].accuracy, 0.2);
  EXPECT_EQ(l.history[1].bytes_up, 1002u);
  EXPECT_FALSE(l.history[1].loss.has_value());
  EXPECT_EQ(l.global.Find("b")->values, (std::vector<float>{3.5f, 4.5f}));
  EXPECT_EQ(l.global.Find("b")->shape, (std::vector<int64_t>{1, 2}));
  EXPECT_TRUE(fs::exists(dir.path() + "/global-v3.safetensors"));
}

TEST(CheckpointTest, KeepsOnlyCurrentAndPreviousBundles) {
  TempDir dir;
  CheckpointStore store(dir.path());
  for (int r = 0; r <= 3; ++r) ASSERT_TRUE(store.Save(Data(r, static_cast<float>(r))).ok());
  EXPECT_FALSE(fs::exists(dir.path() + "/global-v1.safetensors"));
  EXPECT_FALSE(fs::exists(dir.path() + "/global-v2.safetensors"));
  EXPECT_TRUE(fs::exists(dir.path() + "/global-v3.safetensors"));
  EXPECT_TRUE(fs::exists(dir.path() + "/global-v4.safetensors"));
}

TEST(CheckpointTest, TruncatedStateFallsBackToPrevious) {
  TempDir dir;
  CheckpointStore store(dir.path());
  ASSERT_TRUE(store.Save(Data(1, 1)).ok());
  ASSERT_TRUE(store.Save(Data(2, 2)).ok());
  Truncate(dir.path() + "/state.json", 40);
  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_TRUE(loaded->has_value());
  EXPECT_EQ((*loaded)->completed_round, 1);
  EXPECT_EQ((*loaded)->global.Find("a")->values[0], 1.0f);
}

TEST(CheckpointTest, CorruptBundleFallsBackToPrevious) {
  TempDir dir;
  CheckpointStore store(dir.path());
  ASSERT_TRUE(store.Save(Data(1, 1)).ok());
  ASSERT_TRUE(store.Save(Data(2, 2)).ok());
  Truncate(dir.path() + "/global-v3.safetensors", 20);
  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->completed_round, 1);
}

TEST(CheckpointTest, NoUsableStateIsAnErrorNotAFreshStart) {
  TempDir dir;
  CheckpointStore store(dir.path());
  ASSERT_TRUE(store.Save(Data(1, 1)).ok());
  Truncate(dir.path() + "/state.json", 10);
  auto loaded = store.Load();
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(loaded.status().message().find("state.json"), std::string::npos) << loaded.status().message();
  // A corrupt state.json must not replace a good fallback on the next save.
  ASSERT_TRUE(store.Save(Data(2, 2)).ok());
  ASSERT_TRUE(store.Save(Data(3, 3)).ok());
  Truncate(dir.path() + "/state.json", 10);
  loaded = store.Load();
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ((*loaded)->completed_round, 2);
}

TEST(CheckpointTest, CrashBetweenBundleAndStateKeepsTheConsistentPair) {
  TempDir dir;
  CheckpointStore store(dir.path());
  ASSERT_TRUE(store.Save(Data(1, 1)).ok());
  // Simulate the next save dying after the bundle was written.
  ASSERT_TRUE(WriteFileAtomic(dir.path() + "/global-v3.safetensors", "partial garbage").ok());
  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ((*loaded)->completed_round, 1);
  EXPECT_EQ((*loaded)->global_version, 2);
}

TEST(CheckpointTest, StrategyStateRoundTripsFallsBackWhenCorruptAndIsCollected) {
  TempDir dir;
  CheckpointStore store(dir.path());
  auto flat = [](const TensorBundle& b) {
    std::vector<std::pair<std::string, std::vector<float>>> out;
    for (const NamedTensor& t : b.tensors) out.emplace_back(t.name, t.values);
    return out;
  };
  auto with_state = [](int64_t round, float v) {
    CheckpointData d = Data(round, v);
    d.strategy_state.tensors.push_back(NamedTensor{"m/a", {2}, {v * 0.1f, -v}});
    d.strategy_state.tensors.push_back(NamedTensor{"step", {1}, {static_cast<float>(round)}});
    return d;
  };
  for (int64_t r = 1; r <= 3; ++r) ASSERT_TRUE(store.Save(with_state(r, static_cast<float>(r) + 0.3f)).ok());
  // Only the files named by state.json (v4) and state.prev.json (v3) remain.
  EXPECT_FALSE(fs::exists(fs::path(dir.path()) / "strategy-v2.safetensors"));
  EXPECT_TRUE(fs::exists(fs::path(dir.path()) / "strategy-v3.safetensors"));
  EXPECT_TRUE(fs::exists(fs::path(dir.path()) / "strategy-v4.safetensors"));
  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_EQ(flat((*loaded)->strategy_state), flat(with_state(3, 3.3f).strategy_state));

  // A truncated strategy file makes state.json unusable: the previous round is used.
  Truncate((fs::path(dir.path()) / "strategy-v4.safetensors").string(), 20);
  loaded = store.Load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->completed_round, 2);
  EXPECT_EQ(flat((*loaded)->strategy_state), flat(with_state(2, 2.3f).strategy_state));

  // A stateless checkpoint names no strategy file and loads an empty state.
  ASSERT_TRUE(store.Save(Data(4, 9)).ok());
  loaded = store.Load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_TRUE((*loaded)->strategy_state.tensors.empty());
}

}  // namespace
}  // namespace fedge::aggregator

namespace fedge::aggregator {
namespace {

// Regression (issue 10, item 11): safetensors sorts tensors by name, so a
// global whose tensors were not in name order came back reordered and
// re-encoded to another checksum after a restart.
TEST(CheckpointOrderTest, RestoredGlobalKeepsItsTensorOrderAndEncoding) {
  testing::TempDir dir;
  CheckpointStore store(dir.path());
  CheckpointData d;
  d.job = "ns/demo";
  d.completed_round = 1;
  d.total_rounds = 2;
  d.global_version = 2;
  d.global = TensorBundle{{NamedTensor{"layer.0.lora_A", {2}, {1, 2}},
                           NamedTensor{"classifier.bias", {1}, {3}}, NamedTensor{"b", {1, 2}, {4, 5}}}};
  const EncodeOptions enc{Codec::kFp32, 64, /*zstd=*/true, 3};
  auto before = EncodeBundle(d.global, enc);
  ASSERT_TRUE(before.ok());
  ASSERT_TRUE(store.Save(d).ok());
  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_TRUE(loaded->has_value());
  const TensorBundle& g = (*loaded)->global;
  ASSERT_EQ(g.tensors.size(), 3u);
  EXPECT_EQ(g.tensors[0].name, "layer.0.lora_A");
  EXPECT_EQ(g.tensors[1].name, "classifier.bias");
  EXPECT_EQ(g.tensors[2].name, "b");
  auto after = EncodeBundle(g, enc);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(Sha256Hex(*after), Sha256Hex(*before));
}

}  // namespace
}  // namespace fedge::aggregator
