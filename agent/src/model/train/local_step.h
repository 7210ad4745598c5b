// The optimizer side of one local round, shared by every model family: AdamW
// over the trainable tensors, FedProx's proximal term toward the values the
// round started from, gradient-norm clipping, SCAFFOLD's step correction, and
// a restore of the starting values when the loss turns non-finite. The family
// (bert/, llama/) samples batches and computes the data loss; this file does
// everything after.
//
// Internal (torch) header of fedge_agent_model.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "fedge/agent/model.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

// INVALID_ARGUMENT unless learning_rate > 0, weight_decay, max_grad_norm,
// proximal_mu, logit_adjustment >= 0, restricted_softmax in (0, 1] and
// restricted_step in [0, 1] (`what`
// prefixes the message). Steps and batch size are the
// family's to check (its sampler uses them).
Status ValidateLocalRound(const TrainOptions& options, const std::string& what);

// The logit-adjusted loss (TrainOptions::logit_adjustment; Menon et al. 2021,
// FedLC): pi(y) + kLogitAdjustmentEps keeps a class absent from the local data
// finite (its shift is tau x log(1e-6) ~ -13.8 tau: the local round then
// hardly pushes that class down).
inline constexpr double kLogitAdjustmentEps = 1e-6;

// [num_classes] float: tau x log(count(y) / |labels| + eps), the shift added to
// every row of the logits. Labels must be in [0, num_classes).
torch::Tensor LogitAdjustment(const std::vector<int64_t>& labels, int64_t num_classes, double tau);

// Mean cross-entropy of (logits [B, C] + shift [C]) against target [B]; an
// undefined `shift` gives plain cross-entropy.
torch::Tensor LogitAdjustedCrossEntropy(const torch::Tensor& logits, const torch::Tensor& target,
                                        const torch::Tensor& shift);

// The restricted softmax's per-class factors (TrainOptions::restricted_softmax;
// FedRS, Li & Zhan, KDD 2021): [num_classes] float, 1 for a class with at least one
// example in `labels`, r for a class with none. Undefined when r == 1 (off). Labels
// must be in [0, num_classes).
torch::Tensor RestrictedSoftmaxScale(const std::vector<int64_t>& labels, int64_t num_classes, double r);

// The restricted step's row factors (TrainOptions::restricted_step and
// restricted_step_below): [num_classes] float, r for a class with no example in
// `labels` or with at most below x labels.size() of them, 1 otherwise. With
// below = 0 it is RestrictedSoftmaxScale's vector. Undefined when r == 1 (off).
torch::Tensor RestrictedStepRows(const std::vector<int64_t>& labels, int64_t num_classes, double r,
                                 double below);

// logits [B, C] x scale [C] (every row); an undefined `scale` returns `logits`.
torch::Tensor RestrictLogits(const torch::Tensor& logits, const torch::Tensor& scale);

class LocalRound {
 public:
  // `params` alias the model's trainable tensors (requires_grad); `names` are
  // their exported names (for step_correction, which must then cover every one
  // with the same shape: INVALID_ARGUMENT from Start otherwise).
  LocalRound(std::vector<torch::Tensor> params, std::vector<std::string> names, const TrainOptions& options);

  // Snapshots the anchor (FedProx's w_global and the restore point) and builds
  // the optimizer with fresh state, or, when `kept` is not null, continues that
  // optimizer (an earlier round's ReleaseOptimizer over the same `params`) with
  // its moments and step count, at this round's learning rate and weight decay;
  // with TrainOptions::keep_first_moment false its first moments are zeroed
  // and restart their bias correction (each Step rescales the learning rate so
  // the first moment is corrected by 1 / (1 - b1^k) for the round's k-th step,
  // as a fresh optimizer's is, while the second moment and the step count
  // carry on). Call once, before the first Step.
  Status Start(std::unique_ptr<torch::optim::AdamW> kept = nullptr);

  // The optimizer, for the next round's Start (TrainOptions::keep_optimizer_state).
  std::unique_ptr<torch::optim::AdamW> ReleaseOptimizer() { return std::move(optimizer_); }

  // The optimizer between Start and ReleaseOptimizer (for tests to read its state).
  torch::optim::AdamW& optimizer() { return *optimizer_; }

  // Restricted step (TrainOptions::restricted_step): from now on, after each
  // optimizer step, the change that step made to row k (first dimension) of the
  // tensor named `name` is multiplied by row_scale[k] (AdamW's whole update:
  // gradient step and decoupled weight decay); rows with factor 1 keep the
  // optimizer's value exactly. The optimizer's moments are AdamW's own (they see
  // the gradients, not the scaled steps). SCAFFOLD's correction comes after and
  // is not scaled. INVALID_ARGUMENT if no tensor is named `name` or row_scale is
  // not [rows]. Call after Start, before the first Step; once per tensor.
  Status ScaleRowSteps(const std::string& name, const torch::Tensor& row_scale);

  // One step on `loss` (the batch's data loss, a scalar with a graph). Returns
  // its value; INTERNAL naming `step` if it is non-finite, after restoring the
  // parameters to their values at Start (the optimizer does not step).
  StatusOr<double> Step(const torch::Tensor& loss, int step);

  // Puts the parameters back to their values at Start.
  void Restore();

 private:
  std::vector<torch::Tensor> params_;
  std::vector<std::string> names_;
  TrainOptions options_;
  std::vector<torch::Tensor> anchor_;
  std::vector<torch::Tensor> correction_;  // lr x (c - c_i); empty: none
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  // keep-second-moment: the step count the kept optimizer had at Start (-1: none),
  // and the steps this round has taken.
  int64_t first_moment_from_ = -1;
  int64_t steps_taken_ = 0;
  // ScaleRowSteps: the tensor's index, its factors expanded to its shape, and
  // where they are not 1.
  struct RowSteps {
    size_t param;
    torch::Tensor scale, restricted;
  };
  std::vector<RowSteps> row_steps_;
};

}  // namespace fedge::agent
