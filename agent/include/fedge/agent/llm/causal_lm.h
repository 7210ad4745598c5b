// CausalLm: a Llama-family decoder with its byte-level BPE tokenizer, behind a
// torch-free interface so serving and CLI code compile without libtorch headers.
//
// Loads a Hugging Face directory: config.json (LlamaForCausalLM or
// Qwen2ForCausalLM), model.safetensors (F32/F16/BF16, held as weight_dtype says,
// computed in fp32), tokenizer.json
// (byte-level BPE) and optionally generation_config.json (eos_token_id).
//
// Thread safety: not thread-safe; serve one request at a time per instance (the
// weights are read-only during generation, so instances could share them later).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fedge/agent/llm/chat_template.h"
#include "fedge/agent/llm/generation.h"
#include "fedge/agent/llm/llama_config.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent::llm {

struct CausalLmOptions {
  std::string model_dir;
  int num_threads = 0;  // torch intra-op threads; 0 leaves torch's setting alone
  // Weights the single-token decode step reads while generating: "f32", or "int8"
  // (weight-only int8 copies of every projection and the LM head, one scale per
  // output channel, rebuilt after each LoRA merge; prefill and training stay fp32;
  // docs/models.md has speed and perplexity). "" takes the environment variable
  // FEDGE_DECODE_WEIGHTS, else "f32". Load fails with INVALID_ARGUMENT for another value.
  std::string decode_weights;
  // How the frozen weights are held: "auto" (the checkpoint's own dtype as its
  // config.json declares it: bfloat16 / float16 checkpoints stay 16-bit, half the
  // memory of float32, with unchanged results), "float32", "bfloat16" or "float16"
  // (ResolveWeightDtype). "" takes FEDGE_WEIGHT_DTYPE, else "auto". Compute is
  // float32 either way; a 16-bit model keeps LoRA adapters unmerged.
  std::string weight_dtype;
};

// One prompt/completion pair for the causal-LM loss: only completion tokens are
// predicted (prompt positions are labelled -100).
struct PromptCompletion {
  std::string prompt;
  std::string completion;
};

// LoRA on the decoder's projections (any of q_proj, k_proj, v_proj, o_proj,
// gate_proj, up_proj, down_proj).
struct CausalLmLoraOptions {
  int rank = 8;
  double alpha = 16;
  double dropout = 0.0;
  std::vector<std::string> targets = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                      "gate_proj", "up_proj", "down_proj"};
  uint64_t seed = 42;  // LoRA A initialisation
};

struct CausalLmTrainOptions {
  int steps = 20;
  int batch_size = 8;
  int max_len = 128;  // tokens per example (prompt + completion + EOS)
  double learning_rate = 1e-3;
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;  // 0: no clipping
  double proximal_mu = 0.0;    // FedProx: mu/2 * ||w - w_at_call_start||^2
  uint64_t seed = 0;           // batch sampling and LoRA dropout
};

struct CausalLmTrainResult {
  double mean_loss = 0;
  int steps = 0;
  int64_t tokens_trained = 0;  // completion tokens that carried loss
};

class CausalLm {
 public:
  virtual ~CausalLm() = default;

  // NOT_FOUND for a missing file, INVALID_ARGUMENT / UNIMPLEMENTED for an
  // unsupported architecture or tokenizer, DATA_LOSS for bad weights.
  static StatusOr<std::unique_ptr<CausalLm>> Load(const CausalLmOptions& options);

  virtual const LlamaConfig& config() const = 0;
  virtual const BpeTokenizer& tokenizer() const = 0;
  // The chat format of the model directory's chat template (DetectChatFormat);
  // nullopt for a model without one (a base model).
  virtual std::optional<ChatFormat> chat_format() const = 0;
  // The system message the chat template writes when a conversation has none
  // (ChatDefaultSystem: Qwen2.5's "You are Qwen, created by Alibaba Cloud. ..."); empty
  // if it writes none.
  virtual const std::string& chat_default_system() const = 0;
  // How the chat template takes tools (ChatToolCalling: Qwen2.5's and Qwen3's Hermes
  // format, Llama 3.1 / 3.2's JSON; kNone: it takes none).
  virtual ChatToolFormat chat_tool_format() const = 0;
  virtual const std::vector<int64_t>& eos_token_ids() const = 0;

  // Continues `prompt`, encoded with the tokenizer's BOS (its post_processor's prefix,
  // unless the prompt spells it, as a Llama 3 chat template does). INVALID_ARGUMENT
  // for an empty prompt or one that fills the context.
  virtual StatusOr<GenerationResult> Generate(std::string_view prompt, const GenerationOptions& options,
                                              const TextCallback& on_text = nullptr) = 0;
  virtual StatusOr<GenerationResult> GenerateFromIds(const std::vector<int32_t>& prompt_ids,
                                                     const GenerationOptions& options,
                                                     const TextCallback& on_text = nullptr) = 0;
  // Continuous batching (generation.h): StartGeneration checks and prefills one
  // sequence (GenerateFromIds' errors); StepGenerations advances this instance's
  // unfinished sessions by one token with one batched decode step.
  virtual StatusOr<std::unique_ptr<GenerationSession>> StartGeneration(
      const std::vector<int32_t>& prompt_ids, const GenerationOptions& options,
      const TextCallback& on_text = nullptr) = 0;
  virtual Status StepGenerations(const std::vector<GenerationSession*>& sessions) = 0;

  // Mean next-token cross entropy over the completion tokens of `examples`
  // (each sequence is prompt + completion, truncated to `max_len` tokens).
  virtual StatusOr<double> Loss(const std::vector<PromptCompletion>& examples, int max_len = 256) = 0;

  // Attaches fresh adapters (B = 0: outputs unchanged) and freezes the base model.
  // FAILED_PRECONDITION if already enabled; INVALID_ARGUMENT for an unknown target.
  virtual Status EnableLora(const CausalLmLoraOptions& options) = 0;
  // The adapter parameters, fp32, named as in PEFT's state dict minus the prefix:
  // "model.layers.0.self_attn.q_proj.lora_A" [r, in], "...lora_B" [out, r].
  virtual TensorBundle ExportTrainable() const = 0;
  // Replaces the adapter parameters; INVALID_ARGUMENT (and no change) if names or
  // shapes differ from ExportTrainable()'s or a value is not finite.
  virtual Status ImportTrainable(const TensorBundle& bundle) = 0;
  // `options.steps` AdamW steps on batches sampled (seeded) from `data`; loss on
  // completion tokens only, each completion followed by EOS. Fresh optimizer state
  // per call (one call = one local round). FAILED_PRECONDITION without EnableLora.
  virtual StatusOr<CausalLmTrainResult> Train(const std::vector<PromptCompletion>& data,
                                              const CausalLmTrainOptions& options) = 0;
};

}  // namespace fedge::agent::llm
