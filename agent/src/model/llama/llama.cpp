// Llama-family decoder; see llama/llama.h for the shape of the network.
#include "llama/llama.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>

#include "fedge/file_util.h"
#include "fedge/log.h"
#include "peft/lora_targets.h"
#include "torch_call.h"

namespace fedge::agent::llm {

using fedge::agent::LoraLinear;

KvCache KvCache::Allocate(const LlamaConfig& config, int64_t batch, int64_t capacity) {
  KvCache cache;
  cache.capacity = capacity;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const int64_t slots = config.IsSlidingLayer(l) ? std::min(capacity, config.sliding_window) : capacity;
    cache.keys.push_back(torch::zeros({batch, config.num_key_value_heads, slots, config.head_dim}));
    cache.values.push_back(torch::zeros({batch, config.num_key_value_heads, slots, config.head_dim}));
  }
  return cache;
}

int64_t KvCache::bytes() const {
  int64_t total = 0;
  for (const auto* side : {&keys, &values}) {
    for (const torch::Tensor& t : *side) total += t.numel() * static_cast<int64_t>(t.element_size());
  }
  return total;
}

// --- RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * weight ----------
LlamaRmsNormImpl::LlamaRmsNormImpl(int64_t dim, double eps, bool unit_offset)
    : eps_(eps), unit_offset_(unit_offset) {
  weight_ = register_parameter("weight", unit_offset ? torch::zeros({dim}) : torch::ones({dim}),
                               /*requires_grad=*/false);
}

torch::Tensor LlamaRmsNormImpl::forward(const torch::Tensor& x) {
  torch::Tensor variance = x.pow(2).mean(-1, /*keepdim=*/true);
  // Gemma: (1 + w) in float32, as transformers' Gemma3RMSNorm computes it.
  return (unit_offset_ ? 1.0 + weight_ : weight_) * (x * torch::rsqrt(variance + eps_));
}

// --- Rotary position embedding (Su et al. 2021), rotate-half form ------------------
namespace {

// longrope: inv_freq_i = 1 / (factors_i * theta^(2i/d)), float32 as transformers
// computes it.
torch::Tensor LongRopeInvFreq(int64_t head_dim, double theta, const std::vector<double>& factors) {
  torch::Tensor exponent =
      torch::arange(0, head_dim, 2, torch::kInt64).to(torch::kFloat) / static_cast<double>(head_dim);
  torch::Tensor ext = torch::tensor(factors, torch::kDouble).to(torch::kFloat);
  return 1.0 / (ext * torch::pow(torch::tensor(theta, torch::kFloat), exponent));
}

// inv_freq_i = theta^(-2i/d), then scaled; float32 throughout, as transformers does.
torch::Tensor RotaryInvFreq(int64_t head_dim, double theta, const RopeScaling& r) {
  if (r.rope_type == "longrope") return LongRopeInvFreq(head_dim, theta, r.short_factor);
  torch::Tensor exponent =
      torch::arange(0, head_dim, 2, torch::kInt64).to(torch::kFloat) / static_cast<double>(head_dim);
  torch::Tensor inv_freq = 1.0 / torch::pow(torch::tensor(theta, torch::kFloat), exponent);
  if (r.rope_type == "linear") return inv_freq / r.factor;
  if (r.rope_type != "llama3") return inv_freq;
  // Llama 3.1: wavelengths beyond the pretraining context / low_freq_factor are
  // stretched by factor, those under context / high_freq_factor kept, and the band
  // between interpolated by how many wavelengths the pretraining context held.
  const double context = static_cast<double>(r.original_max_position_embeddings);
  const double low_freq_wavelen = context / r.low_freq_factor;
  const double high_freq_wavelen = context / r.high_freq_factor;
  torch::Tensor wavelen = 2 * M_PI / inv_freq;
  torch::Tensor scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / r.factor, inv_freq);
  torch::Tensor smooth = (context / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  torch::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
  torch::Tensor medium = wavelen.ge(high_freq_wavelen).logical_and(wavelen.le(low_freq_wavelen));
  return torch::where(medium, smoothed, scaled);
}

std::pair<torch::Tensor, torch::Tensor> RotaryCosSin(const torch::Tensor& inv_freq, int64_t start,
                                                     int64_t length) {
  torch::Tensor positions = torch::arange(start, start + length, torch::kInt64).to(torch::kFloat);
  torch::Tensor freqs = torch::outer(positions, inv_freq);
  torch::Tensor emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos(), emb.sin()};
}

}  // namespace

LlamaRotaryImpl::LlamaRotaryImpl(int64_t head_dim, double theta, const RopeScaling& scaling,
                                 int64_t max_positions)
    : inv_freq_(RotaryInvFreq(head_dim, theta, scaling)), max_positions_(max_positions) {
  if (scaling.rope_type == "longrope") {
    // The context is capped at original_max_position_embeddings (LlamaConfig): every
    // position turns by the short factors.
    TORCH_CHECK(static_cast<int64_t>(scaling.short_factor.size()) == head_dim / 2,
                "longrope needs head_dim / 2 short factors");
    TORCH_CHECK(max_positions <= scaling.original_max_position_embeddings,
                "longrope past original_max_position_embeddings is not implemented");
    attention_factor_ = scaling.attention_factor;
  }
  auto [cos, sin] = Compute(0, std::min(max_positions, kRotaryTablePositions));
  cos_ = register_buffer("cos", cos);
  sin_ = register_buffer("sin", sin);
}

std::pair<torch::Tensor, torch::Tensor> LlamaRotaryImpl::Compute(int64_t start, int64_t length) const {
  auto [cos, sin] = RotaryCosSin(inv_freq_, start, length);
  if (attention_factor_ == 1.0) return {cos, sin};
  return {cos * static_cast<float>(attention_factor_), sin * static_cast<float>(attention_factor_)};
}

std::pair<torch::Tensor, torch::Tensor> LlamaRotaryImpl::CosSin(int64_t start, int64_t length) {
  TORCH_CHECK(start >= 0 && length >= 0 && start + length <= max_positions_, "position ", start + length,
              " beyond max_position_embeddings ", max_positions_);
  if (start + length <= cos_.size(0)) return {cos_.narrow(0, start, length), sin_.narrow(0, start, length)};
  return Compute(start, length);
}

namespace {
torch::Tensor RotateHalf(const torch::Tensor& x) {
  int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

torch::Tensor ApplyRotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  return x * cos + RotateHalf(x) * sin;
}

}  // namespace

torch::ScalarType TorchDtype(WeightDtype dtype) {
  switch (dtype) {
    case WeightDtype::kFloat32:
      return torch::kFloat;
    case WeightDtype::kBFloat16:
      return torch::kBFloat16;
    case WeightDtype::kFloat16:
      return torch::kHalf;
  }
  return torch::kFloat;
}

namespace {
LoraLinear Projection(const LlamaConfig& c, int64_t in, int64_t out) {
  return LoraLinear(in, out, TorchDtype(c.weight_dtype));
}
}  // namespace

// --- Grouped-query causal self-attention (Ainslie et al. 2023) ---------------------
LlamaAttentionImpl::LlamaAttentionImpl(const LlamaConfig& c, int64_t layer)
    : heads_(c.num_attention_heads),
      kv_heads_(c.num_key_value_heads),
      head_dim_(c.head_dim),
      sliding_window_(c.IsSlidingLayer(layer) ? c.sliding_window : 0),
      // transformers' scaling, a Python float (double) applied to fp32 scores.
      scale_(
          static_cast<float>(1.0 / std::sqrt(c.query_pre_attn_scalar > 0 ? c.query_pre_attn_scalar
                                                                         : static_cast<double>(c.head_dim)))),
      softcap_(c.attn_logit_softcapping) {
  q_proj = register_module("q_proj", Projection(c, c.hidden_size, heads_ * head_dim_));
  k_proj = register_module("k_proj", Projection(c, c.hidden_size, kv_heads_ * head_dim_));
  v_proj = register_module("v_proj", Projection(c, c.hidden_size, kv_heads_ * head_dim_));
  o_proj = register_module("o_proj", Projection(c, heads_ * head_dim_, c.hidden_size));
  if (c.qk_norm) {
    q_norm = register_module("q_norm", LlamaRmsNorm(head_dim_, c.rms_norm_eps, c.norm_unit_offset));
    k_norm = register_module("k_norm", LlamaRmsNorm(head_dim_, c.rms_norm_eps, c.norm_unit_offset));
  }
}

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                          const torch::Tensor& sin, torch::Tensor* cache_k,
                                          torch::Tensor* cache_v, int64_t past) {
  const int64_t b = x.size(0), t = x.size(1), rep = heads_ / kv_heads_;
  torch::Tensor q = q_proj(x).view({b, t, heads_, head_dim_}).transpose(1, 2);
  torch::Tensor k = k_proj(x).view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
  torch::Tensor v = v_proj(x).view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
  if (q_norm) {
    q = q_norm(q);
    k = k_norm(k);
  }
  q = ApplyRotary(q, cos, sin);
  k = ApplyRotary(k, cos, sin);
  int64_t first = 0;  // absolute position of k's first row
  if (cache_k != nullptr && past + t > cache_k->size(2)) {
    // A sliding layer's ring (KvCache): it holds the last W positions, slot p % W.
    // Attention reads the W - 1 positions before this chunk from it and the chunk's
    // own keys; the chunk's last min(T, W) positions are written over the oldest.
    const int64_t w = cache_k->size(2);
    TORCH_CHECK(sliding_window_ > 0 && w >= sliding_window_, "KV cache of ", w,
                " slots cannot hold positions ", past, "..", past + t - 1, " of a layer with window ",
                sliding_window_);
    first = std::max<int64_t>(0, past - sliding_window_ + 1);
    torch::Tensor old_slots = torch::arange(first, past, torch::kLong).remainder(w);
    k = torch::cat({cache_k->index_select(2, old_slots), k}, 2);
    v = torch::cat({cache_v->index_select(2, old_slots), v}, 2);
    const int64_t kept = std::min(t, w);
    torch::Tensor new_slots = torch::arange(past + t - kept, past + t, torch::kLong).remainder(w);
    cache_k->index_copy_(2, new_slots, k.narrow(2, k.size(2) - kept, kept));
    cache_v->index_copy_(2, new_slots, v.narrow(2, v.size(2) - kept, kept));
  } else if (cache_k != nullptr) {
    cache_k->narrow(2, past, t).copy_(k);
    cache_v->narrow(2, past, t).copy_(v);
    k = cache_k->narrow(2, 0, past + t);
    v = cache_v->narrow(2, 0, past + t);
  }
  const int64_t s = k.size(2);
  // Query heads g*rep .. g*rep+rep-1 share key/value head g: fold them into the row
  // dimension instead of copying keys and values rep times.
  torch::Tensor qg = q.reshape({b, kv_heads_, rep * t, head_dim_});
  torch::Tensor scores = torch::matmul(qg, k.transpose(-1, -2)) * static_cast<double>(scale_);
  if (softcap_ > 0) scores = torch::tanh(scores / softcap_) * softcap_;
  const bool windowed = sliding_window_ > 0 && first + s > sliding_window_;
  if (t > 1 || windowed) {
    // Query i (absolute position past+i) sees keys 0..past+i, or with a sliding
    // window W only keys past+i-W+1 .. past+i; key j is position first+j.
    torch::Tensor mask = torch::ones({t, s}, torch::kBool).triu(past - first + 1);
    if (windowed) {
      mask = mask.logical_or(torch::ones({t, s}, torch::kBool).tril(past - first - sliding_window_));
    }
    scores = scores.view({b, kv_heads_, rep, t, s})
                 .masked_fill(mask, -std::numeric_limits<float>::infinity())
                 .view({b, kv_heads_, rep * t, s});
  }
  torch::Tensor out = torch::matmul(torch::softmax(scores, -1), v);  // [B, G, rep*T, D]
  out = out.view({b, heads_, t, head_dim_}).transpose(1, 2).reshape({b, t, heads_ * head_dim_});
  return o_proj(out);
}

// --- SwiGLU feed-forward (Shazeer 2020) -------------------------------------------
LlamaMlpImpl::LlamaMlpImpl(const LlamaConfig& c) : gelu_tanh_(c.hidden_act == "gelu_pytorch_tanh") {
  gate_proj = register_module("gate_proj", Projection(c, c.hidden_size, c.intermediate_size));
  up_proj = register_module("up_proj", Projection(c, c.hidden_size, c.intermediate_size));
  down_proj = register_module("down_proj", Projection(c, c.intermediate_size, c.hidden_size));
}

torch::Tensor LlamaMlpImpl::forward(const torch::Tensor& x) {
  torch::Tensor gate = gate_proj(x);
  gate = gelu_tanh_ ? torch::gelu(gate, "tanh") : torch::silu(gate);
  return down_proj(gate * up_proj(x));
}

// --- Pre-norm decoder layer --------------------------------------------------------
LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlamaConfig& c, int64_t layer) {
  auto norm = [&] { return LlamaRmsNorm(c.hidden_size, c.rms_norm_eps, c.norm_unit_offset); };
  self_attn = register_module("self_attn", LlamaAttention(c, layer));
  mlp = register_module("mlp", LlamaMlp(c));
  input_layernorm_ = register_module("input_layernorm", norm());
  post_attention_layernorm_ = register_module("post_attention_layernorm", norm());
  if (c.sandwich_norms) {
    pre_feedforward_layernorm_ = register_module("pre_feedforward_layernorm", norm());
    post_feedforward_layernorm_ = register_module("post_feedforward_layernorm", norm());
  }
}

torch::Tensor LlamaDecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                             const torch::Tensor& sin, torch::Tensor* cache_k,
                                             torch::Tensor* cache_v, int64_t past) {
  if (pre_feedforward_layernorm_) {
    torch::Tensor h =
        x + post_attention_layernorm_(self_attn(input_layernorm_(x), cos, sin, cache_k, cache_v, past));
    return h + post_feedforward_layernorm_(mlp(pre_feedforward_layernorm_(h)));
  }
  torch::Tensor h = x + self_attn(input_layernorm_(x), cos, sin, cache_k, cache_v, past);
  return h + mlp(post_attention_layernorm_(h));
}

// --- Decoder stack -----------------------------------------------------------------
LlamaModelImpl::LlamaModelImpl(const LlamaConfig& c)
    : config_(c), embed_scale_(static_cast<float>(c.embed_scale)) {
  torch::nn::EmbeddingOptions embed(c.vocab_size, c.hidden_size);
  // A 16-bit table is left uninitialised for the checkpoint to fill.
  if (c.weight_dtype != WeightDtype::kFloat32) {
    embed._weight(torch::empty({c.vocab_size, c.hidden_size}, torch::dtype(TorchDtype(c.weight_dtype))));
  }
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(embed));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) layers->push_back(LlamaDecoderLayer(c, l));
  norm_ = register_module("norm", LlamaRmsNorm(c.hidden_size, c.rms_norm_eps, c.norm_unit_offset));
  rotary_ = register_module("rotary_emb",
                            LlamaRotary(c.head_dim, c.rope_theta, c.rope_scaling, c.max_position_embeddings));
  if (std::find(c.sliding_layers.begin(), c.sliding_layers.end(), true) != c.sliding_layers.end() &&
      c.sliding_window > 0 && c.rope_local_theta > 0) {
    rotary_local_ = register_module(
        "rotary_emb_local",
        LlamaRotary(c.head_dim, c.rope_local_theta, RopeScaling{}, c.max_position_embeddings));
  }
}

torch::Tensor LlamaModelImpl::forward(const torch::Tensor& ids, KvCache* cache) {
  const int64_t past = cache != nullptr ? cache->length : 0;
  const int64_t t = ids.size(1);
  if (cache != nullptr) {
    TORCH_CHECK(past + t <= cache->capacity, "KV cache full: ", past + t, " > ", cache->capacity);
  }
  auto [cos, sin] = rotary_->CosSin(past, t);
  torch::Tensor cos_local, sin_local;
  if (rotary_local_) std::tie(cos_local, sin_local) = rotary_local_->CosSin(past, t);
  torch::Tensor h = embed_tokens(ids).to(torch::kFloat);  // no copy when the table is fp32
  // Gemma: times sqrt(hidden) as a float32 scalar, as transformers' embed_scale.
  if (embed_scale_ != 1.0f) h = h * torch::scalar_tensor(embed_scale_, torch::kFloat);
  for (size_t l = 0; l < layers->size(); ++l) {
    torch::Tensor* k = cache != nullptr ? &cache->keys[l] : nullptr;
    torch::Tensor* v = cache != nullptr ? &cache->values[l] : nullptr;
    const bool local = rotary_local_ && config_.IsSlidingLayer(static_cast<int64_t>(l));
    h = layers->at<LlamaDecoderLayerImpl>(l).forward(h, local ? cos_local : cos, local ? sin_local : sin, k,
                                                     v, past);
  }
  if (cache != nullptr) cache->length = past + t;
  return norm_(h);
}

// --- Causal LM head ----------------------------------------------------------------
LlamaForCausalLmImpl::LlamaForCausalLmImpl(const LlamaConfig& c) : config_(c) {
  model = register_module("model", LlamaModel(c));
  if (!c.tie_word_embeddings)
    lm_head_ = register_module("lm_head", Projection(c, c.hidden_size, c.vocab_size));
  // Base weights are frozen; EnableLora or a pretraining loop decides what trains.
  for (auto& p : parameters()) p.set_requires_grad(false);
}

torch::Tensor LlamaForCausalLmImpl::forward(const torch::Tensor& ids, KvCache* cache, bool last_only) {
  if (decode_kernel_ != DecodeKernel::kTorch && CanDecodeFast(ids, cache)) {
    return DecodeStep(ids.item<int64_t>(), cache);
  }
  const int64_t t = ids.size(1);
  if (cache != nullptr && last_only && prefill_chunk_ > 0 && t > prefill_chunk_) {
    torch::Tensor logits;
    for (int64_t start = 0; start < t; start += prefill_chunk_) {
      logits = forward(ids.narrow(1, start, std::min(prefill_chunk_, t - start)), cache, /*last_only=*/true);
    }
    return logits;
  }
  torch::Tensor h = model(ids, cache);
  if (last_only) h = h.narrow(1, h.size(1) - 1, 1);
  torch::Tensor logits;
  if (lm_head_) {
    logits = lm_head_(h);
  } else {
    const torch::Tensor& table = model->embed_tokens->weight;
    logits = table.scalar_type() == torch::kFloat ? torch::matmul(h, table.t())
                                                  : fedge::agent::FrozenLinear(h, table);
  }
  const double cap = config_.final_logit_softcapping;
  return cap > 0 ? torch::tanh(logits / cap) * cap : logits;
}

std::vector<std::string> LlamaForCausalLmImpl::CheckpointNames() const {
  const LlamaConfig& c = config_;
  std::vector<std::string> names = {"model.embed_tokens.weight"};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      names.push_back(p + "self_attn." + proj + ".weight");
      bool is_qkv = std::string_view(proj) != "o_proj";
      if (c.attention_bias || (c.qkv_bias && is_qkv)) names.push_back(p + "self_attn." + proj + ".bias");
    }
    if (c.qk_norm) {
      names.push_back(p + "self_attn.q_norm.weight");
      names.push_back(p + "self_attn.k_norm.weight");
    }
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      names.push_back(p + "mlp." + proj + ".weight");
      if (c.mlp_bias) names.push_back(p + "mlp." + proj + ".bias");
    }
    names.push_back(p + "input_layernorm.weight");
    names.push_back(p + "post_attention_layernorm.weight");
    if (c.sandwich_norms) {
      names.push_back(p + "pre_feedforward_layernorm.weight");
      names.push_back(p + "post_feedforward_layernorm.weight");
    }
  }
  names.push_back("model.norm.weight");
  if (!c.tie_word_embeddings) names.push_back("lm_head.weight");
  return names;
}

Status LlamaForCausalLmImpl::LoadWeights(const SafetensorsFile& file) {
  for (const std::string& name : CheckpointNames()) {
    if (file.Find(name) == nullptr) return DataLossError("model.safetensors lacks tensor '" + name + "'");
  }
  std::set<std::string> loaded;
  return LoadWeightsFrom(file, &loaded);
}

Status LlamaForCausalLmImpl::LoadWeightsFrom(const SafetensorsFile& file, std::set<std::string>* loaded) {
  auto params = named_parameters(/*recurse=*/true);
  torch::NoGradGuard no_grad;
  if (config_.fused_projections) FEDGE_RETURN_IF_ERROR(LoadFusedFrom(file, params, loaded));
  for (const std::string& name : CheckpointNames()) {
    const StTensorView* view = file.Find(name);
    if (view == nullptr) continue;
    torch::Tensor* param = params.find(name);
    if (param == nullptr) return InternalError("model has no parameter " + name);
    if (std::vector<int64_t>(param->sizes().begin(), param->sizes().end()) != view->shape) {
      return DataLossError("model.safetensors tensor '" + name + "' has shape " +
                           c10::str(c10::IntArrayRef(view->shape)) + ", config.json implies " +
                           c10::str(param->sizes()));
    }
    // A tensor stored in the parameter's own dtype is taken as it is: from a mapped
    // file the parameter aliases the mapping (no copy; its pages come from the page
    // cache, shared with every other mapping of the file, and a write, such as a
    // LoRA merge into an fp32 weight, copies only the pages it touches), otherwise it
    // is copied. Any other dtype goes through float32 (exact when widening, rounded
    // to nearest when a float32 tensor is held in 16 bits).
    const torch::ScalarType held = param->scalar_type();
    const bool same = (view->dtype == StDType::kF32 && held == torch::kFloat) ||
                      (view->dtype == StDType::kBF16 && held == torch::kBFloat16) ||
                      (view->dtype == StDType::kF16 && held == torch::kHalf);
    auto* bytes = const_cast<char*>(view->data.data());
    if (same && file.mapped() && reinterpret_cast<uintptr_t>(bytes) % StDTypeSize(view->dtype) == 0) {
      std::shared_ptr<const char> mapping = file.buffer();
      param->set_data(torch::from_blob(
          bytes, param->sizes(), [mapping](void*) {}, torch::TensorOptions().dtype(held)));
    } else {
      if (same) {
        param->copy_(torch::from_blob(bytes, param->sizes(), held));
      } else {
        FEDGE_ASSIGN_OR_RETURN(std::vector<float> values, SafetensorsFile::ToFloat32(*view));
        param->copy_(torch::from_blob(values.data(), param->sizes(), torch::kFloat));
      }
      // Copied: its pages of a mapping another tensor keeps alive are not needed.
      file.Evict(*view);
    }
    loaded->insert(name);
  }
  return OkStatus();
}

// Phi-3: self_attn.qkv_proj.weight [(H + 2 KV) * D, h] is q, k, v stacked by rows, and
// mlp.gate_up_proj.weight [2 I, h] is gate then up (Phi3MLP chunks its output in two).
Status LlamaForCausalLmImpl::LoadFusedFrom(const SafetensorsFile& file,
                                           torch::OrderedDict<std::string, torch::Tensor>& params,
                                           std::set<std::string>* loaded) {
  const LlamaConfig& c = config_;
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::pair<std::string, std::vector<std::pair<std::string, int64_t>>> fused[] = {
        {p + "self_attn.qkv_proj.weight",
         {{p + "self_attn.q_proj.weight", q},
          {p + "self_attn.k_proj.weight", kv},
          {p + "self_attn.v_proj.weight", kv}}},
        {p + "mlp.gate_up_proj.weight",
         {{p + "mlp.gate_proj.weight", c.intermediate_size},
          {p + "mlp.up_proj.weight", c.intermediate_size}}}};
    for (const auto& [name, parts] : fused) {
      const StTensorView* view = file.Find(name);
      if (view == nullptr) continue;
      int64_t rows = 0;
      for (const auto& part : parts) rows += part.second;
      const std::vector<int64_t> want = {rows, c.hidden_size};
      if (view->shape != want) {
        return DataLossError("model.safetensors tensor '" + name + "' has shape " +
                             c10::str(c10::IntArrayRef(view->shape)) + ", config.json implies " +
                             c10::str(c10::IntArrayRef(want)));
      }
      FEDGE_ASSIGN_OR_RETURN(std::vector<float> values, SafetensorsFile::ToFloat32(*view));
      file.Evict(*view);
      torch::Tensor all = torch::from_blob(values.data(), {rows, c.hidden_size}, torch::kFloat);
      int64_t at = 0;
      for (const auto& [part, n] : parts) {
        torch::Tensor* param = params.find(part);
        if (param == nullptr) return InternalError("model has no parameter " + part);
        param->copy_(all.narrow(0, at, n));
        at += n;
        loaded->insert(part);
      }
    }
  }
  return OkStatus();
}

TensorBundle LlamaForCausalLmImpl::ExportWeights() {
  auto params = named_parameters(/*recurse=*/true);
  TensorBundle bundle;
  for (const std::string& name : CheckpointNames()) {
    torch::Tensor t = params[name].detach().contiguous().to(torch::kFloat);
    NamedTensor nt;
    nt.name = name;
    nt.shape.assign(t.sizes().begin(), t.sizes().end());
    nt.values.assign(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
    bundle.tensors.push_back(std::move(nt));
  }
  return bundle;
}

std::vector<std::pair<std::string, LoraLinear>> LlamaForCausalLmImpl::Projections() {
  std::vector<std::pair<std::string, LoraLinear>> out;
  for (size_t l = 0; l < model->layers->size(); ++l) {
    auto& layer = model->layers->at<LlamaDecoderLayerImpl>(l);
    std::string p = "model.layers." + std::to_string(l) + ".";
    out.emplace_back(p + "self_attn.q_proj", layer.self_attn->q_proj);
    out.emplace_back(p + "self_attn.k_proj", layer.self_attn->k_proj);
    out.emplace_back(p + "self_attn.v_proj", layer.self_attn->v_proj);
    out.emplace_back(p + "self_attn.o_proj", layer.self_attn->o_proj);
    out.emplace_back(p + "mlp.gate_proj", layer.mlp->gate_proj);
    out.emplace_back(p + "mlp.up_proj", layer.mlp->up_proj);
    out.emplace_back(p + "mlp.down_proj", layer.mlp->down_proj);
  }
  return out;
}

void LlamaForCausalLmImpl::EnableLora(const std::vector<std::string>& targets,
                                      const fedge::agent::LoraOptions& options, uint64_t seed) {
  for (auto& p : parameters()) p.set_requires_grad(false);
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  for (auto& [name, proj] : Projections()) {
    const std::string& module = name;
    if (std::any_of(targets.begin(), targets.end(),
                    [&](const std::string& target) { return LoraTargetMatches(module, target); })) {
      proj->EnableLora(options, gen);
    }
  }
}

torch::Tensor CausalLmLoss(const torch::Tensor& logits, const torch::Tensor& labels) {
  const int64_t t = logits.size(1);
  torch::Tensor shifted_logits = logits.narrow(1, 0, t - 1).reshape({-1, logits.size(2)});
  torch::Tensor shifted_labels = labels.narrow(1, 1, t - 1).reshape({-1});
  return torch::nn::functional::cross_entropy(
      shifted_logits, shifted_labels,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
}

namespace {

// The shard files of a checkpoint split by save_pretrained(max_shard_size=...):
// model.safetensors.index.json's {"weight_map": {tensor: file}}, each file named once,
// in order. A file name must be a plain name in the directory.
StatusOr<std::vector<std::string>> ShardFiles(const std::string& index_path) {
  FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(index_path));
  std::vector<std::string> files;
  try {
    nlohmann::json j = nlohmann::json::parse(text);
    const nlohmann::json& map = j.at("weight_map");
    if (!map.is_object()) return DataLossError(index_path + ": weight_map is not an object");
    std::set<std::string> seen;
    for (const auto& [tensor, file] : map.items()) {
      const std::string name = file.get<std::string>();
      if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
        return DataLossError(index_path + ": tensor '" + tensor + "' is in '" + name +
                             "', not a file name in the model directory");
      }
      if (seen.insert(name).second) files.push_back(name);
    }
  } catch (const nlohmann::json::exception& e) {
    return DataLossError(index_path + ": " + e.what());
  }
  if (files.empty()) return DataLossError(index_path + ": weight_map names no file");
  return files;
}

// Frozen 16-bit weights already loaded in this process, so that a second LoadLlama of
// the same checkpoint (the agent's trainer, its serving instance and the spare)
// holds one copy instead of three. A 16-bit weight is never written after loading
// (LoRA is never merged into it, and FrozenLinear refuses to train it), so sharing
// its storage is safe; fp32 weights are merged into for serving and stay private.
// The key is the directory, the dtype and every file's size and modification time.
class SharedWeights {
 public:
  static SharedWeights& Get() {
    static SharedWeights* shared = new SharedWeights;  // never destroyed: no exit-order issues
    return *shared;
  }
  // Any live model of `key` (every one holds the same storage), forgetting dead ones.
  std::shared_ptr<LlamaForCausalLmImpl> Find(const std::string& key) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = models_.find(key);
    if (it == models_.end()) return nullptr;
    std::shared_ptr<LlamaForCausalLmImpl> live;
    auto& list = it->second;
    list.erase(std::remove_if(list.begin(), list.end(),
                              [&](const std::weak_ptr<LlamaForCausalLmImpl>& w) {
                                std::shared_ptr<LlamaForCausalLmImpl> m = w.lock();
                                if (m && !live) live = m;
                                return !m;
                              }),
               list.end());
    if (list.empty()) models_.erase(it);
    return live;
  }
  void Add(const std::string& key, const std::shared_ptr<LlamaForCausalLmImpl>& model) {
    std::lock_guard<std::mutex> lock(mu_);
    models_[key].push_back(model);
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::vector<std::weak_ptr<LlamaForCausalLmImpl>>> models_;
};

std::string SharedWeightsKey(const std::string& dir, const std::vector<std::string>& files,
                             WeightDtype dtype) {
  std::error_code ec;
  std::string key =
      std::filesystem::weakly_canonical(dir, ec).string() + "|" + std::string(WeightDtypeName(dtype));
  for (const std::string& name : files) {
    const std::filesystem::path path = std::filesystem::path(dir) / name;
    const auto size = std::filesystem::file_size(path, ec);
    const auto mtime = std::filesystem::last_write_time(path, ec).time_since_epoch().count();
    key += "|" + name + ":" + std::to_string(size) + ":" + std::to_string(mtime);
  }
  return key;
}

// Points `model`'s 16-bit weights at `from`'s storage and copies the rest (fp32
// norms and biases, small). Both come from the same checkpoint and config.
void ShareFrozenWeights(LlamaForCausalLmImpl& model, LlamaForCausalLmImpl& from) {
  torch::NoGradGuard no_grad;
  auto source = from.named_parameters(/*recurse=*/true);
  for (auto& p : model.named_parameters(/*recurse=*/true)) {
    const torch::Tensor* src = source.find(p.key());
    TORCH_CHECK(src != nullptr, "shared weights lack ", p.key());
    if (p.value().scalar_type() == torch::kFloat) {
      p.value().copy_(*src);
    } else {
      p.value().set_data(*src);
    }
  }
}

}  // namespace

StatusOr<LlamaForCausalLm> LoadLlama(const std::string& dir, std::string_view weight_dtype) {
  FEDGE_ASSIGN_OR_RETURN(LlamaConfig config, LlamaConfig::FromFile(dir + "/config.json"));
  FEDGE_ASSIGN_OR_RETURN(config.weight_dtype, ResolveWeightDtype(weight_dtype, config));
  const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  const bool sharded = !std::filesystem::exists(single) && std::filesystem::exists(index);
  std::vector<std::string> files = {"model.safetensors"};
  if (sharded) {
    FEDGE_ASSIGN_OR_RETURN(files, ShardFiles(index));
  }
  FEDGE_ASSIGN_OR_RETURN(LlamaForCausalLm model,
                         TorchCall("building the Llama model from " + dir,
                                   [&]() -> StatusOr<LlamaForCausalLm> { return LlamaForCausalLm(config); }));
  std::string shared_key;
  if (config.weight_dtype != WeightDtype::kFloat32) {
    std::vector<std::string> key_files = files;
    key_files.push_back("config.json");
    if (sharded) key_files.push_back("model.safetensors.index.json");
    shared_key = SharedWeightsKey(dir, key_files, config.weight_dtype);
    if (std::shared_ptr<LlamaForCausalLmImpl> loaded = SharedWeights::Get().Find(shared_key)) {
      FEDGE_RETURN_IF_ERROR(TorchCall("sharing the weights of " + dir, [&]() -> Status {
        ShareFrozenWeights(*model, *loaded);
        return OkStatus();
      }));
      model->eval();
      SharedWeights::Get().Add(shared_key, model.ptr());
      return model;
    }
  }
  // Each shard is mapped, not read: the tensors held in their stored dtype alias
  // the mapping, and the pages of the others are only read while converted.
  // FEDGE_MMAP=0 reads each shard whole and copies every tensor (before session 41;
  // for a filesystem where a mapping is unwelcome).
  const char* mmap_env = std::getenv("FEDGE_MMAP");
  const bool map = mmap_env == nullptr || std::string_view(mmap_env) != "0";
  std::set<std::string> loaded;
  for (const std::string& name : files) {
    const std::string path = dir + "/" + name;
    FEDGE_ASSIGN_OR_RETURN(SafetensorsFile file,
                           map ? SafetensorsFile::Map(path) : SafetensorsFile::Read(path));
    Status st =
        TorchCall("loading " + name, [&]() -> Status { return model->LoadWeightsFrom(file, &loaded); });
    if (!st.ok()) return st.WithContext(dir);
  }
  for (const std::string& name : model->CheckpointNames()) {
    if (loaded.count(name) == 0) {
      return DataLossError(sharded ? "none of the " + std::to_string(files.size()) + " shards in " + index +
                                         " holds tensor '" + name + "'"
                                   : "model.safetensors lacks tensor '" + name + "'")
          .WithContext(dir);
    }
  }
  model->eval();
  if (!shared_key.empty()) SharedWeights::Get().Add(shared_key, model.ptr());
  return model;
}

Status SaveLlama(LlamaForCausalLm& model, const std::string& dir, WeightDtype dtype) {
  if (model->config().fused_projections) {
    return UnimplementedError("saving a Phi-3 model: its fused qkv_proj/gate_up_proj are held split");
  }
  FEDGE_RETURN_IF_ERROR(MakeDirs(dir));
  LlamaConfig config = model->config();
  config.dtype = std::string(WeightDtypeName(dtype));
  FEDGE_RETURN_IF_ERROR(WriteFileAtomic(dir + "/config.json", config.ToJson()));
  std::string bytes;
  if (dtype == WeightDtype::kFloat32) {
    FEDGE_ASSIGN_OR_RETURN(bytes, SerializeSafetensors(model->ExportWeights(), {{"format", "pt"}}));
  } else {
    // Every tensor rounded to the 16-bit dtype (to nearest even), as
    // save_pretrained writes a model cast to it.
    const torch::ScalarType held = TorchDtype(dtype);
    auto params = model->named_parameters(/*recurse=*/true);
    std::vector<torch::Tensor> keep;
    std::vector<RawTensor> raw;
    for (const std::string& name : model->CheckpointNames()) {
      torch::Tensor t = params[name].detach().to(held).contiguous();
      keep.push_back(t);
      raw.push_back({name, dtype == WeightDtype::kBFloat16 ? StDType::kBF16 : StDType::kF16,
                     std::vector<int64_t>(t.sizes().begin(), t.sizes().end()),
                     std::string_view(static_cast<const char*>(t.data_ptr()), t.nbytes())});
    }
    FEDGE_ASSIGN_OR_RETURN(bytes, SerializeSafetensors(raw, {{"format", "pt"}}));
  }
  return WriteFileAtomic(dir + "/model.safetensors", bytes);
}

}  // namespace fedge::agent::llm
