// The inputs of the golden programs, which the Python tests rebuild bit for bit (conftest.py's
// exact_inputs, test_balance.py's mixed_logits), and the names of the two precisions.
#pragma once

#include <type_traits>

#include <Eigen/Core>

#include "moe/routing/router.hpp"

namespace moe::golden {

/// Inputs the Python tests rebuild exactly: element (i, j) of a [rows, cols] matrix is
/// ((i * 7919 + j * 104729 + salt * 13) % 2001 - 1000) / 256, exactly representable in float, so
/// numpy (tests/conftest.py, `exact_inputs`) makes the same bits.
template <class S>
Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> exact_inputs(Eigen::Index rows,
                                                                               Eigen::Index cols,
                                                                               long salt) {
  Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> m(rows, cols);
  for (Eigen::Index i = 0; i < rows; ++i)
    for (Eigen::Index j = 0; j < cols; ++j)
      m(i, j) = static_cast<S>(
          static_cast<double>((i * 7919 + j * 104729 + salt * 13) % 2001 - 1000) / 256.0);
  return m;
}

/// Logits [rows, cols] that route unevenly and differently from token to token: every 7th row and
/// 11th column of exact_inputs (numpy: exact_inputs(7 rows, 11 cols, salt)[::7, ::11]).
/// exact_inputs itself shifts every column alike from row to row, which routes runs of tokens
/// alike.
template <class S>
RowMatrix<S> mixed_logits(Index rows, Index cols, long salt) {
  const RowMatrix<S> wide = exact_inputs<S>(7 * rows, 11 * cols, salt);
  RowMatrix<S> logits(rows, cols);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) logits(i, j) = wide(7 * i, 11 * j);
  return logits;
}

/// The routing of mixed_logits<float>(tokens, experts, 1) by moe::select_experts (softmax over
/// the experts, top-k, gates not renormalized).
inline Routing<float> mixed_routing(Index tokens, Index experts, Index top_k) {
  RouterConfig config;
  config.num_experts = experts;
  config.top_k = top_k;
  config.hidden = 1;  // unused: the logits are given
  Routing<float> routing;
  RowMatrix<float> selection;
  select_experts<float>(config, mixed_logits<float>(tokens, experts, 1), Vector<float>(), routing,
                        selection);
  return routing;
}

/// "float32" or "float64": the suffix of the golden files of S.
template <class S>
const char* precision_name() {
  return std::is_same_v<S, float> ? "float32" : "float64";
}

}  // namespace moe::golden
