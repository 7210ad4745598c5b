// BERT encoder (Devlin et al. 2019) as Hugging Face's BertModel computes it,
// without the pooler: embeddings (word + position + token type, LayerNorm) and
// N post-LayerNorm transformer layers with erf-GELU. Every Linear is a
// LoraLinear so adapters can be attached by name after loading.
//
// Module and parameter names follow Hugging Face ("embeddings.LayerNorm.weight",
// "encoder.layer.3.attention.self.query.weight", ...), so a model.safetensors
// maps onto named_parameters() one to one (with or without a "bert." prefix).
// Dropout layers are omitted: the base model is frozen and runs as in eval().
#pragma once

#include <torch/torch.h>

#include <string>

#include "fedge/safetensors.h"
#include "fedge/status.h"
#include "peft/lora.h"

namespace fedge::agent {

struct BertOptions {
  int64_t vocab_size = 30522;
  int64_t hidden_size = 384;
  int64_t num_hidden_layers = 6;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 1536;
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;
  double layer_norm_eps = 1e-12;
  double initializer_range = 0.02;

  // Parses a Hugging Face config.json. INVALID_ARGUMENT for a non-BERT model,
  // an unsupported activation or position embedding type, or inconsistent sizes.
  static StatusOr<BertOptions> FromConfigJson(const std::string& json_text);
  static StatusOr<BertOptions> FromConfigFile(const std::string& path);
};

class BertEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit BertEmbeddingsImpl(const BertOptions& options);
  torch::Tensor forward(const torch::Tensor& input_ids);

 private:
  torch::nn::Embedding word_embeddings_{nullptr};
  torch::nn::Embedding position_embeddings_{nullptr};
  torch::nn::Embedding token_type_embeddings_{nullptr};
  torch::nn::LayerNorm layer_norm_{nullptr};
};
TORCH_MODULE(BertEmbeddings);

class BertSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit BertSelfAttentionImpl(const BertOptions& options);
  // x [B, T, H]; additive_mask [B, 1, 1, T] (0 keep, very negative drop).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& additive_mask);

 private:
  int64_t num_heads_;
  int64_t head_dim_;
  LoraLinear query_{nullptr}, key_{nullptr}, value_{nullptr};
};
TORCH_MODULE(BertSelfAttention);

// Projection + residual + LayerNorm, used after attention ("attention.output")
// and after the MLP ("output").
class BertResidualOutputImpl : public torch::nn::Module {
 public:
  BertResidualOutputImpl(int64_t in_features, const BertOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& residual);

 private:
  LoraLinear dense_{nullptr};
  torch::nn::LayerNorm layer_norm_{nullptr};
};
TORCH_MODULE(BertResidualOutput);

class BertAttentionImpl : public torch::nn::Module {
 public:
  explicit BertAttentionImpl(const BertOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& additive_mask);

 private:
  BertSelfAttention self_{nullptr};
  BertResidualOutput output_{nullptr};
};
TORCH_MODULE(BertAttention);

class BertIntermediateImpl : public torch::nn::Module {
 public:
  explicit BertIntermediateImpl(const BertOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  LoraLinear dense_{nullptr};
};
TORCH_MODULE(BertIntermediate);

class BertLayerImpl : public torch::nn::Module {
 public:
  explicit BertLayerImpl(const BertOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& additive_mask);

 private:
  BertAttention attention_{nullptr};
  BertIntermediate intermediate_{nullptr};
  BertResidualOutput output_{nullptr};
};
TORCH_MODULE(BertLayer);

class BertModelImpl : public torch::nn::Module {
 public:
  explicit BertModelImpl(const BertOptions& options);

  // input_ids, attention_mask: int64 [B, T] (mask 1 = token, 0 = padding).
  // Returns the last hidden state [B, T, H].
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask);

  const BertOptions& options() const { return options_; }

  // Copies every base tensor (all parameters except LoRA factors) from `file`,
  // accepting names with or without a "bert." prefix. Tensors the model does not
  // use (pooler, position_ids) are ignored. DATA_LOSS names the first missing,
  // mis-shaped or non-float tensor; on error the model's weights are unspecified.
  Status LoadWeights(const SafetensorsFile& file);

  // The LoraLinear modules whose qualified name equals a target or ends with
  // "." + target (PEFT's rule: "value" matches every "...attention.self.value",
  // "dense" matches attention.output.dense, intermediate.dense and output.dense).
  std::vector<std::pair<std::string, LoraLinear>> FindLinears(const std::string& target);
  // Every LoraLinear with its qualified name, in module order.
  std::vector<std::pair<std::string, LoraLinear>> Linears();
  // The modules `targets` adapt (MatchLoraTargets, peft/lora_targets.h: target
  // by target, each once); INVALID_ARGUMENT names a target matching nothing.
  StatusOr<std::vector<std::pair<std::string, LoraLinear>>> SelectLoraTargets(
      const std::vector<std::string>& targets);

 private:
  BertOptions options_;
  BertEmbeddings embeddings_{nullptr};
  torch::nn::ModuleList layers_{nullptr};
};
TORCH_MODULE(BertModel);

// Mean of hidden [B, T, H] over positions where mask [B, T] is 1.
torch::Tensor MeanPool(const torch::Tensor& hidden, const torch::Tensor& mask);

}  // namespace fedge::agent
