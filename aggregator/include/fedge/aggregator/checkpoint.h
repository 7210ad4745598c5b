// Checkpoints: after the initial state, after each round's aggregation and
// after its evaluation the aggregator writes
//   <dir>/global-v<version>.safetensors   the global bundle (F32)
//   <dir>/strategy-v<version>.safetensors the strategy's cross-round state
//                                         (server-optimizer m, v, step), if any
//   <dir>/state.json                      round, version, checksums, history,
//                                         the global's tensor order
// in that order, each atomically (temp + fsync + rename). state.json names the
// bundle files and their SHA-256, so the set is consistent: a crash between
// the writes leaves the previous state.json pointing at the previous files,
// which are kept until the new state.json is in place. The previous state is
// also kept as state.prev.json, the fallback when state.json or its bundle is
// corrupt.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fedge/aggregator/round_record.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::aggregator {

struct CheckpointData {
  std::string job;              // namespace/name
  int64_t completed_round = 0;  // 0: only the initial global exists
  int64_t total_rounds = 0;
  int64_t global_version = 0;
  std::string global_checksum;  // sha256 of the encoded global (informational)
  std::vector<RoundRecord> history;
  std::optional<double> final_accuracy;
  TensorBundle global;
  TensorBundle strategy_state;  // AggregationStrategy::SaveState(); empty if stateless
  // Differential privacy ledger (RdpAccountant::rdp() per order, rounds composed); empty
  // when differential privacy is off.
  std::vector<double> privacy_rdp;
  int64_t privacy_rounds = 0;
};

// Not thread-safe: one writer (the round engine, under its lock).
class CheckpointStore {
 public:
  explicit CheckpointStore(std::string dir);

  const std::string& dir() const { return dir_; }

  // Writes `data` as the newest checkpoint (see file comment) and removes
  // bundle files no longer named by state.json or state.prev.json.
  Status Save(const CheckpointData& data);

  // The newest readable checkpoint; std::nullopt if the directory holds none
  // (missing or empty dir). If state.json is unreadable, truncated or names a
  // bundle that is missing or fails its checksum, logs why and falls back to
  // state.prev.json; if no state is usable, DATA_LOSS naming every problem
  // (never a silent fresh start).
  StatusOr<std::optional<CheckpointData>> Load() const;

 private:
  StatusOr<CheckpointData> LoadState(const std::string& state_path) const;
  std::string dir_;
};

}  // namespace fedge::aggregator
