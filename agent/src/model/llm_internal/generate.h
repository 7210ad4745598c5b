// Autoregressive decoding with a KV cache over a LlamaForCausalLm (batch 1).
#pragma once

#include <vector>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fedge/agent/llm/generation.h"
#include "fedge/status.h"
#include "llm_internal/llama.h"

namespace fedge::agent::llm {

// Prefills `prompt_ids`, then samples one token at a time until an EOS id
// (`eos_ids`, when options.stop_at_eos), a stop string, max_new_tokens or the end of
// the context (max_position_embeddings) — the last two finish with "length".
// INVALID_ARGUMENT for an empty prompt, out-of-vocabulary ids, or a prompt that
// leaves no room to generate. Runs under torch::InferenceMode.
StatusOr<GenerationResult> GenerateTokens(LlamaForCausalLm& model, const BpeTokenizer& tokenizer,
                                          const std::vector<int32_t>& prompt_ids,
                                          const std::vector<int64_t>& eos_ids,
                                          const GenerationOptions& options,
                                          const TextCallback& on_text = nullptr);

}  // namespace fedge::agent::llm
