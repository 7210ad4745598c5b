// The agent's state directory (--state-dir): the latest global adapter, so a
// restarted agent serves at once, and the feedback log later rounds train on.
//   global.safetensors   F32 tensors; metadata job, version, checksum, and
//                        final "true" once the aggregator said the job is
//                        done with this version (its final global)
//   feedback.jsonl       one feedback example per line, oldest first:
//                        {"text", "label", "ts_ms"} (classification) or
//                        {"prompt", "completion", "ts_ms"} (causal-LM jobs);
//                        mode 0600 (user data), at most feedback_max_bytes
//                        long. Appended (fdatasync) per new example; rewritten
//                        atomically (temp 0600, fdatasync, rename, fsync dir)
//                        to drop duplicates and examples beyond the cap. Read
//                        back on start, so feedback survives a restart. Never
//                        sent anywhere: training on the node reads it.
//   error-feedback.safetensors (+ .json)
//                        the update encoder's residual and the job/round that
//                        left it (UpdateEncoder in update.h owns both files)
//   scaffold-control.safetensors
//                        SCAFFOLD's control variate c_i, with the job and round
//                        that left it as metadata (ScaffoldControl in update.h)
//   job-uid.json         {"job": "ns/name", "uid": ...}: the run of the job (the
//                        FederatedTrainingJob's metadata.uid) the files above
//                        belong to; written by BindJobUid
#pragma once

#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

struct PersistedGlobal {
  TensorBundle bundle;
  int64_t version = 0;
  std::string checksum;  // sha256 of the encoded bundle as the aggregator sent it
  // The job's final global: the aggregator told the agent DONE with this version.
  bool final = false;
};

// One feedback example posted to /v1/feedback.
struct FeedbackEntry {
  std::string text;        // classification: the text; causal-LM: the prompt
  std::string label;       // classification: one of the job's labels; else empty
  std::string completion;  // causal-LM: the preferred completion; else empty
  int64_t ts_ms = 0;       // when it was first stored (unix ms)

  bool generative() const { return !completion.empty(); }
};

// What StateStore::AddFeedback did.
struct FeedbackAdded {
  bool duplicate = false;  // the same example is held already; nothing written
  uint64_t log_bytes = 0;  // feedback.jsonl's size afterwards
  size_t examples = 0;     // distinct examples held afterwards
  size_t dropped = 0;      // oldest examples dropped by this add (the cap)
};

struct StateStoreOptions {
  static constexpr uint64_t kDefaultFeedbackMaxBytes = 64ull << 20;  // 64 MiB
  // feedback.jsonl never grows beyond this; an entry that would cross it even
  // after the file is rewritten without dropped and duplicate lines is refused
  // (RESOURCE_EXHAUSTED) and nothing of it is written. It guards the node's
  // disk; feedback_max_examples is the job's cap.
  uint64_t feedback_max_bytes = kDefaultFeedbackMaxBytes;
  // spec.feedback.maxExamples: distinct examples kept; beyond it the oldest is
  // dropped first (in memory at once; from the file at the next rewrite, which
  // happens once it holds twice as many lines, and on load).
  size_t feedback_max_examples = 1000;
  // spec.feedback.enabled: false makes AddFeedback FAILED_PRECONDITION.
  bool feedback_enabled = true;
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

  // Writes global.safetensors atomically (WriteFileAtomic); `final` marks the
  // job's last global (PersistedGlobal::final).
  Status SaveGlobal(const TensorBundle& bundle, int64_t version, const std::string& checksum,
                    bool final = false);
  // nullopt if there is no file or it belongs to another job; DATA_LOSS if it
  // exists but cannot be read.
  StatusOr<std::optional<PersistedGlobal>> LoadGlobal() const;

  // Appends one feedback line and flushes it to disk (fdatasync; on the append
  // that creates the file, also the directory, so the file's name survives a
  // crash too). The file is made mode 0600 whatever it had before. Returns the
  // log's size after the append. RESOURCE_EXHAUSTED (nothing written) when the
  // line would take the log beyond feedback_max_bytes; UNAVAILABLE for I/O
  // errors, after cutting a partly written line back off the file.
  // (Kept for callers of the classification-only API: AddFeedback with
  // {text, label, ts_ms}, returning the log's size.)
  StatusOr<uint64_t> AppendFeedback(const std::string& text, const std::string& label, int64_t ts_ms);

  // Stores one feedback example durably before it returns OK: an example
  // already held (same text and label, or same prompt and completion) is a
  // duplicate and writes nothing; a new one is appended as AppendFeedback
  // does, and if that takes the store beyond feedback_max_examples the oldest
  // example is dropped. The caller validates the entry (sizes, label) first.
  // FAILED_PRECONDITION when feedback is disabled; RESOURCE_EXHAUSTED when it
  // would take the file beyond feedback_max_bytes; UNAVAILABLE for I/O errors
  // (also when the existing file cannot be read, e.g. it is a symlink). On any
  // error the store and the file are as before. Thread-safe.
  StatusOr<FeedbackAdded> AddFeedback(const FeedbackEntry& entry);

  // The distinct feedback examples held, oldest first, at most
  // feedback_max_examples (read from feedback.jsonl on first use; malformed
  // lines, e.g. a torn last line after a crash, are skipped). UNAVAILABLE when
  // the file cannot be read. Thread-safe.
  StatusOr<std::vector<FeedbackEntry>> Feedback();

  const std::string& dir() const { return dir_; }
  uint64_t feedback_max_bytes() const { return options_.feedback_max_bytes; }
  bool feedback_enabled() const { return options_.feedback_enabled; }
  std::string GlobalPath() const;
  std::string FeedbackPath() const;
  std::string ResidualPath() const;
  std::string ScaffoldControlPath() const;  // SCAFFOLD's c_i (ScaffoldControl in update.h)
  std::string JobUidPath() const;

 private:
  const std::string dir_;
  const std::string job_;
  const StateStoreOptions options_;
  // Reads feedback.jsonl into feedback_ (once); the caller holds feedback_mu_.
  Status LoadFeedbackLocked();
  // Appends `line` and syncs it; returns the file's size after.
  StatusOr<uint64_t> AppendFeedbackLineLocked(const std::string& line);
  // Replaces the file by feedback_'s lines (atomic, 0600); returns its size.
  StatusOr<uint64_t> RewriteFeedbackLocked();

  std::mutex feedback_mu_;  // guards the members below and feedback.jsonl
  bool feedback_loaded_ = false;
  std::deque<FeedbackEntry> feedback_;             // oldest first
  std::unordered_set<std::string> feedback_keys_;  // FeedbackKey of each in feedback_
  size_t feedback_lines_ = 0;                      // lines in the file (>= feedback_.size())
};

// Serialises an entry to one JSONL line (with '\n'); its dedup key.
std::string FeedbackLine(const FeedbackEntry& entry);
std::string FeedbackKey(const FeedbackEntry& entry);

}  // namespace fedge::agent
