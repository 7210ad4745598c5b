// `fedge run`, step 1 of 3: the plan. From the parsed manifest and the command
// line, decide what runs: the resolved spec (overrides applied, absolute paths),
// how many agents, where each child's data, state and log live, which port each
// child listens on and its exact command line. PlanRun, AssignPorts,
// BuildChildSpecs and PrometheusTargetsJson are pure (no file system, no
// processes); FindBinary and CheckRunInputs only look at the file system.
// Step 2 (supervision) is RunJob in runner.h, step 3 (the report) run_report.h.
#pragma once

#include <string>
#include <vector>

#include "fedge/cli/supervisor.h"
#include "fedge/job_spec.h"
#include "fedge/status.h"

namespace fedge::cli {

struct RunOptions {
  std::string manifest;      // -f
  std::string summary_path;  // --summary ("" = none)
  bool centralized = false;  // one agent on DATA/all, localSteps x N
  std::string data_dir;      // overrides spec.data.path
  std::string model_dir;     // overrides spec.model.path
  std::string bin_dir;       // where fedge-aggregator / fedge-agent live
  std::string work_dir;      // default .fedge/runs/<job name>
  int agents = 0;            // overrides the agent count (0: from the spec)
  int rounds = 0;            // overrides spec.rounds.total (0: from the spec)
  bool quiet = false;        // no live status line, only rounds and the result
  // After the job succeeds, keep the aggregator and the agents running (agents
  // serve inference with the final global) until SIGINT/SIGTERM.
  bool serve = false;
  std::string self_exe;  // path of the running fedge binary (for finding siblings)
  std::string path_env;  // $PATH, searched last
  // Also write the Prometheus file_sd target list here ("" = only WORK/prometheus/targets.json).
  std::string prometheus_targets_path;
  // An agent that ends unexpectedly while the job runs is reported (with its log tail
  // and in the summary's "failed_agents") and the job goes on without it: the aggregator
  // decides whether it can (quorum, round deadlines, secure aggregation's threshold),
  // as it does in a cluster once an agent pod has used up runPolicy.backoffLimit. The
  // run still fails when the aggregator ends or reports Failed, or when no agent is left.
  // Dead agents are not restarted. Off: any unexpected exit fails the run at once.
  bool allow_agent_failures = false;
};

// What `fedge run` will execute: the resolved manifest and where things are.
struct RunPlan {
  JobSpec spec;              // resolved: absolute paths, overrides applied
  int agents = 1;            // processes to start (1 when centralized)
  int federated_agents = 1;  // the federated agent count (localSteps multiplier)
  bool centralized = false;
  bool serve = false;                 // children keep serving after the job (no --exit-when-done)
  bool allow_agent_failures = false;  // a dead agent is reported, not fatal (RunOptions)
  // spec.privacy.tls: gRPC over mutual TLS with credentials made for the run
  // (run_pki.h); false (the local default): plaintext gRPC on 127.0.0.1.
  bool tls = false;
  std::string work_dir;     // absolute
  std::string data_dir;     // absolute; root with agent-<i>/ and all/
  std::string model_dir;    // absolute
  std::string config_path;  // work_dir/job.yaml
  std::string aggregator_bin;
  std::string agent_bin;
  std::string host = "127.0.0.1";
  int grpc_port = 0;  // set by AssignPorts
  int http_port = 0;
  std::vector<int> agent_http_ports;

  // Ports the run listens on: the aggregator's gRPC and HTTP, one HTTP per agent.
  int PortsNeeded() const { return 2 + agents; }
};

// Applies the command-line overrides to a parsed spec and resolves relative
// paths against `cwd`. Centralized: one agent, localSteps multiplied by the
// federated agent count, quorum 1. Pure. Errors (INVALID_ARGUMENT): a negative
// --agents or --rounds, --allow-agent-failures with --serve (serving needs every
// agent up), or a result that no longer validates (--agents below the quorum is
// adjusted, not an error).
StatusOr<RunPlan> PlanRun(JobSpec spec, const RunOptions& options, const std::string& cwd);

// Gives the plan its ports, in this order: aggregator gRPC, aggregator HTTP, then
// agent i's HTTP. Pure. `ports` must hold exactly plan->PortsNeeded() distinct
// ports (a caller bug otherwise: the process aborts).
void AssignPorts(const std::vector<int>& ports, RunPlan* plan);

// Checks the inputs exist before anything starts: the model directory
// (config.json) and the data shards (agent-<i>/train.jsonl or all/train.jsonl).
// Errors say which command creates the missing piece.
Status CheckRunInputs(const RunPlan& plan);

// Finds `name`: in bin_dir if given (and only there), else next to self_exe,
// else in ../aggregator or ../agent relative to self_exe's directory (the
// build tree: build/cli/fedge, build/aggregator/fedge-aggregator), else in
// `path_env`. NOT_FOUND names every place looked at.
StatusOr<std::string> FindBinary(const std::string& name, const std::string& bin_dir,
                                 const std::string& self_exe, const std::string& path_env);

// The children's command lines, aggregator first, then the agents in order;
// logs under work_dir/logs/<name>.log; with plan.tls, the TLS flags naming the
// files of PkiPaths(plan) (written by WriteRunPki before the children start). Pure.
std::vector<ChildSpec> BuildChildSpecs(const RunPlan& plan);

// The label Prometheus's `job` gets for the local children (matches the
// `fedge-local` scrape job of deploy/prometheus/prometheus.yml).
inline constexpr const char* kPrometheusLocalJob = "fedge-local";

// Prometheus file_sd target list for the children of `plan` (its ports must be
// assigned): a JSON array with one group per child, in BuildChildSpecs order,
// each {"targets": ["host:http_port"], "labels": {"job": "fedge-local",
// "component": "aggregator"|"agent", "fedge_job": "<namespace>/<name>",
// "agent": "<agent id>"}}; the aggregator's group has no "agent" label.
std::string PrometheusTargetsJson(const RunPlan& plan);

// The id (and child name) of agent `i`: "agent-<i>", or "central" when centralized.
std::string AgentId(const RunPlan& plan, int i);
// Agent `i`'s HTTP port (0 before AssignPorts).
int AgentHttpPort(const RunPlan& plan, int i);

}  // namespace fedge::cli
