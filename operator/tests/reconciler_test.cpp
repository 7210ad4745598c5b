#include "fedge/op/reconciler.h"

#include <gtest/gtest.h>

#include <set>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "fedge/op/fake_kube_client.h"
#include "fedge/op/pki.h"
#include "fedge/op/status_reporter.h"

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
  std::time_t now_ = 1'800'000'000;
  JobReconciler reconciler_{&client_, &cache_, &events_,
                            ReconcilerOptions{DefaultImages(), [this] { return now_; }}};
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
  // 2 secrets (credentials, inference token), configmap, 2 services, aggregator + 2
  // agents, SA, role, binding, checkpoint claim + 3 node-volume claims per agent, 2
  // network policies
  EXPECT_EQ(children, 20);
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

TEST_F(ReconcilerTest, SecretHoldsCaSignedServingCertAndOneTokenPerAgent) {
  CreateJob();
  Reconcile();
  auto secret = client_.Get(res::kSecrets, "ml", "wn-credentials");
  ASSERT_TRUE(secret.ok());
  Credentials c = CredentialsFromSecret(*secret);
  EXPECT_EQ(c.tokens.size(), 2u);
  EXPECT_EQ(c.tokens.at("edge-a").size(), 64u);
  EXPECT_NE(c.tokens.at("edge-a"), c.tokens.at("edge-b"));
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
  JobReconciler again(&client_, &cache_, &events_,
                      ReconcilerOptions{DefaultImages(), [this] { return now_; }});
  ASSERT_TRUE(again.Reconcile("ml/wn").ok());
  EXPECT_EQ(Pods().size(), 3u);
  EXPECT_EQ(client_.Objects(res::kSecrets).size(), 2u);  // credentials + inference token
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
  Credentials c = CredentialsFromSecret(*client_.Get(res::kSecrets, "ml", "wn-credentials"));
  EXPECT_TRUE(c.tokens.count("edge-c"));
  EXPECT_EQ(GetJob()["status"]["agents"]["desired"], 2);
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
  Json job = Job();
  job["spec"]["runPolicy"]["cleanPodPolicy"] = "All";
  CreateJob(job);
  Reconcile();
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

TEST(DesiredTest, TlsPassesTheSecretsCertificatesToBothSides) {
  Json job = Job();
  auto agg = Command(DesiredAggregatorPod(job, 2, DefaultImages()));
  auto agent = Command(DesiredAgentPod(job, "edge-a", DefaultImages()));
  EXPECT_FALSE(HasArg(agg, "--tls-cert"));
  EXPECT_FALSE(HasArg(agent, "--tls-ca"));
  job["spec"]["privacy"] = {{"tls", true}};
  Json agg_pod = DesiredAggregatorPod(job, 2, DefaultImages());
  Json agent_pod = DesiredAgentPod(job, "edge-a", DefaultImages());
  agg = Command(agg_pod);
  agent = Command(agent_pod);
  EXPECT_TRUE(HasArg(agg, "--tls-cert", std::string(kSecretMountPath) + "/tls.crt"));
  EXPECT_TRUE(HasArg(agg, "--tls-key", std::string(kSecretMountPath) + "/tls.key"));
  EXPECT_TRUE(HasArg(agent, "--tls-ca", std::string(kSecretMountPath) + "/ca.crt"));
  EXPECT_TRUE(HasArg(agent, "--tls-server-name", "wn-aggregator.ml.svc"));
  // The files the flags name are projected from the Secret into each pod.
  auto items = [](const Json& pod) {
    std::set<std::string> keys;
    for (const auto& v : pod["spec"]["volumes"]) {
      if (v.contains("secret"))
        for (const auto& it : v["secret"]["items"]) keys.insert(it["path"]);
    }
    return keys;
  };
  auto agg_items = items(agg_pod);
  EXPECT_TRUE(agg_items.count("tls.crt") && agg_items.count("tls.key"));
  EXPECT_TRUE(items(agent_pod).count("ca.crt"));
  EXPECT_FALSE(items(agent_pod).count("tls.key"));  // agents never get the serving key
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
  Json job = Job();
  job["spec"]["runPolicy"]["activeDeadlineSeconds"] = 100;
  CreateJob(job);
  auto r = Reconcile();
  ASSERT_TRUE(r.requeue_after.has_value());
  EXPECT_LE(r.requeue_after->count(), 100);
  now_ += 101;
  Reconcile();
  Json got = GetJob();
  EXPECT_EQ(got["status"]["state"], "Failed");
  EXPECT_EQ(Condition(got, "Failed")->value("reason", ""), "DeadlineExceeded");
}

TEST_F(ReconcilerTest, TtlAfterFinishedDeletesTheJob) {
  Json job = Job();
  job["spec"]["runPolicy"]["ttlSecondsAfterFinished"] = 30;
  CreateJob(job);
  Reconcile();
  SetPodPhase("wn-aggregator", "Succeeded", 0);
  Reconcile();
  auto r = Reconcile();
  ASSERT_TRUE(r.requeue_after.has_value());
  EXPECT_EQ(r.requeue_after->count(), 30);
  now_ += 30;
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
  CreateJob();
  Reconcile();
  ASSERT_TRUE(client_.Delete(res::kJobs, "ml", "wn").ok());
  EXPECT_TRUE(client_.Get(res::kJobs, "ml", "wn").ok()) << "finalizer must hold the job";
  Reconcile();
  EXPECT_TRUE(IsNotFound(client_.Get(res::kJobs, "ml", "wn").status()));
  EXPECT_TRUE(client_.Objects(res::kPods).empty());
  EXPECT_TRUE(client_.Objects(res::kConfigMaps).empty());
  EXPECT_TRUE(Reconcile().requeue_after == std::nullopt);
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
