#include "fedge/pki.h"

#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <memory>
#include <optional>

namespace fedge::pki {
namespace {

template <typename T, void (*F)(T*)>
struct Deleter {
  void operator()(T* p) const { F(p); }
};
using PKey = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using Cert = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using Bio = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;

PKey NewEcKey() { return PKey(EVP_EC_gen("P-256")); }

std::string BioString(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(n));
}

StatusOr<std::string> KeyPem(EVP_PKEY* key) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr)) {
    return InternalError("PEM_write_bio_PrivateKey failed");
  }
  return BioString(bio.get());
}

StatusOr<std::string> CertPem(X509* cert) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_X509(bio.get(), cert)) return InternalError("PEM_write_bio_X509 failed");
  return BioString(bio.get());
}

bool AddExt(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (!ext) return false;
  bool ok = X509_add_ext(cert, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

// CN must fit X.509's 64 characters: callers pass CommonName(...). A failure to set
// any field is an error (the old code ignored X509_NAME_add_entry_by_txt's refusal of a
// long name and issued a certificate with an empty subject).
StatusOr<Cert> NewCert(EVP_PKEY* key, const std::string& cn, std::time_t now, std::time_t not_before_offset,
                       std::time_t not_after_offset) {
  if (cn.empty() || cn.size() > kMaxCommonNameLength) {
    return InvalidArgumentError("certificate common name \"" + cn + "\" has " + std::to_string(cn.size()) +
                                " characters; X.509 allows 1 to 64 (pass it through CommonName)");
  }
  Cert cert(X509_new());
  if (!cert || X509_set_version(cert.get(), 2) != 1) return InternalError("X509_new failed");
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof(serial)) != 1) return InternalError("RAND_bytes failed");
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
  bool serial_ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  if (!serial_ok) return InternalError("setting the serial number failed");
  if (!X509_time_adj_ex(X509_getm_notBefore(cert.get()), 0, static_cast<long>(not_before_offset), &now) ||
      !X509_time_adj_ex(X509_getm_notAfter(cert.get()), 0, static_cast<long>(not_after_offset), &now) ||
      X509_set_pubkey(cert.get(), key) != 1) {
    return InternalError("setting the validity or public key failed");
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.c_str()),
                                 static_cast<int>(cn.size()), -1, 0) != 1) {
    return InvalidArgumentError("OpenSSL refused the common name \"" + cn + "\"");
  }
  return cert;
}

StatusOr<KeyPair> Finish(X509* cert, EVP_PKEY* signer, EVP_PKEY* key) {
  if (!X509_sign(cert, signer, EVP_sha256())) return InternalError("signing the certificate failed");
  KeyPair out;
  FEDGE_ASSIGN_OR_RETURN(out.cert_pem, CertPem(cert));
  FEDGE_ASSIGN_OR_RETURN(out.key_pem, KeyPem(key));
  return out;
}

// What ReadCert reports, from a decoded certificate.
StatusOr<CertInfo> InfoOf(X509* cert);

Cert ParseCert(const std::string& pem) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return Cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
}

std::string Hex(const unsigned char* p, size_t n) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kHex[p[i] >> 4]);
    out.push_back(kHex[p[i] & 15]);
  }
  return out;
}

std::optional<std::time_t> ToTime(const ASN1_TIME* t) {
  std::tm tm{};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return std::nullopt;
  return timegm(&tm);
}

std::string PercentDecode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

}  // namespace

std::string CommonName(const std::string& name) {
  if (name.size() <= kMaxCommonNameLength) return name;
  return name.substr(0, kMaxCommonNameLength - 17) + "~" + HexSha256(name).substr(0, 16);
}

std::string AgentUri(const std::string& agent_id) {
  std::string out = kAgentUriPrefix;
  static const char* kHex = "0123456789ABCDEF";
  for (unsigned char c : agent_id) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

StatusOr<KeyPair> GenerateCa(const std::string& common_name, std::time_t now) {
  PKey key = NewEcKey();
  if (!key) return InternalError("EC key generation failed");
  FEDGE_ASSIGN_OR_RETURN(
      Cert cert, NewCert(key.get(), CommonName(common_name), now, -kCertBackdateSeconds, 3650L * 24 * 3600));
  X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get()));
  if (!AddExt(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE") ||
      !AddExt(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign") ||
      !AddExt(cert.get(), cert.get(), NID_subject_key_identifier, "hash")) {
    return InternalError("adding CA extensions failed");
  }
  return Finish(cert.get(), key.get(), key.get());
}

struct CertificateAuthority::Decoded {
  Cert cert;
  PKey key;
};

StatusOr<CertificateAuthority> CertificateAuthority::Load(const KeyPair& ca) {
  Bio cbio(BIO_new_mem_buf(ca.cert_pem.data(), static_cast<int>(ca.cert_pem.size())));
  Bio kbio(BIO_new_mem_buf(ca.key_pem.data(), static_cast<int>(ca.key_pem.size())));
  auto d = std::make_shared<Decoded>();
  d->cert = Cert(cbio ? PEM_read_bio_X509(cbio.get(), nullptr, nullptr, nullptr) : nullptr);
  d->key = PKey(kbio ? PEM_read_bio_PrivateKey(kbio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!d->cert || !d->key) return InvalidArgumentError("unreadable CA certificate or key");
  if (X509_check_private_key(d->cert.get(), d->key.get()) != 1) {
    return InvalidArgumentError("the CA key is not the CA certificate's key");
  }
  // Computes the certificate's cached extension data now, so that issuing threads only
  // read it.
  X509_check_purpose(d->cert.get(), -1, 0);
  return CertificateAuthority(std::move(d));
}

StatusOr<KeyPair> IssueServingCert(const KeyPair& ca, const std::string& common_name,
                                   const std::vector<std::string>& dns_names, std::time_t now) {
  FEDGE_ASSIGN_OR_RETURN(CertificateAuthority signer, CertificateAuthority::Load(ca));
  return signer.IssueServingCert(common_name, dns_names, now);
}

StatusOr<KeyPair> CertificateAuthority::IssueServingCert(const std::string& common_name,
                                                         const std::vector<std::string>& dns_names,
                                                         std::time_t now) const {
  const Decoded& signer = *d_;
  PKey key = NewEcKey();
  if (!key) return InternalError("EC key generation failed");
  FEDGE_ASSIGN_OR_RETURN(
      Cert cert, NewCert(key.get(), CommonName(common_name), now, -kCertBackdateSeconds, 365L * 24 * 3600));
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer.cert.get()));
  std::string san;
  for (const auto& d : dns_names) san += (san.empty() ? "" : ",") + std::string("DNS:") + d;
  if (!AddExt(cert.get(), signer.cert.get(), NID_basic_constraints, "critical,CA:FALSE") ||
      !AddExt(cert.get(), signer.cert.get(), NID_key_usage, "critical,digitalSignature,keyEncipherment") ||
      !AddExt(cert.get(), signer.cert.get(), NID_ext_key_usage, "serverAuth") ||
      (!san.empty() && !AddExt(cert.get(), signer.cert.get(), NID_subject_alt_name, san))) {
    return InternalError("adding serving-certificate extensions failed");
  }
  return Finish(cert.get(), signer.key.get(), key.get());
}

StatusOr<KeyPair> IssueClientCert(const KeyPair& ca, const std::string& agent_id, std::time_t now,
                                  std::time_t lifetime_seconds) {
  FEDGE_ASSIGN_OR_RETURN(CertificateAuthority signer, CertificateAuthority::Load(ca));
  return signer.IssueClientCert(agent_id, now, lifetime_seconds);
}

StatusOr<KeyPair> CertificateAuthority::IssueClientCert(const std::string& agent_id, std::time_t now,
                                                        std::time_t lifetime_seconds, CertInfo* info) const {
  if (agent_id.empty()) return InvalidArgumentError("a client certificate needs an agent id");
  if (lifetime_seconds < 60) {
    return InvalidArgumentError("client certificate lifetime " + std::to_string(lifetime_seconds) +
                                " s is under the minimum of 60 s");
  }
  const Decoded& signer = *d_;
  PKey key = NewEcKey();
  if (!key) return InternalError("EC key generation failed");
  FEDGE_ASSIGN_OR_RETURN(Cert cert,
                         NewCert(key.get(), CommonName(agent_id), now,
                                 -std::min(kCertBackdateSeconds, lifetime_seconds / 10), lifetime_seconds));
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer.cert.get()));
  if (!AddExt(cert.get(), signer.cert.get(), NID_basic_constraints, "critical,CA:FALSE") ||
      !AddExt(cert.get(), signer.cert.get(), NID_key_usage, "critical,digitalSignature") ||
      !AddExt(cert.get(), signer.cert.get(), NID_ext_key_usage, "clientAuth") ||
      !AddExt(cert.get(), signer.cert.get(), NID_subject_alt_name, "URI:" + AgentUri(agent_id))) {
    return InternalError("adding client-certificate extensions failed");
  }
  FEDGE_ASSIGN_OR_RETURN(KeyPair out, Finish(cert.get(), signer.key.get(), key.get()));
  if (info != nullptr) {
    FEDGE_ASSIGN_OR_RETURN(*info, InfoOf(cert.get()));
  }
  return out;
}

StatusOr<CertInfo> ReadCert(const std::string& cert_pem) {
  Cert cert = ParseCert(cert_pem);
  if (!cert) return InvalidArgumentError("not a PEM certificate");
  return InfoOf(cert.get());
}

namespace {

StatusOr<CertInfo> InfoOf(X509* cert) {
  CertInfo info;
  auto nb = ToTime(X509_get0_notBefore(cert));
  auto na = ToTime(X509_get0_notAfter(cert));
  if (!nb || !na) return InvalidArgumentError("certificate has an unreadable validity period");
  info.not_before = *nb;
  info.not_after = *na;
  X509_NAME* subject = X509_get_subject_name(cert);
  int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (idx >= 0) {
    unsigned char* utf8 = nullptr;
    int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx)));
    if (n >= 0) info.common_name.assign(reinterpret_cast<char*>(utf8), static_cast<size_t>(n));
    OPENSSL_free(utf8);
  }
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names, i);
    if (gn->type != GEN_URI) continue;
    std::string uri(reinterpret_cast<const char*>(ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier)),
                    static_cast<size_t>(ASN1_STRING_length(gn->d.uniformResourceIdentifier)));
    if (uri.rfind(kAgentUriPrefix, 0) == 0)
      info.agent_id = PercentDecode(uri.substr(strlen(kAgentUriPrefix)));
  }
  GENERAL_NAMES_free(names);
  BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr);
  if (bn) {
    char* hex = BN_bn2hex(bn);
    if (hex) info.serial = hex;
    OPENSSL_free(hex);
    BN_free(bn);
  }
  return info;
}

}  // namespace

bool SignedBy(const std::string& cert_pem, const std::string& ca_cert_pem) {
  Cert cert = ParseCert(cert_pem);
  Cert ca = ParseCert(ca_cert_pem);
  if (!cert || !ca) return false;
  EVP_PKEY* pub = X509_get0_pubkey(ca.get());
  return pub && X509_verify(cert.get(), pub) == 1;
}

bool KeyMatchesCert(const std::string& cert_pem, const std::string& key_pem) {
  Cert cert = ParseCert(cert_pem);
  Bio kbio(BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
  PKey key(kbio ? PEM_read_bio_PrivateKey(kbio.get(), nullptr, nullptr, nullptr) : nullptr);
  return cert && key && X509_check_private_key(cert.get(), key.get()) == 1;
}

std::time_t RenewalTime(const CertInfo& cert) {
  return cert.not_after - (cert.not_after - cert.not_before) / 3;
}

StatusOr<std::string> RandomToken() {
  unsigned char buf[32];
  if (RAND_bytes(buf, sizeof(buf)) != 1) return InternalError("RAND_bytes failed");
  return Hex(buf, sizeof(buf));
}

std::string HexSha256(std::string_view bytes) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), md);
  return Hex(md, sizeof(md));
}

}  // namespace fedge::pki
