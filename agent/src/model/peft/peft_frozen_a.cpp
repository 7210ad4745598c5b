// Frozen-A adapters in PEFT's layout: the job exchanges only B (every agent
// derives the same A from the job's seed), but peft needs A on disk, so export
// regenerates it and import checks an adapter's A is the job's.
#include <filesystem>

#include "bert/bert.h"
#include "fedge/agent/peft_adapter.h"
#include "peft/lora.h"
#include "torch_call.h"

namespace fedge::agent {
namespace {

// in_features of a BERT encoder Linear, from its qualified name.
StatusOr<int64_t> InFeatures(const BertOptions& o, const std::string& module) {
  auto ends = [&](std::string_view s) { return module.size() >= s.size() && module.ends_with(s); };
  if (ends("attention.self.query") || ends("attention.self.key") || ends("attention.self.value") ||
      ends("attention.output.dense") || ends("intermediate.dense")) {
    return o.hidden_size;
  }
  if (ends("output.dense")) return o.intermediate_size;
  return InvalidArgumentError("cannot size the frozen lora_A of '" + module +
                              "' (not a BERT encoder Linear)");
}

// The job's A for `module` with rank `r`, as the TextClassifier derives it.
StatusOr<NamedTensor> JobLoraA(const BertOptions& o, uint64_t seed, const std::string& module, int64_t r) {
  FEDGE_ASSIGN_OR_RETURN(int64_t in, InFeatures(o, module));
  return TorchCall("FrozenLoraA", [&]() -> StatusOr<NamedTensor> {
    torch::Tensor a = FrozenLoraA(seed, module, r, in).contiguous();
    return NamedTensor{module + ".lora_A", {r, in}, {a.data_ptr<float>(), a.data_ptr<float>() + a.numel()}};
  });
}

StatusOr<BertOptions> Options(const std::string& model_dir) {
  return BertOptions::FromConfigFile((std::filesystem::path(model_dir) / "config.json").string());
}

}  // namespace

Status AddFrozenLoraA(const std::string& model_dir, uint64_t seed, PeftAdapter* adapter) {
  FEDGE_ASSIGN_OR_RETURN(BertOptions o, Options(model_dir));
  std::vector<NamedTensor> added;
  for (const NamedTensor& t : adapter->tensors.tensors) {
    if (!t.name.ends_with(".lora_B") || t.shape.size() != 2) continue;
    const std::string module = t.name.substr(0, t.name.size() - 7);
    if (adapter->tensors.Find(module + ".lora_A") != nullptr) continue;
    FEDGE_ASSIGN_OR_RETURN(NamedTensor a, JobLoraA(o, seed, module, t.shape[1]));
    added.push_back(std::move(a));
  }
  for (NamedTensor& a : added) adapter->tensors.tensors.push_back(std::move(a));
  return OkStatus();
}

Status RemoveFrozenLoraA(const std::string& model_dir, uint64_t seed, PeftAdapter* adapter) {
  FEDGE_ASSIGN_OR_RETURN(BertOptions o, Options(model_dir));
  std::vector<NamedTensor> kept;
  for (NamedTensor& t : adapter->tensors.tensors) {
    if (!t.name.ends_with(".lora_A")) {
      kept.push_back(std::move(t));
      continue;
    }
    const std::string module = t.name.substr(0, t.name.size() - 7);
    FEDGE_ASSIGN_OR_RETURN(NamedTensor want, JobLoraA(o, seed, module, t.shape.empty() ? 0 : t.shape[0]));
    if (want.shape != t.shape || want.values != t.values) {
      return InvalidArgumentError(
          "adapter's '" + t.name + "' is not this job's frozen A (seed " + std::to_string(seed) +
          "); a frozen-A model cannot take another A — load it with lora_frozen_a off");
    }
  }
  adapter->tensors.tensors = std::move(kept);
  return OkStatus();
}

}  // namespace fedge::agent
