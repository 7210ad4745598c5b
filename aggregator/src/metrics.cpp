#include "fedge/aggregator/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace fedge::aggregator {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

AggregatorMetrics::AggregatorMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  rounds_completed_ = &BuildCounter()
                           .Name("fedge_aggregator_rounds_completed_total")
                           .Help("Training rounds completed (aggregated, evaluated, checkpointed)")
                           .Register(r)
                           .Add({});
  round_duration_ = &BuildHistogram()
                         .Name("fedge_aggregator_round_duration_seconds")
                         .Help("Wall time of a round, from invitations to evaluation close")
                         .Register(r)
                         .Add({}, prometheus::Histogram::BucketBoundaries{0.5, 1, 2, 5, 10, 30, 60, 120, 300,
                                                                          600, 1800, 3600});
  updates_received_ = &BuildCounter()
                           .Name("fedge_aggregator_updates_received_total")
                           .Help("Updates accepted into a round")
                           .Register(r)
                           .Add({});
  updates_rejected_ = &BuildCounter()
                           .Name("fedge_aggregator_updates_rejected_total")
                           .Help("Updates rejected, by reason")
                           .Register(r);
  bytes_received_ = &BuildCounter()
                         .Name("fedge_aggregator_bytes_received_total")
                         .Help("Update payload bytes received (accepted or not)")
                         .Register(r)
                         .Add({});
  bytes_sent_ = &BuildCounter()
                     .Name("fedge_aggregator_bytes_sent_total")
                     .Help("Global model bytes streamed to agents")
                     .Register(r)
                     .Add({});
  update_raw_bytes_ = &BuildCounter()
                           .Name("fedge_aggregator_update_raw_bytes_total")
                           .Help("Accepted updates' size as fp32 (agent-reported)")
                           .Register(r)
                           .Add({});
  update_encoded_bytes_ = &BuildCounter()
                               .Name("fedge_aggregator_update_encoded_bytes_total")
                               .Help("Accepted updates' encoded size on the wire")
                               .Register(r)
                               .Add({});
  agents_joined_ = &BuildGauge()
                        .Name("fedge_aggregator_agents_joined")
                        .Help("Agents currently joined")
                        .Register(r)
                        .Add({});
  partial_upload_bytes_ = &BuildGauge()
                               .Name("fedge_aggregator_partial_upload_bytes")
                               .Help("Bytes reserved for partial (resumable) uploads held")
                               .Register(r)
                               .Add({});
  global_version_ = &BuildGauge()
                         .Name("fedge_aggregator_global_version")
                         .Help("Version of the current global model (0: none yet)")
                         .Register(r)
                         .Add({});
  privacy_epsilon_ =
      &BuildGauge()
           .Name("fedge_aggregator_privacy_epsilon")
           .Help("Differential privacy spent so far: epsilon at the job's delta (RDP accountant)")
           .Register(r)
           .Add({});
  round_accuracy_ = &BuildGauge()
                         .Name("fedge_aggregator_round_accuracy")
                         .Help("Evaluation accuracy of the last completed round")
                         .Register(r)
                         .Add({});
  round_loss_ = &BuildGauge()
                     .Name("fedge_aggregator_round_loss")
                     .Help("Evaluation loss of the last completed round")
                     .Register(r)
                     .Add({});
  weights_clamped_ = &BuildCounter()
                          .Name("fedge_aggregator_weights_clamped_total")
                          .Help(
                              "Update and evaluation weights bounded below the agent's claim, by kind "
                              "(update|evaluation) and reason (above_join|above_cap)")
                          .Register(r);
  updates_clipped_ = &BuildCounter()
                          .Name("fedge_aggregator_updates_clipped_total")
                          .Help("Updates scaled down to the default norm bound")
                          .Register(r)
                          .Add({});
  upload_buffer_bytes_ =
      &BuildGauge()
           .Name("fedge_aggregator_upload_buffer_bytes")
           .Help("Bytes of incomplete uploads in memory (streams in progress and partial uploads)")
           .Register(r)
           .Add({});
  open_streams_ = &BuildGauge()
                       .Name("fedge_aggregator_open_streams")
                       .Help("Open SubmitUpdate and FetchGlobal streams")
                       .Register(r)
                       .Add({});
  streams_refused_ = &BuildCounter()
                          .Name("fedge_aggregator_streams_refused_total")
                          .Help("Streams refused or cancelled by the in-flight limits, by reason")
                          .Register(r);
  joins_refused_ = &BuildCounter()
                        .Name("fedge_aggregator_joins_refused_total")
                        .Help("Joins refused for their credentials (token), by reason")
                        .Register(r);
  sessions_ended_ = &BuildCounter()
                         .Name("fedge_aggregator_sessions_ended_total")
                         .Help(
                             "Requests refused for their session's service-account token, by reason "
                             "(token_expired ends the session; token_refused, other_pod: a renewal refused)")
                         .Register(r);
  checkpoint_failures_ = &BuildCounter()
                              .Name("fedge_aggregator_checkpoint_failures_total")
                              .Help("Checkpoint writes that failed (the job goes on without them)")
                              .Register(r)
                              .Add({});
  checkpoint_last_success_ = &BuildGauge()
                                  .Name("fedge_aggregator_checkpoint_last_success_timestamp_seconds")
                                  .Help("Unix time of the last checkpoint written (0: none yet)")
                                  .Register(r)
                                  .Add({});
}

AggregatorMetrics::~AggregatorMetrics() = default;

void AggregatorMetrics::RoundCompleted(double seconds) {
  rounds_completed_->Increment();
  round_duration_->Observe(seconds);
}

void AggregatorMetrics::UpdateAccepted(uint64_t encoded_bytes, uint64_t raw_bytes) {
  updates_received_->Increment();
  update_encoded_bytes_->Increment(static_cast<double>(encoded_bytes));
  update_raw_bytes_->Increment(static_cast<double>(raw_bytes));
}

void AggregatorMetrics::UpdateRejected(std::string_view reason) {
  updates_rejected_->Add({{"reason", std::string(reason)}}).Increment();
}

void AggregatorMetrics::BytesReceived(uint64_t bytes) {
  bytes_received_->Increment(static_cast<double>(bytes));
}
void AggregatorMetrics::BytesSent(uint64_t bytes) { bytes_sent_->Increment(static_cast<double>(bytes)); }
void AggregatorMetrics::SetAgentsJoined(int64_t n) { agents_joined_->Set(static_cast<double>(n)); }
void AggregatorMetrics::SetPartialUploadBytes(uint64_t bytes) {
  partial_upload_bytes_->Set(static_cast<double>(bytes));
}
void AggregatorMetrics::SetGlobalVersion(int64_t version) {
  global_version_->Set(static_cast<double>(version));
}

void AggregatorMetrics::SetPrivacyEpsilon(double epsilon) { privacy_epsilon_->Set(epsilon); }

void AggregatorMetrics::SetRoundEvaluation(double accuracy, double loss) {
  round_accuracy_->Set(accuracy);
  round_loss_->Set(loss);
}

void AggregatorMetrics::WeightClamped(std::string_view kind, std::string_view reason) {
  weights_clamped_->Add({{"kind", std::string(kind)}, {"reason", std::string(reason)}}).Increment();
}
void AggregatorMetrics::UpdateClipped() { updates_clipped_->Increment(); }
void AggregatorMetrics::SetUploadBufferBytes(uint64_t bytes) {
  upload_buffer_bytes_->Set(static_cast<double>(bytes));
}
void AggregatorMetrics::SetOpenStreams(int64_t n) { open_streams_->Set(static_cast<double>(n)); }
void AggregatorMetrics::CheckpointFailed() { checkpoint_failures_->Increment(); }
void AggregatorMetrics::CheckpointSaved(double unix_seconds) { checkpoint_last_success_->Set(unix_seconds); }
double AggregatorMetrics::checkpoint_failures() const { return checkpoint_failures_->Value(); }
void AggregatorMetrics::StreamRefused(std::string_view reason) {
  streams_refused_->Add({{"reason", std::string(reason)}}).Increment();
}
void AggregatorMetrics::JoinRefused(std::string_view reason) {
  joins_refused_->Add({{"reason", std::string(reason)}}).Increment();
}
void AggregatorMetrics::SessionEnded(std::string_view reason) {
  sessions_ended_->Add({{"reason", std::string(reason)}}).Increment();
}
double AggregatorMetrics::sessions_ended(std::string_view reason) const {
  return sessions_ended_->Add({{"reason", std::string(reason)}}).Value();
}
double AggregatorMetrics::joins_refused(std::string_view reason) const {
  return joins_refused_->Add({{"reason", std::string(reason)}}).Value();
}
double AggregatorMetrics::upload_buffer_bytes() const { return upload_buffer_bytes_->Value(); }
double AggregatorMetrics::streams_refused(std::string_view reason) const {
  return streams_refused_->Add({{"reason", std::string(reason)}}).Value();
}

double AggregatorMetrics::weights_clamped(std::string_view kind, std::string_view reason) const {
  return weights_clamped_->Add({{"kind", std::string(kind)}, {"reason", std::string(reason)}}).Value();
}
double AggregatorMetrics::updates_clipped() const { return updates_clipped_->Value(); }

double AggregatorMetrics::updates_rejected(std::string_view reason) const {
  return updates_rejected_->Add({{"reason", std::string(reason)}}).Value();
}
double AggregatorMetrics::updates_received() const { return updates_received_->Value(); }
double AggregatorMetrics::rounds_completed() const { return rounds_completed_->Value(); }
double AggregatorMetrics::partial_upload_bytes() const { return partial_upload_bytes_->Value(); }

double AggregatorMetrics::bytes_sent() const { return bytes_sent_->Value(); }
double AggregatorMetrics::bytes_received() const { return bytes_received_->Value(); }

}  // namespace fedge::aggregator
