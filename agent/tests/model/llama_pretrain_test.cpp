// A seconds-long pretraining run on a slice of WordNet: the loss falls, and the saved
// directory loads back as a CausalLm that generates.
#include <gtest/gtest.h>

#include <filesystem>

#include "fedge/agent/llm/causal_lm.h"
#include "fedge/agent/llm/pretrain.h"

namespace fedge::agent::llm {
namespace {

TEST(LlamaPretrainTest, TinyRunLearnsAndSavesALoadableModel) {
  if (!std::filesystem::exists("/usr/share/wordnet/data.noun")) GTEST_SKIP() << "wordnet-base not installed";
  PretrainOptions o;
  o.out_dir = ::testing::TempDir() + "/pretrain_tiny";
  o.max_lines = 600;
  o.vocab_size = 400;
  o.hidden_size = 32;
  o.num_layers = 1;
  o.num_heads = 2;
  o.num_kv_heads = 1;
  o.intermediate_size = 64;
  o.context = 64;
  o.seq_len = 32;
  o.batch_size = 8;
  o.max_steps = 60;
  o.warmup_steps = 5;
  o.max_seconds = 0;
  o.num_threads = 1;
  o.sample_lemmas = {"dog"};
  o.sample_tokens = 8;
  auto report = Pretrain(o);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->steps, 60);
  EXPECT_LT(report->final_loss, report->first_loss - 0.5);
  ASSERT_EQ(report->samples.size(), 1u);

  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                        "generation_config.json"}) {
    EXPECT_TRUE(std::filesystem::exists(o.out_dir + "/" + f)) << f;
  }
  auto lm = CausalLm::Load({.model_dir = o.out_dir});
  ASSERT_TRUE(lm.ok()) << lm.status().ToString();
  EXPECT_EQ((*lm)->config().num_key_value_heads, 1);
  GenerationOptions g;
  g.max_new_tokens = 5;
  g.sampling.temperature = 0;
  g.stop_at_eos = false;
  auto out = (*lm)->Generate("dog:", g);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->token_ids.size(), 5u);
  std::filesystem::remove_all(o.out_dir);
}

TEST(LlamaPretrainTest, RejectsInconsistentShapes) {
  PretrainOptions o;
  o.out_dir = ::testing::TempDir() + "/pretrain_bad";
  o.num_heads = 5;
  o.num_kv_heads = 2;
  EXPECT_EQ(Pretrain(o).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedge::agent::llm
