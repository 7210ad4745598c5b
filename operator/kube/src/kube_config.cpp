#include "fedge/op/kube_config.h"

#include <openssl/evp.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <yaml-cpp/yaml.h>

namespace fedge::op {
namespace {

StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

StatusOr<std::string> Base64Decode(const std::string& in) {
  std::string clean;
  for (char c : in)
    if (!std::isspace(static_cast<unsigned char>(c))) clean.push_back(c);
  if (clean.size() % 4 != 0) return InvalidArgumentError("base64 length is not a multiple of 4");
  std::string out(clean.size() / 4 * 3, '\0');
  int n =
      EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                      reinterpret_cast<const unsigned char*>(clean.data()), static_cast<int>(clean.size()));
  if (n < 0) return InvalidArgumentError("invalid base64");
  size_t pad = 0;
  if (!clean.empty() && clean.back() == '=') ++pad;
  if (clean.size() > 1 && clean[clean.size() - 2] == '=') ++pad;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::string Resolve(const std::string& base_dir, const std::string& p) {
  if (p.empty() || p[0] == '/') return p;
  return (std::filesystem::path(base_dir) / p).string();
}

// Reads `<key>-data` (base64) or `<key>` (a path) from a kubeconfig map.
StatusOr<std::string> DataOrFile(const YAML::Node& node, const std::string& key,
                                 const std::string& base_dir) {
  if (node[key + "-data"]) {
    auto s = Base64Decode(node[key + "-data"].as<std::string>());
    if (!s.ok()) return s.status().WithContext(key + "-data");
    return s;
  }
  if (node[key]) return ReadFile(Resolve(base_dir, node[key].as<std::string>()));
  return std::string();
}

YAML::Node Named(const YAML::Node& list, const std::string& name, const char* field) {
  if (!list || !list.IsSequence()) return YAML::Node();
  for (const auto& item : list) {
    if (item["name"] && item["name"].as<std::string>() == name) return item[field];
  }
  return YAML::Node();
}

}  // namespace

StatusOr<KubeConfig> LoadKubeConfig(const std::string& path, const std::string& context) {
  FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  try {
    YAML::Node root = YAML::Load(text);
    std::string ctx_name = context;
    if (ctx_name.empty() && root["current-context"]) ctx_name = root["current-context"].as<std::string>();
    if (ctx_name.empty()) return InvalidArgumentError(path + ": no current-context");
    YAML::Node ctx = Named(root["contexts"], ctx_name, "context");
    if (!ctx) return NotFoundError(path + ": context \"" + ctx_name + "\" not found");
    std::string cluster_name = ctx["cluster"] ? ctx["cluster"].as<std::string>() : "";
    std::string user_name = ctx["user"] ? ctx["user"].as<std::string>() : "";
    YAML::Node cluster = Named(root["clusters"], cluster_name, "cluster");
    if (!cluster || !cluster["server"]) {
      return NotFoundError(path + ": cluster \"" + cluster_name + "\" has no server");
    }
    std::string dir = std::filesystem::path(path).parent_path().string();
    KubeConfig cfg;
    cfg.server = cluster["server"].as<std::string>();
    if (ctx["namespace"]) cfg.ns = ctx["namespace"].as<std::string>();
    if (cluster["insecure-skip-tls-verify"])
      cfg.insecure_skip_verify = cluster["insecure-skip-tls-verify"].as<bool>();
    FEDGE_ASSIGN_OR_RETURN(cfg.ca_pem, DataOrFile(cluster, "certificate-authority", dir));
    YAML::Node user = Named(root["users"], user_name, "user");
    if (user) {
      FEDGE_ASSIGN_OR_RETURN(cfg.client_cert_pem, DataOrFile(user, "client-certificate", dir));
      FEDGE_ASSIGN_OR_RETURN(cfg.client_key_pem, DataOrFile(user, "client-key", dir));
      if (user["token"]) cfg.token = user["token"].as<std::string>();
      if (user["tokenFile"]) cfg.token_file = Resolve(dir, user["tokenFile"].as<std::string>());
    }
    if (cfg.client_cert_pem.empty() != cfg.client_key_pem.empty()) {
      return InvalidArgumentError(path + ": user \"" + user_name +
                                  "\" needs both client-certificate and client-key");
    }
    return cfg;
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(path + ": " + e.what());
  }
}

StatusOr<KubeConfig> LoadInClusterConfig(const std::string& sa_dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (!host || !port || !*host || !*port) {
    return FailedPreconditionError("not in a cluster: KUBERNETES_SERVICE_HOST/PORT unset");
  }
  KubeConfig cfg;
  std::string h = host;
  if (h.find(':') != std::string::npos) h = "[" + h + "]";  // IPv6
  cfg.server = "https://" + h + ":" + port;
  cfg.token_file = sa_dir + "/token";
  FEDGE_ASSIGN_OR_RETURN(cfg.token, ReadFile(cfg.token_file));
  FEDGE_ASSIGN_OR_RETURN(cfg.ca_pem, ReadFile(sa_dir + "/ca.crt"));
  auto ns = ReadFile(sa_dir + "/namespace");
  if (ns.ok()) cfg.ns = *ns;
  return cfg;
}

StatusOr<KubeConfig> LoadDefaultConfig(const std::string& kubeconfig_flag) {
  if (!kubeconfig_flag.empty()) return LoadKubeConfig(kubeconfig_flag);
  if (const char* env = std::getenv("KUBECONFIG"); env && *env) {
    std::string first = env;
    first = first.substr(0, first.find(':'));
    return LoadKubeConfig(first);
  }
  auto in_cluster = LoadInClusterConfig();
  if (in_cluster.ok()) return in_cluster;
  if (const char* home = std::getenv("HOME")) {
    std::string p = std::string(home) + "/.kube/config";
    if (std::filesystem::exists(p)) return LoadKubeConfig(p);
  }
  return FailedPreconditionError(
      "no Kubernetes configuration: pass --kubeconfig, set KUBECONFIG, or run in a pod (" +
      in_cluster.status().message() + ")");
}

}  // namespace fedge::op
