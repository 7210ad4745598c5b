// CausalLm (fedge/agent/llm/causal_lm.h) over the libtorch Llama.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "fedge/agent/llm/causal_lm.h"
#include "fedge/agent/llm/tool_calls.h"
#include "fedge/file_util.h"
#include "llama/generate.h"
#include "llama/llama.h"
#include "llama/llama_data.h"
#include "peft/lora_targets.h"
#include "torch_call.h"
#include "train/local_step.h"

namespace fedge::agent::llm {
namespace {

// eos_token_id of generation_config.json, if the file exists and has one.
StatusOr<std::vector<int64_t>> ReadGenerationEos(const std::string& dir) {
  std::vector<int64_t> eos;
  std::string path = dir + "/generation_config.json";
  if (!std::filesystem::exists(path)) return eos;
  FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  try {
    nlohmann::json j = nlohmann::json::parse(text);
    if (j.contains("eos_token_id")) {
      const auto& e = j["eos_token_id"];
      if (e.is_number_integer()) eos.push_back(e.get<int64_t>());
      if (e.is_array()) {
        for (const auto& x : e) eos.push_back(x.get<int64_t>());
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(path + ": " + e.what());
  }
  return eos;
}

class TorchCausalLm final : public CausalLm {
 public:
  TorchCausalLm(LlamaForCausalLm model, BpeTokenizer tokenizer, std::vector<int64_t> eos,
                std::optional<ChatFormat> chat_format, std::string chat_default_system,
                ChatToolFormat chat_tool_format)
      : model_(std::move(model)),
        tokenizer_(std::move(tokenizer)),
        eos_(std::move(eos)),
        chat_format_(chat_format),
        chat_default_system_(std::move(chat_default_system)),
        chat_tool_format_(chat_tool_format) {}

  const LlamaConfig& config() const override { return model_->config(); }
  const BpeTokenizer& tokenizer() const override { return tokenizer_; }
  std::optional<ChatFormat> chat_format() const override { return chat_format_; }
  const std::string& chat_default_system() const override { return chat_default_system_; }
  ChatToolFormat chat_tool_format() const override { return chat_tool_format_; }
  const std::vector<int64_t>& eos_token_ids() const override { return eos_; }

  StatusOr<GenerationResult> Generate(std::string_view prompt, const GenerationOptions& options,
                                      const TextCallback& on_text) override {
    return GenerateFromIds(tokenizer_.Encode(prompt, {.add_special_tokens = true}), options, on_text);
  }

  StatusOr<GenerationResult> GenerateFromIds(const std::vector<int32_t>& prompt_ids,
                                             const GenerationOptions& options,
                                             const TextCallback& on_text) override {
    SetMerged(true);  // one GEMM per projection while serving
    return GenerateTokens(model_, tokenizer_, prompt_ids, eos_, options, on_text);
  }
  StatusOr<std::unique_ptr<GenerationSession>> StartGeneration(const std::vector<int32_t>& prompt_ids,
                                                               const GenerationOptions& options,
                                                               const TextCallback& on_text) override {
    SetMerged(true);
    return StartGenerationSession(model_, tokenizer_, prompt_ids, eos_, options, on_text);
  }
  Status StepGenerations(const std::vector<GenerationSession*>& sessions) override {
    return StepGenerationSessions(model_, sessions);
  }

  Status EnableLora(const CausalLmLoraOptions& options) override {
    if (lora_enabled_) return FailedPreconditionError("LoRA is already enabled");
    // PEFT's suffix rule (peft/lora_targets.h): "q_proj" and "self_attn.q_proj"
    // both adapt every layer's query projection.
    std::vector<std::string> names;
    for (auto& [name, proj] : model_->Projections()) names.push_back(name);
    Status matched =
        MatchLoraTargets(names, options.targets,
                         "Llama projections: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                         "down_proj, or a longer suffix such as self_attn.q_proj")
            .status();
    if (!matched.ok()) return matched;
    if (options.rank <= 0) return InvalidArgumentError("LoRA rank must be positive");
    FEDGE_RETURN_IF_ERROR(TorchCall("enable LoRA", [&]() -> Status {
      model_->EnableLora(options.targets,
                         {.rank = options.rank, .alpha = options.alpha, .dropout = options.dropout},
                         options.seed);
      return OkStatus();
    }));
    lora_enabled_ = true;
    return OkStatus();
  }

  TensorBundle ExportTrainable() const override {
    TensorBundle bundle;
    for (const auto& p : model_->named_parameters()) {
      if (!p.value().requires_grad()) continue;
      torch::Tensor t = p.value().detach().contiguous();
      NamedTensor nt;
      nt.name = p.key();
      nt.shape.assign(t.sizes().begin(), t.sizes().end());
      nt.values.assign(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
      bundle.tensors.push_back(std::move(nt));
    }
    return bundle;
  }

  Status ImportTrainable(const TensorBundle& bundle) override {
    FEDGE_RETURN_IF_ERROR(CheckSameLayout(ExportTrainable(), bundle));
    for (const NamedTensor& t : bundle.tensors) {
      for (float v : t.values) {
        if (!std::isfinite(v)) return InvalidArgumentError("tensor " + t.name + " has a non-finite value");
      }
    }
    SetMerged(false);
    torch::NoGradGuard no_grad;
    auto params = model_->named_parameters();
    for (const NamedTensor& t : bundle.tensors) {
      params[t.name].copy_(torch::from_blob(const_cast<float*>(t.values.data()), t.shape, torch::kFloat));
    }
    return OkStatus();
  }

  StatusOr<CausalLmTrainResult> Train(const std::vector<PromptCompletion>& data,
                                      const CausalLmTrainOptions& options) override {
    if (!lora_enabled_) return FailedPreconditionError("train: call EnableLora first");
    if (data.empty()) return InvalidArgumentError("train: no examples");
    if (options.batch_size <= 0 || options.steps < 0)
      return InvalidArgumentError("train: bad steps or batch size");
    TrainOptions round_options;
    round_options.learning_rate = options.learning_rate;
    round_options.weight_decay = options.weight_decay;
    round_options.max_grad_norm = options.max_grad_norm;
    round_options.proximal_mu = options.proximal_mu;
    FEDGE_RETURN_IF_ERROR(ValidateLocalRound(round_options, "train"));
    return TorchCall(
        "train",
        [&]() -> StatusOr<CausalLmTrainResult> {
          CausalLmTrainResult result;
          SetMerged(false);
          std::vector<torch::Tensor> params;
          std::vector<std::string> names;
          for (auto& p : model_->named_parameters()) {
            if (p.value().requires_grad()) {
              params.push_back(p.value());
              names.push_back(p.key());
            }
          }
          LocalRound round(std::move(params), std::move(names), round_options);
          FEDGE_RETURN_IF_ERROR(round.Start());
          std::mt19937_64 rng(options.seed);
          uint64_t dropout_seed = options.seed;
          for (auto& [name, proj] : model_->Projections()) proj->SeedDropout(++dropout_seed);
          std::uniform_int_distribution<size_t> pick(0, data.size() - 1);
          const int64_t eos = eos_.empty() ? -1 : eos_[0];
          model_->train();
          double total = 0;
          for (int step = 0; step < options.steps; ++step) {
            std::vector<PromptCompletion> batch_examples;
            for (int i = 0; i < options.batch_size; ++i) batch_examples.push_back(data[pick(rng)]);
            CausalLmBatch batch = MakeCausalLmBatch(tokenizer_, batch_examples, options.max_len, eos);
            torch::Tensor loss = CausalLmLoss(model_->forward(batch.input_ids), batch.labels);
            StatusOr<double> l = round.Step(loss, step);
            if (!l.ok()) {
              model_->eval();
              return l.status();
            }
            total += *l;
            result.tokens_trained +=
                (batch.labels.narrow(1, 1, batch.labels.size(1) - 1) != kIgnoreIndex).sum().item<int64_t>();
            ++result.steps;
          }
          model_->eval();
          result.mean_loss = result.steps > 0 ? total / result.steps : 0;
          return result;
        },
        [&] { model_->eval(); });
  }

  StatusOr<double> Loss(const std::vector<PromptCompletion>& examples, int max_len) override {
    if (examples.empty()) return InvalidArgumentError("loss: no examples");
    return TorchCall("loss", [&]() -> StatusOr<double> {
      torch::InferenceMode guard;
      CausalLmBatch batch = MakeCausalLmBatch(tokenizer_, examples, max_len, eos_.empty() ? -1 : eos_[0]);
      if ((batch.labels.narrow(1, 1, batch.labels.size(1) - 1) != kIgnoreIndex).sum().item<int64_t>() == 0) {
        return InvalidArgumentError("loss: no completion tokens within max_len");
      }
      return CausalLmLoss(model_->forward(batch.input_ids), batch.labels).item<double>();
    });
  }

 private:
  // Merging folds B·A into the frozen weights for serving; training and imports
  // work on the unmerged weights (Unmerge restores them exactly).
  void SetMerged(bool merged) {
    if (!lora_enabled_ || merged == merged_) return;
    for (auto& [name, proj] : model_->Projections()) {
      if (merged) {
        proj->Merge();
      } else {
        proj->Unmerge();
      }
    }
    merged_ = merged;
  }

  LlamaForCausalLm model_;
  BpeTokenizer tokenizer_;
  std::vector<int64_t> eos_;
  std::optional<ChatFormat> chat_format_;
  std::string chat_default_system_;
  ChatToolFormat chat_tool_format_ = ChatToolFormat::kNone;
  bool lora_enabled_ = false;
  bool merged_ = false;
};

}  // namespace

StatusOr<std::unique_ptr<CausalLm>> CausalLm::Load(const CausalLmOptions& options) {
  std::string weights = options.decode_weights;
  if (weights.empty()) {
    const char* env = std::getenv("FEDGE_DECODE_WEIGHTS");
    weights = env != nullptr && *env != '\0' ? env : "f32";
  }
  if (weights != "f32" && weights != "int8") {
    return InvalidArgumentError("decode weights '" + weights +
                                "' are not supported: use f32 or int8 (option decode_weights or "
                                "FEDGE_DECODE_WEIGHTS)");
  }
  std::string weight_dtype = options.weight_dtype;
  if (weight_dtype.empty()) {
    const char* env = std::getenv("FEDGE_WEIGHT_DTYPE");
    weight_dtype = env != nullptr && *env != '\0' ? env : "auto";
  }
  if (options.num_threads > 0) torch::set_num_threads(options.num_threads);
  FEDGE_ASSIGN_OR_RETURN(LlamaForCausalLm model, LoadLlama(options.model_dir, weight_dtype));
  model->set_decode_kernel(weights == "int8" ? DecodeKernel::kInt8 : DecodeKernel::kF32);
  FEDGE_ASSIGN_OR_RETURN(BpeTokenizer loaded, BpeTokenizer::Load(options.model_dir + "/tokenizer.json"));
  FEDGE_ASSIGN_OR_RETURN(BpeTokenizer tokenizer, ApplyTokenizerConfig(loaded, options.model_dir));
  if (tokenizer.vocab_size() > model->config().vocab_size) {
    return InvalidArgumentError(
        options.model_dir + ": tokenizer.json has " + std::to_string(tokenizer.vocab_size()) +
        " tokens but config.json's vocab_size is " + std::to_string(model->config().vocab_size));
  }
  FEDGE_ASSIGN_OR_RETURN(std::vector<int64_t> eos, ReadGenerationEos(options.model_dir));
  for (int64_t id : model->config().eos_token_ids) {
    if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);
  }
  FEDGE_ASSIGN_OR_RETURN(std::string chat_template, ReadChatTemplate(options.model_dir));
  const std::optional<ChatFormat> chat_format = DetectChatFormat(tokenizer, chat_template);
  // A chat model's end-of-turn token (Gemma's <end_of_turn>, Phi-3's <|end|>) ends
  // generation even when generation_config.json does not list it: as a special
  // token it is never decoded into text, so the chat endpoint's stop string would
  // not see it.
  if (chat_format) {
    if (auto end = tokenizer.TokenToId(std::string(ChatEndOfTurn(*chat_format)))) {
      if (std::find(eos.begin(), eos.end(), *end) == eos.end()) eos.push_back(*end);
    }
  }
  return std::unique_ptr<CausalLm>(std::make_unique<TorchCausalLm>(
      std::move(model), std::move(tokenizer), std::move(eos), chat_format,
      chat_format ? ChatDefaultSystem(*chat_format, chat_template) : "",
      chat_format ? ChatToolCalling(*chat_format, chat_template) : ChatToolFormat::kNone));
}

}  // namespace fedge::agent::llm
