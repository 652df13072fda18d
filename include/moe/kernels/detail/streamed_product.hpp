// A product of a few rows with a large row-major matrix, reading that matrix once, row by row.
// Eigen's GEMM packs the right operand in panels a few cache lines wide, strided across its rows:
// for a handful of rows (a decode step's tokens per expert) the packing is all of the work and
// its strided reads run at half the speed of a sequential pass over the weights.
#pragma once

#include <algorithm>

#include "moe/core/types.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/kernels/simd.hpp"

namespace moe::kernels::detail {

namespace streamed {

/// Right-hand rows applied per pass, and packets of columns per burst: each pass reads a
/// kDepth x kBurstPackets block of rhs (16 KiB of float), each of its rows a run of whole cache
/// lines. One line per row and step (four rows interleaved, as this kernel first read them) kept a
/// core at 31 GB/s where a plain read of the same weights ran at 46; 512-byte bursts, as Eigen's
/// GEMV reads, reach 40-43 (one row; [1, 2048] x [2048, 1408] float from memory).
inline constexpr Index kDepth = 32;
inline constexpr int kBurstPackets = 8;

/// c[i, j .. j + Packets·P) = madd(x[i][q], rhs[p + q, j ..], c[i, j ..]) for q < depth in order,
/// for every row i < m: the row's accumulators stay in registers across the depth of the pass.
template <int Packets, class S>
MOE_ALWAYS_INLINE void update_burst(S* c, Index c_stride, Index m, Index j, Index depth,
                                    const S (*x)[kDepth], const S* rhs, Index rhs_stride) {
  using Packet = simd::Packet<S>;
  constexpr Index kPacket = simd::kLanes<S>;
  for (Index i = 0; i < m; ++i) {
    S* out = c + i * c_stride + j;
    Packet acc[Packets];
    for (int t = 0; t < Packets; ++t) acc[t] = simd::loadu(out + t * kPacket);
    const S* w = rhs + j;
    for (Index q = 0; q < depth; ++q, w += rhs_stride) {
      const Packet xq = simd::broadcast(x[i][q]);
      for (int t = 0; t < Packets; ++t)
        acc[t] = simd::madd(xq, simd::loadu(w + t * kPacket), acc[t]);
    }
    for (int t = 0; t < Packets; ++t) simd::storeu(out + t * kPacket, acc[t]);
  }
}

}  // namespace streamed

/// c[i, j] = madd(lhs_at(i, p), rhs[p, j], c[i, j]) for p = 0 .. k - 1 in order, from c (with
/// `accumulate`) or from 0, for m <= kStreamedMaxRows rows: rhs (row-major [k, n], rows rhs_stride
/// apart) is read once, kDepth rows per pass in bursts of whole cache lines. The bits depend on
/// the shapes alone, never on the thread that runs it.
template <class S, class LhsAt>
void streamed_product(S* c, Index c_stride, Index m, Index n, Index k, const LhsAt& lhs_at,
                      const S* rhs, Index rhs_stride, bool accumulate) {
  using streamed::kDepth;
  constexpr Index kPacket = simd::kLanes<S>;
  constexpr Index kBurst = streamed::kBurstPackets * kPacket;
  if (!accumulate)
    for (Index i = 0; i < m; ++i) std::fill(c + i * c_stride, c + i * c_stride + n, S(0));
  S x[ProductBlocking<S>::kStreamedMaxRows][kDepth];
  for (Index p = 0; p < k; p += kDepth) {
    const Index depth = std::min(kDepth, k - p);
    for (Index i = 0; i < m; ++i)
      for (Index q = 0; q < depth; ++q) x[i][q] = lhs_at(i, p + q);
    const S* w = rhs + p * rhs_stride;
    Index j = 0;
    for (; j + kBurst <= n; j += kBurst)
      streamed::update_burst<streamed::kBurstPackets>(c, c_stride, m, j, depth, x, w, rhs_stride);
    for (; j + kPacket <= n; j += kPacket)
      streamed::update_burst<1>(c, c_stride, m, j, depth, x, w, rhs_stride);
    for (; j < n; ++j)
      for (Index i = 0; i < m; ++i) {
        S& out = c[i * c_stride + j];
        for (Index q = 0; q < depth; ++q) out = simd::madd(x[i][q], w[q * rhs_stride + j], out);
      }
  }
}

}  // namespace moe::kernels::detail
