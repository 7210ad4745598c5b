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

#include "fedge/op/pki.h"
#include "fedge/op/rest_kube_client.h"

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
    auto server_ca = GenerateCa("server-ca", now);
    auto other_ca = GenerateCa("other-ca", now);
    ASSERT_TRUE(server_ca.ok() && other_ca.ok());
    auto serving = IssueServingCert(*server_ca, "localhost", {"localhost"}, now);
    ASSERT_TRUE(serving.ok());
    server_ca_pem_ = server_ca->cert_pem;
    other_ca_pem_ = other_ca->cert_pem;
    WriteFile(dir_ / "server.pem", serving->cert_pem);
    WriteFile(dir_ / "server.key", serving->key_pem);
    WriteFile(dir_ / "server-ca.pem", server_ca_pem_);

    port_ = FreePort();
    const std::string accept = "127.0.0.1:" + std::to_string(port_);
    const std::string cert = (dir_ / "server.pem").string(), key = (dir_ / "server.key").string();
    const char* argv[] = {"openssl",    "s_server", "-quiet",    "-accept", accept.c_str(), "-cert",
                          cert.c_str(), "-key",     key.c_str(), "-www",    nullptr};
    ASSERT_EQ(posix_spawnp(&server_pid_, "openssl", nullptr, nullptr, const_cast<char**>(argv), environ), 0);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!CanConnect(port_) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ASSERT_TRUE(CanConnect(port_)) << "openssl s_server did not listen on " << accept;
  }
  void TearDown() override {
    unsetenv("SSL_CERT_FILE");
    if (server_pid_ > 0) {
      kill(server_pid_, SIGTERM);
      waitpid(server_pid_, nullptr, 0);
    }
    fs::remove_all(dir_);
  }
  // One request; the status says whether the TLS handshake was refused.
  Status GetWith(const std::string& ca_pem) {
    KubeConfig cfg;
    cfg.server = "https://localhost:" + std::to_string(port_);
    cfg.ca_pem = ca_pem;
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

TEST(SkipSystemTrustStoreLoadTest, PointsSslCertFileAtNothingUnlessItIsSet) {
  unsetenv("SSL_CERT_FILE");
  SkipSystemTrustStoreLoad();
  ASSERT_NE(std::getenv("SSL_CERT_FILE"), nullptr);
  EXPECT_STREQ(std::getenv("SSL_CERT_FILE"), "/dev/null");
  setenv("SSL_CERT_FILE", "/etc/mine.pem", 1);
  SkipSystemTrustStoreLoad();
  EXPECT_STREQ(std::getenv("SSL_CERT_FILE"), "/etc/mine.pem");
  unsetenv("SSL_CERT_FILE");
}

}  // namespace
}  // namespace fedge::op
