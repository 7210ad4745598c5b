// Which modules a LoRA target list adapts, by PEFT's rule (peft's
// check_target_module_exists for a list of names): a target matches a module
// whose full name equals it or ends with "." + target. So "value" matches every
// "encoder.layer.<i>.attention.self.value", "q_proj" every
// "model.layers.<i>.self_attn.q_proj", and "self_attn.q_proj" the same modules
// as "q_proj" on Llama; "proj" matches nothing (no partial names). Both model
// families (bert/, llama/) choose their adapted modules with this. Torch-free.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "fedge/status.h"

namespace fedge::agent {

// PEFT's suffix rule for one module name and one target.
bool LoraTargetMatches(std::string_view module_name, std::string_view target);

// Indices into `module_names` of the modules any target matches, each once:
// target by target, each target's modules in module order (the order the BERT
// family draws its A's in; sort for module order). INVALID_ARGUMENT when a target matches no module (a typo
// would otherwise train nothing): the message names the target and ends with
// `hint` (e.g. the family's usual targets). An empty `targets` matches nothing.
StatusOr<std::vector<size_t>> MatchLoraTargets(const std::vector<std::string>& module_names,
                                               const std::vector<std::string>& targets,
                                               const std::string& hint);

}  // namespace fedge::agent
