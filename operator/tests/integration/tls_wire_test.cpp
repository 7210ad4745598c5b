// The certificates the operator issues into a job's Secrets, used on the wire: a
// real fedge aggregator gRPC server with the serving certificate (and, for mutual
// TLS, the job CA as --tls-client-ca), and gRPC clients configured the way
// fedge-agent configures its channel (--tls-ca, --tls-server-name, --tls-cert,
// --tls-key) with the operator's per-agent client certificates. Loopback only, port 0.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <unistd.h>

#include "fedge.grpc.pb.h"
#include "fedge/aggregator/peer_identity.h"
#include "fedge/aggregator/server.h"
#include "fedge/op/clock.h"
#include "fedge/pki.h"

namespace fedge::op {
namespace {

using namespace std::chrono_literals;

constexpr char kServiceName[] = "wn-aggregator.ml.svc";

// Certificates here meet OpenSSL's real-time checks in a real handshake: the real clock.
std::time_t WallNow() { return RealClock::Get()->WallNow(); }

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
  std::string cert{}, key{};  // client certificate (mutual TLS)
};

// A stub on its own channel (own connection, own client certificate).
std::unique_ptr<v1::Aggregator::Stub> Dial(int port, const Client& c) {
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
  return v1::Aggregator::NewStub(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), creds, args));
}

v1::RequestHeader Header(const std::string& agent, const std::string& session = "") {
  v1::RequestHeader h;
  h.set_protocol_version(1);
  h.set_job("ml/wn");
  h.set_agent_id(agent);
  h.set_session(session);
  return h;
}

// Join as `agent` over `stub`; the gRPC status, and the session in *session.
grpc::Status JoinOn(v1::Aggregator::Stub& stub, const std::string& agent, const std::string& token = "",
                    std::string* session = nullptr) {
  v1::JoinRequest req;
  *req.mutable_header() = Header(agent);
  req.set_node_name(agent);
  req.set_token(token);
  v1::JoinResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  grpc::Status s = stub.Join(&ctx, req, &resp);
  if (s.ok() && resp.session().empty()) return grpc::Status(grpc::StatusCode::INTERNAL, "no session");
  if (session) *session = resp.session();
  return s;
}

// Join as `agent` on a new connection; the gRPC status of the call.
grpc::Status Join(int port, const Client& c, const std::string& agent, const std::string& token = "") {
  return JoinOn(*Dial(port, c), agent, token);
}

// A tokens file laid out as the kubelet mounts a Secret: tokens -> ..data/tokens and
// ..data -> ..vN, which Publish swaps atomically (the way the operator's token updates
// reach a running aggregator). The directory goes with the object.
class MountedTokens {
 public:
  MountedTokens(const std::string& tag, const std::string& tokens)
      : dir_((std::filesystem::temp_directory_path() / (tag + "-" + std::to_string(::getpid()))).string()) {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    Publish("..v1", tokens);
    std::filesystem::create_symlink("..data/tokens", file());
  }
  ~MountedTokens() { std::filesystem::remove_all(dir_); }
  void Publish(const std::string& version, const std::string& tokens) {
    std::filesystem::create_directory(dir_ + "/" + version);
    std::ofstream(dir_ + "/" + version + "/tokens") << tokens;
    std::filesystem::create_symlink(version, dir_ + "/..tmp");
    std::filesystem::rename(dir_ + "/..tmp", dir_ + "/..data");
  }
  std::string file() const { return dir_ + "/tokens"; }

 private:
  std::string dir_;
};

// A Secret mounted the way the kubelet mounts it: each key a symlink <key> ->
// ..data/<key>, and ..data -> ..vN swapped atomically by Publish (how a renewed
// certificate reaches a running aggregator). The directory goes with the object.
class MountedSecret {
 public:
  using Files = std::map<std::string, std::string>;
  MountedSecret(const std::string& tag, const Files& files)
      : dir_((std::filesystem::temp_directory_path() / (tag + "-" + std::to_string(::getpid()))).string()) {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    Publish("..v1", files);
    for (const auto& [key, text] : files) std::filesystem::create_symlink("..data/" + key, file(key));
  }
  ~MountedSecret() { std::filesystem::remove_all(dir_); }
  void Publish(const std::string& version, const Files& files) {
    std::filesystem::create_directory(dir_ + "/" + version);
    for (const auto& [key, text] : files) std::ofstream(dir_ + "/" + version + "/" + key) << text;
    std::filesystem::create_symlink(version, dir_ + "/..tmp");
    std::filesystem::rename(dir_ + "/..tmp", dir_ + "/..data");
  }
  std::string file(const std::string& key) const { return dir_ + "/" + key; }

 private:
  std::string dir_;
};

class TlsWireTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ca = pki::GenerateCa("wn-ca", WallNow());
    ASSERT_TRUE(ca.ok());
    ca_ = *ca;
    // Exactly the names the reconciler issues the serving certificate for.
    auto tls = pki::IssueServingCert(
        ca_, "wn-aggregator",
        {"wn-aggregator", "wn-aggregator.ml", "wn-aggregator.ml.svc", "wn-aggregator.ml.svc.cluster.local"},
        WallNow());
    ASSERT_TRUE(tls.ok());
    serving_ = *tls;
    auto other = pki::GenerateCa("another-job-ca", WallNow());
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
  // Reading `tokens`, which it looks at again once a second on clock_.
  std::unique_ptr<aggregator::AggregatorServer> StartWithTokens(aggregator::ServerOptions o,
                                                                const MountedTokens& tokens) {
    o.tokens_file = tokens.file();
    o.clock = &clock_;
    return Start(std::move(o));
  }
  aggregator::ServerOptions Tls() const {
    aggregator::ServerOptions o;
    o.tls_cert_pem = serving_.cert_pem;
    o.tls_key_pem = serving_.key_pem;
    return o;
  }

  pki::KeyPair ca_, serving_, other_ca_;
  aggregator::FakeClock clock_;  // the servers' that StartWithTokens starts
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
  auto foreign = pki::IssueServingCert(other_ca_, "edge-b", {"edge-b"}, WallNow());
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
  MountedTokens tokens("fedge-tls", "edge-a ta\n");
  auto server = StartWithTokens(Tls(), tokens);
  ASSERT_NE(server, nullptr);
  const int port = server->grpc_port();
  EXPECT_TRUE(Join(port, {ca_.cert_pem}, "edge-a", "ta").ok());
  EXPECT_EQ(Join(port, {ca_.cert_pem}, "edge-a", "wrong").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // Not listed yet: retryable, so fedge-agent backs off instead of exiting.
  EXPECT_EQ(Join(port, {ca_.cert_pem}, "edge-b", "tb").error_code(), grpc::StatusCode::UNAVAILABLE);
  tokens.Publish("..v2", "edge-a ta\nedge-b tb\n");
  // The file is looked at again at most once a second.
  EXPECT_EQ(Join(port, {ca_.cert_pem}, "edge-b", "tb").error_code(), grpc::StatusCode::UNAVAILABLE);
  clock_.AdvanceMs(1000);
  grpc::Status s = Join(port, {ca_.cert_pem}, "edge-b", "tb");
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(server->engine().GetStatus().agents_joined, 2);
}

// ---- mutual TLS with the operator's per-agent client certificates (issue 10 item 8) ----
class MutualTlsTest : public TlsWireTest {
 protected:
  aggregator::ServerOptions Mtls() const {
    aggregator::ServerOptions o = Tls();
    o.tls_client_ca_pem = ca_.cert_pem;  // what the operator passes: --tls-client-ca <job CA>
    return o;
  }
  // An agent's client configuration with its own certificate from the job CA.
  Client AgentClient(const std::string& agent_id, std::time_t lifetime = 24 * 3600) {
    auto cert = pki::IssueClientCert(ca_, agent_id, WallNow(), lifetime);
    EXPECT_TRUE(cert.ok()) << cert.status().ToString();
    return {ca_.cert_pem, kServiceName, cert.ok() ? cert->cert_pem : "", cert.ok() ? cert->key_pem : ""};
  }
};

TEST_F(MutualTlsTest, TheOperatorsCertificateIdentifiesTheAgentToTheAggregator) {
  // The contract between pki.h (writer) and peer_identity.h (reader).
  for (const std::string& id : std::vector<std::string>{"edge-a", std::string(253, 'n'), "a b,c/%"}) {
    auto cert = pki::IssueClientCert(ca_, id, WallNow(), 3600);
    ASSERT_TRUE(cert.ok());
    auto got = aggregator::AgentIdFromCertificate(cert->cert_pem);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(*got, id);
  }
  // A certificate made elsewhere, without the URI name: its common name.
  auto plain = pki::IssueServingCert(ca_, "edge-x", {"edge-x"}, WallNow());
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(*aggregator::AgentIdFromCertificate(plain->cert_pem), "edge-x");
  EXPECT_FALSE(aggregator::AgentIdFromCertificate("not a certificate").ok());
}

TEST_F(MutualTlsTest, AgentJoinsAsTheIdItsCertificateNamesAndNoOther) {
  auto server = Start(Mtls());
  ASSERT_NE(server, nullptr);
  const int port = server->grpc_port();
  Client a = AgentClient("edge-a");
  grpc::Status own = Join(port, a, "edge-a");
  EXPECT_TRUE(own.ok()) << own.error_message();
  // The attack: edge-a's key (a compromised node) joining as edge-b.
  grpc::Status as_b = Join(port, a, "edge-b");
  EXPECT_EQ(as_b.error_code(), grpc::StatusCode::PERMISSION_DENIED) << as_b.error_message();
  EXPECT_NE(as_b.error_message().find("\"edge-b\""), std::string::npos) << as_b.error_message();
  EXPECT_NE(as_b.error_message().find("\"edge-a\""), std::string::npos) << as_b.error_message();
  EXPECT_EQ(server->engine().GetStatus().agents_joined, 1);
  // A 253-character node name is carried whole (URI name) and joins.
  std::string long_id(253, 'n');
  EXPECT_TRUE(Join(port, AgentClient(long_id), long_id).ok());
  EXPECT_EQ(Join(port, AgentClient(long_id), long_id.substr(0, 64)).error_code(),
            grpc::StatusCode::PERMISSION_DENIED)
      << "the hashed common name is not an identity";
}

TEST_F(MutualTlsTest, ASessionIsUsableOnlyOverItsAgentsCertificate) {
  auto server = Start(Mtls());
  ASSERT_NE(server, nullptr);
  const int port = server->grpc_port();
  auto as_a = Dial(port, AgentClient("edge-a"));
  auto as_b = Dial(port, AgentClient("edge-b"));
  std::string session_a, session_b;
  ASSERT_TRUE(JoinOn(*as_a, "edge-a", "", &session_a).ok());
  ASSERT_TRUE(JoinOn(*as_b, "edge-b", "", &session_b).ok());
  auto get_task = [](v1::Aggregator::Stub& stub, const v1::RequestHeader& h) {
    v1::TaskRequest req;
    *req.mutable_header() = h;
    v1::Task task;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    return stub.GetTask(&ctx, req, &task);
  };
  EXPECT_TRUE(get_task(*as_a, Header("edge-a", session_a)).ok());
  // edge-b's connection with edge-a's session (learned somehow): refused both ways.
  grpc::Status claim_a = get_task(*as_b, Header("edge-a", session_a));
  EXPECT_EQ(claim_a.error_code(), grpc::StatusCode::PERMISSION_DENIED) << claim_a.error_message();
  grpc::Status own_id = get_task(*as_b, Header("edge-b", session_a));
  EXPECT_EQ(own_id.error_code(), grpc::StatusCode::UNAUTHENTICATED) << own_id.error_message();
  // Every other RPC on edge-a's session from edge-b's connection.
  {
    v1::MetricsReport req;
    *req.mutable_header() = Header("edge-a", session_a);
    v1::MetricsAck ack;
    grpc::ClientContext ctx;
    EXPECT_EQ(as_b->ReportMetrics(&ctx, req, &ack).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    v1::UploadStatusRequest req;
    *req.mutable_header() = Header("edge-a", session_a);
    req.set_upload_id("u");
    v1::UploadStatus st;
    grpc::ClientContext ctx;
    EXPECT_EQ(as_b->GetUploadStatus(&ctx, req, &st).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    v1::FetchGlobalRequest req;
    *req.mutable_header() = Header("edge-a", session_a);
    grpc::ClientContext ctx;
    auto reader = as_b->FetchGlobal(&ctx, req);
    v1::GlobalChunk chunk;
    while (reader->Read(&chunk)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    v1::SubmitUpdateResponse resp;
    grpc::ClientContext ctx;
    auto writer = as_b->SubmitUpdate(&ctx, &resp);
    v1::UpdateChunk chunk;
    *chunk.mutable_header()->mutable_header() = Header("edge-a", session_a);
    chunk.mutable_header()->set_total_bytes(4);
    writer->Write(chunk);
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  }
  // edge-a itself is unaffected.
  EXPECT_TRUE(get_task(*as_a, Header("edge-a", session_a)).ok());
}

TEST_F(MutualTlsTest, RevokedAgentCannotJoinWithItsLeftoverCertificate) {
  MountedTokens tokens("fedge-mtls", "edge-a ta\nedge-b tb\n");
  auto server = StartWithTokens(Mtls(), tokens);
  ASSERT_NE(server, nullptr);
  const int port = server->grpc_port();
  Client a = AgentClient("edge-a");
  auto stub = Dial(port, a);
  std::string session;
  ASSERT_TRUE(JoinOn(*stub, "edge-a", "ta", &session).ok());
  auto get_task = [&] {
    v1::TaskRequest req;
    *req.mutable_header() = Header("edge-a", session);
    v1::Task task;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    return stub->GetTask(&ctx, req, &task);
  };
  EXPECT_TRUE(get_task().ok());
  // The node leaves the selector: the operator removes its token (the kubelet swaps the file).
  tokens.Publish("..v2", "edge-b tb\n");
  clock_.AdvanceMs(1000);
  // Its live session ends (a node that ignores its pod's deletion keeps no say) ...
  grpc::Status in_session = get_task();
  EXPECT_EQ(in_session.error_code(), grpc::StatusCode::UNAUTHENTICATED) << in_session.error_message();
  EXPECT_NE(in_session.error_message().find("revoked"), std::string::npos) << in_session.error_message();
  // ... and its still valid certificate cannot Join again.
  grpc::Status leftover = Join(port, a, "edge-a", "ta");
  EXPECT_FALSE(leftover.ok()) << "a valid certificate alone must not admit a revoked agent";
  EXPECT_EQ(leftover.error_code(), grpc::StatusCode::UNAVAILABLE) << leftover.error_message();
  EXPECT_TRUE(Join(port, AgentClient("edge-b"), "edge-b", "tb").ok());
}

TEST_F(MutualTlsTest, ExpiredCertificateFailsTheHandshake) {
  auto server = Start(Mtls());
  ASSERT_NE(server, nullptr);
  // Issued two hours ago for one hour: what a leftover certificate becomes.
  auto old = pki::IssueClientCert(ca_, "edge-a", WallNow() - 2 * 3600, 3600);
  ASSERT_TRUE(old.ok());
  grpc::Status s =
      Join(server->grpc_port(), {ca_.cert_pem, kServiceName, old->cert_pem, old->key_pem}, "edge-a");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_EQ(server->engine().GetStatus().agents_joined, 0);
  EXPECT_TRUE(Join(server->grpc_port(), AgentClient("edge-a"), "edge-a").ok());
}

// Regression for a certificate nobody renewed: the serving certificate (one
// year) was read once at start, so a year on every agent's handshake failed
// while the job showed Running. The aggregator now re-reads its mounted files;
// here it starts on an expired certificate and serves the renewed one, with
// mutual TLS still required, without a restart.
TEST_F(MutualTlsTest, ARenewedServingCertificateIsServedWithoutARestart) {
  const std::vector<std::string> names = {"wn-aggregator", "wn-aggregator.ml", "wn-aggregator.ml.svc",
                                          "wn-aggregator.ml.svc.cluster.local"};
  auto expired = pki::IssueServingCert(ca_, "wn-aggregator", names, WallNow() - 400 * 24 * 3600);
  ASSERT_TRUE(expired.ok());
  MountedSecret mounted(
      "fedge-tls-renew",
      {{"tls.crt", expired->cert_pem}, {"tls.key", expired->key_pem}, {"ca.crt", ca_.cert_pem}});
  aggregator::ServerOptions o;
  o.tls_cert_pem = expired->cert_pem;
  o.tls_key_pem = expired->key_pem;
  o.tls_client_ca_pem = ca_.cert_pem;
  o.tls_cert_file = mounted.file("tls.crt");
  o.tls_key_file = mounted.file("tls.key");
  o.tls_client_ca_file = mounted.file("ca.crt");
  o.tls_refresh_interval_s = 1;
  auto server = Start(o);
  ASSERT_NE(server, nullptr);
  const int port = server->grpc_port();
  grpc::Status before = Join(port, AgentClient("edge-a"), "edge-a");
  EXPECT_EQ(before.error_code(), grpc::StatusCode::UNAVAILABLE) << before.error_message();

  // The operator writes the renewed certificate into the Secret; the kubelet swaps it in.
  mounted.Publish("..v2",
                  {{"tls.crt", serving_.cert_pem}, {"tls.key", serving_.key_pem}, {"ca.crt", ca_.cert_pem}});
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  grpc::Status after = Join(port, AgentClient("edge-a"), "edge-a");
  while (!after.ok() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(100ms);  // the watcher's next read (1 s here)
    after = Join(port, AgentClient("edge-a"), "edge-a");
  }
  EXPECT_TRUE(after.ok()) << after.error_message();
  EXPECT_EQ(server->engine().GetStatus().agents_joined, 1);
  // Still mutual TLS: no client certificate, no handshake.
  EXPECT_FALSE(Join(port, {ca_.cert_pem}, "edge-b").ok());
}

TEST_F(TlsWireTest, TlsFilesWithoutTheirContentsAreRejectedAtCreate) {
  aggregator::ServerOptions o = Tls();
  o.tls_cert_file = "/nonexistent/tls.crt";  // no key file beside it
  EXPECT_EQ(aggregator::AggregatorServer::Create(Spec(), o).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedge::op
