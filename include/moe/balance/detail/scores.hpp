// Score transforms the balancing losses define for themselves (the router's softmax or sigmoid,
// division by the row sum) with their backward passes, and the checks on expert ids. The losses
// work in double so that float and double inputs lose nothing before the final cast.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/routing/config.hpp"
#include "moe/routing/routing.hpp"
#include "moe/routing/scoring.hpp"
#include "moe/routing/topk.hpp"

namespace moe::detail {

/// Scores of `fn` over all experts, computed in double.
template <class S>
RowMatrix<double> score_rows(const ConstMatrixRef<S>& logits, ScoreFunction fn) {
  RowMatrix<double> s;
  moe::score_rows<double>(fn, logits.template cast<double>(), s);
  return s;
}

/// dL/dz from dL/ds through the scores of `fn`, in place.
inline void score_backward_inplace(const RowMatrix<double>& s, ScoreFunction fn,
                                   RowMatrix<double>& g) {
  g = moe::score_rows_backward<double>(fn, s, g);
}

/// s'_te = s_te / sum_j s_tj (DeepSeek-V3's normalized affinities). A zero row stays zero.
inline RowMatrix<double> sum_normalize_rows(const RowMatrix<double>& s) {
  RowMatrix<double> out(s.rows(), s.cols());
  for (Index t = 0; t < s.rows(); ++t) {
    const double sum = s.row(t).sum();
    if (sum > 0)
      out.row(t) = s.row(t) / sum;
    else
      out.row(t).setZero();
  }
  return out;
}

/// dL/ds from dL/ds' through s' = s / sum(s): (g_e - sum_j g_j s'_j) / sum(s).
inline void sum_normalize_backward_inplace(const RowMatrix<double>& s,
                                           const RowMatrix<double>& normalized,
                                           RowMatrix<double>& g) {
  for (Index t = 0; t < s.rows(); ++t) {
    const double sum = s.row(t).sum();
    if (!(sum > 0)) {
      g.row(t).setZero();
      continue;
    }
    const double dot = g.row(t).dot(normalized.row(t));
    for (Index e = 0; e < s.cols(); ++e) g(t, e) = (g(t, e) - dot) / sum;
  }
}

/// The k best experts of each row, highest first, ties to the lower expert index (moe::top_k).
template <class S>
ExpertIdMatrix top_k_rows(const ConstMatrixRef<S>& scores, Index k) {
  ExpertIdMatrix ids;
  RowMatrix<S> selected;
  moe::top_k_rows<S>(scores, k, ids, selected);
  return ids;
}

}  // namespace moe::detail
