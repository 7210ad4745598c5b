// Unit tests of the secure-aggregation building blocks and of the protocol run
// in-process (the gRPC run is agent/tests/runtime/secagg_loopback_test.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "fedge/secagg/crypto.h"
#include "fedge/secagg/protocol.h"
#include "fedge/secagg/ring.h"
#include "fedge/secagg/shamir.h"

namespace fedge::secagg {
namespace {

TEST(ShamirTest, HandBuiltLinearSharesGiveTheConstantTerm) {
  // f(x) = 5 + 3x: shares (1, 8) and (2, 11); f(0) = 5 = 2*8 - 1*11.
  std::vector<ShamirShare> shares = {{1, {8}}, {2, {11}}};
  auto secret = ShamirCombine(shares, 2, 1);
  ASSERT_TRUE(secret.ok()) << secret.status().ToString();
  EXPECT_EQ(*secret, std::string(1, '\x05'));
  // (3, 14) with (1, 8): same line, same secret.
  auto other = ShamirCombine({{3, {14}}, {1, {8}}}, 2, 1);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(*other, std::string(1, '\x05'));
}

TEST(ShamirTest, AnyThreeOfFiveReconstructAndTwoDoNot) {
  auto secret = RandomBytes(32);
  ASSERT_TRUE(secret.ok());
  auto shares = ShamirSplit(*secret, 3, {1, 2, 3, 4, 5});
  ASSERT_TRUE(shares.ok()) << shares.status().ToString();
  int subsets = 0;
  for (int a = 0; a < 5; ++a) {
    for (int b = a + 1; b < 5; ++b) {
      for (int c = b + 1; c < 5; ++c) {
        auto s = ShamirCombine({(*shares)[a], (*shares)[b], (*shares)[c]}, 3, 32);
        ASSERT_TRUE(s.ok());
        EXPECT_EQ(*s, *secret);
        ++subsets;
        // Wire round trip of one share.
        auto d = DecodeShare(EncodeShare((*shares)[a]));
        ASSERT_TRUE(d.ok());
        EXPECT_EQ(d->x, (*shares)[a].x);
        EXPECT_EQ(d->y, (*shares)[a].y);
      }
    }
  }
  EXPECT_EQ(subsets, 10);
  EXPECT_FALSE(ShamirCombine({(*shares)[0], (*shares)[1]}, 3, 32).ok());
  // Two shares with the threshold lied about give garbage, not the secret.
  auto wrong = ShamirCombine({(*shares)[0], (*shares)[1]}, 2, 32);
  if (wrong.ok()) {
    EXPECT_NE(*wrong, *secret);
  }
}

TEST(ShamirTest, RefusesBadThresholdsAndPoints) {
  EXPECT_FALSE(ShamirSplit("x", 0, {1, 2}).ok());
  EXPECT_FALSE(ShamirSplit("x", 3, {1, 2}).ok());
  EXPECT_FALSE(ShamirSplit("x", 2, {1, 1}).ok());
  EXPECT_FALSE(ShamirSplit("x", 1, {0}).ok());
}

TEST(CryptoTest, AgreementIsSymmetricAndSealedSharesAuthenticate) {
  auto a = GenerateKeyPair(), b = GenerateKeyPair();
  ASSERT_TRUE(a.ok() && b.ok());
  auto ab = AgreeKey(a->private_key, b->public_key, "ctx");
  auto ba = AgreeKey(b->private_key, a->public_key, "ctx");
  ASSERT_TRUE(ab.ok() && ba.ok());
  EXPECT_EQ(*ab, *ba);
  EXPECT_NE(*ab, *AgreeKey(a->private_key, b->public_key, "other"));
  auto sealed = Seal(*ab, "aad", "secret share");
  ASSERT_TRUE(sealed.ok());
  EXPECT_EQ(*Open(*ba, "aad", *sealed), "secret share");
  EXPECT_EQ(Open(*ba, "moved", *sealed).status().code(), StatusCode::kPermissionDenied);
  Bytes tampered = *sealed;
  tampered[15] ^= 1;
  EXPECT_EQ(Open(*ba, "aad", tampered).status().code(), StatusCode::kPermissionDenied);
  EXPECT_FALSE(AgreeKey(a->private_key, Bytes(32, '\0'), "ctx").ok());  // low-order point
}

TEST(CryptoTest, PairwiseMasksCancelInTheSum) {
  auto a = GenerateKeyPair(), b = GenerateKeyPair();
  ASSERT_TRUE(a.ok() && b.ok());
  Bytes seed = *AgreeKey(a->private_key, b->public_key, "m");
  for (int bits : {16, 32}) {
    std::vector<uint32_t> x = {1, 2, 3, 65535}, y = {10, 20, 30, 1};
    ASSERT_TRUE(AddPrgMask(seed, bits, +1, &x).ok());
    ASSERT_TRUE(AddPrgMask(*AgreeKey(b->private_key, a->public_key, "m"), bits, -1, &y).ok());
    EXPECT_NE(x[0], 1u);
    std::vector<uint32_t> sum = x;
    RingAdd(&sum, y, bits);
    const uint32_t m = bits == 16 ? 0xFFFF : 0xFFFFFFFF;
    EXPECT_EQ(sum, (std::vector<uint32_t>{11, 22, 33, (65535u + 1u) & m}));
  }
}

TEST(RingTest, SmallestRingThatCannotOverflow) {
  EXPECT_EQ(ChooseRing(8)->bits, 16);
  EXPECT_EQ(ChooseRing(8)->levels, 4095);  // 32767 / 8
  EXPECT_EQ(ChooseRing(256)->bits, 16);
  EXPECT_EQ(ChooseRing(256)->levels, 127);  // int8 range
  EXPECT_EQ(ChooseRing(258)->bits, 16);     // 32767 / 258 = 127
  EXPECT_EQ(ChooseRing(259)->bits, 32);
  EXPECT_FALSE(ChooseRing(0).ok());
  // The worst case: every agent at +levels (or -levels) still decodes exactly.
  for (int agents : {2, 8, 256, 1000}) {
    RingSpec ring = *ChooseRing(agents);
    std::mt19937_64 rng(1);
    std::vector<uint32_t> up(1, 0), down(1, 0);
    for (int i = 0; i < agents; ++i) {
      RingAdd(&up, QuantizeToRing({1e9}, 1.0, ring, rng), ring.bits);  // clipped to +levels
      RingAdd(&down, QuantizeToRing({-1e9}, 1.0, ring, rng), ring.bits);
    }
    EXPECT_DOUBLE_EQ(DecodeRing(up, 1.0, ring)[0], static_cast<double>(agents));
    EXPECT_DOUBLE_EQ(DecodeRing(down, 1.0, ring)[0], -static_cast<double>(agents));
  }
}

TEST(RingTest, RotationIsOrthonormalAndInvertible) {
  for (size_t n : {1u, 7u, 1024u, 3000u}) {
    std::vector<double> v(n);
    std::mt19937_64 rng(n);
    double norm2 = 0;
    for (double& x : v) {
      x = static_cast<double>(rng() % 1000) / 100.0 - 5.0;
      norm2 += x * x;
    }
    std::vector<double> r = v;
    Rotate(&r, 99, false);
    double rnorm2 = 0;
    for (double x : r) rnorm2 += x * x;
    EXPECT_NEAR(rnorm2, norm2, 1e-9 * norm2 + 1e-12);
    Rotate(&r, 99, true);
    for (size_t i = 0; i < n; ++i) EXPECT_NEAR(r[i], v[i], 1e-9);
  }
}

TEST(RingTest, StochasticRoundingIsUnbiased) {
  RingSpec ring{16, 10};
  std::mt19937_64 rng(5);
  double sum = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) sum += DecodeRing(QuantizeToRing({0.0234}, 1.0, ring, rng), 1.0, ring)[0];
  EXPECT_NEAR(sum / n, 0.0234, 0.002);  // step 0.1: plain rounding would give 0.0
}

// Runs one protocol round in-process with `n` agents; agents in `drop_before_mask`
// share keys but never send a masked input; agents in `drop_before_unmask` send it
// but never answer the unmask phase.
struct RoundResult {
  Status status;
  std::vector<double> sum;
  double weight_sum = 0;
  std::vector<double> expected;
  double expected_weight = 0;
  std::vector<std::vector<uint32_t>> inputs;
  RoundParams params;
};

RoundResult RunRound(int n, int neighbours, const std::set<int>& drop_before_mask,
                     const std::set<int>& drop_before_unmask, int64_t values = 2000) {
  RoundResult out;
  SecAggServerOptions so;
  so.job = "ns/job";
  so.round = 3;
  for (int i = 0; i < n; ++i) so.invited.push_back("agent-" + std::to_string(i));
  so.neighbours = neighbours;
  so.clip_norm = 1.0;
  so.values = values;
  so.rotation_seed = 1234;
  so.advertise_deadline_ms = 1000;
  so.phase_timeout_ms = 1000;
  so.on_masked_input = [&out](const std::string&, const std::vector<uint32_t>& in, const RoundParams&) {
    out.inputs.push_back(in);
  };
  SecAggServer server(so);
  std::vector<SecAggClient> clients;
  int64_t now = 0;
  for (int i = 0; i < n; ++i) {
    clients.push_back(*SecAggClient::Create());
    EXPECT_TRUE(
        server.Advertise(so.invited[i], clients[i].enc_public_key(), clients[i].mask_public_key(), now).ok());
  }
  EXPECT_EQ(server.phase(), SecAggPhase::kShare);
  for (int i = 0; i < n; ++i) {
    auto roster = server.RosterFor(so.invited[i]);
    EXPECT_TRUE(roster.ok() && roster->has_value());
    out.params = (*roster)->params;
    auto shares = clients[i].ShareKeys(**roster);
    EXPECT_TRUE(shares.ok()) << shares.status().ToString();
    EXPECT_TRUE(server.ShareKeys(so.invited[i], *shares, now).ok());
    if (i == 0) {
      // A poll without shares once they are in; an empty first call is refused.
      EXPECT_TRUE(server.ShareKeys(so.invited[0], {}, now).ok());
      EXPECT_FALSE(server.ShareKeys(so.invited[1], {}, now).ok());
    }
  }
  EXPECT_EQ(server.phase(), SecAggPhase::kMasked);
  std::mt19937_64 rng(7);
  out.expected.assign(static_cast<size_t>(values), 0.0);
  for (int i = 0; i < n; ++i) {
    auto inbox = server.InboxFor(so.invited[i]);
    EXPECT_TRUE(inbox.ok() && inbox->has_value());
    EXPECT_TRUE(clients[i].ReceiveShares(**inbox).ok());
    if (drop_before_mask.count(i)) continue;
    std::vector<double> x(static_cast<size_t>(values));
    std::normal_distribution<double> g(0.0, 0.3 / std::sqrt(static_cast<double>(values)));
    for (double& v : x) v = g(rng);
    const double w = 0.3 + 0.05 * i;  // < 1: not clamped
    for (size_t j = 0; j < x.size(); ++j) out.expected[j] += w * x[j];
    out.expected_weight += w;
    auto masked = clients[i].MaskInput(x, w, /*seed=*/100 + i);
    EXPECT_TRUE(masked.ok()) << masked.status().ToString();
    EXPECT_EQ(masked->size(), MaskedInputBytes(out.params));
    uint64_t received = 0;
    EXPECT_TRUE(server.SubmitMasked(so.invited[i], 0, *masked, now, &received).ok());
  }
  if (!drop_before_mask.empty()) {
    now = 1000;  // the masked phase's deadline: the droppers are out
    server.Tick(now);
  }
  for (int i = 0; i < n; ++i) {
    if (drop_before_mask.count(i) || drop_before_unmask.count(i)) continue;
    auto ask = server.UnmaskAskFor(so.invited[i]);
    if (!ask.ok() || !ask->has_value()) {
      out.status = ask.ok() ? InternalError("no ask") : ask.status();
      return out;
    }
    auto reveal = clients[i].Unmask(**ask);
    EXPECT_TRUE(reveal.ok()) << reveal.status().ToString();
    EXPECT_TRUE(server.Unmask(so.invited[i], *reveal, now).ok());
  }
  server.Tick(now + 5000);
  if (server.phase() != SecAggPhase::kDone) {
    out.status = FailedPreconditionError(server.failure());
    return out;
  }
  out.sum = server.weighted_sum();
  out.weight_sum = server.weight_sum();
  EXPECT_EQ(server.survivors().size(), static_cast<size_t>(n) - drop_before_mask.size());
  return out;
}

void ExpectSumMatches(const RoundResult& r, int contributors) {
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  ASSERT_EQ(r.sum.size(), r.expected.size());
  // Quantization error: each agent adds at most one step (range / levels) per rotated
  // coordinate, zero-mean; the rotation keeps norms.
  const double step = r.params.range / static_cast<double>(r.params.ring.levels);
  double err2 = 0, ref2 = 0;
  for (size_t j = 0; j < r.sum.size(); ++j) {
    err2 += (r.sum[j] - r.expected[j]) * (r.sum[j] - r.expected[j]);
    ref2 += r.expected[j] * r.expected[j];
  }
  EXPECT_LE(std::sqrt(err2), step * std::sqrt(static_cast<double>(contributors * r.sum.size())));
  EXPECT_LT(std::sqrt(err2 / ref2), 0.05);
  EXPECT_NEAR(r.weight_sum, r.expected_weight, contributors / static_cast<double>(r.params.ring.levels));
}

TEST(SecAggProtocolTest, SumOfSixAgentsDecodesWithinQuantizationError) {
  RoundResult r = RunRound(6, 0, {}, {});
  ExpectSumMatches(r, 6);
  EXPECT_EQ(r.params.ring.bits, 16);
}

TEST(SecAggProtocolTest, TwoAgentsDroppingBeforeTheirMaskedInputAreRecovered) {
  RoundResult r = RunRound(7, 0, {1, 4}, {});
  ExpectSumMatches(r, 5);
}

TEST(SecAggProtocolTest, TwoAgentsDroppingAfterMaskingStillUnmask) {
  RoundResult r = RunRound(7, 0, {}, {2, 5});
  ExpectSumMatches(r, 7);
}

TEST(SecAggProtocolTest, SparseNeighbourhoodsWithDropouts) {
  // SecAgg+: 12 agents, 6 neighbours each (threshold 4: each neighbourhood
  // survives 6 - 4 = 2 faults), one drop of each kind.
  RoundResult r = RunRound(12, 6, {3}, {7});
  ExpectSumMatches(r, 11);
}

TEST(SecAggProtocolTest, MaskedInputsAreUniformAndIndividuallyUndecodable) {
  RoundResult r = RunRound(5, 0, {}, {}, 20000);
  ASSERT_TRUE(r.status.ok());
  ASSERT_EQ(r.inputs.size(), 5u);
  for (const auto& input : r.inputs) {
    // Chi-square of the high byte over 256 bins: uniform gives ~255 +- 23;
    // the unmasked quantized values (all near 0) give tens of thousands.
    std::vector<double> bins(256, 0);
    for (uint32_t v : input) bins[(v >> 8) & 0xFF] += 1;
    const double expect = static_cast<double>(input.size()) / 256;
    double chi2 = 0;
    for (double b : bins) chi2 += (b - expect) * (b - expect) / expect;
    EXPECT_LT(chi2, 340) << "masked input is not uniform";  // p ~ 3e-4 for 255 dof
  }
}

// Round 1 of job "j" for agents a, b and c: 4 values clipped to norm 1.
SecAggServerOptions ThreeInvited(int64_t advertise_deadline_ms) {
  SecAggServerOptions so;
  so.job = "j";
  so.round = 1;
  so.invited = {"a", "b", "c"};
  so.clip_norm = 1;
  so.values = 4;
  so.advertise_deadline_ms = advertise_deadline_ms;
  return so;
}

TEST(SecAggProtocolTest, AgentRefusesUnsafeUnmaskAsks) {
  const SecAggServerOptions so = ThreeInvited(/*advertise_deadline_ms=*/1000);
  SecAggServer server(so);
  std::vector<SecAggClient> c;
  for (int i = 0; i < 3; ++i) {
    c.push_back(*SecAggClient::Create());
    ASSERT_TRUE(server.Advertise(so.invited[i], c[i].enc_public_key(), c[i].mask_public_key(), 0).ok());
  }
  auto roster = *server.RosterFor("a");
  ASSERT_TRUE(c[0].ShareKeys(*roster).ok());
  const uint32_t me = roster->index;
  const uint32_t other = roster->neighbours[0].index;
  // Alone among the survivors: its update would be exposed.
  EXPECT_EQ(c[0].Unmask({{me}, {}}).status().code(), StatusCode::kFailedPrecondition);
  // Someone both survived and dropped: the server wants both secrets.
  EXPECT_EQ(c[0].Unmask({{me, other}, {other}}).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(c[0].Unmask({{me, other}, {}}).ok());
  // A second ask (with another story) is refused.
  EXPECT_EQ(c[0].Unmask({{me}, {other}}).status().code(), StatusCode::kFailedPrecondition);
}

TEST(SecAggProtocolTest, TooFewAdvertisersFailTheRoundWithAReason) {
  const SecAggServerOptions so = ThreeInvited(/*advertise_deadline_ms=*/10);
  SecAggServer server(so);
  auto c = *SecAggClient::Create();
  ASSERT_TRUE(server.Advertise("a", c.enc_public_key(), c.mask_public_key(), 0).ok());
  server.Tick(11);
  EXPECT_EQ(server.phase(), SecAggPhase::kFailed);
  EXPECT_NE(server.failure().find("1 of 3 invited agents advertised"), std::string::npos) << server.failure();
}

}  // namespace
}  // namespace fedge::secagg
