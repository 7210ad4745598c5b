#include "peft/lora.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace fedge::agent {

LoraLinearImpl::LoraLinearImpl(int64_t in_features, int64_t out_features)
    : in_features_(in_features),
      out_features_(out_features),
      dropout_generator_(at::detail::createCPUGenerator(0)) {
  weight_ = register_parameter("weight", torch::zeros({out_features, in_features}),
                               /*requires_grad=*/false);
  bias_ = register_parameter("bias", torch::zeros({out_features}), /*requires_grad=*/false);
}

void LoraLinearImpl::EnableLora(const LoraOptions& options, torch::Generator& init) {
  TORCH_CHECK(options.rank > 0, "LoRA rank must be positive");
  TORCH_CHECK(!has_lora(), "LoRA already enabled");
  torch::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features_));
  torch::Tensor a = torch::empty({options.rank, in_features_});
  a.uniform_(-bound, bound, init);
  lora_A_ = register_parameter("lora_A", a);
  lora_B_ = register_parameter("lora_B", torch::zeros({out_features_, options.rank}));
  scaling_ = options.alpha / static_cast<double>(options.rank);
  dropout_ = options.dropout;
}

void LoraLinearImpl::FreezeA(const torch::Tensor& a) {
  TORCH_CHECK(has_lora(), "FreezeA before EnableLora");
  TORCH_CHECK(a.sizes() == lora_A_.sizes(), "FreezeA: A has shape ", a.sizes(), ", expected ",
              lora_A_.sizes());
  torch::NoGradGuard no_grad;
  lora_A_.copy_(a);
  lora_A_.set_requires_grad(false);
}

torch::Tensor FrozenLoraA(uint64_t seed, std::string_view layer, int64_t rank, int64_t in_features) {
  uint64_t h = 14695981039346656037ull;  // FNV-1a 64
  for (unsigned char c : layer) h = (h ^ c) * 1099511628211ull;
  // splitmix64 finaliser over seed and hash: nearby seeds give unrelated streams.
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (h | 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  torch::Generator gen = at::detail::createCPUGenerator(z);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  torch::NoGradGuard no_grad;
  torch::Tensor a = torch::empty({rank, in_features});
  a.uniform_(-bound, bound, gen);
  return a;
}

void LoraLinearImpl::Merge() {
  if (!has_lora() || merged()) return;
  torch::NoGradGuard no_grad;
  merged_weight_backup_ = weight_.clone();
  weight_.add_(torch::mm(lora_B_, lora_A_), scaling_);
}

void LoraLinearImpl::Unmerge() {
  if (!merged()) return;
  torch::NoGradGuard no_grad;
  weight_.copy_(merged_weight_backup_);
  merged_weight_backup_ = torch::Tensor();
}

void LoraLinearImpl::SeedDropout(uint64_t seed) { dropout_generator_ = at::detail::createCPUGenerator(seed); }

torch::Tensor LoraLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = torch::linear(x, weight_, bias_);
  if (!has_lora() || merged()) return y;
  torch::Tensor h = x;
  if (is_training() && dropout_ > 0) {
    torch::Tensor keep = torch::empty_like(x).bernoulli_(1.0 - dropout_, dropout_generator_);
    h = x * keep / (1.0 - dropout_);
  }
  // (x A^T) B^T keeps the intermediate at rank r instead of forming B A.
  return y + torch::linear(torch::linear(h, lora_A_), lora_B_) * scaling_;
}

}  // namespace fedge::agent
