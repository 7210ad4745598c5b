#include "fedge/op/status_reporter.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <optional>

#include "fedge/log.h"
#include "fedge/op/desired.h"
#include "fedge/op/rest_kube_client.h"

namespace fedge::op {

Json ProgressFromAggregator(const Json& a) {
  Json st = Json::object();
  const Json rounds = a.value("rounds", Json::array());
  int64_t completed = 0;
  for (const auto& r : rounds) completed = std::max<int64_t>(completed, r.value("round", int64_t{0}));
  st["roundsCompleted"] = completed;
  st["round"] = std::max<int64_t>(a.value("round", int64_t{0}), completed);
  if (!rounds.empty()) {
    const Json& last = rounds.back();
    Json lr = {{"bytesUp", last.value("bytes_up", int64_t{0})},
               {"bytesDown", last.value("bytes_down", int64_t{0})},
               {"durationSeconds", last.value("seconds", 0.0)}};
    // Training loss when present, else evaluation loss.
    const Json& loss = last.contains("train_loss") && last["train_loss"].is_number()
                           ? last["train_loss"]
                           : last.value("loss", Json());
    if (loss.is_number()) lr["loss"] = loss;
    // The newest evaluated round: the last one, or the one before it while the
    // aggregator evaluates each round with the next round's updates.
    for (auto r = rounds.rbegin(); r != rounds.rend(); ++r) {
      if (r->contains("accuracy") && (*r)["accuracy"].is_number()) {
        lr["accuracy"] = (*r)["accuracy"];
        break;
      }
    }
    st["lastRound"] = lr;
    st["participants"] = last.value("participants", 0);
  }
  if (a.contains("final_accuracy") && a["final_accuracy"].is_number()) {
    st["lastRound"]["accuracy"] = a["final_accuracy"];
  }
  st["globalModel"] = {{"version", a.value("global_version", int64_t{0})},
                       {"checksum", a.value("global_checksum", std::string())}};
  // Differential privacy (the aggregator's RDP accountant): 0 when it is off.
  st["epsilonSpent"] = 0.0;
  auto dp = a.find("privacy");
  if (dp != a.end() && dp->is_object()) {
    const Json& eps = (*dp)["epsilon"];
    // null: no finite bound (no noise); reported as a large number the CRD can hold.
    st["epsilonSpent"] = eps.is_number() ? eps.get<double>() : 1e308;
    st["privacy"] = {{"delta", dp->value("delta", 0.0)},
                     {"targetEpsilon", dp->value("target_epsilon", 0.0)},
                     {"roundsAccounted", dp->value("rounds_accounted", int64_t{0})},
                     {"budgetExhausted", dp->value("budget_exhausted", false)}};
  }
  // Checkpoint health, when the aggregator reports it: the operator turns it into the
  // CheckpointFailing condition.
  auto ck = a.find("checkpoint");
  if (ck != a.end() && ck->is_object()) {
    Json out = {{"consecutiveFailures", ck->value("consecutive_failures", int64_t{0})},
                {"failuresTotal", ck->value("failures_total", int64_t{0})}};
    std::string err = ck->value("last_error", std::string());
    if (!err.empty()) out["lastError"] = err.substr(0, 512);  // bounded status
    if (ck->contains("last_saved_round") && (*ck)["last_saved_round"].is_number_integer())
      out["lastSavedRound"] = (*ck)["last_saved_round"];
    st["checkpoint"] = out;
  }
  return st;
}

ProgressWriter::ProgressWriter(KubeClient* client, std::string ns, std::string name, Clock* clock,
                               BackoffPolicy backoff)
    : client_(client), ns_(std::move(ns)), name_(std::move(name)), clock_(clock), backoff_(backoff) {}

void ProgressWriter::Offer(Json progress) {
  if (progress == written_) {
    pending_ = Json();  // what an unwritten older progress would have changed is back
    return;
  }
  pending_ = std::move(progress);
}

Status ProgressWriter::WriteIfDue() {
  if (!pending() || clock_->Now() < next_attempt_) return OkStatus();
  Status s = WriteOnce();
  last_error_ = s;
  if (s.ok()) {
    backoff_.Reset();
    next_attempt_ = Clock::TimePoint{};
    return s;
  }
  auto delay = backoff_.Next();
  next_attempt_ = clock_->Now() + std::chrono::duration_cast<Clock::Duration>(delay);
  log::Warn("status write failed; retrying",
            {{"error", s.ToString()},
             {"retry_in_ms", std::chrono::duration_cast<std::chrono::milliseconds>(delay).count()}});
  return s;
}

Status ProgressWriter::WriteOnce() {
  for (int attempt = 0;; ++attempt) {
    auto job = client_->Get(res::kJobs, ns_, name_);
    if (!job.ok()) return job.status();
    const Json status = job->value("status", Json::object());
    bool covered = true;  // every field already as pending_ says
    for (auto it = pending_.begin(); it != pending_.end() && covered; ++it)
      covered = status.contains(it.key()) && status[it.key()] == it.value();
    const int64_t shown = status.value("roundsCompleted", int64_t{0});
    const int64_t ours = pending_.value("roundsCompleted", int64_t{0});
    if (covered || shown > ours) {
      if (!covered)
        log::Info("status is ahead of this progress; not written",
                  {{"rounds_completed", shown}, {"ours", ours}});
      written_ = std::move(pending_);
      pending_ = Json();
      return OkStatus();
    }
    Json patch = {{"apiVersion", "fedge.io/v1alpha1"},
                  {"kind", "FederatedTrainingJob"},
                  {"metadata",
                   {{"name", name_},
                    {"namespace", ns_},
                    // A precondition: what was read in this attempt is what is written over.
                    {"resourceVersion", (*job)["metadata"].value("resourceVersion", "")}}},
                  {"status", pending_}};
    auto applied = client_->Apply(res::kJobs, ns_, name_, patch, {kReporterFieldManager, true, "status"});
    if (applied.ok()) {
      log::Info("status reported", {{"round", pending_.value("round", int64_t{0})}});
      written_ = std::move(pending_);
      pending_ = Json();
      return OkStatus();
    }
    if (!IsConflict(applied.status()) || attempt >= kConflictRetries) return applied.status();
    // The job moved between the read and the write: read it again.
  }
}

Status RunStatusReporter(KubeClient* client, const ReporterOptions& opts, const std::atomic<bool>& stop) {
  Clock* clock = opts.clock ? opts.clock : RealClock::Get();
  ProgressWriter writer(client, opts.ns, opts.name, clock, opts.write_backoff);
  std::mutex mu;  // only for the clock's waits: nothing notifies, `stop` is re-read after each
  std::condition_variable cv;
  bool seen = false;
  auto last_ok = clock->Now();
  auto next_poll = clock->Now();
  std::optional<Clock::TimePoint> give_up;  // set once the aggregator is gone
  while (!stop.load()) {
    if (!give_up && clock->Now() >= next_poll) {
      auto got = HttpGetJson("http://" + opts.aggregator_http + "/v1/status", std::chrono::seconds(2));
      auto now = clock->Now();
      if (got.ok()) {
        seen = true;
        last_ok = now;
        writer.Offer(ProgressFromAggregator(*got));
      } else if (seen && now - last_ok >= opts.gone_after) {
        // The aggregator finished. Its last progress must still reach the job: an API
        // server that is away now may be back in a moment, and exiting with an error would
        // make the pod Failed and the operator recreate a finished aggregator.
        give_up = now + opts.final_write_for;
      }
      next_poll = now + opts.interval;
    }
    (void)writer.WriteIfDue();  // a failure is kept in last_error() and retried when due
    const auto now = clock->Now();
    if (give_up && (!writer.pending() || now >= *give_up)) break;
    // Sleep until the next poll or the next write, at most one interval (to see `stop`).
    auto wake = now + opts.interval;
    if (!give_up) wake = std::min(wake, next_poll);
    if (writer.pending()) wake = std::min(wake, std::max(now, writer.next_attempt()));
    if (give_up) wake = std::min(wake, *give_up);
    std::unique_lock<std::mutex> lock(mu);
    clock->WaitUntil(lock, cv, wake);
  }
  if (give_up) log::Info("aggregator gone; reporter exiting", {{"unwritten", writer.pending()}});
  return writer.pending() ? writer.last_error() : OkStatus();
}

}  // namespace fedge::op
