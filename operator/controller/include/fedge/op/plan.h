// Reconcile = Observe -> Plan -> Apply.
//
// Observe (JobReconciler) copies what one pass needs out of the cache into an Observed
// snapshot. PlanReconcile is a pure function of that snapshot: it decides every write
// (Actions) and the operator-owned status the job should have once they are done, and
// touches no client, clock or randomness. Apply (JobReconciler) executes the actions wave
// by wave -- the actions of one wave in parallel, with bounded concurrency -- and writes
// the status even when an action failed, so a decision that was carried out (a failed pod
// deleted) is never forgotten by an early return.
//
// The plan's status assumes every action succeeds. Two fields depend on what Apply
// actually did, and Apply settles them from the action results: `restarts` counts only
// the failed-pod deletions that happened (Action::counts_restart), and a first
// `startTime` stays only when a pod creation succeeded (Action::starts_job).
//
// Actions whose content needs randomness, key generation or a live read (the job's
// credentials, an agent's certificate, the inference token) are planned by kind and node;
// Apply computes their objects (see reconciler.h).
#pragma once

#include <chrono>
#include <ctime>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/op/desired.h"
#include "fedge/op/kube_client.h"

namespace fedge::op {

// status.state of a FederatedTrainingJob ("" before the first pass).
enum class JobState { kNone, kPending, kCreated, kRunning, kSucceeded, kFailed, kSuspended };
std::string_view JobStateName(JobState s);   // "" for kNone, else the CRD's spelling
JobState ParseJobState(std::string_view s);  // unknown text -> kNone
inline bool Finished(JobState s) { return s == JobState::kSucceeded || s == JobState::kFailed; }

// Running job: at most spec.agents.maxUnavailable of the selected nodes (the CRD's
// default: this share) have no serving agent while outdated agents are replaced (an
// operator upgrade, a spec change).
inline constexpr int kAgentReplaceBudgetPercent = 25;
// spec.agents.maxUnavailable of `job` for `nodes` selected nodes, as a DaemonSet reads
// its rolling update's: an integer as is, "N%" of the nodes rounded down; at least 1.
// Absent (or not valid, which the parser refuses first): kAgentReplaceBudgetPercent%.
int AgentMaxUnavailable(const Json& job, int nodes);

// A succeeded job's serving agent whose pod failed is made again this long after it
// failed; kServingCrashLoopDelaySeconds when it had run for less than
// kServingCrashLoopRunSeconds (a crash loop).
inline constexpr std::time_t kServingRestartDelaySeconds = 10;
inline constexpr std::time_t kServingCrashLoopDelaySeconds = 300;
inline constexpr std::time_t kServingCrashLoopRunSeconds = 60;
// After success, the final-model pod (DesiredFinalModelPod) runs while a selected node
// has no final global: at once for a node that joined the selector after the job (its
// agent is made with it), and for a serving agent that is running but not ready this long
// after its pod was made (its node lost its state directory). It goes once every agent is
// ready, but not before it has run kFinalModelMinRunSeconds (an agent that turned ready
// on a global of its own still joins and is told DONE with the final one).
inline constexpr std::time_t kFinalModelWaitSeconds = 20;
inline constexpr std::time_t kFinalModelMinRunSeconds = 30;

// status.phase of a Pod (absent = Pending; text outside the API's set = Unknown).
enum class PodPhase { kPending, kRunning, kSucceeded, kFailed, kUnknown };
PodPhase PodPhaseOf(const Json& pod);
bool PodReady(const Json& pod);

// revoked-pods.json for the trust ConfigMap (desired.h; the aggregator refuses the listed
// pods' tokens and ends their sessions): the entries of `current` (the key's text now, ""
// when absent or unreadable) not yet past their `until`, plus every agent pod in `pods`
// that is being deleted or has ended, until its last token expired and a session it held
// ended anyway: deletionTimestamp (or, for an ended pod, `now`) + kAgentTokenExpirationSeconds
// + `session_grace_s` + a minute. An entry once written keeps its `until`, so a steady
// state writes nothing. Sorted by uid; at most kMaxRevokedAgentPods, the latest `until`s
// kept (the aggregator refuses a longer list).
// With `watched_since` (ObjectCache::PodsWatchedSince; 0: unknown) it also writes
// "watchedSince" and "livePods": the agent pods in `pods` made before that second (or of
// no known creation time) and neither being deleted nor ended. The aggregator refuses a token
// issued before watchedSince to any other pod: one deleted while no operator ran, which
// no entry names. Only a new watchedSince (an operator start) or a listed pod going
// changes them. Left out with more than kMaxLiveAgentPods such pods.
inline constexpr size_t kMaxRevokedAgentPods = 4096;
inline constexpr size_t kMaxLiveAgentPods = 8192;  // aggregator's kMaxLivePods
std::string RevokedAgentPods(const std::string& current, const std::vector<ObjectPtr>& pods, std::time_t now,
                             int64_t session_grace_s, std::time_t watched_since = 0);

// What one pass sees: the job and its children, copied (by pointer) out of the cache.
struct Observed {
  std::string ns, name;
  Json job;
  std::time_t now = 0;
  std::vector<ObjectPtr> nodes;  // every Node
  std::vector<ObjectPtr> pods;   // the job's pods (label fedge.io/job)
  // The job's agent pods the cache dropped lately (JobReconciler::Gone), each with a
  // deletionTimestamp: for RevokedAgentPods only; no other decision sees them.
  std::vector<ObjectPtr> gone_agent_pods;
  // ObjectCache::PodsWatchedSince: for RevokedAgentPods.
  std::time_t pods_watched_since = 0;
  // The job's other children by (plural, name): objects in its namespace labelled with the
  // job, its node PersistentVolumes, and a checkpoint claim named by the spec.
  std::map<std::pair<std::string, std::string>, ObjectPtr> children;
  // Objects (pods included) under the names of the job's children that another
  // FederatedTrainingJob controls: a deleted job of the same name whose children the
  // garbage collector has not removed yet. Never adopted: each name is taken until its
  // object goes (SetAsideForeignChildren fills this from `pods` and `children`).
  std::map<std::pair<std::string, std::string>, ObjectPtr> foreign;
  // Set by the reconciler when `pods`/`children` hold objects it created that the cache has
  // not shown yet: requeue by then (reconciler.h, created, not yet seen).
  std::optional<std::chrono::seconds> unseen_creates_expire;
  // The cluster's service-account issuer and its keys (the reconciler reads them from the
  // API server and keeps them a few minutes). Empty jwks: not known; no pod is created,
  // since the aggregator could verify no agent (issuer_error says why).
  IssuerKeys issuer;
  std::string issuer_error;
  // Where the API server listens (the reconciler reads it and keeps it a minute): the
  // aggregator's egress. Empty: not known (api_server_error says why); the aggregator's
  // egress stays open.
  std::vector<ApiServerEndpoint> api_server_endpoints;
  std::string api_server_error;

  ObjectPtr Find(const Resource& r, const std::string& name) const;
  ObjectPtr FindForeign(const Resource& r, const std::string& name) const;
};

// Whether `obj` belongs to a FederatedTrainingJob other than the one whose uid is `job_uid`:
// its controller owner reference names another uid, or (a node PersistentVolume, which has
// no owner) its fedge.io/job-uid annotation does. False when either uid is unknown.
bool BelongsToAnotherJob(const Json& obj, const std::string& job_uid);
// Why `obj`, found under the name of one of `job`'s children, is not the job's own, or ""
// when it is: its controller owner reference names the job's uid (a node PersistentVolume,
// which has no owner: its fedge.io/job-uid annotation, or without one, as an operator
// before that annotation made it, its fedge.io/job and job-namespace labels). "" also
// when the job has no uid (nothing to compare).
std::string NotTheJobs(const Json& obj, const Json& job);
// Moves every pod and child of `o` that BelongsToAnotherJob into `o.foreign`. Idempotent.
void SetAsideForeignChildren(Observed& o);

struct PlanOptions {
  DesiredOptions desired;
};

enum class ActionKind {
  kApply,       // server-side apply of `object` (field manager fedge-operator, force)
  kCreate,      // create `object`; AlreadyExists counts as done if the object is this job's
  kDelete,      // delete resource/name with `del`; NotFound counts as done
  kMergePatch,  // JSON merge patch `object` on resource/name; NotFound counts as done
  // Computed by Apply:
  kSyncCredentials,  // <job>-credentials: CA and serving certificate
  kSyncTrust,        // <job>-trust: the job CA (as synced) and Observed::issuer's keys
  kSyncApiToken,     // <job>-inference-token, made once
};

// Waves run in this order; the actions of one wave run in parallel, so an object that
// refers to another child goes in a later wave than it (the trust ConfigMap after the job's
// credentials, a RoleBinding after its Role, pods after their Secrets and claims). A wave
// with a failed action stops the pass before the next wave; the status is written after
// kPods in any case, and kAfterStatus runs only when every earlier wave succeeded.
enum class Wave { kJob = 0, kShared = 1, kPerNode = 2, kPods = 3, kAfterStatus = 4 };

struct PlannedEvent {
  std::string type, reason, message;
};

struct Action {
  ActionKind kind = ActionKind::kApply;
  Wave wave = Wave::kShared;
  const Resource* resource = nullptr;
  std::string ns, name;
  Json object;
  DeleteOptions del;
  bool counts_restart = false;     // deleting a failed pod: one restart when it happens
  bool starts_job = false;         // creating a pod: startTime when it happens
  bool takes_job_version = false;  // the job's own write: later writes use its resourceVersion
  bool verify_owner = false;       // kApply: read the object first; one that is not the job's stops
                                   // the pass (NotTheJobs) instead of being taken over
  std::vector<PlannedEvent> on_success;

  // "create pods/wn-aggregator", "sync-trust wn-trust": for logs and test tables.
  std::string Describe() const;
};

struct Plan {
  std::vector<Action> actions;
  Json status;                       // operator-owned status after the actions (see the top comment)
  bool write_status = true;          // false while the job is being deleted
  std::vector<PlannedEvent> events;  // condition transitions, recorded after the status write
  std::optional<std::chrono::seconds> requeue_after;
};

// Pure: the same Observed and options give the same Plan.
Plan PlanReconcile(const Observed& observed, const PlanOptions& options);

// One pass over a deferred state cleanup (desired.h: the record a deleted job left for a
// node that was away), from what the cache shows: its pod and claim (null when gone), the
// claim's PersistentVolume, whether the node is in the cluster and Ready, and whether a
// pod of the job's agent is still on it (its kubelet has not stopped it yet). Pure.
//   - the pod gated: the gate is lifted once the node is Ready and no agent is left (the
//     cleanup must not race an agent that still writes);
//   - the pod ended (or deleted before it finished): the volume, the claim, then the pod are
//     deleted, in that order (a pass that fails part way repeats the rest); the event
//     (NodeStateRemoved, or Warning NodeStateLeft naming why) goes with the claim's
//     deletion, about the pod (or the claim when the pod is gone);
//   - otherwise (scheduled, running): nothing; the pod's next update brings the next pass.
struct DeferredCleanupPlan {
  std::vector<Action> actions;  // in order; each only after the one before succeeded
  Json about;                   // the object the actions' events are about
  std::optional<std::chrono::seconds> requeue_after;
};
DeferredCleanupPlan PlanDeferredCleanup(const ObjectPtr& pod, const ObjectPtr& claim, const ObjectPtr& volume,
                                        bool node_ready, bool agent_on_node);

// Why the job's serving certificate (in its credentials Secret) must be issued again
// from the job's CA, or "" when it is current (then *renew_at is its renewal time):
// missing, unreadable, not the CA's, not matching its key, or a third of its lifetime
// left (RenewalTime). Without renewal it expired after a year while the job showed
// Running and every agent's handshake failed. Pure.
std::string ServingCertStale(const Credentials& creds, std::time_t now, std::time_t* renew_at);

}  // namespace fedge::op
