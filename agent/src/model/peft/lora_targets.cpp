#include "peft/lora_targets.h"

namespace fedge::agent {

bool LoraTargetMatches(std::string_view module_name, std::string_view target) {
  if (target.empty()) return false;
  if (module_name == target) return true;
  return module_name.size() > target.size() && module_name.ends_with(target) &&
         module_name[module_name.size() - target.size() - 1] == '.';
}

StatusOr<std::vector<size_t>> MatchLoraTargets(const std::vector<std::string>& module_names,
                                               const std::vector<std::string>& targets,
                                               const std::string& hint) {
  std::vector<bool> taken(module_names.size(), false);
  std::vector<size_t> out;
  for (const std::string& target : targets) {
    bool any = false;
    for (size_t i = 0; i < module_names.size(); ++i) {
      if (!LoraTargetMatches(module_names[i], target)) continue;
      any = true;
      if (!taken[i]) {
        taken[i] = true;
        out.push_back(i);
      }
    }
    if (!any) {
      return InvalidArgumentError("LoRA target '" + target + "' matches no linear layer of the model (" +
                                  hint + ")");
    }
  }
  return out;
}

}  // namespace fedge::agent
