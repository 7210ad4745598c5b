// The agent's state directory (--state-dir): the latest global adapter, so a
// restarted agent serves at once, and the feedback log later rounds train on.
//   global.safetensors   F32 tensors; metadata job, version, checksum
//   feedback.jsonl       {"text": ..., "label": ..., "ts_ms": ...} per line; mode
//                        0600 (user data), at most feedback_max_bytes long
//   error-feedback.safetensors (+ .json)
//                        the update encoder's residual and the job/round that
//                        left it (UpdateEncoder in update.h owns both files)
//   job-uid.json         {"job": "ns/name", "uid": ...}: the run of the job (the
//                        FederatedTrainingJob's metadata.uid) the files above
//                        belong to; written by BindJobUid
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

struct PersistedGlobal {
  TensorBundle bundle;
  int64_t version = 0;
  std::string checksum;  // sha256 of the encoded bundle as the aggregator sent it
};

struct StateStoreOptions {
  static constexpr uint64_t kDefaultFeedbackMaxBytes = 64ull << 20;  // 64 MiB
  // feedback.jsonl never grows beyond this; an entry that would cross it is
  // refused (RESOURCE_EXHAUSTED) and nothing of it is written. Nothing in the
  // agent consumes the log yet, so once full it stays full until the node's
  // operator collects it and moves it away or raises the cap.
  uint64_t feedback_max_bytes = kDefaultFeedbackMaxBytes;
};

// What StateStore::BindJobUid found in the directory and did about it.
struct JobUidBinding {
  // The uid recorded before; empty when none was (a fresh directory, or state
  // written by an agent older than job-uid.json).
  std::string previous_uid;
  // Paths of the files of another run of the job that were removed; empty when
  // the directory already belonged to this uid or held no state.
  std::vector<std::string> discarded;
};

class StateStore {
 public:
  // `dir` is created on first write. Thread-safe.
  StateStore(std::string dir, std::string job, StateStoreOptions options = {});

  // Binds the directory to one run of the job. `job_uid` is the
  // FederatedTrainingJob's metadata.uid: a job deleted and re-created under
  // the same name (so the same directory) gets a new one. If the directory
  // holds state (global model, feedback log, error-feedback residual) of
  // another uid, or of no recorded uid (an older agent's), those files are
  // removed first, and the removal is synced; then `job_uid` is recorded in
  // job-uid.json (WriteFileAtomic). Only those named files of `dir` are
  // removed; a symlink among them is removed itself, never followed.
  // Call once at start, before LoadGlobal and before anything writes; not
  // synchronised with the other methods. Without a call nothing is checked
  // (fedge run, hand-started agents). INVALID_ARGUMENT for an empty uid or
  // one with control characters; UNAVAILABLE when a file cannot be removed or
  // the uid cannot be recorded — the caller must not use the state then (the
  // next call retries: the old uid stays recorded until the files are gone).
  StatusOr<JobUidBinding> BindJobUid(const std::string& job_uid);

  // Writes global.safetensors atomically (WriteFileAtomic).
  Status SaveGlobal(const TensorBundle& bundle, int64_t version, const std::string& checksum);
  // nullopt if there is no file or it belongs to another job; DATA_LOSS if it
  // exists but cannot be read.
  StatusOr<std::optional<PersistedGlobal>> LoadGlobal() const;

  // Appends one feedback line and flushes it to disk (fdatasync; on the append
  // that creates the file, also the directory, so the file's name survives a
  // crash too). The file is made mode 0600 whatever it had before. Returns the
  // log's size after the append. RESOURCE_EXHAUSTED (nothing written) when the
  // line would take the log beyond feedback_max_bytes; UNAVAILABLE for I/O
  // errors, after cutting a partly written line back off the file.
  StatusOr<uint64_t> AppendFeedback(const std::string& text, const std::string& label, int64_t ts_ms);

  const std::string& dir() const { return dir_; }
  uint64_t feedback_max_bytes() const { return options_.feedback_max_bytes; }
  std::string GlobalPath() const;
  std::string FeedbackPath() const;
  std::string ResidualPath() const;
  std::string JobUidPath() const;

 private:
  const std::string dir_;
  const std::string job_;
  const StateStoreOptions options_;
  std::mutex feedback_mu_;  // serialises appends to feedback.jsonl
};

}  // namespace fedge::agent
