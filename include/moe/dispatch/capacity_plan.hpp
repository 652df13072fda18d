// CapacityPlan: where every routed (token, choice) entry goes in the padded [E, C, d] expert
// buffer, and the counts health metrics read. Built by make_capacity_plan (token choice) or
// make_expert_choice_plan (expert choice); consumed by dispatch / combine and their backward.
#pragma once

#include <limits>

#include <Eigen/Core>

#include "moe/core/types.hpp"

namespace moe {

/// Plain data. Entries are stored token-major: token t owns entries
/// [token_offsets[t], token_offsets[t + 1]), in choice order. Under token choice every token has
/// exactly top_k entries (entry t·k + j is Routing choice j); under expert choice a token has 0..E
/// entries, in ascending expert id, and top_k is 0.
///
/// Slots are flat rows of the expert buffer: slot = e · capacity + c, c in [0, capacity). The kept
/// entries of expert e fill slots c = 0 .. kept[e] - 1 with no gap (groups one after the other),
/// so an expert only has to process its first kept[e] rows; the remaining rows are empty (zero).
template <class S>
struct CapacityPlan {
  using Scalar = S;
  using ExpertIds = Eigen::Matrix<ExpertId, Eigen::Dynamic, 1>;

  Index num_tokens = 0;
  Index num_experts = 0;
  Index top_k = 0;           ///< choices per token; 0 when it varies (expert choice)
  Index capacity = 0;        ///< rows per expert in the buffer: num_groups · group_capacity
  Index group_capacity = 0;  ///< C of one routing group, from the capacity formula
  Index num_groups = 0;      ///< routing groups of consecutive tokens

  // Token side: (token, choice) -> slot.
  IndexVector token_offsets;  ///< [T + 1]
  ExpertIds entry_expert;     ///< [N] expert of the entry
  IndexVector entry_slot;     ///< [N] flat slot e · capacity + c, or -1 when dropped
  Vector<S> entry_weight;     ///< [N] combine weight; 0 when dropped

  // Expert side: slot -> (token, entry); -1 when the slot is empty.
  IndexVector slot_entry;  ///< [E · capacity]
  IndexVector slot_token;  ///< [E · capacity]

  // Counts.
  IndexVector kept;                 ///< [E] entries each expert keeps
  IndexVector dropped;              ///< [E] entries each expert had to drop (overflow)
  Index total_kept = 0;             ///< Σ kept
  Index total_dropped = 0;          ///< Σ dropped; total_kept + total_dropped = entries
  Index tokens_without_expert = 0;  ///< tokens with a routed entry, none of them kept

  /// Set when the survivors were renormalized: per token the sum of its kept gate weights before
  /// the division (the backward pass needs it). Empty otherwise.
  bool renormalized = false;
  Vector<S> survivor_sum;  ///< [T]

  Index num_entries() const noexcept { return entry_slot.size(); }
  Index num_slots() const noexcept { return num_experts * capacity; }
  Index choices(Index token) const { return token_offsets[token + 1] - token_offsets[token]; }
  Index entry(Index token, Index choice) const { return token_offsets[token] + choice; }
  bool is_kept(Index entry_index) const { return entry_slot[entry_index] >= 0; }

  // Ratios over an empty denominator are NaN, as in moe/health.

  /// Dropped entries over all entries (Megatron / fairseq overflow fraction).
  double drop_rate() const noexcept { return ratio(total_dropped, total_kept + total_dropped); }
  /// Tokens with a routed entry and none kept, over T (flaxformer fraction_tokens_left_behind).
  double fraction_tokens_without_expert() const noexcept {
    return ratio(tokens_without_expert, num_tokens);
  }
  /// Kept entries over all buffer slots (flaxformer expert_usage).
  double utilization() const noexcept { return ratio(total_kept, num_slots()); }
  /// Kept entries of expert e over its capacity.
  double utilization(Index expert) const { return ratio(kept[expert], capacity); }

  static double ratio(Index num, Index den) noexcept {
    return den == 0 ? std::numeric_limits<double>::quiet_NaN()
                    : static_cast<double>(num) / static_cast<double>(den);
  }
};

}  // namespace moe
