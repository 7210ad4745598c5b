// LoRA-aware aggregation on heterogeneous client updates: factors averaging is
// biased, frozen-a is exact, product is the best rank-r approximation of the
// exact average (Eckart–Young) and exact when that average has rank <= r.
#include "fedge/aggregator/lora_aggregation.h"

#include <gtest/gtest.h>

#include <Eigen/Dense>

#include <cstdio>
#include <random>

#include "fedge/aggregator/strategy.h"

namespace fedge::aggregator {
namespace {

using Matrix = Eigen::MatrixXd;
using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr int64_t kOut = 12, kIn = 10, kRank = 3;

struct Client {
  Matrix b;  // [out, r]
  Matrix a;  // [r, in]
  double weight;
};

Matrix Random(int64_t rows, int64_t cols, std::mt19937_64& rng) {
  std::normal_distribution<double> n(0.0, 1.0);
  Matrix m(rows, cols);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) m(i, j) = n(rng);
  return m;
}

// Fresh factors per client, rounded to float so the aggregator (which reads
// float bundles) and the reference see the same numbers.
std::vector<Client> Heterogeneous(uint64_t seed, int n = 4) {
  std::mt19937_64 rng(seed);
  const double weights[] = {1, 2, 3, 5, 8, 13};
  std::vector<Client> clients;
  for (int i = 0; i < n; ++i) {
    clients.push_back(Client{Random(kOut, kRank, rng).cast<float>().cast<double>(),
                             Random(kRank, kIn, rng).cast<float>().cast<double>(), weights[i % 6]});
  }
  return clients;
}

Matrix ExactAverage(const std::vector<Client>& clients) {
  Matrix m = Matrix::Zero(clients[0].b.rows(), clients[0].a.cols());
  double total = 0;
  for (const Client& c : clients) {
    m += c.weight * c.b * c.a;
    total += c.weight;
  }
  return m / total;
}

double RelError(const Matrix& got, const Matrix& want) { return (got - want).norm() / want.norm(); }

std::vector<float> Flat(const Matrix& m) {
  RowMajorF f = m.cast<float>();
  return std::vector<float>(f.data(), f.data() + f.size());
}

Matrix Unflat(const std::vector<float>& v, int64_t rows, int64_t cols) {
  return Eigen::Map<const RowMajorF>(v.data(), rows, cols).cast<double>();
}

// A trainable state: one adapted layer (optionally without A) and a head.
TensorBundle State(const Matrix* a, const Matrix& b, float head) {
  TensorBundle s;
  if (a) s.tensors.push_back(NamedTensor{"enc.q.lora_A", {a->rows(), a->cols()}, Flat(*a)});
  s.tensors.push_back(NamedTensor{"enc.q.lora_B", {b.rows(), b.cols()}, Flat(b)});
  s.tensors.push_back(NamedTensor{"classifier.bias", {2}, {head, -head}});
  return s;
}

TensorBundle Minus(const TensorBundle& x, const TensorBundle& y) {
  TensorBundle d = x;
  for (NamedTensor& t : d.tensors) {
    const NamedTensor* o = y.Find(t.name);
    for (size_t i = 0; i < t.values.size(); ++i) t.values[i] -= o->values[i];
  }
  return d;
}

AdapterSpec Adapter(const std::string& mode, int rank = kRank) {
  AdapterSpec a;
  a.aggregation = mode;
  a.rank = rank;
  return a;
}

// Runs one FedAvg round of `mode` in which client i trained from `global` to
// State(&clients[i].a or nullptr, clients[i].b, head = i + 1).
TensorBundle RunRound(const std::string& mode, const TensorBundle& global, const std::vector<Client>& clients,
                      bool send_a) {
  auto strategy = MakeStrategy(StrategySpec{}, Adapter(mode));
  EXPECT_TRUE(strategy.ok()) << strategy.status().ToString();
  (*strategy)->Begin(global);
  for (size_t i = 0; i < clients.size(); ++i) {
    TensorBundle trained = State(send_a ? &clients[i].a : nullptr, clients[i].b, static_cast<float>(i + 1));
    Status st = (*strategy)->Add(Minus(trained, global), static_cast<int64_t>(clients[i].weight));
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  auto out = (*strategy)->Finish(global);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  return out.ok() ? *out : TensorBundle{};
}

TEST(LoraAggregationTest, FactorsAveragingIsFarFromTheExactAverage) {
  const std::vector<Client> clients = Heterogeneous(1);
  std::mt19937_64 rng(9);
  const Matrix global_a = Random(kRank, kIn, rng);
  const TensorBundle global = State(&global_a, Matrix::Zero(kOut, kRank), 0);
  TensorBundle out = RunRound("factors", global, clients, /*send_a=*/true);
  const Matrix ba = Unflat(out.Find("enc.q.lora_B")->values, kOut, kRank) *
                    Unflat(out.Find("enc.q.lora_A")->values, kRank, kIn);
  const double err = RelError(ba, ExactAverage(clients));
  // Independent clients: avg(B) avg(A) keeps only a fraction of the cross-free
  // signal; the error is of the order of the average itself.
  EXPECT_GT(err, 0.5) << "factors relative error " << err;
  std::printf("factors: relative error against the exact average of B·A: %.3f\n", err);
}

TEST(LoraAggregationTest, FrozenAIsExactAndTheAggregatorNeverSeesA) {
  std::vector<Client> clients = Heterogeneous(2);
  std::mt19937_64 rng(3);
  const Matrix shared_a = Random(kRank, kIn, rng).cast<float>().cast<double>();
  for (Client& c : clients) c.a = shared_a;
  const TensorBundle global = State(nullptr, Matrix::Zero(kOut, kRank), 0);
  ASSERT_TRUE(CheckLoraLayout(global, Adapter("frozen-a")).ok());
  TensorBundle out = RunRound("frozen-a", global, clients, /*send_a=*/false);
  ASSERT_EQ(out.Find("enc.q.lora_A"), nullptr);
  const Matrix ba = Unflat(out.Find("enc.q.lora_B")->values, kOut, kRank) * shared_a;
  EXPECT_LE(RelError(ba, ExactAverage(clients)), 1e-6);
  // The same clients under factors (their A differs): large error; under
  // frozen-a an upload is B + head only, about half of factors' bytes.
  const TensorBundle with_a = State(&shared_a, clients[0].b, 1);
  const TensorBundle without_a = State(nullptr, clients[0].b, 1);
  EXPECT_LT(without_a.Fp32Bytes(), with_a.Fp32Bytes());
}

TEST(LoraAggregationTest, ProductIsTheBestRankRApproximation) {
  const std::vector<Client> clients = Heterogeneous(4);
  const Matrix m = ExactAverage(clients);
  double total = 0;
  for (const Client& c : clients) total += c.weight;
  std::vector<RowMajorF> bs, as;
  std::vector<FactorTerm> terms;
  for (const Client& c : clients) {
    bs.push_back(c.b.cast<float>());
    as.push_back(c.a.cast<float>());
  }
  for (size_t i = 0; i < clients.size(); ++i)
    terms.push_back(FactorTerm{bs[i].data(), as[i].data(), kRank, clients[i].weight / total});
  auto r = RefactorLoraProduct(terms, kOut, kIn, kRank, /*a_floor=*/0);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const Matrix ba = Unflat(r->b, kOut, kRank) * Unflat(r->a, kRank, kIn);

  // Reference: dense SVD of the exact average, truncated to rank r.
  Eigen::JacobiSVD<Matrix> svd(m, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::VectorXd s = svd.singularValues();
  const Matrix best =
      svd.matrixU().leftCols(kRank) * s.head(kRank).asDiagonal() * svd.matrixV().leftCols(kRank).transpose();
  double discarded = 0;
  for (int64_t i = kRank; i < s.size(); ++i) discarded += s(i) * s(i);
  ASSERT_GT(discarded, 1e-2 * m.squaredNorm()) << "the average must have rank > r for this test";

  EXPECT_LE(RelError(ba, best), 1e-5);
  // Eckart–Young: the error is exactly the discarded singular values.
  EXPECT_NEAR((m - ba).squaredNorm(), discarded, 1e-5 * m.squaredNorm());
  EXPECT_NEAR(r->discarded_energy, discarded, 1e-9 * m.squaredNorm());
  EXPECT_NEAR(r->total_energy, m.squaredNorm(), 1e-9 * m.squaredNorm());
  ASSERT_GE(r->singular_values.size(), static_cast<size_t>(kRank));
  for (int64_t i = 0; i < kRank; ++i) EXPECT_NEAR(r->singular_values[i], s(i), 1e-9 * s(0));
  // Balanced split without floor: B = U sqrt(S), A = sqrt(S) Vᵀ, so column j
  // of B and row j of A have the same norm sqrt(σ_j).
  const Matrix b = Unflat(r->b, kOut, kRank), a = Unflat(r->a, kRank, kIn);
  for (int64_t j = 0; j < kRank; ++j) {
    EXPECT_NEAR(b.col(j).norm(), std::sqrt(s(j)), 1e-5 * std::sqrt(s(0)));
    EXPECT_NEAR(a.row(j).norm(), std::sqrt(s(j)), 1e-5 * std::sqrt(s(0)));
  }
}

TEST(LoraAggregationTest, ProductIsExactWhenTheAverageHasRankAtMostR) {
  // B_i = U G_i and A_i = H_i Vᵀ share column and row spaces, so the weighted
  // average U (sum w G H) Vᵀ has rank <= r although every factor differs.
  std::mt19937_64 rng(5);
  const Matrix u = Random(kOut, kRank, rng), v = Random(kIn, kRank, rng);
  std::vector<Client> clients;
  for (int i = 0; i < 5; ++i) {
    clients.push_back(Client{(u * Random(kRank, kRank, rng)).cast<float>().cast<double>(),
                             (Random(kRank, kRank, rng) * v.transpose()).cast<float>().cast<double>(),
                             static_cast<double>(i + 1)});
  }
  Matrix global_a = Random(kRank, kIn, rng).cast<float>().cast<double>();
  const TensorBundle global = State(&global_a, Matrix::Zero(kOut, kRank), 0);
  TensorBundle out = RunRound("product", global, clients, /*send_a=*/true);
  const Matrix ba = Unflat(out.Find("enc.q.lora_B")->values, kOut, kRank) *
                    Unflat(out.Find("enc.q.lora_A")->values, kRank, kIn);
  EXPECT_LE(RelError(ba, ExactAverage(clients)), 1e-5);
  // The head is plain FedAvg: heads 1..5 weighted 1..5 -> 55/15.
  EXPECT_NEAR(out.Find("classifier.bias")->values[0], 55.0 / 15.0, 1e-5);
}

TEST(LoraAggregationTest, ProductThroughTheStrategyMatchesTheDirectRefactoring) {
  const std::vector<Client> clients = Heterogeneous(6, 5);
  std::mt19937_64 rng(7);
  // A non-zero global B: the strategy must rebuild each agent's factors as
  // global + delta, not multiply the deltas.
  const Matrix global_a = Random(kRank, kIn, rng).cast<float>().cast<double>();
  const Matrix global_b = Random(kOut, kRank, rng).cast<float>().cast<double>();
  const TensorBundle global = State(&global_a, global_b, 0);
  TensorBundle out = RunRound("product", global, clients, /*send_a=*/true);
  const Matrix ba = Unflat(out.Find("enc.q.lora_B")->values, kOut, kRank) *
                    Unflat(out.Find("enc.q.lora_A")->values, kRank, kIn);
  const Matrix m = ExactAverage(clients);
  Eigen::JacobiSVD<Matrix> svd(m, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Matrix best = svd.matrixU().leftCols(kRank) * svd.singularValues().head(kRank).asDiagonal() *
                      svd.matrixV().leftCols(kRank).transpose();
  EXPECT_LE(RelError(ba, best), 1e-5);
}

TEST(LoraAggregationTest, ProductKeepsDeadDirectionsTrainable) {
  // One agent with a rank-1 update at rank 3: two singular values are zero.
  // Their A rows keep the floor norm (B columns zero), so B·A is exact and the
  // directions still get gradient next round.
  std::mt19937_64 rng(8);
  Client c{(Random(kOut, 1, rng) * Matrix::Ones(1, kRank)).cast<float>().cast<double>(),
           Matrix::Zero(kRank, kIn), 4};
  c.a.row(0) = Random(1, kIn, rng).cast<float>().cast<double>();
  const Matrix global_a = Random(kRank, kIn, rng).cast<float>().cast<double>();
  TensorBundle out = RunRound("product", State(&global_a, Matrix::Zero(kOut, kRank), 0), {c}, true);
  const Matrix b = Unflat(out.Find("enc.q.lora_B")->values, kOut, kRank);
  const Matrix a = Unflat(out.Find("enc.q.lora_A")->values, kRank, kIn);
  EXPECT_LE(RelError(b * a, c.b * c.a), 1e-5);
  for (int64_t j = 0; j < kRank; ++j) EXPECT_GE(a.row(j).norm(), kLoraAFloor - 1e-5) << "row " << j;
  // The floor directions are orthonormal to each other and to the real one.
  const Matrix gram = a * a.transpose();
  EXPECT_NEAR(gram(1, 2), 0.0, 1e-5);
  EXPECT_NEAR(gram(0, 1), 0.0, 1e-4 * gram(0, 0));
}

TEST(LoraAggregationTest, ProductStaysExactWithManyAgents) {
  // 20 agents of rank 3 on a 5x6 layer: the stacked inner dimension (60)
  // passes 2·min(out, in) several times and is compressed losslessly.
  constexpr int64_t out = 5, in = 6;
  std::mt19937_64 rng(10);
  std::vector<Client> clients;
  for (int i = 0; i < 20; ++i) {
    clients.push_back(Client{Random(out, kRank, rng).cast<float>().cast<double>(),
                             Random(kRank, in, rng).cast<float>().cast<double>(),
                             static_cast<double>(1 + i % 4)});
  }
  auto strategy = MakeStrategy(StrategySpec{}, Adapter("product", /*rank=*/5));
  ASSERT_TRUE(strategy.ok());
  TensorBundle global;
  global.tensors.push_back(NamedTensor{"lora_A", {5, in}, std::vector<float>(5 * in, 0.1f)});
  global.tensors.push_back(NamedTensor{"lora_B", {out, 5}, std::vector<float>(out * 5, 0.0f)});
  (*strategy)->Begin(global);
  for (const Client& c : clients) {
    Matrix b = Matrix::Zero(out, 5), a = Matrix::Constant(5, in, 0.1).cast<float>().cast<double>();
    b.leftCols(kRank) = c.b;
    a.topRows(kRank) = c.a;
    // Rank-3 clients padded to rank 5 with zero B columns: B·A is c.b·c.a.
    TensorBundle trained;
    trained.tensors.push_back(NamedTensor{"lora_A", {5, in}, Flat(a)});
    trained.tensors.push_back(NamedTensor{"lora_B", {out, 5}, Flat(b)});
    ASSERT_TRUE((*strategy)->Add(Minus(trained, global), static_cast<int64_t>(c.weight)).ok());
  }
  auto result = (*strategy)->Finish(global);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  const Matrix ba =
      Unflat(result->Find("lora_B")->values, out, 5) * Unflat(result->Find("lora_A")->values, 5, in);
  // rank 5 = min(out, in): the average is representable exactly.
  const Matrix m = ExactAverage(clients);
  Eigen::JacobiSVD<Matrix> svd(m, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Matrix best = svd.matrixU().leftCols(5) * svd.singularValues().head(5).asDiagonal() *
                      svd.matrixV().leftCols(5).transpose();
  EXPECT_LE(RelError(ba, best), 1e-5);
}

TEST(LoraAggregationTest, LayoutChecksFollowTheMode) {
  std::mt19937_64 rng(11);
  const Matrix a = Random(kRank, kIn, rng), b = Random(kOut, kRank, rng);
  const TensorBundle full = State(&a, b, 0), b_only = State(nullptr, b, 0);
  EXPECT_TRUE(CheckLoraLayout(full, Adapter("factors")).ok());
  EXPECT_TRUE(CheckLoraLayout(b_only, Adapter("factors")).ok());
  Status s = CheckLoraLayout(full, Adapter("frozen-a"));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("enc.q.lora_A"), std::string::npos) << s.message();
  EXPECT_TRUE(CheckLoraLayout(b_only, Adapter("frozen-a")).ok());
  EXPECT_TRUE(CheckLoraLayout(full, Adapter("product")).ok());
  EXPECT_EQ(CheckLoraLayout(b_only, Adapter("product")).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckLoraLayout(full, Adapter("product", kRank + 1)).code(), StatusCode::kInvalidArgument);
  TensorBundle head_only;
  head_only.tensors.push_back(NamedTensor{"classifier.bias", {2}, {0, 0}});
  EXPECT_EQ(CheckLoraLayout(head_only, Adapter("frozen-a")).code(), StatusCode::kInvalidArgument);
}

TEST(LoraAggregationTest, ProductRejectsStrategiesWithoutAMeaningForProducts) {
  StrategySpec median;
  median.name = "median";
  EXPECT_EQ(MakeStrategy(median, Adapter("product")).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(MakeStrategy(median, Adapter("frozen-a")).ok());
  StrategySpec prox;
  prox.name = "fedprox";
  EXPECT_TRUE(MakeStrategy(prox, Adapter("product")).ok());
}

}  // namespace
}  // namespace fedge::aggregator
