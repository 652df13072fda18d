// How close each token's top-k selection is to changing: the score margin between the k-th and
// the (k+1)-th largest score of the row, summarized by its low percentiles.
#pragma once

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/health/detail/row_blocks.hpp"
#include "moe/health/detail/selection_edge.hpp"
#include "moe/routing/topk.hpp"

namespace moe {

/// Percentiles over tokens of m_t = s_(k) - s_(k+1), the k-th minus the (k+1)-th largest score
/// of token t: how far the token is from swapping its last chosen expert for the best one left
/// out (0: a tie at the edge). Always >= 0. With k = E no expert is left out and m_t is undefined:
/// such tokens (and rows holding a non-finite score) are left out; every percentile is NaN when
/// no token is left.
struct TopkMargins {
  double p1 = std::numeric_limits<double>::quiet_NaN();   ///< 1st percentile
  double p10 = std::numeric_limits<double>::quiet_NaN();  ///< 10th percentile
  double p50 = std::numeric_limits<double>::quiet_NaN();  ///< median
  Index tokens = 0;                                       ///< tokens with a margin
};

namespace detail {

/// topk_margins with the router's choices as a hint: where the chosen experts of a row are k
/// distinct ones whose lowest score is >= every score left out (the router ranked by these
/// scores), the margin is read off the selection's edge in one pass; any other row (a selection
/// bias, a group limit, or ranking by logits that rounding made disagree with the scores) is
/// ranked again. `ids` may be null: every row is then ranked.
template <class P>
TopkMargins topk_margins_hinted(const Eigen::DenseBase<P>& scores, Index top_k,
                                const ExpertIdMatrix* ids) {
  using S = typename P::Scalar;
  const auto& p = scores.derived();
  const Index rows = p.rows(), experts = p.cols();
  TopkMargins out;
  if (top_k >= experts || rows == 0) return out;  // k = E: no margin anywhere
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> margin(static_cast<std::size_t>(rows), nan);
  for_each_row_block(rows, experts, [&](Index, Index first, Index count) {
    Eigen::Array<S, 1, Eigen::Dynamic> scratch(experts);
    std::vector<ExpertId> ranked_ids(static_cast<std::size_t>(top_k + 1));
    std::vector<S> ranked(static_cast<std::size_t>(top_k + 1));
    for (Index t = first; t < first + count; ++t) {
      const auto row = p.row(t).array();
      if (!copy_row_if_finite(row, scratch)) continue;
      if (ids != nullptr) {
        const SelectionEdge<S> edge = selection_edge(scratch, ids->row(t).data(), top_k);
        if (edge.distinct && edge.lowest_chosen >= edge.highest_left) {
          margin[static_cast<std::size_t>(t)] =
              double(edge.lowest_chosen) - double(edge.highest_left);
          continue;
        }
        scratch = row;  // selection_edge masked the chosen entries
      }
      top_k_unchecked(scratch.data(), experts, top_k + 1, ranked_ids.data(), ranked.data());
      margin[static_cast<std::size_t>(t)] = double(ranked[static_cast<std::size_t>(top_k - 1)]) -
                                            double(ranked[static_cast<std::size_t>(top_k)]);
    }
  });
  std::vector<double> defined;
  defined.reserve(margin.size());
  for (double m : margin)
    if (!std::isnan(m)) defined.push_back(m);
  out.tokens = static_cast<Index>(defined.size());
  const std::array<double, 3> low = low_percentiles(defined);
  out.p1 = low[0];
  out.p10 = low[1];
  out.p50 = low[2];
  return out;
}

}  // namespace detail

/// Top-k margins of the scores [T, E] (probabilities or sigmoid scores) for k = top_k: the 1st,
/// 10th and 50th percentiles over tokens of s_(k) - s_(k+1) (numpy's linear interpolation), the
/// score gap a perturbation must close to change the token's selection. Rows with a non-finite
/// score are left out; k = E leaves every token out (NaN percentiles, tokens = 0).
template <class P>
TopkMargins topk_margins(const Eigen::DenseBase<P>& scores, Index top_k) {
  require(scores.cols() >= 1, "scores", "at least one column (expert)", scores.cols());
  require(top_k >= 1 && top_k <= scores.cols(), "top_k",
          detail::concat("1 <= top_k <= number of experts (", scores.cols(), ")"), top_k);
  return detail::topk_margins_hinted(scores, top_k, nullptr);
}

}  // namespace moe
