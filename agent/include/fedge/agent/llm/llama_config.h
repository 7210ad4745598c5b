// The hyper-parameters of a Llama-family decoder (LlamaForCausalLM,
// Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM, Phi3ForCausalLM,
// Gemma2ForCausalLM, Gemma3ForCausalLM), read from and written as a Hugging Face config.json.
// Torch-free so the CLI and the runtime can inspect a model directory cheaply.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/status.h"

namespace fedge::agent::llm {

// How the rotary embedding's frequencies are scaled for a context longer than the
// one the model was pretrained on (transformers' rope_type). "default" leaves them;
// "linear" divides every frequency by factor; "llama3" (Llama 3.1 / 3.2) divides
// the low frequencies (wavelength > original / low_freq_factor) by factor, keeps
// the high ones (wavelength < original / high_freq_factor) and interpolates between.
// "longrope" (Phi-3.5-mini, Phi-3-*-128k) divides frequency i by short_factor[i] and
// scales cos and sin by attention_factor; the context is capped at
// original_max_position_embeddings (max_position_embeddings is lowered to it), where
// transformers would turn to long_factor and recompute the whole cache.
struct RopeScaling {
  std::string rope_type = "default";  // "default" | "linear" | "llama3" | "longrope"
  double factor = 1.0;
  double low_freq_factor = 1.0;                  // llama3
  double high_freq_factor = 4.0;                 // llama3
  int64_t original_max_position_embeddings = 0;  // llama3, longrope
  std::vector<double> short_factor;              // longrope: head_dim / 2 each
  std::vector<double> long_factor;
  // longrope: the given attention_factor, else sqrt(1 + ln(factor) / ln(original))
  // with factor max_position_embeddings / original (1 when that is <= 1).
  double attention_factor = 1.0;
};

// How the frozen weights (projections, embedding, LM head) are held in memory.
// Norms, biases and adapters are always float32, and all arithmetic is float32: a
// 16-bit weight is widened where it is read, so a bf16 checkpoint held in bf16
// computes exactly what it computes widened to fp32 on load, in half the memory.
enum class WeightDtype { kFloat32, kBFloat16, kFloat16 };

// "float32", "bfloat16", "float16".
std::string_view WeightDtypeName(WeightDtype dtype);

struct LlamaConfig;

// The storage for a model: "float32", "bfloat16" or "float16" as named (also
// transformers' aliases "float", "bf16", "half", "fp16"), or "auto": config.json's
// own dtype (`dtype`, or `torch_dtype` before transformers 5) when it is bfloat16 or
// float16, float32 otherwise — what transformers' dtype="auto" loads.
// INVALID_ARGUMENT for another name.
StatusOr<WeightDtype> ResolveWeightDtype(std::string_view name, const LlamaConfig& config);

struct LlamaConfig {
  // "llama" | "mistral" | "phi3" | "qwen2" | "qwen3" | "gemma2" | "gemma3_text"
  std::string model_type = "llama";
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // < num_attention_heads: grouped-query attention
  int64_t head_dim = 128;            // hidden_size / num_attention_heads unless given
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v/o biases (Llama's attention_bias)
  bool qkv_bias = false;        // q/k/v biases only (Qwen2)
  bool mlp_bias = false;
  bool qk_norm = false;  // per-head RMSNorm of queries and keys before the rotary (Qwen3)
  // Phi-3: the checkpoint holds self_attn.qkv_proj (q, k, v stacked) and mlp.gate_up_proj
  // (gate, up); they are split into the separate projections on load.
  bool fused_projections = false;
  // --- Gemma 2 and 3 (gemma2, gemma3_text); the defaults are Llama's ---
  std::string hidden_act = "silu";  // the MLP's gate activation: "silu" | "gelu_pytorch_tanh"
  bool norm_unit_offset = false;    // every RMSNorm scales by (1 + weight), not weight
  double embed_scale = 1.0;         // embeddings are multiplied by it (Gemma: sqrt(hidden_size))
  // post_attention_layernorm normalizes the attention's output before the residual
  // add, and pre_feedforward_layernorm / post_feedforward_layernorm surround the MLP
  // (Gemma 2/3); otherwise post_attention_layernorm is the MLP's input norm.
  bool sandwich_norms = false;
  double query_pre_attn_scalar = 0;  // attention scores scaled by its -1/2 power; 0: head_dim
  // Sliding-window attention (Gemma 2/3; every layer of Mistral v0.1 and Phi-3): on
  // the layers sliding_layers marks, a query at
  // position p sees keys p - sliding_window + 1 .. p (transformers' sliding mask),
  // with rope_local_theta's plain rotary (Gemma 3; 0: the full layers' rotary, as
  // Gemma 2); the other layers attend to the whole prefix with rope_theta and
  // rope_scaling. Empty: every layer is full.
  int64_t sliding_window = 0;
  std::vector<bool> sliding_layers;
  double rope_local_theta = 0;
  double attn_logit_softcapping = 0;   // scores -> cap * tanh(scores / cap); 0: none
  double final_logit_softcapping = 0;  // the same on the logits
  int64_t bos_token_id = -1;           // -1: none
  std::vector<int64_t> eos_token_ids;
  double initializer_range = 0.02;
  // config.json's `dtype` (or `torch_dtype`): the dtype the checkpoint was saved in
  // as its author declared it ("bfloat16", "float16", "float32"); "" if absent.
  std::string dtype;
  // How this process holds the frozen weights (not written to config.json, whose
  // tensors fedge always saves as float32): set by LoadLlama.
  WeightDtype weight_dtype = WeightDtype::kFloat32;

  // Parses a Hugging Face config.json. Accepts rope_theta at the top level or in
  // rope_parameters (transformers >= 5; for Gemma 3 one entry per layer type), with
  // rope_type default, linear, llama3 or longrope (the context then capped at
  // original_max_position_embeddings). INVALID_ARGUMENT for another architecture,
  // an activation other than silu (gelu_pytorch_tanh for Gemma), another rope_type
  // (dynamic, yarn), malformed longrope factor lists or a partial rotary factor, Qwen2's
  // use_sliding_window, or sizes that do not divide.
  static StatusOr<LlamaConfig> FromJson(std::string_view json_text);
  static StatusOr<LlamaConfig> FromFile(const std::string& path);

  // config.json that transformers loads as the model_type's *ForCausalLM.
  std::string ToJson() const;

  // Parameter count of the model this config describes (tied head counted once).
  int64_t NumParameters() const;
  // Whether layer `layer` attends through the sliding window.
  bool IsSlidingLayer(int64_t layer) const {
    return sliding_window > 0 && layer >= 0 && static_cast<size_t>(layer) < sliding_layers.size() &&
           sliding_layers[static_cast<size_t>(layer)];
  }
};

}  // namespace fedge::agent::llm
