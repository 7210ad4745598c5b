// BertTextClassifier: TextClassifier over a frozen BERT encoder with LoRA
// adapters and a linear head on the mean-pooled last hidden state.
//
// Why mean pooling: all-MiniLM-L6-v2 was trained (sentence-transformers) with
// mean pooling and ships no trained pooler, so the mean of the token states is
// the representation the checkpoint actually learnt; the [CLS] pooler of
// BertForSequenceClassification would start from untrained weights.
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <unordered_map>
#include <unordered_set>

#include "bert/bert.h"
#include "fedge/agent/text_classifier.h"
#include "fedge/agent/wordpiece_tokenizer.h"
#include "fedge/log.h"
#include "fedge/safetensors.h"
#include "peft/lora.h"
#include "shape_string.h"
#include "torch_call.h"
#include "train/local_step.h"

namespace fedge::agent {
namespace {

constexpr int kInferenceBatch = 32;

class BertTextClassifier final : public TextClassifier {
 public:
  BertTextClassifier(ClassifierOptions options, WordPieceTokenizer tokenizer, BertModel bert)
      : options_(std::move(options)), tokenizer_(std::move(tokenizer)), bert_(std::move(bert)) {}

  // Attaches LoRA to the targets and creates the head, all from init_seed.
  Status Init() {
    torch::Generator gen = at::detail::createCPUGenerator(options_.init_seed);
    if (options_.lora_rank > 0) {
      LoraOptions lora{options_.lora_rank, options_.lora_alpha, options_.lora_dropout};
      FEDGE_ASSIGN_OR_RETURN(auto selected, bert_->SelectLoraTargets(options_.lora_targets));
      for (auto& [name, linear] : selected) linear->EnableLora(lora, gen);
    }
    const int64_t hidden = bert_->options().hidden_size;
    const int64_t num_labels = static_cast<int64_t>(options_.labels.size());
    // Hugging Face's BertForSequenceClassification init: N(0, initializer_range), bias 0.
    torch::NoGradGuard no_grad;
    head_weight_ = torch::empty({num_labels, hidden});
    head_weight_.normal_(0.0, bert_->options().initializer_range, gen);
    head_bias_ = torch::zeros({num_labels});
    head_weight_.set_requires_grad(true);
    head_bias_.set_requires_grad(true);

    // Trainable order: encoder adapters in module order, then the head.
    for (auto& [name, linear] : bert_->Linears()) {
      if (!linear->has_lora()) continue;
      lora_modules_.push_back(linear);
      if (options_.lora_frozen_a) {
        linear->FreezeA(
            FrozenLoraA(options_.init_seed, name, linear->lora_A().size(0), linear->lora_A().size(1)));
      } else {
        trainable_.push_back({name + ".lora_A", linear->lora_A()});
      }
      trainable_.push_back({name + ".lora_B", linear->lora_B()});
    }
    trainable_.push_back({"classifier.weight", head_weight_});
    trainable_.push_back({"classifier.bias", head_bias_});
    bert_->eval();
    return OkStatus();
  }

  const std::vector<std::string>& labels() const override { return options_.labels; }
  int dimensions() const override { return static_cast<int>(bert_->options().hidden_size); }

  TensorBundle ExportTrainable() const override {
    TensorBundle bundle;
    for (const auto& [name, tensor] : trainable_) {
      torch::Tensor t = tensor.detach().contiguous();
      NamedTensor nt;
      nt.name = name;
      nt.shape = t.sizes().vec();
      nt.values.assign(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
      bundle.tensors.push_back(std::move(nt));
    }
    return bundle;
  }

  Status ImportTrainable(const TensorBundle& bundle) override {
    // Validate everything first so an error leaves the model unchanged.
    if (bundle.tensors.size() != trainable_.size()) {
      return InvalidArgumentError("trainable bundle has " + std::to_string(bundle.tensors.size()) +
                                  " tensors, the model expects " + std::to_string(trainable_.size()) +
                                  " (LoRA rank/targets or labels differ?)");
    }
    std::vector<const NamedTensor*> sources;
    for (const auto& [name, tensor] : trainable_) {
      const NamedTensor* src = bundle.Find(name);
      if (src == nullptr) return InvalidArgumentError("trainable bundle lacks tensor '" + name + "'");
      if (src->shape != tensor.sizes().vec()) {
        return InvalidArgumentError("trainable tensor '" + name + "' has shape " + ShapeString(src->shape) +
                                    ", the model expects " + ShapeString(tensor.sizes().vec()));
      }
      if (static_cast<int64_t>(src->values.size()) != tensor.numel()) {
        return InvalidArgumentError("trainable tensor '" + name + "' has " +
                                    std::to_string(src->values.size()) + " values for shape " +
                                    ShapeString(src->shape));
      }
      for (float v : src->values) {
        if (!std::isfinite(v))
          return InvalidArgumentError("trainable tensor '" + name + "' has a non-finite value");
      }
      sources.push_back(src);
    }
    return TorchCall("ImportTrainable", [&]() -> Status {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < trainable_.size(); ++i) {
        torch::Tensor& dst = trainable_[i].second;
        dst.copy_(
            torch::from_blob(const_cast<float*>(sources[i]->values.data()), dst.sizes(), torch::kFloat));
      }
      return OkStatus();
    });
  }

  StatusOr<TrainResult> Train(const std::vector<Example>& data, const TrainOptions& opt) override {
    if (data.empty()) return InvalidArgumentError("Train: no examples");
    if (opt.steps <= 0 || opt.batch_size <= 0) {
      return InvalidArgumentError("Train: steps and batch_size must be positive");
    }
    FEDGE_RETURN_IF_ERROR(ValidateLocalRound(opt, "Train"));
    FEDGE_RETURN_IF_ERROR(CheckLabels(data, "Train"));
    return TorchCall("Train", [&]() -> StatusOr<TrainResult> { return TrainImpl(data, opt); });
  }

  StatusOr<EvalResult> Evaluate(const std::vector<Example>& data, int batch_size) override {
    if (batch_size <= 0) return InvalidArgumentError("Evaluate: batch_size must be positive");
    FEDGE_RETURN_IF_ERROR(CheckLabels(data, "Evaluate"));
    return TorchCall("Evaluate", [&]() -> StatusOr<EvalResult> {
      torch::set_num_threads(options_.num_threads);
      torch::InferenceMode guard;
      EvalResult r;
      double loss_sum = 0;
      for (size_t begin = 0; begin < data.size(); begin += static_cast<size_t>(batch_size)) {
        size_t end = std::min(data.size(), begin + static_cast<size_t>(batch_size));
        std::vector<std::string> texts;
        std::vector<int64_t> labels;
        for (size_t i = begin; i < end; ++i) {
          texts.push_back(data[i].text);
          labels.push_back(data[i].label);
        }
        torch::Tensor target = torch::tensor(labels, torch::kLong);
        torch::Tensor logits = Logits(texts);
        loss_sum +=
            torch::nn::functional::cross_entropy(
                logits, target, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
        r.num_correct += (logits.argmax(1) == target).sum().item<int64_t>();
        r.num_examples += static_cast<int64_t>(end - begin);
      }
      if (r.num_examples > 0) {
        r.mean_loss = loss_sum / static_cast<double>(r.num_examples);
        r.accuracy = static_cast<double>(r.num_correct) / static_cast<double>(r.num_examples);
      }
      return r;
    });
  }

  StatusOr<std::vector<Prediction>> Classify(const std::vector<std::string>& texts) override {
    return TorchCall("Classify", [&]() -> StatusOr<std::vector<Prediction>> {
      torch::set_num_threads(options_.num_threads);
      torch::InferenceMode guard;
      std::vector<Prediction> out;
      out.reserve(texts.size());
      ForEachBatch(texts, [&](const std::vector<std::string>& batch) {
        torch::Tensor probs = torch::softmax(Logits(batch), 1).contiguous();
        for (int64_t i = 0; i < probs.size(0); ++i) {
          Prediction p;
          const float* row = probs[i].data_ptr<float>();
          p.probabilities.assign(row, row + probs.size(1));
          p.label = static_cast<int>(probs[i].argmax().item<int64_t>());
          out.push_back(std::move(p));
        }
      });
      return out;
    });
  }

  StatusOr<std::vector<std::vector<float>>> Embed(const std::vector<std::string>& texts) override {
    return TorchCall("Embed", [&]() -> StatusOr<std::vector<std::vector<float>>> {
      torch::set_num_threads(options_.num_threads);
      torch::InferenceMode guard;
      std::vector<std::vector<float>> out;
      out.reserve(texts.size());
      ForEachBatch(texts, [&](const std::vector<std::string>& batch) {
        torch::Tensor emb = torch::nn::functional::normalize(
                                Pooled(batch), torch::nn::functional::NormalizeFuncOptions().p(2).dim(1))
                                .contiguous();
        for (int64_t i = 0; i < emb.size(0); ++i) {
          const float* row = emb[i].data_ptr<float>();
          out.emplace_back(row, row + emb.size(1));
        }
      });
      return out;
    });
  }

  int CountTokens(const std::string& text) const override {
    return static_cast<int>(tokenizer_.Encode(text, /*max_len=*/0).size());
  }

 private:
  Status CheckLabels(const std::vector<Example>& data, const char* what) const {
    for (size_t i = 0; i < data.size(); ++i) {
      if (data[i].label < 0 || data[i].label >= static_cast<int>(options_.labels.size())) {
        return InvalidArgumentError(std::string(what) + ": example " + std::to_string(i) + " has label " +
                                    std::to_string(data[i].label) + ", expected 0.." +
                                    std::to_string(options_.labels.size() - 1));
      }
    }
    return OkStatus();
  }

  template <typename Fn>
  void ForEachBatch(const std::vector<std::string>& texts, Fn&& fn) {
    for (size_t begin = 0; begin < texts.size(); begin += kInferenceBatch) {
      size_t end = std::min(texts.size(), begin + kInferenceBatch);
      fn(std::vector<std::string>(texts.begin() + static_cast<std::ptrdiff_t>(begin),
                                  texts.begin() + static_cast<std::ptrdiff_t>(end)));
    }
  }

  // Mean-pooled last hidden state [B, H], padded to the batch's longest text.
  torch::Tensor Pooled(const std::vector<std::string>& texts) {
    EncodedBatch enc = tokenizer_.EncodeBatch(texts, options_.max_seq_len);
    torch::Tensor ids =
        torch::from_blob(enc.input_ids.data(), {enc.batch_size, enc.seq_len}, torch::kLong).clone();
    torch::Tensor mask =
        torch::from_blob(enc.attention_mask.data(), {enc.batch_size, enc.seq_len}, torch::kLong).clone();
    return MeanPool(bert_(ids, mask), mask);
  }

  torch::Tensor Logits(const std::vector<std::string>& texts) {
    return torch::linear(Pooled(texts), head_weight_, head_bias_);
  }

  StatusOr<TrainResult> TrainImpl(const std::vector<Example>& data, const TrainOptions& opt) {
    torch::set_num_threads(options_.num_threads);
    std::vector<torch::Tensor> params;
    std::vector<std::string> names;
    for (auto& [name, t] : trainable_) {
      params.push_back(t);
      names.push_back(name);
    }
    LocalRound round(std::move(params), std::move(names), opt);
    // optimizerState keep: continue the previous round's AdamW; a failed round drops it.
    std::unique_ptr<torch::optim::AdamW> kept = std::move(kept_optimizer_);
    FEDGE_RETURN_IF_ERROR(round.Start(opt.keep_optimizer_state ? std::move(kept) : nullptr));

    // Seeded epoch-wise sampling without replacement: every example is seen once
    // per pass; the permutation is redrawn for each pass.
    std::mt19937_64 rng(opt.seed);
    std::vector<size_t> order(data.size());
    size_t cursor = order.size();
    auto next_index = [&] {
      if (cursor == order.size()) {
        for (size_t i = 0; i < order.size(); ++i) order[i] = i;
        for (size_t i = order.size() - 1; i > 0; --i) {
          std::swap(order[i], order[static_cast<size_t>(rng() % (i + 1))]);
        }
        cursor = 0;
      }
      return order[cursor++];
    };
    for (size_t i = 0; i < lora_modules_.size(); ++i) {
      lora_modules_[i]->SeedDropout(opt.seed * 0x9E3779B97F4A7C15ull + i + 1);
    }

    // Logit adjustment, the restricted softmax and the restricted step: from the
    // labels of this agent's own training data (they stay here).
    torch::Tensor shift, scale;
    if (opt.logit_adjustment > 0 || opt.restricted_softmax != 1.0 || opt.restricted_step != 1.0) {
      std::vector<int64_t> all_labels;
      all_labels.reserve(data.size());
      for (const Example& ex : data) all_labels.push_back(ex.label);
      const auto classes = static_cast<int64_t>(options_.labels.size());
      if (opt.logit_adjustment > 0) shift = LogitAdjustment(all_labels, classes, opt.logit_adjustment);
      scale = RestrictedSoftmaxScale(all_labels, classes, opt.restricted_softmax);
      // The head's rows of absent classes (weight rows and bias entries; with
      // restricted_step_below also of classes that rare) step r times as far.
      if (opt.restricted_step != 1.0) {
        const torch::Tensor rows =
            RestrictedStepRows(all_labels, classes, opt.restricted_step, opt.restricted_step_below);
        FEDGE_RETURN_IF_ERROR(round.ScaleRowSteps("classifier.weight", rows));
        FEDGE_RETURN_IF_ERROR(round.ScaleRowSteps("classifier.bias", rows));
      }
    }

    const size_t batch = std::min(static_cast<size_t>(opt.batch_size), data.size());
    TrainResult result;
    double loss_sum = 0;
    bert_->train();
    for (int step = 0; step < opt.steps; ++step) {
      std::vector<std::string> texts;
      std::vector<int64_t> labels;
      for (size_t i = 0; i < batch; ++i) {
        const Example& ex = data[next_index()];
        texts.push_back(ex.text);
        labels.push_back(ex.label);
      }
      torch::Tensor loss = LogitAdjustedCrossEntropy(RestrictLogits(Logits(texts), scale),
                                                     torch::tensor(labels, torch::kLong), shift);
      StatusOr<double> l = round.Step(loss, step);
      if (!l.ok()) {
        bert_->eval();
        return l.status();
      }
      loss_sum += *l;
      result.examples_seen += static_cast<int64_t>(batch);
      ++result.steps;
    }
    bert_->eval();
    if (opt.keep_optimizer_state) kept_optimizer_ = round.ReleaseOptimizer();
    result.mean_loss = loss_sum / result.steps;
    return result;
  }

  ClassifierOptions options_;
  WordPieceTokenizer tokenizer_;
  BertModel bert_;
  std::vector<LoraLinear> lora_modules_;
  torch::Tensor head_weight_;  // [labels, hidden]
  torch::Tensor head_bias_;    // [labels]
  // Exported names and the tensors they alias (LoRA factors, then the head).
  std::vector<std::pair<std::string, torch::Tensor>> trainable_;
  // The last successful Train's AdamW over trainable_ (TrainOptions::keep_optimizer_state).
  std::unique_ptr<torch::optim::AdamW> kept_optimizer_;
};

Status ValidateOptions(const ClassifierOptions& o) {
  if (o.labels.empty()) return InvalidArgumentError("ClassifierOptions.labels is empty");
  std::unordered_set<std::string> seen;
  for (const auto& l : o.labels) {
    if (!seen.insert(l).second) return InvalidArgumentError("ClassifierOptions.labels repeats '" + l + "'");
  }
  if (o.lora_rank < 0) return InvalidArgumentError("lora_rank must be >= 0 (0 trains the head only)");
  if (o.lora_rank > 0 && o.lora_targets.empty()) return InvalidArgumentError("lora_targets is empty");
  if (!(o.lora_alpha > 0)) return InvalidArgumentError("lora_alpha must be positive");
  if (!(o.lora_dropout >= 0 && o.lora_dropout < 1))
    return InvalidArgumentError("lora_dropout must be in [0, 1)");
  if (o.max_seq_len < 2) return InvalidArgumentError("max_seq_len must be >= 2 ([CLS] and [SEP])");
  if (o.num_threads < 1) return InvalidArgumentError("num_threads must be >= 1");
  return OkStatus();
}

}  // namespace

StatusOr<std::unique_ptr<TextClassifier>> TextClassifier::Load(const ClassifierOptions& options) {
  FEDGE_RETURN_IF_ERROR(ValidateOptions(options));
  namespace fs = std::filesystem;
  const fs::path dir(options.model_dir);
  if (!fs::is_directory(dir)) {
    return NotFoundError("model directory '" + options.model_dir +
                         "' does not exist (fetch it with scripts/fetch-model.sh)");
  }
  FEDGE_ASSIGN_OR_RETURN(BertOptions bert_options,
                         BertOptions::FromConfigFile((dir / "config.json").string()));
  if (options.max_seq_len > bert_options.max_position_embeddings) {
    return InvalidArgumentError("max_seq_len " + std::to_string(options.max_seq_len) +
                                " exceeds the model's max_position_embeddings " +
                                std::to_string(bert_options.max_position_embeddings));
  }
  FEDGE_ASSIGN_OR_RETURN(WordPieceTokenizer tokenizer,
                         WordPieceTokenizer::FromVocabFile((dir / "vocab.txt").string()));
  if (tokenizer.vocab_size() != bert_options.vocab_size) {
    return InvalidArgumentError(
        (dir / "vocab.txt").string() + " has " + std::to_string(tokenizer.vocab_size()) +
        " tokens but config.json says vocab_size " + std::to_string(bert_options.vocab_size));
  }
  const std::string weights_path = (dir / "model.safetensors").string();
  FEDGE_ASSIGN_OR_RETURN(SafetensorsFile weights, SafetensorsFile::Map(weights_path));
  return TorchCall("Load", [&]() -> StatusOr<std::unique_ptr<TextClassifier>> {
    torch::set_num_threads(options.num_threads);
    BertModel bert(bert_options);
    Status st = bert->LoadWeights(weights);
    if (!st.ok()) return st.WithContext(weights_path);
    auto classifier = std::make_unique<BertTextClassifier>(options, std::move(tokenizer), std::move(bert));
    FEDGE_RETURN_IF_ERROR(classifier->Init());
    log::Info("text classifier loaded", {{"model_dir", options.model_dir},
                                         {"labels", static_cast<int64_t>(options.labels.size())},
                                         {"lora_rank", options.lora_rank}});
    return std::unique_ptr<TextClassifier>(std::move(classifier));
  });
}

}  // namespace fedge::agent
