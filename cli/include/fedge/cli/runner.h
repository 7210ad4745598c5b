// `fedge run`: executes a FederatedTrainingJob on this machine. Starts
// fedge-aggregator and N fedge-agent processes on 127.0.0.1, follows the
// aggregator's GET /v1/status, prints per-round progress, and supervises the
// children (any unexpected exit fails the job; SIGINT/SIGTERM stop everything).
//
// The pure parts (planning, argument lists, status parsing, formatting, the
// summary) are separate functions so they are unit tested without processes.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fedge/cli/supervisor.h"
#include "fedge/job_spec.h"
#include "fedge/status.h"

namespace fedge::cli {

// Exit codes of `fedge run` (documented in its --help).
constexpr int kExitOk = 0;
constexpr int kExitJobFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitInterrupted = 130;

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
  bool serve = false;       // children keep serving after the job (no --exit-when-done)
  std::string work_dir;     // absolute
  std::string data_dir;     // absolute; root with agent-<i>/ and all/
  std::string model_dir;    // absolute
  std::string config_path;  // work_dir/job.yaml
  std::string aggregator_bin;
  std::string agent_bin;
  std::string host = "127.0.0.1";
  int grpc_port = 0;
  int http_port = 0;
  std::vector<int> agent_http_ports;
};

// Applies the command-line overrides to a parsed spec and resolves relative
// paths against `cwd`. Centralized: one agent, localSteps multiplied by the
// federated agent count, quorum 1. Errors (INVALID_ARGUMENT) if the result no
// longer validates (e.g. --agents below the quorum is adjusted, not an error).
StatusOr<RunPlan> PlanRun(JobSpec spec, const RunOptions& options, const std::string& cwd);

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

// The children's command lines; logs under work_dir/logs/<name>.log.
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

// The aggregator's GET /v1/status, the fields the runner uses.
struct RoundStatus {
  int64_t round = 0;
  int participants = 0;
  int invited = 0;
  std::optional<double> loss;
  std::optional<double> accuracy;
  int64_t eval_examples = 0;
  uint64_t bytes_up = 0;    // all participants together
  uint64_t bytes_down = 0;  // all agents together
  double seconds = 0;
  int64_t global_version = 0;
  std::optional<double> epsilon;  // differential privacy spent after the round (DP jobs)
  // Feedback examples each agent trained on in the round (agent-reported; only
  // agents that reported some).
  std::map<std::string, int64_t> feedback_examples;

  // Per-agent traffic: uploads over participants, downloads over the agents
  // that received the model (max of invited and participants).
  double BytesUpPerAgent() const;
  double BytesDownPerAgent() const;
};

struct JobStatus {
  std::string job;
  std::string state;  // WaitingForAgents | Initializing | Running | Succeeded | Failed
  int64_t round = 0;
  int64_t total_rounds = 0;
  std::string phase;
  int64_t global_version = 0;
  int agents_joined = 0;
  std::vector<RoundStatus> rounds;
  std::optional<double> final_accuracy;
  std::string message;
};

// Parses the status JSON; tolerant of extra fields and of null loss/accuracy.
StatusOr<JobStatus> ParseJobStatus(const std::string& json);

// "round 2/5  participants 4  loss 1.234  accuracy 0.456  up 123.4 KiB/agent  down 456.7 KiB/agent  12.3 s"
std::string FormatRoundLine(const RoundStatus& round, int64_t total_rounds);
// "[  12.3 s] Running: round 3/5, train; 4 agents joined"
std::string FormatStatusLine(const JobStatus& status, double elapsed_seconds);
// "123 B", "123.4 KiB", "1.2 MiB".
std::string FormatBytes(double bytes);

// Baselines from DATA/meta.json (written by `fedge data wordnet`).
struct DataBaselines {
  std::optional<double> majority_baseline;
  std::optional<double> chance;
};
DataBaselines ReadDataBaselines(const std::string& data_dir);

// An agent that ended while the job ran (--allow-agent-failures).
struct FailedAgent {
  std::string name;
  std::string how;           // ChildExit::Describe(): "signal 9 (Killed)", "exit code 7"
  double at_seconds = 0;     // since the run started
  int64_t during_round = 0;  // the aggregator's round when it was noticed (0: not yet running)
};

struct RunSummary {
  std::string job;
  std::vector<RoundStatus> rounds;
  std::optional<double> final_accuracy;
  DataBaselines baselines;
  bool centralized = false;
  double wall_seconds = 0;
  std::vector<FailedAgent> failed_agents;
};
// {"job","rounds":[{"round","participants","loss","accuracy","bytes_up","bytes_down","seconds"}],
//  "final_accuracy","majority_baseline","chance","centralized","wall_seconds"}; bytes per agent,
// absent values as null; "failed_agents": [{"name","how","at_seconds","during_round"}] only
// when an agent ended during the job.
std::string RunSummaryJson(const RunSummary& summary);

// The last lines printed about a failed child: name, how it ended, log tail.
std::string DescribeChildFailure(const ChildExit& exit, int tail_lines = 20);

// Runs the whole job (see the file comment). Prints progress to stdout and
// errors to stderr. Returns one of the kExit* codes. Installs SIGINT/SIGTERM
// handlers for its duration.
int RunJob(const RunOptions& options);

}  // namespace fedge::cli
