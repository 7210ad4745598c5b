// Per-round history: what /v1/status shows and what checkpoints persist.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fedge/status.h"

namespace fedge::aggregator {

struct RoundRecord {
  int64_t round = 0;
  int participants = 0;  // accepted updates aggregated
  int invited = 0;
  std::optional<double> loss;      // evaluation loss, example-weighted
  std::optional<double> accuracy;  // sum(correct) / sum(examples)
  int64_t eval_examples = 0;
  int evaluators = 0;                // agents that reported evaluation
  std::optional<double> train_loss;  // mean local training loss, example-weighted
  uint64_t bytes_up = 0;             // encoded update bytes received in the round
  uint64_t bytes_down = 0;           // global bytes streamed in the round
  uint64_t raw_bytes_up = 0;         // the same updates as fp32 (agent-reported)
  double seconds = 0;                // train start to evaluation close
  int64_t global_version = 0;        // version produced by this round
  std::string close_reason;          // "all_answered" | "quorum_at_deadline" | "below_quorum_after_extension"
  std::optional<double> epsilon;     // differential privacy spent after this round (absent: DP off)
  // Feedback examples (the nodes' /v1/feedback) each accepted update says it
  // trained on, by agent id; agents that reported none are absent. Self-reported
  // and informational only: clamped to [0, kMaxReportedFeedbackExamples], never
  // a weight. At most one entry per participant.
  std::map<std::string, int64_t> feedback_examples;
};

// spec.feedback.maxExamples' upper bound: no agent holds more.
inline constexpr int64_t kMaxReportedFeedbackExamples = 100000;

// JSON object text for one record (keys as above; absent optionals are null).
std::string RoundRecordToJson(const RoundRecord& record);
// Inverse of RoundRecordToJson; INVALID_ARGUMENT naming the bad key.
StatusOr<RoundRecord> RoundRecordFromJson(const std::string& json_text);

}  // namespace fedge::aggregator
