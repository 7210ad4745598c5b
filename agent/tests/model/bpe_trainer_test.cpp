#include "fedge/agent/llm/bpe_trainer.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "fedge/agent/llm/bpe_tokenizer.h"

namespace fedge::agent::llm {
namespace {

const std::vector<std::string> kCorpus = {"dog: a member of the genus Canis",
                                          "cat: feline mammal usually having thick soft fur",
                                          "the dog barked all night",
                                          "the cat sat on the mat",
                                          "dogs and cats and dogs",
                                          "naïve café: a small restaurant",
                                          "emoji 🐶 dog face",
                                          "numbers 12 345 6789"};

TEST(BpeTrainerTest, TrainedTokenizerRoundTripsAndCompresses) {
  auto json = TrainBpeTokenizer(kCorpus,
                                {.vocab_size = 300, .special_tokens = {"<|endoftext|>"}, .min_frequency = 2});
  ASSERT_TRUE(json.ok()) << json.status().ToString();
  auto tok = BpeTokenizer::FromJson(*json);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_LE(tok->vocab_size(), 300);
  EXPECT_GT(tok->vocab_size(), 257);
  EXPECT_EQ(tok->TokenToId("<|endoftext|>"), 0);
  size_t bytes = 0, ids = 0;
  for (const std::string& line : kCorpus) {
    std::vector<int32_t> enc = tok->Encode(line);
    EXPECT_EQ(tok->Decode(enc), line);
    bytes += line.size();
    ids += enc.size();
  }
  EXPECT_LT(ids * 4, bytes * 3);  // merges learned from the corpus compress it
  // " dog" is frequent: one token.
  EXPECT_EQ(tok->Encode(" dog").size(), 1u);
}

TEST(BpeTrainerTest, DeterministicAndValidated) {
  auto a = TrainBpeTokenizer(kCorpus, {.vocab_size = 280});
  auto b = TrainBpeTokenizer(kCorpus, {.vocab_size = 280});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(TrainBpeTokenizer(kCorpus, {.vocab_size = 100}).status().code(), StatusCode::kInvalidArgument);
  // min_frequency stops merging before the vocabulary fills.
  auto sparse = TrainBpeTokenizer({"abc"}, {.vocab_size = 400, .special_tokens = {}, .min_frequency = 2});
  ASSERT_TRUE(sparse.ok());
  EXPECT_EQ(nlohmann::json::parse(*sparse)["model"]["merges"].size(), 0u);
}

}  // namespace
}  // namespace fedge::agent::llm
