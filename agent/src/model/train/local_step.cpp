#include "train/local_step.h"

#include <cmath>

#include "shape_string.h"

namespace fedge::agent {

Status ValidateLocalRound(const TrainOptions& o, const std::string& what) {
  if (!(o.learning_rate > 0) || o.weight_decay < 0 || o.max_grad_norm < 0 || o.proximal_mu < 0 ||
      !(o.logit_adjustment >= 0) || !std::isfinite(o.logit_adjustment)) {
    return InvalidArgumentError(what +
                                ": learning_rate must be > 0; weight_decay, max_grad_norm, "
                                "proximal_mu, logit_adjustment must be >= 0 (and finite)");
  }
  if (!(o.restricted_softmax > 0 && o.restricted_softmax <= 1)) {
    return InvalidArgumentError(what + ": restricted_softmax must be in (0, 1] (1: off), got " +
                                std::to_string(o.restricted_softmax));
  }
  if (!(o.restricted_step >= 0 && o.restricted_step <= 1)) {
    return InvalidArgumentError(what + ": restricted_step must be in [0, 1] (1: off), got " +
                                std::to_string(o.restricted_step));
  }
  if (!(o.restricted_step_below >= 0 && o.restricted_step_below < 1)) {
    return InvalidArgumentError(what +
                                ": restricted_step_below must be in [0, 1) (0: absent classes only), got " +
                                std::to_string(o.restricted_step_below));
  }
  return OkStatus();
}

torch::Tensor LogitAdjustment(const std::vector<int64_t>& labels, int64_t num_classes, double tau) {
  std::vector<double> counts(static_cast<size_t>(num_classes), 0.0);
  for (int64_t y : labels) counts[static_cast<size_t>(y)] += 1;
  const double n = labels.empty() ? 1.0 : static_cast<double>(labels.size());
  std::vector<float> shift(counts.size());
  for (size_t k = 0; k < counts.size(); ++k) {
    shift[k] = static_cast<float>(tau * std::log(counts[k] / n + kLogitAdjustmentEps));
  }
  return torch::tensor(shift, torch::kFloat);
}

torch::Tensor LogitAdjustedCrossEntropy(const torch::Tensor& logits, const torch::Tensor& target,
                                        const torch::Tensor& shift) {
  if (!shift.defined()) return torch::nn::functional::cross_entropy(logits, target);
  return torch::nn::functional::cross_entropy(logits + shift.unsqueeze(0), target);
}

torch::Tensor RestrictedSoftmaxScale(const std::vector<int64_t>& labels, int64_t num_classes, double r) {
  if (r == 1.0) return torch::Tensor();
  std::vector<float> scale(static_cast<size_t>(num_classes), static_cast<float>(r));
  for (int64_t y : labels) scale[static_cast<size_t>(y)] = 1.0f;
  return torch::tensor(scale, torch::kFloat);
}

torch::Tensor RestrictedStepRows(const std::vector<int64_t>& labels, int64_t num_classes, double r,
                                 double below) {
  if (r == 1.0) return torch::Tensor();
  std::vector<double> counts(static_cast<size_t>(num_classes), 0.0);
  for (int64_t y : labels) counts[static_cast<size_t>(y)] += 1;
  const double most = below * static_cast<double>(labels.size());
  std::vector<float> rows(counts.size());
  for (size_t k = 0; k < counts.size(); ++k) {
    rows[k] = counts[k] <= most ? static_cast<float>(r) : 1.0f;  // most >= 0: count 0 always
  }
  return torch::tensor(rows, torch::kFloat);
}

torch::Tensor RestrictLogits(const torch::Tensor& logits, const torch::Tensor& scale) {
  if (!scale.defined()) return logits;
  return logits * scale.unsqueeze(0);
}

LocalRound::LocalRound(std::vector<torch::Tensor> params, std::vector<std::string> names,
                       const TrainOptions& options)
    : params_(std::move(params)), names_(std::move(names)), options_(options) {}

Status LocalRound::Start(std::unique_ptr<torch::optim::AdamW> kept) {
  // SCAFFOLD (TrainOptions::step_correction): each step also moves by -lr (c - c_i).
  if (options_.step_correction) {
    for (size_t i = 0; i < params_.size(); ++i) {
      const std::string& name = i < names_.size() ? names_[i] : std::string("#") + std::to_string(i);
      const NamedTensor* c = options_.step_correction->Find(name);
      const torch::Tensor& t = params_[i];
      if (c == nullptr || c->shape != t.sizes().vec() ||
          static_cast<int64_t>(c->values.size()) != t.numel()) {
        return InvalidArgumentError("Train: step_correction lacks tensor '" + name +
                                    "' or has another shape" +
                                    (c == nullptr ? "" : " (" + ShapeString(c->shape) + ")"));
      }
      correction_.push_back(torch::from_blob(const_cast<float*>(c->values.data()), t.sizes(), torch::kFloat)
                                .mul(options_.learning_rate));
    }
  }
  // FedProx anchors to the parameters this round started from (the global
  // model); also the restore point if the loss diverges.
  for (auto& p : params_) anchor_.push_back(p.detach().clone());
  if (kept != nullptr) {
    optimizer_ = std::move(kept);
    for (auto& group : optimizer_->param_groups()) {
      auto& o = static_cast<torch::optim::AdamWOptions&>(group.options());
      o.lr(options_.learning_rate);
      o.weight_decay(options_.weight_decay);
    }
    // keep-second-moment: the first moment restarts from 0; exp_avg_sq and step carry on.
    if (!options_.keep_first_moment) {
      torch::NoGradGuard no_grad;
      for (auto& [key, state] : optimizer_->state()) {
        auto& s = static_cast<torch::optim::AdamWParamState&>(*state);
        s.exp_avg().zero_();
        first_moment_from_ = s.step();  // every tensor steps together
      }
    }
    return OkStatus();
  }
  optimizer_ = std::make_unique<torch::optim::AdamW>(
      params_, torch::optim::AdamWOptions(options_.learning_rate).weight_decay(options_.weight_decay));
  return OkStatus();
}

Status LocalRound::ScaleRowSteps(const std::string& name, const torch::Tensor& row_scale) {
  for (size_t i = 0; i < params_.size() && i < names_.size(); ++i) {
    if (names_[i] != name) continue;
    const torch::Tensor& t = params_[i];
    if (t.dim() < 1 || row_scale.dim() != 1 || row_scale.size(0) != t.size(0)) {
      return InvalidArgumentError("Train: row step factors for '" + name + "' have shape " +
                                  ShapeString(row_scale.sizes().vec()) + ", expected [" +
                                  std::to_string(t.dim() < 1 ? 0 : t.size(0)) + "]");
    }
    std::vector<int64_t> shape(static_cast<size_t>(t.dim()), 1);
    shape[0] = t.size(0);
    torch::Tensor scale = row_scale.to(t.scalar_type()).reshape(shape).expand_as(t).contiguous();
    row_steps_.push_back({i, scale, scale.ne(1)});
    return OkStatus();
  }
  return InvalidArgumentError("Train: no trainable tensor '" + name + "' to scale the row steps of");
}

StatusOr<double> LocalRound::Step(const torch::Tensor& loss, int step) {
  torch::Tensor objective = loss;
  if (options_.proximal_mu > 0) {
    torch::Tensor prox = torch::zeros({});
    for (size_t i = 0; i < params_.size(); ++i) prox = prox + (params_[i] - anchor_[i]).pow(2).sum();
    objective = loss + 0.5 * options_.proximal_mu * prox;
  }
  const double l = loss.item<double>();
  if (!std::isfinite(l)) {
    Restore();
    return InternalError("Train: loss became non-finite at step " + std::to_string(step) +
                         "; parameters restored to their values before Train (learning rate too high?)");
  }
  // keep-second-moment: AdamW corrects m by 1 / (1 - b1^t) with t the kept step
  // count; the restarted m needs 1 / (1 - b1^k), k this round's step. The ratio goes
  // into the step's learning rate, and weight decay (applied as lr x wd) is divided
  // by it, so the decay stays lr x wd.
  if (first_moment_from_ >= 0) {
    for (auto& group : optimizer_->param_groups()) {
      auto& o = static_cast<torch::optim::AdamWOptions&>(group.options());
      const double b1 = std::get<0>(o.betas());
      const double t = static_cast<double>(first_moment_from_ + steps_taken_ + 1);
      const double k = static_cast<double>(steps_taken_ + 1);
      const double scale = (1 - std::pow(b1, t)) / (1 - std::pow(b1, k));
      o.lr(options_.learning_rate * scale);
      o.weight_decay(options_.weight_decay / scale);
    }
  }
  optimizer_->zero_grad();
  objective.backward();
  if (options_.max_grad_norm > 0) torch::nn::utils::clip_grad_norm_(params_, options_.max_grad_norm);
  // Restricted step: snapshot the restricted tensors, then scale the rows' change.
  std::vector<torch::Tensor> before;
  for (const RowSteps& r : row_steps_) before.push_back(params_[r.param].detach().clone());
  optimizer_->step();
  ++steps_taken_;
  if (!row_steps_.empty()) {
    torch::NoGradGuard no_grad;
    for (size_t k = 0; k < row_steps_.size(); ++k) {
      const RowSteps& r = row_steps_[k];
      torch::Tensor& p = params_[r.param];
      // Rows with factor 1 keep the optimizer's value bit for bit.
      p.copy_(torch::where(r.restricted, before[k] + (p - before[k]) * r.scale, p));
    }
  }
  if (!correction_.empty()) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) params_[i].sub_(correction_[i]);
  }
  return l;
}

void LocalRound::Restore() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size() && i < anchor_.size(); ++i) params_[i].copy_(anchor_[i]);
}

}  // namespace fedge::agent
