// Products of tens of rows (an expert's tokens at E = 256, T·k = 8192: 32 rows), read in place:
// - rows times a row-major right operand (an expert's weights): register tiles over the weights as
//   they are, while the weights of the product that comes next are prefetched into L2. Eigen's
//   GEMM packs them first, a pass with no arithmetic to hide the reads under;
// - rows times weights seen transposed (dX = dH W1^T, dA = dY W2^T): each column range of the
//   weights is transposed into a per-thread buffer a depth chunk at a time, small enough for L1;
// - a weight gradient over tens of token rows (dW1 = X^T dH): the depth is the rows, and the large
//   result is written once, row after row in address order, with nothing packed.
#pragma once

#include <algorithm>
#include <cstddef>

#include "moe/core/types.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/kernels/detail/register_tiles.hpp"
#include "moe/kernels/detail/thread_buffer.hpp"
#include "moe/kernels/prefetch.hpp"
#include "moe/kernels/simd.hpp"

namespace moe::kernels::detail {

/// c[i, j] = sum_p lhs_row(i)[p] * rhs[p, j] (or += with `accumulate`) for i < m <=
/// kSkinnyMaxRows: register tiles over rhs (row-major [k, n], rows rhs_stride apart) in place, one
/// cache line of `next` prefetched every few depth steps. Each element is summed from 0 in order
/// of p (tiles::tile), then stored or added to c.
/// Stored sums run kSkinnyDepth rows of rhs at a time across all its columns, every group of rows
/// taking a panel's rows while they are in L1 and resuming the sums stored in c: each weight is
/// read from memory once per product, not once per group of rows, and a depth range's pages stay
/// in the TLB while its panels are swept (a [4096, 48] panel of a row-major [4096, 14336] matrix
/// touches 4096 pages, and with the next product's prefetch no longer fits L2 between groups).
template <class S, class LhsRow>
void skinny_product(S* c, Index c_stride, Index m, Index n, Index k, const LhsRow& lhs_row,
                    const S* rhs, Index rhs_stride, bool accumulate, const PrefetchBlock& next) {
  using B = ProductBlocking<S>;
  const S* rows[B::kSkinnyMaxRows];
  for (Index i = 0; i < m; ++i) rows[i] = lhs_row(i);
  LinePrefetcher prefetcher(next, tiles::ticks<S>(m, n, k));
  // Adding to c needs the sums whole before they meet it: one pass over the depth.
  const Index depth_step = accumulate ? std::max<Index>(k, 1) : B::kSkinnyDepth;
  Index p0 = 0;
  do {  // at least once: depth 0 still stores zeros
    const Index depth = std::min(depth_step, k - p0);
    const tiles::RowPointers<S> lhs{rows, p0};
    for (Index j = 0, width = 0; j < n; j += width) {
      width = tiles::width_at<S>(n - j);
      for (Index i = 0; i < m; i += B::kTileRows)
        tiles::tile_block(lhs, i, std::min(B::kTileRows, m - i), width, depth,
                          rhs + p0 * rhs_stride + j, rhs_stride, c + i * c_stride + j, c_stride,
                          accumulate, prefetcher, /*resume=*/p0 > 0);
    }
    p0 += depth;
  } while (p0 < k);
}

/// buffer[p, j] = w[j, p] for j < width, p < depth: w row-major with row stride w_stride, buffer
/// rows kTileCols apart; whole packet x packet blocks transposed in registers.
template <class S>
void transpose_into(S* buffer, const S* w, Index w_stride, Index width, Index depth) {
  constexpr Index kPacket = simd::kLanes<S>;
  constexpr Index kStride = ProductBlocking<S>::kTileCols;
  const Index packet_cols = width / kPacket * kPacket;
  const Index packet_depth = depth / kPacket * kPacket;
  for (Index j = 0; j < packet_cols; j += kPacket) {
    for (Index p = 0; p < packet_depth; p += kPacket) {
      simd::PacketSquare<S> square;
      for (Index t = 0; t < kPacket; ++t) square[t] = simd::loadu(w + (j + t) * w_stride + p);
      square.transpose();
      for (Index t = 0; t < kPacket; ++t) simd::store(buffer + (p + t) * kStride + j, square[t]);
    }
    for (Index p = packet_depth; p < depth; ++p)
      for (Index t = 0; t < kPacket; ++t) buffer[p * kStride + j + t] = w[(j + t) * w_stride + p];
  }
  for (Index j = packet_cols; j < width; ++j)
    for (Index p = 0; p < depth; ++p) buffer[p * kStride + j] = w[j * w_stride + p];
}

/// c[i, j] = sum_p lhs_row(i)[p] * rhs[j, p] (c = lhs rhs^T; or += with `accumulate`) for
/// i < m <= kSkinnyMaxRows: rhs row-major [n, k] with row stride rhs_stride, transposed a column
/// range and depth chunk at a time into a per-thread buffer that the register tiles read; one
/// cache line of `next` prefetched every few depth steps. Each element is summed from 0 in order of
/// p within a depth chunk of kTransposeDepth, the chunks added to c in order.
template <class S, class LhsRow>
void skinny_product_nt(S* c, Index c_stride, Index m, Index n, Index k, const LhsRow& lhs_row,
                       const S* rhs, Index rhs_stride, bool accumulate, const PrefetchBlock& next) {
  using B = ProductBlocking<S>;
  const S* rows[B::kSkinnyMaxRows];
  for (Index i = 0; i < m; ++i) rows[i] = lhs_row(i);
  S* buffer = thread_buffer<S>(static_cast<std::size_t>(B::kTileCols * B::kTransposeDepth));
  LinePrefetcher prefetcher(next, tiles::ticks<S>(m, n, k));
  for (Index j = 0, width = 0; j < n; j += width) {
    width = tiles::width_at<S>(n - j);
    Index p0 = 0;
    do {  // at least once: depth 0 still stores zeros
      const Index depth = std::min(B::kTransposeDepth, k - p0);
      transpose_into(buffer, rhs + j * rhs_stride + p0, rhs_stride, width, depth);
      tiles::column_range(tiles::RowPointers<S>{rows, p0}, m, width, depth, buffer, B::kTileCols,
                          c + j, c_stride, accumulate || p0 > 0, prefetcher);
      p0 += depth;
    } while (p0 < k);
  }
}

/// c = a^T b (or += with `accumulate`) over k <= kSkinnyMaxDepth rows of depth: a row-major
/// [k, m], b row-major [k, n], both read in place; c's register tiles run along its rows, so c is
/// written in address order. Each element is summed from 0 in order of p, then stored or added.
template <class S>
void skinny_product_tn(S* c, Index c_stride, Index m, Index n, Index k, const S* a, Index a_stride,
                       const S* b, Index b_stride, bool accumulate) {
  constexpr Index kRows = ProductBlocking<S>::kTileRows;
  const tiles::TransposedRows<S> lhs{a, a_stride};
  NoPrefetch nothing;
  for (Index i = 0; i < m; i += kRows)
    for (Index j = 0, width = 0; j < n; j += width) {
      width = tiles::width_at<S>(n - j);
      tiles::tile_block(lhs, i, std::min(kRows, m - i), width, k, b + j, b_stride,
                        c + i * c_stride + j, c_stride, accumulate, nothing);
    }
}

}  // namespace moe::kernels::detail
