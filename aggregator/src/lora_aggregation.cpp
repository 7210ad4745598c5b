#include "fedge/aggregator/lora_aggregation.h"

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <optional>
#include <unordered_map>

#include "fedge/log.h"

namespace fedge::aggregator {
namespace {

using Matrix = Eigen::MatrixXd;
using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr std::string_view kASuffix = "lora_A";
constexpr std::string_view kBSuffix = "lora_B";

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// "encoder.layer.0.query.lora_A" -> "encoder.layer.0.query"; "lora_A" -> "".
std::string LayerOf(std::string_view name, std::string_view suffix) {
  std::string_view layer = name.substr(0, name.size() - suffix.size());
  if (!layer.empty() && layer.back() == '.') layer.remove_suffix(1);
  return std::string(layer);
}

Eigen::Map<const RowMajorF> MapF(const float* data, int64_t rows, int64_t cols) {
  return Eigen::Map<const RowMajorF>(data, rows, cols);
}

// SVD of M = Bc Ac (Bc [out, k], Ac [k, in]) through QR of both factors:
// Bc = Qb Rb, Acᵀ = Qa Ra, so M = Qb (Rb Raᵀ) Qaᵀ and the SVD of the small
// core Rb Raᵀ = Uc S Vcᵀ gives U = Qb Uc, V = Qa Vc. `v_cols` >= rank of the
// core asks for that many orthonormal columns of V (the extra ones complete
// the basis in the orthogonal complement of Acᵀ's range, with σ = 0).
struct Svd {
  Matrix u;           // [out, p]
  Eigen::VectorXd s;  // [p], descending
  Matrix v;           // [in, max(min(in, k), min(in, v_cols))], orthonormal columns
};

Svd FactoredSvd(const Matrix& bc, const Matrix& ac, int64_t v_cols) {
  const int64_t out = bc.rows(), in = ac.cols(), k = bc.cols();
  const int64_t kb = std::min(out, k), ka = std::min(in, k);
  Eigen::HouseholderQR<Matrix> qb(bc);
  Eigen::HouseholderQR<Matrix> qa(ac.transpose());
  const Matrix rb = qb.matrixQR().topRows(kb).triangularView<Eigen::Upper>();
  const Matrix ra = qa.matrixQR().topRows(ka).triangularView<Eigen::Upper>();
  const Matrix core = rb * ra.transpose();  // [kb, ka]
  // Full V: its columns beyond min(kb, ka) span the core's null space, so with
  // Qa's columns beyond ka they complete an orthonormal basis of R^in.
  Eigen::JacobiSVD<Matrix> svd(core, Eigen::ComputeThinU | Eigen::ComputeFullV);
  const Matrix qb_thin = qb.householderQ() * Matrix::Identity(out, kb);
  const int64_t vc = std::max(ka, std::min(in, v_cols));
  const Matrix qa_cols = qa.householderQ() * Matrix::Identity(in, vc);
  Svd r;
  r.u = qb_thin * svd.matrixU();
  r.s = svd.singularValues();
  r.v.resize(in, vc);
  r.v.leftCols(ka) = qa_cols.leftCols(ka) * svd.matrixV();
  if (vc > ka) r.v.rightCols(vc - ka) = qa_cols.rightCols(vc - ka);
  return r;
}

// Splits the rank-`rank` truncation of U S Vᵀ into B = U S D⁻¹, A = D Vᵀ with
// D_j = max(sqrt(σ_j), floor); see the header.
void Split(const Svd& svd, int64_t rank, double a_floor, int64_t out, int64_t in, RefactorResult* r) {
  r->b.assign(static_cast<size_t>(out * rank), 0.0f);
  r->a.assign(static_cast<size_t>(rank * in), 0.0f);
  const int64_t p = svd.s.size();
  for (int64_t j = 0; j < rank; ++j) {
    const double sigma = j < p ? svd.s(j) : 0.0;
    const double d = std::max(std::sqrt(sigma), a_floor);
    if (j < svd.v.cols() && d > 0) {
      for (int64_t c = 0; c < in; ++c) r->a[j * in + c] = static_cast<float>(d * svd.v(c, j));
    }
    if (j < p && d > 0) {
      const double scale = sigma / d;
      for (int64_t row = 0; row < out; ++row)
        r->b[row * rank + j] = static_cast<float>(scale * svd.u(row, j));
    }
  }
  r->singular_values.assign(svd.s.data(), svd.s.data() + p);
  r->total_energy = 0;
  r->discarded_energy = 0;
  for (int64_t j = 0; j < p; ++j) {
    const double e = svd.s(j) * svd.s(j);
    r->total_energy += e;
    if (j >= rank) r->discarded_energy += e;
  }
}

// Running sum_i w_i B_i A_i of one layer, kept factored as Bc Ac. When the
// inner dimension grows past 2·min(out, in) it is compressed to rank
// min(out, in) — exactly, since M has no higher rank — so memory stays
// O((out + in)·min(out, in)) whatever the number of agents.
struct FactoredSum {
  Matrix bc;  // [out, k], weights folded in
  Matrix ac;  // [k, in]

  void Append(const Matrix& b, const Matrix& a) {
    const int64_t k = bc.cols();
    Matrix nb(b.rows(), k + b.cols());
    Matrix na(k + a.rows(), a.cols());
    if (k > 0) {
      nb.leftCols(k) = bc;
      na.topRows(k) = ac;
    }
    nb.rightCols(b.cols()) = b;
    na.bottomRows(a.rows()) = a;
    bc = std::move(nb);
    ac = std::move(na);
    const int64_t cap = std::min(bc.rows(), ac.cols());
    if (bc.cols() > 2 * cap) {
      Svd svd = FactoredSvd(bc, ac, 0);
      const int64_t p = svd.s.size();
      bc = svd.u * svd.s.asDiagonal();
      ac = svd.v.leftCols(p).transpose();
    }
  }
};

class ProductLoraStrategy : public AggregationStrategy {
 public:
  ProductLoraStrategy(std::unique_ptr<AggregationStrategy> inner, int64_t rank)
      : inner_(std::move(inner)), rank_(rank) {}

  std::string_view name() const override { return inner_->name(); }
  bool NeedsAllUpdates() const override { return inner_->NeedsAllUpdates(); }
  int MaxUpdates() const override { return inner_->MaxUpdates(); }
  TensorBundle SaveState() const override { return inner_->SaveState(); }
  Status RestoreState(const TensorBundle& state) override { return inner_->RestoreState(state); }
  int count() const override { return inner_->count(); }

  void Begin(const TensorBundle& global) override {
    inner_->Begin(global);
    global_ = global;
    sums_.clear();
    total_weight_ = 0;
    auto layers = FindLoraLayers(global);
    if (!layers.ok()) {
      layers_status_ = layers.status();
      layers_.clear();
      return;
    }
    layers_status_ = OkStatus();
    layers_ = std::move(*layers);
    sums_.resize(layers_.size());
  }

  Status Add(const TensorBundle& delta, int64_t num_examples) override {
    FEDGE_RETURN_IF_ERROR(layers_status_);
    if (num_examples <= 0) return InvalidArgumentError("num_examples must be > 0");
    const double w = static_cast<double>(num_examples);
    // Compute every layer's factors first, so a bad update changes nothing.
    std::vector<std::pair<Matrix, Matrix>> terms;
    terms.reserve(layers_.size());
    for (const LoraLayer& l : layers_) {
      const NamedTensor* db = delta.Find(l.b_name);
      const NamedTensor* da = delta.Find(l.a_name);
      if (db == nullptr || da == nullptr || db->values.size() != static_cast<size_t>(l.out * l.rank) ||
          da->values.size() != static_cast<size_t>(l.rank * l.in)) {
        return InvalidArgumentError("product aggregation: update lacks or misshapes the factors of layer \"" +
                                    l.layer + "\"");
      }
      const NamedTensor* gb = global_.Find(l.b_name);
      const NamedTensor* ga = global_.Find(l.a_name);
      // The agent's own factors: the global it trained from plus its delta.
      Matrix b =
          (MapF(gb->values.data(), l.out, l.rank) + MapF(db->values.data(), l.out, l.rank)).cast<double>();
      Matrix a =
          (MapF(ga->values.data(), l.rank, l.in) + MapF(da->values.data(), l.rank, l.in)).cast<double>();
      terms.emplace_back(w * b, std::move(a));
    }
    FEDGE_RETURN_IF_ERROR(inner_->Add(delta, num_examples));
    for (size_t i = 0; i < layers_.size(); ++i) sums_[i].Append(terms[i].first, terms[i].second);
    total_weight_ += w;
    return OkStatus();
  }

  StatusOr<TensorBundle> Finish(const TensorBundle& global) override {
    FEDGE_RETURN_IF_ERROR(layers_status_);
    FEDGE_ASSIGN_OR_RETURN(TensorBundle out, inner_->Finish(global));
    double discarded = 0, total = 0, worst_rel = 0;
    std::string worst_layer;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const LoraLayer& l = layers_[i];
      const FactoredSum& sum = sums_[i];
      Svd svd = FactoredSvd(sum.bc / total_weight_, sum.ac, rank_);
      RefactorResult r;
      Split(svd, rank_, kLoraAFloor, l.out, l.in, &r);
      NamedTensor* b = out.Find(l.b_name);
      NamedTensor* a = out.Find(l.a_name);
      if (b == nullptr || a == nullptr) {
        return InvalidArgumentError("product aggregation: the global lacks layer \"" + l.layer + "\"");
      }
      b->values = std::move(r.b);
      a->values = std::move(r.a);
      discarded += r.discarded_energy;
      total += r.total_energy;
      const double rel = r.total_energy > 0 ? std::sqrt(r.discarded_energy / r.total_energy) : 0.0;
      if (rel >= worst_rel) {
        worst_rel = rel;
        worst_layer = l.layer;
      }
    }
    // ‖M − B A‖_F over all layers, in units of B A (ΔW = scaling · B A).
    log::Info("lora product re-factored",
              {{"strategy", name()},
               {"layers", static_cast<int64_t>(layers_.size())},
               {"rank", rank_},
               {"updates", count()},
               {"discarded_norm", std::sqrt(discarded)},
               {"relative_discarded", total > 0 ? std::sqrt(discarded / total) : 0.0},
               {"worst_layer", worst_layer},
               {"worst_layer_relative_discarded", worst_rel}});
    return out;
  }

 private:
  std::unique_ptr<AggregationStrategy> inner_;
  int64_t rank_;
  TensorBundle global_;  // the round's base: agents' factors = global_ + delta
  Status layers_status_ = FailedPreconditionError("strategy: Add before Begin");
  std::vector<LoraLayer> layers_;
  std::vector<FactoredSum> sums_;  // per layer, parallel to layers_
  double total_weight_ = 0;
};

}  // namespace

StatusOr<std::vector<LoraLayer>> FindLoraLayers(const TensorBundle& bundle) {
  std::vector<LoraLayer> layers;
  std::unordered_map<std::string, size_t> index;
  for (const NamedTensor& t : bundle.tensors) {
    const bool is_a = EndsWith(t.name, kASuffix);
    const bool is_b = EndsWith(t.name, kBSuffix);
    if (!is_a && !is_b) continue;
    if (t.shape.size() != 2) {
      return InvalidArgumentError("LoRA tensor \"" + t.name + "\" must be 2-D, has " +
                                  std::to_string(t.shape.size()) + " dimensions");
    }
    const std::string layer = LayerOf(t.name, is_a ? kASuffix : kBSuffix);
    auto [it, inserted] = index.emplace(layer, layers.size());
    if (inserted) layers.push_back(LoraLayer{layer, "", "", 0, 0, 0});
    LoraLayer& l = layers[it->second];
    const int64_t rank = is_a ? t.shape[0] : t.shape[1];
    if (l.rank != 0 && l.rank != rank) {
      return InvalidArgumentError("LoRA layer \"" + layer + "\": lora_A has rank " +
                                  std::to_string(is_a ? rank : l.rank) + " but lora_B has rank " +
                                  std::to_string(is_a ? l.rank : rank));
    }
    l.rank = rank;
    if (is_a) {
      l.a_name = t.name;
      l.in = t.shape[1];
    } else {
      l.b_name = t.name;
      l.out = t.shape[0];
    }
  }
  return layers;
}

Status CheckLoraLayout(const TensorBundle& state, const AdapterSpec& adapter) {
  const std::string& mode = adapter.aggregation;
  if (mode != "frozen-a" && mode != "product") return OkStatus();
  FEDGE_ASSIGN_OR_RETURN(std::vector<LoraLayer> layers, FindLoraLayers(state));
  if (mode == "frozen-a") {
    bool any_b = false;
    for (const LoraLayer& l : layers) {
      if (!l.a_name.empty()) {
        return InvalidArgumentError("spec.adapter.aggregation is frozen-a, but the state carries \"" +
                                    l.a_name +
                                    "\": A is generated from rounds.seed on every agent and must not be sent "
                                    "(agent and aggregator run different job specs?)");
      }
      any_b = any_b || !l.b_name.empty();
    }
    if (!any_b) {
      return InvalidArgumentError("spec.adapter.aggregation is frozen-a, but the state has no lora_B tensor");
    }
    return OkStatus();
  }
  if (layers.empty()) {
    return InvalidArgumentError("spec.adapter.aggregation is product, but the state has no LoRA factors");
  }
  for (const LoraLayer& l : layers) {
    if (l.a_name.empty() || l.b_name.empty()) {
      return InvalidArgumentError("product aggregation needs both factors of LoRA layer \"" + l.layer +
                                  "\", the state has only " + (l.a_name.empty() ? l.b_name : l.a_name));
    }
    if (l.rank != adapter.rank) {
      return InvalidArgumentError("LoRA layer \"" + l.layer + "\" has rank " + std::to_string(l.rank) +
                                  ", spec.adapter.rank is " + std::to_string(adapter.rank));
    }
  }
  return OkStatus();
}

StatusOr<RefactorResult> RefactorLoraProduct(const std::vector<FactorTerm>& terms, int64_t out, int64_t in,
                                             int64_t rank, double a_floor) {
  if (terms.empty()) return InvalidArgumentError("re-factoring needs at least one term");
  if (out <= 0 || in <= 0 || rank <= 0) {
    return InvalidArgumentError("re-factoring needs positive out, in and rank");
  }
  if (!(a_floor >= 0) || !std::isfinite(a_floor))
    return InvalidArgumentError("a_floor must be finite and >= 0");
  int64_t k = 0;
  for (const FactorTerm& t : terms) {
    if (t.b == nullptr || t.a == nullptr || t.rank <= 0) {
      return InvalidArgumentError("re-factoring: a term lacks factors or has rank <= 0");
    }
    if (!std::isfinite(t.weight)) return InvalidArgumentError("re-factoring: non-finite weight");
    k += t.rank;
  }
  Matrix bc(out, k), ac(k, in);
  int64_t col = 0;
  for (const FactorTerm& t : terms) {
    bc.middleCols(col, t.rank) = t.weight * MapF(t.b, out, t.rank).cast<double>();
    ac.middleRows(col, t.rank) = MapF(t.a, t.rank, in).cast<double>();
    col += t.rank;
  }
  Svd svd = FactoredSvd(bc, ac, rank);
  RefactorResult r;
  Split(svd, rank, a_floor, out, in, &r);
  return r;
}

StatusOr<std::unique_ptr<AggregationStrategy>> WrapForLora(std::unique_ptr<AggregationStrategy> inner,
                                                           const StrategySpec& strategy,
                                                           const AdapterSpec& adapter) {
  const std::string& mode = adapter.aggregation;
  if (mode == "factors" || mode == "frozen-a") return inner;
  if (mode != "product") {
    return InvalidArgumentError("spec.adapter.aggregation: unknown \"" + mode +
                                "\" (known: factors, frozen-a, product)");
  }
  if (strategy.name != "fedavg" && strategy.name != "fedprox") {
    return InvalidArgumentError(
        "spec.adapter.aggregation: product works with strategy fedavg or fedprox, not \"" + strategy.name +
        "\" (use factors or frozen-a with " + strategy.name + ")");
  }
  if (adapter.rank < 1) return InvalidArgumentError("spec.adapter.rank: must be >= 1");
  return std::unique_ptr<AggregationStrategy>(
      std::make_unique<ProductLoraStrategy>(std::move(inner), adapter.rank));
}

}  // namespace fedge::aggregator
