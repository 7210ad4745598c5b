// StateStore::BindJobUid: the state directory of a job deleted and re-created
// under the same name (docs/operator.md, "same-named jobs reuse agent state").
// Real files in a temporary directory.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "fedge/agent/runtime/agent.h"
#include "fedge/agent/runtime/state_store.h"
#include "fedge/file_util.h"

namespace fedge::agent {
namespace {

namespace fs = std::filesystem;

constexpr const char* kJob = "ml/wn";
constexpr const char* kOldUid = "5f0c7e2a-1111-4c4e-9d1a-000000000001";
constexpr const char* kNewUid = "5f0c7e2a-2222-4c4e-9d1a-000000000002";

TensorBundle Global(float value) {
  TensorBundle b;
  b.tensors.push_back({"head.weight", {2}, {value, value}});
  return b;
}

std::string Slurp(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class StateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("fedge-state-store-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    dir_ = root_ / "state" / "ml" / "wn";
  }
  void TearDown() override { fs::remove_all(root_); }

  // What a run of the job leaves: a global at `version`, one feedback line and
  // the update encoder's residual with its marker.
  void LeaveState(StateStore& store, int64_t version) {
    ASSERT_TRUE(
        store.SaveGlobal(Global(static_cast<float>(version)), version, "sha-" + std::to_string(version))
            .ok());
    ASSERT_TRUE(store.AppendFeedback("a tabby cat", "noun.animal", 1).ok());
    ASSERT_TRUE(WriteFileAtomic(store.ResidualPath(), "residual").ok());
    ASSERT_TRUE(WriteFileAtomic(store.ResidualPath() + ".json", R"({"job":"ml/wn","round":3})").ok());
  }
  std::string RecordedUid() {
    auto j = nlohmann::json::parse(Slurp(dir_ / "job-uid.json"), nullptr, /*allow_exceptions=*/false);
    return j.is_object() ? j.value("uid", "") : "";
  }

  fs::path root_;
  fs::path dir_;
};

TEST_F(StateStoreTest, SameUidKeepsTheGlobalAndTheFeedback) {
  {
    StateStore first(dir_.string(), kJob);
    auto bound = first.BindJobUid(kOldUid);
    ASSERT_TRUE(bound.ok()) << bound.status().ToString();
    EXPECT_EQ(bound->previous_uid, "");
    EXPECT_TRUE(bound->discarded.empty());
    LeaveState(first, 4);
  }
  StateStore restarted(dir_.string(), kJob);  // the same job's agent restarts
  auto bound = restarted.BindJobUid(kOldUid);
  ASSERT_TRUE(bound.ok()) << bound.status().ToString();
  EXPECT_EQ(bound->previous_uid, kOldUid);
  EXPECT_TRUE(bound->discarded.empty());
  auto global = restarted.LoadGlobal();
  ASSERT_TRUE(global.ok()) << global.status().ToString();
  ASSERT_TRUE(global->has_value()) << "a restart of the same job serves its persisted global at once";
  EXPECT_EQ((*global)->version, 4);
  EXPECT_EQ((*global)->checksum, "sha-4");
  EXPECT_NE(Slurp(restarted.FeedbackPath()).find("a tabby cat"), std::string::npos);
  EXPECT_TRUE(fs::exists(restarted.ResidualPath()));
  EXPECT_EQ(RecordedUid(), kOldUid);
}

// The final global (the aggregator said DONE with it) is marked as such and read back so;
// any later non-final save clears the mark.
TEST_F(StateStoreTest, TheFinalGlobalIsMarkedAndReadBack) {
  StateStore store(dir_.string(), kJob);
  ASSERT_TRUE(store.SaveGlobal(Global(1.0f), 3, "sha-3").ok());
  auto g = store.LoadGlobal();
  ASSERT_TRUE(g.ok() && g->has_value());
  EXPECT_FALSE((*g)->final);
  ASSERT_TRUE(store.SaveGlobal(Global(1.0f), 3, "sha-3", /*final=*/true).ok());
  g = StateStore(dir_.string(), kJob).LoadGlobal();
  ASSERT_TRUE(g.ok() && g->has_value());
  EXPECT_TRUE((*g)->final);
  EXPECT_EQ((*g)->version, 3);
  ASSERT_TRUE(store.SaveGlobal(Global(2.0f), 4, "sha-4").ok());
  g = store.LoadGlobal();
  ASSERT_TRUE(g.ok() && g->has_value());
  EXPECT_FALSE((*g)->final);
}

// Regression: a job deleted and applied again under the same name got the same
// --state-dir, and its agents served the deleted job's global model and held
// its version, checksum and feedback as if they were the new job's.
TEST_F(StateStoreTest, SameNamedNewJobDiscardsTheOldGlobalFeedbackAndResidual) {
  {
    StateStore old_job(dir_.string(), kJob);
    ASSERT_TRUE(old_job.BindJobUid(kOldUid).ok());
    LeaveState(old_job, 7);
  }
  StateStore new_job(dir_.string(), kJob);
  auto bound = new_job.BindJobUid(kNewUid);
  ASSERT_TRUE(bound.ok()) << bound.status().ToString();
  EXPECT_EQ(bound->previous_uid, kOldUid);
  EXPECT_EQ(bound->discarded,
            (std::vector<std::string>{new_job.GlobalPath(), new_job.FeedbackPath(), new_job.ResidualPath(),
                                      new_job.ResidualPath() + ".json"}));
  auto global = new_job.LoadGlobal();
  ASSERT_TRUE(global.ok()) << global.status().ToString();
  EXPECT_FALSE(global->has_value()) << "the old job's version 7 must not be served";
  EXPECT_FALSE(fs::exists(new_job.FeedbackPath()));
  EXPECT_FALSE(fs::exists(new_job.ResidualPath()));
  EXPECT_FALSE(fs::exists(new_job.ResidualPath() + ".json"));
  EXPECT_EQ(RecordedUid(), kNewUid);

  // The new job's own state then survives its restarts.
  ASSERT_TRUE(new_job.SaveGlobal(Global(1.0f), 1, "sha-new").ok());
  StateStore restarted(dir_.string(), kJob);
  auto again = restarted.BindJobUid(kNewUid);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->discarded.empty());
  auto kept = restarted.LoadGlobal();
  ASSERT_TRUE(kept.ok() && kept->has_value());
  EXPECT_EQ((*kept)->version, 1);
  EXPECT_EQ((*kept)->checksum, "sha-new");
}

TEST_F(StateStoreTest, StateOfAnOlderAgentWithoutRecordedUidIsDiscardedWhenAUidIsGiven) {
  StateStore legacy(dir_.string(), kJob);  // an agent before job-uid.json: no BindJobUid
  LeaveState(legacy, 5);
  ASSERT_FALSE(fs::exists(dir_ / "job-uid.json"));

  StateStore new_job(dir_.string(), kJob);
  auto bound = new_job.BindJobUid(kNewUid);
  ASSERT_TRUE(bound.ok()) << bound.status().ToString();
  EXPECT_EQ(bound->previous_uid, "");
  EXPECT_EQ(bound->discarded.size(), 4u);
  auto global = new_job.LoadGlobal();
  ASSERT_TRUE(global.ok());
  EXPECT_FALSE(global->has_value());
  EXPECT_FALSE(fs::exists(new_job.FeedbackPath()));
  EXPECT_EQ(RecordedUid(), kNewUid);
}

TEST_F(StateStoreTest, WithoutAUidTheStateIsKeptWhateverRunLeftIt) {
  {
    StateStore old_job(dir_.string(), kJob);
    ASSERT_TRUE(old_job.BindJobUid(kOldUid).ok());
    LeaveState(old_job, 3);
  }
  StateStore legacy(dir_.string(), kJob);
  LeaveState(legacy, 2);
  // fedge run and hand-started agents give no --job-uid: nothing is checked.
  StateStore local(dir_.string(), kJob);
  auto global = local.LoadGlobal();
  ASSERT_TRUE(global.ok() && global->has_value());
  EXPECT_EQ((*global)->version, 2);
  EXPECT_TRUE(fs::exists(local.FeedbackPath()));
  EXPECT_EQ(RecordedUid(), kOldUid) << "nothing rewritten";
}

TEST_F(StateStoreTest, FreshDirectoryIsCreatedAndRecordsTheUid) {
  StateStore store(dir_.string(), kJob);
  auto bound = store.BindJobUid(kNewUid);
  ASSERT_TRUE(bound.ok()) << bound.status().ToString();
  EXPECT_EQ(bound->previous_uid, "");
  EXPECT_TRUE(bound->discarded.empty());
  auto j = nlohmann::json::parse(Slurp(dir_ / "job-uid.json"));
  EXPECT_EQ(j["uid"], kNewUid);
  EXPECT_EQ(j["job"], kJob);
}

TEST_F(StateStoreTest, SymlinksAreRemovedNeverFollowedAndOtherFilesStay) {
  fs::create_directories(dir_);
  // Files outside the state directory that links in it point at.
  const fs::path outside = root_ / "outside.safetensors";
  std::ofstream(outside) << "not yours";
  const fs::path forged_uid = root_ / "forged-uid.json";
  const std::string forged = nlohmann::json{{"job", kJob}, {"uid", kNewUid}}.dump();
  std::ofstream(forged_uid) << forged;
  fs::create_symlink(outside, dir_ / "global.safetensors");
  // A recorded uid reached through a link does not count as recorded.
  fs::create_symlink(forged_uid, dir_ / "job-uid.json");
  // Neither the operator's other jobs nor unknown files are the store's.
  std::ofstream(dir_ / "notes.txt") << "keep";
  fs::create_directories(root_ / "state" / "ml" / "other");
  std::ofstream(root_ / "state" / "ml" / "other" / "global.safetensors") << "another job";

  StateStore store(dir_.string(), kJob);
  auto bound = store.BindJobUid(kNewUid);
  ASSERT_TRUE(bound.ok()) << bound.status().ToString();
  EXPECT_EQ(bound->previous_uid, "");
  EXPECT_EQ(bound->discarded, std::vector<std::string>{store.GlobalPath()});
  EXPECT_FALSE(fs::exists(fs::symlink_status(dir_ / "global.safetensors")));
  EXPECT_EQ(Slurp(outside), "not yours") << "the link's target is untouched";
  EXPECT_FALSE(fs::is_symlink(dir_ / "job-uid.json")) << "the link itself was replaced";
  EXPECT_EQ(RecordedUid(), kNewUid);
  EXPECT_EQ(Slurp(forged_uid), forged);
  EXPECT_EQ(Slurp(dir_ / "notes.txt"), "keep");
  EXPECT_EQ(Slurp(root_ / "state" / "ml" / "other" / "global.safetensors"), "another job");
}

TEST_F(StateStoreTest, FileThatCannotBeRemovedFailsAndKeepsTheOldUidRecorded) {
  {
    StateStore old_job(dir_.string(), kJob);
    ASSERT_TRUE(old_job.BindJobUid(kOldUid).ok());
    ASSERT_TRUE(old_job.SaveGlobal(Global(1.0f), 9, "sha-9").ok());
  }
  // unlink(2) refuses a directory (EISDIR), also for root.
  fs::create_directories(dir_ / "feedback.jsonl" / "x");
  StateStore new_job(dir_.string(), kJob);
  auto bound = new_job.BindJobUid(kNewUid);
  ASSERT_FALSE(bound.ok());
  EXPECT_EQ(bound.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(bound.status().message().find(new_job.FeedbackPath()), std::string::npos)
      << bound.status().ToString();
  EXPECT_EQ(RecordedUid(), kOldUid) << "the next start must try again";
  // Once the obstacle is gone the next start completes the discard.
  fs::remove_all(dir_ / "feedback.jsonl");
  auto retried = StateStore(dir_.string(), kJob).BindJobUid(kNewUid);
  ASSERT_TRUE(retried.ok()) << retried.status().ToString();
  EXPECT_EQ(retried->previous_uid, kOldUid);
  EXPECT_EQ(RecordedUid(), kNewUid);
}

TEST_F(StateStoreTest, EmptyOrControlCharacterUidIsRefused) {
  StateStore store(dir_.string(), kJob);
  EXPECT_EQ(store.BindJobUid("").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store.BindJobUid("a\nb").status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(dir_)) << "nothing written";
}

TEST(JobUidFlagTest, ResolveAgentSettingsTakesAUidAndRefusesAnythingElse) {
  JobSpec spec;
  spec.name = "wn";
  spec.namespace_ = "ml";
  spec.model.path = "/m";
  AgentFlags f;
  f.aggregator = "agg:7000";
  auto none = ResolveAgentSettings(f, spec, "host", "");
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_EQ(none->job_uid, "") << "no --job-uid: the state directory is not checked";
  f.job_uid = kNewUid;
  auto given = ResolveAgentSettings(f, spec, "host", "");
  ASSERT_TRUE(given.ok()) << given.status().ToString();
  EXPECT_EQ(given->job_uid, kNewUid);
  for (const std::string& bad : std::vector<std::string>{"../x", "a b", "a\nb", std::string(129, 'a')}) {
    f.job_uid = bad;
    auto s = ResolveAgentSettings(f, spec, "host", "");
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find("--job-uid"), std::string::npos) << s.status().ToString();
  }
}

}  // namespace
}  // namespace fedge::agent
