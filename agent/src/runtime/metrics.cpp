#include "fedge/agent/runtime/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace fedge::agent {

namespace {

prometheus::Counter& NewCounter(prometheus::Registry& r, const std::string& name, const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}

prometheus::Gauge& NewGauge(prometheus::Registry& r, const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}

}  // namespace

AgentMetrics::AgentMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      train_steps_total(
          NewCounter(*registry_, "fedge_agent_train_steps_total", "Local optimizer steps taken.")),
      train_loss(
          NewGauge(*registry_, "fedge_agent_train_loss", "Mean training loss of the last local round.")),
      rounds_participated_total(NewCounter(*registry_, "fedge_agent_rounds_participated_total",
                                           "Rounds whose update the aggregator accepted.")),
      bytes_sent_total(NewCounter(*registry_, "fedge_agent_bytes_sent_total",
                                  "Encoded update bytes sent to the aggregator.")),
      bytes_received_total(NewCounter(*registry_, "fedge_agent_bytes_received_total",
                                      "Encoded global model bytes received from the aggregator.")),
      upload_resumes_total(
          NewCounter(*registry_, "fedge_agent_upload_resumes_total",
                     "Interrupted update uploads continued from the bytes the aggregator held.")),
      update_bytes(NewGauge(*registry_, "fedge_agent_update_bytes", "Encoded size of the last update.")),
      update_raw_bytes(NewGauge(*registry_, "fedge_agent_update_raw_bytes",
                                "Size of the last update as fp32 (the compression baseline).")),
      update_raw_bytes_total(NewCounter(*registry_, "fedge_agent_update_raw_bytes_total",
                                        "Submitted updates' size as dense fp32 (before encoding).")),
      update_encoded_bytes_total(NewCounter(*registry_, "fedge_agent_update_encoded_bytes_total",
                                            "Submitted updates' size as encoded (codec, top-k, zstd).")),
      error_feedback_residual_norm(
          NewGauge(*registry_, "fedge_agent_error_feedback_residual_norm",
                   "L2 norm of the error-feedback residual carried to the next update (0: none).")),
      global_version(NewGauge(*registry_, "fedge_agent_global_version",
                              "Version of the global model installed for serving (0: none).")),
      eval_accuracy(NewGauge(*registry_, "fedge_agent_eval_accuracy",
                             "Accuracy of the last evaluated global model on local held-out data.")),
      feedback_log_bytes(NewGauge(*registry_, "fedge_agent_feedback_log_bytes",
                                  "Size of the feedback log (feedback.jsonl) after the last stored entry.")),
      feedback_log_full_total(
          NewCounter(*registry_, "fedge_agent_feedback_log_full_total",
                     "Feedback entries refused because the log reached --feedback-max-bytes.")),
      inference_requests_waiting(
          NewGauge(*registry_, "fedge_agent_inference_requests_waiting",
                   "Inference requests waiting in the queue for the serving model (bounded by "
                   "--max-queued-requests; the running batch not counted).")),
      requests_(prometheus::BuildCounter()
                    .Name("fedge_agent_inference_requests_total")
                    .Help("Inference HTTP requests by endpoint and status code.")
                    .Register(*registry_)),
      durations_(prometheus::BuildHistogram()
                     .Name("fedge_agent_inference_duration_seconds")
                     .Help("Inference request latency by endpoint.")
                     .Register(*registry_)),
      time_to_first_token_(
          prometheus::BuildHistogram()
              .Name("fedge_agent_time_to_first_token_seconds")
              .Help("Time from a generation request's arrival (queueing included) to its first token.")
              .Register(*registry_)),
      inter_token_latency_(prometheus::BuildHistogram()
                               .Name("fedge_agent_inter_token_latency_seconds")
                               .Help("Time between consecutive generated tokens of one request.")
                               .Register(*registry_)),
      prompt_tokens_(prometheus::BuildCounter()
                         .Name("fedge_agent_prompt_tokens_total")
                         .Help("Prompt (input) tokens of answered inference requests, by endpoint.")
                         .Register(*registry_)),
      generated_tokens_(prometheus::BuildCounter()
                            .Name("fedge_agent_generated_tokens_total")
                            .Help("Tokens generated, by endpoint (rate() of it is tokens/s).")
                            .Register(*registry_)),
      in_flight_(prometheus::BuildGauge()
                     .Name("fedge_agent_inference_requests_in_flight")
                     .Help("Inference requests being handled (waiting for the model, using it, or "
                           "streaming), by endpoint.")
                     .Register(*registry_)),
      batch_requests_(prometheus::BuildHistogram()
                          .Name("fedge_agent_inference_batch_requests")
                          .Help("Requests served by one batched forward pass (classify, embeddings).")
                          .Register(*registry_)
                          .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64})),
      batch_inputs_(prometheus::BuildHistogram()
                        .Name("fedge_agent_inference_batch_inputs")
                        .Help("Inputs (texts) in one batched forward pass (classify, embeddings).")
                        .Register(*registry_)
                        .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128})),
      decode_batch_sequences_(prometheus::BuildHistogram()
                                  .Name("fedge_agent_decode_batch_sequences")
                                  .Help("Sequences advanced together by one decode step of continuous "
                                        "batching (generation; bounded by --max-decode-batch).")
                                  .Register(*registry_)
                                  .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64})) {
}

void AgentMetrics::ObserveInference(const std::string& endpoint, int http_code, double seconds) {
  requests_.Add({{"endpoint", endpoint}, {"code", std::to_string(http_code)}}).Increment();
  static const prometheus::Histogram::BucketBoundaries kBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                                   0.1,   0.25,   0.5,   1.0,  2.5,   5.0};
  durations_.Add({{"endpoint", endpoint}}, kBuckets).Observe(seconds);
}

namespace {

// Buckets for a 2-core edge CPU. The first token needs a prompt pass and
// perhaps a wait behind other requests: milliseconds for a tiny model, seconds
// for a long prompt or a queue, so up to a minute.
const prometheus::Histogram::BucketBoundaries& FirstTokenBuckets() {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0};
  return kBuckets;
}

// One decode step: ~1 ms for a test-sized model, 10-100 ms for a 100M-1B model
// on two cores (10-100 tokens/s), more when other requests share the CPU.
const prometheus::Histogram::BucketBoundaries& InterTokenBuckets() {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5};
  return kBuckets;
}

}  // namespace

void AgentMetrics::ObserveTimeToFirstToken(const std::string& endpoint, double seconds) {
  time_to_first_token_.Add({{"endpoint", endpoint}}, FirstTokenBuckets()).Observe(seconds);
}

void AgentMetrics::ObserveInterTokenLatency(const std::string& endpoint, double seconds) {
  inter_token_latency_.Add({{"endpoint", endpoint}}, InterTokenBuckets()).Observe(seconds);
}

void AgentMetrics::CountTokens(const std::string& endpoint, int64_t prompt_tokens, int64_t generated_tokens) {
  if (prompt_tokens > 0)
    prompt_tokens_.Add({{"endpoint", endpoint}}).Increment(static_cast<double>(prompt_tokens));
  if (generated_tokens > 0)
    generated_tokens_.Add({{"endpoint", endpoint}}).Increment(static_cast<double>(generated_tokens));
}

void AgentMetrics::ObserveBatch(int requests, int inputs) {
  batch_requests_.Observe(requests);
  batch_inputs_.Observe(inputs);
}

void AgentMetrics::ObserveDecodeStep(int sequences) { decode_batch_sequences_.Observe(sequences); }

prometheus::Gauge& AgentMetrics::RequestsInFlight(const std::string& endpoint) {
  return in_flight_.Add({{"endpoint", endpoint}});
}

}  // namespace fedge::agent
