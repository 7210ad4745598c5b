// Pretraining the small WordNet Llama (see fedge/agent/llm/pretrain.h).
#include "fedge/agent/llm/pretrain.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "fedge/agent/llm/bpe_tokenizer.h"
#include "fedge/agent/llm/bpe_trainer.h"
#include "fedge/file_util.h"
#include "fedge/log.h"
#include "llama/generate.h"
#include "llama/llama.h"
#include "torch_call.h"

namespace fedge::agent::llm {
namespace {

constexpr const char* kEos = "<|endoftext|>";

// The ChatML Jinja template (what Qwen2 and SmolLM2 ship), so transformers'
// apply_chat_template works on the saved directory.
constexpr const char* kChatMlJinja =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% "
    "endif %}";

std::string CleanLemma(std::string lemma) {
  for (char& c : lemma) {
    if (c == '_') c = ' ';
  }
  // Adjective syntax markers: "long(a)", "galore(ip)", "aforesaid(p)".
  if (auto paren = lemma.find('('); paren != std::string::npos && lemma.back() == ')') lemma.resize(paren);
  return lemma;
}

void InitWeights(LlamaForCausalLm& model, double std_dev, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  const auto names = model->CheckpointNames();
  auto params = model->named_parameters();
  const double layers = static_cast<double>(model->config().num_hidden_layers);
  for (const std::string& name : names) {
    torch::Tensor& p = params[name];
    if (name.find("norm") != std::string::npos) {
      p.fill_(1.0);
    } else if (name.ends_with(".bias")) {
      p.zero_();
    } else {
      // Residual-branch outputs scaled by 1/sqrt(2L) (GPT-2) so depth does not
      // inflate the residual stream at initialisation.
      bool residual_out =
          name.find("o_proj") != std::string::npos || name.find("down_proj") != std::string::npos;
      p.normal_(0.0, residual_out ? std_dev / std::sqrt(2.0 * layers) : std_dev);
    }
  }
}

// Cosine decay over whichever budget runs out first, steps or wall-clock time, so a
// time-bounded run still ends at the low learning rate.
double CosineLr(const PretrainOptions& o, int step, double time_fraction) {
  if (step < o.warmup_steps) return o.learning_rate * (step + 1) / o.warmup_steps;
  double progress = std::min(1.0, double(step - o.warmup_steps) / std::max(1, o.max_steps - o.warmup_steps));
  progress = std::max(progress, std::min(1.0, time_fraction));
  double min_lr = o.learning_rate * o.min_lr_ratio;
  return min_lr + 0.5 * (o.learning_rate - min_lr) * (1.0 + std::cos(M_PI * progress));
}

// Token stream of lines, each preceded by EOS (the document separator).
std::vector<int64_t> EncodeLines(const BpeTokenizer& tok, const std::vector<std::string>& lines,
                                 int32_t eos) {
  std::vector<int64_t> stream;
  for (const std::string& line : lines) {
    stream.push_back(eos);
    for (int32_t id : tok.Encode(line)) stream.push_back(id);
  }
  stream.push_back(eos);
  return stream;
}

torch::Tensor Windows(const std::vector<int64_t>& stream, int64_t batch, int64_t len, std::mt19937_64& rng) {
  torch::Tensor ids = torch::empty({batch, len}, torch::kLong);
  auto acc = ids.accessor<int64_t, 2>();
  std::uniform_int_distribution<size_t> start(0, stream.size() - static_cast<size_t>(len) - 1);
  for (int64_t b = 0; b < batch; ++b) {
    size_t s = start(rng);
    for (int64_t t = 0; t < len; ++t) acc[b][t] = stream[s + static_cast<size_t>(t)];
  }
  return ids;
}

Status WriteSidecars(const std::string& dir, const std::string& tokenizer_json, int32_t eos,
                     const PretrainOptions& o) {
  FEDGE_RETURN_IF_ERROR(WriteFileAtomic(dir + "/tokenizer.json", tokenizer_json));
  nlohmann::json gen = {{"bos_token_id", eos}, {"eos_token_id", eos}, {"pad_token_id", eos},
                        {"do_sample", true},   {"temperature", 0.7},  {"top_p", 0.9},
                        {"max_new_tokens", 64}};
  FEDGE_RETURN_IF_ERROR(WriteFileAtomic(dir + "/generation_config.json", gen.dump(2)));
  nlohmann::json tok = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                        {"bos_token", kEos},
                        {"eos_token", kEos},
                        {"pad_token", kEos},
                        {"unk_token", nullptr},
                        {"add_prefix_space", false},
                        {"model_max_length", o.context},
                        {"chat_template", kChatMlJinja}};
  return WriteFileAtomic(dir + "/tokenizer_config.json", tok.dump(2));
}

}  // namespace

StatusOr<std::vector<std::string>> ReadWordNetGlosses(const std::string& wordnet_dir) {
  std::vector<std::string> lines;
  bool any = false;
  for (const char* pos : {"noun", "verb", "adj", "adv"}) {
    std::ifstream in(wordnet_dir + "/data." + pos);
    if (!in) continue;
    any = true;
    std::string line;
    while (std::getline(in, line)) {
      if (line.starts_with("  ")) continue;  // license header
      size_t bar = line.find(" | ");
      if (bar == std::string::npos) continue;
      // offset lex_filenum ss_type w_cnt word ...
      size_t p = 0;
      for (int field = 0; field < 4 && p != std::string::npos; ++field) p = line.find(' ', p + 1);
      if (p == std::string::npos) continue;
      size_t e = line.find(' ', p + 1);
      std::string gloss = line.substr(bar + 3);
      while (!gloss.empty() && (gloss.back() == ' ' || gloss.back() == '\r')) gloss.pop_back();
      lines.push_back(CleanLemma(line.substr(p + 1, e - p - 1)) + ": " + gloss);
    }
  }
  if (!any)
    return NotFoundError("no WordNet data files (data.noun, ...) in " + wordnet_dir +
                         "; install wordnet-base");
  return lines;
}

StatusOr<PretrainReport> Pretrain(const PretrainOptions& o,
                                  const std::function<void(int, double)>& progress) {
  if (o.out_dir.empty()) return InvalidArgumentError("pretrain: out_dir is required");
  if (o.num_heads % o.num_kv_heads != 0 || o.hidden_size % o.num_heads != 0) {
    return InvalidArgumentError("pretrain: hidden_size must divide by num_heads, num_heads by num_kv_heads");
  }
  if (o.seq_len + 1 > o.context) return InvalidArgumentError("pretrain: seq_len must be below context");
  if (o.num_threads > 0) torch::set_num_threads(o.num_threads);
  PretrainReport report;
  const auto t0 = std::chrono::steady_clock::now();

  FEDGE_ASSIGN_OR_RETURN(std::vector<std::string> lines, ReadWordNetGlosses(o.wordnet_dir));
  std::mt19937_64 rng(o.seed);
  std::shuffle(lines.begin(), lines.end(), rng);
  if (o.max_lines > 0 && static_cast<int64_t>(lines.size()) > o.max_lines)
    lines.resize(static_cast<size_t>(o.max_lines));
  const size_t heldout_n = std::max<size_t>(1, lines.size() / 100);
  std::vector<std::string> heldout(lines.end() - static_cast<std::ptrdiff_t>(heldout_n), lines.end());
  lines.resize(lines.size() - heldout_n);
  report.corpus_lines = static_cast<int64_t>(lines.size());

  BpeTrainOptions bpe_options;
  bpe_options.vocab_size = o.vocab_size;
  FEDGE_ASSIGN_OR_RETURN(std::string tokenizer_json, TrainBpeTokenizer(lines, bpe_options));
  FEDGE_ASSIGN_OR_RETURN(BpeTokenizer tok, BpeTokenizer::FromJson(tokenizer_json));
  const int32_t eos = *tok.TokenToId(kEos);
  const std::vector<int64_t> stream = EncodeLines(tok, lines, eos);
  const std::vector<int64_t> heldout_stream = EncodeLines(tok, heldout, eos);
  report.corpus_tokens = static_cast<int64_t>(stream.size());
  log::Info("pretrain corpus",
            {{"lines", report.corpus_lines}, {"tokens", report.corpus_tokens}, {"vocab", tok.vocab_size()}});
  if (static_cast<int64_t>(stream.size()) <= o.seq_len + 1 ||
      static_cast<int64_t>(heldout_stream.size()) <= o.seq_len + 1) {
    return InvalidArgumentError("pretrain: corpus too small for seq_len");
  }

  LlamaConfig c;
  c.model_type = "llama";
  c.vocab_size = tok.vocab_size();
  c.hidden_size = o.hidden_size;
  c.intermediate_size = o.intermediate_size;
  c.num_hidden_layers = o.num_layers;
  c.num_attention_heads = o.num_heads;
  c.num_key_value_heads = o.num_kv_heads;
  c.head_dim = o.hidden_size / o.num_heads;
  c.max_position_embeddings = o.context;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = true;
  c.bos_token_id = eos;
  c.eos_token_ids = {eos};
  if (auto im_end = tok.TokenToId("<|im_end|>")) c.eos_token_ids.push_back(*im_end);
  report.parameters = c.NumParameters();

  Status trained = TorchCall("pretrain", [&]() -> Status {
    LlamaForCausalLm model(c);
    InitWeights(model, c.initializer_range, o.seed);
    std::vector<torch::Tensor> decay, no_decay;
    auto params = model->named_parameters();
    for (const std::string& name : model->CheckpointNames()) {
      torch::Tensor& p = params[name];
      p.set_requires_grad(true);
      (p.dim() >= 2 ? decay : no_decay).push_back(p);
    }
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(
        decay,
        std::make_unique<torch::optim::AdamWOptions>(
            torch::optim::AdamWOptions(o.learning_rate).betas({0.9, 0.95}).weight_decay(o.weight_decay)));
    groups.emplace_back(
        no_decay, std::make_unique<torch::optim::AdamWOptions>(
                      torch::optim::AdamWOptions(o.learning_rate).betas({0.9, 0.95}).weight_decay(0.0)));
    torch::optim::AdamW optimizer(std::move(groups));
    std::vector<torch::Tensor> all = decay;
    all.insert(all.end(), no_decay.begin(), no_decay.end());

    model->train();
    std::vector<double> losses;
    const auto train_start = std::chrono::steady_clock::now();
    for (int step = 0; step < o.max_steps; ++step) {
      double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (o.max_seconds > 0 && elapsed > o.max_seconds) break;
      if (o.should_stop && o.should_stop()) break;
      for (auto& group : optimizer.param_groups()) {
        double train_budget = o.max_seconds - std::chrono::duration<double>(train_start - t0).count();
        double time_fraction =
            o.max_seconds > 0 && train_budget > 0
                ? std::chrono::duration<double>(std::chrono::steady_clock::now() - train_start).count() /
                      train_budget
                : 0.0;
        static_cast<torch::optim::AdamWOptions&>(group.options()).lr(CosineLr(o, step, time_fraction));
      }
      torch::Tensor ids = Windows(stream, o.batch_size, o.seq_len, rng);
      torch::Tensor loss = CausalLmLoss(model->forward(ids), ids);
      optimizer.zero_grad();
      loss.backward();
      torch::nn::utils::clip_grad_norm_(all, 1.0);
      optimizer.step();
      losses.push_back(loss.item<double>());
      report.steps = step + 1;
      if (progress && (step + 1) % 10 == 0) progress(step + 1, losses.back());
    }
    const double train_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - train_start).count();
    report.tokens_per_second = report.steps * o.batch_size * o.seq_len / std::max(1e-9, train_seconds);
    auto mean = [](auto b, auto e) { return e == b ? 0.0 : std::accumulate(b, e, 0.0) / double(e - b); };
    size_t k = std::min<size_t>(10, losses.size());
    report.first_loss = mean(losses.begin(), losses.begin() + static_cast<std::ptrdiff_t>(k));
    report.final_loss = mean(losses.end() - static_cast<std::ptrdiff_t>(k), losses.end());

    model->eval();
    for (auto& p : model->parameters()) p.set_requires_grad(false);
    {
      torch::InferenceMode guard;
      std::mt19937_64 eval_rng(o.seed + 1);
      double total = 0;
      const int batches = 4;
      for (int b = 0; b < batches; ++b) {
        torch::Tensor ids = Windows(heldout_stream, o.batch_size, o.seq_len, eval_rng);
        total += CausalLmLoss(model->forward(ids), ids).item<double>();
      }
      report.heldout_loss = total / batches;
    }

    FEDGE_RETURN_IF_ERROR(SaveLlama(model, o.out_dir));
    FEDGE_RETURN_IF_ERROR(WriteSidecars(o.out_dir, tokenizer_json, eos, o));

    GenerationOptions gen;
    gen.max_new_tokens = o.sample_tokens;
    gen.sampling = {.temperature = 0.7, .top_k = 0, .top_p = 0.9, .seed = o.seed};
    gen.stop = {"\n"};
    for (const std::string& lemma : o.sample_lemmas) {
      std::vector<int32_t> prompt = {eos};
      for (int32_t id : tok.Encode(lemma + ":")) prompt.push_back(id);
      FEDGE_ASSIGN_OR_RETURN(GenerationResult r, GenerateTokens(model, tok, prompt, c.eos_token_ids, gen));
      report.samples.emplace_back(lemma + ":", r.text);
    }
    return OkStatus();
  });
  if (!trained.ok()) return trained;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace fedge::agent::llm
