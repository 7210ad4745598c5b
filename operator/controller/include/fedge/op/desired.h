// Desired children of a FederatedTrainingJob as pure functions of the job (and the
// nodes that match it): sample-controller's newDeployment(foo), one function per child.
// Nothing here talks to the API; the reconciler applies what these return.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "fedge/op/informer.h"
#include "fedge/op/kube_client.h"

namespace fedge::op {

inline constexpr const char* kLabelJob = "fedge.io/job";
inline constexpr const char* kLabelRole = "fedge.io/role";
inline constexpr const char* kAnnotationNode = "fedge.io/node";
inline constexpr const char* kFinalizer = "fedge.io/cleanup";
inline constexpr const char* kFieldManager = "fedge-operator";
inline constexpr const char* kReporterFieldManager = "fedge-aggregator";
inline constexpr int kAggregatorGrpcPort = 7070;
inline constexpr int kAggregatorHttpPort = 9090;
inline constexpr const char* kConfigMountPath = "/etc/fedge/job";
inline constexpr const char* kSecretMountPath = "/etc/fedge/secret";
inline constexpr const char* kCheckpointMountPath = "/var/lib/fedge/checkpoints";
inline constexpr const char* kStateMountPath = "/var/lib/fedge/state";
inline constexpr const char* kServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount";

struct Images {
  std::string aggregator;  // runs fedge-aggregator
  std::string agent;       // runs fedge-agent
  std::string reporter;    // runs `fedge-operator report-status`
};
Images DefaultImages();  // fedge/<component>:<fedge::Version()>

// Child names (deterministic: a restarted operator finds what it created).
std::string SecretName(const Json& job);            // <job>-credentials
std::string ConfigMapName(const Json& job);         // <job>-config
std::string AggregatorName(const Json& job);        // <job>-aggregator (pod, service, SA, role)
std::string InferenceServiceName(const Json& job);  // <job>-inference
std::string AgentPodName(const Json& job, const std::string& node);
// Secret data key holding the agent's token.
std::string TokenKey(const std::string& agent_id);

// ownerReference to the job with controller=true, blockOwnerDeletion=true.
Json OwnerReference(const Json& job);

// Nodes matching spec.agents.nodeSelector, sorted by name, capped by maxAgents.
std::vector<std::string> SelectNodes(const Json& job, const std::vector<ObjectPtr>& nodes);
// True when the node's Ready condition is True.
bool NodeReady(const Json& node);

// The secret's contents before encoding.
struct Credentials {
  std::string ca_crt, ca_key, tls_crt, tls_key;
  std::map<std::string, std::string> tokens;  // agent id -> token
};
// Parses a Secret read from the API (base64 data) back into Credentials.
Credentials CredentialsFromSecret(const Json& secret);

Json DesiredSecret(const Json& job, const Credentials& creds);
Json DesiredConfigMap(const Json& job, const std::string& manifest_yaml);
Json DesiredServiceAccount(const Json& job);
// May get and patch only its own job's status (resourceNames).
Json DesiredRole(const Json& job);
Json DesiredRoleBinding(const Json& job);
Json DesiredAggregatorService(const Json& job);
Json DesiredInferenceService(const Json& job);
Json DesiredAggregatorPod(const Json& job, int expected_agents, const Images& images);
Json DesiredAgentPod(const Json& job, const std::string& node, const Images& images);

// Removes the operator-only fields (spec.aggregator, agents.tolerationSeconds,
// agents.resources) so the rest parses with fedge::ParseJobSpec, which is strict.
Json ManifestForParser(const Json& job);

std::string Base64Encode(const std::string& in);
std::string Base64Decode(const std::string& in);

}  // namespace fedge::op
