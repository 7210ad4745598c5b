// TokenClassifier over BertTokenClassifier (bert_token_classifier.h).
#include "fedge/agent/token_classifier.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "bert/bert_token_classifier.h"
#include "fedge/agent/peft_adapter.h"
#include "fedge/agent/wordpiece_tokenizer.h"
#include "fedge/file_util.h"
#include "torch_call.h"

namespace fedge::agent {
namespace {

constexpr size_t kInferenceBatch = 32;

StatusOr<std::vector<std::string>> LabelNames(const std::string& config_path, int64_t num_labels) {
  FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(config_path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  std::vector<std::string> names;
  for (int64_t i = 0; i < num_labels; ++i) {
    const std::string key = std::to_string(i);
    const bool named = j.is_object() && j.contains("id2label") && j["id2label"].is_object() &&
                       j["id2label"].contains(key) && j["id2label"][key].is_string();
    names.push_back(named ? j["id2label"][key].get<std::string>() : "LABEL_" + key);
  }
  return names;
}

class BertTokenClassifierFacade final : public TokenClassifier {
 public:
  BertTokenClassifierFacade(TokenClassifierOptions options, WordPieceTokenizer tokenizer,
                            BertTokenClassifier model, std::vector<std::string> labels)
      : options_(std::move(options)),
        tokenizer_(std::move(tokenizer)),
        model_(std::move(model)),
        labels_(std::move(labels)) {}

  const std::vector<std::string>& labels() const override { return labels_; }

  StatusOr<std::vector<std::vector<TaggedToken>>> Tag(const std::vector<std::string>& texts) override {
    return TorchCall("Tag", [&]() -> StatusOr<std::vector<std::vector<TaggedToken>>> {
      torch::set_num_threads(options_.num_threads);
      torch::InferenceMode guard;
      std::vector<std::vector<TaggedToken>> out;
      for (size_t begin = 0; begin < texts.size(); begin += kInferenceBatch) {
        const size_t end = std::min(texts.size(), begin + kInferenceBatch);
        EncodedBatch enc = tokenizer_.EncodeBatch(
            std::vector<std::string>(texts.begin() + static_cast<std::ptrdiff_t>(begin),
                                     texts.begin() + static_cast<std::ptrdiff_t>(end)),
            options_.max_seq_len);
        torch::Tensor ids =
            torch::from_blob(enc.input_ids.data(), {enc.batch_size, enc.seq_len}, torch::kLong).clone();
        torch::Tensor mask =
            torch::from_blob(enc.attention_mask.data(), {enc.batch_size, enc.seq_len}, torch::kLong).clone();
        torch::Tensor probs = torch::softmax(model_(ids, mask), -1).contiguous();
        for (int64_t b = 0; b < enc.batch_size; ++b) {
          std::vector<TaggedToken> tagged;
          for (int64_t t = 0; t < enc.seq_len; ++t) {
            const int64_t id = enc.input_ids[static_cast<size_t>(b * enc.seq_len + t)];
            if (enc.attention_mask[static_cast<size_t>(b * enc.seq_len + t)] == 0) break;
            if (id == tokenizer_.cls_id() || id == tokenizer_.sep_id()) continue;
            TaggedToken tok;
            tok.token = tokenizer_.IdToToken(id);
            const float* row = probs[b][t].data_ptr<float>();
            tok.probabilities.assign(row, row + probs.size(2));
            tok.label = static_cast<int>(probs[b][t].argmax().item<int64_t>());
            tagged.push_back(std::move(tok));
          }
          out.push_back(std::move(tagged));
        }
      }
      return out;
    });
  }

 private:
  TokenClassifierOptions options_;
  WordPieceTokenizer tokenizer_;
  BertTokenClassifier model_;
  std::vector<std::string> labels_;
};

}  // namespace

StatusOr<std::unique_ptr<TokenClassifier>> TokenClassifier::Load(const TokenClassifierOptions& options) {
  namespace fs = std::filesystem;
  if (options.max_seq_len < 2) return InvalidArgumentError("max_seq_len must be >= 2 ([CLS] and [SEP])");
  if (options.num_threads < 1) return InvalidArgumentError("num_threads must be >= 1");
  if (!fs::is_directory(options.model_dir)) {
    return NotFoundError("model directory '" + options.model_dir + "' does not exist");
  }
  torch::set_num_threads(options.num_threads);
  FEDGE_ASSIGN_OR_RETURN(auto model, BertTokenClassifierImpl::Load(options.model_dir));
  const BertOptions& bo = model->bert()->options();
  if (options.max_seq_len > bo.max_position_embeddings) {
    return InvalidArgumentError("max_seq_len " + std::to_string(options.max_seq_len) +
                                " exceeds the model's max_position_embeddings " +
                                std::to_string(bo.max_position_embeddings));
  }
  const std::string vocab = (fs::path(options.model_dir) / "vocab.txt").string();
  FEDGE_ASSIGN_OR_RETURN(WordPieceTokenizer tokenizer, WordPieceTokenizer::FromVocabFile(vocab));
  if (tokenizer.vocab_size() != bo.vocab_size) {
    return InvalidArgumentError(vocab + " has " + std::to_string(tokenizer.vocab_size()) +
                                " tokens but config.json says vocab_size " + std::to_string(bo.vocab_size));
  }
  if (!options.adapter_dir.empty()) {
    FEDGE_ASSIGN_OR_RETURN(PeftAdapter adapter, ReadPeftAdapter(options.adapter_dir));
    Status st = model->ApplyPeftAdapter(adapter);
    if (!st.ok()) return st.WithContext(options.adapter_dir);
  }
  FEDGE_ASSIGN_OR_RETURN(
      std::vector<std::string> labels,
      LabelNames((fs::path(options.model_dir) / "config.json").string(), model->num_labels()));
  model->eval();
  return std::unique_ptr<TokenClassifier>(std::make_unique<BertTokenClassifierFacade>(
      options, std::move(tokenizer), BertTokenClassifier(model), std::move(labels)));
}

}  // namespace fedge::agent
