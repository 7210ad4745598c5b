// Plain functions behind a training round: the delta an agent submits and the
// seed it trains with; and the UpdateEncoder that turns a delta into the bytes
// uploaded with the job's codec, top-k and error feedback.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "fedge/error_feedback.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

// after - base, tensor by tensor, in `after`'s order. INVALID_ARGUMENT (naming
// the tensor) if the two bundles differ in names or shapes.
StatusOr<TensorBundle> ComputeDelta(const TensorBundle& after, const TensorBundle& base);

// Stable 64-bit hash of an agent id (FNV-1a; std::hash differs between builds).
uint64_t HashAgentId(std::string_view agent_id);

// The local training seed for a round: the job's seed mixed with the agent and
// the round (splitmix64), so agents sample different batches, every round
// differs, and a rerun of the same agent and round is reproducible.
uint64_t MixTrainingSeed(uint64_t job_seed, std::string_view agent_id, int64_t round);

// The update encoding a TRAIN task asks for: spec.compression of the job, read
// from v1.TrainingConfig by TrainingFromWire and mapped by EncodeOptionsFor
// (fedge/job_spec_fields.h).
struct UpdateCodecConfig {
  EncodeOptions encode;  // the seed is set per round by UpdateEncoder::Encode
  bool error_feedback = false;

  // True when the encoding can change values (any codec but fp32, or top-k):
  // the only case in which error feedback does anything.
  bool Lossy() const { return encode.codec != Codec::kFp32 || encode.topk_fraction > 0; }
};

// Encodes one agent's round updates. With error feedback on and a lossy
// encoding, what the encoding dropped is carried to the next round as a
// residual (fedge::ErrorFeedback), kept at `residual_path` so it survives an
// agent restart:
//   residual_path          the residual (safetensors, checksummed)
//   residual_path + ".json" {"job": ..., "round": r}: the round it was left by
// A residual is used only by the same job at a later round: a file of another
// job, or of a round >= the current one (a new run of the same job restarts at
// round 1), is discarded. A missing file is a fresh agent; an unreadable or
// corrupt one is discarded with a warning — never an error for the round.
// Not thread-safe: one instance, used by the agent's training loop.
class UpdateEncoder {
 public:
  struct Encoded {
    std::string payload;            // the bytes to upload
    CompressionReport report;       // raw (fp32) and encoded sizes
    bool feedback_applied = false;  // a residual was added to this delta
  };

  // `residual_path` empty: the residual lives in memory only (no state dir).
  UpdateEncoder(std::string residual_path, std::string job);

  // Encodes `delta` for `round`. `seed` drives stochastic rounding (use a
  // fresh one per round). INVALID_ARGUMENT if the codec options are invalid or
  // a value cannot be encoded; then nothing changes.
  StatusOr<Encoded> Encode(const TensorBundle& delta, const UpdateCodecConfig& config, int64_t round,
                           uint64_t seed);

  // Ends the round of the last Encode: accepted keeps the new residual and
  // persists it (a failed write is logged: the residual is still used in
  // memory); otherwise the residual goes back to what it was before Encode,
  // since the aggregator did not take this round's update.
  void Finish(bool accepted);

  bool has_residual() const { return feedback_.has_residual(); }
  double ResidualNorm() const { return feedback_.ResidualNorm(); }
  const TensorBundle& residual() const { return feedback_.residual(); }
  const std::string& residual_path() const { return residual_path_; }

 private:
  // Loads the persisted residual once, on the first Encode that uses it.
  void LoadOnce(int64_t round);
  void Persist();

  const std::string residual_path_;
  const std::string job_;
  ErrorFeedback feedback_;
  bool loaded_ = false;
  bool pending_ = false;  // an Encode changed the residual; Finish decides
  int64_t pending_round_ = 0;
};

// SCAFFOLD (Karimireddy et al. 2020, option II), the agent's side. The local
// optimizer is AdamW, whose step is not eta x gradient, so the correction is
// applied to the step, not the gradient: after each optimizer step the
// parameters move by -eta (c - c_i) (TrainOptions::step_correction). With SGD
// the two are the same; with AdamW this keeps c_i in the units of what
//   c_i+ = c_i - c + (global - trained) / (K eta) = c_i - c - delta / (K eta)
// measures: the mean local step direction over eta, which is what c_i and c
// then estimate.

// c - c_i shaped like `layout` (a missing c or c_i counts as zeros).
// INVALID_ARGUMENT if a present one differs from `layout` in names or shapes.
StatusOr<TensorBundle> ScaffoldCorrection(const TensorBundle& layout, const TensorBundle* c,
                                          const TensorBundle* c_i);

// c_i+ as above from the round's delta (trained - global) and k_eta = K x eta.
// INVALID_ARGUMENT if k_eta is not > 0 or a layout differs from the delta's.
StatusOr<TensorBundle> ScaffoldNextControl(const TensorBundle& delta, const TensorBundle* c,
                                           const TensorBundle* c_i, double k_eta);

// The agent's control variate c_i, kept at `path` (safetensors with metadata
// job and round) so it survives an agent restart. Used only by the same job at
// a later round (as UpdateEncoder's residual): a file of another job or of a
// round >= the current one is discarded, a missing one is c_i = 0, an
// unreadable one is discarded with a warning. Not thread-safe.
class ScaffoldControl {
 public:
  // `path` empty: c_i lives in memory only.
  ScaffoldControl(std::string path, std::string job);

  // c_i for `round`; nullopt: zeros (fresh agent or discarded file).
  const std::optional<TensorBundle>& Get(int64_t round);

  // Keeps c_i+ as of `round` (after the aggregator accepted that round's
  // update) and persists it; a failed write is logged and c_i kept in memory.
  void Set(TensorBundle c_i, int64_t round);

 private:
  const std::string path_;
  const std::string job_;
  std::optional<TensorBundle> c_i_;
  bool loaded_ = false;
};

}  // namespace fedge::agent
