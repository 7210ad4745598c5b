#include "fedge/op/leader_election.h"

#include <chrono>
#include <ctime>

#include "fedge/log.h"

namespace fedge::op {
namespace {

std::string MicroTimeNow() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() % 1000000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  char out[64];
  std::snprintf(out, sizeof(out), "%s.%06lldZ", buf, static_cast<long long>(us));
  return out;
}

}  // namespace

LeaderElector::LeaderElector(KubeClient* client, LeaderElectionOptions opts, Clock* clock)
    : client_(client), opts_(std::move(opts)), clock_(clock) {}

bool LeaderElector::TryAcquireOrRenew() {
  const int duration_s =
      static_cast<int>(std::chrono::duration_cast<std::chrono::seconds>(opts_.lease_duration).count());
  auto got = client_->Get(res::kLeases, opts_.ns, opts_.name);
  std::string now = MicroTimeNow();
  if (!got.ok()) {
    if (!IsNotFound(got.status())) {
      log::Warn("lease read failed", {{"error", got.status().ToString()}});
      return false;
    }
    Json lease = {{"apiVersion", "coordination.k8s.io/v1"},
                  {"kind", "Lease"},
                  {"metadata", {{"name", opts_.name}, {"namespace", opts_.ns}}},
                  {"spec",
                   {{"holderIdentity", opts_.identity},
                    {"leaseDurationSeconds", duration_s},
                    {"acquireTime", now},
                    {"renewTime", now},
                    {"leaseTransitions", 0}}}};
    auto created = client_->Create(res::kLeases, opts_.ns, lease);
    if (!created.ok()) return false;  // someone else created it first
    observed_rv_ = (*created)["metadata"].value("resourceVersion", "");
    observed_holder_ = opts_.identity;
    observed_at_ = clock_->Now();
    leader_.store(true);
    return true;
  }
  Json lease = *got;
  Json spec = lease.value("spec", Json::object());
  std::string holder = spec.value("holderIdentity", "");
  std::string rv = lease["metadata"].value("resourceVersion", "");
  if (rv != observed_rv_) {
    observed_rv_ = rv;
    observed_holder_ = holder;
    observed_at_ = clock_->Now();
  }
  bool ours = holder == opts_.identity;
  bool expired = holder.empty() || clock_->Now() >= observed_at_ + opts_.lease_duration;
  if (!ours && !expired) {
    leader_.store(false);
    return false;
  }
  if (!ours) {
    spec["acquireTime"] = now;
    spec["leaseTransitions"] = spec.value("leaseTransitions", 0) + 1;
    spec["holderIdentity"] = opts_.identity;
  }
  spec["renewTime"] = now;
  spec["leaseDurationSeconds"] = duration_s;
  lease["spec"] = spec;
  auto updated = client_->Update(res::kLeases, opts_.ns, lease);  // CAS on resourceVersion
  if (!updated.ok()) {
    if (!IsConflict(updated.status())) {
      log::Warn("lease update failed", {{"error", updated.status().ToString()}});
    }
    return false;
  }
  observed_rv_ = (*updated)["metadata"].value("resourceVersion", "");
  observed_holder_ = opts_.identity;
  observed_at_ = clock_->Now();
  if (!ours)
    log::Info("acquired leadership", {{"lease", opts_.ns + "/" + opts_.name}, {"identity", opts_.identity}});
  leader_.store(true);
  return true;
}

void LeaderElector::Run(const std::function<void()>& on_started, const std::function<void()>& on_stopped) {
  // Acquire.
  while (!stop_.load()) {
    if (TryAcquireOrRenew()) break;
    std::unique_lock<std::mutex> l(mu_);
    clock_->WaitUntil(l, cv_, clock_->Now() + opts_.retry_period);
  }
  if (stop_.load()) return;
  on_started();
  // Renew; lose leadership if no renewal succeeded within renew_deadline.
  Clock::TimePoint last_renew = clock_->Now();
  while (!stop_.load()) {
    {
      std::unique_lock<std::mutex> l(mu_);
      clock_->WaitUntil(l, cv_, clock_->Now() + opts_.retry_period);
    }
    if (stop_.load()) break;
    if (TryAcquireOrRenew()) {
      last_renew = clock_->Now();
    } else if (clock_->Now() - last_renew >= opts_.renew_deadline || !leader_.load()) {
      log::Error("lost leadership", {{"lease", opts_.ns + "/" + opts_.name}});
      leader_.store(false);
      on_stopped();
      return;
    }
  }
  if (leader_.load()) Release().ok();
  leader_.store(false);
  on_stopped();
}

Status LeaderElector::Release() {
  auto got = client_->Get(res::kLeases, opts_.ns, opts_.name);
  if (!got.ok()) return got.status();
  Json lease = *got;
  if (lease["spec"].value("holderIdentity", "") != opts_.identity) return OkStatus();
  // An empty holder lets the next candidate take over at once instead of waiting out
  // the lease duration.
  lease["spec"]["holderIdentity"] = "";
  lease["spec"]["leaseDurationSeconds"] = 1;
  return client_->Update(res::kLeases, opts_.ns, lease).status();
}

void LeaderElector::Stop() {
  stop_.store(true);
  std::lock_guard<std::mutex> l(mu_);
  cv_.notify_all();
}

}  // namespace fedge::op
