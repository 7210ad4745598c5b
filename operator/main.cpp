// fedge-operator: reconciles FederatedTrainingJobs (default command), or runs inside the
// aggregator pod as its status reporter (`report-status`). Wiring only: flags, signals,
// construct, run.
#include <signal.h>
#include <unistd.h>
#include <chrono>

#include <condition_variable>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

#include <prometheus/registry.h>
#include <CLI/CLI.hpp>

#include "fedge/http_server.h"
#include "fedge/log.h"
#include "fedge/op/controller.h"
#include "fedge/op/kube_config.h"
#include "fedge/op/leader_election.h"
#include "fedge/op/rest_kube_client.h"
#include "fedge/op/status_reporter.h"
#include "fedge/version.h"

namespace {

std::mutex g_mu;
std::condition_variable g_cv;
std::atomic<bool> g_stop{false};
std::atomic<int> g_exit_code{0};

void RequestStop(int code) {
  std::lock_guard<std::mutex> l(g_mu);
  if (!g_stop.exchange(true)) g_exit_code = code;
  g_cv.notify_all();
}

// Signals are blocked in every thread; this one waits for them synchronously.
std::thread StartSignalThread() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return std::thread([set] {
    int sig = 0;
    while (sigwait(&set, &sig) == 0) {
      fedge::log::Info("signal received; shutting down", {{"signal", sig}});
      RequestStop(0);
      return;
    }
  });
}

std::string Hostname() {
  char buf[256] = {0};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace fedge;
  std::string kubeconfig, ns, http_addr = "0.0.0.0:8081", log_level = "info", log_format = "logfmt";
  std::string lease_ns, lease_name = "fedge-operator";
  bool leader_elect = false, show_version = false;
  int workers = 2;
  double lease_duration_s = 15, renew_deadline_s = 10, retry_period_s = 2;
  op::DesiredOptions desired;
  op::Images& images = desired.images;
  bool no_network_policy = false;
  std::string job_key, agg_http = "127.0.0.1:9090", sa_dir = op::kServiceAccountDir;

  CLI::App app{
      "fedge-operator: reconciles FederatedTrainingJobs (fedge.io/v1alpha1) into a per-job\n"
      "aggregator and one agent pod per matching edge node"};
  app.add_option("--kubeconfig", kubeconfig,
                 "kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)");
  app.add_option("--namespace", ns, "watch only this namespace (default: all)");
  app.add_flag("--leader-elect", leader_elect,
               "elect one active replica through a coordination.k8s.io Lease");
  app.add_option("--leader-election-namespace", lease_ns,
                 "namespace of the Lease (default: the config's namespace)");
  app.add_option("--leader-election-id", lease_name, "name of the Lease")->capture_default_str();
  app.add_option("--leader-elect-lease-duration", lease_duration_s,
                 "seconds a standby waits after the Lease last changed before taking over")
      ->capture_default_str();
  app.add_option("--leader-elect-renew-deadline", renew_deadline_s,
                 "seconds the leader keeps trying to renew before it gives up leading (and exits)")
      ->capture_default_str();
  app.add_option("--leader-elect-retry-period", retry_period_s, "seconds between acquire/renew attempts")
      ->capture_default_str();
  app.add_option("--http", http_addr, "address for /healthz, /readyz and /metrics")->capture_default_str();
  app.add_option("--workers", workers, "concurrent reconciles (never two for one job)")
      ->capture_default_str();
  app.add_option("--aggregator-image", images.aggregator, "image of the aggregator container")
      ->capture_default_str();
  app.add_option("--agent-image", images.agent, "image of the agent containers")->capture_default_str();
  app.add_option("--reporter-image", images.reporter, "image of the status-reporter container")
      ->capture_default_str();
  app.add_option("--image-pull-policy", desired.image_pull_policy, "imagePullPolicy of the job pods")
      ->check(CLI::IsMember({"IfNotPresent", "Always", "Never"}))
      ->capture_default_str();
  app.add_option("--image-pull-secret", desired.image_pull_secrets,
                 "imagePullSecrets of the job pods (repeat; the Secret must exist in each job's namespace)");
  app.add_option("--allowed-host-path-prefix", desired.allowed_host_path_prefixes,
                 "node directory jobs may use for spec.model.path and spec.data.path (repeat; a job outside "
                 "every prefix fails with HostPathNotAllowed and gets no pods)")
      ->capture_default_str();
  app.add_option("--node-state-dir", desired.node_state_dir,
                 "each edge node's agent state directory (under an allowed prefix, writable by uid 65532)")
      ->capture_default_str();
  app.add_option(
         "--agent-session-grace-seconds", desired.agent_session_grace_s,
         "how long an agent's session outlives the newest service-account token its pod presented "
         "(passed to each job's aggregator; raise it for sites whose control plane may be unreachable "
         "longer than a token's 10 minutes plus this)")
      ->check(CLI::Range(int64_t{0}, int64_t{30} * 24 * 3600))
      ->capture_default_str();
  app.add_option("--monitoring-namespace", desired.monitoring_namespaces,
                 "namespace whose pods may scrape the job pods' HTTP ports through the job's NetworkPolicies "
                 "(repeat)");
  app.add_flag("--no-network-policy", no_network_policy, "create no per-job NetworkPolicies");
  bool no_agent_egress_policy = false;
  app.add_flag("--no-agent-egress-policy", no_agent_egress_policy,
               "let agent pods connect anywhere (by default their NetworkPolicy admits only the job's "
               "aggregator)");
  bool no_aggregator_egress_policy = false;
  app.add_flag("--no-aggregator-egress-policy", no_aggregator_egress_policy,
               "let aggregator pods connect anywhere (by default their NetworkPolicy admits only the API "
               "server's addresses, read from the `kubernetes` EndpointSlice in `default`)");
  // Agents made by an operator before session 33 resolve the aggregator's name; until they
  // are replaced, <job>-agents-dns lets them (only them) query these DNS pods.
  app.add_option("--dns-namespace", desired.dns_namespace,
                 "namespace of the cluster DNS pods that agent pods made by an older operator (which "
                 "resolve the aggregator by name) may query until they are replaced (port 53)")
      ->capture_default_str();
  std::string dns_pod_selector = "k8s-app=kube-dns";
  app.add_option("--dns-pod-selector", dns_pod_selector,
                 "labels of those cluster DNS pods, KEY=VALUE[,KEY=VALUE...]")
      ->capture_default_str();
  int apply_concurrency = op::ReconcilerOptions{}.apply_concurrency;
  app.add_option("--apply-concurrency", apply_concurrency,
                 "API requests one reconcile may have in flight at once (its independent writes: node "
                 "volumes, claims, pods); 1 sends them one after another")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--log-level", log_level, "debug | info | warn | error")->capture_default_str();
  app.add_option("--log-format", log_format, "logfmt | json")->capture_default_str();
  app.add_flag("--version", show_version, "print the version and exit");
  CLI::App* report = app.add_subcommand(
      "report-status",
      "run beside the aggregator: apply its progress to the job's status (field manager fedge-aggregator)");
  report->add_option("--job", job_key, "namespace/name of the job")->required();
  report->add_option("--aggregator-http", agg_http, "the aggregator's HTTP address")->capture_default_str();
  report->add_option("--service-account-dir", sa_dir, "service-account token, CA and namespace")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help: 0; a bad or conflicting flag: 2 (CLI11's own codes are 100+)
  }
  if (!(retry_period_s > 0 && retry_period_s < renew_deadline_s && renew_deadline_s < lease_duration_s)) {
    // The rule client-go enforces: otherwise a slow leader could still act after a standby took over.
    std::cerr << "fedge-operator: leader election needs 0 < retry period < renew deadline < lease duration\n";
    return 2;
  }

  desired.network_policies = !no_network_policy;
  desired.agent_egress_policy = !no_agent_egress_policy;
  desired.aggregator_egress_policy = !no_aggregator_egress_policy;
  auto dns_labels = op::ParseLabelPairs(dns_pod_selector);
  if (!dns_labels.ok()) {
    std::cerr << "fedge-operator: --dns-pod-selector: " << dns_labels.status().message() << "\n";
    return 2;
  }
  desired.dns_pod_labels = *std::move(dns_labels);
  // Each goes into the jobs' policies: a bad one would fail every pass that writes them.
  Status namespaces = op::CheckNamespaceName("--dns-namespace", desired.dns_namespace);
  for (const auto& ns : desired.monitoring_namespaces)
    if (namespaces.ok()) namespaces = op::CheckNamespaceName("--monitoring-namespace", ns);
  if (!namespaces.ok()) {
    std::cerr << "fedge-operator: " << namespaces.message() << "\n";
    return 2;
  }
  for (const auto& p : desired.allowed_host_path_prefixes) {
    if (Status s = op::CheckHostPath("--allowed-host-path-prefix", p, {"/"}); !s.ok()) {
      std::cerr << "fedge-operator: " << s.message() << "\n";
      return 2;
    }
  }
  if (Status s =
          op::CheckHostPath("--node-state-dir", desired.node_state_dir, desired.allowed_host_path_prefixes);
      !s.ok()) {
    std::cerr << "fedge-operator: " << s.message() << "\n";
    return 2;
  }

  if (show_version) {
    std::cout << "fedge-operator " << fedge::Version() << " (" << fedge::GitRev() << ")\n";
    return 0;
  }
  log::Level level;
  log::Format format;
  if (!log::ParseLevel(log_level, &level) || !log::ParseFormat(log_format, &format)) {
    std::cerr << "--log-level must be debug|info|warn|error and --log-format logfmt|json\n";
    return 2;
  }
  log::Init(report->parsed() ? "status-reporter" : "operator", level, format);
  std::thread signals = StartSignalThread();
  signals.detach();

  StatusOr<op::KubeConfig> cfg = report->parsed() && kubeconfig.empty() && !std::getenv("KUBECONFIG")
                                     ? op::LoadInClusterConfig(sa_dir)
                                     : op::LoadDefaultConfig(kubeconfig);
  if (!cfg.ok()) {
    log::Error("no Kubernetes configuration", {{"error", cfg.status().ToString()}});
    return 1;
  }
  // The API server's CA is the only one trusted; loading the system bundle into every
  // new connection is wasted CPU (rest_kube_client.h).
  if (!cfg->ca_pem.empty()) op::SkipSystemTrustStoreLoad();
  op::RestKubeClient client(*cfg);

  if (report->parsed()) {
    auto slash = job_key.find('/');
    if (slash == std::string::npos) {
      std::cerr << "--job must be namespace/name\n";
      return 2;
    }
    op::ReporterOptions ro;
    ro.ns = job_key.substr(0, slash);
    ro.name = job_key.substr(slash + 1);
    ro.aggregator_http = agg_http;
    Status s = op::RunStatusReporter(&client, ro, g_stop);
    return s.ok() ? 0 : 1;
  }

  auto registry = std::make_shared<prometheus::Registry>();
  op::ControllerOptions co;
  co.ns = ns;
  co.workers = workers;
  co.registry = registry;
  co.reconciler.desired = desired;
  co.reconciler.apply_concurrency = apply_concurrency;
  op::JobController controller(&client, co);

  std::atomic<bool> leading{!leader_elect};
  HttpServer http(http_addr);
  http.Handle("GET", "/healthz", [](const HttpRequest&) { return HttpResponse::Text(200, "ok\n"); });
  http.Handle("GET", "/readyz", [&](const HttpRequest&) {
    if (!leading.load()) return HttpResponse::Text(200, "standby\n");  // healthy, not leading
    return controller.Synced() ? HttpResponse::Text(200, "ok\n")
                               : HttpResponse::Text(503, "caches not synced\n");
  });
  http.HandleMetrics(registry);
  if (Status s = http.Start(); !s.ok()) {
    log::Error("http server failed", {{"error", s.ToString()}});
    return 1;
  }
  log::Info("operator starting", {{"version", fedge::Version()},
                                  {"server", cfg->server},
                                  {"namespace", ns.empty() ? "*" : ns},
                                  {"http", http.address()},
                                  {"leader_elect", leader_elect}});

  std::unique_ptr<op::LeaderElector> elector;
  std::thread election;
  auto start_controller = [&] {
    Status s = controller.Start();
    if (!s.ok()) {
      log::Error("controller failed to start", {{"error", s.ToString()}});
      RequestStop(1);
    }
  };
  if (leader_elect) {
    op::LeaderElectionOptions lo;
    lo.ns = lease_ns.empty() ? cfg->ns : lease_ns;
    lo.name = lease_name;
    lo.identity = Hostname() + "_" + std::to_string(getpid());
    auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
    lo.lease_duration = ms(lease_duration_s);
    lo.renew_deadline = ms(renew_deadline_s);
    lo.retry_period = ms(retry_period_s);

    elector = std::make_unique<op::LeaderElector>(&client, lo);
    election = std::thread([&] {
      elector->Run(
          [&] {
            leading = true;
            start_controller();
          },
          [&] {
            leading = false;
            // Lost (not released on shutdown): exit so a fresh process re-elects
            // with empty caches, as controller-runtime does.
            if (!g_stop.load()) RequestStop(1);
          });
    });
  } else {
    start_controller();
  }

  {
    std::unique_lock<std::mutex> l(g_mu);
    g_cv.wait(l, [] { return g_stop.load(); });
  }
  log::Info("stopping: finishing in-flight reconciles");
  controller.Stop();
  if (elector) elector->Stop();
  if (election.joinable()) election.join();
  http.Stop();
  log::Info("stopped", {{"reconciles", controller.reconciles()}});
  return g_exit_code.load();
}
