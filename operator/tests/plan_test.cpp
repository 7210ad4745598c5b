// PlanReconcile (plan.h) as a table: each row builds a world, observes it, plans, and
// checks the actions and the status the plan decides -- no client is called by Plan.
// Plus Apply's bounded parallelism and the controller's guard around Reconcile.
#include "fedge/op/plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "fedge/op/controller.h"
#include "fedge/op/fake_kube_client.h"
#include "fedge/op/reconciler.h"
#include "fedge/pki.h"

namespace fedge::op {
namespace {

constexpr std::time_t kNow = 1'800'000'000;

Json Node(const std::string& name, bool edge) {
  Json labels = Json::object();
  if (edge) labels["fedge.io/edge"] = "true";
  return {{"apiVersion", "v1"},
          {"kind", "Node"},
          {"metadata", {{"name", name}, {"labels", labels}}},
          {"status", {{"conditions", Json::array({{{"type", "Ready"}, {"status", "True"}}})}}}};
}

Json Job() {
  return {{"apiVersion", "fedge.io/v1alpha1"},
          {"kind", "FederatedTrainingJob"},
          {"metadata", {{"name", "wn"}, {"namespace", "ml"}}},
          {"spec",
           {{"model", {{"path", "/var/lib/fedge/models/minilm"}, {"labels", {"a", "b"}}}},
            {"data", {{"path", "/var/lib/fedge/data/wordnet"}}},
            {"agents", {{"nodeSelector", {{"fedge.io/edge", "true"}}}}},
            {"rounds", {{"total", 3}}},
            {"runPolicy", {{"backoffLimit", 1}}}}}};
}

// A world in the fake API server; Observe() snapshots it the way the reconciler does.
class World {
 public:
  World() {
    for (const auto& n : {Node("edge-a", true), Node("edge-b", true), Node("core-1", false)})
      EXPECT_TRUE(client_.Create(res::kNodes, "", n).ok());
  }
  void CreateJob(Json job = Job()) { ASSERT_TRUE(client_.Create(res::kJobs, "ml", job).ok()); }
  // One real pass: the children exist afterwards.
  void Reconcile() {
    auto r = reconciler_.Reconcile("ml/wn");
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  void SetPodPhase(const std::string& name, const std::string& phase) {
    Json st = {{"phase", phase}};
    if (phase == "Failed")
      st["containerStatuses"] =
          Json::array({{{"name", "c"}, {"state", {{"terminated", {{"exitCode", 1}}}}}}});
    ASSERT_TRUE(client_.MergePatch(res::kPods, "ml", name, {{"status", st}}, "status").ok());
  }
  Observed Observe() {
    Observed o;
    o.ns = "ml";
    o.name = "wn";
    o.job = *client_.Get(res::kJobs, "ml", "wn");
    o.now = kNow;
    o.issuer = *ReadIssuerKeys(client_);
    o.api_server_endpoints = *ReadApiServerEndpoints(client_);  // as the reconciler reads them
    o.nodes = cache_.List(res::kNodes, "", "", "");
    o.pods = cache_.List(res::kPods, "ml", kLabelJob, "wn");
    for (const Resource* r : {&res::kSecrets, &res::kConfigMaps, &res::kServices, &res::kServiceAccounts,
                              &res::kRoles, &res::kRoleBindings, &res::kPersistentVolumeClaims,
                              &res::kNetworkPolicies, &res::kPersistentVolumes}) {
      for (auto& obj : cache_.List(*r, r->namespaced ? "ml" : "", kLabelJob, "wn"))
        o.children[{r->plural, (*obj)["metadata"].value("name", "")}] = obj;
    }
    return o;
  }

  FakeKubeClient client_;
  ClientCache cache_{&client_};
  FakeClock clock_{kNow};
  EventRecorder events_{&client_, &clock_};
  JobReconciler reconciler_{&client_, &cache_, &events_, ReconcilerOptions{DefaultImages(), &clock_}};
};

std::vector<std::string> Describe(const Plan& p) {
  std::vector<std::string> out;
  for (const auto& a : p.actions) out.push_back(a.Describe());
  return out;
}

bool Has(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// How many of the plan's actions are on resource `r`.
int CountOn(const Plan& p, const Resource& r) {
  return static_cast<int>(
      std::count_if(p.actions.begin(), p.actions.end(), [&](const Action& a) { return a.resource == &r; }));
}

const Action* Find(const Plan& p, const std::string& what) {
  for (const auto& a : p.actions)
    if (a.Describe() == what) return &a;
  return nullptr;
}

// The job's aggregator exits 0: the next pass finds the job Succeeded.
// `name` runs and is ready.
void SetRunningReady(World& w, const std::string& name) {
  Json st = {{"phase", "Running"}, {"conditions", Json::array({{{"type", "Ready"}, {"status", "True"}}})}};
  ASSERT_TRUE(w.client_.MergePatch(res::kPods, "ml", name, {{"status", st}}, "status").ok());
}

// `name` runs (since `started`) and is not ready.
void SetRunningNotReady(World& w, const std::string& name, std::time_t started = kNow - 600) {
  Json st = {{"phase", "Running"},
             {"startTime", FormatTime(started)},
             {"conditions", Json::array({{{"type", "Ready"}, {"status", "False"}}})}};
  ASSERT_TRUE(w.client_.MergePatch(res::kPods, "ml", name, {{"status", st}}, "status").ok());
}

// The job's aggregator exits 0: the next pass finds the job Succeeded; its agents serve.
void Succeed(World& w) {
  w.Reconcile();
  w.SetPodPhase("wn-aggregator", "Succeeded");
  for (const char* n : {"wn-agent-edge-a", "wn-agent-edge-b"}) SetRunningReady(w, n);
  w.Reconcile();
}

// Succeed, then node edge-c joins the selector and the pass makes its agent and the
// final-model pod.
void LateNodeServed(World& w) {
  Succeed(w);
  ASSERT_TRUE(w.client_.Create(res::kNodes, "", Node("edge-c", true)).ok());
  w.Reconcile();
}

// Gives `name` another template's hash (an older operator's).
void Outdate(World& w, const std::string& name) {
  Json stale = {{"metadata", {{"annotations", {{kAnnotationPodTemplateHash, "0123456789abcdef"}}}}}};
  ASSERT_TRUE(w.client_.MergePatch(res::kPods, "ml", name, stale, "").ok());
}

// `name` resolves the aggregator by name, as the agent pods of an operator before session
// 33 did.
void ResolveByName(World& w, const std::string& name) {
  auto pod = w.client_.Get(res::kPods, "ml", name);
  ASSERT_TRUE(pod.ok());
  Json containers = (*pod)["spec"]["containers"];
  for (auto& c : containers) {
    Json& cmd = c["command"];
    for (size_t i = 0; i + 1 < cmd.size(); ++i)
      if (cmd[i] == "--aggregator") cmd[i + 1] = "wn-aggregator.ml.svc:7070";
  }
  ASSERT_TRUE(
      w.client_.MergePatch(res::kPods, "ml", name, {{"spec", {{"containers", containers}}}}, "").ok());
}

// `name` failed: its container started at `started` and ended at `finished`.
void FailPodAt(World& w, const std::string& name, std::time_t started, std::time_t finished) {
  Json st = {{"phase", "Failed"},
             {"startTime", FormatTime(started)},
             {"containerStatuses",
              Json::array(
                  {{{"name", "c"},
                    {"state", {{"terminated", {{"exitCode", 2}, {"finishedAt", FormatTime(finished)}}}}}}})}};
  ASSERT_TRUE(w.client_.MergePatch(res::kPods, "ml", name, {{"status", st}}, "status").ok());
}

// The agent pods are gone (deleted and collected).
bool NodeVolume(const Json& obj) {
  return obj["metadata"].value("labels", Json::object()).value(kLabelRole, "") == "node-volume";
}

// The job being deleted in the foreground: the garbage collector has deleted its claims
// too (each waits for the pods that mount it).
void DeletedInTheForeground(Observed& o) {
  o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow);
  o.job["metadata"]["finalizers"] = Json::array({kFinalizer, "foregroundDeletion"});
  for (auto& [key, obj] : o.children) {
    if (key.first != res::kPersistentVolumeClaims.plural) continue;
    Json copy = *obj;
    copy["metadata"]["deletionTimestamp"] = FormatTime(kNow);
    obj = std::make_shared<const Json>(copy);
  }
}

// ... and the claims have gone since (the pods that mounted them went).
void ClaimsGone(Observed& o) {
  o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow);
  o.job["metadata"]["finalizers"] = Json::array({kFinalizer, "foregroundDeletion"});
  for (auto it = o.children.begin(); it != o.children.end();) {
    if (it->first.first == res::kPersistentVolumeClaims.plural && NodeVolume(*it->second)) {
      it = o.children.erase(it);
    } else {
      ++it;
    }
  }
}

void DeleteAgents(World& w) {
  for (const char* n : {"wn-agent-edge-a", "wn-agent-edge-b"})
    ASSERT_TRUE(w.client_.Delete(res::kPods, "ml", n).ok());
}

void SetNodeNotReady(World& w, const std::string& node) {
  Json st = {{"conditions", Json::array({{{"type", "Ready"}, {"status", "Unknown"}}})}};
  ASSERT_TRUE(w.client_.MergePatch(res::kNodes, "", node, {{"status", st}}, "status").ok());
}

// The state-cleanup pod the finalizer makes for `node`, as if an earlier pass had.
void CreateCleanupPod(World& w, const std::string& node) {
  const Json job = *w.client_.Get(res::kJobs, "ml", "wn");
  ASSERT_TRUE(
      w.client_
          .Create(res::kPods, "ml", DesiredStateCleanupPod(job, OperatorJobSpec(job), node, DesiredOptions{}))
          .ok());
}

struct Row {
  std::string name;
  std::function<void(World&)> setup;     // after CreateJob
  std::function<void(Observed&)> tweak;  // edits to the snapshot (deletionTimestamp...)
  std::vector<std::string> want;         // actions that must be planned
  std::vector<std::string> not_want;     // actions that must not be
  int want_count = -1;                   // exact number of actions (-1: any)
  std::string state;                     // status.state planned
  int restarts = -1;                     // status.restarts planned (-1: absent)
  std::function<void(const Plan&)> more;
};

TEST(PlanTest, Table) {
  const std::vector<Row> rows = {
      {"a new job: every child, pods last; startTime with the first pods",
       nullptr,
       nullptr,
       {"apply federatedtrainingjobs/wn", "sync-credentials wn-credentials", "sync-trust wn-trust",
        "apply serviceaccounts/wn-agent", "sync-api-token wn-inference-token", "create pods/wn-aggregator",
        "create pods/wn-agent-edge-a", "create pods/wn-agent-edge-b"},
       {"create pods/wn-agent-core-1"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         EXPECT_TRUE(p.status.contains("startTime"));
         for (const auto& a : p.actions) {
           if (a.resource == &res::kPods) {
             EXPECT_EQ(a.wave, Wave::kPods) << a.Describe();
           }
           if (a.resource == &res::kPersistentVolumes) {
             EXPECT_EQ(a.wave, Wave::kPerNode) << a.Describe();
           }
         }
         EXPECT_EQ(Find(p, "apply federatedtrainingjobs/wn")->wave, Wave::kJob);
         // Regression (the chart's namespaced RBAC on the real API server): a binding applied
         // beside its Role failed the escalation check with NotFound.
         EXPECT_LT(static_cast<int>(Find(p, "apply roles/wn-aggregator")->wave),
                   static_cast<int>(Find(p, "apply rolebindings/wn-aggregator")->wave));
         // The trust ConfigMap carries the CA the credentials sync makes; pods mount both
         // and name the agents' ServiceAccount (the API server refuses them without it).
         EXPECT_LT(static_cast<int>(Find(p, "sync-credentials wn-credentials")->wave),
                   static_cast<int>(Find(p, "sync-trust wn-trust")->wave));
         EXPECT_LT(static_cast<int>(Find(p, "sync-trust wn-trust")->wave),
                   static_cast<int>(Find(p, "create pods/wn-agent-edge-a")->wave));
         EXPECT_LT(static_cast<int>(Find(p, "apply serviceaccounts/wn-agent")->wave),
                   static_cast<int>(Find(p, "create pods/wn-agent-edge-a")->wave));
         for (const auto& a : p.actions)
           EXPECT_NE(a.resource->plural + a.name, "secretswn-agent-edge-a-credentials");
         EXPECT_TRUE(Find(p, "apply federatedtrainingjobs/wn")->takes_job_version);
       }},
      {"steady state: nothing to write",
       [](World& w) { w.Reconcile(); },
       nullptr,
       {},
       {},
       0,
       "Created",
       -1,
       nullptr},
      {"failed aggregator within backoffLimit: delete it, count the restart, do not recreate yet",
       [](World& w) {
         w.Reconcile();
         w.SetPodPhase("wn-aggregator", "Failed");
       },
       nullptr,
       {"delete pods/wn-aggregator"},
       {"create pods/wn-aggregator"},
       1,
       "Created",
       1,
       [](const Plan& p) {
         const Action* del = Find(p, "delete pods/wn-aggregator");
         EXPECT_TRUE(del->counts_restart);
         EXPECT_FALSE(del->del.precondition_uid.empty()) << "only that incarnation";
         ASSERT_EQ(del->on_success.size(), 1u);
         EXPECT_EQ(del->on_success[0].reason, "PodRestarted");
       }},
      {"lost restart: a failed agent and a missing one -> delete + create, restart counted in the plan",
       [](World& w) {
         w.Reconcile();
         w.SetPodPhase("wn-agent-edge-a", "Failed");
         ASSERT_TRUE(w.client_.Delete(res::kPods, "ml", "wn-agent-edge-b", {}).ok());
       },
       nullptr,
       // sync-trust: the failed agent's tokens are revoked (RevokedAgentPods), and the
       // aggregator pod's annotation changes so that its kubelet refreshes the mounted list.
       {"delete pods/wn-agent-edge-a", "create pods/wn-agent-edge-b", "sync-trust wn-trust",
        "patch pods/wn-aggregator"},
       {},
       4,
       "Created",
       1,
       [](const Plan& p) {
         EXPECT_TRUE(Find(p, "delete pods/wn-agent-edge-a")->counts_restart);
         EXPECT_TRUE(Find(p, "create pods/wn-agent-edge-b")->starts_job);
         const Action* patch = Find(p, "patch pods/wn-aggregator");
         EXPECT_GT(static_cast<int>(patch->wave), static_cast<int>(Find(p, "sync-trust wn-trust")->wave))
             << "after the list is written";
         EXPECT_EQ(patch->object["metadata"]["annotations"][kAnnotationRevokedPods].get<std::string>().size(),
                   16u);
       }},
      {"failed aggregator at backoffLimit: kept, the job fails",
       [](World& w) {
         w.Reconcile();
         Json job = *w.client_.Get(res::kJobs, "ml", "wn");
         job["status"]["restarts"] = 1;
         ASSERT_TRUE(w.client_.Update(res::kJobs, "ml", job, "status").ok());
         w.SetPodPhase("wn-aggregator", "Failed");
       },
       nullptr,
       {},
       {"delete pods/wn-aggregator"},
       0,
       "Failed",
       1,
       [](const Plan& p) {
         const Json* failed = FindCondition(p.status["conditions"], "Failed");
         ASSERT_NE(failed, nullptr);
         EXPECT_EQ(failed->value("reason", ""), "BackoffLimitExceeded");
         EXPECT_TRUE(p.status.contains("completionTime"));
         ASSERT_TRUE(p.requeue_after.has_value());
         EXPECT_EQ(p.requeue_after->count(), 1) << "cleanPodPolicy and TTL on the next pass";
       }},
      {"suspended: every pod goes, nothing is created",
       [](World& w) {
         w.Reconcile();
         Json job = *w.client_.Get(res::kJobs, "ml", "wn");
         job["spec"]["runPolicy"]["suspend"] = true;
         ASSERT_TRUE(w.client_.Update(res::kJobs, "ml", job).ok());
       },
       nullptr,
       {"delete pods/wn-aggregator", "delete pods/wn-agent-edge-a", "delete pods/wn-agent-edge-b"},
       {},
       3,
       "Suspended",
       -1,
       nullptr},
      {"invalid spec: a condition, no children",
       [](World& w) {
         Json job = *w.client_.Get(res::kJobs, "ml", "wn");
         job["spec"]["rounds"]["quorum"] = 3;  // above the agents it may wait for
         ASSERT_TRUE(w.client_.Update(res::kJobs, "ml", job).ok());
       },
       nullptr,
       {"apply federatedtrainingjobs/wn"},
       {},
       1,
       "Failed",
       -1,
       [](const Plan& p) {
         EXPECT_EQ(FindCondition(p.status["conditions"], "Failed")->value("reason", ""), "InvalidSpec");
         ASSERT_FALSE(p.events.empty());
         EXPECT_EQ(p.events[0].reason, "InvalidSpec");
       }},
      {"a node leaves the selector: its agent goes, nothing of the job's credentials changes",
       [](World& w) {
         w.Reconcile();
         Json node = *w.client_.Get(res::kNodes, "", "edge-b");
         node["metadata"]["labels"].erase("fedge.io/edge");
         ASSERT_TRUE(w.client_.Update(res::kNodes, "", node).ok());
       },
       nullptr,
       {"delete pods/wn-agent-edge-b"},
       {"create pods/wn-agent-edge-a", "sync-credentials wn-credentials", "sync-trust wn-trust"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         const Action* del = Find(p, "delete pods/wn-agent-edge-b");
         ASSERT_EQ(del->on_success.size(), 1u);
         EXPECT_EQ(del->on_success[0].reason, "AgentRemoved");
       }},
      {"a node cordoned during the job keeps its agent and volumes (as a DaemonSet's pod); a new node "
       "cordoned before its agent gets none",
       [](World& w) {
         w.Reconcile();
         Json cordon = {{"spec", {{"unschedulable", true}}}};
         ASSERT_TRUE(w.client_.MergePatch(res::kNodes, "", "edge-b", cordon, "").ok());
         Json edge_c = Node("edge-c", true);
         edge_c["spec"] = cordon["spec"];
         ASSERT_TRUE(w.client_.Create(res::kNodes, "", edge_c).ok());
       },
       nullptr,
       {},
       {"delete pods/wn-agent-edge-b", "create pods/wn-agent-edge-c"},
       0,
       "Created",
       -1,
       nullptr},
      {"job being deleted: pods go first; the node state waits for the agents to be gone",
       [](World& w) { w.Reconcile(); },
       [](Observed& o) { o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow); },
       {"delete pods/wn-aggregator", "delete pods/wn-agent-edge-a", "delete pods/wn-agent-edge-b"},
       {"create pods/wn-aggregator", "patch federatedtrainingjobs/wn", "create pods/wn-state-cleanup-edge-a"},
       3,
       "Created",
       -1,
       [](const Plan& p) {
         EXPECT_FALSE(p.write_status);
         ASSERT_TRUE(p.requeue_after.has_value());
         EXPECT_EQ(p.requeue_after->count(), 5);
       }},
      {"job being deleted, agents gone: a state-cleanup pod on each node that trained, the job held",
       [](World& w) {
         w.Reconcile();
         DeleteAgents(w);
       },
       [](Observed& o) { o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow); },
       {"delete pods/wn-aggregator", "create pods/wn-state-cleanup-edge-a",
        "create pods/wn-state-cleanup-edge-b"},
       {"patch federatedtrainingjobs/wn", "create pods/wn-state-cleanup-core-1"},
       3,
       "Created",
       -1,
       [](const Plan& p) {
         const Action* a = Find(p, "create pods/wn-state-cleanup-edge-a");
         EXPECT_EQ(a->wave, Wave::kPods);
         const Json& pod = a->object;
         EXPECT_EQ(pod["metadata"]["labels"][kLabelRole], kRoleStateCleanup);
         const Json& spec = pod["spec"];
         const Json& c = spec["containers"][0];
         EXPECT_EQ(c["command"], Json({"fedge-agent", "--remove-state-dir", kStateRootMountPath, "ml/wn"}));
         EXPECT_EQ(c["securityContext"]["runAsNonRoot"], true);
         EXPECT_EQ(c["securityContext"]["readOnlyRootFilesystem"], true);
         EXPECT_EQ(c["securityContext"]["capabilities"]["drop"], Json({"ALL"}));
         EXPECT_EQ(spec["automountServiceAccountToken"], false);
         EXPECT_EQ(spec["restartPolicy"], "Never");
         EXPECT_EQ(spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                       ["nodeSelectorTerms"][0]["matchFields"][0]["values"],
                   Json({"edge-a"}));
         // Only the state root, mounted where the init container mounts it, through the
         // agent's own node-volume claim (the one whose volume holds the state).
         ASSERT_EQ(c["volumeMounts"][0]["mountPath"], kStateRootMountPath);
         EXPECT_EQ(c["volumeMounts"][0]["subPath"], "state");
         const Json agent = DesiredAgentPod(Job(), "edge-a", DesiredOptions{});
         std::string agent_claim;
         for (const auto& v : agent["spec"]["volumes"])
           if (v.contains("persistentVolumeClaim")) agent_claim = v["persistentVolumeClaim"]["claimName"];
         EXPECT_EQ(spec["volumes"][0]["persistentVolumeClaim"]["claimName"], agent_claim);
         EXPECT_EQ(spec["volumes"].size(), 2u) << "the state root and /tmp, nothing else";
         ASSERT_TRUE(p.requeue_after.has_value());
         EXPECT_EQ(p.requeue_after->count(), 5);
       }},
      {"job being deleted, every node's state removed: node volumes go, then the finalizer",
       [](World& w) {
         w.Reconcile();
         DeleteAgents(w);
         for (const char* node : {"edge-a", "edge-b"}) {
           CreateCleanupPod(w, node);
           w.SetPodPhase(std::string("wn-state-cleanup-") + node, "Succeeded");
         }
       },
       [](Observed& o) { o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow); },
       {"patch federatedtrainingjobs/wn", "delete pods/wn-aggregator"},
       {"create pods/wn-state-cleanup-edge-a", "delete pods/wn-state-cleanup-edge-a"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         EXPECT_FALSE(p.write_status);
         const Action* fin = Find(p, "patch federatedtrainingjobs/wn");
         EXPECT_EQ(fin->wave, Wave::kAfterStatus);
         ASSERT_EQ(fin->on_success.size(), 1u);
         EXPECT_EQ(fin->on_success[0].reason, "NodeStateRemoved");
         EXPECT_NE(fin->on_success[0].message.find("from 2 node(s)"), std::string::npos);
         int pvs = 0;
         for (const auto& a : p.actions) pvs += a.resource == &res::kPersistentVolumes;
         EXPECT_EQ(pvs, 2) << "1 node volume (model, data and state) x 2 nodes";
       }},
      {"a cleanup failed and another is not done by the deadline: the job goes, the event names both",
       [](World& w) {
         w.Reconcile();
         DeleteAgents(w);
         CreateCleanupPod(w, "edge-a");
         CreateCleanupPod(w, "edge-b");
         Json st = {
             {"phase", "Failed"},
             {"containerStatuses",
              Json::array({{{"name", "state-cleanup"},
                            {"state",
                             {{"terminated",
                               {{"exitCode", 1}, {"message", "PERMISSION_DENIED: cannot remove x\n"}}}}}}})}};
         ASSERT_TRUE(
             w.client_.MergePatch(res::kPods, "ml", "wn-state-cleanup-edge-a", {{"status", st}}, "status")
                 .ok());
       },
       [](Observed& o) {
         o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow - kNodeStateCleanupTimeoutSeconds);
       },
       {"patch federatedtrainingjobs/wn"},
       {"create pods/wn-state-cleanup-edge-a", "create pods/wn-state-cleanup-edge-b"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         const Action* fin = Find(p, "patch federatedtrainingjobs/wn");
         ASSERT_EQ(fin->on_success.size(), 1u) << "nothing removed: no NodeStateRemoved";
         EXPECT_EQ(fin->on_success[0].type, "Warning");
         EXPECT_EQ(fin->on_success[0].reason, "NodeStateLeft");
         const std::string& m = fin->on_success[0].message;
         EXPECT_NE(m.find("edge-a (the cleanup pod failed: PERMISSION_DENIED: cannot remove x)"),
                   std::string::npos)
             << m;
         EXPECT_NE(m.find("edge-b (not done 180 s after the deletion"), std::string::npos) << m;
       }},
      {"job being deleted with a node not Ready: its cleanup deferred (gated, owned by nothing, the claim "
       "handed to it), the job held only for the cleanup that can run",
       [](World& w) {
         w.Reconcile();
         DeleteAgents(w);
         SetNodeNotReady(w, "edge-b");
       },
       [](Observed& o) { o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow); },
       {"create pods/wn-state-cleanup-edge-a", "create pods/wn-state-cleanup-edge-b"},
       {"patch federatedtrainingjobs/wn"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         const Json& now = Find(p, "create pods/wn-state-cleanup-edge-a")->object;
         EXPECT_TRUE(now["metadata"].contains("ownerReferences"));
         EXPECT_FALSE(now["spec"].contains("schedulingGates")) << "edge-a is Ready: its cleanup runs now";
         const Action* later = Find(p, "create pods/wn-state-cleanup-edge-b");
         const Json& pod = later->object;
         EXPECT_EQ(later->wave, Wave::kPods);
         EXPECT_FALSE(pod["metadata"].contains("ownerReferences")) << "it must outlive the job";
         EXPECT_EQ(pod["metadata"]["labels"][kLabelStateCleanup], kStateCleanupDeferred);
         EXPECT_EQ(pod["metadata"]["labels"][kLabelRole], kRoleStateCleanup);
         EXPECT_FALSE(pod["metadata"]["annotations"].value(kAnnotationJobUid, "").empty());
         EXPECT_EQ(pod["spec"]["schedulingGates"], Json::array({{{"name", kStateCleanupGate}}}));
         EXPECT_EQ(pod["spec"]["containers"][0]["command"],
                   Json({"fedge-agent", "--remove-state-dir", kStateRootMountPath, "ml/wn"}));
         int claims = 0;
         for (const auto& a : p.actions) {
           if (a.resource != &res::kPersistentVolumeClaims) continue;
           ++claims;
           EXPECT_EQ(a.kind, ActionKind::kMergePatch);
           EXPECT_EQ(a.name, pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]);
           EXPECT_TRUE(a.object["metadata"]["ownerReferences"].is_null()) << a.object.dump();
           EXPECT_EQ(a.object["metadata"]["annotations"][kAnnotationStateCleanupPod],
                     "wn-state-cleanup-edge-b");
           EXPECT_EQ(a.object["metadata"]["labels"][kLabelStateCleanup], kStateCleanupDeferred);
         }
         EXPECT_EQ(claims, 1) << "only edge-b's claim is handed over";
       }},
      {"job being deleted, its nodes gone or not Ready: cleanups deferred at once, the job not held for "
       "them, "
       "their volumes kept",
       [](World& w) {
         w.Reconcile();
         SetNodeNotReady(w, "edge-b");  // its agent pod stays Terminating: no kubelet confirms
       },
       [](Observed& o) {
         o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow);
         o.nodes.erase(
             std::remove_if(o.nodes.begin(), o.nodes.end(),
                            [](const ObjectPtr& n) { return (*n)["metadata"]["name"] == "edge-a"; }),
             o.nodes.end());
       },
       {"patch federatedtrainingjobs/wn", "create pods/wn-state-cleanup-edge-a",
        "create pods/wn-state-cleanup-edge-b"},
       {},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         EXPECT_FALSE(p.requeue_after.has_value());
         const Action* fin = Find(p, "patch federatedtrainingjobs/wn");
         ASSERT_EQ(fin->on_success.size(), 1u) << "nothing left, nothing removed yet";
         EXPECT_EQ(fin->on_success[0].reason, "NodeStateRemovalDeferred");
         EXPECT_EQ(fin->on_success[0].type, "Normal");
         const std::string& m = fin->on_success[0].message;
         EXPECT_NE(m.find("edge-a (the node is no longer in the cluster); edge-b (the node is not Ready) is "
                          "removed when the node is back"),
                   std::string::npos)
             << m;
         for (const auto& a : p.actions)
           if (a.resource == &res::kPersistentVolumeClaims) EXPECT_LT(a.wave, fin->wave);
         EXPECT_EQ(CountOn(p, res::kPersistentVolumeClaims), 2);
         EXPECT_EQ(CountOn(p, res::kPersistentVolumes), 0) << "the deferred cleanups mount them later";
         for (const char* n : {"create pods/wn-state-cleanup-edge-a", "create pods/wn-state-cleanup-edge-b"})
           EXPECT_TRUE(Find(p, n)->object["spec"].contains("schedulingGates")) << n;
       }},
      {"a deferred cleanup made by an earlier pass whose finalizer patch failed: only the claim is handed "
       "over again, then the job goes",
       [](World& w) {
         w.Reconcile();
         SetNodeNotReady(w, "edge-b");
         DeleteAgents(w);
         const Json job = *w.client_.Get(res::kJobs, "ml", "wn");
         ASSERT_TRUE(w.client_
                         .Create(res::kPods, "ml",
                                 DesiredDeferredStateCleanupPod(job, OperatorJobSpec(job), "edge-b",
                                                                DesiredOptions{}))
                         .ok());
         CreateCleanupPod(w, "edge-a");
         w.SetPodPhase("wn-state-cleanup-edge-a", "Succeeded");
       },
       [](Observed& o) { o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow); },
       {"patch federatedtrainingjobs/wn"},
       {"create pods/wn-state-cleanup-edge-a", "create pods/wn-state-cleanup-edge-b",
        "patch pods/wn-state-cleanup-edge-b"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         EXPECT_EQ(CountOn(p, res::kPersistentVolumeClaims), 1);
         EXPECT_EQ(CountOn(p, res::kPersistentVolumes), 1)
             << "edge-a's volume goes, edge-b's stays with its deferred cleanup";
         const auto& ev = Find(p, "patch federatedtrainingjobs/wn")->on_success;
         ASSERT_EQ(ev.size(), 2u);
         EXPECT_EQ(ev[0].reason, "NodeStateRemovalDeferred");
         EXPECT_EQ(ev[1].reason, "NodeStateRemoved");
       }},
      {"a foreground deletion took the claim of a node that is away (it goes only once the node is back, "
       "after the job): the record gets a claim and a volume of its own for the node's directory",
       [](World& w) {
         w.Reconcile();
         DeleteAgents(w);
         SetNodeNotReady(w, "edge-a");
         SetNodeNotReady(w, "edge-b");
       },
       DeletedInTheForeground,
       {"patch federatedtrainingjobs/wn", "create pods/wn-state-cleanup-edge-a",
        "create pods/wn-state-cleanup-edge-b"},
       {},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         for (const std::string node : {"edge-a", "edge-b"}) {
           const Json* pv = nullptr;
           const Json* claim = nullptr;
           bool old_pv_deleted = false;
           for (const auto& a : p.actions) {
             if (a.kind == ActionKind::kCreate && a.name.rfind("fedge-ml-wn-record-" + node + "-", 0) == 0)
               pv = &a.object;
             if (a.kind == ActionKind::kCreate && a.name.rfind("wn-record-" + node + "-", 0) == 0)
               claim = &a.object;
             if (a.kind == ActionKind::kDelete && a.name.rfind("fedge-ml-wn-node-" + node + "-", 0) == 0)
               old_pv_deleted = true;
           }
           ASSERT_NE(pv, nullptr) << node;
           ASSERT_NE(claim, nullptr) << node;
           EXPECT_TRUE(old_pv_deleted) << node << ": the job's volume goes with its claim, as every other";
           const Json& pod = Find(p, "create pods/wn-state-cleanup-" + node)->object;
           const std::string claim_name = (*claim)["metadata"]["name"];
           const std::string pv_name = (*pv)["metadata"]["name"];
           EXPECT_EQ(pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], claim_name);
           EXPECT_EQ(pod["spec"]["schedulingGates"], Json::array({{{"name", kStateCleanupGate}}}));
           EXPECT_FALSE(pod["metadata"].contains("ownerReferences"));
           EXPECT_EQ(pod["metadata"]["annotations"][kAnnotationStateCleanupCause],
                     kStateCleanupCauseForeground);
           EXPECT_FALSE((*claim)["metadata"].contains("ownerReferences"));
           EXPECT_EQ((*claim)["metadata"]["labels"][kLabelStateCleanup], kStateCleanupDeferred);
           EXPECT_EQ((*claim)["metadata"]["annotations"][kAnnotationStateCleanupPod],
                     "wn-state-cleanup-" + node);
           EXPECT_EQ((*claim)["spec"]["volumeName"], pv_name);
           EXPECT_EQ((*pv)["spec"]["claimRef"], Json({{"namespace", "ml"}, {"name", claim_name}}));
           EXPECT_EQ((*pv)["spec"]["local"]["path"], "/var/lib/fedge") << "the job's volume's directory";
           EXPECT_EQ((*pv)["spec"]["persistentVolumeReclaimPolicy"], "Retain");
           EXPECT_EQ((*pv)["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
                          ["key"],
                     "kubernetes.io/hostname");
           EXPECT_EQ((*pv)["metadata"]["labels"][kLabelStateCleanup], kStateCleanupDeferred);
           EXPECT_EQ((*pv)["metadata"]["labels"][kLabelJob], "wn")
               << "PlanDeferredCleanup deletes it at the end";
         }
         const auto& ev = Find(p, "patch federatedtrainingjobs/wn")->on_success;
         ASSERT_EQ(ev.size(), 1u);
         EXPECT_EQ(ev[0].reason, "NodeStateRemovalDeferred");
         EXPECT_NE(ev[0].message.find(
                       "edge-b (the node is not Ready; a foreground deletion took its claim, the record "
                       "has its own)"),
                   std::string::npos)
             << ev[0].message;
       }},
      {"a record of its own made while the node was away is kept as it is, back or not, its volume not "
       "deleted with the job's nor the job's volume taken again",
       [](World& w) {
         w.Reconcile();
         DeleteAgents(w);
         const Json job = *w.client_.Get(res::kJobs, "ml", "wn");
         const JobSpec spec = OperatorJobSpec(job);
         const auto roots = AgentNodeVolumeRoots(spec, DesiredOptions{});
         const NodeVolumeRoot& root = *StateVolumeRoot(roots);
         const std::string pod = StateCleanupPodName(job, "edge-a");
         auto job_pv =
             w.client_.Get(res::kPersistentVolumes, "", NodePersistentVolumeName(job, "edge-a", root));
         ASSERT_TRUE(job_pv.ok());
         ASSERT_TRUE(
             w.client_.Create(res::kPersistentVolumes, "", StateRecordVolume(job, *job_pv, "edge-a", root))
                 .ok());
         ASSERT_TRUE(w.client_
                         .Create(res::kPersistentVolumeClaims, "ml",
                                 DesiredOwnStateRecordClaim(job, "edge-a", root, pod))
                         .ok());
         ASSERT_TRUE(w.client_
                         .Create(res::kPods, "ml",
                                 DesiredDeferredStateCleanupPod(job, spec, "edge-a", DesiredOptions{},
                                                                StateRecordClaimName(job, "edge-a", root)))
                         .ok());
         SetNodeNotReady(w, "edge-b");  // gets its record now (above); edge-a's is kept
         // edge-a is back (Ready), and its old claim already gone: its volume Released.
         ASSERT_TRUE(
             w.client_.Delete(res::kPersistentVolumeClaims, "ml", NodeVolumeClaimName(job, "edge-a", root))
                 .ok());
         Json released = {{"spec", {{"claimRef", {{"uid", "old-claim-uid"}}}}}};
         ASSERT_TRUE(w.client_
                         .MergePatch(res::kPersistentVolumes, "",
                                     NodePersistentVolumeName(job, "edge-a", root), released, "")
                         .ok());
       },
       [](Observed& o) {
         o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow);
         for (auto& [key, obj] : o.children) {  // the collector takes the job's claims, not the record's
           if (key.first != res::kPersistentVolumeClaims.plural || DeferredStateCleanup(*obj)) continue;
           Json copy = *obj;
           copy["metadata"]["deletionTimestamp"] = FormatTime(kNow);
           obj = std::make_shared<const Json>(copy);
         }
       },
       {"patch federatedtrainingjobs/wn"},
       {"create pods/wn-state-cleanup-edge-a"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         for (const auto& a : p.actions) {
           EXPECT_FALSE(a.resource == &res::kPersistentVolumes && a.kind == ActionKind::kDelete &&
                        a.name.rfind("fedge-ml-wn-record-edge-a-", 0) == 0)
               << "the record's own volume goes with the record";
           EXPECT_FALSE(a.resource == &res::kPersistentVolumeClaims && a.kind == ActionKind::kCreate &&
                        a.name.rfind("wn-node-edge-a", 0) == 0)
               << "the job's volume of edge-a taken again beside the record: " << a.Describe();
           EXPECT_FALSE(a.resource == &res::kPersistentVolumes && a.kind == ActionKind::kMergePatch)
               << a.Describe();
         }
         bool job_pv_deleted = false;
         for (const auto& a : p.actions)
           job_pv_deleted = job_pv_deleted || (a.kind == ActionKind::kDelete &&
                                               a.name.rfind("fedge-ml-wn-node-edge-a-", 0) == 0);
         EXPECT_TRUE(job_pv_deleted);
       }},
      {"a record made on the node's claim just before the collector took it can never start: it is deleted "
       "as observed and the job waits to make it again with a claim of its own",
       [](World& w) {
         w.Reconcile();
         DeleteAgents(w);
         SetNodeNotReady(w, "edge-a");
         SetNodeNotReady(w, "edge-b");
         const Json job = *w.client_.Get(res::kJobs, "ml", "wn");
         // edge-b's record as the away-node path makes it: the node's claim taken, the pod
         // gated on it; the collector's delete of the claim landed just after.
         ASSERT_TRUE(w.client_
                         .Create(res::kPods, "ml",
                                 DesiredDeferredStateCleanupPod(job, OperatorJobSpec(job), "edge-b",
                                                                DesiredOptions{}))
                         .ok());
         const auto roots = AgentNodeVolumeRoots(OperatorJobSpec(job), DesiredOptions{});
         ASSERT_TRUE(w.client_
                         .MergePatch(res::kPersistentVolumeClaims, "ml",
                                     NodeVolumeClaimName(job, "edge-b", *StateVolumeRoot(roots)),
                                     DeferStateClaimPatch(job, StateCleanupPodName(job, "edge-b")))
                         .ok());
       },
       DeletedInTheForeground,
       {"delete pods/wn-state-cleanup-edge-b", "create pods/wn-state-cleanup-edge-a"},
       {"patch federatedtrainingjobs/wn", "create pods/wn-state-cleanup-edge-b"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         const Action* del = Find(p, "delete pods/wn-state-cleanup-edge-b");
         EXPECT_FALSE(del->del.precondition_uid.empty()) << "the pod as observed, not one made since";
         for (const auto& a : p.actions)
           EXPECT_FALSE(a.kind == ActionKind::kCreate && a.name.rfind("wn-record-edge-b-", 0) == 0)
               << "its own claim comes with the pod, in a later pass: " << a.Describe();
         EXPECT_TRUE(p.requeue_after.has_value());
       }},
      {"a foreground deletion's claims still going on Ready nodes (their agents' pods not gone yet): the job "
       "waits for them, no cleanup pod is made for a claim that cannot be mounted",
       [](World& w) {
         w.Reconcile();
         DeleteAgents(w);
       },
       DeletedInTheForeground,
       {"delete pods/wn-aggregator"},
       {"patch federatedtrainingjobs/wn", "create pods/wn-state-cleanup-edge-a",
        "create pods/wn-state-cleanup-edge-b"},
       1,
       "Created",
       -1,
       [](const Plan& p) {
         ASSERT_TRUE(p.requeue_after.has_value());
         EXPECT_LE(p.requeue_after->count(), 5);
       }},
      {"a foreground deletion the collector has not got to the claims in yet, the agents gone: no cleanup "
       "pod "
       "the job owns (the collector would delete it mid-removal), the job waits for the claims to go",
       [](World& w) {
         w.Reconcile();
         DeleteAgents(w);
       },
       [](Observed& o) {
         o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow);
         o.job["metadata"]["finalizers"] = Json::array({kFinalizer, "foregroundDeletion"});
       },
       {},
       {"patch federatedtrainingjobs/wn", "create pods/wn-state-cleanup-edge-a",
        "create pods/wn-state-cleanup-edge-b"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         ASSERT_TRUE(p.requeue_after.has_value());
         EXPECT_LE(p.requeue_after->count(), 5);
         for (const auto& a : p.actions)
           EXPECT_FALSE(a.kind == ActionKind::kCreate && a.resource == &res::kPods) << a.Describe();
       }},
      {"claims a foreground deletion took are gone: each state volume they were bound to is freed for a new "
       "claim of the same name, owned by nothing, with a gated cleanup pod (the record of a node that was "
       "away); the job goes",
       [](World& w) {
         w.Reconcile();
         DeleteAgents(w);
       },
       [](Observed& o) {
         ClaimsGone(o);
         for (auto& [key, obj] : o.children) {
           if (key.first != res::kPersistentVolumes.plural) continue;
           // One Released, one still Bound: the PersistentVolume controller has not seen its
           // claim go yet (the uid in its claimRef says it was bound all the same).
           Json copy = *obj;
           copy["spec"]["claimRef"]["uid"] = "old-claim-uid";
           copy["status"] = {
               {"phase", key.second.find("edge-a") != std::string::npos ? "Released" : "Bound"}};
           obj = std::make_shared<const Json>(copy);
         }
       },
       {"create pods/wn-state-cleanup-edge-a", "create pods/wn-state-cleanup-edge-b",
        "patch federatedtrainingjobs/wn"},
       {},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         EXPECT_EQ(CountOn(p, res::kPersistentVolumeClaims), 2);
         int freed = 0;
         for (const auto& a : p.actions) {
           if (a.resource == &res::kPersistentVolumes) {
             ASSERT_EQ(a.kind, ActionKind::kMergePatch) << a.Describe() << ": the state volumes stay";
             EXPECT_TRUE(a.object["spec"]["claimRef"]["uid"].is_null());
             EXPECT_EQ(a.object["metadata"]["annotations"][kAnnotationStateCleanupCause],
                       kStateCleanupCauseForeground);
             ++freed;
           }
           if (a.resource == &res::kPersistentVolumeClaims) {
             ASSERT_EQ(a.kind, ActionKind::kCreate);
             EXPECT_FALSE(a.object["metadata"].contains("ownerReferences")) << a.object.dump();
             EXPECT_TRUE(DeferredStateCleanup(a.object));
             EXPECT_EQ(a.object["metadata"]["annotations"]
                           .value(kAnnotationStateCleanupPod, "")
                           .rfind("wn-state-cleanup-edge-", 0),
                       0u);
             EXPECT_FALSE(a.object["spec"].value("volumeName", "").empty());
           }
           if (a.Describe().rfind("create pods/wn-state-cleanup-", 0) == 0) {
             EXPECT_FALSE(a.object["metadata"].contains("ownerReferences"));
             EXPECT_EQ(a.object["spec"]["schedulingGates"][0]["name"], kStateCleanupGate);
             EXPECT_EQ(a.object["metadata"]["annotations"][kAnnotationStateCleanupCause],
                       kStateCleanupCauseForeground);
           }
         }
         EXPECT_EQ(freed, 2);
         const auto& ev = Find(p, "patch federatedtrainingjobs/wn")->on_success;
         ASSERT_EQ(ev.size(), 1u);
         EXPECT_EQ(ev[0].reason, "NodeStateRemovalDeferred");
         EXPECT_NE(
             ev[0].message.find("on edge-a, edge-b is removed once the job has gone: a foreground deletion"),
             std::string::npos)
             << ev[0].message;
       }},
      {"a record's claim made by an earlier pass, its pod not yet: the pod is made as the record's (gated, "
       "owned "
       "by nothing, the cause copied), never as one the job owns, and the volume is not freed again",
       [](World& w) {
         w.Reconcile();
         DeleteAgents(w);
       },
       [](Observed& o) {
         o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow);
         for (auto& [key, obj] : o.children) {
           Json copy = *obj;
           if (key.first == res::kPersistentVolumeClaims.plural && NodeVolume(*obj)) {
             const std::string node = copy["metadata"]["annotations"][kAnnotationNode];
             copy["metadata"].merge_patch(
                 DeferStateClaimPatch(o.job, "wn-state-cleanup-" + node)["metadata"]);
             copy["metadata"]["annotations"][kAnnotationStateCleanupCause] = kStateCleanupCauseForeground;
           } else if (key.first == res::kPersistentVolumes.plural) {
             copy["metadata"]["annotations"][kAnnotationStateCleanupCause] = kStateCleanupCauseForeground;
           }
           obj = std::make_shared<const Json>(copy);
         }
       },
       {"create pods/wn-state-cleanup-edge-a", "create pods/wn-state-cleanup-edge-b",
        "patch federatedtrainingjobs/wn"},
       {},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         for (const auto& a : p.actions)
           EXPECT_NE(a.resource, &res::kPersistentVolumes)
               << a.Describe() << ": the volumes stay as they are";
         for (const char* pod :
              {"create pods/wn-state-cleanup-edge-a", "create pods/wn-state-cleanup-edge-b"}) {
           const Json& obj = Find(p, pod)->object;
           EXPECT_TRUE(DeferredStateCleanup(obj)) << pod;
           EXPECT_FALSE(obj["metadata"].contains("ownerReferences")) << pod;
           EXPECT_EQ(obj["metadata"]["annotations"][kAnnotationStateCleanupCause],
                     kStateCleanupCauseForeground);
         }
         const auto& ev = Find(p, "patch federatedtrainingjobs/wn")->on_success;
         ASSERT_EQ(ev.size(), 1u);
         EXPECT_EQ(ev[0].reason, "NodeStateRemovalDeferred");
       }},
      {"a volume whose claim was never bound (gone before it bound) held no state: it goes with the others",
       [](World& w) {
         w.Reconcile();
         DeleteAgents(w);
       },
       ClaimsGone,
       {"patch federatedtrainingjobs/wn"},
       {"create pods/wn-state-cleanup-edge-a", "create pods/wn-state-cleanup-edge-b"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         EXPECT_EQ(CountOn(p, res::kPersistentVolumeClaims), 0);
         for (const auto& a : p.actions)
           if (a.resource == &res::kPersistentVolumes) EXPECT_EQ(a.kind, ActionKind::kDelete) << a.Describe();
       }},
      {"a cleanup pod made while its node was Ready, not run when the node went away: made a deferred one",
       [](World& w) {
         w.Reconcile();
         DeleteAgents(w);
         CreateCleanupPod(w, "edge-a");
         CreateCleanupPod(w, "edge-b");
         w.SetPodPhase("wn-state-cleanup-edge-a", "Succeeded");
         SetNodeNotReady(w, "edge-b");
       },
       [](Observed& o) { o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow); },
       {"patch pods/wn-state-cleanup-edge-b", "patch federatedtrainingjobs/wn"},
       {"create pods/wn-state-cleanup-edge-b"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         const Json& patch = Find(p, "patch pods/wn-state-cleanup-edge-b")->object;
         EXPECT_TRUE(patch["metadata"]["ownerReferences"].is_null());
         EXPECT_EQ(patch["metadata"]["labels"][kLabelStateCleanup], kStateCleanupDeferred);
       }},
      {"an agent pod that never goes (an unreachable node) holds the job only until the deadline",
       [](World& w) { w.Reconcile(); },
       [](Observed& o) {
         o.job["metadata"]["deletionTimestamp"] = FormatTime(kNow - kNodeStateCleanupTimeoutSeconds - 60);
         for (auto& p : o.pods) {
           Json copy = *p;
           copy["metadata"]["deletionTimestamp"] = FormatTime(kNow - 200);
           p = std::make_shared<const Json>(copy);
         }
       },
       {"patch federatedtrainingjobs/wn"},
       {"create pods/wn-state-cleanup-edge-a", "create pods/wn-state-cleanup-edge-b",
        "delete pods/wn-agent-edge-a"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         const std::string& m = Find(p, "patch federatedtrainingjobs/wn")->on_success.at(0).message;
         EXPECT_NE(m.find("left on edge-a (not done"), std::string::npos) << m;
         EXPECT_NE(m.find("; edge-b (not done"), std::string::npos) << m;
       }},
      {"aggregator succeeded: the job succeeds and requeues for cleanup",
       [](World& w) {
         w.Reconcile();
         w.SetPodPhase("wn-aggregator", "Succeeded");
       },
       nullptr,
       {},
       {},
       0,
       "Succeeded",
       -1,
       [](const Plan& p) {
         EXPECT_TRUE(p.status.contains("completionTime"));
         EXPECT_EQ(FindCondition(p.status["conditions"], "Succeeded")->value("reason", ""), "JobSucceeded");
       }},
      {"pods made from another template (an operator upgrade, a spec change) are replaced, not restarted",
       [](World& w) {
         w.Reconcile();
         Json stale = {{"metadata", {{"annotations", {{kAnnotationPodTemplateHash, "0123456789abcdef"}}}}}};
         ASSERT_TRUE(w.client_.MergePatch(res::kPods, "ml", "wn-agent-edge-a", stale, "").ok());
         // An older operator's pod carries no hash at all.
         Json none = {{"metadata", {{"annotations", {{kAnnotationPodTemplateHash, nullptr}}}}}};
         ASSERT_TRUE(w.client_.MergePatch(res::kPods, "ml", "wn-aggregator", none, "").ok());
       },
       nullptr,
       {"delete pods/wn-agent-edge-a", "delete pods/wn-aggregator"},
       {"delete pods/wn-agent-edge-b", "create pods/wn-agent-edge-a"},
       2,
       "Created",
       -1,
       [](const Plan& p) {
         for (const char* what : {"delete pods/wn-agent-edge-a", "delete pods/wn-aggregator"}) {
           const Action* del = Find(p, what);
           EXPECT_FALSE(del->counts_restart) << what;
           EXPECT_FALSE(del->del.precondition_uid.empty()) << what;
           ASSERT_EQ(del->on_success.size(), 1u) << what;
           EXPECT_EQ(del->on_success[0].reason, "PodReplaced");
         }
         EXPECT_NE(Find(p, "delete pods/wn-agent-edge-a")->on_success[0].message.find("0123456789abcdef"),
                   std::string::npos);
         EXPECT_NE(Find(p, "delete pods/wn-aggregator")->on_success[0].message.find("older operator"),
                   std::string::npos);
       }},
      {"without a checkpoint claim an outdated aggregator is kept (it would restart from round 0), and said "
       "so",
       [](World& w) {
         Json off = {{"spec", {{"aggregator", {{"checkpoint", {{"enabled", false}}}}}}}};
         ASSERT_TRUE(w.client_.MergePatch(res::kJobs, "ml", "wn", off, "").ok());
         w.Reconcile();
         Json stale = {{"metadata", {{"annotations", {{kAnnotationPodTemplateHash, "0123456789abcdef"}}}}}};
         ASSERT_TRUE(w.client_.MergePatch(res::kPods, "ml", "wn-aggregator", stale, "").ok());
       },
       nullptr,
       {},
       {"delete pods/wn-aggregator"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         const Json* c = FindCondition(p.status["conditions"], "PodsOutdated");
         ASSERT_NE(c, nullptr);
         EXPECT_EQ(c->value("status", ""), "True");
         EXPECT_EQ(c->value("reason", ""), "AggregatorKeptWithoutCheckpoint");
       }},
      {"no replacement while the pod could not be made again (the issuer's keys unknown)",
       [](World& w) {
         w.Reconcile();
         Json stale = {{"metadata", {{"annotations", {{kAnnotationPodTemplateHash, "0123456789abcdef"}}}}}};
         ASSERT_TRUE(w.client_.MergePatch(res::kPods, "ml", "wn-agent-edge-a", stale, "").ok());
         ASSERT_TRUE(w.client_.MergePatch(res::kPods, "ml", "wn-aggregator", stale, "").ok());
       },
       [](Observed& o) { o.issuer = IssuerKeys{}; },
       {},
       {"delete pods/wn-agent-edge-a", "delete pods/wn-aggregator"},
       -1,
       "Created",
       -1,
       nullptr},
      {"a node joining changes no pod's template: only its agent is created",
       [](World& w) {
         w.Reconcile();
         Json edge = {{"metadata", {{"labels", {{"fedge.io/edge", "true"}}}}}};
         ASSERT_TRUE(w.client_.MergePatch(res::kNodes, "", "core-1", edge, "").ok());
       },
       nullptr,
       {"create pods/wn-agent-core-1"},
       {"delete pods/wn-aggregator", "delete pods/wn-agent-edge-a", "delete pods/wn-agent-edge-b"},
       -1,
       "Created",
       -1,
       nullptr},
      {"outdated agents that serve are replaced a quarter at a time, at least one",
       [](World& w) {
         w.Reconcile();
         for (const char* pod : {"wn-agent-edge-a", "wn-agent-edge-b"}) {
           SetRunningReady(w, pod);
           Outdate(w, pod);
         }
       },
       nullptr,
       {"delete pods/wn-agent-edge-a"},
       {"delete pods/wn-agent-edge-b"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         const Json* c = FindCondition(p.status["conditions"], "PodsOutdated");
         ASSERT_NE(c, nullptr);
         EXPECT_EQ(c->value("status", ""), "True");
         EXPECT_EQ(c->value("reason", ""), "AgentsReplacedGradually");
         EXPECT_NE(c->value("message", "").find("1 running agent pod(s)"), std::string::npos) << c->dump();
       }},
      {"spec.agents.maxUnavailable: 2 (or 100%) replaces both serving agents at once",
       [](World& w) {
         w.Reconcile();
         for (const char* pod : {"wn-agent-edge-a", "wn-agent-edge-b"}) {
           SetRunningReady(w, pod);
           Outdate(w, pod);
         }
       },
       [](Observed& o) { o.job["spec"]["agents"]["maxUnavailable"] = 2; },
       {"delete pods/wn-agent-edge-a", "delete pods/wn-agent-edge-b"},
       {},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         const Json* c = FindCondition(p.status["conditions"], "PodsOutdated");
         EXPECT_TRUE(c == nullptr || c->value("reason", "") != "AgentsReplacedGradually");
       }},
      {"an outdated agent that does not serve is replaced at once and counts against the share",
       [](World& w) {
         w.Reconcile();
         Outdate(w, "wn-agent-edge-a");  // Pending
         SetRunningReady(w, "wn-agent-edge-b");
         Outdate(w, "wn-agent-edge-b");
       },
       nullptr,
       {"delete pods/wn-agent-edge-a"},
       {"delete pods/wn-agent-edge-b"},
       -1,
       "Created",
       -1,
       nullptr},
      {"agents older than the aggregator Service (made again under a new address) are all replaced at once",
       [](World& w) {
         w.Reconcile();
         for (const char* pod : {"wn-agent-edge-a", "wn-agent-edge-b"}) SetRunningReady(w, pod);
         ASSERT_TRUE(w.client_.Delete(res::kServices, "ml", "wn-aggregator").ok());
         w.client_.SetNow(FormatTime(kNow + 60));
         w.Reconcile();  // the Service again, a minute later
       },
       nullptr,
       {"delete pods/wn-agent-edge-a", "delete pods/wn-agent-edge-b"},
       {"delete pods/wn-aggregator"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         bool said = false;
         for (const auto& a : p.actions)
           for (const auto& e : a.on_success)
             said = said || e.message.find("older than Service wn-aggregator") != std::string::npos;
         EXPECT_TRUE(said) << "the PodReplaced event says why";
       }},
      {"agents made with the Service are not older than it",
       [](World& w) {
         w.Reconcile();
         for (const char* pod : {"wn-agent-edge-a", "wn-agent-edge-b"}) SetRunningReady(w, pod);
       },
       nullptr,
       {},
       {"delete pods/wn-agent-edge-a", "delete pods/wn-agent-edge-b"},
       -1,
       "Created",
       -1,
       nullptr},
      {"agents an older operator made resolve the aggregator by name: labelled, and DNS for them alone "
       "before <job>-agents drops it; replaced a share at a time as before",
       [](World& w) {
         w.Reconcile();
         for (const char* pod : {"wn-agent-edge-a", "wn-agent-edge-b"}) {
           SetRunningReady(w, pod);
           Outdate(w, pod);
           ResolveByName(w, pod);
         }
       },
       nullptr,
       {"patch pods/wn-agent-edge-a", "patch pods/wn-agent-edge-b", "apply networkpolicies/wn-agents-dns",
        "delete pods/wn-agent-edge-a"},
       {"delete pods/wn-agent-edge-b", "delete networkpolicies/wn-agents-dns"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         for (const char* what : {"patch pods/wn-agent-edge-a", "patch pods/wn-agent-edge-b",
                                  "apply networkpolicies/wn-agents-dns"})
           EXPECT_EQ(Find(p, what)->wave, Wave::kJob) << what << ": the first wave, before <job>-agents";
         EXPECT_EQ(Find(p, "patch pods/wn-agent-edge-b")->object["metadata"]["labels"],
                   Json({{kLabelResolvesAggregatorByName, "true"}}));
       }},
      {"the DNS policy goes with the last agent that resolves by name",
       [](World& w) {
         w.Reconcile();
         ResolveByName(w, "wn-agent-edge-a");
         w.Reconcile();
         ASSERT_TRUE(w.client_.Get(res::kNetworkPolicies, "ml", "wn-agents-dns").ok());
         ASSERT_TRUE(w.client_.Delete(res::kPods, "ml", "wn-agent-edge-a").ok());
       },
       nullptr,
       {"delete networkpolicies/wn-agents-dns", "create pods/wn-agent-edge-a"},
       {"patch pods/wn-agent-edge-b", "apply networkpolicies/wn-agents-dns"},
       -1,
       "Created",
       -1,
       nullptr},
      {"a serving outdated agent waits while another agent is unavailable",
       [](World& w) {
         w.Reconcile();
         SetRunningReady(w, "wn-agent-edge-a");
         Outdate(w, "wn-agent-edge-a");  // edge-b: current, but Pending
       },
       nullptr,
       {},
       {"delete pods/wn-agent-edge-a"},
       -1,
       "Created",
       -1,
       nullptr},
      {"PodsOutdated is cleared once every pod is current",
       [](World& w) {
         w.Reconcile();
         for (const char* pod : {"wn-agent-edge-a", "wn-agent-edge-b"}) {
           SetRunningReady(w, pod);
           Outdate(w, pod);
         }
         w.Reconcile();  // edge-a replaced; PodsOutdated=True
         ASSERT_TRUE(w.client_.Delete(res::kPods, "ml", "wn-agent-edge-b").ok());
         w.Reconcile();  // both made again from the current template
       },
       nullptr,
       {},
       {"delete pods/wn-agent-edge-a", "delete pods/wn-agent-edge-b"},
       -1,
       "Created",
       -1,
       [](const Plan& p) {
         const Json* c = FindCondition(p.status["conditions"], "PodsOutdated");
         ASSERT_NE(c, nullptr);
         EXPECT_EQ(c->value("status", ""), "False");
         EXPECT_EQ(c->value("reason", ""), "PodsCurrent");
       }},
      {"a succeeded job's agents serve: an outdated one is not replaced",
       [](World& w) {
         w.Reconcile();
         w.SetPodPhase("wn-aggregator", "Succeeded");
         Json stale = {{"metadata", {{"annotations", {{kAnnotationPodTemplateHash, "0123456789abcdef"}}}}}};
         ASSERT_TRUE(w.client_.MergePatch(res::kPods, "ml", "wn-agent-edge-a", stale, "").ok());
       },
       nullptr,
       {},
       {"delete pods/wn-agent-edge-a"},
       -1,
       "Succeeded",
       -1,
       nullptr},
      {"a succeeded job's serving agent that failed is deleted to be made again, not counted as a restart",
       [](World& w) {
         Succeed(w);
         w.SetPodPhase("wn-agent-edge-a", "Failed");
       },
       nullptr,
       {"delete pods/wn-agent-edge-a"},
       {"create pods/wn-aggregator", "delete pods/wn-agent-edge-b"},
       1,
       "Succeeded",
       -1,
       [](const Plan& p) {
         const Action* a = Find(p, "delete pods/wn-agent-edge-a");
         ASSERT_NE(a, nullptr);
         EXPECT_FALSE(a->del.precondition_uid.empty());
         EXPECT_FALSE(a->counts_restart);
         ASSERT_EQ(a->on_success.size(), 1u);
         EXPECT_EQ(a->on_success[0].reason, "ServingAgentRestarted");
       }},
      {"a succeeded job's serving agent that failed seconds ago after a short run waits (a crash loop)",
       [](World& w) {
         Succeed(w);
         FailPodAt(w, "wn-agent-edge-a", kNow - 40, kNow - 5);
       },
       nullptr,
       {},
       {"delete pods/wn-agent-edge-a"},
       0,
       "Succeeded",
       -1,
       [](const Plan& p) {
         ASSERT_TRUE(p.requeue_after.has_value());
         EXPECT_EQ(p.requeue_after->count(), kServingCrashLoopDelaySeconds - 5);
       }},
      {"a succeeded job's serving agent that ran an hour is made again 10 s after it failed",
       [](World& w) {
         Succeed(w);
         FailPodAt(w, "wn-agent-edge-a", kNow - 3600, kNow - kServingRestartDelaySeconds);
       },
       nullptr,
       {"delete pods/wn-agent-edge-a"},
       {},
       1,
       "Succeeded",
       -1,
       nullptr},
      {"a succeeded job's node whose agent pod is gone gets it back (its volumes hold the final global)",
       [](World& w) {
         Succeed(w);
         ASSERT_TRUE(w.client_.Delete(res::kPods, "ml", "wn-agent-edge-a").ok());
       },
       nullptr,
       {"create pods/wn-agent-edge-a"},
       {"create pods/wn-aggregator", "create pods/wn-agent-edge-b"},
       1,
       "Succeeded",
       -1,
       [](const Plan& p) {
         EXPECT_EQ(p.status["agents"].value("desired", 0), 2);
         EXPECT_EQ(Find(p, "create pods/wn-agent-edge-a")
                       ->object["metadata"]["annotations"]
                       .value(kAnnotationNode, ""),
                   "edge-a");
       }},
      {"a node that joins a succeeded job's selector gets its volumes, an agent and the final-model pod",
       [](World& w) {
         Succeed(w);
         ASSERT_TRUE(w.client_.Create(res::kNodes, "", Node("edge-c", true)).ok());
       },
       nullptr,
       {"create pods/wn-agent-edge-c", "create pods/wn-aggregator-final"},
       {"create pods/wn-aggregator", "create pods/wn-agent-edge-a", "create pods/wn-agent-edge-b"},
       -1,
       "Succeeded",
       -1,
       [](const Plan& p) {
         int volumes = 0, claims = 0;
         for (const auto& a : p.actions) {
           if (a.kind != ActionKind::kCreate || a.name.find("edge-c") == std::string::npos) continue;
           if (a.resource == &res::kPersistentVolumes) ++volumes;
           if (a.resource == &res::kPersistentVolumeClaims) ++claims;
           if (a.resource != &res::kPods) EXPECT_EQ(a.wave, Wave::kPerNode) << a.Describe();
         }
         EXPECT_GE(volumes, 1);
         EXPECT_EQ(volumes, claims);
         const Action* final_pod = Find(p, "create pods/wn-aggregator-final");
         ASSERT_NE(final_pod, nullptr);
         // Made before the new agent: it finds the Service's backend when it starts.
         EXPECT_LT(static_cast<int>(final_pod->wave),
                   static_cast<int>(Find(p, "create pods/wn-agent-edge-c")->wave));
         const Json& pod = final_pod->object;
         // Found by the aggregator Service and allowed by its NetworkPolicy.
         EXPECT_EQ(pod["metadata"]["labels"].value(kLabelRole, ""), "aggregator");
         ASSERT_EQ(pod["spec"]["containers"].size(), 1u) << "no status reporter: the job's status is final";
         const Json& cmd = pod["spec"]["containers"][0]["command"];
         auto has = [&](const std::string& arg) {
           return std::find(cmd.begin(), cmd.end(), arg) != cmd.end();
         };
         EXPECT_TRUE(has("--serve-final")) << cmd.dump();
         EXPECT_FALSE(has("--exit-when-done")) << cmd.dump();
         EXPECT_FALSE(has("--expected-agents")) << cmd.dump();
         EXPECT_TRUE(has("--checkpoint-dir")) << cmd.dump();
         EXPECT_TRUE(has("--agent-token-jwks-file")) << cmd.dump();
         bool on_claim = false;
         for (const auto& v : pod["spec"]["volumes"])
           on_claim |=
               v.value("name", "") == "checkpoints" &&
               v.value("persistentVolumeClaim", Json::object()).value("claimName", "") == "wn-checkpoints";
         EXPECT_TRUE(on_claim) << pod["spec"]["volumes"].dump();
         ASSERT_EQ(final_pod->on_success.size(), 1u);
         EXPECT_EQ(final_pod->on_success[0].reason, "FinalModelServed");
         EXPECT_NE(final_pod->on_success[0].message.find("edge-c"), std::string::npos);
         EXPECT_EQ(p.status["agents"].value("desired", 0), 3);
       }},
      {"a node joins a year after the job: the serving certificate is renewed and the trust ConfigMap "
       "synced for the final-model pod",
       [](World& w) {
         Succeed(w);
         ASSERT_TRUE(w.client_.Create(res::kNodes, "", Node("edge-c", true)).ok());
         Json trust = *w.client_.Get(res::kConfigMaps, "ml", "wn-trust");
         trust["data"]["jwks.json"] = R"({"keys":[]})";  // the API server's keys have changed since
         ASSERT_TRUE(w.client_.Update(res::kConfigMaps, "ml", trust).ok());
       },
       [](Observed& o) { o.now += 366 * 24 * 3600; },
       {"create pods/wn-aggregator-final", "sync-credentials wn-credentials", "sync-trust wn-trust"},
       {},
       -1,
       "Succeeded",
       -1,
       nullptr},
      {"a succeeded job with no final-model pod syncs no credentials",
       [](World& w) { Succeed(w); },
       [](Observed& o) { o.now += 366 * 24 * 3600; },
       {},
       {"sync-credentials wn-credentials", "sync-trust wn-trust"},
       0,
       "Succeeded",
       -1,
       nullptr},
      {"the final-model pod is kept while the new node's agent starts, and not deleted as a running pod",
       [](World& w) {
         Succeed(w);
         ASSERT_TRUE(w.client_.Create(res::kNodes, "", Node("edge-c", true)).ok());
         w.client_.SetNow(FormatTime(kNow - 5));
         w.Reconcile();  // the agent (made 5 s ago) and the final-model pod
         SetRunningReady(w, "wn-aggregator-final");
       },
       nullptr,
       {},
       {"delete pods/wn-aggregator-final", "create pods/wn-agent-edge-c"},
       0,
       "Succeeded",
       -1,
       nullptr},
      {"every agent serves: the final-model pod goes once it has run 30 s",
       [](World& w) {
         LateNodeServed(w);
         SetRunningReady(w, "wn-agent-edge-c");
         SetRunningNotReady(w, "wn-aggregator-final", kNow - kFinalModelMinRunSeconds);
       },
       nullptr,
       {"delete pods/wn-aggregator-final"},
       {},
       1,
       "Succeeded",
       -1,
       [](const Plan& p) {
         EXPECT_FALSE(Find(p, "delete pods/wn-aggregator-final")->del.precondition_uid.empty());
       }},
      {"every agent serves, the final-model pod started 10 s ago: it stays 20 s more",
       [](World& w) {
         LateNodeServed(w);
         SetRunningReady(w, "wn-agent-edge-c");
         SetRunningNotReady(w, "wn-aggregator-final", kNow - 10);
       },
       nullptr,
       {},
       {"delete pods/wn-aggregator-final"},
       0,
       "Succeeded",
       -1,
       [](const Plan& p) {
         ASSERT_TRUE(p.requeue_after.has_value());
         EXPECT_EQ(p.requeue_after->count(), kFinalModelMinRunSeconds - 10);
       }},
      {"a serving agent running but not ready 20 s after its pod was made (its node lost the final "
       "global) gets the final-model pod",
       [](World& w) {
         Succeed(w);  // the fake API server made the pods long before kNow
         SetRunningNotReady(w, "wn-agent-edge-a");
       },
       nullptr,
       {"create pods/wn-aggregator-final"},
       {},
       1,
       "Succeeded",
       -1,
       [](const Plan& p) {
         EXPECT_NE(Find(p, "create pods/wn-aggregator-final")->on_success[0].message.find("edge-a"),
                   std::string::npos);
       }},
      {"a serving agent made 5 s ago and not ready yet waits (it may hold the final global)",
       [](World& w) {
         Succeed(w);
         ASSERT_TRUE(w.client_.Delete(res::kPods, "ml", "wn-agent-edge-a").ok());
         w.client_.SetNow(FormatTime(kNow - 5));
         w.Reconcile();  // made again at kNow - 5
         SetRunningNotReady(w, "wn-agent-edge-a", kNow - 4);
       },
       nullptr,
       {},
       {"create pods/wn-aggregator-final"},
       0,
       "Succeeded",
       -1,
       [](const Plan& p) {
         ASSERT_TRUE(p.requeue_after.has_value());
         EXPECT_EQ(p.requeue_after->count(), kFinalModelWaitSeconds - 5);
       }},
      {"a failed final-model pod is made again no sooner than 5 minutes after, with its reason",
       [](World& w) {
         Succeed(w);
         SetRunningNotReady(w, "wn-agent-edge-a");
         w.Reconcile();  // the final-model pod
         FailPodAt(w, "wn-aggregator-final", kNow - 10, kNow - kServingCrashLoopDelaySeconds);
       },
       nullptr,
       {"delete pods/wn-aggregator-final"},
       {"create pods/wn-aggregator-final"},
       1,
       "Succeeded",
       -1,
       [](const Plan& p) {
         const Action* a = Find(p, "delete pods/wn-aggregator-final");
         ASSERT_EQ(a->on_success.size(), 1u);
         EXPECT_EQ(a->on_success[0].type, "Warning");
         EXPECT_EQ(a->on_success[0].reason, "FinalModelServerFailed");
       }},
      {"a failed final-model pod still needed waits before it is made again",
       [](World& w) {
         Succeed(w);
         SetRunningNotReady(w, "wn-agent-edge-a");
         w.Reconcile();
         FailPodAt(w, "wn-aggregator-final", kNow - 70, kNow - 60);
       },
       nullptr,
       {},
       {"delete pods/wn-aggregator-final"},
       0,
       "Succeeded",
       -1,
       [](const Plan& p) {
         ASSERT_TRUE(p.requeue_after.has_value());
         EXPECT_EQ(p.requeue_after->count(), kServingCrashLoopDelaySeconds - 60);
       }},
      {"a node that leaves a succeeded job's selector loses its serving agent; its volumes stay",
       [](World& w) {
         Succeed(w);
         ASSERT_TRUE(w.client_.Delete(res::kNodes, "", "edge-b").ok());
         ASSERT_TRUE(w.client_.Create(res::kNodes, "", Node("edge-b", false)).ok());
       },
       nullptr,
       {"delete pods/wn-agent-edge-b"},
       {"delete pods/wn-agent-edge-a", "create pods/wn-aggregator-final"},
       1,
       "Succeeded",
       -1,
       [](const Plan& p) {
         const Action* a = Find(p, "delete pods/wn-agent-edge-b");
         EXPECT_FALSE(a->del.precondition_uid.empty());
         ASSERT_EQ(a->on_success.size(), 1u);
         EXPECT_EQ(a->on_success[0].reason, "AgentRemoved");
         EXPECT_EQ(p.status["agents"].value("desired", 0), 1);
       }},
      {"a cordoned node keeps a succeeded job's serving agent",
       [](World& w) {
         Succeed(w);
         Json cordon = {{"spec", {{"unschedulable", true}}}};
         ASSERT_TRUE(w.client_.MergePatch(res::kNodes, "", "edge-b", cordon, "").ok());
       },
       nullptr,
       {},
       {"delete pods/wn-agent-edge-b"},
       0,
       "Succeeded",
       -1,
       nullptr},
      {"without a checkpoint a node that joins a succeeded job's selector gets no agent: no final global "
       "is kept anywhere",
       [](World& w) {
         Json off = {{"spec", {{"aggregator", {{"checkpoint", {{"enabled", false}}}}}}}};
         ASSERT_TRUE(w.client_.MergePatch(res::kJobs, "ml", "wn", off, "").ok());
         Succeed(w);
         SetRunningNotReady(w, "wn-agent-edge-a");
         ASSERT_TRUE(w.client_.Create(res::kNodes, "", Node("edge-c", true)).ok());
       },
       nullptr,
       {},
       {"create pods/wn-agent-edge-c", "create pods/wn-aggregator-final"},
       0,
       "Succeeded",
       -1,
       nullptr},
      {"a running job deletes a final-model pod it finds (it would tell its agents DONE)",
       [](World& w) {
         w.Reconcile();
         Json stray = DesiredFinalModelPod(*w.client_.Get(res::kJobs, "ml", "wn"),
                                           OperatorJobSpec(*w.client_.Get(res::kJobs, "ml", "wn")), {});
         ASSERT_TRUE(w.client_.Create(res::kPods, "ml", stray).ok());
       },
       nullptr,
       {"delete pods/wn-aggregator-final"},
       {"create pods/wn-aggregator"},
       -1,
       "Created",
       -1,
       nullptr},
      {"serving disabled: a succeeded job's failed or missing agent is not made again",
       [](World& w) {
         Json off = {{"spec", {{"serving", {{"enabled", false}}}}}};
         ASSERT_TRUE(w.client_.MergePatch(res::kJobs, "ml", "wn", off, "").ok());
         Succeed(w);
         w.SetPodPhase("wn-agent-edge-a", "Failed");
         ASSERT_TRUE(w.client_.Delete(res::kPods, "ml", "wn-agent-edge-b").ok());
       },
       nullptr,
       {},
       {"delete pods/wn-agent-edge-a", "create pods/wn-agent-edge-b"},
       -1,
       "Succeeded",
       -1,
       nullptr},
      {"a failed job's failed agent is not made again",
       [](World& w) {
         w.Reconcile();
         w.SetPodPhase("wn-aggregator", "Failed");
         w.Reconcile();  // restart 1 of backoffLimit 1
         w.Reconcile();
         w.SetPodPhase("wn-aggregator", "Failed");
         w.Reconcile();  // backoffLimit reached: Failed
         w.SetPodPhase("wn-agent-edge-a", "Failed");
       },
       nullptr,
       {},
       {"delete pods/wn-agent-edge-a", "create pods/wn-agent-edge-a"},
       -1,
       "Failed",
       1,
       nullptr},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    World w;
    w.CreateJob();
    if (row.setup) row.setup(w);
    Observed o = w.Observe();
    if (row.tweak) row.tweak(o);
    const auto calls_before = w.client_.Calls().size();
    Plan p = PlanReconcile(o, PlanOptions{});
    EXPECT_EQ(w.client_.Calls().size(), calls_before) << "Plan called the API";
    auto got = Describe(p);
    std::string all;
    for (const auto& g : got) all += "\n  " + g;
    for (const auto& want : row.want)
      EXPECT_TRUE(Has(got, want)) << "missing " << want << "; planned:" << all;
    for (const auto& nw : row.not_want)
      EXPECT_FALSE(Has(got, nw)) << "unexpected " << nw << "; planned:" << all;
    if (row.want_count >= 0) {
      EXPECT_EQ(static_cast<int>(got.size()), row.want_count) << "planned:" << all;
    }
    EXPECT_EQ(p.status.value("state", ""), row.state);
    if (row.restarts < 0)
      EXPECT_FALSE(p.status.contains("restarts"));
    else
      EXPECT_EQ(p.status.value("restarts", -1), row.restarts);
    if (row.more) row.more(p);
    // Pure: the same snapshot plans the same actions and status.
    Plan again = PlanReconcile(o, PlanOptions{});
    EXPECT_EQ(Describe(again), got);
    EXPECT_EQ(again.status, p.status);
  }
}

// The record a deleted job left for a node that was away (desired.h), as the cache shows it.
struct DeferredRecord {
  ObjectPtr pod, claim, volume;
  explicit DeferredRecord(const char* phase = nullptr, bool gated = true) {
    Json job = Job();
    job["metadata"]["uid"] = "job-uid-1";
    Json p = DesiredDeferredStateCleanupPod(job, OperatorJobSpec(job), "edge-b", DesiredOptions{});
    p["metadata"]["uid"] = "pod-uid-1";
    if (!gated) p["spec"].erase("schedulingGates");
    if (phase) p["status"] = {{"phase", phase}};
    if (phase && std::string(phase) == "Failed")
      p["status"]["containerStatuses"] = Json::array(
          {{{"name", "state-cleanup"},
            {"state",
             {{"terminated", {{"exitCode", 1}, {"message", "EIO: cannot remove feedback.jsonl"}}}}}}});
    pod = std::make_shared<const Json>(p);
    const std::string claim_name = p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"];
    Json c = {{"apiVersion", "v1"},
              {"kind", "PersistentVolumeClaim"},
              {"metadata",
               {{"name", claim_name},
                {"namespace", "ml"},
                {"uid", "claim-uid-1"},
                {"labels", {{kLabelJob, "wn"}, {kLabelRole, "node-volume"}}},
                {"annotations", {{kAnnotationNode, "edge-b"}}}}},
              {"spec", {{"volumeName", "wn-pv-edge-b"}}}};
    c.merge_patch(DeferStateClaimPatch(job, p["metadata"]["name"]));
    claim = std::make_shared<const Json>(c);
    volume = std::make_shared<const Json>(
        Json{{"metadata", {{"name", "wn-pv-edge-b"}, {"uid", "pv-uid-1"}, {"labels", {{kLabelJob, "wn"}}}}}});
  }
};

std::vector<std::string> Describe(const DeferredCleanupPlan& p) {
  std::vector<std::string> out;
  for (const auto& a : p.actions) out.push_back(a.Describe());
  return out;
}

TEST(DeferredCleanupTest, TheGateIsLiftedOnlyOnceTheNodeIsReadyAndTheJobsAgentHasLeftIt) {
  DeferredRecord r;
  EXPECT_TRUE(DeferredStateCleanup(*r.pod));
  EXPECT_TRUE(DeferredStateCleanup(*r.claim));
  EXPECT_TRUE(PlanDeferredCleanup(r.pod, r.claim, r.volume, /*node_ready=*/false, false).actions.empty());
  // The node is back but its kubelet has not stopped the agent yet: wait, and look again.
  DeferredCleanupPlan waiting = PlanDeferredCleanup(r.pod, r.claim, r.volume, true, /*agent_on_node=*/true);
  EXPECT_TRUE(waiting.actions.empty());
  ASSERT_TRUE(waiting.requeue_after.has_value());
  EXPECT_EQ(waiting.requeue_after->count(), 10);
  DeferredCleanupPlan go = PlanDeferredCleanup(r.pod, r.claim, r.volume, true, false);
  ASSERT_EQ(Describe(go), std::vector<std::string>({"patch pods/wn-state-cleanup-edge-b"}));
  EXPECT_EQ(go.actions[0].ns, "ml");
  EXPECT_TRUE(go.actions[0].object["spec"]["schedulingGates"].is_null());
  // Lifted: scheduled and running, nothing to do until it ends.
  DeferredRecord running("Running", /*gated=*/false);
  EXPECT_TRUE(PlanDeferredCleanup(running.pod, running.claim, running.volume, true, false).actions.empty());
}

TEST(DeferredCleanupTest, AnEndedCleanupTakesItsVolumeClaimAndPodWithItInThatOrderAndSaysHowItWent) {
  DeferredRecord ok("Succeeded", false);
  DeferredCleanupPlan p = PlanDeferredCleanup(ok.pod, ok.claim, ok.volume, true, false);
  const std::string claim = (*ok.claim)["metadata"]["name"];
  ASSERT_EQ(Describe(p), std::vector<std::string>({"delete persistentvolumes/wn-pv-edge-b",
                                                   "delete persistentvolumeclaims/" + claim,
                                                   "delete pods/wn-state-cleanup-edge-b"}));
  EXPECT_EQ(p.actions[0].del.precondition_uid, "pv-uid-1");
  EXPECT_EQ(p.actions[1].del.precondition_uid, "claim-uid-1");
  EXPECT_EQ(p.actions[2].del.precondition_uid, "pod-uid-1");
  EXPECT_TRUE(p.actions[0].on_success.empty());
  ASSERT_EQ(p.actions[1].on_success.size(), 1u) << "the event goes with the claim's deletion";
  EXPECT_EQ(p.actions[1].on_success[0].reason, "NodeStateRemoved");
  EXPECT_NE(p.actions[1].on_success[0].message.find("FederatedTrainingJob ml/wn from node edge-b"),
            std::string::npos)
      << p.actions[1].on_success[0].message;
  EXPECT_EQ(p.about["metadata"]["name"], "wn-state-cleanup-edge-b");

  DeferredRecord failed("Failed", false);
  p = PlanDeferredCleanup(failed.pod, failed.claim, failed.volume, true, false);
  ASSERT_EQ(p.actions.size(), 3u);
  EXPECT_EQ(p.actions[1].on_success.at(0).type, "Warning");
  EXPECT_EQ(p.actions[1].on_success.at(0).reason, "NodeStateLeft");
  EXPECT_NE(p.actions[1].on_success.at(0).message.find("(EIO: cannot remove feedback.jsonl)"),
            std::string::npos);

  // A pass that deleted the claim and failed on the pod: only the pod is left to delete,
  // and no second event.
  Json going = *ok.claim;
  going["metadata"]["deletionTimestamp"] = "2026-12-06T00:00:00Z";
  p = PlanDeferredCleanup(ok.pod, std::make_shared<const Json>(going), ok.volume, true, false);
  ASSERT_EQ(Describe(p), std::vector<std::string>({"delete pods/wn-state-cleanup-edge-b"}));
  EXPECT_TRUE(p.actions[0].on_success.empty());
  p = PlanDeferredCleanup(ok.pod, nullptr, nullptr, true, false);
  ASSERT_EQ(Describe(p), std::vector<std::string>({"delete pods/wn-state-cleanup-edge-b"}));
}

TEST(DeferredCleanupTest, TheEventSaysWhyTheCleanupWaitedForTheJobToGo) {
  DeferredRecord away("Succeeded", false);
  DeferredCleanupPlan p = PlanDeferredCleanup(away.pod, away.claim, away.volume, true, false);
  ASSERT_EQ(p.actions.size(), 3u);
  EXPECT_NE(p.actions[1].on_success.at(0).message.find("which was away when the job was deleted"),
            std::string::npos)
      << p.actions[1].on_success.at(0).message;
  Json pod = *away.pod;
  pod["metadata"]["annotations"][kAnnotationStateCleanupCause] = kStateCleanupCauseForeground;
  p = PlanDeferredCleanup(std::make_shared<const Json>(pod), away.claim, away.volume, true, false);
  ASSERT_EQ(p.actions.size(), 3u);
  const std::string& m = p.actions[1].on_success.at(0).message;
  EXPECT_NE(m.find("from node edge-b, once the job's deletion was done (a foreground deletion"),
            std::string::npos)
      << m;
  EXPECT_EQ(m.find("away"), std::string::npos) << m;
}

TEST(DeferredCleanupTest, ACleanupPodDeletedBeforeItRanLeavesAWarningAndTheClaimAndVolumeGo) {
  DeferredRecord r;
  DeferredCleanupPlan p = PlanDeferredCleanup(nullptr, r.claim, r.volume, false, false);
  ASSERT_EQ(p.actions.size(), 2u);
  EXPECT_EQ(p.actions[0].resource, &res::kPersistentVolumes);
  EXPECT_EQ(p.actions[1].resource, &res::kPersistentVolumeClaims);
  EXPECT_EQ(p.actions[1].on_success.at(0).reason, "NodeStateLeft");
  EXPECT_NE(p.actions[1].on_success.at(0).message.find("left on node edge-b"), std::string::npos);
  EXPECT_EQ(p.about["kind"], "PersistentVolumeClaim");
  // A volume that is not the job's is never deleted.
  Json other = *r.volume;
  other["metadata"]["labels"][kLabelJob] = "another";
  p = PlanDeferredCleanup(nullptr, r.claim, std::make_shared<const Json>(other), false, false);
  ASSERT_EQ(p.actions.size(), 1u);
  EXPECT_EQ(p.actions[0].resource, &res::kPersistentVolumeClaims);
  // A pod of that name that is not a record (a job's own cleanup pod) is not touched.
  Json own = DesiredStateCleanupPod(Job(), OperatorJobSpec(Job()), "edge-b", DesiredOptions{});
  own["status"] = {{"phase", "Succeeded"}};
  EXPECT_TRUE(
      PlanDeferredCleanup(std::make_shared<const Json>(own), nullptr, nullptr, true, false).actions.empty());
}

TEST(PlanTest, MaxUnavailableIsANumberOrAShareOfTheNodesRoundedDownAtLeastOne) {
  auto with = [](Json v) {
    Json job = Job();
    if (!v.is_null()) job["spec"]["agents"]["maxUnavailable"] = v;
    return job;
  };
  EXPECT_EQ(AgentMaxUnavailable(with(nullptr), 100), 25) << "absent: the CRD's default, 25%";
  EXPECT_EQ(AgentMaxUnavailable(with(nullptr), 3), 1) << "25% of 3 rounds down to 0: at least 1";
  EXPECT_EQ(AgentMaxUnavailable(with("10%"), 1000), 100);
  EXPECT_EQ(AgentMaxUnavailable(with("10%"), 19), 1);
  EXPECT_EQ(AgentMaxUnavailable(with("100%"), 7), 7);
  EXPECT_EQ(AgentMaxUnavailable(with(3), 1000), 3);
  EXPECT_EQ(AgentMaxUnavailable(with(50), 3), 50) << "more than the nodes: all of them";
  // Values the parser refuses (the planner never gets them): the default, never 0.
  for (const Json& bad : {Json(0), Json(-4), Json("0%"), Json("x%"), Json("25"), Json(true)})
    EXPECT_GE(AgentMaxUnavailable(with(bad), 100), 1) << bad.dump();
}

TEST(PlanTest, JobStatesAndPodPhasesRoundTrip) {
  for (JobState s : {JobState::kPending, JobState::kCreated, JobState::kRunning, JobState::kSucceeded,
                     JobState::kFailed, JobState::kSuspended}) {
    EXPECT_EQ(ParseJobState(JobStateName(s)), s);
  }
  EXPECT_EQ(ParseJobState("Bogus"), JobState::kNone);
  EXPECT_EQ(PodPhaseOf(Json::object()), PodPhase::kPending);
  EXPECT_EQ(PodPhaseOf({{"status", {{"phase", "Failed"}}}}), PodPhase::kFailed);
  EXPECT_EQ(PodPhaseOf({{"status", {{"phase", "Weird"}}}}), PodPhase::kUnknown);
}

// A client whose pod creations wait until `want` of them are in flight together (or a
// deadline passes): proves Apply runs one wave's creations in parallel, and no more than
// its concurrency at once.
class ConcurrentCreates : public FakeKubeClient {
 public:
  explicit ConcurrentCreates(int want) : want_(want) {}
  StatusOr<Json> Create(const Resource& r, const std::string& ns, const Json& obj) override {
    if (r.plural != res::kPods.plural) return FakeKubeClient::Create(r, ns, obj);
    {
      std::unique_lock<std::mutex> l(mu_);
      ++in_flight_;
      max_in_flight_ = std::max(max_in_flight_, in_flight_);
      cv_.notify_all();
      cv_.wait_for(l, std::chrono::seconds(5), [&] { return max_in_flight_ >= want_; });
    }
    auto out = FakeKubeClient::Create(r, ns, obj);
    std::lock_guard<std::mutex> l(mu_);
    --in_flight_;
    return out;
  }
  int max_in_flight() {
    std::lock_guard<std::mutex> l(mu_);
    return max_in_flight_;
  }

 private:
  const int want_;
  std::mutex mu_;
  std::condition_variable cv_;
  int in_flight_ = 0;      // guarded by mu_
  int max_in_flight_ = 0;  // guarded by mu_
};

TEST(ApplyTest, OneWavesCreationsRunInParallelUpToTheConcurrency) {
  ConcurrentCreates client(/*want=*/4);
  for (int i = 0; i < 12; ++i)
    ASSERT_TRUE(client.Create(res::kNodes, "", Node("edge-" + std::to_string(i), true)).ok());
  ASSERT_TRUE(client.Create(res::kJobs, "ml", Job()).ok());
  ClientCache cache(&client);
  FakeClock clock{kNow};
  EventRecorder events(&client, &clock);
  ReconcilerOptions opts{DefaultImages(), &clock};
  opts.apply_concurrency = 4;
  JobReconciler reconciler(&client, &cache, &events, opts);
  auto t0 = std::chrono::steady_clock::now();
  auto r = reconciler.Reconcile("ml/wn");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(client.max_in_flight(), 4) << "13 pod creations, at most 4 at once";
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5))
      << "creations waited out the deadline";
  EXPECT_EQ(client.Objects(res::kPods).size(), 13u);
  EXPECT_GT(r->actions, 13);
}

TEST(ControllerTest, AReconcileThatThrowsIsRequeuedAndTheWorkerLives) {
  // Without the guard an exception escaping Reconcile (here: a finalizer that is not a
  // string, which json's get<std::string> refuses) ended the worker thread and the process.
  FakeKubeClient client;
  ASSERT_TRUE(client.Create(res::kNodes, "", Node("edge-a", true)).ok());
  Json bad = Job();
  bad["metadata"]["name"] = "bad";
  bad["metadata"]["finalizers"] = {42};
  ASSERT_TRUE(client.Create(res::kJobs, "ml", bad).ok());
  ControllerOptions opts;
  opts.workers = 1;
  JobController ctl(&client, opts);
  ASSERT_TRUE(ctl.Start().ok());
  ASSERT_TRUE(client.Create(res::kJobs, "ml", Job()).ok());
  // The good job is reconciled by the same (only) worker after the bad one threw.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!client.Get(res::kPods, "ml", "wn-aggregator").ok() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(client.Get(res::kPods, "ml", "wn-aggregator").ok());
  EXPECT_GE(ctl.queue().NumRequeues("ml/bad"), 1) << "the throwing key is requeued with backoff";
  ctl.Stop();
}

// ServingCertStale remembers what it found about given bytes (parsing them every pass was
// ~7% of the operator's CPU); the answer must follow the bytes and the clock, never a
// previous call's.
TEST(ServingCertStaleTest, EachCaseIsFoundAndRememberedOnlyForTheSameBytes) {
  constexpr std::time_t kNow = 1'800'000'000;
  auto ca = pki::GenerateCa("job-ca", kNow);
  auto other_ca = pki::GenerateCa("other-ca", kNow);
  ASSERT_TRUE(ca.ok() && other_ca.ok());
  auto serving = pki::IssueServingCert(*ca, "wn-aggregator", {"wn-aggregator.ml.svc"}, kNow);
  auto foreign = pki::IssueServingCert(*other_ca, "wn-aggregator", {"wn-aggregator.ml.svc"}, kNow);
  ASSERT_TRUE(serving.ok() && foreign.ok());
  Credentials good;
  good.ca_crt = ca->cert_pem;
  good.ca_key = ca->key_pem;
  good.tls_crt = serving->cert_pem;
  good.tls_key = serving->key_pem;
  auto renew = pki::RenewalTime(*pki::ReadCert(serving->cert_pem));

  for (int pass = 0; pass < 2; ++pass) {  // the second pass answers from the memo
    std::time_t at = -1;
    EXPECT_EQ(ServingCertStale(good, kNow, &at), "");
    EXPECT_EQ(at, renew);
    EXPECT_EQ(ServingCertStale(good, renew, &at), "serving certificate due for renewal");
    EXPECT_EQ(at, 0);

    Credentials wrong_key = good;
    wrong_key.tls_key = foreign->key_pem;
    EXPECT_EQ(ServingCertStale(wrong_key, kNow, &at), "serving certificate does not match its key");
    Credentials unsigned_cert = good;
    unsigned_cert.tls_crt = foreign->cert_pem;
    unsigned_cert.tls_key = foreign->key_pem;
    EXPECT_EQ(ServingCertStale(unsigned_cert, kNow, &at), "serving certificate not signed by the job CA");
    Credentials garbage = good;
    garbage.tls_crt = "-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n";
    EXPECT_EQ(ServingCertStale(garbage, kNow, &at), "serving certificate unreadable");
    Credentials empty = good;
    empty.tls_key.clear();
    EXPECT_EQ(ServingCertStale(empty, kNow, &at), "no serving certificate");
    // A CA swapped under the same certificate and key is a different question.
    Credentials new_ca = good;
    new_ca.ca_crt = other_ca->cert_pem;
    EXPECT_EQ(ServingCertStale(new_ca, kNow, &at), "serving certificate not signed by the job CA");
  }
}

}  // namespace
}  // namespace fedge::op
