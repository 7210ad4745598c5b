// Frozen-A LoRA (spec.adapter.aggregation = frozen-a): every agent generates
// the same A from the job's seed and the layer name, only B trains, and the
// trainable bundle an agent uploads carries B and the head but no A.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "fedge/agent/text_classifier.h"
#include "peft/lora.h"
#include "test_util.h"

namespace fedge::agent {
namespace {

TEST(LoraFrozenATest, SameSeedAndLayerGiveTheSameA) {
  const torch::Tensor a = FrozenLoraA(42, "encoder.layer.0.attention.self.query", 4, 384);
  EXPECT_EQ(a.sizes(), torch::IntArrayRef({4, 384}));
  EXPECT_TRUE(torch::equal(a, FrozenLoraA(42, "encoder.layer.0.attention.self.query", 4, 384)));
  EXPECT_FALSE(torch::equal(a, FrozenLoraA(42, "encoder.layer.0.attention.self.value", 4, 384)));
  EXPECT_FALSE(torch::equal(a, FrozenLoraA(43, "encoder.layer.0.attention.self.query", 4, 384)));
  // PEFT's init distribution: U(-1/sqrt(in), 1/sqrt(in)).
  const double bound = 1.0 / std::sqrt(384.0);
  EXPECT_LE(a.abs().max().item<double>(), bound);
  EXPECT_GT(a.abs().max().item<double>(), 0.9 * bound);
  EXPECT_NEAR(a.mean().item<double>(), 0.0, 0.1 * bound);
}

TEST(LoraFrozenATest, FrozenAStaysFixedWhileBTrains) {
  torch::manual_seed(0);
  LoraLinear layer(6, 5);
  torch::Generator init = at::detail::createCPUGenerator(1);
  layer->EnableLora(LoraOptions{2, 4, 0}, init);
  const torch::Tensor a = FrozenLoraA(7, "layer", 2, 6);
  layer->FreezeA(a);
  EXPECT_TRUE(layer->a_frozen());
  torch::optim::SGD opt(std::vector<torch::Tensor>{layer->lora_B()}, torch::optim::SGDOptions(0.1));
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    (layer->forward(torch::randn({8, 6})) - 1.0).pow(2).sum().backward();
    opt.step();
  }
  EXPECT_FALSE(layer->lora_A().grad().defined());
  EXPECT_TRUE(torch::equal(layer->lora_A(), a));
  EXPECT_GT(layer->lora_B().abs().sum().item<double>(), 0.0);
}

ClassifierOptions FrozenOptions(const std::string& dir, uint64_t seed) {
  ClassifierOptions o;
  o.model_dir = dir;
  o.labels = {"noun.animal", "noun.artifact"};
  o.lora_rank = 4;
  o.lora_frozen_a = true;
  o.init_seed = seed;
  return o;
}

std::unique_ptr<TextClassifier> MustLoad(const ClassifierOptions& o) {
  auto c = TextClassifier::Load(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *std::move(c) : nullptr;
}

// A trained-looking state: non-zero B everywhere, so A matters for the output.
TensorBundle WithNonZeroB(TensorBundle b) {
  float x = 0.01f;
  for (NamedTensor& t : b.tensors) {
    for (float& v : t.values) {
      v += x;
      x = -x * 1.001f;
    }
  }
  return b;
}

TEST(LoraFrozenATest, AgentsAgreeOnAAndUploadOnlyBAndHead) {
  FEDGE_REQUIRE_MODEL(dir);
  auto agent1 = MustLoad(FrozenOptions(dir, 42));
  auto agent2 = MustLoad(FrozenOptions(dir, 42));
  auto other_job = MustLoad(FrozenOptions(dir, 43));
  ClassifierOptions factors_options = FrozenOptions(dir, 42);
  factors_options.lora_frozen_a = false;
  auto factors = MustLoad(factors_options);
  ASSERT_TRUE(agent1 && agent2 && other_job && factors);

  const TensorBundle upload = agent1->ExportTrainable();
  for (const NamedTensor& t : upload.tensors) {
    EXPECT_EQ(t.name.find("lora_A"), std::string::npos) << t.name << " must not leave the agent";
  }
  // 6 layers x {query, value} x B + head weight + bias.
  EXPECT_EQ(upload.tensors.size(), 6u * 2 + 2);
  ASSERT_NE(upload.Find("encoder.layer.0.attention.self.query.lora_B"), nullptr);
  // The LoRA part of the upload is half of factors' (B [384, 4] vs A + B).
  const int64_t head_bytes = 4 * (2 * 384 + 2);
  const int64_t frozen_bytes = static_cast<int64_t>(upload.Fp32Bytes());
  const int64_t factors_bytes = static_cast<int64_t>(factors->ExportTrainable().Fp32Bytes());
  EXPECT_EQ(2 * (frozen_bytes - head_bytes), factors_bytes - head_bytes);
  std::printf("upload bytes (fp32): frozen-a %lld, factors %lld (ratio %.3f)\n",
              static_cast<long long>(frozen_bytes), static_cast<long long>(factors_bytes),
              static_cast<double>(frozen_bytes) / factors_bytes);

  // The same B + head gives the same outputs on both agents (same A) and
  // different ones under another seed (another A).
  const TensorBundle state = WithNonZeroB(upload);
  ASSERT_TRUE(agent1->ImportTrainable(state).ok());
  ASSERT_TRUE(agent2->ImportTrainable(state).ok());
  ASSERT_TRUE(other_job->ImportTrainable(state).ok());
  const std::vector<std::string> texts = {"dog: a domesticated carnivore", "knife: a blade with a handle"};
  auto e1 = agent1->Embed(texts), e2 = agent2->Embed(texts), e3 = other_job->Embed(texts);
  ASSERT_TRUE(e1.ok() && e2.ok() && e3.ok());
  double same = 0, differ = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    for (size_t j = 0; j < (*e1)[i].size(); ++j) {
      same = std::max(same, static_cast<double>(std::abs((*e1)[i][j] - (*e2)[i][j])));
      differ = std::max(differ, static_cast<double>(std::abs((*e1)[i][j] - (*e3)[i][j])));
    }
  }
  EXPECT_EQ(same, 0.0);
  EXPECT_GT(differ, 1e-4);

  // Training changes B and the head only; the bundle keeps its layout.
  std::vector<Example> data = {{"dog: a domesticated carnivore", 0}, {"knife: a blade with a handle", 1}};
  TrainOptions t;
  t.steps = 2;
  t.batch_size = 2;
  ASSERT_TRUE(agent1->Train(data, t).ok());
  const TensorBundle after = agent1->ExportTrainable();
  EXPECT_EQ(after.tensors.size(), upload.tensors.size());
  EXPECT_TRUE(agent2->ImportTrainable(after).ok());
  // A bundle with A (a factors-mode state) is refused by a frozen-A model.
  EXPECT_EQ(agent1->ImportTrainable(factors->ExportTrainable()).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedge::agent
