#include "fedge/op/reconciler.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "fedge/job_spec.h"
#include "fedge/op/fake_kube_client.h"
#include "fedge/op/status_reporter.h"
#include "fedge/pki.h"

namespace fedge::op {
namespace {

Json Node(const std::string& name, bool edge, bool ready = true) {
  Json labels = Json::object();
  if (edge) labels["fedge.io/edge"] = "true";
  return {
      {"apiVersion", "v1"},
      {"kind", "Node"},
      {"metadata", {{"name", name}, {"labels", labels}}},
      {"status", {{"conditions", Json::array({{{"type", "Ready"}, {"status", ready ? "True" : "False"}}})}}}};
}

Json Job(const std::string& name = "wn") {
  return {{"apiVersion", "fedge.io/v1alpha1"},
          {"kind", "FederatedTrainingJob"},
          {"metadata", {{"name", name}, {"namespace", "ml"}}},
          {"spec",
           {{"model", {{"path", "/var/lib/fedge/models/minilm"}, {"labels", {"noun.animal", "noun.plant"}}}},
            {"data", {{"path", "/var/lib/fedge/data/wordnet"}}},
            {"agents", {{"nodeSelector", {{"fedge.io/edge", "true"}}}, {"tolerationSeconds", 600}}},
            {"rounds", {{"total", 3}}},
            {"runPolicy", {{"backoffLimit", 1}}}}}};
}

class ReconcilerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const auto& n : {Node("edge-a", true), Node("edge-b", true), Node("core-1", false)}) {
      ASSERT_TRUE(client_.Create(res::kNodes, "", n).ok());
    }
  }
  Json CreateJob(Json job = Job()) {
    auto j = client_.Create(res::kJobs, "ml", job);
    EXPECT_TRUE(j.ok());
    return *j;
  }
  ReconcileResult Reconcile(const std::string& key = "ml/wn") {
    auto r = reconciler_.Reconcile(key);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : ReconcileResult{};
  }
  // Creates Job() with spec.runPolicy.<field> = value and runs the first pass.
  ReconcileResult CreateJobWithRunPolicy(const std::string& field, const Json& value) {
    Json job = Job();
    job["spec"]["runPolicy"][field] = value;
    CreateJob(job);
    return Reconcile();
  }
  Json GetJob(const std::string& name = "wn") { return *client_.Get(res::kJobs, "ml", name); }
  std::vector<Json> Pods() { return client_.Objects(res::kPods); }
  void SetPodPhase(const std::string& name, const std::string& phase, int exit_code = 0, bool ready = false) {
    Json st = {{"phase", phase},
               {"conditions", Json::array({{{"type", "Ready"}, {"status", ready ? "True" : "False"}}})}};
    if (phase == "Failed" || phase == "Succeeded") {
      st["containerStatuses"] =
          Json::array({{{"name", "c"}, {"state", {{"terminated", {{"exitCode", exit_code}}}}}}});
    }
    ASSERT_TRUE(client_.MergePatch(res::kPods, "ml", name, {{"status", st}}, "status").ok());
  }
  const Json* Condition(const Json& job, const std::string& type) {
    return FindCondition(job["status"]["conditions"], type);
  }

  FakeKubeClient client_;
  ClientCache cache_{&client_};
  FakeClock clock_;
  EventRecorder events_{&client_, &clock_};
  // The reconcilers' clock (wall: 1'800'000'000): tests advance it between passes.
  FakeClock wall_{1'800'000'000};
  std::time_t now() const { return wall_.WallNow(); }
  JobReconciler reconciler_{&client_, &cache_, &events_, ReconcilerOptions{DefaultImages(), &wall_}};
};

TEST_F(ReconcilerTest, CreatesEveryChildWithControllerOwnerReference) {
  Json job = CreateJob();
  Reconcile();
  std::string uid = job["metadata"]["uid"];
  int children = 0;
  for (const Resource* r :
       {&res::kSecrets, &res::kConfigMaps, &res::kServices, &res::kPods, &res::kServiceAccounts, &res::kRoles,
        &res::kRoleBindings, &res::kPersistentVolumeClaims, &res::kNetworkPolicies}) {
    for (const auto& o : client_.Objects(*r)) {
      ++children;
      auto refs = o["metadata"]["ownerReferences"];
      ASSERT_EQ(refs.size(), 1u) << r->plural;
      EXPECT_EQ(refs[0]["uid"], uid);
      EXPECT_TRUE(refs[0]["controller"].get<bool>());
    }
  }
  // 4 secrets (credentials, inference token, one per agent), configmap, 2 services,
  // aggregator + 2 agents, SA, role, binding, checkpoint claim + 1 node-volume claim per
  // agent (model, data and state), 2 network policies
  EXPECT_EQ(children, 18);
  std::set<std::string> nodes;
  for (const auto& p : Pods()) {
    if (p["metadata"]["labels"][kLabelRole] == "agent")
      nodes.insert(p["metadata"]["annotations"][kAnnotationNode]);
  }
  EXPECT_EQ(nodes, (std::set<std::string>{"edge-a", "edge-b"}));
  Json got = GetJob();
  EXPECT_EQ(got["status"]["state"], "Created");
  EXPECT_EQ(got["status"]["agents"]["desired"], 2);
  EXPECT_EQ(got["status"]["observedGeneration"], 1);
  EXPECT_EQ(got["metadata"]["finalizers"][0], kFinalizer);
  ASSERT_NE(Condition(got, "Created"), nullptr);
  EXPECT_EQ(Condition(got, "Created")->value("status", ""), "True");
}

TEST_F(ReconcilerTest, AgentPodToleratesOfflineNodeAndIsPinned) {
  CreateJob();
  Reconcile();
  auto pod = client_.Get(res::kPods, "ml", "wn-agent-edge-a");
  ASSERT_TRUE(pod.ok());
  bool not_ready = false, unreachable = false;
  for (const auto& t : (*pod)["spec"]["tolerations"]) {
    EXPECT_EQ(t["tolerationSeconds"], 600);
    not_ready |= t["key"] == "node.kubernetes.io/not-ready";
    unreachable |= t["key"] == "node.kubernetes.io/unreachable";
  }
  EXPECT_TRUE(not_ready && unreachable);
  auto terms = (*pod)["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                     ["nodeSelectorTerms"];
  EXPECT_EQ(terms[0]["matchFields"][0]["values"][0], "edge-a");
  auto svc = client_.Get(res::kServices, "ml", "wn-inference");
  ASSERT_TRUE(svc.ok());
  EXPECT_EQ((*svc)["spec"]["internalTrafficPolicy"], "Local");
}

TEST_F(ReconcilerTest, SecretHoldsTheCaAndACaSignedServingCertificate) {
  CreateJob();
  Reconcile();
  auto secret = client_.Get(res::kSecrets, "ml", "wn-credentials");
  ASSERT_TRUE(secret.ok());
  EXPECT_EQ((*secret)["data"].size(), 4u) << "no agent tokens: agents join with projected tokens";
  Credentials c = CredentialsFromSecret(*secret);
  BIO* cb = BIO_new_mem_buf(c.ca_crt.data(), static_cast<int>(c.ca_crt.size()));
  X509* ca = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
  BIO* tb = BIO_new_mem_buf(c.tls_crt.data(), static_cast<int>(c.tls_crt.size()));
  X509* tls = PEM_read_bio_X509(tb, nullptr, nullptr, nullptr);
  ASSERT_TRUE(ca && tls);
  EVP_PKEY* ca_pub = X509_get_pubkey(ca);
  EXPECT_EQ(X509_verify(tls, ca_pub), 1);
  EVP_PKEY_free(ca_pub);
  X509_free(ca);
  X509_free(tls);
  BIO_free(cb);
  BIO_free(tb);
}

TEST_F(ReconcilerTest, SteadyStateReconcileWritesNothing) {
  CreateJob();
  Reconcile();
  client_.ClearCalls();
  Reconcile();
  Reconcile();
  EXPECT_EQ(client_.CountWrites(), 0);
  EXPECT_EQ(Pods().size(), 3u);
}

TEST_F(ReconcilerTest, RestartedOperatorCreatesNoDuplicates) {
  CreateJob();
  Reconcile();
  auto secret_before = *client_.Get(res::kSecrets, "ml", "wn-credentials");
  // A fresh reconciler (a restarted operator) over the same cluster.
  JobReconciler again(&client_, &cache_, &events_, ReconcilerOptions{DefaultImages(), &wall_});
  ASSERT_TRUE(again.Reconcile("ml/wn").ok());
  EXPECT_EQ(Pods().size(), 3u);
  EXPECT_EQ(client_.Objects(res::kSecrets).size(), 2u);  // credentials, inference token
  EXPECT_EQ((*client_.Get(res::kSecrets, "ml", "wn-credentials"))["data"], secret_before["data"]);
}

TEST_F(ReconcilerTest, InvalidSpecBecomesConditionWithoutRetry) {
  Json job = Job();
  // Valid for the schema, rejected by ParseJobSpec: quorum above the agents it may wait for.
  job["spec"]["rounds"]["quorum"] = 3;
  CreateJob(job);
  auto r = reconciler_.Reconcile("ml/wn");
  ASSERT_TRUE(r.ok()) << "an invalid spec must not be an error (no retry storm)";
  EXPECT_FALSE(r->requeue_after.has_value());
  Json got = GetJob();
  EXPECT_EQ(got["status"]["state"], "Failed");
  const Json* failed = Condition(got, "Failed");
  ASSERT_NE(failed, nullptr);
  EXPECT_EQ(failed->value("reason", ""), "InvalidSpec");
  EXPECT_NE(failed->value("message", "").find("spec.rounds.quorum"), std::string::npos) << failed->dump();
  EXPECT_TRUE(Pods().empty());
  EXPECT_EQ(client_.CountCalls("create", "events"), 1);
  client_.ClearCalls();
  Reconcile();
  EXPECT_EQ(client_.CountWrites(), 0);
}

TEST_F(ReconcilerTest, FixingAnInvalidSpecResumes) {
  Json job = Job();
  job["spec"]["model"]["labels"] = {"only-one"};
  CreateJob(job);
  Reconcile();
  EXPECT_EQ(GetJob()["status"]["state"], "Failed");
  Json fixed = GetJob();
  fixed["spec"]["model"]["labels"] = {"a", "b"};
  ASSERT_TRUE(client_.Update(res::kJobs, "ml", fixed).ok());
  Reconcile();
  Json got = GetJob();
  EXPECT_EQ(got["status"]["state"], "Created");
  EXPECT_EQ(Condition(got, "Failed")->value("status", ""), "False");
  EXPECT_EQ(Pods().size(), 3u);
}

TEST_F(ReconcilerTest, NodesJoiningAndLeavingTheSelectorGainAndLoseAgents) {
  CreateJob();
  Reconcile();
  ASSERT_TRUE(client_.Create(res::kNodes, "", Node("edge-c", true)).ok());
  Json a = *client_.Get(res::kNodes, "", "edge-a");
  a["metadata"]["labels"].erase("fedge.io/edge");
  ASSERT_TRUE(client_.Update(res::kNodes, "", a).ok());
  Reconcile();
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-agent-edge-c").ok());
  EXPECT_TRUE(IsNotFound(client_.Get(res::kPods, "ml", "wn-agent-edge-a").status()));
  EXPECT_EQ(GetJob()["status"]["agents"]["desired"], 2);
  // The node volume and claim of the node that left stay: its state directory holds the
  // job's data, which the job's deletion removes through them.
  auto volume_nodes = [this] {
    std::set<std::string> pvs, claims;
    for (const auto& pv : client_.Objects(res::kPersistentVolumes))
      pvs.insert(pv["metadata"]["annotations"].value(kAnnotationNode, ""));
    for (const auto& pvc : client_.Objects(res::kPersistentVolumeClaims))
      if (pvc["metadata"]["labels"].value(kLabelRole, "") == "node-volume")
        claims.insert(pvc["metadata"]["annotations"].value(kAnnotationNode, ""));
    EXPECT_EQ(pvs, claims);
    return pvs;
  };
  EXPECT_EQ(volume_nodes(), (std::set<std::string>{"edge-a", "edge-b", "edge-c"}));
  // It comes back: an agent on the volumes it had.
  a["metadata"]["labels"]["fedge.io/edge"] = "true";
  a["metadata"].erase("resourceVersion");
  ASSERT_TRUE(client_.Update(res::kNodes, "", a).ok());
  Reconcile();
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-agent-edge-a").ok());
  EXPECT_EQ(client_.Objects(res::kPersistentVolumes).size(), 3u);
  // It leaves again, and the job is deleted: its state is removed with the others'.
  a = *client_.Get(res::kNodes, "", "edge-a");
  a["metadata"]["labels"].erase("fedge.io/edge");
  ASSERT_TRUE(client_.Update(res::kNodes, "", a).ok());
  Reconcile();
  client_.SetNow(FormatTime(now()));
  ASSERT_TRUE(client_.Delete(res::kJobs, "ml", "wn").ok());
  Reconcile();  // the pods go
  Reconcile();  // one state-cleanup pod per node that holds the job's state
  std::vector<std::string> cleanups;
  for (const auto& p : Pods()) cleanups.push_back(p["metadata"]["name"]);
  EXPECT_EQ(cleanups, (std::vector<std::string>{"wn-state-cleanup-edge-a", "wn-state-cleanup-edge-b",
                                                "wn-state-cleanup-edge-c"}));
}

// A cache that serves the job as it was when frozen (an informer behind the API server);
// everything else is read through.
class StaleJobCache : public ObjectCache {
 public:
  explicit StaleJobCache(KubeClient* client) : through_(client) {}
  void Freeze(Json job) { job_ = std::make_shared<const Json>(std::move(job)); }
  ObjectPtr Get(const Resource& r, const std::string& ns, const std::string& name) override {
    if (job_ && r.plural == res::kJobs.plural) return job_;
    return through_.Get(r, ns, name);
  }
  std::vector<ObjectPtr> List(const Resource& r, const std::string& ns, const std::string& key,
                              const std::string& value) override {
    return through_.List(r, ns, key, value);
  }

 private:
  ClientCache through_;
  ObjectPtr job_;
};

TEST_F(ReconcilerTest, StatusFromAStaleCacheDoesNotTakeBackTheRestartCount) {
  // Seen on the real API server: the pass that deleted a failed aggregator wrote restarts 1;
  // the next pass, still reading the job from before that write, recreated the pod and applied
  // its own status without restarts, and the count was gone.
  CreateJobWithRunPolicy("backoffLimit", 10);
  StaleJobCache stale(&client_);
  JobReconciler behind(&client_, &stale, &events_, ReconcilerOptions{DefaultImages(), &wall_});
  Json before = GetJob();  // the job before the failure, from before its last status write too
  before["status"]["conditions"] = Json::array();
  stale.Freeze(before);
  SetPodPhase("wn-aggregator", "Failed", 137);
  Reconcile();  // deletes the pod, counts restart 1
  EXPECT_EQ(GetJob()["status"]["restarts"], 1);
  auto r = behind.Reconcile("ml/wn");  // recreates the pod from the stale job
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(IsConflict(r.status())) << r.status().ToString();
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-aggregator").ok());
  EXPECT_EQ(GetJob()["status"]["restarts"], 1);

  // A stale pass that itself counts a restart adds it to the live count.
  stale.Freeze(GetJob());
  SetPodPhase("wn-agent-edge-a", "Failed", 1);
  Reconcile();  // an up-to-date pass (say the previous leader) writes something first
  EXPECT_EQ(GetJob()["status"]["restarts"], 2);
  SetPodPhase("wn-agent-edge-b", "Failed", 1);
  Json live = GetJob();
  live["status"]["conditions"] = Json::array();  // moves the resourceVersion on
  ASSERT_TRUE(client_.Update(res::kJobs, "ml", live, "status").ok());
  r = behind.Reconcile("ml/wn");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(IsConflict(r.status()));
  EXPECT_TRUE(IsNotFound(client_.Get(res::kPods, "ml", "wn-agent-edge-b").status()));
  EXPECT_EQ(GetJob()["status"]["restarts"], 3);
}

// A cache whose objects of one kind (pods unless told) stay as they were when frozen (a
// watch behind the API server); everything else is read through.
class ObjectsBehindCache : public ObjectCache {
 public:
  explicit ObjectsBehindCache(KubeClient* client, const Resource& r = res::kPods) : through_(client), r_(r) {}
  void Freeze() {
    frozen_objects_ = through_.List(r_, "", "", "");
    frozen_ = true;
  }
  void CatchUp() { frozen_ = false; }
  ObjectPtr Get(const Resource& r, const std::string& ns, const std::string& name) override {
    if (!frozen_ || r.plural != r_.plural) return through_.Get(r, ns, name);
    for (const auto& p : frozen_objects_)
      if ((*p)["metadata"].value("name", "") == name && (*p)["metadata"].value("namespace", "") == ns)
        return p;
    return nullptr;
  }
  std::vector<ObjectPtr> List(const Resource& r, const std::string& ns, const std::string& key,
                              const std::string& value) override {
    if (!frozen_ || r.plural != r_.plural) return through_.List(r, ns, key, value);
    std::vector<ObjectPtr> out;
    for (const auto& p : frozen_objects_) {
      const Json& m = (*p)["metadata"];
      if (!ns.empty() && m.value("namespace", "") != ns) continue;
      if (!key.empty() && (!m.contains("labels") || m["labels"].value(key, "") != value)) continue;
      out.push_back(p);
    }
    return out;
  }

 private:
  ClientCache through_;
  const Resource& r_;
  bool frozen_ = false;
  std::vector<ObjectPtr> frozen_objects_;
};

TEST_F(ReconcilerTest, APassBeforeTheCacheShowsThePodsItCreatedDoesNotCreateThemAgain) {
  // Seen at 1,000 nodes with 64 requests in flight: the pass after the creating one ran
  // before the pod watch had delivered its pods, created 229 of them again (AlreadyExists)
  // and read each back (GET) to check it was the job's.
  CreateJob();
  ObjectsBehindCache behind_cache(&client_);
  behind_cache.Freeze();  // no pod yet, and the cache will not show the ones created now
  JobReconciler behind(&client_, &behind_cache, &events_, ReconcilerOptions{DefaultImages(), &wall_});
  ASSERT_TRUE(behind.Reconcile("ml/wn").ok());
  ASSERT_EQ(Pods().size(), 3u);  // the aggregator and two agents
  client_.ClearCalls();
  auto r = behind.Reconcile("ml/wn");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(client_.CountCalls("create", "pods"), 0) << "the pods it created count as existing";
  EXPECT_EQ(client_.CountCalls("get", "pods"), 0);
  EXPECT_EQ(client_.CountWrites(), 0) << "nothing else to do either";
  ASSERT_TRUE(r->requeue_after.has_value()) << "it looks again when they expire";
  EXPECT_LE(*r->requeue_after, std::chrono::seconds(31));

  // An agent pod deleted before the cache ever showed it is made again once its entry
  // expires (the trade: until then it counts as there).
  ASSERT_TRUE(client_.Delete(res::kPods, "ml", "wn-agent-edge-b", {}).ok());
  wall_.Advance(std::chrono::seconds(31));
  behind_cache.CatchUp();  // the cache shows the two pods that are still there
  client_.ClearCalls();
  r = behind.Reconcile("ml/wn");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(client_.CountCalls("create", "pods"), 1);
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-agent-edge-b").ok());

  // Once the informer has delivered it (Seen), a pod deleted before any pass looked is made
  // again at once.
  behind_cache.Freeze();
  auto made = client_.Get(res::kPods, "ml", "wn-agent-edge-b");
  ASSERT_TRUE(made.ok());
  behind.Seen(res::kPods, *made);
  ASSERT_TRUE(client_.Delete(res::kPods, "ml", "wn-agent-edge-b", {}).ok());
  behind_cache.CatchUp();
  client_.ClearCalls();
  ASSERT_TRUE(behind.Reconcile("ml/wn").ok());
  EXPECT_EQ(client_.CountCalls("create", "pods"), 1);
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-agent-edge-b").ok());
}

TEST_F(ReconcilerTest, ACreateTheCacheShowedBeforeItsAnswerCameIsNotHeldAsUnseen) {
  // The pod watch can deliver a created pod (Seen) before the create's answer reaches the
  // pass; the entry recorded after that must not hold the pod as existing once it is gone.
  CreateJob();
  ObjectsBehindCache up_to_date(&client_);  // reads through, but not Live(): entries are kept
  JobReconciler r(&client_, &up_to_date, &events_, ReconcilerOptions{DefaultImages(), &wall_});
  ASSERT_TRUE(r.Reconcile("ml/wn").ok());
  ASSERT_EQ(Pods().size(), 3u);
  ASSERT_TRUE(client_.Delete(res::kPods, "ml", "wn-agent-edge-a", {}).ok());
  client_.ClearCalls();
  ASSERT_TRUE(r.Reconcile("ml/wn").ok());
  EXPECT_EQ(client_.CountCalls("create", "pods"), 1) << "made again at once, not after the entry's 30 s";
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-agent-edge-a").ok());
}

TEST_F(ReconcilerTest, ARestartIsCountedWhenALaterStepOfThePassFails) {
  // Issue 11 part 3: HandleFailedPod deleted the failed aggregator and raised restarts in
  // memory; creating a missing agent pod then failed, Reconcile returned before WriteStatus
  // and the restart was never counted (backoffLimit could be overrun).
  CreateJobWithRunPolicy("backoffLimit", 5);
  SetPodPhase("wn-aggregator", "Failed", 137);
  ASSERT_TRUE(client_.Delete(res::kPods, "ml", "wn-agent-edge-b", {}).ok());
  client_.FailNext("create", "pods", UnavailableError("the API server is away"));
  auto r = reconciler_.Reconcile("ml/wn");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(IsNotFound(client_.Get(res::kPods, "ml", "wn-aggregator").status()))
      << "the failed pod was deleted";
  EXPECT_EQ(GetJob()["status"]["restarts"], 1) << "and its restart counted";
  Reconcile();  // the next pass recreates both pods and counts nothing more
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-aggregator").ok());
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-agent-edge-b").ok());
  EXPECT_EQ(GetJob()["status"]["restarts"], 1);
}

TEST_F(ReconcilerTest, AJobEndedByItsPrivacyBudgetSaysSo) {
  CreateJob();
  Reconcile();
  Json live = GetJob();
  live["status"]["roundsCompleted"] = 2;
  live["status"]["epsilonSpent"] = 3.9;
  live["status"]["privacy"] = {{"budgetExhausted", true}, {"targetEpsilon", 4.0}};
  ASSERT_TRUE(client_.Update(res::kJobs, "ml", live, "status").ok());
  SetPodPhase("wn-aggregator", "Succeeded", 0);
  Reconcile();
  Json got = GetJob();
  EXPECT_EQ(got["status"]["state"], "Succeeded");
  const Json* exhausted = Condition(got, "PrivacyBudgetExhausted");
  ASSERT_NE(exhausted, nullptr);
  EXPECT_EQ(exhausted->value("status", ""), "True");
  EXPECT_NE(exhausted->value("message", "").find("after 2 of 3 rounds"), std::string::npos)
      << exhausted->dump();
  EXPECT_EQ(Condition(got, "Succeeded")->value("reason", ""), "PrivacyBudgetExhausted");
}

TEST_F(ReconcilerTest, FailedAgentIsRecreatedWithinBackoffLimitThenDegrades) {
  CreateJob();
  Reconcile();
  SetPodPhase("wn-agent-edge-a", "Failed", 137);
  Reconcile();  // restart 1 of 1: deleted
  EXPECT_TRUE(IsNotFound(client_.Get(res::kPods, "ml", "wn-agent-edge-a").status()));
  EXPECT_EQ(GetJob()["status"]["restarts"], 1);
  Reconcile();  // recreated
  ASSERT_TRUE(client_.Get(res::kPods, "ml", "wn-agent-edge-a").ok());
  SetPodPhase("wn-agent-edge-a", "Failed", 1);
  Reconcile();  // limit reached: kept, job degraded
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-agent-edge-a").ok());
  Json got = GetJob();
  const Json* degraded = Condition(got, "Degraded");
  ASSERT_NE(degraded, nullptr);
  EXPECT_EQ(degraded->value("status", ""), "True");
  EXPECT_EQ(degraded->value("reason", ""), "BackoffLimitExceeded");
  EXPECT_NE(got["status"]["state"], "Failed");
}

TEST_F(ReconcilerTest, AggregatorFailingBeyondBackoffLimitFailsTheJob) {
  CreateJob();
  Reconcile();
  SetPodPhase("wn-aggregator", "Failed", 2);
  Reconcile();
  Reconcile();
  SetPodPhase("wn-aggregator", "Failed", 2);
  Reconcile();
  Json got = GetJob();
  EXPECT_EQ(got["status"]["state"], "Failed");
  EXPECT_EQ(Condition(got, "Failed")->value("reason", ""), "BackoffLimitExceeded");
  EXPECT_TRUE(got["status"].contains("completionTime"));
}

TEST_F(ReconcilerTest, RunningAggregatorAndSuccessAreReflectedAndPodsCleaned) {
  CreateJob();
  Reconcile();
  SetPodPhase("wn-aggregator", "Running", 0, true);
  SetPodPhase("wn-agent-edge-a", "Running", 0, true);
  Reconcile();
  Json got = GetJob();
  EXPECT_EQ(got["status"]["state"], "Running");
  EXPECT_EQ(got["status"]["agents"]["summary"], "1/2");
  SetPodPhase("wn-aggregator", "Succeeded", 0);
  Reconcile();
  EXPECT_EQ(GetJob()["status"]["state"], "Succeeded");
  // cleanPodPolicy Running after success: the agents serve inference with the final
  // global, so they stay (until the job goes); the finished aggregator pod stays too.
  Reconcile();
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-aggregator").ok());
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-agent-edge-a").ok());
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-agent-edge-b").ok());
}

TEST_F(ReconcilerTest, RunningPolicyDeletesAgentsOfAJobThatDoesNotServe) {
  Json job = Job();
  job["spec"]["serving"] = {{"enabled", false}};
  CreateJob(job);
  Reconcile();
  SetPodPhase("wn-agent-edge-a", "Running", 0, true);
  SetPodPhase("wn-aggregator", "Succeeded", 0);
  Reconcile();
  Reconcile();
  EXPECT_EQ(GetJob()["status"]["state"], "Succeeded");
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-aggregator").ok());
  EXPECT_TRUE(IsNotFound(client_.Get(res::kPods, "ml", "wn-agent-edge-a").status()));
}

TEST_F(ReconcilerTest, AllPolicyDeletesServingAgentsToo) {
  CreateJobWithRunPolicy("cleanPodPolicy", "All");
  SetPodPhase("wn-agent-edge-a", "Running", 0, true);
  SetPodPhase("wn-aggregator", "Succeeded", 0);
  Reconcile();
  Reconcile();
  EXPECT_TRUE(Pods().empty());
}

TEST_F(ReconcilerTest, FailedJobRunningPolicyDeletesAgents) {
  CreateJob();
  Reconcile();
  SetPodPhase("wn-agent-edge-a", "Running", 0, true);
  Json j = GetJob();
  j["status"]["state"] = "Failed";
  ASSERT_TRUE(client_.MergePatch(res::kJobs, "ml", "wn", {{"status", j["status"]}}, "status").ok());
  Reconcile();
  EXPECT_TRUE(IsNotFound(client_.Get(res::kPods, "ml", "wn-agent-edge-a").status()));
}

std::vector<std::string> Command(const Json& pod, size_t container = 0) {
  return pod["spec"]["containers"][container]["command"].get<std::vector<std::string>>();
}

bool HasArg(const std::vector<std::string>& cmd, const std::string& flag, const std::string& value = "") {
  for (size_t i = 0; i < cmd.size(); ++i) {
    if (cmd[i] == flag && (value.empty() || (i + 1 < cmd.size() && cmd[i + 1] == value))) return true;
  }
  return false;
}

TEST(DesiredTest, AgentsKeepServingAfterTheJobUnlessServingIsOff) {
  Json job = Job();
  EXPECT_FALSE(HasArg(Command(DesiredAgentPod(job, "edge-a", DefaultImages())), "--exit-when-done"));
  job["spec"]["serving"] = {{"enabled", false}};
  EXPECT_TRUE(HasArg(Command(DesiredAgentPod(job, "edge-a", DefaultImages())), "--exit-when-done"));
  // The aggregator still leaves once every agent was told DONE, so the job completes.
  EXPECT_TRUE(HasArg(Command(DesiredAggregatorPod(job, 2, DefaultImages())), "--exit-when-done"));
}

// The agent pod's projected credentials volume: source kind -> its fields.
std::map<std::string, Json> CredentialSources(const Json& pod) {
  std::map<std::string, Json> out;
  for (const auto& v : pod["spec"]["volumes"]) {
    if (v["name"] != "credentials" || !v.contains("projected")) continue;
    for (const auto& src : v["projected"]["sources"])
      for (const auto& [kind, fields] : src.items()) out[kind] = fields;
  }
  return out;
}

// fedge.io/pod-template-hash: what makes a pod outdated (plan.cpp replaces it) and
// what must not.
TEST(DesiredTest, ThePodTemplateHashFollowsTheTemplateButNotTheNodeOrTheNodeCount) {
  Json job = Job();
  DesiredOptions opts = DefaultImages();
  const std::string agg = PodTemplateHashOf(DesiredAggregatorPod(job, 2, opts));
  const std::string agent = PodTemplateHashOf(DesiredAgentPod(job, "edge-a", opts));
  EXPECT_EQ(agg.size(), 16u);
  EXPECT_EQ(agent.size(), 16u);
  EXPECT_NE(agg, agent);
  EXPECT_EQ(PodTemplateHashOf(DesiredAggregatorPod(job, 7, opts)), agg);
  EXPECT_EQ(PodTemplateHashOf(DesiredAgentPod(job, "edge-b", opts)), agent);
  EXPECT_EQ(AgentPodTemplateHash(job, OperatorJobSpec(job), opts), agent);
  EXPECT_EQ(AggregatorPodTemplateHash(job, OperatorJobSpec(job), opts), agg);

  DesiredOptions upgraded = opts;
  upgraded.images.agent = "fedge/agent:9.9.9";
  upgraded.images.aggregator = "fedge/aggregator:9.9.9";
  EXPECT_NE(PodTemplateHashOf(DesiredAgentPod(job, "edge-a", upgraded)), agent);
  EXPECT_NE(PodTemplateHashOf(DesiredAggregatorPod(job, 2, upgraded)), agg);
  Json plaintext = job;
  plaintext["spec"]["privacy"]["tls"] = false;  // a spec change the pods must follow
  EXPECT_NE(PodTemplateHashOf(DesiredAgentPod(plaintext, "edge-a", opts)), agent);
  EXPECT_NE(PodTemplateHashOf(DesiredAggregatorPod(plaintext, 2, opts)), agg);
  EXPECT_EQ(PodTemplateHashOf(Json::object()), "");
}

TEST(DesiredTest, TlsByDefaultAndAgentsJoinWithProjectedTokens) {
  Json job = Job();  // no spec.privacy: the CRD's default, TLS on
  DesiredOptions opts = DefaultImages();
  opts.agent_token_issuer = "https://issuer.example";
  Json agg_pod = DesiredAggregatorPod(job, 2, opts);
  Json agent_pod = DesiredAgentPod(job, "edge-a", opts);
  auto agg = Command(agg_pod);
  auto agent = Command(agent_pod);
  EXPECT_TRUE(HasArg(agg, "--tls-cert", std::string(kSecretMountPath) + "/tls.crt"));
  EXPECT_TRUE(HasArg(agg, "--tls-key", std::string(kSecretMountPath) + "/tls.key"));
  // Agents are verified by their tokens, not by client certificates.
  EXPECT_FALSE(HasArg(agg, "--tls-client-ca"));
  EXPECT_FALSE(HasArg(agg, "--tokens-file"));
  EXPECT_TRUE(HasArg(agg, "--agent-token-jwks-file", std::string(kTrustMountPath) + "/jwks.json"));
  EXPECT_TRUE(HasArg(agg, "--agent-token-issuer", "https://issuer.example"));
  EXPECT_TRUE(HasArg(agg, "--agent-token-audience", "fedge.io/ml/wn"));
  EXPECT_TRUE(HasArg(agg, "--agent-token-service-account", "ml/wn-agent"));
  EXPECT_TRUE(HasArg(agg, "--agent-session-grace-seconds", "3600"));
  opts.agent_session_grace_s = 86400;
  EXPECT_TRUE(HasArg(Command(DesiredAggregatorPod(job, 2, opts)), "--agent-session-grace-seconds", "86400"));
  EXPECT_TRUE(HasArg(agent, "--tls-ca", std::string(kSecretMountPath) + "/ca.crt"));
  EXPECT_TRUE(HasArg(agent, "--tls-server-name", "wn-aggregator.ml.svc"));
  EXPECT_TRUE(HasArg(agent, "--token-file", std::string(kSecretMountPath) + "/token"));
  for (const char* flag : {"--tls-cert", "--tls-key"}) EXPECT_FALSE(HasArg(agent, flag)) << flag;
  // The aggregator's Secret holds its serving certificate only; the keys come from the
  // trust ConfigMap.
  std::map<std::string, std::set<std::string>> agg_items;  // secret or configmap -> paths
  for (const auto& v : agg_pod["spec"]["volumes"]) {
    if (v.contains("secret"))
      for (const auto& it : v["secret"]["items"]) agg_items[v["secret"]["secretName"]].insert(it["path"]);
    if (v.contains("configMap") && v["configMap"].contains("items"))
      for (const auto& it : v["configMap"]["items"]) agg_items[v["configMap"]["name"]].insert(it["path"]);
  }
  EXPECT_EQ(agg_items["wn-credentials"], (std::set<std::string>{"tls.crt", "tls.key"}));
  EXPECT_EQ(agg_items["wn-trust"], (std::set<std::string>{"jwks.json", "revoked-pods.json"}));
  EXPECT_TRUE(HasArg(agg, "--agent-revoked-pods-file", std::string(kTrustMountPath) + "/revoked-pods.json"));
  // The agent: its own projected token (this job's audience, 10 minutes, renewed by the
  // kubelet) and the CA from the trust ConfigMap; no Secret of its own, none of the job's.
  EXPECT_EQ(agent_pod["spec"]["serviceAccountName"], "wn-agent");
  EXPECT_EQ(agent_pod["spec"]["automountServiceAccountToken"], false);
  auto sources = CredentialSources(agent_pod);
  ASSERT_EQ(sources.size(), 2u) << agent_pod["spec"]["volumes"].dump();
  EXPECT_EQ(sources["serviceAccountToken"],
            (Json{{"audience", "fedge.io/ml/wn"}, {"expirationSeconds", 600}, {"path", "token"}}));
  EXPECT_EQ(sources["configMap"]["name"], "wn-trust");
  EXPECT_EQ(sources["configMap"]["items"], (Json::array({{{"key", "ca.crt"}, {"path", "ca.crt"}}})));
  for (const auto& v : agent_pod["spec"]["volumes"]) {
    if (!v.contains("secret")) continue;
    EXPECT_EQ(v["secret"]["secretName"], "wn-inference-token") << "the inference API's token only";
  }

  // privacy.tls: false opts out: plaintext, the agent's volume holds only its token.
  job["spec"]["privacy"] = {{"tls", false}};
  agg = Command(DesiredAggregatorPod(job, 2, opts));
  agent_pod = DesiredAgentPod(job, "edge-a", opts);
  agent = Command(agent_pod);
  for (const char* flag : {"--tls-cert", "--tls-key", "--tls-client-ca"})
    EXPECT_FALSE(HasArg(agg, flag)) << flag;
  EXPECT_TRUE(HasArg(agg, "--agent-token-audience", "fedge.io/ml/wn"))
      << "tokens are checked without TLS too";
  for (const char* flag : {"--tls-ca", "--tls-cert", "--tls-key"}) EXPECT_FALSE(HasArg(agent, flag)) << flag;
  EXPECT_EQ(CredentialSources(agent_pod).size(), 1u);
  EXPECT_TRUE(CredentialSources(agent_pod).count("serviceAccountToken"));
}

TEST(DesiredTest, TheConfigMapStatesTheTlsDefault) {
  Json job = Job();
  EXPECT_TRUE(ManifestForParser(job)["spec"]["privacy"]["tls"].get<bool>());
  job["spec"]["privacy"] = {{"tls", false}};
  EXPECT_FALSE(ManifestForParser(job)["spec"]["privacy"]["tls"].get<bool>());
  // ParseJobSpec's own default is false (`fedge run`): the operator's must not depend on it.
  auto parsed = ParseJobSpec(ManifestForParser(Job()).dump());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_TRUE(parsed->privacy.tls);
}

// ---- agent credentials: projected tokens, the trust ConfigMap, the job's certificates ----
class AgentCredentialsTest : public ReconcilerTest {
 protected:
  Credentials JobCredentials() {
    return CredentialsFromSecret(*client_.Get(res::kSecrets, "ml", "wn-credentials"));
  }
  Json Trust() {
    auto cm = client_.Get(res::kConfigMaps, "ml", "wn-trust");
    return cm.ok() ? (*cm)["data"] : Json();
  }
};

TEST_F(AgentCredentialsTest, AgentsGetAServiceAccountAndTheTrustConfigMapNoSecretOfTheirOwn) {
  CreateJob();
  Reconcile();
  auto sa = client_.Get(res::kServiceAccounts, "ml", "wn-agent");
  ASSERT_TRUE(sa.ok()) << "the projected tokens name it; pods are refused without it";
  EXPECT_EQ((*sa)["automountServiceAccountToken"], false);
  EXPECT_EQ((*sa)["metadata"]["ownerReferences"][0]["kind"], "FederatedTrainingJob");
  EXPECT_TRUE(client_.Get(res::kRoleBindings, "ml", "wn-agent").status().code() == StatusCode::kNotFound)
      << "it is granted nothing";
  // The trust ConfigMap: the job CA and the issuer's keys as the API server served them.
  Json trust = Trust();
  ASSERT_FALSE(trust.is_null());
  EXPECT_EQ(trust["ca.crt"], JobCredentials().ca_crt);
  auto jwks = client_.GetPath("/openid/v1/jwks");
  ASSERT_TRUE(jwks.ok());
  EXPECT_EQ(Json::parse(trust["jwks.json"].get<std::string>()), *jwks);
  // The aggregator is told the issuer from the discovery document.
  auto agg = client_.Get(res::kPods, "ml", "wn-aggregator");
  ASSERT_TRUE(agg.ok());
  EXPECT_TRUE(HasArg(Command(*agg), "--agent-token-issuer", kFakeIssuer));
  // Two Secrets for the job whatever its size: none per agent.
  std::set<std::string> secrets;
  for (const auto& s : client_.Objects(res::kSecrets)) secrets.insert(s["metadata"]["name"]);
  EXPECT_EQ(secrets, (std::set<std::string>{"wn-credentials", "wn-inference-token"}));
  client_.ClearCalls();
  Reconcile();
  EXPECT_EQ(client_.CountWrites(), 0) << "steady";
}

// A node's token and session copied off it must stop working once its agent pod goes:
// the aggregator verifies tokens offline, so the operator lists the pods that are being
// deleted or have ended, and the aggregator refuses them (aggregator revoked_pods.h).
TEST_F(AgentCredentialsTest, AgentPodsBeingDeletedOrEndedAreRevokedThroughTheTrustConfigMap) {
  CreateJob();
  Reconcile();
  auto revoked = [&] { return Json::parse(Trust()["revoked-pods.json"].get<std::string>())["pods"]; };
  EXPECT_EQ(revoked(), Json::array()) << "listed from the start: the aggregator mounts the key";
  const std::string empty_hash =
      (*client_.Get(res::kPods, "ml", "wn-aggregator"))["metadata"]["annotations"][kAnnotationRevokedPods];
  EXPECT_EQ(empty_hash, pki::HexSha256(kNoRevokedPods).substr(0, 16)) << "made with it: no patch follows";

  // edge-a's agent is being deleted (a finalizer holds it, as a kubelet holds a pod that
  // is shutting down).
  const std::string uid_a = (*client_.Get(res::kPods, "ml", "wn-agent-edge-a"))["metadata"]["uid"];
  ASSERT_TRUE(client_
                  .MergePatch(res::kPods, "ml", "wn-agent-edge-a",
                              {{"metadata", {{"finalizers", Json::array({"test/hold"})}}}})
                  .ok());
  client_.SetNow(FormatTime(now()));
  ASSERT_TRUE(client_.Delete(res::kPods, "ml", "wn-agent-edge-a").ok());
  Reconcile();
  ASSERT_EQ(revoked().size(), 1u) << Trust().dump();
  // The aggregator pod carries the list's hash: a change to it makes its kubelet sync the
  // pod, which refreshes the mounted file at once rather than at the next periodic sync.
  const auto agg_hash = [&] {
    return (*client_.Get(res::kPods, "ml", "wn-aggregator"))["metadata"]["annotations"].value(
        kAnnotationRevokedPods, "");
  };
  EXPECT_EQ(agg_hash(), pki::HexSha256(Trust()["revoked-pods.json"].get<std::string>()).substr(0, 16));
  EXPECT_EQ(revoked()[0]["uid"], uid_a);
  EXPECT_EQ(revoked()[0]["name"], "wn-agent-edge-a");
  EXPECT_EQ(revoked()[0]["node"], "edge-a");
  // Until its last token (600 s) expired and a session it held ended (the grace, 3600 s).
  const int64_t until_a = static_cast<int64_t>(now()) + 600 + 3600 + 60;
  EXPECT_EQ(revoked()[0]["until"], until_a);
  client_.ClearCalls();
  wall_.Advance(std::chrono::seconds(30));
  Reconcile();
  EXPECT_EQ(client_.CountWrites(), 0) << "an entry keeps its until: steady";

  // The pod goes and the node gets a new one: the old uid stays listed, the new one is not.
  ASSERT_TRUE(
      client_.MergePatch(res::kPods, "ml", "wn-agent-edge-a", {{"metadata", {{"finalizers", nullptr}}}})
          .ok());
  Reconcile();
  Reconcile();
  auto fresh = client_.Get(res::kPods, "ml", "wn-agent-edge-a");
  ASSERT_TRUE(fresh.ok());
  EXPECT_NE((*fresh)["metadata"]["uid"], uid_a);
  ASSERT_EQ(revoked().size(), 1u);
  EXPECT_EQ(revoked()[0]["uid"], uid_a);

  // edge-b's agent fails: it is listed from the pass that sees it ended.
  const std::string uid_b = (*client_.Get(res::kPods, "ml", "wn-agent-edge-b"))["metadata"]["uid"];
  SetPodPhase("wn-agent-edge-b", "Failed", 1);
  Reconcile();
  std::set<std::string> uids;
  for (const auto& e : revoked()) uids.insert(e["uid"]);
  EXPECT_EQ(uids, (std::set<std::string>{uid_a, uid_b}));

  // A pod that went before any pass saw it terminating: the informer's delete handler
  // remembers it for the job's next pass.
  Reconcile();
  const Json pod_b = *client_.Get(res::kPods, "ml", "wn-agent-edge-b");
  ASSERT_NE(pod_b["metadata"]["uid"], uid_b) << "made again";
  ASSERT_TRUE(client_.Delete(res::kPods, "ml", "wn-agent-edge-b").ok());
  reconciler_.Gone(res::kPods, pod_b);
  Reconcile();
  uids.clear();
  for (const auto& e : revoked()) uids.insert(e["uid"]);
  EXPECT_EQ(uids, (std::set<std::string>{uid_a, uid_b, pod_b["metadata"]["uid"].get<std::string>()}));

  // Past its until an entry is dropped (every token of that pod expired long ago).
  wall_.Advance(std::chrono::seconds(until_a - static_cast<int64_t>(now())));
  Reconcile();
  ASSERT_EQ(revoked().size(), 2u) << Trust().dump();
  EXPECT_NE(revoked()[0]["uid"], uid_a);
  EXPECT_NE(revoked()[1]["uid"], uid_a);
}

TEST(RevokedAgentPodsTest, KeepsTheLatestEntriesWithinTheLimitAndIgnoresWhatItCannotRead) {
  auto pod = [](const std::string& uid, std::time_t deleted) {
    Json meta = {{"name", "wn-agent-" + uid}, {"uid", uid}, {"labels", {{kLabelRole, "agent"}}}};
    if (deleted) meta["deletionTimestamp"] = FormatTime(deleted);
    return std::make_shared<const Json>(Json{{"metadata", meta}});
  };
  const std::time_t now = 1'800'000'000;
  std::vector<ObjectPtr> pods;
  for (size_t i = 0; i < kMaxRevokedAgentPods + 2; ++i)
    pods.push_back(pod("u" + std::to_string(10000 + i), now - static_cast<std::time_t>(i)));
  pods.push_back(pod("running", 0));  // not being deleted: not listed
  Json aggregator = *pod("agg", now);
  aggregator["metadata"]["labels"][kLabelRole] = "aggregator";  // not an agent
  pods.push_back(std::make_shared<const Json>(aggregator));
  const Json doc = Json::parse(RevokedAgentPods("not json", pods, now, 3600));
  ASSERT_EQ(doc["pods"].size(), kMaxRevokedAgentPods);
  // The two deleted longest ago (the soonest to lapse) are the ones left out; sorted by uid.
  EXPECT_EQ(doc["pods"].front()["uid"], "u10000");
  EXPECT_EQ(doc["pods"].back()["uid"], "u" + std::to_string(10000 + kMaxRevokedAgentPods - 1));
  EXPECT_EQ(RevokedAgentPods(doc.dump(), pods, now, 3600), doc.dump()) << "stable";
}

// A pod deleted while no operator ran is in no entry: nothing saw it go. The pods live
// when this operator's cache first listed them are written with that time, and the
// aggregator refuses a token issued before it to any other pod (revoked_pods.h).
TEST(RevokedAgentPodsTest, WritesThePodsLiveWhenTheWatchBeganAndOnlyThose) {
  const std::time_t since = 1'800'000'000;
  auto pod = [](const std::string& uid, std::time_t created, const std::string& phase = "Running") {
    Json meta = {{"name", "wn-agent-" + uid}, {"uid", uid}, {"labels", {{kLabelRole, "agent"}}}};
    if (created) meta["creationTimestamp"] = FormatTime(created);
    return std::make_shared<const Json>(Json{{"metadata", meta}, {"status", {{"phase", phase}}}});
  };
  Json deleting = *pod("deleting", since - 100);
  deleting["metadata"]["deletionTimestamp"] = FormatTime(since + 5);
  Json aggregator = *pod("agg", since - 100);
  aggregator["metadata"]["labels"][kLabelRole] = "aggregator";
  const std::vector<ObjectPtr> pods = {pod("before", since - 100),
                                       pod("at", since),
                                       pod("no-time", 0),
                                       pod("pending", since - 50, "Pending"),
                                       pod("after", since + 1),
                                       pod("failed", since - 100, "Failed"),
                                       std::make_shared<const Json>(deleting),
                                       std::make_shared<const Json>(aggregator)};
  const Json doc = Json::parse(RevokedAgentPods("", pods, since + 10, 3600, since));
  EXPECT_EQ(doc["watchedSince"], static_cast<int64_t>(since));
  EXPECT_EQ(doc["livePods"], Json::array({"before", "no-time", "pending"}))
      << "live and made before; a pod made in that second or later has only tokens the aggregator does "
         "not judge by livePods";
  std::set<std::string> listed;
  for (const auto& e : doc["pods"]) listed.insert(e["uid"]);
  EXPECT_EQ(listed, (std::set<std::string>{"deleting", "failed"})) << "these are refused by their entries";
  // Steady: the same pods and time write the same text; a later pass after "before" went
  // moves it from livePods to the entries.
  EXPECT_EQ(RevokedAgentPods(doc.dump(), pods, since + 20, 3600, since), doc.dump());
  std::vector<ObjectPtr> later = pods;
  Json gone = *pods[0];
  gone["metadata"]["deletionTimestamp"] = FormatTime(since + 30);
  later[0] = std::make_shared<const Json>(gone);
  const Json next = Json::parse(RevokedAgentPods(doc.dump(), later, since + 30, 3600, since));
  EXPECT_EQ(next["livePods"], Json::array({"no-time", "pending"}));
  EXPECT_EQ(next["pods"].size(), 3u);
  // No known watch (a cache that remembers nothing): neither field, or those written.
  EXPECT_FALSE(Json::parse(RevokedAgentPods("", pods, since + 10, 3600)).contains("watchedSince"));
  EXPECT_EQ(RevokedAgentPods(doc.dump(), pods, since + 20, 3600), doc.dump());
  // More live pods than the aggregator accepts: left out, never truncated (a live pod
  // missing from livePods would be refused).
  std::vector<ObjectPtr> many;
  for (size_t i = 0; i <= kMaxLiveAgentPods; ++i) many.push_back(pod("u" + std::to_string(i), since - 1));
  const Json big = Json::parse(RevokedAgentPods("", many, since + 10, 3600, since));
  EXPECT_FALSE(big.contains("watchedSince"));
  EXPECT_FALSE(big.contains("livePods"));
}

TEST_F(AgentCredentialsTest, AnAgentSecretOfAnOlderOperatorIsDeleted) {
  CreateJob();
  Reconcile();
  // What operators before the projected tokens wrote per agent.
  Json old = {{"apiVersion", "v1"},
              {"kind", "Secret"},
              {"metadata",
               {{"name", "wn-agent-edge-a-credentials"},
                {"namespace", "ml"},
                {"labels", {{kLabelJob, "wn"}, {kLabelRole, "agent-credentials"}}},
                {"annotations", {{kAnnotationNode, "edge-a"}}},
                {"ownerReferences", Json::array({OwnerReference(GetJob())})}}},
              {"data", {{"token", Base64Encode("t")}}}};
  ASSERT_TRUE(client_.Create(res::kSecrets, "ml", old).ok());
  Reconcile();
  EXPECT_TRUE(IsNotFound(client_.Get(res::kSecrets, "ml", "wn-agent-edge-a-credentials").status()));
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-agent-edge-a").ok()) << "its agent is not touched";
}

TEST_F(AgentCredentialsTest, WithoutTheIssuersKeysNoPodIsCreatedAndTheJobSaysWhy) {
  client_.SetPath("/openid/v1/jwks", nullptr);  // an API server that does not serve them
  CreateJob();
  auto r = Reconcile();
  EXPECT_TRUE(Pods().empty()) << "an aggregator could verify no agent";
  EXPECT_TRUE(IsNotFound(client_.Get(res::kConfigMaps, "ml", "wn-trust").status()));
  const Json job = GetJob();
  const Json* created = Condition(job, "Created");
  ASSERT_NE(created, nullptr);
  EXPECT_EQ(created->value("status", ""), "False");
  EXPECT_EQ(created->value("reason", ""), "IssuerKeysUnavailable");
  EXPECT_NE(created->value("message", "").find("/openid/v1/jwks"), std::string::npos) << created->dump();
  ASSERT_TRUE(r.requeue_after.has_value());
  EXPECT_LE(r.requeue_after->count(), 10);
  // Served again: the next pass after the retry interval creates everything.
  client_.SetPath(
      "/openid/v1/jwks",
      Json::parse(R"({"keys": [{"kty": "EC", "kid": "k2", "crv": "P-256", "x": "AA", "y": "AA"}]})"));
  wall_.Advance(std::chrono::seconds(6));
  Reconcile();
  EXPECT_EQ(Pods().size(), 3u);
  EXPECT_EQ(Condition(GetJob(), "Created")->value("reason", ""), "ChildrenCreated");
  EXPECT_EQ(Json::parse(Trust()["jwks.json"].get<std::string>())["keys"][0]["kid"], "k2");
}

TEST_F(AgentCredentialsTest, RotatedIssuerKeysReachTheTrustConfigMapWithinTheRefreshInterval) {
  CreateJob();
  Reconcile();
  const std::string before = Trust()["jwks.json"];
  const Json rotated =
      Json::parse(R"({"keys": [{"kty": "EC", "kid": "new", "crv": "P-256", "x": "AA", "y": "AA"}]})");
  client_.SetPath("/openid/v1/jwks", rotated);
  wall_.Advance(std::chrono::seconds(60));
  client_.ClearCalls();
  Reconcile();
  EXPECT_EQ(Trust()["jwks.json"], before) << "read again only after the refresh interval";
  EXPECT_EQ(client_.CountCalls("get", "/openid/v1/jwks"), 0);
  wall_.Advance(std::chrono::seconds(300));
  Reconcile();
  EXPECT_EQ(Json::parse(Trust()["jwks.json"].get<std::string>()), rotated);
  EXPECT_EQ(Trust()["ca.crt"], JobCredentials().ca_crt);
  // An API server that then fails keeps the keys in use: no pod or ConfigMap is touched.
  client_.FailNext("get", "/openid/v1/jwks", KubeError("ServiceUnavailable", 503, "down"));
  wall_.Advance(std::chrono::seconds(301));
  client_.ClearCalls();
  Reconcile();
  EXPECT_EQ(client_.CountWrites(), 0);
  EXPECT_EQ(Condition(GetJob(), "Created")->value("reason", ""), "ChildrenCreated");
}

// Regression: the serving certificate (one year) was issued once and never again, so a
// year on every agent's handshake failed while the job showed Running.
TEST_F(AgentCredentialsTest, TheServingCertificateIsRenewedFromTheSameCaOnceAThirdOfItsLifetimeRemains) {
  CreateJob();
  Reconcile();
  const Credentials first = JobCredentials();
  auto info = pki::ReadCert(first.tls_crt);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  wall_.Advance(std::chrono::seconds(pki::RenewalTime(*info) - 1 - now()));
  Reconcile();
  EXPECT_EQ(JobCredentials().tls_crt, first.tls_crt);
  wall_.Advance(std::chrono::seconds(1));
  Reconcile();
  const Credentials renewed = JobCredentials();
  ASSERT_NE(renewed.tls_crt, first.tls_crt);
  auto second = pki::ReadCert(renewed.tls_crt);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_NE(second->serial, info->serial);
  EXPECT_EQ(second->not_after, now() + 365 * 24 * 3600);
  EXPECT_TRUE(pki::SignedBy(renewed.tls_crt, first.ca_crt)) << "the agents trust only the job CA";
  EXPECT_TRUE(pki::KeyMatchesCert(renewed.tls_crt, renewed.tls_key));
  EXPECT_EQ(renewed.ca_crt, first.ca_crt);
  EXPECT_EQ(renewed.ca_key, first.ca_key);
  EXPECT_EQ(Trust()["ca.crt"], first.ca_crt);
  bool event = false;
  for (const auto& e : client_.Objects(res::kEvents)) event |= e["reason"] == "ServingCertificateRenewed";
  EXPECT_TRUE(event);
  // Steady again: nothing written until the next renewal.
  client_.ClearCalls();
  Reconcile();
  EXPECT_EQ(client_.CountWrites(), 0);
}

TEST_F(AgentCredentialsTest, WithoutTlsTheTrustConfigMapHasOnlyTheKeys) {
  Json job = Job();
  job["spec"]["privacy"] = {{"tls", false}};
  CreateJob(job);
  Reconcile();
  Json trust = Trust();
  ASSERT_FALSE(trust.is_null());
  EXPECT_FALSE(trust.contains("ca.crt"));
  EXPECT_TRUE(trust.contains("jwks.json"));
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-agent-edge-a").ok());
}

TEST_F(AgentCredentialsTest, TheJobsCaAndServingCertificateAreDatedByTheOperatorsClock) {
  // Regression (issue 11 part 3, one Clock): GenerateCa and IssueServingCert read
  // std::time themselves, so only client certificates followed the operator's Clock.
  wall_.Advance(std::chrono::hours(24 * 400));  // far from the real time and the start
  CreateJob();
  Reconcile();
  Credentials job = JobCredentials();
  auto ca = pki::ReadCert(job.ca_crt);
  auto serving = pki::ReadCert(job.tls_crt);
  ASSERT_TRUE(ca.ok() && serving.ok());
  EXPECT_EQ(ca->not_before, now() - pki::kCertBackdateSeconds);
  EXPECT_EQ(ca->not_after, now() + 3650L * 24 * 3600);
  EXPECT_EQ(serving->not_before, now() - pki::kCertBackdateSeconds);
  EXPECT_EQ(serving->not_after, now() + 365L * 24 * 3600);
  EXPECT_TRUE(pki::SignedBy(job.tls_crt, job.ca_crt));
}

TEST_F(ReconcilerTest, SuspendDeletesPodsAndResumeRecreatesThem) {
  CreateJob();
  Reconcile();
  Json j = GetJob();
  j["spec"]["runPolicy"]["suspend"] = true;
  ASSERT_TRUE(client_.Update(res::kJobs, "ml", j).ok());
  Reconcile();
  EXPECT_TRUE(Pods().empty());
  EXPECT_EQ(GetJob()["status"]["state"], "Suspended");
  j = GetJob();
  j["spec"]["runPolicy"]["suspend"] = false;
  ASSERT_TRUE(client_.Update(res::kJobs, "ml", j).ok());
  Reconcile();
  EXPECT_EQ(Pods().size(), 3u);
  Json got = GetJob();
  EXPECT_EQ(Condition(got, "Suspended")->value("status", ""), "False");
  EXPECT_EQ(Condition(got, "Suspended")->value("reason", ""), "JobResumed");
}

TEST_F(ReconcilerTest, ActiveDeadlineFailsTheJobAndRequeuesUntilThen) {
  auto r = CreateJobWithRunPolicy("activeDeadlineSeconds", 100);
  ASSERT_TRUE(r.requeue_after.has_value());
  EXPECT_LE(r.requeue_after->count(), 100);
  wall_.Advance(std::chrono::seconds(101));
  Reconcile();
  Json got = GetJob();
  EXPECT_EQ(got["status"]["state"], "Failed");
  EXPECT_EQ(Condition(got, "Failed")->value("reason", ""), "DeadlineExceeded");
}

TEST_F(ReconcilerTest, TtlAfterFinishedDeletesTheJob) {
  CreateJobWithRunPolicy("ttlSecondsAfterFinished", 30);
  SetPodPhase("wn-aggregator", "Succeeded", 0);
  Reconcile();
  auto r = Reconcile();
  ASSERT_TRUE(r.requeue_after.has_value());
  EXPECT_EQ(r.requeue_after->count(), 30);
  wall_.Advance(std::chrono::seconds(30));
  Reconcile();  // deletion requested: the finalizer holds it
  Reconcile();  // finalizer removed
  EXPECT_TRUE(IsNotFound(client_.Get(res::kJobs, "ml", "wn").status()));
  EXPECT_TRUE(client_.Objects(res::kPods).empty());
  EXPECT_TRUE(client_.Objects(res::kSecrets).empty());
}

TEST_F(ReconcilerTest, NotReadyNodeIsReportedAsDegraded) {
  CreateJob();
  Reconcile();
  Json patch = {{"status", {{"conditions", Json::array({{{"type", "Ready"}, {"status", "Unknown"}}})}}}};
  ASSERT_TRUE(client_.MergePatch(res::kNodes, "", "edge-b", patch, "status").ok());
  Reconcile();
  Json got = GetJob();
  const Json* degraded = Condition(got, "Degraded");
  ASSERT_NE(degraded, nullptr);
  EXPECT_EQ(degraded->value("status", ""), "True");
  EXPECT_EQ(degraded->value("reason", ""), "NodeNotReady");
  EXPECT_NE(degraded->value("message", "").find("edge-b"), std::string::npos);
  // Its agent is kept (the toleration decides), not deleted by the operator.
  EXPECT_TRUE(client_.Get(res::kPods, "ml", "wn-agent-edge-b").ok());
}

TEST_F(ReconcilerTest, DeletingTheJobRunsTheFinalizerAndCollectsChildren) {
  client_.SetNow(FormatTime(now()));  // the deletion is requested now, not long ago
  CreateJob();
  Reconcile();
  ASSERT_TRUE(client_.Delete(res::kJobs, "ml", "wn").ok());
  EXPECT_TRUE(client_.Get(res::kJobs, "ml", "wn").ok()) << "finalizer must hold the job";
  // Pass 1: the pods go; the node state waits for the agents to be gone.
  ReconcileResult r = Reconcile();
  EXPECT_TRUE(client_.Objects(res::kPods).empty());
  ASSERT_TRUE(r.requeue_after.has_value());
  EXPECT_EQ(r.requeue_after->count(), 5);
  // Pass 2: one state-cleanup pod per node that trained; the job is held.
  Reconcile();
  ASSERT_TRUE(client_.Get(res::kJobs, "ml", "wn").ok());
  std::vector<std::string> cleanups;
  for (const auto& p : Pods()) cleanups.push_back(p["metadata"]["name"]);
  EXPECT_EQ(cleanups, (std::vector<std::string>{"wn-state-cleanup-edge-a", "wn-state-cleanup-edge-b"}));
  EXPECT_FALSE(client_.Objects(res::kPersistentVolumes).empty()) << "the claims must stay for the cleanup";
  // A pass while they run changes nothing.
  client_.ClearCalls();
  Reconcile();
  for (const auto& c : client_.Calls()) EXPECT_NE(c.verb, "create") << c.resource << "/" << c.name;
  // Done on both nodes: the volumes and the finalizer go, then the job and its children.
  SetPodPhase("wn-state-cleanup-edge-a", "Succeeded");
  SetPodPhase("wn-state-cleanup-edge-b", "Succeeded");
  Reconcile();
  EXPECT_TRUE(IsNotFound(client_.Get(res::kJobs, "ml", "wn").status()));
  EXPECT_TRUE(client_.Objects(res::kPods).empty());
  EXPECT_TRUE(client_.Objects(res::kConfigMaps).empty());
  EXPECT_TRUE(client_.Objects(res::kPersistentVolumes).empty());
  int removed = 0;
  for (const auto& e : client_.Objects(res::kEvents)) removed += e["reason"] == "NodeStateRemoved";
  EXPECT_EQ(removed, 1);
  EXPECT_TRUE(Reconcile().requeue_after == std::nullopt);
}

// Seen on the real API server (operator_cluster, CI): a foreground deletion while a node
// is away. The garbage collector deleted that node's claim (it stays while the agent pod the
// away kubelet has not stopped uses it); a pass on a cache from before that took the claim
// for the node's record and made the record's pod mount it, a claim about to go. The patch
// that takes the claim is conditional on the claim as observed and comes a wave before the
// pod: it fails, no pod is made, and the next pass gives the record a claim of its own.
TEST_F(ReconcilerTest, APassBehindTheCollectorDoesNotMakeTheRecordOnAClaimItDeleted) {
  client_.SetNow(FormatTime(now()));
  CreateJob();
  Reconcile();
  Json not_ready = {{"status", {{"conditions", Json::array({{{"type", "Ready"}, {"status", "Unknown"}}})}}}};
  ASSERT_TRUE(client_.MergePatch(res::kNodes, "", "edge-b", not_ready, "status").ok());
  Reconcile();
  std::string claim;
  for (const auto& c : client_.Objects(res::kPersistentVolumeClaims))
    if (c["metadata"].value("annotations", Json::object()).value(kAnnotationNode, "") == "edge-b")
      claim = c["metadata"]["name"];
  ASSERT_FALSE(claim.empty());
  // What keeps both on the real API server: the agent pod on the away node is never
  // confirmed gone, and pvc-protection holds the claim it uses.
  Json held = {{"metadata", {{"finalizers", Json::array({"test.fedge.io/kubelet-away"})}}}};
  ASSERT_TRUE(client_.MergePatch(res::kPods, "ml", "wn-agent-edge-b", held).ok());
  Json protect = {{"metadata", {{"finalizers", Json::array({"kubernetes.io/pvc-protection"})}}}};
  ASSERT_TRUE(client_.MergePatch(res::kPersistentVolumeClaims, "ml", claim, protect).ok());
  client_.SetGarbageCollection(false);

  ObjectsBehindCache behind_cache(&client_, res::kPersistentVolumeClaims);
  JobReconciler behind(&client_, &behind_cache, &events_, ReconcilerOptions{DefaultImages(), &wall_});
  behind_cache.Freeze();  // the claims before the collector's deletion
  ASSERT_TRUE(client_.Delete(res::kJobs, "ml", "wn").ok());
  ASSERT_TRUE(client_.Delete(res::kPersistentVolumeClaims, "ml", claim).ok());  // the collector
  const Json deleted = *client_.Get(res::kPersistentVolumeClaims, "ml", claim);
  ASSERT_TRUE(deleted["metadata"].contains("deletionTimestamp"));
  bool conflicted = false;
  for (int i = 0; i < 4; ++i) {
    auto r = behind.Reconcile("ml/wn");
    if (!r.ok()) {
      EXPECT_NE(r.status().ToString().find("Conflict"), std::string::npos) << r.status().ToString();
      conflicted = true;
    }
    EXPECT_TRUE(IsNotFound(client_.Get(res::kPods, "ml", "wn-state-cleanup-edge-b").status()))
        << "a record's pod on the claim the collector deleted (pass " << i << ")";
  }
  EXPECT_TRUE(conflicted) << "the stale pass tried nothing";
  EXPECT_EQ(
      client_.Get(res::kPersistentVolumeClaims, "ml", claim)->value("metadata", Json())["ownerReferences"],
      deleted["metadata"]["ownerReferences"])
      << "the claim the collector deleted is left as it is";

  behind_cache.CatchUp();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(behind.Reconcile("ml/wn").ok());
  auto record = client_.Get(res::kPods, "ml", "wn-state-cleanup-edge-b");
  ASSERT_TRUE(record.ok()) << "no record for the node that is away";
  std::string mounted;
  for (const auto& v : (*record)["spec"]["volumes"])
    if (v.contains("persistentVolumeClaim")) mounted = v["persistentVolumeClaim"]["claimName"];
  EXPECT_EQ(mounted.rfind("wn-record-edge-b-", 0), 0u) << mounted;
  auto own = client_.Get(res::kPersistentVolumeClaims, "ml", mounted);
  ASSERT_TRUE(own.ok());
  EXPECT_FALSE((*own)["metadata"].contains("deletionTimestamp"));
  EXPECT_FALSE((*own)["metadata"].contains("ownerReferences"));
}

// Every object the job's children would be, by owner: "uid" of its controller reference,
// or a node volume's fedge.io/job-uid annotation.
std::map<std::string, int> ChildrenByOwner(FakeKubeClient& client) {
  std::map<std::string, int> out;
  for (const Resource* r :
       {&res::kSecrets, &res::kConfigMaps, &res::kServices, &res::kPods, &res::kServiceAccounts, &res::kRoles,
        &res::kRoleBindings, &res::kPersistentVolumeClaims, &res::kNetworkPolicies,
        &res::kPersistentVolumes}) {
    for (const auto& o : client.Objects(*r)) {
      std::string uid;
      for (const auto& ref : o["metadata"].value("ownerReferences", Json::array()))
        uid = ref.value("uid", "");
      if (uid.empty()) uid = o["metadata"].value("annotations", Json::object()).value(kAnnotationJobUid, "");
      ++out[uid];
    }
  }
  return out;
}

// A job deleted and created again under the same name before the garbage collector has
// removed the first one's children: the new job takes none of them over (their CA and
// tokens are the old job's) and creates no pod until they are gone, then creates its own.
TEST_F(ReconcilerTest, AJobReCreatedUnderTheSameNameWaitsForTheOldJobsChildren) {
  const std::string old_uid = CreateJob()["metadata"]["uid"];
  Reconcile();
  const Json old_credentials = *client_.Get(res::kSecrets, "ml", "wn-credentials");
  client_.SetGarbageCollection(false);
  ASSERT_TRUE(client_.Delete(res::kJobs, "ml", "wn").ok());
  Reconcile();  // the finalizer: pods and node volumes go, then the job
  ASSERT_TRUE(IsNotFound(client_.Get(res::kJobs, "ml", "wn").status()));
  const int left = ChildrenByOwner(client_)[old_uid];
  ASSERT_GT(left, 10) << "the old job's Secrets, claims, services... wait for the collector";

  const std::string new_uid = CreateJob()["metadata"]["uid"];
  ASSERT_NE(new_uid, old_uid);
  ReconcileResult r = Reconcile();
  EXPECT_TRUE(Pods().empty()) << "no pod may mount the old job's Secrets and claims";
  EXPECT_EQ(ChildrenByOwner(client_)[old_uid], left) << "nothing of the old job is taken over";
  EXPECT_EQ(client_.Get(res::kSecrets, "ml", "wn-credentials")->value("data", Json()),
            old_credentials.value("data", Json()));
  Json job = GetJob();
  ASSERT_NE(Condition(job, "Created"), nullptr);
  EXPECT_EQ(Condition(job, "Created")->value("status", ""), "False");
  EXPECT_EQ(Condition(job, "Created")->value("reason", ""), "PreviousJobBeingDeleted");
  EXPECT_NE(Condition(job, "Created")->value("message", "").find("configmaps/wn-config"), std::string::npos)
      << Condition(job, "Created")->dump();
  ASSERT_TRUE(r.requeue_after.has_value());
  EXPECT_LE(r.requeue_after->count(), 5);

  client_.CollectGarbage();
  EXPECT_EQ(ChildrenByOwner(client_).count(old_uid), 0u);
  Reconcile();
  Reconcile();
  auto owners = ChildrenByOwner(client_);
  EXPECT_EQ(owners.size(), 1u) << "every child is the new job's";
  EXPECT_EQ(owners[new_uid], 18 + 2) << "18 children and the 2 node volumes";
  EXPECT_EQ(Pods().size(), 3u);
  job = GetJob();
  EXPECT_EQ(Condition(job, "Created")->value("status", ""), "True");
  EXPECT_NE(client_.Get(res::kSecrets, "ml", "wn-credentials")->value("data", Json()),
            old_credentials.value("data", Json()))
      << "a CA of its own";
}

std::vector<Json> EventsWithReason(FakeKubeClient& client, const std::string& reason) {
  std::vector<Json> out;
  for (const auto& e : client.Objects(res::kEvents))
    if (e.value("reason", "") == reason) out.push_back(e);
  return out;
}

// An object of the user's under a child's name (here the ConfigMap) is neither taken over
// (a forced apply used to rewrite it and add the job as its owner, so deleting the job
// deleted it) nor used: the pass stops before the pods, says so in Created and an event,
// and goes on once it is renamed or deleted.
TEST_F(ReconcilerTest, AnObjectTheOperatorDidNotCreateIsNeitherTakenOverNorDeleted) {
  Json mine = {{"apiVersion", "v1"},
               {"kind", "ConfigMap"},
               {"metadata", {{"name", "wn-config"}}},
               {"data", {{"mine", "yes"}}}};
  ASSERT_TRUE(client_.Create(res::kConfigMaps, "ml", mine).ok());
  CreateJob();
  auto r = reconciler_.Reconcile("ml/wn");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status().ToString();
  EXPECT_NE(r.status().message().find("configmaps/wn-config exists and is not this job's"), std::string::npos)
      << r.status().ToString();
  Json cm = *client_.Get(res::kConfigMaps, "ml", "wn-config");
  EXPECT_EQ(cm["data"], mine["data"]);
  EXPECT_FALSE(cm["metadata"].contains("ownerReferences"));
  EXPECT_TRUE(Pods().empty());
  Json job = GetJob();
  ASSERT_NE(Condition(job, "Created"), nullptr);
  EXPECT_EQ(Condition(job, "Created")->value("reason", ""), "ChildConflict");
  EXPECT_EQ(Condition(job, "Created")->value("status", ""), "False");
  EXPECT_EQ(EventsWithReason(client_, "ChildConflict").size(), 1u);
  r = reconciler_.Reconcile("ml/wn");  // the same conflict again: no second event
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(EventsWithReason(client_, "ChildConflict").size(), 1u);

  ASSERT_TRUE(client_.Delete(res::kJobs, "ml", "wn").ok());
  Reconcile();
  EXPECT_TRUE(client_.Get(res::kConfigMaps, "ml", "wn-config").ok())
      << "deleting the job keeps the user's object";

  CreateJob();
  ASSERT_TRUE(client_.Delete(res::kConfigMaps, "ml", "wn-config").ok());
  Reconcile();
  EXPECT_EQ(Pods().size(), 3u);
  EXPECT_EQ(Condition(GetJob(), "Created")->value("status", ""), "True");
}

// A job whose children's names collide with another job's objects (here job wn's
// ConfigMap under the name of job "wn2"'s trust ConfigMap) uses none of them.
TEST_F(ReconcilerTest, AJobWhoseChildrensNamesCollideWithAnotherJobsTakesNothingOfIt) {
  CreateJob();
  Reconcile();
  Json theirs = *client_.Get(res::kConfigMaps, "ml", "wn-trust");
  theirs["metadata"] = {{"name", "wn2-trust"},
                        {"namespace", "ml"},
                        {"labels", theirs["metadata"]["labels"]},
                        {"ownerReferences", theirs["metadata"]["ownerReferences"]}};
  ASSERT_TRUE(client_.Create(res::kConfigMaps, "ml", theirs).ok());
  Json job = Job();
  job["metadata"]["name"] = "wn2";
  CreateJob(job);
  auto r = reconciler_.Reconcile("ml/wn2");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("configmaps/wn2-trust is not this job's: it belongs to "
                                      "FederatedTrainingJob wn"),
            std::string::npos)
      << r.status().ToString();
  EXPECT_EQ(client_.Get(res::kConfigMaps, "ml", "wn2-trust")->value("data", Json()),
            theirs.value("data", Json()));
  for (const auto& p : Pods()) EXPECT_EQ(p["metadata"]["labels"].value(kLabelJob, ""), "wn");
  EXPECT_EQ(Condition(GetJob("wn2"), "Created")->value("reason", ""), "ChildConflict");
}

// A checkpoint claim the spec names may be another job's (named to resume from its
// checkpoint): it is used, not waited for.
TEST_F(ReconcilerTest, ACheckpointClaimTheSpecNamesIsUsedWhoeverOwnsIt) {
  Json claim = {{"apiVersion", "v1"},
                {"kind", "PersistentVolumeClaim"},
                {"metadata",
                 {{"name", "earlier-checkpoints"},
                  {"ownerReferences", Json::array({{{"apiVersion", "fedge.io/v1alpha1"},
                                                    {"kind", "FederatedTrainingJob"},
                                                    {"name", "earlier"},
                                                    {"uid", "uid-of-an-earlier-job"},
                                                    {"controller", true}}})}}},
                {"spec", {{"accessModes", {"ReadWriteOnce"}}}}};
  ASSERT_TRUE(client_.Create(res::kPersistentVolumeClaims, "ml", claim).ok());
  ASSERT_TRUE(client_
                  .MergePatch(res::kPersistentVolumeClaims, "ml", "earlier-checkpoints",
                              {{"status", {{"phase", "Pending"}}}}, "status")
                  .ok());
  Json job = Job();
  job["spec"]["aggregator"]["checkpoint"]["claimName"] = "earlier-checkpoints";
  CreateJob(job);
  Reconcile();
  EXPECT_EQ(Pods().size(), 3u);
  Json got = GetJob();
  EXPECT_EQ(Condition(got, "Created")->value("status", ""), "True");
  // The claim is seen as the job's: its missing storage class is reported.
  EXPECT_EQ(Condition(got, "Running")->value("reason", ""), "CheckpointClaimUnbound");
}

// Lists nothing of one resource: the pass plans to create what already exists.
class BlindCache : public ObjectCache {
 public:
  BlindCache(KubeClient* client, const Resource& blind) : through_(client), blind_(blind.plural) {}
  ObjectPtr Get(const Resource& r, const std::string& ns, const std::string& name) override {
    return r.plural == blind_ ? nullptr : through_.Get(r, ns, name);
  }
  std::vector<ObjectPtr> List(const Resource& r, const std::string& ns, const std::string& key,
                              const std::string& value) override {
    if (r.plural == blind_) return {};
    return through_.List(r, ns, key, value);
  }

 private:
  ClientCache through_;
  std::string blind_;
};

// A create that meets AlreadyExists counts as done only when the object is the job's own
// (a cache behind the operator's earlier write); another job's stops the pass before its
// pods, naming the object.
TEST_F(ReconcilerTest, ACreateThatMeetsAnotherJobsObjectStopsThePassBeforeThePods) {
  const std::string old_uid = CreateJob()["metadata"]["uid"];
  Reconcile();
  client_.SetGarbageCollection(false);
  ASSERT_TRUE(client_.Delete(res::kJobs, "ml", "wn").ok());
  Reconcile();
  const std::string new_uid = CreateJob()["metadata"]["uid"];
  // Only the node-volume claims are left of the old job, and the cache cannot see them.
  for (const Resource* r : {&res::kSecrets, &res::kConfigMaps, &res::kServices, &res::kServiceAccounts,
                            &res::kRoles, &res::kRoleBindings, &res::kNetworkPolicies}) {
    for (const auto& o : client_.Objects(*r)) {
      ASSERT_TRUE(
          client_.Delete(*r, o["metadata"].value("namespace", ""), o["metadata"].value("name", "")).ok());
    }
  }
  ASSERT_TRUE(
      IsNotFound(client_.Get(res::kPersistentVolumeClaims, "ml", "wn-aggregator-checkpoints").status()) ||
      client_.Delete(res::kPersistentVolumeClaims, "ml", "wn-aggregator-checkpoints").ok());
  ASSERT_FALSE(client_.Objects(res::kPersistentVolumeClaims).empty());
  BlindCache blind(&client_, res::kPersistentVolumeClaims);
  JobReconciler reconciler{&client_, &blind, &events_, ReconcilerOptions{DefaultImages(), &wall_}};
  auto r = reconciler.Reconcile("ml/wn");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  EXPECT_NE(r.status().message().find("it belongs to FederatedTrainingJob wn (uid"), std::string::npos)
      << r.status().ToString();
  EXPECT_NE(r.status().message().find(old_uid), std::string::npos) << r.status().ToString();
  EXPECT_TRUE(Pods().empty());

  client_.CollectGarbage();
  auto again = reconciler.Reconcile("ml/wn");  // the claims are created now, then the pods
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(Pods().size(), 3u);
  for (const auto& pvc : client_.Objects(res::kPersistentVolumeClaims))
    EXPECT_EQ(pvc["metadata"]["ownerReferences"][0].value("uid", ""), new_uid);
}

// The claim of a node whose pod exists is made again when it goes and the scheduler finds
// the pod unschedulable: it would wait for it forever (before, volumes were made only with
// a missing pod).
TEST_F(ReconcilerTest, AMissingNodeVolumeClaimIsMadeAgainWhileItsPodExists) {
  CreateJob();
  Reconcile();
  auto claims = client_.Objects(res::kPersistentVolumeClaims);
  std::string node_claim;
  for (const auto& c : claims)
    if (c["metadata"]["labels"].value(kLabelRole, "") == "node-volume") node_claim = c["metadata"]["name"];
  ASSERT_FALSE(node_claim.empty());
  ASSERT_TRUE(client_.Delete(res::kPersistentVolumeClaims, "ml", node_claim).ok());
  const size_t pods = Pods().size();
  Reconcile();  // its pod has not been looked at by the scheduler: the cache may be behind
  EXPECT_FALSE(client_.Get(res::kPersistentVolumeClaims, "ml", node_claim).ok());
  Json unschedulable = {{"phase", "Pending"},
                        {"conditions", Json::array({{{"type", "PodScheduled"},
                                                     {"status", "False"},
                                                     {"reason", "Unschedulable"},
                                                     {"message", "persistentvolumeclaim not found"}}})}};
  for (const auto& p : Pods()) {
    ASSERT_TRUE(client_
                    .MergePatch(res::kPods, "ml", p["metadata"].value("name", ""),
                                {{"status", unschedulable}}, "status")
                    .ok());
  }
  Reconcile();
  EXPECT_TRUE(client_.Get(res::kPersistentVolumeClaims, "ml", node_claim).ok());
  EXPECT_EQ(Pods().size(), pods);
}

TEST_F(ReconcilerTest, TransientApiErrorIsReturnedForBackoff) {
  CreateJob();
  client_.FailNext("create", "pods", KubeError("ServiceUnavailable", 503, "etcd leader changed"));
  auto r = reconciler_.Reconcile("ml/wn");
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  Reconcile();
  EXPECT_EQ(Pods().size(), 3u);
}

TEST_F(ReconcilerTest, TooFewNodesKeepsTheJobPendingWithoutAggregator) {
  Json job = Job();
  job["spec"]["agents"]["minAgents"] = 3;
  CreateJob(job);
  Reconcile();
  Json got = GetJob();
  EXPECT_EQ(got["status"]["state"], "Pending");
  EXPECT_TRUE(IsNotFound(client_.Get(res::kPods, "ml", "wn-aggregator").status()));
  EXPECT_EQ(Condition(got, "Running")->value("reason", ""), "WaitingForAgents");
}

TEST(StatusReporterTest, MapsAggregatorStatusToBoundedProgress) {
  Json agg = Json::parse(R"({"state":"Succeeded","round":3,"total_rounds":3,"global_version":4,
    "global_checksum":"abc","rounds":[
      {"round":1,"participants":2,"loss":1.2,"accuracy":0.4,"train_loss":1.5,"bytes_up":100,"bytes_down":200,"seconds":1.5},
      {"round":2,"participants":2,"loss":0.9,"accuracy":0.5,"train_loss":1.1,"bytes_up":110,"bytes_down":210,"seconds":1.4},
      {"round":3,"participants":1,"loss":0.7,"accuracy":0.6,"train_loss":0.8,"bytes_up":120,"bytes_down":220,"seconds":1.3}],
    "final_accuracy":0.61})");
  Json st = ProgressFromAggregator(agg);
  EXPECT_EQ(st["roundsCompleted"], 3);
  EXPECT_EQ(st["round"], 3);
  EXPECT_EQ(st["participants"], 1);
  EXPECT_DOUBLE_EQ(st["lastRound"]["accuracy"].get<double>(), 0.61);
  EXPECT_DOUBLE_EQ(st["lastRound"]["loss"].get<double>(), 0.8);
  EXPECT_EQ(st["lastRound"]["bytesUp"], 120);
  EXPECT_EQ(st["globalModel"]["version"], 4);
  EXPECT_FALSE(st.contains("rounds"));
}

// While each round is evaluated with the next round's updates the last record
// has no accuracy yet: the newest evaluated one is shown.
TEST(StatusReporterTest, AccuracyIsTheNewestEvaluatedRounds) {
  Json agg = Json::parse(R"({"state":"Running","round":3,"total_rounds":5,"global_version":3,"rounds":[
      {"round":1,"participants":2,"loss":1.2,"accuracy":0.4,"train_loss":1.5},
      {"round":2,"participants":2,"train_loss":1.1}]})");
  Json st = ProgressFromAggregator(agg);
  EXPECT_EQ(st["roundsCompleted"], 2);
  EXPECT_DOUBLE_EQ(st["lastRound"]["accuracy"].get<double>(), 0.4);
  EXPECT_DOUBLE_EQ(st["lastRound"]["loss"].get<double>(), 1.1);
  agg["rounds"] = Json::array({{{"round", 1}, {"train_loss", 1.5}}});
  EXPECT_FALSE(ProgressFromAggregator(agg)["lastRound"].contains("accuracy"));
}

TEST(DesiredTest, ManifestForParserDropsOperatorOnlyFields) {
  Json job = Job();
  job["spec"]["aggregator"] = {{"checkpoint", {{"enabled", true}}}};
  Json m = ManifestForParser(job);
  EXPECT_FALSE(m["spec"].contains("aggregator"));
  EXPECT_FALSE(m["spec"]["agents"].contains("tolerationSeconds"));
  EXPECT_EQ(m["spec"]["agents"]["nodeSelector"]["fedge.io/edge"], "true");
}

TEST(DesiredTest, AgentPodNamesStayValidForLongNodeNames) {
  Json job = Job();
  std::string node(240, 'n');
  std::string a = AgentPodName(job, node), b = AgentPodName(job, node + "x");
  EXPECT_LE(a.size(), 253u);
  EXPECT_NE(a, b);
}

}  // namespace
}  // namespace fedge::op
