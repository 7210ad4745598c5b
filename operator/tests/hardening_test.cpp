// Issue 10 (hardening), the operator's part, against the fake API server: every pod the
// operator creates passes the `restricted` Pod Security level; node directories reach
// agents only through operator-made local PersistentVolumes under the allowed prefixes;
// the inference API token and the NetworkPolicies; durable checkpoints by default and the
// CheckpointFailing condition.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "fedge/op/fake_kube_client.h"
#include "fedge/op/reconciler.h"
#include "fedge/op/status_reporter.h"

namespace fedge::op {
namespace {

Json Node(const std::string& name, const std::string& hostname = "") {
  Json labels = {{"fedge.io/edge", "true"}};
  if (!hostname.empty()) labels["kubernetes.io/hostname"] = hostname;
  return {{"apiVersion", "v1"},
          {"kind", "Node"},
          {"metadata", {{"name", name}, {"labels", labels}}},
          {"status", {{"conditions", Json::array({{{"type", "Ready"}, {"status", "True"}}})}}}};
}

Json Job(const std::string& model = "/var/lib/fedge/models/minilm",
         const std::string& data = "/var/lib/fedge/data/wordnet") {
  return {{"apiVersion", "fedge.io/v1alpha1"},
          {"kind", "FederatedTrainingJob"},
          {"metadata", {{"name", "wn"}, {"namespace", "ml"}, {"uid", "uid-1"}}},
          {"spec",
           {{"model", {{"path", model}, {"labels", {"noun.animal", "noun.plant"}}}},
            {"data", {{"path", data}}},
            {"agents", {{"nodeSelector", {{"fedge.io/edge", "true"}}}}},
            {"rounds", {{"total", 3}}},
            {"runPolicy", {{"backoffLimit", 2}}}}}};
}

// What the restricted Pod Security level (k8s.io/pod-security-admission, "latest") would
// refuse in a pod spec, plus a writable root filesystem. Empty = admitted.
std::vector<std::string> RestrictedViolations(const Json& pod) {
  static const std::set<std::string> kAllowedVolumes = {"configMap", "csi",       "downwardAPI",
                                                        "emptyDir",  "ephemeral", "persistentVolumeClaim",
                                                        "projected", "secret"};
  std::vector<std::string> bad;
  const Json& spec = pod["spec"];
  Json psc = spec.value("securityContext", Json::object());
  for (const char* k : {"hostNetwork", "hostPID", "hostIPC"})
    if (spec.value(k, false)) bad.push_back(k);
  for (const auto& v : spec.value("volumes", Json::array())) {
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (it.key() != "name" && !kAllowedVolumes.count(it.key()))
        bad.push_back("volume " + v.value("name", "") + ": " + it.key());
    }
  }
  Json containers = spec.value("containers", Json::array());
  for (const auto& c : spec.value("initContainers", Json::array())) containers.push_back(c);
  for (const auto& c : containers) {
    Json sc = c.value("securityContext", Json::object());
    std::string n = c.value("name", "");
    if (sc.value("privileged", false)) bad.push_back(n + ": privileged");
    if (!sc.contains("allowPrivilegeEscalation") || sc["allowPrivilegeEscalation"] != false)
      bad.push_back(n + ": allowPrivilegeEscalation");
    Json drop = sc.value("capabilities", Json::object()).value("drop", Json::array());
    if (std::find(drop.begin(), drop.end(), "ALL") == drop.end())
      bad.push_back(n + ": capabilities drop ALL");
    for (const auto& add : sc.value("capabilities", Json::object()).value("add", Json::array()))
      if (add != "NET_BIND_SERVICE") bad.push_back(n + ": adds " + add.get<std::string>());
    Json non_root = sc.contains("runAsNonRoot") ? sc["runAsNonRoot"] : psc.value("runAsNonRoot", Json());
    if (non_root != true) bad.push_back(n + ": runAsNonRoot");
    Json uid = sc.contains("runAsUser") ? sc["runAsUser"] : psc.value("runAsUser", Json());
    if (!uid.is_number_integer() || uid.get<int64_t>() == 0)
      bad.push_back(n + ": numeric non-root runAsUser");
    Json seccomp = sc.contains("seccompProfile") ? sc["seccompProfile"] : psc.value("seccompProfile", Json());
    if (!seccomp.is_object() ||
        (seccomp.value("type", "") != "RuntimeDefault" && seccomp.value("type", "") != "Localhost"))
      bad.push_back(n + ": seccompProfile");
    if (sc.value("readOnlyRootFilesystem", false) != true) bad.push_back(n + ": readOnlyRootFilesystem");
    for (const auto& p : c.value("ports", Json::array()))
      if (p.contains("hostPort")) bad.push_back(n + ": hostPort");
  }
  return bad;
}

std::vector<std::string> Command(const Json& pod) {
  return pod["spec"]["containers"][0]["command"].get<std::vector<std::string>>();
}

std::string ArgAfter(const std::vector<std::string>& cmd, const std::string& flag) {
  for (size_t i = 0; i + 1 < cmd.size(); ++i)
    if (cmd[i] == flag) return cmd[i + 1];
  return "";
}

const Json* Volume(const Json& pod, const std::string& name) {
  for (const auto& v : pod["spec"]["volumes"])
    if (v["name"] == name) return &v;
  return nullptr;
}

class HardeningTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(client_.Create(res::kNodes, "", Node("edge-a", "host-a")).ok());
    ASSERT_TRUE(client_.Create(res::kNodes, "", Node("edge-b")).ok());
  }
  JobReconciler Reconciler(DesiredOptions desired = {}) {
    ReconcilerOptions o;
    o.desired = std::move(desired);
    o.clock = &wall_;
    return JobReconciler(&client_, &cache_, &events_, o);
  }
  void Reconcile(DesiredOptions desired = {}) {
    auto r = Reconciler(std::move(desired)).Reconcile("ml/wn");
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  Json Get(const Resource& r, const std::string& name, const std::string& ns = "ml") {
    auto got = client_.Get(r, ns, name);
    EXPECT_TRUE(got.ok()) << r.plural << "/" << name << ": " << got.status().ToString();
    return got.ok() ? *got : Json::object();
  }
  const Json* Condition(const std::string& type) {
    job_ = Get(res::kJobs, "wn");
    return FindCondition(job_["status"]["conditions"], type);
  }
  void SetPhase(const std::string& pod, const std::string& phase, int exit_code) {
    Json st = {{"phase", phase},
               {"containerStatuses",
                Json::array({{{"name", "c"}, {"state", {{"terminated", {{"exitCode", exit_code}}}}}}})}};
    ASSERT_TRUE(client_.MergePatch(res::kPods, "ml", pod, {{"status", st}}, "status").ok());
  }

  FakeKubeClient client_;
  ClientCache cache_{&client_};
  FakeClock clock_;
  FakeClock wall_{1'800'000'000};  // the reconcilers' wall clock
  EventRecorder events_{&client_, &clock_};
  Json job_;
};

// ---- restricted Pod Security -------------------------------------------------------------
TEST(RestrictedPodTest, CheckerRefusesTheOldHostPathAgentPod) {
  // The shape agents had before: hostPath volumes and no securityContext. The checker
  // must report it, or the tests below prove nothing.
  Json old_pod = {{"spec",
                   {{"containers", Json::array({{{"name", "agent"}, {"image", "x"}}})},
                    {"volumes", Json::array({{{"name", "data"}, {"hostPath", {{"path", "/data"}}}}})}}}};
  auto bad = RestrictedViolations(old_pod);
  for (const char* want : {"hostPath", "allowPrivilegeEscalation", "drop ALL", "runAsNonRoot", "runAsUser",
                           "seccompProfile", "readOnlyRootFilesystem"}) {
    EXPECT_TRUE(std::any_of(bad.begin(), bad.end(), [&](const std::string& b) {
      return b.find(want) != std::string::npos;
    })) << want;
  }
}

TEST(RestrictedPodTest, EveryPodTheOperatorCreatesIsRestricted) {
  for (bool tls : {false, true}) {
    for (bool serving : {true, false}) {
      for (bool checkpoint : {true, false}) {
        Json job = Job();
        job["spec"]["privacy"] = {{"tls", tls}};
        job["spec"]["serving"] = {{"enabled", serving}};
        job["spec"]["aggregator"] = {{"checkpoint", {{"enabled", checkpoint}}}};
        DesiredOptions opts;
        opts.image_pull_secrets = {"regcred"};
        for (const Json& pod : {DesiredAggregatorPod(job, 2, opts), DesiredAgentPod(job, "edge-a", opts)}) {
          auto bad = RestrictedViolations(pod);
          EXPECT_TRUE(bad.empty()) << pod["metadata"]["name"] << " tls=" << tls << ": " << bad.front();
          EXPECT_EQ(pod["spec"]["securityContext"]["runAsUser"], kRunAsId);
          EXPECT_EQ(pod["spec"]["securityContext"]["runAsGroup"], kRunAsId);
          EXPECT_EQ(pod["spec"]["imagePullSecrets"][0]["name"], "regcred");
          // Agents have no fsGroup, so every secret they mount must be readable by their
          // user as "other"; the aggregator's stay 0440 through its fsGroup.
          const bool agent = pod["metadata"]["labels"]["fedge.io/role"] == "agent";
          EXPECT_EQ(pod["spec"]["securityContext"].contains("fsGroup"), !agent) << pod["metadata"]["name"];
          for (const auto& v : pod["spec"]["volumes"]) {
            if (v.contains("secret")) {
              EXPECT_EQ(v["secret"]["defaultMode"], agent ? 0444 : 0440) << v["name"];
            }
          }
          // The read-only root filesystem leaves /tmp writable for every container.
          for (const auto& c : pod["spec"]["containers"]) {
            bool tmp = false;
            for (const auto& m : c["volumeMounts"]) tmp |= m["mountPath"] == "/tmp";
            EXPECT_TRUE(tmp) << c["name"];
            EXPECT_EQ(c["imagePullPolicy"], "IfNotPresent");
          }
        }
      }
    }
  }
}

TEST_F(HardeningTest, ReconciledPodsAndVolumesUseNoHostPath) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  Reconcile();
  auto pods = client_.Objects(res::kPods);
  ASSERT_EQ(pods.size(), 3u);
  for (const auto& p : pods) EXPECT_TRUE(RestrictedViolations(p).empty()) << p["metadata"]["name"];
  // No object the operator wrote anywhere carries a hostPath.
  for (const auto& call : client_.Calls()) {
    EXPECT_EQ(call.body.dump().find("hostPath"), std::string::npos) << call.verb << " " << call.resource;
  }
}

// ---- node directories --------------------------------------------------------------------
TEST(HostPathTest, OnlyNormalizedPathsUnderAnAllowedPrefixPass) {
  std::vector<std::string> prefixes = {"/var/lib/fedge", "/srv/models/"};
  for (const char* ok : {"/var/lib/fedge", "/var/lib/fedge/", "/var/lib/fedge/data/wordnet", "/srv/models",
                         "/srv/models/minilm"}) {
    EXPECT_TRUE(CheckHostPath("spec.data.path", ok, prefixes).ok()) << ok;
  }
  for (const char* bad :
       {"/", "/etc", "/var/lib/fedgeX", "/var/lib/fedge-other/x", "/var/lib/fedge/../../etc",
        "/var/lib/fedge/./x", "/var/lib/fedge//x", "var/lib/fedge/x", "", "/srv", "/var/lib"}) {
    Status s = CheckHostPath("spec.data.path", bad, prefixes);
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("spec.data.path"), std::string::npos);
    EXPECT_NE(s.message().find("/var/lib/fedge, /srv/models/"), std::string::npos) << s.message();
  }
  EXPECT_TRUE(CheckHostPath("f", "/anything", {"/"}).ok());
  EXPECT_FALSE(CheckHostPath("f", "/anything", {}).ok());
}

// Regression (issue 10 item 9): spec.data.path became a hostPath mount of any node
// directory, e.g. "/" or "/etc", for any job author.
TEST_F(HardeningTest, JobOutsideTheAllowedPrefixesFailsWithoutChildren) {
  for (const auto& [model, data] : std::vector<std::pair<std::string, std::string>>{
           {"/var/lib/fedge/models/minilm", "/etc"},
           {"/", "/var/lib/fedge/data"},
           {"/var/lib/fedge/../../root", "/var/lib/fedge/data"}}) {
    FakeKubeClient fresh;
    ClientCache cache{&fresh};
    ASSERT_TRUE(fresh.Create(res::kNodes, "", Node("edge-a")).ok());
    ASSERT_TRUE(fresh.Create(res::kJobs, "ml", Job(model, data)).ok());
    ReconcilerOptions o;
    o.clock = &wall_;
    JobReconciler r(&fresh, &cache, &events_, o);
    auto got = r.Reconcile("ml/wn");
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_FALSE(got->requeue_after.has_value()) << "no retry loop";
    Json job = *fresh.Get(res::kJobs, "ml", "wn");
    EXPECT_EQ(job["status"]["state"], "Failed");
    const Json* failed = FindCondition(job["status"]["conditions"], "Failed");
    ASSERT_NE(failed, nullptr);
    EXPECT_EQ(failed->value("reason", ""), "HostPathNotAllowed");
    EXPECT_NE(failed->value("message", "").find("/var/lib/fedge"), std::string::npos) << failed->dump();
    for (const Resource* res : {&res::kPods, &res::kPersistentVolumes, &res::kPersistentVolumeClaims,
                                &res::kSecrets, &res::kConfigMaps}) {
      EXPECT_TRUE(fresh.Objects(*res).empty()) << res->plural << " for model=" << model << " data=" << data;
    }
  }
}

TEST_F(HardeningTest, MovingThePathUnderAPrefixOrAllowingItResumesTheJob) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job("/srv/models/minilm", "/var/lib/fedge/data")).ok());
  Reconcile();
  EXPECT_EQ(Condition("Failed")->value("reason", ""), "HostPathNotAllowed");
  // The administrator allows /srv/models: the next reconcile (an operator restart lists
  // every job) proceeds.
  DesiredOptions wider;
  wider.allowed_host_path_prefixes = {"/var/lib/fedge", "/srv/models"};
  Reconcile(wider);
  EXPECT_EQ(Condition("Failed")->value("status", ""), "False");
  EXPECT_EQ(client_.Objects(res::kPods).size(), 3u);
}

// The mount of `path` in the agent container, or null.
const Json* MountAt(const Json& pod, const std::string& path) {
  for (const auto& m : pod["spec"]["containers"][0]["volumeMounts"])
    if (m["mountPath"] == path) return &m;
  return nullptr;
}

TEST_F(HardeningTest, AgentMountsNodeDirectoriesThroughPreBoundLocalVolumes) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  Reconcile();
  Json pod = Get(res::kPods, "wn-agent-edge-a");
  auto cmd = Command(pod);
  EXPECT_EQ(ArgAfter(cmd, "--model-dir"), "/var/lib/fedge/models/minilm");
  EXPECT_EQ(ArgAfter(cmd, "--data-dir"), "/var/lib/fedge/data/wordnet");
  EXPECT_EQ(ArgAfter(cmd, "--state-dir"), std::string(kStateMountPath) + "/ml/wn");
  // One local volume for the model, data and state directories (all under
  // /var/lib/fedge), each a subPath of it with its own readOnly. The claim is mounted
  // read-write for the state directory; the pod has no fsGroup, so no kubelet changes
  // ownership of the model and data files in it.
  const Json* v = Volume(pod, "node-dirs");
  ASSERT_NE(v, nullptr);
  EXPECT_EQ((*v)["persistentVolumeClaim"]["readOnly"], false) << "the state directory is written";
  EXPECT_EQ(Volume(pod, "node-dirs-2"), nullptr) << "one volume for all three directories";
  EXPECT_FALSE(pod["spec"]["securityContext"].contains("fsGroup"))
      << "a kubelet would chown the read-write volume, model and data included";
  EXPECT_FALSE(pod["spec"]["securityContext"].contains("fsGroupChangePolicy"));
  struct Want {
    std::string mount_path, volume, sub_path;
    bool read_only;
  };
  for (const Want& w : {Want{"/var/lib/fedge/models/minilm", "node-dirs", "models/minilm", true},
                        Want{"/var/lib/fedge/data/wordnet", "node-dirs", "data/wordnet", true},
                        Want{std::string(kStateMountPath) + "/ml/wn", "node-dirs", "state/ml/wn", false}}) {
    const Json* m = MountAt(pod, w.mount_path);
    ASSERT_NE(m, nullptr) << w.mount_path;
    EXPECT_EQ((*m)["name"], w.volume);
    EXPECT_EQ(m->value("subPath", ""), w.sub_path);
    EXPECT_EQ((*m)["readOnly"], w.read_only) << w.mount_path;
  }
  EXPECT_EQ(Volume(pod, "model"), nullptr);
  std::string claim = (*v)["persistentVolumeClaim"]["claimName"];
  Json pvc = Get(res::kPersistentVolumeClaims, claim);
  EXPECT_EQ(pvc["spec"]["storageClassName"], "") << "never the default StorageClass";
  Json pv = Get(res::kPersistentVolumes, pvc["spec"]["volumeName"], "");
  EXPECT_EQ(pv["spec"]["local"]["path"], "/var/lib/fedge") << "the deepest directory holding model and data";
  EXPECT_EQ(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain") << "node files are never deleted";
  EXPECT_EQ(pv["spec"]["claimRef"]["name"], claim);
  EXPECT_EQ(pv["spec"]["claimRef"]["namespace"], "ml");
  auto expr = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
  EXPECT_EQ(expr["key"], "kubernetes.io/hostname");
  EXPECT_EQ(expr["values"][0], "host-a") << "the node's hostname label, not its name";
  EXPECT_FALSE(pv["metadata"].contains("ownerReferences"));
  EXPECT_EQ(pv["metadata"]["labels"][kLabelJobNamespace], "ml");
  EXPECT_EQ(pvc["metadata"]["ownerReferences"][0]["name"], "wn");
  // edge-b has no hostname label: its name is used.
  Json pod_b = Get(res::kPods, "wn-agent-edge-b");
  Json pvc_b =
      Get(res::kPersistentVolumeClaims, (*Volume(pod_b, "node-dirs"))["persistentVolumeClaim"]["claimName"]);
  Json pv_b = Get(res::kPersistentVolumes, pvc_b["spec"]["volumeName"], "");
  EXPECT_EQ(
      pv_b["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
      "edge-b");
  // One volume and one claim per node (was two of each, and three before that: issue 14,
  // writes per agent).
  EXPECT_EQ(client_.Objects(res::kPersistentVolumes).size(), 2u);
  EXPECT_EQ(client_.Objects(res::kPersistentVolumeClaims).size(), 3u)
      << "one per node and the checkpoint claim";
}

TEST(NodeVolumeRootsTest, OneRootPerAllowedPrefixNeverTheirCommonParent) {
  JobSpec spec;
  spec.model.path = "/data/models/m/";
  spec.data.path = "/var/lib/fedge/d";
  DesiredOptions opts;
  opts.allowed_host_path_prefixes = {"/var/lib/fedge", "/data"};
  opts.node_state_dir = "/var/lib/fedge/state";
  auto roots = AgentNodeVolumeRoots(spec, opts);
  ASSERT_EQ(roots.size(), 2u);
  EXPECT_EQ(roots[0].path, "/data/models/m") << "a lone directory is its own root";
  EXPECT_TRUE(roots[0].read_only);
  EXPECT_EQ(roots[0].volume_name, "node-dirs");
  EXPECT_EQ(NodeVolumeSubPath(roots[0], roots[0].dirs[0]), "");
  // The data and the written state directory share their prefix's volume (no fsGroup
  // on agent pods: nothing chowns it), the volume read-write for the state.
  EXPECT_EQ(roots[1].path, "/var/lib/fedge");
  EXPECT_FALSE(roots[1].read_only);
  EXPECT_EQ(roots[1].volume_name, "node-dirs-2");
  ASSERT_EQ(roots[1].dirs.size(), 2u);
  EXPECT_TRUE(roots[1].dirs[0].read_only);
  EXPECT_EQ(NodeVolumeSubPath(roots[1], roots[1].dirs[0]), "d");
  EXPECT_FALSE(roots[1].dirs[1].read_only);
  EXPECT_EQ(NodeVolumeSubPath(roots[1], roots[1].dirs[1]), "state");
  // A prefix and a deeper one: each directory goes with its longest prefix.
  opts.allowed_host_path_prefixes = {"/var/lib/fedge", "/var/lib/fedge/d"};
  spec.model.path = "/var/lib/fedge/m";
  roots = AgentNodeVolumeRoots(spec, opts);
  ASSERT_EQ(roots.size(), 2u);
  EXPECT_EQ(roots[0].path, "/var/lib/fedge") << "model and state, both under the shorter prefix";
  EXPECT_EQ(roots[0].dirs.size(), 2u);
  EXPECT_EQ(roots[1].path, "/var/lib/fedge/d");
  EXPECT_TRUE(roots[1].read_only);
  // "/" allowed: one root, "/" itself when nothing deeper holds all three.
  opts.allowed_host_path_prefixes = {"/"};
  spec.model.path = "/opt/m";
  roots = AgentNodeVolumeRoots(spec, opts);
  ASSERT_EQ(roots.size(), 1u);
  EXPECT_EQ(roots[0].path, "/");
  EXPECT_FALSE(roots[0].read_only);
  EXPECT_EQ(NodeVolumeSubPath(roots[0], roots[0].dirs[0]), "opt/m");
  EXPECT_EQ(NodeVolumeSubPath(roots[0], roots[0].dirs[2]), "var/lib/fedge/state");
}

// Issue 11: the builders read the typed spec the planner parsed once, not the manifest's
// JSON with defaults of their own.
TEST(DesiredTypedSpecTest, BuildersReadTheTypedSpecNotTheJson) {
  Json job = Job();
  JobSpec spec = OperatorJobSpec(job);
  EXPECT_EQ(spec.serving.port, 8080) << "the parser's default";
  EXPECT_TRUE(spec.privacy.tls) << "absent privacy.tls: the cluster's default (TlsEnabled)";
  spec.serving.port = 9123;
  spec.serving.enabled = false;
  spec.privacy.tls = false;
  spec.model.path = "/var/lib/fedge/other-model";
  Json pod = DesiredAgentPod(job, spec, "edge-a", DesiredOptions{});
  auto cmd = Command(pod);
  EXPECT_EQ(ArgAfter(cmd, "--http"), "0.0.0.0:9123");
  EXPECT_EQ(ArgAfter(cmd, "--model-dir"), "/var/lib/fedge/other-model");
  EXPECT_NE(std::find(cmd.begin(), cmd.end(), "--exit-when-done"), cmd.end());
  EXPECT_EQ(std::find(cmd.begin(), cmd.end(), "--tls-cert"), cmd.end());
  EXPECT_EQ(DesiredInferenceService(job, spec)["spec"]["ports"][0]["port"], 9123);
  spec.agents.nodeSelector = {{"pool", "b"}};
  spec.agents.maxAgents = 1;
  std::vector<ObjectPtr> nodes;
  for (const char* n : {"c", "b", "a"}) {
    nodes.push_back(std::make_shared<const Json>(
        Json{{"metadata", {{"name", n}, {"labels", {{"pool", std::string(n) == "a" ? "a" : "b"}}}}}}));
  }
  EXPECT_EQ(SelectNodes(spec.agents, nodes), (std::vector<std::string>{"b"}));
}

TEST_F(HardeningTest, VolumeNamesChangeWithThePathAndStayUniqueAcrossNamespaces) {
  Json a = Job(), b = Job();
  b["metadata"]["namespace"] = "other";
  NodeVolumeRoot v{"/var/lib/fedge", false, {}, "node-dirs"};
  NodeVolumeRoot w{"/var/lib/fedge2", false, {}, "node-dirs"};
  EXPECT_NE(NodePersistentVolumeName(a, "edge-a", v), NodePersistentVolumeName(b, "edge-a", v));
  EXPECT_NE(NodePersistentVolumeName(a, "edge-a", v), NodePersistentVolumeName(a, "edge-a", w));
  EXPECT_NE(NodeVolumeClaimName(a, "edge-a", v), NodeVolumeClaimName(a, "edge-a", w));
  EXPECT_LE(NodePersistentVolumeName(a, std::string(250, 'n'), v).size(), 253u);
}

TEST_F(HardeningTest, DeletingTheJobDeletesItsPersistentVolumeObjects) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  Reconcile();
  // Another job's volume in another namespace with the same job name is not touched.
  Json other = DesiredNodePersistentVolume(Job(), "edge-a", "edge-a",
                                           NodeVolumeRoot{"/var/lib/fedge/x", true, {}, "x"});
  other["metadata"]["name"] = "someone-elses";
  other["metadata"]["labels"][kLabelJobNamespace] = "other";
  ASSERT_TRUE(client_.Create(res::kPersistentVolumes, "", other).ok());
  ASSERT_TRUE(client_.Delete(res::kJobs, "ml", "wn").ok());
  Reconcile();
  EXPECT_TRUE(IsNotFound(client_.Get(res::kJobs, "ml", "wn").status()));
  auto left = client_.Objects(res::kPersistentVolumes);
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0]["metadata"]["name"], "someone-elses");
  EXPECT_TRUE(client_.Objects(res::kPersistentVolumeClaims).empty());
}

// Where each node-volume mount of `container` lands on the node (the bound
// PersistentVolume's local.path joined with the mount's subPath) -> whether it is writable.
std::map<std::string, bool> NodePathsOf(FakeKubeClient& client, const Json& pod, const Json& container) {
  std::map<std::string, bool> out;
  const std::string ns = pod["metadata"]["namespace"];
  for (const auto& m : container.value("volumeMounts", Json::array())) {
    const Json* v = Volume(pod, m["name"]);
    if (v == nullptr || !v->contains("persistentVolumeClaim")) continue;
    auto pvc = client.Get(res::kPersistentVolumeClaims, ns, (*v)["persistentVolumeClaim"]["claimName"]);
    EXPECT_TRUE(pvc.ok()) << pvc.status().ToString();
    if (!pvc.ok()) continue;
    auto pv = client.Get(res::kPersistentVolumes, "", (*pvc)["spec"]["volumeName"]);
    EXPECT_TRUE(pv.ok()) << pv.status().ToString();
    if (!pv.ok()) continue;
    std::string path = (*pv)["spec"]["local"]["path"];
    if (std::string sub = m.value("subPath", ""); !sub.empty()) path += "/" + sub;
    out[path] = !m.value("readOnly", false) && !(*v)["persistentVolumeClaim"].value("readOnly", false);
  }
  return out;
}

// Regression (docs/security.md): every agent pod mounted the node's whole state root
// (--node-state-dir) read-write, so an agent container - a tenant's job on a shared
// node - could read and rewrite other jobs' feedback logs, global models and residuals
// there. Now the agent container's mounts reach only its own <ns>/<job> directory; the
// state root is mounted only into the init container, whose command no job field sets.
TEST_F(HardeningTest, AnAgentContainerCannotReachAnotherJobsStateDirectory) {
  struct Key {
    std::string ns, name, uid;
  };
  const std::vector<Key> jobs = {{"ml", "wn", "uid-1"}, {"ml", "other", "uid-2"}, {"team-b", "wn", "uid-3"}};
  for (const Key& k : jobs) {
    Json job = Job();
    job["metadata"] = {{"name", k.name}, {"namespace", k.ns}, {"uid", k.uid}};
    ASSERT_TRUE(client_.Create(res::kJobs, k.ns, job).ok());
    auto r = Reconciler().Reconcile(k.ns + "/" + k.name);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  auto state_dir = [](const Key& k) { return "/var/lib/fedge/state/" + k.ns + "/" + k.name; };
  // `mounted` gives access to `dir` when it is `dir` or one of its ancestors.
  auto reaches = [](const std::string& mounted, const std::string& dir) {
    return dir == mounted || dir.rfind(mounted + "/", 0) == 0;
  };
  for (const Key& k : jobs) {
    Json pod = Get(res::kPods, k.name + "-agent-edge-a", k.ns);
    ASSERT_EQ(pod["spec"]["containers"].size(), 1u);
    const Json& agent = pod["spec"]["containers"][0];
    const auto paths = NodePathsOf(client_, pod, agent);
    std::vector<std::string> writable;
    for (const auto& [path, rw] : paths)
      if (rw) writable.push_back(path);
    EXPECT_EQ(writable, std::vector<std::string>{state_dir(k)}) << k.ns << "/" << k.name;
    for (const Key& other : jobs) {
      if (other.ns == k.ns && other.name == k.name) continue;
      for (const auto& [path, rw] : paths)
        EXPECT_FALSE(reaches(path, state_dir(other)))
            << k.ns << "/" << k.name << "'s agent mounts " << path << " ("
            << (rw ? "read-write" : "read-only") << "), which holds " << state_dir(other);
    }
    EXPECT_EQ(ArgAfter(Command(pod), "--state-dir"),
              std::string(kStateMountPath) + "/" + k.ns + "/" + k.name);
    // The init container alone sees the root, and runs a fixed command on it.
    ASSERT_EQ(pod["spec"]["initContainers"].size(), 1u);
    const Json& init = pod["spec"]["initContainers"][0];
    EXPECT_EQ(init["image"], agent["image"]);
    EXPECT_EQ(init["command"],
              Json({"fedge-agent", "--make-state-dir", kStateRootMountPath, k.ns + "/" + k.name}));
    EXPECT_EQ(NodePathsOf(client_, pod, init), (std::map<std::string, bool>{{"/var/lib/fedge/state", true}}));
    EXPECT_EQ(init["securityContext"], agent["securityContext"]);
    EXPECT_TRUE(RestrictedViolations(pod).empty());
  }
}

// Regression: the state directory is named after the job (<ns>/<name>), so a job deleted
// and applied again under the same name handed its agents the deleted job's global model
// and feedback log. Each agent now learns the job's uid and discards state of another.
TEST_F(HardeningTest, AgentsGetTheJobUidSoASameNamedNewJobDoesNotReuseTheirState) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  Reconcile();
  const std::string first_uid = Get(res::kJobs, "wn")["metadata"]["uid"];
  ASSERT_FALSE(first_uid.empty());
  for (const char* name : {"wn-agent-edge-a", "wn-agent-edge-b"}) {
    auto cmd = Command(Get(res::kPods, name));
    EXPECT_EQ(ArgAfter(cmd, "--job-uid"), first_uid) << name;
    EXPECT_EQ(ArgAfter(cmd, "--state-dir"), std::string(kStateMountPath) + "/ml/wn") << name;
  }
  ASSERT_TRUE(client_.Delete(res::kJobs, "ml", "wn").ok());
  Reconcile();  // finalized: pods gone, job gone
  ASSERT_TRUE(IsNotFound(client_.Get(res::kJobs, "ml", "wn").status()));
  ASSERT_TRUE(IsNotFound(client_.Get(res::kPods, "ml", "wn-agent-edge-a").status()));

  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  Reconcile();
  const std::string second_uid = Get(res::kJobs, "wn")["metadata"]["uid"];
  ASSERT_NE(second_uid, first_uid);
  for (const char* name : {"wn-agent-edge-a", "wn-agent-edge-b"}) {
    auto cmd = Command(Get(res::kPods, name));
    EXPECT_EQ(ArgAfter(cmd, "--state-dir"), std::string(kStateMountPath) + "/ml/wn")
        << "the same directory as the deleted job's";
    EXPECT_EQ(ArgAfter(cmd, "--job-uid"), second_uid) << name << ": the new job's uid, not the deleted one's";
  }
}

// A job object without a uid (built by hand, never stored by an API server) gets no flag
// rather than an empty one, which the agent would refuse.
TEST(DesiredAgentPodTest, JobWithoutUidGetsNoJobUidFlag) {
  Json job = Job();
  job["metadata"].erase("uid");
  auto cmd = Command(DesiredAgentPod(job, "edge-a", DesiredOptions{}));
  EXPECT_EQ(std::count(cmd.begin(), cmd.end(), "--job-uid"), 0);
  EXPECT_EQ(ArgAfter(Command(DesiredAgentPod(Job(), "edge-a", DesiredOptions{})), "--job-uid"), "uid-1");
}

// ---- inference API token and network policies ----------------------------------------------
TEST_F(HardeningTest, AgentsGetTheJobsInferenceTokenReadOnly) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  Reconcile();
  Json secret = Get(res::kSecrets, "wn-inference-token");
  std::string token = Base64Decode(secret["data"]["token"]);
  EXPECT_EQ(token.size(), 64u);
  EXPECT_EQ(token.find_first_not_of("0123456789abcdef"), std::string::npos);
  for (const char* name : {"wn-agent-edge-a", "wn-agent-edge-b"}) {
    Json pod = Get(res::kPods, name);
    EXPECT_EQ(ArgAfter(Command(pod), "--api-token-file"), std::string(kApiTokenMountPath) + "/token");
    const Json* v = Volume(pod, "api-token");
    ASSERT_NE(v, nullptr);
    EXPECT_EQ((*v)["secret"]["secretName"], "wn-inference-token");
    // Readable by the pod's user without fsGroup (agent pods have none).
    EXPECT_EQ((*v)["secret"]["defaultMode"], 0444);
    bool mounted_ro = false;
    for (const auto& m : pod["spec"]["containers"][0]["volumeMounts"])
      if (m["name"] == "api-token")
        mounted_ro = m["mountPath"] == kApiTokenMountPath && m["readOnly"] == true;
    EXPECT_TRUE(mounted_ro);
  }
  // The aggregator never sees it.
  EXPECT_EQ(Get(res::kPods, "wn-aggregator").dump().find("inference-token"), std::string::npos);
  // A restarted operator whose cache has not seen the Secret reads the live one and
  // never mints a second token that clients do not hold.
  struct EmptySecrets : ObjectCache {
    explicit EmptySecrets(ObjectCache* c) : inner(c) {}
    ObjectPtr Get(const Resource& r, const std::string& ns, const std::string& name) override {
      return r.plural == "secrets" ? nullptr : inner->Get(r, ns, name);
    }
    std::vector<ObjectPtr> List(const Resource& r, const std::string& ns, const std::string& k,
                                const std::string& v) override {
      return inner->List(r, ns, k, v);
    }
    ObjectCache* inner;
  } lagging(&cache_);
  ReconcilerOptions o;
  o.clock = &wall_;
  JobReconciler again(&client_, &lagging, &events_, o);
  ASSERT_TRUE(again.Reconcile("ml/wn").ok());
  EXPECT_EQ(Base64Decode(Get(res::kSecrets, "wn-inference-token")["data"]["token"]), token);
}

TEST_F(HardeningTest, NetworkPoliciesAdmitOnlyTheJobsPeers) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  DesiredOptions opts;
  opts.monitoring_namespaces = {"monitoring"};
  Reconcile(opts);
  Json agents = Get(res::kNetworkPolicies, "wn-agents");
  EXPECT_EQ(agents["spec"]["podSelector"]["matchLabels"][kLabelRole], "agent");
  EXPECT_EQ(agents["spec"]["podSelector"]["matchLabels"][kLabelJob], "wn");
  EXPECT_EQ(agents["spec"]["policyTypes"], Json::array({"Ingress", "Egress"}));
  ASSERT_EQ(agents["spec"]["ingress"].size(), 1u);
  Json rule = agents["spec"]["ingress"][0];
  EXPECT_EQ(rule["ports"], Json::array({{{"port", 8080}, {"protocol", "TCP"}}}));
  Json from = rule["from"];
  ASSERT_EQ(from.size(), 3u);
  EXPECT_EQ(from[0], Json({{"podSelector", Json::object()}})) << "the job's namespace";
  EXPECT_EQ(from[1]["podSelector"]["matchLabels"][kLabelInferenceClient], "true");
  EXPECT_EQ(from[1]["namespaceSelector"], Json::object()) << "labelled clients in any namespace";
  EXPECT_EQ(from[2]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "monitoring");
  // Out of an agent pod: its job's aggregator pods' gRPC port only, not even DNS (a
  // forwarding cluster DNS carries query names off the cluster), so the node's data
  // cannot be sent anywhere else.
  Json egress = agents["spec"]["egress"];
  ASSERT_EQ(egress.size(), 1u) << egress.dump();
  EXPECT_EQ(
      egress[0]["to"],
      Json::array({{{"podSelector", {{"matchLabels", {{kLabelJob, "wn"}, {kLabelRole, "aggregator"}}}}}}}));
  EXPECT_EQ(egress[0]["ports"], Json::array({{{"port", kAggregatorGrpcPort}, {"protocol", "TCP"}}}));

  Json agg = Get(res::kNetworkPolicies, "wn-aggregator");
  EXPECT_EQ(agg["spec"]["podSelector"]["matchLabels"][kLabelRole], "aggregator");
  ASSERT_EQ(agg["spec"]["ingress"].size(), 2u);
  Json grpc = agg["spec"]["ingress"][0];
  EXPECT_EQ(grpc["ports"][0]["port"], kAggregatorGrpcPort);
  ASSERT_EQ(grpc["from"].size(), 1u) << "only the job's agents reach gRPC";
  EXPECT_EQ(grpc["from"][0]["podSelector"]["matchLabels"], Json({{kLabelJob, "wn"}, {kLabelRole, "agent"}}));
  EXPECT_FALSE(grpc["from"][0].contains("namespaceSelector")) << "same namespace only";
  Json http = agg["spec"]["ingress"][1];
  EXPECT_EQ(http["ports"][0]["port"], kAggregatorHttpPort);
  EXPECT_EQ(http["from"].size(), 2u);
}

// Agents need no DNS: the aggregator Service's address comes from the kubelet's service
// environment, and its certificate's name is verified apart from the address.
TEST_F(HardeningTest, AgentsReachTheAggregatorWithoutDnsAndTheirEgressCanBeTurnedOff) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  Reconcile();
  Json pod = Get(res::kPods, "wn-agent-edge-a");
  EXPECT_EQ(pod["spec"]["enableServiceLinks"], true);
  const Json cmd = pod["spec"]["containers"][0]["command"];
  auto arg = [&](const std::string& flag) {
    for (size_t i = 0; i + 1 < cmd.size(); ++i)
      if (cmd[i] == flag) return cmd[i + 1].get<std::string>();
    return std::string();
  };
  EXPECT_EQ(arg("--aggregator"), "$(WN_AGGREGATOR_SERVICE_HOST):7070") << cmd.dump();
  EXPECT_EQ(arg("--tls-server-name"), "wn-aggregator.ml.svc");
  Json with_dashes = Job();
  with_dashes["metadata"]["name"] = "word-net.v2";
  EXPECT_EQ(AggregatorServiceHostVar(with_dashes), "WORD_NET_V2_AGGREGATOR_SERVICE_HOST");
  // Off: the running job's policy loses its egress rules at the next pass (ingress stays).
  DesiredOptions opts;
  opts.agent_egress_policy = false;
  Reconcile(opts);
  Json agents = Get(res::kNetworkPolicies, "wn-agents");
  EXPECT_EQ(agents["spec"]["policyTypes"], Json::array({"Ingress"}));
  EXPECT_FALSE(agents["spec"].contains("egress")) << agents.dump();
  EXPECT_EQ(agents["spec"]["ingress"].size(), 1u);
}

// After an upgrade from an operator before session 33, its agent pods still resolve the
// aggregator Service's name, which <job>-agents no longer admits. Until they are replaced,
// those pods, and only those, may query the cluster DNS.
TEST_F(HardeningTest, AgentsAnOlderOperatorMadeMayQueryDnsUntilReplaced) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  Reconcile();
  EXPECT_FALSE(client_.Get(res::kNetworkPolicies, "ml", "wn-agents-dns").ok()) << "none for a new job";
  Json pod = Get(res::kPods, "wn-agent-edge-a");
  EXPECT_FALSE(AgentResolvesAggregatorByName(pod));
  Json containers = pod["spec"]["containers"];
  for (auto& c : containers)
    for (size_t i = 0; i + 1 < c["command"].size(); ++i)
      if (c["command"][i] == "--aggregator") c["command"][i + 1] = "wn-aggregator.ml.svc:7070";
  ASSERT_TRUE(
      client_.MergePatch(res::kPods, "ml", "wn-agent-edge-a", {{"spec", {{"containers", containers}}}}, "")
          .ok());
  EXPECT_TRUE(AgentResolvesAggregatorByName(Get(res::kPods, "wn-agent-edge-a")));

  DesiredOptions opts;
  opts.dns_namespace = "dns";
  opts.dns_pod_labels = {{"app", "coredns"}};
  Reconcile(opts);
  EXPECT_EQ(
      Get(res::kPods, "wn-agent-edge-a")["metadata"]["labels"].value(kLabelResolvesAggregatorByName, ""),
      "true");
  EXPECT_FALSE(
      Get(res::kPods, "wn-agent-edge-b")["metadata"]["labels"].contains(kLabelResolvesAggregatorByName))
      << "this operator's agents get no DNS";
  Json dns = Get(res::kNetworkPolicies, "wn-agents-dns");
  EXPECT_EQ(dns["spec"]["podSelector"]["matchLabels"],
            Json({{kLabelJob, "wn"}, {kLabelRole, "agent"}, {kLabelResolvesAggregatorByName, "true"}}));
  EXPECT_EQ(dns["spec"]["policyTypes"], Json::array({"Egress"})) << "adds egress, takes no ingress away";
  EXPECT_FALSE(dns["spec"].contains("ingress"));
  EXPECT_EQ(dns["spec"]["egress"],
            Json::array({{{"to", Json::array({{{"namespaceSelector",
                                                {{"matchLabels", {{"kubernetes.io/metadata.name", "dns"}}}}},
                                               {"podSelector", {{"matchLabels", {{"app", "coredns"}}}}}}})},
                          {"ports", Json::array({{{"port", 53}, {"protocol", "UDP"}},
                                                 {{"port", 53}, {"protocol", "TCP"}}})}}}))
      << dns.dump();
  EXPECT_EQ(dns["metadata"]["ownerReferences"][0]["kind"], "FederatedTrainingJob")
      << "collected with the job";
  ASSERT_EQ(Get(res::kNetworkPolicies, "wn-agents")["spec"]["egress"].size(), 1u)
      << "the job's agents: no DNS";

  // With the agents' egress open there is nothing to add; on again, it is back.
  opts.agent_egress_policy = false;
  Reconcile(opts);
  EXPECT_FALSE(client_.Get(res::kNetworkPolicies, "ml", "wn-agents-dns").ok());
  Reconcile();
  EXPECT_EQ(Get(res::kNetworkPolicies, "wn-agents-dns")["spec"]["egress"][0]["to"][0]["namespaceSelector"]
                                                       ["matchLabels"]["kubernetes.io/metadata.name"],
            "kube-system")
      << "the defaults: K3s, kubeadm";

  // The last such pod gone (replaced): the policy goes, the new pod takes the address.
  ASSERT_TRUE(client_.Delete(res::kPods, "ml", "wn-agent-edge-a").ok());
  Reconcile();
  EXPECT_FALSE(client_.Get(res::kNetworkPolicies, "ml", "wn-agents-dns").ok());
  EXPECT_FALSE(AgentResolvesAggregatorByName(Get(res::kPods, "wn-agent-edge-a")));
}

TEST(ParseLabelPairsTest, ReadsTheDnsPodSelector) {
  auto one = ParseLabelPairs("k8s-app=kube-dns");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(*one, (std::map<std::string, std::string>{{"k8s-app", "kube-dns"}}));
  auto two = ParseLabelPairs("tier=dns,app=coredns");
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(*two, (std::map<std::string, std::string>{{"app", "coredns"}, {"tier", "dns"}}));
  auto prefixed = ParseLabelPairs("app.kubernetes.io/name=core-dns_1.x");
  ASSERT_TRUE(prefixed.ok()) << prefixed.status().ToString();
  EXPECT_EQ(prefixed->at("app.kubernetes.io/name"), "core-dns_1.x");
  // Each would make the API server refuse every policy the operator writes with it.
  for (const char* bad : {"", "k8s-app", "=x", "k=", "a=b,", "a=b,,c=d", "k8s app=dns", "app=kube dns",
                          "-app=dns", "app=dns-", "Example.COM/app=dns", "/app=dns", "a/b/c=d", "app=x,y"}) {
    auto got = ParseLabelPairs(bad);
    EXPECT_FALSE(got.ok()) << bad;
    if (!got.ok()) {
      EXPECT_NE(got.status().message().find("KEY=VALUE"), std::string::npos) << bad;
    }
  }
  EXPECT_FALSE(ParseLabelPairs(std::string(64, 'a') + "=dns").ok());
  EXPECT_FALSE(ParseLabelPairs("app=" + std::string(64, 'a')).ok());
  EXPECT_TRUE(ParseLabelPairs("app=" + std::string(63, 'a')).ok());
}

TEST(CheckNamespaceNameTest, OnlyANamespacesNameGoesIntoAPolicy) {
  for (const char* good : {"kube-system", "monitoring", "a", "ns-1"})
    EXPECT_TRUE(CheckNamespaceName("--dns-namespace", good).ok()) << good;
  for (const std::string& bad : std::vector<std::string>{"", "Kube-System", "kube_system", "-dns", "dns-",
                                                         "kube.system", std::string(64, 'a')}) {
    Status s = CheckNamespaceName("--dns-namespace", bad);
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_NE(s.message().find("--dns-namespace '" + bad + "' is not a namespace name"), std::string::npos)
        << s.message();
  }
}

// Out of an aggregator pod: the API server only (its status reporter), by the addresses
// its `kubernetes` EndpointSlice lists (a pod's packet to the Service carries them once
// kube-proxy has translated it). Nothing else: a compromised aggregator, which holds every
// agent's updates, has nowhere to send them.
TEST_F(HardeningTest, AggregatorEgressIsTheApiServerOnly) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  Reconcile();
  Json agg = Get(res::kNetworkPolicies, "wn-aggregator");
  EXPECT_EQ(agg["spec"]["policyTypes"], Json::array({"Ingress", "Egress"}));
  EXPECT_EQ(agg["spec"]["egress"],
            Json::array({{{"to", Json::array({{{"ipBlock", {{"cidr", "10.0.0.1/32"}}}}})},
                          {"ports", Json::array({{{"port", 6443}, {"protocol", "TCP"}}})}}}))
      << agg.dump();
  EXPECT_EQ(agg["spec"]["ingress"].size(), 2u) << "ingress unchanged";

  // An HA control plane (one API server not ready) moved to other addresses: the running
  // job's policy follows at the next pass that reads them.
  client_.SetPath(
      kApiServerEndpointSlicePath,
      {{"addressType", "IPv4"},
       {"endpoints", Json::array({{{"addresses", {"192.168.1.12"}}},
                                  {{"addresses", {"192.168.1.11"}}, {"conditions", {{"ready", true}}}},
                                  {{"addresses", {"192.168.1.13"}}, {"conditions", {{"ready", false}}}}})},
       {"ports", Json::array({{{"name", "https"}, {"port", 443}, {"protocol", "TCP"}}})}});
  Reconcile();
  agg = Get(res::kNetworkPolicies, "wn-aggregator");
  EXPECT_EQ(agg["spec"]["egress"],
            Json::array({{{"to", Json::array({{{"ipBlock", {{"cidr", "192.168.1.11/32"}}}},
                                              {{"ipBlock", {{"cidr", "192.168.1.12/32"}}}}})},
                          {"ports", Json::array({{{"port", 443}, {"protocol", "TCP"}}})}}}))
      << agg.dump();
  client_.SetPath(kApiServerEndpointSlicePath,
                  {{"addressType", "IPv6"},
                   {"endpoints", Json::array({{{"addresses", {"fd00::1"}}}})},
                   {"ports", Json::array({{{"name", "https"}, {"port", 6443}}})}});
  Reconcile();
  EXPECT_EQ(Get(res::kNetworkPolicies, "wn-aggregator")["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"],
            "fd00::1/128");
}

TEST_F(HardeningTest, AggregatorEgressStaysOpenWhileTheApiServerIsUnknownAndKeepsWhatWasRead) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  // An operator not allowed to read the slice (or a cluster without one): the aggregator's
  // status reporter must still reach the API server, so no egress rules at all.
  client_.FailNext(
      "get", kApiServerEndpointSlicePath,
      KubeError("Forbidden", 403, "endpointslices.discovery.k8s.io \"kubernetes\" is forbidden"));
  ReconcilerOptions o;
  o.clock = &wall_;
  o.api_server_endpoints_ttl = std::chrono::seconds(0);  // every pass reads
  JobReconciler r(&client_, &cache_, &events_, o);
  ASSERT_TRUE(r.Reconcile("ml/wn").ok());
  Json agg = Get(res::kNetworkPolicies, "wn-aggregator");
  EXPECT_EQ(agg["spec"]["policyTypes"], Json::array({"Ingress"})) << agg.dump();
  EXPECT_FALSE(agg["spec"].contains("egress"));
  EXPECT_EQ(client_.Objects(res::kPods).size(), 3u) << "the job goes on";
  // Readable: the rules appear. Unreadable again: the addresses read before stay.
  ASSERT_TRUE(r.Reconcile("ml/wn").ok());
  EXPECT_EQ(Get(res::kNetworkPolicies, "wn-aggregator")["spec"]["egress"].size(), 1u);
  client_.FailNext("get", kApiServerEndpointSlicePath, KubeError("ServiceUnavailable", 503, "try again"));
  ASSERT_TRUE(r.Reconcile("ml/wn").ok());
  agg = Get(res::kNetworkPolicies, "wn-aggregator");
  EXPECT_EQ(agg["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"], "10.0.0.1/32") << agg.dump();
  // A slice that makes no sense is not used either.
  client_.SetPath(kApiServerEndpointSlicePath, {{"endpoints", Json::array({{{"addresses", {"not-an-ip"}}}})},
                                                {"ports", Json::array({{{"port", 6443}}})}});
  ASSERT_TRUE(r.Reconcile("ml/wn").ok());
  EXPECT_EQ(Get(res::kNetworkPolicies, "wn-aggregator")["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"],
            "10.0.0.1/32");
}

TEST_F(HardeningTest, AggregatorEgressCanBeTurnedOffAndThenTheSliceIsNotRead) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  Reconcile();
  ASSERT_TRUE(Get(res::kNetworkPolicies, "wn-aggregator")["spec"].contains("egress"));
  DesiredOptions opts;
  opts.aggregator_egress_policy = false;
  client_.ClearCalls();
  Reconcile(opts);
  Json agg = Get(res::kNetworkPolicies, "wn-aggregator");
  EXPECT_EQ(agg["spec"]["policyTypes"], Json::array({"Ingress"}));
  EXPECT_FALSE(agg["spec"].contains("egress")) << agg.dump();
  for (const auto& c : client_.Calls()) EXPECT_NE(c.resource, kApiServerEndpointSlicePath);
  // The agents' rules are their own switch.
  EXPECT_EQ(Get(res::kNetworkPolicies, "wn-agents")["spec"]["egress"].size(), 1u);
}

TEST(ReadApiServerEndpointsTest, AFailedReadSaysWhatToDo) {
  FakeKubeClient client;
  auto ok = ReadApiServerEndpoints(client);
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(ok->size(), 1u);
  client.FailNext("get", kApiServerEndpointSlicePath, KubeError("Forbidden", 403, "forbidden"));
  auto denied = ReadApiServerEndpoints(client);
  ASSERT_FALSE(denied.ok());
  EXPECT_NE(denied.status().message().find("needs get on endpointslices"), std::string::npos)
      << denied.status().message();
  client.SetPath(kApiServerEndpointSlicePath, nullptr);
  auto absent = ReadApiServerEndpoints(client);
  ASSERT_FALSE(absent.ok());
  EXPECT_NE(absent.status().message().find("lists no address for its API server"), std::string::npos)
      << absent.status().message();
}

TEST(ParseApiServerEndpointsTest, ReadsTheSliceOrSaysWhatIsWrong) {
  auto ok = ParseApiServerEndpoints(
      {{"addressType", "IPv4"},
       {"endpoints", Json::array({{{"addresses", {"10.77.0.1"}}}, {{"addresses", {"10.77.0.1"}}}})},
       {"ports", Json::array({{{"name", "metrics"}, {"port", 9000}}, {{"name", "https"}, {"port", 6443}}})}});
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  ASSERT_EQ(ok->size(), 1u) << "duplicates go";
  EXPECT_EQ((*ok)[0].ip, "10.77.0.1");
  EXPECT_EQ((*ok)[0].port, 6443) << "the port named https";
  struct Bad {
    Json slice;
    const char* says;
  };
  const Json port = Json::array({{{"name", "https"}, {"port", 6443}}});
  for (const auto& [slice, says] : std::vector<Bad>{
           {Json::array(), "not an object"},
           {{{"endpoints", Json::array({{{"addresses", {"10.0.0.1"}}}})}}, "no TCP port"},
           {{{"endpoints", Json::array({{{"addresses", {"10.0.0.1"}}}})},
             {"ports", Json::array({{{"port", 70000}}})}},
            "no TCP port"},
           {{{"endpoints", Json::array()}, {"ports", port}}, "no ready address"},
           {{{"endpoints", Json::array({{{"addresses", {"10.0.0.1"}}, {"conditions", {{"ready", false}}}}})},
             {"ports", port}},
            "no ready address"},
           {{{"endpoints", Json::array({{{"addresses", {"10.0.0.1/8"}}}})}, {"ports", port}}, "not an IPv4"},
           {{{"endpoints", Json::array({{{"addresses", {"fd00::1"}}}})}, {"ports", port}}, "not an IPv4"},
           {{{"endpoints", Json::array({{{"addresses", {7}}}})}, {"ports", port}}, "not a string"},
           {{{"addressType", "FQDN"},
             {"endpoints", Json::array({{{"addresses", {"api.example"}}}})},
             {"ports", port}},
            "addressType FQDN"},
       }) {
    auto r = ParseApiServerEndpoints(slice);
    ASSERT_FALSE(r.ok()) << slice.dump();
    EXPECT_NE(r.status().message().find(says), std::string::npos) << r.status().message();
  }
}

TEST_F(HardeningTest, NetworkPoliciesCanBeTurnedOff) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  DesiredOptions opts;
  opts.network_policies = false;
  Reconcile(opts);
  EXPECT_TRUE(client_.Objects(res::kNetworkPolicies).empty());
  EXPECT_EQ(client_.Objects(res::kPods).size(), 3u);
}

// ---- checkpoints -------------------------------------------------------------------------
TEST(CheckpointTest, DurableByDefaultEmptyDirOnlyWhenDisabled) {
  Json job = Job();
  // Default (the CRD defaults enabled to true; absent means the same).
  Json claim = DesiredCheckpointClaim(job);
  ASSERT_TRUE(claim.is_object());
  EXPECT_EQ(claim["metadata"]["name"], "wn-checkpoints");
  EXPECT_FALSE(claim["spec"].contains("storageClassName")) << "absent: the cluster's default StorageClass";
  EXPECT_EQ(claim["spec"]["resources"]["requests"]["storage"], "1Gi");
  Json pod = DesiredAggregatorPod(job, 2, DesiredOptions{});
  EXPECT_EQ((*Volume(pod, "checkpoints"))["persistentVolumeClaim"]["claimName"], "wn-checkpoints");

  job["spec"]["aggregator"] = {{"checkpoint", {{"storageClassName", "local-path"}, {"size", "5Gi"}}}};
  claim = DesiredCheckpointClaim(job);
  EXPECT_EQ(claim["spec"]["storageClassName"], "local-path");
  EXPECT_EQ(claim["spec"]["resources"]["requests"]["storage"], "5Gi");

  job["spec"]["aggregator"] = {{"checkpoint", {{"enabled", true}, {"claimName", "mine"}}}};
  EXPECT_TRUE(DesiredCheckpointClaim(job).is_null()) << "the user's claim: none made";
  EXPECT_EQ((*Volume(DesiredAggregatorPod(job, 2, DesiredOptions{}),
                     "checkpoints"))["persistentVolumeClaim"]["claimName"],
            "mine");

  job["spec"]["aggregator"] = {{"checkpoint", {{"enabled", false}}}};
  EXPECT_TRUE(DesiredCheckpointClaim(job).is_null());
  EXPECT_TRUE((*Volume(DesiredAggregatorPod(job, 2, DesiredOptions{}), "checkpoints")).contains("emptyDir"));
}

// Regression (issue 10 item 11): checkpoints went to an emptyDir of a restartPolicy: Never
// pod, so a failed aggregator pod was replaced by one that started from round 0.
TEST_F(HardeningTest, FailedAggregatorIsReplacedOnTheSameCheckpointClaim) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  Reconcile();
  Json first = Get(res::kPods, "wn-aggregator");
  EXPECT_EQ((*Volume(first, "checkpoints"))["persistentVolumeClaim"]["claimName"], "wn-checkpoints");
  Json pvc = Get(res::kPersistentVolumeClaims, "wn-checkpoints");
  EXPECT_EQ(pvc["metadata"]["ownerReferences"][0]["name"], "wn");
  SetPhase("wn-aggregator", "Failed", 137);
  Reconcile();  // deleted within backoffLimit
  EXPECT_TRUE(IsNotFound(client_.Get(res::kPods, "ml", "wn-aggregator").status()));
  Reconcile();  // recreated
  Json second = Get(res::kPods, "wn-aggregator");
  EXPECT_NE(second["metadata"]["uid"], first["metadata"]["uid"]);
  EXPECT_EQ((*Volume(second, "checkpoints"))["persistentVolumeClaim"]["claimName"], "wn-checkpoints");
  EXPECT_EQ(ArgAfter(Command(second), "--checkpoint-dir"), kCheckpointMountPath);
  EXPECT_EQ(Get(res::kPersistentVolumeClaims, "wn-checkpoints")["metadata"]["uid"], pvc["metadata"]["uid"])
      << "the same claim, so the same checkpoint";
  EXPECT_EQ(Get(res::kJobs, "wn")["status"]["restarts"], 1);
}

TEST_F(HardeningTest, UnboundCheckpointClaimWithoutStorageClassSaysWhatToDo) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  Reconcile();
  ASSERT_TRUE(client_
                  .MergePatch(res::kPersistentVolumeClaims, "ml", "wn-checkpoints",
                              {{"status", {{"phase", "Pending"}}}}, "status")
                  .ok());
  Reconcile();
  const Json* running = Condition("Running");
  ASSERT_NE(running, nullptr);
  EXPECT_EQ(running->value("reason", ""), "CheckpointClaimUnbound");
  EXPECT_NE(running->value("message", "").find("storageClassName"), std::string::npos);
}

TEST_F(HardeningTest, ReportedCheckpointFailuresBecomeACondition) {
  ASSERT_TRUE(client_.Create(res::kJobs, "ml", Job()).ok());
  Reconcile();
  auto report = [&](int64_t consecutive) {
    Json patch = {{"status",
                   {{"checkpoint",
                     {{"consecutiveFailures", consecutive},
                      {"failuresTotal", 3},
                      {"lastError", "write state.json: No space left on device"}}}}}};
    ASSERT_TRUE(client_.MergePatch(res::kJobs, "ml", "wn", patch, "status").ok());
  };
  report(2);
  Reconcile();
  const Json* c = Condition("CheckpointFailing");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->value("status", ""), "True");
  EXPECT_NE(c->value("message", "").find("No space left"), std::string::npos);
  EXPECT_NE(c->value("message", "").find("wn-checkpoints"), std::string::npos);
  report(0);
  Reconcile();
  c = Condition("CheckpointFailing");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->value("status", ""), "False");
}

TEST(StatusReporterTest, CarriesTheAggregatorsCheckpointHealth) {
  Json agg = Json::parse(R"({"state":"Running","round":2,"global_version":2,"rounds":[],
    "checkpoint":{"consecutive_failures":1,"failures_total":4,"last_error":"EIO","last_saved_round":1}})");
  Json st = ProgressFromAggregator(agg);
  EXPECT_EQ(st["checkpoint"]["consecutiveFailures"], 1);
  EXPECT_EQ(st["checkpoint"]["failuresTotal"], 4);
  EXPECT_EQ(st["checkpoint"]["lastError"], "EIO");
  EXPECT_EQ(st["checkpoint"]["lastSavedRound"], 1);
  agg["checkpoint"]["last_error"] = std::string(5000, 'x');
  EXPECT_EQ(ProgressFromAggregator(agg)["checkpoint"]["lastError"].get<std::string>().size(), 512u);
  agg.erase("checkpoint");
  EXPECT_FALSE(ProgressFromAggregator(agg).contains("checkpoint")) << "older aggregators report none";
}

}  // namespace
}  // namespace fedge::op
