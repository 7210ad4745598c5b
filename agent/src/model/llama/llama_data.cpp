#include "llama/llama_data.h"

#include "llama/llama.h"

namespace fedge::agent::llm {

CausalLmBatch MakeCausalLmBatch(const BpeTokenizer& tokenizer, const std::vector<PromptCompletion>& examples,
                                int64_t max_len, int64_t eos_id, int64_t pad_id) {
  std::vector<std::vector<int64_t>> ids(examples.size()), labels(examples.size());
  int64_t longest = 1;
  for (size_t i = 0; i < examples.size(); ++i) {
    // The prompt begins the sequence (with the tokenizer's BOS, if it has one) and the
    // completion continues it: a SentencePiece-style tokenizer marks the completion's
    // first word only if the completion starts with a space, as in the joined text.
    const std::string& prompt = examples[i].prompt;
    for (int32_t id : tokenizer.Encode(prompt, {.add_special_tokens = true})) {
      ids[i].push_back(id);
      labels[i].push_back(kIgnoreIndex);
    }
    std::vector<int32_t> completion =
        tokenizer.Encode(examples[i].completion, {.continuation = !prompt.empty()});
    if (eos_id >= 0) completion.push_back(static_cast<int32_t>(eos_id));
    for (int32_t id : completion) {
      ids[i].push_back(id);
      labels[i].push_back(id);
    }
    if (static_cast<int64_t>(ids[i].size()) > max_len) {
      ids[i].resize(static_cast<size_t>(max_len));
      labels[i].resize(static_cast<size_t>(max_len));
    }
    longest = std::max<int64_t>(longest, static_cast<int64_t>(ids[i].size()));
  }
  CausalLmBatch batch;
  const auto b = static_cast<int64_t>(examples.size());
  batch.input_ids = torch::full({b, longest}, pad_id, torch::kLong);
  batch.labels = torch::full({b, longest}, kIgnoreIndex, torch::kLong);
  auto in = batch.input_ids.accessor<int64_t, 2>();
  auto lab = batch.labels.accessor<int64_t, 2>();
  for (int64_t i = 0; i < b; ++i) {
    for (size_t j = 0; j < ids[i].size(); ++j) {
      in[i][j] = ids[i][j];
      lab[i][j] = labels[i][j];
    }
  }
  return batch;
}

}  // namespace fedge::agent::llm
