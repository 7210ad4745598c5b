// TextClassifier: the agent's model for BERT-family jobs, behind the torch-free
// contracts of fedge/agent/model.h (a TrainableModel that is a Classifier and an
// Embedder), so the agent's runtime compiles without libtorch headers.
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
// Thread safety: a TextClassifier is not thread-safe (see model.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fedge/agent/model.h"
#include "fedge/status.h"

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

class TextClassifier : public TrainableModel, public Classifier, public Embedder {
 public:
  // Loads the base model and builds fresh LoRA/head parameters from init_seed.
  // NOT_FOUND / INVALID_ARGUMENT / DATA_LOSS name the file and the problem.
  static StatusOr<std::unique_ptr<TextClassifier>> Load(const ClassifierOptions& options);

  // Embed: mean pooling over tokens + L2 normalisation (sentence-transformers'
  // recipe) from the encoder with the current LoRA; dimensions() = hidden size.
  // CountTokens: WordPiece tokens with [CLS]/[SEP].
  Classifier* AsClassifier() final { return this; }
  Embedder* AsEmbedder() final { return this; }
};

// Reads JSONL lines {"text": "...", "label": "noun.animal"} (label may also be an
// integer id). Unknown labels and malformed lines are errors naming the line.
StatusOr<std::vector<Example>> LoadExamples(const std::string& path, const std::vector<std::string>& labels);

}  // namespace fedge::agent
