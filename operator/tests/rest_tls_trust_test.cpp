// Which CAs RestKubeClient trusts, against a real TLS server (`openssl s_server`) on
// loopback: with a CA in the kubeconfig the client trusts that CA alone, not OpenSSL's
// default store (the system bundle, which cpprest loads into every connection). The
// "system bundle" here is SSL_CERT_FILE pointed at a CA that signed the server.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "fedge/op/rest_kube_client.h"
#include "fedge/pki.h"

extern char** environ;

namespace fedge::op {
namespace {

namespace fs = std::filesystem;

void WriteFile(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

bool CanConnect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

class TlsTrustTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("fedge-tls-trust-" + std::to_string(getpid()));
    fs::create_directories(dir_);
    const std::time_t now = std::time(nullptr);
    auto server_ca = pki::GenerateCa("server-ca", now);
    auto other_ca = pki::GenerateCa("other-ca", now);
    ASSERT_TRUE(server_ca.ok() && other_ca.ok());
    auto serving = pki::IssueServingCert(*server_ca, "localhost", {"localhost"}, now);
    ASSERT_TRUE(serving.ok());
    server_ca_pem_ = server_ca->cert_pem;
    other_ca_pem_ = other_ca->cert_pem;
    WriteFile(dir_ / "server.pem", serving->cert_pem);
    WriteFile(dir_ / "server.key", serving->key_pem);
    WriteFile(dir_ / "server-ca.pem", server_ca_pem_);

    ASSERT_TRUE(StartServer({}));
  }
  // Starts `openssl s_server -www` with the serving certificate (and `extra` arguments)
  // on a free loopback port, replacing a server this test started before.
  bool StartServer(std::vector<std::string> extra) {
    StopServer();
    port_ = FreePort();
    std::vector<std::string> args = {"openssl",
                                     "s_server",
                                     "-quiet",
                                     "-accept",
                                     "127.0.0.1:" + std::to_string(port_),
                                     "-cert",
                                     (dir_ / "server.pem").string(),
                                     "-key",
                                     (dir_ / "server.key").string(),
                                     "-www"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawnp(&server_pid_, "openssl", nullptr, nullptr, argv.data(), environ) != 0) return false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!CanConnect(port_) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return CanConnect(port_);
  }
  void StopServer() {
    if (server_pid_ > 0) {
      kill(server_pid_, SIGTERM);
      waitpid(server_pid_, nullptr, 0);
      server_pid_ = -1;
    }
  }
  void TearDown() override {
    unsetenv("SSL_CERT_FILE");
    StopServer();
    fs::remove_all(dir_);
  }
  // One request; the status says whether the TLS handshake was refused.
  Status GetWith(const std::string& ca_pem, const pki::KeyPair* client_cert = nullptr) {
    KubeConfig cfg;
    cfg.server = "https://localhost:" + std::to_string(port_);
    cfg.ca_pem = ca_pem;
    if (client_cert != nullptr) {
      cfg.client_cert_pem = client_cert->cert_pem;
      cfg.client_key_pem = client_cert->key_pem;
    }
    RestClientOptions o;
    o.request_timeout = std::chrono::seconds(10);
    RestKubeClient client(cfg, o);
    return client.Get(res::kPods, "default", "p", "").status();
  }
  static bool HandshakeRefused(const Status& s) {
    const std::string& m = s.message();
    return m.find("handshake") != std::string::npos || m.find("certificate") != std::string::npos;
  }

  fs::path dir_;
  std::string server_ca_pem_, other_ca_pem_;
  int port_ = 0;
  pid_t server_pid_ = -1;
};

TEST_F(TlsTrustTest, WithAConfiguredCaTheSystemBundleIsNotTrusted) {
  // The "system bundle" trusts the server's CA; the kubeconfig names another CA.
  setenv("SSL_CERT_FILE", (dir_ / "server-ca.pem").c_str(), 1);
  Status s = GetWith(other_ca_pem_);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(HandshakeRefused(s)) << "a server certificate from a CA outside the kubeconfig was accepted: "
                                   << s.ToString();
}

TEST_F(TlsTrustTest, TheConfiguredCaIsTrustedWithTheSystemBundleEmpty) {
  setenv("SSL_CERT_FILE", "/dev/null", 1);  // what SkipSystemTrustStoreLoad sets
  Status s = GetWith(server_ca_pem_);
  // s_server -www answers with an HTML page, not JSON: the request fails after the
  // handshake, which is what this checks.
  EXPECT_FALSE(HandshakeRefused(s)) << s.ToString();
  Status refused = GetWith(other_ca_pem_);
  EXPECT_TRUE(HandshakeRefused(refused)) << refused.ToString();
}

TEST_F(TlsTrustTest, TheClientCertificateIsPresentedFromMaterialDecodedOnce) {
  // A server that requires a client certificate from its own client CA: refused without
  // one, accepted with the kubeconfig's (the key and certificate are decoded once per
  // client and shared by its connections; two requests open two connections here).
  const std::time_t now = std::time(nullptr);
  auto client_ca = pki::GenerateCa("client-ca", now);
  ASSERT_TRUE(client_ca.ok());
  auto client = pki::IssueClientCert(*client_ca, "fedge-operator", now, 3600);
  ASSERT_TRUE(client.ok());
  WriteFile(dir_ / "client-ca.pem", client_ca->cert_pem);
  ASSERT_TRUE(StartServer({"-Verify", "1", "-CAfile", (dir_ / "client-ca.pem").string()}));
  setenv("SSL_CERT_FILE", "/dev/null", 1);
  Status without = GetWith(server_ca_pem_);
  EXPECT_FALSE(without.ok());
  Status with = GetWith(server_ca_pem_, &*client);
  EXPECT_FALSE(HandshakeRefused(with)) << with.ToString();
  EXPECT_NE(without.ToString(), with.ToString()) << "the client certificate made no difference";
}

TEST(SkipSystemTrustStoreLoadTest, PointsSslCertFileAtNothingWhetherOrNotItWasSet) {
  unsetenv("SSL_CERT_FILE");
  SkipSystemTrustStoreLoad();
  ASSERT_NE(std::getenv("SSL_CERT_FILE"), nullptr);
  EXPECT_STREQ(std::getenv("SSL_CERT_FILE"), "/dev/null");
  // A bundle named here would be loaded into every connection and then replaced by the
  // configured CA (WithAConfiguredCaTheSystemBundleIsNotTrusted): pure cost.
  setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt", 1);
  SkipSystemTrustStoreLoad();
  EXPECT_STREQ(std::getenv("SSL_CERT_FILE"), "/dev/null");
  unsetenv("SSL_CERT_FILE");
}

}  // namespace
}  // namespace fedge::op
