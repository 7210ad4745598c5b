// LoRA fine-tuning of the decoder through the torch-free CausalLm interface.
#include <gtest/gtest.h>

#include "fedge/agent/llm/causal_lm.h"

namespace fedge::agent::llm {
namespace {

const std::string kTinyLlama = std::string(FEDGE_GOLDEN_DIR) + "/llm/tiny_llama";

const std::vector<PromptCompletion> kData = {
    {"dog:", " a domestic canine"}, {"cat:", " a small feline"}, {"oak:", " a tree of the genus Quercus"}};

std::unique_ptr<CausalLm> LoadWithLora() {
  auto lm = CausalLm::Load({.model_dir = kTinyLlama});
  EXPECT_TRUE(lm.ok()) << lm.status().ToString();
  EXPECT_TRUE((*lm)->EnableLora({.rank = 4, .alpha = 8}).ok());
  return std::move(*lm);
}

TEST(LlamaLoraTrainTest, TrainingLowersCompletionLoss) {
  auto lm = LoadWithLora();
  EXPECT_EQ(lm->ExportTrainable().tensors.size(), 2u * 7u * 2u);
  auto before = lm->Loss(kData);
  ASSERT_TRUE(before.ok());
  auto r = lm->Train(kData, {.steps = 30, .batch_size = 3, .learning_rate = 1e-2, .seed = 3});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->steps, 30);
  EXPECT_GT(r->tokens_trained, 0);
  auto after = lm->Loss(kData);
  ASSERT_TRUE(after.ok());
  EXPECT_LT(*after, *before * 0.7) << "before " << *before << " after " << *after;
}

TEST(LlamaLoraTrainTest, ServingMergeUnmergesExactly) {
  auto lm = LoadWithLora();
  ASSERT_TRUE(lm->Train(kData, {.steps = 5, .batch_size = 2, .learning_rate = 1e-2}).ok());
  auto l1 = lm->Loss(kData);
  GenerationOptions g;
  g.max_new_tokens = 4;
  g.sampling.temperature = 0;
  ASSERT_TRUE(lm->Generate("dog:", g).ok());                     // merges the adapters into the weights
  ASSERT_TRUE(lm->ImportTrainable(lm->ExportTrainable()).ok());  // unmerges
  auto l2 = lm->Loss(kData);
  ASSERT_TRUE(l1.ok() && l2.ok());
  EXPECT_EQ(*l1, *l2);
}

TEST(LlamaLoraTrainTest, SameSeedsSameAdapters) {
  auto a = LoadWithLora();
  auto b = LoadWithLora();
  CausalLmTrainOptions o{.steps = 4, .batch_size = 2, .learning_rate = 1e-2, .seed = 9};
  ASSERT_TRUE(a->Train(kData, o).ok());
  ASSERT_TRUE(b->Train(kData, o).ok());
  TensorBundle ea = a->ExportTrainable(), eb = b->ExportTrainable();
  ASSERT_EQ(ea.tensors.size(), eb.tensors.size());
  for (size_t i = 0; i < ea.tensors.size(); ++i)
    EXPECT_EQ(ea.tensors[i].values, eb.tensors[i].values) << ea.tensors[i].name;
}

TEST(LlamaLoraTrainTest, RejectsMisuse) {
  auto plain = CausalLm::Load({.model_dir = kTinyLlama});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)->Train(kData, {}).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ((*plain)->EnableLora({.targets = {"query"}}).code(), StatusCode::kInvalidArgument);
  auto lm = LoadWithLora();
  EXPECT_EQ(lm->EnableLora({}).code(), StatusCode::kFailedPrecondition);
  TensorBundle bad = lm->ExportTrainable();
  bad.tensors[0].shape[0] += 1;
  bad.tensors[0].values.resize(bad.tensors[0].values.size() * 2);
  EXPECT_EQ(lm->ImportTrainable(bad).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedge::agent::llm
