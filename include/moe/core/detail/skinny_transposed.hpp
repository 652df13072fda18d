// The two products backward adds at tens of rows per expert, read in place like skinny_product:
// - rows times an expert's weights seen transposed (dX = dH W1^T, dA = dY W2^T): the weights are
//   [n, k] row-major; each column range of them is transposed into a per-thread buffer a depth
//   chunk at a time, small enough for L2, and the register tiles run over the buffer while the
//   next product's weights are prefetched. Eigen's GEMM packs the whole operand first, a pass over
//   memory with no arithmetic to hide it under.
// - a weight gradient over tens of token rows (dW1 = X^T dH): the depth is the rows, and the large
//   [m, n] result is written once, row after row in address order, with nothing packed.
#pragma once

#include <algorithm>

#include "moe/core/detail/skinny_product.hpp"
#include "moe/core/detail/thread_buffer.hpp"
#include "moe/core/types.hpp"

namespace moe::detail {

namespace skinny {

/// Depth of one transposed chunk: kRegisterTileCols x 128 scalars, 24 KiB of float with AVX-512's
/// 48-column tiles, so the register tiles read it from L1 (with 64-column tiles, 256 deep spilled
/// to L2 and ran 10-15% slower; with 48, 128 to 256 measure alike).
inline constexpr Index kTransposeDepth = 128;

// Eigen's packet types are compiler vector types; naming one as a template argument
// (PacketBlock<Packet, N>) makes GCC warn that their attributes are ignored, which is harmless
// here: the block only holds packets for ptranspose.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

/// buffer[p, j] = w[j, p] for j < width, p < depth: w row-major with row stride w_stride, buffer
/// rows kRegisterTileCols<S> apart; whole packet x packet blocks through ptranspose.
template <class S>
void transpose_into(S* buffer, const S* w, Index w_stride, Index width, Index depth) {
  using namespace Eigen::internal;
  using Packet = typename packet_traits<S>::type;
  constexpr int kPacket = packet_traits<S>::size;
  constexpr Index kStride = kRegisterTileCols<S>;
  const Index packet_cols = width / kPacket * kPacket;
  const Index packet_depth = depth / kPacket * kPacket;
  for (Index j = 0; j < packet_cols; j += kPacket) {
    for (Index p = 0; p < packet_depth; p += kPacket) {
      PacketBlock<Packet, kPacket> block;
      for (int t = 0; t < kPacket; ++t)
        block.packet[t] = ploadu<Packet>(w + (j + t) * w_stride + p);
      ptranspose(block);
      for (int t = 0; t < kPacket; ++t) pstore(buffer + (p + t) * kStride + j, block.packet[t]);
    }
    for (Index p = packet_depth; p < depth; ++p)
      for (Index t = 0; t < kPacket; ++t) buffer[p * kStride + j + t] = w[(j + t) * w_stride + p];
  }
  for (Index j = packet_cols; j < width; ++j)
    for (Index p = 0; p < depth; ++p) buffer[p * kStride + j] = w[j * w_stride + p];
}

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

}  // namespace skinny

/// c[i, j] = sum_p lhs_row(i)[p] * rhs[j, p] (c = lhs rhs^T; or += when `accumulate`) for
/// i < m <= kSkinnyProductMaxRows: rhs row-major [n, k] with row stride rhs_stride, transposed a
/// column range and depth chunk at a time into a per-thread buffer that the register tiles read;
/// one cache line of `next` prefetched every few depth steps. Each element is summed in order of p
/// within a depth chunk of kTransposeDepth, the chunks added in order; the bits depend on the
/// shapes alone.
template <class S, class LhsRow>
void skinny_product_nt(S* c, Index c_stride, Index m, Index n, Index k, const LhsRow& lhs_row,
                       const S* rhs, Index rhs_stride, bool accumulate, const PrefetchBlock& next) {
  using namespace skinny;
  const S* rows[kSkinnyProductMaxRows];
  for (Index i = 0; i < m; ++i) rows[i] = lhs_row(i);
  S* buffer = thread_buffer<S>(static_cast<std::size_t>(kRegisterTileCols<S> * kTransposeDepth));
  LinePrefetcher prefetcher(next, ticks<S>(m, n, k));
  for (Index j = 0, width = 0; j < n; j += width) {
    width = width_at<S>(n - j);
    Index p0 = 0;
    do {  // at least once: depth 0 still stores zeros
      const Index depth = std::min(kTransposeDepth, k - p0);
      transpose_into(buffer, rhs + j * rhs_stride + p0, rhs_stride, width, depth);
      column_range(RowPointers<S>{rows, p0}, m, width, depth, buffer, kRegisterTileCols<S>, c + j,
                   c_stride, accumulate || p0 > 0, prefetcher);
      p0 += depth;
    } while (p0 < k);
  }
}

/// Products with at most this many rows of depth take skinny_product_tn: an expert's token rows.
inline constexpr Index kSkinnyProductMaxDepth = kSkinnyProductMaxRows;

/// Whether skinny_product_tn serves an [m, n] = [k, m]^T * [k, n] product of scalar S.
template <class S>
inline bool uses_skinny_product_tn(Index n, Index k) {
  return Eigen::internal::packet_traits<S>::Vectorizable && k >= 1 && k <= kSkinnyProductMaxDepth &&
         n >= Eigen::internal::packet_traits<S>::size;
}

/// c = a^T b (or += when `accumulate`) over k <= kSkinnyProductMaxDepth rows of depth: a row-major
/// [k, m], b row-major [k, n], both read in place; c's register tiles run along its rows, so c is
/// written in address order. Each element is summed in order of p; the bits depend on the shapes
/// alone.
template <class S>
void skinny_product_tn(S* c, Index c_stride, Index m, Index n, Index k, const S* a, Index a_stride,
                       const S* b, Index b_stride, bool accumulate) {
  using namespace skinny;
  const TransposedRows<S> lhs{a, a_stride};
  NoPrefetch nothing;
  for (Index i = 0; i < m; i += kRowsPerTile)
    for (Index j = 0, width = 0; j < n; j += width) {
      width = width_at<S>(n - j);
      tile_block(lhs, i, std::min(kRowsPerTile, m - i), width, k, b + j, b_stride,
                 c + i * c_stride + j, c_stride, accumulate, nothing);
    }
}

}  // namespace moe::detail
