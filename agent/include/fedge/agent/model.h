// The agent's model contracts, torch-free so the runtime (aggregator client,
// HTTP serving, main) compiles without libtorch headers.
//
// Every model the agent runs is a TrainableModel: it exchanges its trainable
// state (LoRA factors, a head) as a TensorBundle, trains a local round and
// evaluates. What else it can do is a capability the serving layer asks for:
//
//   Classifier  labels + Classify        (bert: TextClassifier)
//   Embedder    sentence embeddings       (bert: TextClassifier)
//   Generator   a causal LM to generate   (llama: LlmModel)
//
// TrainableModel::AsClassifier() / AsEmbedder() / AsGenerator() return the
// capability or nullptr; a model never answers UNIMPLEMENTED for something it
// declares. The capability pointers live as long as the model and share its
// thread-safety rules.
//
// Thread safety: a model is not thread-safe; the runtime keeps one for training
// and one (or a few) for serving and guards each with its own mutex.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fedge/job_spec.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

namespace llm {
class CausalLm;  // fedge/agent/llm/causal_lm.h
}  // namespace llm

struct Example {
  std::string text;
  int label = -1;  // index into labels; -1 when unknown
  // Causal-LM jobs only: `text` is the prompt and this the target continuation.
  std::string completion;
};

struct TrainOptions {
  int steps = 20;
  int batch_size = 16;
  double learning_rate = 1e-3;
  double weight_decay = 0.01;
  double max_grad_norm = 1.0;  // 0: no clipping
  double proximal_mu = 0.0;    // FedProx: mu/2 * ||w - w_global||^2
  uint64_t seed = 0;           // batch sampling and dropout
  // Logit-adjusted loss tau (spec.strategy.logitAdjustment): the training loss is the
  // cross-entropy of logits + tau x log(pi(y) + 1e-6), pi = the label frequencies of the
  // `data` passed to Train. Evaluation and inference use the raw logits. 0: plain
  // cross-entropy. A trainer without it answers INVALID_ARGUMENT when it is > 0.
  double logit_adjustment = 0.0;
  // spec.rounds.optimizerState keep: the AdamW moments and step count of this
  // trainer's previous Train call carry into this one (learning rate and weight
  // decay are this call's). False, or no earlier successful call: fresh state.
  // A trainer without it answers INVALID_ARGUMENT when it is true.
  bool keep_optimizer_state = false;
  // spec.rounds.optimizerState keep-second-moment (with keep_optimizer_state): the
  // kept AdamW's first moment (exp_avg) is zeroed when the round starts and is
  // bias-corrected as a fresh optimizer's; its second moment (exp_avg_sq) and step
  // count carry on. True (keep): both moments carry.
  bool keep_first_moment = true;
  // Restricted softmax r (spec.strategy.restrictedSoftmax; FedRS, Li & Zhan 2021):
  // while training, the logits of the classes with no example in the `data` passed
  // to Train are multiplied by r in (0, 1], so a round does not push down the head
  // rows of classes it never sees. Evaluation and inference use the raw logits.
  // 1: off. A trainer without it answers INVALID_ARGUMENT when it is not 1.
  double restricted_softmax = 1.0;
  // Restricted step r (spec.strategy.restrictedStep): after every optimizer step the
  // change that step made to a classifier-head row of a class with no example in
  // the `data` passed to Train (AdamW's whole update: gradient step and weight
  // decay) is multiplied by r in [0, 1]; 0 leaves those rows where Train found
  // them. SCAFFOLD's step_correction is applied after it, unscaled. Unlike
  // restricted_softmax it acts after AdamW's per-coordinate normalisation, which
  // undoes a scaled gradient. 1: off. A trainer without it answers
  // INVALID_ARGUMENT when it is not 1.
  double restricted_step = 1.0;
  // With restricted_step < 1: a class whose share of the `data` passed to Train is at
  // most restricted_step_below in [0, 1) counts as absent for the restricted step
  // (spec.strategy.restrictedStepBelow). 0: only classes with no example.
  double restricted_step_below = 0.0;
  // SCAFFOLD's c - c_i (fedge/agent/runtime/update.h): after every optimizer
  // step each trainable tensor moves by -learning_rate x its tensor of this
  // bundle (same names and shapes as ExportTrainable). Null: no correction. A
  // trainer without the hook answers INVALID_ARGUMENT when it is set.
  std::shared_ptr<const TensorBundle> step_correction;
};

// Copies the job's fields that only a trainer reads, spec.rounds.optimizerState
// (keep_optimizer_state, keep_first_moment), spec.strategy.restrictedSoftmax,
// spec.strategy.restrictedStep and restrictedStepBelow, into `options`. The spec is a validated one (an
// unknown optimizerState is fresh).
inline void ApplyTrainerSpec(const JobSpec& job, TrainOptions& options) {
  options.keep_optimizer_state =
      job.rounds.optimizerState == "keep" || job.rounds.optimizerState == "keep-second-moment";
  options.keep_first_moment = job.rounds.optimizerState != "keep-second-moment";
  options.restricted_softmax = job.strategy.restrictedSoftmax;
  options.restricted_step = job.strategy.restrictedStep;
  options.restricted_step_below = job.strategy.restrictedStepBelow;
}

struct TrainResult {
  double mean_loss = 0;
  int steps = 0;
  int64_t examples_seen = 0;
};

struct EvalResult {
  double accuracy = 0;  // 0 for a model without labels (a causal LM)
  double mean_loss = 0;
  int64_t num_examples = 0;
  int64_t num_correct = 0;
};

struct Prediction {
  int label = 0;
  std::vector<float> probabilities;  // softmax over labels
};

// Sequence classification over a fixed label set.
class Classifier {
 public:
  // Class names; index = label id. Never empty.
  virtual const std::vector<std::string>& labels() const = 0;
  // One prediction per text, in order.
  virtual StatusOr<std::vector<Prediction>> Classify(const std::vector<std::string>& texts) = 0;

 protected:
  ~Classifier() = default;  // owned through the TrainableModel
};

// Sentence embeddings: one L2-normalised vector of dimensions() floats per text.
class Embedder {
 public:
  virtual int dimensions() const = 0;
  virtual StatusOr<std::vector<std::vector<float>>> Embed(const std::vector<std::string>& texts) = 0;

 protected:
  ~Embedder() = default;
};

// Text generation: the causal LM (tokenizer, context length, Generate*), with
// the model's current adapter. Owned by the model.
class Generator {
 public:
  virtual llm::CausalLm& lm() = 0;

 protected:
  ~Generator() = default;
};

class TrainableModel {
 public:
  virtual ~TrainableModel() = default;

  // The trainable parameters (LoRA factors, and a head if the model has one), fp32.
  virtual TensorBundle ExportTrainable() const = 0;
  // Replaces the trainable parameters; INVALID_ARGUMENT (and no change) if names
  // or shapes differ from ExportTrainable()'s or a value is not finite.
  virtual Status ImportTrainable(const TensorBundle& bundle) = 0;

  // Runs `options.steps` AdamW steps (FedProx term, clipping) on batches sampled
  // (seeded) from `data`. The optimizer state is fresh for each call (one call =
  // one local round) unless options.keep_optimizer_state. INVALID_ARGUMENT for empty data or bad options;
  // INTERNAL if the loss turns non-finite (the parameters are restored first).
  virtual StatusOr<TrainResult> Train(const std::vector<Example>& data, const TrainOptions& options) = 0;
  virtual StatusOr<EvalResult> Evaluate(const std::vector<Example>& data, int batch_size) = 0;
  // Number of tokens `text` encodes to, untruncated (with the model's special tokens).
  virtual int CountTokens(const std::string& text) const = 0;

  // Capabilities: this model as that interface, or nullptr when it has none.
  virtual Classifier* AsClassifier() { return nullptr; }
  virtual Embedder* AsEmbedder() { return nullptr; }
  virtual Generator* AsGenerator() { return nullptr; }
};

// What the serving layer calls: the capability's answer, or UNIMPLEMENTED saying
// the model cannot do it and which endpoint it can serve instead.
StatusOr<std::vector<Prediction>> ClassifyWith(TrainableModel& model, const std::vector<std::string>& texts);
StatusOr<std::vector<std::vector<float>>> EmbedWith(TrainableModel& model,
                                                    const std::vector<std::string>& texts);
// UNIMPLEMENTED naming `what` (e.g. "classification") when the model lacks it.
Status MissingCapability(TrainableModel& model, const std::string& what);

}  // namespace fedge::agent
