#include "fedge/aggregator/revoked_pods.h"

#include <nlohmann/json.hpp>

#include "fedge/file_util.h"
#include "fedge/log.h"

namespace fedge::aggregator {

bool RevokedPodList::Refuses(const std::string& pod_uid, int64_t issued_unix_s) const {
  if (uids.count(pod_uid)) return true;
  return watched_since_unix_s > 0 && issued_unix_s > 0 && issued_unix_s < watched_since_unix_s &&
         !live.count(pod_uid);
}

StatusOr<RevokedPodList> ParseRevokedPods(std::string_view json, int64_t now_unix_s) {
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
  RevokedPodList list;
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
    if (until->get<int64_t>() > now_unix_s) list.uids.insert(uid->get<std::string>());
  }
  auto since = doc.find("watchedSince");
  if (since == doc.end()) return list;
  if (!since->is_number_integer() || since->get<int64_t>() <= 0)
    return InvalidArgumentError("revoked pods: \"watchedSince\" is not a positive integer (unix seconds)");
  auto live = doc.find("livePods");
  if (live == doc.end() || !live->is_array())
    return InvalidArgumentError("revoked pods: \"watchedSince\" without a \"livePods\" list");
  if (live->size() > kMaxLivePods) {
    return InvalidArgumentError("revoked pods: " + std::to_string(live->size()) + " livePods, more than " +
                                std::to_string(kMaxLivePods));
  }
  for (size_t i = 0; i < live->size(); ++i) {
    const nlohmann::json& uid = (*live)[i];
    if (!uid.is_string() || uid.get_ref<const std::string&>().empty())
      return InvalidArgumentError("revoked pods: livePods entry " + std::to_string(i) +
                                  " is not a uid string");
    list.live.insert(uid.get<std::string>());
  }
  list.watched_since_unix_s = since->get<int64_t>();
  return list;
}

StatusOr<std::unique_ptr<RevokedPods>> RevokedPods::Open(std::string path, const Clock* clock,
                                                         int64_t min_recheck_ms) {
  std::unique_ptr<RevokedPods> r(new RevokedPods(std::move(path), clock, min_recheck_ms));
  std::lock_guard<std::mutex> lock(r->mu_);
  auto id = StatFileId(r->path_, "revoked pods file");
  if (id.ok()) {
    FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(r->path_));
    const int64_t now_s = clock->NowUnixMs() / 1000;
    auto list = ParseRevokedPods(text, now_s);
    if (!list.ok()) return list.status().WithContext(r->path_);
    r->text_ = std::move(text);
    r->list_ = std::move(*list);
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
      if (auto list = ParseRevokedPods(text_, now_s); list.ok()) list_ = std::move(*list);
      parsed_at_s_ = now_s;
    }
    return false;
  }
  auto text = ReadFile(path_);
  StatusOr<RevokedPodList> list = text.ok() ? ParseRevokedPods(*text, now_s) : text.status();
  if (!list.ok()) {
    refused_id_ = *id;
    log::Warn("ignoring the changed revoked pods file; the pods listed before stay refused",
              {{"path", path_}, {"error", list.status().ToString()}});
    return false;
  }
  const size_t before = list_.uids.size();
  text_ = std::move(*text);
  list_ = std::move(*list);
  parsed_at_s_ = now_s;
  id_ = *id;
  ++reloads_;
  log::Info("revoked pods file reloaded", {{"path", path_},
                                           {"pods", static_cast<int64_t>(list_.uids.size())},
                                           {"before", static_cast<int64_t>(before)},
                                           {"watched_since_unix_s", list_.watched_since_unix_s},
                                           {"live_pods", static_cast<int64_t>(list_.live.size())}});
  return true;
}

bool RevokedPods::Revoked(const std::string& pod_uid, int64_t issued_unix_s) {
  std::lock_guard<std::mutex> lock(mu_);
  if (clock_->NowUnixMs() - last_check_ms_ >= min_recheck_ms_) RefreshLocked();
  return list_.Refuses(pod_uid, issued_unix_s);
}

bool RevokedPods::Refresh() {
  std::lock_guard<std::mutex> lock(mu_);
  return RefreshLocked();
}

size_t RevokedPods::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return list_.uids.size();
}

int64_t RevokedPods::reloads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reloads_;
}

}  // namespace fedge::aggregator
