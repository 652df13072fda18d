// Expert choice routing (Zhou et al. 2022): each expert takes its top-C tokens by score, so a token
// gets 0..E experts and no expert overflows. It lives with the dispatchers because what it builds
// is a CapacityPlan, dispatched and combined with the same kernels as token-choice routing.
#pragma once

#include <algorithm>
#include <functional>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/dispatch/capacity.hpp"
#include "moe/dispatch/capacity_plan.hpp"
#include "moe/dispatch/detail/plan_finalize.hpp"

namespace moe {

/// Capacity settings of expert choice: C = T · cf / E per group (k = 1 in the capacity formula),
/// rounded by `rounding`; the defaults are flaxformer's rounding and the paper's c = 2.
struct ExpertChoiceConfig {
  CapacityRounding rounding = CapacityRounding::flaxformer;
  double train_factor = 2.0;
  double eval_factor = 2.0;
  Index min_capacity = 0;
  Index fixed_capacity = 0;
  Index alignment = 1;
  Index group_size = 0;  ///< tokens per routing group; 0 = one group

  CapacityConfig capacity_config() const {
    CapacityConfig c;
    c.rounding = rounding;
    c.train_factor = train_factor;
    c.eval_factor = eval_factor;
    c.min_capacity = min_capacity;
    c.fixed_capacity = fixed_capacity;
    c.alignment = alignment;
    c.group_size = group_size;
    return c;
  }
};

/// Expert choice plan from scores [T, E] (softmax over experts, as in the paper and flaxformer):
/// per group, expert e keeps the min(C, group tokens) tokens with the highest scores[t, e] (ties to
/// the lower token), in slots ordered by score; combine weight = scores[t, e].
template <class S>
CapacityPlan<S> make_expert_choice_plan(const ConstMatrixRef<type_identity_t<S>>& scores,
                                        const ExpertChoiceConfig& config, Mode mode) {
  const CapacityConfig capacity = config.capacity_config();
  validate(capacity);
  const Index tokens = scores.rows();
  const Index num_experts = scores.cols();
  require(num_experts >= 1, "scores", "[T, E] with E >= 1",
          detail::concat("[", tokens, ", ", num_experts, "]"));
  require_finite(scores, "scores");
  if (config.group_size > 0)
    require(tokens % config.group_size == 0, "scores",
            detail::concat("a row count divisible by ExpertChoiceConfig::group_size (",
                           config.group_size, ")"),
            tokens);
  const Index group = config.group_size == 0 ? tokens : config.group_size;

  CapacityPlan<S> plan;
  plan.num_tokens = tokens;
  plan.num_experts = num_experts;
  plan.top_k = 0;
  plan.num_groups = config.group_size == 0 ? 1 : tokens / config.group_size;
  plan.group_capacity = expert_capacity(capacity, group, 1, num_experts, mode);
  plan.capacity = detail::plan_capacity(num_experts, plan.num_groups, plan.group_capacity);
  const Index taken = std::min(plan.group_capacity, group);

  // chosen[e · capacity + c] = token in slot c of expert e (slots filled without gaps).
  std::vector<Index> chosen(static_cast<std::size_t>(num_experts * plan.capacity), -1);
  std::vector<Index> order;
  std::vector<S> values;
  // The group's scores, one expert a contiguous row. One cache line of padding per row keeps
  // the rows, written in lockstep by the transpose, out of a single cache set when the group
  // size is a power of two.
  RowMatrix<S> columns(num_experts, group + 64 / static_cast<Index>(sizeof(S)));
  IndexVector per_token = IndexVector::Zero(tokens);
  for (Index g = 0; g < plan.num_groups; ++g) {
    const Index t0 = g * group;
    // The group's scores transposed, so each expert's column is one contiguous row.
    for (Index t = 0; t < group; ++t) {
      const S* row = scores.row(t0 + t).data();
      for (Index e = 0; e < num_experts; ++e) columns(e, t) = row[e];
    }
    for (Index e = 0; e < num_experts && taken > 0; ++e) {
      const S* column = columns.row(e).data();
      // The taken-th largest score is the threshold: every token above it is kept, and tokens
      // equal to it fill the remaining slots in ascending index. Selecting on plain values then
      // sorting only the kept tokens is O(T + C log C) per expert.
      values.assign(column, column + group);
      std::nth_element(values.begin(), values.begin() + (taken - 1), values.end(),
                       std::greater<S>());
      const S threshold = values[static_cast<std::size_t>(taken - 1)];
      order.clear();
      for (Index t = 0; t < group; ++t)
        if (column[t] > threshold) order.push_back(t);
      for (Index t = 0; t < group && static_cast<Index>(order.size()) < taken; ++t)
        if (column[t] == threshold) order.push_back(t);
      std::sort(order.begin(), order.end(), [&](Index a, Index b) {
        return column[a] > column[b] || (column[a] == column[b] && a < b);
      });
      for (Index c = 0; c < taken; ++c) {
        const Index t = t0 + order[static_cast<std::size_t>(c)];
        chosen[static_cast<std::size_t>(e * plan.capacity + g * taken + c)] = t;
        ++per_token[t];
      }
    }
  }

  plan.token_offsets.resize(tokens + 1);
  plan.token_offsets[0] = 0;
  for (Index t = 0; t < tokens; ++t)
    plan.token_offsets[t + 1] = plan.token_offsets[t] + per_token[t];
  const Index n = plan.token_offsets[tokens];
  plan.entry_expert.resize(n);
  plan.entry_slot.resize(n);
  plan.entry_weight.resize(n);
  // Walking experts in ascending id leaves each token's entries in ascending expert id.
  IndexVector cursor = plan.token_offsets.head(tokens);
  for (Index e = 0; e < num_experts; ++e)
    for (Index c = 0; c < plan.capacity; ++c) {
      const Index t = chosen[static_cast<std::size_t>(e * plan.capacity + c)];
      if (t < 0) continue;
      const Index i = cursor[t]++;
      plan.entry_expert[i] = static_cast<ExpertId>(e);
      plan.entry_slot[i] = e * plan.capacity + c;
      plan.entry_weight[i] = scores(t, e);
    }
  detail::finalize_capacity_plan(plan);
  return plan;
}

/// d loss / d scores [T, E] from d loss / d entry_weight of an expert choice plan: the gradient of
/// each chosen (token, expert) lands on scores[t, e]; unchosen scores get 0.
template <class S>
RowMatrix<S> expert_choice_backward(const CapacityPlan<S>& plan,
                                    const ConstVectorRef<type_identity_t<S>>& grad_weight) {
  require(grad_weight.size() == plan.num_entries(), "grad_weight",
          detail::concat("size ", plan.num_entries(), " (one per plan entry)"), grad_weight.size());
  require_finite(grad_weight, "grad_weight");
  detail::require_capacity_plan(plan);
  RowMatrix<S> grad = RowMatrix<S>::Zero(plan.num_tokens, plan.num_experts);
  for (Index t = 0; t < plan.num_tokens; ++t)
    for (Index i = plan.token_offsets[t]; i < plan.token_offsets[t + 1]; ++i)
      if (plan.entry_slot[i] >= 0) grad(t, plan.entry_expert[i]) += grad_weight[i];
  return grad;
}

}  // namespace moe
