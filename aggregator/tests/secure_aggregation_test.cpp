// Secure aggregation in the round engine (issue 12, item 1): what it refuses, what
// TRAIN tasks tell agents, a full round driven by in-process secagg clients on a
// fake clock, and what happens when too few agents take part. The gRPC run is
// agent/tests/runtime/secagg_loopback_test.cpp.
#include <gtest/gtest.h>

#include <cmath>

#include "fedge/aggregator/privacy_accountant.h"
#include "fedge/aggregator/round_engine.h"
#include "fedge/secagg/protocol.h"
#include "test_util.h"

namespace fedge::aggregator {
namespace {

using testing::SmallBundle;

EngineOptions SecAggOptionsFor(int agents, const std::string& strategy = "fedavg") {
  JobSpec spec = testing::TestJob("sa", /*rounds=*/1);
  spec.rounds.timeoutSeconds = 10;
  spec.rounds.localSteps = 2;
  spec.rounds.batchSize = 5;
  spec.strategy.name = strategy;
  spec.strategy.maxUpdateNorm = 10;
  spec.privacy.secureAggregation.enabled = true;
  return EngineOptionsFromSpec(spec, agents);
}

TEST(SecureAggregationEngineTest, StrategiesThatNeedEachUpdateAreRefused) {
  FakeClock clock;
  for (const char* name : {"median", "trimmed-mean", "krum"}) {
    auto engine = RoundEngine::Create(SecAggOptionsFor(5, name), &clock, nullptr, nullptr);
    ASSERT_FALSE(engine.ok()) << name;
    EXPECT_NE(engine.status().message().find("needs each agent's update"), std::string::npos)
        << engine.status().message();
  }
  EngineOptions async = SecAggOptionsFor(3);
  async.async = true;
  EXPECT_FALSE(RoundEngine::Create(async, &clock, nullptr, nullptr).ok());
  EngineOptions product = SecAggOptionsFor(3);
  product.adapter.aggregation = "product";
  EXPECT_FALSE(RoundEngine::Create(product, &clock, nullptr, nullptr).ok());
  EngineOptions one = SecAggOptionsFor(3);
  one.secagg.threshold = 1;
  EXPECT_FALSE(RoundEngine::Create(one, &clock, nullptr, nullptr).ok());
  for (const char* name : {"fedavg", "fedprox", "fedadam"}) {
    EXPECT_TRUE(RoundEngine::Create(SecAggOptionsFor(3, name), &clock, nullptr, nullptr).ok()) << name;
  }
}

class SecureAggregationRoundTest : public ::testing::Test {
 protected:
  void Start(int n, EngineOptions options) {
    auto engine = RoundEngine::Create(std::move(options), &clock_, nullptr, &metrics_);
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    engine_ = std::move(*engine);
    for (int i = 0; i < n; ++i) {
      ids_.push_back("a" + std::to_string(i));
      // 5, 10, 15, ... examples; the cap is localSteps x batchSize = 10.
      engine_->Join(ids_.back(), AgentInfo{"node", 5L * (i + 1), 10, SmallBundle(0, 0, 0, 0)});
    }
    ASSERT_EQ(engine_->GetTask(ids_[0], 0).kind, TaskKind::kInitialize);
    UpdateMeta meta;
    meta.agent_id = ids_[0];
    meta.is_delta = false;
    ASSERT_TRUE(engine_->SubmitUpdate(meta, SmallBundle(1, 1, 1, 1)).accepted);
  }

  // Drives round `round` with every agent advertising and sharing, the first `maskers`
  // submitting masked inputs (with feedback_examples[i]), the rest dropping before
  // masking; the survivors then answer the unmask. Returns the engine's status.
  EngineStatus MaskedRound(int64_t round, size_t maskers, const std::vector<int64_t>& feedback = {}) {
    std::vector<secagg::SecAggClient> clients;
    for (const std::string& id : ids_) {
      EXPECT_EQ(engine_->GetTask(id, round).kind, TaskKind::kTrain);
      clients.push_back(*secagg::SecAggClient::Create());
    }
    const size_t n = ids_.size();
    for (size_t i = 0; i < n; ++i) {
      EXPECT_TRUE(
          engine_->SecAggAdvertise(ids_[i], round, clients[i].enc_public_key(), clients[i].mask_public_key())
              .ok());
    }
    std::vector<std::vector<secagg::EncryptedShare>> shares(n);
    for (size_t i = 0; i < n; ++i) {
      auto roster = *engine_->SecAggAdvertise(ids_[i], round, clients[i].enc_public_key(),
                                              clients[i].mask_public_key());
      EXPECT_TRUE(roster.has_value());
      if (!roster) return engine_->GetStatus();
      shares[i] = *clients[i].ShareKeys(*roster);
    }
    for (size_t i = 0; i < n; ++i) EXPECT_TRUE(engine_->SecAggShareKeys(ids_[i], round, shares[i]).ok());
    for (size_t i = 0; i < maskers; ++i) {
      auto inbox = *engine_->SecAggShareKeys(ids_[i], round, shares[i]);
      EXPECT_TRUE(clients[i].ReceiveShares(*inbox).ok());
      uint64_t received = 0;
      EXPECT_TRUE(engine_
                      ->SecAggSubmitMasked(ids_[i], round, 0,
                                           *clients[i].MaskInput(std::vector<double>(4, 0.1), 1.0), &received,
                                           i < feedback.size() ? feedback[i] : 0)
                      .ok());
    }
    if (maskers < n) clock_.AdvanceMs(1001);  // the masked phase's timeout (phase_timeout_ms 1000)
    for (size_t i = 0; i < maskers; ++i) {
      auto ask = engine_->SecAggUnmask(ids_[i], round, false, {});
      EXPECT_TRUE(ask.ok() && ask->has_value()) << ask.status().ToString();
      if (!ask.ok() || !ask->has_value()) break;
      EXPECT_TRUE(engine_->SecAggUnmask(ids_[i], round, true, *clients[i].Unmask(**ask)).ok());
    }
    return engine_->GetStatus();
  }
  void EvaluateAll(int64_t round) {
    const int64_t version = engine_->GetStatus().global_version;
    for (const std::string& id : ids_) {
      if (engine_->GetTask(id, version).kind != TaskKind::kEvaluate) continue;
      EvalReport r;
      r.agent_id = id;
      r.round = round;
      r.global_version = version;
      r.num_examples = 10;
      r.accuracy = 0.5;
      r.loss = 1;
      EXPECT_TRUE(engine_->ReportEvaluation(r).ok());
    }
  }

  FakeClock clock_;
  AggregatorMetrics metrics_;
  std::unique_ptr<RoundEngine> engine_;
  std::vector<std::string> ids_;
};

TEST_F(SecureAggregationRoundTest, TrainTasksAskForMaskingAndPlainUpdatesAreRefused) {
  Start(3, SecAggOptionsFor(3));
  TaskInfo t = engine_->GetTask(ids_[1], 1);
  ASSERT_EQ(t.kind, TaskKind::kTrain);
  EXPECT_TRUE(t.config.secure_aggregation);
  EXPECT_DOUBLE_EQ(t.config.secagg_clip_norm, 10);  // spec.strategy.maxUpdateNorm
  EXPECT_EQ(t.config.secagg_max_weight, 10);
  UpdateMeta meta;
  meta.agent_id = ids_[1];
  meta.round = 1;
  meta.base_version = 1;
  meta.num_examples = 10;
  UpdateVerdict v = engine_->SubmitUpdate(meta, SmallBundle(0.1f, 0.1f, 0.1f, 0.1f));
  EXPECT_FALSE(v.accepted);
  EXPECT_EQ(v.reason_label, "secure_aggregation");
}

TEST_F(SecureAggregationRoundTest, OneRoundOfMaskedUpdatesMovesTheGlobalByTheirWeightedMean) {
  Start(3, SecAggOptionsFor(3));
  std::vector<secagg::SecAggClient> clients;
  for (const std::string& id : ids_) {
    ASSERT_EQ(engine_->GetTask(id, 1).kind, TaskKind::kTrain);
    clients.push_back(*secagg::SecAggClient::Create());
  }
  std::vector<std::optional<secagg::Roster>> rosters(3);
  for (int i = 0; i < 3; ++i) {
    auto r = engine_->SecAggAdvertise(ids_[i], 1, clients[i].enc_public_key(), clients[i].mask_public_key());
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    rosters[i] = *r;
  }
  EXPECT_FALSE(rosters[0].has_value());  // still collecting when the first advertised
  ASSERT_TRUE(rosters[2].has_value());
  // An agent in the protocol is told to wait, not to train again.
  EXPECT_EQ(engine_->GetTask(ids_[0], 1).kind, TaskKind::kWait);
  std::vector<std::vector<secagg::EncryptedShare>> shares(3);
  for (int i = 0; i < 3; ++i) {
    auto roster =
        *engine_->SecAggAdvertise(ids_[i], 1, clients[i].enc_public_key(), clients[i].mask_public_key());
    ASSERT_TRUE(roster.has_value());
    shares[i] = *clients[i].ShareKeys(*roster);
  }
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(engine_->SecAggShareKeys(ids_[i], 1, shares[i]).ok());
  // Deltas: a0 +0.1, a1 +0.2, a2 +0.3 on every value; weights 0.5, 1, 1.
  const double weights[] = {0.5, 1, 1};
  for (int i = 0; i < 3; ++i) {
    auto inbox = *engine_->SecAggShareKeys(ids_[i], 1, shares[i]);
    ASSERT_TRUE(inbox.has_value());
    ASSERT_TRUE(clients[i].ReceiveShares(*inbox).ok());
    auto masked = clients[i].MaskInput(std::vector<double>(4, 0.1 * (i + 1)), weights[i]);
    ASSERT_TRUE(masked.ok());
    uint64_t received = 0;
    ASSERT_TRUE(engine_->SecAggSubmitMasked(ids_[i], 1, 0, *masked, &received).ok());
  }
  for (int i = 0; i < 3; ++i) {
    auto ask = engine_->SecAggUnmask(ids_[i], 1, false, {});
    ASSERT_TRUE(ask.ok() && ask->has_value());
    ASSERT_TRUE(engine_->SecAggUnmask(ids_[i], 1, true, *clients[i].Unmask(**ask)).ok());
  }
  EngineStatus st = engine_->GetStatus();
  ASSERT_EQ(st.phase, Phase::kEvaluate) << st.message;
  EXPECT_EQ(st.global_version, 2);
  // (0.5 * 0.1 + 0.2 + 0.3) / 2.5 = 0.22
  for (float v : (*engine_->Global(0))->bundle.Find("a")->values) EXPECT_NEAR(v, 1.22, 2e-3);
}

TEST_F(SecureAggregationRoundTest, TooFewAdvertisersRestartTheRoundOnceThenFailTheJob) {
  Start(3, SecAggOptionsFor(3));
  auto c = *secagg::SecAggClient::Create();
  ASSERT_EQ(engine_->GetTask(ids_[0], 1).kind, TaskKind::kTrain);
  ASSERT_TRUE(engine_->SecAggAdvertise(ids_[0], 1, c.enc_public_key(), c.mask_public_key()).ok());
  clock_.AdvanceMs(10'001);  // the round's deadline: one agent advertised
  engine_->Tick();
  EngineStatus st = engine_->GetStatus();
  EXPECT_EQ(JobStateName(st.state), "Running");
  EXPECT_EQ(st.phase, Phase::kTrain);  // started over
  clock_.AdvanceMs(10'001);
  engine_->Tick();
  st = engine_->GetStatus();
  EXPECT_EQ(JobStateName(st.state), "Failed");
  EXPECT_NE(st.message.find("advertised keys"), std::string::npos) << st.message;
}

// Distributed DP (issue 12 item 2): the agents add the noise; with one of four
// advertisers dropping before its masked input, the round carries sigma * sqrt(3/4) of
// noise and is accounted at exactly that.
TEST_F(SecureAggregationRoundTest, DistributedNoiseIsAccountedAtWhatTheSurvivorsAdded) {
  EngineOptions o = SecAggOptionsFor(4);
  o.dp.enabled = true;
  o.dp.distributed = true;
  o.dp.clip_norm = 1;
  o.dp.noise_multiplier = 0.8;
  o.dp.delta = 1e-5;
  o.secagg.phase_timeout_ms = 1000;
  Start(4, o);
  std::vector<secagg::SecAggClient> clients;
  for (const std::string& id : ids_) {
    TaskInfo t = engine_->GetTask(id, 1);
    ASSERT_EQ(t.kind, TaskKind::kTrain);
    EXPECT_EQ(t.config.secagg_max_weight, 0);        // DP: every weight 1
    EXPECT_DOUBLE_EQ(t.config.secagg_clip_norm, 1);  // the DP clip norm
    clients.push_back(*secagg::SecAggClient::Create());
  }
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(
        engine_->SecAggAdvertise(ids_[i], 1, clients[i].enc_public_key(), clients[i].mask_public_key()).ok());
  }
  std::vector<std::vector<secagg::EncryptedShare>> shares(4);
  for (int i = 0; i < 4; ++i) {
    auto roster =
        *engine_->SecAggAdvertise(ids_[i], 1, clients[i].enc_public_key(), clients[i].mask_public_key());
    ASSERT_TRUE(roster.has_value());
    // sigma C / sqrt(m) per agent, m = 4 advertisers.
    EXPECT_NEAR(roster->params.noise_stddev, 0.8 / std::sqrt(4.0), 1e-12);
    shares[i] = *clients[i].ShareKeys(*roster);
  }
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(engine_->SecAggShareKeys(ids_[i], 1, shares[i]).ok());
  for (int i = 0; i < 3; ++i) {  // a3 drops before masking
    auto inbox = *engine_->SecAggShareKeys(ids_[i], 1, shares[i]);
    ASSERT_TRUE(clients[i].ReceiveShares(*inbox).ok());
    uint64_t received = 0;
    ASSERT_TRUE(engine_
                    ->SecAggSubmitMasked(ids_[i], 1, 0,
                                         *clients[i].MaskInput(std::vector<double>(4, 0.1), 1.0), &received)
                    .ok());
  }
  clock_.AdvanceMs(1001);  // the masked phase's timeout
  for (int i = 0; i < 3; ++i) {
    auto ask = engine_->SecAggUnmask(ids_[i], 1, false, {});
    ASSERT_TRUE(ask.ok() && ask->has_value()) << ask.status().ToString();
    ASSERT_TRUE(engine_->SecAggUnmask(ids_[i], 1, true, *clients[i].Unmask(**ask)).ok());
  }
  EngineStatus st = engine_->GetStatus();
  ASSERT_EQ(st.phase, Phase::kEvaluate) << st.message;
  ASSERT_TRUE(st.privacy.has_value());
  RdpAccountant expected;
  ASSERT_TRUE(expected.Compose(0.8 * std::sqrt(3.0 / 4.0), 1.0).ok());
  EXPECT_DOUBLE_EQ(st.privacy->epsilon, expected.Epsilon(1e-5));
  RdpAccountant nominal;
  ASSERT_TRUE(nominal.Compose(0.8, 1.0).ok());
  EXPECT_GT(st.privacy->epsilon, nominal.Epsilon(1e-5));  // the shortfall costs privacy
}

// Regression (issue 12 gap, session 11): TaskEpoch summarised state, phase, round and
// global version only, so a secure-aggregation round moving through its phases, or
// started over inside phase kTrain, left it unchanged, and a GetTask long-poll held
// during them (an advertised agent told WAIT) sat out its 20 s after it could train.
TEST_F(SecureAggregationRoundTest, TaskEpochMovesWithSecureAggregationPhasesAndRestarts) {
  Start(3, SecAggOptionsFor(3));
  auto c = *secagg::SecAggClient::Create();
  ASSERT_EQ(engine_->GetTask(ids_[0], 1).kind, TaskKind::kTrain);
  ASSERT_TRUE(engine_->SecAggAdvertise(ids_[0], 1, c.enc_public_key(), c.mask_public_key()).ok());
  ASSERT_EQ(engine_->GetTask(ids_[0], 1).kind, TaskKind::kWait);  // "in progress": a long-poll parks here
  const uint64_t parked_at = engine_->TaskEpoch();
  clock_.AdvanceMs(10'001);  // the advertise deadline with one advertiser: the round starts over
  engine_->Tick();
  ASSERT_EQ(engine_->GetStatus().phase, Phase::kTrain);
  ASSERT_EQ(engine_->GetStatus().round, 1);
  EXPECT_EQ(engine_->GetTask(ids_[0], 1).kind, TaskKind::kTrain);  // the parked answer is stale
  EXPECT_NE(engine_->TaskEpoch(), parked_at);

  // The protocol's own phases move it too (advertise -> share once everyone advertised).
  std::vector<secagg::SecAggClient> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(*secagg::SecAggClient::Create());
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(
        engine_->SecAggAdvertise(ids_[i], 1, clients[i].enc_public_key(), clients[i].mask_public_key()).ok());
  }
  const uint64_t advertising = engine_->TaskEpoch();
  ASSERT_TRUE(
      engine_->SecAggAdvertise(ids_[2], 1, clients[2].enc_public_key(), clients[2].mask_public_key()).ok());
  EXPECT_NE(engine_->TaskEpoch(), advertising);
}

// Gap of session 11: feedback example counts were not reported under secure
// aggregation. They ride with the masked input, clamped like SubmitUpdate's, and only
// agents whose input is in the unmasked sum keep theirs.
TEST_F(SecureAggregationRoundTest, FeedbackExamplesOfTheSummedAgentsAreInTheRoundRecordClamped) {
  EngineOptions o = SecAggOptionsFor(4);
  o.secagg.phase_timeout_ms = 1000;
  Start(4, o);
  // a0: 7, a1: absurd (clamped), a2: none, a3: drops before masking (never reported).
  EngineStatus st = MaskedRound(1, 3, {7, int64_t{1} << 40, 0});
  ASSERT_EQ(st.phase, Phase::kEvaluate) << st.message;
  EvaluateAll(1);
  st = engine_->GetStatus();
  ASSERT_EQ(st.rounds.size(), 1u) << st.message;
  EXPECT_EQ(st.rounds[0].feedback_examples,
            (std::map<std::string, int64_t>{{"a0", 7}, {"a1", kMaxReportedFeedbackExamples}}));
}

// Gap of session 11: the distributed-DP budget check assumed every advertiser survives,
// so a round whose dropouts left less noise could end above targetEpsilon. The check now
// accounts the next round at the worst the protocol allows (4 agents, threshold 2: 3 of 4
// survivors, sigma * sqrt(3/4); 2 could not rebuild each other's self masks).
class SecureAggregationBudgetTest : public SecureAggregationRoundTest {
 protected:
  EngineOptions Options(double target_epsilon, int rounds) {
    EngineOptions o = SecAggOptionsFor(4);
    o.total_rounds = rounds;
    o.dp.enabled = true;
    o.dp.distributed = true;
    o.dp.clip_norm = 1;
    o.dp.noise_multiplier = kSigma;
    o.dp.delta = 1e-5;
    o.dp.target_epsilon = target_epsilon;
    o.secagg.phase_timeout_ms = 1000;
    return o;
  }
  static double EpsilonOfRounds(std::vector<double> sigmas) {
    RdpAccountant a;
    for (double s : sigmas) EXPECT_TRUE(a.Compose(s, 1.0).ok());
    return a.Epsilon(1e-5);
  }
  static constexpr double kSigma = 2.0;
  const double worst_ = kSigma * std::sqrt(0.75);
};

TEST_F(SecureAggregationBudgetTest, ARoundWhoseWorstDropoutsCouldExceedTheTargetDoesNotStart) {
  // Above one round at sigma, below one round at the worst dropouts: the old check ran
  // it, and two dropouts then took epsilon past the target.
  const double target = 0.5 * (EpsilonOfRounds({kSigma}) + EpsilonOfRounds({worst_}));
  Start(4, Options(target, 3));
  EngineStatus st = engine_->GetStatus();
  EXPECT_EQ(JobStateName(st.state), "Succeeded") << st.message;
  EXPECT_NE(st.message.find("privacy budget exhausted"), std::string::npos) << st.message;
  EXPECT_NE(st.message.find("noise multiplier"), std::string::npos) << st.message;
  EXPECT_TRUE(st.rounds.empty());
  if (st.privacy) {
    EXPECT_LE(st.privacy->epsilon, target);
  }
}

TEST_F(SecureAggregationBudgetTest,
       RoundsWithTheWorstDropoutsStayWithinTheTargetAndTheJobStopsBeforeExceeding) {
  const double target = EpsilonOfRounds({worst_}) * 1.0001;  // room for one worst-case round
  Start(4, Options(target, 3));
  EngineStatus st = MaskedRound(1, 3);  // 3 of 4 survive: the least noise the protocol publishes
  ASSERT_EQ(st.phase, Phase::kEvaluate) << st.message;
  ASSERT_TRUE(st.privacy.has_value());
  EXPECT_DOUBLE_EQ(st.privacy->epsilon, EpsilonOfRounds({worst_}));
  EXPECT_LE(st.privacy->epsilon, target);
  EvaluateAll(1);
  st = engine_->GetStatus();
  EXPECT_EQ(JobStateName(st.state), "Succeeded") << st.message;
  EXPECT_NE(st.message.find("privacy budget exhausted"), std::string::npos) << st.message;
  EXPECT_EQ(st.rounds.size(), 1u);
  EXPECT_LE(st.privacy->epsilon, target);
}

TEST(SecureAggregationEngineTest, DistributedNoiseNeedsSecureAggregation) {
  FakeClock clock;
  EngineOptions o = SecAggOptionsFor(3);
  o.secagg.enabled = false;
  o.dp.enabled = true;
  o.dp.distributed = true;
  o.dp.clip_norm = 1;
  o.dp.noise_multiplier = 1;
  auto engine = RoundEngine::Create(o, &clock, nullptr, nullptr);
  ASSERT_FALSE(engine.ok());
  EXPECT_NE(engine.status().message().find("secureAggregation"), std::string::npos);
}

}  // namespace
}  // namespace fedge::aggregator
