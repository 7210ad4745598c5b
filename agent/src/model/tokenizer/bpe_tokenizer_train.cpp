// Byte-level BPE training with incremental pair counts: each merge only revisits
// the words that contain the merged pair.
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fedge/agent/llm/bpe_trainer.h"

namespace fedge::agent::llm {
namespace {

std::string Mapped(std::string_view bytes) {
  std::string out;
  for (unsigned char b : bytes) {
    char32_t c = ByteToUnicode(b);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {  // all stand-ins are below U+0800
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

using Pair = std::pair<int32_t, int32_t>;
struct PairHash {
  size_t operator()(const Pair& p) const {
    return std::hash<uint64_t>()((uint64_t(uint32_t(p.first)) << 32) | uint32_t(p.second));
  }
};

}  // namespace

StatusOr<std::string> TrainBpeTokenizer(const std::vector<std::string>& corpus,
                                        const BpeTrainOptions& options) {
  const int base = static_cast<int>(options.special_tokens.size()) + 256;
  if (options.vocab_size < base) {
    return InvalidArgumentError("bpe train: vocab_size " + std::to_string(options.vocab_size) +
                                " is below the " + std::to_string(base) + " special and byte tokens");
  }
  std::vector<std::string> tokens = options.special_tokens;  // id -> mapped token text
  for (int b = 0; b < 256; ++b) tokens.push_back(Mapped(std::string(1, static_cast<char>(b))));

  std::unordered_map<std::string, int32_t> token_ids;
  for (size_t id = 0; id < tokens.size(); ++id) token_ids.emplace(tokens[id], static_cast<int32_t>(id));

  std::unordered_map<std::string, int64_t> word_counts;
  for (const std::string& line : corpus) {
    for (std::string& piece : SplitGpt2Pattern(line)) ++word_counts[std::move(piece)];
  }
  // Sorted words make the run independent of hash-map order.
  std::map<std::string, int64_t> sorted(word_counts.begin(), word_counts.end());
  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> counts;
  const auto first_byte = static_cast<int32_t>(options.special_tokens.size());
  for (const auto& [w, n] : sorted) {
    std::vector<int32_t> syms;
    for (unsigned char b : w) syms.push_back(first_byte + b);
    words.push_back(std::move(syms));
    counts.push_back(n);
  }

  std::unordered_map<Pair, int64_t, PairHash> pair_count;
  std::unordered_map<Pair, std::set<size_t>, PairHash> where;
  for (size_t w = 0; w < words.size(); ++w) {
    for (size_t k = 0; k + 1 < words[w].size(); ++k) {
      Pair p{words[w][k], words[w][k + 1]};
      pair_count[p] += counts[w];
      where[p].insert(w);
    }
  }
  std::vector<Pair> merges;
  while (static_cast<int>(tokens.size()) < options.vocab_size) {
    Pair best{-1, -1};
    int64_t best_count = 0;
    for (const auto& [p, n] : pair_count) {
      if (n <= 0) continue;
      if (n > best_count || (n == best_count && std::tie(tokens[p.first], tokens[p.second]) <
                                                    std::tie(tokens[best.first], tokens[best.second]))) {
        best = p;
        best_count = n;
      }
    }
    if (best_count < options.min_frequency) break;
    // Two merge paths can spell the same string ((a, bc) and (ab, c)): one id.
    std::string merged_text = tokens[best.first] + tokens[best.second];
    auto [it, fresh] = token_ids.emplace(merged_text, static_cast<int32_t>(tokens.size()));
    const int32_t new_id = it->second;
    if (fresh) tokens.push_back(std::move(merged_text));
    merges.push_back(best);
    std::set<size_t> affected = std::move(where[best]);
    where.erase(best);
    for (size_t w : affected) {
      std::vector<int32_t>& s = words[w];
      const int64_t n = counts[w];
      for (size_t k = 0; k + 1 < s.size(); ++k) {
        auto pc = pair_count.find({s[k], s[k + 1]});
        if ((pc->second -= n) <= 0) pair_count.erase(pc);
      }
      std::vector<int32_t> merged;
      for (size_t k = 0; k < s.size(); ++k) {
        if (k + 1 < s.size() && s[k] == best.first && s[k + 1] == best.second) {
          merged.push_back(new_id);
          ++k;
        } else {
          merged.push_back(s[k]);
        }
      }
      s = std::move(merged);
      for (size_t k = 0; k + 1 < s.size(); ++k) {
        Pair p{s[k], s[k + 1]};
        pair_count[p] += n;
        where[p].insert(w);
      }
    }
    pair_count.erase(best);
  }

  nlohmann::json vocab = nlohmann::json::object();
  for (size_t id = 0; id < tokens.size(); ++id) vocab[tokens[id]] = id;
  nlohmann::json merge_list = nlohmann::json::array();
  for (const Pair& p : merges) merge_list.push_back({tokens[p.first], tokens[p.second]});
  nlohmann::json added = nlohmann::json::array();
  for (size_t id = 0; id < options.special_tokens.size(); ++id) {
    added.push_back({{"id", id},
                     {"content", options.special_tokens[id]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  nlohmann::json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  nlohmann::json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", byte_level},
      {"post_processor", nullptr},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merge_list}}},
  };
  return j.dump(1);
}

}  // namespace fedge::agent::llm
