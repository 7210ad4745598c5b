// Training a byte-level BPE vocabulary (as `tokenizers`' BpeTrainer with the GPT-2
// ByteLevel pre-tokenizer does) and writing it as a tokenizer.json that both
// BpeTokenizer and Hugging Face `tokenizers` load.
#pragma once

#include <string>
#include <vector>

#include "fedge/status.h"

namespace fedge::agent::llm {

struct BpeTrainOptions {
  int vocab_size = 4096;  // specials + 256 bytes + merges
  std::vector<std::string> special_tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  int min_frequency = 2;  // a pair seen fewer times is never merged
};

// Learns merges from `corpus` (each string pre-tokenized with the GPT-2 regex) until
// the vocabulary reaches vocab_size or no pair occurs min_frequency times. Ids:
// special tokens first, then the 256 byte symbols, then merges in the order learned.
// Ties between equally frequent pairs go to the lexicographically smallest pair, so
// the result is deterministic. INVALID_ARGUMENT if vocab_size cannot hold the
// specials and the byte alphabet. Returns tokenizer.json text.
StatusOr<std::string> TrainBpeTokenizer(const std::vector<std::string>& corpus,
                                        const BpeTrainOptions& options);

}  // namespace fedge::agent::llm
