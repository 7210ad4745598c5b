// The aggregator pod's status reporter (`fedge-operator report-status`): reads the
// aggregator's GET /v1/status on the pod's loopback and server-side-applies the progress
// fields of the job's status (round, roundsCompleted, lastRound, participants,
// globalModel, epsilonSpent, checkpoint) with its own field manager, "fedge-aggregator", through a
// Role that may read and patch only this job (and its status). The operator never polls the
// aggregator.
#pragma once

#include <atomic>
#include <chrono>
#include <string>

#include "fedge/op/backoff.h"
#include "fedge/op/clock.h"
#include "fedge/op/kube_client.h"

namespace fedge::op {

// Maps the aggregator's /v1/status JSON to the status fields the reporter owns.
// Bounded: only the last round is kept. The aggregator's optional
// "checkpoint": {"consecutive_failures", "failures_total", "last_error",
// "last_saved_round"} becomes status.checkpoint {consecutiveFailures, failuresTotal,
// lastError, lastSavedRound}.
Json ProgressFromAggregator(const Json& aggregator_status);

// Writes the reporter's progress into the job's status (the fields ProgressFromAggregator
// makes, field manager kReporterFieldManager). A write:
//   1. reads the job;
//   2. skips the write when the status already holds the progress (an earlier write that
//      timed out may have landed) or is ahead of it: a completed round is never dropped,
//      so progress with fewer roundsCompleted than the status shows (an older reporter's
//      unwritten progress, e.g. the replaced aggregator pod's, still retrying) is dropped
//      instead of written;
//   3. server-side-applies the progress with the resourceVersion it read as a
//      precondition, so nothing written between 1 and 3 is overwritten blindly. A
//      Conflict (recognised by the API's reason, IsConflict) means the job moved: read
//      again and re-apply at once, up to kConflictRetries times.
// Any other failure (5xx, a timeout, NotFound, Forbidden) is retried with the operator's
// one Backoff: the next attempt is not due before Backoff::Next() has passed on `clock`;
// a write that lands resets it. Progress offered while a write is failing replaces the
// unwritten one (the newest progress holds every completed round).
// Not thread-safe: one owner (the reporter's loop). `client` and `clock` outlive it.
class ProgressWriter {
 public:
  static constexpr int kConflictRetries = 5;

  ProgressWriter(KubeClient* client, std::string ns, std::string name, Clock* clock, BackoffPolicy backoff);

  // Makes `progress` the one to write next; nothing to write when it is what was written.
  void Offer(Json progress);
  // One write attempt (steps 1-3 above) when one is pending and due; else OK at once.
  // The error of a failed attempt (also in last_error()).
  Status WriteIfDue();

  bool pending() const { return !pending_.is_null(); }
  // When the pending write is due (now or earlier when it has not failed yet).
  Clock::TimePoint next_attempt() const { return next_attempt_; }
  // The error of the latest attempt; OK once one lands (or is skipped as superseded).
  const Status& last_error() const { return last_error_; }

 private:
  Status WriteOnce();

  KubeClient* client_;
  std::string ns_, name_;
  Clock* clock_;
  Backoff backoff_;
  Json written_;  // the progress last written (or found written)
  Json pending_;  // null: nothing to write
  Clock::TimePoint next_attempt_{};
  Status last_error_;
};

struct ReporterOptions {
  std::string ns, name;
  std::string aggregator_http = "127.0.0.1:9090";
  std::chrono::milliseconds interval{500};
  // Exit after the aggregator has been unreachable this long, once it was reachable (the
  // aggregator exited: the pod should complete).
  std::chrono::milliseconds gone_after{10000};
  // Once the aggregator is gone, how long to keep retrying a status write that failed.
  std::chrono::milliseconds final_write_for{120000};
  // Retries of a failed status write (ProgressWriter).
  BackoffPolicy write_backoff{std::chrono::milliseconds(500), std::chrono::seconds(30), /*jitter=*/0.2};
  // nullptr: RealClock::Get(). Polls, backoff and the deadlines above run on it.
  Clock* clock = nullptr;
};

// Runs until `stop` or the aggregator is gone (then keeps retrying an unwritten progress
// for final_write_for). OK when the aggregator's last progress reached the job's status
// (or was superseded there); else the error of the last failed write (earlier failures
// followed by a successful write do not count). Waits at most `interval` at a time, so
// `stop` is seen within it.
Status RunStatusReporter(KubeClient* client, const ReporterOptions& opts, const std::atomic<bool>& stop);

}  // namespace fedge::op
