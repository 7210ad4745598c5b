#include "fedge/cli/run_pki.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <ctime>
#include <filesystem>

#include "fedge/cli/io.h"
#include "fedge/pki.h"
#include "temp_dir.h"

namespace fedge::cli {
namespace {

namespace fs = std::filesystem;

const char* kTlsJob = R"(apiVersion: fedge.io/v1alpha1
kind: FederatedTrainingJob
metadata:
  name: tls
spec:
  model: {path: models/m, labels: [a, b]}
  data: {path: data/d}
  agents: {minAgents: 2, replicas: 2}
  rounds: {total: 2, quorum: 2, localSteps: 5}
  privacy: {tls: true}
)";

RunPlan TlsPlan(const std::string& work) {
  auto spec = ParseJobSpec(kTlsJob);
  EXPECT_TRUE(spec.ok()) << spec.status().ToString();
  RunOptions o;
  o.work_dir = work;
  auto plan = PlanRun(*spec, o, "/cwd");
  EXPECT_TRUE(plan.ok()) << plan.status().ToString();
  RunPlan p = *plan;
  p.aggregator_bin = "/bin/agg";
  p.agent_bin = "/bin/agent";
  p.grpc_port = 5000;
  p.http_port = 5001;
  p.agent_http_ports = {5002, 5003};
  return p;
}

// The values following each of `flags` in argv, in order ("" when a flag is absent).
std::vector<std::string> Values(const ChildSpec& c, const std::vector<std::string>& flags) {
  std::vector<std::string> out;
  for (const std::string& f : flags) {
    auto it = std::find(c.argv.begin(), c.argv.end(), f);
    out.push_back(it != c.argv.end() && it + 1 != c.argv.end() ? *(it + 1) : "");
  }
  return out;
}

unsigned Mode(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

TEST(RunTlsTest, PrivacyTlsGivesEveryChildTheRunsCredentialsAndPlaintextGivesNone) {
  RunPlan p = TlsPlan("/w");
  ASSERT_TRUE(p.tls);
  auto children = BuildChildSpecs(p);
  ASSERT_EQ(children.size(), 3u);
  EXPECT_EQ(Values(children[0], {"--tls-cert", "--tls-key", "--tls-client-ca"}),
            (std::vector<std::string>{"/w/pki/aggregator.crt", "/w/pki/aggregator.key", "/w/pki/ca.crt"}));
  for (int i = 1; i <= 2; ++i) {
    const std::string id = "agent-" + std::to_string(i - 1);
    EXPECT_EQ(Values(children[i], {"--tls-ca", "--tls-server-name", "--tls-cert", "--tls-key"}),
              (std::vector<std::string>{"/w/pki/ca.crt", "localhost", "/w/pki/" + id + ".crt",
                                        "/w/pki/" + id + ".key"}))
        << id;
  }

  p.tls = false;
  for (const ChildSpec& c : BuildChildSpecs(p)) {
    for (const std::string& a : c.argv)
      EXPECT_EQ(a.rfind("--tls", 0), std::string::npos) << c.name << " " << a;
  }
}

// The same manifest runs the same way locally as in a cluster (CRD default true): a
// manifest that does not mention privacy.tls gets mutual TLS; only false opts out.
TEST(RunTlsTest, AManifestWithoutPrivacyTlsRunsMutualTlsAndFalseOptsOut) {
  std::string job = kTlsJob;
  const std::string line = "  privacy: {tls: true}\n";
  job.erase(job.find(line), line.size());
  for (const auto& [privacy, want] : std::vector<std::pair<std::string, bool>>{
           {"", true}, {"  privacy: {}\n", true}, {"  privacy: {tls: false}\n", false}}) {
    auto spec = ParseJobSpec(job + privacy);
    ASSERT_TRUE(spec.ok()) << spec.status().ToString();
    RunOptions o;
    o.work_dir = "/w";
    auto plan = PlanRun(*spec, o, "/cwd");
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    EXPECT_EQ(plan->tls, want) << "privacy: [" << privacy << "]";
    auto children = BuildChildSpecs(*plan);
    ASSERT_FALSE(children.empty());
    EXPECT_EQ(Values(children[0], {"--tls-client-ca"})[0], want ? "/w/pki/ca.crt" : "") << privacy;
  }
}

TEST(RunTlsTest, WriteRunPkiMakesAPrivateDirectoryWhoseCertificatesNameEachChild) {
  TempDir tmp;
  const RunPlan p = TlsPlan(tmp.path());
  const std::time_t now = std::time(nullptr);
  ASSERT_TRUE(WriteRunPki(p, now).ok());
  const RunPkiPaths paths = PkiPaths(p);
  EXPECT_EQ(Mode(paths.dir), 0700u);
  EXPECT_EQ(Mode(paths.aggregator_key), 0600u);
  EXPECT_FALSE(fs::exists(paths.dir + "/ca.key")) << "the CA key stays in fedge run's memory";

  auto ca = ReadWholeFile(paths.ca_cert);
  auto serving = ReadWholeFile(paths.aggregator_cert);
  auto serving_key = ReadWholeFile(paths.aggregator_key);
  ASSERT_TRUE(ca.ok() && serving.ok() && serving_key.ok());
  EXPECT_TRUE(pki::SignedBy(*serving, *ca));
  EXPECT_TRUE(pki::KeyMatchesCert(*serving, *serving_key));
  std::string old_agent_cert;
  for (int i = 0; i < 2; ++i) {
    const std::string id = "agent-" + std::to_string(i);
    auto cert = ReadWholeFile(paths.AgentCert(id));
    auto key = ReadWholeFile(paths.AgentKey(id));
    ASSERT_TRUE(cert.ok() && key.ok()) << id;
    EXPECT_EQ(Mode(paths.AgentKey(id)), 0600u) << id;
    EXPECT_TRUE(pki::SignedBy(*cert, *ca)) << id;
    EXPECT_TRUE(pki::KeyMatchesCert(*cert, *key)) << id;
    auto info = pki::ReadCert(*cert);
    ASSERT_TRUE(info.ok()) << id;
    EXPECT_EQ(info->agent_id, id);
    EXPECT_GE(info->not_after, now + kRunCertLifetimeSeconds - 1);
    old_agent_cert = *cert;
  }

  // The next run: a new CA, and nothing of the last run's (its extra agent) is left.
  ASSERT_TRUE(WriteWholeFile(paths.AgentCert("agent-7"), "stale").ok());
  ASSERT_TRUE(WriteRunPki(p, now).ok());
  auto new_ca = ReadWholeFile(paths.ca_cert);
  ASSERT_TRUE(new_ca.ok());
  EXPECT_NE(*new_ca, *ca);
  EXPECT_FALSE(pki::SignedBy(old_agent_cert, *new_ca));
  EXPECT_FALSE(fs::exists(paths.AgentCert("agent-7")));
  EXPECT_EQ(Mode(paths.dir), 0700u);
}

TEST(RunTlsTest, WriteWholeFileCreatesWithTheModeAskedNotAnEarlierFilesMode) {
  TempDir tmp;
  const std::string path = tmp.path() + "/key";
  ASSERT_TRUE(WriteWholeFile(path, "public", 0644).ok());
  ASSERT_TRUE(WriteWholeFile(path, "secret", 0600).ok());
  EXPECT_EQ(Mode(path), 0600u);
  auto text = ReadWholeFile(path);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "secret");
}

}  // namespace
}  // namespace fedge::cli
