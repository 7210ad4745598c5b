// The feedback store (StateStore::AddFeedback / Feedback) and its mixing into
// a round's training set (feedback_mix.h), issue 13 item 5: deduplicated,
// capped with the oldest dropped first, durable across a restart.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "fedge/agent/runtime/feedback_mix.h"
#include "fedge/agent/runtime/state_store.h"

namespace fedge::agent {
namespace {

namespace fs = std::filesystem;

class FeedbackStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("fedge-feedback-store-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<StateStore> Open(size_t max_examples, bool enabled = true) {
    StateStoreOptions o;
    o.feedback_max_examples = max_examples;
    o.feedback_enabled = enabled;
    return std::make_unique<StateStore>(dir_.string(), "ns/job", o);
  }
  static FeedbackEntry Labelled(const std::string& text, const std::string& label) {
    FeedbackEntry e;
    e.text = text;
    e.label = label;
    e.ts_ms = 1;
    return e;
  }
  static std::vector<std::string> Texts(const std::vector<FeedbackEntry>& entries) {
    std::vector<std::string> out;
    for (const FeedbackEntry& e : entries) out.push_back(e.text);
    return out;
  }
  size_t LinesOnDisk(const std::string& path) {
    std::ifstream in(path);
    size_t n = 0;
    for (std::string line; std::getline(in, line);) n += !line.empty();
    return n;
  }

  fs::path dir_;
};

TEST_F(FeedbackStoreTest, SameTextAndLabelAreStoredOnce) {
  auto store = Open(100);
  auto first = store->AddFeedback(Labelled("a tabby cat", "noun.animal"));
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_FALSE(first->duplicate);
  auto again = store->AddFeedback(Labelled("a tabby cat", "noun.animal"));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(again->examples, 1u);
  // The same text with another label is another example.
  auto other = store->AddFeedback(Labelled("a tabby cat", "noun.artifact"));
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(other->duplicate);
  EXPECT_EQ(LinesOnDisk(store->FeedbackPath()), 2u) << "a duplicate wrote a line";
  auto held = store->Feedback();
  ASSERT_TRUE(held.ok());
  EXPECT_EQ(held->size(), 2u);
}

TEST_F(FeedbackStoreTest, CapDropsTheOldestFirstAndSurvivesARestart) {
  {
    auto store = Open(3);
    for (int i = 0; i < 5; ++i) {
      auto added = store->AddFeedback(Labelled("t" + std::to_string(i), "noun.animal"));
      ASSERT_TRUE(added.ok());
      EXPECT_EQ(added->dropped, i >= 3 ? 1u : 0u) << i;
      EXPECT_EQ(added->examples, std::min<size_t>(i + 1, 3));
    }
    auto held = store->Feedback();
    ASSERT_TRUE(held.ok());
    EXPECT_EQ(Texts(*held), (std::vector<std::string>{"t2", "t3", "t4"}));
    // A dropped example is new again (it is no longer held).
    auto readded = store->AddFeedback(Labelled("t0", "noun.animal"));
    ASSERT_TRUE(readded.ok());
    EXPECT_FALSE(readded->duplicate);
  }
  auto restarted = Open(3);
  auto held = restarted->Feedback();
  ASSERT_TRUE(held.ok()) << held.status().ToString();
  EXPECT_EQ(Texts(*held), (std::vector<std::string>{"t3", "t4", "t0"}));
  // Dedup survives the restart too.
  auto dup = restarted->AddFeedback(Labelled("t4", "noun.animal"));
  ASSERT_TRUE(dup.ok());
  EXPECT_TRUE(dup->duplicate);
}

TEST_F(FeedbackStoreTest, FileIsRewrittenOwnerOnlyOnceItHoldsTwiceTheCap) {
  auto store = Open(4);
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(store->AddFeedback(Labelled("t" + std::to_string(i), "x")).ok());
  EXPECT_LE(LinesOnDisk(store->FeedbackPath()), 8u) << "dropped examples pile up in the file";
  struct stat st {};
  ASSERT_EQ(::stat(store->FeedbackPath().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  for (const auto& entry : fs::directory_iterator(dir_))
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << "left " << entry.path();
  auto held = Open(4)->Feedback();
  ASSERT_TRUE(held.ok());
  EXPECT_EQ(Texts(*held), (std::vector<std::string>{"t36", "t37", "t38", "t39"}));
}

TEST_F(FeedbackStoreTest, ATornLastLineAndDuplicateLinesAreSkippedOnLoad) {
  fs::create_directories(dir_);
  {
    std::ofstream out(dir_ / "feedback.jsonl");
    out << R"({"label":"noun.plant","text":"oak","ts_ms":1})"
        << "\n"
        << R"({"label":"noun.plant","text":"oak","ts_ms":2})"
        << "\n"
        << R"({"completion":"hello","prompt":"say hi","ts_ms":3})"
        << "\n"
        << R"({"label":"noun.plant","te)";
  }
  auto held = Open(10)->Feedback();
  ASSERT_TRUE(held.ok()) << held.status().ToString();
  ASSERT_EQ(held->size(), 2u);
  EXPECT_EQ((*held)[0].text, "oak");
  EXPECT_EQ((*held)[0].ts_ms, 1);
  EXPECT_TRUE((*held)[1].generative());
  EXPECT_EQ((*held)[1].completion, "hello");
}

TEST_F(FeedbackStoreTest, GenerativeFeedbackIsStoredAsPromptAndCompletion) {
  auto store = Open(10);
  FeedbackEntry e;
  e.text = "Translate: cat";
  e.completion = "chat";
  ASSERT_TRUE(store->AddFeedback(e).ok());
  EXPECT_TRUE(store->AddFeedback(e)->duplicate);
  std::ifstream in(store->FeedbackPath());
  std::string line;
  std::getline(in, line);
  EXPECT_NE(line.find(R"("prompt":"Translate: cat")"), std::string::npos) << line;
  EXPECT_NE(line.find(R"("completion":"chat")"), std::string::npos) << line;
}

TEST_F(FeedbackStoreTest, DisabledFeedbackIsRefusedAndNothingIsWritten) {
  auto store = Open(10, /*enabled=*/false);
  auto added = store->AddFeedback(Labelled("a tabby cat", "noun.animal"));
  EXPECT_EQ(added.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(added.status().message().find("spec.feedback.enabled"), std::string::npos);
  EXPECT_FALSE(fs::exists(store->FeedbackPath()));
}

TEST(FeedbackMixTest, FeedbackIsTheConfiguredShareOfTheTrainingSet) {
  std::vector<Example> local(400, Example{"local", 0, ""});
  std::vector<Example> feedback = {{"f0", 1, ""}, {"f1", 1, ""}, {"f2", 1, ""}};
  MixedTrainingSet mixed = MixFeedback(local, feedback, /*weight=*/0.2, /*seed=*/7);
  // 0.2 / 0.8 * 400 = 100 copies: 100 of 500 examples.
  ASSERT_EQ(mixed.examples.size(), 500u);
  EXPECT_EQ(mixed.feedback_copies, 100);
  EXPECT_EQ(mixed.feedback_used, 3);
  std::map<std::string, int> counts;
  for (const Example& e : mixed.examples) counts[e.text]++;
  EXPECT_EQ(counts["local"], 400);
  for (const char* f : {"f0", "f1", "f2"}) {
    EXPECT_GE(counts[f], 33) << f;
    EXPECT_LE(counts[f], 34) << f;
  }
}

TEST(FeedbackMixTest, MoreFeedbackThanTheShareIsSubsampledBySeed) {
  std::vector<Example> local(9, Example{"local", 0, ""});
  std::vector<Example> feedback;
  for (int i = 0; i < 50; ++i) feedback.push_back({"f" + std::to_string(i), 1, ""});
  MixedTrainingSet a = MixFeedback(local, feedback, 0.5, 1);
  MixedTrainingSet b = MixFeedback(local, feedback, 0.5, 2);
  EXPECT_EQ(a.feedback_used, 9);
  EXPECT_EQ(a.examples.size(), 18u);
  std::set<std::string> distinct;
  for (size_t i = 9; i < a.examples.size(); ++i) distinct.insert(a.examples[i].text);
  EXPECT_EQ(distinct.size(), 9u);
  bool differ = false;
  for (size_t i = 9; i < a.examples.size(); ++i) differ |= a.examples[i].text != b.examples[i].text;
  EXPECT_TRUE(differ) << "the seed does not pick the subsample";
}

TEST(FeedbackMixTest, EdgeCases) {
  std::vector<Example> local(10, Example{"local", 0, ""});
  std::vector<Example> feedback = {{"f0", 1, ""}, {"f1", 1, ""}};
  MixedTrainingSet none = MixFeedback(local, {}, 0.5, 1);
  EXPECT_EQ(none.examples.size(), 10u);
  EXPECT_EQ(none.feedback_used, 0);
  MixedTrainingSet only = MixFeedback({}, feedback, 0.2, 1);
  EXPECT_EQ(only.examples.size(), 2u);
  EXPECT_EQ(only.feedback_used, 2);
  // A tiny share still trains on one feedback example; 0.9 is the ceiling.
  EXPECT_EQ(MixFeedback(local, feedback, 0.01, 1).feedback_copies, 1);
  EXPECT_EQ(MixFeedback(local, feedback, 5.0, 1).feedback_copies, 90);
}

TEST(FeedbackMixTest, EntriesBecomeExamplesOfTheJobsKind) {
  std::vector<FeedbackEntry> entries(4);
  entries[0].text = "oak";
  entries[0].label = "noun.plant";
  entries[1].text = "cat";
  entries[1].label = "noun.dragon";  // not a label of the job (any more)
  entries[2].text = "say hi";
  entries[2].completion = "hello";
  entries[3].text = "tabby";
  entries[3].label = "noun.animal";
  size_t skipped = 0;
  std::vector<Example> cls = FeedbackExamples(entries, {"noun.animal", "noun.plant"}, &skipped);
  ASSERT_EQ(cls.size(), 2u);
  EXPECT_EQ(skipped, 2u);
  EXPECT_EQ(cls[0].label, 1);
  EXPECT_EQ(cls[1].label, 0);
  std::vector<Example> gen = FeedbackExamples(entries, {}, &skipped);
  ASSERT_EQ(gen.size(), 1u);
  EXPECT_EQ(skipped, 3u);
  EXPECT_EQ(gen[0].text, "say hi");
  EXPECT_EQ(gen[0].completion, "hello");
}

}  // namespace
}  // namespace fedge::agent
