// The certificates the operator issues into a job's Secret, used on the wire: a
// real fedge aggregator gRPC server with the serving certificate, and gRPC
// clients configured the way fedge-agent configures its channel (--tls-ca,
// --tls-server-name). Loopback only, port 0.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "fedge.grpc.pb.h"
#include "fedge/aggregator/server.h"
#include "fedge/op/pki.h"

namespace fedge::op {
namespace {

using namespace std::chrono_literals;

constexpr char kServiceName[] = "wn-aggregator.ml.svc";

JobSpec Spec() {
  JobSpec spec;
  spec.name = "wn";
  spec.namespace_ = "ml";
  spec.rounds.total = 1;
  spec.agents.minAgents = 2;
  return spec;
}

struct Client {
  std::string root_ca;  // empty: plaintext
  std::string server_name = kServiceName;
  std::string cert, key;  // client certificate (mutual TLS)
};

// Join as `agent`; the gRPC status of the call.
grpc::Status Join(int port, const Client& c, const std::string& agent, const std::string& token = "") {
  grpc::ChannelArguments args;
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!c.root_ca.empty()) {
    args.SetSslTargetNameOverride(c.server_name);
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = c.root_ca;
    ssl.pem_cert_chain = c.cert;
    ssl.pem_private_key = c.key;
    creds = grpc::SslCredentials(ssl);
  }
  auto stub =
      v1::Aggregator::NewStub(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), creds, args));
  v1::JoinRequest req;
  req.mutable_header()->set_protocol_version(1);
  req.mutable_header()->set_job("ml/wn");
  req.mutable_header()->set_agent_id(agent);
  req.set_node_name(agent);
  req.set_token(token);
  v1::JoinResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  grpc::Status s = stub->Join(&ctx, req, &resp);
  if (s.ok() && resp.session().empty()) return grpc::Status(grpc::StatusCode::INTERNAL, "no session");
  return s;
}

class TlsWireTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ca = GenerateCa("wn-ca");
    ASSERT_TRUE(ca.ok());
    ca_ = *ca;
    // Exactly the names the reconciler issues the serving certificate for.
    auto tls = IssueServingCert(
        ca_, "wn-aggregator",
        {"wn-aggregator", "wn-aggregator.ml", "wn-aggregator.ml.svc", "wn-aggregator.ml.svc.cluster.local"});
    ASSERT_TRUE(tls.ok());
    serving_ = *tls;
    auto other = GenerateCa("another-job-ca");
    ASSERT_TRUE(other.ok());
    other_ca_ = *other;
  }

  std::unique_ptr<aggregator::AggregatorServer> Start(aggregator::ServerOptions o) {
    o.grpc_address = "127.0.0.1:0";
    o.http_address = "";
    auto server = aggregator::AggregatorServer::Create(Spec(), std::move(o));
    EXPECT_TRUE(server.ok()) << server.status().ToString();
    if (!server.ok()) return nullptr;
    Status st = (*server)->Start();
    EXPECT_TRUE(st.ok()) << st.ToString();
    return std::move(*server);
  }
  aggregator::ServerOptions Tls() const {
    aggregator::ServerOptions o;
    o.tls_cert_pem = serving_.cert_pem;
    o.tls_key_pem = serving_.key_pem;
    return o;
  }

  KeyPair ca_, serving_, other_ca_;
};

TEST_F(TlsWireTest, AgentWithTheJobsCaJoins) {
  auto server = Start(Tls());
  ASSERT_NE(server, nullptr);
  grpc::Status s = Join(server->grpc_port(), {ca_.cert_pem}, "edge-a");
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(server->engine().GetStatus().agents_joined, 1);
}

TEST_F(TlsWireTest, WrongCaWrongNameAndPlaintextAreRefused) {
  auto server = Start(Tls());
  ASSERT_NE(server, nullptr);
  const int port = server->grpc_port();

  grpc::Status wrong_ca = Join(port, {other_ca_.cert_pem}, "edge-a");
  EXPECT_EQ(wrong_ca.error_code(), grpc::StatusCode::UNAVAILABLE);
  // The agent logs this message; it must say what went wrong.
  EXPECT_NE(wrong_ca.error_message().find("andshake"), std::string::npos) << wrong_ca.error_message();

  grpc::Status wrong_name = Join(port, {ca_.cert_pem, "evil.example.com"}, "edge-b");
  EXPECT_EQ(wrong_name.error_code(), grpc::StatusCode::UNAVAILABLE) << wrong_name.error_message();

  grpc::Status plaintext = Join(port, {}, "edge-c");
  EXPECT_EQ(plaintext.error_code(), grpc::StatusCode::UNAVAILABLE) << plaintext.error_message();

  EXPECT_EQ(server->engine().GetStatus().agents_joined, 0);
  // The listener is still healthy for a correctly configured agent.
  EXPECT_TRUE(Join(port, {ca_.cert_pem}, "edge-d").ok());
}

TEST_F(TlsWireTest, TlsClientAgainstAPlaintextAggregatorIsRefused) {
  auto server = Start(aggregator::ServerOptions{});
  ASSERT_NE(server, nullptr);
  grpc::Status s = Join(server->grpc_port(), {ca_.cert_pem}, "edge-a");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_EQ(server->engine().GetStatus().agents_joined, 0);
}

TEST_F(TlsWireTest, MutualTlsRequiresAClientCertificateFromTheClientCa) {
  aggregator::ServerOptions o = Tls();
  o.tls_client_ca_pem = ca_.cert_pem;
  auto server = Start(o);
  ASSERT_NE(server, nullptr);
  const int port = server->grpc_port();
  EXPECT_FALSE(Join(port, {ca_.cert_pem}, "edge-a").ok());  // no client certificate
  auto foreign = IssueServingCert(other_ca_, "edge-b", {"edge-b"});
  ASSERT_TRUE(foreign.ok());
  EXPECT_FALSE(Join(port, {ca_.cert_pem, kServiceName, foreign->cert_pem, foreign->key_pem}, "edge-b").ok());
  EXPECT_EQ(server->engine().GetStatus().agents_joined, 0);
}

TEST_F(TlsWireTest, HalfConfiguredTlsIsRejectedAtCreate) {
  aggregator::ServerOptions o;
  o.tls_cert_pem = serving_.cert_pem;  // no key
  auto s = aggregator::AggregatorServer::Create(Spec(), o);
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  aggregator::ServerOptions m;
  m.tls_client_ca_pem = ca_.cert_pem;  // client CA without a serving certificate
  EXPECT_EQ(aggregator::AggregatorServer::Create(Spec(), m).status().code(), StatusCode::kInvalidArgument);
}

// Tokens and TLS together, with the tokens file changing under the running
// server the way a mounted Secret does when a node joins the selector.
TEST_F(TlsWireTest, NodeJoiningLaterIsAdmittedOnceItsTokenReachesTheFile) {
  namespace fs = std::filesystem;
  std::string dir = (fs::temp_directory_path() / ("fedge-tls-" + std::to_string(::getpid()))).string();
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto publish = [&](const std::string& version, const std::string& text) {
    fs::create_directory(dir + "/" + version);
    std::ofstream(dir + "/" + version + "/tokens") << text;
    fs::create_symlink(version, dir + "/..tmp");
    fs::rename(dir + "/..tmp", dir + "/..data");
  };
  publish("..v1", "edge-a ta\n");
  fs::create_symlink("..data/tokens", dir + "/tokens");
  aggregator::ServerOptions o = Tls();
  o.tokens_file = dir + "/tokens";
  aggregator::FakeClock clock;
  o.clock = &clock;
  auto server = Start(o);
  ASSERT_NE(server, nullptr);
  const int port = server->grpc_port();
  EXPECT_TRUE(Join(port, {ca_.cert_pem}, "edge-a", "ta").ok());
  EXPECT_EQ(Join(port, {ca_.cert_pem}, "edge-a", "wrong").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // Not listed yet: retryable, so fedge-agent backs off instead of exiting.
  EXPECT_EQ(Join(port, {ca_.cert_pem}, "edge-b", "tb").error_code(), grpc::StatusCode::UNAVAILABLE);
  publish("..v2", "edge-a ta\nedge-b tb\n");
  // The file is looked at again at most once a second.
  EXPECT_EQ(Join(port, {ca_.cert_pem}, "edge-b", "tb").error_code(), grpc::StatusCode::UNAVAILABLE);
  clock.AdvanceMs(1000);
  grpc::Status s = Join(port, {ca_.cert_pem}, "edge-b", "tb");
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(server->engine().GetStatus().agents_joined, 2);
  server.reset();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace fedge::op
