// JobReconciler: level-based reconciliation of one FederatedTrainingJob.
//
// Reconcile(key) = Observe -> Plan -> Apply (plan.h): it reads the job and its children
// from the cache, PlanReconcile decides (purely) the writes and the status, using the
// builders in desired.h, and Apply executes them wave by wave with bounded concurrency.
// It writes only what differs (server-side
// apply with one field manager; pods are created once and replaced only when they
// fail), and applies the operator-owned status fields (state, conditions,
// observedGeneration, agents, restarts, start/completion time). The aggregator's
// status reporter owns the progress fields (round, lastRound, globalModel...).
//
// Contract: not-found means done; transient API errors are returned (the controller
// requeues with backoff); an invalid spec becomes a Failed condition with reason
// InvalidSpec (HostPathNotAllowed for a model or data path outside the operator's allowed
// node directories) and is not retried until the spec changes.
#pragma once

#include <chrono>
#include <ctime>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "fedge/op/clock.h"
#include "fedge/op/desired.h"
#include "fedge/op/informer.h"
#include "fedge/op/kube_client.h"
#include "fedge/op/plan.h"

namespace fedge::op {

// Read access to current state. The controller backs it with informers; tests and
// benchmarks may read through a client.
class ObjectCache {
 public:
  virtual ~ObjectCache() = default;
  virtual ObjectPtr Get(const Resource& r, const std::string& ns, const std::string& name) = 0;
  // Objects of `r` in `ns` ("" = all) whose label `label_key` equals `label_value`
  // (every object when label_key is empty).
  virtual std::vector<ObjectPtr> List(const Resource& r, const std::string& ns,
                                      const std::string& label_key = "",
                                      const std::string& label_value = "") = 0;
  // True when every read is live (never behind the reconciler's own writes).
  virtual bool Live() const { return false; }
  // The wall time from which every pod that went was seen going (Informer::synced_at of the
  // pods), 0 when no such time is known (a cache that remembers nothing).
  virtual std::time_t PodsWatchedSince() const { return 0; }
};

// Reads straight from the API on every call (no watch): for tests and the benchmark's
// baseline.
class ClientCache : public ObjectCache {
 public:
  explicit ClientCache(KubeClient* client) : client_(client) {}
  ObjectPtr Get(const Resource& r, const std::string& ns, const std::string& name) override;
  std::vector<ObjectPtr> List(const Resource& r, const std::string& ns, const std::string& label_key,
                              const std::string& label_value) override;
  bool Live() const override { return true; }

 private:
  KubeClient* client_;
};

// Records core/v1 Events about an object (best effort: failures are logged).
class EventRecorder {
 public:
  EventRecorder(KubeClient* client, Clock* clock) : client_(client), clock_(clock) {}
  void Record(const Json& obj, const std::string& type, const std::string& reason,
              const std::string& message);

 private:
  KubeClient* client_;
  Clock* clock_;
  std::atomic<uint64_t> seq_{0};
};

struct ReconcilerOptions {
  // Images, pull policy, allowed node directories, network policies (desired.h).
  DesiredOptions desired;
  // Its wall clock (Clock::WallNow) is the pass's `now`: deadlines and TTLs compare with
  // API timestamps, certificates are issued and renewed by it.
  Clock* clock = RealClock::Get();
  // How long the service-account issuer's keys read from the API server are used before
  // they are read again (a rotated key reaches the trust ConfigMaps within this).
  std::chrono::seconds issuer_keys_ttl{300};
  // How long the API server's endpoints (the aggregators' egress) are used before they are
  // read again (a moved API server reaches the aggregators' NetworkPolicies within this).
  std::chrono::seconds api_server_endpoints_ttl{60};
  // Requests one wave of a pass may have in flight at once (plan.h: the writes of a wave
  // are independent). 1 runs them one after another. fedge-operator --apply-concurrency.
  int apply_concurrency = 16;
  // How long an object this reconciler created counts as existing while the cache has not
  // shown it yet (see JobReconciler: created, not yet seen).
  std::chrono::seconds unseen_create_ttl{30};
};

// The cluster's service-account issuer (GET /.well-known/openid-configuration) and its
// keys (GET /openid/v1/jwks, as served, re-serialized): what aggregators verify agents'
// projected tokens with. An error names the request and what the operator needs.
StatusOr<IssuerKeys> ReadIssuerKeys(KubeClient& client);

// Where the API server listens: GET of the `kubernetes` Service's EndpointSlice in
// `default` (kApiServerEndpointSlicePath), parsed by ParseApiServerEndpoints. An error
// names the request and what the operator needs.
inline constexpr const char* kApiServerEndpointSlicePath =
    "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes";
StatusOr<std::vector<ApiServerEndpoint>> ReadApiServerEndpoints(KubeClient& client);

// Work-queue keys of deferred state cleanups: this prefix, then "namespace/name" of the
// pod (no job key has it: a namespace name has no ':').
inline constexpr const char* kDeferredCleanupKeyPrefix = "state-cleanup:";

struct ReconcileResult {
  std::optional<std::chrono::seconds> requeue_after;
  int actions = 0;  // writes the pass planned and ran (0 in a steady state)
};

class JobReconciler {
 public:
  JobReconciler(KubeClient* client, ObjectCache* cache, EventRecorder* events, ReconcilerOptions opts = {});

  // key is "namespace/name". Thread-safe for distinct keys (the work queue never runs
  // one key on two workers).
  StatusOr<ReconcileResult> Reconcile(const std::string& key);

  // A deferred state cleanup (desired.h), key "namespace/name" of its pod: one
  // PlanDeferredCleanup pass over what the cache shows, its writes run in order (an
  // error stops them; the controller requeues), its events recorded. Thread-safe for
  // distinct keys.
  StatusOr<ReconcileResult> ReconcileDeferredCleanup(const std::string& key);

  // The cache now holds `obj` of resource `r` (the informer's add or update handler): an
  // object a pass created is no longer "created, not yet seen" (below). Never blocks on
  // the API; thread-safe.
  void Seen(const Resource& r, const Json& obj);
  // The cache dropped `obj` of resource `r` (the informer's delete handler). An agent pod
  // is remembered for its job's next passes (Observed::gone_agent_pods), so its tokens are
  // revoked even when no pass saw it terminating. Never blocks on the API; thread-safe.
  void Gone(const Resource& r, const Json& obj);

 private:
  struct Run;      // state of one Apply
  struct Outcome;  // what one action did
  // Observe: the job and its children from the cache; nullopt when the job is gone.
  std::optional<Observed> Observe(const std::string& ns, const std::string& name);
  // Apply: runs the plan's waves (plan.h), settles restarts and startTime from what the
  // actions did, writes the status (also when an action failed) and records events.
  StatusOr<ReconcileResult> Apply(const Observed& observed, Plan plan);
  // Runs one wave's actions on up to opts_.apply_concurrency threads; out[i] is actions[i]'s.
  void RunWave(Run& run, const std::vector<const Action*>& actions, std::vector<Outcome>& out);
  // One action; never throws (a bug becomes the action's INTERNAL status). Thread-safe.
  Outcome Execute(const Run& run, const Action& a);
  // <job>-credentials: CA (made once) and serving certificate (renewed when due). Reads
  // the live Secret first; leaves the credentials written in out->creds.
  Status SyncCredentials(const Run& run, Outcome* out);
  // <job>-trust: the job CA as synced, the issuer's keys and the planner's revoked-pods.json
  // (the planner found it missing or different).
  Status SyncTrust(const Run& run, const std::string& revoked_pods, Outcome* out);
  // The service-account issuer and its keys (ReadIssuerKeys), read at most every
  // opts_.issuer_keys_ttl (every 5 s while unknown); the error is "" once keys are known.
  // Thread-safe.
  std::pair<IssuerKeys, std::string> Issuer();
  // The API server's endpoints (ReadApiServerEndpoints), read at most every
  // opts_.api_server_endpoints_ttl; after a failure the endpoints read before stay in use
  // (none: the error says why). Thread-safe.
  std::pair<std::vector<ApiServerEndpoint>, std::string> ApiServer();
  Status SyncApiToken(const Run& run, Outcome* out);
  // After a create met AlreadyExists: OK when the object is this job's (the cache lags
  // behind an earlier write). Otherwise the pass stops before its pods, naming it:
  // Unavailable while another FederatedTrainingJob owns it (a deleted one of the same name,
  // not yet collected), FailedPrecondition when nothing of ours does (the operator never
  // takes over an object it did not create); out->conflict is set for the Created condition.
  Status CheckExisting(const Run& run, const Resource& r, const std::string& ns, const std::string& name,
                       Outcome* out);
  // Writes the operator's status fields guarded by the resourceVersion the pass read; on a
  // conflict (the cache was behind) it keeps the pass's restart count and returns the conflict
  // so the controller requeues. Records the pass's events.
  Status WriteStatus(Run& run);
  Status KeepRestartCount(Run& run);
  void RecordEvents(const Run& run);

  // Created, not yet seen (the "expectations" of Kubernetes' ReplicaSet controller): the
  // objects a pass created, as the API server answered the create, until the cache shows
  // them. Observe adds them to what it read, so a pass that runs before the watch has
  // delivered the previous pass's creates does not create them again (at 1,000 nodes and 64
  // in flight, 229 pod creates met AlreadyExists and cost a GET each). An entry goes when the
  // informer delivers the object (Seen; one the cache holds when the create's answer comes
  // is not recorded), when a pass finds it in the cache with its uid,
  // when this reconciler deletes it, or after opts_.unseen_create_ttl: an object deleted
  // before its entry went (its watch event came before the create's answer and it was gone
  // by the next pass) counts as there until then, and the pass requeues for that moment.
  // Per job, keyed by its uid: a job re-created under the same name starts with none. Not
  // kept over a Live() cache.
  struct UnseenCreates {
    std::string job_uid;
    std::map<std::pair<std::string, std::string>, std::pair<ObjectPtr, Clock::TimePoint>> objects;
  };
  // Adds the job's unseen creates to `o` (and sets o.unseen_creates_expire); drops those the
  // cache now shows and those expired.
  void AddUnseenCreates(Observed& o);
  // Records the wave's successful creates; forgets the objects it deleted.
  void RecordCreates(const Observed& o, const std::vector<const Action*>& wave,
                     const std::vector<Outcome>& out);

  KubeClient* client_;
  ObjectCache* cache_;
  EventRecorder* events_;
  ReconcilerOptions opts_;
  std::mutex unseen_mu_;
  std::map<std::string, UnseenCreates> unseen_;  // "namespace/name" of the job; guarded by unseen_mu_

  // Agent pods the cache dropped, by "namespace/job", with when (wall seconds); kept for
  // RevokedAgentPods' span and at most kMaxRevokedAgentPods per job.
  void DropLapsedLocked(std::vector<std::pair<ObjectPtr, std::time_t>>& gone,
                        std::time_t now) const;  // gone_mu_
  std::mutex gone_mu_;
  std::time_t gone_swept_ = 0;  // guarded by gone_mu_: when every job's list was last pruned
  std::map<std::string, std::vector<std::pair<ObjectPtr, std::time_t>>>
      gone_agent_pods_;  // guarded by gone_mu_
  std::mutex issuer_mu_;
  IssuerKeys issuer_;                // guarded by issuer_mu_
  std::string issuer_error_;         // guarded by issuer_mu_: the last read's error
  bool issuer_read_ = false;         // guarded by issuer_mu_
  Clock::TimePoint issuer_read_at_;  // guarded by issuer_mu_
  std::mutex api_server_mu_;
  std::vector<ApiServerEndpoint> api_server_;  // guarded by api_server_mu_
  std::string api_server_error_;               // guarded by api_server_mu_: the last read's error
  bool api_server_read_ = false;               // guarded by api_server_mu_
  Clock::TimePoint api_server_read_at_;        // guarded by api_server_mu_
};

// Sets or updates a metav1.Condition in `conditions` (a JSON array); keeps
// lastTransitionTime when the status does not change.
void SetCondition(Json& conditions, const std::string& type, const std::string& status,
                  const std::string& reason, const std::string& message, int64_t generation,
                  const std::string& now);
const Json* FindCondition(const Json& conditions, const std::string& type);

std::string FormatTime(std::time_t t);
std::optional<std::time_t> ParseTime(const std::string& rfc3339);

}  // namespace fedge::op
