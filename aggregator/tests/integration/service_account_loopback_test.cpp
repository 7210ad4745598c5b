// Agents that join with Kubernetes projected service-account tokens, against
// the real aggregator over gRPC on loopback, served the way the operator runs
// it on a cluster: a TLS serving certificate from files, no client
// certificates (--tls-client-ca unset), the four --agent-token-* options. The
// token authenticates the Join; the session id every request after it.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>
#include <vector>

#include "../jwt_test_util.h"
#include "../test_util.h"
#include "fedge.grpc.pb.h"
#include "fedge/aggregator/server.h"
#include "fedge/file_util.h"
#include "loopback.h"
#include "sim_agent.h"

namespace fedge::aggregator {
namespace {

using namespace testing;  // loopback.h, sim_agent.h, jwt_test_util.h

constexpr const char* kServerName = "aggregator.ns1.svc";

struct ServingCert {
  std::string cert_pem, key_pem;
};

// A self-signed P-256 serving certificate for kServerName (its own trust root).
ServingCert MakeServingCert() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
  X509_set_pubkey(cert, key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(kServerName), -1, -1, 0);
  X509_set_issuer_name(cert, X509_get_subject_name(cert));
  for (auto [nid, value] : {std::pair{NID_basic_constraints, "critical,CA:TRUE"},
                            std::pair{NID_subject_alt_name, "DNS:aggregator.ns1.svc"}}) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
  }
  X509_sign(cert, key, EVP_sha256());
  auto pem = [](auto write) {
    BIO* bio = BIO_new(BIO_s_mem());
    write(bio);
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    std::string out(data, static_cast<size_t>(n));
    BIO_free(bio);
    return out;
  };
  ServingCert out{pem([&](BIO* b) { PEM_write_bio_X509(b, cert); }), pem([&](BIO* b) {
                    PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
                  })};
  X509_free(cert);
  EVP_PKEY_free(key);
  return out;
}

class ServiceAccountLoopbackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(WriteFileAtomic(jwks_file(), Jwks({&key_})).ok());
    ASSERT_TRUE(WriteFileAtomic(dir_.path() + "/tls.crt", cert_.cert_pem).ok());
    ASSERT_TRUE(WriteFileAtomic(dir_.path() + "/tls.key", cert_.key_pem).ok());
  }
  std::string jwks_file() const { return dir_.path() + "/jwks.json"; }

  // What the operator passes: the four --agent-token-* flags and a serving
  // certificate read from files, no client CA.
  ServerOptions Options() const {
    ServerOptions o = LoopbackOptions();
    o.agent_token_jwks_file = jwks_file();
    o.agent_token_issuer = kTestIssuer;
    o.agent_token_audience = kTestAudience;
    o.agent_token_service_account = kTestServiceAccount;
    o.tls_cert_file = dir_.path() + "/tls.crt";
    o.tls_key_file = dir_.path() + "/tls.key";
    o.tls_cert_pem = cert_.cert_pem;
    o.tls_key_pem = cert_.key_pem;
    return o;
  }

  std::shared_ptr<grpc::Channel> Channel(int port) const {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = cert_.cert_pem;
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride(kServerName);
    return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), grpc::SslCredentials(ssl), args);
  }

  // The token the kubelet would mount into the agent pod on `node`.
  std::string PodToken(const std::string& node) const {
    return key_.Sign(PodTokenClaims(SystemClock::Get()->NowUnixMs() / 1000, node));
  }

  grpc::Status JoinAs(int port, const std::string& agent, const std::string& token) const {
    auto stub = v1::Aggregator::NewStub(Channel(port));
    v1::JoinRequest req;
    req.mutable_header()->set_protocol_version(1);
    req.mutable_header()->set_job("ns/loopback");
    req.mutable_header()->set_agent_id(agent);
    req.set_token(token);
    v1::JoinResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub->Join(&ctx, req, &resp);
  }

  TempDir dir_;
  TestSigningKey key_ = TestSigningKey::Rsa("sa-key-1");
  ServingCert cert_ = MakeServingCert();
};

TEST_F(ServiceAccountLoopbackTest, TokenJoinedAgentsRunARoundOverServerTlsAndAnotherNodesTokenIsDenied) {
  auto server = StartServer(LoopbackSpec("loopback", /*rounds=*/1, /*min_agents=*/2), Options());
  ASSERT_NE(server, nullptr);
  const int port = server->grpc_port();

  // edge-1's pod token presented as edge-2: valid, but not for that agent.
  grpc::Status other = JoinAs(port, "edge-2", PodToken("edge-1"));
  EXPECT_EQ(other.error_code(), grpc::StatusCode::PERMISSION_DENIED) << other.error_message();
  EXPECT_NE(other.error_message().find("node \"edge-1\""), std::string::npos) << other.error_message();
  // A tokens-file style secret is no token here.
  grpc::Status secret = JoinAs(port, "edge-2", "s3cret");
  EXPECT_EQ(secret.error_code(), grpc::StatusCode::UNAUTHENTICATED) << secret.error_message();
  EXPECT_EQ(server->metrics().joins_refused("node"), 1);
  EXPECT_EQ(server->metrics().joins_refused("malformed"), 1);
  EXPECT_EQ(server->engine().GetStatus().agents_joined, 0);

  std::vector<std::unique_ptr<SimAgent>> agents;
  for (int i = 0; i < 2; ++i) {
    const std::string node = "edge-" + std::to_string(i + 1);
    agents.push_back(std::make_unique<SimAgent>(node, i, Channel(port)));
    agents.back()->set_token(PodToken(node));
  }
  RunAll(agents);
  EngineStatus s = server->engine().GetStatus();
  EXPECT_EQ(s.state, JobState::kSucceeded);
  EXPECT_EQ(s.agents_joined, 2);
  EXPECT_EQ(s.global_version, 2);
  for (const auto& a : agents) EXPECT_EQ(a->trained(), 1);
}

TEST_F(ServiceAccountLoopbackTest, IncompleteOrConflictingTokenOptionsAreRefusedAtStart) {
  const JobSpec spec = LoopbackSpec("loopback", 1, 1);
  ServerOptions missing = Options();
  missing.agent_token_audience.clear();
  auto s = AggregatorServer::Create(spec, missing);
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("--agent-token-audience"), std::string::npos) << s.status().ToString();

  ServerOptions both = Options();
  // The conflict is what is reported, not what is wrong with the tokens file.
  ASSERT_TRUE(WriteFileAtomic(dir_.path() + "/tokens", "edge-1\n").ok());
  both.tokens_file = dir_.path() + "/tokens";
  s = AggregatorServer::Create(spec, both);
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("--tokens-file and --agent-token-*"), std::string::npos)
      << s.status().ToString();

  ServerOptions bad_sa = Options();
  bad_sa.agent_token_service_account = "job1-agent";
  s = AggregatorServer::Create(spec, bad_sa);
  EXPECT_NE(s.status().message().find("NAMESPACE/NAME"), std::string::npos) << s.status().ToString();

  ASSERT_TRUE(WriteFileAtomic(jwks_file(), "{\"keys\": []}").ok());
  s = AggregatorServer::Create(spec, Options());
  EXPECT_NE(s.status().message().find("--agent-token-jwks-file"), std::string::npos) << s.status().ToString();
}

}  // namespace
}  // namespace fedge::aggregator
