#include "fedge/op/desired.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <algorithm>

#include "fedge/op/fake_kube_client.h"
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

std::string ShortHash(const std::string& s) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), md);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 4; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

// Secret keys and pod names allow [-._a-z0-9]; node names already fit.
std::string Sanitize(std::string s) {
  for (char& c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.')) c = '-';
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

bool TlsEnabled(const Json& job) { return Sub(Spec(job), "privacy").value("tls", false); }

Json Resources(const Json& spec_part) {
  auto it = spec_part.find("resources");
  return (it == spec_part.end() || !it->is_object()) ? Json::object() : *it;
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

std::string TokenKey(const std::string& agent_id) { return "token-" + Sanitize(agent_id); }

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

std::vector<std::string> SelectNodes(const Json& job, const std::vector<ObjectPtr>& nodes) {
  Json agents = Sub(Spec(job), "agents");
  Json selector = Sub(agents, "nodeSelector");
  int max_agents = agents.value("maxAgents", 0);
  std::vector<std::string> out;
  for (const auto& n : nodes) {
    const Json& meta = (*n)["metadata"];
    if (meta.contains("deletionTimestamp")) continue;
    Json labels = meta.value("labels", Json::object());
    bool match = true;
    for (auto it = selector.begin(); it != selector.end(); ++it) {
      if (!labels.contains(it.key()) || labels[it.key()] != it.value()) {
        match = false;
        break;
      }
    }
    // Unschedulable (cordoned) nodes get no new agent, like a DaemonSet with a taint.
    if (match && !Sub(*n, "spec").value("unschedulable", false)) out.push_back(meta.value("name", ""));
  }
  std::sort(out.begin(), out.end());
  if (max_agents > 0 && static_cast<int>(out.size()) > max_agents) out.resize(max_agents);
  return out;
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
  auto get = [&](const char* k) { return data.contains(k) ? Base64Decode(data[k].get<std::string>()) : ""; };
  c.ca_crt = get("ca.crt");
  c.ca_key = get("ca.key");
  c.tls_crt = get("tls.crt");
  c.tls_key = get("tls.key");
  std::string tokens = get("tokens");
  size_t pos = 0;
  while (pos < tokens.size()) {
    size_t nl = tokens.find('\n', pos);
    std::string line = tokens.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? tokens.size() : nl + 1;
    auto sp = line.find(' ');
    if (sp != std::string::npos && !line.empty() && line[0] != '#') {
      c.tokens[line.substr(0, sp)] = line.substr(sp + 1);
    }
  }
  return c;
}

Json DesiredSecret(const Json& job, const Credentials& creds) {
  Json data = {{"ca.crt", Base64Encode(creds.ca_crt)},
               {"ca.key", Base64Encode(creds.ca_key)},
               {"tls.crt", Base64Encode(creds.tls_crt)},
               {"tls.key", Base64Encode(creds.tls_key)}};
  // The aggregator's --tokens-file format: one "agent-id token" line per agent.
  std::string tokens;
  for (const auto& [id, tok] : creds.tokens) {
    tokens += id + " " + tok + "\n";
    data[TokenKey(id)] = Base64Encode(tok);
  }
  data["tokens"] = Base64Encode(tokens);
  return {{"apiVersion", "v1"},
          {"kind", "Secret"},
          {"metadata", Meta(job, SecretName(job), "credentials")},
          {"type", "Opaque"},
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

Json DesiredInferenceService(const Json& job) {
  int port = Sub(Spec(job), "serving").value("port", 8080);
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

Json DesiredAggregatorPod(const Json& job, int expected_agents, const Images& images) {
  const Json& spec = Spec(job);
  Json agg = Sub(spec, "aggregator");
  Json ckpt = Sub(agg, "checkpoint");
  Json ckpt_volume = {{"name", "checkpoints"}, {"emptyDir", Json::object()}};
  if (ckpt.value("enabled", false) && !ckpt.value("claimName", "").empty()) {
    ckpt_volume = {{"name", "checkpoints"},
                   {"persistentVolumeClaim", {{"claimName", ckpt.value("claimName", "")}}}};
  }
  std::string key = Ns(job) + "/" + Name(job);
  Json aggregator = {
      {"name", "aggregator"},
      {"image", images.aggregator},
      {"command",
       {"fedge-aggregator", "--config", std::string(kConfigMountPath) + "/job.yaml", "--listen",
        "0.0.0.0:" + std::to_string(kAggregatorGrpcPort), "--http",
        "0.0.0.0:" + std::to_string(kAggregatorHttpPort), "--checkpoint-dir", kCheckpointMountPath,
        "--expected-agents", std::to_string(expected_agents), "--tokens-file",
        std::string(kSecretMountPath) + "/tokens", "--exit-when-done"}},
      {"ports",
       Json::array({{{"name", "grpc"}, {"containerPort", kAggregatorGrpcPort}, {"protocol", "TCP"}},
                    {{"name", "http"}, {"containerPort", kAggregatorHttpPort}, {"protocol", "TCP"}}})},
      {"readinessProbe", {{"httpGet", {{"path", "/readyz"}, {"port", "http"}}}, {"periodSeconds", 5}}},
      {"resources", Resources(agg)},
      {"volumeMounts",
       Json::array({{{"name", "config"}, {"mountPath", kConfigMountPath}, {"readOnly", true}},
                    {{"name", "credentials"}, {"mountPath", kSecretMountPath}, {"readOnly", true}},
                    {{"name", "checkpoints"}, {"mountPath", kCheckpointMountPath}}})}};
  if (TlsEnabled(job)) {
    // The serving certificate the operator issued for the Service's names, from the Secret.
    for (const char* arg : {"--tls-cert", "/tls.crt", "--tls-key", "/tls.key"}) {
      aggregator["command"].push_back(arg[0] == '/' ? std::string(kSecretMountPath) + arg : std::string(arg));
    }
  }
  // The reporter applies the aggregator-owned status fields with its own field manager
  // through a Role limited to this job: progress reaches status without operator polling.
  Json reporter = {
      {"name", "status-reporter"},
      {"image", images.reporter},
      {"command",
       {"fedge-operator", "report-status", "--job", key, "--aggregator-http",
        "127.0.0.1:" + std::to_string(kAggregatorHttpPort), "--service-account-dir", kServiceAccountDir}},
      {"resources", {{"requests", {{"cpu", "10m"}, {"memory", "16Mi"}}}}}};
  return {
      {"apiVersion", "v1"},
      {"kind", "Pod"},
      {"metadata", Meta(job, AggregatorName(job), "aggregator")},
      {"spec",
       {{"restartPolicy", "Never"},
        {"serviceAccountName", AggregatorName(job)},
        {"containers", Json::array({aggregator, reporter})},
        {"volumes", Json::array({{{"name", "config"}, {"configMap", {{"name", ConfigMapName(job)}}}},
                                 {{"name", "credentials"},
                                  {"secret",
                                   {{"secretName", SecretName(job)},
                                    {"items", Json::array({{{"key", "tokens"}, {"path", "tokens"}},
                                                           {{"key", "ca.crt"}, {"path", "ca.crt"}},
                                                           {{"key", "tls.crt"}, {"path", "tls.crt"}},
                                                           {{"key", "tls.key"}, {"path", "tls.key"}}})}}}},
                                 ckpt_volume})}}}};
}

Json DesiredAgentPod(const Json& job, const std::string& node, const Images& images) {
  const Json& spec = Spec(job);
  Json agents = Sub(spec, "agents");
  Json data = Sub(spec, "data");
  Json model = Sub(spec, "model");
  Json serving = Sub(spec, "serving");
  int port = serving.value("port", 8080);
  int64_t toleration = agents.value("tolerationSeconds", static_cast<int64_t>(3600));
  std::string data_path = data.value("path", "");
  std::string model_path = model.value("path", "");
  Json meta = Meta(job, AgentPodName(job, node), "agent");
  meta["annotations"] = {{kAnnotationNode, node}};
  Json container = {
      {"name", "agent"},
      {"image", images.agent},
      {"command",
       {"fedge-agent", "--config", std::string(kConfigMountPath) + "/job.yaml", "--aggregator",
        AggregatorName(job) + "." + Ns(job) + ".svc:" + std::to_string(kAggregatorGrpcPort), "--agent-id",
        node, "--node-name", node, "--token-file", std::string(kSecretMountPath) + "/token", "--data-dir",
        data_path, "--model-dir", model_path, "--http", "0.0.0.0:" + std::to_string(port), "--state-dir",
        kStateMountPath}},
      {"ports", Json::array({{{"name", "http"}, {"containerPort", port}, {"protocol", "TCP"}}})},
      {"resources", Resources(agents)},
      {"volumeMounts",
       Json::array({{{"name", "config"}, {"mountPath", kConfigMountPath}, {"readOnly", true}},
                    {{"name", "credentials"}, {"mountPath", kSecretMountPath}, {"readOnly", true}},
                    {{"name", "data"}, {"mountPath", data_path}, {"readOnly", true}},
                    {{"name", "model"}, {"mountPath", model_path}, {"readOnly", true}},
                    {{"name", "state"}, {"mountPath", kStateMountPath}}})}};
  // Agents keep serving local inference with the final global after the job
  // (the job's purpose on the edge); only without serving do they exit when done.
  if (!serving.value("enabled", true)) container["command"].push_back("--exit-when-done");
  if (TlsEnabled(job)) {
    container["command"].push_back("--tls-ca");
    container["command"].push_back(std::string(kSecretMountPath) + "/ca.crt");
    // The certificate names the Service; verify that name even where the address
    // was resolved to an IP.
    container["command"].push_back("--tls-server-name");
    container["command"].push_back(AggregatorName(job) + "." + Ns(job) + ".svc");
  }
  Json toleration_list = Json::array();
  for (const char* taint : {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}) {
    // Edge nodes drop off the network for minutes; do not evict their agent at once.
    toleration_list.push_back(
        {{"key", taint}, {"operator", "Exists"}, {"effect", "NoExecute"}, {"tolerationSeconds", toleration}});
  }
  return {{"apiVersion", "v1"},
          {"kind", "Pod"},
          {"metadata", meta},
          {"spec",
           {{"restartPolicy", "Never"},
            {"automountServiceAccountToken", false},
            // Pinned like a DaemonSet pod: the scheduler binds it to exactly this node.
            {"affinity",
             {{"nodeAffinity",
               {{"requiredDuringSchedulingIgnoredDuringExecution",
                 {{"nodeSelectorTerms",
                   Json::array({{{"matchFields", Json::array({{{"key", "metadata.name"},
                                                               {"operator", "In"},
                                                               {"values", {node}}}})}}})}}}}}}},
            {"tolerations", toleration_list},
            {"containers", Json::array({container})},
            {"volumes",
             Json::array({{{"name", "config"}, {"configMap", {{"name", ConfigMapName(job)}}}},
                          {{"name", "credentials"},
                           {"secret",
                            {{"secretName", SecretName(job)},
                             {"items", Json::array({{{"key", TokenKey(node)}, {"path", "token"}},
                                                    {{"key", "ca.crt"}, {"path", "ca.crt"}}})}}}},
                          {{"name", "data"}, {"hostPath", {{"path", data_path}, {"type", "Directory"}}}},
                          {{"name", "model"}, {"hostPath", {{"path", model_path}, {"type", "Directory"}}}},
                          {{"name", "state"},
                           {"hostPath",
                            {{"path", "/var/lib/fedge/jobs/" + Ns(job) + "/" + Name(job)},
                             {"type", "DirectoryOrCreate"}}}}})}}}};
}

Json ManifestForParser(const Json& job) {
  Json m = {{"apiVersion", job.value("apiVersion", "")},
            {"kind", job.value("kind", "")},
            {"metadata", {{"name", Name(job)}, {"namespace", Ns(job)}}},
            {"spec", Spec(job)}};
  m["spec"].erase("aggregator");
  if (m["spec"].contains("agents") && m["spec"]["agents"].is_object()) {
    m["spec"]["agents"].erase("tolerationSeconds");
    m["spec"]["agents"].erase("resources");
  }
  return m;
}

}  // namespace fedge::op
