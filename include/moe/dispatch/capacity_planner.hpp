// Token-choice capacity planning: which routed (token, choice) entries each expert keeps when its
// capacity overflows, where they go in the [E, C, d] buffer, and the combine weights; plus the
// backward of those weights to Routing::gates.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/dispatch/capacity.hpp"
#include "moe/dispatch/capacity_plan.hpp"
#include "moe/dispatch/detail/drop_policies.hpp"
#include "moe/dispatch/detail/plan_finalize.hpp"
#include "moe/routing/routing.hpp"

namespace moe {

/// Capacity plan of token-choice routing: per group C = expert_capacity(config, group tokens, k,
/// E, mode); entries over C dropped by config.policy; w = g for kept entries (or g / max(Σ kept g,
/// eps) with renormalize_survivors, DeepSpeed top-2 / top-k), 0 for dropped ones. An unused slot
/// (kUnusedSlot) is an entry of expert -1 that takes no slot and is not a drop.
/// `seed` only matters for DropPolicy::random.
template <class S>
CapacityPlan<S> make_capacity_plan(const Eigen::Ref<const ExpertIdMatrix>& expert_ids,
                                   const ConstMatrixRef<type_identity_t<S>>& gates,
                                   Index num_experts, const CapacityConfig& config, Mode mode,
                                   std::uint64_t seed = 0) {
  validate(config);
  const Index tokens = expert_ids.rows();
  const Index k = expert_ids.cols();
  require(num_experts >= 1, "num_experts", ">= 1", num_experts);
  require(num_experts <= std::numeric_limits<ExpertId>::max(), "num_experts",
          "a count that fits an ExpertId", num_experts);
  require(k >= 1, "expert_ids", "at least one column (top-k >= 1)", k);
  require_shape(gates, "gates", tokens, k);
  for (Index t = 0; t < tokens; ++t)
    for (Index j = 0; j < k; ++j)
      detail::routed_slot(expert_ids(t, j), num_experts, "expert_ids", t, j);
  require_finite(gates, "gates");
  const Index group = config.group_size == 0 ? tokens : config.group_size;
  if (config.group_size > 0)
    require(tokens % config.group_size == 0, "expert_ids",
            detail::concat("a row count divisible by CapacityConfig::group_size (",
                           config.group_size, ")"),
            tokens);

  CapacityPlan<S> plan;
  plan.num_tokens = tokens;
  plan.num_experts = num_experts;
  plan.top_k = k;
  plan.num_groups = config.group_size == 0 ? 1 : tokens / config.group_size;
  plan.group_capacity = expert_capacity(config, group, k, num_experts, mode);
  plan.capacity = detail::plan_capacity(num_experts, plan.num_groups, plan.group_capacity);

  const Index n = checked_mul(tokens, k, "expert_ids");
  plan.token_offsets.resize(tokens + 1);
  for (Index t = 0; t <= tokens; ++t) plan.token_offsets[t] = t * k;
  plan.entry_expert.resize(n);
  for (Index t = 0; t < tokens; ++t)
    for (Index j = 0; j < k; ++j) plan.entry_expert[t * k + j] = expert_ids(t, j);
  plan.entry_slot.setConstant(n, -1);

  std::vector<Index> base(static_cast<std::size_t>(num_experts), 0);
  detail::SlotScratch scratch;
  for (Index g = 0; g < plan.num_groups; ++g)
    detail::assign_group_slots<S>(expert_ids, gates, g * group, (g + 1) * group,
                                  plan.group_capacity, plan.capacity, config.policy, seed, base,
                                  plan.entry_slot, scratch);

  plan.entry_weight.resize(n);
  plan.renormalized = config.renormalize_survivors;
  if (plan.renormalized) plan.survivor_sum.resize(tokens);
  const S eps = std::numeric_limits<S>::epsilon();
  for (Index t = 0; t < tokens; ++t) {
    S sum = S(0);
    for (Index j = 0; j < k; ++j)
      if (plan.entry_slot[t * k + j] >= 0) sum += gates(t, j);
    const S denominator = std::max(sum, eps);
    for (Index j = 0; j < k; ++j) {
      const Index i = t * k + j;
      if (plan.entry_slot[i] < 0)
        plan.entry_weight[i] = S(0);
      else
        plan.entry_weight[i] = plan.renormalized ? gates(t, j) / denominator : gates(t, j);
    }
    if (plan.renormalized) plan.survivor_sum[t] = sum;
  }
  detail::finalize_capacity_plan(plan);
  return plan;
}

/// make_capacity_plan over a Routing: its expert_ids, its gates and E = scores.cols().
template <class S>
CapacityPlan<S> make_capacity_plan(const Routing<S>& routing, const CapacityConfig& config,
                                   Mode mode, std::uint64_t seed = 0) {
  require(routing.scores.cols() >= 1, "routing.scores",
          "[T, E] scores with E >= 1 (E is read from them)",
          detail::concat("[", routing.scores.rows(), ", ", routing.scores.cols(), "]"));
  return make_capacity_plan<S>(routing.expert_ids, routing.gates, routing.num_experts(), config,
                               mode, seed);
}

/// d loss / d gates [T, k] from d loss / d entry_weight [N] of a token-choice plan: dropped
/// entries get 0; kept ones dw (no renormalization) or (dw_l - Σ_kept dw_i w_i) / D with
/// D = Σ_kept g (the Σ term vanishes when D was clamped to eps).
template <class S>
RowMatrix<S> capacity_plan_backward(const CapacityPlan<S>& plan,
                                    const ConstVectorRef<type_identity_t<S>>& grad_weight) {
  require(plan.top_k >= 1, "plan", "a token-choice plan (top_k >= 1)",
          "an expert-choice plan (top_k 0); use expert_choice_backward");
  require(grad_weight.size() == plan.num_entries(), "grad_weight",
          detail::concat("size ", plan.num_entries(), " (one per plan entry)"), grad_weight.size());
  require_finite(grad_weight, "grad_weight");
  detail::require_capacity_plan(plan);
  const Index tokens = plan.num_tokens;
  const Index k = plan.top_k;
  RowMatrix<S> grad(tokens, k);
  const S eps = std::numeric_limits<S>::epsilon();
  for (Index t = 0; t < tokens; ++t) {
    S dot = S(0);
    S denominator = S(1);
    bool clamped = false;
    if (plan.renormalized) {
      const S sum = plan.survivor_sum[t];
      clamped = sum < eps;  // clamp(min = eps) passes the gradient at eps
      denominator = clamped ? eps : sum;
      for (Index j = 0; j < k; ++j) {
        const Index i = t * k + j;
        if (plan.entry_slot[i] >= 0) dot += grad_weight[i] * plan.entry_weight[i];
      }
    }
    for (Index j = 0; j < k; ++j) {
      const Index i = t * k + j;
      if (plan.entry_slot[i] < 0)
        grad(t, j) = S(0);
      else if (!plan.renormalized)
        grad(t, j) = grad_weight[i];
      else
        grad(t, j) = (grad_weight[i] - (clamped ? S(0) : dot)) / denominator;
    }
  }
  return grad;
}

}  // namespace moe
