// Mixing a node's feedback (StateStore::Feedback) into its local training set
// for one round. spec.feedback.weight is a sampling fraction: the trainer
// samples batches uniformly from the set it is given, so the feedback copies
// are sized to make up that share of the set (and so of the examples sampled),
// however large the shard is. Fewer feedback examples than that share are
// repeated; more are subsampled (seeded). Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fedge/agent/runtime/state_store.h"
#include "fedge/agent/text_classifier.h"

namespace fedge::agent {

// Feedback entries as training examples for a job with `labels` (empty: a
// causal-LM job, which takes prompt + completion entries). Entries of the
// other kind, or whose label is not one of `labels` (stored by a job since
// changed), are left out and counted in *skipped (if given).
std::vector<Example> FeedbackExamples(const std::vector<FeedbackEntry>& entries,
                                      const std::vector<std::string>& labels, size_t* skipped = nullptr);

struct MixedTrainingSet {
  std::vector<Example> examples;  // local shard first, then the feedback copies
  int64_t feedback_used = 0;      // distinct feedback examples among them
  int64_t feedback_copies = 0;    // feedback examples in `examples` (repeats counted)
};

// The local training set of one round: all of `local`, then
// C = max(1, round(w / (1 - w) * |local|)) feedback copies, w = `weight`
// clamped to [0, 0.9], so feedback is a share w of the set. C >= |feedback|:
// every feedback example appears C / |feedback| times, the remainder going to
// a seeded choice of them; C < |feedback|: a seeded sample of C distinct ones.
// An empty `local` gives the feedback once each; an empty `feedback` gives
// `local` unchanged (feedback_used 0).
MixedTrainingSet MixFeedback(const std::vector<Example>& local, const std::vector<Example>& feedback,
                             double weight, uint64_t seed);

}  // namespace fedge::agent
