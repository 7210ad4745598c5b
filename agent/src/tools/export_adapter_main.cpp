// fedge-export-adapter: writes an agent's persisted global adapter
// (<state-dir>/global.safetensors) as a PEFT adapter directory that Python's
// peft loads with PeftModel.from_pretrained (see fedge/agent/peft_adapter.h).
// The job manifest supplies what the state file does not carry: LoRA rank,
// alpha, dropout and targets, the base model and the labels.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>

#include "fedge/agent/llm/llama_config.h"
#include "fedge/agent/peft_adapter.h"
#include "fedge/job_spec.h"
#include "fedge/safetensors.h"
#include "fedge/version.h"

int main(int argc, char** argv) {
  std::string config_path, state, out, model_dir;
  CLI::App app{
      "fedge-export-adapter: export a fedge adapter (an agent's global.safetensors) in PEFT's layout "
      "(adapter_config.json + adapter_model.safetensors [+ fedge_head.safetensors])"};
  app.set_version_flag(
      "--version", std::string("fedge-export-adapter ") + fedge::Version() + " (" + fedge::GitRev() + ")");
  app.add_option("--config", config_path, "the job's FederatedTrainingJob manifest (YAML or JSON)")
      ->required();
  app.add_option("--state", state, "an agent's --state-dir, or a global.safetensors file")->required();
  app.add_option("--out", out, "output directory (created; files replaced)")->required();
  app.add_option("--model-dir", model_dir,
                 "the base model directory (default: spec.model.path); frozen-A jobs read its config.json");
  CLI11_PARSE(app, argc, argv);

  auto spec = fedge::LoadJobSpec(config_path);
  if (!spec.ok()) {
    std::cerr << "fedge-export-adapter: " << spec.status().ToString() << "\n";
    return 2;
  }
  if (spec->model.family == "llama") {
    // Phi-3's PEFT modules are the fused qkv_proj and gate_up_proj, which fedge loads
    // split and adapts part by part: those adapters have no PEFT spelling.
    const std::string dir = model_dir.empty() ? spec->model.path : model_dir;
    auto config = fedge::agent::llm::LlamaConfig::FromFile(dir + "/config.json");
    if (config.ok() && config->fused_projections) {
      std::cerr << "fedge-export-adapter: " << dir
                << " is a Phi-3 model: PEFT adapts its fused qkv_proj/gate_up_proj, fedge the split "
                   "q/k/v and gate/up projections; such an adapter has no PEFT form\n";
      return 2;
    }
  }
  const std::string state_file = std::filesystem::is_directory(state)
                                     ? (std::filesystem::path(state) / "global.safetensors").string()
                                     : state;
  auto bundle = fedge::ReadSafetensorsBundle(state_file);
  if (!bundle.ok()) {
    std::cerr << "fedge-export-adapter: " << bundle.status().ToString() << "\n";
    return 1;
  }
  fedge::agent::PeftLoraConfig config;
  config.r = spec->adapter.rank;
  config.lora_alpha = spec->adapter.alpha;
  config.lora_dropout = spec->adapter.dropout;
  config.target_modules = spec->adapter.targetModules;
  config.base_model_name_or_path = spec->model.path;
  config.task_type = spec->model.family == "llama" ? "CAUSAL_LM" : "FEATURE_EXTRACTION";
  auto adapter = fedge::agent::MakePeftAdapter(
      config, std::move(*bundle),
      spec->model.family == "llama" ? std::vector<std::string>{} : spec->model.labels);
  if (model_dir.empty()) model_dir = spec->model.path;
  if (spec->adapter.aggregation == "frozen-a") {
    // The state holds B only; A is the job's, derived from spec.rounds.seed as the agents do.
    fedge::Status st = fedge::agent::AddFrozenLoraA(model_dir, spec->rounds.seed, &adapter);
    if (!st.ok()) {
      std::cerr << "fedge-export-adapter: frozen-a: " << st.ToString() << "\n";
      return 1;
    }
  }
  if (spec->model.family == "llama" && !adapter.head.tensors.empty()) {
    std::cerr << "fedge-export-adapter: " << state_file << " holds '" << adapter.head.tensors[0].name
              << "', which is not a LoRA factor; a causal-LM adapter has none\n";
    return 1;
  }
  fedge::Status st = fedge::agent::WritePeftAdapter(out, adapter);
  if (!st.ok()) {
    std::cerr << "fedge-export-adapter: " << st.WithContext(state_file).ToString() << "\n";
    return 1;
  }
  std::cout << "wrote PEFT adapter to " << out << " (" << adapter.tensors.tensors.size() << " LoRA tensors"
            << (adapter.head.tensors.empty() ? "" : ", head in fedge_head.safetensors") << ")\n"
            << "load it in Python: peft.PeftModel.from_pretrained(transformers.AutoModel"
            << (spec->model.family == "llama" ? "ForCausalLM" : "") << ".from_pretrained(\""
            << spec->model.path << "\"), \"" << out << "\")\n";
  return 0;
}
