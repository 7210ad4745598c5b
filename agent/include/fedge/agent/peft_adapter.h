// PEFT adapters: fedge's trainable state in the directory layout Hugging Face's
// `peft` library saves and loads (PeftModel.save_pretrained / from_pretrained):
//
//   adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha",
//                               "lora_dropout", "target_modules",
//                               "base_model_name_or_path", "task_type",
//                               "modules_to_save", ...}
//   adapter_model.safetensors  F32; "base_model.model.<module>.lora_A.weight"
//                              [r, in], "...lora_B.weight" [out, r], and the
//                              full parameters of modules_to_save as
//                              "base_model.model.<module>.<param>"
//   fedge_head.safetensors     fedge-only, optional: a head peft has no module
//                              for (the TextClassifier's linear head over the
//                              mean-pooled encoder output), with metadata
//                              {"pooling": "mean", "labels": JSON array}
//
// Inside fedge tensors keep the trainable bundle's names ("<module>.lora_A",
// "<module>.lora_B", "classifier.weight"); this file only maps names and formats.
// peft's scaling is lora_alpha / r, as fedge's; configurations peft would scale
// or place differently (use_rslora, use_dora, rank/alpha patterns, regex
// target_modules, fan_in_fan_out, layers_to_transform, bias != "none") are
// rejected on import rather than silently mis-read.
//
// Torch-free: safe to include from the agent runtime and tools.
#pragma once

#include <string>
#include <vector>

#include "fedge/agent/text_classifier.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

struct PeftLoraConfig {
  int r = 8;
  double lora_alpha = 16;
  double lora_dropout = 0.0;
  std::vector<std::string> target_modules;
  std::string base_model_name_or_path;  // informational; peft's AutoPeftModel uses it
  // peft's TaskType: "FEATURE_EXTRACTION" (BertModel / AutoModel), "TOKEN_CLS",
  // "SEQ_CLS", "CAUSAL_LM".
  std::string task_type = "FEATURE_EXTRACTION";
  std::vector<std::string> modules_to_save;  // e.g. {"classifier"}
};

struct PeftAdapter {
  PeftLoraConfig config;
  // LoRA factors and modules_to_save parameters, under fedge's trainable names.
  TensorBundle tensors;
  // fedge_head.safetensors' tensors (empty if the directory has none) and its labels.
  TensorBundle head;
  std::vector<std::string> labels;
};

// Writes `dir` (created if missing; files replaced atomically). Every tensor of
// adapter.tensors must be a "<module>.lora_A" / "<module>.lora_B" pair member or
// belong to a module in config.modules_to_save; the head goes to
// fedge_head.safetensors when non-empty. INVALID_ARGUMENT names the offending
// tensor (e.g. a lora_B without its lora_A, or a rank differing from config.r).
Status WritePeftAdapter(const std::string& dir, const PeftAdapter& adapter);

// Reads a directory written by WritePeftAdapter or by peft's save_pretrained.
// NOT_FOUND for a missing adapter_config.json / adapter_model.safetensors;
// INVALID_ARGUMENT for a non-LoRA adapter or an option fedge cannot reproduce
// (see the file comment); DATA_LOSS for a malformed file.
StatusOr<PeftAdapter> ReadPeftAdapter(const std::string& dir);

// An adapter from a trainable bundle (TextClassifier's or CausalLm's
// ExportTrainable names): "*.lora_A" / "*.lora_B" go to tensors, everything else
// (a TextClassifier's head) to head.
PeftAdapter MakePeftAdapter(const PeftLoraConfig& config, TensorBundle trainable,
                            std::vector<std::string> labels);

// Frozen-A adapters (spec.adapter.aggregation = frozen-a) exchange B only;
// every agent derives A from the job's seed and the layer name (FrozenLoraA).
// AddFrozenLoraA adds each missing "<module>.lora_A" of a BERT adapter as that
// A (in_features from model_dir/config.json), so peft gets a complete adapter.
// RemoveFrozenLoraA drops the adapter's A's after checking each is the job's
// (INVALID_ARGUMENT otherwise: a frozen-A model cannot hold another A).
Status AddFrozenLoraA(const std::string& model_dir, uint64_t seed, PeftAdapter* adapter);
Status RemoveFrozenLoraA(const std::string& model_dir, uint64_t seed, PeftAdapter* adapter);

// Sets rank, alpha, dropout and targets of `options` (and labels, when the
// adapter carries them) so TextClassifier::Load builds a model the adapter fits.
void ApplyPeftConfig(const PeftLoraConfig& config, const std::vector<std::string>& labels,
                     ClassifierOptions* options);

// A TextClassifier's trainable state as a PEFT adapter for peft's
// FEATURE_EXTRACTION task over the base BertModel (AutoModel), with the head in
// fedge_head.safetensors. `options` are the ones the model was loaded with;
// base_model_name_or_path is options.model_dir. A frozen-A model's A's are
// regenerated (AddFrozenLoraA), since its trainable state holds B only.
Status ExportPeftAdapter(const TextClassifier& model, const ClassifierOptions& options,
                         const std::string& dir);

// Loads an adapter into `model`: its LoRA factors replace the model's (the
// adapter must cover exactly the model's adapted modules with the same rank and
// alpha/r); its head, if it has one, replaces the model's, else the model keeps
// its head. A frozen-A model (options.lora_frozen_a) takes only an adapter whose
// A's are the job's (exported from a frozen-A model of the same seed).
// INVALID_ARGUMENT (model unchanged) for any mismatch, naming it.
Status ImportPeftAdapter(const std::string& dir, const ClassifierOptions& options, TextClassifier& model);

}  // namespace fedge::agent
