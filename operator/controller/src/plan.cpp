// PlanReconcile: every decision of a reconcile pass, as a pure function of what the pass
// observed (plan.h). The writes it decides are executed by JobReconciler::Apply.
#include "fedge/op/plan.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>

#include "fedge/job_spec.h"
#include "fedge/op/reconciler.h"
#include "fedge/pki.h"

namespace fedge::op {
namespace {

constexpr const char* kHashAnnotation = "fedge.io/applied-hash";

std::string Sha(const std::string& s) { return pki::HexSha256(s).substr(0, 24); }

// First non-zero exit code of a terminated container, or 0.
int PodExitCode(const Json& pod) {
  auto st = pod.find("status");
  if (st == pod.end()) return 0;
  for (const auto& cs : st->value("containerStatuses", Json::array())) {
    auto term = cs.find("state");
    if (term == cs.end() || !term->contains("terminated")) continue;
    int code = (*term)["terminated"].value("exitCode", 0);
    if (code != 0) return code;
  }
  return 0;
}

// Why a failed pod failed, in a line: its container's termination message (with
// FallbackToLogsOnError, the log's tail), else the pod's reason and message
// (DeadlineExceeded), else its exit code.
std::string PodFailureMessage(const Json& pod) {
  const Json st = pod.value("status", Json::object());
  std::string why;
  for (const auto& cs : st.value("containerStatuses", Json::array())) {
    const Json term = cs.value("state", Json::object()).value("terminated", Json::object());
    if (term.empty()) continue;
    why = term.value("message", "");
    if (why.empty()) why = "exit code " + std::to_string(term.value("exitCode", 0));
    break;
  }
  if (why.empty())
    why = st.value("reason", "") + (st.contains("message") ? ": " + st.value("message", "") : "");
  std::replace(why.begin(), why.end(), '\n', ' ');
  while (!why.empty() && why.back() == ' ') why.pop_back();
  if (why.size() > 300) why = why.substr(0, 297) + "...";
  return why;
}

bool Terminating(const Json& obj) { return obj["metadata"].contains("deletionTimestamp"); }

// Deleted with propagationPolicy=Foreground: until the collector has deleted every
// dependent, any new one the job owns is deleted too.
bool DeletingDependents(const Json& obj) {
  if (!Terminating(obj)) return false;
  for (const auto& f : obj["metadata"].value("finalizers", Json::array()))
    if (f.is_string() && f.get<std::string>() == "foregroundDeletion") return true;
  return false;
}

// A pending pod the scheduler could not place (condition PodScheduled False, reason
// Unschedulable): e.g. one whose claim does not exist.
bool Unschedulable(const Json& pod) {
  if (PodPhaseOf(pod) != PodPhase::kPending) return false;
  auto st = pod.find("status");
  if (st == pod.end() || !st->is_object()) return false;
  for (const auto& c : st->value("conditions", Json::array())) {
    if (c.value("type", "") == "PodScheduled")
      return c.value("status", "") == "False" && c.value("reason", "") == "Unschedulable";
  }
  return false;
}

std::vector<std::string> Finalizers(const Json& obj) {
  std::vector<std::string> out;
  for (const auto& f : obj["metadata"].value("finalizers", Json::array()))
    out.push_back(f.get<std::string>());
  return out;
}

std::string Join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

std::string Role(const Json& obj) {
  return obj["metadata"].value("labels", Json::object()).value(kLabelRole, "");
}

// State of one planning pass.
struct Planner {
  const Observed& o;
  const PlanOptions& opts;
  Plan plan;
  // Names of children held by another job's objects (Observed::foreign) that this pass
  // wanted: while any is left, no pod is created (Blocked).
  std::set<std::string> waiting;
  int64_t generation = 0;
  std::string now_str;
  Json old_status;
  std::optional<JobSpec> spec;

  Planner(const Observed& observed, const PlanOptions& options) : o(observed), opts(options) {}

  JobState State() const { return ParseJobState(plan.status.value("state", "")); }
  void SetState(JobState s) { plan.status["state"] = std::string(JobStateName(s)); }
  void RequeueAfter(std::chrono::seconds d) {
    if (d < std::chrono::seconds(1)) d = std::chrono::seconds(1);
    if (!plan.requeue_after || d < *plan.requeue_after) plan.requeue_after = d;
  }
  // Sets a condition; records an Event when its status or reason changes.
  void Condition(const std::string& type, const std::string& st, const std::string& reason,
                 const std::string& message, const char* event_type = nullptr) {
    const Json* before = FindCondition(plan.status["conditions"], type);
    bool changed = !before || before->value("status", "") != st || before->value("reason", "") != reason;
    SetCondition(plan.status["conditions"], type, st, reason, message, generation, now_str);
    if (changed && event_type) plan.events.push_back({event_type, reason, message});
  }

  Action& Add(ActionKind kind, Wave wave, const Resource& r, const std::string& name) {
    Action a;
    a.kind = kind;
    a.wave = wave;
    a.resource = &r;
    a.ns = r.namespaced ? o.ns : "";
    a.name = name;
    plan.actions.push_back(std::move(a));
    return plan.actions.back();
  }
  // True when `name` belongs to another job's object (a deleted job of this name whose
  // children are not collected yet): nothing of ours is written under it meanwhile.
  bool Blocked(const Resource& r, const std::string& name) {
    if (!o.FindForeign(r, name)) return false;
    waiting.insert(r.plural + "/" + name);
    return true;
  }
  void ApplyIfChanged(const Resource& r, Json desired, Wave wave = Wave::kShared) {
    std::string name = desired["metadata"].value("name", "");
    if (Blocked(r, name)) return;
    std::string hash = Sha(desired.dump());
    ObjectPtr cur = o.Find(r, name);
    if (cur && (*cur)["metadata"].value("annotations", Json::object()).value(kHashAnnotation, "") == hash) {
      return;  // unchanged since we last applied it
    }
    desired["metadata"]["annotations"][kHashAnnotation] = hash;
    Action& a = Add(ActionKind::kApply, wave, r, name);
    a.object = std::move(desired);
    // Not in the cache as the job's: Apply reads it first, so that an object of that name
    // the operator did not make is refused rather than taken over by a forced apply (and
    // deleted with the job).
    a.verify_owner = !cur;
  }
  void CreateIfAbsent(const Resource& r, Json desired, Wave wave) {
    std::string name = desired["metadata"].value("name", "");
    if (Blocked(r, name) || o.Find(r, name)) return;
    Add(ActionKind::kCreate, wave, r, name).object = std::move(desired);
  }
  // only_active: spare finished pods; keep_agents: spare agent pods (serving).
  void DeletePods(bool only_active, bool keep_agents = false) {
    for (const auto& p : o.pods) {
      if (Terminating(*p)) continue;
      PodPhase phase = PodPhaseOf(*p);
      if (only_active && (phase == PodPhase::kSucceeded || phase == PodPhase::kFailed)) continue;
      // Serving: the agents, and the pod handing them the final global (KeepServing).
      if (keep_agents &&
          (Role(*p) == "agent" || (*p)["metadata"].value("name", "") == FinalModelPodName(o.job)))
        continue;
      Add(ActionKind::kDelete, Wave::kPods, res::kPods, (*p)["metadata"].value("name", ""));
    }
  }

  void Run();
  void Finalize();
  // Runs the state-cleanup pods of a deleted job; false while any is due (requeued).
  // `outcome` gets the events to record when the job goes.
  bool RemoveNodeState(std::vector<PlannedEvent>& outcome);
  // For a node whose cleanup cannot run now (not Ready, or not in the cluster): plans the
  // deferred record (desired.h) for the node's state-root `claim`; false when it cannot be
  // left (the claim or the pod's name going or taken), and the state is reported left.
  bool DeferNodeState(const std::string& node, const std::string& claim_name, const Json& claim,
                      const ObjectPtr& pod, const JobSpec& parsed);
  // For a node that is away whose state-root claim a foreground deletion took (it goes
  // only once the node is back, after the job): plans a record with a claim and volume of
  // its own (desired.h, StateRecordVolume); false when it cannot (the names taken or
  // going, no volume of the job's to copy, a cleanup pod on the old claim).
  bool DeferWithOwnClaim(const std::string& node, const NodeVolumeRoot& root, const ObjectPtr& pod,
                         const JobSpec& parsed);
  // For a node that is away: its record pod made on the node's claim, which the collector
  // deleted since (its delete landed just after the take-over): never scheduled, it could
  // never start, so it is deleted (the pod as observed), and a later pass makes the record
  // again with a claim of its own. True while that is under way: the finalizer waits.
  bool RemakeRecordOnTakenClaim(const Json& claim, const ObjectPtr& pod);
  // For the state-root volumes whose claims a foreground deletion took (desired.h): plans
  // each one's record (the volume freed for a new claim, the claim, the gated pod) and
  // names the node in `deferred`, or in `running` while the job's old cleanup pod there
  // is still going, or in `left` when the names are another job's.
  void RetakeReleasedStateVolumes(const JobSpec& parsed, const NodeVolumeRoot& root,
                                  std::vector<std::string>& deferred, std::vector<std::string>& running,
                                  std::vector<std::string>& left);
  // The state-root claims left to a deferred cleanup: their volumes stay with them.
  std::set<std::string> deferred_claims;
  void Children();
  // The Node object named `node` when it exists, is not being deleted and carries every
  // label of spec.agents.nodeSelector (cordoned or not, whatever maxAgents); else null.
  ObjectPtr MatchingNode(const std::string& node) const {
    for (const auto& n : o.nodes) {
      const Json& meta = (*n)["metadata"];
      if (meta.value("name", "") != node) continue;
      if (meta.contains("deletionTimestamp")) return nullptr;
      const Json labels = meta.value("labels", Json::object());
      for (const auto& [key, value] : spec->agents.nodeSelector) {
        auto it = labels.find(key);
        if (it == labels.end() || !it->is_string() || it->get<std::string>() != value) return nullptr;
      }
      return n;
    }
    return nullptr;
  }
  // A node that matches the selector but is cordoned: its agent and volumes stay (as a
  // DaemonSet's pod stays on a cordoned node); it gets no new agent.
  bool Cordoned(const std::string& node) const {
    ObjectPtr n = MatchingNode(node);
    return n && n->value("spec", Json::object()).value("unschedulable", false);
  }
  // The job's credentials Secret (CA, the aggregator's serving certificate, renewed when
  // due) and trust ConfigMap (the CA and the API server's current token keys): synced when
  // missing or out of date.
  void CredentialsAndTrust();
  void KeepServing();
  // Creates the missing local volumes and claims of `node`'s agent (wave kPerNode, before
  // the pods).
  std::map<std::string, std::string> hostnames;  // node name -> kubernetes.io/hostname label
  void NodeVolumes(const std::string& node, const std::vector<NodeVolumeRoot>& roots) {
    if (hostnames.empty()) {
      for (const auto& n : o.nodes) {
        const Json& meta = (*n)["metadata"];
        const std::string name = meta.value("name", "");
        hostnames[name] = meta.value("labels", Json::object()).value("kubernetes.io/hostname", name);
      }
    }
    auto known = hostnames.find(node);
    const std::string hostname = known != hostnames.end() ? known->second : node;
    for (const auto& root : roots) {
      // By name first: a pass over 1,000 present volumes builds no object.
      if (!o.Find(res::kPersistentVolumes, NodePersistentVolumeName(o.job, node, root))) {
        CreateIfAbsent(res::kPersistentVolumes, DesiredNodePersistentVolume(o.job, node, hostname, root),
                       Wave::kPerNode);
      }
      if (!o.Find(res::kPersistentVolumeClaims, NodeVolumeClaimName(o.job, node, root))) {
        CreateIfAbsent(res::kPersistentVolumeClaims, DesiredNodeVolumeClaim(o.job, node, root),
                       Wave::kPerNode);
      }
    }
  }
  // The final-model pod (DesiredFinalModelPod) of a succeeded job: made when `wanted`,
  // kept while `keep`, otherwise deleted once it has run kFinalModelMinRunSeconds.
  void FinalModelPod(bool wanted, bool keep, const std::vector<std::string>& for_nodes);
  // The job's agent pods by the node they are for.
  std::map<std::string, ObjectPtr> AgentPodsByNode() const {
    std::map<std::string, ObjectPtr> agents;
    for (const auto& p : o.pods) {
      if (Role(*p) != "agent") continue;
      agents[(*p)["metadata"].value("annotations", Json::object()).value(kAnnotationNode, "")] = p;
    }
    return agents;
  }
  // status.agents: the selected nodes and how many have a ready agent.
  void AgentsStatus(const std::vector<std::string>& nodes, const std::map<std::string, ObjectPtr>& agents) {
    int ready = 0;
    for (const auto& node : nodes) {
      auto it = agents.find(node);
      if (it != agents.end() && PodPhaseOf(*it->second) == PodPhase::kRunning && PodReady(*it->second))
        ++ready;
    }
    plan.status["agents"] = {{"desired", static_cast<int>(nodes.size())},
                             {"ready", ready},
                             {"summary", std::to_string(ready) + "/" + std::to_string(nodes.size())}};
  }
  void HandleFailedPod(const Json& pod, bool aggregator);
  // revoked-pods.json as this pass writes it (RevokedAgentPods over the trust ConfigMap's
  // list, the job's pods and the ones the cache dropped), and its short hash.
  const std::string& Revoked() {
    if (!revoked_) {
      std::string now_listed;
      if (ObjectPtr trust = o.Find(res::kConfigMaps, TrustConfigMapName(o.job))) {
        const Json data = trust->value("data", Json::object());
        if (auto it = data.find(kRevokedPodsKey); it != data.end() && it->is_string()) now_listed = *it;
      }
      std::vector<ObjectPtr> agents = o.pods;
      agents.insert(agents.end(), o.gone_agent_pods.begin(), o.gone_agent_pods.end());
      revoked_ = RevokedAgentPods(now_listed, agents, o.now, opts.desired.agent_session_grace_s,
                                  o.pods_watched_since);
    }
    return *revoked_;
  }
  std::string RevokedHash() { return pki::HexSha256(Revoked()).substr(0, 16); }
  std::optional<std::string> revoked_;
  // Deletes `pod` (a running or pending one made from another template than the current
  // one); the next pass creates it again from the current template.
  // `why`: what made it outdated, when not its template.
  void ReplaceOutdated(const Json& pod, const std::string& then, const std::string& why = "") {
    const Json& meta = pod["metadata"];
    const std::string name = meta.value("name", "");
    Action& a = Add(ActionKind::kDelete, Wave::kPods, res::kPods, name);
    a.del.precondition_uid = meta.value("uid", "");
    const std::string was = PodTemplateHashOf(pod);
    a.on_success.push_back(
        {"Normal", "PodReplaced",
         "pod " + name +
             (!why.empty() ? " " + why
                           : " was made from " +
                                 (was.empty() ? std::string("a template without a hash (an older operator)")
                                              : "template " + was) +
                                 " (an operator upgrade or a spec change)") +
             ": replaced" + then});
  }
  static bool Live(PodPhase phase) { return phase == PodPhase::kRunning || phase == PodPhase::kPending; }
  void CheckpointCondition();
  void AgentsResolvingByName();
};

void Planner::Run() {
  const Json& job = o.job;
  generation = job["metadata"].value("generation", static_cast<int64_t>(1));
  now_str = FormatTime(o.now);
  old_status = job.value("status", Json::object());
  if (!old_status.is_object()) old_status = Json::object();
  plan.status = old_status;
  if (!plan.status.contains("conditions")) plan.status["conditions"] = Json::array();

  if (Terminating(job)) {
    Finalize();
    return;
  }
  std::vector<std::string> fin = Finalizers(job);
  if (std::find(fin.begin(), fin.end(), kFinalizer) == fin.end()) {
    Action& a = Add(ActionKind::kApply, Wave::kJob, res::kJobs, o.name);
    a.object = {{"apiVersion", job.value("apiVersion", "fedge.io/v1alpha1")},
                {"kind", job.value("kind", "FederatedTrainingJob")},
                {"metadata", {{"name", o.name}, {"namespace", o.ns}, {"finalizers", {kFinalizer}}}}};
    // Our own write: the status write of this pass is guarded by the version it made.
    a.takes_job_version = true;
  }

  // Validate with the same parser `fedge run` uses; an invalid spec is a condition.
  auto parsed = ParseJobSpec(ManifestForParser(job).dump());
  JobState state = State();
  const Json* failed = FindCondition(plan.status["conditions"], "Failed");
  bool invalid_before =
      failed && failed->value("status", "") == "True" &&
      (failed->value("reason", "") == "InvalidSpec" || failed->value("reason", "") == "HostPathNotAllowed");
  if (!parsed.ok()) {
    SetState(JobState::kFailed);
    Condition("Failed", "True", "InvalidSpec", parsed.status().message(), "Warning");
    return;  // wait for the spec to change, no retries
  }
  // Node directories: only under the operator's allowed prefixes (they become local
  // PersistentVolumes, which Pod Security does not check).
  if (Status paths = CheckNodePaths(*parsed, opts.desired); !paths.ok()) {
    SetState(JobState::kFailed);
    Condition("Failed", "True", "HostPathNotAllowed", paths.message(), "Warning");
    return;  // wait for the spec (or the operator's flags) to change
  }
  spec = *parsed;
  if (invalid_before) {  // fixed by the user
    SetState(JobState::kPending);
    Condition("Failed", "False", "SpecFixed", "the spec is valid again", "Normal");
    state = JobState::kPending;
  }
  const RunPolicySpec& rp = spec->runPolicy;

  // Finished: clean pods per policy, then honour the TTL.
  if (Finished(state)) {
    if (!plan.status.contains("completionTime")) plan.status["completionTime"] = now_str;
    // After success the agents are the job's inference service: Running spares them
    // (they go with the job, or with cleanPodPolicy All); after failure they go too.
    const bool serving = state == JobState::kSucceeded && spec->serving.enabled;
    if (rp.cleanPodPolicy == "All")
      DeletePods(false);
    else if (rp.cleanPodPolicy == "Running")
      DeletePods(true, serving);
    if (rp.ttlSecondsAfterFinished >= 0) {
      auto done = ParseTime(plan.status.value("completionTime", now_str)).value_or(o.now);
      int64_t left = static_cast<int64_t>(done) + rp.ttlSecondsAfterFinished - static_cast<int64_t>(o.now);
      if (left <= 0) {
        Action& a = Add(ActionKind::kDelete, Wave::kAfterStatus, res::kJobs, o.name);
        a.del = {"Foreground", job["metadata"].value("uid", ""), {}};
        return;
      }
      RequeueAfter(std::chrono::seconds(left));
    }
    if (serving && rp.cleanPodPolicy != "All") KeepServing();
    return;
  }

  // Suspend: no pods; resume creates them again (the aggregator resumes from its checkpoint
  // when spec.aggregator.checkpoint names a PersistentVolumeClaim).
  if (rp.suspend) {
    DeletePods(false);
    SetState(JobState::kSuspended);
    Condition("Suspended", "True", "JobSuspended", "spec.runPolicy.suspend is true; pods are deleted",
              "Normal");
    Condition("Running", "False", "JobSuspended", "the job is suspended");
    return;
  }
  const Json* suspended = FindCondition(plan.status["conditions"], "Suspended");
  if (suspended && suspended->value("status", "") == "True") {
    Condition("Suspended", "False", "JobResumed", "spec.runPolicy.suspend is false; pods are recreated",
              "Normal");
  }

  // Active deadline, counted from the first pod creation.
  if (rp.activeDeadlineSeconds > 0 && plan.status.contains("startTime")) {
    auto start = ParseTime(plan.status.value("startTime", "")).value_or(o.now);
    int64_t left = static_cast<int64_t>(start) + rp.activeDeadlineSeconds - static_cast<int64_t>(o.now);
    if (left <= 0) {
      SetState(JobState::kFailed);
      plan.status["completionTime"] = now_str;
      Condition("Failed", "True", "DeadlineExceeded",
                "the job ran longer than spec.runPolicy.activeDeadlineSeconds (" +
                    std::to_string(rp.activeDeadlineSeconds) + " s)",
                "Warning");
      Condition("Running", "False", "DeadlineExceeded", "the job was stopped");
      DeletePods(true);
      plan.requeue_after = rp.ttlSecondsAfterFinished >= 0
                               ? std::optional<std::chrono::seconds>(std::chrono::seconds(1))
                               : std::nullopt;
      return;
    }
    RequeueAfter(std::chrono::seconds(left));
  }

  Children();

  if (Finished(State()) && !plan.status.contains("completionTime")) {
    plan.status["completionTime"] = now_str;
    // Apply cleanPodPolicy and the TTL on the next pass.
    RequeueAfter(std::chrono::seconds(1));
  }
  // (RequeueAfter keeps the earliest: a certificate renewal must not postpone the deadline.)
  if (rp.activeDeadlineSeconds > 0 && plan.status.contains("startTime")) {
    RequeueAfter(std::chrono::seconds(rp.activeDeadlineSeconds));
  }
}

void Planner::Finalize() {
  plan.write_status = false;
  std::vector<std::string> fin = Finalizers(o.job);
  if (std::find(fin.begin(), fin.end(), kFinalizer) == fin.end()) return;
  // Pods first: agents on edge nodes must stop training before the credentials go.
  for (const auto& p : o.pods) {
    if (Terminating(*p) || Role(*p) == kRoleStateCleanup) continue;
    Add(ActionKind::kDelete, Wave::kPods, res::kPods, (*p)["metadata"].value("name", ""));
  }
  // Then each node's agent state (desired.h, Node state removal).
  std::vector<PlannedEvent> outcome;
  if (!RemoveNodeState(outcome)) return;  // cleanups running: requeued
  // The node volumes' PersistentVolumes have no owner (cluster-scoped); their claims go
  // with the job through owner references, and the volume objects leave once released.
  // Only the API objects: Retain keeps the node's directories (model and data too).
  for (const auto& [key, pv] : o.children) {
    if (key.first != res::kPersistentVolumes.plural) continue;
    const Json& meta = (*pv)["metadata"];
    if (meta.value("labels", Json::object()).value(kLabelJobNamespace, "") != o.ns) continue;
    if (Terminating(*pv) || DeferredStateCleanup(*pv)) continue;  // a record's own volume
    // A deferred cleanup mounts it later (its claim is no longer the job's).
    const Json claim_ref = pv->value("spec", Json::object()).value("claimRef", Json::object());
    if (claim_ref.value("namespace", "") == o.ns && deferred_claims.count(claim_ref.value("name", "")))
      continue;
    Add(ActionKind::kDelete, Wave::kPods, res::kPersistentVolumes, meta.value("name", ""));
  }
  fin.erase(std::remove(fin.begin(), fin.end(), kFinalizer), fin.end());
  Action& a = Add(ActionKind::kMergePatch, Wave::kAfterStatus, res::kJobs, o.name);
  a.object = {{"metadata",
               {{"finalizers", fin}, {"resourceVersion", o.job["metadata"].value("resourceVersion", "")}}}};
  a.on_success = std::move(outcome);
}

bool Planner::RemoveNodeState(std::vector<PlannedEvent>& outcome) {
  auto parsed = ParseJobSpec(ManifestForParser(o.job).dump());
  const std::string dir = AgentStateSubPath(o.job);
  std::vector<std::string> left;      // "node (why)"
  std::vector<std::string> deferred;  // "node (why)"
  std::vector<std::string> retaken;   // nodes whose claim a foreground deletion took
  int removed = 0;
  std::vector<std::string> running;
  const std::time_t deadline = ParseTime(o.job["metadata"].value("deletionTimestamp", "")).value_or(o.now) +
                               kNodeStateCleanupTimeoutSeconds;
  if (!parsed.ok()) {
    // Without a spec there is no telling which claim holds the state (an invalid spec
    // made no agents; a spec edited invalid after the job ran may have).
    for (const auto& [key, obj] : o.children)
      if (key.first == res::kPersistentVolumeClaims.plural && Role(*obj) == "node-volume")
        left.push_back((*obj)["metadata"].value("annotations", Json::object()).value(kAnnotationNode, "") +
                       " (the spec does not parse: " + parsed.status().message() + ")");
  } else {
    const std::vector<NodeVolumeRoot> roots = AgentNodeVolumeRoots(*parsed, opts.desired);
    const NodeVolumeRoot* root = StateVolumeRoot(roots);
    const auto agents = AgentPodsByNode();
    auto note_record = [&](const std::string& node, const Json& claim) {
      if (claim["metadata"].value("annotations", Json::object()).value(kAnnotationStateCleanupCause, "") ==
          kStateCleanupCauseForeground) {
        retaken.push_back(node);
      } else {
        deferred.push_back(node + " (the node was away)");
      }
    };
    std::map<std::string, bool> ready;  // node -> Ready, for the nodes that exist
    for (const auto& n : o.nodes) ready[(*n)["metadata"].value("name", "")] = NodeReady(*n);
    for (const auto& [key, claim] : o.children) {
      if (key.first != res::kPersistentVolumeClaims.plural || Role(*claim) != "node-volume") continue;
      const std::string node =
          (*claim)["metadata"].value("annotations", Json::object()).value(kAnnotationNode, "");
      if (node.empty() || !root || key.second != NodeVolumeClaimName(o.job, node, *root)) continue;
      const std::string pod_name = StateCleanupPodName(o.job, node);
      ObjectPtr pod;
      for (const auto& p : o.pods)
        if ((*p)["metadata"].value("name", "") == pod_name) pod = p;
      if (pod) {
        const PodPhase phase = PodPhaseOf(*pod);
        if (phase == PodPhase::kSucceeded) {
          ++removed;
          continue;
        }
        if (phase == PodPhase::kFailed) {
          std::string why = PodFailureMessage(*pod);
          left.push_back(node + " (the cleanup pod failed" + (why.empty() ? "" : ": " + why) + ")");
          continue;
        }
      }
      if (Terminating(*claim) &&
          o.Find(res::kPersistentVolumeClaims, StateRecordClaimName(o.job, node, *root)) &&
          DeferWithOwnClaim(node, *root, pod, *parsed)) {
        // Made while the node was away (below): it stays the node's record, back or not.
        deferred.push_back(node + " (the node was away; a foreground deletion took its claim)");
        continue;
      }
      // No pod runs on a node that is gone or unreachable now: rather than hold the job,
      // its cleanup is left to run when the node is back (desired.h, deferred state
      // removal), unless a foreground deletion took the claim first.
      if (auto r = ready.find(node); r == ready.end() || !r->second) {
        const std::string why =
            r == ready.end() ? " (the node is no longer in the cluster" : " (the node is not Ready";
        if (DeferNodeState(node, key.second, *claim, pod, *parsed)) {
          deferred.push_back(node + why + ")");
        } else if (Terminating(*claim) && RemakeRecordOnTakenClaim(*claim, pod)) {
          running.push_back(node);
        } else if (Terminating(*claim) && DeferWithOwnClaim(node, *root, pod, *parsed)) {
          deferred.push_back(node + why + "; a foreground deletion took its claim, the record has its own)");
        } else {
          left.push_back(node + why +
                         (Terminating(*claim) ? "; its claim " + key.second + " is being deleted)" : ")"));
        }
        continue;
      }
      if (pod && DeferredStateCleanup(*pod)) {
        // Deferred by an earlier pass while the node was away: the record outlives the job
        // and runs once the node is back (ReconcileDeferredCleanup); keep the claim with it.
        if (DeferNodeState(node, key.second, *claim, pod, *parsed)) {
          note_record(node, *claim);
          continue;
        }
      }
      if (!pod && DeferredStateCleanup(*claim) && !Terminating(*claim)) {
        // A record's claim an earlier pass made (RetakeReleasedStateVolumes) without its pod
        // yet: the pod comes with the record, never as one the job owns.
        if (DeferNodeState(node, key.second, *claim, pod, *parsed)) {
          note_record(node, *claim);
          continue;
        }
      }
      if (pod) {
        running.push_back(node);
        continue;
      }
      if (agents.count(node)) {  // its agent may still write there
        running.push_back(node);
        continue;
      }
      if (Terminating(*claim)) {
        // A foreground deletion took the claim first: it goes once no pod uses it, and
        // then its volume is claimed again for the cleanup (RetakeReleasedStateVolumes).
        if (o.now < deadline) {
          running.push_back(node);
        } else {
          left.push_back(node + " (its claim " + key.second + " is being deleted)");
        }
        continue;
      }
      if (o.now >= deadline) {
        running.push_back(node);
        continue;
      }
      if (DeletingDependents(o.job)) {
        // A foreground deletion the collector has not got to this claim in yet: it will
        // (it deletes every dependent), and it would delete a cleanup pod the job owns too,
        // killing it mid-removal (seen in operator_cluster: exit code 143). Wait for the
        // claim to go, then the record takes its volume (RetakeReleasedStateVolumes).
        running.push_back(node);
        continue;
      }
      Add(ActionKind::kCreate, Wave::kPods, res::kPods, pod_name).object =
          DesiredStateCleanupPod(o.job, *parsed, node, opts.desired);
      running.push_back(node);
    }
    if (root) RetakeReleasedStateVolumes(*parsed, *root, retaken, running, left);
  }
  if (!running.empty() && o.now < deadline) {
    RequeueAfter(
        std::min<std::chrono::seconds>(std::chrono::seconds(5), std::chrono::seconds(deadline - o.now)));
    return false;
  }
  for (const auto& node : running)
    left.push_back(node + " (not done " + std::to_string(kNodeStateCleanupTimeoutSeconds) +
                   " s after the deletion: its agent pod is still terminating or the cleanup did not end)");
  if (!deferred.empty()) {
    std::sort(deferred.begin(), deferred.end());
    outcome.push_back({"Normal", "NodeStateRemovalDeferred",
                       "the job's agent state (" + dir + " in the state root) on " + Join(deferred, "; ") +
                           " is removed when the node is back: its state-cleanup pod waits for it "
                           "(kubectl get pods -l " +
                           kLabelStateCleanup + "=" + kStateCleanupDeferred + ")"});
  }
  if (!retaken.empty()) {
    std::sort(retaken.begin(), retaken.end());
    outcome.push_back({"Normal", "NodeStateRemovalDeferred",
                       "the job's agent state (" + dir + " in the state root) on " + Join(retaken, ", ") +
                           " is removed once the job has gone: a foreground deletion took the nodes' claims "
                           "first, and each node's state-cleanup pod waits with a new claim for its volume "
                           "(kubectl get pods -l " +
                           kLabelStateCleanup + "=" + kStateCleanupDeferred + ")"});
  }
  if (removed > 0)
    outcome.push_back({"Normal", "NodeStateRemoved",
                       "removed the job's agent state (" + dir + " in the state root) from " +
                           std::to_string(removed) + " node(s)"});
  if (!left.empty()) {
    std::sort(left.begin(), left.end());
    outcome.push_back(
        {"Warning", "NodeStateLeft",
         "the job's agent state (" + dir +
             " in the operator's --node-state-dir; global models and the feedback log) is left on " +
             Join(left, "; ") + ": remove it on those nodes by hand"});
  }
  return true;
}

bool Planner::DeferNodeState(const std::string& node, const std::string& claim_name, const Json& claim,
                             const ObjectPtr& pod, const JobSpec& parsed) {
  if (Terminating(claim)) return false;
  const std::string pod_name = StateCleanupPodName(o.job, node);
  if (!pod) {
    if (Blocked(res::kPods, pod_name)) return false;
    Json want = DesiredDeferredStateCleanupPod(o.job, parsed, node, opts.desired);
    if (want.is_null()) return false;
    const std::string cause =
        claim["metadata"].value("annotations", Json::object()).value(kAnnotationStateCleanupCause, "");
    if (!cause.empty()) want["metadata"]["annotations"][kAnnotationStateCleanupCause] = cause;
    Add(ActionKind::kCreate, Wave::kPods, res::kPods, pod_name).object = std::move(want);
  } else if (Terminating(*pod)) {
    return false;
  } else if (!DeferredStateCleanup(*pod)) {
    // Made while the node was Ready, not run since: it runs when the node is back.
    Add(ActionKind::kMergePatch, Wave::kPods, res::kPods, pod_name).object = DeferStateCleanupPodPatch(o.job);
  }
  const Json ann = claim["metadata"].value("annotations", Json::object());
  if (!DeferredStateCleanup(claim) || ann.value(kAnnotationStateCleanupPod, "") != pod_name ||
      claim["metadata"].contains("ownerReferences")) {
    // Taken from the job before the record's pod is made (a wave earlier), and only as
    // observed: a claim the garbage collector deleted meanwhile (a foreground deletion; a
    // pass on a cache behind it) fails the patch and the pass, so that the next one sees
    // it going and gives the record a claim of its own (DeferWithOwnClaim) rather than
    // make a pod that mounts a claim about to go.
    Json patch = DeferStateClaimPatch(o.job, pod_name);
    if (std::string rv = claim["metadata"].value("resourceVersion", ""); !rv.empty())
      patch["metadata"]["resourceVersion"] = rv;
    Add(ActionKind::kMergePatch, Wave::kPerNode, res::kPersistentVolumeClaims, claim_name).object =
        std::move(patch);
  }
  deferred_claims.insert(claim_name);
  return true;
}

bool Planner::RemakeRecordOnTakenClaim(const Json& claim, const ObjectPtr& pod) {
  if (!pod || !DeferredStateCleanup(*pod) || !DeferredStateCleanup(claim)) return false;
  const std::string pod_name = (*pod)["metadata"].value("name", "");
  // Taken for this pod (DeferNodeState): not a claim of the job's the collector took before
  // any record (the pod would not mount it), nor one a record was given since.
  if (claim["metadata"].value("annotations", Json::object()).value(kAnnotationStateCleanupPod, "") !=
      pod_name)
    return false;
  const Json& spec = (*pod)["spec"];
  bool on_claim = false;
  for (const auto& v : spec.value("volumes", Json::array()))
    on_claim = on_claim || v.value("persistentVolumeClaim", Json::object()).value("claimName", "") ==
                               claim["metadata"].value("name", "");
  // Never scheduled, and still gated: its gate is lifted only once the node is Ready and
  // the job's finalizer is done, so it cannot have started behind this pass's view.
  bool gated = false;
  for (const auto& g : spec.value("schedulingGates", Json::array()))
    gated = gated || g.value("name", "") == kStateCleanupGate;
  if (!on_claim || !gated || !spec.value("nodeName", "").empty()) return false;
  if (!Terminating(*pod)) {
    Action& a = Add(ActionKind::kDelete, Wave::kPods, res::kPods, pod_name);
    a.del.precondition_uid = (*pod)["metadata"].value("uid", "");
  }
  return true;
}

bool Planner::DeferWithOwnClaim(const std::string& node, const NodeVolumeRoot& root, const ObjectPtr& pod,
                                const JobSpec& parsed) {
  const std::string pod_name = StateCleanupPodName(o.job, node);
  const std::string claim_name = StateRecordClaimName(o.job, node, root);
  const std::string pv_name = StateRecordVolumeName(o.job, node, root);
  if (Blocked(res::kPods, pod_name) || Blocked(res::kPersistentVolumeClaims, claim_name) ||
      Blocked(res::kPersistentVolumes, pv_name))
    return false;
  if (pod) {
    // A cleanup pod made earlier mounts the claim the collector took: it can never start.
    if (Terminating(*pod) || !DeferredStateCleanup(*pod)) return false;
    bool mounts_own = false;
    for (const auto& v : (*pod)["spec"].value("volumes", Json::array()))
      mounts_own =
          mounts_own || v.value("persistentVolumeClaim", Json::object()).value("claimName", "") == claim_name;
    if (!mounts_own) return false;
  }
  if (ObjectPtr pv = o.Find(res::kPersistentVolumes, pv_name); !pv) {
    // The node's directory as the job's volume for it names it (also for a node no longer
    // in the cluster, whose hostname label is gone).
    ObjectPtr job_pv = o.Find(res::kPersistentVolumes, NodePersistentVolumeName(o.job, node, root));
    if (!job_pv) return false;
    Add(ActionKind::kCreate, Wave::kPods, res::kPersistentVolumes, pv_name).object =
        StateRecordVolume(o.job, *job_pv, node, root);
  } else if (Terminating(*pv)) {
    return false;
  }
  if (ObjectPtr claim = o.Find(res::kPersistentVolumeClaims, claim_name); !claim) {
    Add(ActionKind::kCreate, Wave::kPods, res::kPersistentVolumeClaims, claim_name).object =
        DesiredOwnStateRecordClaim(o.job, node, root, pod_name);
  } else if (Terminating(*claim)) {
    return false;
  }
  if (!pod) {
    Json want = DesiredDeferredStateCleanupPod(o.job, parsed, node, opts.desired, claim_name);
    if (want.is_null()) return false;
    want["metadata"]["annotations"][kAnnotationStateCleanupCause] = kStateCleanupCauseForeground;
    Add(ActionKind::kCreate, Wave::kPods, res::kPods, pod_name).object = std::move(want);
  }
  deferred_claims.insert(claim_name);
  return true;
}

void Planner::RetakeReleasedStateVolumes(const JobSpec& parsed, const NodeVolumeRoot& root,
                                         std::vector<std::string>& deferred,
                                         std::vector<std::string>& running, std::vector<std::string>& left) {
  for (const auto& [key, pv] : o.children) {
    if (key.first != res::kPersistentVolumes.plural || Terminating(*pv)) continue;
    const Json& meta = (*pv)["metadata"];
    if (meta.value("labels", Json::object()).value(kLabelJobNamespace, "") != o.ns) continue;
    const Json ann = meta.value("annotations", Json::object());
    const std::string node = ann.value(kAnnotationNode, "");
    if (node.empty() || key.second != NodePersistentVolumeName(o.job, node, root)) continue;
    const std::string claim_name = NodeVolumeClaimName(o.job, node, root);
    if (o.Find(res::kPersistentVolumeClaims, claim_name)) continue;  // RemoveNodeState has it
    // The node's record has a claim and volume of its own (DeferWithOwnClaim): this volume
    // goes with the others.
    if (o.Find(res::kPersistentVolumeClaims, StateRecordClaimName(o.job, node, root))) continue;
    const Json ref = pv->value("spec", Json::object()).value("claimRef", Json::object());
    if (ref.value("namespace", "") != o.ns || ref.value("name", "") != claim_name) continue;
    // The claim the volume names by uid was bound to it (an agent could have written there)
    // and has gone: the volume is Released, or still Bound until the PersistentVolume
    // controller gets to it. A volume never bound (pre-bound by name only) held no state
    // and goes with the others; one an earlier pass freed carries the cause.
    const bool was_bound = !ref.value("uid", "").empty();
    const bool freed = ann.value(kAnnotationStateCleanupCause, "") == kStateCleanupCauseForeground;
    if (!was_bound && !freed) continue;
    const std::string pod_name = StateCleanupPodName(o.job, node);
    if (Blocked(res::kPersistentVolumeClaims, claim_name) || Blocked(res::kPods, pod_name)) {
      left.push_back(node + " (its claim " + claim_name + " was deleted, and the name is another job's)");
      continue;
    }
    ObjectPtr pod;
    for (const auto& p : o.pods)
      if ((*p)["metadata"].value("name", "") == pod_name) pod = p;
    if (pod && !DeferredStateCleanup(*pod)) {
      running.push_back(node);  // the job's cleanup pod made before the claim went: it goes too
      continue;
    }
    if (was_bound || !freed) {
      Action& a = Add(ActionKind::kMergePatch, Wave::kPods, res::kPersistentVolumes, key.second);
      a.object = ReleasedVolumeRebindPatch();
      a.object["metadata"]["annotations"][kAnnotationStateCleanupCause] = kStateCleanupCauseForeground;
    }
    Json claim = DesiredStateRecordClaim(o.job, node, root, pod_name);
    claim["metadata"]["annotations"][kAnnotationStateCleanupCause] = kStateCleanupCauseForeground;
    Add(ActionKind::kCreate, Wave::kPods, res::kPersistentVolumeClaims, claim_name).object = std::move(claim);
    if (!pod) {
      Json want = DesiredDeferredStateCleanupPod(o.job, parsed, node, opts.desired);
      if (want.is_null()) continue;
      want["metadata"]["annotations"][kAnnotationStateCleanupCause] = kStateCleanupCauseForeground;
      Add(ActionKind::kCreate, Wave::kPods, res::kPods, pod_name).object = std::move(want);
    }
    deferred_claims.insert(claim_name);
    deferred.push_back(node);
  }
}

void Planner::HandleFailedPod(const Json& pod, bool aggregator) {
  std::string pod_name = pod["metadata"].value("name", "");
  int backoff_limit = spec->runPolicy.backoffLimit;
  int restarts = plan.status.value("restarts", 0);
  int code = PodExitCode(pod);
  if (restarts < backoff_limit) {
    Action& a = Add(ActionKind::kDelete, Wave::kPods, res::kPods, pod_name);
    a.del.precondition_uid = pod["metadata"].value("uid", "");
    a.counts_restart = true;
    a.on_success.push_back({"Warning", "PodRestarted",
                            "pod " + pod_name + " failed (exit code " + std::to_string(code) +
                                "); recreating it (restart " + std::to_string(restarts + 1) +
                                " of backoffLimit " + std::to_string(backoff_limit) + ")"});
    plan.status["restarts"] = restarts + 1;
    return;
  }
  std::string msg = "pod " + pod_name + " failed (exit code " + std::to_string(code) + ") after " +
                    std::to_string(restarts) + " restarts; backoffLimit " + std::to_string(backoff_limit) +
                    " reached";
  if (aggregator) {
    SetState(JobState::kFailed);
    Condition("Failed", "True", "BackoffLimitExceeded", msg, "Warning");
  } else {
    Condition("Degraded", "True", "BackoffLimitExceeded", msg, "Warning");
  }
}

namespace {

// When a failed pod's container ended (0 when the pod does not say).
std::time_t PodFinishedAt(const Json& pod) {
  std::time_t latest = 0;
  for (const auto& cs : pod.value("status", Json::object()).value("containerStatuses", Json::array())) {
    const Json term = cs.value("state", Json::object()).value("terminated", Json::object());
    if (auto t = ParseTime(term.value("finishedAt", "")); t && *t > latest) latest = *t;
  }
  return latest;
}

}  // namespace

void Planner::KeepServing() {
  // After success the agents are the job's inference service, each serving the final
  // global its node keeps (an agent told DONE marks it final in its state directory; a
  // new agent there serves it without an aggregator: Agent::Run). So a serving agent
  // whose pod failed (its container crashed, the node rebooted, an eviction) is deleted
  // and made again, and a node whose agent pod is gone gets one while its node volumes,
  // made for its agent during the job, are still there. A node without the final global
  // (one that joins the selector after the job, or lost its state directory) gets it from
  // the final-model pod, an aggregator serving the job's checkpoint (FinalModelPod).
  const Json& job = o.job;
  const std::vector<std::string> nodes = SelectNodes(spec->agents, o.nodes);
  const std::map<std::string, ObjectPtr> agents = AgentPodsByNode();
  const std::vector<NodeVolumeRoot> roots = AgentNodeVolumeRoots(*spec, opts.desired);
  const bool checkpointed = !CheckpointClaimName(job).empty();
  bool final_wanted = false;  // a node waits for the final global
  bool final_kept = false;    // a node may still: keep the final-model pod if it runs
  std::vector<std::string> final_for;
  for (const auto& node : nodes) {
    auto it = agents.find(node);
    if (it != agents.end()) {
      const Json& pod = *it->second;
      if (Terminating(pod)) continue;
      const PodPhase phase = PodPhaseOf(pod);
      if (Live(phase) && !PodReady(pod)) {
        // Not serving: starting (a node that keeps its final global turns ready within
        // seconds), or waiting for a global it does not have.
        final_kept = true;
        const auto made = ParseTime(pod["metadata"].value("creationTimestamp", ""));
        if (!made || o.now < *made + kFinalModelWaitSeconds) {
          if (made) RequeueAfter(std::chrono::seconds(*made + kFinalModelWaitSeconds - o.now));
        } else if (checkpointed) {
          final_wanted = true;
          final_for.push_back(node);
        }
        continue;
      }
      if (phase != PodPhase::kFailed) continue;
      // A crash loop is slowed down: an agent that failed within a minute of starting is
      // made again 5 minutes after it failed, any other 10 seconds after.
      const std::time_t finished = PodFinishedAt(pod);
      const auto started = ParseTime(pod.value("status", Json::object()).value("startTime", ""));
      const bool quick = finished > 0 && started && finished - *started < kServingCrashLoopRunSeconds;
      const std::time_t due =
          finished + (quick ? kServingCrashLoopDelaySeconds : kServingRestartDelaySeconds);
      if (finished > 0 && o.now < due) {
        RequeueAfter(std::chrono::seconds(due - o.now));
        continue;
      }
      const std::string name = pod["metadata"].value("name", "");
      Action& a = Add(ActionKind::kDelete, Wave::kPods, res::kPods, name);
      a.del.precondition_uid = pod["metadata"].value("uid", "");
      a.on_success.push_back({"Warning", "ServingAgentRestarted",
                              "serving agent pod " + name + " failed after the job succeeded (exit code " +
                                  std::to_string(PodExitCode(pod)) +
                                  "); it is made again and serves the final global model kept on node " +
                                  node});
      continue;
    }
    bool had_agent = !roots.empty(), claim_going = false;
    for (const auto& r : roots) {
      ObjectPtr claim = o.Find(res::kPersistentVolumeClaims, NodeVolumeClaimName(job, node, r));
      had_agent = had_agent && claim;
      claim_going = claim_going || (claim && Terminating(*claim));
    }
    if (claim_going) continue;  // made again once it has gone
    // A node new to the job (its volumes are made as during the job) needs the final global:
    // only the checkpoint still holds it.
    if (!had_agent && !checkpointed) continue;
    if (!had_agent) NodeVolumes(node, roots);
    if (Blocked(res::kPods, AgentPodName(job, node))) continue;
    Action& a = Add(ActionKind::kCreate, Wave::kPods, res::kPods, AgentPodName(job, node));
    a.object = DesiredAgentPod(job, *spec, node, opts.desired);
    if (!had_agent) {
      final_wanted = final_kept = true;
      final_for.push_back(node);
    }
  }
  // A node that no longer matches the selector (relabelled, or gone) loses its serving
  // agent, as during the job. Its volumes stay (a node that returns serves its final
  // global again; the job's deletion cleans its state). A cordoned node, or one past
  // maxAgents, still matches: it keeps serving.
  for (const auto& [node, pod] : agents) {
    if (Terminating(*pod) || std::binary_search(nodes.begin(), nodes.end(), node)) continue;
    if (MatchingNode(node)) continue;
    Action& a = Add(ActionKind::kDelete, Wave::kPods, res::kPods, (*pod)["metadata"].value("name", ""));
    a.del.precondition_uid = (*pod)["metadata"].value("uid", "");
    a.on_success.push_back(
        {"Normal", "AgentRemoved",
         "node " + node + " no longer matches spec.agents.nodeSelector: its serving agent goes"});
  }
  FinalModelPod(final_wanted, final_kept, final_for);
  // The final-model pod serves TLS with the job's serving certificate and checks tokens
  // against the trust ConfigMap: a job may have succeeded long before a node joins (the
  // certificate due, the API server's keys rotated).
  const std::string final_name = FinalModelPodName(job);
  if (final_wanted || std::any_of(o.pods.begin(), o.pods.end(), [&](const ObjectPtr& p) {
        return (*p)["metadata"].value("name", "") == final_name && !Terminating(*p);
      })) {
    CredentialsAndTrust();
  }
  AgentsStatus(nodes, agents);
}

void Planner::FinalModelPod(bool wanted, bool keep, const std::vector<std::string>& for_nodes) {
  const Json& job = o.job;
  const std::string name = FinalModelPodName(job);
  ObjectPtr pod;
  for (const auto& p : o.pods) {
    if ((*p)["metadata"].value("name", "") == name) pod = p;
  }
  if (pod && Terminating(*pod)) return;
  if (!pod) {
    if (!wanted || Blocked(res::kPods, name)) return;
    // Before the agent pods of the pass: an agent that starts finds the Service's backend
    // made (a client that resolves the Service once, at start, would otherwise find none).
    Action& a = Add(ActionKind::kCreate, Wave::kPerNode, res::kPods, name);
    DesiredOptions agg_desired = opts.desired;
    if (!o.issuer.issuer.empty()) agg_desired.agent_token_issuer = o.issuer.issuer;
    a.object = DesiredFinalModelPod(job, *spec, agg_desired);
    a.object["metadata"]["annotations"][kAnnotationRevokedPods] = RevokedHash();
    std::string nodes;
    for (const auto& n : for_nodes) nodes += (nodes.empty() ? "" : ", ") + n;
    a.on_success.push_back({"Normal", "FinalModelServed",
                            "node(s) " + nodes + " have no final global model: pod " + name +
                                " hands it out from the job's checkpoint (claim " + CheckpointClaimName(job) +
                                ") until every agent serves"});
    return;
  }
  const PodPhase phase = PodPhaseOf(*pod);
  const Json& meta = (*pod)["metadata"];
  if (phase == PodPhase::kFailed || phase == PodPhase::kSucceeded) {
    // It runs until stopped: an exit is a failure (no checkpoint, a bad one) or a node
    // that stopped it. Made again while needed, slowly.
    const std::time_t finished = PodFinishedAt(*pod);
    if (wanted && finished > 0 && o.now < finished + kServingCrashLoopDelaySeconds) {
      RequeueAfter(std::chrono::seconds(finished + kServingCrashLoopDelaySeconds - o.now));
      return;
    }
    Action& a = Add(ActionKind::kDelete, Wave::kPods, res::kPods, name);
    a.del.precondition_uid = meta.value("uid", "");
    if (phase == PodPhase::kFailed) {
      a.on_success.push_back({"Warning", "FinalModelServerFailed",
                              "pod " + name + " could not serve the job's final global model: " +
                                  PodFailureMessage(*pod) + (wanted ? "; it is made again" : "")});
    }
    return;
  }
  if (keep || wanted) return;
  const auto started = ParseTime(pod->value("status", Json::object()).value("startTime", ""));
  if (phase == PodPhase::kRunning && started && o.now < *started + kFinalModelMinRunSeconds) {
    RequeueAfter(std::chrono::seconds(*started + kFinalModelMinRunSeconds - o.now));
    return;
  }
  Action& a = Add(ActionKind::kDelete, Wave::kPods, res::kPods, name);
  a.del.precondition_uid = meta.value("uid", "");
}

void Planner::CheckpointCondition() {
  // status.checkpoint is applied by the aggregator pod's reporter from the aggregator's
  // /v1/status (status_reporter.h); the operator turns it into a condition.
  auto it = old_status.find("checkpoint");
  if (it == old_status.end() || !it->is_object()) return;
  const Json& ck = *it;
  int64_t failures = ck.value("consecutiveFailures", int64_t{0});
  if (failures > 0) {
    Condition("CheckpointFailing", "True", "CheckpointWriteFailed",
              std::to_string(failures) + " checkpoint write(s) in a row failed (" +
                  ck.value("lastError", std::string("no detail")) +
                  "); a replaced aggregator would resume from an older round. Check the checkpoint "
                  "volume (claim " +
                  CheckpointClaimName(o.job) + ")",
              "Warning");
  } else if (FindCondition(plan.status["conditions"], "CheckpointFailing")) {
    Condition("CheckpointFailing", "False", "CheckpointWritten", "the last checkpoint write succeeded",
              "Normal");
  }
}

void Planner::CredentialsAndTrust() {
  const Json& job = o.job;
  const bool tls = spec->privacy.tls;  // TlsEnabled: ManifestForParser states it
  // Credentials: the job CA and the aggregator's serving certificate. Synced (reading the
  // live object first) when the cached copy is missing or due; the trust ConfigMap after
  // it, with the CA as synced.
  Credentials creds;
  bool creds_current = false;
  const bool creds_blocked = Blocked(res::kSecrets, SecretName(job));
  if (ObjectPtr cached = o.Find(res::kSecrets, SecretName(job))) {
    creds = CredentialsFromSecret(*cached);
    creds_current = !creds.ca_crt.empty();
    std::time_t serving_renew_at = 0;
    if (creds_current && tls) {
      creds_current = ServingCertStale(creds, o.now, &serving_renew_at).empty();
      if (creds_current) RequeueAfter(std::chrono::seconds(serving_renew_at - o.now));
    }
  }
  if (!creds_current && !creds_blocked)
    Add(ActionKind::kSyncCredentials, Wave::kShared, res::kSecrets, SecretName(job));
  if (!o.issuer.jwks.empty() && !creds_blocked && !Blocked(res::kConfigMaps, TrustConfigMapName(job))) {
    ObjectPtr trust = o.Find(res::kConfigMaps, TrustConfigMapName(job));
    const std::string& revoked = Revoked();
    const Json want = DesiredTrustConfigMap(job, tls ? creds.ca_crt : "", o.issuer, revoked);
    if (!creds_current || !trust || trust->value("data", Json::object()) != want["data"]) {
      Add(ActionKind::kSyncTrust, Wave::kPerNode, res::kConfigMaps, TrustConfigMapName(job)).object = {
          {kRevokedPodsKey, revoked}};
    }
    // The kubelet refreshes a mounted ConfigMap on its periodic sync of the pod (about a
    // minute, measured up to 75 s on the real nodes); a change to the pod makes it sync at
    // once. So the aggregator (and the final-model pod) carry the list's hash.
    const std::string hash = RevokedHash();
    for (const auto& p : o.pods) {
      const std::string name = (*p)["metadata"].value("name", "");
      if ((name != AggregatorName(job) && name != FinalModelPodName(job)) || Terminating(*p)) continue;
      const PodPhase phase = PodPhaseOf(*p);
      if (phase == PodPhase::kSucceeded || phase == PodPhase::kFailed) continue;
      if ((*p)["metadata"].value("annotations", Json::object()).value(kAnnotationRevokedPods, "") == hash)
        continue;
      Add(ActionKind::kMergePatch, Wave::kPods, res::kPods, name).object = {
          {"metadata", {{"annotations", {{kAnnotationRevokedPods, hash}}}}}};
    }
  }
}

// Agent pods an operator before session 33 made resolve the aggregator Service's name,
// which <job>-agents no longer lets them do: until they are replaced (a share at a time),
// they are labelled and <job>-agents-dns lets them, and only them, reach the cluster DNS.
// Both in the first wave, before <job>-agents drops DNS in a later one.
void Planner::AgentsResolvingByName() {
  const Json& job = o.job;
  bool any = false;
  if (opts.desired.agent_egress_policy) {  // otherwise their egress is open
    for (const auto& p : o.pods) {
      if (Role(*p) != "agent" || Terminating(*p) || !Live(PodPhaseOf(*p)) ||
          !AgentResolvesAggregatorByName(*p))
        continue;
      any = true;
      const Json labels = (*p)["metadata"].value("labels", Json::object());
      if (labels.value(kLabelResolvesAggregatorByName, "") == "true") continue;
      Add(ActionKind::kMergePatch, Wave::kJob, res::kPods, (*p)["metadata"].value("name", "")).object = {
          {"metadata", {{"labels", {{kLabelResolvesAggregatorByName, "true"}}}}}};
    }
  }
  if (any) {
    ApplyIfChanged(res::kNetworkPolicies, DesiredAgentDnsNetworkPolicy(job, opts.desired), Wave::kJob);
  } else if (ObjectPtr dns = o.Find(res::kNetworkPolicies, AgentDnsNetworkPolicyName(job));
             dns && !Terminating(*dns)) {
    Add(ActionKind::kDelete, Wave::kShared, res::kNetworkPolicies, AgentDnsNetworkPolicyName(job));
  }
}

void Planner::Children() {
  const Json& job = o.job;
  std::vector<std::string> nodes = SelectNodes(spec->agents, o.nodes);
  std::set<std::string> wanted(nodes.begin(), nodes.end());

  ApplyIfChanged(res::kServiceAccounts, DesiredServiceAccount(job));
  ApplyIfChanged(res::kRoles, DesiredRole(job));
  // After its Role: the API server's RBAC escalation check evaluates the Role a binding
  // names, so a binding written beside it fails with NotFound for an operator that holds
  // only namespaced rights (the chart's watchNamespace RBAC).
  ApplyIfChanged(res::kRoleBindings, DesiredRoleBinding(job), Wave::kPerNode);

  // The agents' ServiceAccount: their projected tokens name it.
  ApplyIfChanged(res::kServiceAccounts, DesiredAgentServiceAccount(job));

  CredentialsAndTrust();
  // Agent Secrets (token and client certificate) of operators before the projected tokens:
  // nothing mounts them any more.
  for (const auto& [key, s] : o.children) {
    if (key.first != res::kSecrets.plural) continue;
    if (Role(*s) != "agent-credentials" || Terminating(*s)) continue;
    Add(ActionKind::kDelete, Wave::kShared, res::kSecrets, (*s)["metadata"].value("name", ""));
  }
  if (!Blocked(res::kSecrets, ApiTokenSecretName(job)) && !o.Find(res::kSecrets, ApiTokenSecretName(job))) {
    Add(ActionKind::kSyncApiToken, Wave::kShared, res::kSecrets, ApiTokenSecretName(job));
  }
  ApplyIfChanged(res::kConfigMaps, DesiredConfigMap(job, JobSpecToYaml(*spec)));
  if (opts.desired.network_policies) {
    AgentsResolvingByName();
    ApplyIfChanged(res::kNetworkPolicies, DesiredAgentNetworkPolicy(job, *spec, opts.desired));
    // The endpoints read before stay in use after a failed read; none known: egress open.
    DesiredOptions policy_desired = opts.desired;
    policy_desired.api_server_endpoints = o.api_server_endpoints;
    ApplyIfChanged(res::kNetworkPolicies, DesiredAggregatorNetworkPolicy(job, policy_desired));
  }
  if (Json claim = DesiredCheckpointClaim(job); !claim.is_null()) {
    CreateIfAbsent(res::kPersistentVolumeClaims, std::move(claim), Wave::kShared);
  }
  ApplyIfChanged(res::kServices, DesiredAggregatorService(job));
  if (spec->serving.enabled) {
    ApplyIfChanged(res::kServices, DesiredInferenceService(job, *spec));
  } else if (o.Find(res::kServices, InferenceServiceName(job))) {
    Add(ActionKind::kDelete, Wave::kShared, res::kServices, InferenceServiceName(job));
  }

  // Pods.
  bool aggregator_kept = false;  // outdated, but replacing it would lose the job's rounds
  ObjectPtr aggregator;
  for (const auto& p : o.pods) {
    if (Role(*p) != "aggregator") continue;
    if ((*p)["metadata"].value("name", "") != FinalModelPodName(job)) {
      aggregator = p;
    } else if (!Terminating(*p)) {
      // Only a finished job serves its final global (a job started again after a spec
      // fix must not tell its agents DONE).
      Add(ActionKind::kDelete, Wave::kPods, res::kPods, FinalModelPodName(job));
    }
  }
  const std::map<std::string, ObjectPtr> agents = AgentPodsByNode();
  // Every selected node's local volumes: for a node without its pod, and for one whose pod
  // the scheduler could not place (a claim that went - deleted, or collected with a deleted
  // job of the same name - leaves its pod unschedulable for good unless it is made again).
  // Not for the other pods: a cache behind this pass's own creates would repeat them.
  const std::vector<NodeVolumeRoot> node_roots = AgentNodeVolumeRoots(*spec, opts.desired);
  for (const auto& node : nodes) {
    if (auto p = agents.find(node); p != agents.end() && !Unschedulable(*p->second)) continue;
    NodeVolumes(node, node_roots);
  }
  // A pod mounts Secrets, ConfigMaps and claims by name: none is created while any of
  // those names (or its own) still holds a deleted job's object.
  Blocked(res::kPods, AggregatorName(job));
  for (const auto& node : nodes) Blocked(res::kPods, AgentPodName(job, node));
  // Without the issuer's keys the aggregator could verify no agent's token.
  const bool create_pods = waiting.empty() && !o.issuer.jwks.empty();

  const int min_agents = std::max(1, spec->agents.minAgents);
  DesiredOptions agg_desired = opts.desired;
  if (!o.issuer.issuer.empty()) agg_desired.agent_token_issuer = o.issuer.issuer;
  if (!aggregator) {
    if (static_cast<int>(nodes.size()) >= min_agents && create_pods) {
      Action& a = Add(ActionKind::kCreate, Wave::kPods, res::kPods, AggregatorName(job));
      a.object = DesiredAggregatorPod(job, *spec, static_cast<int>(nodes.size()), agg_desired);
      a.object["metadata"]["annotations"][kAnnotationRevokedPods] = RevokedHash();
      a.name = a.object["metadata"].value("name", a.name);
      a.starts_job = true;
    }
  } else if (!Terminating(*aggregator)) {
    PodPhase phase = PodPhaseOf(*aggregator);
    if (phase == PodPhase::kFailed) HandleFailedPod(*aggregator, /*aggregator=*/true);
    if (phase == PodPhase::kSucceeded && State() != JobState::kFailed) {
      SetState(JobState::kSucceeded);
      // status.privacy is the reporter's (differential privacy): the aggregator may end the
      // job before its last round rather than exceed targetEpsilon.
      const Json privacy = old_status.value("privacy", Json::object());
      if (privacy.is_object() && privacy.value("budgetExhausted", false)) {
        const std::string done = std::to_string(old_status.value("roundsCompleted", int64_t{0}));
        Condition("PrivacyBudgetExhausted", "True", "TargetEpsilonReached",
                  "another round would take epsilon above spec.privacy.differentialPrivacy.targetEpsilon; "
                  "the aggregator stopped after " +
                      done + " of " + std::to_string(spec->rounds.total) + " rounds (status.epsilonSpent)",
                  "Warning");
        Condition("Succeeded", "True", "PrivacyBudgetExhausted",
                  "the aggregator completed " + done + " of " + std::to_string(spec->rounds.total) +
                      " rounds within the privacy budget",
                  "Normal");
      } else {
        Condition("Succeeded", "True", "JobSucceeded",
                  "the aggregator completed all " + std::to_string(spec->rounds.total) + " rounds", "Normal");
      }
      Condition("Running", "False", "JobSucceeded", "the job finished");
    }
    // Only while the pod could be made again at once: not with the issuer unknown (the
    // template names it) or a name still blocked.
    if (create_pods && Live(phase) &&
        PodTemplateHashOf(*aggregator) != AggregatorPodTemplateHash(job, *spec, agg_desired)) {
      if (CheckpointClaimName(job).empty()) {
        // Without a checkpoint claim a new aggregator would start again from round 0.
        aggregator_kept = true;
      } else {
        ReplaceOutdated(*aggregator, "; the job resumes from its checkpoint");
      }
    }
  }
  const std::string agent_hash = AgentPodTemplateHash(job, *spec, opts.desired);
  // An agent takes the aggregator Service's address from the service environment when it
  // starts: one older than the Service (deleted and made again, under a new address)
  // holds an address nothing answers at.
  std::string service_created;
  if (ObjectPtr svc = o.Find(res::kServices, AggregatorName(job)); svc && !Terminating(*svc)) {
    service_created = (*svc)["metadata"].value("creationTimestamp", "");
  }
  auto older_than_service = [&](const Json& pod) {
    const std::string created = pod["metadata"].value("creationTimestamp", "");
    return !service_created.empty() && !created.empty() && created < service_created;  // RFC 3339, UTC
  };
  // Outdated agents that serve (running and ready) are replaced a share at a time, so a
  // job keeps most of its agents through an operator upgrade or a spec change; outdated
  // agents that do not serve anyway are replaced at once. Unavailable: a selected node
  // whose agent is missing, not ready or going.
  int unavailable = 0;
  for (const auto& node : nodes) {
    auto it = agents.find(node);
    unavailable += it == agents.end() || Terminating(*it->second) ||
                   PodPhaseOf(*it->second) != PodPhase::kRunning || !PodReady(*it->second);
  }
  const int budget = AgentMaxUnavailable(job, static_cast<int>(nodes.size()));
  int agents_kept = 0;
  for (const auto& node : nodes) {
    auto it = agents.find(node);
    if (it == agents.end()) {
      if (!create_pods) continue;
      // Its volumes and claims are above (an earlier wave: a pod is created once they exist).
      Action& a = Add(ActionKind::kCreate, Wave::kPods, res::kPods, AgentPodName(job, node));
      a.object = DesiredAgentPod(job, *spec, node, opts.desired);
      a.starts_job = true;
      continue;
    }
    if (!Terminating(*it->second) && PodPhaseOf(*it->second) == PodPhase::kFailed &&
        State() != JobState::kSucceeded) {
      HandleFailedPod(*it->second, /*aggregator=*/false);
    } else if (create_pods && !Terminating(*it->second) && Live(PodPhaseOf(*it->second)) &&
               State() != JobState::kSucceeded &&
               (PodTemplateHashOf(*it->second) != agent_hash || older_than_service(*it->second))) {
      const bool serves = PodPhaseOf(*it->second) == PodPhase::kRunning && PodReady(*it->second);
      const bool stale_address = PodTemplateHashOf(*it->second) == agent_hash;
      if (serves && unavailable >= budget && !stale_address) {
        ++agents_kept;  // replaced once fewer agents are unavailable
        continue;
      }
      if (serves) ++unavailable;
      ReplaceOutdated(*it->second, "; its agent rejoins the job",
                      stale_address ? "is older than Service " + AggregatorName(job) +
                                          " (made again under a new address, which the agent reads at start)"
                                    : "");
    }
  }
  if (aggregator_kept) {
    Condition("PodsOutdated", "True", "AggregatorKeptWithoutCheckpoint",
              "the aggregator pod was made from an older template (an operator upgrade or a spec change) "
              "and is kept: without spec.aggregator.checkpoint a new one would restart the job from "
              "round 0; delete pod " +
                  AggregatorName(job) + " to replace it anyway",
              "Warning");
  } else if (agents_kept > 0) {
    Condition("PodsOutdated", "True", "AgentsReplacedGradually",
              std::to_string(agents_kept) +
                  " running agent pod(s) made from an older template wait: at most " +
                  std::to_string(budget) + " of " + std::to_string(nodes.size()) +
                  " agents are unavailable at a time (spec.agents.maxUnavailable)",
              "Normal");
  } else if (const Json* c = FindCondition(plan.status["conditions"], "PodsOutdated");
             c && c->value("status", "") == "True") {
    Condition("PodsOutdated", "False", "PodsCurrent", "every pod is made from the current template",
              "Normal");
  }
  // The node volumes of nodes that left stay until the job is deleted: the node's state
  // directory holds the job's data (its feedback log, the globals), and the finalizer
  // removes it through them (a node that returns resumes from it).
  for (const auto& [node, pod] : agents) {
    if (wanted.count(node) || Terminating(*pod) || Cordoned(node)) continue;
    // The node left the selector (or the cluster): its agent goes.
    Action& a = Add(ActionKind::kDelete, Wave::kPods, res::kPods, (*pod)["metadata"].value("name", ""));
    a.on_success.push_back(
        {"Normal", "AgentRemoved", "node " + node + " no longer matches spec.agents.nodeSelector"});
  }

  // Counted from the first pod creation (Apply takes it back when no creation happens).
  if (!plan.status.contains("startTime") &&
      std::any_of(plan.actions.begin(), plan.actions.end(), [](const Action& a) { return a.starts_job; })) {
    plan.status["startTime"] = now_str;
  }

  // Agents and conditions.
  AgentsStatus(nodes, agents);

  if (Finished(State())) return;

  if (waiting.empty() && o.issuer.jwks.empty()) {
    Condition("Created", "False", "IssuerKeysUnavailable",
              "cannot read the cluster's service-account issuer keys, which the aggregator verifies the "
              "agents' tokens with (" +
                  (o.issuer_error.empty() ? std::string("not read yet") : o.issuer_error) +
                  "). The operator needs get on the non-resource URLs /.well-known/openid-configuration and "
                  "/openid/v1/jwks (the chart's ClusterRole grants it), and the API server a "
                  "--service-account-issuer; no pod is created until then",
              "Warning");
    RequeueAfter(std::chrono::seconds(10));
  } else if (waiting.empty()) {
    Condition("Created", "True", "ChildrenCreated",
              "credentials, configuration, services and pods are created", "Normal");
  } else {
    std::vector<std::string> some(waiting.begin(), waiting.end());
    const size_t n = some.size();
    if (some.size() > 5) some.resize(5);
    Condition("Created", "False", "PreviousJobBeingDeleted",
              std::to_string(n) +
                  " object(s) named as this job's children belong to a deleted FederatedTrainingJob of the "
                  "same name (" +
                  Join(some, ", ") + (n > some.size() ? ", ..." : "") +
                  "); waiting for the garbage collector to remove them before creating pods",
              "Normal");
    // Their deletions requeue the job (owner references, the volumes' labels); this is the
    // fallback.
    RequeueAfter(std::chrono::seconds(5));
  }
  bool agg_running = aggregator && PodPhaseOf(*aggregator) == PodPhase::kRunning;
  if (agg_running) {
    SetState(JobState::kRunning);
    Condition("Running", "True", "AggregatorRunning", "the aggregator is running rounds", "Normal");
  } else if (static_cast<int>(nodes.size()) < min_agents && !aggregator) {
    SetState(JobState::kPending);
    Condition("Running", "False", "WaitingForAgents",
              std::to_string(nodes.size()) + " node(s) match spec.agents.nodeSelector, minAgents is " +
                  std::to_string(min_agents));
  } else {
    SetState(JobState::kCreated);
    std::string claim = CheckpointClaimName(job);
    ObjectPtr pvc = claim.empty() ? nullptr : o.Find(res::kPersistentVolumeClaims, claim);
    bool no_class = pvc && (*pvc).value("status", Json::object()).value("phase", "") == "Pending" &&
                    (*pvc)["spec"].value("storageClassName", "").empty() &&
                    (*pvc)["spec"].value("volumeName", "").empty();
    if (no_class) {
      // The aggregator pod cannot be scheduled until its checkpoint claim binds.
      Condition("Running", "False", "CheckpointClaimUnbound",
                "checkpoint claim " + claim +
                    " has no storage class and no volume: the cluster has no default StorageClass. Set "
                    "spec.aggregator.checkpoint.storageClassName (or claimName), create a PersistentVolume "
                    "for it, or set spec.aggregator.checkpoint.enabled: false (an emptyDir: a failed "
                    "aggregator pod then restarts the job from round 0)",
                "Warning");
    } else {
      Condition("Running", "False", "AggregatorStarting", "waiting for the aggregator pod to run");
    }
  }

  // Degraded: a selected node is offline, or an agent used up its restarts.
  std::vector<std::string> not_ready;
  for (const auto& n : o.nodes) {
    std::string name = (*n)["metadata"].value("name", "");
    if (wanted.count(name) && !NodeReady(*n)) not_ready.push_back(name);
  }
  std::sort(not_ready.begin(), not_ready.end());
  const Json* degraded = FindCondition(plan.status["conditions"], "Degraded");
  bool exhausted_before = degraded && degraded->value("reason", "") == "BackoffLimitExceeded" &&
                          degraded->value("status", "") == "True";
  if (!not_ready.empty()) {
    Condition("Degraded", "True", "NodeNotReady",
              "edge node(s) not ready: " + Join(not_ready, ", ") +
                  "; their agents are kept for spec.agents.tolerationSeconds",
              "Warning");
  } else if (!exhausted_before) {
    if (agg_running && static_cast<int>(nodes.size()) < min_agents) {
      Condition(
          "Degraded", "True", "InsufficientAgents",
          std::to_string(nodes.size()) + " node(s) match, fewer than minAgents " + std::to_string(min_agents),
          "Warning");
    } else {
      Condition("Degraded", "False", "AsExpected", "all selected nodes are ready");
    }
  }
  CheckpointCondition();
}

}  // namespace

std::string_view JobStateName(JobState s) {
  switch (s) {
    case JobState::kNone:
      return "";
    case JobState::kPending:
      return "Pending";
    case JobState::kCreated:
      return "Created";
    case JobState::kRunning:
      return "Running";
    case JobState::kSucceeded:
      return "Succeeded";
    case JobState::kFailed:
      return "Failed";
    case JobState::kSuspended:
      return "Suspended";
  }
  return "";
}

JobState ParseJobState(std::string_view s) {
  for (JobState st : {JobState::kPending, JobState::kCreated, JobState::kRunning, JobState::kSucceeded,
                      JobState::kFailed, JobState::kSuspended}) {
    if (JobStateName(st) == s) return st;
  }
  return JobState::kNone;
}

PodPhase PodPhaseOf(const Json& pod) {
  auto st = pod.find("status");
  std::string phase = st == pod.end() || !st->is_object() ? "Pending" : st->value("phase", "Pending");
  if (phase == "Pending") return PodPhase::kPending;
  if (phase == "Running") return PodPhase::kRunning;
  if (phase == "Succeeded") return PodPhase::kSucceeded;
  if (phase == "Failed") return PodPhase::kFailed;
  return PodPhase::kUnknown;
}

bool PodReady(const Json& pod) {
  auto st = pod.find("status");
  if (st == pod.end() || !st->is_object()) return false;
  for (const auto& c : st->value("conditions", Json::array())) {
    if (c.value("type", "") == "Ready") return c.value("status", "") == "True";
  }
  return false;
}

ObjectPtr Observed::Find(const Resource& r, const std::string& obj_name) const {
  auto it = children.find({r.plural, obj_name});
  return it == children.end() ? nullptr : it->second;
}

ObjectPtr Observed::FindForeign(const Resource& r, const std::string& obj_name) const {
  auto it = foreign.find({r.plural, obj_name});
  return it == foreign.end() ? nullptr : it->second;
}

int AgentMaxUnavailable(const Json& job, int nodes) {
  int share = kAgentReplaceBudgetPercent;
  const Json* v = nullptr;
  if (auto spec = job.find("spec"); spec != job.end() && spec->is_object()) {
    if (auto agents = spec->find("agents"); agents != spec->end() && agents->is_object()) {
      if (auto m = agents->find("maxUnavailable"); m != agents->end()) v = &*m;
    }
  }
  if (v && v->is_number_integer())
    return static_cast<int>(std::clamp<int64_t>(v->get<int64_t>(), 1, 1 << 30));
  if (v && v->is_string()) {
    const std::string s = v->get<std::string>();
    int n = 0;
    auto res = std::from_chars(s.data(), s.data() + s.size(), n);
    if (res.ec == std::errc() && res.ptr == s.data() + s.size() - 1 && s.back() == '%' && n >= 1 && n <= 100)
      share = n;
  }
  return std::max(1, static_cast<int>(static_cast<int64_t>(nodes) * share / 100));
}

bool BelongsToAnotherJob(const Json& obj, const std::string& job_uid) {
  if (job_uid.empty() || !obj.is_object()) return false;
  auto meta = obj.find("metadata");
  if (meta == obj.end() || !meta->is_object()) return false;
  if (auto refs = meta->find("ownerReferences"); refs != meta->end() && refs->is_array()) {
    for (const auto& ref : *refs) {
      if (!ref.is_object() || !ref.value("controller", false)) continue;
      if (ref.value("kind", "") != "FederatedTrainingJob") return false;
      const std::string uid = ref.value("uid", "");
      return !uid.empty() && uid != job_uid;
    }
  }
  if (auto ann = meta->find("annotations"); ann != meta->end() && ann->is_object()) {
    const std::string uid = ann->value(kAnnotationJobUid, "");
    return !uid.empty() && uid != job_uid;
  }
  return false;
}

std::string NotTheJobs(const Json& obj, const Json& job) {
  const Json job_meta = job.is_object() ? job.value("metadata", Json::object()) : Json::object();
  const std::string uid = job_meta.value("uid", "");
  if (uid.empty()) return "";
  const Json meta = obj.is_object() ? obj.value("metadata", Json::object()) : Json::object();
  for (const auto& ref : meta.value("ownerReferences", Json::array())) {
    if (!ref.is_object() || !ref.value("controller", false)) continue;
    if (ref.value("uid", "") == uid) return "";
    if (ref.value("kind", "") == "FederatedTrainingJob") {
      return "it belongs to FederatedTrainingJob " + ref.value("name", "") + " (uid " + ref.value("uid", "") +
             ")";
    }
    return "it is controlled by " + ref.value("kind", "") + " " + ref.value("name", "");
  }
  const Json labels = meta.value("labels", Json::object());
  if (obj.value("kind", "") == "PersistentVolume" && labels.is_object()) {
    const std::string owner = meta.value("annotations", Json::object()).value(kAnnotationJobUid, "");
    const bool named = labels.value(kLabelJob, "") == job_meta.value("name", "") &&
                       labels.value(kLabelJobNamespace, "") == job_meta.value("namespace", "");
    if (owner == uid || (owner.empty() && named)) return "";
    if (!owner.empty()) {
      return "it belongs to FederatedTrainingJob " + labels.value(kLabelJob, "") + " (uid " + owner + ")";
    }
  }
  if (DeferredStateCleanup(obj)) {  // a deleted job's record, owned by nothing (desired.h)
    const std::string owner = meta.value("annotations", Json::object()).value(kAnnotationJobUid, "");
    if (owner == uid) return "";
    return "it is the deferred state cleanup of FederatedTrainingJob " + labels.value(kLabelJob, "") +
           " (uid " + owner + ")";
  }
  return "it has no controller owner reference";
}

DeferredCleanupPlan PlanDeferredCleanup(const ObjectPtr& pod, const ObjectPtr& claim, const ObjectPtr& volume,
                                        bool node_ready, bool agent_on_node) {
  DeferredCleanupPlan out;
  auto add = [&](ActionKind kind, const Resource& r, const Json& obj) -> Action& {
    Action a;
    a.kind = kind;
    a.wave = Wave::kPods;
    a.resource = &r;
    a.ns = r.namespaced ? obj["metadata"].value("namespace", "") : "";
    a.name = obj["metadata"].value("name", "");
    if (kind == ActionKind::kDelete) a.del.precondition_uid = obj["metadata"].value("uid", "");
    out.actions.push_back(std::move(a));
    return out.actions.back();
  };
  const bool pod_live = pod && !Terminating(*pod);
  if (pod_live && !DeferredStateCleanup(*pod)) return out;  // not a record (its name reused)
  const Json claim_meta = claim ? (*claim)["metadata"] : Json::object();
  const std::string node = claim_meta.value("annotations", Json::object()).value(kAnnotationNode, "");
  const Json labels =
      pod ? (*pod)["metadata"].value("labels", Json::object()) : claim_meta.value("labels", Json::object());
  const std::string job =
      (pod ? (*pod)["metadata"] : claim_meta).value("namespace", "") + "/" + labels.value(kLabelJob, "");
  PlannedEvent event;
  if (pod_live) {
    const PodPhase phase = PodPhaseOf(*pod);
    if (phase != PodPhase::kSucceeded && phase != PodPhase::kFailed) {
      const Json gates = (*pod)["spec"].value("schedulingGates", Json::array());
      if (gates.empty()) return out;  // lifted: scheduled, running
      if (!node_ready || agent_on_node) {
        // Node events bring the next pass; an agent pod's deletion does not: look again.
        if (node_ready) out.requeue_after = std::chrono::seconds(10);
        return out;
      }
      add(ActionKind::kMergePatch, res::kPods, *pod).object = {{"spec", {{"schedulingGates", nullptr}}}};
      return out;
    }
    if (phase == PodPhase::kSucceeded) {
      const bool foreground =
          (*pod)["metadata"].value("annotations", Json::object()).value(kAnnotationStateCleanupCause, "") ==
          kStateCleanupCauseForeground;
      event = {
          "Normal", "NodeStateRemoved",
          "removed the agent state of the deleted FederatedTrainingJob " + job + " from node " + node +
              (foreground
                   ? ", once the job's deletion was done (a foreground deletion had taken the node's claim)"
                   : ", which was away when the job was deleted")};
    } else {
      const std::string why = PodFailureMessage(*pod);
      event = {"Warning", "NodeStateLeft",
               "the agent state of the deleted FederatedTrainingJob " + job +
                   " could not be removed from node " + node + (why.empty() ? "" : " (" + why + ")") +
                   ": remove it on that node by hand"};
    }
  } else {
    event = {"Warning", "NodeStateLeft",
             "the state-cleanup pod of the deleted FederatedTrainingJob " + job +
                 " was deleted before it finished: its agent state is left on node " + node +
                 "; remove it on that node by hand"};
  }
  out.about = pod ? *pod : (claim ? *claim : Json::object());
  if (claim && !Terminating(*claim)) {
    // The volume object only (Retain: the node's directories stay): it is made for the
    // job's node volumes alone, and leaves once the claim has gone.
    if (volume && !Terminating(*volume) &&
        (*volume)["metadata"].value("labels", Json::object()).value(kLabelJob, "") ==
            labels.value(kLabelJob, ""))
      add(ActionKind::kDelete, res::kPersistentVolumes, *volume);
    add(ActionKind::kDelete, res::kPersistentVolumeClaims, *claim).on_success.push_back(event);
  }
  if (pod_live) add(ActionKind::kDelete, res::kPods, *pod);
  return out;
}

void SetAsideForeignChildren(Observed& o) {
  const std::string uid =
      o.job.is_object() && o.job.contains("metadata") ? o.job["metadata"].value("uid", "") : std::string();
  if (uid.empty()) return;
  // A checkpoint claim the spec names is the user's choice whoever made it (an earlier
  // job's claim, named to resume from its checkpoint): never set aside.
  std::string named_claim;
  if (const Json* spec = o.job.contains("spec") ? &o.job["spec"] : nullptr; spec && spec->is_object()) {
    const Json ckpt = spec->value("aggregator", Json::object()).value("checkpoint", Json::object());
    if (ckpt.is_object()) named_claim = ckpt.value("claimName", "");
  }
  std::vector<ObjectPtr> pods;
  pods.reserve(o.pods.size());
  for (auto& p : o.pods) {
    if (BelongsToAnotherJob(*p, uid)) {
      o.foreign[{res::kPods.plural, (*p)["metadata"].value("name", "")}] = std::move(p);
    } else {
      pods.push_back(std::move(p));
    }
  }
  o.pods = std::move(pods);
  for (auto it = o.children.begin(); it != o.children.end();) {
    const bool named = !named_claim.empty() && it->first.first == res::kPersistentVolumeClaims.plural &&
                       it->first.second == named_claim;
    if (!named && BelongsToAnotherJob(*it->second, uid)) {
      o.foreign[it->first] = std::move(it->second);
      it = o.children.erase(it);
    } else {
      ++it;
    }
  }
}

std::string Action::Describe() const {
  std::string what;
  switch (kind) {
    case ActionKind::kApply:
      what = "apply";
      break;
    case ActionKind::kCreate:
      what = "create";
      break;
    case ActionKind::kDelete:
      what = "delete";
      break;
    case ActionKind::kMergePatch:
      what = "patch";
      break;
    case ActionKind::kSyncCredentials:
      return "sync-credentials " + name;
    case ActionKind::kSyncTrust:
      return "sync-trust " + name;
    case ActionKind::kSyncApiToken:
      return "sync-api-token " + name;
  }
  return what + " " + (resource ? resource->plural : std::string("?")) + "/" + name;
}

namespace {

// What ServingCertStale finds out about a certificate, key and CA apart from the time.
struct ServingCertFacts {
  std::string problem;    // "" when readable, signed by the CA and matching the key
  std::time_t renew = 0;  // pki::RenewalTime, when readable
};

ServingCertFacts CheckServingCert(const Credentials& creds) {
  ServingCertFacts f;
  auto info = pki::ReadCert(creds.tls_crt);
  if (!info.ok()) {
    f.problem = "serving certificate unreadable";
  } else if (!pki::SignedBy(creds.tls_crt, creds.ca_crt)) {
    f.problem = "serving certificate not signed by the job CA";
  } else if (!pki::KeyMatchesCert(creds.tls_crt, creds.tls_key)) {
    f.problem = "serving certificate does not match its key";
  } else {
    f.renew = pki::RenewalTime(*info);
  }
  return f;
}

// CheckServingCert parses two certificates and decodes a private key (a few ms with
// OpenSSL 3), and every pass of every job asked it about the same bytes: ~7% of the
// operator's CPU in a 100-node run. The answer depends on the bytes alone, so it is
// remembered by their digest (a handful per job over its life; the memo is emptied
// past 4,096 entries).
ServingCertFacts CheckServingCertMemo(const Credentials& creds) {
  static std::mutex mu;
  static std::map<std::string, ServingCertFacts> memo;
  std::string bytes;
  bytes.reserve(creds.tls_crt.size() + creds.tls_key.size() + creds.ca_crt.size() + 2);
  bytes.append(creds.tls_crt).append(1, '\0').append(creds.tls_key).append(1, '\0').append(creds.ca_crt);
  const std::string digest = pki::HexSha256(bytes);
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = memo.find(digest);
    if (it != memo.end()) return it->second;
  }
  ServingCertFacts f = CheckServingCert(creds);
  std::lock_guard<std::mutex> lock(mu);
  if (memo.size() >= 4096) memo.clear();
  memo.emplace(digest, f);
  return f;
}

}  // namespace

std::string ServingCertStale(const Credentials& creds, std::time_t now, std::time_t* renew_at) {
  *renew_at = 0;
  if (creds.tls_crt.empty() || creds.tls_key.empty()) return "no serving certificate";
  const ServingCertFacts f = CheckServingCertMemo(creds);
  if (!f.problem.empty()) return f.problem;
  if (now >= f.renew) return "serving certificate due for renewal";
  *renew_at = f.renew;
  return "";
}

std::string RevokedAgentPods(const std::string& current, const std::vector<ObjectPtr>& pods, std::time_t now,
                             int64_t session_grace_s, std::time_t watched_since) {
  std::map<std::string, Json> by_uid;
  Json doc = Json::parse(current, nullptr, /*allow_exceptions=*/false);
  if (doc.is_object() && doc.value("pods", Json()).is_array()) {
    for (const Json& e : doc["pods"]) {
      if (!e.is_object() || !e.value("uid", Json()).is_string() ||
          !e.value("until", Json()).is_number_integer())
        continue;
      const std::string uid = e["uid"];
      if (uid.empty() || e["until"].get<int64_t>() <= static_cast<int64_t>(now)) continue;
      by_uid[uid] = e;
    }
  }
  const int64_t keep_s = kAgentTokenExpirationSeconds + session_grace_s + 60;
  for (const auto& p : pods) {
    const Json& meta = (*p)["metadata"];
    if (meta.value("labels", Json::object()).value(kLabelRole, "") != "agent") continue;
    const std::string uid = meta.value("uid", "");
    if (uid.empty() || by_uid.count(uid)) continue;
    const PodPhase phase = PodPhaseOf(*p);
    std::time_t from = 0;
    if (auto deleted = ParseTime(meta.value("deletionTimestamp", ""))) {
      from = *deleted;
    } else if (phase == PodPhase::kSucceeded || phase == PodPhase::kFailed) {
      from = now;
    } else {
      continue;
    }
    by_uid[uid] = {{"uid", uid},
                   {"name", meta.value("name", "")},
                   {"node", meta.value("annotations", Json::object()).value(kAnnotationNode, "")},
                   {"until", static_cast<int64_t>(from) + keep_s}};
  }
  std::vector<Json> entries;
  for (auto& [uid, e] : by_uid) entries.push_back(std::move(e));
  if (entries.size() > kMaxRevokedAgentPods) {
    // Keep the latest untils (stable: ties by uid).
    std::stable_sort(entries.begin(), entries.end(), [](const Json& a, const Json& b) {
      return a["until"].get<int64_t>() > b["until"].get<int64_t>();
    });
    entries.resize(kMaxRevokedAgentPods);
    std::sort(entries.begin(), entries.end(), [](const Json& a, const Json& b) {
      return a["uid"].get<std::string>() < b["uid"].get<std::string>();
    });
  }
  Json doc_out = {{"pods", entries}};
  if (watched_since <= 0 && doc.is_object() && doc.value("watchedSince", Json()).is_number_integer() &&
      doc.value("livePods", Json()).is_array()) {
    // A pass that knows no watch (ClientCache) keeps what an operator that did wrote.
    doc_out["watchedSince"] = doc["watchedSince"];
    doc_out["livePods"] = doc["livePods"];
  } else if (watched_since > 0) {
    std::set<std::string> live;
    for (const auto& p : pods) {
      const Json& meta = (*p)["metadata"];
      if (meta.value("labels", Json::object()).value(kLabelRole, "") != "agent") continue;
      const std::string uid = meta.value("uid", "");
      if (uid.empty() || meta.contains("deletionTimestamp") || by_uid.count(uid)) continue;
      const PodPhase phase = PodPhaseOf(*p);
      if (phase == PodPhase::kSucceeded || phase == PodPhase::kFailed) continue;
      // Made in the second the watch began or later: its tokens are all issued then or
      // later, which the aggregator does not judge by livePods (iat < watchedSince).
      auto created = ParseTime(meta.value("creationTimestamp", ""));
      if (created && *created >= watched_since) continue;
      live.insert(uid);
    }
    if (live.size() <= kMaxLiveAgentPods) {
      doc_out["watchedSince"] = static_cast<int64_t>(watched_since);
      doc_out["livePods"] = live;
    }
  }
  return doc_out.dump();
}

Plan PlanReconcile(const Observed& observed, const PlanOptions& options) {
  Observed own = observed;  // usually set aside already (JobReconciler::Observe)
  SetAsideForeignChildren(own);
  Planner p(own, options);
  p.Run();
  return std::move(p.plan);
}

}  // namespace fedge::op
