// A test-only service-account token issuer: RSA and P-256 keys made with
// OpenSSL, their JWKS, and JWS compact tokens signed with them (RS256, ES256,
// and the forgeries the verifier must refuse: none, HS256). What a Kubernetes
// API server does for projected tokens, minus the API server.
#pragma once

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rsa.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace fedge::aggregator::testing {

inline constexpr const char* kTestIssuer = "https://kubernetes.default.svc.cluster.local";
inline constexpr const char* kTestAudience = "fedge.io/ns1/job1";
inline constexpr const char* kTestServiceAccount = "ns1/job1-agent";

inline std::string Base64Url(std::string_view bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : bytes) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(kAlphabet[(acc >> bits) & 63]);
    }
  }
  if (bits > 0) out.push_back(kAlphabet[(acc << (6 - bits)) & 63]);
  return out;
}

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};

// A signing key of the test issuer.
struct TestSigningKey {
  std::string kid;
  std::string alg;  // "RS256" | "ES256"
  std::unique_ptr<EVP_PKEY, PkeyDeleter> pkey;

  static TestSigningKey Rsa(const std::string& kid, unsigned bits = 2048) {
    return {kid, "RS256", std::unique_ptr<EVP_PKEY, PkeyDeleter>(EVP_RSA_gen(bits))};
  }
  static TestSigningKey P256(const std::string& kid) {
    return {kid, "ES256", std::unique_ptr<EVP_PKEY, PkeyDeleter>(EVP_EC_gen("P-256"))};
  }

  std::string BigNumParam(const char* name) const {
    BIGNUM* bn = nullptr;
    EVP_PKEY_get_bn_param(pkey.get(), name, &bn);
    std::string out(static_cast<size_t>(BN_num_bytes(bn)), '\0');
    BN_bn2bin(bn, reinterpret_cast<unsigned char*>(out.data()));
    BN_free(bn);
    return out;
  }
  // The RSA modulus, big-endian (the "n" of the JWK).
  std::string Modulus() const { return BigNumParam(OSSL_PKEY_PARAM_RSA_N); }

  // The public JWK, as the API server's /openid/v1/jwks lists it.
  nlohmann::json Jwk() const {
    nlohmann::json j = {{"use", "sig"}, {"kid", kid}, {"alg", alg}};
    if (alg == "RS256") {
      j["kty"] = "RSA";
      j["n"] = Base64Url(Modulus());
      j["e"] = Base64Url(BigNumParam(OSSL_PKEY_PARAM_RSA_E));
    } else {
      unsigned char point[65];
      size_t n = 0;
      EVP_PKEY_get_octet_string_param(pkey.get(), OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point), &n);
      j["kty"] = "EC";
      j["crv"] = "P-256";
      j["x"] = Base64Url(std::string_view(reinterpret_cast<char*>(point) + 1, 32));
      j["y"] = Base64Url(std::string_view(reinterpret_cast<char*>(point) + 33, 32));
    }
    return j;
  }

  // The JWS signature of `input` in its wire form (ES256: r || s).
  std::string SignatureOf(std::string_view input) const {
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    size_t n = 0;
    EVP_DigestSignInit_ex(md, nullptr, "SHA256", nullptr, nullptr, pkey.get(), nullptr);
    EVP_DigestSign(md, nullptr, &n, reinterpret_cast<const unsigned char*>(input.data()), input.size());
    std::string sig(n, '\0');
    EVP_DigestSign(md, reinterpret_cast<unsigned char*>(sig.data()), &n,
                   reinterpret_cast<const unsigned char*>(input.data()), input.size());
    sig.resize(n);
    EVP_MD_CTX_free(md);
    if (alg != "ES256") return sig;
    const auto* p = reinterpret_cast<const unsigned char*>(sig.data());
    ECDSA_SIG* ecdsa = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size()));
    std::string raw(64, '\0');
    BN_bn2binpad(ECDSA_SIG_get0_r(ecdsa), reinterpret_cast<unsigned char*>(raw.data()), 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(ecdsa), reinterpret_cast<unsigned char*>(raw.data()) + 32, 32);
    ECDSA_SIG_free(ecdsa);
    return raw;
  }

  // header.payload.signature with {"alg": alg, "kid": kid} (kid left out when empty).
  std::string Sign(const nlohmann::json& claims) const {
    nlohmann::json header = {{"alg", alg}};
    if (!kid.empty()) header["kid"] = kid;
    return SignWithHeader(header, claims);
  }
  std::string SignWithHeader(const nlohmann::json& header, const nlohmann::json& claims) const {
    const std::string input = Base64Url(header.dump()) + "." + Base64Url(claims.dump());
    return input + "." + Base64Url(SignatureOf(input));
  }
};

// {"keys": [...]} of `keys`.
inline std::string Jwks(const std::vector<const TestSigningKey*>& keys) {
  nlohmann::json list = nlohmann::json::array();
  for (const TestSigningKey* k : keys) list.push_back(k->Jwk());
  return nlohmann::json{{"keys", list}}.dump();
}

// An HS256 token keyed with `secret` (the classic forgery: an RSA public key's
// bytes as the HMAC secret, for verifiers that let the token pick the algorithm).
inline std::string SignHs256(const std::string& kid, const std::string& secret,
                             const nlohmann::json& claims) {
  const std::string input =
      Base64Url(nlohmann::json{{"alg", "HS256"}, {"kid", kid}}.dump()) + "." + Base64Url(claims.dump());
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &n);
  return input + "." + Base64Url(std::string_view(reinterpret_cast<char*>(mac), n));
}

// The claims of a Kubernetes v1.36 projected token of pod "job1-agent-<node>"
// on `node`, issued at `now_s` for 600 s.
inline nlohmann::json PodTokenClaims(int64_t now_s, const std::string& node) {
  return {{"aud", {kTestAudience}},
          {"exp", now_s + 600},
          {"iat", now_s},
          {"nbf", now_s},
          {"iss", kTestIssuer},
          {"jti", "0b3c1f4e-jti"},
          {"kubernetes.io",
           {{"namespace", "ns1"},
            {"node", {{"name", node}, {"uid", "node-uid-" + node}}},
            {"pod", {{"name", "job1-agent-" + node}, {"uid", "pod-uid-" + node}}},
            {"serviceaccount", {{"name", "job1-agent"}, {"uid", "sa-uid"}}}}},
          {"sub", "system:serviceaccount:ns1:job1-agent"}};
}

}  // namespace fedge::aggregator::testing
