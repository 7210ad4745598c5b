// Per-job credentials made with OpenSSL: a CA, the aggregator's serving certificate
// and each agent's short-lived client certificate signed by it, and random bearer
// tokens for agents. The operator makes them for a job in a cluster; `fedge run` for
// a job of local processes with privacy.tls (cli/src/run_pki.cpp).
//
// Agent identity in a client certificate (what fedge-aggregator binds a Join to,
// aggregator/include/fedge/aggregator/peer_identity.h): a URI subject alternative
// name kAgentUriPrefix + the percent-encoded agent id, always present, and a common
// name that is the id itself when it fits X.509's 64-character limit
// (ub-common-name), else CommonName's shortened, hashed form. Agent ids are
// node names (up to 253 characters), so a long one must still get a certificate.
#pragma once

#include <ctime>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/status.h"

namespace fedge::pki {

struct KeyPair {
  std::string cert_pem;
  std::string key_pem;
};

inline constexpr const char* kAgentUriPrefix = "urn:fedge:agent:";
// X.509's upper bound for a common name (RFC 5280 ub-common-name).
inline constexpr size_t kMaxCommonNameLength = 64;
// Certificates start this long before they are issued (clock skew between the
// operator and the nodes); client certificates by at most a tenth of their lifetime.
inline constexpr std::time_t kCertBackdateSeconds = 300;

// Every common name below goes through CommonName: a name over 64 characters is never
// dropped (OpenSSL refuses it, and the old code ignored the refusal, leaving an empty
// subject) but shortened; what identifies the holder is in the subject alternative
// names.

// Every issuing function takes `now` (wall-clock seconds since the epoch) from the
// caller's Clock (clock.h: Clock::WallNow), never reads the time itself, so lifetimes
// and renewal are tested with a FakeClock.

// A self-signed CA (EC P-256), valid from now - kCertBackdateSeconds to now + 10 years,
// with the given common name.
StatusOr<KeyPair> GenerateCa(const std::string& common_name, std::time_t now);
// A serving certificate (EC P-256) for `dns_names` signed by `ca`, valid from
// now - kCertBackdateSeconds to now + 1 year.
// INVALID_ARGUMENT for an unreadable CA.
StatusOr<KeyPair> IssueServingCert(const KeyPair& ca, const std::string& common_name,
                                   const std::vector<std::string>& dns_names, std::time_t now);

// A client certificate (EC P-256, extendedKeyUsage clientAuth) for `agent_id`, valid
// from now - min(kCertBackdateSeconds, lifetime_seconds / 10) to now + lifetime_seconds,
// signed by `ca`.
// INVALID_ARGUMENT for an empty id, a lifetime under 60 s, or an unreadable CA.
StatusOr<KeyPair> IssueClientCert(const KeyPair& ca, const std::string& agent_id, std::time_t now,
                                  std::time_t lifetime_seconds);
// `name` when it has at most 64 characters; otherwise its first 47 characters, '~'
// and 16 hex digits of its SHA-256 (64 in all, distinct for distinct names).
std::string CommonName(const std::string& name);
// kAgentUriPrefix + agent_id with every byte outside [A-Za-z0-9._~-] as %XX.
std::string AgentUri(const std::string& agent_id);

// What the operator reads back from a certificate it issued.
struct CertInfo {
  std::time_t not_before = 0;
  std::time_t not_after = 0;
  std::string common_name;
  std::string agent_id;  // from the kAgentUriPrefix URI name ("" when absent)
  std::string serial;    // hex
};
// INVALID_ARGUMENT when `cert_pem` is not a PEM certificate.
StatusOr<CertInfo> ReadCert(const std::string& cert_pem);
// True when `cert_pem` is signed by `ca_cert_pem`'s key (false when either is unreadable).
bool SignedBy(const std::string& cert_pem, const std::string& ca_cert_pem);
// True when `key_pem` is the private key of `cert_pem`.
bool KeyMatchesCert(const std::string& cert_pem, const std::string& key_pem);

// A CA decoded once to issue many certificates. Decoding the private key through OpenSSL
// 3's decoders takes about a millisecond, more than generating and signing a client
// certificate, and the operator issues one per agent: at 1,000 nodes a pass decoded the
// same CA key 1,000 times (a fifth of the operator's CPU in perf). Issuing is
// thread-safe: the decoded certificate and key are only read. Copies share them.
class CertificateAuthority {
 public:
  // INVALID_ARGUMENT for an unreadable certificate or key, or a key that is not the
  // certificate's.
  static StatusOr<CertificateAuthority> Load(const KeyPair& ca);

  // As the free functions above, signed by this CA. IssueClientCert fills `info`, when
  // given, with what ReadCert would read from the certificate, without parsing it.
  StatusOr<KeyPair> IssueServingCert(const std::string& common_name,
                                     const std::vector<std::string>& dns_names, std::time_t now) const;
  StatusOr<KeyPair> IssueClientCert(const std::string& agent_id, std::time_t now,
                                    std::time_t lifetime_seconds, CertInfo* info = nullptr) const;

 private:
  struct Decoded;
  explicit CertificateAuthority(std::shared_ptr<const Decoded> d) : d_(std::move(d)) {}
  std::shared_ptr<const Decoded> d_;
};

// When a certificate valid over [not_before, not_after] is renewed: once less than a
// third of its lifetime remains, at not_after - (not_after - not_before) / 3.
std::time_t RenewalTime(const CertInfo& cert);

// 32 random bytes, hex-encoded (RAND_bytes).
StatusOr<std::string> RandomToken();

// Lowercase hex SHA-256 of `bytes` (64 digits): the operator's one digest (content hashes
// in annotations, short name suffixes: callers take a prefix).
std::string HexSha256(std::string_view bytes);

}  // namespace fedge::pki
