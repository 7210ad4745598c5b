#include "fedge/cli/wordnet_data.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "fedge/cli/io.h"
#include "temp_dir.h"

namespace fedge::cli {
namespace {

namespace fs = std::filesystem;

std::string Read(const std::string& path) {
  auto text = ReadWholeFile(path);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return text.ok() ? *text : "";
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

// A synthetic data.noun in wndb(5) format: `per_class` synsets for each of the
// 25 noun lex files plus noun.Tops lines and the license header.
std::string SyntheticDataNoun(int per_class) {
  std::string text = "  1 This software and database is being provided to you, the LICENSEE, by  \n";
  int offset = 1000;
  for (int lex = 3; lex <= 28; ++lex) {
    for (int i = 0; i < per_class; ++i) {
      char line[256];
      std::snprintf(line, sizeof(line),
                    "%08d %02d n 02 word_%d_%d 0 alias 1 001 @ 00001740 n 0000 | definition %d of class %d; "
                    "\"an example\"  \n",
                    offset++, lex, lex, i, i, lex);
      text += line;
    }
  }
  return text;
}

TEST(WordnetDataTest, ParsesSynsetLineIntoLemmaAndDefinition) {
  auto ex = ParseDataNounLine(
      "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 023 @ 02083346 n 0000 | a member of the "
      "genus "
      "Canis (probably descended from the common wolf); \"the dog barked all night\"  ");
  ASSERT_TRUE(ex.ok()) << ex.status().ToString();
  ASSERT_TRUE(ex->has_value());
  EXPECT_EQ((*ex)->text, "dog: a member of the genus Canis (probably descended from the common wolf)");
  EXPECT_EQ(NounSupersenses()[(*ex)->label], "noun.animal");
}

TEST(WordnetDataTest, UnderscoresBecomeSpacesAndGlossWithoutExampleIsTrimmed) {
  auto ex = ParseDataNounLine("00002137 28 n 02 time_period 0 period 0 000 | an amount of time  ");
  ASSERT_TRUE(ex.ok());
  ASSERT_TRUE(ex->has_value());
  EXPECT_EQ((*ex)->text, "time period: an amount of time");
  EXPECT_EQ(NounSupersenses()[(*ex)->label], "noun.time");
}

TEST(WordnetDataTest, SkipsHeaderAndTopsAndRejectsMalformedLines) {
  auto header = ParseDataNounLine("  1 This software and database is being provided");
  ASSERT_TRUE(header.ok());
  EXPECT_FALSE(header->has_value());
  auto tops =
      ParseDataNounLine("00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived  ");
  ASSERT_TRUE(tops.ok());
  EXPECT_FALSE(tops->has_value());
  EXPECT_FALSE(ParseDataNounLine("00001740 05 n 01 entity 0 003 no gloss here").ok());
  EXPECT_FALSE(ParseDataNounLine("00001740 xx n 01 entity 0 003 | gloss").ok());
}

TEST(WordnetDataTest, SupersensesAreTheTwentyFiveNounLexFilesInOrder) {
  const auto& labels = NounSupersenses();
  ASSERT_EQ(labels.size(), 25u);
  EXPECT_EQ(labels.front(), "noun.act");
  EXPECT_EQ(labels[2], "noun.artifact");
  EXPECT_EQ(labels[14], "noun.person");
  EXPECT_EQ(labels.back(), "noun.time");
  EXPECT_EQ(std::set<std::string>(labels.begin(), labels.end()).size(), 25u);
}

TEST(WordnetDataTest, GammaSamplesHaveTheRightMean) {
  SeededRandom rng(1);
  for (double shape : {0.1, 0.5, 1.0, 3.0}) {
    double sum = 0;
    constexpr int kN = 20000;
    for (int i = 0; i < kN; ++i) sum += rng.Gamma(shape);
    EXPECT_NEAR(sum / kN, shape, 0.05 * shape + 0.01) << "shape " << shape;
  }
  const auto p = rng.Dirichlet(0.5, 6);
  double total = 0;
  for (double x : p) total += x;
  EXPECT_NEAR(total, 1.0, 1e-12);
}

std::vector<TextExample> MakeExamples(int per_class, int classes) {
  std::vector<TextExample> out;
  for (int c = 0; c < classes; ++c) {
    for (int i = 0; i < per_class; ++i)
      out.push_back({"ex " + std::to_string(c) + "/" + std::to_string(i), c});
  }
  return out;
}

// Mean over shards of the share of a shard's examples in its most common class.
double MeanTopClassShare(const std::vector<std::vector<TextExample>>& shards, int classes) {
  double total = 0;
  for (const auto& s : shards) {
    auto h = LabelHistogram(s, classes);
    total += static_cast<double>(*std::max_element(h.begin(), h.end())) / s.size();
  }
  return total / shards.size();
}

TEST(WordnetDataTest, DirichletPartitionCoversTrainOnceAndSkewsWithSmallAlpha) {
  const auto train = MakeExamples(200, 10);
  SeededRandom rng_skewed(3), rng_iid(3);
  auto skewed = DirichletPartition(train, 10, 5, 0.1, rng_skewed);
  auto iid = DirichletPartition(train, 10, 5, 1000.0, rng_iid);
  ASSERT_TRUE(skewed.ok() && iid.ok());
  for (const auto* shards : {&*skewed, &*iid}) {
    std::multiset<std::string> seen;
    for (const auto& s : *shards) {
      EXPECT_FALSE(s.empty());
      for (const auto& e : s) seen.insert(e.text);
    }
    EXPECT_EQ(seen.size(), train.size());
    EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), train.size())
        << "an example is duplicated";
  }
  // Small alpha concentrates classes on few agents; large alpha is near uniform (1/10).
  EXPECT_GT(MeanTopClassShare(*skewed, 10), 0.35);
  EXPECT_LT(MeanTopClassShare(*iid, 10), 0.16);
}

TEST(WordnetDataTest, DirichletPartitionNeverLeavesAShardEmpty) {
  // 6 examples of one class over 5 agents with a tiny alpha: draws put
  // everything on one agent; the top-up must still give every agent data.
  const auto train = MakeExamples(6, 1);
  SeededRandom rng(9);
  auto shards = DirichletPartition(train, 1, 5, 0.001, rng);
  ASSERT_TRUE(shards.ok());
  size_t total = 0;
  for (const auto& s : *shards) {
    EXPECT_GE(s.size(), 1u);
    total += s.size();
  }
  EXPECT_EQ(total, 6u);
  SeededRandom rng2(9);
  EXPECT_FALSE(DirichletPartition(MakeExamples(2, 1), 1, 5, 0.5, rng2).ok());
}

TEST(WordnetDataTest, SplitRejectsTestSetAsLargeAsTheData) {
  SeededRandom rng(1);
  EXPECT_FALSE(SplitTrainTest(MakeExamples(10, 2), 20, 0, rng).ok());
  auto split = SplitTrainTest(MakeExamples(10, 2), 5, 8, rng);
  ASSERT_TRUE(split.ok());
  EXPECT_EQ(split->test.size(), 5u);
  EXPECT_EQ(split->train.size(), 8u);  // capped by max_train
}

class WordnetDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(WriteWholeFile(wordnet_.path() + "/data.noun", SyntheticDataNoun(40)).ok());
  }
  WordnetOptions Options(const std::string& out, uint64_t seed = 5) {
    WordnetOptions o;
    o.agents = 3;
    o.alpha = 0.5;
    o.seed = seed;
    o.out_dir = out;
    o.wordnet_dir = wordnet_.path();
    o.test_size = 101;
    return o;
  }
  TempDir wordnet_, out_;
};

TEST_F(WordnetDatasetTest, WritesShardsTestSlicesLabelsAndMeta) {
  auto info = BuildWordnetDataset(Options(out_.path()));
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  const std::string& d = out_.path();
  EXPECT_EQ(info->num_train + info->num_test, 25 * 40);
  EXPECT_EQ(info->num_test, 101);

  // Shards partition all/train.jsonl; test slices partition test.jsonl.
  std::multiset<std::string> shard_lines, slice_lines;
  for (int i = 0; i < 3; ++i) {
    const std::string a = d + "/agent-" + std::to_string(i);
    auto train = Lines(Read(a + "/train.jsonl"));
    auto test = Lines(Read(a + "/test.jsonl"));
    EXPECT_FALSE(train.empty());
    EXPECT_GE(test.size(), 33u);
    EXPECT_LE(test.size(), 34u);
    shard_lines.insert(train.begin(), train.end());
    slice_lines.insert(test.begin(), test.end());
  }
  auto all_train = Lines(Read(d + "/all/train.jsonl"));
  auto all_test = Lines(Read(d + "/test.jsonl"));
  EXPECT_EQ(shard_lines, std::multiset<std::string>(all_train.begin(), all_train.end()));
  EXPECT_EQ(slice_lines, std::multiset<std::string>(all_test.begin(), all_test.end()));
  EXPECT_EQ(Read(d + "/all/test.jsonl"), Read(d + "/test.jsonl"));
  // Train and test do not overlap.
  std::set<std::string> train_set(all_train.begin(), all_train.end());
  for (const auto& t : all_test) EXPECT_EQ(train_set.count(t), 0u) << t;

  auto first = nlohmann::json::parse(all_train.front());
  EXPECT_TRUE(first["text"].get<std::string>().starts_with("word "));
  EXPECT_TRUE(first["label"].get<std::string>().starts_with("noun."));
  EXPECT_EQ(first["text"].get<std::string>().find("example"), std::string::npos)
      << "example kept in the text";

  auto labels = nlohmann::json::parse(Read(d + "/labels.json"));
  EXPECT_EQ(labels.get<std::vector<std::string>>(), NounSupersenses());

  auto meta = nlohmann::json::parse(Read(d + "/meta.json"));
  EXPECT_EQ(meta["num_train"], info->num_train);
  EXPECT_EQ(meta["num_test"], 101);
  EXPECT_EQ(meta["agents"], 3);
  EXPECT_DOUBLE_EQ(meta["chance"].get<double>(), 1.0 / 25);
  EXPECT_EQ(meta["per_agent"].size(), 3u);
  // The majority baseline is measured on the test set for the train majority label.
  int label_index = -1;
  for (int i = 0; i < 25; ++i) {
    if (NounSupersenses()[i] == meta["majority_label"]) label_index = i;
  }
  ASSERT_GE(label_index, 0);
  int in_test = 0;
  for (const auto& t : all_test) in_test += nlohmann::json::parse(t)["label"] == meta["majority_label"];
  EXPECT_DOUBLE_EQ(meta["majority_baseline"].get<double>(), in_test / 101.0);
  int64_t hist_total = 0;
  for (const auto& a : meta["per_agent"]) {
    for (const auto& c : a["histogram"]) hist_total += c.get<int64_t>();
  }
  EXPECT_EQ(hist_total, info->num_train);

  const std::string table = FormatWordnetSummary(*info, Options(out_.path()));
  EXPECT_NE(table.find("agent-2"), std::string::npos);
  EXPECT_NE(table.find("artifact"), std::string::npos);
  EXPECT_NE(table.find("majority baseline"), std::string::npos);
}

TEST_F(WordnetDatasetTest, SameArgumentsGiveByteIdenticalFiles) {
  TempDir second, other_seed;
  ASSERT_TRUE(BuildWordnetDataset(Options(out_.path())).ok());
  ASSERT_TRUE(BuildWordnetDataset(Options(second.path())).ok());
  ASSERT_TRUE(BuildWordnetDataset(Options(other_seed.path(), /*seed=*/6)).ok());
  for (const std::string f : {"agent-0/train.jsonl", "agent-1/train.jsonl", "agent-2/train.jsonl",
                              "agent-0/test.jsonl", "all/train.jsonl", "test.jsonl", "labels.json"}) {
    EXPECT_EQ(Read(out_.path() + "/" + f), Read(second.path() + "/" + f)) << f;
  }
  // meta.json names the wordnet dir only, so it is identical too.
  EXPECT_EQ(Read(out_.path() + "/meta.json"), Read(second.path() + "/meta.json"));
  EXPECT_NE(Read(out_.path() + "/agent-0/train.jsonl"), Read(other_seed.path() + "/agent-0/train.jsonl"));
}

TEST_F(WordnetDatasetTest, MissingWordnetNamesThePackage) {
  WordnetOptions o = Options(out_.path());
  o.wordnet_dir = out_.path() + "/nowhere";
  auto info = BuildWordnetDataset(o);
  ASSERT_FALSE(info.ok());
  EXPECT_NE(info.status().message().find("wordnet-base"), std::string::npos);
}

TEST(WordnetDataTest, GlossLineSplitsLemmaPromptFromDefinitionCompletion) {
  TextExample e{"hot dog: a frankfurter served on a bun", 9};
  auto j = nlohmann::json::parse(GlossJsonLine(e));
  EXPECT_EQ(j.at("prompt"), "hot dog:");
  EXPECT_EQ(j.at("completion"), " a frankfurter served on a bun");
  EXPECT_EQ(j.size(), 2u);
}

TEST_F(WordnetDatasetTest, GlossTaskWritesPromptCompletionWithTheSamePartition) {
  TempDir gloss_out;
  ASSERT_TRUE(BuildWordnetDataset(Options(out_.path())).ok());
  WordnetOptions o = Options(gloss_out.path());
  o.task = "gloss";
  ASSERT_TRUE(BuildWordnetDataset(o).ok());
  for (const std::string f : {"agent-0/train.jsonl", "agent-2/train.jsonl", "test.jsonl"}) {
    auto cls = Lines(Read(out_.path() + "/" + f));
    auto gen = Lines(Read(gloss_out.path() + "/" + f));
    ASSERT_EQ(cls.size(), gen.size()) << f;
    ASSERT_FALSE(gen.empty()) << f;
    for (size_t i = 0; i < gen.size(); ++i) {
      auto c = nlohmann::json::parse(cls[i]);
      auto g = nlohmann::json::parse(gen[i]);
      ASSERT_TRUE(g.contains("prompt") && g.contains("completion")) << gen[i];
      EXPECT_FALSE(g.contains("label"));
      EXPECT_EQ(g["prompt"].get<std::string>() + g["completion"].get<std::string>(),
                c["text"].get<std::string>());
      EXPECT_EQ(g["prompt"].get<std::string>().back(), ':');
    }
  }
  WordnetOptions bad = Options(gloss_out.path());
  bad.task = "poetry";
  EXPECT_EQ(BuildWordnetDataset(bad).status().code(), StatusCode::kInvalidArgument);
}

TEST(WordnetRealDataTest, DebianWordnetHasAllTwentyFiveClasses) {
  if (!fs::exists("/usr/share/wordnet/data.noun")) GTEST_SKIP() << "wordnet-base not installed";
  auto all = LoadDataNoun("/usr/share/wordnet/data.noun");
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_GT(all->size(), 80000u);
  auto h = LabelHistogram(*all, 25);
  for (int c = 0; c < 25; ++c) EXPECT_GT(h[c], 0) << NounSupersenses()[c];
}

}  // namespace
}  // namespace fedge::cli
