// The agent's state directory (--state-dir): the latest global adapter, so a
// restarted agent serves at once, and the feedback log later rounds train on.
//   global.safetensors   F32 tensors; metadata job, version, checksum
//   feedback.jsonl       {"text": ..., "label": ..., "ts_ms": ...} per line
//   error-feedback.safetensors (+ .json)
//                        the update encoder's residual and the job/round that
//                        left it (UpdateEncoder in update.h owns both files)
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

struct PersistedGlobal {
  TensorBundle bundle;
  int64_t version = 0;
  std::string checksum;  // sha256 of the encoded bundle as the aggregator sent it
};

class StateStore {
 public:
  // `dir` is created on first write. Thread-safe.
  StateStore(std::string dir, std::string job);

  // Writes global.safetensors atomically (WriteFileAtomic).
  Status SaveGlobal(const TensorBundle& bundle, int64_t version, const std::string& checksum);
  // nullopt if there is no file or it belongs to another job; DATA_LOSS if it
  // exists but cannot be read.
  StatusOr<std::optional<PersistedGlobal>> LoadGlobal() const;

  // Appends one feedback line and flushes it to disk.
  Status AppendFeedback(const std::string& text, const std::string& label, int64_t ts_ms);

  const std::string& dir() const { return dir_; }
  std::string GlobalPath() const;
  std::string FeedbackPath() const;
  std::string ResidualPath() const;

 private:
  const std::string dir_;
  const std::string job_;
  std::mutex feedback_mu_;  // serialises appends to feedback.jsonl
};

}  // namespace fedge::agent
