// A product of a few rows with a large row-major matrix, reading that matrix once, row by row.
// Eigen's GEMM packs the right operand in panels a few cache lines wide, strided across its rows:
// for a handful of rows (a decode step's tokens per expert) the packing is all of the work and
// its strided reads run at half the speed of a sequential pass over the weights.
#pragma once

#include <algorithm>
#include <type_traits>

#include "moe/core/types.hpp"
#include "moe/kernels/simd.hpp"

namespace moe::kernels::detail {

namespace streamed {

inline constexpr Index kRowsPerGroup = 4;

/// c[i, :] = madd(lhs_at(i, p + q), rhs[p + q, :], c[i, :]) for q < Depth, for a group of rows:
/// Depth right-hand rows loaded once per packet of columns and applied to every row of the group.
template <int Depth, class S, class LhsAt>
void update_rows(S* c, Index c_stride, Index first_row, Index rows, Index n, Index p,
                 const LhsAt& lhs_at, const S* rhs, Index rhs_stride) {
  using Packet = simd::Packet<S>;
  constexpr Index kPacket = simd::kLanes<S>;
  S scalar[kRowsPerGroup][Depth];
  Packet broadcast[kRowsPerGroup][Depth];
  for (Index i = 0; i < rows; ++i)
    for (int q = 0; q < Depth; ++q) {
      scalar[i][q] = lhs_at(first_row + i, p + q);
      broadcast[i][q] = simd::broadcast(scalar[i][q]);
    }
  const S* w[Depth];
  for (int q = 0; q < Depth; ++q) w[q] = rhs + (p + q) * rhs_stride;
  Index j = 0;
  for (; j + kPacket <= n; j += kPacket) {
    Packet wp[Depth];
    for (int q = 0; q < Depth; ++q) wp[q] = simd::loadu(w[q] + j);
    for (Index i = 0; i < rows; ++i) {
      S* out = c + (first_row + i) * c_stride + j;
      Packet acc = simd::loadu(out);
      for (int q = 0; q < Depth; ++q) acc = simd::madd(broadcast[i][q], wp[q], acc);
      simd::storeu(out, acc);
    }
  }
  for (; j < n; ++j)
    for (Index i = 0; i < rows; ++i) {
      S& out = c[(first_row + i) * c_stride + j];
      for (int q = 0; q < Depth; ++q) out = simd::madd(scalar[i][q], w[q][j], out);
    }
}

}  // namespace streamed

/// c[i, j] = madd(lhs_at(i, p), rhs[p, j], c[i, j]) for p = 0 .. k - 1 in order, from c (with
/// `accumulate`) or from 0: rhs (row-major [k, n], rows rhs_stride apart) is read once, four rows
/// at a time in order. The bits depend on the shapes alone, never on the thread that runs it.
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

}  // namespace moe::kernels::detail
