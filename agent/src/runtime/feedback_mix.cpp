#include "fedge/agent/runtime/feedback_mix.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace fedge::agent {

std::vector<Example> FeedbackExamples(const std::vector<FeedbackEntry>& entries,
                                      const std::vector<std::string>& labels, size_t* skipped) {
  const bool generative = labels.empty();
  std::vector<Example> out;
  size_t left_out = 0;
  for (const FeedbackEntry& e : entries) {
    Example ex;
    ex.text = e.text;
    if (generative) {
      if (!e.generative()) {
        ++left_out;
        continue;
      }
      ex.completion = e.completion;
    } else {
      auto it = e.generative() ? labels.end() : std::find(labels.begin(), labels.end(), e.label);
      if (it == labels.end()) {
        ++left_out;
        continue;
      }
      ex.label = static_cast<int>(it - labels.begin());
    }
    out.push_back(std::move(ex));
  }
  if (skipped != nullptr) *skipped = left_out;
  return out;
}

MixedTrainingSet MixFeedback(const std::vector<Example>& local, const std::vector<Example>& feedback,
                             double weight, uint64_t seed) {
  MixedTrainingSet out;
  out.examples = local;
  if (feedback.empty()) return out;
  const double w = std::isfinite(weight) ? std::clamp(weight, 0.0, 0.9) : 0.0;
  size_t copies = feedback.size();
  if (!local.empty()) {
    copies = static_cast<size_t>(std::llround(w / (1.0 - w) * static_cast<double>(local.size())));
    copies = std::max<size_t>(copies, 1);
  }
  std::vector<size_t> order(feedback.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  out.examples.reserve(local.size() + copies);
  for (size_t i = 0; i < copies; ++i) out.examples.push_back(feedback[order[i % order.size()]]);
  out.feedback_used = static_cast<int64_t>(std::min(copies, feedback.size()));
  out.feedback_copies = static_cast<int64_t>(copies);
  return out;
}

}  // namespace fedge::agent
