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
//
// A pod deleted while no operator ran, and gone before one started, is in no list:
// nothing saw it go. For those the file may also carry
//
//   "watchedSince": <unix s>, "livePods": ["<pod uid>", ...]
//
// `watchedSince` is when the writing operator's pod cache first listed the pods: every
// agent pod that went after it was seen going (and is listed above). `livePods` are the
// job's agent pods that were live then and still are. A token issued (`iat`) before
// `watchedSince` for a pod not in `livePods` belongs to a pod that was gone before the
// operator looked, or has gone since and is listed: refused. A pod made later has only
// tokens issued after it. A token without `iat` (the API server always sets one) is
// judged by `pods` alone.
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
// kMaxRevokedPods, and at most kMaxLivePods uids in livePods).
inline constexpr size_t kMaxRevokedPodsBytes = 1u << 20;
inline constexpr size_t kMaxRevokedPods = 4096;
inline constexpr size_t kMaxLivePods = 8192;

// The file above, parsed.
struct RevokedPodList {
  std::set<std::string> uids;        // `pods` entries not yet past their `until`
  int64_t watched_since_unix_s = 0;  // 0: the file carries no watchedSince
  std::set<std::string> live;        // livePods

  // Whether a token of `pod_uid` issued at `issued_unix_s` (0: no iat) is refused.
  bool Refuses(const std::string& pod_uid, int64_t issued_unix_s) const;
};

// The JSON above at `now_unix_s`. INVALID_ARGUMENT, saying what is wrong, for malformed
// JSON, an entry without a non-empty string uid or an integer until, more than
// kMaxRevokedPods entries, a watchedSince that is not a positive integer, or a
// watchedSince without a livePods list of non-empty strings (at most kMaxLivePods).
StatusOr<RevokedPodList> ParseRevokedPods(std::string_view json, int64_t now_unix_s);

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

  // Whether a token of the pod with this uid, issued at `issued_unix_s` (its iat; 0 when
  // it has none), is refused: the pod is listed (its entry not yet past `until`), or the
  // token predates watchedSince and the pod is not in livePods.
  bool Revoked(const std::string& pod_uid, int64_t issued_unix_s);

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
  std::string text_;           // guarded by mu_: the file as last read (re-parsed as entries expire)
  RevokedPodList list_;        // guarded by mu_
  int64_t parsed_at_s_ = 0;    // guarded by mu_
  FileId id_;                  // guarded by mu_; FileId{} while the file is missing
  FileId refused_id_;          // guarded by mu_
  int64_t last_check_ms_ = 0;  // guarded by mu_
  int64_t reloads_ = 0;        // guarded by mu_
};

}  // namespace fedge::aggregator
