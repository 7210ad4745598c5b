// The agent's runtime model for causal-LM jobs (spec.model.family: llama):
// a llm::CausalLm with LoRA as a TrainableModel (fedge/agent/model.h) the
// aggregator client and the serving model drive like a BERT job's, so the round
// protocol, codecs and persistence are shared. An Example's `text` is the prompt
// and `completion` its continuation; Evaluate reports the held-out completion
// loss (accuracy is meaningless here and left 0; the client does not report it).
// Its one serving capability is Generator: it has no labels and no embeddings.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "fedge/agent/llm/causal_lm.h"
#include "fedge/agent/model.h"
#include "fedge/status.h"

namespace fedge::agent {

struct LlmModelOptions {
  std::string model_dir;  // HF directory (e.g. written by fedge-pretrain)
  llm::CausalLmLoraOptions lora;
  int max_seq_len = 128;  // tokens per training/eval example
  int num_threads = 1;
  // Weights of the decode step: "f32" | "int8" (llm::CausalLmOptions::decode_weights;
  // spec.serving.decodeWeights). Empty: FEDGE_DECODE_WEIGHTS, else f32.
  std::string decode_weights;
  // How the frozen weights are held (llm::CausalLmOptions::weight_dtype;
  // spec.model.dtype): auto | float32 | bfloat16 | float16. Empty: FEDGE_WEIGHT_DTYPE, else auto.
  std::string weight_dtype;
};

class LlmModel final : public TrainableModel, public Generator {
 public:
  // Loads the model and attaches fresh LoRA adapters (seeded by lora.seed, so
  // every agent starts identical). Errors name the file or the bad target.
  static StatusOr<std::unique_ptr<LlmModel>> Load(const LlmModelOptions& options);

  TensorBundle ExportTrainable() const override { return lm_->ExportTrainable(); }
  Status ImportTrainable(const TensorBundle& bundle) override { return lm_->ImportTrainable(bundle); }
  // TrainOptions map onto CausalLmTrainOptions; examples_seen counts sampled
  // examples (steps x batch).
  StatusOr<TrainResult> Train(const std::vector<Example>& data, const TrainOptions& options) override;
  // mean_loss: completion-token cross entropy over all of `data`.
  StatusOr<EvalResult> Evaluate(const std::vector<Example>& data, int batch_size) override;
  int CountTokens(const std::string& text) const override;
  Generator* AsGenerator() override { return this; }

  llm::CausalLm& lm() override { return *lm_; }
  int max_seq_len() const { return max_seq_len_; }

 private:
  LlmModel(std::unique_ptr<llm::CausalLm> lm, int max_seq_len)
      : lm_(std::move(lm)), max_seq_len_(max_seq_len) {}
  std::unique_ptr<llm::CausalLm> lm_;
  int max_seq_len_;
};

// Reads JSONL lines {"prompt": "...", "completion": "..."} into Examples
// (text = prompt). Malformed lines, missing or non-string fields and empty
// completions are INVALID_ARGUMENT naming the line.
StatusOr<std::vector<Example>> LoadPromptCompletions(const std::string& path);

}  // namespace fedge::agent
