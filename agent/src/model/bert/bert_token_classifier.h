// BertForTokenClassification (Hugging Face) in eval mode: the BERT encoder and
// a linear head over every token's last hidden state, logits [B, T, labels].
//
// Names follow the Hugging Face checkpoint ("bert.encoder...", "classifier.*"),
// so the trainable bundle is also the layout of a peft TOKEN_CLS adapter:
// "bert.<module>.lora_A" / "lora_B" plus "classifier.weight" / "classifier.bias"
// (peft's modules_to_save for this task).
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "bert/bert.h"
#include "fedge/agent/peft_adapter.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

class BertTokenClassifierImpl : public torch::nn::Module {
 public:
  BertTokenClassifierImpl(const BertOptions& options, int64_t num_labels);

  // Reads config.json (num_labels, else the size of id2label) and model.safetensors
  // of a Hugging Face directory. NOT_FOUND / INVALID_ARGUMENT / DATA_LOSS name the
  // file; a checkpoint without classifier.* tensors is DATA_LOSS.
  static StatusOr<std::shared_ptr<BertTokenClassifierImpl>> Load(const std::string& dir);

  // input_ids, attention_mask int64 [B, T] -> logits [B, T, num_labels].
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask);

  // Attaches LoRA (A from `init`, B zero) to every Linear a target matches and
  // makes the adapters and the head the only trainable parameters.
  // INVALID_ARGUMENT for a target that matches nothing or a second call.
  Status EnableLora(const LoraOptions& options, const std::vector<std::string>& targets,
                    torch::Generator& init);

  // Trainable parameters in module order, LoRA factors first, then the head.
  const std::vector<std::pair<std::string, torch::Tensor>>& trainable() const { return trainable_; }
  TensorBundle ExportTrainable() const;
  // INVALID_ARGUMENT (and no change) unless names and shapes match ExportTrainable().
  Status ImportTrainable(const TensorBundle& bundle);

  // Enables LoRA as `adapter.config` says and loads its tensors (a peft TOKEN_CLS
  // adapter, or any with the same names); INVALID_ARGUMENT for a mismatch.
  Status ApplyPeftAdapter(const PeftAdapter& adapter);

  int64_t num_labels() const { return num_labels_; }
  BertModel& bert() { return bert_; }

 private:
  int64_t num_labels_;
  BertModel bert_{nullptr};
  torch::nn::Linear classifier_{nullptr};
  bool lora_enabled_ = false;
  std::vector<std::pair<std::string, torch::Tensor>> trainable_;
};
TORCH_MODULE(BertTokenClassifier);

}  // namespace fedge::agent
