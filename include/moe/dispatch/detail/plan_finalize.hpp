// Derives the expert side and the counts of a CapacityPlan from its entry arrays, shared by the
// token-choice and expert-choice planners so both produce plans with identical invariants; and
// checks a plan handed back by the caller before the kernels index with it.
#pragma once

#include <new>

#include "moe/core/error.hpp"
#include "moe/dispatch/capacity_plan.hpp"

namespace moe::detail {

/// C = groups x group C, and the E * C slots it makes, refused when they do not fit an index.
inline Index plan_capacity(Index num_experts, Index num_groups, Index group_capacity) {
  const Index capacity = checked_mul(num_groups, group_capacity, "expert capacity");
  checked_mul(num_experts, capacity, "expert capacity");
  return capacity;
}

/// Sets `vector` to `size` values of `value`, a failed allocation named as the slots of E experts
/// at capacity C.
inline void fill_slots(IndexVector& vector, Index size, Index value, Index experts,
                       Index capacity) {
  try {
    vector.setConstant(size, value);
  } catch (const std::bad_alloc&) {
    fail("expert capacity", "a plan whose E * C slots fit in memory",
         concat(experts, " * ", capacity, " = ", size, " slots"));
  }
}

template <class S>
void finalize_capacity_plan(CapacityPlan<S>& plan) {
  const Index slots = plan.num_slots();
  fill_slots(plan.slot_entry, slots, -1, plan.num_experts, plan.capacity);
  fill_slots(plan.slot_token, slots, -1, plan.num_experts, plan.capacity);
  plan.kept.setZero(plan.num_experts);
  plan.dropped.setZero(plan.num_experts);
  plan.tokens_without_expert = 0;
  for (Index t = 0; t < plan.num_tokens; ++t) {
    bool any = false;
    Index unused = 0;
    for (Index i = plan.token_offsets[t]; i < plan.token_offsets[t + 1]; ++i) {
      const Index slot = plan.entry_slot[i];
      if (plan.entry_expert[i] == kUnusedSlot) {  // neither kept nor dropped
        ++unused;
        continue;
      }
      if (slot >= 0) {
        plan.slot_entry[slot] = i;
        plan.slot_token[slot] = t;
        ++plan.kept[plan.entry_expert[i]];
        any = true;
      } else {
        ++plan.dropped[plan.entry_expert[i]];
      }
    }
    // Left behind: no entry kept, unless every entry was an unused slot (the token chose none).
    const Index entries = plan.token_offsets[t + 1] - plan.token_offsets[t];
    if (!any && (entries == 0 || unused < entries)) ++plan.tokens_without_expert;
  }
  plan.total_kept = plan.kept.sum();
  plan.total_dropped = plan.dropped.sum();
}

/// Checks that `plan` is whole and consistent, in O(entries + slots): what the kernels index with
/// (offsets, slots, tokens, entries) is in range, and the arrays have the plan's sizes. A plan is
/// plain data the caller may have built or edited.
template <class S>
void require_capacity_plan(const CapacityPlan<S>& plan) {
  const Index tokens = plan.num_tokens, experts = plan.num_experts, slots = plan.num_slots();
  require(tokens >= 0 && experts >= 0 && plan.capacity >= 0, "plan",
          "non-negative num_tokens, num_experts and capacity",
          concat(tokens, ", ", experts, ", ", plan.capacity));
  checked_mul(experts, plan.capacity, "plan.capacity");
  require(plan.token_offsets.size() == tokens + 1, "plan.token_offsets",
          concat("size T + 1 = ", tokens + 1), plan.token_offsets.size());
  const Index entries = plan.num_entries();
  require(plan.token_offsets[0] == 0 && plan.token_offsets[tokens] == entries, "plan.token_offsets",
          concat("offsets from 0 to the entries (", entries, ")"),
          concat(plan.token_offsets[0], " to ", plan.token_offsets[tokens]));
  for (Index t = 0; t < tokens; ++t)
    if (plan.token_offsets[t + 1] < plan.token_offsets[t])
      fail("plan.token_offsets", "non-decreasing offsets", concat("a decrease at token ", t));
  // Every array the kernels index, each named by its own size (entry_slot's is num_entries()).
  const auto require_size = [](const char* argument, Index size, Index expected, const char* what) {
    require(size == expected, argument, concat("size ", what, " = ", expected), size);
  };
  require_size("plan.entry_expert", plan.entry_expert.size(), entries, "entries");
  require_size("plan.entry_weight", plan.entry_weight.size(), entries, "entries");
  require_size("plan.slot_token", plan.slot_token.size(), slots, "E * capacity");
  require_size("plan.slot_entry", plan.slot_entry.size(), slots, "E * capacity");
  if (plan.renormalized)
    require_size("plan.survivor_sum", plan.survivor_sum.size(), tokens, "T (renormalized)");
  for (Index i = 0; i < entries; ++i) {
    const Index e = plan.entry_expert[i], s = plan.entry_slot[i];
    if ((e < 0 || e >= experts) && !(e == kUnusedSlot && s == -1))
      fail("plan.entry_expert", concat("experts in [0, ", experts, "), or -1 without a slot"),
           concat(e, " at entry ", i));
    if (s < -1 || s >= slots || (s >= 0 && s / plan.capacity != e))
      fail("plan.entry_slot", "-1 or a slot of the entry's expert",
           concat(s, " at entry ", i, " of expert ", e));
  }
  for (Index s = 0; s < slots; ++s) {
    const Index t = plan.slot_token[s], i = plan.slot_entry[s];
    if (t < -1 || t >= tokens || i < -1 || i >= entries || (t < 0) != (i < 0))
      fail("plan.slot_token", "-1, or a token and its entry",
           concat("token ", t, " and entry ", i, " at slot ", s));
  }
}

}  // namespace moe::detail
