// Text generation options and results, and the token sampler (torch-free).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace fedge::agent::llm {

class JsonSchema;  // json_schema.h

struct SamplingOptions {
  double temperature = 1.0;  // <= 0: greedy (argmax; the lowest id on ties)
  int top_k = 0;             // 0: off; else keep the k most likely tokens (ties at the k-th kept)
  double top_p = 1.0;        // < 1: keep the smallest most-likely set with mass >= top_p
  uint64_t seed = 0;         // same seed, same model, same prompt -> same tokens
};

// Chooses next tokens from logits. Applies temperature, then top-k, then top-p (the
// order transformers' generate uses), then draws from the renormalised softmax with
// a mt19937_64 seeded by `seed` (mt19937_64's output is fixed by the standard, and
// the uniform draw is computed here, so results are identical across platforms).
// Not thread-safe: one sampler per generation.
class TokenSampler {
 public:
  explicit TokenSampler(const SamplingOptions& options);
  // `logits` is one row over the vocabulary; it is used as scratch space.
  int32_t Sample(std::vector<float>& logits);

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;
};

enum class FinishReason { kStop, kLength, kCancelled };
// "stop" | "length" (OpenAI's finish_reason values) | "cancelled" (ended by
// GenerationOptions::cancelled; nobody is left to read it).
std::string_view FinishReasonName(FinishReason reason);

struct GenerationOptions {
  int max_new_tokens = 128;
  SamplingOptions sampling;
  // Generation ends when the text contains one of these; the text is cut before it.
  // Special tokens are not text: end on them through EOS ids instead.
  std::vector<std::string> stop;
  // End at the model's EOS token(s) (config.json / generation_config.json).
  bool stop_at_eos = true;
  // Drop one space at the start of the text: a chat reply's first SentencePiece word
  // carries its word marker (" Hello" after Llama 2's [/INST]), which tokenizers'
  // decode strips (BpeTokenizer::StripsLeadingSpace).
  bool strip_leading_space = false;
  // JSON mode (response_format {"type": "json_object"}): each token is sampled from
  // those that keep the text a prefix of a JSON object, and generation may end (EOS)
  // only once the object is closed (JsonConstraint, json_grammar.h). A reply cut by
  // max_new_tokens or the context is an unfinished object.
  bool json_object = false;
  // Structured outputs (response_format {"type": "json_schema"}): as JSON mode, with
  // the object one this compiled schema accepts (CompileJsonSchema, json_schema.h).
  // Takes precedence over json_object.
  std::shared_ptr<const JsonSchema> json_schema;
  // Optional. Polled before each decode step; once it returns true generation ends
  // there with FinishReason::kCancelled (e.g. the client of a stream went away).
  // Called on the generating thread.
  std::function<bool()> cancelled;
  // Optional. Called on the generating thread once per generated token, in order,
  // right after it is sampled and before its text is emitted (EOS is not a
  // generated token: not reported). For timings (time to first token, inter-token
  // latency); it must not throw.
  std::function<void(int32_t id)> on_token;
};

struct GenerationResult {
  std::string text;  // generated text only, valid UTF-8, stop string removed,
                     // special tokens (e.g. <|im_end|>) left out

  std::vector<int32_t> token_ids;  // generated ids (EOS excluded)
  FinishReason finish_reason = FinishReason::kLength;
  int64_t prompt_tokens = 0;
};

// One sequence generated a token per step, so that the serving scheduler can
// advance many of them with one batched decode step (continuous batching). Made by
// CausalLm::StartGeneration (prompt checks, prefill, first token sampled) and
// advanced by CausalLm::StepGenerations; a session behaves exactly like one
// CausalLm::GenerateFromIds call with the same arguments (sampling, EOS, stop
// strings, max_new_tokens, the context limit, GenerationOptions::cancelled polled
// before each step, on_token, and the TextCallback given at the start). It holds
// its own KV cache (released when it ends). Not thread-safe: a session is used by
// one thread at a time, and only with the model instance that made it.
class GenerationSession {
 public:
  virtual ~GenerationSession() = default;
  // True once generation ended: result() is final and the text callback has
  // received all of the text.
  virtual bool done() const = 0;
  // What has been generated so far (text only once done()).
  virtual const GenerationResult& result() const = 0;
  // The model instance whose StepGenerations may advance this session (nullptr
  // for sessions no model made, e.g. test fakes). A model checks it before it
  // treats the session as its own.
  const void* owner() const { return owner_; }

 protected:
  GenerationSession() = default;
  explicit GenerationSession(const void* owner) : owner_(owner) {}

 private:
  const void* owner_ = nullptr;
};

// Receives generated text as it becomes final: complete UTF-8 characters that can
// no longer turn out to be part of a stop string. The concatenation of all deltas
// equals GenerationResult::text.
using TextCallback = std::function<void(std::string_view delta)>;

}  // namespace fedge::agent::llm
