#include "fedge/agent/runtime/llm_model.h"

#include <fstream>

#include <nlohmann/json.hpp>

namespace fedge::agent {

namespace {

std::vector<llm::PromptCompletion> ToPairs(const std::vector<Example>& data) {
  std::vector<llm::PromptCompletion> pairs;
  pairs.reserve(data.size());
  for (const Example& e : data) pairs.push_back({e.text, e.completion});
  return pairs;
}

}  // namespace

StatusOr<std::unique_ptr<LlmModel>> LlmModel::Load(const LlmModelOptions& options) {
  llm::CausalLmOptions lo;
  lo.model_dir = options.model_dir;
  lo.num_threads = options.num_threads;
  lo.decode_weights = options.decode_weights;
  lo.weight_dtype = options.weight_dtype;
  FEDGE_ASSIGN_OR_RETURN(std::unique_ptr<llm::CausalLm> lm, llm::CausalLm::Load(lo));
  // Training past the model's context would run positions it never saw.
  const int64_t context = lm->config().max_position_embeddings;
  if (options.max_seq_len > context) {
    return InvalidArgumentError("spec.model.maxSeqLen " + std::to_string(options.max_seq_len) +
                                " exceeds the model's context of " + std::to_string(context) +
                                " tokens (config.json max_position_embeddings): "
                                "lower it to " +
                                std::to_string(context) + " or less");
  }
  Status st = lm->EnableLora(options.lora);
  if (!st.ok()) return st.WithContext("spec.adapter");
  return std::unique_ptr<LlmModel>(new LlmModel(std::move(lm), options.max_seq_len));
}

StatusOr<TrainResult> LlmModel::Train(const std::vector<Example>& data, const TrainOptions& options) {
  if (data.empty()) return FailedPreconditionError("no training examples");
  if (options.step_correction) {
    return InvalidArgumentError(
        "the causal LM has no SCAFFOLD step correction (spec.strategy.name scaffold is for bert "
        "sequence-classification); use another strategy");
  }
  if (options.logit_adjustment > 0) {
    return InvalidArgumentError(
        "the causal LM has no logit-adjusted loss (spec.strategy.logitAdjustment is for bert "
        "sequence-classification); set it to 0");
  }
  if (options.keep_optimizer_state) {
    return InvalidArgumentError(
        "the causal LM starts every local round with a fresh optimizer (spec.rounds.optimizerState keep "
        "and keep-second-moment are for bert sequence-classification); use fresh");
  }
  if (options.restricted_softmax != 1.0) {
    return InvalidArgumentError(
        "the causal LM has no restricted softmax (spec.strategy.restrictedSoftmax is for bert "
        "sequence-classification); set it to 1");
  }
  if (options.restricted_step != 1.0) {
    return InvalidArgumentError(
        "the causal LM has no classifier head to restrict (spec.strategy.restrictedStep is for bert "
        "sequence-classification); set it to 1");
  }
  llm::CausalLmTrainOptions to;
  to.steps = options.steps;
  to.batch_size = options.batch_size;
  to.max_len = max_seq_len_;
  to.learning_rate = options.learning_rate;
  to.weight_decay = options.weight_decay;
  to.max_grad_norm = options.max_grad_norm;
  to.proximal_mu = options.proximal_mu;
  to.seed = options.seed;
  FEDGE_ASSIGN_OR_RETURN(llm::CausalLmTrainResult r, lm_->Train(ToPairs(data), to));
  TrainResult out;
  out.mean_loss = r.mean_loss;
  out.steps = r.steps;
  out.examples_seen = static_cast<int64_t>(r.steps) * options.batch_size;
  return out;
}

StatusOr<EvalResult> LlmModel::Evaluate(const std::vector<Example>& data, int /*batch_size*/) {
  EvalResult out;
  if (data.empty()) return out;
  FEDGE_ASSIGN_OR_RETURN(out.mean_loss, lm_->Loss(ToPairs(data), max_seq_len_));
  out.num_examples = static_cast<int64_t>(data.size());
  return out;
}

int LlmModel::CountTokens(const std::string& text) const {
  return static_cast<int>(lm_->tokenizer().Encode(text, {.add_special_tokens = true}).size());
}

StatusOr<std::vector<Example>> LoadPromptCompletions(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot open " + path);
  std::vector<Example> out;
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::string where = path + ":" + std::to_string(n);
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) return InvalidArgumentError(where + ": not a JSON object");
    auto prompt = j.find("prompt");
    auto completion = j.find("completion");
    if (prompt == j.end() || !prompt->is_string())
      return InvalidArgumentError(where + ": \"prompt\" must be a string");
    if (completion == j.end() || !completion->is_string() || completion->get<std::string>().empty())
      return InvalidArgumentError(where + ": \"completion\" must be a non-empty string");
    Example e;
    e.text = prompt->get<std::string>();
    e.completion = completion->get<std::string>();
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace fedge::agent
