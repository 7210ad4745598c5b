// The fedge-agent process as a library: resolves flags against the job spec,
// loads the data and the two model instances (one trains, one serves), starts
// the HTTP API and runs the aggregator client. main() only parses flags and
// forwards signals.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fedge/agent/runtime/aggregator_client.h"
#include "fedge/agent/runtime/scheduler.h"
#include "fedge/agent/runtime/state_store.h"
#include "fedge/agent/runtime/stop_signal.h"
#include "fedge/agent/runtime/tls_files.h"
#include "fedge/agent/text_classifier.h"
#include "fedge/job_spec.h"
#include "fedge/status.h"

namespace fedge {
class HttpServer;
}

namespace fedge::agent {

class AggregatorClient;
class AgentMetrics;
class ApiTokenFile;
class InferenceApi;
class ServingModel;

// Command-line flags as given (empty: not given).
struct AgentFlags {
  std::string config;      // --config: FederatedTrainingJob manifest
  std::string aggregator;  // --aggregator host:port
  std::string agent_id;    // --agent-id (default: hostname)
  std::string node_name;   // --node-name (default: $NODE_NAME, then hostname)
  std::string token;       // --token
  std::string token_file;  // --token-file
  std::string data_dir;    // --data-dir (default: spec.data.path)
  std::string model_dir;   // --model-dir (default: spec.model.path)
  std::string http;        // --http host:port (default: 0.0.0.0:<spec.serving.port>)
  std::string state_dir;   // --state-dir (default: ./.fedge-agent/<agent-id>)
  int threads = 1;         // --threads: torch intra-op threads per model
  bool exit_when_done = false;
  std::string tls_ca;           // --tls-ca: PEM CA of the aggregator's certificate (TLS on)
  std::string tls_server_name;  // --tls-server-name: name to verify (default: --aggregator's host)
  std::string tls_cert;         // --tls-cert / --tls-key: client certificate (mutual TLS)
  std::string tls_key;
  std::string api_token_file;  // --api-token-file / $FEDGE_API_TOKEN_FILE: bearer tokens for /v1/*
  uint64_t feedback_max_bytes = StateStoreOptions::kDefaultFeedbackMaxBytes;  // --feedback-max-bytes, > 0
  std::string job_uid;  // --job-uid / $FEDGE_JOB_UID: the job's metadata.uid (StateStore::BindJobUid)
  // Serving scheduler (scheduler.h): --max-batch-size, --max-batch-tokens,
  // --max-queued-requests, --batch-gather-window-us.
  int max_batch_size = SchedulerOptions{}.max_batch_size;
  int max_batch_tokens = SchedulerOptions{}.max_batch_tokens;
  int64_t max_queued_requests = static_cast<int64_t>(SchedulerOptions{}.max_queued_requests);
  int64_t batch_gather_window_us = SchedulerOptions{}.gather_window.count();
  int max_decode_batch = SchedulerOptions{}.max_decode_batch;  // --max-decode-batch
};

// Everything resolved: absolute choices, no defaults left to apply.
struct AgentSettings {
  JobSpec spec;
  std::string aggregator;
  std::string agent_id;
  std::string node_name;
  std::string token;       // as read at start
  std::string token_file;  // "": `token` for good; else re-read before every Join
  std::string train_path;
  std::string eval_path;
  std::string model_dir;
  std::string http;
  std::string state_dir;
  int threads = 1;
  bool exit_when_done = false;
  ChannelTls tls;              // PEM contents read from the --tls-* files; empty CA: plaintext
  TlsFilePaths tls_files;      // the --tls-* paths: re-read when they change (certificate rotation)
  std::string api_token_file;  // empty: the inference API needs no token
  uint64_t feedback_max_bytes = StateStoreOptions::kDefaultFeedbackMaxBytes;
  std::string job_uid;          // empty: the state directory is used whatever run left it
  SchedulerOptions scheduling;  // validated
};

// Applies the defaults above. INVALID_ARGUMENT names the flag at fault;
// `node_name_env` is $NODE_NAME (injected for tests).
StatusOr<AgentSettings> ResolveAgentSettings(const AgentFlags& flags, const JobSpec& spec,
                                             const std::string& hostname, const std::string& node_name_env);

class Agent {
 public:
  // Loads data and models, restores the persisted global, starts HTTP.
  static StatusOr<std::unique_ptr<Agent>> Start(const AgentSettings& settings);
  ~Agent();

  // Runs the client loop. Returns OK after DONE with exit_when_done, after
  // DONE followed by Stop() (the agent keeps serving until then), or after
  // Stop(); a fatal client error otherwise. HTTP is stopped on return.
  // An agent bound to a job uid whose state holds that run's final global
  // (an earlier agent of this node was told DONE: this one is a restart after
  // the job, e.g. the node rebooted) runs no client: it serves the final
  // global until Stop() (or returns at once with exit_when_done).
  Status Run();

  // True when Run will only serve the final global (see Run).
  bool job_done_before_start() const { return job_done_before_start_; }

  // Thread-safe; idempotent. Ends Run promptly.
  void Stop();

  int http_port() const;

 private:
  Agent() = default;

  AgentSettings settings_;
  std::vector<Example> train_;
  std::vector<Example> eval_;
  std::unique_ptr<TrainableModel> trainer_;
  std::unique_ptr<AgentMetrics> metrics_;
  std::unique_ptr<ServingModel> serving_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<ApiTokenFile> api_tokens_;
  std::unique_ptr<InferenceApi> api_;
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<AggregatorClient> client_;
  StopSignal stop_;
  bool job_done_before_start_ = false;
};

}  // namespace fedge::agent
