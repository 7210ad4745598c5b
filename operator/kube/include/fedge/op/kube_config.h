// Where the API server is and how to authenticate: from a kubeconfig file (the current
// context's cluster and user) or from inside a pod (service-account token and CA).
#pragma once

#include <string>

#include "fedge/status.h"

namespace fedge::op {

struct KubeConfig {
  std::string server;  // "https://host:port"
  std::string ca_pem;  // PEM of the cluster CA; empty: system trust
  bool insecure_skip_verify = false;
  std::string client_cert_pem;  // client certificate authentication
  std::string client_key_pem;
  std::string token;           // bearer token authentication
  std::string token_file;      // re-read on each request (bound tokens rotate)
  std::string ns = "default";  // the context's namespace
};

// Loads `path` (YAML). Resolves the current context (or `context` when non-empty);
// supports certificate-authority(-data), client-certificate(-data), client-key(-data),
// token and tokenFile; relative paths are relative to the kubeconfig's directory.
StatusOr<KubeConfig> LoadKubeConfig(const std::string& path, const std::string& context = "");

// In-cluster: KUBERNETES_SERVICE_HOST/PORT, the service-account token, CA and namespace
// under /var/run/secrets/kubernetes.io/serviceaccount (or `sa_dir`).
StatusOr<KubeConfig> LoadInClusterConfig(
    const std::string& sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount");

// --kubeconfig if given, else $KUBECONFIG, else in-cluster, else ~/.kube/config.
StatusOr<KubeConfig> LoadDefaultConfig(const std::string& kubeconfig_flag);

}  // namespace fedge::op
