// TextClassifier: the agent's model, behind a torch-free interface so the
// agent's runtime (client, HTTP serving, main) compiles without libtorch headers.
//
// A BERT-family encoder loaded from a Hugging Face directory (config.json,
// model.safetensors, vocab.txt), LoRA on selected attention projections, and a
// sequence-classification head (dropout-free linear over the pooled output).
// The base weights are frozen; the trainable state (LoRA factors + head) is
// exchanged as a TensorBundle with stable names such as
//   "encoder.layer.0.attention.self.query.lora_A" [r, in]
//   "encoder.layer.0.attention.self.query.lora_B" [out, r]
//   "classifier.weight" [labels, hidden], "classifier.bias" [labels]
//
// Thread safety: a TextClassifier is not thread-safe; the runtime keeps one for
// training and one for serving and guards each with its own mutex.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

struct ClassifierOptions {
  std::string model_dir;            // HF directory
  std::vector<std::string> labels;  // class names; index = label id
  int lora_rank = 8;
  double lora_alpha = 16;
  double lora_dropout = 0.0;
  std::vector<std::string> lora_targets = {"query", "value"};
  // Frozen-A (spec.adapter.aggregation = frozen-a): each lora_A is generated
  // from init_seed and the layer name, identical on every agent, never trained
  // and left out of ExportTrainable/ImportTrainable (the bundle carries B + head).
  bool lora_frozen_a = false;
  int max_seq_len = 64;
  uint64_t init_seed = 42;  // LoRA A and head initialisation
  int num_threads = 1;      // torch intra-op threads
};

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
};

struct TrainResult {
  double mean_loss = 0;
  int steps = 0;
  int64_t examples_seen = 0;
};

struct EvalResult {
  double accuracy = 0;
  double mean_loss = 0;
  int64_t num_examples = 0;
  int64_t num_correct = 0;
};

struct Prediction {
  int label = 0;
  std::vector<float> probabilities;  // softmax over labels
};

class TextClassifier {
 public:
  virtual ~TextClassifier() = default;

  // Loads the base model and builds fresh LoRA/head parameters from init_seed.
  // NOT_FOUND / INVALID_ARGUMENT / DATA_LOSS name the file and the problem.
  static StatusOr<std::unique_ptr<TextClassifier>> Load(const ClassifierOptions& options);

  virtual const std::vector<std::string>& labels() const = 0;
  virtual int hidden_size() const = 0;

  // The trainable parameters (LoRA factors + head), fp32.
  virtual TensorBundle ExportTrainable() const = 0;
  // Replaces the trainable parameters; INVALID_ARGUMENT (and no change) if names
  // or shapes differ from ExportTrainable()'s or a value is not finite.
  virtual Status ImportTrainable(const TensorBundle& bundle) = 0;

  // Runs `options.steps` AdamW steps on batches sampled (seeded) from `data`.
  // The optimizer state is fresh for each call (one call = one local round).
  virtual StatusOr<TrainResult> Train(const std::vector<Example>& data, const TrainOptions& options) = 0;

  virtual StatusOr<EvalResult> Evaluate(const std::vector<Example>& data, int batch_size) = 0;
  virtual StatusOr<std::vector<Prediction>> Classify(const std::vector<std::string>& texts) = 0;
  // Sentence embeddings: mean pooling over tokens + L2 normalisation
  // (sentence-transformers' recipe), from the encoder with the current LoRA.
  virtual StatusOr<std::vector<std::vector<float>>> Embed(const std::vector<std::string>& texts) = 0;
  // Number of WordPiece tokens (with [CLS]/[SEP]) the text encodes to, untruncated.
  virtual int CountTokens(const std::string& text) const = 0;
};

// Reads JSONL lines {"text": "...", "label": "noun.animal"} (label may also be an
// integer id). Unknown labels and malformed lines are errors naming the line.
StatusOr<std::vector<Example>> LoadExamples(const std::string& path, const std::vector<std::string>& labels);

}  // namespace fedge::agent
