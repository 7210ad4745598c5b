#include "fedge/op/desired.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cctype>

#include "fedge/job_spec.h"
#include "fedge/pki.h"
#include "fedge/version.h"

namespace fedge::op {
namespace {

std::string Name(const Json& job) { return job["metadata"].value("name", ""); }
std::string Ns(const Json& job) { return job["metadata"].value("namespace", "default"); }

Json Labels(const Json& job, const std::string& role) {
  return {{"app.kubernetes.io/name", "fedge"},
          {"app.kubernetes.io/instance", Name(job)},
          {"app.kubernetes.io/component", role},
          {"app.kubernetes.io/managed-by", "fedge-operator"},
          {kLabelJob, Name(job)},
          {kLabelRole, role}};
}

Json Meta(const Json& job, const std::string& name, const std::string& role) {
  return {{"name", name},
          {"namespace", Ns(job)},
          {"labels", Labels(job, role)},
          {"ownerReferences", Json::array({OwnerReference(job)})}};
}

const Json& Spec(const Json& job) {
  static const Json kEmpty = Json::object();
  auto it = job.find("spec");
  return it == job.end() ? kEmpty : *it;
}

Json Sub(const Json& j, const char* key) {
  auto it = j.find(key);
  return (it == j.end() || !it->is_object()) ? Json::object() : *it;
}

std::string ShortHash(const std::string& s) { return pki::HexSha256(s).substr(0, 8); }

// Secret keys and pod names allow [-._a-z0-9]; node names already fit.
std::string Sanitize(std::string s) {
  for (char& c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.')) c = '-';
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

Json Resources(const Json& spec_part) {
  auto it = spec_part.find("resources");
  return (it == spec_part.end() || !it->is_object()) ? Json::object() : *it;
}

// The restricted Pod Security level, pod part. With `fs_group` the kubelet makes the pod's
// volumes group-accessible to kRunAsId (the aggregator's checkpoint claim, provisioned
// root-owned). Agent pods go without: a kubelet applies fsGroup to a local volume
// mounted read-write (recursive chown, group-writable), which must never reach the
// node's model and data, and without it one volume can hold all three node directories
// (AgentNodeVolumeRoots); their secrets are mode 0444 instead of 0440 through the group.
Json PodSecurityContext(bool fs_group) {
  Json context = {{"runAsNonRoot", true},
                  {"runAsUser", kRunAsId},
                  {"runAsGroup", kRunAsId},
                  {"seccompProfile", {{"type", "RuntimeDefault"}}}};
  if (fs_group) {
    context["fsGroup"] = kRunAsId;
    context["fsGroupChangePolicy"] = "OnRootMismatch";
  }
  return context;
}

// The restricted Pod Security level, container part, plus a read-only root filesystem.
Json ContainerSecurityContext() {
  return {{"allowPrivilegeEscalation", false},
          {"readOnlyRootFilesystem", true},
          {"runAsNonRoot", true},
          {"runAsUser", kRunAsId},
          {"runAsGroup", kRunAsId},
          {"capabilities", {{"drop", {"ALL"}}}},
          {"seccompProfile", {{"type", "RuntimeDefault"}}}};
}

// Every container: the restricted securityContext, the pull policy and a writable /tmp.
void Harden(Json& container, const DesiredOptions& opts) {
  container["securityContext"] = ContainerSecurityContext();
  container["imagePullPolicy"] = opts.image_pull_policy;
  container["volumeMounts"].push_back({{"name", "tmp"}, {"mountPath", kTmpMountPath}});
}

// Pinned like a DaemonSet pod: the scheduler binds it to exactly this node.
Json PinnedTo(const std::string& node) {
  Json term = {
      {"matchFields", Json::array({{{"key", "metadata.name"}, {"operator", "In"}, {"values", {node}}}})}};
  return {
      {"nodeAffinity",
       {{"requiredDuringSchedulingIgnoredDuringExecution", {{"nodeSelectorTerms", Json::array({term})}}}}}};
}

Json TmpVolume() { return {{"name", "tmp"}, {"emptyDir", {{"sizeLimit", "256Mi"}}}}; }

void AddPullSecrets(Json& pod_spec, const DesiredOptions& opts) {
  if (opts.image_pull_secrets.empty()) return;
  Json list = Json::array();
  for (const auto& s : opts.image_pull_secrets) list.push_back({{"name", s}});
  pod_spec["imagePullSecrets"] = list;
}

// Strips trailing slashes ("/" stays "/").
std::string TrimSlash(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

// True when normalized absolute `path` is `dir` or below it ("/" holds everything).
bool AtOrBelow(const std::string& dir, const std::string& path) {
  return dir == "/" || path == dir ||
         (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/');
}

std::string JoinPrefixes(const std::vector<std::string>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
  return out.empty() ? "(none)" : out;
}

// DNS-1123 subdomain of at most `max` characters, unique through a hash of `key`.
std::string UniqueName(const std::string& readable, const std::string& key, size_t max = 200) {
  std::string n = Sanitize(readable);
  if (n.size() > max - 9) n = n.substr(0, max - 9);
  while (!n.empty() && (n.back() == '-' || n.back() == '.')) n.pop_back();
  return n + "-" + ShortHash(key);
}

}  // namespace

Images DefaultImages() {
  std::string v = fedge::Version();
  return {"fedge/aggregator:" + v, "fedge/agent:" + v, "fedge/operator:" + v};
}

std::string SecretName(const Json& job) { return Name(job) + "-credentials"; }
std::string ConfigMapName(const Json& job) { return Name(job) + "-config"; }
std::string AggregatorName(const Json& job) { return Name(job) + "-aggregator"; }
std::string InferenceServiceName(const Json& job) { return Name(job) + "-inference"; }

std::string AgentPodName(const Json& job, const std::string& node) {
  std::string n = Name(job) + "-agent-" + Sanitize(node);
  // Pod names are DNS subdomains (253); keep them unique when truncated.
  if (n.size() > 200) n = n.substr(0, 190) + "-" + ShortHash(node);
  while (!n.empty() && (n.back() == '-' || n.back() == '.')) n.pop_back();
  return n;
}

std::string AgentSecretName(const Json& job, const std::string& node) {
  return AgentPodName(job, node) + "-credentials";
}

bool TlsEnabled(const Json& job) {
  auto it = Spec(job).find("privacy");
  if (it == Spec(job).end() || !it->is_object()) return true;
  auto tls = it->find("tls");
  return tls == it->end() || !tls->is_boolean() || tls->get<bool>();
}

Json OwnerReference(const Json& job) {
  return {{"apiVersion", job.value("apiVersion", "fedge.io/v1alpha1")},
          {"kind", job.value("kind", "FederatedTrainingJob")},
          {"name", Name(job)},
          {"uid", job["metadata"].value("uid", "")},
          {"controller", true},
          {"blockOwnerDeletion", true}};
}

bool NodeReady(const Json& node) {
  auto st = node.find("status");
  if (st == node.end()) return false;
  for (const auto& c : st->value("conditions", Json::array())) {
    if (c.value("type", "") == "Ready") return c.value("status", "") == "True";
  }
  return false;
}

std::vector<std::string> SelectNodes(const AgentsSpec& agents, const std::vector<ObjectPtr>& nodes) {
  std::vector<std::string> out;
  for (const auto& n : nodes) {
    const Json& meta = (*n)["metadata"];
    if (meta.contains("deletionTimestamp")) continue;
    const Json labels = meta.value("labels", Json::object());
    bool match = true;
    for (const auto& [key, value] : agents.nodeSelector) {
      auto it = labels.find(key);
      if (it == labels.end() || !it->is_string() || it->get<std::string>() != value) {
        match = false;
        break;
      }
    }
    // Unschedulable (cordoned) nodes get no new agent, like a DaemonSet with a taint.
    if (match && !Sub(*n, "spec").value("unschedulable", false)) out.push_back(meta.value("name", ""));
  }
  std::sort(out.begin(), out.end());
  if (agents.maxAgents > 0 && static_cast<int>(out.size()) > agents.maxAgents) out.resize(agents.maxAgents);
  return out;
}

std::vector<std::string> SelectNodes(const Json& job, const std::vector<ObjectPtr>& nodes) {
  return SelectNodes(OperatorJobSpec(job).agents, nodes);
}

std::string Base64Encode(const std::string& in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string Base64Decode(const std::string& in) {
  if (in.empty() || in.size() % 4 != 0) return "";
  std::string out(in.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  if (n < 0) return "";
  size_t pad = (in.back() == '=') + (in.size() > 1 && in[in.size() - 2] == '=');
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

Credentials CredentialsFromSecret(const Json& secret) {
  Credentials c;
  Json data = Sub(secret, "data");
  auto get = [&](const char* k) {
    return data.contains(k) && data[k].is_string() ? Base64Decode(data[k].get<std::string>()) : "";
  };
  c.ca_crt = get("ca.crt");
  c.ca_key = get("ca.key");
  c.tls_crt = get("tls.crt");
  c.tls_key = get("tls.key");
  return c;
}

Json DesiredSecret(const Json& job, const Credentials& creds) {
  Json data = {{"ca.crt", Base64Encode(creds.ca_crt)},
               {"ca.key", Base64Encode(creds.ca_key)},
               {"tls.crt", Base64Encode(creds.tls_crt)},
               {"tls.key", Base64Encode(creds.tls_key)}};
  return {{"apiVersion", "v1"},
          {"kind", "Secret"},
          {"metadata", Meta(job, SecretName(job), "credentials")},
          {"type", "Opaque"},
          {"data", data}};
}

std::string AgentTokenAudience(const Json& job) { return "fedge.io/" + Ns(job) + "/" + Name(job); }

std::string AgentServiceAccountName(const Json& job) { return Name(job) + "-agent"; }

Json DesiredAgentServiceAccount(const Json& job) {
  return {{"apiVersion", "v1"},
          {"kind", "ServiceAccount"},
          {"metadata", Meta(job, AgentServiceAccountName(job), "agent")},
          {"automountServiceAccountToken", false}};
}

std::string TrustConfigMapName(const Json& job) { return Name(job) + "-trust"; }

Json DesiredTrustConfigMap(const Json& job, const std::string& ca_crt, const IssuerKeys& issuer,
                           const std::string& revoked_pods) {
  Json data = {{"jwks.json", issuer.jwks}, {kRevokedPodsKey, revoked_pods}};
  if (!ca_crt.empty()) data["ca.crt"] = ca_crt;
  return {{"apiVersion", "v1"},
          {"kind", "ConfigMap"},
          {"metadata", Meta(job, TrustConfigMapName(job), "trust")},
          {"data", data}};
}

Json DesiredConfigMap(const Json& job, const std::string& manifest_yaml) {
  return {{"apiVersion", "v1"},
          {"kind", "ConfigMap"},
          {"metadata", Meta(job, ConfigMapName(job), "config")},
          {"data", {{"job.yaml", manifest_yaml}}}};
}

Json DesiredServiceAccount(const Json& job) {
  return {{"apiVersion", "v1"},
          {"kind", "ServiceAccount"},
          {"metadata", Meta(job, AggregatorName(job), "aggregator")}};
}

Json DesiredRole(const Json& job) {
  return {{"apiVersion", "rbac.authorization.k8s.io/v1"},
          {"kind", "Role"},
          {"metadata", Meta(job, AggregatorName(job), "aggregator")},
          {"rules", Json::array({
                        {{"apiGroups", {"fedge.io"}},
                         {"resources", {"federatedtrainingjobs/status"}},
                         {"resourceNames", {Name(job)}},
                         {"verbs", {"get", "patch", "update"}}},
                        {{"apiGroups", {"fedge.io"}},
                         {"resources", {"federatedtrainingjobs"}},
                         {"resourceNames", {Name(job)}},
                         {"verbs", {"get"}}},
                    })}};
}

Json DesiredRoleBinding(const Json& job) {
  return {
      {"apiVersion", "rbac.authorization.k8s.io/v1"},
      {"kind", "RoleBinding"},
      {"metadata", Meta(job, AggregatorName(job), "aggregator")},
      {"roleRef",
       {{"apiGroup", "rbac.authorization.k8s.io"}, {"kind", "Role"}, {"name", AggregatorName(job)}}},
      {"subjects",
       Json::array({{{"kind", "ServiceAccount"}, {"name", AggregatorName(job)}, {"namespace", Ns(job)}}})}};
}

Json DesiredAggregatorService(const Json& job) {
  return {
      {"apiVersion", "v1"},
      {"kind", "Service"},
      {"metadata", Meta(job, AggregatorName(job), "aggregator")},
      {"spec",
       {{"selector", {{kLabelJob, Name(job)}, {kLabelRole, "aggregator"}}},
        {"ports",
         Json::array({
             {{"name", "grpc"}, {"port", kAggregatorGrpcPort}, {"targetPort", "grpc"}, {"protocol", "TCP"}},
             {{"name", "http"}, {"port", kAggregatorHttpPort}, {"targetPort", "http"}, {"protocol", "TCP"}},
         })}}}};
}

Json DesiredInferenceService(const Json& job) { return DesiredInferenceService(job, OperatorJobSpec(job)); }

Json DesiredInferenceService(const Json& job, const JobSpec& spec) {
  const int port = spec.serving.port;
  return {
      {"apiVersion", "v1"},
      {"kind", "Service"},
      {"metadata", Meta(job, InferenceServiceName(job), "inference")},
      {"spec",
       {{"selector", {{kLabelJob, Name(job)}, {kLabelRole, "agent"}}},
        // Applications on a node reach their own node's agent: inference stays local.
        {"internalTrafficPolicy", "Local"},
        {"ports",
         Json::array({{{"name", "http"}, {"port", port}, {"targetPort", "http"}, {"protocol", "TCP"}}})}}}};
}

Json DesiredAggregatorPod(const Json& job, int expected_agents, const DesiredOptions& opts) {
  return DesiredAggregatorPod(job, OperatorJobSpec(job), expected_agents, opts);
}

namespace {
Json AggregatorPodWithoutHash(const Json& job, const JobSpec& spec, int expected_agents,
                              const DesiredOptions& opts) {
  Json agg = Sub(Spec(job), "aggregator");  // operator-only: resources
  std::string claim = CheckpointClaimName(job);
  Json ckpt_volume = {{"name", "checkpoints"}, {"emptyDir", Json::object()}};
  if (!claim.empty())
    ckpt_volume = {{"name", "checkpoints"}, {"persistentVolumeClaim", {{"claimName", claim}}}};
  std::string key = Ns(job) + "/" + Name(job);
  Json aggregator = {
      {"name", "aggregator"},
      {"image", opts.images.aggregator},
      {"command",
       {"fedge-aggregator",
        "--config",
        std::string(kConfigMountPath) + "/job.yaml",
        "--listen",
        "0.0.0.0:" + std::to_string(kAggregatorGrpcPort),
        "--http",
        "0.0.0.0:" + std::to_string(kAggregatorHttpPort),
        "--checkpoint-dir",
        kCheckpointMountPath,
        "--expected-agents",
        std::to_string(expected_agents),
        "--agent-token-jwks-file",
        std::string(kTrustMountPath) + "/jwks.json",
        "--agent-revoked-pods-file",
        std::string(kTrustMountPath) + "/" + kRevokedPodsKey,
        "--agent-token-issuer",
        opts.agent_token_issuer,
        "--agent-token-audience",
        AgentTokenAudience(job),
        "--agent-token-service-account",
        Ns(job) + "/" + AgentServiceAccountName(job),
        "--agent-session-grace-seconds",
        std::to_string(opts.agent_session_grace_s),
        "--exit-when-done"}},
      {"ports",
       Json::array({{{"name", "grpc"}, {"containerPort", kAggregatorGrpcPort}, {"protocol", "TCP"}},
                    {{"name", "http"}, {"containerPort", kAggregatorHttpPort}, {"protocol", "TCP"}}})},
      {"readinessProbe", {{"httpGet", {{"path", "/readyz"}, {"port", "http"}}}, {"periodSeconds", 5}}},
      {"resources", Resources(agg)},
      {"volumeMounts",
       Json::array({{{"name", "config"}, {"mountPath", kConfigMountPath}, {"readOnly", true}},
                    {{"name", "credentials"}, {"mountPath", kSecretMountPath}, {"readOnly", true}},
                    {{"name", "trust"}, {"mountPath", kTrustMountPath}, {"readOnly", true}},
                    {{"name", "checkpoints"}, {"mountPath", kCheckpointMountPath}}})}};
  if (spec.privacy.tls) {
    // The serving certificate the operator issued for the Service's names, from the
    // Secret. Agents authenticate with their projected tokens (the flags above), not
    // with client certificates.
    for (const char* arg : {"--tls-cert", "/tls.crt", "--tls-key", "/tls.key"}) {
      aggregator["command"].push_back(arg[0] == '/' ? std::string(kSecretMountPath) + arg : std::string(arg));
    }
  }
  Harden(aggregator, opts);
  // The reporter applies the aggregator-owned status fields with its own field manager
  // through a Role limited to this job: progress reaches status without operator polling.
  Json reporter = {
      {"name", "status-reporter"},
      {"image", opts.images.reporter},
      {"command",
       {"fedge-operator", "report-status", "--job", key, "--aggregator-http",
        "127.0.0.1:" + std::to_string(kAggregatorHttpPort), "--service-account-dir", kServiceAccountDir}},
      {"resources", {{"requests", {{"cpu", "10m"}, {"memory", "16Mi"}}}}},
      {"volumeMounts", Json::array()}};
  Harden(reporter, opts);
  Json pod_spec = {
      {"restartPolicy", "Never"},
      {"serviceAccountName", AggregatorName(job)},
      {"securityContext", PodSecurityContext(/*fs_group=*/true)},
      {"containers", Json::array({aggregator, reporter})},
      {"volumes",
       Json::array({{{"name", "config"}, {"configMap", {{"name", ConfigMapName(job)}}}},
                    {{"name", "credentials"},
                     {"secret",
                      {{"secretName", SecretName(job)},
                       {"defaultMode", 0440},
                       {"items", Json::array({{{"key", "tls.crt"}, {"path", "tls.crt"}},
                                              {{"key", "tls.key"}, {"path", "tls.key"}}})}}}},
                    {{"name", "trust"},
                     {"configMap",
                      {{"name", TrustConfigMapName(job)},
                       {"items", Json::array({{{"key", "jwks.json"}, {"path", "jwks.json"}},
                                              {{"key", kRevokedPodsKey}, {"path", kRevokedPodsKey}}})}}}},
                    ckpt_volume,
                    TmpVolume()})}};
  AddPullSecrets(pod_spec, opts);
  return {{"apiVersion", "v1"},
          {"kind", "Pod"},
          {"metadata", Meta(job, AggregatorName(job), "aggregator")},
          {"spec", pod_spec}};
}

Json AgentPodWithoutHash(const Json& job, const JobSpec& spec, const std::string& node,
                         const DesiredOptions& opts) {
  const Json agents = Sub(Spec(job), "agents");  // operator-only: tolerationSeconds, resources
  const int port = spec.serving.port;
  const int64_t toleration = agents.value("tolerationSeconds", static_cast<int64_t>(3600));
  const std::string& model_path = spec.model.path;
  const std::string& data_path = spec.data.path;
  const std::vector<NodeVolumeRoot> node_roots = AgentNodeVolumeRoots(spec, opts);
  Json meta = Meta(job, AgentPodName(job, node), "agent");
  meta["annotations"] = {{kAnnotationNode, node}};
  // The agent sees only its job's state directory, at the path it always had.
  const std::string state_dir = std::string(kStateMountPath) + "/" + AgentStateSubPath(job);
  Json init_container;  // "state-dir": creates that directory (AgentStateSubPath's contract)
  Json container = {
      {"name", "agent"},
      {"image", opts.images.agent},
      {"command",
       {"fedge-agent",
        "--config",
        std::string(kConfigMountPath) + "/job.yaml",
        "--aggregator",
        "$(" + AggregatorServiceHostVar(job) + "):" + std::to_string(kAggregatorGrpcPort),
        "--agent-id",
        node,
        "--node-name",
        node,
        "--token-file",
        std::string(kSecretMountPath) + "/token",
        "--data-dir",
        data_path,
        "--model-dir",
        model_path,
        "--http",
        "0.0.0.0:" + std::to_string(port),
        "--state-dir",
        state_dir,
        "--api-token-file",
        std::string(kApiTokenMountPath) + "/token"}},
      // libraries that look for a home directory find a writable one
      {"env", Json::array({{{"name", "HOME"}, {"value", kTmpMountPath}}})},
      {"ports", Json::array({{{"name", "http"}, {"containerPort", port}, {"protocol", "TCP"}}})},
      // Ready once it has a global model to serve (/readyz: 503 before): the inference
      // Service sends no client to an agent without one, and after the job an agent that
      // stays not ready (its node lost the final global) gets the final-model pod
      // (KeepServing). Generous timeouts: a training step may hold both cores.
      {"readinessProbe",
       {{"httpGet", {{"path", "/readyz"}, {"port", "http"}}},
        {"periodSeconds", 5},
        {"timeoutSeconds", 5},
        {"failureThreshold", 3}}},
      {"resources", Resources(agents)},
      {"volumeMounts",
       Json::array({{{"name", "config"}, {"mountPath", kConfigMountPath}, {"readOnly", true}},
                    {{"name", "credentials"}, {"mountPath", kSecretMountPath}, {"readOnly", true}},
                    {{"name", "api-token"}, {"mountPath", kApiTokenMountPath}, {"readOnly", true}}})}};
  // Node directories: a subPath of their root's volume each (AgentNodeVolumeRoots); of
  // the state root only the job's own directory.
  for (const auto& root : node_roots) {
    for (const auto& dir : root.dirs) {
      std::string sub = NodeVolumeSubPath(root, dir);
      if (dir.kind != "state") {
        Json mount = {{"name", root.volume_name}, {"mountPath", dir.path}, {"readOnly", dir.read_only}};
        if (!sub.empty()) mount["subPath"] = sub;
        container["volumeMounts"].push_back(mount);
        continue;
      }
      Json root_mount = {{"name", root.volume_name}, {"mountPath", kStateRootMountPath}, {"readOnly", false}};
      if (!sub.empty()) root_mount["subPath"] = sub;
      init_container = {
          {"name", "state-dir"},
          {"image", opts.images.agent},
          {"command", {"fedge-agent", "--make-state-dir", kStateRootMountPath, AgentStateSubPath(job)}},
          {"resources", Resources(agents)},
          {"volumeMounts", Json::array({root_mount})}};
      Harden(init_container, opts);
      container["volumeMounts"].push_back(
          {{"name", root.volume_name},
           {"mountPath", state_dir},
           {"readOnly", false},
           {"subPath", (sub.empty() ? "" : sub + "/") + AgentStateSubPath(job)}});
    }
  }
  // The state directory is named after the job, so a job deleted and re-created
  // under the same name gets the same one: the uid tells the agent whether the
  // state in it is this job's (StateStore::BindJobUid). The API server always
  // sets it; a job without one (tests) leaves the directory unchecked.
  const std::string uid = job["metadata"].value("uid", "");
  if (!uid.empty()) {
    container["command"].push_back("--job-uid");
    container["command"].push_back(uid);
  }
  // Agents keep serving local inference with the final global after the job
  // (the job's purpose on the edge); only without serving do they exit when done.
  if (!spec.serving.enabled) container["command"].push_back("--exit-when-done");
  // The agent's credentials: its projected service-account token (the kubelet requests
  // it for this pod, on this node, and swaps in a renewed one before it expires; the agent
  // re-reads it at each Join) and, with TLS, the job CA from the trust ConfigMap.
  Json credential_sources = Json::array({{{"serviceAccountToken",
                                           {{"audience", AgentTokenAudience(job)},
                                            {"expirationSeconds", kAgentTokenExpirationSeconds},
                                            {"path", "token"}}}}});
  if (spec.privacy.tls) {
    container["command"].push_back("--tls-ca");
    container["command"].push_back(std::string(kSecretMountPath) + "/ca.crt");
    // The certificate names the Service; verify that name even where the address
    // was resolved to an IP.
    container["command"].push_back("--tls-server-name");
    container["command"].push_back(AggregatorName(job) + "." + Ns(job) + ".svc");
    credential_sources.push_back({{"configMap",
                                   {{"name", TrustConfigMapName(job)},
                                    {"items", Json::array({{{"key", "ca.crt"}, {"path", "ca.crt"}}})}}}});
  }
  Harden(container, opts);
  Json toleration_list = Json::array();
  for (const char* taint : {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}) {
    // Edge nodes drop off the network for minutes; do not evict their agent at once.
    toleration_list.push_back(
        {{"key", taint}, {"operator", "Exists"}, {"effect", "NoExecute"}, {"tolerationSeconds", toleration}});
  }
  Json volumes = Json::array(
      {{{"name", "config"}, {"configMap", {{"name", ConfigMapName(job)}}}},
       {{"name", "credentials"}, {"projected", {{"defaultMode", 0444}, {"sources", credential_sources}}}},
       {{"name", "api-token"},
        {"secret",
         {{"secretName", ApiTokenSecretName(job)},
          {"defaultMode", 0444},
          {"items", Json::array({{{"key", "token"}, {"path", "token"}}})}}}},
       TmpVolume()});
  for (const auto& root : node_roots) {
    volumes.push_back(
        {{"name", root.volume_name},
         {"persistentVolumeClaim",
          {{"claimName", NodeVolumeClaimName(job, node, root)}, {"readOnly", root.read_only}}}});
  }
  Json pod_spec = {{"restartPolicy", "Never"},
                   // The aggregator's address comes from the service environment (the
                   // Kubernetes default, relied on): the agent needs no DNS.
                   {"enableServiceLinks", true},
                   {"serviceAccountName", AgentServiceAccountName(job)},
                   {"automountServiceAccountToken", false},
                   {"securityContext", PodSecurityContext(/*fs_group=*/false)},
                   {"affinity", PinnedTo(node)},
                   {"tolerations", toleration_list},
                   {"initContainers", Json::array({init_container})},
                   {"containers", Json::array({container})},
                   {"volumes", volumes}};
  AddPullSecrets(pod_spec, opts);
  return {{"apiVersion", "v1"}, {"kind", "Pod"}, {"metadata", meta}, {"spec", pod_spec}};
}

std::string SpecHash(const Json& pod) { return pki::HexSha256(pod["spec"].dump()).substr(0, 16); }
}  // namespace

std::string AggregatorPodTemplateHash(const Json& job, const JobSpec& spec, const DesiredOptions& opts) {
  return SpecHash(AggregatorPodWithoutHash(job, spec, /*expected_agents=*/0, opts));
}

std::string AgentPodTemplateHash(const Json& job, const JobSpec& spec, const DesiredOptions& opts) {
  return SpecHash(AgentPodWithoutHash(job, spec, /*node=*/"", opts));
}

std::string PodTemplateHashOf(const Json& pod) {
  auto meta = pod.find("metadata");
  if (meta == pod.end() || !meta->is_object()) return "";
  auto ann = meta->find("annotations");
  if (ann == meta->end() || !ann->is_object()) return "";
  auto it = ann->find(kAnnotationPodTemplateHash);
  return it != ann->end() && it->is_string() ? it->get<std::string>() : "";
}

Json DesiredAggregatorPod(const Json& job, const JobSpec& spec, int expected_agents,
                          const DesiredOptions& opts) {
  Json pod = AggregatorPodWithoutHash(job, spec, expected_agents, opts);
  pod["metadata"]["annotations"][kAnnotationPodTemplateHash] = AggregatorPodTemplateHash(job, spec, opts);
  return pod;
}

std::string FinalModelPodName(const Json& job) { return AggregatorName(job) + "-final"; }

Json DesiredFinalModelPod(const Json& job, const JobSpec& spec, const DesiredOptions& opts) {
  Json pod = AggregatorPodWithoutHash(job, spec, /*expected_agents=*/1, opts);
  pod["metadata"]["name"] = FinalModelPodName(job);
  Json& containers = pod["spec"]["containers"];
  Json aggregator = containers[0];
  // The aggregator alone: no rounds to report, and the status is the finished job's.
  containers = Json::array({aggregator});
  Json command = Json::array();
  const Json& was = aggregator["command"];
  for (size_t i = 0; i < was.size(); ++i) {
    const std::string arg = was[i].get<std::string>();
    if (arg == "--exit-when-done") continue;
    if (arg == "--expected-agents") {
      ++i;  // and its value: nobody is waited for
      continue;
    }
    command.push_back(arg);
  }
  command.push_back("--serve-final");
  containers[0]["command"] = command;
  return pod;
}

Json DesiredAgentPod(const Json& job, const std::string& node, const DesiredOptions& opts) {
  return DesiredAgentPod(job, OperatorJobSpec(job), node, opts);
}

Json DesiredAgentPod(const Json& job, const JobSpec& spec, const std::string& node,
                     const DesiredOptions& opts) {
  Json pod = AgentPodWithoutHash(job, spec, node, opts);
  pod["metadata"]["annotations"][kAnnotationPodTemplateHash] = AgentPodTemplateHash(job, spec, opts);
  return pod;
}

std::vector<NodeVolume> AgentNodeVolumes(const JobSpec& spec, const DesiredOptions& opts) {
  return {{"model", spec.model.path, true},
          {"data", spec.data.path, true},
          {"state", TrimSlash(opts.node_state_dir), false}};
}

namespace {
// The deepest directory holding both normalized absolute paths.
std::string CommonDir(const std::string& a, const std::string& b) {
  std::string dir = a;
  while (!AtOrBelow(dir, b)) {
    size_t slash = dir.rfind('/');
    dir = slash == 0 || slash == std::string::npos ? "/" : dir.substr(0, slash);
  }
  return dir;
}

// The longest allowed prefix `path` is equal to or below, or "" for none.
std::string PrefixOf(const std::string& path, const std::vector<std::string>& prefixes) {
  std::string best;
  for (const auto& raw : prefixes) {
    std::string prefix = TrimSlash(raw);
    if (AtOrBelow(prefix, path) && prefix.size() > best.size()) best = prefix;
  }
  return best;
}
}  // namespace

std::vector<NodeVolumeRoot> AgentNodeVolumeRoots(const JobSpec& spec, const DesiredOptions& opts) {
  std::vector<NodeVolumeRoot> roots;
  std::vector<std::string> root_prefix;  // root_prefix[i]: the allowed prefix of roots[i]
  for (NodeVolume v : AgentNodeVolumes(spec, opts)) {
    v.path = TrimSlash(v.path);
    // Grouped by allowed prefix: a root never climbs above the prefix its directories
    // share (two prefixes never make one volume of their common parent, say "/").
    // Read-only and written directories share a volume: agent pods have no fsGroup, so
    // no kubelet changes ownership in it, and each directory is its own subPath mount
    // with its own readOnly.
    const std::string prefix = PrefixOf(v.path, opts.allowed_host_path_prefixes);
    size_t i = 0;
    while (i < roots.size() && (prefix.empty() || root_prefix[i] != prefix)) ++i;
    if (i == roots.size()) {
      NodeVolumeRoot r;
      r.path = v.path;
      r.read_only = v.read_only;
      r.volume_name = i == 0 ? "node-dirs" : "node-dirs-" + std::to_string(i + 1);
      roots.push_back(std::move(r));
      root_prefix.push_back(prefix);
    }
    roots[i].path = CommonDir(roots[i].path, v.path);
    roots[i].read_only = roots[i].read_only && v.read_only;
    roots[i].dirs.push_back(std::move(v));
  }
  return roots;
}

std::string AgentStateSubPath(const Json& job) { return Ns(job) + "/" + Name(job); }

std::string NodeVolumeSubPath(const NodeVolumeRoot& root, const NodeVolume& dir) {
  std::string p = TrimSlash(dir.path);
  if (p == root.path) return "";
  return p.substr(root.path == "/" ? 1 : root.path.size() + 1);
}

Status CheckHostPath(const std::string& field, const std::string& path,
                     const std::vector<std::string>& prefixes) {
  auto fail = [&](const std::string& why) {
    return InvalidArgumentError(field + " \"" + path + "\" " + why +
                                "; allowed node directories (the operator's " +
                                "--allowed-host-path-prefix): " + JoinPrefixes(prefixes) +
                                ". Place the files under one of them and change " + field);
  };
  if (path.empty() || path[0] != '/') return fail("is not an absolute path");
  // Every component must be a name: no "", "." or ".." that could step outside a prefix.
  std::string p = TrimSlash(path);
  size_t pos = 1;
  while (p.size() > 1 && pos <= p.size()) {
    size_t next = p.find('/', pos);
    if (next == std::string::npos) next = p.size();
    std::string part = p.substr(pos, next - pos);
    if (part.empty() || part == "." || part == "..")
      return fail("is not a normalized path (remove \"" + part + "\")");
    pos = next + 1;
  }
  for (const auto& raw : prefixes) {
    if (AtOrBelow(TrimSlash(raw), p)) return OkStatus();
  }
  return fail("is outside the allowed node directories");
}

Status CheckNodePaths(const JobSpec& spec, const DesiredOptions& opts) {
  for (const auto& v : AgentNodeVolumes(spec, opts)) {
    if (v.kind == "state") continue;  // the operator's own setting, checked at startup
    FEDGE_RETURN_IF_ERROR(CheckHostPath("spec." + v.kind + ".path", v.path, opts.allowed_host_path_prefixes));
  }
  return OkStatus();
}

std::string NodeVolumeClaimName(const Json& job, const std::string& node, const NodeVolumeRoot& r) {
  return UniqueName(Name(job) + "-node-" + node, node + "\n" + r.path);
}

std::string NodePersistentVolumeName(const Json& job, const std::string& node, const NodeVolumeRoot& r) {
  return UniqueName("fedge-" + Ns(job) + "-" + Name(job) + "-node-" + node,
                    Ns(job) + "\n" + Name(job) + "\n" + node + "\n" + r.path);
}

std::string NodePersistentVolumeSelector(const Json& job) {
  return std::string(kLabelJob) + "=" + Name(job) + "," + kLabelJobNamespace + "=" + Ns(job);
}

Json DesiredNodePersistentVolume(const Json& job, const std::string& node, const std::string& hostname,
                                 const NodeVolumeRoot& v) {
  Json labels = Labels(job, "node-volume");
  labels[kLabelJobNamespace] = Ns(job);
  return {{"apiVersion", "v1"},
          {"kind", "PersistentVolume"},
          {"metadata",
           {{"name", NodePersistentVolumeName(job, node, v)},
            {"labels", labels},
            {"annotations",
             {{kAnnotationNode, node},
              {"fedge.io/path", v.path},
              {kAnnotationJobUid, job["metadata"].value("uid", "")}}}}},
          {"spec",
           {{"capacity", {{"storage", "1Gi"}}},  // nominal: a local volume is the directory
            {"accessModes", {"ReadWriteOnce"}},
            {"persistentVolumeReclaimPolicy", "Retain"},
            {"storageClassName", ""},
            {"volumeMode", "Filesystem"},
            {"local", {{"path", v.path}}},
            // Pre-bound: no other claim can take it.
            {"claimRef", {{"namespace", Ns(job)}, {"name", NodeVolumeClaimName(job, node, v)}}},
            {"nodeAffinity",
             {{"required",
               {{"nodeSelectorTerms",
                 Json::array({{{"matchExpressions", Json::array({{{"key", "kubernetes.io/hostname"},
                                                                  {"operator", "In"},
                                                                  {"values", {hostname}}}})}}})}}}}}}}};
}

Json DesiredNodeVolumeClaim(const Json& job, const std::string& node, const NodeVolumeRoot& v) {
  Json meta = Meta(job, NodeVolumeClaimName(job, node, v), "node-volume");
  meta["annotations"] = {{kAnnotationNode, node}, {"fedge.io/path", v.path}};
  return {{"apiVersion", "v1"},
          {"kind", "PersistentVolumeClaim"},
          {"metadata", meta},
          {"spec",
           {{"accessModes", {"ReadWriteOnce"}},
            {"storageClassName", ""},  // never the default class: this claim binds one volume
            {"volumeName", NodePersistentVolumeName(job, node, v)},
            {"resources", {{"requests", {{"storage", "1Gi"}}}}}}}};
}

std::string StateCleanupPodName(const Json& job, const std::string& node) {
  // "-state-cleanup-" cannot be read as "-agent-": no agent pod name is ever one of these.
  std::string n = Name(job) + "-state-cleanup-" + Sanitize(node);
  if (n.size() > 200) n = n.substr(0, 190) + "-" + ShortHash(node);
  while (!n.empty() && (n.back() == '-' || n.back() == '.')) n.pop_back();
  return n;
}

const NodeVolumeRoot* StateVolumeRoot(const std::vector<NodeVolumeRoot>& roots) {
  for (const auto& root : roots)
    for (const auto& dir : root.dirs)
      if (dir.kind == "state") return &root;
  return nullptr;
}

Json DesiredStateCleanupPod(const Json& job, const JobSpec& spec, const std::string& node,
                            const DesiredOptions& opts) {
  const std::vector<NodeVolumeRoot> roots = AgentNodeVolumeRoots(spec, opts);
  const NodeVolumeRoot* root = StateVolumeRoot(roots);
  if (!root) return nullptr;
  std::string sub;
  for (const auto& dir : root->dirs)
    if (dir.kind == "state") sub = NodeVolumeSubPath(*root, dir);
  Json meta = Meta(job, StateCleanupPodName(job, node), kRoleStateCleanup);
  meta["annotations"] = {{kAnnotationNode, node}};
  Json root_mount = {{"name", root->volume_name}, {"mountPath", kStateRootMountPath}, {"readOnly", false}};
  if (!sub.empty()) root_mount["subPath"] = sub;
  Json container = {
      {"name", "state-cleanup"},
      {"image", opts.images.agent},
      {"command", {"fedge-agent", "--remove-state-dir", kStateRootMountPath, AgentStateSubPath(job)}},
      // The reason a removal failed reaches the pod's status, and from there the event.
      {"terminationMessagePolicy", "FallbackToLogsOnError"},
      // The agents' own (a namespace quota that admitted them admits this).
      {"resources", Resources(Sub(Spec(job), "agents"))},
      {"volumeMounts", Json::array({root_mount})}};
  Harden(container, opts);
  Json pod_spec = {
      {"restartPolicy", "Never"},
      {"automountServiceAccountToken", false},
      {"securityContext", PodSecurityContext(/*fs_group=*/false)},
      // A cleanup that hangs (a stuck filesystem) fails instead of holding the job.
      {"activeDeadlineSeconds", kNodeStateCleanupTimeoutSeconds},
      {"affinity", PinnedTo(node)},
      // Whatever taints the node has now (cordoned, unreachable), the data is on it.
      {"tolerations", Json::array({{{"operator", "Exists"}}})},
      {"containers", Json::array({container})},
      {"volumes",
       Json::array({{{"name", root->volume_name},
                     {"persistentVolumeClaim", {{"claimName", NodeVolumeClaimName(job, node, *root)}}}},
                    TmpVolume()})}};
  AddPullSecrets(pod_spec, opts);
  return {{"apiVersion", "v1"}, {"kind", "Pod"}, {"metadata", meta}, {"spec", pod_spec}};
}

Json DesiredDeferredStateCleanupPod(const Json& job, const JobSpec& spec, const std::string& node,
                                    const DesiredOptions& opts, const std::string& claim_name) {
  Json pod = DesiredStateCleanupPod(job, spec, node, opts);
  if (pod.is_null()) return pod;
  if (!claim_name.empty()) {
    for (auto& v : pod["spec"]["volumes"])
      if (v.contains("persistentVolumeClaim")) v["persistentVolumeClaim"]["claimName"] = claim_name;
  }
  pod["metadata"].merge_patch(DeferStateCleanupPodPatch(job)["metadata"]);
  // Not scheduled (not even onto the node, which it tolerates whatever its taints) until
  // the operator sees the node back and the job's agent gone from it.
  pod["spec"]["schedulingGates"] = Json::array({{{"name", kStateCleanupGate}}});
  return pod;
}

Json DeferStateCleanupPodPatch(const Json& job) {
  return {{"metadata",
           {{"ownerReferences", nullptr},
            {"labels", {{kLabelStateCleanup, kStateCleanupDeferred}}},
            {"annotations", {{kAnnotationJobUid, job["metadata"].value("uid", "")}}}}}};
}

Json DeferStateClaimPatch(const Json& job, const std::string& pod_name) {
  Json patch = DeferStateCleanupPodPatch(job);
  patch["metadata"]["annotations"][kAnnotationStateCleanupPod] = pod_name;
  return patch;
}

Json DesiredStateRecordClaim(const Json& job, const std::string& node, const NodeVolumeRoot& r,
                             const std::string& pod_name) {
  Json claim = DesiredNodeVolumeClaim(job, node, r);
  claim["metadata"].merge_patch(DeferStateClaimPatch(job, pod_name)["metadata"]);
  return claim;
}

std::string StateRecordClaimName(const Json& job, const std::string& node, const NodeVolumeRoot& r) {
  return UniqueName(Name(job) + "-record-" + node, "record\n" + node + "\n" + r.path);
}

std::string StateRecordVolumeName(const Json& job, const std::string& node, const NodeVolumeRoot& r) {
  return UniqueName("fedge-" + Ns(job) + "-" + Name(job) + "-record-" + node,
                    "record\n" + Ns(job) + "\n" + Name(job) + "\n" + node + "\n" + r.path);
}

Json StateRecordVolume(const Json& job, const Json& volume, const std::string& node,
                       const NodeVolumeRoot& r) {
  const Json& from = volume.value("spec", Json::object());
  Json spec = Json::object();
  for (const char* k : {"capacity", "accessModes", "persistentVolumeReclaimPolicy", "storageClassName",
                        "volumeMode", "local", "nodeAffinity"})
    if (from.contains(k)) spec[k] = from[k];
  spec["persistentVolumeReclaimPolicy"] = "Retain";  // the object only: the directory stays
  spec["claimRef"] = {{"namespace", Ns(job)}, {"name", StateRecordClaimName(job, node, r)}};
  const Json meta = volume.value("metadata", Json::object());
  Json labels = meta.value("labels", Json::object());
  labels[kLabelStateCleanup] = kStateCleanupDeferred;
  Json annotations = meta.value("annotations", Json::object());
  annotations[kAnnotationStateCleanupCause] = kStateCleanupCauseForeground;
  return {{"apiVersion", "v1"},
          {"kind", "PersistentVolume"},
          {"metadata",
           {{"name", StateRecordVolumeName(job, node, r)}, {"labels", labels}, {"annotations", annotations}}},
          {"spec", spec}};
}

Json DesiredOwnStateRecordClaim(const Json& job, const std::string& node, const NodeVolumeRoot& r,
                                const std::string& pod_name) {
  Json claim = DesiredStateRecordClaim(job, node, r, pod_name);
  claim["metadata"]["name"] = StateRecordClaimName(job, node, r);
  claim["metadata"]["annotations"][kAnnotationStateCleanupCause] = kStateCleanupCauseForeground;
  claim["spec"]["volumeName"] = StateRecordVolumeName(job, node, r);
  return claim;
}

Json ReleasedVolumeRebindPatch() {
  return {{"spec", {{"claimRef", {{"uid", nullptr}, {"resourceVersion", nullptr}}}}}};
}

bool DeferredStateCleanup(const Json& obj) {
  const Json meta = obj.is_object() ? obj.value("metadata", Json::object()) : Json::object();
  return meta.value("labels", Json::object()).value(kLabelStateCleanup, "") == kStateCleanupDeferred;
}

std::string CheckpointClaimName(const Json& job) {
  Json ckpt = Sub(Sub(Spec(job), "aggregator"), "checkpoint");
  if (!ckpt.value("enabled", true)) return "";
  std::string claim = ckpt.value("claimName", "");
  return claim.empty() ? Name(job) + "-checkpoints" : claim;
}

Json DesiredCheckpointClaim(const Json& job) {
  Json ckpt = Sub(Sub(Spec(job), "aggregator"), "checkpoint");
  if (!ckpt.value("enabled", true) || !ckpt.value("claimName", "").empty()) return nullptr;
  Json spec = {{"accessModes", {"ReadWriteOnce"}},
               {"resources", {{"requests", {{"storage", ckpt.value("size", std::string("1Gi"))}}}}}};
  // Absent: the DefaultStorageClass admission plugin fills in the cluster's default.
  std::string sc = ckpt.value("storageClassName", "");
  if (!sc.empty()) spec["storageClassName"] = sc;
  return {{"apiVersion", "v1"},
          {"kind", "PersistentVolumeClaim"},
          {"metadata", Meta(job, Name(job) + "-checkpoints", "checkpoints")},
          {"spec", spec}};
}

std::string ApiTokenSecretName(const Json& job) { return Name(job) + "-inference-token"; }

Json DesiredApiTokenSecret(const Json& job, const std::string& token) {
  return {{"apiVersion", "v1"},
          {"kind", "Secret"},
          {"metadata", Meta(job, ApiTokenSecretName(job), "inference-token")},
          {"type", "Opaque"},
          {"data", {{"token", Base64Encode(token)}}}};
}

std::string AgentNetworkPolicyName(const Json& job) { return Name(job) + "-agents"; }

namespace {

// A label value, or a key's name part: at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends.
bool IsLabelName(const std::string& s) {
  auto alnum = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; };
  if (s.empty() || s.size() > 63 || !alnum(s.front()) || !alnum(s.back())) return false;
  return std::all_of(s.begin(), s.end(),
                     [&](char c) { return alnum(c) || c == '-' || c == '_' || c == '.'; });
}

// A DNS-1123 label: at most 63 of [a-z0-9-], alphanumeric at both ends.
bool IsDnsLabel(const std::string& s) {
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (s.empty() || s.size() > 63 || !alnum(s.front()) || !alnum(s.back())) return false;
  return std::all_of(s.begin(), s.end(), [&](char c) { return alnum(c) || c == '-'; });
}

// [prefix/]name, the prefix a DNS subdomain (dot-separated DNS labels, at most 253).
bool IsLabelKey(const std::string& key) {
  const size_t slash = key.find('/');
  if (slash == std::string::npos) return IsLabelName(key);
  const std::string prefix = key.substr(0, slash);
  if (prefix.empty() || prefix.size() > 253) return false;
  for (size_t at = 0;;) {
    const size_t dot = prefix.find('.', at);
    if (!IsDnsLabel(prefix.substr(at, dot == std::string::npos ? std::string::npos : dot - at))) return false;
    if (dot == std::string::npos) break;
    at = dot + 1;
  }
  return IsLabelName(key.substr(slash + 1));
}

}  // namespace

Status CheckNamespaceName(const std::string& flag, const std::string& name) {
  if (IsDnsLabel(name)) return OkStatus();
  return InvalidArgumentError(flag + " '" + name +
                              "' is not a namespace name (lower-case letters, digits and '-', at most 63, "
                              "a letter or digit at both ends)");
}

StatusOr<std::map<std::string, std::string>> ParseLabelPairs(const std::string& text) {
  std::map<std::string, std::string> labels;
  size_t at = 0;
  while (true) {
    size_t end = text.find(',', at);
    if (end == std::string::npos) end = text.size();
    const std::string pair = text.substr(at, end - at);
    const size_t eq = pair.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == pair.size()) {
      return InvalidArgumentError("'" + pair + "' is not KEY=VALUE (e.g. k8s-app=kube-dns)");
    }
    if (!IsLabelKey(pair.substr(0, eq)) || !IsLabelName(pair.substr(eq + 1))) {
      return InvalidArgumentError("'" + pair +
                                  "' is not a Kubernetes label KEY=VALUE (a name and value of at most 63 of "
                                  "letters, digits, '-', '_' and '.', alphanumeric at both ends; a key may "
                                  "have a DNS prefix/)");
    }
    labels[pair.substr(0, eq)] = pair.substr(eq + 1);
    if (end == text.size()) return labels;
    at = end + 1;
  }
}

bool AgentResolvesAggregatorByName(const Json& pod) {
  const Json containers = pod.value("spec", Json::object()).value("containers", Json::array());
  for (const auto& c : containers) {
    if (!c.is_object() || c.value("name", "") != "agent") continue;
    const Json cmd = c.value("command", Json::array());
    for (size_t i = 0; i + 1 < cmd.size(); ++i) {
      if (cmd[i] != "--aggregator" || !cmd[i + 1].is_string()) continue;
      // This operator's pods pass $(<JOB>_AGGREGATOR_SERVICE_HOST):7070, an address.
      return cmd[i + 1].get<std::string>().rfind("$(", 0) != 0;
    }
  }
  return false;
}

std::string AgentDnsNetworkPolicyName(const Json& job) { return Name(job) + "-agents-dns"; }

Json DesiredAgentDnsNetworkPolicy(const Json& job, const DesiredOptions& opts) {
  Json dns_pods = Json::object();
  for (const auto& [k, v] : opts.dns_pod_labels) dns_pods[k] = v;
  return {{"apiVersion", "networking.k8s.io/v1"},
          {"kind", "NetworkPolicy"},
          {"metadata", Meta(job, AgentDnsNetworkPolicyName(job), "agent")},
          {"spec",
           {{"podSelector",
             {{"matchLabels",
               {{kLabelJob, Name(job)}, {kLabelRole, "agent"}, {kLabelResolvesAggregatorByName, "true"}}}}},
            {"policyTypes", {"Egress"}},
            {"egress",
             Json::array({{{"to", Json::array({{{"namespaceSelector",
                                                 {{"matchLabels",
                                                   {{"kubernetes.io/metadata.name", opts.dns_namespace}}}}},
                                                {"podSelector", {{"matchLabels", dns_pods}}}}})},
                           {"ports", Json::array({{{"port", 53}, {"protocol", "UDP"}},
                                                  {{"port", 53}, {"protocol", "TCP"}}})}}})}}}};
}

std::string AggregatorServiceHostVar(const Json& job) {
  std::string var = AggregatorName(job);
  for (char& c : var)
    c = c == '-' || c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return var + "_SERVICE_HOST";
}

namespace {
Json Port(int port) { return {{"port", port}, {"protocol", "TCP"}}; }
// Peers in the monitoring namespaces (by the kubernetes.io/metadata.name label every
// namespace carries).
void AddMonitoringPeers(Json& from, const DesiredOptions& opts) {
  for (const auto& ns : opts.monitoring_namespaces) {
    from.push_back({{"namespaceSelector", {{"matchLabels", {{"kubernetes.io/metadata.name", ns}}}}}});
  }
}
}  // namespace

Json DesiredAgentNetworkPolicy(const Json& job, const DesiredOptions& opts) {
  return DesiredAgentNetworkPolicy(job, OperatorJobSpec(job), opts);
}

Json DesiredAgentNetworkPolicy(const Json& job, const JobSpec& spec, const DesiredOptions& opts) {
  const int port = spec.serving.port;
  Json from = Json::array({
      {{"podSelector", Json::object()}},  // the job's own namespace
      {{"namespaceSelector", Json::object()},
       {"podSelector", {{"matchLabels", {{kLabelInferenceClient, "true"}}}}}},
  });
  AddMonitoringPeers(from, opts);
  Json spec_json = {{"podSelector", {{"matchLabels", {{kLabelJob, Name(job)}, {kLabelRole, "agent"}}}}},
                    {"policyTypes", {"Ingress"}},
                    {"ingress", Json::array({{{"from", from}, {"ports", Json::array({Port(port)})}}})}};
  if (opts.agent_egress_policy) {
    // Out of the pod: the job's aggregator (also the final-model pod: same labels), and
    // nothing else, not DNS: a cluster DNS that forwards upstream would carry whatever an
    // agent puts in a query name off the cluster. Agents get the aggregator Service's
    // address from the service environment. Services are matched after their translation
    // to the endpoint pod, so peers are pods, not Service addresses.
    spec_json["policyTypes"] = {"Ingress", "Egress"};
    spec_json["egress"] = Json::array(
        {{{"to", Json::array({{{"podSelector",
                                {{"matchLabels", {{kLabelJob, Name(job)}, {kLabelRole, "aggregator"}}}}}}})},
          {"ports", Json::array({Port(kAggregatorGrpcPort)})}}});
  }
  return {{"apiVersion", "networking.k8s.io/v1"},
          {"kind", "NetworkPolicy"},
          {"metadata", Meta(job, AgentNetworkPolicyName(job), "agent")},
          {"spec", spec_json}};
}

Json DesiredAggregatorNetworkPolicy(const Json& job, const DesiredOptions& opts) {
  Json agents = {{"podSelector", {{"matchLabels", {{kLabelJob, Name(job)}, {kLabelRole, "agent"}}}}}};
  Json http_from = Json::array({{{"podSelector", Json::object()}}});
  AddMonitoringPeers(http_from, opts);
  Json spec_json = {
      {"podSelector", {{"matchLabels", {{kLabelJob, Name(job)}, {kLabelRole, "aggregator"}}}}},
      {"policyTypes", {"Ingress"}},
      {"ingress",
       Json::array({{{"from", Json::array({agents})}, {"ports", Json::array({Port(kAggregatorGrpcPort)})}},
                    {{"from", http_from}, {"ports", Json::array({Port(kAggregatorHttpPort)})}}})}};
  if (opts.aggregator_egress_policy && !opts.api_server_endpoints.empty()) {
    // Out of the pod: the API server only (the status reporter; agents come in, the
    // aggregator connects to no one). Its addresses are not pods, so ipBlocks; the
    // reporter reaches it by the `kubernetes` Service's IP, no DNS.
    std::map<int, Json> to_by_port;
    for (const auto& e : opts.api_server_endpoints) {
      const bool v6 = e.ip.find(':') != std::string::npos;
      to_by_port[e.port].push_back({{"ipBlock", {{"cidr", e.ip + (v6 ? "/128" : "/32")}}}});
    }
    Json egress = Json::array();
    for (auto& [port, to] : to_by_port) egress.push_back({{"to", to}, {"ports", Json::array({Port(port)})}});
    spec_json["policyTypes"] = {"Ingress", "Egress"};
    spec_json["egress"] = std::move(egress);
  }
  return {{"apiVersion", "networking.k8s.io/v1"},
          {"kind", "NetworkPolicy"},
          {"metadata", Meta(job, AggregatorName(job), "aggregator")},
          {"spec", spec_json}};
}

StatusOr<std::vector<ApiServerEndpoint>> ParseApiServerEndpoints(const Json& slice) {
  const std::string what = "the `kubernetes` Service's EndpointSlice";
  if (!slice.is_object()) return InvalidArgumentError(what + " is not an object");
  const Json ports = slice.value("ports", Json::array());
  int port = 0;
  if (ports.is_array()) {
    for (const auto& p : ports) {
      if (!p.is_object() || !p.contains("port") || !p["port"].is_number_integer()) continue;
      if (p.value("protocol", "TCP") != "TCP") continue;
      // The API server's port is named https; a slice with one port may leave it unnamed.
      if (port == 0 || p.value("name", "") == "https") port = p["port"].get<int>();
    }
  }
  if (port < 1 || port > 65535) return InvalidArgumentError(what + " names no TCP port in 1..65535");
  const std::string type = slice.value("addressType", "IPv4");
  if (type != "IPv4" && type != "IPv6") return InvalidArgumentError(what + " has addressType " + type);
  std::vector<ApiServerEndpoint> out;
  const Json endpoints = slice.value("endpoints", Json::array());
  for (const auto& e : endpoints.is_array() ? endpoints : Json::array()) {
    if (!e.is_object()) continue;
    const Json cond = e.value("conditions", Json::object());
    if (cond.is_object() && cond.contains("ready") && cond["ready"].is_boolean() &&
        !cond["ready"].get<bool>())
      continue;
    for (const auto& a : e.value("addresses", Json::array())) {
      if (!a.is_string()) return InvalidArgumentError(what + " has an address that is not a string");
      const std::string ip = a.get<std::string>();
      unsigned char buf[sizeof(struct in6_addr)];
      if (inet_pton(type == "IPv6" ? AF_INET6 : AF_INET, ip.c_str(), buf) != 1) {
        return InvalidArgumentError(what + " has '" + ip + "', which is not an " + type + " address");
      }
      out.push_back({ip, port});
    }
  }
  if (out.empty()) return InvalidArgumentError(what + " lists no ready address");
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

JobSpec OperatorJobSpec(const Json& job) {
  auto parsed = ParseJobSpec(ManifestForParser(job).dump());
  return parsed.ok() ? *std::move(parsed) : JobSpec{};
}

Json ManifestForParser(const Json& job) {
  Json m = {{"apiVersion", job.value("apiVersion", "")},
            {"kind", job.value("kind", "")},
            {"metadata", {{"name", Name(job)}, {"namespace", Ns(job)}}},
            {"spec", Spec(job)}};
  m["spec"].erase("aggregator");
  // The cluster's default (TlsEnabled), so the job's ConfigMap says what the pods do.
  if (!m["spec"].contains("privacy") || m["spec"]["privacy"].is_object())
    m["spec"]["privacy"]["tls"] = TlsEnabled(job);
  if (m["spec"].contains("agents") && m["spec"]["agents"].is_object()) {
    m["spec"]["agents"].erase("tolerationSeconds");
    m["spec"]["agents"].erase("resources");
  }
  return m;
}

}  // namespace fedge::op
