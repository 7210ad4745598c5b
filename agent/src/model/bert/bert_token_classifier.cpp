#include "bert/bert_token_classifier.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "fedge/file_util.h"
#include "fedge/safetensors.h"
#include "shape_string.h"
#include "torch_call.h"

namespace fedge::agent {
namespace {

StatusOr<int64_t> NumLabels(const std::string& config_text) {
  nlohmann::json j = nlohmann::json::parse(config_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgumentError("config.json is not a JSON object");
  if (j.contains("num_labels") && j["num_labels"].is_number_integer()) return j["num_labels"].get<int64_t>();
  if (j.contains("id2label") && j["id2label"].is_object() && !j["id2label"].empty()) {
    return static_cast<int64_t>(j["id2label"].size());
  }
  return InvalidArgumentError(
      "config.json has neither num_labels nor id2label; how many labels does the head have?");
}

}  // namespace

BertTokenClassifierImpl::BertTokenClassifierImpl(const BertOptions& options, int64_t num_labels)
    : num_labels_(num_labels) {
  bert_ = register_module("bert", BertModel(options));
  classifier_ = register_module("classifier", torch::nn::Linear(options.hidden_size, num_labels));
  for (auto& p : classifier_->parameters()) p.set_requires_grad(false);
}

StatusOr<std::shared_ptr<BertTokenClassifierImpl>> BertTokenClassifierImpl::Load(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string config_path = (fs::path(dir) / "config.json").string();
  FEDGE_ASSIGN_OR_RETURN(std::string config_text, ReadFile(config_path));
  auto options = BertOptions::FromConfigJson(config_text);
  if (!options.ok()) return options.status().WithContext(config_path);
  auto num_labels = NumLabels(config_text);
  if (!num_labels.ok()) return num_labels.status().WithContext(config_path);
  if (*num_labels <= 0) return InvalidArgumentError(config_path + ": num_labels must be positive");
  const std::string weights_path = (fs::path(dir) / "model.safetensors").string();
  FEDGE_ASSIGN_OR_RETURN(SafetensorsFile weights, SafetensorsFile::Map(weights_path));
  return TorchCall("BertTokenClassifier::Load", [&]() -> StatusOr<std::shared_ptr<BertTokenClassifierImpl>> {
    auto model = std::make_shared<BertTokenClassifierImpl>(*options, *num_labels);
    Status st = model->bert_->LoadWeights(weights);
    if (!st.ok()) return st.WithContext(weights_path);
    torch::NoGradGuard no_grad;
    for (auto& item : model->classifier_->named_parameters()) {
      const std::string name = "classifier." + item.key();
      const StTensorView* view = weights.Find(name);
      if (view == nullptr) {
        return DataLossError(weights_path + " lacks '" + name +
                             "'; is it a BertForTokenClassification checkpoint?");
      }
      if (view->shape != item.value().sizes().vec()) {
        return DataLossError(weights_path + ": '" + name + "' has shape " + ShapeString(view->shape) +
                             ", config.json implies " + ShapeString(item.value().sizes().vec()));
      }
      FEDGE_ASSIGN_OR_RETURN(std::vector<float> values, SafetensorsFile::ToFloat32(*view));
      item.value().copy_(torch::from_blob(values.data(), item.value().sizes(), torch::kFloat));
    }
    model->eval();
    return model;
  });
}

torch::Tensor BertTokenClassifierImpl::forward(const torch::Tensor& input_ids,
                                               const torch::Tensor& attention_mask) {
  return classifier_(bert_(input_ids, attention_mask));
}

Status BertTokenClassifierImpl::EnableLora(const LoraOptions& options,
                                           const std::vector<std::string>& targets, torch::Generator& init) {
  if (lora_enabled_) return InvalidArgumentError("LoRA is already enabled");
  if (options.rank <= 0 || !(options.alpha > 0))
    return InvalidArgumentError("LoRA rank and alpha must be positive");
  // Resolve every target before changing anything, so an error leaves no half-adapted model.
  FEDGE_ASSIGN_OR_RETURN(auto selected, bert_->SelectLoraTargets(targets));
  return TorchCall("EnableLora", [&]() -> Status {
    for (auto& [name, linear] : selected) linear->EnableLora(options, init);
    trainable_.clear();
    for (auto& [name, linear] : bert_->Linears()) {
      if (!linear->has_lora()) continue;
      trainable_.emplace_back("bert." + name + ".lora_A", linear->lora_A());
      trainable_.emplace_back("bert." + name + ".lora_B", linear->lora_B());
    }
    for (auto& item : classifier_->named_parameters()) {
      item.value().set_requires_grad(true);
      trainable_.emplace_back("classifier." + item.key(), item.value());
    }
    lora_enabled_ = true;
    return OkStatus();
  });
}

TensorBundle BertTokenClassifierImpl::ExportTrainable() const {
  TensorBundle bundle;
  for (const auto& [name, tensor] : trainable_) {
    torch::Tensor t = tensor.detach().contiguous();
    bundle.tensors.push_back(NamedTensor{
        name, t.sizes().vec(), std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel())});
  }
  return bundle;
}

Status BertTokenClassifierImpl::ImportTrainable(const TensorBundle& bundle) {
  if (bundle.tensors.size() != trainable_.size()) {
    return InvalidArgumentError("bundle has " + std::to_string(bundle.tensors.size()) +
                                " tensors, the model " + std::to_string(trainable_.size()) +
                                " trainable ones");
  }
  for (const auto& [name, tensor] : trainable_) {
    const NamedTensor* src = bundle.Find(name);
    if (src == nullptr) return InvalidArgumentError("bundle lacks '" + name + "'");
    if (src->shape != tensor.sizes().vec() || static_cast<int64_t>(src->values.size()) != tensor.numel()) {
      return InvalidArgumentError("'" + name + "' has shape " + ShapeString(src->shape) +
                                  ", the model's is " + ShapeString(tensor.sizes().vec()));
    }
    for (float v : src->values) {
      if (!std::isfinite(v)) return InvalidArgumentError("'" + name + "' has a non-finite value");
    }
  }
  return TorchCall("ImportTrainable", [&]() -> Status {
    torch::NoGradGuard no_grad;
    for (auto& [name, tensor] : trainable_) {
      const NamedTensor* src = bundle.Find(name);
      tensor.copy_(torch::from_blob(const_cast<float*>(src->values.data()), tensor.sizes(), torch::kFloat));
    }
    return OkStatus();
  });
}

Status BertTokenClassifierImpl::ApplyPeftAdapter(const PeftAdapter& adapter) {
  const PeftLoraConfig& c = adapter.config;
  // The factors' values come from the adapter; the generator only fills A until then.
  torch::Generator unused = at::detail::createCPUGenerator(0);
  FEDGE_RETURN_IF_ERROR(EnableLora(LoraOptions{c.r, c.lora_alpha, c.lora_dropout}, c.target_modules, unused));
  TensorBundle merged = ExportTrainable();
  for (const auto& [name, tensor] : trainable_) {
    // A factor missing from the adapter would silently keep its random A.
    if (name.ends_with(".lora_A") || name.ends_with(".lora_B")) {
      if (adapter.tensors.Find(name) == nullptr) return InvalidArgumentError("adapter lacks '" + name + "'");
    }
  }
  for (const NamedTensor& t : adapter.tensors.tensors) {
    NamedTensor* dst = merged.Find(t.name);
    if (dst == nullptr)
      return InvalidArgumentError("adapter tensor '" + t.name + "' matches no trainable parameter");
    if (dst->shape != t.shape) {
      return InvalidArgumentError("adapter tensor '" + t.name + "' has shape " + ShapeString(t.shape) +
                                  ", the model's is " + ShapeString(dst->shape));
    }
    dst->values = t.values;
  }
  return ImportTrainable(merged);
}

}  // namespace fedge::agent
