// `fedge run` with privacy.tls: the run's own credentials. A CA made for this run
// (its key never leaves the `fedge run` process), the aggregator's serving
// certificate for kRunTlsServerName, and one client certificate per agent naming it
// (urn:fedge:agent:<id>, as the operator issues them), so the aggregator serves gRPC
// over mutual TLS and binds every Join to the agent whose key made the connection.
// Any local process can reach 127.0.0.1; only the holders of these files can join.
//
// RunPkiPaths is pure; WriteRunPki writes WORK/pki (0700, keys 0600).
#pragma once

#include <ctime>
#include <string>

#include "fedge/cli/run_plan.h"
#include "fedge/status.h"

namespace fedge::cli {

// The name the serving certificate carries and the agents check (--tls-server-name):
// they dial 127.0.0.1, which is not a DNS name a certificate verifier matches.
inline constexpr const char* kRunTlsServerName = "localhost";

// How long the run's certificates are valid. Nothing renews them during a run and a
// `--serve` run may last long; the next run makes a new CA, which no earlier
// certificate chains to.
inline constexpr std::time_t kRunCertLifetimeSeconds = 365 * 24 * 3600;

struct RunPkiPaths {
  std::string dir;      // WORK/pki
  std::string ca_cert;  // the run's CA certificate (no key on disk)
  std::string aggregator_cert;
  std::string aggregator_key;
  std::string AgentCert(const std::string& agent_id) const { return dir + "/" + agent_id + ".crt"; }
  std::string AgentKey(const std::string& agent_id) const { return dir + "/" + agent_id + ".key"; }
};
RunPkiPaths PkiPaths(const RunPlan& plan);

// Makes the run's CA, the aggregator's serving certificate and every agent's client
// certificate (AgentId(plan, i)) valid from `now`, and writes them under
// PkiPaths(plan).dir, replacing what an earlier run left there.
Status WriteRunPki(const RunPlan& plan, std::time_t now);

}  // namespace fedge::cli
