#include "fedge/cli/wordnet_data.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <numbers>
#include <numeric>
#include <sstream>

#include "fedge/cli/io.h"

namespace fedge::cli {

const std::vector<std::string>& NounSupersenses() {
  static const std::vector<std::string> kNames = {
      "noun.act",        "noun.animal",        "noun.artifact",   "noun.attribute", "noun.body",
      "noun.cognition",  "noun.communication", "noun.event",      "noun.feeling",   "noun.food",
      "noun.group",      "noun.location",      "noun.motive",     "noun.object",    "noun.person",
      "noun.phenomenon", "noun.plant",         "noun.possession", "noun.process",   "noun.quantity",
      "noun.relation",   "noun.shape",         "noun.state",      "noun.substance", "noun.time"};
  return kNames;
}

namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

// Splits on single spaces; wndb fields never contain spaces.
std::vector<std::string_view> Fields(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && s[i] == ' ') ++i;
    size_t j = i;
    while (j < s.size() && s[j] != ' ') ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

Status Malformed(std::string_view line, const std::string& why) {
  return InvalidArgumentError("malformed data.noun line (" + why +
                              "): " + std::string(line.substr(0, std::min<size_t>(line.size(), 80))));
}

}  // namespace

StatusOr<std::optional<TextExample>> ParseDataNounLine(std::string_view line) {
  if (line.empty() || line.front() == ' ') return std::optional<TextExample>();  // license header
  const size_t bar = line.find(" | ");
  if (bar == std::string_view::npos) return Malformed(line, "no gloss");
  const auto fields = Fields(line.substr(0, bar));
  if (fields.size() < 6) return Malformed(line, "too few fields");
  int lex = -1;
  auto [p1, e1] = std::from_chars(fields[1].data(), fields[1].data() + fields[1].size(), lex);
  if (e1 != std::errc() || p1 != fields[1].data() + fields[1].size()) return Malformed(line, "lex_filenum");
  if (lex < kFirstNounLexFile || lex > kLastNounLexFile) return std::optional<TextExample>();
  int w_cnt = 0;
  auto [p3, e3] = std::from_chars(fields[3].data(), fields[3].data() + fields[3].size(), w_cnt, 16);
  if (e3 != std::errc() || w_cnt < 1) return Malformed(line, "w_cnt");

  std::string lemma(fields[4]);
  std::replace(lemma.begin(), lemma.end(), '_', ' ');

  std::string_view gloss = line.substr(bar + 3);
  const size_t example = gloss.find("; \"");
  if (example != std::string_view::npos) gloss = gloss.substr(0, example);
  gloss = Trim(gloss);
  while (!gloss.empty() && gloss.back() == ';') gloss = Trim(gloss.substr(0, gloss.size() - 1));
  if (gloss.empty()) return Malformed(line, "empty definition");

  TextExample ex;
  ex.text = lemma + ": " + std::string(gloss);
  ex.label = lex - kFirstNounLexFile;
  return std::optional<TextExample>(std::move(ex));
}

StatusOr<std::vector<TextExample>> LoadDataNoun(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return NotFoundError(
        "cannot read " + path +
        ": install Debian's wordnet-base (apt-get install wordnet-base) or pass --wordnet-dir");
  }
  std::vector<TextExample> out;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    auto parsed = ParseDataNounLine(line);
    if (!parsed.ok()) return parsed.status().WithContext(path + ":" + std::to_string(number));
    if (parsed->has_value()) out.push_back(std::move(**parsed));
  }
  if (out.empty()) return InvalidArgumentError(path + ": no noun synsets in lexicographer files 04..28");
  return out;
}

// ---- randomness ----

double SeededRandom::Uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

uint64_t SeededRandom::Below(uint64_t n) {
  // Rejection sampling: no modulo bias.
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  uint64_t x;
  do {
    x = engine_();
  } while (x >= limit);
  return x % n;
}

double SeededRandom::Normal() {
  double u1;
  do {
    u1 = Uniform();
  } while (u1 <= 0.0);
  const double u2 = Uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

double SeededRandom::Gamma(double shape) {
  if (shape < 1.0) {
    // Gamma(a) = Gamma(a + 1) * U^(1/a).
    double u;
    do {
      u = Uniform();
    } while (u <= 0.0);
    return Gamma(shape + 1.0) * std::pow(u, 1.0 / shape);
  }
  const double d = shape - 1.0 / 3.0;
  const double c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = Normal();
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    const double u = Uniform();
    if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
    if (u > 0.0 && std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
  }
}

std::vector<double> SeededRandom::Dirichlet(double alpha, int k) {
  std::vector<double> p(k);
  double sum = 0;
  for (int i = 0; i < k; ++i) sum += (p[i] = Gamma(alpha));
  if (sum <= 0) {
    // Every draw underflowed (tiny alpha): all mass on one uniformly chosen shard.
    std::fill(p.begin(), p.end(), 0.0);
    p[Below(k)] = 1.0;
    return p;
  }
  for (double& x : p) x /= sum;
  return p;
}

// ---- split and partition ----

StatusOr<TrainTestSplit> SplitTrainTest(std::vector<TextExample> all, int test_size, int max_train,
                                        SeededRandom& rng) {
  if (test_size < 1)
    return InvalidArgumentError("--test-size must be >= 1, got " + std::to_string(test_size));
  if (static_cast<size_t>(test_size) >= all.size()) {
    return InvalidArgumentError("--test-size " + std::to_string(test_size) + " leaves no training data (" +
                                std::to_string(all.size()) + " examples in total)");
  }
  rng.Shuffle(all);
  TrainTestSplit split;
  split.test.assign(std::make_move_iterator(all.begin()), std::make_move_iterator(all.begin() + test_size));
  auto train_end = all.end();
  if (max_train > 0 && static_cast<size_t>(max_train) < all.size() - test_size) {
    train_end = all.begin() + test_size + max_train;
  }
  split.train.assign(std::make_move_iterator(all.begin() + test_size), std::make_move_iterator(train_end));
  return split;
}

StatusOr<std::vector<std::vector<TextExample>>> DirichletPartition(const std::vector<TextExample>& train,
                                                                   int num_labels, int shards, double alpha,
                                                                   SeededRandom& rng) {
  if (shards < 1) return InvalidArgumentError("--agents must be >= 1, got " + std::to_string(shards));
  if (!(alpha > 0) || !std::isfinite(alpha)) {
    return InvalidArgumentError("--alpha must be > 0, got " + std::to_string(alpha));
  }
  if (train.size() < static_cast<size_t>(shards)) {
    return InvalidArgumentError("cannot split " + std::to_string(train.size()) + " training examples over " +
                                std::to_string(shards) + " agents");
  }
  std::vector<std::vector<size_t>> by_label(num_labels);
  for (size_t i = 0; i < train.size(); ++i) by_label.at(train[i].label).push_back(i);

  const size_t min_size = std::min<size_t>(10, train.size() / shards);
  std::vector<std::vector<size_t>> assign;
  constexpr int kMaxDraws = 100;
  for (int draw = 0; draw < kMaxDraws; ++draw) {
    assign.assign(shards, {});
    for (int c = 0; c < num_labels; ++c) {
      std::vector<size_t> idx = by_label[c];
      if (idx.empty()) continue;
      rng.Shuffle(idx);
      const std::vector<double> p = rng.Dirichlet(alpha, shards);
      double cum = 0;
      size_t begin = 0;
      for (int s = 0; s < shards; ++s) {
        cum += p[s];
        size_t end = s == shards - 1
                         ? idx.size()
                         : std::min(idx.size(), static_cast<size_t>(std::floor(cum * idx.size())));
        end = std::max(end, begin);
        assign[s].insert(assign[s].end(), idx.begin() + begin, idx.begin() + end);
        begin = end;
      }
    }
    const bool big_enough =
        std::all_of(assign.begin(), assign.end(), [&](const auto& a) { return a.size() >= min_size; });
    if (big_enough) break;
  }
  // Extremely small alpha can keep starving a shard: top it up from the largest.
  for (int s = 0; s < shards; ++s) {
    while (assign[s].size() < std::max<size_t>(1, min_size)) {
      auto largest = std::max_element(assign.begin(), assign.end(),
                                      [](const auto& a, const auto& b) { return a.size() < b.size(); });
      assign[s].push_back(largest->back());
      largest->pop_back();
    }
  }
  std::vector<std::vector<TextExample>> out(shards);
  for (int s = 0; s < shards; ++s) {
    rng.Shuffle(assign[s]);
    out[s].reserve(assign[s].size());
    for (size_t i : assign[s]) out[s].push_back(train[i]);
  }
  return out;
}

std::vector<int64_t> LabelHistogram(const std::vector<TextExample>& examples, int num_labels) {
  std::vector<int64_t> h(num_labels, 0);
  for (const auto& e : examples) h.at(e.label)++;
  return h;
}

std::string ExampleJsonLine(const TextExample& example, const std::vector<std::string>& labels) {
  nlohmann::ordered_json j;
  j["text"] = example.text;
  j["label"] = labels.at(example.label);
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string GlossJsonLine(const TextExample& example) {
  size_t colon = example.text.find(": ");
  nlohmann::ordered_json j;
  if (colon == std::string::npos) {
    j["prompt"] = example.text + ":";
    j["completion"] = " ";
  } else {
    j["prompt"] = example.text.substr(0, colon + 1);
    j["completion"] = example.text.substr(colon + 1);
  }
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

namespace {

Status WriteJsonl(const std::string& path, const std::vector<TextExample>& examples,
                  const std::vector<std::string>& labels, bool gloss) {
  std::string text;
  for (const auto& e : examples) text += gloss ? GlossJsonLine(e) : ExampleJsonLine(e, labels);
  return WriteWholeFile(path, text);
}

}  // namespace

StatusOr<WordnetDatasetInfo> BuildWordnetDataset(const WordnetOptions& o) {
  if (o.out_dir.empty()) return InvalidArgumentError("--out is required");
  if (o.task != "classification" && o.task != "gloss")
    return InvalidArgumentError("--task must be classification or gloss, got \"" + o.task + "\"");
  const bool gloss = o.task == "gloss";
  if (o.agents < 1) return InvalidArgumentError("--agents must be >= 1, got " + std::to_string(o.agents));
  if (o.max_train < 0)
    return InvalidArgumentError("--max-train must be >= 0, got " + std::to_string(o.max_train));
  FEDGE_ASSIGN_OR_RETURN(auto all, LoadDataNoun(o.wordnet_dir + "/data.noun"));
  const auto& labels = NounSupersenses();
  const int k = static_cast<int>(labels.size());

  SeededRandom rng(o.seed);
  FEDGE_ASSIGN_OR_RETURN(auto split, SplitTrainTest(std::move(all), o.test_size, o.max_train, rng));
  FEDGE_ASSIGN_OR_RETURN(auto shards, DirichletPartition(split.train, k, o.agents, o.alpha, rng));

  WordnetDatasetInfo info;
  info.labels = labels;
  info.num_train = static_cast<int64_t>(split.train.size());
  info.num_test = static_cast<int64_t>(split.test.size());
  info.test_histogram = LabelHistogram(split.test, k);
  const auto train_hist = LabelHistogram(split.train, k);
  const int majority =
      static_cast<int>(std::max_element(train_hist.begin(), train_hist.end()) - train_hist.begin());
  info.majority_label = labels[majority];
  info.majority_baseline =
      static_cast<double>(info.test_histogram[majority]) / static_cast<double>(info.num_test);

  FEDGE_RETURN_IF_ERROR(MakeDirectories(o.out_dir + "/all"));
  nlohmann::ordered_json per_agent = nlohmann::ordered_json::array();
  const size_t t = split.test.size();
  for (int i = 0; i < o.agents; ++i) {
    const std::string dir = o.out_dir + "/agent-" + std::to_string(i);
    FEDGE_RETURN_IF_ERROR(MakeDirectories(dir));
    // Contiguous slices of the (already shuffled) test set: IID, sizes differ by <= 1.
    const size_t begin = t * i / o.agents, end = t * (i + 1) / o.agents;
    std::vector<TextExample> test_slice(split.test.begin() + begin, split.test.begin() + end);
    FEDGE_RETURN_IF_ERROR(WriteJsonl(dir + "/train.jsonl", shards[i], labels, gloss));
    FEDGE_RETURN_IF_ERROR(WriteJsonl(dir + "/test.jsonl", test_slice, labels, gloss));
    info.agent_train_histograms.push_back(LabelHistogram(shards[i], k));
    info.agent_test_sizes.push_back(static_cast<int64_t>(test_slice.size()));
    nlohmann::ordered_json a;
    a["agent"] = "agent-" + std::to_string(i);
    a["num_train"] = shards[i].size();
    a["num_test"] = test_slice.size();
    a["histogram"] = info.agent_train_histograms.back();  // counts in `labels` order
    per_agent.push_back(a);
  }
  FEDGE_RETURN_IF_ERROR(WriteJsonl(o.out_dir + "/test.jsonl", split.test, labels, gloss));
  FEDGE_RETURN_IF_ERROR(WriteJsonl(o.out_dir + "/all/test.jsonl", split.test, labels, gloss));
  FEDGE_RETURN_IF_ERROR(WriteJsonl(o.out_dir + "/all/train.jsonl", split.train, labels, gloss));
  FEDGE_RETURN_IF_ERROR(
      WriteWholeFile(o.out_dir + "/labels.json", nlohmann::ordered_json(labels).dump(2) + "\n"));

  nlohmann::ordered_json meta;
  meta["source"] = "wordnet-base data.noun (" + o.wordnet_dir + ")";
  meta["labels"] = labels;
  meta["num_train"] = info.num_train;
  meta["num_test"] = info.num_test;
  meta["agents"] = o.agents;
  meta["alpha"] = o.alpha;
  meta["seed"] = o.seed;
  meta["test_size"] = o.test_size;
  meta["max_train"] = o.max_train;
  meta["majority_label"] = info.majority_label;
  meta["majority_baseline"] = info.majority_baseline;
  meta["chance"] = 1.0 / k;
  meta["train_histogram"] = train_hist;
  meta["test_histogram"] = info.test_histogram;
  meta["per_agent"] = per_agent;
  FEDGE_RETURN_IF_ERROR(WriteWholeFile(o.out_dir + "/meta.json", meta.dump(2) + "\n"));
  return info;
}

std::string FormatWordnetSummary(const WordnetDatasetInfo& info, const WordnetOptions& o) {
  std::ostringstream out;
  char buf[64];
  const int n = static_cast<int>(info.agent_train_histograms.size());
  out << "label          ";
  for (int i = 0; i < n; ++i) {
    std::snprintf(buf, sizeof(buf), " %8s", ("agent-" + std::to_string(i)).c_str());
    out << buf;
  }
  out << "    train     test\n";
  std::vector<int64_t> agent_totals(n, 0);
  for (size_t c = 0; c < info.labels.size(); ++c) {
    std::string name = info.labels[c].substr(info.labels[c].find('.') + 1);
    std::snprintf(buf, sizeof(buf), "%-15s", name.c_str());
    out << buf;
    int64_t total = 0;
    for (int i = 0; i < n; ++i) {
      const int64_t v = info.agent_train_histograms[i][c];
      total += v;
      agent_totals[i] += v;
      std::snprintf(buf, sizeof(buf), " %8lld", static_cast<long long>(v));
      out << buf;
    }
    std::snprintf(buf, sizeof(buf), " %8lld %8lld\n", static_cast<long long>(total),
                  static_cast<long long>(info.test_histogram[c]));
    out << buf;
  }
  out << "total          ";
  for (int i = 0; i < n; ++i) {
    std::snprintf(buf, sizeof(buf), " %8lld", static_cast<long long>(agent_totals[i]));
    out << buf;
  }
  std::snprintf(buf, sizeof(buf), " %8lld %8lld\n", static_cast<long long>(info.num_train),
                static_cast<long long>(info.num_test));
  out << buf;
  std::snprintf(buf, sizeof(buf), "%.4f", info.majority_baseline);
  out << "\n"
      << info.num_train << " train / " << info.num_test << " test examples, " << info.labels.size()
      << " labels, " << n << " agents (Dirichlet alpha " << o.alpha << ", seed " << o.seed << ")\n"
      << "majority baseline " << buf << " (" << info.majority_label << "), chance "
      << 1.0 / info.labels.size() << "\nwrote " << o.out_dir << "\n";
  return out.str();
}

}  // namespace fedge::cli
