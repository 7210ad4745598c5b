#include "fedge/aggregator/protocol_handler.h"

#include <gtest/gtest.h>

#include <cstring>

#include "fedge/file_util.h"
#include "fedge/job_spec_fields.h"
#include "jwt_test_util.h"
#include "protocol_fixture.h"
#include "test_util.h"

namespace fedge::aggregator {
namespace {

using testing::SmallBundle;

class ProtocolHandlerTest : public testing::ProtocolFixture {
 protected:
  void SetUp() override { Make(ProtocolOptions{}); }

  void Make(ProtocolOptions options, const std::function<void(JobSpec&)>& edit = nullptr) {
    JobSpec spec = testing::UnitStepJob("demo", /*rounds=*/1);
    // The test's deltas are compared exactly: the job says fp32 (uncompressed), which
    // is what Encode() uploads; an upload in another codec is refused.
    spec.compression.codec = "fp32";
    spec.compression.zstd = false;
    if (edit) edit(spec);
    MakeHandler(spec, std::move(options));
  }

  Status Join(const std::string& agent, const std::string& token = "") {
    return JoinDeclaring(agent, SmallBundle(0, 0, 0, 0), token);
  }

  // A verifier of the test issuer's tokens for ns1/job1-agent, trusting `key`.
  std::shared_ptr<ServiceAccountTokenVerifier> Verifier(const testing::TestSigningKey& key) {
    const std::string jwks = jwks_dir_.path() + "/jwks.json";
    EXPECT_TRUE(WriteFileAtomic(jwks, testing::Jwks({&key})).ok());
    ServiceAccountTokenPolicy policy;
    policy.issuer = testing::kTestIssuer;
    policy.audience = testing::kTestAudience;
    EXPECT_TRUE(ParseServiceAccountName(testing::kTestServiceAccount, &policy).ok());
    auto verifier = ServiceAccountTokenVerifier::Open(jwks, policy, &clock_);
    EXPECT_TRUE(verifier.ok()) << verifier.status().ToString();
    return verifier.ok() ? std::move(*verifier) : nullptr;
  }

  // A handler verifying `key`'s tokens and refusing the pods that revoked_path() lists
  // (the file is not written yet: it lists none).
  void MakeWithRevokedPods(const testing::TestSigningKey& key) {
    ProtocolOptions options;
    options.token_verifier = Verifier(key);
    ASSERT_NE(options.token_verifier, nullptr);
    auto revoked = RevokedPods::Open(revoked_path(), &clock_);
    ASSERT_TRUE(revoked.ok()) << revoked.status().ToString();
    options.revoked_pods = std::move(*revoked);
    Make(options);
  }
  std::string revoked_path() const { return jwks_dir_.path() + "/revoked-pods.json"; }

  testing::TempDir jwks_dir_;

  // One SubmitUpdate stream the way the service runs it, sending only
  // data[0, send) (a stream cut short when send < data.size()).
  v1::SubmitUpdateResponse SubmitStream(const v1::UpdateHeader& header, const std::string& data, size_t send,
                                        Status* status = nullptr) {
    v1::SubmitUpdateResponse response;
    bool rejected = false;
    UploadStream stream;
    Status s = handler_->OpenUpload(header, &stream, &response, &rejected);
    if (status) *status = s;
    if (!s.ok() || rejected) return response;
    for (size_t off = 0; off < send; off += 7) {
      if (!handler_->AppendUpload(&stream, data.substr(off, std::min<size_t>(7, send - off)), &response)) {
        return response;
      }
    }
    return handler_->CloseUpload(&stream);
  }

  v1::UploadStatus UploadStatusOf(const std::string& agent, const std::string& upload_id) {
    v1::UploadStatusRequest req;
    *req.mutable_header() = Header(agent);
    req.set_upload_id(upload_id);
    v1::UploadStatus status;
    EXPECT_TRUE(handler_->GetUploadStatus(req, &status).ok());
    return status;
  }

  static std::string Encode(const TensorBundle& b) {
    auto e = EncodeBundle(b, EncodeOptions{Codec::kFp32, 64, /*zstd=*/false, 3});
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return *e;
  }

  void JoinAndInitialize() {
    ASSERT_TRUE(Join("a").ok());
    ASSERT_TRUE(Join("b").ok());
    ASSERT_EQ(GetTask("a").kind(), v1::TASK_KIND_INITIALIZE);
    std::string init = Encode(SmallBundle(1, 2, 3, 4));
    auto r = Submit(UpdateHeaderFor("a", init, 0, 0, false), init);
    ASSERT_TRUE(r.accepted()) << r.reason();
  }
};

TEST_F(ProtocolHandlerTest, UnknownProtocolVersionIsRefusedNamingOurs) {
  v1::JoinRequest req;
  *req.mutable_header() = Header("a", /*version=*/2);
  v1::JoinResponse resp;
  Status s = handler_->Join(req, &resp);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "protocol version 2 not supported; this aggregator speaks 1");
  ASSERT_TRUE(Join("a").ok());
  v1::TaskRequest task_req;
  *task_req.mutable_header() = Header("a", /*version=*/0);
  v1::Task task;
  EXPECT_EQ(handler_->GetTask(task_req, &task).code(), StatusCode::kFailedPrecondition);
}

TEST_F(ProtocolHandlerTest, WrongJobIsNotFound) {
  v1::JoinRequest req;
  *req.mutable_header() = Header("a");
  req.mutable_header()->set_job("ns/other");
  v1::JoinResponse resp;
  Status s = handler_->Join(req, &resp);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("ns/demo"), std::string::npos);
}

TEST_F(ProtocolHandlerTest, TokensAreCheckedWhenConfigured) {
  ProtocolOptions options;
  options.tokens = {{"a", "good-token"}};
  Make(options);
  EXPECT_EQ(Join("a", "bad-token").code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(Join("a", "").code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(Join("stranger", "good-token").code(), StatusCode::kUnauthenticated);
  EXPECT_TRUE(Join("a", "good-token").ok());
}

TEST_F(ProtocolHandlerTest, ServiceAccountTokensAreCheckedWhenConfiguredAndRefusalsCounted) {
  const testing::TestSigningKey key = testing::TestSigningKey::P256("k1");
  ProtocolOptions options;
  options.token_verifier = Verifier(key);
  ASSERT_NE(options.token_verifier, nullptr);
  options.tokens = {{"edge-3", "a-static-token"}};  // unused with a verifier
  Make(options);
  const int64_t now_s = clock_.NowUnixMs() / 1000;

  EXPECT_EQ(Join("edge-3", "a-static-token").code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(metrics_.joins_refused("malformed"), 1);
  Status other = Join("edge-3", key.Sign(testing::PodTokenClaims(now_s, "edge-4")));
  EXPECT_EQ(other.code(), StatusCode::kPermissionDenied) << other.ToString();
  EXPECT_NE(other.message().find("ns/demo"), std::string::npos) << other.ToString();
  EXPECT_EQ(metrics_.joins_refused("node"), 1);
  EXPECT_EQ(Join("edge-3", key.Sign(testing::PodTokenClaims(now_s - 700, "edge-3"))).code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(metrics_.joins_refused("expired"), 1);
  EXPECT_EQ(engine_->GetStatus().agents_joined, 0);

  Status ok = Join("edge-3", key.Sign(testing::PodTokenClaims(now_s, "edge-3")));
  EXPECT_TRUE(ok.ok()) << ok.ToString();
  EXPECT_EQ(engine_->GetStatus().agents_joined, 1);
  // The session, not the token, authenticates what follows.
  EXPECT_EQ(GetTask("edge-3").kind(), v1::TASK_KIND_WAIT);
}

// A copied session id (with the token it joined with) must not outlive the
// token: the session ends session_grace_s after the newest token its agent
// presented expired. A live agent sends the token the kubelet renewed in every
// RequestHeader, which extends its session; a renewal must be a valid token of
// the same pod.
TEST_F(ProtocolHandlerTest, ASessionEndsWhenItsNewestTokenExpiresAndRenewalsMustBeTheSamePods) {
  const testing::TestSigningKey key = testing::TestSigningKey::P256("k1");
  ProtocolOptions options;
  options.token_verifier = Verifier(key);
  ASSERT_NE(options.token_verifier, nullptr);
  options.session_grace_s = 120;
  Make(options);
  const int64_t t0 = clock_.NowUnixMs() / 1000;
  auto token = [&](int64_t issued_s, const std::string& node) {
    return key.Sign(testing::PodTokenClaims(issued_s, node));  // valid for 600 s
  };
  auto ask = [&](const std::string& agent, const std::string& presented) {
    v1::TaskRequest req;
    *req.mutable_header() = Header(agent);
    req.mutable_header()->set_token(presented);
    v1::Task task;
    return handler_->GetTask(req, &task);
  };

  ASSERT_TRUE(Join("edge-1", token(t0, "edge-1")).ok());
  ASSERT_TRUE(Join("edge-2", token(t0, "edge-2")).ok());
  EXPECT_TRUE(ask("edge-1", "").ok());                   // an older agent sends none
  EXPECT_TRUE(ask("edge-1", token(t0, "edge-1")).ok());  // the Join's token again

  clock_.AdvanceMs(480'000);  // the kubelet renews at 80% of 600 s
  EXPECT_TRUE(ask("edge-1", token(t0 + 480, "edge-1")).ok());

  // Renewals that are not this pod's valid token fail the request (the
  // session keeps the token it has).
  Status other_node = ask("edge-1", token(t0 + 480, "edge-2"));
  EXPECT_EQ(other_node.code(), StatusCode::kPermissionDenied) << other_node.ToString();
  nlohmann::json other_pod = testing::PodTokenClaims(t0 + 480, "edge-1");
  other_pod["kubernetes.io"]["pod"]["uid"] = "pod-uid-of-a-second-pod";
  Status second_pod = ask("edge-1", key.Sign(other_pod));
  EXPECT_EQ(second_pod.code(), StatusCode::kPermissionDenied) << second_pod.ToString();
  EXPECT_NE(second_pod.message().find("pod-uid-of-a-second-pod"), std::string::npos) << second_pod.ToString();
  EXPECT_EQ(ask("edge-1", "not.a.token").code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(metrics_.sessions_ended("token_refused"), 2);
  EXPECT_EQ(metrics_.sessions_ended("other_pod"), 1);

  // t0 + 600 + 120: edge-2's only token expired a grace ago; edge-1's renewal
  // lives until t0 + 1080.
  clock_.AdvanceMs(240'000 + 1000);
  EXPECT_TRUE(ask("edge-1", "").ok());
  Status expired = ask("edge-2", "");
  EXPECT_EQ(expired.code(), StatusCode::kUnauthenticated) << expired.ToString();
  EXPECT_NE(expired.message().find("rejoin"), std::string::npos) << expired.ToString();
  EXPECT_EQ(metrics_.sessions_ended("token_expired"), 1);
  // Presenting the same old token (a copy of what it joined with) changes nothing.
  EXPECT_EQ(ask("edge-2", token(t0, "edge-2")).code(), StatusCode::kUnauthenticated);
  // The agent rejoins with the token its file holds now.
  ASSERT_TRUE(Join("edge-2", token(t0 + 700, "edge-2")).ok());
  EXPECT_TRUE(ask("edge-2", "").ok());

  // No renewal after t0 + 480: edge-1's session ends after t0 + 1080 + 120.
  clock_.AdvanceMs((1201 - 721) * 1000);
  EXPECT_EQ(ask("edge-1", "").code(), StatusCode::kUnauthenticated);
  EXPECT_TRUE(ask("edge-2", "").ok());
}

// The attack: a node's token and session id are copied off it, then its agent pod
// is deleted (the node left the selector, or the pod was replaced). Verified
// offline, the copy would keep working for the token's 10 minutes plus the
// session grace (an hour by default); the operator's revoked-pods list ends it.
TEST_F(ProtocolHandlerTest, ARevokedPodsTokensAndSessionsAreRefused) {
  const testing::TestSigningKey key = testing::TestSigningKey::P256("k1");
  const std::string revoked_path = this->revoked_path();
  ASSERT_NO_FATAL_FAILURE(MakeWithRevokedPods(key));
  const int64_t t0 = clock_.NowUnixMs() / 1000;
  auto token = [&](int64_t issued_s, const std::string& node) {
    return key.Sign(testing::PodTokenClaims(issued_s, node));
  };
  auto ask = [&](const std::string& agent, const std::string& presented) {
    v1::TaskRequest req;
    *req.mutable_header() = Header(agent);
    req.mutable_header()->set_token(presented);
    v1::Task task;
    return handler_->GetTask(req, &task);
  };
  const std::string stolen = token(t0, "edge-1");
  ASSERT_TRUE(Join("edge-1", stolen).ok());
  ASSERT_TRUE(Join("edge-2", token(t0, "edge-2")).ok());
  EXPECT_TRUE(ask("edge-1", stolen).ok());

  // edge-1's pod is deleted; the operator lists it (and an entry already past its
  // `until`, which refuses nothing).
  ASSERT_TRUE(WriteFileAtomic(revoked_path, R"({"pods": [
      {"uid": "pod-uid-edge-1", "name": "job1-agent-edge-1", "node": "edge-1", "until": )" +
                                                std::to_string(t0 + 4260) + R"(},
      {"uid": "pod-uid-edge-2", "name": "job1-agent-edge-2", "node": "edge-2", "until": )" +
                                                std::to_string(t0 - 1) + R"(}]})")
                  .ok());
  clock_.AdvanceMs(1000);  // the file is looked at again at most once a second
  Status ended = ask("edge-1", stolen);
  EXPECT_EQ(ended.code(), StatusCode::kPermissionDenied) << ended.ToString();
  EXPECT_NE(ended.message().find("pod-uid-edge-1"), std::string::npos) << ended.ToString();
  EXPECT_EQ(metrics_.sessions_ended("pod_gone"), 1);
  // The session is gone, not just this request; and the stolen token joins no more.
  EXPECT_EQ(ask("edge-1", stolen).code(), StatusCode::kUnauthenticated);
  Status rejoin = Join("edge-1", stolen);
  EXPECT_EQ(rejoin.code(), StatusCode::kPermissionDenied) << rejoin.ToString();
  EXPECT_NE(rejoin.message().find("job1-agent-edge-1"), std::string::npos) << rejoin.ToString();
  // A token the kubelet renewed for that same pod is no better.
  EXPECT_EQ(Join("edge-1", token(t0 + 1, "edge-1")).code(), StatusCode::kPermissionDenied);
  // The other node is untouched.
  EXPECT_TRUE(ask("edge-2", "").ok());

  // The pod made again on edge-1 is a new uid: it joins.
  nlohmann::json fresh = testing::PodTokenClaims(t0 + 5, "edge-1");
  fresh["kubernetes.io"]["pod"]["uid"] = "pod-uid-edge-1-second";
  ASSERT_TRUE(Join("edge-1", key.Sign(fresh)).ok());
  EXPECT_TRUE(ask("edge-1", "").ok());

  // A broken rewrite keeps the list in force.
  ASSERT_TRUE(WriteFileAtomic(revoked_path, R"({"pods": [{"uid": 7}]})").ok());
  clock_.AdvanceMs(1000);
  EXPECT_EQ(Join("edge-1", stolen).code(), StatusCode::kPermissionDenied);
}

// The same attack when the pod is deleted while no operator runs: no operator saw it go,
// so no entry names it. The operator that starts later writes when its cache listed the
// pods (watchedSince) and which were live then (livePods): a token issued before that for
// any other pod is refused, and a session it began ends.
TEST_F(ProtocolHandlerTest, ATokenOfAPodGoneBeforeTheOperatorWatchedIsRefused) {
  const testing::TestSigningKey key = testing::TestSigningKey::P256("k1");
  const std::string revoked_path = this->revoked_path();
  ASSERT_NO_FATAL_FAILURE(MakeWithRevokedPods(key));
  const int64_t t0 = clock_.NowUnixMs() / 1000;
  auto ask = [&](const std::string& agent) {
    v1::TaskRequest req;
    *req.mutable_header() = Header(agent);
    v1::Task task;
    return handler_->GetTask(req, &task);
  };
  const std::string stolen = key.Sign(testing::PodTokenClaims(t0, "edge-1"));
  ASSERT_TRUE(Join("edge-1", stolen).ok());
  ASSERT_TRUE(Join("edge-2", key.Sign(testing::PodTokenClaims(t0, "edge-2"))).ok());

  // edge-1's pod went while no operator ran; the new operator listed at t0 + 30 and saw
  // only edge-2's pod.
  ASSERT_TRUE(WriteFileAtomic(revoked_path, R"({"pods": [], "watchedSince": )" + std::to_string(t0 + 30) +
                                                R"(, "livePods": ["pod-uid-edge-2"]})")
                  .ok());
  clock_.AdvanceMs(31000);
  Status ended = ask("edge-1");
  EXPECT_EQ(ended.code(), StatusCode::kPermissionDenied) << ended.ToString();
  EXPECT_NE(ended.message().find("before the operator began watching"), std::string::npos)
      << ended.ToString();
  EXPECT_EQ(metrics_.sessions_ended("pod_gone"), 1);
  Status rejoin = Join("edge-1", stolen);
  EXPECT_EQ(rejoin.code(), StatusCode::kPermissionDenied) << rejoin.ToString();
  EXPECT_TRUE(ask("edge-2").ok()) << "live when the operator listed: untouched";
  EXPECT_TRUE(Join("edge-2", key.Sign(testing::PodTokenClaims(t0 + 1, "edge-2"))).ok());

  // The node's new pod, made after the operator began watching, joins.
  nlohmann::json fresh = testing::PodTokenClaims(t0 + 31, "edge-1");
  fresh["kubernetes.io"]["pod"]["uid"] = "pod-uid-edge-1-second";
  ASSERT_TRUE(Join("edge-1", key.Sign(fresh)).ok());
  EXPECT_TRUE(ask("edge-1").ok());
}

TEST_F(ProtocolHandlerTest, JoinRefusesMalformedTrainableLayouts) {
  auto join = [&](const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors) {
    v1::JoinRequest req;
    *req.mutable_header() = Header("a");
    for (const auto& [name, dims] : tensors) {
      v1::TensorShape* t = req.mutable_capabilities()->add_trainable_layout();
      t->set_name(name);
      for (int64_t d : dims) t->add_dims(d);
    }
    v1::JoinResponse resp;
    return handler_->Join(req, &resp);
  };
  EXPECT_TRUE(join({{"a", {2}}, {"b", {1, 2}}}).ok());
  EXPECT_TRUE(join({}).ok());  // an older agent declares none
  for (const auto& bad : std::vector<std::vector<std::pair<std::string, std::vector<int64_t>>>>{
           {{"", {2}}},
           {{"a", {2}}, {"a", {3}}},
           {{"a", {-1}}},
           {{"a", {1, 1, 1, 1, 1, 1, 1, 1, 1}}},
           {{"a", {1 << 20, 1 << 20}}}}) {
    Status s = join(bad);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find("capabilities.trainable_layout"), std::string::npos) << s.message();
  }
}

// Issue 11: the aggregator never compared an upload's codec with the job's
// (InspectBundle read only the tensor count). An agent uploading fp32 in an
// int8 job sent 4x the bytes and bypassed the job's quantization; now the
// bundle header is checked before the body is taken.
TEST_F(ProtocolHandlerTest, DeltaInAnotherCodecThanTheJobsIsRefused) {
  Make(ProtocolOptions{}, [](JobSpec& spec) { spec.compression.codec = "int8"; });
  JoinAndInitialize();  // the initial state is fp32 by contract, whatever the job's codec
  v1::Task task = GetTask("a");
  ASSERT_EQ(task.kind(), v1::TASK_KIND_TRAIN);
  ASSERT_EQ(task.config().update_codec(), "int8");
  const TensorBundle delta = SmallBundle(1, 1, 1, 1);

  const std::string fp32 = Encode(delta);
  auto r = Submit(UpdateHeaderFor("a", fp32, 1, 1, true), fp32);
  EXPECT_FALSE(r.accepted());
  EXPECT_EQ(r.reason_code(), "codec");
  EXPECT_NE(r.reason().find("update codec fp32 differs from the job's spec.compression.codec int8"),
            std::string::npos)
      << r.reason();

  // Right codec, wrong block size (the task says 64).
  auto int8_bs32 = EncodeBundle(delta, EncodeOptions{Codec::kInt8, 32, /*zstd=*/true, 3});
  ASSERT_TRUE(int8_bs32.ok());
  r = Submit(UpdateHeaderFor("a", *int8_bs32, 1, 1, true), *int8_bs32);
  EXPECT_FALSE(r.accepted());
  EXPECT_NE(r.reason().find("block size 32"), std::string::npos) << r.reason();

  // Top-k sparse in a dense job.
  EncodeOptions sparse{Codec::kInt8, 64, /*zstd=*/true, 3};
  sparse.topk_fraction = 0.5;
  auto topk = EncodeBundle(delta, sparse);
  ASSERT_TRUE(topk.ok());
  r = Submit(UpdateHeaderFor("a", *topk, 1, 1, true), *topk);
  EXPECT_FALSE(r.accepted());
  EXPECT_NE(r.reason().find("top-k"), std::string::npos) << r.reason();

  // What the task asks for is taken.
  auto int8 = EncodeBundle(delta, EncodeOptions{Codec::kInt8, 64, /*zstd=*/true, 3});
  ASSERT_TRUE(int8.ok());
  r = Submit(UpdateHeaderFor("a", *int8, 1, 1, true), *int8);
  EXPECT_TRUE(r.accepted()) << r.reason();
}

// Issue 11: the training fields went to the wire by hand (TrainConfig mirrored
// v1.TrainingConfig). Now GetTask sends the spec through the field table, and the
// agent's TrainingFromWire gets back what the job says, zeros included (maxGradNorm
// 0 = no clipping, weightDecay 0), not its own defaults.
TEST_F(ProtocolHandlerTest, TrainTaskCarriesTheJobsTrainingFields) {
  Make(ProtocolOptions{}, [](JobSpec& spec) {
    spec.rounds.localSteps = 3;
    spec.rounds.batchSize = 5;
    spec.rounds.learningRate = 0.5;
    spec.rounds.weightDecay = 0;
    spec.rounds.maxGradNorm = 0;
    spec.rounds.seed = 77;
    spec.model.maxSeqLen = 48;
    spec.strategy.name = "fedprox";
    spec.strategy.proximalMu = 0.25;
    spec.compression.zstdLevel = 9;
  });
  JoinAndInitialize();
  v1::Task task = GetTask("a");
  ASSERT_EQ(task.kind(), v1::TASK_KIND_TRAIN);
  auto got = TrainingFromWire(task.config());
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->rounds.localSteps, 3);
  EXPECT_EQ(got->rounds.batchSize, 5);
  EXPECT_EQ(got->rounds.learningRate, 0.5);
  EXPECT_EQ(got->rounds.weightDecay, 0);
  EXPECT_EQ(got->rounds.maxGradNorm, 0);
  EXPECT_EQ(got->rounds.seed, 77u);
  EXPECT_EQ(got->model.maxSeqLen, 48);
  EXPECT_EQ(got->strategy.proximalMu, 0.25);
  EXPECT_EQ(got->compression.codec, "fp32");
  EXPECT_FALSE(got->compression.zstd);
  EXPECT_EQ(got->compression.zstdLevel, 9);
}

TEST_F(ProtocolHandlerTest, JoinRefusesAnAgentThatDoesNotOfferTheJobsCodec) {
  Make(ProtocolOptions{}, [](JobSpec& spec) { spec.compression.codec = "int4"; });
  v1::JoinRequest req;
  *req.mutable_header() = Header("a");
  for (const char* codec : {"fp32", "int8"}) req.mutable_capabilities()->add_codecs(codec);
  v1::JoinResponse resp;
  Status s = handler_->Join(req, &resp);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("offers the update codecs fp32, int8 but job \"ns/demo\" uses int4"),
            std::string::npos)
      << s.message();
  req.mutable_capabilities()->add_codecs("int4");
  EXPECT_TRUE(handler_->Join(req, &resp).ok());
}

TEST_F(ProtocolHandlerTest, UnknownSessionMustRejoin) {
  ASSERT_TRUE(Join("a").ok());
  v1::TaskRequest req;
  *req.mutable_header() = Header("a");
  req.mutable_header()->set_session("stale");
  v1::Task task;
  Status s = handler_->GetTask(req, &task);
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated);
  EXPECT_NE(s.message().find("rejoin"), std::string::npos);
}

TEST_F(ProtocolHandlerTest, FetchGlobalStreamsChunksWithOffsetsAndChecksum) {
  ProtocolOptions options;
  options.chunk_bytes = 16;
  Make(options);
  JoinAndInitialize();
  v1::Task task = GetTask("b");
  ASSERT_EQ(task.kind(), v1::TASK_KIND_TRAIN);
  EXPECT_EQ(task.global_version(), 1);
  EXPECT_EQ(task.config().update_codec(), "fp32");

  v1::FetchGlobalRequest req;
  *req.mutable_header() = Header("b");
  std::string assembled;
  int chunks = 0;
  Status s = handler_->FetchGlobal(req, [&](const v1::GlobalChunk& c) {
    EXPECT_EQ(c.version(), 1);
    EXPECT_EQ(c.offset(), assembled.size());
    EXPECT_LE(c.data().size(), 16u);
    EXPECT_EQ(c.checksum(), task.global_checksum());
    assembled += c.data();
    EXPECT_LE(assembled.size(), c.total_bytes());
    ++chunks;
    return true;
  });
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_GT(chunks, 1);
  EXPECT_EQ(Sha256Hex(assembled), task.global_checksum());
  auto decoded = DecodeBundle(assembled);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->Find("b")->values, (std::vector<float>{3, 4}));
  EXPECT_EQ(metrics_.bytes_sent(), static_cast<double>(assembled.size()));

  req.set_version(7);
  EXPECT_EQ(handler_->FetchGlobal(req, [](const v1::GlobalChunk&) { return true; }).code(),
            StatusCode::kNotFound);
}

// The zero-copy form the gRPC service sends (issue 14, item 2): prefix +
// data must be byte for byte the serialized chunk NextChunk makes. (Chunks
// with multi-byte lengths go through the loopback tests: the agent's
// FetchGlobal of a 5 MB global in UploadResumeTest.)
TEST_F(ProtocolHandlerTest, FetchGlobalWireChunksAreTheSerializedChunkMessages) {
  for (size_t chunk_bytes : {size_t{16}, kMaxChunkBytes}) {
    SCOPED_TRACE("chunk_bytes " + std::to_string(chunk_bytes));
    ProtocolOptions options;
    options.chunk_bytes = chunk_bytes;
    Make(options);
    JoinAndInitialize();
    ASSERT_EQ(GetTask("b").kind(), v1::TASK_KIND_TRAIN);
    v1::FetchGlobalRequest req;
    *req.mutable_header() = Header("b");
    GlobalStream message_stream, wire_stream;
    ASSERT_TRUE(handler_->OpenFetch(req, &message_stream).ok());
    ASSERT_TRUE(handler_->OpenFetch(req, &wire_stream).ok());
    int chunks = 0;
    v1::GlobalChunk expected;
    std::string prefix;
    std::string_view data;
    while (handler_->NextChunk(&message_stream, &expected)) {
      ASSERT_TRUE(handler_->NextChunkWire(&wire_stream, &prefix, &data));
      EXPECT_EQ(prefix + std::string(data), expected.SerializeAsString());
      // The data is a view into the global's own bytes, not a copy.
      EXPECT_EQ(data.data(), wire_stream.global->encoded.data() + expected.offset());
      EXPECT_EQ(wire_stream.sent, message_stream.sent);
      ++chunks;
    }
    EXPECT_FALSE(handler_->NextChunkWire(&wire_stream, &prefix, &data));
    EXPECT_EQ(chunks, static_cast<int>((wire_stream.global->encoded.size() + chunk_bytes - 1) / chunk_bytes));
  }
}

TEST_F(ProtocolHandlerTest, OversizeUpdateIsRejectedBeforeBuffering) {
  ProtocolOptions options;
  options.max_update_bytes = 512;  // the initial upload fits
  Make(options);
  JoinAndInitialize();
  std::string big(5000, 'x');
  v1::UpdateHeader h = UpdateHeaderFor("a", big, 1, 1, true);
  v1::SubmitUpdateResponse response;
  bool rejected = false;
  ASSERT_TRUE(handler_->BeginUpdate(h, &response, &rejected).ok());
  EXPECT_TRUE(rejected);
  EXPECT_FALSE(response.accepted());
  EXPECT_NE(response.reason().find("exceeds the limit of 512"), std::string::npos) << response.reason();
  EXPECT_EQ(metrics_.updates_rejected("too_large"), 1);
}

TEST_F(ProtocolHandlerTest, MoreDataThanDeclaredIsRejected) {
  JoinAndInitialize();
  std::string data = Encode(SmallBundle(1, 1, 1, 1));
  v1::UpdateHeader h = UpdateHeaderFor("a", data, 1, 1, true);
  h.set_total_bytes(data.size() - 3);
  auto r = Submit(h, data);
  EXPECT_FALSE(r.accepted());
  EXPECT_NE(r.reason().find("declared"), std::string::npos);
}

TEST_F(ProtocolHandlerTest, CorruptUpdatesAreRejectedAndGlobalUnchanged) {
  JoinAndInitialize();
  std::string data = Encode(SmallBundle(1, 1, 1, 1));
  v1::UpdateHeader h = UpdateHeaderFor("a", data, 1, 1, true);
  std::string flipped = data;
  flipped[flipped.size() / 2] ^= 0x40;
  auto r = Submit(h, flipped);
  EXPECT_FALSE(r.accepted());
  EXPECT_NE(r.reason().find("checksum"), std::string::npos);
  EXPECT_EQ(metrics_.updates_rejected("checksum"), 1);

  std::string garbage(40, '\x07');
  r = Submit(UpdateHeaderFor("a", garbage, 1, 1, true), garbage);
  EXPECT_FALSE(r.accepted());
  EXPECT_EQ(metrics_.updates_rejected("decode"), 1);

  std::string wrong = Encode(TensorBundle{{NamedTensor{"a", {3}, {1, 2, 3}}}});
  r = Submit(UpdateHeaderFor("a", wrong, 1, 1, true), wrong);
  EXPECT_FALSE(r.accepted());
  EXPECT_NE(r.reason().find("layout"), std::string::npos);

  auto g = engine_->Global(0);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ((*g)->version, 1);
  EXPECT_EQ((*g)->bundle.Find("a")->values, (std::vector<float>{1, 2}));

  r = Submit(h, data);  // the intact update still goes in
  EXPECT_TRUE(r.accepted()) << r.reason();
}

// Issue 14, item 2: uploads verified with XXH3-128 instead of SHA-256. The
// aggregator asks for it at Join; an older agent's SHA-256 upload (every
// other test here) is still accepted.
TEST_F(ProtocolHandlerTest, JoinAsksForXxh3Uploads) {
  v1::JoinRequest req;
  *req.mutable_header() = Header("a");
  req.mutable_capabilities()->set_num_train_examples(100);
  fedge::aggregator::testing::DeclareLayout(SmallBundle(0, 0, 0, 0), req.mutable_capabilities());
  v1::JoinResponse resp;
  ASSERT_TRUE(handler_->Join(req, &resp).ok());
  EXPECT_EQ(resp.upload_checksum(), v1::CHECKSUM_XXH3_128);
}

std::string EncodeXxh3(const TensorBundle& b) {
  EncodeOptions eo{Codec::kFp32, 64, /*zstd=*/false, 3};
  eo.trailer = ChecksumAlgorithm::kXxh3_128;
  auto e = EncodeBundle(b, eo);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? *e : std::string();
}

v1::UpdateHeader Xxh3Header(v1::UpdateHeader h, const std::string& data) {
  h.set_checksum(Xxh3_128Hex(data));
  h.set_checksum_algorithm(v1::CHECKSUM_XXH3_128);
  return h;
}

// The equivalent of CorruptUpdatesAreRejectedAndGlobalUnchanged for the fast
// checksum: a flipped bit is refused as "checksum" (not as a decode error or
// an accepted update), the global is unchanged, and the intact update goes in.
TEST_F(ProtocolHandlerTest, CorruptXxh3UpdatesAreRejectedAndGlobalUnchanged) {
  JoinAndInitialize();
  const std::string data = EncodeXxh3(SmallBundle(1, 1, 1, 1));
  const v1::UpdateHeader h = Xxh3Header(UpdateHeaderFor("a", data, 1, 1, true), data);
  for (size_t at : {size_t{40}, data.size() / 2, data.size() - 1}) {  // payload ... trailer
    std::string flipped = data;
    flipped[at] ^= 0x40;
    auto r = Submit(h, flipped);
    EXPECT_FALSE(r.accepted()) << at;
    EXPECT_NE(r.reason().find("checksum mismatch (xxh3-128)"), std::string::npos) << at << ": " << r.reason();
  }
  EXPECT_EQ(metrics_.updates_rejected("checksum"), 3);
  // A SHA-256 checksum labelled XXH3-128 does not match.
  v1::UpdateHeader mislabelled = h;
  mislabelled.set_checksum(Sha256Hex(data));
  EXPECT_FALSE(Submit(mislabelled, data).accepted());
  EXPECT_EQ(metrics_.updates_rejected("checksum"), 4);
  // A flipped xxh3 flag (header byte 11) is refused too: the header is
  // inspected as it arrives, before the checksum.
  std::string unflagged = data;
  unflagged[11] ^= 0x04;
  EXPECT_FALSE(Submit(h, unflagged).accepted());

  auto g = engine_->Global(0);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ((*g)->version, 1);
  EXPECT_EQ((*g)->bundle.Find("a")->values, (std::vector<float>{1, 2}));

  auto r = Submit(h, data);  // the intact update still goes in
  EXPECT_TRUE(r.accepted()) << r.reason();
}

// An upload whose transport checksum matches (computed after the damage, e.g.
// a sender bug between encoding and hashing) is still refused by the
// bundle's XXH3-128 trailer.
TEST_F(ProtocolHandlerTest, Xxh3UploadWithABadTrailerIsRefused) {
  JoinAndInitialize();
  std::string data = EncodeXxh3(SmallBundle(1, 1, 1, 1));
  data[data.size() / 2] ^= 0x01;
  auto r = Submit(Xxh3Header(UpdateHeaderFor("a", data, 1, 1, true), data), data);
  EXPECT_FALSE(r.accepted());
  EXPECT_NE(r.reason().find("checksum mismatch: xxh3-128"), std::string::npos) << r.reason();
  EXPECT_EQ(metrics_.updates_rejected("decode"), 1);
}

// Agents of both kinds in one round: an older agent's SHA-256 upload and a
// new agent's XXH3-128 upload are both taken.
TEST_F(ProtocolHandlerTest, Sha256AndXxh3UploadsAreBothAccepted) {
  JoinAndInitialize();
  const std::string sha = Encode(SmallBundle(1, 1, 1, 1));
  auto r = Submit(UpdateHeaderFor("a", sha, 1, 1, true), sha);
  EXPECT_TRUE(r.accepted()) << r.reason();
  const std::string fast = EncodeXxh3(SmallBundle(3, 3, 3, 3));
  r = Submit(Xxh3Header(UpdateHeaderFor("b", fast, 1, 1, true), fast), fast);
  EXPECT_TRUE(r.accepted()) << r.reason();
  EXPECT_EQ(metrics_.updates_rejected("checksum"), 0);
}

TEST_F(ProtocolHandlerTest, AnUnknownChecksumAlgorithmIsRefusedNamingTheKnownOnes) {
  JoinAndInitialize();
  const std::string data = Encode(SmallBundle(1, 1, 1, 1));
  v1::UpdateHeader h = UpdateHeaderFor("a", data, 1, 1, true);
  h.set_checksum_algorithm(static_cast<v1::ChecksumAlgorithm>(7));
  auto r = Submit(h, data);
  EXPECT_FALSE(r.accepted());
  EXPECT_NE(r.reason().find("unknown checksum_algorithm 7"), std::string::npos) << r.reason();
  EXPECT_NE(r.reason().find("xxh3-128"), std::string::npos);
}

TEST_F(ProtocolHandlerTest, ReportMetricsFeedsEvaluation) {
  JoinAndInitialize();
  for (const std::string agent : {"a", "b"}) {
    std::string data = Encode(SmallBundle(1, 1, 1, 1));
    ASSERT_TRUE(Submit(UpdateHeaderFor(agent, data, 1, 1, true), data).accepted());
  }
  ASSERT_EQ(GetTask("a").kind(), v1::TASK_KIND_EVALUATE);
  v1::MetricsReport report;
  *report.mutable_header() = Header("a");
  report.set_round(1);
  report.set_global_version(2);
  report.set_phase("train");
  report.set_num_examples(4);
  (*report.mutable_values())["accuracy"] = 0.25;
  EXPECT_EQ(handler_->ReportMetrics(report).code(), StatusCode::kInvalidArgument);
  report.set_phase("evaluate");
  ASSERT_TRUE(handler_->ReportMetrics(report).ok());
  *report.mutable_header() = Header("b");
  (*report.mutable_values())["accuracy"] = 0.75;
  report.set_num_examples(12);
  ASSERT_TRUE(handler_->ReportMetrics(report).ok());
  EngineStatus s = engine_->GetStatus();
  EXPECT_EQ(s.state, JobState::kSucceeded);
  EXPECT_DOUBLE_EQ(*s.final_accuracy, (0.25 * 4 + 0.75 * 12) / 16);
  EXPECT_EQ(GetTask("b").kind(), v1::TASK_KIND_DONE);
}

// --- resumable uploads -------------------------------------------------------

TEST_F(ProtocolHandlerTest, InterruptedNamedUploadResumesFromItsOffset) {
  JoinAndInitialize();
  std::string data = Encode(SmallBundle(2, 2, 2, 2));
  v1::UpdateHeader h = UpdateHeaderFor("a", data, 1, 1, true);
  h.set_upload_id("r1-abc");
  auto r = SubmitStream(h, data, 10);  // the link drops after 10 bytes
  EXPECT_FALSE(r.accepted());
  EXPECT_EQ(r.resume_offset(), 10u);
  EXPECT_NE(r.reason().find("resume with offset 10"), std::string::npos) << r.reason();
  EXPECT_EQ(r.reason_code(), "incomplete");
  EXPECT_EQ(metrics_.updates_rejected("incomplete"), 1);
  v1::UploadStatus st = UploadStatusOf("a", "r1-abc");
  EXPECT_TRUE(st.found());
  EXPECT_EQ(st.received_bytes(), 10u);
  EXPECT_EQ(st.total_bytes(), data.size());
  EXPECT_EQ(handler_->partial_uploads(), 1u);
  EXPECT_EQ(handler_->partial_bytes(), data.size());
  EXPECT_EQ(metrics_.partial_upload_bytes(), static_cast<double>(data.size()));

  // A reconnect that gets the offset wrong is told the right one.
  h.set_offset(4);
  r = SubmitStream(h, data.substr(4), data.size() - 4);
  EXPECT_EQ(r.resume_offset(), 10u);
  EXPECT_EQ(r.reason_code(), "bad_offset");
  EXPECT_EQ(metrics_.updates_rejected("bad_offset"), 1);

  h.set_offset(10);
  r = SubmitStream(h, data.substr(10), data.size() - 10);
  EXPECT_TRUE(r.accepted()) << r.reason();
  EXPECT_EQ(handler_->partial_uploads(), 0u);
  EXPECT_EQ(handler_->partial_bytes(), 0u);
  EXPECT_EQ(metrics_.partial_upload_bytes(), 0);
  EXPECT_FALSE(UploadStatusOf("a", "r1-abc").found());
  // The resumed bytes are exactly the update: b's answer closes the round on the FedAvg of both.
  std::string zero = Encode(SmallBundle(0, 0, 0, 0));
  ASSERT_TRUE(Submit(UpdateHeaderFor("b", zero, 1, 1, true), zero).accepted());
  auto g = engine_->Global(0);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ((*g)->bundle.Find("a")->values, (std::vector<float>{2, 3}));  // 1 + (2 + 0) / 2, 2 + 1
}

TEST_F(ProtocolHandlerTest, InterruptedInitialUploadResumes) {
  ASSERT_TRUE(Join("a").ok());
  ASSERT_TRUE(Join("b").ok());
  ASSERT_EQ(GetTask("a").kind(), v1::TASK_KIND_INITIALIZE);
  std::string init = Encode(SmallBundle(1, 2, 3, 4));
  v1::UpdateHeader h = UpdateHeaderFor("a", init, 0, 0, false);
  h.set_upload_id("init-1");
  auto r = SubmitStream(h, init, 12);
  EXPECT_FALSE(r.accepted());
  EXPECT_EQ(r.resume_offset(), 12u);
  EXPECT_EQ(UploadStatusOf("a", "init-1").received_bytes(), 12u);
  h.set_offset(12);
  r = SubmitStream(h, init.substr(12), init.size() - 12);
  ASSERT_TRUE(r.accepted()) << r.reason();
  EXPECT_TRUE(r.reason_code().empty());
  auto g = engine_->Global(0);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ((*g)->bundle.Find("a")->values, (std::vector<float>{1, 2}));
  EXPECT_EQ(handler_->partial_uploads(), 0u);
}

TEST_F(ProtocolHandlerTest, ZeroPartialBudgetMakesUploadsNonResumable) {
  ProtocolOptions options;
  options.max_partial_bytes = 0;
  Make(std::move(options));
  JoinAndInitialize();
  std::string data = Encode(SmallBundle(2, 2, 2, 2));
  v1::UpdateHeader h = UpdateHeaderFor("a", data, 1, 1, true);
  h.set_upload_id("r1");
  auto r = SubmitStream(h, data, 10);
  EXPECT_FALSE(r.accepted());
  EXPECT_EQ(r.resume_offset(), 0u);
  EXPECT_FALSE(UploadStatusOf("a", "r1").found());
  EXPECT_EQ(handler_->partial_bytes(), 0u);
}

TEST_F(ProtocolHandlerTest, ResumeOfAnUploadNobodyHoldsStartsOver) {
  JoinAndInitialize();
  std::string data = Encode(SmallBundle(2, 2, 2, 2));
  v1::UpdateHeader h = UpdateHeaderFor("a", data, 1, 1, true);
  h.set_upload_id("never-sent");
  h.set_offset(10);
  auto r = SubmitStream(h, data.substr(10), data.size() - 10);
  EXPECT_FALSE(r.accepted());
  EXPECT_NE(r.reason().find("from offset 0"), std::string::npos) << r.reason();
  EXPECT_EQ(r.reason_code(), "unknown_upload");
  EXPECT_EQ(metrics_.updates_rejected("unknown_upload"), 1);
  // An offset without an upload id is meaningless.
  h.clear_upload_id();
  EXPECT_FALSE(SubmitStream(h, data.substr(10), data.size() - 10).accepted());
  EXPECT_EQ(metrics_.updates_rejected("bad_request"), 1);
  // Other agents cannot see (or resume) a's uploads.
  h.set_upload_id("mine");
  h.set_offset(0);
  SubmitStream(h, data, 5);
  EXPECT_TRUE(UploadStatusOf("a", "mine").found());
  EXPECT_FALSE(UploadStatusOf("b", "mine").found());
}

TEST_F(ProtocolHandlerTest, PartialUploadsAreDroppedWhenTheRoundCloses) {
  Make(ProtocolOptions{}, [](JobSpec& spec) {
    spec.rounds.quorum = 1;
    spec.rounds.timeoutSeconds = 10;
  });
  JoinAndInitialize();
  std::string data = Encode(SmallBundle(2, 2, 2, 2));
  v1::UpdateHeader h = UpdateHeaderFor("a", data, 1, 1, true);
  h.set_upload_id("u");
  SubmitStream(h, data, 12);
  ASSERT_EQ(handler_->partial_uploads(), 1u);
  std::string other = Encode(SmallBundle(1, 1, 1, 1));
  ASSERT_TRUE(Submit(UpdateHeaderFor("b", other, 1, 1, true), other).accepted());
  clock_.AdvanceMs(10'000);  // deadline with quorum 1 met: round 1 closes
  engine_->Tick();
  ASSERT_EQ(engine_->GetStatus().phase, Phase::kEvaluate);
  handler_->DropClosedUploads();
  EXPECT_EQ(handler_->partial_uploads(), 0u);
  EXPECT_EQ(handler_->partial_bytes(), 0u);
  // The resume is refused from its header: the round it answers has closed
  // (sending it from offset 0 would be refused the same way).
  h.set_offset(12);
  auto r = SubmitStream(h, data.substr(12), data.size() - 12);
  EXPECT_FALSE(r.accepted());
  EXPECT_EQ(r.reason_code(), "round_closed");
  EXPECT_EQ(metrics_.updates_rejected("round_closed"), 1);
}

TEST_F(ProtocolHandlerTest, PartialUploadsStayWithinTheirByteBudget) {
  std::string data = Encode(SmallBundle(2, 2, 2, 2));
  ProtocolOptions options;
  options.max_partial_bytes = data.size() + data.size() / 2;  // room for one
  Make(options);
  JoinAndInitialize();
  v1::UpdateHeader ha = UpdateHeaderFor("a", data, 1, 1, true);
  ha.set_upload_id("ua");
  SubmitStream(ha, data, 9);
  v1::UpdateHeader hb = UpdateHeaderFor("b", data, 1, 1, true);
  hb.set_upload_id("ub");
  SubmitStream(hb, data, 9);
  // b's upload evicted a's (least recently used); the budget holds.
  EXPECT_EQ(handler_->partial_uploads(), 1u);
  EXPECT_LE(handler_->partial_bytes(), options.max_partial_bytes);
  EXPECT_FALSE(UploadStatusOf("a", "ua").found());
  EXPECT_EQ(UploadStatusOf("b", "ub").received_bytes(), 9u);
  // An agent's new upload replaces its older partial one.
  hb.set_upload_id("ub2");
  SubmitStream(hb, data, 3);
  EXPECT_EQ(handler_->partial_uploads(), 1u);
  EXPECT_FALSE(UploadStatusOf("b", "ub").found());
  EXPECT_EQ(UploadStatusOf("b", "ub2").received_bytes(), 3u);
}

// --- hostile updates: each is rejected with a reason, counted, and leaves the
// global model untouched. Round 2 is open on version 2 when each case runs.

struct HostileCase {
  std::string name;
  std::string label;       // fedge_aggregator_updates_rejected_total{reason=...}
  std::string reason_has;  // in the response's reason (or the Status message)
  // Builds the attempt from a well-formed update of agent "a" for round 2.
  std::function<void(v1::UpdateHeader&, std::string& data, size_t& send)> mutate;
  StatusCode code = StatusCode::kOk;  // non-OK: the stream is refused with this status
};

std::string EncodeFp32(const TensorBundle& b) {
  auto e = EncodeBundle(b, EncodeOptions{Codec::kFp32, 64, /*zstd=*/false, 3});
  return e.ok() ? *e : std::string();
}

// What a hostile agent sends instead of EncodeBundle's output (which refuses
// NaN/Inf): a well-formed fp32 bundle with `from` overwritten by `to` and a
// valid SHA-256 trailer (docs/formats.md), so only the value check can catch it.
std::string PatchValue(std::string enc, float from, float to) {
  char f[4], t[4];
  std::memcpy(f, &from, 4);
  std::memcpy(t, &to, 4);
  const size_t at = enc.find(std::string(f, 4), 36);
  if (at == std::string::npos || at + 4 > enc.size() - 32) return "";
  std::memcpy(enc.data() + at, t, 4);
  const std::string hex = Sha256Hex(std::string_view(enc).substr(0, enc.size() - 32));
  for (size_t i = 0; i < 32; ++i)
    enc[enc.size() - 32 + i] = static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return enc;
}

void SetData(v1::UpdateHeader& h, std::string& data, size_t& send, std::string bytes) {
  data = std::move(bytes);
  send = data.size();
  h.set_total_bytes(data.size());
  h.set_checksum(Sha256Hex(data));
}

void Reencode(v1::UpdateHeader& h, std::string& data, size_t& send, const TensorBundle& b) {
  data = EncodeFp32(b);
  send = data.size();
  h.set_total_bytes(data.size());
  h.set_checksum(Sha256Hex(data));
}

TEST_F(ProtocolHandlerTest, HostileUpdatesAreRejectedCountedAndLeaveTheGlobalUnchanged) {
  Make(ProtocolOptions{}, [](JobSpec& spec) {
    spec.rounds.total = 3;
    spec.strategy.maxUpdateNorm = 10;
  });
  JoinAndInitialize();
  std::string round1 = Encode(SmallBundle(1, 1, 1, 1));
  const v1::UpdateHeader replayed = UpdateHeaderFor("a", round1, 1, 1, true);
  ASSERT_TRUE(Submit(replayed, round1).accepted());
  ASSERT_TRUE(Submit(UpdateHeaderFor("b", round1, 1, 1, true), round1).accepted());
  for (const std::string agent : {"a", "b"}) {
    v1::MetricsReport report;
    *report.mutable_header() = Header(agent);
    report.set_round(1);
    report.set_global_version(2);
    report.set_phase("evaluate");
    ASSERT_TRUE(handler_->ReportMetrics(report).ok());
  }
  ASSERT_EQ(engine_->GetStatus().round, 2);
  ASSERT_EQ(engine_->GetStatus().phase, Phase::kTrain);

  const std::vector<HostileCase> cases = {
      {"wrong tensor name", "layout", "layout",
       [](auto& h, auto& d, auto& n) {
         Reencode(h, d, n,
                  TensorBundle{{NamedTensor{"a", {2}, {1, 1}}, NamedTensor{"evil", {1, 2}, {1, 1}}}});
       }},
      {"wrong shape", "layout", "layout",
       [](auto& h, auto& d, auto& n) {
         Reencode(h, d, n, TensorBundle{{NamedTensor{"a", {2}, {1, 1}}, NamedTensor{"b", {2, 1}, {1, 1}}}});
       }},
      {"missing tensor", "layout", "layout",
       [](auto& h, auto& d, auto& n) {
         Reencode(h, d, n, TensorBundle{{NamedTensor{"a", {2}, {1, 1}}}});
       }},
      // The decoder refuses non-finite values before the engine sees them.
      {"NaN", "decode", "not finite",
       [](auto& h, auto& d, auto& n) {
         SetData(h, d, n, PatchValue(EncodeFp32(SmallBundle(1, 7.5f, 1, 1)), 7.5f, NAN));
       }},
      {"Inf", "decode", "not finite",
       [](auto& h, auto& d, auto& n) {
         SetData(h, d, n, PatchValue(EncodeFp32(SmallBundle(1, 1, 7.5f, 1)), 7.5f, -INFINITY));
       }},
      {"norm beyond the bound", "norm_bound", "exceeds bound",
       [](auto& h, auto& d, auto& n) { Reencode(h, d, n, SmallBundle(100, 0, 0, 0)); }},
      {"truncated stream", "size_mismatch", "cut short", [](auto&, auto& d, auto& n) { n = d.size() / 2; }},
      {"corrupted in transit", "checksum", "checksum",
       [](auto&, auto& d, auto&) { d[d.size() / 2] ^= 0x20; }},
      {"not a bundle", "decode", "decode",
       [](auto& h, auto& d, auto& n) {
         d = std::string(64, '\x01');
         n = d.size();
         h.set_total_bytes(d.size());
         h.set_checksum(Sha256Hex(d));
       }},
      {"stale base version", "stale_base", "stale base",
       [](auto& h, auto&, auto&) { h.set_base_version(1); }},
      {"future round", "round_not_open", "has not started", [](auto& h, auto&, auto&) { h.set_round(3); }},
      {"replay of an old round", "replay", "replay",
       [&](auto& h, auto& d, auto& n) {
         h = replayed;  // the very bytes and header a sent for round 1
         d = round1;
         n = d.size();
       }},
      {"unknown agent", "unknown_agent", "rejoin",
       [](auto& h, auto&, auto&) {
         h.mutable_header()->set_agent_id("mallory");
         h.mutable_header()->set_session("0123456789abcdef");
       },
       StatusCode::kUnauthenticated},
      {"unknown session", "unknown_session", "rejoin",
       [](auto& h, auto&, auto&) { h.mutable_header()->set_session("forged"); },
       StatusCode::kUnauthenticated},
  };

  auto global_before = engine_->Global(0);
  ASSERT_TRUE(global_before.ok());
  const std::string checksum_before = (*global_before)->checksum;
  const std::vector<float> a_before = (*global_before)->bundle.Find("a")->values;
  for (const HostileCase& c : cases) {
    SCOPED_TRACE(c.name);
    std::string data = Encode(SmallBundle(1, 2, 1, 2));
    v1::UpdateHeader h = UpdateHeaderFor("a", data, 2, 2, true);
    size_t send = data.size();
    c.mutate(h, data, send);
    const double counted = metrics_.updates_rejected(c.label);
    Status status;
    v1::SubmitUpdateResponse r = SubmitStream(h, data, send, &status);
    if (c.code != StatusCode::kOk) {
      EXPECT_EQ(status.code(), c.code) << status.ToString();
      EXPECT_NE(status.message().find(c.reason_has), std::string::npos) << status.message();
    } else {
      ASSERT_TRUE(status.ok()) << status.ToString();
      EXPECT_FALSE(r.accepted());
      EXPECT_FALSE(r.reason().empty());
      EXPECT_NE(r.reason().find(c.reason_has), std::string::npos) << r.reason();
    }
    EXPECT_EQ(metrics_.updates_rejected(c.label), counted + 1);
    auto g = engine_->Global(0);
    ASSERT_TRUE(g.ok());
    EXPECT_EQ((*g)->version, 2);
    EXPECT_EQ((*g)->checksum, checksum_before);
    EXPECT_EQ((*g)->bundle.Find("a")->values, a_before);
    EXPECT_EQ(engine_->GetStatus().phase, Phase::kTrain);  // the round is still open
  }
  // None of it cost "a" its turn: its honest update still counts.
  std::string honest = Encode(SmallBundle(1, 1, 1, 1));
  EXPECT_TRUE(Submit(UpdateHeaderFor("a", honest, 2, 2, true), honest).accepted());
}

}  // namespace
}  // namespace fedge::aggregator
