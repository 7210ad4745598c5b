// LoRA-aware aggregation (spec.adapter.aggregation).
//
// An adapted layer carries ΔW = s · B A (B [out, r], A [r, in], s = alpha / r).
// Averaging B and A separately ("factors") gives avg(B) avg(A), which is not
// avg(B A): the cross terms B_i A_j of different agents leak in. Two exact
// alternatives:
//
//   frozen-a  A is the same fixed matrix on every agent (generated from
//             rounds.seed and the layer name), so avg(B_i A) = avg(B_i) A
//             exactly. Agents send only B and the head; the aggregator never
//             sees A and plain FedAvg over B is already the exact average.
//             CheckLoraLayout rejects an initial state that carries lora_A.
//
//   product   the aggregator forms the exact weighted average
//             M = sum_i w_i B_i A_i / sum_i w_i (B_i = B_global + ΔB_i, A_i =
//             A_global + ΔA_i: the agents' factors, not their deltas) and
//             re-factors it to rank r by truncated SVD, M ≈ U_r S_r V_rᵀ. By
//             Eckart–Young this is the best rank-r approximation; the error
//             ‖M − B A‖_F = sqrt(sum of the discarded σ_i²), reported per round.
//             M is never formed densely: with the agents' factors stacked,
//             M = B_cat W A_cat (inner dimension k = n·r); QR of B_cat and of
//             A_catᵀ leaves a k×k core whose SVD gives U, S, V in
//             O((out + in) k²).
//
// The split of U S Vᵀ into B and A: B = U S D⁻¹, A = D Vᵀ with
// D_j = max(sqrt(σ_j), a_floor). Above the floor this is the balanced split
// B = U sqrt(S), A = sqrt(S) Vᵀ. The floor (the row norm of PEFT's init for A,
// 1/sqrt(3)) matters for directions with σ_j ≈ 0 (e.g. while the average has
// rank < r): sqrt(σ_j) would make both the A row and the B column zero, and a
// LoRA direction whose A row and B column are both zero gets zero gradient
// forever. With the floor such a direction keeps a unit-scale A row and a zero
// B column: B A is unchanged and the direction can still learn.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fedge/aggregator/strategy.h"
#include "fedge/job_spec.h"
#include "fedge/status.h"
#include "fedge/tensor_bundle.h"

namespace fedge::aggregator {

// A LoRA-adapted layer in a trainable-state bundle: "<layer>.lora_A" [r, in]
// and "<layer>.lora_B" [out, r] (a bare "lora_A"/"lora_B" has layer "").
struct LoraLayer {
  std::string layer;
  std::string a_name;  // empty when the bundle has no A (frozen-a)
  std::string b_name;  // empty when the bundle has no B
  int64_t rank = 0;
  int64_t out = 0;  // rows of B
  int64_t in = 0;   // columns of A
};

// The LoRA layers of `bundle`, in the order their first tensor appears.
// Tensors not named *.lora_A / *.lora_B are not LoRA layers. INVALID_ARGUMENT
// if a LoRA tensor is not 2-D or a pair's ranks disagree.
StatusOr<std::vector<LoraLayer>> FindLoraLayers(const TensorBundle& bundle);

// Checks that a trainable-state layout suits `adapter.aggregation`:
//   factors   anything (today's behaviour);
//   frozen-a  no lora_A tensor (A never leaves the agent) and at least one lora_B;
//   product   every layer has both factors, with rank adapter.rank.
// INVALID_ARGUMENT naming the offending tensor and what the agent must send.
Status CheckLoraLayout(const TensorBundle& state, const AdapterSpec& adapter);

// One term w · B A of a weighted sum; B is [out, r] and A is [r, in], both
// row-major. Pointers are not owned and must outlive the call.
struct FactorTerm {
  const float* b = nullptr;
  const float* a = nullptr;
  int64_t rank = 0;
  double weight = 1;
};

struct RefactorResult {
  std::vector<float> b;                 // [out, rank] row-major
  std::vector<float> a;                 // [rank, in] row-major
  std::vector<double> singular_values;  // all of M's (at most k), descending
  double total_energy = 0;              // ‖M‖_F² = sum σ_i²
  double discarded_energy = 0;          // sum of σ_i² for i >= rank = ‖M − B A‖_F²
};

// Re-factors M = sum_j terms[j].weight · B_j A_j ([out, in]) to `rank` by
// truncated SVD with the split described in the file comment; `a_floor` is
// the least row norm of the returned A (0: the pure balanced split).
// INVALID_ARGUMENT for no terms, non-positive dimensions or rank, or a
// non-finite weight. Deterministic for equal inputs.
StatusOr<RefactorResult> RefactorLoraProduct(const std::vector<FactorTerm>& terms, int64_t out, int64_t in,
                                             int64_t rank, double a_floor);

// Row norm of PEFT's initial A (kaiming-uniform, U(-1/sqrt(in), 1/sqrt(in)))
// in expectation, independent of `in`: the default floor of product mode.
inline constexpr double kLoraAFloor = 0.57735026918962576;  // 1/sqrt(3)

// Wraps `inner` so that, with adapter.aggregation == "product", the LoRA
// factors of the next global are the re-factored exact average (the other
// tensors, e.g. the head, are `inner`'s). Any other aggregation returns
// `inner` unchanged (factors and frozen-a need no help from the aggregator).
// INVALID_ARGUMENT if product is combined with a strategy other than fedavg or
// fedprox: the robust and server-optimizer strategies do not define what their
// rule means for a product of factors.
StatusOr<std::unique_ptr<AggregationStrategy>> WrapForLora(std::unique_ptr<AggregationStrategy> inner,
                                                           const StrategySpec& strategy,
                                                           const AdapterSpec& adapter);

}  // namespace fedge::aggregator
