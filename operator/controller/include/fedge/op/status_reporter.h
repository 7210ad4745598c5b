// The aggregator pod's status reporter (`fedge-operator report-status`): reads the
// aggregator's GET /v1/status on the pod's loopback and server-side-applies the progress
// fields of the job's status (round, roundsCompleted, lastRound, participants,
// globalModel, epsilonSpent, checkpoint) with its own field manager, "fedge-aggregator", through a
// Role that may patch only this job's status. The operator never polls the aggregator.
#pragma once

#include <atomic>
#include <chrono>
#include <string>

#include "fedge/op/kube_client.h"

namespace fedge::op {

// Maps the aggregator's /v1/status JSON to the status fields the reporter owns.
// Bounded: only the last round is kept. The aggregator's optional
// "checkpoint": {"consecutive_failures", "failures_total", "last_error",
// "last_saved_round"} becomes status.checkpoint {consecutiveFailures, failuresTotal,
// lastError, lastSavedRound}.
Json ProgressFromAggregator(const Json& aggregator_status);

struct ReporterOptions {
  std::string ns, name;
  std::string aggregator_http = "127.0.0.1:9090";
  std::chrono::milliseconds interval{500};
  // Exit after the aggregator has been unreachable this long, once it was reachable (the
  // aggregator exited: the pod should complete).
  std::chrono::milliseconds gone_after{10000};
  // Once the aggregator is gone, how long to keep retrying a status write that failed.
  std::chrono::milliseconds final_write_for{120000};
};

// Runs until `stop` or the aggregator is gone. OK when the aggregator's last progress
// reached the job's status; else the error of the last failed write (earlier failures
// followed by a successful write do not count).
Status RunStatusReporter(KubeClient* client, const ReporterOptions& opts, const std::atomic<bool>& stop);

}  // namespace fedge::op
