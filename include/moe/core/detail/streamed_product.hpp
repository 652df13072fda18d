// A product of a few rows with a large row-major matrix, reading that matrix once, row by row.
// Eigen's GEMM packs the right operand in panels a few cache lines wide, strided across its rows:
// for a handful of rows (a decode step's tokens per expert) the packing is all of the work and
// its strided reads run at half the speed of a sequential pass over the weights.
#pragma once

#include <algorithm>
#include <type_traits>

#include "moe/core/types.hpp"

namespace moe::detail {

/// Products with at most this many rows (and at least two: one row is Eigen's GEMV) are streamed.
/// Measured on one AVX-512 core against Eigen's blocked GEMM, [m, 2048] x [2048, 1024] float with
/// the weights in memory: 2.0-2.4x faster at m = 2-4, 1.5-1.7x at m = 8, even at m = 12, slower
/// from m = 16 on.
inline constexpr Index kStreamedProductMaxRows = 8;

/// Whether streamed_product serves an [m, n] = [m, k] * [k, n] product of scalar S.
template <class S>
inline bool uses_streamed_product(Index m, Index n) {
  return Eigen::internal::packet_traits<S>::Vectorizable && m >= 2 &&
         m <= kStreamedProductMaxRows && n >= Eigen::internal::packet_traits<S>::size;
}

namespace streamed {

inline constexpr Index kRowsPerGroup = 4;

/// c[i, :] += sum_{q < Depth} lhs_at(i, p + q) * rhs[p + q, :] for a group of rows: Depth
/// right-hand rows loaded once per packet of columns and applied to every row of the group, each
/// element updated in order of q (fused multiply-adds where the target has them).
template <int Depth, class S, class LhsAt>
void update_rows(S* c, Index c_stride, Index first_row, Index rows, Index n, Index p,
                 const LhsAt& lhs_at, const S* rhs, Index rhs_stride) {
  using namespace Eigen::internal;
  using Packet = typename packet_traits<S>::type;
  constexpr Index kPacket = packet_traits<S>::size;
  S scalar[kRowsPerGroup][Depth];
  Packet broadcast[kRowsPerGroup][Depth];
  for (Index i = 0; i < rows; ++i)
    for (int q = 0; q < Depth; ++q) {
      scalar[i][q] = lhs_at(first_row + i, p + q);
      broadcast[i][q] = pset1<Packet>(scalar[i][q]);
    }
  const S* w[Depth];
  for (int q = 0; q < Depth; ++q) w[q] = rhs + (p + q) * rhs_stride;
  Index j = 0;
  for (; j + kPacket <= n; j += kPacket) {
    Packet wp[Depth];
    for (int q = 0; q < Depth; ++q) wp[q] = ploadu<Packet>(w[q] + j);
    for (Index i = 0; i < rows; ++i) {
      S* out = c + (first_row + i) * c_stride + j;
      Packet acc = ploadu<Packet>(out);
      for (int q = 0; q < Depth; ++q) acc = pmadd(broadcast[i][q], wp[q], acc);
      pstoreu(out, acc);
    }
  }
  for (; j < n; ++j)
    for (Index i = 0; i < rows; ++i) {
      S& out = c[(first_row + i) * c_stride + j];
      for (int q = 0; q < Depth; ++q) out = pmadd(scalar[i][q], w[q][j], out);
    }
}

}  // namespace streamed

/// c[i, :] = sum_p lhs_at(i, p) * rhs[p, :] (or += when `accumulate`), i < m, p < k: rhs
/// (row-major, [k, n] with row stride rhs_stride) is read once, four rows at a time in order, and
/// every element is summed in order of p. The bits depend on the shapes alone, never on the thread
/// that runs it.
template <class S, class LhsAt>
void streamed_product(S* c, Index c_stride, Index m, Index n, Index k, const LhsAt& lhs_at,
                      const S* rhs, Index rhs_stride, bool accumulate) {
  if (!accumulate)
    for (Index i = 0; i < m; ++i) std::fill(c + i * c_stride, c + i * c_stride + n, S(0));
  // Rows of rhs outermost, so each is read from memory once whatever m is.
  constexpr int kDepth = 4;
  const auto update = [&](auto depth, Index p) {
    for (Index first = 0; first < m; first += streamed::kRowsPerGroup)
      streamed::update_rows<decltype(depth)::value>(c, c_stride, first,
                                                    std::min(streamed::kRowsPerGroup, m - first), n,
                                                    p, lhs_at, rhs, rhs_stride);
  };
  Index p = 0;
  for (; p + kDepth <= k; p += kDepth) update(std::integral_constant<int, kDepth>{}, p);
  for (; p < k; ++p) update(std::integral_constant<int, 1>{}, p);
}

}  // namespace moe::detail
