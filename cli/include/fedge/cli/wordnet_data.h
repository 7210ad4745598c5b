// `fedge data wordnet`: a real text-classification dataset from Debian's
// wordnet-base. Each noun synset becomes one example
//   {"text": "dog: a member of the genus Canis ...", "label": "noun.animal"}
// labelled with its supersense (lexicographer file 04..28: 25 classes), split
// into a held-out test set and a training set, and the training set is
// partitioned non-IID over N agents with a Dirichlet(alpha) prior per class
// (Hsu et al. 2019). Everything is seeded and uses no implementation-defined
// std:: distributions, so the same arguments give byte-identical files on any
// platform.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/status.h"

namespace fedge::cli {

struct TextExample {
  std::string text;
  int label = 0;  // index into NounSupersenses()

  bool operator==(const TextExample&) const = default;
};

// The 25 noun supersense names ("noun.act" .. "noun.time") in lexicographer-file
// order (wndb(5)/lexnames: 04 noun.act ... 28 noun.time). Debian's wordnet-base
// does not ship the lexnames file, so the table is built in.
const std::vector<std::string>& NounSupersenses();
constexpr int kFirstNounLexFile = 4;
constexpr int kLastNounLexFile = 28;

// Parses one line of data.noun (wndb(5)):
//   offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id...] p_cnt ... | gloss
// Returns nullopt for lines to skip (the license header, which starts with
// spaces, and synsets outside lex files 04..28, i.e. noun.Tops); an error for a
// malformed line. text = "<first lemma, '_' -> ' '>: <definition>", where the
// definition is the gloss up to its first example ('; "'), trimmed.
StatusOr<std::optional<TextExample>> ParseDataNounLine(std::string_view line);

// Reads every usable synset of a data.noun file, in file order.
StatusOr<std::vector<TextExample>> LoadDataNoun(const std::string& path);

// Deterministic random numbers over a std::mt19937_64 (whose output sequence is
// fixed by the standard, unlike std:: distributions).
class SeededRandom {
 public:
  explicit SeededRandom(uint64_t seed) : engine_(seed) {}
  double Uniform();                                    // [0, 1)
  uint64_t Below(uint64_t n);                          // [0, n), unbiased; n > 0
  double Normal();                                     // N(0, 1), Box-Muller
  double Gamma(double shape);                          // Gamma(shape, 1), Marsaglia-Tsang; shape > 0
  std::vector<double> Dirichlet(double alpha, int k);  // symmetric Dir(alpha) over k
  template <typename T>
  void Shuffle(std::vector<T>& v) {  // Fisher-Yates
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[Below(i)]);
  }

 private:
  std::mt19937_64 engine_;
};

// Shuffles `all` and takes the first `test_size` examples as the test set, the
// rest (capped at `max_train` when > 0) as the training set.
struct TrainTestSplit {
  std::vector<TextExample> train;
  std::vector<TextExample> test;
};
StatusOr<TrainTestSplit> SplitTrainTest(std::vector<TextExample> all, int test_size, int max_train,
                                        SeededRandom& rng);

// Partitions `train` over `shards` agents: for each class, proportions drawn
// from Dir(alpha) decide how that class's examples are divided. Small alpha is
// very skewed, large alpha approaches IID. Redraws (bounded) until every shard
// holds at least min(10, |train| / shards) examples, then, if needed, moves
// examples from the largest shard so that no shard is ever empty. Each shard is
// shuffled. Error if |train| < shards.
StatusOr<std::vector<std::vector<TextExample>>> DirichletPartition(const std::vector<TextExample>& train,
                                                                   int num_labels, int shards, double alpha,
                                                                   SeededRandom& rng);

// counts[label] for a set of examples.
std::vector<int64_t> LabelHistogram(const std::vector<TextExample>& examples, int num_labels);

// One JSONL line (with trailing '\n'): {"text":"...","label":"noun.animal"}.
std::string ExampleJsonLine(const TextExample& example, const std::vector<std::string>& labels);

// One causal-LM JSONL line for the gloss task: the text "lemma: definition"
// becomes {"prompt":"lemma:","completion":" definition"}.
std::string GlossJsonLine(const TextExample& example);

struct WordnetOptions {
  // "classification": {"text","label"} lines (default); "gloss": {"prompt",
  // "completion"} lines for causal-LM jobs. Same split and partition (keyed on
  // the supersense) either way.
  std::string task = "classification";
  int agents = 4;
  double alpha = 0.5;
  uint64_t seed = 7;
  std::string out_dir;
  std::string wordnet_dir = "/usr/share/wordnet";
  int test_size = 2000;
  int max_train = 0;  // 0: no cap
};

struct WordnetDatasetInfo {
  std::vector<std::string> labels;
  int64_t num_train = 0;
  int64_t num_test = 0;
  std::vector<std::vector<int64_t>> agent_train_histograms;  // [agent][label]
  std::vector<int64_t> agent_test_sizes;
  std::vector<int64_t> test_histogram;
  std::string majority_label;    // most frequent label in train
  double majority_baseline = 0;  // fraction of the TEST set with that label
};

// Builds the dataset and writes under options.out_dir:
//   agent-<i>/train.jsonl   agent i's non-IID shard of the training set
//   agent-<i>/test.jsonl    an IID 1/N slice of the test set (slices partition it)
//   test.jsonl, all/test.jsonl   the whole test set
//   all/train.jsonl         the whole training set (union of the shards)
//   labels.json             the 25 label names, lexicographer-file order
//   meta.json               sizes, per-agent histograms, majority baseline, chance
// Files are written atomically (temp + rename).
StatusOr<WordnetDatasetInfo> BuildWordnetDataset(const WordnetOptions& options);

// The per-agent label histogram table printed by `fedge data wordnet`.
std::string FormatWordnetSummary(const WordnetDatasetInfo& info, const WordnetOptions& options);

}  // namespace fedge::cli
