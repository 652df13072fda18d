// The edge of one token's top-k selection: the lowest chosen value and the highest value left
// out. When the first is at least the second, the chosen set is a top-k set of the row, so the
// k-th and (k+1)-th largest values are these two without ranking the row again.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "moe/core/types.hpp"
#include "moe/health/detail/row_blocks.hpp"

namespace moe::detail {

template <class S>
struct SelectionEdge {
  S lowest_chosen, highest_left;
  bool distinct;  ///< false when `ids` repeats an expert: then it is no top-k set at all
};

/// Copies one row into `scratch` (a caller's buffer, so a pass allocates once per block) and says
/// whether every value is finite: x - x sums to 0 exactly then, and the sum runs in packets where
/// Eigen 3.4's isFinite() walks coefficient by coefficient.
template <class Row, class S>
bool copy_row_if_finite(const Row& row, Eigen::Array<S, 1, Eigen::Dynamic>& scratch) {
  scratch = row;
  return sums_finite(scratch);
}

/// min_j v[ids[j]] and max over the experts not in ids (-inf when every expert is chosen) of a
/// finite row v held in `scratch`, which is left with the chosen entries set to -inf.
template <class S>
SelectionEdge<S> selection_edge(Eigen::Array<S, 1, Eigen::Dynamic>& scratch, const ExpertId* ids,
                                Index k) {
  constexpr S minus_inf = -std::numeric_limits<S>::infinity();
  S lowest = std::numeric_limits<S>::infinity();
  bool distinct = true;
  for (Index j = 0; j < k; ++j) {
    // An unused slot (kUnusedSlot) is no hint: the row is ranked again.
    if (ids[j] < 0) return {lowest, minus_inf, false};
    S& v = scratch[ids[j]];
    distinct = distinct && v != minus_inf;  // finite rows: -inf marks an expert already seen
    lowest = std::min(lowest, v == minus_inf ? lowest : v);
    v = minus_inf;
  }
  const S highest = k < scratch.size() ? scratch.maxCoeff() : minus_inf;
  return {lowest, highest, distinct};
}

/// The 1st, 10th and 50th percentiles of `values` (numpy's linear rule, as percentile_sorted) by
/// selection instead of a sort. The median's nth_element leaves the smaller half in front, where
/// the 10th percentile is selected, and the 1st in front of that: about two passes for the three.
/// Reorders `values`; NaN when empty.
inline std::array<double, 3> low_percentiles(std::vector<double>& values) {
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  if (values.empty()) return {nan, nan, nan};
  std::array<double, 3> out{};
  constexpr double q[3] = {1.0, 10.0, 50.0};
  // [begin, end) holds the end - begin smallest values; `next` is the least value from end on.
  auto end = values.end();
  double next = nan;
  for (int i = 2; i >= 0; --i) {
    const double h = q[i] / 100.0 * static_cast<double>(values.size() - 1);
    const auto at = values.begin() + static_cast<std::ptrdiff_t>(h);
    std::nth_element(values.begin(), at, end);
    const double low = *at, frac = h - std::floor(h);
    // The value of the next rank up: the least after `at` in the range, or the one from end on.
    const double above = at + 1 < end ? *std::min_element(at + 1, end) : next;
    out[static_cast<std::size_t>(i)] = frac > 0.0 ? low + frac * (above - low) : low;
    end = at + 1;
    next = above;
  }
  return out;
}

}  // namespace moe::detail
