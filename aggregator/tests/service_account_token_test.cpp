#include "fedge/aggregator/service_account_token.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "jwt_test_util.h"
#include "test_util.h"

namespace fedge::aggregator {
namespace {

using nlohmann::json;
using testing::Base64Url;
using testing::Jwks;
using testing::PodTokenClaims;
using testing::TestSigningKey;

constexpr int64_t kNowS = 1'733'399'500;
constexpr int64_t kNowMs = kNowS * 1000;

ServiceAccountTokenPolicy Policy() {
  ServiceAccountTokenPolicy p;
  p.issuer = testing::kTestIssuer;
  p.audience = testing::kTestAudience;
  EXPECT_TRUE(ParseServiceAccountName(testing::kTestServiceAccount, &p).ok());
  return p;
}

// Keys are slow to make (RSA): once for the suite.
class ServiceAccountTokenTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    rsa_ = new TestSigningKey(TestSigningKey::Rsa("rsa-1"));
    ec_ = new TestSigningKey(TestSigningKey::P256("ec-1"));
    weak_ = new TestSigningKey(TestSigningKey::Rsa("weak", 1024));
    stranger_ = new TestSigningKey(TestSigningKey::Rsa("rsa-1"));  // another issuer's key, same kid
  }
  static void TearDownTestSuite() {
    delete rsa_;
    delete ec_;
    delete weak_;
    delete stranger_;
  }

  void SetUp() override {
    auto keys = JsonWebKeySet::Parse(Jwks({rsa_, ec_, weak_}));
    ASSERT_TRUE(keys.ok()) << keys.status().ToString();
    keys_ = *keys;
  }

  StatusOr<ServiceAccountClaims> Verify(const std::string& token, const std::string& agent = "edge-3") {
    reason_ = "unset";
    return keys_->Verify(token, Policy(), agent, kNowMs, &reason_);
  }
  // Expects `token` refused with `code`, reason label `reason` and `words` in the message.
  void ExpectRefused(const std::string& token, StatusCode code, std::string_view reason,
                     const std::string& words) {
    auto r = Verify(token);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), code) << r.status().ToString();
    EXPECT_EQ(reason_, reason) << r.status().ToString();
    EXPECT_NE(r.status().message().find(words), std::string::npos) << r.status().ToString();
  }

  static json Claims(const std::string& node = "edge-3") { return PodTokenClaims(kNowS - 100, node); }

  static TestSigningKey* rsa_;
  static TestSigningKey* ec_;
  static TestSigningKey* weak_;
  static TestSigningKey* stranger_;
  std::shared_ptr<const JsonWebKeySet> keys_;
  std::string_view reason_;
};
TestSigningKey* ServiceAccountTokenTest::rsa_ = nullptr;
TestSigningKey* ServiceAccountTokenTest::ec_ = nullptr;
TestSigningKey* ServiceAccountTokenTest::weak_ = nullptr;
TestSigningKey* ServiceAccountTokenTest::stranger_ = nullptr;

TEST_F(ServiceAccountTokenTest, AcceptsAValidRs256TokenAndReturnsItsClaims) {
  auto claims = Verify(rsa_->Sign(Claims()));
  ASSERT_TRUE(claims.ok()) << claims.status().ToString();
  EXPECT_EQ(claims->pod_name, "job1-agent-edge-3");
  EXPECT_EQ(claims->pod_uid, "pod-uid-edge-3");
  EXPECT_EQ(claims->node_name, "edge-3");
  EXPECT_EQ(claims->expires_unix_s, kNowS - 100 + 600);
  EXPECT_EQ(reason_, "");
  EXPECT_EQ(keys_->usable_keys(), 2u);  // the 1024-bit key is not one
}

TEST_F(ServiceAccountTokenTest, AcceptsAValidEs256TokenAndReturnsItsClaims) {
  auto claims = Verify(ec_->Sign(Claims()));
  ASSERT_TRUE(claims.ok()) << claims.status().ToString();
  EXPECT_EQ(claims->pod_name, "job1-agent-edge-3");
  EXPECT_EQ(claims->node_name, "edge-3");
}

TEST_F(ServiceAccountTokenTest, AcceptsAStringAudienceAndTriesEveryKeyOfTheTypeWithoutAKid) {
  json claims = Claims();
  claims["aud"] = testing::kTestAudience;
  TestSigningKey anonymous{"", "ES256", std::unique_ptr<EVP_PKEY, testing::PkeyDeleter>(EVP_EC_gen("P-256"))};
  TestSigningKey other = TestSigningKey::P256("ec-2");
  auto keys = JsonWebKeySet::Parse(Jwks({rsa_, &other, ec_}));
  ASSERT_TRUE(keys.ok());
  TestSigningKey no_kid{"", "ES256", nullptr};
  no_kid.pkey.reset(ec_->pkey.get());
  EVP_PKEY_up_ref(ec_->pkey.get());
  auto r = (*keys)->Verify(no_kid.Sign(claims), Policy(), "edge-3", kNowMs);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  // A key of no one's: every P-256 key tried, none verifies.
  r = (*keys)->Verify(anonymous.Sign(claims), Policy(), "edge-3", kNowMs);
  EXPECT_EQ(r.status().code(), StatusCode::kUnauthenticated);
}

TEST_F(ServiceAccountTokenTest, RefusesATamperedPayload) {
  const std::string token = rsa_->Sign(Claims("edge-3"));
  const size_t dot1 = token.find('.'), dot2 = token.rfind('.');
  // The same signature over the claims of another node.
  const std::string forged =
      token.substr(0, dot1 + 1) + Base64Url(Claims("edge-9").dump()) + token.substr(dot2);
  auto r = keys_->Verify(forged, Policy(), "edge-9", kNowMs, &reason_);
  EXPECT_EQ(r.status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(reason_, "signature");
  // And a token of a stranger's key that reuses a kid of ours.
  ExpectRefused(stranger_->Sign(Claims()), StatusCode::kUnauthenticated, "signature", "does not verify");
  // ES256 with a signature of the wrong length.
  const std::string es = ec_->Sign(Claims());
  ExpectRefused(es.substr(0, es.rfind('.') + 1) + Base64Url(std::string(63, 'x')),
                StatusCode::kUnauthenticated, "signature", "does not verify");
}

TEST_F(ServiceAccountTokenTest, AnUnknownKidIsRetryable) {
  TestSigningKey rotated = TestSigningKey::P256("ec-rotated");
  ExpectRefused(rotated.Sign(Claims()), StatusCode::kUnavailable, "unknown_key", "/openid/v1/jwks");
}

TEST_F(ServiceAccountTokenTest, RefusesAlgNone) {
  const std::string unsigned_token =
      Base64Url(json{{"alg", "none"}, {"kid", "rsa-1"}}.dump()) + "." + Base64Url(Claims().dump()) + ".";
  ExpectRefused(unsigned_token, StatusCode::kUnauthenticated, "algorithm", "only RS256 and ES256");
  // With the signature of a real token pasted on, too.
  const std::string real = rsa_->Sign(Claims());
  ExpectRefused(unsigned_token + real.substr(real.rfind('.') + 1), StatusCode::kUnauthenticated, "algorithm",
                "\"none\"");
}

TEST_F(ServiceAccountTokenTest, RefusesHs256KeyedWithTheRsaModulus) {
  // A verifier that took "alg" at its word would HMAC with the public key's bytes.
  ExpectRefused(testing::SignHs256("rsa-1", rsa_->Modulus(), Claims()), StatusCode::kUnauthenticated,
                "algorithm", "\"HS256\"");
  ExpectRefused(testing::SignHs256("rsa-1", rsa_->Jwk().dump(), Claims()), StatusCode::kUnauthenticated,
                "algorithm", "\"HS256\"");
}

TEST_F(ServiceAccountTokenTest, RefusesAnAlgThatDoesNotMatchTheKeysType) {
  // ES256 claimed, RSA key named: never verified with a key of another type.
  ExpectRefused(ec_->SignWithHeader(json{{"alg", "ES256"}, {"kid", "rsa-1"}}, Claims()),
                StatusCode::kUnauthenticated, "algorithm", "is a RSA key");
  ExpectRefused(rsa_->SignWithHeader(json{{"alg", "RS384"}, {"kid", "rsa-1"}}, Claims()),
                StatusCode::kUnauthenticated, "algorithm", "\"RS384\"");
}

TEST_F(ServiceAccountTokenTest, RefusesAnExpiredTokenPastTheLeeway) {
  json claims = Claims();
  claims["exp"] = kNowS - 59;  // within the 60 s leeway
  EXPECT_TRUE(Verify(rsa_->Sign(claims)).ok());
  claims["exp"] = kNowS - 60;
  ExpectRefused(rsa_->Sign(claims), StatusCode::kUnauthenticated, "expired", "expired 60 s ago");
  claims.erase("exp");
  ExpectRefused(rsa_->Sign(claims), StatusCode::kUnauthenticated, "expired", "no exp");
}

TEST_F(ServiceAccountTokenTest, RefusesATokenNotYetValid) {
  json claims = Claims();
  claims["nbf"] = kNowS + 60;  // within the leeway
  claims["iat"] = kNowS + 60;
  EXPECT_TRUE(Verify(rsa_->Sign(claims)).ok());
  claims["nbf"] = kNowS + 61;
  ExpectRefused(rsa_->Sign(claims), StatusCode::kUnauthenticated, "not_yet_valid",
                "nbf is 61 s in the future");
  claims["nbf"] = kNowS;
  claims["iat"] = kNowS + 3600;
  ExpectRefused(rsa_->Sign(claims), StatusCode::kUnauthenticated, "not_yet_valid", "iat");
}

TEST_F(ServiceAccountTokenTest, RefusesAnotherIssuer) {
  json claims = Claims();
  claims["iss"] = "https://other-cluster.example";
  ExpectRefused(rsa_->Sign(claims), StatusCode::kUnauthenticated, "issuer", "--agent-token-issuer");
}

TEST_F(ServiceAccountTokenTest, RefusesAnotherAudience) {
  json claims = Claims();
  claims["aud"] = {"https://kubernetes.default.svc.cluster.local", "fedge.io/ns1/other-job"};
  ExpectRefused(rsa_->Sign(claims), StatusCode::kUnauthenticated, "audience", "--agent-token-audience");
  claims.erase("aud");
  ExpectRefused(rsa_->Sign(claims), StatusCode::kUnauthenticated, "audience", "--agent-token-audience");
}

TEST_F(ServiceAccountTokenTest, RefusesAnotherNamespace) {
  json claims = Claims();
  claims["kubernetes.io"]["namespace"] = "ns2";
  ExpectRefused(rsa_->Sign(claims), StatusCode::kUnauthenticated, "service_account", "\"ns2/job1-agent\"");
}

TEST_F(ServiceAccountTokenTest, RefusesAnotherServiceAccount) {
  json claims = Claims();
  claims["kubernetes.io"]["serviceaccount"]["name"] = "default";
  ExpectRefused(rsa_->Sign(claims), StatusCode::kUnauthenticated, "service_account",
                "--agent-token-service-account");
}

TEST_F(ServiceAccountTokenTest, RefusesATokenNotBoundToAPod) {
  json claims = Claims();
  claims["kubernetes.io"].erase("pod");
  ExpectRefused(rsa_->Sign(claims), StatusCode::kUnauthenticated, "pod", "not bound to a pod");
}

TEST_F(ServiceAccountTokenTest, RefusesATokenThatNamesNoNode) {
  json claims = Claims();
  claims["kubernetes.io"].erase("node");
  ExpectRefused(rsa_->Sign(claims), StatusCode::kUnauthenticated, "node", "names no node");
}

TEST_F(ServiceAccountTokenTest, DeniesAValidTokenOfAnotherNodesPod) {
  auto r = Verify(rsa_->Sign(Claims("edge-4")), "edge-3");
  EXPECT_EQ(r.status().code(), StatusCode::kPermissionDenied) << r.status().ToString();
  EXPECT_EQ(reason_, "node");
  EXPECT_NE(r.status().message().find("node \"edge-4\" but the Join is for agent \"edge-3\""),
            std::string::npos)
      << r.status().ToString();
}

TEST_F(ServiceAccountTokenTest, RefusesAnOversizedTokenBeforeDecodingIt) {
  json claims = Claims();
  claims["padding"] = std::string(kMaxServiceAccountTokenBytes, 'p');  // validly signed, just too big
  ExpectRefused(rsa_->Sign(claims), StatusCode::kUnauthenticated, "too_large", "16384");
  ExpectRefused(std::string(kMaxServiceAccountTokenBytes + 1, '!'), StatusCode::kUnauthenticated, "too_large",
                "16384");
}

TEST_F(ServiceAccountTokenTest, RefusesATokenSignedWithA1024BitRsaKey) {
  ExpectRefused(weak_->Sign(Claims()), StatusCode::kUnauthenticated, "weak_key", "1024 bits");
}

TEST_F(ServiceAccountTokenTest, RefusesMalformedTokens) {
  const std::string good = rsa_->Sign(Claims());
  const std::string header = good.substr(0, good.find('.'));
  ExpectRefused("", StatusCode::kUnauthenticated, "malformed", "not a JWT");
  ExpectRefused("a-static-secret-token", StatusCode::kUnauthenticated, "malformed", "not a JWT");
  ExpectRefused(good + ".x", StatusCode::kUnauthenticated, "malformed", "not a JWT");
  ExpectRefused(good.substr(0, good.rfind('.')), StatusCode::kUnauthenticated, "malformed", "not a JWT");
  ExpectRefused(good + "=", StatusCode::kUnauthenticated, "malformed", "base64url");
  ExpectRefused(header + "+." + good.substr(good.find('.') + 1), StatusCode::kUnauthenticated, "malformed",
                "base64url");
  ExpectRefused(Base64Url("[1,2]") + "." + Base64Url("{}") + ".", StatusCode::kUnauthenticated, "malformed",
                "not a JSON object");
  ExpectRefused(rsa_->SignWithHeader(json{{"alg", "RS256"}, {"kid", "rsa-1"}, {"crit", {"exp"}}}, Claims()),
                StatusCode::kUnauthenticated, "malformed", "crit");
  // Signed, but the payload is no object.
  const std::string input = header + "." + Base64Url("\"just a string\"");
  ExpectRefused(input + "." + Base64Url(rsa_->SignatureOf(input)), StatusCode::kUnauthenticated, "malformed",
                "payload");
}

TEST_F(ServiceAccountTokenTest, JwksWithoutAUsableKeyIsRefused) {
  EXPECT_EQ(JsonWebKeySet::Parse("").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(JsonWebKeySet::Parse("{\"keys\": [").status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(JsonWebKeySet::Parse("{}").status().message().find("\"keys\""), std::string::npos);
  EXPECT_NE(JsonWebKeySet::Parse("{\"keys\": []}").status().message().find("no usable key"),
            std::string::npos);
  auto weak_only = JsonWebKeySet::Parse(Jwks({weak_}));
  EXPECT_NE(weak_only.status().message().find("no usable key"), std::string::npos);
  json bad = json::parse(Jwks({ec_}));
  bad["keys"][0]["x"] = Base64Url(std::string(32, '\x01'));  // not a point on the curve
  EXPECT_NE(JsonWebKeySet::Parse(bad.dump()).status().message().find("not a point on P-256"),
            std::string::npos);
  bad["keys"][0]["x"] = "not base64!";
  EXPECT_NE(JsonWebKeySet::Parse(bad.dump()).status().message().find("\"x\""), std::string::npos);
}

TEST(ServiceAccountNameTest, ParsesNamespaceSlashName) {
  ServiceAccountTokenPolicy p;
  ASSERT_TRUE(ParseServiceAccountName("ns1/job1-agent", &p).ok());
  EXPECT_EQ(p.namespace_name, "ns1");
  EXPECT_EQ(p.service_account, "job1-agent");
  for (const char* bad : {"", "ns1", "/a", "a/", "a/b/c"}) {
    EXPECT_EQ(ParseServiceAccountName(bad, &p).code(), StatusCode::kInvalidArgument) << bad;
  }
}

// The JWKS file the operator keeps, updated in the kubelet's layout (a symlink
// swap of a ConfigMap volume), read through a fake clock.
class ServiceAccountTokenVerifierTest : public ::testing::Test {
 protected:
  void SetUp() override { std::filesystem::create_symlink("..data/jwks.json", dir_.path() + "/jwks.json"); }

  void Publish(const std::string& text) {
    const std::string version = "..v" + std::to_string(++version_);
    std::filesystem::create_directory(dir_.path() + "/" + version);
    std::ofstream(dir_.path() + "/" + version + "/jwks.json") << text;
    std::filesystem::create_symlink(version, dir_.path() + "/..data_tmp");
    std::filesystem::rename(dir_.path() + "/..data_tmp", dir_.path() + "/..data");
  }
  std::string path() const { return dir_.path() + "/jwks.json"; }

  StatusOr<std::unique_ptr<ServiceAccountTokenVerifier>> Open() {
    return ServiceAccountTokenVerifier::Open(path(), Policy(), &clock_, /*min_recheck_ms=*/1000);
  }
  std::string TokenOf(const TestSigningKey& key) const {
    return key.Sign(PodTokenClaims(clock_.NowUnixMs() / 1000, "edge-3"));
  }

  testing::TempDir dir_;
  int version_ = 0;
  FakeClock clock_{kNowMs};
  TestSigningKey old_ = TestSigningKey::P256("old");
  TestSigningKey new_ = TestSigningKey::P256("new");
};

TEST_F(ServiceAccountTokenVerifierTest, ReloadsTheJwksWhenTheIssuerRotatesItsKey) {
  Publish(Jwks({&old_}));
  auto v = Open();
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_TRUE((*v)->Verify(TokenOf(old_), "edge-3").ok());
  EXPECT_EQ((*v)->Verify(TokenOf(new_), "edge-3").status().code(), StatusCode::kUnavailable);

  Publish(Jwks({&new_}));
  // Within the rate limit the file is not looked at.
  EXPECT_EQ((*v)->Verify(TokenOf(new_), "edge-3").status().code(), StatusCode::kUnavailable);
  clock_.AdvanceMs(1000);
  auto r = (*v)->Verify(TokenOf(new_), "edge-3");
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*v)->reloads(), 1);
  // The old key is gone with the old file.
  EXPECT_EQ((*v)->Verify(TokenOf(old_), "edge-3").status().code(), StatusCode::kUnavailable);
}

TEST_F(ServiceAccountTokenVerifierTest, AnInvalidNewJwksKeepsThePreviousKeys) {
  Publish(Jwks({&old_}));
  auto v = Open();
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  for (const std::string& broken :
       {std::string("{\"keys\": [{\"kty\": \"EC\""), std::string("{\"keys\": []}"), std::string()}) {
    Publish(broken);
    EXPECT_FALSE((*v)->Refresh()) << broken;
    clock_.AdvanceMs(1000);
    auto r = (*v)->Verify(TokenOf(old_), "edge-3");
    EXPECT_TRUE(r.ok()) << broken << ": " << r.status().ToString();
  }
  EXPECT_EQ((*v)->reloads(), 0);
  EXPECT_EQ((*v)->usable_keys(), 1u);
  // A good file after the broken ones is taken.
  Publish(Jwks({&old_, &new_}));
  EXPECT_TRUE((*v)->Refresh());
  EXPECT_TRUE((*v)->Verify(TokenOf(new_), "edge-3").ok());
}

TEST_F(ServiceAccountTokenVerifierTest, AnEmptyOrInvalidFileAtStartIsAnError) {
  auto missing = Open();
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status().ToString();
  Publish("");
  EXPECT_EQ(Open().status().code(), StatusCode::kInvalidArgument);
  Publish("{\"keys\": []}");
  auto empty = Open();
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find(path()), std::string::npos) << empty.status().ToString();
  Publish(Jwks({&old_}));
  ServiceAccountTokenPolicy no_issuer = Policy();
  no_issuer.issuer.clear();
  EXPECT_EQ(ServiceAccountTokenVerifier::Open(path(), no_issuer, &clock_).status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(ServiceAccountTokenVerifierTest, AnOversizedTokenDoesNotMakeItLookAtTheFile) {
  Publish(Jwks({&old_}));
  auto v = Open();
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  Publish(Jwks({&new_}));
  clock_.AdvanceMs(1000);
  EXPECT_FALSE((*v)->Verify(std::string(kMaxServiceAccountTokenBytes + 1, 'x'), "edge-3").ok());
  EXPECT_EQ((*v)->reloads(), 0);
  EXPECT_TRUE((*v)->Verify(TokenOf(new_), "edge-3").ok());
  EXPECT_EQ((*v)->reloads(), 1);
}

}  // namespace
}  // namespace fedge::aggregator
