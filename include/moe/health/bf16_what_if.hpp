// What-if of a router under bfloat16 storage: which of its selections change when its input x,
// its weights, or both are rounded to bfloat16 and the logits are accumulated in float (as
// AVX512-BF16 and tensor-core products accumulate), per token and per expert. For users who see
// train/inference mismatch: an inference engine that holds x or the router in bfloat16 routes
// these tokens elsewhere. The rounding of the logits alone is bf16_stability (stability.hpp).
#pragma once

#include <algorithm>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/health/stability.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/routing/router.hpp"

namespace moe {

/// What bf16_what_if rounds to bfloat16 before the logits.
enum class Bf16Operands {
  x,        ///< the router's input (activations held in bfloat16)
  weights,  ///< the router's weight and linear bias (a bfloat16 checkpoint)
  both      ///< both
};

/// K = the router's selection from its logits x W^T (+ b) in S (Router::forward in eval mode:
/// score, selection bias, group limit, adaptive k), K' = the same selection (select_experts) from
/// bf16(x) bf16(W)^T (+ bf16(b)) accumulated in float, with `rounded` saying which operands are
/// rounded (round_to_bfloat16: nearest, ties to even). Sets are compared per token, unused slots
/// (adaptive k) left out. Router::expert_scale does not steer selection and is not applied.
template <class S>
Bf16WhatIf bf16_what_if(const Router<S>& router, const ConstMatrixRef<S>& x, Bf16Operands rounded) {
  const RouterConfig& config = router.config;
  require_shape(x, "x", -1, config.hidden);
  require_finite(x, "x");
  const Index tokens = x.rows(), experts = config.num_experts;
  const bool round_x = rounded != Bf16Operands::weights;
  const bool round_weights = rounded != Bf16Operands::x;
  const auto to_float = [](bool round, const auto& m) {
    return m
        .unaryExpr([round](S v) { return round ? round_to_bfloat16(v) : static_cast<float>(v); })
        .eval();
  };

  // K: the router's own forward. K': the same selection over the rounded operands' logits.
  RouterContext<S> ctx;
  const Routing<S>& own = router.forward(x, ctx, Mode::eval);
  RowMatrix<float> logits_rounded(tokens, experts);
  const RowMatrix<float> x_rounded = to_float(round_x, x);
  const RowMatrix<float> weight_rounded = to_float(round_weights, router.weight);
  kernels::fixed_block_product(logits_rounded, x_rounded, weight_rounded.transpose());
  if (config.linear_bias)
    logits_rounded.rowwise() += to_float(round_weights, router.bias).transpose();
  require_finite(logits_rounded, "bfloat16 logits");
  RouterConfig selection = config;
  selection.expert_scale = false;  // a gate scale, not part of the selection
  Routing<float> other;
  RowMatrix<float> scratch;
  const Vector<float> bias_float = router.selection_bias.template cast<float>();
  select_experts<float>(selection, logits_rounded, bias_float, other, scratch);

  Bf16WhatIf out;
  out.tokens = tokens;
  out.lost.assign(static_cast<std::size_t>(experts), 0);
  out.gained.assign(static_cast<std::size_t>(experts), 0);
  std::vector<ExpertId> before, after;
  const auto chosen = [](const auto& ids, Index t, std::vector<ExpertId>& set) {
    set.clear();
    for (Index j = 0; j < ids.cols(); ++j)
      if (ids(t, j) != kUnusedSlot) set.push_back(ids(t, j));
    std::sort(set.begin(), set.end());
  };
  for (Index t = 0; t < tokens; ++t) {
    chosen(own.expert_ids, t, before);
    chosen(other.expert_ids, t, after);
    Index swapped = 0;
    for (ExpertId e : before)
      if (!std::binary_search(after.begin(), after.end(), e)) {
        ++swapped;
        ++out.lost[static_cast<std::size_t>(e)];
      }
    for (ExpertId e : after)
      if (!std::binary_search(before.begin(), before.end(), e))
        ++out.gained[static_cast<std::size_t>(e)];
    out.flipped_tokens += swapped > 0 || before.size() != after.size() ? 1 : 0;
    out.flipped_choices += swapped;
  }
  return out;
}

}  // namespace moe
