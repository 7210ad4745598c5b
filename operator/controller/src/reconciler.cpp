#include "fedge/op/reconciler.h"

#include <openssl/sha.h>

#include <algorithm>
#include <set>

#include "fedge/job_spec.h"
#include "fedge/log.h"
#include "fedge/op/pki.h"

namespace fedge::op {
namespace {

constexpr const char* kHashAnnotation = "fedge.io/applied-hash";

std::string Sha(const std::string& s) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), md);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 12; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

std::string PodPhase(const Json& pod) {
  auto st = pod.find("status");
  return st == pod.end() ? "Pending" : st->value("phase", "Pending");
}

bool PodReady(const Json& pod) {
  auto st = pod.find("status");
  if (st == pod.end()) return false;
  for (const auto& c : st->value("conditions", Json::array())) {
    if (c.value("type", "") == "Ready") return c.value("status", "") == "True";
  }
  return false;
}

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

bool Terminating(const Json& obj) { return obj["metadata"].contains("deletionTimestamp"); }

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

}  // namespace

// ---------------------------------------------------------------------------------------
std::string FormatTime(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::optional<std::time_t> ParseTime(const std::string& s) {
  std::tm tm{};
  if (!strptime(s.c_str(), "%Y-%m-%dT%H:%M:%S", &tm)) return std::nullopt;
  return timegm(&tm);
}

const Json* FindCondition(const Json& conditions, const std::string& type) {
  if (!conditions.is_array()) return nullptr;
  for (const auto& c : conditions)
    if (c.value("type", "") == type) return &c;
  return nullptr;
}

void SetCondition(Json& conditions, const std::string& type, const std::string& status,
                  const std::string& reason, const std::string& message, int64_t generation,
                  const std::string& now) {
  if (!conditions.is_array()) conditions = Json::array();
  for (auto& c : conditions) {
    if (c.value("type", "") != type) continue;
    if (c.value("status", "") != status) c["lastTransitionTime"] = now;
    c["status"] = status;
    c["reason"] = reason;
    c["message"] = message;
    c["observedGeneration"] = generation;
    return;
  }
  conditions.push_back({{"type", type},
                        {"status", status},
                        {"reason", reason},
                        {"message", message},
                        {"observedGeneration", generation},
                        {"lastTransitionTime", now}});
}

// ---------------------------------------------------------------------------------------
ObjectPtr ClientCache::Get(const Resource& r, const std::string& ns, const std::string& name) {
  auto got = client_->Get(r, ns, name);
  if (!got.ok()) return nullptr;
  return std::make_shared<const Json>(std::move(*got));
}

std::vector<ObjectPtr> ClientCache::List(const Resource& r, const std::string& ns,
                                         const std::string& label_key, const std::string& label_value) {
  ListOptions lo;
  if (!label_key.empty()) lo.label_selector = label_key + "=" + label_value;
  auto got = ListAll(*client_, r, ns, lo);
  std::vector<ObjectPtr> out;
  if (!got.ok()) return out;
  for (auto& item : got->items) out.push_back(std::make_shared<const Json>(std::move(item)));
  return out;
}

void EventRecorder::Record(const Json& obj, const std::string& type, const std::string& reason,
                           const std::string& message) {
  const Json& meta = obj["metadata"];
  std::string ns = meta.value("namespace", "default");
  std::string now = clock_->NowRfc3339();
  char suffix[32];
  std::snprintf(suffix, sizeof(suffix), "%llx%04llx", static_cast<unsigned long long>(std::time(nullptr)),
                static_cast<unsigned long long>(seq_++ & 0xffff));
  Json ev = {{"apiVersion", "v1"},
             {"kind", "Event"},
             {"metadata", {{"name", meta.value("name", "") + "." + suffix}, {"namespace", ns}}},
             {"involvedObject",
              {{"apiVersion", obj.value("apiVersion", "")},
               {"kind", obj.value("kind", "")},
               {"name", meta.value("name", "")},
               {"namespace", ns},
               {"uid", meta.value("uid", "")},
               {"resourceVersion", meta.value("resourceVersion", "")}}},
             {"reason", reason},
             {"message", message},
             {"type", type},
             {"source", {{"component", "fedge-operator"}}},
             {"reportingComponent", "fedge.io/operator"},
             {"firstTimestamp", now},
             {"lastTimestamp", now},
             {"count", 1}};
  auto s = client_->Create(res::kEvents, ns, ev);
  if (!s.ok()) log::Warn("event not recorded", {{"reason", reason}, {"error", s.status().ToString()}});
}

// ---------------------------------------------------------------------------------------
struct JobReconciler::Run {
  std::string ns, name;
  Json job;
  int64_t generation = 0;
  std::time_t now = 0;
  std::string now_str;
  Json old_status;  // as read
  Json status;      // operator-owned fields being computed
  std::vector<ObjectPtr> pods;
  std::optional<std::chrono::seconds> requeue_after;
  std::optional<JobSpec> spec;                                      // parsed and defaulted
  Credentials creds;                                                // SyncCredentials' result
  std::vector<std::pair<std::string, std::string>> pending_events;  // (type, reason|message)

  void Event(const std::string& type, const std::string& reason, const std::string& message) {
    pending_events.push_back({type, reason + "\n" + message});
  }
  void RequeueAfter(std::chrono::seconds d) {
    if (d < std::chrono::seconds(1)) d = std::chrono::seconds(1);
    if (!requeue_after || d < *requeue_after) requeue_after = d;
  }
  // Sets a condition; records an Event when its status changes.
  void Condition(const std::string& type, const std::string& st, const std::string& reason,
                 const std::string& message, const char* event_type = nullptr) {
    const Json* before = FindCondition(status["conditions"], type);
    bool changed = !before || before->value("status", "") != st || before->value("reason", "") != reason;
    SetCondition(status["conditions"], type, st, reason, message, generation, now_str);
    if (changed && event_type) Event(event_type, reason, message);
  }
};

JobReconciler::JobReconciler(KubeClient* client, ObjectCache* cache, EventRecorder* events,
                             ReconcilerOptions opts)
    : client_(client), cache_(cache), events_(events), opts_(std::move(opts)) {}

Status JobReconciler::ApplyIfChanged(Run& run, const Resource& r, Json desired) {
  std::string name = desired["metadata"].value("name", "");
  std::string hash = Sha(desired.dump());
  ObjectPtr cur = cache_->Get(r, run.ns, name);
  if (cur && (*cur)["metadata"].value("annotations", Json::object()).value(kHashAnnotation, "") == hash) {
    return OkStatus();  // unchanged since we last applied it
  }
  desired["metadata"]["annotations"][kHashAnnotation] = hash;
  auto applied = client_->Apply(r, run.ns, name, desired, {kFieldManager, /*force=*/true, ""});
  return applied.status().WithContext("apply " + r.plural + "/" + name);
}

Status JobReconciler::DeletePods(Run& run, bool only_active, bool keep_agents) {
  for (const auto& p : run.pods) {
    if (Terminating(*p)) continue;
    std::string phase = PodPhase(*p);
    if (only_active && (phase == "Succeeded" || phase == "Failed")) continue;
    if (keep_agents && (*p)["metadata"].value("labels", Json::object()).value(kLabelRole, "") == "agent")
      continue;
    Status s = client_->Delete(res::kPods, run.ns, (*p)["metadata"].value("name", ""), {});
    if (!s.ok() && !IsNotFound(s)) return s;
  }
  return OkStatus();
}

Status JobReconciler::Finalize(Run& run) {
  std::vector<std::string> fin = Finalizers(run.job);
  if (std::find(fin.begin(), fin.end(), kFinalizer) == fin.end()) return OkStatus();
  // Pods first: agents on edge nodes must stop training before the credentials go.
  FEDGE_RETURN_IF_ERROR(DeletePods(run, /*only_active=*/false));
  // The node volumes' PersistentVolumes have no owner (cluster-scoped); their claims go
  // with the job through owner references, and the volume objects leave once released.
  // Only the API objects: Retain keeps the node's files.
  FEDGE_RETURN_IF_ERROR(DeleteNodePersistentVolumes(run));
  fin.erase(std::remove(fin.begin(), fin.end(), kFinalizer), fin.end());
  Json patch = {
      {"metadata",
       {{"finalizers", fin}, {"resourceVersion", run.job["metadata"].value("resourceVersion", "")}}}};
  auto s = client_->MergePatch(res::kJobs, run.ns, run.name, patch);
  if (!s.ok() && !IsNotFound(s.status())) return s.status();
  log::Info("job finalized", {{"job", run.ns + "/" + run.name}});
  return OkStatus();
}

Status JobReconciler::SyncCredentials(Run& run, const std::vector<std::string>& nodes) {
  const Json& job = run.job;
  const std::set<std::string> wanted(nodes.begin(), nodes.end());
  // Exactly the selected nodes hold tokens: a missing one is minted, a stale one revoked.
  auto current = [&](const Credentials& c) {
    if (c.tokens.size() != wanted.size()) return false;
    for (const auto& [id, tok] : c.tokens)
      if (!wanted.count(id)) return false;
    return true;
  };
  ObjectPtr cached = cache_->Get(res::kSecrets, run.ns, SecretName(job));
  if (cached) {
    run.creds = CredentialsFromSecret(*cached);
    if (!run.creds.ca_crt.empty() && current(run.creds)) return OkStatus();
  }
  // Read the live secret: a lagging cache must never make us mint a second CA or
  // replace a token an agent already holds.
  Credentials creds;
  bool exists = false;
  auto live = client_->Get(res::kSecrets, run.ns, SecretName(job));
  if (live.ok()) {
    creds = CredentialsFromSecret(*live);
    exists = !creds.ca_crt.empty();
  } else if (!IsNotFound(live.status())) {
    return live.status();
  }
  if (!exists) {
    FEDGE_ASSIGN_OR_RETURN(KeyPair ca, GenerateCa("fedge job " + run.ns + "/" + run.name));
    std::string svc = AggregatorName(job);
    FEDGE_ASSIGN_OR_RETURN(KeyPair tls,
                           IssueServingCert(ca, svc,
                                            {svc, svc + "." + run.ns, svc + "." + run.ns + ".svc",
                                             svc + "." + run.ns + ".svc.cluster.local"}));
    creds.ca_crt = ca.cert_pem;
    creds.ca_key = ca.key_pem;
    creds.tls_crt = tls.cert_pem;
    creds.tls_key = tls.key_pem;
  }
  std::vector<std::string> revoked;
  for (auto it = creds.tokens.begin(); it != creds.tokens.end();) {
    if (wanted.count(it->first)) {
      ++it;
      continue;
    }
    revoked.push_back(it->first);
    it = creds.tokens.erase(it);
  }
  for (const auto& n : nodes) {
    if (creds.tokens.count(n)) continue;
    FEDGE_ASSIGN_OR_RETURN(creds.tokens[n], RandomToken());
  }
  run.creds = creds;
  Json desired = DesiredSecret(job, creds);
  if (!exists) {
    auto created = client_->Create(res::kSecrets, run.ns, desired);
    if (IsAlreadyExists(created.status()))
      return AbortedError("Conflict: secret created concurrently; retrying");
    return created.status().WithContext("create secret");
  }
  desired["metadata"]["resourceVersion"] = (*live)["metadata"].value("resourceVersion", "");
  auto applied = client_->Apply(res::kSecrets, run.ns, SecretName(job), desired, {kFieldManager, true, ""});
  if (!applied.ok()) return applied.status().WithContext("apply secret");
  for (const auto& id : revoked) {
    run.Event("Normal", "AgentTokenRevoked",
              "agent " + id +
                  " left spec.agents.nodeSelector: its token was removed from the aggregator's "
                  "tokens file, so its credentials can no longer join");
  }
  return OkStatus();
}

Status JobReconciler::SyncAgentCredentials(Run& run, const std::string& node) {
  const Json& job = run.job;
  const bool tls = TlsEnabled(job);
  const std::string name = AgentSecretName(job, node);
  const std::string& token = run.creds.tokens.at(node);  // SyncCredentials minted it
  ObjectPtr cached = cache_->Get(res::kSecrets, run.ns, name);
  AgentCredentials cur = cached ? AgentCredentialsFromSecret(*cached) : AgentCredentials{};
  // Why the Secret is (re)written, for the log; "" when it is current.
  std::string why;
  std::time_t renew_at = 0;
  if (!cached) {
    why = "missing";
  } else if (cur.token != token) {
    why = "token changed";
  } else if (!tls) {
    if (!cur.tls_crt.empty()) why = "TLS turned off";
  } else if (cur.ca_crt != run.creds.ca_crt || !SignedBy(cur.tls_crt, run.creds.ca_crt)) {
    why = "not from the job CA";
  } else if (!KeyMatchesCert(cur.tls_crt, cur.tls_key)) {
    why = "key does not match the certificate";
  } else {
    auto info = ReadCert(cur.tls_crt);
    if (!info.ok() || info->agent_id != node) {
      why = "certificate names another agent";
    } else if (run.now >= RenewalTime(*info)) {
      why = "due for renewal";
    } else {
      renew_at = RenewalTime(*info);
    }
  }
  if (why.empty()) {
    if (tls) run.RequeueAfter(std::chrono::seconds(renew_at - run.now));
    return OkStatus();
  }
  AgentCredentials want{token, "", "", ""};
  if (tls) {
    FEDGE_ASSIGN_OR_RETURN(KeyPair cert, IssueClientCert({run.creds.ca_crt, run.creds.ca_key}, node, run.now,
                                                         opts_.agent_cert_lifetime_seconds));
    FEDGE_ASSIGN_OR_RETURN(CertInfo info, ReadCert(cert.cert_pem));
    want.ca_crt = run.creds.ca_crt;
    want.tls_crt = cert.cert_pem;
    want.tls_key = cert.key_pem;
    run.RequeueAfter(std::chrono::seconds(RenewalTime(info) - run.now));
  }
  Json desired = DesiredAgentSecret(job, node, want);
  if (!cached) {
    // Created once; if it exists already the cache lags behind our own write, and the
    // watch event that updates the cache brings the job back here.
    auto c = client_->Create(res::kSecrets, run.ns, desired);
    if (IsAlreadyExists(c.status())) return OkStatus();
    if (!c.ok()) return c.status().WithContext("create secret " + name);
  } else {
    auto a = client_->Apply(res::kSecrets, run.ns, name, desired, {kFieldManager, true, ""});
    if (!a.ok()) return a.status().WithContext("apply secret " + name);
  }
  log::Info("agent credentials written",
            {{"job", run.ns + "/" + run.name}, {"node", node}, {"reason", why}, {"tls", tls}});
  return OkStatus();
}

Status JobReconciler::DeleteStaleAgentCredentials(Run& run, const std::set<std::string>& wanted) {
  for (const auto& s : cache_->List(res::kSecrets, run.ns, kLabelJob, run.name)) {
    const Json& meta = (*s)["metadata"];
    if (meta.value("labels", Json::object()).value(kLabelRole, "") != "agent-credentials") continue;
    std::string node = meta.value("annotations", Json::object()).value(kAnnotationNode, "");
    if (wanted.count(node) || Terminating(*s)) continue;
    Status st = client_->Delete(res::kSecrets, run.ns, meta.value("name", ""), {});
    if (!st.ok() && !IsNotFound(st)) return st.WithContext("delete secret " + meta.value("name", ""));
    log::Info("agent credentials deleted", {{"job", run.ns + "/" + run.name}, {"node", node}});
  }
  return OkStatus();
}

Status JobReconciler::HandleFailedPod(Run& run, const Json& pod, bool aggregator) {
  std::string pod_name = pod["metadata"].value("name", "");
  int backoff_limit = run.spec->runPolicy.backoffLimit;
  int restarts = run.status.value("restarts", 0);
  int code = PodExitCode(pod);
  if (restarts < backoff_limit) {
    DeleteOptions opts;
    opts.precondition_uid = pod["metadata"].value("uid", "");
    Status s = client_->Delete(res::kPods, run.ns, pod_name, opts);
    if (IsNotFound(s) || IsConflict(s)) return OkStatus();  // already replaced
    FEDGE_RETURN_IF_ERROR(s);
    run.status["restarts"] = restarts + 1;
    run.Event("Warning", "PodRestarted",
              "pod " + pod_name + " failed (exit code " + std::to_string(code) +
                  "); recreating it (restart " + std::to_string(restarts + 1) + " of backoffLimit " +
                  std::to_string(backoff_limit) + ")");
    return OkStatus();
  }
  std::string msg = "pod " + pod_name + " failed (exit code " + std::to_string(code) + ") after " +
                    std::to_string(restarts) + " restarts; backoffLimit " + std::to_string(backoff_limit) +
                    " reached";
  if (aggregator) {
    run.status["state"] = "Failed";
    run.Condition("Failed", "True", "BackoffLimitExceeded", msg, "Warning");
  } else {
    run.Condition("Degraded", "True", "BackoffLimitExceeded", msg, "Warning");
  }
  return OkStatus();
}

Status JobReconciler::CreateIfAbsent(Run& run, const Resource& r, const Json& desired) {
  std::string name = desired["metadata"].value("name", "");
  if (cache_->Get(r, r.namespaced ? run.ns : "", name)) return OkStatus();
  auto c = client_->Create(r, run.ns, desired);
  if (IsAlreadyExists(c.status())) return OkStatus();
  return c.status().WithContext("create " + r.plural + "/" + name);
}

Status JobReconciler::SyncApiToken(Run& run) {
  std::string name = ApiTokenSecretName(run.job);
  if (cache_->Get(res::kSecrets, run.ns, name)) return OkStatus();
  // As with the credentials: never replace a token clients may already hold because the
  // cache lags; read the live object first.
  auto live = client_->Get(res::kSecrets, run.ns, name);
  if (live.ok()) return OkStatus();
  if (!IsNotFound(live.status())) return live.status();
  FEDGE_ASSIGN_OR_RETURN(std::string token, RandomToken());
  auto c = client_->Create(res::kSecrets, run.ns, DesiredApiTokenSecret(run.job, token));
  if (IsAlreadyExists(c.status())) return OkStatus();
  return c.status().WithContext("create secret " + name);
}

Status JobReconciler::SyncNodeVolumes(Run& run, const std::string& node) {
  std::string hostname = node;
  if (ObjectPtr n = cache_->Get(res::kNodes, "", node)) {
    hostname = (*n)["metadata"].value("labels", Json::object()).value("kubernetes.io/hostname", node);
  }
  for (const auto& v : AgentNodeVolumes(run.job, opts_.desired)) {
    FEDGE_RETURN_IF_ERROR(CreateIfAbsent(run, res::kPersistentVolumes,
                                         DesiredNodePersistentVolume(run.job, node, hostname, v)));
    FEDGE_RETURN_IF_ERROR(
        CreateIfAbsent(run, res::kPersistentVolumeClaims, DesiredNodeVolumeClaim(run.job, node, v)));
  }
  return OkStatus();
}

Status JobReconciler::DeleteNodePersistentVolumes(Run& run) {
  for (const auto& pv : cache_->List(res::kPersistentVolumes, "", kLabelJob, run.name)) {
    const Json& meta = (*pv)["metadata"];
    if (meta.value("labels", Json::object()).value(kLabelJobNamespace, "") != run.ns) continue;
    if (Terminating(*pv)) continue;
    Status s = client_->Delete(res::kPersistentVolumes, "", meta.value("name", ""), {});
    if (!s.ok() && !IsNotFound(s)) return s;
  }
  return OkStatus();
}

void JobReconciler::CheckpointCondition(Run& run) {
  // status.checkpoint is applied by the aggregator pod's reporter from the aggregator's
  // /v1/status (status_reporter.h); the operator turns it into a condition.
  auto it = run.old_status.find("checkpoint");
  if (it == run.old_status.end() || !it->is_object()) return;
  const Json& ck = *it;
  int64_t failures = ck.value("consecutiveFailures", int64_t{0});
  if (failures > 0) {
    run.Condition("CheckpointFailing", "True", "CheckpointWriteFailed",
                  std::to_string(failures) + " checkpoint write(s) in a row failed (" +
                      ck.value("lastError", std::string("no detail")) +
                      "); a replaced aggregator would resume from an older round. Check the checkpoint "
                      "volume (claim " +
                      CheckpointClaimName(run.job) + ")",
                  "Warning");
  } else if (FindCondition(run.status["conditions"], "CheckpointFailing")) {
    run.Condition("CheckpointFailing", "False", "CheckpointWritten", "the last checkpoint write succeeded",
                  "Normal");
  }
}

Status JobReconciler::SyncChildren(Run& run) {
  const Json& job = run.job;
  const JobSpec& spec = *run.spec;
  std::vector<std::string> nodes = SelectNodes(job, cache_->List(res::kNodes, ""));
  std::set<std::string> wanted(nodes.begin(), nodes.end());

  FEDGE_RETURN_IF_ERROR(ApplyIfChanged(run, res::kServiceAccounts, DesiredServiceAccount(job)));
  FEDGE_RETURN_IF_ERROR(ApplyIfChanged(run, res::kRoles, DesiredRole(job)));
  FEDGE_RETURN_IF_ERROR(ApplyIfChanged(run, res::kRoleBindings, DesiredRoleBinding(job)));
  FEDGE_RETURN_IF_ERROR(SyncCredentials(run, nodes));
  for (const auto& node : nodes) FEDGE_RETURN_IF_ERROR(SyncAgentCredentials(run, node));
  FEDGE_RETURN_IF_ERROR(DeleteStaleAgentCredentials(run, wanted));
  FEDGE_RETURN_IF_ERROR(SyncApiToken(run));
  FEDGE_RETURN_IF_ERROR(ApplyIfChanged(run, res::kConfigMaps, DesiredConfigMap(job, JobSpecToYaml(spec))));
  if (opts_.desired.network_policies) {
    FEDGE_RETURN_IF_ERROR(
        ApplyIfChanged(run, res::kNetworkPolicies, DesiredAgentNetworkPolicy(job, opts_.desired)));
    FEDGE_RETURN_IF_ERROR(
        ApplyIfChanged(run, res::kNetworkPolicies, DesiredAggregatorNetworkPolicy(job, opts_.desired)));
  }
  if (Json claim = DesiredCheckpointClaim(job); !claim.is_null()) {
    FEDGE_RETURN_IF_ERROR(CreateIfAbsent(run, res::kPersistentVolumeClaims, claim));
  }
  FEDGE_RETURN_IF_ERROR(ApplyIfChanged(run, res::kServices, DesiredAggregatorService(job)));
  if (spec.serving.enabled) {
    FEDGE_RETURN_IF_ERROR(ApplyIfChanged(run, res::kServices, DesiredInferenceService(job)));
  } else if (cache_->Get(res::kServices, run.ns, InferenceServiceName(job))) {
    Status s = client_->Delete(res::kServices, run.ns, InferenceServiceName(job), {});
    if (!s.ok() && !IsNotFound(s)) return s;
  }

  // Pods.
  ObjectPtr aggregator;
  std::map<std::string, ObjectPtr> agents;  // node -> pod
  for (const auto& p : run.pods) {
    const Json& meta = (*p)["metadata"];
    std::string role = meta.value("labels", Json::object()).value(kLabelRole, "");
    if (role == "aggregator")
      aggregator = p;
    else if (role == "agent")
      agents[meta.value("annotations", Json::object()).value(kAnnotationNode, "")] = p;
  }
  bool created_any = false;
  const int min_agents = std::max(1, spec.agents.minAgents);
  if (!aggregator) {
    if (static_cast<int>(nodes.size()) >= min_agents) {
      auto c = client_->Create(res::kPods, run.ns,
                               DesiredAggregatorPod(job, static_cast<int>(nodes.size()), opts_.desired));
      if (!c.ok() && !IsAlreadyExists(c.status())) return c.status().WithContext("create aggregator pod");
      created_any = created_any || c.ok();
    }
  } else if (!Terminating(*aggregator)) {
    std::string phase = PodPhase(*aggregator);
    if (phase == "Failed") FEDGE_RETURN_IF_ERROR(HandleFailedPod(run, *aggregator, /*aggregator=*/true));
    if (phase == "Succeeded" && run.status.value("state", "") != "Failed") {
      run.status["state"] = "Succeeded";
      // status.privacy is the reporter's (differential privacy): the aggregator may end the
      // job before its last round rather than exceed targetEpsilon.
      const Json privacy = run.old_status.value("privacy", Json::object());
      if (privacy.is_object() && privacy.value("budgetExhausted", false)) {
        const std::string done = std::to_string(run.old_status.value("roundsCompleted", int64_t{0}));
        run.Condition(
            "PrivacyBudgetExhausted", "True", "TargetEpsilonReached",
            "another round would take epsilon above spec.privacy.differentialPrivacy.targetEpsilon; "
            "the aggregator stopped after " +
                done + " of " + std::to_string(spec.rounds.total) + " rounds (status.epsilonSpent)",
            "Warning");
        run.Condition("Succeeded", "True", "PrivacyBudgetExhausted",
                      "the aggregator completed " + done + " of " + std::to_string(spec.rounds.total) +
                          " rounds within the privacy budget",
                      "Normal");
      } else {
        run.Condition("Succeeded", "True", "JobSucceeded",
                      "the aggregator completed all " + std::to_string(spec.rounds.total) + " rounds",
                      "Normal");
      }
      run.Condition("Running", "False", "JobSucceeded", "the job finished");
    }
  }
  std::vector<std::string> exhausted;
  for (const auto& node : nodes) {
    auto it = agents.find(node);
    if (it == agents.end()) {
      FEDGE_RETURN_IF_ERROR(SyncNodeVolumes(run, node));
      auto c = client_->Create(res::kPods, run.ns, DesiredAgentPod(job, node, opts_.desired));
      if (!c.ok() && !IsAlreadyExists(c.status())) return c.status().WithContext("create agent pod");
      created_any = created_any || c.ok();
      continue;
    }
    if (!Terminating(*it->second) && PodPhase(*it->second) == "Failed" &&
        run.status.value("state", "") != "Succeeded") {
      FEDGE_RETURN_IF_ERROR(HandleFailedPod(run, *it->second, /*aggregator=*/false));
    }
  }
  for (const auto& [node, pod] : agents) {
    if (wanted.count(node) || Terminating(*pod)) continue;
    // The node left the selector (or the cluster): its agent goes.
    Status s = client_->Delete(res::kPods, run.ns, (*pod)["metadata"].value("name", ""), {});
    if (!s.ok() && !IsNotFound(s)) return s;
    run.Event("Normal", "AgentRemoved", "node " + node + " no longer matches spec.agents.nodeSelector");
  }
  if (created_any && !run.status.contains("startTime")) run.status["startTime"] = run.now_str;

  // Agents and conditions.
  int ready = 0;
  for (const auto& node : nodes) {
    auto it = agents.find(node);
    if (it != agents.end() && PodPhase(*it->second) == "Running" && PodReady(*it->second)) ++ready;
  }
  run.status["agents"] = {{"desired", static_cast<int>(nodes.size())},
                          {"ready", ready},
                          {"summary", std::to_string(ready) + "/" + std::to_string(nodes.size())}};

  if (run.status.value("state", "") == "Succeeded" || run.status.value("state", "") == "Failed")
    return OkStatus();

  run.Condition("Created", "True", "ChildrenCreated",
                "credentials, configuration, services and pods are created", "Normal");
  bool agg_running = aggregator && PodPhase(*aggregator) == "Running";
  if (agg_running) {
    run.status["state"] = "Running";
    run.Condition("Running", "True", "AggregatorRunning", "the aggregator is running rounds", "Normal");
  } else if (static_cast<int>(nodes.size()) < min_agents && !aggregator) {
    run.status["state"] = "Pending";
    run.Condition("Running", "False", "WaitingForAgents",
                  std::to_string(nodes.size()) + " node(s) match spec.agents.nodeSelector, minAgents is " +
                      std::to_string(min_agents));
  } else {
    run.status["state"] = "Created";
    std::string claim = CheckpointClaimName(job);
    ObjectPtr pvc = claim.empty() ? nullptr : cache_->Get(res::kPersistentVolumeClaims, run.ns, claim);
    bool no_class = pvc && (*pvc).value("status", Json::object()).value("phase", "") == "Pending" &&
                    (*pvc)["spec"].value("storageClassName", "").empty() &&
                    (*pvc)["spec"].value("volumeName", "").empty();
    if (no_class) {
      // The aggregator pod cannot be scheduled until its checkpoint claim binds.
      run.Condition(
          "Running", "False", "CheckpointClaimUnbound",
          "checkpoint claim " + claim +
              " has no storage class and no volume: the cluster has no default StorageClass. Set "
              "spec.aggregator.checkpoint.storageClassName (or claimName), create a PersistentVolume "
              "for it, or set spec.aggregator.checkpoint.enabled: false (an emptyDir: a failed "
              "aggregator pod then restarts the job from round 0)",
          "Warning");
    } else {
      run.Condition("Running", "False", "AggregatorStarting", "waiting for the aggregator pod to run");
    }
  }

  // Degraded: a selected node is offline, or an agent used up its restarts.
  std::vector<std::string> not_ready;
  for (const auto& n : cache_->List(res::kNodes, "")) {
    std::string name = (*n)["metadata"].value("name", "");
    if (wanted.count(name) && !NodeReady(*n)) not_ready.push_back(name);
  }
  const Json* degraded = FindCondition(run.status["conditions"], "Degraded");
  bool exhausted_before = degraded && degraded->value("reason", "") == "BackoffLimitExceeded" &&
                          degraded->value("status", "") == "True";
  if (!not_ready.empty()) {
    run.Condition("Degraded", "True", "NodeNotReady",
                  "edge node(s) not ready: " + Join(not_ready, ", ") +
                      "; their agents are kept for spec.agents.tolerationSeconds",
                  "Warning");
  } else if (!exhausted_before) {
    if (agg_running && static_cast<int>(nodes.size()) < min_agents) {
      run.Condition(
          "Degraded", "True", "InsufficientAgents",
          std::to_string(nodes.size()) + " node(s) match, fewer than minAgents " + std::to_string(min_agents),
          "Warning");
    } else {
      run.Condition("Degraded", "False", "AsExpected", "all selected nodes are ready");
    }
  }
  CheckpointCondition(run);
  (void)exhausted;
  return OkStatus();
}

// The status fields the operator writes; the rest (rounds, accuracy, checkpoint) belong to
// the aggregator's status reporter.
constexpr const char* kOwnedStatusFields[] = {"observedGeneration", "state",     "conditions",    "agents",
                                              "restarts",           "startTime", "completionTime"};

Status JobReconciler::WriteStatus(Run& run) {
  Json& st = run.status;
  st["observedGeneration"] = run.generation;
  // Compare only the operator-owned fields; the reporter's are not ours to write.
  Json owned = Json::object(), before = Json::object();
  for (const char* f : kOwnedStatusFields) {
    if (st.contains(f)) owned[f] = st[f];
    if (run.old_status.contains(f)) before[f] = run.old_status[f];
  }
  Status written = OkStatus();
  if (owned != before) {
    // The write carries the resourceVersion this pass read. An apply replaces every field
    // the operator owns, so a pass working from a cache that has not yet seen the previous
    // pass's write would otherwise take back what that pass wrote (restarts went back to 0
    // when the pass after a deleted pod recreated it from a stale job).
    Json patch = {{"apiVersion", run.job.value("apiVersion", "fedge.io/v1alpha1")},
                  {"kind", run.job.value("kind", "FederatedTrainingJob")},
                  {"metadata",
                   {{"name", run.name},
                    {"namespace", run.ns},
                    {"resourceVersion", run.job["metadata"].value("resourceVersion", "")}}},
                  {"status", owned}};
    auto s = client_->Apply(res::kJobs, run.ns, run.name, patch, {kFieldManager, true, "status"});
    if (!s.ok() && IsConflict(s.status())) {
      written = KeepRestartCount(run);
      if (written.ok()) written = s.status();  // a bare Conflict: the controller requeues quietly
    } else if (!s.ok()) {
      return s.status().WithContext("apply status");
    }
  }
  // Events describe what this pass did (pods deleted, certificates written): recorded even
  // when its status was refused, since the next pass will not do it again.
  for (const auto& [type, rm] : run.pending_events) {
    auto nl = rm.find('\n');
    events_->Record(run.job, type, rm.substr(0, nl), rm.substr(nl + 1));
  }
  return written;
}

Status JobReconciler::KeepRestartCount(Run& run) {
  // The restart counter is the one status field a pass cannot recompute from the world: the
  // failed pod it counted is gone. Add this pass's restarts to the live count; everything
  // else is recomputed by the next pass, which the write that beat us has already queued.
  const int added = run.status.value("restarts", 0) - run.old_status.value("restarts", 0);
  if (added <= 0) return OkStatus();
  for (int attempt = 0; attempt < 5; ++attempt) {
    auto live = client_->Get(res::kJobs, run.ns, run.name, {});
    if (!live.ok()) return IsNotFound(live.status()) ? OkStatus() : live.status().WithContext("get job");
    Json st = live->value("status", Json::object());
    if (!st.is_object()) st = Json::object();
    Json owned = Json::object();
    for (const char* f : kOwnedStatusFields) {
      if (st.contains(f)) owned[f] = st[f];
    }
    owned["restarts"] = st.value("restarts", 0) + added;
    Json patch = {{"apiVersion", run.job.value("apiVersion", "fedge.io/v1alpha1")},
                  {"kind", run.job.value("kind", "FederatedTrainingJob")},
                  {"metadata",
                   {{"name", run.name},
                    {"namespace", run.ns},
                    {"resourceVersion", (*live)["metadata"].value("resourceVersion", "")}}},
                  {"status", owned}};
    auto s = client_->Apply(res::kJobs, run.ns, run.name, patch, {kFieldManager, true, "status"});
    if (s.ok()) return OkStatus();
    if (!IsConflict(s.status())) return s.status().WithContext("apply restart count");
  }
  return AbortedError("status of " + run.ns + "/" + run.name + " kept changing; restart count not written");
}

StatusOr<ReconcileResult> JobReconciler::Reconcile(const std::string& key) {
  auto slash = key.find('/');
  if (slash == std::string::npos) return InvalidArgumentError("key must be namespace/name: " + key);
  Run run;
  run.ns = key.substr(0, slash);
  run.name = key.substr(slash + 1);
  ObjectPtr cached = cache_->Get(res::kJobs, run.ns, run.name);
  if (!cached) return ReconcileResult{};  // gone: owner references take the children along
  run.job = *cached;
  run.generation = run.job["metadata"].value("generation", static_cast<int64_t>(1));
  run.now = opts_.now();
  run.now_str = FormatTime(run.now);
  run.old_status = run.job.value("status", Json::object());
  if (!run.old_status.is_object()) run.old_status = Json::object();
  run.status = run.old_status;
  if (!run.status.contains("conditions")) run.status["conditions"] = Json::array();
  run.pods = cache_->List(res::kPods, run.ns, kLabelJob, run.name);

  if (Terminating(run.job)) {
    FEDGE_RETURN_IF_ERROR(Finalize(run));
    return ReconcileResult{};
  }
  std::vector<std::string> fin = Finalizers(run.job);
  if (std::find(fin.begin(), fin.end(), kFinalizer) == fin.end()) {
    Json patch = {{"apiVersion", run.job.value("apiVersion", "fedge.io/v1alpha1")},
                  {"kind", run.job.value("kind", "FederatedTrainingJob")},
                  {"metadata", {{"name", run.name}, {"namespace", run.ns}, {"finalizers", {kFinalizer}}}}};
    auto s = client_->Apply(res::kJobs, run.ns, run.name, patch, {kFieldManager, true, ""});
    if (!s.ok()) return s.status().WithContext("add finalizer");
    // Our own write: the status write of this pass is guarded by the version it made.
    run.job["metadata"]["resourceVersion"] = (*s)["metadata"].value("resourceVersion", "");
  }

  // Validate with the same parser `fedge run` uses; an invalid spec is a condition.
  auto parsed = ParseJobSpec(ManifestForParser(run.job).dump());
  std::string state = run.status.value("state", "");
  const Json* failed = FindCondition(run.status["conditions"], "Failed");
  bool invalid_before =
      failed && failed->value("status", "") == "True" &&
      (failed->value("reason", "") == "InvalidSpec" || failed->value("reason", "") == "HostPathNotAllowed");
  if (!parsed.ok()) {
    run.status["state"] = "Failed";
    run.Condition("Failed", "True", "InvalidSpec", parsed.status().message(), "Warning");
    FEDGE_RETURN_IF_ERROR(WriteStatus(run));
    return ReconcileResult{};  // wait for the spec to change, no retries
  }
  // Node directories: only under the operator's allowed prefixes (they become local
  // PersistentVolumes, which Pod Security does not check).
  if (Status paths = CheckNodePaths(run.job, opts_.desired); !paths.ok()) {
    run.status["state"] = "Failed";
    run.Condition("Failed", "True", "HostPathNotAllowed", paths.message(), "Warning");
    FEDGE_RETURN_IF_ERROR(WriteStatus(run));
    return ReconcileResult{};  // wait for the spec (or the operator's flags) to change
  }
  run.spec = *parsed;
  if (invalid_before) {  // fixed by the user
    run.status["state"] = "Pending";
    run.Condition("Failed", "False", "SpecFixed", "the spec is valid again", "Normal");
    state = "Pending";
  }
  const RunPolicySpec& rp = run.spec->runPolicy;

  // Finished: clean pods per policy, then honour the TTL.
  if (state == "Succeeded" || state == "Failed") {
    if (!run.status.contains("completionTime")) run.status["completionTime"] = run.now_str;
    // After success the agents are the job's inference service: Running spares them
    // (they go with the job, or with cleanPodPolicy All); after failure they go too.
    const bool serving = state == "Succeeded" && run.spec->serving.enabled;
    if (rp.cleanPodPolicy == "All")
      FEDGE_RETURN_IF_ERROR(DeletePods(run, false));
    else if (rp.cleanPodPolicy == "Running")
      FEDGE_RETURN_IF_ERROR(DeletePods(run, true, serving));
    FEDGE_RETURN_IF_ERROR(WriteStatus(run));
    if (rp.ttlSecondsAfterFinished >= 0) {
      auto done = ParseTime(run.status.value("completionTime", run.now_str)).value_or(run.now);
      int64_t left = static_cast<int64_t>(done) + rp.ttlSecondsAfterFinished - static_cast<int64_t>(run.now);
      if (left <= 0) {
        Status s = client_->Delete(res::kJobs, run.ns, run.name,
                                   {"Foreground", run.job["metadata"].value("uid", ""), {}});
        if (!s.ok() && !IsNotFound(s)) return s;
        return ReconcileResult{};
      }
      return ReconcileResult{std::chrono::seconds(left)};
    }
    return ReconcileResult{};
  }

  // Suspend: no pods; resume creates them again (the aggregator resumes from its checkpoint
  // when spec.aggregator.checkpoint names a PersistentVolumeClaim).
  if (rp.suspend) {
    FEDGE_RETURN_IF_ERROR(DeletePods(run, false));
    run.status["state"] = "Suspended";
    run.Condition("Suspended", "True", "JobSuspended", "spec.runPolicy.suspend is true; pods are deleted",
                  "Normal");
    run.Condition("Running", "False", "JobSuspended", "the job is suspended");
    FEDGE_RETURN_IF_ERROR(WriteStatus(run));
    return ReconcileResult{};
  }
  const Json* suspended = FindCondition(run.status["conditions"], "Suspended");
  if (suspended && suspended->value("status", "") == "True") {
    run.Condition("Suspended", "False", "JobResumed", "spec.runPolicy.suspend is false; pods are recreated",
                  "Normal");
  }

  // Active deadline, counted from the first pod creation.
  if (rp.activeDeadlineSeconds > 0 && run.status.contains("startTime")) {
    auto start = ParseTime(run.status.value("startTime", "")).value_or(run.now);
    int64_t left = static_cast<int64_t>(start) + rp.activeDeadlineSeconds - static_cast<int64_t>(run.now);
    if (left <= 0) {
      run.status["state"] = "Failed";
      run.status["completionTime"] = run.now_str;
      run.Condition("Failed", "True", "DeadlineExceeded",
                    "the job ran longer than spec.runPolicy.activeDeadlineSeconds (" +
                        std::to_string(rp.activeDeadlineSeconds) + " s)",
                    "Warning");
      run.Condition("Running", "False", "DeadlineExceeded", "the job was stopped");
      FEDGE_RETURN_IF_ERROR(DeletePods(run, true));
      FEDGE_RETURN_IF_ERROR(WriteStatus(run));
      return ReconcileResult{rp.ttlSecondsAfterFinished >= 0
                                 ? std::optional<std::chrono::seconds>(std::chrono::seconds(1))
                                 : std::nullopt};
    }
    run.RequeueAfter(std::chrono::seconds(left));
  }

  if (Status synced = SyncChildren(run); !synced.ok()) {
    // What the pass did before the failure stays done: a failed pod it deleted is gone, and
    // its restart, counted only in run.status, would be lost (backoffLimit overrun).
    if (Status written = WriteStatus(run); !written.ok() && !IsConflict(written)) {
      log::Warn("status write after a failed pass failed",
                {{"job", run.ns + "/" + run.name}, {"error", written.ToString()}});
    }
    return synced;
  }
  std::string new_state = run.status.value("state", "");
  if ((new_state == "Succeeded" || new_state == "Failed") && !run.status.contains("completionTime")) {
    run.status["completionTime"] = run.now_str;
    // Apply cleanPodPolicy and the TTL on the next pass.
    run.RequeueAfter(std::chrono::seconds(1));
  }
  // (RequeueAfter keeps the earliest: a certificate renewal must not postpone the deadline.)
  if (rp.activeDeadlineSeconds > 0 && run.status.contains("startTime")) {
    run.RequeueAfter(std::chrono::seconds(rp.activeDeadlineSeconds));
  }
  FEDGE_RETURN_IF_ERROR(WriteStatus(run));
  return ReconcileResult{run.requeue_after};
}

}  // namespace fedge::op
