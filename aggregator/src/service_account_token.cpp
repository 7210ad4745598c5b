#include "fedge/aggregator/service_account_token.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>

#include "fedge/file_util.h"
#include "fedge/log.h"

namespace fedge::aggregator {

using nlohmann::json;

namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct BnFree {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct ParamBldFree {
  void operator()(OSSL_PARAM_BLD* p) const { OSSL_PARAM_BLD_free(p); }
};
struct ParamFree {
  void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
};
struct EcdsaSigFree {
  void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using BnPtr = std::unique_ptr<BIGNUM, BnFree>;

constexpr int kMinRsaBits = 2048;
constexpr size_t kP256CoordinateBytes = 32;

// Echoes of unverified input are cut short: messages stay readable and bounded.
std::string Quote(std::string_view s) {
  constexpr size_t kMax = 64;
  return "\"" + std::string(s.substr(0, kMax)) + (s.size() > kMax ? "...\"" : "\"");
}

int Base64UrlValue(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

// RFC 7515's base64url: the URL-safe alphabet, no padding, no whitespace, and
// the unused bits of the last character zero (one encoding per byte string).
std::optional<std::string> Base64UrlDecode(std::string_view in) {
  if (in.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    const int v = Base64UrlValue(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
      acc &= (1u << bits) - 1;
    }
  }
  if (acc != 0) return std::nullopt;
  return out;
}

// An object member, or null when `j` is not an object or lacks it.
const json* Member(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

// A string member; "" when absent or not a string.
std::string StringMember(const json& j, const char* key) {
  const json* m = Member(j, key);
  return m != nullptr && m->is_string() ? m->get<std::string>() : std::string();
}

// RFC 7519 NumericDate (seconds; JSON integer or, rarely, a fraction).
std::optional<int64_t> NumericDate(const json* j) {
  if (j == nullptr) return std::nullopt;
  constexpr int64_t kFar = int64_t{1} << 50;  // clamps nonsense without overflow later
  if (j->is_number_unsigned()) return static_cast<int64_t>(std::min<uint64_t>(j->get<uint64_t>(), kFar));
  if (j->is_number_integer()) return std::clamp<int64_t>(j->get<int64_t>(), -kFar, kFar);
  if (j->is_number_float()) {
    const double d = j->get<double>();
    if (!std::isfinite(d)) return std::nullopt;
    return static_cast<int64_t>(std::clamp<double>(std::floor(d), -double(kFar), double(kFar)));
  }
  return std::nullopt;
}

// Builds an EVP_PKEY of `type` ("RSA" | "EC") from `params` (OpenSSL 3 provider API).
PkeyPtr PublicKeyFromParams(const char* type, OSSL_PARAM* params) {
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* pkey = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) {
    ERR_clear_error();
    return nullptr;
  }
  return PkeyPtr(pkey);
}

PkeyPtr RsaPublicKey(const std::string& n, const std::string& e) {
  BnPtr bn_n(
      BN_bin2bn(reinterpret_cast<const unsigned char*>(n.data()), static_cast<int>(n.size()), nullptr));
  BnPtr bn_e(
      BN_bin2bn(reinterpret_cast<const unsigned char*>(e.data()), static_cast<int>(e.size()), nullptr));
  std::unique_ptr<OSSL_PARAM_BLD, ParamBldFree> bld(OSSL_PARAM_BLD_new());
  if (!bn_n || !bn_e || !bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1) {
    ERR_clear_error();
    return nullptr;
  }
  std::unique_ptr<OSSL_PARAM, ParamFree> params(OSSL_PARAM_BLD_to_param(bld.get()));
  return params ? PublicKeyFromParams("RSA", params.get()) : nullptr;
}

PkeyPtr P256PublicKey(const std::string& x, const std::string& y) {
  std::string point = "\x04" + x + y;  // SEC 1 uncompressed point
  std::unique_ptr<OSSL_PARAM_BLD, ParamBldFree> bld(OSSL_PARAM_BLD_new());
  char group[] = "prime256v1";
  if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1) {
    ERR_clear_error();
    return nullptr;
  }
  std::unique_ptr<OSSL_PARAM, ParamFree> params(OSSL_PARAM_BLD_to_param(bld.get()));
  PkeyPtr key = params ? PublicKeyFromParams("EC", params.get()) : nullptr;
  if (!key) return nullptr;
  // A point off the curve would make every signature check meaningless.
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (!check || EVP_PKEY_public_check(check.get()) != 1) {
    ERR_clear_error();
    return nullptr;
  }
  return key;
}

// JWS ES256 signatures are r || s (32 bytes each, RFC 7518 3.4); OpenSSL
// verifies the DER ECDSA-Sig-Value. "" when `raw` is not 64 bytes.
std::string Es256SignatureToDer(const std::string& raw) {
  if (raw.size() != 2 * kP256CoordinateBytes) return "";
  const auto* bytes = reinterpret_cast<const unsigned char*>(raw.data());
  std::unique_ptr<ECDSA_SIG, EcdsaSigFree> sig(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(bytes, kP256CoordinateBytes, nullptr);
  BIGNUM* s = BN_bin2bn(bytes + kP256CoordinateBytes, kP256CoordinateBytes, nullptr);
  if (!sig || !r || !s || ECDSA_SIG_set0(sig.get(), r, s) != 1) {  // set0 owns r and s on success
    BN_free(r);
    BN_free(s);
    ERR_clear_error();
    return "";
  }
  const int n = i2d_ECDSA_SIG(sig.get(), nullptr);
  if (n <= 0) return "";
  std::string der(static_cast<size_t>(n), '\0');
  auto* p = reinterpret_cast<unsigned char*>(der.data());
  i2d_ECDSA_SIG(sig.get(), &p);
  return der;
}

bool VerifySha256(EVP_PKEY* key, std::string_view signed_data, const std::string& signature) {
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> md(EVP_MD_CTX_new());
  const bool ok =
      md && EVP_DigestVerifyInit_ex(md.get(), nullptr, "SHA256", nullptr, nullptr, key, nullptr) == 1 &&
      EVP_DigestVerify(md.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                       reinterpret_cast<const unsigned char*>(signed_data.data()), signed_data.size()) == 1;
  // A failed verification leaves errors on this thread's queue, which gRPC's
  // TLS code on the same thread would otherwise find later.
  ERR_clear_error();
  return ok;
}

// The JWK type an alg needs; "" for algorithms this aggregator never accepts.
std::string_view KeyTypeOf(std::string_view alg) {
  if (alg == "RS256") return "RSA";
  if (alg == "ES256") return "EC";
  return "";
}

}  // namespace

struct JsonWebKeySet::Key {
  std::string kid;
  std::string kty;      // "RSA" | "EC"
  std::string alg;      // "" when the JWK does not name one
  std::string refused;  // non-empty: never used, and why
  PkeyPtr pkey;
};

JsonWebKeySet::~JsonWebKeySet() = default;

size_t JsonWebKeySet::usable_keys() const {
  size_t n = 0;
  for (const auto& k : keys_) n += k->refused.empty() ? 1 : 0;
  return n;
}

StatusOr<std::shared_ptr<const JsonWebKeySet>> JsonWebKeySet::Parse(std::string_view text) {
  const json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return InvalidArgumentError("the JWKS is not valid JSON");
  const json* keys = Member(doc, "keys");
  if (keys == nullptr || !keys->is_array()) {
    return InvalidArgumentError(
        "the JWKS has no \"keys\" array (expected what the API server's "
        "/openid/v1/jwks returns)");
  }
  std::shared_ptr<JsonWebKeySet> set(new JsonWebKeySet());
  for (size_t i = 0; i < keys->size(); ++i) {
    const json& jwk = (*keys)[i];
    const std::string where = "JWKS key " + std::to_string(i);
    if (!jwk.is_object()) return InvalidArgumentError(where + " is not an object");
    auto key = std::make_unique<Key>();
    key->kid = StringMember(jwk, "kid");
    key->kty = StringMember(jwk, "kty");
    key->alg = StringMember(jwk, "alg");
    const std::string use = StringMember(jwk, "use");
    if (!use.empty() && use != "sig") continue;  // an encryption key: not for tokens
    auto member = [&](const char* name) -> StatusOr<std::string> {
      auto bytes = Base64UrlDecode(StringMember(jwk, name));
      if (!bytes || bytes->empty()) {
        return InvalidArgumentError(where + " (kid " + Quote(key->kid) + "): \"" + name +
                                    "\" is missing or not base64url");
      }
      return *bytes;
    };
    if (key->kty == "RSA") {
      FEDGE_ASSIGN_OR_RETURN(std::string n, member("n"));
      FEDGE_ASSIGN_OR_RETURN(std::string e, member("e"));
      key->pkey = RsaPublicKey(n, e);
      if (!key->pkey) return InvalidArgumentError(where + " (kid " + Quote(key->kid) + ") is not an RSA key");
      const int bits = EVP_PKEY_get_bits(key->pkey.get());
      if (bits < kMinRsaBits) {
        key->refused = "is an RSA key of " + std::to_string(bits) + " bits; at least " +
                       std::to_string(kMinRsaBits) + " are required";
      }
    } else if (key->kty == "EC") {
      if (StringMember(jwk, "crv") != "P-256") continue;  // only ES256 is accepted
      FEDGE_ASSIGN_OR_RETURN(std::string x, member("x"));
      FEDGE_ASSIGN_OR_RETURN(std::string y, member("y"));
      if (x.size() != kP256CoordinateBytes || y.size() != kP256CoordinateBytes) {
        return InvalidArgumentError(where + " (kid " + Quote(key->kid) + "): P-256 x and y must be 32 bytes");
      }
      key->pkey = P256PublicKey(x, y);
      if (!key->pkey) {
        return InvalidArgumentError(where + " (kid " + Quote(key->kid) + ") is not a point on P-256");
      }
    } else {
      continue;  // OKP and others: no algorithm here would use them
    }
    if (!key->alg.empty() && KeyTypeOf(key->alg) != key->kty) {
      key->refused = "is for alg " + Quote(key->alg) + ", which this aggregator does not accept";
    }
    set->keys_.push_back(std::move(key));
  }
  if (set->usable_keys() == 0) {
    return InvalidArgumentError("the JWKS has no usable key (RSA of at least " + std::to_string(kMinRsaBits) +
                                " bits or EC P-256, for signing): every Join would fail");
  }
  return std::shared_ptr<const JsonWebKeySet>(std::move(set));
}

StatusOr<ServiceAccountClaims> JsonWebKeySet::Verify(std::string_view token,
                                                     const ServiceAccountTokenPolicy& policy,
                                                     const std::string& agent_id, int64_t now_unix_ms,
                                                     std::string_view* reason) const {
  std::string_view ignored;
  std::string_view& why = reason != nullptr ? *reason : ignored;
  auto refuse = [&](std::string_view label, StatusCode code, std::string message) {
    why = label;
    return Status(code, std::move(message));
  };
  auto unauthenticated = [&](std::string_view label, std::string message) {
    return refuse(label, StatusCode::kUnauthenticated, std::move(message));
  };
  // Size before anything else: a flood of huge tokens costs one comparison each.
  if (token.size() > kMaxServiceAccountTokenBytes) {
    return unauthenticated(
        "too_large", "the agent token has " + std::to_string(token.size()) + " bytes, more than the " +
                         std::to_string(kMaxServiceAccountTokenBytes) + " a service-account token may have");
  }
  const size_t dot1 = token.find('.');
  const size_t dot2 = dot1 == std::string_view::npos ? dot1 : token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) {
    return unauthenticated("malformed",
                           "the agent token is not a JWT (three base64url parts separated by '.'): "
                           "present the projected service-account token the kubelet mounts (--token-file)");
  }
  const std::string_view header_b64 = token.substr(0, dot1);
  const std::string_view payload_b64 = token.substr(dot1 + 1, dot2 - dot1 - 1);
  const std::string_view signature_b64 = token.substr(dot2 + 1);
  const std::string_view signed_data = token.substr(0, dot2);
  auto header_text = Base64UrlDecode(header_b64);
  auto signature = Base64UrlDecode(signature_b64);
  if (!header_text || !signature || !Base64UrlDecode(payload_b64)) {
    return unauthenticated("malformed", "a part of the agent token is not strict base64url (RFC 7515)");
  }
  try {
    const json header = json::parse(*header_text, nullptr, /*allow_exceptions=*/false);
    if (!header.is_object()) return unauthenticated("malformed", "the JWT header is not a JSON object");
    const std::string alg = StringMember(header, "alg");
    const std::string_view kty = KeyTypeOf(alg);
    if (kty.empty()) {
      return unauthenticated("algorithm", "the token is signed with alg " + Quote(alg) +
                                              "; only RS256 and ES256 are accepted (what Kubernetes "
                                              "service-account issuers sign with)");
    }
    if (Member(header, "crit") != nullptr) {
      return unauthenticated("malformed",
                             "the JWT header has \"crit\" extensions this aggregator does not "
                             "understand (RFC 7515 4.1.11)");
    }
    // Keys to try: the one the kid names, or every key of the alg's type.
    const json* kid_member = Member(header, "kid");
    const bool has_kid = kid_member != nullptr;
    if (has_kid && !kid_member->is_string())
      return unauthenticated("malformed", "the JWT kid is not a string");
    const std::string kid = has_kid ? kid_member->get<std::string>() : "";
    std::vector<const Key*> candidates;
    const Key* kid_other_type = nullptr;  // the kid names a key, but not one alg can use
    const Key* kid_refused = nullptr;
    for (const auto& k : keys_) {
      if (has_kid && k->kid != kid) continue;
      if (k->kty != kty || (!k->alg.empty() && k->alg != alg)) {
        kid_other_type = k.get();
      } else if (!k->refused.empty()) {
        kid_refused = k.get();
      } else {
        candidates.push_back(k.get());
      }
    }
    if (candidates.empty()) {
      if (has_kid && kid_refused != nullptr) {
        return unauthenticated("weak_key", "key kid " + Quote(kid) + " " + kid_refused->refused +
                                               "; tokens signed with it are refused");
      }
      if (has_kid && kid_other_type != nullptr) {
        return unauthenticated("algorithm",
                               "the token says alg " + alg + " but key kid " + Quote(kid) + " is a " +
                                   kid_other_type->kty + " key" +
                                   (kid_other_type->alg.empty() ? "" : " for " + kid_other_type->alg));
      }
      if (has_kid) {
        return refuse("unknown_key", StatusCode::kUnavailable,
                      "no key with kid " + Quote(kid) +
                          " in the aggregator's JWKS (--agent-token-jwks-file): if the cluster's "
                          "service-account signing key was rotated, the file must be refreshed from the API "
                          "server's /openid/v1/jwks; retry later");
      }
      return unauthenticated("unknown_key",
                             "the token names no kid and the aggregator's JWKS has no usable " +
                                 std::string(kty) + " key for alg " + alg);
    }
    const std::string sig = alg == "ES256" ? Es256SignatureToDer(*signature) : *signature;
    bool verified = false;
    for (const Key* k : candidates) {
      if (!sig.empty() && VerifySha256(k->pkey.get(), signed_data, sig)) {
        verified = true;
        break;
      }
    }
    if (!verified) {
      return unauthenticated(
          "signature", "the token's signature does not verify against the aggregator's JWKS" +
                           (has_kid ? " (kid " + Quote(kid) + ")" : std::string()) +
                           ": it was not issued by this cluster's service-account issuer, or was altered");
    }

    // Signed by the issuer: the claims can be believed now.
    const json claims = json::parse(*Base64UrlDecode(payload_b64), nullptr, /*allow_exceptions=*/false);
    if (!claims.is_object()) return unauthenticated("malformed", "the JWT payload is not a JSON object");
    const std::string iss = StringMember(claims, "iss");
    if (iss != policy.issuer) {
      return unauthenticated("issuer", "the token's issuer " + Quote(iss) + " is not " +
                                           Quote(policy.issuer) +
                                           " (--agent-token-issuer: the API server's "
                                           "--service-account-issuer)");
    }
    bool audience = false;
    if (const json* aud = Member(claims, "aud"); aud != nullptr) {
      if (aud->is_string()) audience = aud->get<std::string>() == policy.audience;
      if (aud->is_array()) {
        for (const json& a : *aud) audience |= a.is_string() && a.get<std::string>() == policy.audience;
      }
    }
    if (!audience) {
      return unauthenticated("audience", "the token's audience does not include " + Quote(policy.audience) +
                                             " (--agent-token-audience): the agent pod's projected token "
                                             "must be requested for that audience");
    }
    const int64_t now_s = now_unix_ms / 1000;
    const int64_t leeway = kServiceAccountTokenLeewaySeconds;
    const std::optional<int64_t> exp = NumericDate(Member(claims, "exp"));
    if (!exp)
      return unauthenticated("expired", "the token has no exp: only expiring, pod-bound tokens are accepted");
    if (now_s >= *exp + leeway) {
      return unauthenticated("expired", "the token expired " + std::to_string(now_s - *exp) +
                                            " s ago (leeway " + std::to_string(leeway) +
                                            " s): the agent must present the token file the kubelet "
                                            "refreshes, or the node's clock is wrong");
    }
    for (const char* name : {"nbf", "iat"}) {
      const json* member = Member(claims, name);
      if (member == nullptr) continue;
      const std::optional<int64_t> t = NumericDate(member);
      if (!t || *t > now_s + leeway) {
        return unauthenticated("not_yet_valid",
                               std::string("the token's ") + name + " is " +
                                   (t ? std::to_string(*t - now_s) + " s in the future" : "not a time") +
                                   " (leeway " + std::to_string(leeway) +
                                   " s): the clocks of the aggregator and the API server disagree");
      }
    }
    static const json kNull;
    const json* k8s = Member(claims, "kubernetes.io");
    const json& k = k8s != nullptr ? *k8s : kNull;
    const std::string ns = StringMember(k, "namespace");
    const json* sa = Member(k, "serviceaccount");
    const std::string sa_name = sa != nullptr ? StringMember(*sa, "name") : "";
    if (ns != policy.namespace_name || sa_name != policy.service_account) {
      return unauthenticated("service_account",
                             "the token is for service account " + Quote(ns + "/" + sa_name) + ", not " +
                                 Quote(policy.namespace_name + "/" + policy.service_account) +
                                 " (--agent-token-service-account): only the job's agent pods may join");
    }
    ServiceAccountClaims out;
    const json* pod = Member(k, "pod");
    out.pod_name = pod != nullptr ? StringMember(*pod, "name") : "";
    out.pod_uid = pod != nullptr ? StringMember(*pod, "uid") : "";
    if (out.pod_name.empty()) {
      return unauthenticated("pod",
                             "the token is not bound to a pod (no kubernetes.io.pod.name): the agent "
                             "must present its pod's projected serviceAccountToken volume");
    }
    const json* node = Member(k, "node");
    out.node_name = node != nullptr ? StringMember(*node, "name") : "";
    if (out.node_name.empty()) {
      return unauthenticated("node",
                             "the token names no node (kubernetes.io.node.name, in pod-bound tokens "
                             "since Kubernetes v1.30): the aggregator cannot tell which agent it is for");
    }
    if (out.node_name != agent_id) {
      return refuse("node", StatusCode::kPermissionDenied,
                    "the token belongs to pod " + Quote(out.pod_name) + " on node " + Quote(out.node_name) +
                        " but the Join is for agent " + Quote(agent_id) +
                        ": an agent may join only as its own node (--agent-id)");
    }
    out.expires_unix_s = *exp;
    if (const json* iat = Member(claims, "iat")) out.issued_unix_s = NumericDate(iat).value_or(0);
    why = "";
    return out;
  } catch (const std::exception& e) {
    // Every access above is type-checked; this is the adapter's last line.
    return unauthenticated("malformed", std::string("the agent token could not be read: ") + e.what());
  }
}

Status ParseServiceAccountName(const std::string& text, ServiceAccountTokenPolicy* policy) {
  const size_t slash = text.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == text.size() ||
      text.find('/', slash + 1) != std::string::npos) {
    return InvalidArgumentError("service account " + Quote(text) + " is not NAMESPACE/NAME");
  }
  policy->namespace_name = text.substr(0, slash);
  policy->service_account = text.substr(slash + 1);
  return OkStatus();
}

StatusOr<FileId> ServiceAccountTokenVerifier::Stat(const std::string& path) {
  return StatFileId(path, "JWKS file");
}

StatusOr<std::shared_ptr<const JsonWebKeySet>> ServiceAccountTokenVerifier::Load(const std::string& path,
                                                                                 const FileId& id) {
  if (static_cast<uint64_t>(id.size) > kMaxJwksBytes) {
    return InvalidArgumentError("JWKS file " + path + " has " + std::to_string(id.size) +
                                " bytes, more than " + std::to_string(kMaxJwksBytes));
  }
  FEDGE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  if (text.size() > kMaxJwksBytes) return InvalidArgumentError("JWKS file " + path + " grew while read");
  auto keys = JsonWebKeySet::Parse(text);
  if (!keys.ok()) return keys.status().WithContext(path);
  return keys;
}

StatusOr<std::unique_ptr<ServiceAccountTokenVerifier>> ServiceAccountTokenVerifier::Open(
    std::string jwks_path, ServiceAccountTokenPolicy policy, const Clock* clock, int64_t min_recheck_ms) {
  if (policy.issuer.empty() || policy.audience.empty() || policy.namespace_name.empty() ||
      policy.service_account.empty()) {
    return InvalidArgumentError("service-account tokens need an issuer, an audience and a NAMESPACE/NAME");
  }
  std::unique_ptr<ServiceAccountTokenVerifier> v(
      new ServiceAccountTokenVerifier(std::move(jwks_path), std::move(policy), clock, min_recheck_ms));
  // Stat before reading: a swap between the two then shows up as a change later.
  auto id = Stat(v->path_);
  if (!id.ok()) return NotFoundError(id.status().message());
  FEDGE_ASSIGN_OR_RETURN(v->keys_, Load(v->path_, *id));
  v->id_ = *id;
  v->last_check_ms_ = clock->NowUnixMs();
  return v;
}

bool ServiceAccountTokenVerifier::RefreshLocked() {
  last_check_ms_ = clock_->NowUnixMs();
  auto id = Stat(path_);
  if (!id.ok() || *id == id_ || *id == refused_id_) return false;
  auto keys = Load(path_, *id);
  if (!keys.ok()) {
    refused_id_ = *id;
    // Keep the previous keys: a half-written file must not lock every agent
    // out. The file is looked at again after the next interval.
    log::Warn("ignoring the changed JWKS file; keeping the previous keys",
              {{"path", path_}, {"error", keys.status().ToString()}});
    return false;
  }
  id_ = *id;
  const size_t before = keys_->usable_keys();
  keys_ = std::move(*keys);
  ++reloads_;
  log::Info("JWKS file reloaded", {{"path", path_},
                                   {"keys", static_cast<int64_t>(keys_->usable_keys())},
                                   {"before", static_cast<int64_t>(before)}});
  return true;
}

bool ServiceAccountTokenVerifier::Refresh() {
  std::lock_guard<std::mutex> lock(mu_);
  return RefreshLocked();
}

StatusOr<ServiceAccountClaims> ServiceAccountTokenVerifier::Verify(std::string_view token,
                                                                   const std::string& agent_id,
                                                                   std::string_view* reason) {
  std::shared_ptr<const JsonWebKeySet> keys;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // The rate limit bounds the stat()s a stream of Joins can cause; an
    // oversized token (refused by its size alone) causes none.
    const bool looks_like_a_token = token.size() <= kMaxServiceAccountTokenBytes;
    if (looks_like_a_token && clock_->NowUnixMs() - last_check_ms_ >= min_recheck_ms_) RefreshLocked();
    keys = keys_;
  }
  return keys->Verify(token, policy_, agent_id, clock_->NowUnixMs(), reason);
}

size_t ServiceAccountTokenVerifier::usable_keys() const {
  std::lock_guard<std::mutex> lock(mu_);
  return keys_->usable_keys();
}

int64_t ServiceAccountTokenVerifier::reloads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reloads_;
}

}  // namespace fedge::aggregator
