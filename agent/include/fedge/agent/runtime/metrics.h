// The agent's Prometheus metrics (served at GET /metrics by HttpServer).
// prometheus-cpp metric objects are thread-safe; the references stay valid as
// long as this object lives.
#pragma once

#include <memory>
#include <string>

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace fedge::agent {

class AgentMetrics {
 private:
  // First member: the references below are built from it.
  std::shared_ptr<prometheus::Registry> registry_;

 public:
  AgentMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // Counts one inference request (by endpoint and HTTP code) and its latency.
  void ObserveInference(const std::string& endpoint, int http_code, double seconds);

  prometheus::Counter& train_steps_total;
  prometheus::Gauge& train_loss;
  prometheus::Counter& rounds_participated_total;
  prometheus::Counter& bytes_sent_total;
  prometheus::Counter& bytes_received_total;
  prometheus::Counter& upload_resumes_total;        // interrupted uploads continued from an offset
  prometheus::Gauge& update_bytes;                  // last encoded update
  prometheus::Gauge& update_raw_bytes;              // the same update as fp32
  prometheus::Counter& update_raw_bytes_total;      // every submitted update as fp32
  prometheus::Counter& update_encoded_bytes_total;  // the same updates as encoded
  prometheus::Gauge& error_feedback_residual_norm;  // L2 norm of the carried residual
  prometheus::Gauge& global_version;                // installed for serving
  prometheus::Gauge& eval_accuracy;
  prometheus::Gauge& feedback_log_bytes;         // size of feedback.jsonl after the last append
  prometheus::Counter& feedback_log_full_total;  // entries refused: the log reached its cap

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& durations_;
};

}  // namespace fedge::agent
