// `fedge run`'s credentials for privacy.tls: see run_pki.h.
#include "fedge/cli/run_pki.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "fedge/cli/io.h"
#include "fedge/pki.h"

namespace fedge::cli {
namespace fs = std::filesystem;

RunPkiPaths PkiPaths(const RunPlan& plan) {
  RunPkiPaths p;
  p.dir = plan.work_dir + "/pki";
  p.ca_cert = p.dir + "/ca.crt";
  p.aggregator_cert = p.dir + "/aggregator.crt";
  p.aggregator_key = p.dir + "/aggregator.key";
  return p;
}

Status WriteRunPki(const RunPlan& plan, std::time_t now) {
  const RunPkiPaths paths = PkiPaths(plan);
  // A fresh directory each run: an earlier run's keys (more agents, another CA) go.
  std::error_code ec;
  fs::remove_all(paths.dir, ec);
  if (ec) return InternalError("cannot remove " + paths.dir + ": " + ec.message());
  if (::mkdir(paths.dir.c_str(), 0700) != 0) {
    return InternalError("cannot create " + paths.dir + ": " + std::strerror(errno));
  }

  FEDGE_ASSIGN_OR_RETURN(pki::KeyPair ca_pair, pki::GenerateCa("fedge run " + plan.spec.Key(), now));
  FEDGE_ASSIGN_OR_RETURN(pki::CertificateAuthority ca, pki::CertificateAuthority::Load(ca_pair));
  FEDGE_ASSIGN_OR_RETURN(pki::KeyPair serving,
                         ca.IssueServingCert("fedge-aggregator", {kRunTlsServerName}, now));
  auto write = [](const std::string& path, const std::string& pem, unsigned mode) {
    return WriteWholeFile(path, pem, mode).WithContext("fedge run's TLS credentials");
  };
  FEDGE_RETURN_IF_ERROR(write(paths.ca_cert, ca_pair.cert_pem, 0644));
  FEDGE_RETURN_IF_ERROR(write(paths.aggregator_cert, serving.cert_pem, 0644));
  FEDGE_RETURN_IF_ERROR(write(paths.aggregator_key, serving.key_pem, 0600));
  for (int i = 0; i < plan.agents; ++i) {
    const std::string id = AgentId(plan, i);
    FEDGE_ASSIGN_OR_RETURN(pki::KeyPair client, ca.IssueClientCert(id, now, kRunCertLifetimeSeconds));
    FEDGE_RETURN_IF_ERROR(write(paths.AgentCert(id), client.cert_pem, 0644));
    FEDGE_RETURN_IF_ERROR(write(paths.AgentKey(id), client.key_pem, 0600));
  }
  return OkStatus();
}

}  // namespace fedge::cli
