// Row kernels of dispatch and combine: copy, zero and weighted sum of rows of n scalars. Outputs
// too large to stay in cache are written with non-temporal (streaming) stores, as glibc's memcpy
// does: they would be evicted anyway, and streaming skips the read-for-ownership of each
// destination line, a third of the memory traffic of a copy. Sources are gathered rows, so each
// kernel prefetches the rows of a later work item while it writes (RowsAhead).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "moe/core/types.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/kernels/prefetch.hpp"
#include "moe/kernels/simd.hpp"

namespace moe::kernels {

/// Whether a kernel writing `rows` rows of n scalars streams its stores: past
/// streaming_threshold_bytes(), where the output would not stay in cache anyway.
template <class S>
bool should_stream(Index rows, Index n) {
  return static_cast<double>(rows) * static_cast<double>(n) * sizeof(S) >
         streaming_threshold_bytes();
}

namespace detail {

/// Elements before the first packet-aligned address of dst (streaming stores need one); all n when
/// dst cannot be aligned.
template <class S>
Index head_elements(const S* dst, Index n) {
  constexpr std::size_t kAlign = sizeof(simd::Packet<S>);
  const auto address = reinterpret_cast<std::uintptr_t>(dst);
  const std::size_t misaligned = address % kAlign;
  if (misaligned == 0) return 0;
  if (misaligned % sizeof(S) != 0) return n;
  return std::min<Index>(n, static_cast<Index>((kAlign - misaligned) / sizeof(S)));
}

/// Runs body(i) for i = first, first + lanes, ... while a whole packet fits in n, fetching `ahead`
/// once per cache line; returns the first i left for scalar code.
template <class S, class Body>
MOE_ALWAYS_INLINE Index packet_loop(Index first, Index n, const RowsAhead<S>& ahead, Body&& body) {
  constexpr Index kLanes = simd::kLanes<S>;
  constexpr Index kLine = std::max<Index>(kLanes, simd::kCacheLineBytes / Index{sizeof(S)});
  Index i = first;
  for (; i + kLine <= n; i += kLine) {
    ahead.fetch(i);
    for (Index v = 0; v < kLine; v += kLanes) body(i + v);
  }
  for (; i + kLanes <= n; i += kLanes) body(i);
  return i;
}

/// dst[i] = Σ_j w_j · rows[j][i] for a compile-time number of rows: the row pointers and weights
/// live in registers, where the generic loop would reload them after every store to dst (which
/// the compiler must assume may alias them).
template <bool Weighted, int Count, class S>
void sum_rows_fixed(S* dst, Index n, const S* const* rows_in, const S* weights_in, bool stream,
                    const RowsAhead<S>& ahead) {
  const S* rows[Count];
  S weights[Count];
  for (int j = 0; j < Count; ++j) {
    rows[j] = rows_in[j];
    weights[j] = Weighted ? weights_in[j] : S(1);
  }
  auto scalar = [&](Index i) {
    S acc = Weighted ? weights[0] * rows[0][i] : rows[0][i];
    for (int j = 1; j < Count; ++j) acc += Weighted ? weights[j] * rows[j][i] : rows[j][i];
    dst[i] = acc;
  };
  Index i = 0;
  if constexpr (simd::kVectorized<S>) {
    using Packet = simd::Packet<S>;
    Packet w[Count];
    for (int j = 0; j < Count; ++j) w[j] = simd::broadcast(weights[j]);
    auto sum_at = [&](Index at) {
      Packet acc =
          Weighted ? simd::mul(w[0], simd::loadu(rows[0] + at)) : simd::loadu(rows[0] + at);
      for (int j = 1; j < Count; ++j)
        acc = simd::add(
            acc, Weighted ? simd::mul(w[j], simd::loadu(rows[j] + at)) : simd::loadu(rows[j] + at));
      return acc;
    };
    const Index head = stream ? head_elements(dst, n) : 0;
    for (; i < head; ++i) scalar(i);
    if (stream)
      i = packet_loop(i, n, ahead, [&](Index at) { simd::stream(dst + at, sum_at(at)); });
    else
      i = packet_loop(i, n, ahead, [&](Index at) { simd::storeu(dst + at, sum_at(at)); });
  }
  for (; i < n; ++i) scalar(i);
}

}  // namespace detail

/// dst[i] (+)= Σ_j w_j · rows[j][i] for i < n, j = 0 .. count - 1 in order (w_j = 1 unless
/// Weighted): a product then a sum per term, never fused. With `accumulate` the sum starts from
/// dst[i], continuing an earlier batch of rows in the same left-to-right order. count >= 1.
template <bool Weighted, class S>
void sum_rows(S* dst, Index n, const S* const* rows, const S* weights, Index count, bool accumulate,
              bool stream, const RowsAhead<S>& ahead = {}) {
  if (!accumulate) {
    switch (count) {
      case 1:
        return detail::sum_rows_fixed<Weighted, 1>(dst, n, rows, weights, stream, ahead);
      case 2:
        return detail::sum_rows_fixed<Weighted, 2>(dst, n, rows, weights, stream, ahead);
      case 3:
        return detail::sum_rows_fixed<Weighted, 3>(dst, n, rows, weights, stream, ahead);
      case 4:
        return detail::sum_rows_fixed<Weighted, 4>(dst, n, rows, weights, stream, ahead);
      case 5:
        return detail::sum_rows_fixed<Weighted, 5>(dst, n, rows, weights, stream, ahead);
      case 6:
        return detail::sum_rows_fixed<Weighted, 6>(dst, n, rows, weights, stream, ahead);
      case 7:
        return detail::sum_rows_fixed<Weighted, 7>(dst, n, rows, weights, stream, ahead);
      case 8:
        return detail::sum_rows_fixed<Weighted, 8>(dst, n, rows, weights, stream, ahead);
      default:
        break;
    }
  }
  auto term = [&](Index j, Index i) { return Weighted ? weights[j] * rows[j][i] : rows[j][i]; };
  auto scalar = [&](Index i) {
    S acc = accumulate ? dst[i] + term(0, i) : term(0, i);
    for (Index j = 1; j < count; ++j) acc += term(j, i);
    dst[i] = acc;
  };
  Index i = 0;
  if constexpr (simd::kVectorized<S>) {
    auto packet_term = [&](Index j, Index at) {
      return Weighted ? simd::mul(simd::broadcast(weights[j]), simd::loadu(rows[j] + at))
                      : simd::loadu(rows[j] + at);
    };
    const Index head = stream ? detail::head_elements(dst, n) : 0;
    for (; i < head; ++i) scalar(i);
    i = detail::packet_loop(i, n, ahead, [&](Index at) {
      auto acc =
          accumulate ? simd::add(simd::loadu(dst + at), packet_term(0, at)) : packet_term(0, at);
      for (Index j = 1; j < count; ++j) acc = simd::add(acc, packet_term(j, at));
      if (stream)
        simd::stream(dst + at, acc);
      else
        simd::storeu(dst + at, acc);
    });
  }
  for (; i < n; ++i) scalar(i);
}

/// dst[i] = src[i] for i < n. Stores that stay in cache go through memcpy, kCopyChunkLines lines at
/// a time after prefetching the same span of `ahead`.
template <class S>
void copy_row(S* dst, const S* src, Index n, bool stream, const RowsAhead<S>& ahead = {}) {
  if constexpr (simd::kVectorized<S>) {
    if (stream) {
      Index i = detail::head_elements(dst, n);
      std::memcpy(dst, src, static_cast<std::size_t>(i) * sizeof(S));
      i = detail::packet_loop(i, n, ahead,
                              [&](Index at) { simd::stream(dst + at, simd::loadu(src + at)); });
      std::memcpy(dst + i, src + i, static_cast<std::size_t>(n - i) * sizeof(S));
      return;
    }
  }
  constexpr Index kLine = simd::kCacheLineBytes / Index{sizeof(S)};
  constexpr Index kChunk = RowBlocking::kCopyChunkLines * kLine;
  for (Index i = 0; i < n; i += kChunk) {
    const Index m = std::min(kChunk, n - i);
    for (Index l = 0; l < m; l += kLine) ahead.fetch(i + l);
    std::memcpy(dst + i, src + i, static_cast<std::size_t>(m) * sizeof(S));
  }
}

/// dst[i] = 0 for i < n.
template <class S>
void zero_row(S* dst, Index n, bool stream) {
  if constexpr (simd::kVectorized<S>) {
    if (stream) {
      Index i = detail::head_elements(dst, n);
      for (Index h = 0; h < i; ++h) dst[h] = S(0);
      for (; i + simd::kLanes<S> <= n; i += simd::kLanes<S>)
        simd::stream(dst + i, simd::broadcast(S(0)));
      for (; i < n; ++i) dst[i] = S(0);
      return;
    }
  }
  std::fill(dst, dst + n, S(0));
}

}  // namespace moe::kernels
