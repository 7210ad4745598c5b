// Turning prompt/completion text into causal-LM training batches.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fedge/agent/llm/causal_lm.h"

namespace fedge::agent::llm {

struct CausalLmBatch {
  torch::Tensor input_ids;  // [B, T] int64, right-padded with `pad_id`
  torch::Tensor labels;     // [B, T] int64: the ids, -100 on prompt and padding positions
};

// Encodes each example as the tokenizer's BOS (if its post_processor adds one) +
// ids(prompt) + ids(completion, as a continuation) (+ `eos_id` if >= 0),
// truncated to `max_len`, and right-pads to the longest. Right padding needs no
// attention mask: under the causal mask real positions never see later padding.
CausalLmBatch MakeCausalLmBatch(const BpeTokenizer& tokenizer, const std::vector<PromptCompletion>& examples,
                                int64_t max_len, int64_t eos_id = -1, int64_t pad_id = 0);

}  // namespace fedge::agent::llm
