// Group-limited (device/node-limited) top-k: DeepSeek-V3's n_group / topk_group.
#pragma once

#include <limits>

#include "moe/routing/config.hpp"
#include "moe/routing/topk.hpp"

namespace moe {

/// Keeps the `groups_selected` best of `num_groups` equal expert groups in one token's selection
/// scores and masks the others with -inf (or 0, Hugging Face's variant). A group's score is the
/// sum of its config.group_score_terms() best scores, added best first (GroupScore); equal groups
/// go to the lower group index. `group_scratch` needs room for 2 * num_groups + terms values,
/// `group_ids` for max(num_groups, terms) ids.
template <class S>
void mask_unselected_groups(const RouterConfig& config, S* selection, S* group_scratch,
                            ExpertId* group_ids) {
  const Index groups = config.num_groups;
  const Index per_group = config.num_experts / groups;
  const Index terms = config.group_score_terms();
  S* best = group_scratch + 2 * groups;
  for (Index g = 0; g < groups; ++g) {
    detail::top_k_unchecked(selection + g * per_group, per_group, terms, group_ids, best);
    S score = best[0];
    for (Index j = 1; j < terms; ++j) score += best[j];
    group_scratch[g] = score;
  }
  S* kept = group_scratch + groups;
  detail::top_k_unchecked(group_scratch, groups, config.groups_selected, group_ids, kept);
  const S masked =
      config.group_mask == GroupMask::neg_inf ? -std::numeric_limits<S>::infinity() : S(0);
  for (Index g = 0; g < groups; ++g) {
    bool selected = false;
    for (Index j = 0; j < config.groups_selected; ++j) selected = selected || group_ids[j] == g;
    if (!selected)
      for (Index e = 0; e < per_group; ++e) selection[g * per_group + e] = masked;
  }
}

}  // namespace moe
