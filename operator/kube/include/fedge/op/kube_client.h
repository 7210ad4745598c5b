// KubeClient: the small slice of the Kubernetes API the operator needs, behind an
// interface so reconcilers are unit-tested against FakeKubeClient (fedge_op_testing, which records every
// call) and run against RestKubeClient (cpprestsdk) in production.
//
// Objects are nlohmann::json in the API's own JSON shape (like client-go's
// unstructured.Unstructured): the operator builds and reads only the fields it owns, and
// server-side apply merges them.
//
// Errors: every call returns a Status whose message starts with the API's reason, e.g.
// "NotFound: pods \"x\" not found". Use the Is*() helpers below rather than codes.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fedge/status.h"

namespace fedge::op {

using Json = nlohmann::json;

// One REST resource: group/version and plural, e.g. {"v1", "pods"} or
// {"fedge.io/v1alpha1", "federatedtrainingjobs"}.
struct Resource {
  std::string api_version;  // "v1" (core) or "group/version"
  std::string plural;
  std::string kind;
  bool namespaced = true;

  // "/api/v1" or "/apis/group/version".
  std::string BasePath() const;
  // Collection path, in `ns` when namespaced and ns is non-empty (all namespaces else).
  std::string CollectionPath(const std::string& ns) const;
  std::string ObjectPath(const std::string& ns, const std::string& name) const;
  bool operator<(const Resource& o) const { return api_version + plural < o.api_version + o.plural; }
};

namespace res {
extern const Resource kPods;
extern const Resource kServices;
extern const Resource kSecrets;
extern const Resource kConfigMaps;
extern const Resource kNodes;
extern const Resource kEvents;
extern const Resource kServiceAccounts;
extern const Resource kRoles;
extern const Resource kRoleBindings;
extern const Resource kLeases;
extern const Resource kPersistentVolumes;  // cluster-scoped
extern const Resource kPersistentVolumeClaims;
extern const Resource kNetworkPolicies;
extern const Resource kJobs;  // fedge.io/v1alpha1 federatedtrainingjobs
}  // namespace res

struct ListOptions {
  std::string label_selector;
  std::string field_selector;
  int64_t limit = 0;             // page size; 0 = server default (everything)
  std::string continue_token;    // from the previous page
  std::string resource_version;  // "" = most recent (quorum read)
};

struct ListResult {
  std::vector<Json> items;
  std::string resource_version;  // of the list, to start a watch from
  std::string continue_token;    // non-empty when more pages follow
};

enum class WatchEventType { kAdded, kModified, kDeleted, kBookmark };

struct WatchEvent {
  WatchEventType type;
  Json object;
};

struct WatchOptions {
  std::string resource_version;  // start after this version
  std::string label_selector;
  std::string field_selector;
  bool allow_bookmarks = true;
  int timeout_seconds = 300;  // server closes the stream after this long
};

struct ApplyOptions {
  std::string field_manager = "fedge-operator";
  bool force = true;        // take ownership of conflicting fields we own by design
  std::string subresource;  // "" or "status"
};

struct DeleteOptions {
  std::string propagation_policy = "Background";  // Foreground | Background | Orphan
  std::string precondition_uid;                   // only delete this incarnation
  std::optional<int64_t> grace_period_seconds;
};

// Cancels a blocking Watch from another thread.
class WatchCancel {
 public:
  // Thread-safe against the watch thread installing or clearing its hook at the
  // same moment: the hook is copied under the lock and run outside it (a hook
  // may take the client's own locks).
  void Cancel() {
    cancelled_.store(true);
    std::function<void()> hook;
    {
      std::lock_guard<std::mutex> lock(mu_);
      hook = on_cancel_;
    }
    if (hook) hook();
  }
  bool cancelled() const { return cancelled_.load(); }
  // Set by the client while a watch is open, cleared when it ends. Clients check
  // cancelled() after setting it, so a Cancel() just before is not lost.
  void SetOnCancel(std::function<void()> f) {
    std::lock_guard<std::mutex> lock(mu_);
    on_cancel_ = std::move(f);
  }

 private:
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  std::function<void()> on_cancel_;  // guarded by mu_
};

// Thread safety: implementations are safe for concurrent calls.
class KubeClient {
 public:
  virtual ~KubeClient() = default;

  virtual StatusOr<Json> Get(const Resource& r, const std::string& ns, const std::string& name,
                             const std::string& subresource = "") = 0;
  // One page. See ListAll for every page.
  virtual StatusOr<ListResult> List(const Resource& r, const std::string& ns, const ListOptions& opts) = 0;
  // Streams events to `on_event` until the server ends the stream (returns OK), the
  // watch is cancelled (CANCELLED), the resource version is too old (Gone: relist), or
  // the connection fails. `on_event` runs on the calling thread and must not block long.
  virtual Status Watch(const Resource& r, const std::string& ns, const WatchOptions& opts,
                       const std::function<void(const WatchEvent&)>& on_event, WatchCancel* cancel) = 0;
  virtual StatusOr<Json> Create(const Resource& r, const std::string& ns, const Json& obj) = 0;
  // PUT; obj.metadata.resourceVersion makes it a compare-and-swap (Conflict if stale).
  virtual StatusOr<Json> Update(const Resource& r, const std::string& ns, const Json& obj,
                                const std::string& subresource = "") = 0;
  // Server-side apply (PATCH application/apply-patch+yaml; JSON is YAML).
  virtual StatusOr<Json> Apply(const Resource& r, const std::string& ns, const std::string& name,
                               const Json& obj, const ApplyOptions& opts) = 0;
  // JSON merge patch (RFC 7386).
  virtual StatusOr<Json> MergePatch(const Resource& r, const std::string& ns, const std::string& name,
                                    const Json& patch, const std::string& subresource = "") = 0;
  virtual Status Delete(const Resource& r, const std::string& ns, const std::string& name,
                        const DeleteOptions& opts = {}) = 0;
  // GET of a non-resource path of the API server ("/openid/v1/jwks"): the JSON body.
  virtual StatusOr<Json> GetPath(const std::string& path) = 0;
};

// Every page of a list; stops at the first error.
StatusOr<ListResult> ListAll(KubeClient& client, const Resource& r, const std::string& ns, ListOptions opts);

// The API reason carried in a KubeClient status ("NotFound", "Conflict", ...), or "".
std::string KubeReason(const Status& s);
bool IsNotFound(const Status& s);
bool IsAlreadyExists(const Status& s);
bool IsConflict(const Status& s);
bool IsGone(const Status& s);     // 410: resource version too old; relist
bool IsInvalid(const Status& s);  // 422: the object failed validation

// Builds the Status for an API reason (the fake and the REST client share it).
Status KubeError(const std::string& reason, int http_code, const std::string& message);

}  // namespace fedge::op
