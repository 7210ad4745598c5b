// LoraLinear: a frozen Linear layer that can carry a LoRA adapter
// (Hu et al. 2021):  y = x W^T + b + (alpha / r) * dropout(x) A^T B^T
// with A [r, in] and B [out, r]. Without an adapter it is a plain Linear.
//
// Parameter names mirror Hugging Face/PEFT so checkpoints map one to one:
// "weight", "bias" (frozen, loaded from the base model) and "lora_A",
// "lora_B" (trainable). Initialisation follows PEFT: A ~ kaiming-uniform with
// a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)), from a caller-seeded
// generator; B = 0, so a fresh adapter leaves the output unchanged.
//
// The frozen weight may be held in bfloat16 or float16 (a checkpoint's own dtype,
// half the memory of fp32): it is widened to fp32 where it is used (FrozenLinear),
// so the arithmetic is the fp32 arithmetic on the same values. Bias and adapter stay
// fp32, and such a layer never merges its adapter into the weight (rounding W + s B A
// to 16 bits would change the model and lose W).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string_view>

namespace fedge::agent {

struct LoraOptions {
  int64_t rank = 8;
  double alpha = 16;
  double dropout = 0.0;
};

class LoraLinearImpl : public torch::nn::Module {
 public:
  // `weight_dtype`: kFloat (zero-initialised), kBFloat16 or kHalf (uninitialised:
  // a checkpoint overwrites it).
  LoraLinearImpl(int64_t in_features, int64_t out_features, torch::ScalarType weight_dtype = torch::kFloat);

  // Adds the adapter (A from `init`, B zero) and makes only it trainable.
  void EnableLora(const LoraOptions& options, torch::Generator& init);
  bool has_lora() const { return lora_A_.defined(); }

  // Frozen-A mode (spec.adapter.aggregation = frozen-a): copies `a` ([r, in],
  // usually FrozenLoraA's) into lora_A and stops its gradient, so only B
  // trains. Requires EnableLora first; a shape mismatch is a bug (TORCH_CHECK).
  void FreezeA(const torch::Tensor& a);
  bool a_frozen() const { return has_lora() && !lora_A_.requires_grad(); }
  double scaling() const { return scaling_; }

  // Folds the adapter into the weight for inference (one GEMM instead of three);
  // Unmerge restores the exact original weight. While merged the adapter
  // parameters must not change; training a merged layer is a bug. A 16-bit weight
  // is never merged (merged() stays false; forward adds the adapter in fp32).
  void Merge();
  void Unmerge();
  bool merged() const { return merged_weight_backup_.defined(); }

  // LoRA dropout draws from this generator, so training is reproducible per seed.
  void SeedDropout(uint64_t seed);

  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor& weight() { return weight_; }
  torch::Tensor& bias() { return bias_; }
  torch::Tensor& lora_A() { return lora_A_; }
  torch::Tensor& lora_B() { return lora_B_; }

 private:
  int64_t in_features_;
  int64_t out_features_;
  torch::Tensor weight_;  // [out, in], frozen
  torch::Tensor bias_;    // [out], frozen
  torch::Tensor lora_A_;  // [r, in]
  torch::Tensor lora_B_;  // [out, r]
  double scaling_ = 0;
  double dropout_ = 0;
  torch::Generator dropout_generator_;
  torch::Tensor merged_weight_backup_;
};
TORCH_MODULE(LoraLinear);

// x W^T + b (b may be undefined) for a frozen weight W [out, in] of any of fp32,
// bf16 or fp16. fp32 is torch::linear. A 16-bit W is widened to fp32 (a block of
// at most kWidenBlock elements at a time, so an LM head of 128k x 2048 never exists
// in fp32 whole) and, when x needs a gradient, widened again in backward instead of
// keeping the fp32 copy alive until then: training holds 2 bytes per frozen weight.
constexpr int64_t kWidenBlock = int64_t{1} << 24;  // elements: 64 MiB as fp32
torch::Tensor FrozenLinear(const torch::Tensor& x, const torch::Tensor& weight,
                           const torch::Tensor& bias = torch::Tensor(), int64_t widen_block = kWidenBlock);

// The frozen A of layer `layer` ([rank, in_features], PEFT's distribution
// U(-1/sqrt(in), 1/sqrt(in))) drawn from a generator seeded by `seed` and a
// stable hash of the layer name (FNV-1a, not std::hash, whose values are
// implementation-defined). Every agent of a job computes the same A without
// exchanging it, and different layers get independent draws.
torch::Tensor FrozenLoraA(uint64_t seed, std::string_view layer, int64_t rank, int64_t in_features);

}  // namespace fedge::agent
