// Prometheus metrics of the aggregator (prometheus-cpp core types, served by
// fedge::HttpServer::HandleMetrics). All methods are thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace fedge::aggregator {

class AggregatorMetrics {
 public:
  AggregatorMetrics();
  ~AggregatorMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void RoundCompleted(double seconds);
  // An accepted update: encoded bytes on the wire and its fp32 size.
  void UpdateAccepted(uint64_t encoded_bytes, uint64_t raw_bytes);
  // A rejected update; `reason` is a short label ("stale_base", "layout", ...).
  void UpdateRejected(std::string_view reason);
  void BytesReceived(uint64_t bytes);
  void BytesSent(uint64_t bytes);
  void SetAgentsJoined(int64_t n);
  // Bytes reserved for resumable uploads held (ProtocolHandler).
  void SetPartialUploadBytes(uint64_t bytes);
  // Bytes of incomplete uploads in memory, streams in progress included.
  void SetUploadBufferBytes(uint64_t bytes);
  // Open gRPC streams (SubmitUpdate + FetchGlobal) and streams refused or
  // cancelled by the in-flight limits, by reason.
  void SetOpenStreams(int64_t n);
  void StreamRefused(std::string_view reason);
  // A Join refused for its credentials; `reason` is a short label
  // ("wrong_token", "expired", "signature", "node", ...).
  void JoinRefused(std::string_view reason);
  // A request refused because of its session's token: "token_expired" (the
  // session ends), "token_refused", "other_pod" (a renewal refused).
  void SessionEnded(std::string_view reason);
  // A checkpoint write failed / succeeded (at `unix_seconds`).
  void CheckpointFailed();
  void CheckpointSaved(double unix_seconds);
  void SetGlobalVersion(int64_t version);
  // Differential privacy: epsilon spent so far (at the job's delta).
  void SetPrivacyEpsilon(double epsilon);
  void SetRoundEvaluation(double accuracy, double loss);
  // A weight (kind "update" | "evaluation") bounded below what the agent
  // claimed; reason "above_join" (more than it declared at Join) |
  // "above_cap" (more than localSteps x batchSize).
  void WeightClamped(std::string_view kind, std::string_view reason);
  // An update scaled down to the default norm bound.
  void UpdateClipped();

  // Current values, for tests and status.
  double updates_rejected(std::string_view reason) const;
  double updates_received() const;
  double rounds_completed() const;
  double bytes_sent() const;
  double bytes_received() const;
  double partial_upload_bytes() const;
  double weights_clamped(std::string_view kind, std::string_view reason) const;
  double updates_clipped() const;
  double upload_buffer_bytes() const;
  double streams_refused(std::string_view reason) const;
  double joins_refused(std::string_view reason) const;
  double sessions_ended(std::string_view reason) const;
  double checkpoint_failures() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Counter* rounds_completed_;
  prometheus::Histogram* round_duration_;
  prometheus::Counter* updates_received_;
  prometheus::Family<prometheus::Counter>* updates_rejected_;
  prometheus::Counter* bytes_received_;
  prometheus::Counter* bytes_sent_;
  prometheus::Counter* update_raw_bytes_;
  prometheus::Counter* update_encoded_bytes_;
  prometheus::Gauge* agents_joined_;
  prometheus::Gauge* partial_upload_bytes_;
  prometheus::Gauge* global_version_;
  prometheus::Gauge* privacy_epsilon_;
  prometheus::Gauge* round_accuracy_;
  prometheus::Gauge* round_loss_;
  prometheus::Family<prometheus::Counter>* weights_clamped_;
  prometheus::Counter* updates_clipped_;
  prometheus::Gauge* upload_buffer_bytes_;
  prometheus::Gauge* open_streams_;
  prometheus::Family<prometheus::Counter>* streams_refused_;
  prometheus::Family<prometheus::Counter>* joins_refused_;
  prometheus::Family<prometheus::Counter>* sessions_ended_;
  prometheus::Counter* checkpoint_failures_;
  prometheus::Gauge* checkpoint_last_success_;
};

}  // namespace fedge::aggregator
