// Top-k selection over one token's expert scores, ties to the lower expert index.
#pragma once

#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe {
namespace detail {

// Insertion into a descending list of at most K entries. A new value goes after every entry it does
// not strictly beat, so among equal values the one seen first (the lower expert id) stays ahead.
template <int K, class S>
void top_k_insertion(const S* values, Index num_experts, ExpertId* ids, S* selected) {
  S best[K] = {};
  ExpertId best_id[K] = {};
  int filled = 0;
  for (Index e = 0; e < num_experts; ++e) {
    const S v = values[e];
    if (filled == K && !(v > best[K - 1])) continue;
    int pos = filled < K ? filled++ : K - 1;
    while (pos > 0 && v > best[pos - 1]) {
      best[pos] = best[pos - 1];
      best_id[pos] = best_id[pos - 1];
      --pos;
    }
    best[pos] = v;
    best_id[pos] = static_cast<ExpertId>(e);
  }
  std::copy(best, best + K, selected);
  std::copy(best_id, best_id + K, ids);
}

// Runtime-k insertion straight into the outputs: O(E k), for the uncommon small k.
template <class S>
void top_k_insertion_any(const S* values, Index num_experts, Index k, ExpertId* ids, S* selected) {
  Index filled = 0;
  for (Index e = 0; e < num_experts; ++e) {
    const S v = values[e];
    if (filled == k && !(v > selected[k - 1])) continue;
    Index pos = filled < k ? filled++ : k - 1;
    while (pos > 0 && v > selected[pos - 1]) {
      selected[pos] = selected[pos - 1];
      ids[pos] = ids[pos - 1];
      --pos;
    }
    selected[pos] = v;
    ids[pos] = static_cast<ExpertId>(e);
  }
}

// Large k: partial sort of expert ids, O(E log k), with per-thread scratch that grows only once.
template <class S>
void top_k_sort(const S* values, Index num_experts, Index k, ExpertId* ids, S* selected) {
  thread_local std::vector<ExpertId> order;
  order.resize(static_cast<std::size_t>(num_experts));
  std::iota(order.begin(), order.end(), ExpertId{0});
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [values](ExpertId a, ExpertId b) {
                      return values[a] > values[b] || (!(values[b] > values[a]) && a < b);
                    });
  for (Index j = 0; j < k; ++j) {
    ids[j] = order[static_cast<std::size_t>(j)];
    selected[j] = values[order[static_cast<std::size_t>(j)]];
  }
}

}  // namespace detail

/// The k largest of `values[0..E)` in descending order, ties to the lower index
/// (torch.topk's ordering with the tie rule pinned down; argmax for k = 1).
/// Values may be -inf (masked experts); they must not be NaN.
template <class S>
void top_k(const S* values, Index num_experts, Index k, ExpertId* ids, S* selected) {
  switch (k) {
    case 1:
      return detail::top_k_insertion<1>(values, num_experts, ids, selected);
    case 2:
      return detail::top_k_insertion<2>(values, num_experts, ids, selected);
    case 4:
      return detail::top_k_insertion<4>(values, num_experts, ids, selected);
    case 6:
      return detail::top_k_insertion<6>(values, num_experts, ids, selected);
    case 8:
      return detail::top_k_insertion<8>(values, num_experts, ids, selected);
    default:
      if (k <= 16) return detail::top_k_insertion_any(values, num_experts, k, ids, selected);
      return detail::top_k_sort(values, num_experts, k, ids, selected);
  }
}

/// Row-wise top-k of a `[T, E]` matrix into `ids` and `selected`, both `[T, k]`.
template <class S>
void top_k_rows(const ConstMatrixRef<S>& values, Index k, ExpertIdMatrix& ids,
                RowMatrix<S>& selected) {
  require(k >= 1 && k <= values.cols(), "k", detail::concat("1 <= k <= E (", values.cols(), ")"),
          k);
  ids.resize(values.rows(), k);
  selected.resize(values.rows(), k);
  for (Index t = 0; t < values.rows(); ++t)
    top_k(values.row(t).data(), values.cols(), k, ids.row(t).data(), selected.row(t).data());
}

}  // namespace moe
