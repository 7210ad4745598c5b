// TlsFiles: the agent's --tls-* files re-read when the kubelet swaps a rotated
// Secret in (issue 10 item 8).
#include "fedge/agent/runtime/tls_files.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "mounted_secret.h"

namespace fedge::agent {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::MountedSecret;

struct FakeSteadyClock {
  std::chrono::steady_clock::time_point now{std::chrono::seconds(1000)};
  TlsFiles::Clock fn() {
    return [this] { return now; };
  }
};

TlsFilePaths Paths(const MountedSecret& s) {
  return {s.path("ca.crt"), s.path("tls.crt"), s.path("tls.key"), "agg.ns.svc"};
}

TEST(TlsFilesTest, SeesARotatedSecretOnlyAfterTheInterval) {
  MountedSecret secret("rotate");
  secret.Publish({{"ca.crt", "CA"}, {"tls.crt", "CERT1"}, {"tls.key", "KEY1"}});
  FakeSteadyClock clock;
  auto files = TlsFiles::Open(Paths(secret), 30s, clock.fn());
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  EXPECT_EQ((*files)->Current().cert_pem, "CERT1");
  EXPECT_EQ((*files)->Current().server_name, "agg.ns.svc");
  secret.Publish({{"ca.crt", "CA"}, {"tls.crt", "CERT2"}, {"tls.key", "KEY2"}});
  clock.now += 29s;
  EXPECT_FALSE((*files)->Reload()) << "within the interval nothing is read";
  EXPECT_EQ((*files)->Current().cert_pem, "CERT1");
  clock.now += 1s;
  EXPECT_TRUE((*files)->Reload());
  EXPECT_EQ((*files)->Current().cert_pem, "CERT2");
  EXPECT_EQ((*files)->Current().key_pem, "KEY2");
  clock.now += 30s;
  EXPECT_FALSE((*files)->Reload()) << "unchanged";
  EXPECT_EQ((*files)->reloads(), 1);
}

TEST(TlsFilesTest, KeepsTheCredentialsInUseWhileTheFilesAreGone) {
  MountedSecret secret("gone");
  secret.Publish({{"ca.crt", "CA"}, {"tls.crt", "CERT1"}, {"tls.key", "KEY1"}});
  FakeSteadyClock clock;
  auto files = TlsFiles::Open(Paths(secret), 0s, clock.fn());
  ASSERT_TRUE(files.ok());
  fs::remove(secret.path("tls.key"));
  EXPECT_FALSE((*files)->Reload());
  EXPECT_EQ((*files)->Current().key_pem, "KEY1");
}

TEST(TlsFilesTest, OpenNamesTheFlagOfAMissingOrEmptyFile) {
  MountedSecret secret("open");
  secret.Publish({{"ca.crt", "CA"}, {"tls.crt", ""}});
  TlsFilePaths p = Paths(secret);
  auto empty = TlsFiles::Open(p, 0s);
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("--tls-cert"), std::string::npos) << empty.status().message();
  p.cert = "";
  auto half = TlsFiles::Open(p, 0s);
  EXPECT_NE(half.status().message().find("together"), std::string::npos);
  p = Paths(secret);
  p.ca = secret.dir() + "/absent.crt";
  auto no_ca = TlsFiles::Open(p, 0s);
  EXPECT_NE(no_ca.status().message().find("--tls-ca"), std::string::npos) << no_ca.status().message();
}

}  // namespace
}  // namespace fedge::agent
