// fedge-agent: joins a federated training job, trains on node-local data and
// serves the job's global model over HTTP. Wiring only: flags, logging,
// signals; the work is in fedge_agent_runtime (fedge/agent/runtime/agent.h).
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>

#include "fedge/agent/runtime/agent.h"
#include "fedge/file_util.h"
#include "fedge/job_spec.h"
#include "fedge/log.h"
#include "fedge/version.h"

namespace {

std::string Hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "";
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  // `fedge-agent --make-state-dir ROOT NS/JOB`: the init container of the operator's
  // agent pods. It alone mounts the node's state root, creates the job's directory
  // there as the pod's user (no symbolic link followed) and exits; the agent container
  // then mounts only that directory, never other jobs' state (docs/security.md).
  if (argc >= 2 && std::string(argv[1]) == "--make-state-dir") {
    if (argc != 4) {
      std::cerr << "usage: fedge-agent --make-state-dir ROOT NAMESPACE/JOB\n";
      return 2;
    }
    fedge::Status made = fedge::MakeDirsBeneath(argv[2], argv[3]);
    if (!made.ok()) {
      std::cerr << "fedge-agent --make-state-dir: " << made.ToString() << "\n";
      if (made.code() == fedge::StatusCode::kPermissionDenied) {
        // The pod has no fsGroup: nothing changes the node directory's owner for it.
        std::cerr << "fedge-agent --make-state-dir: the node's agent-state root (the operator's "
                     "--node-state-dir, mounted here at "
                  << argv[2] << ") must be writable by uid " << ::getuid()
                  << "; on the node run: install -d -o " << ::getuid() << " -g " << ::getgid()
                  << " -m 0750 <that directory>\n";
      }
      return 1;
    }
    return 0;
  }
  // `fedge-agent --remove-state-dir ROOT NS/JOB`: the operator's state-cleanup pod, run
  // on each node after a job's agent pod is gone (the job deleted). It mounts the node's
  // state root like the init container above and removes the job's directory (global
  // models, feedback log, residuals) without following any link an agent left in it.
  if (argc >= 2 && std::string(argv[1]) == "--remove-state-dir") {
    if (argc != 4) {
      std::cerr << "usage: fedge-agent --remove-state-dir ROOT NAMESPACE/JOB\n";
      return 2;
    }
    int64_t removed = 0;
    fedge::Status gone = fedge::RemoveBeneath(argv[2], argv[3], &removed);
    if (!gone.ok()) {
      std::cerr << "fedge-agent --remove-state-dir: " << gone.ToString() << "\n";
      return 1;
    }
    std::cout << "fedge-agent --remove-state-dir: removed " << argv[2] << "/" << argv[3] << " (" << removed
              << " entries)\n";
    return 0;
  }
  // Block the signals before any thread exists (libtorch, gRPC and cpprest start
  // their own), so only the sigwait thread below ever receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR2);  // internal: wakes the signal thread at exit
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  fedge::agent::AgentFlags flags;
  std::string log_level = "info";
  std::string log_format = "logfmt";
  CLI::App app{"fedge-agent: federated fine-tuning and local inference on an edge node"};
  app.footer(
      "The operator's pods also run two single-purpose forms (first argument):\n"
      "  fedge-agent --make-state-dir ROOT NAMESPACE/JOB    create the job's state directory below ROOT\n"
      "  fedge-agent --remove-state-dir ROOT NAMESPACE/JOB  remove it (a deleted job), following no link");
  app.add_option("--config", flags.config, "FederatedTrainingJob manifest (YAML or JSON)")->required();
  app.add_option("--aggregator", flags.aggregator, "aggregator gRPC address HOST:PORT")->required();
  app.add_option("--agent-id", flags.agent_id, "agent id (default: hostname)");
  app.add_option("--node-name", flags.node_name, "node name (default: $NODE_NAME, then hostname)");
  app.add_option("--token", flags.token, "bearer token for Join");
  app.add_option("--token-file", flags.token_file, "file holding the bearer token");
  app.add_option("--data-dir", flags.data_dir,
                 "directory with spec.data.trainFile / evalFile (default: spec.data.path)");
  app.add_option("--model-dir", flags.model_dir, "Hugging Face model directory (default: spec.model.path)");
  app.add_option("--http", flags.http,
                 "inference/metrics listen address HOST:PORT (default: 0.0.0.0:<spec.serving.port>)");
  app.add_option("--state-dir", flags.state_dir,
                 "persisted global model and feedback (default: ./.fedge-agent/<agent-id>)");
  app.add_option("--threads", flags.threads, "torch intra-op threads per model (default 1)");
  app.add_flag("--exit-when-done", flags.exit_when_done, "exit 0 once the job is done instead of serving on");
  app.add_option("--tls-ca", flags.tls_ca, "PEM CA of the aggregator's certificate: connect over TLS");
  app.add_option("--tls-server-name", flags.tls_server_name,
                 "name the aggregator's certificate must carry (default: the --aggregator host)");
  app.add_option("--tls-cert", flags.tls_cert, "PEM client certificate for mutual TLS (with --tls-key)");
  app.add_option("--tls-key", flags.tls_key, "PEM private key of --tls-cert");
  app.add_option(
         "--api-token-file", flags.api_token_file,
         "bearer tokens (one per line) that every /v1/* request must present as 'Authorization: Bearer "
         "<token>'; re-read when it changes. /healthz, /readyz and /metrics stay open")
      ->envname("FEDGE_API_TOKEN_FILE");
  app.add_option("--feedback-max-bytes", flags.feedback_max_bytes,
                 "cap of the feedback log in --state-dir; beyond it POST /v1/feedback answers 507 "
                 "(default 64MiB; units b, kb, mb, gb = powers of 1024)")
      ->transform(CLI::AsSizeValue(false));
  app.add_option("--job-uid", flags.job_uid,
                 "the FederatedTrainingJob's metadata.uid (the operator sets it): state in --state-dir left "
                 "by another uid (a deleted job of the same name) is discarded at start")
      ->envname("FEDGE_JOB_UID");
  app.add_option("--max-batch-size", flags.max_batch_size,
                 "inputs per batched forward pass of /v1/classify and /v1/embeddings requests that wait "
                 "together (default 16; 1 turns batching off)");
  app.add_option("--max-batch-tokens", flags.max_batch_tokens,
                 "padded tokens (inputs x the longest) per batched forward pass (default 4096)");
  app.add_option(
      "--max-queued-requests", flags.max_queued_requests,
      "inference requests that may wait for the model; more get 429 with Retry-After (default 64)");
  app.add_option("--batch-gather-window-us", flags.batch_gather_window_us,
                 "microseconds the scheduler waits for more requests before a pass when clients were "
                 "concurrent (default 2000; never when one client is alone)");
  app.add_option("--max-decode-batch", flags.max_decode_batch,
                 "generations advanced together by one batched decode step (continuous batching; "
                 "default 8, 1: one sequence at a time)");
  app.add_option("--log-level", log_level, "debug | info | warn | error");
  app.add_option("--log-format", log_format, "logfmt | json");
  app.set_version_flag("--version",
                       std::string("fedge-agent ") + fedge::Version() + " (" + fedge::GitRev() + ")");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help: 0; a bad or conflicting flag: 2 (CLI11's own codes are 100+)
  }

  fedge::log::Level level;
  fedge::log::Format format;
  if (!fedge::log::ParseLevel(log_level, &level)) {
    std::cerr << "--log-level: expected debug|info|warn|error, got \"" << log_level << "\"\n";
    return 2;
  }
  if (!fedge::log::ParseFormat(log_format, &format)) {
    std::cerr << "--log-format: expected logfmt|json, got \"" << log_format << "\"\n";
    return 2;
  }
  fedge::log::Init("agent", level, format);

  auto spec = fedge::LoadJobSpec(flags.config);
  if (!spec.ok()) {
    fedge::log::Error("invalid job manifest", {{"path", flags.config}, {"error", spec.status().ToString()}});
    return 2;
  }
  const char* node_env = std::getenv("NODE_NAME");
  auto settings = fedge::agent::ResolveAgentSettings(flags, *spec, Hostname(), node_env ? node_env : "");
  if (!settings.ok()) {
    fedge::log::Error("invalid flags", {{"error", settings.status().ToString()}});
    return 2;
  }

  // The signal thread: a first SIGTERM/SIGINT stops the agent; SIGUSR2 only
  // wakes it when main is exiting anyway.
  std::mutex agent_mu;
  fedge::agent::Agent* running = nullptr;  // guarded by agent_mu
  std::atomic<bool> stop_requested{false};
  std::thread signal_thread([&] {
    int sig = 0;
    while (sigwait(&signals, &sig) == 0) {
      if (sig == SIGUSR2) return;
      fedge::log::Info("signal received; stopping", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
      stop_requested = true;
      std::lock_guard<std::mutex> lock(agent_mu);
      if (running != nullptr) running->Stop();
    }
  });
  auto finish = [&](int code) {
    pthread_kill(signal_thread.native_handle(), SIGUSR2);
    signal_thread.join();
    return code;
  };

  auto agent = fedge::agent::Agent::Start(*settings);
  if (!agent.ok()) {
    fedge::log::Error("agent failed to start", {{"error", agent.status().ToString()}});
    return finish(1);
  }
  {
    std::lock_guard<std::mutex> lock(agent_mu);
    running = agent->get();
    if (stop_requested) running->Stop();
  }
  fedge::Status st = (*agent)->Run();
  {
    std::lock_guard<std::mutex> lock(agent_mu);
    running = nullptr;
  }
  if (!st.ok()) {
    fedge::log::Error("agent failed", {{"error", st.ToString()}});
    return finish(1);
  }
  fedge::log::Info("agent exiting");
  return finish(0);
}
