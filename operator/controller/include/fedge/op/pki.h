// Per-job credentials made with OpenSSL: a CA, the aggregator's serving certificate
// signed by it, and random bearer tokens for agents.
#pragma once

#include <string>
#include <vector>

#include "fedge/status.h"

namespace fedge::op {

struct KeyPair {
  std::string cert_pem;
  std::string key_pem;
};

// A self-signed CA (EC P-256, 10 years) with the given common name.
StatusOr<KeyPair> GenerateCa(const std::string& common_name);
// A serving certificate (EC P-256, 1 year) for `dns_names` signed by `ca`.
StatusOr<KeyPair> IssueServingCert(const KeyPair& ca, const std::string& common_name,
                                   const std::vector<std::string>& dns_names);
// 32 random bytes, hex-encoded (RAND_bytes).
StatusOr<std::string> RandomToken();

}  // namespace fedge::op
