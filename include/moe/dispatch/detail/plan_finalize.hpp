// Derives the expert side and the counts of a CapacityPlan from its entry arrays; shared by the
// token-choice and expert-choice planners so both produce plans with identical invariants.
#pragma once

#include "moe/dispatch/capacity_plan.hpp"

namespace moe::detail {

template <class S>
void finalize_capacity_plan(CapacityPlan<S>& plan) {
  const Index slots = plan.num_slots();
  plan.slot_entry.setConstant(slots, -1);
  plan.slot_token.setConstant(slots, -1);
  plan.kept.setZero(plan.num_experts);
  plan.dropped.setZero(plan.num_experts);
  plan.tokens_without_expert = 0;
  for (Index t = 0; t < plan.num_tokens; ++t) {
    bool any = false;
    for (Index i = plan.token_offsets[t]; i < plan.token_offsets[t + 1]; ++i) {
      const Index slot = plan.entry_slot[i];
      if (slot >= 0) {
        plan.slot_entry[slot] = i;
        plan.slot_token[slot] = t;
        ++plan.kept[plan.entry_expert[i]];
        any = true;
      } else {
        ++plan.dropped[plan.entry_expert[i]];
      }
    }
    if (!any) ++plan.tokens_without_expert;
  }
  plan.total_kept = plan.kept.sum();
  plan.total_dropped = plan.dropped.sum();
}

}  // namespace moe::detail
