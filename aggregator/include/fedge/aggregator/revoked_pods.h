// Agent pods whose service-account tokens the aggregator no longer accepts.
//
// The aggregator verifies agents' projected tokens offline (service_account_token.h):
// a token of a deleted pod stays valid until its exp, and a session lives on for
// --agent-session-grace-seconds after that. The operator, which sees every agent pod
// of the job, closes that window: it lists the pods that are being deleted or have
// ended (revoked-pods.json in the job's trust ConfigMap, mounted into the aggregator),
// and the aggregator refuses their tokens at Join and ends their sessions at their
// next request. The file is JSON:
//
//   {"pods": [{"uid": "<pod uid>", "name": "<pod>", "node": "<node>", "until": <unix s>}]}
//
// `until` is when every token of that pod has expired and every session it held has
// ended anyway (the operator drops the entry then); the aggregator ignores entries
// past it. Only `uid` decides: a pod made again under the same name is a new uid.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>

#include "fedge/aggregator/clock.h"
#include "fedge/file_util.h"
#include "fedge/status.h"

namespace fedge::aggregator {

// Larger files are refused (an entry is ~150 bytes; the operator keeps at most
// kMaxRevokedPods).
inline constexpr size_t kMaxRevokedPodsBytes = 1u << 20;
inline constexpr size_t kMaxRevokedPods = 4096;

// The uids the JSON above lists with `until` after `now_unix_s`. INVALID_ARGUMENT,
// saying what is wrong, for malformed JSON, an entry without a non-empty string uid
// or an integer until, or more than kMaxRevokedPods entries.
StatusOr<std::set<std::string>> ParseRevokedPods(std::string_view json, int64_t now_unix_s);

// The file, re-read when it changes (at most one stat() per `min_recheck_ms` of the
// clock; a kubelet swaps ConfigMap volumes atomically). A missing file lists no pod
// (and is looked for again); a changed file that is unreadable, too large or invalid
// is logged and ignored: the pods listed before stay refused. Thread-safe.
class RevokedPods {
 public:
  // INVALID_ARGUMENT for a file that exists and is invalid (a flag pointing at the
  // wrong file should fail at start, not later). `clock` must outlive the object.
  static StatusOr<std::unique_ptr<RevokedPods>> Open(std::string path, const Clock* clock,
                                                     int64_t min_recheck_ms = 1000);

  // Whether the pod with this uid is listed (and its entry not yet past `until`).
  bool Revoked(const std::string& pod_uid);

  // Looks at the file now (ignoring the rate limit). Returns whether it was re-read.
  bool Refresh();

  size_t size() const;
  int64_t reloads() const;  // successful re-reads after Open
  const std::string& path() const { return path_; }

 private:
  RevokedPods(std::string path, const Clock* clock, int64_t min_recheck_ms)
      : path_(std::move(path)), clock_(clock), min_recheck_ms_(min_recheck_ms) {}
  bool RefreshLocked();  // requires mu_

  const std::string path_;
  const Clock* const clock_;
  const int64_t min_recheck_ms_;
  mutable std::mutex mu_;
  std::string text_;            // guarded by mu_: the file as last read (re-parsed as entries expire)
  std::set<std::string> uids_;  // guarded by mu_
  int64_t parsed_at_s_ = 0;     // guarded by mu_
  FileId id_;                   // guarded by mu_; FileId{} while the file is missing
  FileId refused_id_;           // guarded by mu_
  int64_t last_check_ms_ = 0;   // guarded by mu_
  int64_t reloads_ = 0;         // guarded by mu_
};

}  // namespace fedge::aggregator
