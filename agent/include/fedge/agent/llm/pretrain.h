// Pretraining fedge's own small base model for the generative path: a byte-level
// BPE tokenizer and a Llama-architecture decoder trained from scratch on WordNet
// glosses and examples ("lemma: gloss; \"example\"" lines from Debian's
// wordnet-base), saved as a Hugging Face directory that transformers loads
// (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
// generation_config.json).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "fedge/status.h"

namespace fedge::agent::llm {

// "lemma: gloss" lines from wordnet_dir/data.{noun,verb,adj,adv}, in file order.
// NOT_FOUND if none of the files exists.
StatusOr<std::vector<std::string>> ReadWordNetGlosses(const std::string& wordnet_dir);

struct PretrainOptions {
  std::string wordnet_dir = "/usr/share/wordnet";
  std::string out_dir;    // required
  int64_t max_lines = 0;  // 0: the whole corpus (tests use a few hundred)
  // Tokenizer
  int vocab_size = 2048;
  // Model (Llama: RMSNorm, RoPE, GQA, SwiGLU, tied embeddings)
  int64_t hidden_size = 192;
  int64_t num_layers = 4;
  int64_t num_heads = 6;
  int64_t num_kv_heads = 2;
  int64_t intermediate_size = 512;
  int64_t context = 256;  // max_position_embeddings
  // Training
  int64_t seq_len = 96;
  int64_t batch_size = 32;
  double learning_rate = 3e-3;
  double min_lr_ratio = 0.1;  // cosine decay to lr * this
  double weight_decay = 0.1;
  int warmup_steps = 30;
  int max_steps = 400;       // the schedule's length
  double max_seconds = 300;  // stop early when time runs out (0: no limit)
  uint64_t seed = 0;
  int num_threads = 2;
  std::vector<std::string> sample_lemmas = {"dog", "river", "happy"};
  int sample_tokens = 40;
  // Polled every step; returning true ends training early (the model trained so far
  // is still evaluated and saved). How a SIGTERM reaches the loop.
  std::function<bool()> should_stop;
};

struct PretrainReport {
  int64_t corpus_lines = 0;
  int64_t corpus_tokens = 0;
  int64_t parameters = 0;
  int steps = 0;
  double seconds = 0;
  double tokens_per_second = 0;
  double first_loss = 0;                                     // mean of the first 10 steps
  double final_loss = 0;                                     // mean of the last 10 steps
  double heldout_loss = 0;                                   // on 1% of lines never trained on
  std::vector<std::pair<std::string, std::string>> samples;  // prompt, sampled continuation (seeded)
};

// Trains and saves. `progress` (optional) receives (step, loss) every 10 steps.
// INVALID_ARGUMENT for inconsistent sizes; errors of reading the corpus or writing
// out_dir pass through.
StatusOr<PretrainReport> Pretrain(const PretrainOptions& options,
                                  const std::function<void(int, double)>& progress = nullptr);

}  // namespace fedge::agent::llm
