// Error feedback for lossy update compression (EF-SGD: Seide et al. 2014;
// Karimireddy et al. 2019, "Error Feedback Fixes SignSGD").
//
// A lossy codec (top-k, int4, int8) drops part of every update, and what it
// drops is biased: top-k drops the same small coordinates round after round,
// so their contribution never reaches the global model. Error feedback keeps
// the dropped part on the agent as a residual and adds it to the next update:
//
//   compensated_t = delta_t + residual_{t-1}
//   sent_t        = Decode(Encode(compensated_t))
//   residual_t    = compensated_t - sent_t
//
// so sum_t sent_t = sum_t delta_t - residual_T: what the aggregator received
// in total differs from what the agent trained by one residual, not by the
// sum of every round's loss.
//
// The residual belongs to one agent and one adapter layout. Save/Load keep it
// across agent restarts (safetensors, atomic write, checksummed); a residual
// whose tensor names or shapes differ from the update is discarded, never
// applied. Not thread-safe: one instance per agent, used by its training loop.
#pragma once

#include <string>

#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge {

class ErrorFeedback {
 public:
  struct Compensated {
    // delta + residual; delta unchanged when no residual was applied.
    TensorBundle bundle;
    // OK when the residual was applied or none was held; FAILED_PRECONDITION
    // naming the mismatch when a held residual did not fit delta's layout and
    // was discarded (also logged as a warning). Not an error for the caller:
    // the round proceeds without feedback.
    Status residual_status;
  };

  // Returns delta + residual (see Compensated). Tensors are matched by name;
  // the result keeps delta's order.
  Compensated Compensate(const TensorBundle& delta);

  // Sets residual = compensated - sent, remembering the previous residual for
  // Rollback. `sent` is what the aggregator will decode (DecodeBundle of the
  // payload). INVALID_ARGUMENT, and the residual is cleared, if the layouts
  // differ or a difference is not finite.
  Status Update(const TensorBundle& sent, const TensorBundle& compensated);

  // Compensate, EncodeBundle, DecodeBundle, Update: the payload to upload.
  // On an encoding error nothing changes. `report` and `residual_status` (the
  // Compensated::residual_status) are filled when not null.
  StatusOr<std::string> Encode(const TensorBundle& delta, const EncodeOptions& options,
                               CompressionReport* report = nullptr, Status* residual_status = nullptr);

  // Restores the residual held before the last Update/Encode, for an upload
  // that the aggregator never accepted (the round's own delta is lost, as it
  // would be without feedback, but the carried residual is not). One level.
  void Rollback();

  // Writes the residual to `path` (safetensors, float32, via WriteFileAtomic)
  // with metadata format=fedge-error-feedback, version=1 and the SHA-256 of its
  // tensors. With no residual held, writes a file with no tensors.
  Status Save(const std::string& path) const;

  // Replaces the residual with the one saved at `path`. NOT_FOUND if there is
  // no file (a fresh agent: continue without a residual); DATA_LOSS naming the
  // path if the file is truncated, fails its checksum, holds non-finite values
  // or is not a residual file. On any error the held residual is cleared.
  Status Load(const std::string& path);

  void Reset();
  bool has_residual() const { return !residual_.tensors.empty(); }
  const TensorBundle& residual() const { return residual_; }
  // L2 norm over all residual values (0 without one), for metrics.
  double ResidualNorm() const;

 private:
  TensorBundle residual_;
  TensorBundle previous_;  // for Rollback
};

}  // namespace fedge
