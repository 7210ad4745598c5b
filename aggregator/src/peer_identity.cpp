#include "fedge/aggregator/peer_identity.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>
#include <grpcpp/server_context.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cctype>
#include <cstring>
#include <memory>

#include "fedge/pki.h"

namespace fedge::aggregator {
namespace {

struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free(p); }
};
struct NamesFree {
  void operator()(GENERAL_NAMES* p) const { GENERAL_NAMES_free(p); }
};

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

// False on a '%' not followed by two hex digits.
bool PercentDecode(const std::string& in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out->push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return false;
    int hi = HexValue(in[i + 1]), lo = HexValue(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

}  // namespace

StatusOr<std::string> AgentIdFromCertificate(const std::string& cert_pem) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())));
  std::unique_ptr<X509, X509Free> cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)
                                           : nullptr);
  if (!cert) return InvalidArgumentError("the client certificate is not readable PEM");
  std::unique_ptr<GENERAL_NAMES, NamesFree> names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert.get(), NID_subject_alt_name, nullptr, nullptr)));
  std::string from_uri;
  int uris = 0;
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names.get(), i);
    if (gn->type != GEN_URI) continue;
    const ASN1_STRING* s = gn->d.uniformResourceIdentifier;
    std::string uri(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                    static_cast<size_t>(ASN1_STRING_length(s)));
    if (uri.rfind(pki::kAgentUriPrefix, 0) != 0) continue;
    if (++uris > 1) return InvalidArgumentError("the client certificate names two agents (URI " + uri + ")");
    if (!PercentDecode(uri.substr(std::strlen(pki::kAgentUriPrefix)), &from_uri) || from_uri.empty()) {
      return InvalidArgumentError("the client certificate's agent URI \"" + uri + "\" is malformed");
    }
  }
  if (uris == 1) return from_uri;
  X509_NAME* subject = X509_get_subject_name(cert.get());
  int idx = subject ? X509_NAME_get_index_by_NID(subject, NID_commonName, -1) : -1;
  if (idx >= 0) {
    unsigned char* utf8 = nullptr;
    int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx)));
    std::string cn = n > 0 ? std::string(reinterpret_cast<char*>(utf8), static_cast<size_t>(n)) : "";
    OPENSSL_free(utf8);
    if (!cn.empty()) return cn;
  }
  return InvalidArgumentError("the client certificate names no agent (no " +
                              std::string(pki::kAgentUriPrefix) + " URI name and no common name)");
}

Status CheckPeerIdentity(const grpc::ServerContextBase& ctx, const std::string& claimed_agent_id) {
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  std::vector<grpc::string_ref> pem;
  if (auth && auth->IsPeerAuthenticated()) pem = auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (pem.empty()) {
    return UnauthenticatedError(
        "this aggregator requires a client certificate from the job CA (mutual TLS); "
        "start the agent with --tls-cert and --tls-key");
  }
  auto identity = AgentIdFromCertificate(std::string(pem.front().data(), pem.front().size()));
  if (!identity.ok()) return UnauthenticatedError(identity.status().message());
  if (*identity != claimed_agent_id) {
    return PermissionDeniedError("the request is for agent \"" + claimed_agent_id +
                                 "\" but the client certificate belongs to agent \"" + *identity +
                                 "\"; an agent may act only as the id its certificate names (--agent-id)");
  }
  return OkStatus();
}

}  // namespace fedge::aggregator
