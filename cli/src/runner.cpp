// `fedge run`: plan (run_plan.h), supervise (here), report (run_report.h).
// Everything with processes, signals, sockets and the work directory is in this
// file; the decisions around it are pure functions of the other two.
#include "fedge/cli/runner.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <set>

#include "fedge/cli/http_client.h"
#include "fedge/cli/io.h"
#include "fedge/cli/run_pki.h"
#include "fedge/http_server.h"

namespace fedge::cli {
namespace fs = std::filesystem;

namespace {

// Self-pipe: the signal handler only records the signal and writes a byte.
std::atomic<int> g_signal{0};
int g_wake_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  g_signal.store(sig);
  if (g_wake_pipe[1] >= 0) {
    const char c = 1;
    [[maybe_unused]] ssize_t n = ::write(g_wake_pipe[1], &c, 1);
  }
}

class SignalScope {
 public:
  SignalScope() {
    g_signal.store(0);
    if (::pipe2(g_wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0) g_wake_pipe[0] = g_wake_pipe[1] = -1;
    struct sigaction sa {};
    sa.sa_handler = OnSignal;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    ::sigaction(SIGPIPE, &ign, &old_pipe_);
  }
  ~SignalScope() {
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
    ::sigaction(SIGPIPE, &old_pipe_, nullptr);
    for (int& fd : g_wake_pipe) {
      if (fd >= 0) ::close(fd);
      fd = -1;
    }
  }
  int wake_fd() const { return g_wake_pipe[0]; }

 private:
  struct sigaction old_int_ {
  }, old_term_{}, old_pipe_{};
};

double Since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

StatusOr<std::vector<int>> PickDistinctPorts(int n) {
  std::set<int> seen;
  std::vector<int> ports;
  for (int attempts = 0; static_cast<int>(ports.size()) < n; ++attempts) {
    if (attempts > 50 * n)
      return UnavailableError("cannot find " + std::to_string(n) + " free ports on 127.0.0.1");
    FEDGE_ASSIGN_OR_RETURN(int port, PickFreePort("127.0.0.1"));
    if (seen.insert(port).second) ports.push_back(port);
  }
  return ports;
}

// Marks a work directory as the runner's, so a later run may clear the state
// subdirectories it created (and nothing else).
constexpr const char* kWorkMarker = ".fedge-run";

Status PrepareWorkDir(const RunPlan& plan) {
  FEDGE_RETURN_IF_ERROR(MakeDirectories(plan.work_dir + "/logs"));
  std::error_code ec;
  if (fs::exists(plan.work_dir + "/" + kWorkMarker, ec)) {
    // A fresh run starts a fresh job: an old aggregator checkpoint would make
    // the aggregator resume (or immediately finish) the previous job.
    std::vector<std::string> owned = {"aggregator", "central", "pki"};
    for (int i = 0; i < std::max(plan.agents, plan.federated_agents) + 64; ++i) {
      owned.push_back("agent-" + std::to_string(i));
    }
    for (const auto& d : owned) fs::remove_all(plan.work_dir + "/" + d, ec);
    for (const auto& entry : fs::directory_iterator(plan.work_dir + "/logs", ec)) {
      if (entry.path().extension() == ".log") fs::remove(entry.path(), ec);
    }
  }
  FEDGE_RETURN_IF_ERROR(WriteWholeFile(plan.work_dir + "/" + kWorkMarker, "fedge run work directory\n"));
  return WriteWholeFile(plan.config_path, JobSpecToYaml(plan.spec));
}

// Empties a file_sd target list when the run ends, so a Prometheus watching it
// stops scraping ports whose processes are gone.
class EmptyTargetsOnExit {
 public:
  explicit EmptyTargetsOnExit(std::string path) : path_(std::move(path)) {}
  EmptyTargetsOnExit(const EmptyTargetsOnExit&) = delete;
  EmptyTargetsOnExit& operator=(const EmptyTargetsOnExit&) = delete;
  ~EmptyTargetsOnExit() {
    if (!path_.empty()) (void)WriteWholeFile(path_, "[]\n");
  }

 private:
  std::string path_;
};

// SIGINT/SIGTERM: stops every child, saying which had to be killed.
void StopOnSignal(int sig, Supervisor& sup) {
  std::cerr << ::strsignal(sig) << ": stopping " << sup.running() << " process(es)\n";
  for (const ChildExit& e : sup.TerminateAll(std::chrono::seconds(5))) {
    if (e.signal == SIGKILL) std::cerr << "  " << e.name << " did not stop within 5 s: killed\n";
  }
}

// After a succeeded job: lets every child leave on its own (--exit-when-done),
// then stops stragglers.
void LetChildrenLeave(Supervisor& sup) {
  for (const ChildExit& e : sup.WaitAll(std::chrono::seconds(45))) {
    if (!e.Succeeded()) std::cerr << "warning: " << DescribeChildFailure(e, 5);
  }
  if (sup.running() > 0) {
    std::cerr << "warning: still running after the job succeeded, stopping: ";
    for (const auto& n : sup.RunningNames()) std::cerr << n << " ";
    std::cerr << "\n";
    sup.TerminateAll(std::chrono::seconds(5));
  }
}

// --serve: the job has succeeded; the agents serve inference with the final
// global until the user stops them. A child that exits meanwhile is reported and
// fails the run (exit 1): whoever relied on its endpoint needs to know.
int ServeUntilSignalled(const RunPlan& plan, Supervisor& sup, SignalScope& signals) {
  std::cout << "\nserving the final global model until Ctrl-C (SIGINT/SIGTERM):\n";
  for (int i = 0; i < plan.agents; ++i) {
    std::cout << "  " << AgentId(plan, i) << "  http://" << plan.host << ":" << AgentHttpPort(plan, i)
              << (plan.spec.model.family == "llama"
                      ? "  (POST /v1/completions, POST /v1/chat/completions, GET /metrics)\n"
                      : "  (POST /v1/classify, POST /v1/embeddings, GET /metrics)\n");
  }
  std::cout << "  aggregator  http://" << plan.host << ":" << plan.http_port << "/v1/status\n" << std::flush;
  for (;;) {
    std::optional<ChildExit> exited = sup.Wait(std::chrono::seconds(1), signals.wake_fd());
    if (const int sig = g_signal.load(); sig != 0) {
      StopOnSignal(sig, sup);
      return kExitOk;
    }
    if (exited) {
      std::cerr << "error: " << DescribeChildFailure(*exited) << "stopping the others\n";
      sup.TerminateAll(std::chrono::seconds(5));
      return kExitJobFailed;
    }
  }
}

// Usage step: the manifest, the plan, the binaries and the inputs. Every error
// here comes before anything is written or started (exit 2).
StatusOr<RunPlan> PlanFromCommandLine(const RunOptions& o) {
  auto loaded = LoadJobSpec(o.manifest);
  if (!loaded.ok()) return InvalidArgumentError("invalid manifest: " + loaded.status().message());
  std::error_code ec;
  FEDGE_ASSIGN_OR_RETURN(RunPlan plan, PlanRun(std::move(loaded).value(), o, fs::current_path(ec).string()));
  FEDGE_ASSIGN_OR_RETURN(plan.aggregator_bin,
                         FindBinary("fedge-aggregator", o.bin_dir, o.self_exe, o.path_env));
  FEDGE_ASSIGN_OR_RETURN(plan.agent_bin, FindBinary("fedge-agent", o.bin_dir, o.self_exe, o.path_env));
  FEDGE_RETURN_IF_ERROR(CheckRunInputs(plan));
  return plan;
}

// Writes the Prometheus target list to the work directory and, if given, to
// `extra_path`.
Status WriteTargetLists(const RunPlan& plan, const std::string& extra_path) {
  const std::string targets_json = PrometheusTargetsJson(plan);
  for (const std::string& path : {plan.work_dir + "/prometheus/targets.json", extra_path}) {
    if (path.empty()) continue;
    Status s = MakeDirectories(fs::path(path).parent_path().string());
    if (s.ok()) s = WriteWholeFile(path, targets_json);
    if (!s.ok()) return s.WithContext("cannot write the Prometheus target list");
  }
  return OkStatus();
}

// The live progress lines on stdout: a line per finished round; on a terminal a
// status line rewritten in place, elsewhere one line per change of state, round
// or phase (none with --quiet).
class Progress {
 public:
  explicit Progress(bool quiet) : quiet_(quiet), tty_(!quiet && ::isatty(STDOUT_FILENO)) {}

  // Erases the live status line; call before printing anything else.
  void Clear() {
    if (status_shown_) std::cout << "\r\033[K" << std::flush;
    status_shown_ = false;
  }
  void Waiting(double elapsed) {
    if (!tty_) return;
    char waiting[96];
    std::snprintf(waiting, sizeof(waiting), "[%6.1f s] starting: waiting for the aggregator", elapsed);
    std::cout << "\r\033[K" << waiting << std::flush;
    status_shown_ = true;
  }
  void Rounds(const JobStatus& s) {
    for (const size_t printable = PrintableRounds(s); rounds_printed_ < printable; ++rounds_printed_) {
      Clear();
      std::cout << FormatRoundLine(s.rounds[rounds_printed_], s.total_rounds) << "\n" << std::flush;
    }
  }
  void Status(const JobStatus& s, double elapsed) {
    const std::string line = FormatStatusLine(s, elapsed);
    if (tty_) {
      std::cout << "\r\033[K" << line << std::flush;
      status_shown_ = true;
    } else if (!quiet_) {
      const std::string key =
          s.state + "/" + std::to_string(s.round) + "/" + s.phase + "/" + std::to_string(s.agents_joined);
      if (key != last_status_key_) std::cout << line << "\n" << std::flush;
      last_status_key_ = key;
    }
  }

 private:
  const bool quiet_;
  const bool tty_;
  bool status_shown_ = false;  // a live status line occupies the terminal's last line
  size_t rounds_printed_ = 0;
  std::string last_status_key_;
};

// Supervision: follows the job (children's exits, signals, the aggregator's
// /v1/status every 500 ms) until it ends. A failure or a signal is printed when
// it happens and every child is stopped before returning. After success the
// children leave on their own (--exit-when-done) and stragglers are stopped,
// unless plan.serve (they keep running).
RunOutcome Supervise(const RunPlan& plan, bool quiet, Supervisor& sup, SignalScope& signals,
                     std::chrono::steady_clock::time_point start) {
  RunOutcome outcome;
  Progress progress(quiet);
  auto ended = [&](RunOutcome::End end) {
    outcome.end = end;
    outcome.wall_seconds = Since(start);
    return outcome;
  };
  auto fail = [&](const std::string& message) {
    progress.Clear();
    std::cerr << message;
    if (!message.empty() && message.back() != '\n') std::cerr << "\n";
    const auto running = sup.RunningNames();
    if (!running.empty()) {
      std::cerr << "stopping " << running.size() << " remaining process(es)\n";
      sup.TerminateAll(std::chrono::seconds(5));
    }
    return ended(RunOutcome::End::kFailed);
  };

  std::optional<JobStatus>& last = outcome.last_status;
  auto last_poll = std::chrono::steady_clock::now() - std::chrono::seconds(1);
  constexpr auto kPollEvery = std::chrono::milliseconds(500);
  const double deadline = static_cast<double>(plan.spec.runPolicy.activeDeadlineSeconds);
  for (;;) {
    const auto wait = std::max(std::chrono::milliseconds(0),
                               std::chrono::duration_cast<std::chrono::milliseconds>(
                                   last_poll + kPollEvery - std::chrono::steady_clock::now()));
    std::optional<ChildExit> exited = sup.Wait(wait, signals.wake_fd());
    if (const int sig = g_signal.load(); sig != 0) {
      progress.Clear();
      std::cerr << "\n";
      StopOnSignal(sig, sup);
      return ended(RunOutcome::End::kInterrupted);
    }
    if (exited) {
      const ExitVerdict verdict = JudgeChildExit(*exited, plan, last);
      if (verdict == ExitVerdict::kExpected) continue;
      if (verdict == ExitVerdict::kFatal) return fail(DescribeChildFailure(*exited));
      if (verdict == ExitVerdict::kJobDone) {
        last->state = "Succeeded";
        break;
      }
      // ExitVerdict::kAgentLost
      outcome.failed_agents.push_back(
          {exited->name, exited->Describe(), Since(start), last ? last->round : 0});
      int agents_left = 0;
      for (const std::string& name : sup.RunningNames()) agents_left += name != "aggregator" ? 1 : 0;
      progress.Clear();
      std::cerr << "warning: " << DescribeChildFailure(*exited, 5);
      if (agents_left == 0) {
        return fail("every agent has ended; the job cannot go on (logs in " + plan.work_dir + "/logs)");
      }
      std::cerr << "  --allow-agent-failures: the job goes on with " << agents_left << " of " << plan.agents
                << " agents; the aggregator decides whether it can\n"
                << std::flush;
      continue;
    }
    if (std::chrono::steady_clock::now() - last_poll < kPollEvery) continue;
    last_poll = std::chrono::steady_clock::now();
    const double elapsed = Since(start);
    if (deadline > 0 && elapsed > deadline) {
      return fail("job exceeded spec.runPolicy.activeDeadlineSeconds (" +
                  std::to_string(static_cast<int64_t>(deadline)) + " s)");
    }
    auto response = HttpGet(plan.host, plan.http_port, "/v1/status", std::chrono::seconds(2));
    if (!response.ok() || response->status != 200) {
      progress.Waiting(elapsed);
      continue;
    }
    auto status = ParseJobStatus(response->body);
    if (!status.ok()) continue;
    last = *status;
    progress.Rounds(*last);
    if (last->state == "Failed") {
      return fail("the aggregator reports the job Failed" +
                  (last->message.empty() ? "" : ": " + last->message));
    }
    if (last->state == "Succeeded") break;
    progress.Status(*last, elapsed);
  }
  progress.Rounds(*last);
  progress.Clear();

  if (!plan.serve) LetChildrenLeave(sup);
  return ended(RunOutcome::End::kSucceeded);
}

int PrintError(const Status& s, int exit_code) {
  std::cerr << "error: " << s.message() << "\n";
  return exit_code;
}

}  // namespace

int RunJob(const RunOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  // 1. Plan.
  auto planned = PlanFromCommandLine(o);
  if (!planned.ok()) return PrintError(planned.status(), kExitUsage);
  RunPlan plan = std::move(planned).value();
  auto ports = PickDistinctPorts(plan.PortsNeeded());
  if (!ports.ok()) return PrintError(ports.status(), kExitJobFailed);
  AssignPorts(*ports, &plan);
  if (Status s = PrepareWorkDir(plan); !s.ok()) return PrintError(s, kExitJobFailed);
  if (plan.tls) {
    if (Status s = WriteRunPki(plan, std::time(nullptr)); !s.ok()) return PrintError(s, kExitJobFailed);
  }
  // Written before the children start, so Prometheus sees them come up (and
  // `up == 0` while a child is still loading is visible, not hidden). The work
  // copy stays as a record of where the children listened.
  const std::string extra_targets =
      o.prometheus_targets_path.empty() ? "" : AbsolutePath(o.prometheus_targets_path);
  if (Status s = WriteTargetLists(plan, extra_targets); !s.ok()) return PrintError(s, kExitJobFailed);
  EmptyTargetsOnExit empty_extra_targets(extra_targets);
  std::cout << FormatRunBanner(
                   plan, extra_targets.empty() ? plan.work_dir + "/prometheus/targets.json" : extra_targets)
            << std::flush;

  // 2. Supervise.
  SignalScope signals;
  Supervisor sup;
  for (const ChildSpec& child : BuildChildSpecs(plan)) {
    if (Status s = sup.Start(child); !s.ok()) {
      sup.TerminateAll(std::chrono::seconds(5));
      return PrintError(s, kExitJobFailed);
    }
  }
  const RunOutcome outcome = Supervise(plan, o.quiet, sup, signals, start);

  // 3. Report.
  const RunReport report = ReportRun(plan, outcome, ReadDataBaselines(plan.data_dir));
  std::cerr << report.err;
  std::cout << report.out;
  if (report.summary && !o.summary_path.empty()) {
    const std::string path = AbsolutePath(o.summary_path);
    std::error_code mk;
    fs::create_directories(fs::path(path).parent_path(), mk);
    if (Status s = WriteWholeFile(path, RunSummaryJson(*report.summary)); !s.ok()) {
      return PrintError(s, kExitJobFailed);
    }
    std::cout << "  summary            " << path << "\n";
  }
  std::cout << std::flush;
  if (report.exit_code != kExitOk || !plan.serve) return report.exit_code;
  return ServeUntilSignalled(plan, sup, signals);
}

ExitVerdict JudgeChildExit(const ChildExit& exit, const RunPlan& plan, const std::optional<JobStatus>& last) {
  const bool agent = exit.name != "aggregator";
  // An agent run with --exit-when-done exits 0 as soon as it has been told DONE,
  // which can be just before the next poll shows the job Succeeded. Not a failure:
  // keep polling the aggregator, which decides how the job ended.
  if (agent && exit.Succeeded() && !plan.serve) return ExitVerdict::kExpected;
  if (agent && plan.allow_agent_failures) return ExitVerdict::kAgentLost;
  // The aggregator with --exit-when-done lingers ~1 s after the job ends; if it
  // left between two polls, a complete round history still counts.
  const bool complete =
      last && last->total_rounds > 0 && static_cast<int64_t>(last->rounds.size()) >= last->total_rounds;
  if (!agent && exit.Succeeded() && complete) return ExitVerdict::kJobDone;
  return ExitVerdict::kFatal;
}

}  // namespace fedge::cli
