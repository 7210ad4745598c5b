#include "fedge/aggregator/revoked_pods.h"

#include <nlohmann/json.hpp>

#include "fedge/file_util.h"
#include "fedge/log.h"

namespace fedge::aggregator {

StatusOr<std::set<std::string>> ParseRevokedPods(std::string_view json, int64_t now_unix_s) {
  if (json.size() > kMaxRevokedPodsBytes) {
    return InvalidArgumentError("revoked pods: " + std::to_string(json.size()) + " bytes, more than " +
                                std::to_string(kMaxRevokedPodsBytes));
  }
  nlohmann::json doc = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return InvalidArgumentError(
        "revoked pods: not a JSON object (want {\"pods\": [{\"uid\": ..., \"until\": ...}]})");
  }
  auto pods = doc.find("pods");
  if (pods == doc.end() || !pods->is_array())
    return InvalidArgumentError("revoked pods: \"pods\" is not a list");
  if (pods->size() > kMaxRevokedPods) {
    return InvalidArgumentError("revoked pods: " + std::to_string(pods->size()) + " entries, more than " +
                                std::to_string(kMaxRevokedPods));
  }
  std::set<std::string> uids;
  for (size_t i = 0; i < pods->size(); ++i) {
    const nlohmann::json& e = (*pods)[i];
    const std::string where = "revoked pods: entry " + std::to_string(i);
    if (!e.is_object()) return InvalidArgumentError(where + " is not an object");
    auto uid = e.find("uid");
    if (uid == e.end() || !uid->is_string() || uid->get_ref<const std::string&>().empty())
      return InvalidArgumentError(where + " has no uid string");
    auto until = e.find("until");
    if (until == e.end() || !until->is_number_integer())
      return InvalidArgumentError(where + " has no integer until (unix seconds)");
    if (until->get<int64_t>() > now_unix_s) uids.insert(uid->get<std::string>());
  }
  return uids;
}

StatusOr<std::unique_ptr<RevokedPods>> RevokedPods::Open(std::string path, const Clock* clock,
                                                         int64_t min_recheck_ms) {
  std::unique_ptr<RevokedPods> r(new RevokedPods(std::move(path), clock, min_recheck_ms));
  std::lock_guard<std::mutex> lock(r->mu_);
  auto id = StatFileId(r->path_, "revoked pods file");
  if (id.ok()) {
    FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(r->path_));
    const int64_t now_s = clock->NowUnixMs() / 1000;
    auto uids = ParseRevokedPods(text, now_s);
    if (!uids.ok()) return uids.status().WithContext(r->path_);
    r->text_ = std::move(text);
    r->uids_ = std::move(*uids);
    r->parsed_at_s_ = now_s;
    r->id_ = *id;
  } else if (id.status().code() != StatusCode::kNotFound) {
    return id.status();
  }
  r->last_check_ms_ = clock->NowUnixMs();
  return r;
}

bool RevokedPods::RefreshLocked() {
  last_check_ms_ = clock_->NowUnixMs();
  const int64_t now_s = last_check_ms_ / 1000;
  auto id = StatFileId(path_, "revoked pods file");
  if (!id.ok()) return false;  // gone for now: what it listed stays refused
  if (*id == id_ || *id == refused_id_) {
    // Unchanged: entries still expire (re-parsed at most once a second).
    if (now_s != parsed_at_s_ && !text_.empty()) {
      if (auto uids = ParseRevokedPods(text_, now_s); uids.ok()) uids_ = std::move(*uids);
      parsed_at_s_ = now_s;
    }
    return false;
  }
  auto text = ReadFile(path_);
  StatusOr<std::set<std::string>> uids = text.ok() ? ParseRevokedPods(*text, now_s) : text.status();
  if (!uids.ok()) {
    refused_id_ = *id;
    log::Warn("ignoring the changed revoked pods file; the pods listed before stay refused",
              {{"path", path_}, {"error", uids.status().ToString()}});
    return false;
  }
  const size_t before = uids_.size();
  text_ = std::move(*text);
  uids_ = std::move(*uids);
  parsed_at_s_ = now_s;
  id_ = *id;
  ++reloads_;
  log::Info("revoked pods file reloaded", {{"path", path_},
                                           {"pods", static_cast<int64_t>(uids_.size())},
                                           {"before", static_cast<int64_t>(before)}});
  return true;
}

bool RevokedPods::Revoked(const std::string& pod_uid) {
  std::lock_guard<std::mutex> lock(mu_);
  if (clock_->NowUnixMs() - last_check_ms_ >= min_recheck_ms_) RefreshLocked();
  return uids_.count(pod_uid) > 0;
}

bool RevokedPods::Refresh() {
  std::lock_guard<std::mutex> lock(mu_);
  return RefreshLocked();
}

size_t RevokedPods::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return uids_.size();
}

int64_t RevokedPods::reloads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reloads_;
}

}  // namespace fedge::aggregator
