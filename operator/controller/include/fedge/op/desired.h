// Desired children of a FederatedTrainingJob as pure functions of the job (and the
// nodes that match it): sample-controller's newDeployment(foo), one function per child.
// Nothing here talks to the API; the reconciler applies what these return.
//
// What a child depends on in the spec is read from the typed spec (fedge::JobSpec, as
// OperatorJobSpec gives it: fedge::ParseJobSpec's defaults and limits, privacy.tls
// resolved by TlsEnabled), never from the manifest's JSON with defaults of its own; the
// job's JSON gives the metadata that names and owns the children and the operator-only
// fields the parser checks but does not keep (spec.aggregator, spec.agents.tolerationSeconds,
// spec.agents.resources). The overloads without a JobSpec parse one (tests); the planner
// parses once per pass and passes it.
#pragma once

#include <ctime>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "fedge/job_spec.h"
#include "fedge/op/informer.h"
#include "fedge/op/kube_client.h"
#include "fedge/status.h"

namespace fedge::op {

inline constexpr const char* kLabelJob = "fedge.io/job";
inline constexpr const char* kLabelRole = "fedge.io/role";
inline constexpr const char* kAnnotationNode = "fedge.io/node";
// On aggregator and agent pods: PodTemplateHash of what they were made from. A pod whose
// value differs from the current one (an operator upgrade, a spec change, a pod of an
// operator before the annotation) is replaced (plan.cpp).
inline constexpr const char* kAnnotationPodTemplateHash = "fedge.io/pod-template-hash";
inline constexpr const char* kFinalizer = "fedge.io/cleanup";
inline constexpr const char* kFieldManager = "fedge-operator";
inline constexpr const char* kReporterFieldManager = "fedge-aggregator";
inline constexpr int kAggregatorGrpcPort = 7070;
inline constexpr int kAggregatorHttpPort = 9090;
inline constexpr const char* kConfigMountPath = "/etc/fedge/job";
inline constexpr const char* kSecretMountPath = "/etc/fedge/secret";
inline constexpr const char* kCheckpointMountPath = "/var/lib/fedge/checkpoints";
inline constexpr const char* kStateMountPath = "/var/lib/fedge/state";
// Where the agent pod's init container (only) sees the node's whole state root.
inline constexpr const char* kStateRootMountPath = "/var/lib/fedge/state-root";
inline constexpr const char* kServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount";

inline constexpr const char* kApiTokenMountPath = "/etc/fedge/api";
// The trust ConfigMap in the aggregator pod (jwks.json).
inline constexpr const char* kTrustMountPath = "/etc/fedge/trust";
inline constexpr const char* kTmpMountPath = "/tmp";
inline constexpr const char* kLabelJobNamespace = "fedge.io/job-namespace";  // on cluster-scoped PVs
// On cluster-scoped PVs (no owner reference): the uid of the job that made them.
inline constexpr const char* kAnnotationJobUid = "fedge.io/job-uid";
inline constexpr const char* kLabelInferenceClient = "fedge.io/inference-client";
// uid/gid of every container the operator creates ("nonroot" in distroless images).
inline constexpr int64_t kRunAsId = 65532;

struct Images {
  std::string aggregator;  // runs fedge-aggregator
  std::string agent;       // runs fedge-agent
  std::string reporter;    // runs `fedge-operator report-status`
};
Images DefaultImages();  // fedge/<component>:<fedge::Version()>

// An address and port the cluster's API server listens on, as the `kubernetes` Service's
// EndpointSlice gives it: what a pod's packet to the Service carries once kube-proxy has
// translated it, so what a NetworkPolicy sees.
struct ApiServerEndpoint {
  std::string ip;  // IPv4 or IPv6, as inet_pton reads it
  int port = 0;
  bool operator==(const ApiServerEndpoint& o) const { return ip == o.ip && port == o.port; }
  bool operator<(const ApiServerEndpoint& o) const { return std::tie(ip, port) < std::tie(o.ip, o.port); }
};

// Operator-wide settings of the children (flags of fedge-operator). Implicitly made from
// Images so callers that only choose images stay short.
struct DesiredOptions {
  DesiredOptions() = default;
  DesiredOptions(Images i) : images(std::move(i)) {}  // NOLINT(google-explicit-constructor)

  Images images = DefaultImages();
  std::string image_pull_policy = "IfNotPresent";  // IfNotPresent | Always | Never
  std::vector<std::string> image_pull_secrets;     // must exist in each job's namespace
  // Node directories a job may name in spec.model.path / spec.data.path (normalized,
  // absolute). Checked by CheckNodePaths before anything is created.
  std::vector<std::string> allowed_host_path_prefixes = {"/var/lib/fedge"};
  // Each node's agent state root (under a prefix, writable by kRunAsId); an agent keeps
  // its state in <root>/<namespace>/<job>.
  std::string node_state_dir = "/var/lib/fedge/state";
  bool network_policies = true;
  // Namespaces whose pods may reach the job pods' HTTP ports (Prometheus).
  std::vector<std::string> monitoring_namespaces;
  // The agents' egress: with network_policies, an agent pod may connect to its job's
  // aggregator pods (gRPC) only, so what a compromised agent reads on its node (the
  // private data) has nowhere else to go (no DNS either: agents need none).
  bool agent_egress_policy = true;
  // The cluster DNS pods that agent pods made by an operator before session 33 (which
  // resolve the aggregator Service by name) may query until they are replaced
  // (DesiredAgentDnsNetworkPolicy).
  std::string dns_namespace = "kube-system";
  std::map<std::string, std::string> dns_pod_labels = {{"k8s-app", "kube-dns"}};
  // The aggregator's egress: with network_policies, an aggregator pod may connect to the
  // API server only (its status reporter writes the job's status), at the addresses in
  // api_server_endpoints; while those are unknown its egress stays open.
  bool aggregator_egress_policy = true;
  // Where the API server listens (ReadApiServerEndpoints; set per pass by the planner).
  std::vector<ApiServerEndpoint> api_server_endpoints;
  // The service-account issuer agents' tokens carry (IssuerKeys::issuer): the aggregator
  // accepts tokens of this issuer only. Set per pass from the API server's discovery
  // document; the default is the common in-cluster issuer.
  std::string agent_token_issuer = "https://kubernetes.default.svc.cluster.local";
  // The aggregator's --agent-session-grace-seconds: an agent session ends this long after
  // the newest token its pod presented expired (a site whose control plane is unreachable
  // trains on for a token's 10 minutes plus this).
  int64_t agent_session_grace_s = 3600;
};

// The variable of the service environment (enableServiceLinks) that holds the aggregator
// Service's address in the job's pods: "WN_AGGREGATOR_SERVICE_HOST" for job "wn".
std::string AggregatorServiceHostVar(const Json& job);

// "k8s-app=kube-dns,tier=dns" -> its labels (the operator's --dns-pod-selector): at least
// one pair, each a valid Kubernetes label key and a non-empty label value.
StatusOr<std::map<std::string, std::string>> ParseLabelPairs(const std::string& text);
// OK when `name` can be a namespace's name (a DNS-1123 label); else INVALID_ARGUMENT naming
// `flag`.
Status CheckNamespaceName(const std::string& flag, const std::string& name);

// The `kubernetes` Service's EndpointSlice (discovery.k8s.io/v1, in `default`) -> the API
// server's addresses and port, sorted, without duplicates; endpoints whose ready condition
// is false are left out. InvalidArgument for a slice that is not one (no address, no port,
// an address that is no IP, a port outside 1..65535).
StatusOr<std::vector<ApiServerEndpoint>> ParseApiServerEndpoints(const Json& slice);

// Child names (deterministic: a restarted operator finds what it created).
std::string SecretName(const Json& job);            // <job>-credentials
std::string ConfigMapName(const Json& job);         // <job>-config
std::string AggregatorName(const Json& job);        // <job>-aggregator (pod, service, SA, role)
std::string InferenceServiceName(const Json& job);  // <job>-inference
std::string AgentPodName(const Json& job, const std::string& node);
// <agent pod name>-credentials: the one agent's token and client certificate, written
// by operators before the projected tokens. Deleted when found.
std::string AgentSecretName(const Json& job, const std::string& node);

// spec.privacy.tls. Absent counts as true, the CRD's default: in a cluster agents and
// the aggregator speak mutual TLS unless the job opts out. (`fedge run` parses the same
// field with default false: plaintext on loopback unless asked; see docs/operator.md.)
bool TlsEnabled(const Json& job);

// ownerReference to the job with controller=true, blockOwnerDeletion=true.
Json OwnerReference(const Json& job);

// Nodes matching spec.agents.nodeSelector, sorted by name, capped by maxAgents; cordoned
// and deleted nodes are left out.
std::vector<std::string> SelectNodes(const AgentsSpec& agents, const std::vector<ObjectPtr>& nodes);
std::vector<std::string> SelectNodes(const Json& job, const std::vector<ObjectPtr>& nodes);
// True when the node's Ready condition is True.
bool NodeReady(const Json& node);

// The job's credentials Secret (<job>-credentials) before encoding: the per-job CA and
// the aggregator's serving certificate. Mounted into the aggregator pod only. Agents hold
// no Secret of their own: each authenticates with a projected service-account token
// (AgentTokenAudience) that the aggregator verifies against the cluster's
// service-account issuer keys (IssuerKeys, in the trust ConfigMap).
struct Credentials {
  std::string ca_crt, ca_key, tls_crt, tls_key;
};
// Parses a Secret read from the API (base64 data) back into Credentials.
Credentials CredentialsFromSecret(const Json& secret);

Json DesiredSecret(const Json& job, const Credentials& creds);

// The cluster's service-account token issuer as the API server publishes it
// (/.well-known/openid-configuration and /openid/v1/jwks): what the aggregator needs to
// verify agents' projected tokens without calling the API server.
struct IssuerKeys {
  std::string issuer;  // "iss" of the tokens
  std::string jwks;    // the JSON Web Key Set, as served
};
// The audience of the agents' projected tokens: "fedge.io/<namespace>/<job>". A token
// made for one job's aggregator is refused by every other's.
std::string AgentTokenAudience(const Json& job);
// Lifetime the agents' projected tokens are requested with (the kubelet renews them at
// 80%); also the longest a deleted agent pod's token stays usable, since the aggregator
// verifies tokens offline.
inline constexpr int64_t kAgentTokenExpirationSeconds = 600;
// <job>-agent: the agents' ServiceAccount, which grants nothing (no RoleBinding) and
// mounts no API token; it exists so the agents' projected tokens name it.
std::string AgentServiceAccountName(const Json& job);
Json DesiredAgentServiceAccount(const Json& job);
// <job>-trust: public material both pods read. ca.crt (the job CA, with TLS: agents
// verify the aggregator with it), jwks.json (IssuerKeys::jwks: the aggregator verifies
// agent tokens with it; the kubelet updates the mounted file when it changes) and
// revoked-pods.json (the agent pods whose tokens the aggregator refuses: RevokedAgentPods
// in plan.h; the format is aggregator/include/fedge/aggregator/revoked_pods.h's).
std::string TrustConfigMapName(const Json& job);
inline constexpr const char* kRevokedPodsKey = "revoked-pods.json";
// On the aggregator and final-model pods: the hash of the revoked-pods.json they should
// see; changing it makes the kubelet sync the pod, and so refresh the mounted file, at once.
inline constexpr const char* kAnnotationRevokedPods = "fedge.io/revoked-pods";
inline constexpr const char* kNoRevokedPods = "{\"pods\":[]}";
Json DesiredTrustConfigMap(const Json& job, const std::string& ca_crt, const IssuerKeys& issuer,
                           const std::string& revoked_pods = kNoRevokedPods);
Json DesiredConfigMap(const Json& job, const std::string& manifest_yaml);
Json DesiredServiceAccount(const Json& job);
// May get and patch only its own job's status (resourceNames).
Json DesiredRole(const Json& job);
Json DesiredRoleBinding(const Json& job);
Json DesiredAggregatorService(const Json& job);
Json DesiredInferenceService(const Json& job, const JobSpec& spec);
Json DesiredInferenceService(const Json& job);
// With TLS the aggregator serves tls.crt and agents verify it with the job CA. Agents
// join with their projected token (--token-file, re-read at each Join), which the
// aggregator verifies against opts.agent_token_issuer and the trust ConfigMap's keys.
// The aggregator and agent pods pass the `restricted` Pod Security level: non-root
// (kRunAsId), read-only root filesystem with an emptyDir at /tmp, all capabilities
// dropped, seccomp RuntimeDefault, no privilege escalation, no hostPath volumes.
Json DesiredAggregatorPod(const Json& job, const JobSpec& spec, int expected_agents,
                          const DesiredOptions& opts);
Json DesiredAggregatorPod(const Json& job, int expected_agents, const DesiredOptions& opts);
Json DesiredAgentPod(const Json& job, const JobSpec& spec, const std::string& node,
                     const DesiredOptions& opts);
Json DesiredAgentPod(const Json& job, const std::string& node, const DesiredOptions& opts);
// After a job succeeded, a node with no final global model (one that joined the selector
// afterwards, or lost its state directory) gets it from this pod: the aggregator's
// container alone, on the job's checkpoint claim, with --serve-final instead of
// --exit-when-done (it tells every agent that joins DONE with the checkpointed global and
// trains nothing). Labelled as the aggregator, so the aggregator Service and its
// NetworkPolicy lead agents to it; the planner starts and stops it (KeepServing).
std::string FinalModelPodName(const Json& job);  // <job>-aggregator-final
Json DesiredFinalModelPod(const Json& job, const JobSpec& spec, const DesiredOptions& opts);
// The fedge.io/pod-template-hash the pods above carry: 16 hex digits of the SHA-256 of
// the pod spec, built for no particular node (agents) and with --expected-agents left
// out (the aggregator), so neither a node's name nor the node count, which only gates
// the first round, makes a pod outdated. Pure.
std::string AggregatorPodTemplateHash(const Json& job, const JobSpec& spec, const DesiredOptions& opts);
std::string AgentPodTemplateHash(const Json& job, const JobSpec& spec, const DesiredOptions& opts);
// The annotation `pod` carries ("" without one).
std::string PodTemplateHashOf(const Json& pod);

// --- Node directories (model, data, agent state) without hostPath volumes -------------
// Pods at the restricted level may not mount hostPath. Each agent instead mounts its node
// directories from a PersistentVolumeClaim pre-bound to a `local` PersistentVolume the
// operator makes for exactly that (job, node, root directory), pinned to the node by node
// affinity on kubernetes.io/hostname, reclaim policy Retain (node data is never deleted).
// PersistentVolumes are cluster-scoped and outside Pod Security, so the operator is the
// gate: it makes them only for paths under DesiredOptions::allowed_host_path_prefixes.
//
// One volume serves every directory under the same allowed prefix: its root is their
// deepest common directory and each directory is a `subPath` mount (read-only for the
// model and data). In the usual layout (all three under /var/lib/fedge) a node costs the
// API one PersistentVolume and one claim, not three of each (issue 14: the API server's
// cost per write was the operator's limit at 1,000 nodes). The claim is mounted
// read-write when the state directory is under its root. Agent pods have no fsGroup, so
// no kubelet changes ownership of anything in it (with fsGroup a read-write local volume
// is chowned group-writable, which is why read-only and written directories had two
// volumes until session 17); the containers see only their subPaths, and the state root
// must be writable by kRunAsId on the node beforehand (docs/operator.md, Security).
//
// The state root (--node-state-dir) holds every job's agent state on the node, one
// directory <namespace>/<job> each. The agent container mounts only its job's directory
// (a subPath of the state root's volume, AgentStateSubPath), so it cannot read or write
// another job's feedback log, global model or residual. That directory must exist
// before the container starts: a kubelet would otherwise create it root-owned, which the
// agent (kRunAsId) cannot write. The pod's init container "state-dir" (the agent image,
// the same restricted securityContext, a fixed command no job field reaches) mounts the
// root at kStateRootMountPath and runs `fedge-agent --make-state-dir`, which creates it as
// kRunAsId without following links. No object is added: the writes per agent stay the
// same (issue 14 item 3).
struct NodeVolume {
  std::string kind;  // "model", "data" or "state"
  std::string path;  // on the node
  bool read_only = true;
};
// The agent's node directories for `job` (model, data, state), in that order.
std::vector<NodeVolume> AgentNodeVolumes(const JobSpec& spec, const DesiredOptions& opts);
// A local volume's root and the directories mounted from it.
struct NodeVolumeRoot {
  std::string path;              // on the node, normalized: the PersistentVolume's local.path
  bool read_only = true;         // every directory under it is read-only
  std::vector<NodeVolume> dirs;  // in AgentNodeVolumes order
  // The pod volume's name: "node-dirs", then "node-dirs-2"... in AgentNodeVolumeRoots order.
  std::string volume_name;
};
// The roots for `job` on any node (the same on every node), in the order of their first
// directory: one per allowed prefix holding a directory, read-only and written
// directories together (a path outside every prefix, which CheckNodePaths refuses first,
// gets its own).
std::vector<NodeVolumeRoot> AgentNodeVolumeRoots(const JobSpec& spec, const DesiredOptions& opts);
// `dir` relative to `root` ("" when equal): the subPath of a mount.
std::string NodeVolumeSubPath(const NodeVolumeRoot& root, const NodeVolume& dir);
// The job's own state directory below the state root: "<namespace>/<job>".
std::string AgentStateSubPath(const Json& job);
// OK when `path` is absolute, has no empty, "." or ".." component, and is equal to or
// below one of `prefixes`. Otherwise INVALID_ARGUMENT naming `field`, the path and the
// prefixes (what to change).
Status CheckHostPath(const std::string& field, const std::string& path,
                     const std::vector<std::string>& prefixes);
// CheckHostPath for spec.model.path and spec.data.path.
Status CheckNodePaths(const JobSpec& spec, const DesiredOptions& opts);
// Deterministic names, unique per (namespace, job, node, root path): a changed root makes
// new objects instead of an immutable-field update.
std::string NodeVolumeClaimName(const Json& job, const std::string& node, const NodeVolumeRoot& r);
std::string NodePersistentVolumeName(const Json& job, const std::string& node, const NodeVolumeRoot& r);
// `hostname` is the node's kubernetes.io/hostname label (the node name when absent).
Json DesiredNodePersistentVolume(const Json& job, const std::string& node, const std::string& hostname,
                                 const NodeVolumeRoot& r);
Json DesiredNodeVolumeClaim(const Json& job, const std::string& node, const NodeVolumeRoot& r);
// Label selector of every PersistentVolume made for a job (they carry no owner reference:
// a cluster-scoped object cannot be owned by a namespaced one; the finalizer deletes them).
std::string NodePersistentVolumeSelector(const Json& job);

// --- Node state removal ------------------------------------------------------------
// When the job is deleted, its agent state on each node that trained (<state root>/
// <namespace>/<job>: the global models, the feedback log of inference requests, residuals)
// is removed, not left on the node: the finalizer runs one pod per node holding the job's
// state-root claim, once that node's agent pod is gone. The pod is the init container's
// twin (the agent image, the restricted securityContext, only the state root mounted, a
// fixed command no job field reaches: `fedge-agent --remove-state-dir`, which removes the
// directory without following links), pinned to the node like the agent pod and
// tolerating every taint (a cordoned or NotReady-tolerating node still holds the data).
inline constexpr const char* kRoleStateCleanup = "state-cleanup";
// How long after the deletion request the finalizer waits for every node's cleanup
// before it lets the job go and reports the nodes whose state was left (event
// NodeStateLeft): an unreachable node must not hold the job for ever.
inline constexpr std::time_t kNodeStateCleanupTimeoutSeconds = 180;
std::string StateCleanupPodName(const Json& job, const std::string& node);
// The state root among `spec`'s node volume roots (the one holding the state
// directory), or nullptr.
const NodeVolumeRoot* StateVolumeRoot(const std::vector<NodeVolumeRoot>& roots);
Json DesiredStateCleanupPod(const Json& job, const JobSpec& spec, const std::string& node,
                            const DesiredOptions& opts);
// Deferred state removal: a node that is not Ready (or no longer in the cluster) when the
// job is deleted cannot run its cleanup then, and its state must not stay for ever. The
// finalizer leaves a record that outlives the job: the node's cleanup pod, made without an
// owner and held by the scheduling gate kStateCleanupGate, and the node's state-root claim,
// its owner reference removed (so neither is collected with the job). Both carry the label
// kLabelStateCleanup=deferred and the job's uid; the claim names the pod
// (kAnnotationStateCleanupPod). The operator lifts the gate once the node is Ready and no
// agent pod of the job is left on it (JobReconciler::ReconcileDeferredCleanup), then
// deletes the pod, the claim and its volume when the pod has ended, with an event on the
// pod: NodeStateRemoved, or NodeStateLeft when it failed or was deleted before it ran.
inline constexpr const char* kLabelStateCleanup = "fedge.io/state-cleanup";
inline constexpr const char* kStateCleanupDeferred = "deferred";
inline constexpr const char* kAnnotationStateCleanupPod = "fedge.io/state-cleanup-pod";
inline constexpr const char* kStateCleanupGate = "fedge.io/node-back";
// `claim_name`: the state-root claim it mounts; "" for the node's (NodeVolumeClaimName).
Json DesiredDeferredStateCleanupPod(const Json& job, const JobSpec& spec, const std::string& node,
                                    const DesiredOptions& opts, const std::string& claim_name = "");
// The merge patch that turns a cleanup pod the finalizer made earlier (owned by the job)
// into a deferred one; and the one that hands the node's state-root claim to the record.
Json DeferStateCleanupPodPatch(const Json& job);
Json DeferStateClaimPatch(const Json& job, const std::string& pod_name);
// True for a pod or claim of that record.
bool DeferredStateCleanup(const Json& obj);
// A foreground deletion (`kubectl delete --cascade=foreground`, Argo CD's default, the
// operator's own ttlSecondsAfterFinished) makes the garbage collector delete the job's
// children before the job, the node claims among them, so no cleanup pod can mount one.
// Their volumes stay (Retain; no owner): once a node's state-root claim has gone (its
// volume Released), the finalizer makes the record of that node as for a node that was
// away, with a new claim of the same name bound to the same volume
// (DesiredStateRecordClaim; ReleasedVolumeRebindPatch drops the old claim's uid from the
// volume's claimRef so that the new one binds) and the pod annotated with the cause.
inline constexpr const char* kAnnotationStateCleanupCause = "fedge.io/state-cleanup-cause";
inline constexpr const char* kStateCleanupCauseForeground = "foreground-deletion";
Json DesiredStateRecordClaim(const Json& job, const std::string& node, const NodeVolumeRoot& r,
                             const std::string& pod_name);
Json ReleasedVolumeRebindPatch();
// A foreground deletion that took the state-root claim of a node that is away: that claim
// goes only once the node's kubelet is back and has stopped the agent (the pod still uses
// it), after the job has gone, so no record can take it over. The record gets its own: a
// second volume for the same node directory (StateRecordVolume: the job's volume for that
// node copied, the record's label added, pre-bound to the record's claim), a claim of its
// own name (DesiredOwnStateRecordClaim) and the gated pod mounting it
// (DesiredDeferredStateCleanupPod with `claim_name`). The job's volume goes with the old
// claim, as every other.
std::string StateRecordClaimName(const Json& job, const std::string& node, const NodeVolumeRoot& r);
std::string StateRecordVolumeName(const Json& job, const std::string& node, const NodeVolumeRoot& r);
Json StateRecordVolume(const Json& job, const Json& volume, const std::string& node, const NodeVolumeRoot& r);
Json DesiredOwnStateRecordClaim(const Json& job, const std::string& node, const NodeVolumeRoot& r,
                                const std::string& pod_name);

// --- Aggregator checkpoints ----------------------------------------------------------
// spec.aggregator.checkpoint: enabled (default true) keeps checkpoints on a
// PersistentVolumeClaim so a replaced aggregator pod resumes: claimName names an existing
// claim, else the operator makes <job>-checkpoints (storageClassName, default: the
// cluster's default StorageClass; size, default 1Gi). enabled: false uses an emptyDir
// (a failed aggregator pod then restarts the job from round 0).
// The claim the aggregator mounts, or "" for an emptyDir.
std::string CheckpointClaimName(const Json& job);
// The claim the operator makes, or null when the user names one or checkpoints are off.
Json DesiredCheckpointClaim(const Json& job);

// --- Inference API and network policies ------------------------------------------------
// <job>-inference-token: one random bearer token for the agents' inference API, mounted
// read-only into every agent pod (--api-token-file). Kept apart from the credentials so a
// client may be granted this Secret alone.
std::string ApiTokenSecretName(const Json& job);
Json DesiredApiTokenSecret(const Json& job, const std::string& token);
// <job>-agents: the serving port admits pods of the job's namespace, pods labelled
// fedge.io/inference-client=true in any namespace, and the monitoring namespaces.
// <job>-aggregator: the gRPC port admits only this job's agents; the HTTP port
// (/metrics, /v1/status) the job's namespace and the monitoring namespaces.
Json DesiredAgentNetworkPolicy(const Json& job, const JobSpec& spec, const DesiredOptions& opts);
Json DesiredAgentNetworkPolicy(const Json& job, const DesiredOptions& opts);
Json DesiredAggregatorNetworkPolicy(const Json& job, const DesiredOptions& opts);
std::string AgentNetworkPolicyName(const Json& job);

// Agent pods made by an operator before session 33 pass `--aggregator
// <job>-aggregator.<ns>.svc:7070` and resolve that name; <job>-agents admits no DNS now.
// Until they are replaced (a share at a time) the operator labels them
// kLabelResolvesAggregatorByName=true and <job>-agents-dns lets the pods so labelled
// query the cluster DNS (opts.dns_namespace, opts.dns_pod_labels, port 53); the policy
// is deleted once no such pod is left.
inline constexpr const char* kLabelResolvesAggregatorByName = "fedge.io/resolves-aggregator-by-name";
bool AgentResolvesAggregatorByName(const Json& pod);
std::string AgentDnsNetworkPolicyName(const Json& job);
Json DesiredAgentDnsNetworkPolicy(const Json& job, const DesiredOptions& opts);

// Removes the operator-only fields (spec.aggregator, agents.tolerationSeconds,
// agents.resources) so the rest parses with fedge::ParseJobSpec, which is strict, and
// states privacy.tls as TlsEnabled decides it (the parser's default, true, too).
Json ManifestForParser(const Json& job);
// fedge::ParseJobSpec(ManifestForParser(job)): the typed spec the builders read. A job
// that does not parse (the planner never builds children for one) gives JobSpec{}.
JobSpec OperatorJobSpec(const Json& job);

std::string Base64Encode(const std::string& in);
std::string Base64Decode(const std::string& in);

}  // namespace fedge::op
