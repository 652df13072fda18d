// Capacity metrics of one step (drop rate, per-expert drops, tokens left with no expert, capacity
// utilization) from plain counts, so any dispatcher can report them; and those counts read off a
// CapacityPlan, so a step's plan feeds the health report directly.
#pragma once

#include <limits>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/dispatch/capacity_plan.hpp"
#include "moe/routing/routing.hpp"

namespace moe {

/// What a capacity-limited dispatch kept and dropped, as plain counts.
struct CapacityStats {
  Index capacity = 0;      ///< C, slots per expert
  IndexVector kept;        ///< [E] assignments kept per expert (<= C)
  IndexVector dropped;     ///< [E] assignments dropped per expert
  IndexVector token_kept;  ///< [T] kept choices per token, in [0, k]
  /// [T] routed (not unused) choices per token, or empty when every token routes all k.
  IndexVector token_routed;
};

/// CapacityStats{capacity, kept, dropped, token_kept[t] = kept entries of token t} of a plan. For a
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
  if ((plan.entry_expert.array() == kUnusedSlot).any()) {
    stats.token_routed = IndexVector::Zero(plan.num_tokens);
    for (Index t = 0; t < plan.num_tokens; ++t)
      for (Index i = plan.token_offsets[t]; i < plan.token_offsets[t + 1]; ++i)
        stats.token_routed[t] += plan.entry_expert[i] != kUnusedSlot ? 1 : 0;
  }
  return stats;
}

/// Builds CapacityStats from the routing's expert ids [T, k] and a kept mask [T, k] (nonzero =
/// the choice got a slot; an unused slot, kUnusedSlot, is neither kept nor dropped).
template <class Ids, class Mask>
CapacityStats capacity_stats_from_mask(const Eigen::DenseBase<Ids>& expert_ids,
                                       const Eigen::DenseBase<Mask>& kept_mask, Index num_experts,
                                       Index capacity) {
  const auto& ids = expert_ids.derived();
  const auto& mask = kept_mask.derived();
  require(num_experts >= 1, "num_experts", ">= 1", num_experts);
  require(capacity >= 0, "capacity", ">= 0", capacity);
  require_shape(mask, "kept_mask", ids.rows(), ids.cols());
  CapacityStats s;
  s.capacity = capacity;
  s.kept = IndexVector::Zero(num_experts);
  s.dropped = IndexVector::Zero(num_experts);
  s.token_kept = IndexVector::Zero(ids.rows());
  s.token_routed = IndexVector::Zero(ids.rows());
  bool unused = false;
  for (Index t = 0; t < ids.rows(); ++t)
    for (Index j = 0; j < ids.cols(); ++j) {
      const auto e = static_cast<Index>(ids(t, j));
      if (!detail::routed_slot(e, num_experts, "expert_ids", t, j)) {
        unused = true;
        continue;
      }
      ++s.token_routed[t];
      if (mask(t, j) != 0) {
        ++s.kept[e];
        ++s.token_kept[t];
      } else {
        ++s.dropped[e];
      }
    }
  if (!unused) s.token_routed.resize(0);  // every slot routed: T k, as capacity_report assumes
  return s;
}

/// The capacity part of a HealthReport.
struct CapacityReport {
  Index capacity = 0;
  double drop_rate = 0.0;             ///< sum dropped / (T k)
  double tokens_left_behind = 0.0;    ///< tokens_without_expert / T (flaxformer)
  Index tokens_without_expert = 0;    ///< #{t : no choice kept}
  double capacity_utilization = 0.0;  ///< sum kept / (E C) (flaxformer `expert_usage`)
  Index overflowing_experts = 0;      ///< experts that dropped at least one assignment
  IndexVector kept, dropped;          ///< [E]
};

/// drop rate = sum dropped / routed choices (marin: / (T k) when every slot is used), fraction of
/// tokens left behind = #(tokens with a routed choice, none kept) / T and expert usage = sum kept
/// / (E C) (flaxformer). Ratios over an empty denominator are NaN. Checks kept + dropped = the
/// routed choices (T k without unused slots), sum token_kept = sum kept, kept_e <= C.
inline CapacityReport capacity_report(const CapacityStats& c, Index tokens, Index experts,
                                      Index top_k) {
  require(c.capacity >= 0, "CapacityStats::capacity", ">= 0", c.capacity);
  require(c.kept.size() == experts, "CapacityStats::kept", detail::concat("size ", experts),
          c.kept.size());
  require(c.dropped.size() == experts, "CapacityStats::dropped", detail::concat("size ", experts),
          c.dropped.size());
  require(c.token_kept.size() == tokens, "CapacityStats::token_kept",
          detail::concat("size ", tokens), c.token_kept.size());
  if (experts > 0) {
    require(c.kept.minCoeff() >= 0, "CapacityStats::kept", "entries >= 0", c.kept.minCoeff());
    require(c.kept.maxCoeff() <= c.capacity, "CapacityStats::kept",
            detail::concat("entries <= capacity (", c.capacity, ")"), c.kept.maxCoeff());
    require(c.dropped.minCoeff() >= 0, "CapacityStats::dropped", "entries >= 0",
            c.dropped.minCoeff());
  }
  if (tokens > 0) {
    require(c.token_kept.minCoeff() >= 0 && c.token_kept.maxCoeff() <= top_k,
            "CapacityStats::token_kept", detail::concat("entries in [0, ", top_k, "]"),
            detail::concat("[", c.token_kept.minCoeff(), ", ", c.token_kept.maxCoeff(), "]"));
  }
  const bool all_routed = c.token_routed.size() == 0;
  if (!all_routed)
    require(
        c.token_routed.size() == tokens &&
            (tokens == 0 || (c.token_routed.minCoeff() >= 0 && c.token_routed.maxCoeff() <= top_k)),
        "CapacityStats::token_routed",
        detail::concat("empty, or ", tokens, " entries in [0, ", top_k, "]"),
        c.token_routed.size());
  const Index routed = all_routed ? tokens * top_k : c.token_routed.sum();
  const Index kept = c.kept.sum(), dropped = c.dropped.sum();
  require(kept + dropped == routed, "CapacityStats::kept + dropped",
          detail::concat("T * k less unused slots = ", routed), kept + dropped);
  require(c.token_kept.sum() == kept, "CapacityStats::token_kept",
          detail::concat("entries summing to sum(kept) = ", kept), c.token_kept.sum());

  CapacityReport r;
  r.capacity = c.capacity;
  r.kept = c.kept;
  r.dropped = c.dropped;
  const auto ratio = [](double num, Index den) {
    return den > 0 ? num / static_cast<double>(den) : std::numeric_limits<double>::quiet_NaN();
  };
  r.drop_rate = ratio(static_cast<double>(dropped), routed);
  r.tokens_without_expert = 0;
  for (Index t = 0; t < tokens; ++t)
    r.tokens_without_expert +=
        c.token_kept[t] == 0 && (all_routed ? top_k > 0 : c.token_routed[t] > 0) ? 1 : 0;
  r.tokens_left_behind = ratio(static_cast<double>(r.tokens_without_expert), tokens);
  r.capacity_utilization = ratio(static_cast<double>(kept), experts * c.capacity);
  r.overflowing_experts = (c.dropped.array() > 0).count();
  return r;
}

}  // namespace moe
