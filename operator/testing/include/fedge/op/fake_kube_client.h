// FakeKubeClient: an in-memory API server for unit tests and benchmarks. It keeps
// objects with resourceVersion, uid and generation, serves list/watch from an event log,
// approximates server-side apply as a recursive merge, runs owner-reference garbage
// collection at once on delete, honours finalizers and deletionTimestamp, and records
// every call so tests assert what a reconciler asked for.
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "fedge/op/kube_client.h"

namespace fedge::op {

struct FakeCall {
  std::string verb;      // get, list, watch, create, update, apply, patch, delete
  std::string resource;  // plural
  std::string ns;
  std::string name;
  std::string subresource;
  Json body;
};

class FakeKubeClient : public KubeClient {
 public:
  StatusOr<Json> Get(const Resource& r, const std::string& ns, const std::string& name,
                     const std::string& subresource = "") override;
  StatusOr<ListResult> List(const Resource& r, const std::string& ns, const ListOptions& opts) override;
  Status Watch(const Resource& r, const std::string& ns, const WatchOptions& opts,
               const std::function<void(const WatchEvent&)>& on_event, WatchCancel* cancel) override;
  StatusOr<Json> Create(const Resource& r, const std::string& ns, const Json& obj) override;
  StatusOr<Json> Update(const Resource& r, const std::string& ns, const Json& obj,
                        const std::string& subresource = "") override;
  StatusOr<Json> Apply(const Resource& r, const std::string& ns, const std::string& name, const Json& obj,
                       const ApplyOptions& opts) override;
  StatusOr<Json> MergePatch(const Resource& r, const std::string& ns, const std::string& name,
                            const Json& patch, const std::string& subresource = "") override;
  Status Delete(const Resource& r, const std::string& ns, const std::string& name,
                const DeleteOptions& opts = {}) override;
  // Serves SetPath's bodies; by default an issuer discovery document and a one-key JWKS
  // (kFakeIssuer), and the `kubernetes` EndpointSlice (kFakeApiServerIp). Recorded as verb "get" on resource
  // `path` (FailNext("get", path, ...)).
  StatusOr<Json> GetPath(const std::string& path) override;

  // --- test hooks (thread-safe) ---
  // What GetPath(path) answers from now on; a null body answers NotFound.
  void SetPath(const std::string& path, Json body);
  std::vector<FakeCall> Calls() const;
  // Calls with this verb (and resource plural, when non-empty), excluding reads by default.
  int CountCalls(const std::string& verb, const std::string& resource = "") const;
  int CountWrites() const;  // create + update + apply + patch + delete
  void ClearCalls();
  // The next call with this verb on this resource plural fails with `s`. Failures queue:
  // FailNext N times fails the next N such calls, in order.
  void FailNext(const std::string& verb, const std::string& resource, Status s);
  // Forgets events up to now: watches from an older resourceVersion get 410 Gone.
  void Compact();
  // Ends every open watch (as an API server restart would) with OK.
  void CloseWatches();
  // Objects of a resource, all namespaces.
  std::vector<Json> Objects(const Resource& r) const;
  // Off: an owner's deletion leaves its dependents, as the real garbage collector does
  // for a while; CollectGarbage then removes every object whose controller owner is gone.
  void SetGarbageCollection(bool on);
  // The time the fake stamps creations and deletion requests with (RFC 3339; default
  // 2026-01-01T00:00:00Z, a default FakeClock's wall time).
  void SetNow(std::string rfc3339);
  void CollectGarbage();
  int64_t resource_version() const;

 private:
  using Key = std::tuple<std::string, std::string, std::string>;  // plural, ns, name
  struct Event {
    int64_t rv;
    std::string plural, ns;
    WatchEvent ev;
  };
  Status Record(const std::string& verb, const Resource& r, const std::string& ns, const std::string& name,
                const std::string& sub, const Json& body);
  Json Stamp(const Resource& r, Json obj);  // new rv; caller holds mu_
  void Emit(const Resource& r, const std::string& ns, WatchEventType t, const Json& obj);
  // Conflict when `obj` names a resourceVersion other than `current`'s.
  static Status CheckResourceVersion(const Resource& r, const std::string& name, const Json& obj,
                                     const Json& current);
  // A new object at `k` (uid, generation 1, creation time, resourceVersion; Added event).
  // Caller holds mu_, as for every *Locked.
  Json AddLocked(const Resource& r, const std::string& ns, const Key& k, Json o);
  // The existing object at `k` becomes `o` (new resourceVersion; Modified event), or goes
  // when it is being deleted and has no finalizers left.
  Json ReplaceLocked(const Resource& r, const std::string& ns, const Key& k, Json o);
  void RemoveLocked(const Resource& r, const Key& k);
  Status DeleteLocked(const Resource& r, const std::string& ns, const std::string& name,
                      const DeleteOptions& opts);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<Key, Json> objects_;  // guarded by mu_
  // What each field manager last applied to an object (server-side apply's managed
  // fields, one owner per field): a field it applied before and omits now is removed.
  std::map<Key, std::map<std::string, Json>> applied_;  // guarded by mu_
  std::map<std::string, Resource> kinds_;               // plural -> resource seen, guarded by mu_
  std::vector<Event> events_;                           // guarded by mu_
  int64_t rv_ = 100;                                    // guarded by mu_
  int64_t compacted_rv_ = 0;                            // guarded by mu_
  int64_t watch_epoch_ = 0;                             // bumped by CloseWatches, guarded by mu_
  int64_t uid_ = 0;                                     // guarded by mu_
  bool gc_ = true;                                      // guarded by mu_
  std::string now_ = "2026-01-01T00:00:00Z";            // guarded by mu_
  std::vector<FakeCall> calls_;                         // guarded by mu_
  std::map<std::string, Json> paths_;                   // GetPath bodies, guarded by mu_
  std::map<std::pair<std::string, std::string>, std::deque<Status>> failures_;  // guarded by mu_
};

// The issuer the fake's default discovery document names.
inline constexpr const char* kFakeIssuer = "https://kubernetes.default.svc.cluster.local";
// The API server's endpoint the fake's `kubernetes` EndpointSlice lists.
inline constexpr const char* kFakeApiServerIp = "10.0.0.1";
inline constexpr int kFakeApiServerPort = 6443;

// Matches "k=v,k2!=v2,k3" label selectors (equality, inequality, existence).
bool MatchesLabelSelector(const Json& labels, const std::string& selector);

// JSON merge (RFC 7386): objects merge recursively, null deletes, anything else replaces.
void MergeInto(Json& target, const Json& patch);

}  // namespace fedge::op
