// Top-k selection over one token's expert scores, ties to the lower expert index.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/kernels/simd.hpp"

namespace moe {
namespace detail {

// Insertion into a descending list of at most `capacity` entries. A new value goes after every
// entry it does not strictly beat, so among equal values the one seen first (the lower expert id)
// stays ahead.
template <class S>
void insert_sorted(S value, ExpertId id, Index capacity, Index& filled, S* best,
                   ExpertId* best_id) {
  if (filled == capacity && !(value > best[capacity - 1])) return;
  Index pos = filled < capacity ? filled++ : capacity - 1;
  while (pos > 0 && value > best[pos - 1]) {
    best[pos] = best[pos - 1];
    best_id[pos] = best_id[pos - 1];
    --pos;
  }
  best[pos] = value;
  best_id[pos] = id;
}

// The same placement into a full list without branches on the data: entries `value` beats shift
// down one place (a sorted list makes "beats entry j" monotone in j) and `value` lands where it
// first beats; a value that beats nothing changes nothing.
template <int K, class S>
void insert_full_branch_free(S value, ExpertId id, S* best, ExpertId* best_id) {
  for (int j = K - 1; j > 0; --j) {
    const bool beats_here = value > best[j];
    const bool beats_above = value > best[j - 1];
    best[j] = beats_here ? (beats_above ? best[j - 1] : value) : best[j];
    best_id[j] = beats_here ? (beats_above ? best_id[j - 1] : id) : best_id[j];
  }
  const bool beats_first = value > best[0];
  best[0] = beats_first ? value : best[0];
  best_id[0] = beats_first ? id : best_id[0];
}

inline constexpr Index kStackCandidates = 512;

// Top-K in two passes. Split the values into K disjoint strided groups {e : e mod K = g}: each
// group's max is at least the smallest of those maxima, so at least K values reach it and
// tau = min_g max_g is a lower bound of the K-th largest. A branch-free pass keeps the ids of the
// values >= tau (few, for any spread of scores), in index order, and only those are placed.
// The group maxima are a vertical max over rows of K values, which vectorizes.
template <int K, class S>
void top_k_filtered(const S* values, Index num_experts, ExpertId* ids, S* selected) {
  S best[K] = {};
  ExpertId best_id[K] = {};
  Index filled = 0;
  const Index full_rows = num_experts / K;
  if (full_rows >= 2) {
    S tau;
    if constexpr (K == 1) {
      tau = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>(values, num_experts).maxCoeff();
    } else {
      S group_max[K];
      std::copy(values, values + K, group_max);
      for (Index r = 1; r < full_rows; ++r)
        for (int g = 0; g < K; ++g) group_max[g] = std::max(group_max[g], values[r * K + g]);
      tau = *std::min_element(group_max, group_max + K);
    }
    // Candidate ids on the stack for the usual expert counts (a thread_local costs a TLS lookup
    // per token), on the heap beyond.
    ExpertId on_stack[kStackCandidates];
    thread_local std::vector<ExpertId> on_heap;
    ExpertId* candidates = on_stack;
    if (num_experts > kStackCandidates) {
      on_heap.resize(static_cast<std::size_t>(num_experts));
      candidates = on_heap.data();
    }
    Index count = 0;
    for (Index e = 0; e < num_experts; ++e) {
      candidates[count] = static_cast<ExpertId>(e);
      count += values[e] >= tau;
    }
    const Index head = std::min<Index>(K, count);
    for (Index c = 0; c < head; ++c)
      insert_sorted(values[candidates[c]], candidates[c], K, filled, best, best_id);
    for (Index c = head; c < count; ++c)
      insert_full_branch_free<K>(values[candidates[c]], candidates[c], best, best_id);
  } else {
    for (Index e = 0; e < num_experts; ++e)
      insert_sorted(values[e], static_cast<ExpertId>(e), K, filled, best, best_id);
  }
  std::copy(best, best + K, selected);
  std::copy(best_id, best_id + K, ids);
}

// Runtime-k insertion straight into the outputs: O(E k), for the uncommon small k.
template <class S>
void top_k_insertion_any(const S* values, Index num_experts, Index k, ExpertId* ids, S* selected) {
  Index filled = 0;
  for (Index e = 0; e < num_experts; ++e)
    insert_sorted(values[e], static_cast<ExpertId>(e), k, filled, selected, ids);
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

// Top-K of a block of kLanes<S> rows at once, a row per lane, for K <= 8: column(e) is expert e's
// packet (one value per row), placed into K sorted packets of values and ids by the branch-free
// insertion above, lane-wise. Slots start as NaN, which every value beats, so the first K experts
// fill the list in order whatever their values (-inf included); afterwards a value enters only if
// it strictly beats a slot, which keeps ties on the lower id. Once the list is full, an expert
// that beats no lane's K-th value is skipped.
template <int K, class S, class Column>
void top_k_lanes(Column&& column, Index num_experts, ExpertId* ids, Index ids_stride, S* selected,
                 Index selected_stride) {
  using Packet = simd::Packet<S>;
  Packet best[K], best_id[K];
  for (int j = 0; j < K; ++j) {
    best[j] = simd::broadcast(std::numeric_limits<S>::quiet_NaN());
    best_id[j] = simd::broadcast(S(0));
  }
  const auto beats = [](const Packet& value, const Packet& slot) {
    return simd::less_or_nan(slot, value);  // value > slot, or the slot is empty
  };
  for (Index e = 0; e < num_experts; ++e) {
    const Packet value = column(e);
    Packet beats_below = beats(value, best[K - 1]);
    if (e >= K && !simd::any(beats_below)) continue;
    const Packet id = simd::broadcast(static_cast<S>(e));
    for (int j = K - 1; j > 0; --j) {
      const Packet beats_above = beats(value, best[j - 1]);
      best[j] = simd::select(beats_below, simd::select(beats_above, best[j - 1], value), best[j]);
      best_id[j] =
          simd::select(beats_below, simd::select(beats_above, best_id[j - 1], id), best_id[j]);
      beats_below = beats_above;
    }
    best[0] = simd::select(beats_below, value, best[0]);
    best_id[0] = simd::select(beats_below, id, best_id[0]);
  }
  constexpr Index lanes = simd::kLanes<S>;
  alignas(64) S lane_values[K][lanes];
  alignas(64) S lane_ids[K][lanes];
  for (int j = 0; j < K; ++j) {
    simd::store(lane_values[j], best[j]);
    simd::store(lane_ids[j], best_id[j]);
  }
  for (Index lane = 0; lane < lanes; ++lane)
    for (int j = 0; j < K; ++j) {
      selected[lane * selected_stride + j] = lane_values[j][lane];
      ids[lane * ids_stride + j] = static_cast<ExpertId>(lane_ids[j][lane]);
    }
}

/// top_k without its checks: 1 <= k <= num_experts, no NaN among the values.
template <class S>
void top_k_unchecked(const S* values, Index num_experts, Index k, ExpertId* ids, S* selected) {
  switch (k) {
    case 1:
      return top_k_filtered<1>(values, num_experts, ids, selected);
    case 2:
      return top_k_filtered<2>(values, num_experts, ids, selected);
    case 4:
      return top_k_filtered<4>(values, num_experts, ids, selected);
    case 6:
      return top_k_filtered<6>(values, num_experts, ids, selected);
    case 8:
      return top_k_filtered<8>(values, num_experts, ids, selected);
    default:
      if (k <= 16) return top_k_insertion_any(values, num_experts, k, ids, selected);
      return top_k_sort(values, num_experts, k, ids, selected);
  }
}

/// top_k of `rows` rows starting at `values` (consecutive rows `row_stride` apart) into rows of
/// `ids` and `selected`, without checks. A whole block of simd::kLanes<S> rows with k <= 8 runs
/// lane-parallel, anything else row by row; the result is the same either way.
template <class S>
void top_k_rows_block(const S* values, Index row_stride, Index rows, Index num_experts, Index k,
                      ExpertId* ids, Index ids_stride, S* selected, Index selected_stride) {
  // Ids travel as S inside the packets: exact up to 2^digits.
  const bool ids_exact = num_experts <= (Index{1} << std::numeric_limits<S>::digits);
  if (rows == simd::kLanes<S> && k <= 8 && ids_exact) {
    const auto column = [&](Index e) { return simd::gather(values + e, row_stride); };
    switch (k) {
#define MOE_TOP_K_LANES_CASE(K) \
  case K:                       \
    return top_k_lanes<K, S>(column, num_experts, ids, ids_stride, selected, selected_stride);
      MOE_TOP_K_LANES_CASE(1)
      MOE_TOP_K_LANES_CASE(2)
      MOE_TOP_K_LANES_CASE(3)
      MOE_TOP_K_LANES_CASE(4)
      MOE_TOP_K_LANES_CASE(5)
      MOE_TOP_K_LANES_CASE(6)
      MOE_TOP_K_LANES_CASE(7)
      MOE_TOP_K_LANES_CASE(8)
#undef MOE_TOP_K_LANES_CASE
      default:
        break;
    }
  }
  for (Index r = 0; r < rows; ++r)
    top_k_unchecked(values + r * row_stride, num_experts, k, ids + r * ids_stride,
                    selected + r * selected_stride);
}

/// Checks the arguments of a top-k over E values.
inline void require_top_k(Index num_experts, Index k) {
  require(num_experts >= 1, "num_experts", ">= 1", num_experts);
  require(k >= 1 && k <= num_experts, "k", concat("1 <= k <= num_experts (", num_experts, ")"), k);
}

}  // namespace detail

/// The k largest of `values[0..E)` in descending order, ties to the lower index
/// (torch.topk's ordering with the tie rule pinned down; argmax for k = 1).
/// Values may be -inf (masked experts), not NaN; 1 <= k <= E (moe::Error otherwise).
template <class S>
void top_k(const S* values, Index num_experts, Index k, ExpertId* ids, S* selected) {
  detail::require_top_k(num_experts, k);
  for (Index e = 0; e < num_experts; ++e)
    if (std::isnan(values[e]))
      detail::fail("values", "values that are not NaN", detail::concat("nan at ", e));
  detail::top_k_unchecked(values, num_experts, k, ids, selected);
}

/// Row-wise top-k of a `[T, E]` matrix into `ids` and `selected`, both `[T, k]`.
template <class S>
void top_k_rows(const ConstMatrixRef<S>& values, Index k, ExpertIdMatrix& ids,
                RowMatrix<S>& selected) {
  detail::require_top_k(values.cols(), k);
  for (Index r = 0; r < values.rows(); ++r)
    for (Index e = 0; e < values.cols(); ++e)
      if (std::isnan(values(r, e)))
        detail::fail("values", "values that are not NaN",
                     detail::concat("nan at row ", r, ", column ", e));
  ids.resize(values.rows(), k);
  selected.resize(values.rows(), k);
  constexpr Index block = simd::kLanes<S>;
  for (Index t = 0; t < values.rows(); t += block)
    detail::top_k_rows_block(values.row(t).data(), values.outerStride(),
                             std::min(block, values.rows() - t), values.cols(), k,
                             ids.row(t).data(), ids.outerStride(), selected.row(t).data(),
                             selected.outerStride());
}

}  // namespace moe
