// TokenClassifier: BertForTokenClassification (a label per WordPiece token)
// behind a torch-free interface, optionally with a PEFT adapter applied.
//
// The model is a Hugging Face directory (config.json with num_labels/id2label,
// model.safetensors with bert.* and classifier.*, vocab.txt); the adapter a
// directory peft saved for TOKEN_CLS (LoRA factors + the classifier in
// modules_to_save), see fedge/agent/peft_adapter.h. Inference only.
//
// Thread safety: not thread-safe; guard each instance with a mutex.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "fedge/status.h"

namespace fedge::agent {

struct TokenClassifierOptions {
  std::string model_dir;
  std::string adapter_dir;  // "" = the base model's own head
  int max_seq_len = 128;    // WordPiece tokens incl. [CLS]/[SEP]; longer texts are truncated
  int num_threads = 1;
};

struct TaggedToken {
  std::string token;                 // the WordPiece piece ("##s" for continuations)
  int label = 0;                     // argmax; index into labels()
  std::vector<float> probabilities;  // softmax over labels
};

class TokenClassifier {
 public:
  virtual ~TokenClassifier() = default;

  // NOT_FOUND / INVALID_ARGUMENT / DATA_LOSS name the file and the problem.
  static StatusOr<std::unique_ptr<TokenClassifier>> Load(const TokenClassifierOptions& options);

  // From config.json's id2label (index = label id); "LABEL_<i>" where absent.
  virtual const std::vector<std::string>& labels() const = 0;
  // One entry per text: its tokens without [CLS]/[SEP], in order.
  virtual StatusOr<std::vector<std::vector<TaggedToken>>> Tag(const std::vector<std::string>& texts) = 0;
};

}  // namespace fedge::agent
