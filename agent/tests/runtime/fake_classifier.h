// A deterministic stand-in for the MiniLM classifier: a tiny trainable state
// ("classifier.weight" [labels, 2], "classifier.bias" [labels]) and simple
// arithmetic, so runtime tests can predict every number the agent sends.
//   Train:    weight[i] += lr * (i + 1); bias[j] -= lr   (exact deltas to check);
//             with a step_correction, each value also -= lr * steps * correction
//   Classify: softmax(bias + weight[:, 0] * words); label = argmax
//   Embed:    L2-normalised [chars, words, 1, bias[0]]
// It also detects concurrent use, which the runtime must never allow.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "fedge/agent/text_classifier.h"

namespace fedge::agent::testing {

class FakeClassifier : public TextClassifier {
 public:
  // `padding` adds a tensor of that many incompressible values that training
  // leaves alone: a way to make the state as large as a real adapter.
  explicit FakeClassifier(std::vector<std::string> labels, int64_t padding = 0) : labels_(std::move(labels)) {
    int n = static_cast<int>(labels_.size());
    state_.tensors.push_back({"classifier.weight", {n, 2}, std::vector<float>(static_cast<size_t>(n) * 2)});
    state_.tensors.push_back({"classifier.bias", {n}, std::vector<float>(static_cast<size_t>(n))});
    if (padding > 0) {
      NamedTensor pad{"padding", {padding}, std::vector<float>(static_cast<size_t>(padding))};
      uint32_t x = 12345;
      for (auto& v : pad.values) {
        x = x * 1664525u + 1013904223u;
        v = static_cast<float>(x >> 8) / float(1u << 24);
      }
      state_.tensors.push_back(std::move(pad));
    }
    for (size_t i = 0; i < state_.tensors[0].values.size(); ++i)
      state_.tensors[0].values[i] = 0.01f * float(i);
    for (size_t i = 0; i < state_.tensors[1].values.size(); ++i)
      state_.tensors[1].values[i] = 0.1f * float(i % 3);
  }

  const std::vector<std::string>& labels() const override { return labels_; }
  int dimensions() const override { return 4; }

  TensorBundle ExportTrainable() const override {
    Guard g(this);
    return state_;
  }
  Status ImportTrainable(const TensorBundle& bundle) override {
    Guard g(this);
    FEDGE_RETURN_IF_ERROR(CheckSameLayout(state_, bundle));
    if (on_import) on_import();
    TensorBundle next = state_;
    for (auto& t : next.tensors) t.values = bundle.Find(t.name)->values;
    state_ = std::move(next);
    ++imports;
    return OkStatus();
  }
  StatusOr<TrainResult> Train(const std::vector<Example>& data, const TrainOptions& options) override {
    Guard g(this);
    if (data.empty()) return InvalidArgumentError("no training data");
    last_train = options;
    auto& w = state_.tensors[0].values;
    auto& b = state_.tensors[1].values;
    for (size_t i = 0; i < w.size(); ++i) w[i] += static_cast<float>(options.learning_rate) * float(i + 1);
    for (auto& v : b) v -= static_cast<float>(options.learning_rate);
    // SCAFFOLD: options.steps steps of -lr x correction each.
    if (options.step_correction) {
      for (NamedTensor& t : state_.tensors) {
        const NamedTensor* c = options.step_correction->Find(t.name);
        if (c == nullptr || c->values.size() != t.values.size())
          return InvalidArgumentError("fake: step_correction lacks " + t.name);
        for (size_t i = 0; i < t.values.size(); ++i)
          t.values[i] -= static_cast<float>(options.learning_rate * options.steps * c->values[i]);
      }
    }
    TrainResult r;
    r.steps = options.steps;
    r.mean_loss = 0.5 + 1.0 / options.steps;
    r.examples_seen = static_cast<int64_t>(options.steps) * options.batch_size;
    ++trains;
    return r;
  }
  StatusOr<EvalResult> Evaluate(const std::vector<Example>& data, int batch_size) override {
    Guard g(this);
    trains_before_evaluate.push_back(trains);
    const auto& b = state_.tensors[1].values;
    int pred = static_cast<int>(std::max_element(b.begin(), b.end()) - b.begin());
    EvalResult r;
    r.num_examples = static_cast<int64_t>(data.size());
    for (const auto& e : data) r.num_correct += e.label == pred ? 1 : 0;
    r.accuracy = data.empty() ? 0 : double(r.num_correct) / double(data.size());
    r.mean_loss = 1.25;
    return r;
  }
  StatusOr<std::vector<Prediction>> Classify(const std::vector<std::string>& texts) override {
    Guard g(this);
    if (on_classify) on_classify();
    if (slow_classify) std::this_thread::sleep_for(std::chrono::microseconds(200));
    std::vector<Prediction> out;
    const auto& w = state_.tensors[0].values;
    const auto& b = state_.tensors[1].values;
    for (const auto& t : texts) {
      double words = Words(t);
      std::vector<float> logits(labels_.size());
      for (size_t i = 0; i < labels_.size(); ++i) logits[i] = b[i] + w[2 * i] * static_cast<float>(words);
      float mx = *std::max_element(logits.begin(), logits.end());
      float sum = 0;
      for (auto& l : logits) sum += (l = std::exp(l - mx));
      for (auto& l : logits) l /= sum;
      Prediction p;
      p.label = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      p.probabilities = logits;
      out.push_back(p);
    }
    return out;
  }
  StatusOr<std::vector<std::vector<float>>> Embed(const std::vector<std::string>& texts) override {
    Guard g(this);
    std::vector<std::vector<float>> out;
    for (const auto& t : texts) {
      std::vector<float> v = {float(t.size()), float(Words(t)), 1.0f, state_.tensors[1].values[0]};
      float n = 0;
      for (float x : v) n += x * x;
      n = std::sqrt(n);
      for (float& x : v) x /= n;
      out.push_back(v);
    }
    return out;
  }
  int CountTokens(const std::string& text) const override { return Words(text) + 2; }

  static int Words(const std::string& text) {
    std::istringstream in(text);
    std::string w;
    int n = 0;
    while (in >> w) ++n;
    return n;
  }

  // Test observations (read after the runtime is done with the model).
  TrainOptions last_train;
  int trains = 0;
  std::vector<int> trains_before_evaluate;  // `trains` at each Evaluate call
  int imports = 0;
  bool slow_classify = false;
  // Runs inside Classify while the model is in use (set before serving): lets a
  // test hold a request in the model, e.g. until a latch opens.
  std::function<void()> on_classify;
  // Runs inside ImportTrainable, after the layout check: lets a test hold an
  // install in the middle of importing a global.
  std::function<void()> on_import;
  // Set when two calls overlapped. Shared, so that it outlives the model: a
  // ServingModel destroys an instance it retired once that instance's last
  // request ends, and a test that watches instances across installs must keep
  // this handle, not the model's address (reading a destroyed fake's flag was a
  // use-after-free that failed the test at random).
  const std::shared_ptr<std::atomic<bool>> concurrent_use = std::make_shared<std::atomic<bool>>(false);

 private:
  // Flags overlapping calls: the runtime promises one caller at a time.
  struct Guard {
    explicit Guard(const FakeClassifier* f) : f_(const_cast<FakeClassifier*>(f)) {
      if (f_->in_use_.exchange(true)) f_->concurrent_use->store(true);
    }
    ~Guard() { f_->in_use_ = false; }
    FakeClassifier* f_;
  };

  std::vector<std::string> labels_;
  TensorBundle state_;
  mutable std::atomic<bool> in_use_{false};
};

inline std::vector<std::string> TestLabels() {
  return {"noun.animal", "noun.plant",    "noun.artifact", "noun.person",
          "noun.food",   "noun.location", "noun.act"};
}

}  // namespace fedge::agent::testing
