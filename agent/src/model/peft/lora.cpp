#include "peft/lora.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace fedge::agent {

LoraLinearImpl::LoraLinearImpl(int64_t in_features, int64_t out_features, torch::ScalarType weight_dtype)
    : in_features_(in_features),
      out_features_(out_features),
      dropout_generator_(at::detail::createCPUGenerator(0)) {
  TORCH_CHECK(
      weight_dtype == torch::kFloat || weight_dtype == torch::kBFloat16 || weight_dtype == torch::kHalf,
      "LoraLinear: weight dtype must be float32, bfloat16 or float16");
  // A 16-bit weight is left uninitialised: only a checkpoint gives it values, and
  // untouched pages cost no memory until then.
  weight_ = register_parameter("weight",
                               weight_dtype == torch::kFloat
                                   ? torch::zeros({out_features, in_features})
                                   : torch::empty({out_features, in_features}, torch::dtype(weight_dtype)),
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
  if (!has_lora() || merged() || weight_.scalar_type() != torch::kFloat) return;
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

namespace {

// Rows of a [rows, cols] weight widened at a time: at most `elements`, at least one.
int64_t BlockRows(int64_t elements, int64_t cols) {
  return std::max<int64_t>(1, elements / std::max<int64_t>(cols, 1));
}

// x [..., in] times W^T, W [out, in] 16-bit: widened a block of rows at a time.
torch::Tensor WidenedMatmul(const torch::Tensor& x, const torch::Tensor& w, int64_t elements) {
  const int64_t rows = w.size(0), block = BlockRows(elements, w.size(1));
  if (rows <= block) return torch::matmul(x, w.to(torch::kFloat).t());
  std::vector<torch::Tensor> parts;
  for (int64_t r = 0; r < rows; r += block) {
    parts.push_back(torch::matmul(x, w.narrow(0, r, std::min(block, rows - r)).to(torch::kFloat).t()));
  }
  return torch::cat(parts, -1);
}

// g [..., out] times W, the gradient of x.
torch::Tensor WidenedMatmulTransposed(const torch::Tensor& g, const torch::Tensor& w, int64_t elements) {
  const int64_t rows = w.size(0), block = BlockRows(elements, w.size(1));
  if (rows <= block) return torch::matmul(g, w.to(torch::kFloat));
  torch::Tensor out;
  for (int64_t r = 0; r < rows; r += block) {
    const int64_t n = std::min(block, rows - r);
    torch::Tensor part = torch::matmul(g.narrow(-1, r, n), w.narrow(0, r, n).to(torch::kFloat));
    out = out.defined() ? out.add_(part) : part;
  }
  return out;
}

// Autograd keeps the 16-bit weight for backward, not a widened fp32 copy.
class WidenedLinearFunction : public torch::autograd::Function<WidenedLinearFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w, int64_t elements) {
    ctx->save_for_backward({w});
    ctx->saved_data["elements"] = elements;
    return WidenedMatmul(x, w, elements);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grad) {
    const torch::Tensor w = ctx->get_saved_variables()[0];
    const int64_t elements = ctx->saved_data["elements"].toInt();
    return {WidenedMatmulTransposed(grad[0], w, elements), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor FrozenLinear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                           int64_t widen_block) {
  if (weight.scalar_type() == torch::kFloat) return torch::linear(x, weight, bias);
  TORCH_CHECK(!weight.requires_grad(), "FrozenLinear: a 16-bit weight must be frozen");
  torch::Tensor y = x.requires_grad() && torch::GradMode::is_enabled()
                        ? WidenedLinearFunction::apply(x, weight, widen_block)
                        : WidenedMatmul(x, weight, widen_block);
  return bias.defined() ? y + bias : y;
}

torch::Tensor LoraLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = FrozenLinear(x, weight_, bias_);
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
