#include "bert/bert.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "fedge/file_util.h"
#include "peft/lora_targets.h"
#include "shape_string.h"

namespace fedge::agent {

StatusOr<BertOptions> BertOptions::FromConfigJson(const std::string& json_text) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgumentError("config.json is not a JSON object");
  BertOptions o;
  try {
    std::string model_type = j.value("model_type", "bert");
    if (model_type != "bert") {
      return InvalidArgumentError("config.json model_type is '" + model_type +
                                  "'; only BERT encoders ('bert') are supported");
    }
    std::string act = j.value("hidden_act", "gelu");
    if (act != "gelu") {
      return InvalidArgumentError("config.json hidden_act '" + act + "' is not supported (only 'gelu')");
    }
    std::string pos = j.value("position_embedding_type", "absolute");
    if (pos != "absolute") {
      return InvalidArgumentError("config.json position_embedding_type '" + pos +
                                  "' is not supported (only 'absolute')");
    }
    o.vocab_size = j.at("vocab_size").get<int64_t>();
    o.hidden_size = j.at("hidden_size").get<int64_t>();
    o.num_hidden_layers = j.at("num_hidden_layers").get<int64_t>();
    o.num_attention_heads = j.at("num_attention_heads").get<int64_t>();
    o.intermediate_size = j.at("intermediate_size").get<int64_t>();
    o.max_position_embeddings = j.value("max_position_embeddings", int64_t{512});
    o.type_vocab_size = j.value("type_vocab_size", int64_t{2});
    o.layer_norm_eps = j.value("layer_norm_eps", 1e-12);
    o.initializer_range = j.value("initializer_range", 0.02);
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(std::string("config.json: ") + e.what());
  }
  if (o.vocab_size <= 0 || o.hidden_size <= 0 || o.num_hidden_layers <= 0 || o.num_attention_heads <= 0 ||
      o.intermediate_size <= 0 || o.max_position_embeddings < 2 || o.type_vocab_size <= 0 ||
      !(o.layer_norm_eps > 0)) {
    return InvalidArgumentError("config.json has a non-positive size or layer_norm_eps");
  }
  if (o.hidden_size % o.num_attention_heads != 0) {
    return InvalidArgumentError("config.json hidden_size " + std::to_string(o.hidden_size) +
                                " is not a multiple of num_attention_heads " +
                                std::to_string(o.num_attention_heads));
  }
  return o;
}

StatusOr<BertOptions> BertOptions::FromConfigFile(const std::string& path) {
  FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto o = FromConfigJson(text);
  if (!o.ok()) return o.status().WithContext(path);
  return o;
}

BertEmbeddingsImpl::BertEmbeddingsImpl(const BertOptions& o) {
  word_embeddings_ = register_module("word_embeddings", torch::nn::Embedding(o.vocab_size, o.hidden_size));
  position_embeddings_ =
      register_module("position_embeddings", torch::nn::Embedding(o.max_position_embeddings, o.hidden_size));
  token_type_embeddings_ =
      register_module("token_type_embeddings", torch::nn::Embedding(o.type_vocab_size, o.hidden_size));
  layer_norm_ = register_module(
      "LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.hidden_size}).eps(o.layer_norm_eps)));
}

torch::Tensor BertEmbeddingsImpl::forward(const torch::Tensor& input_ids) {
  const int64_t seq_len = input_ids.size(1);
  torch::Tensor positions = torch::arange(seq_len, torch::kLong).unsqueeze(0);
  // Single-segment input: token type 0 everywhere, i.e. row 0 broadcast.
  torch::Tensor x =
      word_embeddings_(input_ids) + position_embeddings_(positions) + token_type_embeddings_->weight[0];
  return layer_norm_(x);
}

BertSelfAttentionImpl::BertSelfAttentionImpl(const BertOptions& o)
    : num_heads_(o.num_attention_heads), head_dim_(o.hidden_size / o.num_attention_heads) {
  query_ = register_module("query", LoraLinear(o.hidden_size, o.hidden_size));
  key_ = register_module("key", LoraLinear(o.hidden_size, o.hidden_size));
  value_ = register_module("value", LoraLinear(o.hidden_size, o.hidden_size));
}

torch::Tensor BertSelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& additive_mask) {
  const int64_t b = x.size(0), t = x.size(1);
  auto heads = [&](const torch::Tensor& y) {
    return y.view({b, t, num_heads_, head_dim_}).transpose(1, 2);  // [B, nh, T, hd]
  };
  torch::Tensor q = heads(query_(x));
  torch::Tensor k = heads(key_(x));
  torch::Tensor v = heads(value_(x));
  torch::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(head_dim_));
  torch::Tensor probs = torch::softmax(scores + additive_mask, -1);
  return torch::matmul(probs, v).transpose(1, 2).reshape({b, t, num_heads_ * head_dim_});
}

BertResidualOutputImpl::BertResidualOutputImpl(int64_t in_features, const BertOptions& o) {
  dense_ = register_module("dense", LoraLinear(in_features, o.hidden_size));
  layer_norm_ = register_module(
      "LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.hidden_size}).eps(o.layer_norm_eps)));
}

torch::Tensor BertResidualOutputImpl::forward(const torch::Tensor& x, const torch::Tensor& residual) {
  return layer_norm_(dense_(x) + residual);
}

BertAttentionImpl::BertAttentionImpl(const BertOptions& o) {
  self_ = register_module("self", BertSelfAttention(o));
  output_ = register_module("output", BertResidualOutput(o.hidden_size, o));
}

torch::Tensor BertAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& additive_mask) {
  return output_(self_(x, additive_mask), x);
}

BertIntermediateImpl::BertIntermediateImpl(const BertOptions& o) {
  dense_ = register_module("dense", LoraLinear(o.hidden_size, o.intermediate_size));
}

torch::Tensor BertIntermediateImpl::forward(const torch::Tensor& x) {
  return torch::gelu(dense_(x));  // exact (erf) GELU, BERT's "gelu"
}

BertLayerImpl::BertLayerImpl(const BertOptions& o) {
  attention_ = register_module("attention", BertAttention(o));
  intermediate_ = register_module("intermediate", BertIntermediate(o));
  output_ = register_module("output", BertResidualOutput(o.intermediate_size, o));
}

torch::Tensor BertLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& additive_mask) {
  torch::Tensor a = attention_(x, additive_mask);
  return output_(intermediate_(a), a);
}

BertModelImpl::BertModelImpl(const BertOptions& o) : options_(o) {
  embeddings_ = register_module("embeddings", BertEmbeddings(o));
  auto encoder = register_module("encoder", std::make_shared<torch::nn::Module>("BertEncoder"));
  layers_ = encoder->register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_hidden_layers; ++i) layers_->push_back(BertLayer(o));
  for (auto& p : parameters()) p.set_requires_grad(false);
}

torch::Tensor BertModelImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  TORCH_CHECK(input_ids.dim() == 2 && attention_mask.sizes() == input_ids.sizes(),
              "input_ids and attention_mask must both be [batch, seq_len]");
  TORCH_CHECK(input_ids.size(1) <= options_.max_position_embeddings, "sequence of ", input_ids.size(1),
              " tokens exceeds max_position_embeddings ", options_.max_position_embeddings);
  // Hugging Face's extended mask: 0 where attended, the dtype's lowest value where not.
  torch::Tensor additive = (1.0 - attention_mask.to(torch::kFloat).unsqueeze(1).unsqueeze(2)) *
                           std::numeric_limits<float>::lowest();
  torch::Tensor x = embeddings_(input_ids);
  for (const auto& layer : *layers_) x = layer->as<BertLayer>()->forward(x, additive);
  return x;
}

Status BertModelImpl::LoadWeights(const SafetensorsFile& file) {
  torch::NoGradGuard no_grad;
  for (auto& item : named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    if (name.find("lora_") != std::string::npos) continue;
    const StTensorView* view = file.Find(name);
    if (view == nullptr) view = file.Find("bert." + name);
    if (view == nullptr) {
      return DataLossError("model.safetensors lacks tensor '" + name + "' (also tried 'bert." + name +
                           "'); is this a BERT checkpoint matching config.json?");
    }
    torch::Tensor& param = item.value();
    if (view->shape != param.sizes().vec()) {
      return DataLossError("model.safetensors tensor '" + view->name + "' has shape " +
                           ShapeString(view->shape) + " but config.json implies " +
                           ShapeString(param.sizes().vec()));
    }
    if (view->dtype == StDType::kF32 && param.is_contiguous()) {
      // Straight from the file's bytes: a float32 temporary of the word embeddings
      // alone would add ~47 MB (MiniLM) to the load-time peak RSS.
      std::memcpy(param.data_ptr<float>(), view->data.data(), view->data.size());
      continue;
    }
    auto values = SafetensorsFile::ToFloat32(*view);
    if (!values.ok()) {
      return DataLossError("model.safetensors tensor '" + view->name + "': " + values.status().message());
    }
    param.copy_(torch::from_blob(values->data(), param.sizes(), torch::kFloat));
  }
  return OkStatus();
}

std::vector<std::pair<std::string, LoraLinear>> BertModelImpl::Linears() {
  std::vector<std::pair<std::string, LoraLinear>> out;
  for (auto& item : named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    if (item.value()->as<LoraLinearImpl>() == nullptr) continue;
    out.emplace_back(item.key(), LoraLinear(std::static_pointer_cast<LoraLinearImpl>(item.value())));
  }
  return out;
}

std::vector<std::pair<std::string, LoraLinear>> BertModelImpl::FindLinears(const std::string& target) {
  std::vector<std::pair<std::string, LoraLinear>> found;
  for (auto& [name, linear] : Linears()) {
    if (LoraTargetMatches(name, target)) found.emplace_back(name, linear);
  }
  return found;
}

StatusOr<std::vector<std::pair<std::string, LoraLinear>>> BertModelImpl::SelectLoraTargets(
    const std::vector<std::string>& targets) {
  std::vector<std::pair<std::string, LoraLinear>> all = Linears();
  std::vector<std::string> names;
  for (const auto& [name, linear] : all) names.push_back(name);
  FEDGE_ASSIGN_OR_RETURN(
      std::vector<size_t> picked,
      MatchLoraTargets(names, targets, "try query, key, value, dense, attention.output.dense"));
  std::vector<std::pair<std::string, LoraLinear>> out;
  for (size_t i : picked) out.push_back(all[i]);
  return out;
}

torch::Tensor MeanPool(const torch::Tensor& hidden, const torch::Tensor& mask) {
  torch::Tensor m = mask.to(hidden.dtype()).unsqueeze(-1);  // [B, T, 1]
  return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9);
}

}  // namespace fedge::agent
