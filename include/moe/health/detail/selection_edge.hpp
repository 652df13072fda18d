// The edge of one token's top-k selection: the lowest chosen value and the highest value left
// out. When the first is at least the second, the chosen set is a top-k set of the row, so the
// k-th and (k+1)-th largest values are these two without ranking the row again.
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "moe/core/types.hpp"

namespace moe::detail {

template <class S>
struct SelectionEdge {
  S lowest_chosen, highest_left;
  bool distinct;  ///< false when `ids` repeats an expert: then it is no top-k set at all
};

/// min_j row[ids[j]] and max over the experts not in ids (-inf when every expert is chosen), for a
/// row of finite values. `scratch` is a caller's buffer, so a pass over many rows allocates once.
template <class Row, class S>
SelectionEdge<S> selection_edge(const Row& row, const ExpertId* ids, Index k,
                                Eigen::Array<S, 1, Eigen::Dynamic>& scratch) {
  constexpr S minus_inf = -std::numeric_limits<S>::infinity();
  scratch = row;
  S lowest = std::numeric_limits<S>::infinity();
  bool distinct = true;
  for (Index j = 0; j < k; ++j) {
    S& v = scratch[ids[j]];
    distinct = distinct && v != minus_inf;  // finite rows: -inf marks an expert already seen
    lowest = std::min(lowest, v == minus_inf ? lowest : v);
    v = minus_inf;
  }
  const S highest = k < scratch.size() ? scratch.maxCoeff() : minus_inf;
  return {lowest, highest, distinct};
}

/// q-th percentile of `values` with numpy's linear rule (as percentile_sorted), by selection
/// instead of a sort: O(n) per call. Reorders `values`; NaN when empty.
inline double percentile_unsorted(std::vector<double>& values, double q) {
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  const double h = q / 100.0 * static_cast<double>(values.size() - 1);
  const auto lo = static_cast<std::size_t>(h);
  const auto at = values.begin() + static_cast<std::ptrdiff_t>(lo);
  std::nth_element(values.begin(), at, values.end());
  const double low = *at, frac = h - static_cast<double>(lo);
  if (frac == 0.0 || lo + 1 == values.size()) return low;
  const double high = *std::min_element(at + 1, values.end());
  return low + frac * (high - low);
}

}  // namespace moe::detail
