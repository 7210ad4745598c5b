#include "fedge/agent/llm/llama_config.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "fedge/file_util.h"

namespace fedge::agent::llm {
namespace {

// longrope's factor lists: one positive number per rotary frequency.
StatusOr<std::vector<double>> LongRopeFactors(const nlohmann::json& j, const char* key, int64_t head_dim) {
  if (!j.contains(key) || !j[key].is_array() || j[key].size() != static_cast<size_t>(head_dim / 2)) {
    return InvalidArgumentError(std::string("config.json: longrope rope scaling needs ") + key +
                                ": a list of head_dim / 2 = " + std::to_string(head_dim / 2) + " numbers");
  }
  std::vector<double> out;
  for (const nlohmann::json& f : j[key]) {
    if (!f.is_number() || !(f.get<double>() > 0.0) || !std::isfinite(f.get<double>()))
      return InvalidArgumentError(std::string("config.json: longrope ") + key + " holds " + f.dump() +
                                  ": every factor must be a positive number");
    out.push_back(f.get<double>());
  }
  return out;
}

// Phi-3's longrope: the factor lists, the original context (in the rope object, or at
// the config's top level as transformers 4 writes it) and the attention factor.
Status ParseLongRope(const nlohmann::json& j, const nlohmann::json& config, int64_t max_position_embeddings,
                     int64_t head_dim, RopeScaling& r) {
  FEDGE_ASSIGN_OR_RETURN(r.short_factor, LongRopeFactors(j, "short_factor", head_dim));
  FEDGE_ASSIGN_OR_RETURN(r.long_factor, LongRopeFactors(j, "long_factor", head_dim));
  const nlohmann::json& original = j.contains("original_max_position_embeddings")
                                       ? j["original_max_position_embeddings"]
                                       : config.value("original_max_position_embeddings", nlohmann::json());
  if (!original.is_null() && (!original.is_number_integer() || original.get<int64_t>() <= 0)) {
    return InvalidArgumentError("config.json: original_max_position_embeddings must be a positive integer");
  }
  r.original_max_position_embeddings = original.is_null() ? max_position_embeddings : original.get<int64_t>();
  if (j.contains("factor") && !j["factor"].is_null()) {
    if (!j["factor"].is_number() || !(j["factor"].get<double>() > 0.0))
      return InvalidArgumentError("config.json: longrope factor must be a positive number");
    r.factor = j["factor"].get<double>();
  } else {
    r.factor = static_cast<double>(max_position_embeddings) /
               static_cast<double>(r.original_max_position_embeddings);
  }
  if (j.contains("attention_factor") && !j["attention_factor"].is_null()) {
    if (!j["attention_factor"].is_number() || !(j["attention_factor"].get<double>() > 0.0))
      return InvalidArgumentError("config.json: longrope attention_factor must be a positive number");
    r.attention_factor = j["attention_factor"].get<double>();
  } else {
    r.attention_factor =
        r.factor <= 1.0
            ? 1.0
            : std::sqrt(1.0 + std::log(r.factor) /
                                  std::log(static_cast<double>(r.original_max_position_embeddings)));
  }
  return OkStatus();
}

// rope_scaling / rope_parameters: {"rope_type" (or the older "type"), "factor", ...}.
StatusOr<RopeScaling> ParseRopeScaling(const nlohmann::json& j, const nlohmann::json& config,
                                       int64_t max_position_embeddings, int64_t head_dim) {
  RopeScaling r;
  if (!j.is_object()) return InvalidArgumentError("config.json: rope_scaling must be an object");
  r.rope_type = j.value("rope_type", j.value("type", std::string("default")));
  if (j.value("partial_rotary_factor", 1.0) != 1.0) {
    return InvalidArgumentError("config.json: partial_rotary_factor " + j["partial_rotary_factor"].dump() +
                                " is not implemented (the rotary embedding covers the whole head)");
  }
  if (r.rope_type == "default") return r;
  if (r.rope_type == "longrope") {
    FEDGE_RETURN_IF_ERROR(ParseLongRope(j, config, max_position_embeddings, head_dim, r));
    return r;
  }
  if (r.rope_type != "linear" && r.rope_type != "llama3") {
    return InvalidArgumentError("config.json: rope_type \"" + r.rope_type +
                                "\" is not implemented (default, linear, llama3 and longrope are)");
  }
  r.factor = j.at("factor").get<double>();
  if (!(r.factor >= 1.0 && r.factor <= 1024.0)) {
    return InvalidArgumentError("config.json: rope scaling factor must be in [1, 1024], got " +
                                j["factor"].dump());
  }
  if (r.rope_type == "linear") return r;
  r.low_freq_factor = j.at("low_freq_factor").get<double>();
  r.high_freq_factor = j.at("high_freq_factor").get<double>();
  r.original_max_position_embeddings = j.value("original_max_position_embeddings", max_position_embeddings);
  if (!(r.low_freq_factor > 0.0 && r.high_freq_factor > r.low_freq_factor)) {
    return InvalidArgumentError(
        "config.json: llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor");
  }
  if (r.original_max_position_embeddings <= 0) {
    return InvalidArgumentError(
        "config.json: llama3 rope scaling needs a positive original_max_position_embeddings");
  }
  return r;
}

// Optional positive number: absent -> `absent`, null -> 0.
StatusOr<double> OptionalPositive(const nlohmann::json& j, const char* key, double absent) {
  if (!j.contains(key)) return absent;
  if (j[key].is_null()) return 0.0;
  if (!j[key].is_number() || !(j[key].get<double>() > 0)) {
    return InvalidArgumentError(std::string("config.json: ") + key + " must be a positive number or null");
  }
  return j[key].get<double>();
}

// Gemma 2's and 3's own fields (gemma2, gemma3_text): (1 + w) norms, scaled
// embeddings, sandwich norms, the attention scale, softcapping and the sliding-window
// layers.
Status ParseGemma(const nlohmann::json& j, LlamaConfig& c) {
  c.norm_unit_offset = true;
  c.sandwich_norms = true;
  // transformers keeps the scale as a float32 tensor: sqrt rounded to float.
  c.embed_scale = static_cast<float>(std::sqrt(static_cast<double>(c.hidden_size)));
  c.query_pre_attn_scalar = j.value("query_pre_attn_scalar", 256.0);
  if (!(c.query_pre_attn_scalar > 0)) {
    return InvalidArgumentError("config.json: query_pre_attn_scalar must be positive");
  }
  // Absent, Gemma 2's caps are its config class's defaults (50, 30); null is none.
  const bool gemma2 = c.model_type == "gemma2";
  FEDGE_ASSIGN_OR_RETURN(c.attn_logit_softcapping,
                         OptionalPositive(j, "attn_logit_softcapping", gemma2 ? 50.0 : 0.0));
  FEDGE_ASSIGN_OR_RETURN(c.final_logit_softcapping,
                         OptionalPositive(j, "final_logit_softcapping", gemma2 ? 30.0 : 0.0));
  const auto bidirectional = j.find("use_bidirectional_attention");  // null in Gemma 2's config
  if (bidirectional != j.end() && bidirectional->is_boolean() && bidirectional->get<bool>()) {
    return InvalidArgumentError(
        "config.json: use_bidirectional_attention (an embedding model such as EmbeddingGemma) is not a "
        "causal LM");
  }
  if (j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    if (!j["sliding_window"].is_number_integer() || j["sliding_window"].get<int64_t>() <= 0) {
      return InvalidArgumentError("config.json: sliding_window must be a positive integer or null");
    }
    c.sliding_window = j["sliding_window"].get<int64_t>();
  } else if (!j.contains("sliding_window")) {
    c.sliding_window = 4096;  // Gemma3TextConfig's default
  }
  c.sliding_layers.assign(static_cast<size_t>(c.num_hidden_layers), false);
  if (j.contains("layer_types") && !j["layer_types"].is_null()) {
    const nlohmann::json& types = j["layer_types"];
    if (!types.is_array() || static_cast<int64_t>(types.size()) != c.num_hidden_layers) {
      return InvalidArgumentError("config.json: layer_types must list one type per layer (" +
                                  std::to_string(c.num_hidden_layers) + ")");
    }
    for (size_t l = 0; l < types.size(); ++l) {
      if (types[l] == "sliding_attention") {
        c.sliding_layers[l] = true;
      } else if (types[l] != "full_attention") {
        return InvalidArgumentError("config.json: layer_types " + types[l].dump() +
                                    " is not implemented (full_attention, sliding_attention)");
      }
    }
  } else {
    // Before layer_types: every sliding_window_pattern-th layer is full (Gemma 3: 6;
    // Gemma 2 alternates).
    const nlohmann::json& pattern = j.contains("sliding_window_pattern")    ? j["sliding_window_pattern"]
                                    : j.contains("_sliding_window_pattern") ? j["_sliding_window_pattern"]
                                                                            : nlohmann::json(gemma2 ? 2 : 6);
    if (!pattern.is_number_integer() || pattern.get<int64_t>() <= 0) {
      return InvalidArgumentError("config.json: sliding_window_pattern must be a positive integer");
    }
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      c.sliding_layers[static_cast<size_t>(l)] = (l + 1) % pattern.get<int64_t>() != 0;
    }
  }
  if (c.sliding_window == 0) c.sliding_layers.assign(c.sliding_layers.size(), false);
  return OkStatus();
}

}  // namespace

std::string_view WeightDtypeName(WeightDtype dtype) {
  switch (dtype) {
    case WeightDtype::kFloat32:
      return "float32";
    case WeightDtype::kBFloat16:
      return "bfloat16";
    case WeightDtype::kFloat16:
      return "float16";
  }
  return "float32";
}

StatusOr<WeightDtype> ResolveWeightDtype(std::string_view name, const LlamaConfig& config) {
  if (name == "auto") {
    if (config.dtype == "bfloat16") return WeightDtype::kBFloat16;
    if (config.dtype == "float16") return WeightDtype::kFloat16;
    return WeightDtype::kFloat32;
  }
  if (name == "float32" || name == "float") return WeightDtype::kFloat32;
  if (name == "bfloat16" || name == "bf16") return WeightDtype::kBFloat16;
  if (name == "float16" || name == "half" || name == "fp16") return WeightDtype::kFloat16;
  return InvalidArgumentError("weight dtype '" + std::string(name) +
                              "' is not supported: use auto, float32, bfloat16 or float16");
}

StatusOr<LlamaConfig> LlamaConfig::FromJson(std::string_view json_text) {
  using nlohmann::json;
  LlamaConfig c;
  try {
    json j = json::parse(json_text);
    c.model_type = j.value("model_type", std::string());
    if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "phi3" &&
        c.model_type != "qwen2" && c.model_type != "qwen3" && c.model_type != "gemma2" &&
        c.model_type != "gemma3_text") {
      std::string hint;
      if (c.model_type == "gemma3") {
        hint =
            " (Gemma 3 4B and larger are image-text models; the text-only Gemma 3 270M and 1B are "
            "gemma3_text)";
      }
      return InvalidArgumentError("config.json: model_type \"" + c.model_type +
                                  "\" is not a supported decoder (llama, mistral, phi3, qwen2, qwen3, "
                                  "gemma2, gemma3_text)" +
                                  hint);
    }
    const bool gemma3 = c.model_type == "gemma3_text";
    const bool gemma = gemma3 || c.model_type == "gemma2";
    // Gemma names it hidden_activation (its hidden_act, where present, is ignored).
    const char* act_key = gemma && j.contains("hidden_activation") ? "hidden_activation" : "hidden_act";
    c.hidden_act = j.contains(act_key) && j[act_key].is_string() ? j[act_key].get<std::string>()
                   : gemma                                       ? "gelu_pytorch_tanh"
                                                                 : "silu";
    const char* want_act = gemma ? "gelu_pytorch_tanh" : "silu";
    if (c.hidden_act != want_act) {
      return InvalidArgumentError("config.json: " + std::string(act_key) + " " + c.hidden_act +
                                  " is not supported for " + c.model_type + " (" + want_act + ")");
    }
    for (const char* key : {"dtype", "torch_dtype"}) {
      if (c.dtype.empty() && j.contains(key) && j[key].is_string()) c.dtype = j[key].get<std::string>();
    }
    c.vocab_size = j.at("vocab_size").get<int64_t>();
    c.hidden_size = j.at("hidden_size").get<int64_t>();
    c.intermediate_size = j.at("intermediate_size").get<int64_t>();
    c.num_hidden_layers = j.at("num_hidden_layers").get<int64_t>();
    c.num_attention_heads = j.at("num_attention_heads").get<int64_t>();
    c.num_key_value_heads = j.value("num_key_value_heads", c.num_attention_heads);
    if (c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 || c.hidden_size <= 0 ||
        c.num_attention_heads % c.num_key_value_heads != 0) {
      return InvalidArgumentError(
          "config.json: num_attention_heads must be a positive multiple of num_key_value_heads");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
    if (j.contains("head_dim") && !j["head_dim"].is_null()) c.head_dim = j["head_dim"].get<int64_t>();
    if (c.head_dim <= 0 || c.head_dim % 2 != 0) {
      return InvalidArgumentError("config.json: head_dim must be positive and even (rotary pairs)");
    }
    c.max_position_embeddings = j.value("max_position_embeddings", int64_t{2048});
    if (c.max_position_embeddings <= 0)
      return InvalidArgumentError("config.json: max_position_embeddings must be positive");
    c.rms_norm_eps = j.value("rms_norm_eps", 1e-6);
    c.initializer_range = j.value("initializer_range", 0.02);
    c.tie_word_embeddings = j.value("tie_word_embeddings", gemma);  // Gemma's default is tied
    c.attention_bias = j.value("attention_bias", false);
    c.mlp_bias = j.value("mlp_bias", false);
    c.qkv_bias = c.model_type == "qwen2";
    c.qk_norm = c.model_type == "qwen3" || gemma3;
    c.fused_projections = c.model_type == "phi3";
    if (j.contains("partial_rotary_factor") && j["partial_rotary_factor"].is_number() &&
        j["partial_rotary_factor"].get<double>() !=
            1.0) {  // transformers 4 writes it at the top (Phi-4-mini)
      return InvalidArgumentError("config.json: partial_rotary_factor " + j["partial_rotary_factor"].dump() +
                                  " is not implemented (the rotary embedding covers the whole head)");
    }

    // rope: transformers < 5 writes rope_theta/rope_scaling, >= 5 rope_parameters
    // (rope_theta inside it). Gemma 3: rope_parameters has one entry per layer type
    // (full_attention, sliding_attention); before transformers 5, rope_theta and
    // rope_scaling are the full layers' and rope_local_base_freq the sliding ones'.
    const json* rope = nullptr;
    const double default_theta = gemma3 ? 1000000.0 : 10000.0;
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
      rope = &j["rope_parameters"];
      if (gemma3 && (rope->contains("full_attention") || rope->contains("sliding_attention"))) {
        c.rope_local_theta = 10000.0;
        const json* local = rope->contains("sliding_attention") ? &(*rope)["sliding_attention"] : nullptr;
        rope = rope->contains("full_attention") ? &(*rope)["full_attention"] : nullptr;
        if (local != nullptr) {
          if (!local->is_object() || local->value("rope_type", std::string("default")) != "default") {
            return InvalidArgumentError(
                "config.json: rope_parameters.sliding_attention must be a default rope (no scaling)");
          }
          c.rope_local_theta = local->value("rope_theta", c.rope_local_theta);
        }
      }
      c.rope_theta = rope != nullptr ? rope->value("rope_theta", default_theta) : default_theta;
    } else {
      c.rope_theta = j.value("rope_theta", default_theta);
      if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) rope = &j["rope_scaling"];
      if (gemma3) c.rope_local_theta = j.value("rope_local_base_freq", 10000.0);
    }
    if (!(c.rope_theta > 1.0)) return InvalidArgumentError("config.json: rope_theta must be greater than 1");
    if (c.rope_local_theta != 0 && !(c.rope_local_theta > 1.0)) {
      return InvalidArgumentError("config.json: the sliding layers' rope_theta must be greater than 1");
    }
    if (rope != nullptr) {
      FEDGE_ASSIGN_OR_RETURN(c.rope_scaling,
                             ParseRopeScaling(*rope, j, c.max_position_embeddings, c.head_dim));
      // longrope: past original_max_position_embeddings transformers turns every
      // position, those in the cache too, by the long factors (Phi3ForCausalLM
      // recomputes its cache at the crossing). fedge's cache keeps its keys, so the
      // context ends there: every position is a short-factor one, as transformers
      // computes it below the crossing.
      if (c.rope_scaling.rope_type == "longrope")
        c.max_position_embeddings =
            std::min(c.max_position_embeddings, c.rope_scaling.original_max_position_embeddings);
    }
    if (gemma) FEDGE_RETURN_IF_ERROR(ParseGemma(j, c));
    // Mistral v0.1's and Phi-3's sliding_window W: every layer attends to the last W
    // positions (as Gemma's sliding layers, with the one rotary). Until session 41 the
    // context was capped at W instead. Mistral v0.2 and later have none.
    if ((c.model_type == "mistral" || c.model_type == "phi3") && j.contains("sliding_window") &&
        !j["sliding_window"].is_null()) {
      const json& w = j["sliding_window"];
      if (!w.is_number_integer() || w.get<int64_t>() <= 0) {
        return InvalidArgumentError("config.json: sliding_window must be a positive integer or null");
      }
      c.sliding_window = w.get<int64_t>();
      c.sliding_layers.assign(static_cast<size_t>(c.num_hidden_layers), true);
    }
    if (j.value("use_sliding_window", false)) {
      return InvalidArgumentError("config.json: sliding-window attention is not implemented for " +
                                  c.model_type);
    }
    if (!gemma && j.contains("layer_types") && j["layer_types"].is_array()) {
      for (const json& t : j["layer_types"]) {
        if (t != "full_attention") {
          return InvalidArgumentError("config.json: layer_types " + t.dump() +
                                      " is not implemented (full_attention only)");
        }
      }
    }
    if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer())
      c.bos_token_id = j["bos_token_id"];
    if (j.contains("eos_token_id")) {
      const json& e = j["eos_token_id"];
      if (e.is_number_integer()) c.eos_token_ids.push_back(e.get<int64_t>());
      if (e.is_array()) {
        for (const json& x : e) c.eos_token_ids.push_back(x.get<int64_t>());
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(std::string("config.json: ") + e.what());
  }
  return c;
}

StatusOr<LlamaConfig> LlamaConfig::FromFile(const std::string& path) {
  FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto config = FromJson(text);
  if (!config.ok()) return config.status().WithContext(path);
  return config;
}

std::string LlamaConfig::ToJson() const {
  nlohmann::json j;
  bool qwen = model_type == "qwen2" || model_type == "qwen3";
  j["architectures"] = {model_type == "qwen2"         ? "Qwen2ForCausalLM"
                        : model_type == "qwen3"       ? "Qwen3ForCausalLM"
                        : model_type == "mistral"     ? "MistralForCausalLM"
                        : model_type == "phi3"        ? "Phi3ForCausalLM"
                        : model_type == "gemma2"      ? "Gemma2ForCausalLM"
                        : model_type == "gemma3_text" ? "Gemma3ForCausalLM"
                                                      : "LlamaForCausalLM"};
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (rope_scaling.rope_type != "default") {
    nlohmann::json r = {{"rope_type", rope_scaling.rope_type}, {"factor", rope_scaling.factor}};
    if (rope_scaling.rope_type == "llama3") {
      r["low_freq_factor"] = rope_scaling.low_freq_factor;
      r["high_freq_factor"] = rope_scaling.high_freq_factor;
      r["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
    }
    if (rope_scaling.rope_type == "longrope") {
      r["short_factor"] = rope_scaling.short_factor;
      r["long_factor"] = rope_scaling.long_factor;
      r["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
      r["attention_factor"] = rope_scaling.attention_factor;
    }
    j["rope_scaling"] = r;
  }
  const bool gemma = model_type == "gemma2" || model_type == "gemma3_text";
  if (gemma) {
    j["hidden_activation"] = hidden_act;
    // transformers types it int (its strict config refuses 256.0).
    if (query_pre_attn_scalar == std::floor(query_pre_attn_scalar) && query_pre_attn_scalar < 1e15) {
      j["query_pre_attn_scalar"] = static_cast<int64_t>(query_pre_attn_scalar);
    } else {
      j["query_pre_attn_scalar"] = query_pre_attn_scalar;
    }
    j["sliding_window"] = sliding_window > 0 ? nlohmann::json(sliding_window) : nlohmann::json(nullptr);
    nlohmann::json types = nlohmann::json::array();
    for (int64_t l = 0; l < num_hidden_layers; ++l)
      types.push_back(IsSlidingLayer(l) ? "sliding_attention" : "full_attention");
    j["layer_types"] = types;
    j["attn_logit_softcapping"] =
        attn_logit_softcapping > 0 ? nlohmann::json(attn_logit_softcapping) : nlohmann::json(nullptr);
    j["final_logit_softcapping"] =
        final_logit_softcapping > 0 ? nlohmann::json(final_logit_softcapping) : nlohmann::json(nullptr);
    // transformers >= 5 reads rope_parameters, earlier versions the top-level keys.
    nlohmann::json full = {{"rope_type", "default"}, {"rope_theta", rope_theta}};
    if (j.contains("rope_scaling")) full.update(j["rope_scaling"]);
    if (model_type == "gemma3_text") {
      const double local = rope_local_theta > 0 ? rope_local_theta : rope_theta;
      j["rope_parameters"] = {{"full_attention", full},
                              {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", local}}}};
      j["rope_local_base_freq"] = local;
    } else {  // Gemma 2: one rotary for every layer
      j["rope_parameters"] = full;
    }
  } else {
    j["hidden_act"] = "silu";
  }
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["initializer_range"] = initializer_range;
  j["torch_dtype"] = dtype.empty() ? "float32" : dtype;
  if (model_type != "qwen2") j["attention_bias"] = attention_bias;
  if (!qwen && !gemma) j["mlp_bias"] = mlp_bias;
  if (qwen) j["use_sliding_window"] = false;
  if (model_type == "mistral" || model_type == "phi3") {
    j["sliding_window"] = sliding_window > 0 ? nlohmann::json(sliding_window) : nlohmann::json(nullptr);
  }
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  if (eos_token_ids.size() > 1) j["eos_token_id"] = eos_token_ids;
  return j.dump(2);
}

int64_t LlamaConfig::NumParameters() const {
  int64_t h = hidden_size, q = num_attention_heads * head_dim, kv = num_key_value_heads * head_dim;
  int64_t attn = h * q + 2 * h * kv + q * h;
  if (attention_bias)
    attn += q + 2 * kv + h;
  else if (qkv_bias)
    attn += q + 2 * kv;
  int64_t mlp = 3 * h * intermediate_size + (mlp_bias ? 2 * intermediate_size + h : 0);
  int64_t layer = attn + mlp + (sandwich_norms ? 4 : 2) * h + (qk_norm ? 2 * head_dim : 0);
  int64_t embed = vocab_size * h;
  return embed + num_hidden_layers * layer + h + (tie_word_embeddings ? 0 : embed);
}

}  // namespace fedge::agent::llm
