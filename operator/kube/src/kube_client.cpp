#include "fedge/op/kube_client.h"

namespace fedge::op {

std::string Resource::BasePath() const {
  return api_version.find('/') == std::string::npos ? "/api/" + api_version : "/apis/" + api_version;
}

std::string Resource::CollectionPath(const std::string& ns) const {
  if (namespaced && !ns.empty()) return BasePath() + "/namespaces/" + ns + "/" + plural;
  return BasePath() + "/" + plural;
}

std::string Resource::ObjectPath(const std::string& ns, const std::string& name) const {
  return CollectionPath(ns) + "/" + name;
}

namespace res {
const Resource kPods{"v1", "pods", "Pod", true};
const Resource kServices{"v1", "services", "Service", true};
const Resource kSecrets{"v1", "secrets", "Secret", true};
const Resource kConfigMaps{"v1", "configmaps", "ConfigMap", true};
const Resource kNodes{"v1", "nodes", "Node", false};
const Resource kEvents{"v1", "events", "Event", true};
const Resource kServiceAccounts{"v1", "serviceaccounts", "ServiceAccount", true};
const Resource kRoles{"rbac.authorization.k8s.io/v1", "roles", "Role", true};
const Resource kRoleBindings{"rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding", true};
const Resource kLeases{"coordination.k8s.io/v1", "leases", "Lease", true};
const Resource kPersistentVolumes{"v1", "persistentvolumes", "PersistentVolume", false};
const Resource kPersistentVolumeClaims{"v1", "persistentvolumeclaims", "PersistentVolumeClaim", true};
const Resource kNetworkPolicies{"networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", true};
const Resource kJobs{"fedge.io/v1alpha1", "federatedtrainingjobs", "FederatedTrainingJob", true};
}  // namespace res

StatusOr<ListResult> ListAll(KubeClient& client, const Resource& r, const std::string& ns, ListOptions opts) {
  ListResult all;
  opts.continue_token.clear();
  while (true) {
    FEDGE_ASSIGN_OR_RETURN(ListResult page, client.List(r, ns, opts));
    for (auto& item : page.items) all.items.push_back(std::move(item));
    // The list's resourceVersion is that of the first page: the snapshot continues.
    if (all.resource_version.empty()) all.resource_version = page.resource_version;
    if (page.continue_token.empty()) break;
    opts.continue_token = page.continue_token;
    opts.resource_version.clear();  // the continue token pins the snapshot
  }
  return all;
}

Status KubeError(const std::string& reason, int http_code, const std::string& message) {
  StatusCode code = StatusCode::kUnknown;
  if (reason == "NotFound")
    code = StatusCode::kNotFound;
  else if (reason == "AlreadyExists")
    code = StatusCode::kAlreadyExists;
  else if (reason == "Conflict")
    code = StatusCode::kAborted;
  else if (reason == "Invalid" || reason == "BadRequest")
    code = StatusCode::kInvalidArgument;
  else if (reason == "Gone" || reason == "Expired")
    code = StatusCode::kOutOfRange;
  else if (reason == "Forbidden")
    code = StatusCode::kPermissionDenied;
  else if (reason == "Unauthorized")
    code = StatusCode::kUnauthenticated;
  else if (reason == "MethodNotAllowed" || reason == "NotAcceptable" || reason == "UnsupportedMediaType")
    code = StatusCode::kUnimplemented;
  else if (reason == "Timeout" || reason == "ServerTimeout")
    code = StatusCode::kDeadlineExceeded;
  else if (reason == "TooManyRequests" || reason == "ServiceUnavailable")
    code = StatusCode::kUnavailable;
  else if (reason == "InternalError")
    code = StatusCode::kInternal;
  else if (http_code == 404)
    code = StatusCode::kNotFound;
  else if (http_code == 409)
    code = StatusCode::kAborted;
  else if (http_code == 410)
    code = StatusCode::kOutOfRange;
  else if (http_code == 422)
    code = StatusCode::kInvalidArgument;
  else if (http_code >= 500)
    code = StatusCode::kUnavailable;
  std::string r = reason.empty() ? ("HTTP" + std::to_string(http_code)) : reason;
  return Status(code, r + ": " + message);
}

std::string KubeReason(const Status& s) {
  if (s.ok()) return "";
  const std::string& m = s.message();
  size_t colon = m.find(':');
  if (colon == std::string::npos) return "";
  std::string r = m.substr(0, colon);
  for (char c : r)
    if (!std::isalnum(static_cast<unsigned char>(c))) return "";
  return r;
}

bool IsNotFound(const Status& s) { return s.code() == StatusCode::kNotFound; }
bool IsAlreadyExists(const Status& s) { return s.code() == StatusCode::kAlreadyExists; }
bool IsConflict(const Status& s) { return KubeReason(s) == "Conflict"; }
bool IsGone(const Status& s) {
  auto r = KubeReason(s);
  return r == "Gone" || r == "Expired";
}
bool IsInvalid(const Status& s) { return KubeReason(s) == "Invalid"; }

}  // namespace fedge::op
