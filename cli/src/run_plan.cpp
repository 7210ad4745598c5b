// `fedge run`'s plan: see run_plan.h.
#include "fedge/cli/run_plan.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "fedge/cli/io.h"
#include "fedge/cli/run_pki.h"

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

std::string DataCommandHint(const RunPlan& plan) {
  const std::string task = plan.spec.model.family == "llama" ? " --task gloss" : "";
  return "create it with: fedge data wordnet" + task + " --agents " + std::to_string(plan.federated_agents) +
         " --alpha 0.5 --seed 7 --out " + plan.data_dir;
}

}  // namespace

std::string AgentId(const RunPlan& plan, int i) {
  return plan.centralized ? "central" : "agent-" + std::to_string(i);
}

int AgentHttpPort(const RunPlan& plan, int i) {
  return i < static_cast<int>(plan.agent_http_ports.size()) ? plan.agent_http_ports[i] : 0;
}

StatusOr<RunPlan> PlanRun(JobSpec spec, const RunOptions& o, const std::string& cwd) {
  if (o.agents < 0) return InvalidArgumentError("--agents must be >= 1, got " + std::to_string(o.agents));
  if (o.rounds < 0) return InvalidArgumentError("--rounds must be >= 1, got " + std::to_string(o.rounds));
  if (o.allow_agent_failures && o.serve) {
    return InvalidArgumentError(
        "--allow-agent-failures and --serve do not go together: serving needs every agent up; drop one of "
        "them");
  }
  RunPlan plan;
  plan.centralized = o.centralized;
  plan.serve = o.serve;
  plan.allow_agent_failures = o.allow_agent_failures;
  plan.tls = spec.privacy.tls;
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

void AssignPorts(const std::vector<int>& ports, RunPlan* plan) {
  if (static_cast<int>(ports.size()) != plan->PortsNeeded() ||
      std::set<int>(ports.begin(), ports.end()).size() != ports.size()) {
    std::abort();  // a caller bug: see the contract
  }
  plan->grpc_port = ports[0];
  plan->http_port = ports[1];
  plan->agent_http_ports.assign(ports.begin() + 2, ports.end());
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
  const RunPkiPaths pki = PkiPaths(p);
  if (p.tls) {
    // Mutual TLS: the aggregator admits only certificates of the run's CA, and a
    // Join only as the agent its certificate names.
    out.back().argv.insert(out.back().argv.end(), {"--tls-cert", pki.aggregator_cert, "--tls-key",
                                                   pki.aggregator_key, "--tls-client-ca", pki.ca_cert});
  }
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
    if (p.tls) {
      out.back().argv.insert(out.back().argv.end(),
                             {"--tls-ca", pki.ca_cert, "--tls-server-name", kRunTlsServerName, "--tls-cert",
                              pki.AgentCert(id), "--tls-key", pki.AgentKey(id)});
    }
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

}  // namespace fedge::cli
