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
#include "moe/routing/scoring.hpp"
#include "moe/routing/topk.hpp"

namespace moe::detail {

/// Scores of `fn` over all experts, computed in double.
template <class S>
RowMatrix<double> score_rows(const ConstMatrixRef<S>& logits, ScoreFunction fn) {
  const RowMatrix<double> z = logits.template cast<double>();
  RowMatrix<double> s;
  if (fn == ScoreFunction::softmax)
    moe::softmax_rows<double>(z, s);
  else
    moe::sigmoid<double>(z, s);
  return s;
}

/// dL/dz from dL/ds through s = softmax(z) or sigmoid(z), in place.
inline void score_backward_inplace(const RowMatrix<double>& s, ScoreFunction fn,
                                   RowMatrix<double>& g) {
  g = fn == ScoreFunction::softmax ? moe::softmax_rows_backward<double>(s, g)
                                   : moe::sigmoid_backward<double>(s, g);
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

/// expert_ids must be [T, k] with every id in [0, E) and no id twice in a row.
inline void require_expert_ids(const ExpertIdMatrix& ids, Index num_tokens, Index top_k,
                               Index num_experts, const char* argument) {
  require_shape(ids, argument, num_tokens, top_k);
  for (Index t = 0; t < ids.rows(); ++t)
    for (Index j = 0; j < ids.cols(); ++j) {
      const ExpertId id = ids(t, j);
      if (id < 0 || id >= num_experts)
        fail(argument, concat("expert ids in [0, ", num_experts, ")"),
             concat(id, " at row ", t, ", column ", j));
      for (Index i = 0; i < j; ++i)
        if (ids(t, i) == id)
          fail(argument, "distinct expert ids in each row",
               concat("expert ", id, " twice in row ", t));
    }
}

}  // namespace moe::detail
