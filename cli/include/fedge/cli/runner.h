// `fedge run`: executes a FederatedTrainingJob on this machine. Starts
// fedge-aggregator and N fedge-agent processes on 127.0.0.1, follows the
// aggregator's GET /v1/status, prints per-round progress, and supervises the
// children (any unexpected exit fails the job; SIGINT/SIGTERM stop everything).
//
// Three steps: the plan (run_plan.h: pure, what to start and how), the
// supervision (RunJob here: the only step with processes, signals and sockets),
// and the report (run_report.h: pure, the result, the summary and the exit code).
#pragma once

#include <optional>

#include "fedge/cli/run_plan.h"
#include "fedge/cli/run_report.h"

namespace fedge::cli {

// Runs the whole job: plans it (usage errors exit 2 before anything is written),
// prepares the work directory and the Prometheus target lists, starts the
// children, follows the job until it ends, stops the children, and reports.
// With --serve, after a succeeded job, keeps the children running until
// SIGINT/SIGTERM. Prints progress to stdout and errors to stderr. Returns one of
// the kExit* codes. Installs SIGINT/SIGTERM handlers for its duration; not
// reentrant (one run per process at a time).
int RunJob(const RunOptions& options);

// What a child's exit while the job runs means (the supervision's one decision,
// pure). kExpected: an agent left with exit 0 after it was told the job is done
// (not with --serve). kAgentLost: an agent ended otherwise and
// plan.allow_agent_failures. kJobDone: the aggregator exited 0 and `last` (its
// last /v1/status) holds every round. kFatal: anything else; the run fails.
enum class ExitVerdict { kExpected, kAgentLost, kJobDone, kFatal };
ExitVerdict JudgeChildExit(const ChildExit& exit, const RunPlan& plan, const std::optional<JobStatus>& last);

}  // namespace fedge::cli
