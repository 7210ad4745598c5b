// Autoregressive decoding with a KV cache over a LlamaForCausalLm: one sequence
// at a time (GenerateTokens), or many sessions advanced together by one batched
// decode step per token (continuous batching).
#pragma once

#include <memory>
#include <vector>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fedge/agent/llm/generation.h"
#include "fedge/status.h"
#include "llama/llama.h"

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

// GenerateTokens split into steps (generation.h, GenerationSession): validates the
// prompt (the same errors), prefills it into the session's own KV cache and
// samples the first token; the session may already be done (EOS first,
// max_new_tokens 0 or 1, a stop string). `model`, `tokenizer` and `eos_ids` must
// outlive the session.
StatusOr<std::unique_ptr<GenerationSession>> StartGenerationSession(LlamaForCausalLm& model,
                                                                    const BpeTokenizer& tokenizer,
                                                                    const std::vector<int32_t>& prompt_ids,
                                                                    const std::vector<int64_t>& eos_ids,
                                                                    const GenerationOptions& options,
                                                                    const TextCallback& on_text = nullptr);

// Advances every session that is not done by one token: sessions cancelled since
// the last step end (kCancelled) without computing; the others feed their last
// token through ONE LlamaForCausalLmImpl::DecodeStepBatch (the single-sequence
// decode step when one is left) and sample from their own logits row. Every
// session must come from StartGenerationSession with this `model`. INVALID_ARGUMENT
// for a session that is not one; INTERNAL if the step failed (every session of
// the step is then done, finish reason kCancelled, and must be dropped).
Status StepGenerationSessions(LlamaForCausalLm& model, const std::vector<GenerationSession*>& sessions);

}  // namespace fedge::agent::llm
