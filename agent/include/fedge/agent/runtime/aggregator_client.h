// The agent's side of protocol v1 (proto/fedge.proto): join the job, then ask
// for tasks until the job is done or the agent is told to stop.
//
//   WAIT        sleep retry_after_ms (a Stop() ends the sleep at once)
//   INITIALIZE  upload the fresh trainable state (full state, fp32, round 0)
//   TRAIN       fetch the global, train locally, upload delta = trained - global
//               encoded with the task's codec
//   EVALUATE    fetch the global (unless held), evaluate on local held-out data,
//               report accuracy and loss
//   DONE        fetch the final global, install it for serving, return
//
// Every fetched global is installed into the ServingModel and persisted in the
// StateStore. Failures: UNAVAILABLE / DEADLINE_EXCEEDED and other transient
// errors back off exponentially with jitter and resume; UNAUTHENTICATED or
// NOT_FOUND outside Join means the aggregator lost the session (restart) and
// the agent rejoins; a refused Join (protocol, token, job) or a global model
// whose layout does not match the local model is fatal.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "fedge.grpc.pb.h"
#include "fedge/agent/runtime/chunks.h"
#include "fedge/agent/runtime/feedback_mix.h"
#include "fedge/agent/runtime/state_store.h"
#include "fedge/agent/runtime/stop_signal.h"
#include "fedge/agent/runtime/update.h"
#include "fedge/agent/text_classifier.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::agent {

class AgentMetrics;
class ServingModel;

inline constexpr uint32_t kProtocolVersion = 1;

struct RpcDeadlines {
  std::chrono::milliseconds join{10'000};
  std::chrono::milliseconds get_task{30'000};
  std::chrono::milliseconds fetch{300'000};
  std::chrono::milliseconds submit{300'000};
  std::chrono::milliseconds report{10'000};
};

struct ClientOptions {
  std::string job;  // "namespace/name"
  std::string agent_id;
  std::string node_name;
  std::string token;  // bearer token for Join; may be empty
  // Set: `token` is re-read from this file (ReadTokenFile) before every Join,
  // since the kubelet rotates a projected service-account token in place and
  // an agent that rejoins an hour later must not present an expired one. A
  // read that fails keeps the token read last (or `token`), with a warning.
  std::string token_file;
  // With token_file: how often the file is re-read for RequestHeader.token,
  // which every request carries (the aggregator extends the session to the
  // renewed token's expiry; the kubelet renews at 80% of its lifetime).
  std::chrono::milliseconds token_recheck{10'000};
  // With token_file: UNAUTHENTICATED at Join is retried (re-reading the file)
  // for this long before the agent gives up: an expired token the kubelet is
  // about to renew, or a clock the node is still correcting. 0: never.
  std::chrono::milliseconds join_refusal_retry{180'000};
  std::string model_family = "bert";
  int eval_batch_size = 32;
  RpcDeadlines deadlines;
  // GetTask long-poll (TaskRequest.wait_ms): how long the aggregator may hold
  // a WAIT answer, capped at what it said it supports at Join
  // (JoinResponse.max_task_wait_ms); the call's deadline is get_task + this.
  // An aggregator that says 0 (or predates the field) is polled after
  // Task.retry_after_ms, as is one that answers WAIT early. 0: always poll.
  std::chrono::milliseconds task_wait{10'000};
  std::chrono::milliseconds backoff_initial{100};
  std::chrono::milliseconds backoff_max{10'000};
  uint64_t jitter_seed = 0;              // 0: from std::random_device
  size_t chunk_bytes = kSendChunkBytes;  // data per SubmitUpdate chunk
  // Attempts to deliver one update whose stream breaks (UNAVAILABLE, deadline):
  // each retry asks the aggregator how many bytes it holds (GetUploadStatus)
  // and sends only the rest. After the last, the task fails and the loop backs off.
  int upload_attempts = 6;
  // Secure aggregation: asked before each phase after the key advertisement;
  // false makes the agent drop out of the round there (fault injection for
  // tests, secagg_client.h). Unset: never.
  std::function<bool(std::string_view phase)> secagg_before_phase;
};

// What the client works with; all pointers must outlive the client. `store`
// may be null (nothing persisted).
struct ClientDeps {
  TrainableModel* trainer = nullptr;  // used only by the client's thread
  ServingModel* serving = nullptr;
  StateStore* store = nullptr;
  AgentMetrics* metrics = nullptr;
  const std::vector<Example>* train_data = nullptr;
  const std::vector<Example>* eval_data = nullptr;
  // Optional: the training set of a TRAIN task, given the local shard and the
  // round's seed (the agent mixes the node's feedback in, feedback_mix.h); its
  // feedback_used goes to UpdateHeader.feedback_examples. Called on the
  // client's thread. Unset: the shard alone.
  std::function<MixedTrainingSet(const std::vector<Example>& local, uint64_t seed)> training_set;
};

enum class RunOutcome { kDone, kStopped };

// How the agent's channel to the aggregator is secured. Empty root_ca_pem:
// plaintext (the aggregator must not have TLS enabled).
struct ChannelTls {
  std::string root_ca_pem;  // PEM CA that signed the aggregator's certificate
  std::string server_name;  // name to verify in its certificate ("": the address's host)
  std::string cert_pem;     // client certificate for mutual TLS (optional, with key_pem)
  std::string key_pem;
};

class AggregatorClient {
 public:
  AggregatorClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options, ClientDeps deps);
  ~AggregatorClient();

  // Makes `global` the held version (from the state dir), so an EVALUATE of
  // that version needs no fetch. Call before Run.
  void Restore(PersistedGlobal global);

  // Runs the loop on the calling thread until DONE (kDone), Stop() (kStopped)
  // or a fatal error (the error, with a reason an operator can act on).
  StatusOr<RunOutcome> Run();

  // Ends Run soon: wakes sleeps, cancels the RPC in flight. A training step in
  // progress finishes and its update is dropped. Thread-safe; idempotent.
  void Stop();

  // Channel arguments the agent needs (receive limit above one 4 MiB chunk).
  static std::shared_ptr<grpc::Channel> Dial(const std::string& address, const ChannelTls& tls = {});

  // Asked before each step of Run, on Run's thread: a new channel to use from then
  // on, or null to keep the current one. fedge-agent re-dials with rotated TLS files
  // this way (tls_files.h RedialOnTlsChange); the session survives (it belongs to
  // the agent id, not the connection). Call before Run.
  using Redialer = std::function<std::shared_ptr<grpc::Channel>()>;
  void SetRedialer(Redialer redialer) { redial_ = std::move(redialer); }

 private:
  struct Held {
    int64_t version = 0;
    std::string checksum;
    TensorBundle bundle;
  };

  Status Join();
  StatusOr<fedge::v1::Task> GetTask();
  Status DoInitialize(const fedge::v1::Task& task);
  Status DoTrain(const fedge::v1::Task& task);
  Status DoEvaluate(const fedge::v1::Task& task);
  // Evaluates the held global on the eval data (nothing when there is none),
  // as its metrics and log record it; `round`: the round of that global.
  StatusOr<fedge::v1::Evaluation> EvaluateHeld(int64_t round);
  // TRAIN under secure aggregation: masks and submits `delta` (secagg_client.h);
  // `feedback_examples` is reported with the masked input.
  Status SubmitSecurely(const fedge::v1::Task& task, const TensorBundle& delta, int64_t num_examples,
                        int steps, double loss, int64_t feedback_examples);
  Status DoDone(const fedge::v1::Task& task);

  // Makes `version` the held global: fetches it unless already held, then
  // installs it for serving and persists it.
  Status EnsureGlobal(int64_t version, const std::string& checksum);
  StatusOr<Held> Fetch(int64_t version, const std::string& checksum);
  // Delivers header + payload as a named (resumable) upload: OK with *accepted
  // set, or the RPC error once upload_attempts are spent. A broken stream is
  // resumed from the offset the aggregator reports.
  Status Submit(const fedge::v1::UpdateHeader& header, const std::string& payload, bool* accepted);
  // One SubmitUpdate stream carrying payload[offset:].
  Status SendFrom(const fedge::v1::UpdateHeader& header, const std::string& payload, uint64_t offset,
                  fedge::v1::SubmitUpdateResponse* response);
  // Bytes of `upload_id` the aggregator holds (0: none, start over).
  StatusOr<uint64_t> HeldBytes(const std::string& upload_id, uint64_t total_bytes);

  fedge::v1::RequestHeader Header() const;
  // The token to present: options_.token, re-read from options_.token_file
  // when `force` or token_recheck has passed since the last read (a failed
  // read keeps the last token, with a warning).
  std::string CurrentToken(bool force) const;
  // Registers `ctx` as the RPC Stop() cancels; returns false if already stopped.
  bool BeginCall(grpc::ClientContext* ctx);
  void EndCall();
  // Marks a non-retryable failure; Run returns it.
  Status Fatal(Status status);
  // Waits `delay` (false once stopped) while driving the channel's connection attempt.
  // RPCs are fail-fast, and between them nothing else in this process polls the channel:
  // a TLS handshake started in the background then stalled with the server's reply unread
  // until it timed out, attempt after attempt. With `until_connected`, returns as soon as
  // the channel is ready (the aggregator is back: no need to sleep out the backoff).
  bool WaitPolling(std::chrono::milliseconds delay, bool until_connected);

  ClientOptions options_;
  ClientDeps deps_;
  std::shared_ptr<grpc::Channel> channel_;             // replaced only on Run's thread
  std::unique_ptr<fedge::v1::Aggregator::Stub> stub_;  // on channel_
  Redialer redial_;
  TensorBundle layout_;  // the trainer's fresh trainable state: names and shapes
  StopSignal stop_;
  Backoff backoff_;
  std::string session_;  // empty: must (re)join
  // JoinResponse.max_task_wait_ms of the session; 0: the aggregator does not hold GetTask.
  std::chrono::milliseconds server_task_wait_{0};
  // The checksum of this session's uploads (JoinResponse.upload_checksum):
  // XXH3-128 when the aggregator asks for it, else SHA-256 (older aggregators).
  ChecksumAlgorithm upload_checksum_ = ChecksumAlgorithm::kSha256;
  // The long-poll this client asks for: min(options_.task_wait, server_task_wait_).
  std::chrono::milliseconds TaskWait() const;
  Held held_;
  UpdateEncoder encoder_;     // codec, top-k, error-feedback residual (in the state dir)
  ScaffoldControl scaffold_;  // SCAFFOLD's c_i (in the state dir)
  Status fatal_;

  std::mutex call_mu_;
  grpc::ClientContext* call_ = nullptr;  // guarded by call_mu_; the RPC in flight

  mutable std::mutex token_mu_;
  mutable std::string token_;                                 // guarded by token_mu_
  mutable std::chrono::steady_clock::time_point token_read_;  // guarded by token_mu_
  // When the first of the Join refusals in a row came (join_refusal_retry).
  std::optional<std::chrono::steady_clock::time_point> join_refused_since_;
};

// Largest Join token file read (a projected service-account token is ~1 KB).
inline constexpr size_t kMaxTokenFileBytes = 16u << 10;

// The token in `path`, surrounding whitespace trimmed. INVALID_ARGUMENT when
// the file holds more than kMaxTokenFileBytes or only whitespace; NOT_FOUND
// and other errno-derived codes when it cannot be read. Messages name the path.
StatusOr<std::string> ReadTokenFile(const std::string& path);

// gRPC status -> fedge Status (the codes are numerically identical).
Status FromGrpc(const grpc::Status& status, std::string_view what);

}  // namespace fedge::agent
