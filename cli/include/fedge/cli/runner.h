// `fedge run`: executes a FederatedTrainingJob on this machine. Starts
// fedge-aggregator and N fedge-agent processes on 127.0.0.1, follows the
// aggregator's GET /v1/status, prints per-round progress, and supervises the
// children (any unexpected exit fails the job; SIGINT/SIGTERM stop everything).
//
// Three steps: the plan (run_plan.h: pure, what to start and how), the
// supervision (RunJob here: the only step with processes, signals and sockets),
// and the report (run_report.h: pure, the result, the summary and the exit code).
#pragma once

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

}  // namespace fedge::cli
