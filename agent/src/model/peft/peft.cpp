// PEFT adapter directories <-> fedge trainable bundles (see peft_adapter.h).
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "fedge/agent/peft_adapter.h"
#include "fedge/file_util.h"
#include "fedge/safetensors.h"
#include "peft/lora_targets.h"
#include "shape_string.h"

namespace fedge::agent {
namespace {

constexpr std::string_view kPrefix = "base_model.model.";
constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";
constexpr const char* kHeadFile = "fedge_head.safetensors";

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// The module a modules_to_save entry names, matched as peft does (the suffix
// rule of LoRA targets, peft/lora_targets.h).
bool InSavedModule(const std::string& tensor_name, const std::vector<std::string>& modules_to_save) {
  const size_t dot = tensor_name.rfind('.');
  if (dot == std::string::npos) return false;
  const std::string module = tensor_name.substr(0, dot);
  for (const std::string& m : modules_to_save) {
    if (LoraTargetMatches(module, m)) return true;
  }
  return false;
}

Status ValidateLoraTensors(const PeftAdapter& adapter) {
  const TensorBundle& b = adapter.tensors;
  std::set<std::string> names;
  for (const NamedTensor& t : b.tensors) {
    if (!names.insert(t.name).second) return InvalidArgumentError("adapter tensor '" + t.name + "' repeats");
    const bool is_a = EndsWith(t.name, ".lora_A"), is_b = EndsWith(t.name, ".lora_B");
    if (!is_a && !is_b) {
      if (InSavedModule(t.name, adapter.config.modules_to_save)) continue;
      return InvalidArgumentError("adapter tensor '" + t.name +
                                  "' is neither a LoRA factor nor in modules_to_save; heads peft has no "
                                  "module for belong in PeftAdapter::head");
    }
    const std::string module = t.name.substr(0, t.name.size() - 7);
    const std::string partner = module + (is_a ? ".lora_B" : ".lora_A");
    if (b.Find(partner) == nullptr) {
      return InvalidArgumentError("adapter tensor '" + t.name + "' has no '" + partner +
                                  "' (a frozen-A adapter must be exported with its A)");
    }
    if (t.shape.size() != 2) {
      return InvalidArgumentError("LoRA factor '" + t.name + "' has shape " + ShapeString(t.shape) +
                                  ", expected a matrix");
    }
    const int64_t rank = is_a ? t.shape[0] : t.shape[1];
    if (rank != adapter.config.r) {
      return InvalidArgumentError("LoRA factor '" + t.name + "' has rank " + std::to_string(rank) +
                                  " but the config says r = " + std::to_string(adapter.config.r));
    }
  }
  return OkStatus();
}

nlohmann::json ConfigJson(const PeftLoraConfig& c) {
  // The fields peft's LoraConfig reads that decide how weights are applied, with
  // the values fedge's LoraLinear implements; the rest take peft's defaults.
  nlohmann::json j = {
      {"peft_type", "LORA"},
      {"task_type", c.task_type},
      {"r", c.r},
      // peft declares lora_alpha an int; write one when the value is integral.
      {"lora_alpha", c.lora_alpha == std::floor(c.lora_alpha) && std::abs(c.lora_alpha) < 1e9
                         ? nlohmann::json(static_cast<int64_t>(c.lora_alpha))
                         : nlohmann::json(c.lora_alpha)},
      {"lora_dropout", c.lora_dropout},
      {"target_modules", c.target_modules},
      {"base_model_name_or_path", c.base_model_name_or_path},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"use_rslora", false},
      {"use_dora", false},
      {"init_lora_weights", true},
      {"inference_mode", true},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"rank_pattern", nlohmann::json::object()},
      {"alpha_pattern", nlohmann::json::object()},
      {"revision", nullptr},
  };
  j["modules_to_save"] =
      c.modules_to_save.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.modules_to_save);
  return j;
}

StatusOr<PeftLoraConfig> ParseConfig(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return DataLossError("not a JSON object");
  PeftLoraConfig c;
  try {
    const std::string type = j.value("peft_type", "");
    if (type != "LORA")
      return InvalidArgumentError("peft_type is '" + type + "'; fedge loads LORA adapters only");
    auto flag = [&](const char* key) { return j.contains(key) && j[key].is_boolean() && j[key].get<bool>(); };
    for (const char* key : {"use_rslora", "use_dora", "fan_in_fan_out"}) {
      if (flag(key))
        return InvalidArgumentError(std::string(key) + " = true is not supported by fedge's LoRA");
    }
    for (const char* key : {"rank_pattern", "alpha_pattern"}) {
      if (j.contains(key) && !j[key].is_null() && !j[key].empty()) {
        return InvalidArgumentError(std::string(key) +
                                    " is set; fedge uses one rank and alpha for all modules");
      }
    }
    for (const char* key : {"layers_to_transform", "layer_replication", "target_parameters"}) {
      if (j.contains(key) && !j[key].is_null() && !(j[key].is_array() && j[key].empty())) {
        return InvalidArgumentError(std::string(key) + " is set; fedge adapts every layer a target matches");
      }
    }
    if (j.contains("bias") && j["bias"] != "none") {
      return InvalidArgumentError("bias = " + j["bias"].dump() + "; fedge trains no biases in LoRA layers");
    }
    c.r = j.at("r").get<int>();
    c.lora_alpha = j.at("lora_alpha").get<double>();
    c.lora_dropout = j.value("lora_dropout", 0.0);
    const auto& targets = j.at("target_modules");
    if (!targets.is_array()) {
      return InvalidArgumentError(
          "target_modules is " + targets.dump() +
          "; fedge needs a list of module names (regexes and 'all-linear' are not supported)");
    }
    c.target_modules = targets.get<std::vector<std::string>>();
    if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string()) {
      c.base_model_name_or_path = j["base_model_name_or_path"].get<std::string>();
    }
    c.task_type =
        j.contains("task_type") && j["task_type"].is_string() ? j["task_type"].get<std::string>() : "";
    if (j.contains("modules_to_save") && j["modules_to_save"].is_array()) {
      c.modules_to_save = j["modules_to_save"].get<std::vector<std::string>>();
    }
  } catch (const nlohmann::json::exception& e) {
    return DataLossError(e.what());
  }
  if (c.r <= 0 || !(c.lora_alpha > 0) || !(c.lora_dropout >= 0 && c.lora_dropout < 1)) {
    return InvalidArgumentError("r and lora_alpha must be positive and lora_dropout in [0, 1)");
  }
  return c;
}

}  // namespace

Status WritePeftAdapter(const std::string& dir, const PeftAdapter& adapter) {
  FEDGE_RETURN_IF_ERROR(ValidateLoraTensors(adapter));
  TensorBundle weights;
  for (const NamedTensor& t : adapter.tensors.tensors) {
    NamedTensor out = t;
    out.name = std::string(kPrefix) + t.name;
    if (EndsWith(t.name, ".lora_A") || EndsWith(t.name, ".lora_B")) out.name += ".weight";
    weights.tensors.push_back(std::move(out));
  }
  FEDGE_RETURN_IF_ERROR(MakeDirs(dir));
  const std::filesystem::path d(dir);
  FEDGE_RETURN_IF_ERROR(
      WriteFileAtomic((d / kConfigFile).string(), ConfigJson(adapter.config).dump(2) + "\n"));
  // {"format": "pt"} is what peft (via safetensors.torch) writes; transformers checks it.
  FEDGE_RETURN_IF_ERROR(WriteSafetensorsFile((d / kWeightsFile).string(), weights, {{"format", "pt"}}));
  std::error_code ec;
  if (adapter.head.tensors.empty()) {
    std::filesystem::remove(d / kHeadFile, ec);  // a stale head from an earlier export would be read back
    return OkStatus();
  }
  return WriteSafetensorsFile(
      (d / kHeadFile).string(), adapter.head,
      {{"format", "pt"}, {"pooling", "mean"}, {"labels", nlohmann::json(adapter.labels).dump()}});
}

StatusOr<PeftAdapter> ReadPeftAdapter(const std::string& dir) {
  const std::filesystem::path d(dir);
  const std::string config_path = (d / kConfigFile).string();
  if (!std::filesystem::exists(config_path)) {
    return NotFoundError(config_path + " does not exist; is '" + dir + "' a PEFT adapter directory?");
  }
  PeftAdapter adapter;
  FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(config_path));
  auto config = ParseConfig(text);
  if (!config.ok()) return config.status().WithContext(config_path);
  adapter.config = std::move(*config);

  const std::string weights_path = (d / kWeightsFile).string();
  if (!std::filesystem::exists(weights_path)) {
    return NotFoundError(weights_path +
                         " does not exist (fedge does not read adapter_model.bin; "
                         "save with safe_serialization=True)");
  }
  FEDGE_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Read(weights_path));
  for (const StTensorView& view : file.tensors()) {
    std::string name = view.name;
    if (name.compare(0, kPrefix.size(), kPrefix) != 0) {
      return DataLossError(weights_path + ": tensor '" + name + "' lacks peft's '" + std::string(kPrefix) +
                           "' prefix");
    }
    name.erase(0, kPrefix.size());
    for (const char* factor : {".lora_A", ".lora_B"}) {
      const std::string suffix = std::string(factor) + ".weight";
      if (EndsWith(name, suffix)) name.erase(name.size() - 7);
    }
    auto values = SafetensorsFile::ToFloat32(view);
    if (!values.ok())
      return DataLossError(weights_path + ": tensor '" + view.name + "': " + values.status().message());
    adapter.tensors.tensors.push_back(NamedTensor{name, view.shape, std::move(*values)});
  }
  Status st = ValidateLoraTensors(adapter);
  if (!st.ok()) return st.WithContext(weights_path);

  const std::string head_path = (d / kHeadFile).string();
  if (std::filesystem::exists(head_path)) {
    std::map<std::string, std::string> metadata;
    FEDGE_ASSIGN_OR_RETURN(adapter.head, ReadSafetensorsBundle(head_path, &metadata));
    if (metadata.count("pooling") && metadata["pooling"] != "mean") {
      return InvalidArgumentError(head_path + ": pooling '" + metadata["pooling"] +
                                  "' is not supported (mean)");
    }
    if (metadata.count("labels")) {
      nlohmann::json labels = nlohmann::json::parse(metadata["labels"], nullptr, /*allow_exceptions=*/false);
      if (!labels.is_array() ||
          !std::all_of(labels.begin(), labels.end(), [](const auto& l) { return l.is_string(); })) {
        return DataLossError(head_path + ": metadata 'labels' is not a JSON array of strings");
      }
      adapter.labels = labels.get<std::vector<std::string>>();
    }
  }
  return adapter;
}

void ApplyPeftConfig(const PeftLoraConfig& config, const std::vector<std::string>& labels,
                     ClassifierOptions* options) {
  options->lora_rank = config.r;
  options->lora_alpha = config.lora_alpha;
  options->lora_dropout = config.lora_dropout;
  options->lora_targets = config.target_modules;
  if (!labels.empty()) options->labels = labels;
}

PeftAdapter MakePeftAdapter(const PeftLoraConfig& config, TensorBundle trainable,
                            std::vector<std::string> labels) {
  PeftAdapter adapter;
  adapter.config = config;
  adapter.labels = std::move(labels);
  for (NamedTensor& t : trainable.tensors) {
    const bool lora = EndsWith(t.name, ".lora_A") || EndsWith(t.name, ".lora_B");
    (lora ? adapter.tensors : adapter.head).tensors.push_back(std::move(t));
  }
  return adapter;
}

Status ExportPeftAdapter(const TextClassifier& model, const ClassifierOptions& options,
                         const std::string& dir) {
  PeftLoraConfig config;
  config.r = options.lora_rank;
  config.lora_alpha = options.lora_alpha;
  config.lora_dropout = options.lora_dropout;
  config.target_modules = options.lora_targets;
  config.base_model_name_or_path = options.model_dir;
  config.task_type = "FEATURE_EXTRACTION";
  PeftAdapter adapter = MakePeftAdapter(config, model.ExportTrainable(), model.labels());
  if (options.lora_frozen_a)
    FEDGE_RETURN_IF_ERROR(AddFrozenLoraA(options.model_dir, options.init_seed, &adapter));
  if (adapter.tensors.tensors.empty()) {
    return FailedPreconditionError(
        "the model has no LoRA factors (lora_rank 0); there is no adapter to export");
  }
  return WritePeftAdapter(dir, adapter);
}

Status ImportPeftAdapter(const std::string& dir, const ClassifierOptions& options, TextClassifier& model) {
  FEDGE_ASSIGN_OR_RETURN(PeftAdapter adapter, ReadPeftAdapter(dir));
  if (options.lora_frozen_a) {
    Status st = RemoveFrozenLoraA(options.model_dir, options.init_seed, &adapter);
    if (!st.ok()) return st.WithContext(dir);
  }
  const PeftLoraConfig& c = adapter.config;
  // Same rank and alpha/r: the factors mean the same update only under the same scaling.
  if (c.r != options.lora_rank || c.lora_alpha * options.lora_rank != options.lora_alpha * c.r) {
    return InvalidArgumentError(
        dir + ": adapter has r=" + std::to_string(c.r) + ", lora_alpha=" + std::to_string(c.lora_alpha) +
        " but the model was loaded with rank " + std::to_string(options.lora_rank) + ", alpha " +
        std::to_string(options.lora_alpha) + " (ApplyPeftConfig sets them)");
  }
  if (!adapter.labels.empty() && adapter.labels != model.labels()) {
    return InvalidArgumentError(dir + ": adapter head's labels differ from the model's");
  }
  TensorBundle current = model.ExportTrainable();
  size_t current_lora = 0;
  for (const NamedTensor& t : current.tensors) {
    if (EndsWith(t.name, ".lora_A") || EndsWith(t.name, ".lora_B")) ++current_lora;
  }
  size_t adapter_lora = 0;
  for (const NamedTensor& t : adapter.tensors.tensors) {
    if (!EndsWith(t.name, ".lora_A") && !EndsWith(t.name, ".lora_B")) {
      return InvalidArgumentError(dir + ": modules_to_save tensor '" + t.name +
                                  "' has no counterpart in fedge's TextClassifier (its head pools by mean; a "
                                  "SEQ_CLS/TOKEN_CLS head is a different model)");
    }
    ++adapter_lora;
  }
  if (adapter_lora != current_lora) {
    return InvalidArgumentError(dir + ": adapter has " + std::to_string(adapter_lora) +
                                " LoRA factors, the model " + std::to_string(current_lora) +
                                " (target_modules differ?)");
  }
  for (const TensorBundle* src : {&adapter.tensors, &adapter.head}) {
    for (const NamedTensor& t : src->tensors) {
      NamedTensor* dst = current.Find(t.name);
      if (dst == nullptr) {
        return InvalidArgumentError(dir + ": adapter tensor '" + t.name +
                                    "' matches no parameter of the model");
      }
      if (dst->shape != t.shape) {
        return InvalidArgumentError(dir + ": adapter tensor '" + t.name + "' has shape " +
                                    ShapeString(t.shape) + ", the model's is " + ShapeString(dst->shape));
      }
      dst->values = t.values;
    }
  }
  return model.ImportTrainable(current);
}

}  // namespace fedge::agent
