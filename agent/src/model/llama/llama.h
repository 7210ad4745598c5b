// Llama-family decoder (Touvron et al. 2023; Qwen2 is the same network with q/k/v
// biases) in libtorch, computing what Hugging Face's LlamaForCausalLM does:
//
//   h = embed(ids)
//   for each layer:  h += Attention(RMSNorm(h))      (RoPE, grouped-query, causal)
//                    h += SwiGLU(RMSNorm(h))         (down(silu(gate(x)) * up(x)))
//   logits = lm_head(RMSNorm(h))                    (lm_head = embed^T when tied)
//
// Gemma 3 (gemma3_text) is the same network with: embeddings times sqrt(hidden);
// RMSNorms scaling by (1 + weight); per-head q/k norms (as Qwen3); sandwich norms
// (h += RMSNorm(Attention(RMSNorm(h))), h += RMSNorm(MLP(RMSNorm(h)))); GeGLU
// (gelu-tanh instead of silu); scores scaled by query_pre_attn_scalar^-1/2; and
// sliding-window attention with its own rotary base on most layers.
//
// Module and parameter names follow Hugging Face ("model.layers.3.self_attn.q_proj.weight",
// "model.norm.weight", "lm_head.weight"), so model.safetensors maps onto
// named_parameters() one to one. Every projection is a LoraLinear (lora.h), so
// adapters attach by name. Internal header: torch stays out of the public ones.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/agent/llm/llama_config.h"
#include "fedge/safetensors.h"
#include "fedge/status.h"
#include "peft/lora.h"

namespace fedge::agent::llm {

// Per-layer key/value cache for incremental decoding, preallocated for `capacity`
// positions. Layer l's tensors are [batch, kv_heads, slots(l), head_dim] and hold
// position p at slot p % slots(l): a full-attention layer has a slot per position
// (slots = capacity); a sliding layer of window W keeps only the last W positions
// (slots = min(capacity, W)), a ring its keys overwrite once the sequence passes W
// (Gemma 3 1B at 8k positions: 22 of its 26 layers hold 512).
struct KvCache {
  std::vector<torch::Tensor> keys;
  std::vector<torch::Tensor> values;
  int64_t length = 0;  // positions filled
  int64_t capacity = 0;

  int64_t slots(size_t layer) const { return keys[layer].size(2); }
  // Bytes the keys and values hold.
  int64_t bytes() const;

  static KvCache Allocate(const LlamaConfig& config, int64_t batch, int64_t capacity);
};

// x / sqrt(mean(x^2) + eps) * weight, or * (1 + weight) with `unit_offset` (Gemma,
// whose checkpoint holds weight - 1).
class LlamaRmsNormImpl : public torch::nn::Module {
 public:
  LlamaRmsNormImpl(int64_t dim, double eps, bool unit_offset = false);
  torch::Tensor forward(const torch::Tensor& x);
  const torch::Tensor& weight() const { return weight_; }
  double eps() const { return eps_; }
  bool unit_offset() const { return unit_offset_; }

 private:
  torch::Tensor weight_;
  double eps_;
  bool unit_offset_;
};
TORCH_MODULE(LlamaRmsNorm);

// cos/sin of the rotary embedding, cat(freqs, freqs) layout (rotate-half). The
// first kRotaryTablePositions positions are tabulated; later ones (Llama 3.2 allows
// 131072, a 64 MiB table) are computed when asked for. Nothing is mutated after
// construction, so concurrent decoders may share one.
class LlamaRotaryImpl : public torch::nn::Module {
 public:
  static constexpr int64_t kRotaryTablePositions = 8192;

  LlamaRotaryImpl(int64_t head_dim, double theta, const RopeScaling& scaling, int64_t max_positions);
  // [T, head_dim] cos and sin for positions start .. start+T-1.
  std::pair<torch::Tensor, torch::Tensor> CosSin(int64_t start, int64_t length);
  int64_t max_positions() const { return max_positions_; }
  // [head_dim / 2] float32: the scaled inverse frequencies, as transformers' inv_freq
  // (longrope: the short factors').
  const torch::Tensor& inv_freq() const { return inv_freq_; }

 private:
  // cos and sin for positions start .. start+length-1, times the attention factor
  // (longrope's; 1 for the other rope types).
  std::pair<torch::Tensor, torch::Tensor> Compute(int64_t start, int64_t length) const;

  torch::Tensor inv_freq_;
  double attention_factor_ = 1.0;
  int64_t max_positions_;
  torch::Tensor cos_;
  torch::Tensor sin_;
};
TORCH_MODULE(LlamaRotary);

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  LlamaAttentionImpl(const LlamaConfig& config, int64_t layer);
  // x [B, T, H]; cos/sin [T, D]; with a cache (this layer's tensors of a KvCache),
  // keys/values of these T positions are written at `past` onwards (slot p % slots)
  // and attention covers the whole prefix, or the window of a sliding layer.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        torch::Tensor* cache_k, torch::Tensor* cache_v, int64_t past);

  fedge::agent::LoraLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  // Qwen3: RMSNorm over each head's queries / keys before the rotary; null otherwise.
  LlamaRmsNorm q_norm{nullptr}, k_norm{nullptr};
  // 0: the whole prefix; else a query at p sees keys p - window + 1 .. p.
  int64_t sliding_window() const { return sliding_window_; }
  float scale() const { return scale_; }       // multiplies q . k
  double softcap() const { return softcap_; }  // 0: none

 private:
  int64_t heads_, kv_heads_, head_dim_;
  int64_t sliding_window_ = 0;
  float scale_;
  double softcap_ = 0;
};
TORCH_MODULE(LlamaAttention);

class LlamaMlpImpl : public torch::nn::Module {
 public:
  explicit LlamaMlpImpl(const LlamaConfig& config);
  torch::Tensor forward(const torch::Tensor& x);
  bool gelu_tanh() const { return gelu_tanh_; }  // GeGLU (Gemma) instead of SwiGLU

  fedge::agent::LoraLinear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  bool gelu_tanh_ = false;
};
TORCH_MODULE(LlamaMlp);

class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  LlamaDecoderLayerImpl(const LlamaConfig& config, int64_t layer);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        torch::Tensor* cache_k, torch::Tensor* cache_v, int64_t past);

  LlamaAttention self_attn{nullptr};
  LlamaMlp mlp{nullptr};
  LlamaRmsNormImpl& input_layernorm() { return *input_layernorm_; }
  // Llama: the MLP's input norm. With sandwich norms (Gemma): the attention output's.
  LlamaRmsNormImpl& post_attention_layernorm() { return *post_attention_layernorm_; }
  bool sandwich_norms() const { return static_cast<bool>(pre_feedforward_layernorm_); }
  // Sandwich norms only: the MLP's input and output norms.
  LlamaRmsNormImpl& pre_feedforward_layernorm() { return *pre_feedforward_layernorm_; }
  LlamaRmsNormImpl& post_feedforward_layernorm() { return *post_feedforward_layernorm_; }

 private:
  LlamaRmsNorm input_layernorm_{nullptr};
  LlamaRmsNorm post_attention_layernorm_{nullptr};
  LlamaRmsNorm pre_feedforward_layernorm_{nullptr}, post_feedforward_layernorm_{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

// The decoder stack ("model." in Hugging Face names).
class LlamaModelImpl : public torch::nn::Module {
 public:
  explicit LlamaModelImpl(const LlamaConfig& config);
  // ids [B, T] int64 -> final hidden states [B, T, H] (after the last RMSNorm).
  torch::Tensor forward(const torch::Tensor& ids, KvCache* cache);

  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  LlamaRmsNormImpl& norm() { return *norm_; }
  LlamaRotaryImpl& rotary() { return *rotary_; }
  // The rotary of layer `layer`: the sliding layers' own base, or rotary().
  LlamaRotaryImpl& rotary(int64_t layer) {
    return rotary_local_ && config_.IsSlidingLayer(layer) ? *rotary_local_ : *rotary_;
  }
  float embed_scale() const { return embed_scale_; }  // 1 but for Gemma

 private:
  LlamaConfig config_;
  LlamaRmsNorm norm_{nullptr};
  LlamaRotary rotary_{nullptr};
  LlamaRotary rotary_local_{nullptr};  // sliding layers (Gemma 3); null otherwise
  float embed_scale_ = 1.0f;
};
TORCH_MODULE(LlamaModel);

// How the single-token decode step runs (batch 1, one new position, a KV cache,
// gradients off — what generation does after the prefill). Prefill, training and
// every other shape always take the batched libtorch path.
enum class DecodeKernel {
  kTorch,  // the same libtorch ops as prefill (the reference; ~200 ops per layer-token)
  kF32,    // llama_decode.cpp: fused fp32 matrix-vector kernels, no per-op tensors (default)
  kInt8,   // as kF32 but every projection and the LM head read weight-only int8 copies
           // (one scale per output channel), requantized from the fp32 weights
           // whenever those change (a LoRA merge on install, LoadWeights)
};
std::string_view DecodeKernelName(DecodeKernel kernel);
struct LlamaDecodeState;  // llama_decode.cpp: scratch buffers and int8 copies

class LlamaForCausalLmImpl : public torch::nn::Module {
 public:
  explicit LlamaForCausalLmImpl(const LlamaConfig& config);

  // ids [B, T] -> logits [B, T, V]. With a cache, positions continue from
  // cache->length and the cache advances by T. `last_only` computes the head for
  // the last position only ([B, 1, V]): what decoding needs. The decode step
  // (B = T = 1 with a cache, no grad, eval mode) runs decode_kernel(). A prefill
  // (a cache and `last_only`) longer than prefill_chunk() runs chunk by chunk: the
  // attention scores of T tokens at once are heads x T x T floats (4k tokens of a
  // 32-head model: 2 GiB per layer), of a chunk heads x chunk x T.
  torch::Tensor forward(const torch::Tensor& ids, KvCache* cache = nullptr, bool last_only = false);
  // One decode step of B sequences, batched (logits [B, V]); contract in llama_decode.cpp.
  torch::Tensor DecodeStepBatch(const std::vector<int64_t>& tokens, const std::vector<KvCache*>& caches);

  // Selects the decode-step kernel (default kF32). Not thread-safe: the decode
  // state (scratch, int8 copies) belongs to this model, like the KV cache a caller
  // passes; one generation at a time per model, as before.
  void set_decode_kernel(DecodeKernel kernel) { decode_kernel_ = kernel; }
  DecodeKernel decode_kernel() const { return decode_kernel_; }
  // Prefill chunk in tokens (default kPrefillChunk); 0 prefills a prompt at once.
  static constexpr int64_t kPrefillChunk = 256;
  void set_prefill_chunk(int64_t tokens) { prefill_chunk_ = tokens; }
  int64_t prefill_chunk() const { return prefill_chunk_; }

  // Names of the tensors a Hugging Face checkpoint of this config holds.
  std::vector<std::string> CheckpointNames() const;
  // Copies the checkpoint's tensors into the parameters. DATA_LOSS names a missing
  // tensor or a shape mismatch. Tensors the model does not use are ignored.
  Status LoadWeights(const SafetensorsFile& file);
  // One shard of a checkpoint: copies the tensors of CheckpointNames() that `file`
  // holds and adds their names to *loaded. DATA_LOSS for a shape mismatch.
  Status LoadWeightsFrom(const SafetensorsFile& file, std::set<std::string>* loaded);
  // Phi-3's fused projections in `file`, split into their parts (fused_projections).
  Status LoadFusedFrom(const SafetensorsFile& file, torch::OrderedDict<std::string, torch::Tensor>& params,
                       std::set<std::string>* loaded);
  // The checkpoint tensors (fp32), for model.safetensors.
  TensorBundle ExportWeights();

  // Attaches LoRA to every projection a target matches by PEFT's suffix rule
  // (peft/lora_targets.h: "q_proj" or "self_attn.q_proj"), in module order,
  // freezing everything else. Targets matching nothing are ignored here;
  // CausalLm::EnableLora refuses them.
  void EnableLora(const std::vector<std::string>& targets, const fedge::agent::LoraOptions& options,
                  uint64_t seed);
  // All projections in HF order, with their module path ("model.layers.0.self_attn.q_proj").
  std::vector<std::pair<std::string, fedge::agent::LoraLinear>> Projections();

  const LlamaConfig& config() const { return config_; }
  LlamaModel model{nullptr};

 private:
  // llama_decode.cpp: logits [1, 1, V] for `token` at position cache->length.
  torch::Tensor DecodeStep(int64_t token, KvCache* cache);
  bool CanDecodeFast(const torch::Tensor& ids, const KvCache* cache) const;

  LlamaConfig config_;
  fedge::agent::LoraLinear lm_head_{nullptr};  // absent when tied
  DecodeKernel decode_kernel_ = DecodeKernel::kF32;
  int64_t prefill_chunk_ = kPrefillChunk;
  std::shared_ptr<LlamaDecodeState> decode_;  // built on the first fast decode step
};
TORCH_MODULE(LlamaForCausalLm);

// Mean next-token cross entropy over positions whose label is not -100:
// logits [B, T, V] predict labels shifted by one ([B, T], the input ids with prompt
// and padding positions set to -100), as transformers' ForCausalLMLoss.
torch::Tensor CausalLmLoss(const torch::Tensor& logits, const torch::Tensor& labels);

constexpr int64_t kIgnoreIndex = -100;

// Loads config.json + model.safetensors from a Hugging Face directory, or the shards
// model.safetensors.index.json names (one shard in memory at a time). The frozen
// weights are held as `weight_dtype` says (ResolveWeightDtype: "auto", "float32",
// "bfloat16", "float16"); INVALID_ARGUMENT for another name.
StatusOr<LlamaForCausalLm> LoadLlama(const std::string& dir, std::string_view weight_dtype = "float32");

// The torch dtype of a WeightDtype.
torch::ScalarType TorchDtype(WeightDtype dtype);

// Writes config.json and model.safetensors into `dir` (created if needed), the
// tensors in `dtype` (16 bits: rounded to nearest even) and config.json's
// torch_dtype naming it.
Status SaveLlama(LlamaForCausalLm& model, const std::string& dir, WeightDtype dtype = WeightDtype::kFloat32);

}  // namespace fedge::agent::llm
