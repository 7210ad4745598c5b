// The RDP accountant against Google's dp-accounting (goldens made by
// bench/privacy/make_accountant_goldens.py) and by hand.
#include "fedge/aggregator/privacy_accountant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

namespace fedge::aggregator {
namespace {

nlohmann::json Goldens() {
  auto path = std::filesystem::path(__FILE__).parent_path() / "data" / "rdp_goldens.json";
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in);
}

TEST(RdpAccountantTest, MatchesDpAccountingOnItsGridWithinOnePercent) {
  nlohmann::json g = Goldens();
  ASSERT_EQ(g["orders"].get<std::vector<int>>(), RdpAccountant::DefaultOrders());
  ASSERT_EQ(g["rows"].size(), 240u);
  double worst = 0, above_default = 0, below_default = 1e9;
  for (const auto& row : g["rows"]) {
    RdpAccountant acc;
    ASSERT_TRUE(acc.Compose(row["sigma"], row["q"], row["rounds"]).ok());
    const double eps = acc.Epsilon(row["delta"]);
    const double want = row["epsilon"];
    const double rel = std::abs(eps - want) / std::max(want, 1e-12);
    EXPECT_LE(rel, 0.01) << row.dump() << " fedge " << eps;
    worst = std::max(worst, rel);
    // The reference's default grid (fractional orders 1.1..10.9, integers to 63, 128..1024)
    // is another valid bound; report how far apart the two grids are.
    const double other = row["epsilon_default_orders"];
    above_default = std::max(above_default, eps / std::max(other, 1e-12));
    below_default = std::min(below_default, eps / std::max(other, 1e-12));
  }
  std::printf(
      "[accountant] worst relative difference to dp-accounting (same orders): %.3g; "
      "%.3fx-%.3fx its default-grid epsilon\n",
      worst, below_default, above_default);
}

TEST(RdpAccountantTest, FullParticipationIsTheGaussianMechanism) {
  // q = 1: RDP α / (2σ²) at every order, composing linearly.
  for (int order : {2, 10, 64}) EXPECT_DOUBLE_EQ(SubsampledGaussianRdp(1.0, 2.0, order), order / 8.0);
  // α = 2 by hand: A_2 = (1-q)² + 2q(1-q) + q² e^{1/σ²}.
  const double q = 0.1, s = 1.5;
  const double a2 = (1 - q) * (1 - q) + 2 * q * (1 - q) + q * q * std::exp(1 / (s * s));
  EXPECT_NEAR(SubsampledGaussianRdp(q, s, 2), std::log(a2), 1e-12);
}

TEST(RdpAccountantTest, ComposesAdditivelyAndChecksTheNextRound) {
  RdpAccountant one, ten;
  ASSERT_TRUE(one.Compose(1.0, 0.2, 1).ok());
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(ten.Compose(1.0, 0.2).ok());
  for (size_t i = 0; i < one.rdp().size(); ++i) EXPECT_NEAR(ten.rdp()[i], 10 * one.rdp()[i], 1e-9);
  RdpAccountant nine;
  ASSERT_TRUE(nine.Compose(1.0, 0.2, 9).ok());
  EXPECT_NEAR(nine.EpsilonAfter(1.0, 0.2, 1e-5), ten.Epsilon(1e-5), 1e-12);
  EXPECT_LT(nine.Epsilon(1e-5), ten.Epsilon(1e-5));
}

TEST(RdpAccountantTest, EdgeCasesAndBadInput) {
  RdpAccountant acc;
  EXPECT_EQ(acc.Epsilon(1e-5), 0.0) << "nothing composed";
  ASSERT_TRUE(acc.Compose(0.0, 0.0).ok());
  EXPECT_EQ(acc.Epsilon(1e-5), 0.0) << "nobody sampled";
  ASSERT_TRUE(acc.Compose(0.0, 0.5).ok());
  EXPECT_TRUE(std::isinf(acc.Epsilon(1e-5))) << "no noise: no guarantee";
  EXPECT_FALSE(acc.Compose(1.0, 1.5).ok());
  EXPECT_FALSE(acc.Compose(-1.0, 0.5).ok());
  EXPECT_FALSE(acc.Compose(std::numeric_limits<double>::quiet_NaN(), 0.5).ok());
  EXPECT_FALSE(acc.Compose(1.0, 0.5, -1).ok());
  RdpAccountant fresh;
  EXPECT_TRUE(std::isinf(fresh.Epsilon(0.0)));
  EXPECT_FALSE(fresh.Restore({1.0, 2.0}).ok()) << "wrong number of orders";
  std::vector<double> bad(fresh.orders().size(), 0.1);
  bad[3] = -1;
  EXPECT_FALSE(fresh.Restore(bad).ok());
  RdpAccountant ran;
  ASSERT_TRUE(ran.Compose(1.1, 0.3, 7).ok());
  ASSERT_TRUE(fresh.Restore(ran.rdp()).ok());
  EXPECT_EQ(fresh.Epsilon(1e-5), ran.Epsilon(1e-5));
}

}  // namespace
}  // namespace fedge::aggregator
