// The per-job PKI (pki.h): agent client certificates, their identity, lifetime and
// renewal time, and common names over X.509's 64-character limit (issue 10 item 12:
// such a name used to be dropped silently, leaving a certificate with an empty subject).
#include "fedge/pki.h"

#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <thread>
#include <vector>

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace fedge::pki {
namespace {

constexpr std::time_t kNow = 1'800'000'000;

KeyPair Ca() {
  auto ca = GenerateCa("wn-ca", kNow);
  EXPECT_TRUE(ca.ok()) << ca.status().ToString();
  return ca.ok() ? *ca : KeyPair{};
}

// Extended key usage flags (XKU_*) of a PEM certificate.
uint32_t ExtendedKeyUsage(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  uint32_t xku = cert ? X509_get_extended_key_usage(cert) : 0;
  X509_free(cert);
  BIO_free(bio);
  return xku;
}

TEST(PkiTest, ClientCertificateNamesTheAgentAndLastsItsLifetime) {
  KeyPair ca = Ca();
  auto cert = IssueClientCert(ca, "edge-a", kNow, 24 * 3600);
  ASSERT_TRUE(cert.ok()) << cert.status().ToString();
  auto info = ReadCert(cert->cert_pem);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->agent_id, "edge-a");
  EXPECT_EQ(info->common_name, "edge-a");
  EXPECT_EQ(info->not_before, kNow - kCertBackdateSeconds);
  EXPECT_EQ(info->not_after, kNow + 24 * 3600);
  EXPECT_TRUE(SignedBy(cert->cert_pem, ca.cert_pem));
  EXPECT_TRUE(KeyMatchesCert(cert->cert_pem, cert->key_pem));
  EXPECT_EQ(ExtendedKeyUsage(cert->cert_pem), static_cast<uint32_t>(XKU_SSL_CLIENT)) << "client auth only";
  // Another CA did not sign it; another key does not match it.
  EXPECT_FALSE(SignedBy(cert->cert_pem, Ca().cert_pem));
  auto other = IssueClientCert(ca, "edge-a", kNow, 3600);
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(KeyMatchesCert(cert->cert_pem, other->key_pem));
  EXPECT_NE(ReadCert(other->cert_pem)->serial, info->serial);
}

// Regression (issue 10 item 12): X509_NAME_add_entry_by_txt refuses a common name over
// 64 characters and the refusal was ignored. Node names reach 253 characters.
TEST(PkiTest, LongAgentIdGoesInTheUriNameWithAHashedCommonName) {
  KeyPair ca = Ca();
  std::string prefix(60, 'n');  // two ids that share their first 60 characters
  std::string long_a = prefix + ".rack-1.site-a.example.com", long_b = prefix + ".rack-2.site-a.example.com";
  std::string node253 = std::string(249, 'x') + ".com";
  for (const std::string& id : {long_a, long_b, node253, std::string(64, 'y')}) {
    auto cert = IssueClientCert(ca, id, kNow, 3600);
    ASSERT_TRUE(cert.ok()) << id.size() << ": " << cert.status().ToString();
    auto info = ReadCert(cert->cert_pem);
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->agent_id, id) << "the full id travels in the URI name";
    EXPECT_FALSE(info->common_name.empty()) << "never an empty subject";
    EXPECT_LE(info->common_name.size(), kMaxCommonNameLength);
    EXPECT_EQ(info->common_name, CommonName(id));
  }
  EXPECT_EQ(CommonName(std::string(64, 'y')), std::string(64, 'y'));  // 64 fits as is
  EXPECT_EQ(CommonName(long_a).size(), 64u);
  EXPECT_EQ(CommonName(long_a).substr(0, 47), long_a.substr(0, 47));
  EXPECT_NE(CommonName(long_a), CommonName(long_b));
  // The CA's and the serving certificate's names follow the same rule.
  std::string long_job = "fedge job " + std::string(63, 'n') + "/" + std::string(40, 'j');
  auto big_ca = GenerateCa(long_job, kNow);
  ASSERT_TRUE(big_ca.ok()) << big_ca.status().ToString();
  EXPECT_EQ(ReadCert(big_ca->cert_pem)->common_name, CommonName(long_job));
  auto serving = IssueServingCert(*big_ca, std::string(80, 's'), {"svc.ns.svc"}, kNow);
  ASSERT_TRUE(serving.ok()) << serving.status().ToString();
  EXPECT_EQ(ReadCert(serving->cert_pem)->common_name.size(), 64u);
}

TEST(PkiTest, EveryCertificateIsDatedByTheTimeItIsGiven) {
  // The caller's Clock dates every certificate (pki.h): none reads the time itself.
  for (std::time_t now : {kNow, kNow + 10L * 365 * 24 * 3600}) {
    auto ca = GenerateCa("wn-ca", now);
    ASSERT_TRUE(ca.ok()) << ca.status().ToString();
    EXPECT_EQ(ReadCert(ca->cert_pem)->not_before, now - kCertBackdateSeconds);
    EXPECT_EQ(ReadCert(ca->cert_pem)->not_after, now + 3650L * 24 * 3600);
    auto serving = IssueServingCert(*ca, "wn-aggregator", {"wn-aggregator.ml.svc"}, now);
    ASSERT_TRUE(serving.ok()) << serving.status().ToString();
    EXPECT_EQ(ReadCert(serving->cert_pem)->not_before, now - kCertBackdateSeconds);
    EXPECT_EQ(ReadCert(serving->cert_pem)->not_after, now + 365L * 24 * 3600);
    auto client = IssueClientCert(*ca, "edge-a", now, 3600);
    ASSERT_TRUE(client.ok());
    EXPECT_EQ(ReadCert(client->cert_pem)->not_after, now + 3600);
  }
}

TEST(PkiTest, HexSha256IsTheStandardDigest) {
  EXPECT_EQ(HexSha256(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(HexSha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(PkiTest, AgentIdsWithAnyCharacterRoundTripThroughTheUri) {
  EXPECT_EQ(AgentUri("edge-a.site_1~x"), "urn:fedge:agent:edge-a.site_1~x");
  EXPECT_EQ(AgentUri("a b,c/%"), "urn:fedge:agent:a%20b%2Cc%2F%25");
  KeyPair ca = Ca();
  for (const std::string id : {"a b,c/%", "DNS:evil.example.com", "x,URI:urn:fedge:agent:admin"}) {
    auto cert = IssueClientCert(ca, id, kNow, 3600);
    ASSERT_TRUE(cert.ok()) << id;
    EXPECT_EQ(ReadCert(cert->cert_pem)->agent_id, id) << "one name, never split at a comma";
  }
}

TEST(PkiTest, BadRequestsAreRefusedWithAReason) {
  KeyPair ca = Ca();
  auto empty = IssueClientCert(ca, "", kNow, 3600);
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  auto brief = IssueClientCert(ca, "edge-a", kNow, 59);
  EXPECT_EQ(brief.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(brief.status().message().find("60 s"), std::string::npos) << brief.status().message();
  auto no_ca = IssueClientCert({"not a pem", "nor this"}, "edge-a", kNow, 3600);
  EXPECT_EQ(no_ca.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadCert("garbage").status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(SignedBy("garbage", ca.cert_pem));
  EXPECT_FALSE(KeyMatchesCert("garbage", ca.key_pem));
}

TEST(PkiTest, RenewalComesWhenAThirdOfTheLifetimeRemains) {
  CertInfo day{kNow, kNow + 24 * 3600, "", "", ""};
  EXPECT_EQ(RenewalTime(day), kNow + 16 * 3600);
  CertInfo odd{100, 400, "", "", ""};
  EXPECT_EQ(RenewalTime(odd), 300);
  // Short lifetimes are backdated by a tenth, so renewal still falls after issuance.
  KeyPair ca = Ca();
  auto cert = IssueClientCert(ca, "edge-a", kNow, 60);
  ASSERT_TRUE(cert.ok());
  auto info = ReadCert(cert->cert_pem);
  EXPECT_EQ(info->not_before, kNow - 6);
  EXPECT_GT(RenewalTime(*info), kNow);
  EXPECT_LT(RenewalTime(*info), info->not_after);
}

// The operator decodes the job CA once per pass and issues every agent's certificate
// from it, on several threads at once (reconciler.cpp, Run::JobCa).
TEST(PkiTest, ADecodedCaIssuesFromManyThreadsWhatTheOneShotFunctionIssues) {
  KeyPair ca_pair = Ca();
  auto ca = CertificateAuthority::Load(ca_pair);
  ASSERT_TRUE(ca.ok()) << ca.status().ToString();
  constexpr int kThreads = 8, kEach = 4;
  std::vector<std::vector<std::pair<KeyPair, CertInfo>>> issued(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        CertInfo info;
        auto cert = ca->IssueClientCert("edge-" + std::to_string(t * kEach + i), kNow, 3600, &info);
        ASSERT_TRUE(cert.ok()) << cert.status().ToString();
        issued[t].push_back({*cert, info});
      }
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> serials;
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(issued[t].size(), static_cast<size_t>(kEach));
    for (int i = 0; i < kEach; ++i) {
      const auto& [cert, info] = issued[t][i];
      EXPECT_TRUE(SignedBy(cert.cert_pem, ca_pair.cert_pem));
      EXPECT_TRUE(KeyMatchesCert(cert.cert_pem, cert.key_pem));
      EXPECT_EQ(ExtendedKeyUsage(cert.cert_pem), static_cast<uint32_t>(XKU_SSL_CLIENT));
      // What the reconciler takes instead of parsing the certificate it just made.
      auto read = ReadCert(cert.cert_pem);
      ASSERT_TRUE(read.ok());
      EXPECT_EQ(info.agent_id, "edge-" + std::to_string(t * kEach + i));
      EXPECT_EQ(info.agent_id, read->agent_id);
      EXPECT_EQ(info.common_name, read->common_name);
      EXPECT_EQ(info.not_before, read->not_before);
      EXPECT_EQ(info.not_after, read->not_after);
      EXPECT_EQ(info.serial, read->serial);
      EXPECT_EQ(info.not_after, kNow + 3600);
      serials.insert(info.serial);
    }
  }
  EXPECT_EQ(serials.size(), static_cast<size_t>(kThreads * kEach)) << "a serial number repeated";

  auto serving = ca->IssueServingCert("wn-aggregator", {"wn-aggregator.ml.svc"}, kNow);
  ASSERT_TRUE(serving.ok());
  EXPECT_TRUE(SignedBy(serving->cert_pem, ca_pair.cert_pem));
  EXPECT_EQ(ExtendedKeyUsage(serving->cert_pem), static_cast<uint32_t>(XKU_SSL_SERVER));
}

TEST(PkiTest, ACaWhoseKeyIsNotItsCertificatesIsRefused) {
  KeyPair a = Ca(), b = Ca();
  auto mixed = CertificateAuthority::Load({a.cert_pem, b.key_pem});
  EXPECT_EQ(mixed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(mixed.status().message().find("not the CA certificate's key"), std::string::npos)
      << mixed.status().ToString();
  EXPECT_EQ(CertificateAuthority::Load({"garbage", a.key_pem}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(CertificateAuthority::Load({a.cert_pem, ""}).status().code(), StatusCode::kInvalidArgument);
  // The one-shot functions check the same.
  EXPECT_EQ(IssueClientCert({a.cert_pem, b.key_pem}, "edge-a", kNow, 3600).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedge::pki
