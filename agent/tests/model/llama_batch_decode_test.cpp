// LlamaForCausalLmImpl::DecodeStepBatch (llama_decode.cpp): B sequences with their
// own caches and ragged lengths in one step must give exactly the logits of B single
// decode steps, fp32 and int8, on every kernel ISA this CPU has; and the B-row
// matrix-vector kernels it is built on must equal B single products.
#include <gtest/gtest.h>

#include "llama/llama.h"
#include "llama/llama_decode.h"
#include "llama_test_util.h"

namespace fedge::agent::llm {
namespace {

using testing::AvailableIsas;
using testing::DecodeTestConfig;
using testing::IsaGuard;
using testing::RandomModel;

KvCache Clone(const KvCache& cache) {
  KvCache out = cache;
  for (auto& k : out.keys) k = k.clone();
  for (auto& v : out.values) v = v.clone();
  return out;
}

// Prefills B prompts of different lengths (3, 8, 13, ...), then decodes `steps`
// steps both ways: DecodeStepBatch over all B, and one single step per sequence on
// copies of the caches. Returns the largest logit difference seen.
double BatchVsSingle(LlamaForCausalLm& model, int batch, int steps, uint64_t seed) {
  const LlamaConfig& c = model->config();
  torch::manual_seed(seed);
  std::vector<KvCache> batched, single;
  std::vector<int64_t> next;
  for (int i = 0; i < batch; ++i) {
    const int64_t len = 3 + 5 * i % 40;
    torch::Tensor ids = torch::randint(0, c.vocab_size, {1, len}, torch::kLong);
    // Capacities differ too: the batched step must use each cache's own.
    KvCache cache = KvCache::Allocate(c, 1, len + steps + i);
    torch::Tensor logits = model->forward(ids, &cache, /*last_only=*/true);
    next.push_back(logits.argmax(-1).item<int64_t>());
    single.push_back(Clone(cache));
    batched.push_back(std::move(cache));
  }
  double worst = 0;
  for (int step = 0; step < steps; ++step) {
    std::vector<KvCache*> caches;
    for (auto& cache : batched) caches.push_back(&cache);
    torch::Tensor got = model->DecodeStepBatch(next, caches);
    EXPECT_EQ(got.sizes(), (std::vector<int64_t>{batch, c.vocab_size}));
    for (int i = 0; i < batch; ++i) {
      torch::Tensor want = model->forward(torch::full({1, 1}, next[static_cast<size_t>(i)], torch::kLong),
                                          &single[static_cast<size_t>(i)], /*last_only=*/true);
      worst = std::max(worst, (got[i] - want.view({c.vocab_size})).abs().max().item<double>());
      EXPECT_EQ(batched[static_cast<size_t>(i)].length, single[static_cast<size_t>(i)].length);
      // Not trivially equal: the rows differ between sequences.
      if (i > 0) {
        EXPECT_GT((got[i] - got[0]).abs().max().item<double>(), 1e-3);
      }
    }
    // Sampled the same way per row, so the sequences keep diverging.
    for (int i = 0; i < batch; ++i)
      next[static_cast<size_t>(i)] = (got[i].argmax().item<int64_t>() + i) % c.vocab_size;
  }
  for (int i = 0; i < batch; ++i) {
    const auto& a = batched[static_cast<size_t>(i)];
    const auto& b = single[static_cast<size_t>(i)];
    for (size_t l = 0; l < a.keys.size(); ++l) {
      worst = std::max(worst, (a.keys[l] - b.keys[l]).abs().max().item<double>());
      worst = std::max(worst, (a.values[l] - b.values[l]).abs().max().item<double>());
    }
  }
  return worst;
}

TEST(LlamaBatchDecodeTest, LogitsEqualSingleStepsForEveryBatchIsaAndKernel) {
  IsaGuard guard;
  for (bool even : {false, true}) {
    for (bool tied : {true, false}) {
      LlamaForCausalLm model = RandomModel(DecodeTestConfig(even, tied, /*qkv_bias=*/!tied), 21);
      torch::InferenceMode mode;
      for (DecodeKernel kernel : {DecodeKernel::kF32, DecodeKernel::kInt8}) {
        model->set_decode_kernel(kernel);
        for (const std::string& isa : AvailableIsas()) {
          ASSERT_TRUE(decode::ForceKernelIsa(isa));
          for (int batch : {1, 3, 8}) {
            EXPECT_LE(BatchVsSingle(model, batch, 3, 100 + batch), 1e-5)
                << isa << " " << DecodeKernelName(kernel) << " B=" << batch << " even=" << even
                << " tied=" << tied;
          }
        }
      }
    }
  }
}

TEST(LlamaBatchDecodeTest, UnmergedAdapterAndTorchKernelMatchSingleSteps) {
  LlamaForCausalLm model = RandomModel(DecodeTestConfig(/*even=*/false, /*tied=*/false, false), 5);
  model->EnableLora({"q_proj", "v_proj", "gate_proj", "down_proj"}, {.rank = 4, .alpha = 8}, 5);
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, proj] : model->Projections()) {
      if (proj->has_lora()) proj->lora_B().normal_(0, 0.2);
    }
  }
  model->eval();
  torch::InferenceMode mode;
  for (DecodeKernel kernel : {DecodeKernel::kF32, DecodeKernel::kInt8, DecodeKernel::kTorch}) {
    model->set_decode_kernel(kernel);
    EXPECT_LE(BatchVsSingle(model, 5, 3, 7), 1e-5) << DecodeKernelName(kernel);
  }
}

TEST(LlamaBatchDecodeTest, RefusesBadBatchesWithoutAdvancing) {
  LlamaForCausalLm model = RandomModel(DecodeTestConfig(false, true, false), 3);
  torch::InferenceMode mode;
  const LlamaConfig& c = model->config();
  KvCache a = KvCache::Allocate(c, 1, 4), b = KvCache::Allocate(c, 1, 1);
  model->forward(torch::zeros({1, 2}, torch::kLong), &a);
  model->forward(torch::zeros({1, 1}, torch::kLong), &b);                         // b is full
  EXPECT_THROW(model->DecodeStepBatch({1, 2}, {&a, &a}), c10::Error);             // shared cache
  EXPECT_THROW(model->DecodeStepBatch({1, 2}, {&a, &b}), c10::Error);             // b full
  EXPECT_THROW(model->DecodeStepBatch({1, c.vocab_size}, {&a, &b}), c10::Error);  // bad token
  EXPECT_THROW(model->DecodeStepBatch({1}, {&a, &b}), c10::Error);                // count mismatch
  EXPECT_THROW(model->DecodeStepBatch({}, {}), c10::Error);                       // empty
  EXPECT_EQ(a.length, 2);
  EXPECT_EQ(b.length, 1);
}

// The B-row kernels alone, for B up to 11 (more than one group of 8), fp32 and int8,
// against B single-row products on the same ISA: equal, not just close.
TEST(LlamaBatchDecodeTest, BatchedMatvecsEqualSingleProductsOnEveryIsa) {
  torch::manual_seed(9);
  IsaGuard guard;
  for (int64_t cols : {72, 192, 61}) {
    const int64_t rows = 83;
    torch::Tensor w = torch::randn({rows, cols});
    decode::Int8Matrix m = decode::Int8Matrix::Quantize(w.data_ptr<float>(), rows, cols);
    for (const std::string& isa : AvailableIsas()) {
      ASSERT_TRUE(decode::ForceKernelIsa(isa));
      for (int batch : {2, 5, 8, 11}) {
        torch::Tensor x = torch::randn({batch, cols + 3});  // a stride other than cols
        for (bool int8 : {false, true}) {
          torch::Tensor y = torch::full({batch, rows + 1}, -1.0f);
          decode::Matvec p;
          if (int8) {
            p.q = &m;
          } else {
            p.w = w.data_ptr<float>();
          }
          p.rows = rows;
          p.cols = cols;
          p.x = x.data_ptr<float>();
          p.y = y.data_ptr<float>();
          p.batch = batch;
          p.x_stride = cols + 3;
          p.y_stride = rows + 1;
          decode::RunMatvecs(&p, 1);
          for (int b = 0; b < batch; ++b) {
            torch::Tensor want = torch::empty({rows});
            decode::Matvec one = p;
            one.batch = 1;
            one.x = x[b].data_ptr<float>();
            one.y = want.data_ptr<float>();
            decode::RunMatvecs(&one, 1);
            EXPECT_TRUE(torch::equal(y[b].narrow(0, 0, rows), want))
                << isa << " int8=" << int8 << " cols=" << cols << " B=" << batch << " row " << b;
            EXPECT_EQ(y[b][rows].item<float>(), -1.0f);  // nothing written past a row
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace fedge::agent::llm
