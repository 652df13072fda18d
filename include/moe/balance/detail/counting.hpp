// Per-expert counts of routed (token, choice) pairs, shared by the auxiliary losses and the bias
// balancer so that both read padding and dropped choices the same way.
#pragma once

#include "moe/balance/token_mask.hpp"
#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe::detail {

/// What a choice dropped for capacity contributes to the counts (see moe::DroppedChoices).
enum class DropRule { counted, excluded, expert_zero };

/// Adds 1 to counts(domain_of(t), e) for every counted choice of every real token; an unused slot
/// (kUnusedSlot) counts nowhere.
/// `choices` is how many leading columns of expert_ids are counted (1 for first-choice forms).
template <class Counts, class DomainOf>
void add_expert_counts(const ExpertIdMatrix& expert_ids, Index choices, const TokenMask& mask,
                       const ChoiceMask& kept, DropRule rule, DomainOf&& domain_of,
                       Counts& counts) {
  for (Index t = 0; t < expert_ids.rows(); ++t) {
    if (!is_real_token(mask, t)) continue;
    const Index d = domain_of(t);
    for (Index j = 0; j < choices; ++j) {
      Index e = expert_ids(t, j);
      if (e == kUnusedSlot) continue;
      if (kept.size() != 0 && !kept(t, j)) {
        if (rule == DropRule::excluded) continue;
        if (rule == DropRule::expert_zero) e = 0;
      }
      counts(d, e) += 1;
    }
  }
}

inline void require_choice_mask(const ChoiceMask& kept, Index num_tokens, Index top_k,
                                const char* argument) {
  if (kept.size() != 0) require_shape(kept, argument, num_tokens, top_k);
}

}  // namespace moe::detail
