#include "lora.h"

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

void LoraLinearImpl::SeedDropout(uint64_t seed) {
  dropout_generator_ = at::detail::createCPUGenerator(seed);
}

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
