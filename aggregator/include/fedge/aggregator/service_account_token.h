// Kubernetes projected service-account tokens as agent credentials at Join.
//
// The kubelet mounts into each agent pod a JWT (RFC 7519) that the cluster's
// service-account issuer signed (JWS compact form, RFC 7515): audience chosen by
// the operator, bound to the pod, rotated by the kubelet. The aggregator checks it
// locally against the issuer's public keys (a JWKS, RFC 7517, as served by the API
// server's /openid/v1/jwks and written to a file): no API call, so Joins keep
// working while the control plane is unreachable. The price: no TokenReview, so a
// token of a deleted pod stays valid until its exp.
//
// What a token must be, in the order it is checked (cheap first, the signature
// before any claim is read):
//   at most kMaxServiceAccountTokenBytes; three strict base64url parts
//   header alg RS256 or ES256 (never none or HS*), kid selects the key (no kid:
//     every key of the alg's type is tried); the key's kty (and alg, if given)
//     match; RSA keys of fewer than 2048 bits are never used
//   signature valid (ES256: raw r||s, RFC 7518 3.4)
//   iss == policy.issuer; aud (string or array) contains policy.audience
//   exp present and now < exp + leeway; nbf and iat (if present) <= now + leeway
//   kubernetes.io.namespace / .serviceaccount.name == the policy's
//   kubernetes.io.pod.name present (a token bound to a pod)
//   kubernetes.io.node.name present and == the agent id of the Join (the operator
//     names agents after their nodes)
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "fedge/aggregator/clock.h"
#include "fedge/file_util.h"
#include "fedge/status.h"

namespace fedge::aggregator {

// Larger tokens are refused before anything is decoded (a bound token is ~1 KB).
inline constexpr size_t kMaxServiceAccountTokenBytes = 16u << 10;
// Clock skew tolerated on exp, nbf and iat.
inline constexpr int64_t kServiceAccountTokenLeewaySeconds = 60;
// Larger JWKS files are refused (the API server's holds a few keys: ~1 KB each).
inline constexpr size_t kMaxJwksBytes = 1u << 20;

// What an agent's token must name besides a valid signature.
struct ServiceAccountTokenPolicy {
  std::string issuer;           // iss, exactly (e.g. https://kubernetes.default.svc.cluster.local)
  std::string audience;         // one of aud
  std::string namespace_name;   // kubernetes.io.namespace
  std::string service_account;  // kubernetes.io.serviceaccount.name
};

// Splits "NAMESPACE/NAME" into the policy's namespace_name and service_account.
// INVALID_ARGUMENT unless both parts are non-empty and there is exactly one '/'.
Status ParseServiceAccountName(const std::string& text, ServiceAccountTokenPolicy* policy);

// The claims of a verified token, for the Join log.
struct ServiceAccountClaims {
  std::string pod_name;
  std::string pod_uid;
  std::string node_name;
  int64_t expires_unix_s = 0;
  int64_t issued_unix_s = 0;  // iat; 0 when the token has none
};

// A parsed JWKS: the public keys tokens may be signed with. Immutable; share it
// between threads freely.
class JsonWebKeySet {
 public:
  struct Key;  // an EVP_PKEY with its kid, kty and alg (service_account_token.cpp)

  // Parses {"keys": [...]}: RSA (n, e) and EC P-256 (x, y) keys. Keys with
  // another kty or curve, or "use" other than "sig", are skipped; RSA keys under
  // 2048 bits are kept only to name them when a token asks for one.
  // INVALID_ARGUMENT (saying what is wrong) for malformed JSON, a malformed key
  // of a supported type, or no usable key at all.
  static StatusOr<std::shared_ptr<const JsonWebKeySet>> Parse(std::string_view json);

  ~JsonWebKeySet();
  size_t usable_keys() const;

  // Verifies `token` (see the file comment) for `agent_id` at `now_unix_ms`.
  // UNAUTHENTICATED for a token that is malformed, too large, badly signed,
  // expired or not yet valid, or names another issuer, audience, namespace or
  // service account, or no pod or node; UNAVAILABLE when its kid is not in this
  // set (the issuer may have rotated its key and the JWKS file not caught up:
  // retry); PERMISSION_DENIED for a valid token whose node is another agent.
  // `reason` (optional) gets a short label for metrics ("signature", "expired",
  // "node", ...). Never throws; never logs the token. Thread-safe.
  StatusOr<ServiceAccountClaims> Verify(std::string_view token, const ServiceAccountTokenPolicy& policy,
                                        const std::string& agent_id, int64_t now_unix_ms,
                                        std::string_view* reason = nullptr) const;

 private:
  JsonWebKeySet() = default;
  std::vector<std::unique_ptr<Key>> keys_;
};

// A JWKS file that may change while the aggregator runs (the issuer rotates its
// signing keys; the operator rewrites the file). Like TokenFile (tokens.h):
// Verify stats the file (device, inode, size, mtime, following symlinks) at most
// once per `min_recheck_ms` of the injected clock and re-reads it when any of
// those changed. A changed file that is unreadable, too large, invalid or has no
// usable key is logged and ignored: the previous keys stay in force (a
// half-written file must not lock every agent out). Thread-safe.
class ServiceAccountTokenVerifier {
 public:
  // Reads the file once. INVALID_ARGUMENT for an invalid or keyless JWKS or an
  // incomplete policy, NOT_FOUND/... from reading it. `clock` must outlive the
  // object.
  static StatusOr<std::unique_ptr<ServiceAccountTokenVerifier>> Open(std::string jwks_path,
                                                                     ServiceAccountTokenPolicy policy,
                                                                     const Clock* clock,
                                                                     int64_t min_recheck_ms = 1000);

  // JsonWebKeySet::Verify with the current keys and the clock's now. The
  // signature check runs outside the lock.
  StatusOr<ServiceAccountClaims> Verify(std::string_view token, const std::string& agent_id,
                                        std::string_view* reason = nullptr);

  // Looks at the file now (ignoring the rate limit) and re-reads it if it
  // changed. Returns whether new keys were installed.
  bool Refresh();

  size_t usable_keys() const;
  int64_t reloads() const;  // successful re-reads after Open
  const std::string& path() const { return path_; }
  const Clock* clock() const { return clock_; }
  const ServiceAccountTokenPolicy& policy() const { return policy_; }

 private:
  ServiceAccountTokenVerifier(std::string path, ServiceAccountTokenPolicy policy, const Clock* clock,
                              int64_t min_recheck_ms)
      : path_(std::move(path)), policy_(std::move(policy)), clock_(clock), min_recheck_ms_(min_recheck_ms) {}
  static StatusOr<FileId> Stat(const std::string& path);
  static StatusOr<std::shared_ptr<const JsonWebKeySet>> Load(const std::string& path, const FileId& id);
  bool RefreshLocked();  // requires mu_

  const std::string path_;
  const ServiceAccountTokenPolicy policy_;
  const Clock* const clock_;
  const int64_t min_recheck_ms_;
  mutable std::mutex mu_;
  std::shared_ptr<const JsonWebKeySet> keys_;  // guarded by mu_; never null after Open
  FileId id_;                                  // guarded by mu_
  FileId refused_id_;                          // guarded by mu_; the last version ignored (logged once)
  int64_t last_check_ms_ = 0;                  // guarded by mu_
  int64_t reloads_ = 0;                        // guarded by mu_
};

}  // namespace fedge::aggregator
