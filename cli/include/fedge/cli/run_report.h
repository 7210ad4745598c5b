// `fedge run`, step 3 of 3: the report. Reads the aggregator's GET /v1/status
// (ParseJobStatus), formats the live progress lines, and turns how the run ended
// (RunOutcome: the last status, the agents that died, the wall time) into what
// the user is shown, the --summary JSON and the exit code (ReportRun). Everything
// here is pure except ReadDataBaselines and DescribeChildFailure, which read files.
// Step 1 (the plan) is run_plan.h, step 2 (supervision) RunJob in runner.h.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fedge/cli/run_plan.h"
#include "fedge/cli/supervisor.h"
#include "fedge/status.h"

namespace fedge::cli {

// Exit codes of `fedge run` (documented in its --help).
constexpr int kExitOk = 0;
constexpr int kExitJobFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitInterrupted = 130;

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

// How many of `s.rounds` (from the first) can be printed now: all once the job
// ended; while it runs, all but a last one without its evaluation yet (the
// aggregator evaluates a round with the next round's updates, and the record
// gets its accuracy when that round closes).
size_t PrintableRounds(const JobStatus& s);
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

// "job default/x: 5 rounds, 4 agents, ..." and where model, data, work dir,
// status endpoint and the Prometheus target list (`targets_path`) are.
std::string FormatRunBanner(const RunPlan& plan, const std::string& targets_path);

// How the supervised run ended (RunJob's supervision fills it in).
struct RunOutcome {
  enum class End { kSucceeded, kFailed, kInterrupted };
  End end = End::kFailed;
  // The aggregator's last /v1/status; always set when kSucceeded (its rounds
  // complete), absent when the aggregator never answered.
  std::optional<JobStatus> last_status;
  std::vector<FailedAgent> failed_agents;  // --allow-agent-failures
  double wall_seconds = 0;
};

// What `fedge run` shows and returns at the end. The reason of a failure is
// printed by the supervision when it happens (before the children are stopped);
// the report adds the verdict.
struct RunReport {
  int exit_code = kExitJobFailed;
  std::string out;                    // for stdout: the result lines of a succeeded run
  std::string err;                    // for stderr: the verdict of a failed or interrupted run
  std::optional<RunSummary> summary;  // succeeded runs only (for --summary: RunSummaryJson)
};

// Pure. kSucceeded: exit 0, "job <key> succeeded in <s> s", the final accuracy
// against `baselines` (the final held-out loss and perplexity for a causal-LM
// job, which has no accuracy), and the summary (final accuracy from the status,
// else the last round's). kFailed: exit 1, "job failed; logs in <work>/logs".
// kInterrupted: exit 130, "interrupted; logs in <work>/logs".
RunReport ReportRun(const RunPlan& plan, const RunOutcome& outcome, const DataBaselines& baselines);

}  // namespace fedge::cli
