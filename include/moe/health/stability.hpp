// Routing stability under bfloat16: how many tokens' top-k selections change when the router's
// logits are rounded to bfloat16 and ranked again, a predictor of train/inference mismatch for a
// router trained with float32 logits and served with bfloat16 ones (or the reverse).
#pragma once

#include <algorithm>
#include <vector>

#include <Eigen/Core>

#include "moe/core/bfloat16.hpp"
#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/health/detail/row_blocks.hpp"
#include "moe/health/detail/selection_edge.hpp"
#include "moe/routing/topk.hpp"

namespace moe {

/// Selections compared, and those that bfloat16 logits change.
struct Bf16Stability {
  Index tokens = 0;           ///< rows whose logits are all finite: the selections compared
  Index flipped_tokens = 0;   ///< tokens whose top-k set changed (<= tokens)
  Index flipped_choices = 0;  ///< sum over tokens of |K \ K'|, experts swapped out (<= tokens k)
};

/// Selections of the router's own precision against those of the rounded operands.
struct Bf16WhatIf {
  Index tokens = 0;           ///< tokens compared
  Index flipped_tokens = 0;   ///< tokens whose set of experts changed
  Index flipped_choices = 0;  ///< sum over tokens of |K \ K'|: experts swapped out
  std::vector<Index> lost;    ///< [E] tokens expert e lost under rounding (e in K \ K')
  std::vector<Index> gained;  ///< [E] tokens expert e gained (e in K' \ K)
};

namespace detail {

/// Experts of the top-k of a row (values, ties to the lower index) missing from the top-k of its
/// bfloat16 rounding: |K \ K'|. `values` holds the row; the other buffers hold k entries.
template <class S>
Index bf16_swapped_out(const Eigen::Array<S, 1, Eigen::Dynamic>& values, Index k,
                       Eigen::Array<float, 1, Eigen::Dynamic>& rounded, std::vector<ExpertId>& ids,
                       std::vector<ExpertId>& kept, std::vector<S>& selected,
                       std::vector<float>& selected_rounded) {
  const Index experts = values.size();
  for (Index e = 0; e < experts; ++e) rounded[e] = round_to_bfloat16(values[e]);
  top_k_unchecked(values.data(), experts, k, ids.data(), selected.data());
  top_k_unchecked(rounded.data(), experts, k, kept.data(), selected_rounded.data());
  std::sort(kept.begin(), kept.end());
  Index out = 0;
  for (ExpertId e : ids) out += std::binary_search(kept.begin(), kept.end(), e) ? 0 : 1;
  return out;
}

/// bf16_stability with the router's choices as a hint. Rounding is monotone (x <= y gives
/// bf16(x) <= bf16(y)), so a row whose chosen experts are k distinct ones with lowest logit a
/// strictly above the highest logit b left out keeps its set exactly when bf16(a) > bf16(b); only
/// rows where the two meet in one bfloat16 value, or whose choices are not the logits' strict
/// top-k (a selection bias, a group limit, a tie), are ranked again. `ids` may be null.
template <class Z>
Bf16Stability bf16_stability_hinted(const Eigen::DenseBase<Z>& logits, Index top_k,
                                    const ExpertIdMatrix* ids) {
  using S = typename Z::Scalar;
  const auto& z = logits.derived();
  const Index rows = z.rows(), experts = z.cols();
  std::vector<Bf16Stability> partial(static_cast<std::size_t>(health_block_count(rows)));
  for_each_row_block(rows, experts, [&](Index b, Index first, Index count) {
    Eigen::Array<S, 1, Eigen::Dynamic> scratch(experts);
    Eigen::Array<float, 1, Eigen::Dynamic> rounded(experts);
    std::vector<ExpertId> ranked(static_cast<std::size_t>(top_k)), kept(ranked.size());
    std::vector<S> selected(ranked.size());
    std::vector<float> selected_rounded(ranked.size());
    Bf16Stability& out = partial[static_cast<std::size_t>(b)];
    for (Index t = first; t < first + count; ++t) {
      const auto row = z.row(t).array();
      if (!copy_row_if_finite(row, scratch)) continue;
      ++out.tokens;
      if (top_k == experts) continue;  // every expert chosen, rounded or not
      if (ids != nullptr) {
        const SelectionEdge<S> edge = selection_edge(scratch, ids->row(t).data(), top_k);
        if (edge.distinct && edge.lowest_chosen > edge.highest_left &&
            round_to_bfloat16(edge.lowest_chosen) > round_to_bfloat16(edge.highest_left))
          continue;
        scratch = row;  // selection_edge masked the chosen entries
      }
      const Index swapped =
          bf16_swapped_out(scratch, top_k, rounded, ranked, kept, selected, selected_rounded);
      out.flipped_tokens += swapped > 0 ? 1 : 0;
      out.flipped_choices += swapped;
    }
  });
  Bf16Stability total;
  for (const auto& part : partial) {
    total.tokens += part.tokens;
    total.flipped_tokens += part.flipped_tokens;
    total.flipped_choices += part.flipped_choices;
  }
  return total;
}

}  // namespace detail

/// Tokens whose top-k selection changes when the logits [T, E] are rounded to bfloat16
/// (round_to_bfloat16) and ranked again: K = top-k of z_t and K' = top-k of bf16(z_t), both by
/// value with ties to the lower expert index (moe::top_k), compared as sets (an order change
/// inside the set does not count). Ranking the logits is the selection of every monotone score
/// function without a selection bias or group limit: softmax before or after top-k, sigmoid.
/// Rows holding a non-finite logit are left out (not counted in `tokens`).
template <class Z>
Bf16Stability bf16_stability(const Eigen::DenseBase<Z>& logits, Index top_k) {
  require(logits.cols() >= 1, "logits", "at least one column (expert)", logits.cols());
  require(top_k >= 1 && top_k <= logits.cols(), "top_k",
          detail::concat("1 <= top_k <= number of experts (", logits.cols(), ")"), top_k);
  return detail::bf16_stability_hinted(logits, top_k, nullptr);
}

}  // namespace moe
