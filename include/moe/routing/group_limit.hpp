// Group-limited (device/node-limited) top-k: DeepSeek-V3's n_group / topk_group.
#pragma once

#include <limits>

#include "moe/routing/config.hpp"
#include "moe/routing/topk.hpp"

namespace moe {

/// Keeps the `groups_selected` best of `num_groups` equal expert groups in one token's selection
/// scores and masks the others with -inf (or 0, Hugging Face's variant). The group score is the sum
/// of the group's two best scores (DeepSeek-V3 with bias) or its max; equal groups go to the lower
/// group index. `group_scratch` needs room for 2 * num_groups values.
template <class S>
void mask_unselected_groups(const RouterConfig& config, S* selection, S* group_scratch,
                            ExpertId* group_ids) {
  const Index groups = config.num_groups;
  const Index per_group = config.num_experts / groups;
  S best[2] = {};
  ExpertId best_ids[2] = {};
  for (Index g = 0; g < groups; ++g) {
    const S* members = selection + g * per_group;
    if (config.group_score == GroupScore::max) {
      detail::top_k_unchecked(members, per_group, 1, best_ids, best);
      group_scratch[g] = best[0];
    } else {
      detail::top_k_unchecked(members, per_group, 2, best_ids, best);
      group_scratch[g] = best[0] + best[1];
    }
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
