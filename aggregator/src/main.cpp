// fedge-aggregator: flags, signals, construct, run.
#include <pthread.h>
#include <signal.h>

#include <absl/synchronization/mutex.h>
#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <tuple>

#include "fedge/aggregator/server.h"
#include "fedge/file_util.h"
#include "fedge/job_spec.h"
#include "fedge/log.h"
#include "fedge/version.h"

namespace {

std::mutex g_mu;
std::condition_variable g_cv;
bool g_stop = false;  // guarded by g_mu
int g_signal = 0;     // guarded by g_mu

}  // namespace

int main(int argc, char** argv) {
  using namespace fedge;
  using namespace std::chrono_literals;

  std::string config_path, checkpoint_dir, tokens_file, tls_cert, tls_key, tls_client_ca;
  std::string agent_token_jwks_file, agent_token_issuer, agent_token_audience, agent_token_service_account;
  std::string listen = "0.0.0.0:7070", http = "0.0.0.0:8081";
  std::string log_level = "info", log_format = "logfmt";
  int expected_agents = 0;
  uint64_t max_update_bytes = 256ull << 20;
  uint64_t max_partial_upload_bytes = 256ull << 20;
  uint64_t max_upload_buffer_bytes = 512ull << 20;
  int64_t stream_idle_timeout_s = 120;
  int64_t agent_session_grace_s = 3600;
  std::string agent_revoked_pods_file;
  int max_open_streams = 1024;
  uint64_t grpc_memory_bytes = aggregator::ServerOptions{}.grpc_memory_bytes;
  int grpc_stream_window_bytes = aggregator::ServerOptions{}.grpc_stream_window_bytes;
  int grpc_threads = aggregator::ServerOptions{}.grpc_threads;
  bool exit_when_done = false, show_version = false, blocking_evaluation = false, serve_final = false;

  CLI::App app{
      "fedge-aggregator: runs the rounds of one FederatedTrainingJob and serves protocol v1 to agents"};
  app.add_option("--config", config_path, "FederatedTrainingJob manifest (YAML or JSON)");
  app.add_option("--listen", listen, "gRPC address host:port for agents")->capture_default_str();
  app.add_option("--http", http, "HTTP address host:port for /healthz, /readyz, /metrics, /v1/status")
      ->capture_default_str();
  app.add_option("--checkpoint-dir", checkpoint_dir,
                 "directory for checkpoints; resumes from it if it holds one");
  app.add_option("--expected-agents", expected_agents,
                 "agents to wait for before the first round (0: spec.agents.minAgents)")
      ->capture_default_str();
  app.add_option("--tokens-file", tokens_file,
                 "file of \"agent-id token\" lines; agents must present their token (re-read when "
                 "the file changes, e.g. a mounted Secret gaining a new node's token)");
  app.add_option("--agent-token-jwks-file", agent_token_jwks_file,
                 "JWKS of the cluster's service-account issuer (GET /openid/v1/jwks): agents present their "
                 "projected service-account token at Join, verified locally against these keys (re-read when "
                 "the file changes); needs the other --agent-token-* flags; not with --tokens-file");
  app.add_option("--agent-token-issuer", agent_token_issuer,
                 "iss the agent tokens must carry (the API server's --service-account-issuer)");
  app.add_option("--agent-token-audience", agent_token_audience,
                 "audience the agent tokens must include (the projected volume's audience)");
  app.add_option("--agent-token-service-account", agent_token_service_account,
                 "NAMESPACE/NAME of the service account the agent pods run as; a token's node "
                 "(kubernetes.io.node.name) must also be the agent id it joins as");
  app.add_option("--agent-session-grace-seconds", agent_session_grace_s,
                 "with --agent-token-*: end an agent's session this long after the newest token it presented "
                 "expired (agents send the token the kubelet renewed with every request; raise it for sites "
                 "whose control plane may be unreachable longer than a token lives)")
      ->capture_default_str();
  app.add_option("--agent-revoked-pods-file", agent_revoked_pods_file,
                 "with --agent-token-*: JSON list of agent pods (by uid) the operator saw deleted or ended; "
                 "their tokens are refused and their sessions end (re-read when the file changes; a missing "
                 "file lists none)");
  app.add_option(
      "--tls-cert", tls_cert,
      "PEM serving certificate (chain): serve agents over TLS (re-read every 60 s with --tls-key and "
      "--tls-client-ca: a renewed certificate is served without a restart)");
  app.add_option("--tls-key", tls_key, "PEM private key of --tls-cert");
  app.add_option("--tls-client-ca", tls_client_ca,
                 "PEM CA bundle: require agents to present a client certificate it signed (mutual TLS)");
  app.add_option("--max-update-bytes", max_update_bytes, "largest encoded update accepted")
      ->capture_default_str();
  app.add_option("--max-partial-upload-bytes", max_partial_upload_bytes,
                 "memory reserved for interrupted uploads agents may resume (least recently used "
                 "evicted first; 0: uploads are not resumable)")
      ->capture_default_str();
  app.add_option(
         "--max-upload-buffer-bytes", max_upload_buffer_bytes,
         "memory for every incomplete upload (streams still arriving and partial uploads), counted as "
         "bytes arrive; a chunk beyond it ends its stream with RESOURCE_EXHAUSTED (0: no limit)")
      ->capture_default_str();
  app.add_option("--stream-idle-timeout-seconds", stream_idle_timeout_s,
                 "cancel an upload or download stream that moves no message for this long (0: never)")
      ->capture_default_str();
  app.add_option("--max-open-streams", max_open_streams,
                 "SubmitUpdate + FetchGlobal streams open at once; more are refused with RESOURCE_EXHAUSTED "
                 "(0: no limit)")
      ->capture_default_str();
  app.add_option(
         "--grpc-memory-bytes", grpc_memory_bytes,
         "gRPC's own memory (grpc::ResourceQuota): TCP read buffers, HTTP/2 state and chunks not yet "
         "handed over, of every connection; near it gRPC frees idle connections' read buffers, past it "
         "it cancels streams (RESOURCE_EXHAUSTED) (0: --max-upload-buffer-bytes + 128 MiB)")
      ->capture_default_str();
  app.add_option("--grpc-stream-window-bytes", grpc_stream_window_bytes,
                 "HTTP/2 flow-control window per stream (fixed): an upload moves at most this per round "
                 "trip, and a connection buffers at most this per open stream (0: gRPC's 64 KiB)")
      ->check(CLI::Range(0, 1 << 30))
      ->capture_default_str();
  app.add_option("--grpc-threads", grpc_threads,
                 "gRPC completion queues, each drained by one thread that also polls the sockets (1: the "
                 "least CPU per update, at most one core's worth of calls)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_flag("--blocking-evaluation", blocking_evaluation,
               "evaluate every round's global in a phase of its own, all live agents reporting before the "
               "next round starts; by default, when every agent can, a round's global is evaluated by the "
               "next round's agents before they train and the results come with their updates (one barrier "
               "and two calls per agent and round fewer; the last round is always a phase)");
  app.add_flag("--exit-when-done", exit_when_done,
               "exit once the job finished and every agent was told DONE (or after a grace period)");
  app.add_flag("--serve-final", serve_final,
               "the job has finished: hand the final global model in --checkpoint-dir to every agent that "
               "joins (told DONE), train nothing, run until stopped (the operator runs this for nodes that "
               "join a succeeded job)")
      ->excludes("--exit-when-done");
  app.add_option("--log-level", log_level, "debug | info | warn | error")->capture_default_str();
  app.add_option("--log-format", log_format, "logfmt | json")->capture_default_str();
  app.add_flag("--version", show_version, "print the version and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help: 0; a bad or conflicting flag: 2 (CLI11's own codes are 100+)
  }

  if (show_version) {
    std::printf("fedge-aggregator %s (%s)\n", fedge::Version(), fedge::GitRev());
    return 0;
  }
  log::Level level;
  log::Format format;
  if (!log::ParseLevel(log_level, &level) || !log::ParseFormat(log_format, &format)) {
    std::fprintf(stderr, "fedge-aggregator: bad --log-level or --log-format\n");
    return 2;
  }
  log::Init("aggregator", level, format);
  if (config_path.empty()) {
    log::Error("--config is required (the FederatedTrainingJob manifest)");
    return 2;
  }

  // gRPC's mutexes are absl::Mutex, and Debian builds absl without NDEBUG,
  // so every lock also updated absl's global lock-order graph (deadlock
  // detection): ~2-3% of the aggregator's CPU at 2,000 agents
  // (GraphCycles::GetId in perf). Before any thread starts.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Block the signals in every thread; one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread([signals] {
    int sig = 0;
    sigwait(&signals, &sig);
    std::lock_guard<std::mutex> lock(g_mu);
    g_stop = true;
    g_signal = sig;
    g_cv.notify_all();
  }).detach();

  auto spec = LoadJobSpec(config_path);
  if (!spec.ok()) {
    log::Error("cannot load the job spec", {{"path", config_path}, {"error", spec.status().ToString()}});
    return 2;
  }

  aggregator::ServerOptions options;
  for (auto [flag, path, pem] : {std::tuple{"--tls-cert", &tls_cert, &options.tls_cert_pem},
                                 std::tuple{"--tls-key", &tls_key, &options.tls_key_pem},
                                 std::tuple{"--tls-client-ca", &tls_client_ca, &options.tls_client_ca_pem}}) {
    if (path->empty()) continue;
    auto text = ReadFile(*path);
    if (!text.ok()) {
      log::Error("cannot read a TLS file", {{"flag", flag}, {"error", text.status().ToString()}});
      return 2;
    }
    *pem = std::move(*text);
  }
  // Re-read while serving: the operator renews the serving certificate in its Secret.
  options.tls_cert_file = tls_cert;
  options.tls_key_file = tls_key;
  options.tls_client_ca_file = tls_client_ca;
  options.grpc_address = listen;
  options.http_address = http;
  options.checkpoint_dir = checkpoint_dir;
  options.expected_agents = expected_agents;
  options.blocking_evaluation = blocking_evaluation;
  options.serve_final = serve_final;
  options.tokens_file = tokens_file;
  options.agent_token_jwks_file = agent_token_jwks_file;
  options.agent_token_issuer = agent_token_issuer;
  options.agent_token_audience = agent_token_audience;
  options.agent_token_service_account = agent_token_service_account;
  options.agent_session_grace_s = agent_session_grace_s;
  options.agent_revoked_pods_file = agent_revoked_pods_file;
  options.max_partial_upload_bytes = max_partial_upload_bytes;
  options.max_update_bytes = max_update_bytes;
  options.max_upload_buffer_bytes = max_upload_buffer_bytes;
  options.stream_idle_timeout_ms = stream_idle_timeout_s * 1000;
  options.max_open_streams = max_open_streams;
  options.grpc_memory_bytes = grpc_memory_bytes;
  options.grpc_stream_window_bytes = grpc_stream_window_bytes;
  options.grpc_threads = grpc_threads;
  auto server = aggregator::AggregatorServer::Create(*spec, options);
  if (!server.ok()) {
    log::Error("cannot start the aggregator", {{"error", server.status().ToString()}});
    return 1;
  }
  if (Status s = (*server)->Start(); !s.ok()) {
    log::Error("cannot start the aggregator", {{"error", s.ToString()}});
    return 1;
  }

  // With --exit-when-done: leave once every joined agent was told DONE (plus a
  // moment for its last RPC), or after a grace period for agents that never ask.
  constexpr auto kAfterDone = 1s;
  constexpr int64_t kGraceMs = 30'000;
  int exit_code = 0;
  aggregator::RoundEngine& engine = (*server)->engine();
  std::unique_lock<std::mutex> lock(g_mu);
  while (!g_stop) {
    g_cv.wait_for(lock, 100ms);
    if (g_stop || !exit_when_done) continue;
    auto finished = engine.FinishedAtMs();
    if (!finished) continue;
    const bool failed = engine.GetStatus().state == aggregator::JobState::kFailed;
    const int64_t since = aggregator::SystemClock::Get()->NowUnixMs() - *finished;
    if (engine.AllAgentsDone() || since >= (failed ? 2'000 : kGraceMs)) {
      lock.unlock();
      if (!failed) std::this_thread::sleep_for(kAfterDone);
      lock.lock();
      exit_code = failed ? 1 : 0;
      log::Info("job finished; exiting", {{"state", failed ? "Failed" : "Succeeded"}});
      break;
    }
  }
  if (g_signal != 0) log::Info("signal received; shutting down", {{"signal", g_signal}});
  lock.unlock();
  (*server)->Shutdown(5s);
  return exit_code;
}
