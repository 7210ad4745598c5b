// Certificates for TLS tests of the agent's channel: a CA and leaf certificates
// signed by it (EC P-256, OpenSSL), PEM strings. Test-only; the operator's own
// issuer is operator/controller/src/pki.cpp.
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <ctime>
#include <string>

namespace fedge::agent::testing {

struct TestCert {
  std::string cert_pem, key_pem;
};

inline std::string ToPem(X509* cert) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, cert);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

inline std::string ToPem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

inline void AddExt(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// `issuer` null: a self-signed CA. `san`: an X509v3 subjectAltName value ("" none).
inline TestCert MakeCert(const std::string& cn, const TestCert* issuer, const std::string& san = "",
                         long valid_seconds = 3600) {
  static long serial = 1;
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert), valid_seconds);
  X509_set_pubkey(cert, key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509* issuer_cert = nullptr;
  EVP_PKEY* issuer_key = key;
  if (issuer) {
    BIO* cb = BIO_new_mem_buf(issuer->cert_pem.data(), static_cast<int>(issuer->cert_pem.size()));
    issuer_cert = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
    BIO_free(cb);
    BIO* kb = BIO_new_mem_buf(issuer->key_pem.data(), static_cast<int>(issuer->key_pem.size()));
    issuer_key = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
    BIO_free(kb);
    X509_set_issuer_name(cert, X509_get_subject_name(issuer_cert));
    AddExt(cert, issuer_cert, NID_basic_constraints, "critical,CA:FALSE");
    if (!san.empty()) AddExt(cert, issuer_cert, NID_subject_alt_name, san.c_str());
  } else {
    X509_set_issuer_name(cert, X509_get_subject_name(cert));
    AddExt(cert, cert, NID_basic_constraints, "critical,CA:TRUE");
    AddExt(cert, cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  }
  X509_sign(cert, issuer_key, EVP_sha256());
  TestCert out{ToPem(cert), ToPem(key)};
  if (issuer_key != key) EVP_PKEY_free(issuer_key);
  X509_free(issuer_cert);
  X509_free(cert);
  EVP_PKEY_free(key);
  return out;
}

}  // namespace fedge::agent::testing
