// Helpers shared by the Llama decode tests: kernel ISA selection and small random
// models whose shapes exercise the kernels' edge cases.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "llama/llama.h"
#include "llama/llama_decode.h"

namespace fedge::agent::llm::testing {

// Restores auto-detected kernels when a test that forces an ISA ends.
class IsaGuard {
 public:
  IsaGuard() : saved_(decode::KernelIsa()) {}
  ~IsaGuard() { decode::ForceKernelIsa(saved_); }

 private:
  std::string saved_;
};

// The kernel ISAs this CPU can run, plainest first.
inline std::vector<std::string> AvailableIsas() {
  IsaGuard guard;
  std::vector<std::string> out;
  for (const char* isa : {"scalar", "avx2", "avx512", "avx512vnni"}) {
    if (decode::ForceKernelIsa(isa)) out.push_back(isa);
  }
  return out;
}

// Two layers, grouped-query attention. Not `even`: shapes off the kernels' 4-row
// and 16-column steps (hidden 72, vocab 301); `even`: 64-column multiples (hidden
// 128, vocab 320) so int8 takes the VNNI path. `qkv_bias`: q/k/v biases (Qwen2).
inline LlamaConfig DecodeTestConfig(bool even, bool tied, bool qkv_bias) {
  LlamaConfig c;
  c.vocab_size = even ? 320 : 301;
  c.hidden_size = even ? 128 : 72;
  c.intermediate_size = even ? 256 : 200;
  c.num_hidden_layers = 2;
  c.num_attention_heads = even ? 4 : 6;
  c.num_key_value_heads = 2;
  c.head_dim = even ? 32 : 12;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = tied;
  c.qkv_bias = qkv_bias;
  return c;
}

// A model of `c` with N(0, 0.1) weights from `seed`, RMSNorm weights near 1 as in
// trained models; in eval mode.
inline LlamaForCausalLm RandomModel(const LlamaConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  LlamaForCausalLm model(c);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) p.normal_(0, 0.1);
  for (auto& p : model->named_parameters()) {
    if (p.key().find("norm") != std::string::npos) p.value().uniform_(0.8, 1.2);
  }
  model->eval();
  return model;
}

}  // namespace fedge::agent::llm::testing
