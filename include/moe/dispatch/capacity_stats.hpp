// The counts of a CapacityPlan as moe/health's CapacityStats, so a step's plan feeds the health
// report (drop rate, tokens left behind, capacity utilization, overflowing experts) directly.
#pragma once

#include "moe/dispatch/capacity_plan.hpp"
#include "moe/health/capacity.hpp"

namespace moe {

/// CapacityStats{capacity, kept, dropped, token_kept[t] = kept entries of token t}. For a
/// token-choice plan, capacity_report(stats, T, E, k) then checks kept + dropped = T·k.
template <class S>
CapacityStats capacity_stats(const CapacityPlan<S>& plan) {
  CapacityStats stats;
  stats.capacity = plan.capacity;
  stats.kept = plan.kept;
  stats.dropped = plan.dropped;
  stats.token_kept = IndexVector::Zero(plan.num_tokens);
  for (Index t = 0; t < plan.num_tokens; ++t)
    for (Index i = plan.token_offsets[t]; i < plan.token_offsets[t + 1]; ++i)
      stats.token_kept[t] += plan.entry_slot[i] >= 0 ? 1 : 0;
  return stats;
}

}  // namespace moe
