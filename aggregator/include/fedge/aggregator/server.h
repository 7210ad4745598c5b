// The aggregator process minus flag parsing: round engine + checkpoints +
// protocol handler behind a gRPC server, and /healthz, /readyz, /metrics and
// /v1/status behind fedge::HttpServer. main.cpp and the integration tests
// construct this.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "fedge/aggregator/checkpoint.h"
#include "fedge/aggregator/clock.h"
#include "fedge/aggregator/metrics.h"
#include "fedge/aggregator/protocol_handler.h"
#include "fedge/aggregator/round_engine.h"
#include "fedge/job_spec.h"
#include "fedge/status.h"

namespace grpc {
class Server;
class ServerCredentials;
}  // namespace grpc
namespace fedge {
class HttpServer;
}

namespace fedge::aggregator {

struct ServerOptions {
  std::string grpc_address = "0.0.0.0:7070";  // port 0: pick one (see grpc_port())
  std::string http_address = "0.0.0.0:8081";  // "": no HTTP listener
  std::string checkpoint_dir;                 // "": no checkpoints
  int expected_agents = 0;                    // 0: spec.agents.minAgents
  // Always an evaluate phase per round, never with the next round's updates
  // (EngineOptions::evaluate_with_next_round).
  bool blocking_evaluation = false;
  // Serve the finished job's final global from the checkpoint in checkpoint_dir
  // (RoundEngine::ServeFinal): every agent that joins is told DONE with it and
  // nothing is trained. FAILED_PRECONDITION when there is no checkpoint.
  bool serve_final = false;
  std::string tokens_file;  // "": no token check; re-read when it changes
  // Kubernetes projected service-account tokens as Join tokens instead
  // (service_account_token.h): all four set, or none; not with tokens_file.
  // The JWKS file is re-read when it changes.
  std::string agent_token_jwks_file;
  std::string agent_token_issuer;
  std::string agent_token_audience;
  std::string agent_token_service_account;  // NAMESPACE/NAME
  // A session ends this long after the newest token its agent presented
  // expired (ProtocolOptions::session_grace_s). Not negative.
  int64_t agent_session_grace_s = 3600;
  // With the agent_token_* options: pods whose tokens are refused (revoked_pods.h).
  std::string agent_revoked_pods_file;
  // TLS for the gRPC listener (PEM contents, not paths). Cert and key set: agents
  // must connect over TLS; plaintext connections fail their handshake. Client CA
  // set too: agents must also present a certificate signed by it (mutual TLS).
  std::string tls_cert_pem;
  std::string tls_key_pem;
  std::string tls_client_ca_pem;
  // The files those PEM contents were read from (all "" or, for each PEM set,
  // its file). Set: the listener re-reads them every tls_refresh_interval_s
  // and serves what it finds, so a certificate the operator renews reaches new
  // handshakes without a restart (the kubelet rewrites a mounted Secret in
  // place). A file that cannot be read keeps what was served before.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  unsigned tls_refresh_interval_s = 60;
  uint64_t max_update_bytes = 256ull << 20;
  uint64_t max_partial_upload_bytes = 256ull << 20;  // interrupted uploads held for resumption
  // In-flight limits (issue 10, item 7); 0 disables each.
  // Every byte of every incomplete upload in memory, counted as it arrives.
  uint64_t max_upload_buffer_bytes = 512ull << 20;
  int max_open_streams = 1024;                // SubmitUpdate + FetchGlobal streams at once
  int max_streams_per_connection = 16;        // HTTP/2 MAX_CONCURRENT_STREAMS
  int64_t stream_header_timeout_ms = 10'000;  // a SubmitUpdate stream must send its header within
  int64_t stream_idle_timeout_ms = 120'000;   // a stream that moves no message this long is cancelled
  // grpc::ResourceQuota over gRPC's own buffers (TCP read buffers, HTTP/2
  // state, messages not yet handed to a reactor) of every connection. gRPC
  // 1.51 keeps a spare read buffer per connection sized by the largest burst
  // it read (no upper bound; ~0.5 MB per connection after 83 KB uploads, 260
  // MiB at 834 connections); near this quota it reads into 8 KiB slices and
  // frees idle connections' spare buffers, so the total stays about here
  // whatever the connection count. Past it gRPC cancels streams
  // (RESOURCE_EXHAUSTED), so it must hold the uploads in flight: gRPC holds
  // each chunk (<= 4 MiB) whole before the reactor sees it, and 160
  // concurrent 4 MB uploads were cut with 128 MiB. 0: max_upload_buffer_bytes
  // + kGrpcBaseMemoryBytes (the same budget again for chunks not yet
  // delivered; no limit when max_upload_buffer_bytes is 0).
  uint64_t grpc_memory_bytes = 0;
  // HTTP/2 flow-control window per stream, fixed: BDP probing is off, so the
  // window does not follow memory pressure (with it on, a window shrunk under
  // pressure reset uploads already in flight: RST_STREAM PROTOCOL_ERROR, 1-6
  // per 30,000 uploads). An upload moves at most this per round trip.
  int grpc_stream_window_bytes = 1 << 20;
  int grpc_max_threads = 64;  // grpc::ResourceQuota
  // gRPC completion queues, each drained by one thread that also polls the
  // sockets (server.cpp). One thread handles every call without handing it
  // to another and takes the least CPU per update, but serves at most one
  // core's worth; two kept fedge_bench_scale's rounds/min at the callback
  // API's on two shared cores (aggregator/README.md, Session 22).
  int grpc_threads = 2;
  int64_t tick_interval_ms = 200;  // how often deadlines are checked
  // Longest GetTask long-poll held (TaskRequest.wait_ms is capped at it, and
  // at 20 s); told to agents in JoinResponse.max_task_wait_ms. 0: every
  // GetTask is answered at once (agents poll after retry_after_ms).
  int64_t max_task_wait_ms = 20'000;
  Clock* clock = nullptr;  // null: SystemClock
  // Overrides of the engine options derived from the spec (tests).
  int64_t round_timeout_ms = 0;         // 0: spec.rounds.timeoutSeconds
  int retry_after_ms = 0;               // 0: the engine's default (200 ms)
  int64_t secagg_phase_timeout_ms = 0;  // 0: the round timeout (SecAggOptions::phase_timeout_ms)
  // Sees each masked input as the aggregator holds it (SecAggOptions::on_masked_input).
  std::function<void(const std::string& agent_id, const std::vector<uint32_t>& input,
                     const secagg::RoundParams& params)>
      secagg_on_masked_input;
};

// What a grpc_memory_bytes of 0 adds to max_upload_buffer_bytes.
inline constexpr uint64_t kGrpcBaseMemoryBytes = 128ull << 20;
// The grpc::ResourceQuota size `options` ask for; 0: no limit.
uint64_t GrpcMemoryBytes(const ServerOptions& options);

// JSON for GET /v1/status (see README of the aggregator for the shape).
std::string StatusJson(const EngineStatus& status);

class AggregatorServer {
 public:
  // Builds the engine and, with a checkpoint dir, resumes from its newest
  // usable checkpoint. Fails (with a message naming the problem) on a bad
  // tokens file, an incomplete or conflicting agent_token_* set, a bad JWKS
  // file, an unusable checkpoint dir or an unsupported spec.
  static StatusOr<std::unique_ptr<AggregatorServer>> Create(const JobSpec& spec, ServerOptions options);
  ~AggregatorServer();  // Shutdown with a 2 s grace

  // Binds and starts serving. UNAVAILABLE if an address cannot be bound.
  Status Start();
  // Stops accepting, lets in-flight RPCs finish until `grace` passes, then
  // cancels them. Idempotent.
  void Shutdown(std::chrono::milliseconds grace);

  int grpc_port() const { return grpc_port_; }
  int http_port() const;
  RoundEngine& engine() { return *engine_; }
  AggregatorMetrics& metrics() { return *metrics_; }
  const ProtocolHandler& protocol() const { return *handler_; }
  // Open SubmitUpdate + FetchGlobal streams.
  size_t open_streams() const;
  // GetTask calls held (long-poll) now, and GetTask calls received since Start.
  size_t parked_tasks() const;
  uint64_t get_task_calls() const;

 private:
  class Service;
  AggregatorServer() = default;
  std::shared_ptr<grpc::ServerCredentials> ServerCredentials() const;

  ServerOptions options_;
  std::unique_ptr<AggregatorMetrics> metrics_;
  std::unique_ptr<CheckpointStore> checkpoints_;
  std::unique_ptr<RoundEngine> engine_;
  std::unique_ptr<ProtocolHandler> handler_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<HttpServer> http_;
  int grpc_port_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;   // guarded by mu_
  bool shut_down_ = false;  // guarded by mu_
  bool started_ = false;    // guarded by mu_
  std::thread ticker_;
};

}  // namespace fedge::aggregator
