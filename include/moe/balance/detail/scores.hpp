// Score transforms the balancing losses define for themselves (softmax, sigmoid, division by the
// row sum) with their backward passes, and the checks on expert ids. Row math runs in double so
// that float and double inputs lose nothing before the final cast.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/routing/config.hpp"

namespace moe::detail {

/// softmax over each row, max-subtracted.
template <class S>
RowMatrix<double> softmax_rows(const ConstMatrixRef<S>& logits) {
  RowMatrix<double> p(logits.rows(), logits.cols());
  for (Index t = 0; t < logits.rows(); ++t) {
    double m = -std::numeric_limits<double>::infinity();
    for (Index e = 0; e < logits.cols(); ++e) m = std::max(m, static_cast<double>(logits(t, e)));
    double sum = 0;
    for (Index e = 0; e < logits.cols(); ++e) {
      p(t, e) = std::exp(static_cast<double>(logits(t, e)) - m);
      sum += p(t, e);
    }
    for (Index e = 0; e < logits.cols(); ++e) p(t, e) /= sum;
  }
  return p;
}

inline double sigmoid(double z) {
  return z >= 0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z));
}

template <class S>
RowMatrix<double> sigmoid_rows(const ConstMatrixRef<S>& logits) {
  RowMatrix<double> s(logits.rows(), logits.cols());
  for (Index t = 0; t < logits.rows(); ++t)
    for (Index e = 0; e < logits.cols(); ++e) s(t, e) = sigmoid(static_cast<double>(logits(t, e)));
  return s;
}

/// Scores of the given function over all experts.
template <class S>
RowMatrix<double> score_rows(const ConstMatrixRef<S>& logits, ScoreFunction fn) {
  return fn == ScoreFunction::softmax ? softmax_rows<S>(logits) : sigmoid_rows<S>(logits);
}

/// dL/dz from dL/dp through p = softmax(z): p_j (g_j - sum_i p_i g_i).
inline void softmax_backward_inplace(const RowMatrix<double>& p, RowMatrix<double>& g) {
  for (Index t = 0; t < p.rows(); ++t) {
    double dot = 0;
    for (Index e = 0; e < p.cols(); ++e) dot += p(t, e) * g(t, e);
    for (Index e = 0; e < p.cols(); ++e) g(t, e) = p(t, e) * (g(t, e) - dot);
  }
}

/// dL/dz from dL/ds through s = sigmoid(z): g s (1 - s).
inline void sigmoid_backward_inplace(const RowMatrix<double>& s, RowMatrix<double>& g) {
  g.array() *= s.array() * (1.0 - s.array());
}

inline void score_backward_inplace(const RowMatrix<double>& s, ScoreFunction fn,
                                   RowMatrix<double>& g) {
  if (fn == ScoreFunction::softmax)
    softmax_backward_inplace(s, g);
  else
    sigmoid_backward_inplace(s, g);
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

/// The k best experts of each row, highest first, ties to the lower expert index.
template <class Matrix>
ExpertIdMatrix top_k_rows(const Matrix& scores, Index k) {
  ExpertIdMatrix ids(scores.rows(), k);
  std::vector<ExpertId> order(static_cast<std::size_t>(scores.cols()));
  for (Index t = 0; t < scores.rows(); ++t) {
    for (Index e = 0; e < scores.cols(); ++e)
      order[static_cast<std::size_t>(e)] = static_cast<ExpertId>(e);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](ExpertId a, ExpertId b) {
      const auto va = scores(t, a), vb = scores(t, b);
      return va > vb || (va == vb && a < b);
    });
    for (Index j = 0; j < k; ++j) ids(t, j) = order[static_cast<std::size_t>(j)];
  }
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
