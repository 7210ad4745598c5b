#include "fedge/op/status_reporter.h"

#include <thread>

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
    if (last.contains("accuracy") && last["accuracy"].is_number()) lr["accuracy"] = last["accuracy"];
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

Status RunStatusReporter(KubeClient* client, const ReporterOptions& opts, const std::atomic<bool>& stop) {
  Json last_applied;
  Json pending;  // progress read but not yet written (the API server refused or was away)
  bool seen = false;
  auto last_ok = std::chrono::steady_clock::now();
  Status last_error;  // of the latest apply; cleared by the next one that succeeds
  auto apply = [&](const Json& progress) {
    Json patch = {{"apiVersion", "fedge.io/v1alpha1"},
                  {"kind", "FederatedTrainingJob"},
                  {"metadata", {{"name", opts.name}, {"namespace", opts.ns}}},
                  {"status", progress}};
    auto s = client->Apply(res::kJobs, opts.ns, opts.name, patch, {kReporterFieldManager, true, "status"});
    if (!s.ok()) {
      last_error = s.status();
      log::Warn("status apply failed", {{"error", s.status().ToString()}});
      return false;
    }
    last_error = OkStatus();
    last_applied = progress;
    pending = Json();
    log::Info("status reported", {{"round", progress.value("round", int64_t{0})}});
    return true;
  };
  while (!stop.load()) {
    auto got = HttpGetJson("http://" + opts.aggregator_http + "/v1/status", std::chrono::seconds(2));
    auto now = std::chrono::steady_clock::now();
    if (got.ok()) {
      seen = true;
      last_ok = now;
      Json progress = ProgressFromAggregator(*got);
      if (progress != last_applied) {
        pending = progress;
        apply(progress);
      }
    } else if (seen && now - last_ok >= opts.gone_after) {
      // The aggregator finished. Its last progress must still reach the job: an API server
      // that is away now may be back in a moment, and exiting with an error would make the
      // pod Failed and the operator recreate a finished aggregator.
      auto give_up = now + opts.final_write_for;
      while (!pending.is_null() && !stop.load() && std::chrono::steady_clock::now() < give_up) {
        if (apply(pending)) break;
        std::this_thread::sleep_for(opts.interval);
      }
      log::Info("aggregator gone; reporter exiting", {{"unwritten", !pending.is_null()}});
      return pending.is_null() ? OkStatus() : last_error;
    }
    std::this_thread::sleep_for(opts.interval);
  }
  return pending.is_null() ? OkStatus() : last_error;
}

}  // namespace fedge::op
