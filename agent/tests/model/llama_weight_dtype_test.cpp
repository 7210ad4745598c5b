// Frozen weights held in bfloat16 / float16 (LlamaConfig::weight_dtype): the model
// computes exactly what the same values widened to fp32 compute, in the batched
// forward, the fused decode step on every ISA, int8 serving, LoRA training and
// generation with an unmerged adapter, in half the parameter bytes; checkpoints
// load in their own dtype ("auto") or as asked, and save in 16 bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "fedge/agent/llm/causal_lm.h"
#include "fedge/file_util.h"
#include "llama/llama.h"
#include "llama/llama_decode.h"
#include "llama_test_util.h"

namespace fedge::agent::llm {
namespace {

using testing::AvailableIsas;
using testing::IsaGuard;
using testing::RandomModel;

bool IsFrozenWeight(const std::string& name) {
  return name.find("norm") == std::string::npos && name.size() > 7 &&
         name.compare(name.size() - 7, 7, ".weight") == 0;
}

// A random fp32 model whose parameters are exactly representable in `dtype`, and
// the same model with its frozen weights held in `dtype`.
std::pair<LlamaForCausalLm, LlamaForCausalLm> TwinModels(LlamaConfig c, WeightDtype dtype, uint64_t seed) {
  LlamaForCausalLm wide = RandomModel(c, seed);
  c.weight_dtype = dtype;
  LlamaForCausalLm narrow(c);
  torch::NoGradGuard no_grad;
  auto from = wide->named_parameters();
  const std::vector<std::string> saved = wide->CheckpointNames();
  for (auto& p : narrow->named_parameters()) {
    torch::Tensor& w = from[p.key()];
    w.copy_(w.to(TorchDtype(dtype)).to(torch::kFloat));
    // Biases the config has none of are zero, as a checkpoint leaves them.
    if (std::find(saved.begin(), saved.end(), p.key()) == saved.end()) w.zero_();
    if (IsFrozenWeight(p.key())) {
      EXPECT_EQ(p.value().scalar_type(), TorchDtype(dtype)) << p.key();
    } else {
      EXPECT_EQ(p.value().scalar_type(), torch::kFloat) << p.key();
    }
    p.value().copy_(w);
  }
  narrow->eval();
  return {wide, narrow};
}

torch::Tensor Ids(int64_t n, int64_t vocab, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(0, vocab, {1, n}, torch::kLong);
}

torch::Tensor DecodeAll(LlamaForCausalLm& model, const torch::Tensor& ids, int64_t prefill) {
  KvCache cache = KvCache::Allocate(model->config(), 1, ids.size(1));
  std::vector<torch::Tensor> rows = {model->forward(ids.narrow(1, 0, prefill), &cache)};
  for (int64_t t = prefill; t < ids.size(1); ++t) {
    rows.push_back(model->forward(ids.narrow(1, t, 1), &cache, /*last_only=*/true));
  }
  return torch::cat(rows, 1);
}

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

int64_t ParameterBytes(LlamaForCausalLm& model) {
  int64_t n = 0;
  for (const auto& p : model->parameters()) n += static_cast<int64_t>(p.nbytes());
  return n;
}

TEST(LlamaWeightDtypeTest, SixteenBitWeightsComputeWhatTheirWideningComputes) {
  IsaGuard guard;
  for (WeightDtype dtype : {WeightDtype::kBFloat16, WeightDtype::kFloat16}) {
    for (bool even : {true, false}) {
      for (bool tied : {true, false}) {
        SCOPED_TRACE(std::string(WeightDtypeName(dtype)) + (even ? " even" : " odd") + (tied ? " tied" : ""));
        auto [wide, narrow] =
            TwinModels(testing::DecodeTestConfig(even, tied, /*qkv_bias=*/!tied), dtype, 17);
        // Half the bytes, less the fp32 norms and biases.
        EXPECT_LT(ParameterBytes(narrow), 0.52 * ParameterBytes(wide));
        torch::InferenceMode mode;
        torch::Tensor ids = Ids(20, wide->config().vocab_size, 5);
        torch::Tensor full = wide->forward(ids);
        EXPECT_LE(MaxAbsDiff(narrow->forward(ids), full), 1e-5);
        // The fused step, every ISA: the same sums over the same values. Columns in
        // steps of 16 (even) make it bit for bit.
        for (const std::string& isa : AvailableIsas()) {
          SCOPED_TRACE(isa);
          ASSERT_TRUE(decode::ForceKernelIsa(isa));
          torch::Tensor a = DecodeAll(wide, ids, 3), b = DecodeAll(narrow, ids, 3);
          if (even) {
            EXPECT_TRUE(torch::equal(a, b)) << MaxAbsDiff(a, b);
          } else {
            EXPECT_LE(MaxAbsDiff(a, b), 1e-5);
          }
          EXPECT_LE(MaxAbsDiff(b, full), 1e-4);
          // int8 serving quantizes the same values either way.
          wide->set_decode_kernel(DecodeKernel::kInt8);
          narrow->set_decode_kernel(DecodeKernel::kInt8);
          EXPECT_TRUE(torch::equal(DecodeAll(wide, ids, 3), DecodeAll(narrow, ids, 3)));
          wide->set_decode_kernel(DecodeKernel::kF32);
          narrow->set_decode_kernel(DecodeKernel::kF32);
        }
        // A batched step of three sequences equals three single steps.
        std::vector<KvCache> caches;
        for (int i = 0; i < 3; ++i) caches.push_back(KvCache::Allocate(narrow->config(), 1, 8));
        std::vector<KvCache*> ptrs;
        for (auto& c : caches) ptrs.push_back(&c);
        torch::Tensor batched = narrow->DecodeStepBatch({1, 2, 3}, ptrs);
        for (int64_t i = 0; i < 3; ++i) {
          KvCache single = KvCache::Allocate(narrow->config(), 1, 8);
          torch::Tensor one = narrow->forward(torch::full({1, 1}, i + 1, torch::kLong), &single, true);
          EXPECT_TRUE(torch::equal(one.reshape({-1}), batched[i])) << i;
        }
      }
    }
  }
}

// LoRA on a 16-bit model: the loss and every adapter gradient equal the fp32 twin's,
// and generation keeps the adapter unmerged (Merge leaves a 16-bit weight alone).
TEST(LlamaWeightDtypeTest, LoraTrainsAndServesUnmergedOnSixteenBitWeights) {
  for (WeightDtype dtype : {WeightDtype::kBFloat16, WeightDtype::kFloat16}) {
    SCOPED_TRACE(std::string(WeightDtypeName(dtype)));
    auto [wide, narrow] = TwinModels(testing::DecodeTestConfig(true, /*tied=*/true, false), dtype, 23);
    const std::vector<std::string> targets = {"q_proj", "v_proj", "up_proj", "down_proj"};
    for (LlamaForCausalLm* m : {&wide, &narrow}) {
      (*m)->EnableLora(targets, {.rank = 4, .alpha = 8}, 3);
      torch::NoGradGuard no_grad;
      torch::manual_seed(4);
      for (auto& [name, proj] : (*m)->Projections()) {
        if (proj->has_lora()) proj->lora_B().normal_(0, 0.1);
      }
      (*m)->train();
    }
    torch::Tensor ids = Ids(12, wide->config().vocab_size, 8);
    torch::Tensor labels = ids.clone();
    labels.narrow(1, 0, 4).fill_(kIgnoreIndex);
    torch::Tensor wide_loss = CausalLmLoss(wide->forward(ids), labels);
    torch::Tensor narrow_loss = CausalLmLoss(narrow->forward(ids), labels);
    EXPECT_NEAR(narrow_loss.item<double>(), wide_loss.item<double>(), 1e-5);
    wide_loss.backward();
    narrow_loss.backward();
    auto wide_params = wide->named_parameters();
    int compared = 0;
    for (const auto& p : narrow->named_parameters()) {
      if (!p.value().requires_grad()) {
        EXPECT_FALSE(p.value().grad().defined()) << p.key();
        continue;
      }
      const torch::Tensor& g = wide_params[p.key()].grad();
      ASSERT_TRUE(p.value().grad().defined()) << p.key();
      EXPECT_LE(MaxAbsDiff(p.value().grad(), g), 1e-5 * (1 + g.abs().max().item<double>())) << p.key();
      ++compared;
    }
    EXPECT_EQ(compared, 2 * 4 * 2);  // A and B of 4 targets in 2 layers

    torch::InferenceMode mode;
    wide->eval();
    narrow->eval();
    torch::Tensor reference = DecodeAll(wide, ids, 3);
    for (auto& [name, proj] : narrow->Projections()) {
      torch::Tensor before = proj->weight().clone();
      proj->Merge();
      EXPECT_FALSE(proj->merged()) << name;
      EXPECT_TRUE(torch::equal(proj->weight(), before)) << name;
    }
    for (auto& [name, proj] : wide->Projections()) proj->Merge();
    EXPECT_LE(MaxAbsDiff(DecodeAll(narrow, ids, 3), reference), 1e-5);
    EXPECT_LE(MaxAbsDiff(DecodeAll(wide, ids, 3), reference), 1e-5);
  }
}

// The widening in blocks of rows (an LM head larger than kWidenBlock) and its
// backward, which widens again instead of keeping the fp32 copy.
TEST(LlamaWeightDtypeTest, FrozenLinearWidensInBlocksAndBackpropagates) {
  torch::manual_seed(2);
  torch::Tensor w = torch::randn({37, 53}).to(torch::kBFloat16);
  torch::Tensor bias = torch::randn({37});
  torch::Tensor x = torch::randn({3, 5, 53}, torch::requires_grad());
  torch::Tensor x_ref = x.detach().clone().requires_grad_();
  torch::Tensor g = torch::randn({3, 5, 37});
  torch::Tensor y_ref = torch::linear(x_ref, w.to(torch::kFloat), bias);
  (y_ref * g).sum().backward();
  for (int64_t block : {int64_t{53} * 37, int64_t{53} * 5, int64_t{53}, int64_t{1}}) {
    SCOPED_TRACE(block);
    torch::Tensor xi = x.detach().clone().requires_grad_();
    torch::Tensor y = fedge::agent::FrozenLinear(xi, w, bias, block);
    EXPECT_LE(MaxAbsDiff(y, y_ref), 1e-5);
    (y * g).sum().backward();
    EXPECT_LE(MaxAbsDiff(xi.grad(), x_ref.grad()), 1e-5);
  }
  torch::Tensor trainable = w.clone().requires_grad_();
  EXPECT_THROW(fedge::agent::FrozenLinear(x, trainable), c10::Error);
}

// A 16-bit checkpoint written by SaveLlama loads in its own dtype under "auto", as
// fp32 when asked (the same logits), and refuses an unknown dtype naming the choices.
TEST(LlamaWeightDtypeTest, CheckpointsLoadInTheirOwnDtypeOrAsAsked) {
  const std::string root = ::testing::TempDir() + "/weight_dtype_test";
  std::filesystem::remove_all(root);
  for (WeightDtype dtype : {WeightDtype::kBFloat16, WeightDtype::kFloat16}) {
    const std::string name(WeightDtypeName(dtype));
    SCOPED_TRACE(name);
    auto [wide, narrow] = TwinModels(testing::DecodeTestConfig(false, /*tied=*/false, false), dtype, 31);
    const std::string dir = root + "/" + name;
    ASSERT_TRUE(SaveLlama(narrow, dir, dtype).ok());
    auto config = LlamaConfig::FromFile(dir + "/config.json");
    ASSERT_TRUE(config.ok());
    EXPECT_EQ(config->dtype, name);
    // Half the file, less its fp32-sized header and norms.
    auto file = SafetensorsFile::Read(dir + "/model.safetensors");
    ASSERT_TRUE(file.ok());
    for (const StTensorView& t : file->tensors()) {
      EXPECT_EQ(t.dtype, dtype == WeightDtype::kBFloat16 ? StDType::kBF16 : StDType::kF16) << t.name;
    }

    auto held = LoadLlama(dir, "auto");
    ASSERT_TRUE(held.ok()) << held.status().ToString();
    EXPECT_EQ((*held)->config().weight_dtype, dtype);
    EXPECT_EQ((*held)->model->embed_tokens->weight.scalar_type(), TorchDtype(dtype));
    auto widened = LoadLlama(dir, "float32");
    ASSERT_TRUE(widened.ok()) << widened.status().ToString();
    EXPECT_EQ((*widened)->model->embed_tokens->weight.scalar_type(), torch::kFloat);
    torch::InferenceMode mode;
    torch::Tensor ids = Ids(10, wide->config().vocab_size, 1);
    torch::Tensor reference = wide->forward(ids);
    EXPECT_LE(MaxAbsDiff((*held)->forward(ids), reference), 1e-5);
    EXPECT_LE(MaxAbsDiff((*widened)->forward(ids), reference), 1e-5);
    EXPECT_LE(MaxAbsDiff(DecodeAll(*held, ids, 2), DecodeAll(*widened, ids, 2)), 1e-5);
  }
  // An fp32 checkpoint stays fp32 under auto; bfloat16 can be asked for (rounded).
  [[maybe_unused]] auto [wide, unused] =
      TwinModels(testing::DecodeTestConfig(true, true, false), WeightDtype::kBFloat16, 3);
  ASSERT_TRUE(SaveLlama(wide, root + "/f32").ok());
  auto f32 = LoadLlama(root + "/f32", "auto");
  ASSERT_TRUE(f32.ok());
  EXPECT_EQ((*f32)->config().weight_dtype, WeightDtype::kFloat32);
  auto asked = LoadLlama(root + "/f32", "bf16");
  ASSERT_TRUE(asked.ok());
  EXPECT_EQ((*asked)->model->layers->at<LlamaDecoderLayerImpl>(0).self_attn->q_proj->weight().scalar_type(),
            torch::kBFloat16);
  auto bad = LoadLlama(root + "/f32", "int4");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("auto, float32, bfloat16 or float16"), std::string::npos);
}

const void* QProjData(LlamaForCausalLm& m) {
  return m->model->layers->at<LlamaDecoderLayerImpl>(0).self_attn->q_proj->weight().data_ptr();
}

// Loads of one 16-bit checkpoint in a process share its frozen weights (the agent's
// trainer and serving instances); training one leaves the others' results alone.
// fp32 loads (merged into for serving) and a rewritten checkpoint get their own.
TEST(LlamaWeightDtypeTest, SixteenBitLoadsOfOneCheckpointShareTheirWeights) {
  const std::string dir = ::testing::TempDir() + "/weight_dtype_share";
  std::filesystem::remove_all(dir);
  [[maybe_unused]] auto [wide, narrow] =
      TwinModels(testing::DecodeTestConfig(true, /*tied=*/true, false), WeightDtype::kBFloat16, 41);
  ASSERT_TRUE(SaveLlama(narrow, dir, WeightDtype::kBFloat16).ok());
  auto first = LoadLlama(dir, "auto");
  auto second = LoadLlama(dir, "auto");
  auto private_f32 = LoadLlama(dir, "float32");
  ASSERT_TRUE(first.ok() && second.ok() && private_f32.ok());
  EXPECT_EQ(QProjData(*first), QProjData(*second));
  EXPECT_EQ((*first)->model->embed_tokens->weight.data_ptr(),
            (*second)->model->embed_tokens->weight.data_ptr());
  EXPECT_NE(QProjData(*first), QProjData(*private_f32));
  // Norms are fp32 and private.
  EXPECT_NE((*first)->model->norm().weight().data_ptr(), (*second)->model->norm().weight().data_ptr());

  torch::Tensor ids = Ids(10, narrow->config().vocab_size, 6);
  torch::Tensor before;
  {
    torch::InferenceMode mode;
    before = (*second)->forward(ids);
  }
  // Train an adapter on the first for a few steps, merging in between as serving does.
  (*first)->EnableLora({"q_proj", "down_proj"}, {.rank = 2, .alpha = 4}, 1);
  (*first)->train();
  std::vector<torch::Tensor> trainable;
  for (auto& p : (*first)->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::SGD sgd(trainable, torch::optim::SGDOptions(0.5));
  torch::Tensor labels = ids.clone();
  for (int step = 0; step < 3; ++step) {
    sgd.zero_grad();
    CausalLmLoss((*first)->forward(ids), labels).backward();
    sgd.step();
    for (auto& [name, proj] : (*first)->Projections()) proj->Merge();
  }
  {
    torch::InferenceMode mode;
    EXPECT_TRUE(torch::equal((*second)->forward(ids), before));
    (*first)->eval();
    EXPECT_GT(MaxAbsDiff((*first)->forward(ids), before), 1e-4);  // the adapter did train
  }
  // The source may go: a later load shares with the one still alive.
  const void* shared = QProjData(*second);
  first = StatusOr<LlamaForCausalLm>(InternalError("dropped"));
  auto third = LoadLlama(dir, "bfloat16");
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(QProjData(*third), shared);
  // A rewritten checkpoint is another model.
  std::filesystem::remove(dir + "/model.safetensors");
  ASSERT_TRUE(SaveLlama(wide, dir, WeightDtype::kBFloat16).ok());
  std::filesystem::last_write_time(
      dir + "/model.safetensors",
      std::filesystem::last_write_time(dir + "/model.safetensors") + std::chrono::seconds(5));
  auto rewritten = LoadLlama(dir, "bfloat16");
  ASSERT_TRUE(rewritten.ok());
  EXPECT_NE(QProjData(*rewritten), shared);
}

// CausalLm: weight_dtype, else FEDGE_WEIGHT_DTYPE, else auto.
TEST(LlamaWeightDtypeTest, CausalLmTakesTheOptionThenTheEnvironment) {
  const std::string dir = std::string(FEDGE_GOLDEN_DIR) + "/llm/tiny_llama";
  ::unsetenv("FEDGE_WEIGHT_DTYPE");
  auto plain = CausalLm::Load({.model_dir = dir});
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_EQ((*plain)->config().weight_dtype, WeightDtype::kFloat32);  // the golden is float32
  auto bf16 = CausalLm::Load({.model_dir = dir, .weight_dtype = "bfloat16"});
  ASSERT_TRUE(bf16.ok()) << bf16.status().ToString();
  EXPECT_EQ((*bf16)->config().weight_dtype, WeightDtype::kBFloat16);
  ::setenv("FEDGE_WEIGHT_DTYPE", "float16", 1);
  auto env = CausalLm::Load({.model_dir = dir});
  ::setenv("FEDGE_WEIGHT_DTYPE", "fp8", 1);
  auto bad = CausalLm::Load({.model_dir = dir});
  ::unsetenv("FEDGE_WEIGHT_DTYPE");
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  EXPECT_EQ((*env)->config().weight_dtype, WeightDtype::kFloat16);
  EXPECT_FALSE(bad.ok());
  // Generation on the rounded weights still runs end to end.
  GenerationOptions options;
  options.max_new_tokens = 4;
  options.stop_at_eos = false;
  auto out = (*bf16)->Generate("hello", options, nullptr);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->token_ids.size(), 4u);
}

}  // namespace
}  // namespace fedge::agent::llm
