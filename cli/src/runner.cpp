#include "fedge/cli/runner.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "fedge/cli/http_get.h"
#include "fedge/cli/io.h"
#include "fedge/http_server.h"

namespace fedge::cli {
namespace fs = std::filesystem;

namespace {

std::string Resolve(const std::string& path, const std::string& cwd) {
  if (path.empty()) return path;
  fs::path p(path);
  if (p.is_relative()) p = fs::path(cwd) / p;
  std::string s = p.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

bool IsExecutableFile(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec) && ::access(path.c_str(), X_OK) == 0;
}

std::string AgentId(const RunPlan& plan, int i) {
  return plan.centralized ? "central" : "agent-" + std::to_string(i);
}

int AgentHttpPort(const RunPlan& plan, int i) {
  return i < static_cast<int>(plan.agent_http_ports.size()) ? plan.agent_http_ports[i] : 0;
}

std::string DataCommandHint(const RunPlan& plan) {
  const std::string task = plan.spec.model.family == "llama" ? " --task gloss" : "";
  return "create it with: fedge data wordnet" + task + " --agents " + std::to_string(plan.federated_agents) +
         " --alpha 0.5 --seed 7 --out " + plan.data_dir;
}

}  // namespace

StatusOr<RunPlan> PlanRun(JobSpec spec, const RunOptions& o, const std::string& cwd) {
  if (o.agents < 0) return InvalidArgumentError("--agents must be >= 1, got " + std::to_string(o.agents));
  if (o.rounds < 0) return InvalidArgumentError("--rounds must be >= 1, got " + std::to_string(o.rounds));
  RunPlan plan;
  plan.centralized = o.centralized;
  plan.serve = o.serve;
  int n = spec.agents.replicas > 0 ? spec.agents.replicas : spec.agents.minAgents;
  if (o.agents > 0) {
    n = o.agents;
    spec.agents.replicas = n;
    spec.agents.minAgents = n;
    if (spec.agents.maxAgents > 0) spec.agents.maxAgents = std::max(spec.agents.maxAgents, n);
    spec.rounds.quorum = std::min(spec.rounds.quorum, n);
  }
  plan.federated_agents = n;
  if (o.rounds > 0) spec.rounds.total = o.rounds;

  plan.data_dir = Resolve(o.data_dir.empty() ? spec.data.path : o.data_dir, cwd);
  plan.model_dir = Resolve(o.model_dir.empty() ? spec.model.path : o.model_dir, cwd);
  spec.data.path = plan.data_dir;
  spec.model.path = plan.model_dir;

  if (o.centralized) {
    // The same total amount of local training as the federated run, on the
    // union of the shards: the upper bound federated learning is compared to.
    spec.rounds.localSteps *= n;
    spec.agents.replicas = 1;
    spec.agents.minAgents = 1;
    spec.agents.maxAgents = 0;
    spec.rounds.quorum = 1;
    plan.agents = 1;
  } else {
    plan.agents = n;
  }
  const std::string default_work = ".fedge/runs/" + spec.name + (o.centralized ? "-centralized" : "");
  plan.work_dir = Resolve(o.work_dir.empty() ? default_work : o.work_dir, cwd);
  plan.config_path = plan.work_dir + "/job.yaml";
  if (Status s = ValidateJobSpec(spec); !s.ok()) {
    return InvalidArgumentError("the manifest after command-line overrides is invalid: " + s.message());
  }
  plan.spec = std::move(spec);
  return plan;
}

Status CheckRunInputs(const RunPlan& plan) {
  std::error_code ec;
  if (!fs::is_regular_file(plan.model_dir + "/config.json", ec)) {
    return NotFoundError("model directory " + plan.model_dir +
                         " has no config.json: fetch all-MiniLM-L6-v2 with scripts/fetch-model.sh, or pass "
                         "--model-dir / set spec.model.path");
  }
  if (!fs::is_directory(plan.data_dir, ec)) {
    return NotFoundError("data directory " + plan.data_dir + " does not exist: " + DataCommandHint(plan));
  }
  // A label in the data the model does not know would fail every agent at
  // load time; say so before starting anything.
  // (Causal-LM jobs have no labels.)
  if (auto labels_text = ReadWholeFile(plan.data_dir + "/labels.json");
      labels_text.ok() && plan.spec.model.family != "llama") {
    try {
      const auto data_labels = nlohmann::json::parse(*labels_text).get<std::vector<std::string>>();
      const auto& known = plan.spec.model.labels;
      for (const auto& l : data_labels) {
        if (std::find(known.begin(), known.end(), l) == known.end()) {
          return InvalidArgumentError(
              "label \"" + l + "\" of " + plan.data_dir +
              "/labels.json is not in spec.model.labels; list the data's labels there");
        }
      }
    } catch (const nlohmann::json::exception& e) {
      return InvalidArgumentError(plan.data_dir + "/labels.json is not a JSON list of strings: " + e.what());
    }
  }
  const std::string& train = plan.spec.data.trainFile;
  if (plan.centralized) {
    if (!fs::is_regular_file(plan.data_dir + "/all/" + train, ec)) {
      return NotFoundError("data directory " + plan.data_dir + " has no all/" + train +
                           " (needed by --centralized): " + DataCommandHint(plan));
    }
    return OkStatus();
  }
  for (int i = 0; i < plan.agents; ++i) {
    const std::string shard = "agent-" + std::to_string(i) + "/" + train;
    if (!fs::is_regular_file(plan.data_dir + "/" + shard, ec)) {
      return NotFoundError("data directory " + plan.data_dir + " has no " + shard + " (the job runs " +
                           std::to_string(plan.agents) + " agents): " + DataCommandHint(plan));
    }
  }
  return OkStatus();
}

StatusOr<std::string> FindBinary(const std::string& name, const std::string& bin_dir,
                                 const std::string& self_exe, const std::string& path_env) {
  std::vector<std::string> tried;
  auto found = [&](const std::string& candidate) {
    tried.push_back(candidate);
    return IsExecutableFile(candidate);
  };
  if (!bin_dir.empty()) {
    const std::string c = AbsolutePath(bin_dir) + "/" + name;
    if (found(c)) return c;
    return NotFoundError(name + " not found in --bin-dir: " + c + " is missing or not executable");
  }
  if (!self_exe.empty()) {
    const fs::path dir = fs::path(self_exe).parent_path();
    for (const fs::path& c : {dir / name, dir / ".." / "aggregator" / name, dir / ".." / "agent" / name}) {
      const std::string s = c.lexically_normal().string();
      if (found(s)) return s;
    }
  }
  std::stringstream ss(path_env);
  std::string entry;
  while (std::getline(ss, entry, ':')) {
    if (entry.empty()) continue;
    const std::string c = entry + "/" + name;
    if (found(c)) return c;
  }
  std::string msg = name + " not found (looked at";
  for (const auto& t : tried) msg += " " + t;
  if (tried.empty()) msg += " nothing: no --bin-dir, no executable path, empty PATH";
  return NotFoundError(msg + "); build it (ninja -C build " + name + ") or pass --bin-dir");
}

std::vector<ChildSpec> BuildChildSpecs(const RunPlan& p) {
  const std::string grpc = p.host + ":" + std::to_string(p.grpc_port);
  const std::string logs = p.work_dir + "/logs/";
  std::vector<ChildSpec> out;
  out.push_back({"aggregator",
                 {p.aggregator_bin, "--config", p.config_path, "--listen", grpc, "--http",
                  p.host + ":" + std::to_string(p.http_port), "--checkpoint-dir", p.work_dir + "/aggregator",
                  "--expected-agents", std::to_string(p.agents)},
                 logs + "aggregator.log"});
  if (!p.serve) out.back().argv.push_back("--exit-when-done");
  for (int i = 0; i < p.agents; ++i) {
    const std::string id = AgentId(p, i);
    const std::string data = p.centralized ? p.data_dir + "/all" : p.data_dir + "/" + id;
    const int http = AgentHttpPort(p, i);
    out.push_back(
        {id,
         {p.agent_bin, "--config", p.config_path, "--aggregator", grpc, "--agent-id", id, "--node-name",
          "local-" + std::to_string(i), "--data-dir", data, "--model-dir", p.model_dir, "--http",
          p.host + ":" + std::to_string(http), "--state-dir", p.work_dir + "/" + id},
         logs + id + ".log"});
    if (!p.serve) out.back().argv.push_back("--exit-when-done");
  }
  return out;
}

std::string PrometheusTargetsJson(const RunPlan& p) {
  auto group = [&](int port, const char* component, const std::string& agent) {
    nlohmann::ordered_json labels;
    labels["job"] = kPrometheusLocalJob;
    labels["component"] = component;
    labels["fedge_job"] = p.spec.Key();
    if (!agent.empty()) labels["agent"] = agent;
    nlohmann::ordered_json g;
    g["targets"] = nlohmann::ordered_json::array({p.host + ":" + std::to_string(port)});
    g["labels"] = std::move(labels);
    return g;
  };
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  out.push_back(group(p.http_port, "aggregator", ""));
  for (int i = 0; i < p.agents; ++i) out.push_back(group(AgentHttpPort(p, i), "agent", AgentId(p, i)));
  return out.dump(2) + "\n";
}

// ---- status ----

double RoundStatus::BytesUpPerAgent() const {
  return participants > 0 ? static_cast<double>(bytes_up) / participants : static_cast<double>(bytes_up);
}

double RoundStatus::BytesDownPerAgent() const {
  const int n = std::max(participants, invited);
  return n > 0 ? static_cast<double>(bytes_down) / n : static_cast<double>(bytes_down);
}

namespace {

std::optional<double> OptionalNumber(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

template <typename T>
T Number(const nlohmann::json& j, const char* key, T fallback = T{}) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return fallback;
  return it->get<T>();
}

std::string Text(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

}  // namespace

StatusOr<JobStatus> ParseJobStatus(const std::string& text) {
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    if (!j.is_object()) return DataLossError("status is not a JSON object");
    JobStatus s;
    s.job = Text(j, "job");
    s.state = Text(j, "state");
    if (s.state.empty()) return DataLossError("status has no \"state\"");
    s.round = Number<int64_t>(j, "round");
    s.total_rounds = Number<int64_t>(j, "total_rounds");
    s.phase = Text(j, "phase");
    s.global_version = Number<int64_t>(j, "global_version");
    s.agents_joined = Number<int>(j, "agents_joined");
    s.final_accuracy = OptionalNumber(j, "final_accuracy");
    s.message = Text(j, "message");
    if (auto it = j.find("rounds"); it != j.end() && it->is_array()) {
      for (const auto& r : *it) {
        if (!r.is_object()) continue;
        RoundStatus rs;
        rs.round = Number<int64_t>(r, "round");
        rs.participants = Number<int>(r, "participants");
        rs.invited = Number<int>(r, "invited");
        rs.loss = OptionalNumber(r, "loss");
        rs.accuracy = OptionalNumber(r, "accuracy");
        rs.eval_examples = Number<int64_t>(r, "eval_examples");
        rs.bytes_up = Number<uint64_t>(r, "bytes_up");
        rs.bytes_down = Number<uint64_t>(r, "bytes_down");
        rs.seconds = Number<double>(r, "seconds");
        rs.global_version = Number<int64_t>(r, "global_version");
        rs.epsilon = OptionalNumber(r, "epsilon");
        if (auto fb = r.find("feedback_examples"); fb != r.end() && fb->is_object()) {
          for (const auto& [agent, n] : fb->items()) {
            if (n.is_number_integer()) rs.feedback_examples[agent] = n.get<int64_t>();
          }
        }
        s.rounds.push_back(rs);
      }
    }
    return s;
  } catch (const nlohmann::json::exception& e) {
    return DataLossError(std::string("status is not valid JSON: ") + e.what());
  }
}

std::string FormatBytes(double bytes) {
  char buf[32];
  if (bytes < 1024) {
    std::snprintf(buf, sizeof(buf), "%.0f B", bytes);
  } else if (bytes < 1024.0 * 1024) {
    std::snprintf(buf, sizeof(buf), "%.1f KiB", bytes / 1024);
  } else if (bytes < 1024.0 * 1024 * 1024) {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", bytes / (1024.0 * 1024));
  } else {
    std::snprintf(buf, sizeof(buf), "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
  }
  return buf;
}

namespace {
std::string Fixed(std::optional<double> v, const char* fmt) {
  if (!v || !std::isfinite(*v)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), fmt, *v);
  return buf;
}
}  // namespace

std::string FormatRoundLine(const RoundStatus& r, int64_t total_rounds) {
  std::ostringstream out;
  out << "round " << r.round << "/" << total_rounds << "  participants " << r.participants << "  loss "
      << Fixed(r.loss, "%.3f");
  // A causal-LM job reports its held-out loss only; perplexity is its readable form.
  if (!r.accuracy && r.loss) {
    out << "  perplexity " << Fixed(std::exp(*r.loss), "%.2f");
  } else {
    out << "  accuracy " << Fixed(r.accuracy, "%.3f");
  }
  out << "  up " << FormatBytes(r.BytesUpPerAgent()) << "/agent  down " << FormatBytes(r.BytesDownPerAgent())
      << "/agent  " << Fixed(r.seconds, "%.1f") << " s";
  if (r.epsilon) out << "  epsilon " << Fixed(r.epsilon, "%.3f");
  if (!r.feedback_examples.empty()) {
    int64_t total = 0;
    for (const auto& [agent, n] : r.feedback_examples) total += n;
    out << "  feedback " << total << " examples/" << r.feedback_examples.size() << " agents";
  }
  return out.str();
}

std::string FormatStatusLine(const JobStatus& s, double elapsed) {
  std::ostringstream out;
  char t[32];
  std::snprintf(t, sizeof(t), "[%6.1f s] ", elapsed);
  out << t << s.state;
  if (s.state == "Running" || s.state == "Initializing") {
    out << ": round " << s.round << "/" << s.total_rounds;
    if (!s.phase.empty() && s.phase != "idle") out << ", " << s.phase;
  }
  out << "; " << s.agents_joined << (s.agents_joined == 1 ? " agent" : " agents") << " joined";
  if (!s.message.empty() && s.state != "Running") out << " (" << s.message << ")";
  return out.str();
}

DataBaselines ReadDataBaselines(const std::string& data_dir) {
  DataBaselines b;
  auto text = ReadWholeFile(data_dir + "/meta.json");
  if (!text.ok()) return b;
  try {
    const nlohmann::json j = nlohmann::json::parse(*text);
    b.majority_baseline = OptionalNumber(j, "majority_baseline");
    b.chance = OptionalNumber(j, "chance");
  } catch (const nlohmann::json::exception&) {
  }
  return b;
}

std::string RunSummaryJson(const RunSummary& s) {
  auto opt = [](std::optional<double> v) -> nlohmann::json {
    return v && std::isfinite(*v) ? nlohmann::json(*v) : nlohmann::json(nullptr);
  };
  nlohmann::ordered_json rounds = nlohmann::ordered_json::array();
  for (const RoundStatus& r : s.rounds) {
    nlohmann::ordered_json j;
    j["round"] = r.round;
    j["participants"] = r.participants;
    j["loss"] = opt(r.loss);
    j["accuracy"] = opt(r.accuracy);
    j["bytes_up"] = static_cast<uint64_t>(std::llround(r.BytesUpPerAgent()));
    j["bytes_down"] = static_cast<uint64_t>(std::llround(r.BytesDownPerAgent()));
    j["seconds"] = r.seconds;
    if (r.epsilon) j["epsilon"] = *r.epsilon;
    if (!r.feedback_examples.empty()) j["feedback_examples"] = r.feedback_examples;
    rounds.push_back(j);
  }
  nlohmann::ordered_json j;
  j["job"] = s.job;
  j["rounds"] = rounds;
  j["final_accuracy"] = opt(s.final_accuracy);
  j["majority_baseline"] = opt(s.baselines.majority_baseline);
  j["chance"] = opt(s.baselines.chance);
  j["centralized"] = s.centralized;
  j["wall_seconds"] = s.wall_seconds;
  if (!s.failed_agents.empty()) {
    nlohmann::ordered_json failed = nlohmann::ordered_json::array();
    for (const FailedAgent& f : s.failed_agents) {
      failed.push_back(
          {{"name", f.name}, {"how", f.how}, {"at_seconds", f.at_seconds}, {"during_round", f.during_round}});
    }
    j["failed_agents"] = failed;
  }
  return j.dump(2) + "\n";
}

std::string DescribeChildFailure(const ChildExit& exit, int tail_lines) {
  std::ostringstream out;
  out << exit.name << " (pid " << exit.pid << ") ended unexpectedly: " << exit.Describe() << "\n";
  if (exit.log_path.empty()) return out.str();
  const std::string tail = TailFile(exit.log_path, tail_lines);
  if (tail.empty()) {
    out << "  (its log " << exit.log_path << " is empty)\n";
    return out.str();
  }
  out << "last lines of " << exit.log_path << ":\n";
  std::istringstream lines(tail);
  std::string line;
  while (std::getline(lines, line)) out << "  | " << line << "\n";
  return out.str();
}

// ---- the run loop ----

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
    std::vector<std::string> owned = {"aggregator", "central"};
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
      std::cerr << ::strsignal(sig) << ": stopping " << sup.running() << " process(es)\n";
      for (const ChildExit& e : sup.TerminateAll(std::chrono::seconds(5))) {
        if (e.signal == SIGKILL) std::cerr << "  " << e.name << " did not stop within 5 s: killed\n";
      }
      return kExitOk;
    }
    if (exited) {
      std::cerr << "error: " << DescribeChildFailure(*exited) << "stopping the others\n";
      sup.TerminateAll(std::chrono::seconds(5));
      return kExitJobFailed;
    }
  }
}

}  // namespace

int RunJob(const RunOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  if (o.allow_agent_failures && o.serve) {
    std::cerr
        << "error: --allow-agent-failures and --serve do not go together: serving needs every agent up; "
           "drop one of them\n";
    return kExitUsage;
  }
  auto loaded = LoadJobSpec(o.manifest);
  if (!loaded.ok()) {
    std::cerr << "error: invalid manifest: " << loaded.status().message() << "\n";
    return kExitUsage;
  }
  std::error_code ec;
  const std::string cwd = fs::current_path(ec).string();
  auto planned = PlanRun(std::move(loaded).value(), o, cwd);
  if (!planned.ok()) {
    std::cerr << "error: " << planned.status().message() << "\n";
    return kExitUsage;
  }
  RunPlan plan = std::move(planned).value();
  for (auto [name, out] :
       {std::pair{"fedge-aggregator", &plan.aggregator_bin}, {"fedge-agent", &plan.agent_bin}}) {
    auto bin = FindBinary(name, o.bin_dir, o.self_exe, o.path_env);
    if (!bin.ok()) {
      std::cerr << "error: " << bin.status().message() << "\n";
      return kExitUsage;
    }
    *out = *bin;
  }
  if (Status s = CheckRunInputs(plan); !s.ok()) {
    std::cerr << "error: " << s.message() << "\n";
    return kExitUsage;
  }
  auto ports = PickDistinctPorts(2 + plan.agents);
  if (!ports.ok()) {
    std::cerr << "error: " << ports.status().message() << "\n";
    return kExitJobFailed;
  }
  plan.grpc_port = (*ports)[0];
  plan.http_port = (*ports)[1];
  plan.agent_http_ports.assign(ports->begin() + 2, ports->end());
  if (Status s = PrepareWorkDir(plan); !s.ok()) {
    std::cerr << "error: " << s.message() << "\n";
    return kExitJobFailed;
  }

  // Written before the children start, so Prometheus sees them come up (and
  // `up == 0` while a child is still loading is visible, not hidden).
  const std::string targets_json = PrometheusTargetsJson(plan);
  const std::string work_targets = plan.work_dir + "/prometheus/targets.json";
  const std::string extra_targets =
      o.prometheus_targets_path.empty() ? "" : AbsolutePath(o.prometheus_targets_path);
  for (const std::string& path : {work_targets, extra_targets}) {
    if (path.empty()) continue;
    Status s = MakeDirectories(fs::path(path).parent_path().string());
    if (s.ok()) s = WriteWholeFile(path, targets_json);
    if (!s.ok()) {
      std::cerr << "error: cannot write the Prometheus target list: " << s.message() << "\n";
      return kExitJobFailed;
    }
  }
  // The work copy stays as a record of where the children listened.
  EmptyTargetsOnExit empty_extra_targets(extra_targets);

  const JobSpec& spec = plan.spec;
  std::cout << "job " << spec.Key() << (plan.centralized ? " (centralized baseline)" : "") << ": "
            << spec.rounds.total << " rounds, " << plan.agents << (plan.agents == 1 ? " agent" : " agents")
            << ", " << spec.rounds.localSteps << " local steps x batch " << spec.rounds.batchSize
            << ", strategy " << spec.strategy.name << ", codec " << spec.compression.codec << "\n"
            << "  model " << plan.model_dir << "\n  data  " << plan.data_dir << "\n  work  " << plan.work_dir
            << " (logs in " << plan.work_dir << "/logs)\n  aggregator status http://" << plan.host << ":"
            << plan.http_port << "/v1/status\n"
            << "  prometheus targets " << (extra_targets.empty() ? work_targets : extra_targets) << "\n"
            << std::flush;

  SignalScope signals;
  Supervisor sup;
  for (const ChildSpec& child : BuildChildSpecs(plan)) {
    if (Status s = sup.Start(child); !s.ok()) {
      std::cerr << "error: " << s.message() << "\n";
      sup.TerminateAll(std::chrono::seconds(5));
      return kExitJobFailed;
    }
  }

  const bool tty = !o.quiet && ::isatty(STDOUT_FILENO);
  bool status_shown = false;  // a live status line occupies the terminal's last line
  auto clear_status = [&] {
    if (status_shown) std::cout << "\r\033[K" << std::flush;
    status_shown = false;
  };
  auto fail = [&](const std::string& message) {
    clear_status();
    std::cerr << message;
    if (!message.empty() && message.back() != '\n') std::cerr << "\n";
    const auto running = sup.RunningNames();
    if (!running.empty()) {
      std::cerr << "stopping " << running.size() << " remaining process(es)\n";
      sup.TerminateAll(std::chrono::seconds(5));
    }
    std::cerr << "job failed; logs in " << plan.work_dir << "/logs\n";
    return kExitJobFailed;
  };

  std::optional<JobStatus> last;
  std::vector<FailedAgent> failed_agents;  // --allow-agent-failures
  size_t rounds_printed = 0;
  std::string last_status_key;
  auto last_poll = std::chrono::steady_clock::now() - std::chrono::seconds(1);
  constexpr auto kPollEvery = std::chrono::milliseconds(500);
  const double deadline = static_cast<double>(spec.runPolicy.activeDeadlineSeconds);

  auto print_new_rounds = [&](const JobStatus& s) {
    for (; rounds_printed < s.rounds.size(); ++rounds_printed) {
      clear_status();
      std::cout << FormatRoundLine(s.rounds[rounds_printed], s.total_rounds) << "\n" << std::flush;
    }
  };

  for (;;) {
    const auto wait = std::max(std::chrono::milliseconds(0),
                               std::chrono::duration_cast<std::chrono::milliseconds>(
                                   last_poll + kPollEvery - std::chrono::steady_clock::now()));
    std::optional<ChildExit> exited = sup.Wait(wait, signals.wake_fd());
    if (const int sig = g_signal.load(); sig != 0) {
      clear_status();
      std::cerr << "\n" << ::strsignal(sig) << ": stopping " << sup.running() << " process(es)\n";
      for (const ChildExit& e : sup.TerminateAll(std::chrono::seconds(5))) {
        if (e.signal == SIGKILL) std::cerr << "  " << e.name << " did not stop within 5 s: killed\n";
      }
      std::cerr << "interrupted; logs in " << plan.work_dir << "/logs\n";
      return kExitInterrupted;
    }
    if (exited && exited->name != "aggregator" && exited->Succeeded() && !plan.serve) {
      // An agent run with --exit-when-done exits 0 as soon as it has been told DONE,
      // which can be just before the next poll shows the job Succeeded. Not a failure:
      // keep polling the aggregator, which decides how the job ended.
      continue;
    }
    if (exited && exited->name != "aggregator" && o.allow_agent_failures && !plan.serve) {
      FailedAgent f{exited->name, exited->Describe(), Since(start), last ? last->round : 0};
      failed_agents.push_back(f);
      int agents_left = 0;
      for (const std::string& name : sup.RunningNames()) agents_left += name != "aggregator" ? 1 : 0;
      clear_status();
      std::cerr << "warning: " << DescribeChildFailure(*exited, 5);
      if (agents_left == 0) {
        return fail("every agent has ended; the job cannot go on (logs in " + plan.work_dir + "/logs)");
      }
      std::cerr << "  --allow-agent-failures: the job goes on with " << agents_left << " of " << plan.agents
                << " agents; the aggregator decides whether it can\n"
                << std::flush;
      continue;
    }
    if (exited) {
      // The aggregator with --exit-when-done lingers ~1 s after the job ends;
      // if it left between two polls, a complete round history still counts.
      const bool complete =
          last && last->total_rounds > 0 && static_cast<int64_t>(last->rounds.size()) >= last->total_rounds;
      if (!(exited->name == "aggregator" && exited->Succeeded() && complete)) {
        return fail(DescribeChildFailure(*exited));
      }
      last->state = "Succeeded";
      break;
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
      if (tty) {
        char waiting[96];
        std::snprintf(waiting, sizeof(waiting), "[%6.1f s] starting: waiting for the aggregator", elapsed);
        std::cout << "\r\033[K" << waiting << std::flush;
        status_shown = true;
      }
      continue;
    }
    auto status = ParseJobStatus(response->body);
    if (!status.ok()) continue;
    last = *status;
    print_new_rounds(*last);
    if (last->state == "Failed") {
      return fail("the aggregator reports the job Failed" +
                  (last->message.empty() ? "" : ": " + last->message));
    }
    if (last->state == "Succeeded") break;
    const std::string line = FormatStatusLine(*last, elapsed);
    if (tty) {
      std::cout << "\r\033[K" << line << std::flush;
      status_shown = true;
    } else if (!o.quiet) {
      // Not a terminal: one line per change of state, round or phase.
      const std::string key = last->state + "/" + std::to_string(last->round) + "/" + last->phase + "/" +
                              std::to_string(last->agents_joined);
      if (key != last_status_key) std::cout << line << "\n" << std::flush;
      last_status_key = key;
    }
  }
  print_new_rounds(*last);
  clear_status();

  // Let everyone leave on their own (--exit-when-done), then stop stragglers.
  if (!plan.serve) {
    for (const ChildExit& e : sup.WaitAll(std::chrono::seconds(45))) {
      if (!e.Succeeded()) std::cerr << "warning: " << DescribeChildFailure(e, 5);
    }
  }
  if (!plan.serve && sup.running() > 0) {
    std::cerr << "warning: still running after the job succeeded, stopping: ";
    for (const auto& n : sup.RunningNames()) std::cerr << n << " ";
    std::cerr << "\n";
    sup.TerminateAll(std::chrono::seconds(5));
  }

  RunSummary summary;
  summary.job = spec.Key();
  summary.rounds = last->rounds;
  summary.final_accuracy = last->final_accuracy;
  if (!summary.final_accuracy && !last->rounds.empty()) summary.final_accuracy = last->rounds.back().accuracy;
  summary.baselines = ReadDataBaselines(plan.data_dir);
  summary.centralized = plan.centralized;
  summary.wall_seconds = Since(start);
  summary.failed_agents = failed_agents;

  char line[256];
  std::snprintf(line, sizeof(line), "\njob %s succeeded in %.1f s\n", spec.Key().c_str(),
                summary.wall_seconds);
  std::cout << line;
  const std::optional<double> final_loss = summary.rounds.empty() ? std::nullopt : summary.rounds.back().loss;
  if (!summary.final_accuracy && final_loss) {
    // Causal-LM job: no accuracy to compare with baselines.
    std::cout << "  final held-out loss " << Fixed(final_loss, "%.4f") << "\n"
              << "  final perplexity    " << Fixed(std::exp(*final_loss), "%.2f") << "\n";
  } else {
    std::cout << "  final accuracy     " << Fixed(summary.final_accuracy, "%.4f") << "\n"
              << "  majority baseline  " << Fixed(summary.baselines.majority_baseline, "%.4f") << "\n"
              << "  chance             " << Fixed(summary.baselines.chance, "%.4f") << "\n";
  }
  if (!o.summary_path.empty()) {
    const std::string path = AbsolutePath(o.summary_path);
    std::error_code mk;
    fs::create_directories(fs::path(path).parent_path(), mk);
    if (Status s = WriteWholeFile(path, RunSummaryJson(summary)); !s.ok()) {
      std::cerr << "error: " << s.message() << "\n";
      return kExitJobFailed;
    }
    std::cout << "  summary            " << path << "\n";
  }
  std::cout << std::flush;
  if (!plan.serve) return kExitOk;
  return ServeUntilSignalled(plan, sup, signals);
}

}  // namespace fedge::cli
