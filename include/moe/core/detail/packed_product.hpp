// Products of more than a handful of rows (an expert's tokens, a dense batch): the right operand is
// packed one column panel at a time, [depth, 3 packets] contiguous, and the register tiles of
// skinny_product (8 rows x 3 packets with AVX-512) run every group of rows over the panel while it
// stays in L2; the left operand is read in place, row by row or as the transpose of a row-major
// matrix. One AVX-512 core (AMD EPYC, Zen 5) runs these at 170-215 GFLOP/s in float where Eigen
// 3.4's blocked GEMM reaches 120-145 and OpenBLAS 0.3.21's SkylakeX kernels 170-195.
#pragma once

#include <algorithm>
#include <cstddef>

#include "moe/core/detail/skinny_product.hpp"
#include "moe/core/detail/skinny_transposed.hpp"
#include "moe/core/detail/thread_buffer.hpp"
#include "moe/core/types.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace moe::detail {

/// Whether packed_product serves an [m, n] = [m, k] * [k, n] product of scalar S. A single row is
/// Eigen's GEMV, results narrower than a packet Eigen's. A BLAS backend keeps the products this
/// kernel would take.
template <class S>
inline bool uses_packed_product(Index m, Index n) {
#if defined(EIGEN_USE_BLAS)
  (void)m, (void)n;
  return false;
#else
  return Eigen::internal::packet_traits<S>::Vectorizable && m >= 2 &&
         n >= Eigen::internal::packet_traits<S>::size;
#endif
}

namespace packed {

/// Depth of a packed block. Each element's sum runs in registers over one block, the blocks' sums
/// are added to it in order.
inline constexpr Index kDepthBlock = 256;

/// Columns of a packed block of the right operand: 16 register tiles wide, 768 KiB at
/// kDepthBlock, so it stays in L2 while every group of rows sweeps it.
template <class S>
inline constexpr Index kColumnBlock = 16 * skinny::kRegisterTileCols<S>;

/// panel[p, j] = rhs(p, j) for p < depth, j < width, panel rows kRegisterTileCols<S> apart, and
/// zero from `width` up to a whole packet. rhs is row-major with rows rhs_stride apart or,
/// when `transposed`, rhs(p, j) = rhs[j * rhs_stride + p] (row-major weights seen transposed).
template <class S>
void pack_panel(S* panel, const S* rhs, Index rhs_stride, bool transposed, Index width,
                Index depth) {
  constexpr Index kStride = skinny::kRegisterTileCols<S>;
  constexpr Index kPacket = Eigen::internal::packet_traits<S>::size;
  if (transposed)
    skinny::transpose_into(panel, rhs, rhs_stride, width, depth);
  else
    for (Index p = 0; p < depth; ++p) std::copy_n(rhs + p * rhs_stride, width, panel + p * kStride);
  const Index padded = (width + kPacket - 1) / kPacket * kPacket;
  if (padded > width)
    for (Index p = 0; p < depth; ++p)
      std::fill(panel + p * kStride + width, panel + p * kStride + padded, S(0));
}

/// A group of at most kRowsPerTile rows of the left operand read through row pointers:
/// lhs(i, p) = rows[i][p].
template <class S>
struct RowGroup {
  const S* rows[skinny::kRowsPerTile];
  S operator()(Index i, Index p) const noexcept { return rows[i][p]; }
};

/// c[i, j] (+)= tile[i, j] for i < rows, j < width: the columns of a one-packet tile past a
/// product's last whole packet, computed into `tile` (kPacket wide) over zero-padded weights.
template <class S>
void store_sliver(const S* tile, Index rows, Index width, S* c, Index c_stride, bool accumulate) {
  constexpr Index kPacket = Eigen::internal::packet_traits<S>::size;
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < width; ++j) {
      S& out = c[i * c_stride + j];
      out = accumulate ? out + tile[i * kPacket + j] : tile[i * kPacket + j];
    }
}

}  // namespace packed

/// c (+)= lhs * rhs for an [m, n] row-major c (rows c_stride apart) over depth k, BLIS's loop
/// order: a block of rhs [kDepthBlock, kColumnBlock] is packed into panels of one register tile's
/// width, then each group of kRowsPerTile rows runs its register tiles over every panel.
/// lhs_group(first row, rows, first depth) gives an accessor (i, p) -> lhs(first row + i,
/// first depth + p); rhs as packed::pack_panel reads it. Every element is summed in registers in
/// order of depth within a depth block, the blocks' sums added in order: the bits depend on the
/// shapes alone, never on how the rows are split.
template <class S, class LhsGroup>
void packed_product(S* c, Index c_stride, Index m, Index n, Index k, const LhsGroup& lhs_group,
                    const S* rhs, Index rhs_stride, bool rhs_transposed, bool accumulate) {
  using namespace skinny;
  constexpr Index kPacket = Eigen::internal::packet_traits<S>::size;
  constexpr Index kPanel = kRegisterTileCols<S>;
  const Index block_depth = std::clamp<Index>(k, 1, packed::kDepthBlock);
  const Index block_cols = std::min(packed::kColumnBlock<S>, (n + kPanel - 1) / kPanel * kPanel);
  S* panels = thread_buffer<S>(static_cast<std::size_t>(block_cols * block_depth));
  NoPrefetch nothing;
  alignas(64) S sliver[kRowsPerTile * kPacket];
  for (Index j0 = 0; j0 < n; j0 += block_cols) {
    const Index cols = std::min(block_cols, n - j0);
    Index p0 = 0;
    do {  // at least once: depth 0 still stores zeros
      const Index depth = std::min(block_depth, k - p0);
      const bool add = accumulate || p0 > 0;
      for (Index j = 0, width = 0; j < cols; j += width) {
        width = std::min(kPanel, cols - j);
        const S* block =
            rhs_transposed ? rhs + (j0 + j) * rhs_stride + p0 : rhs + p0 * rhs_stride + j0 + j;
        packed::pack_panel(panels + j * depth, block, rhs_stride, rhs_transposed, width, depth);
      }
      for (Index i = 0; i < m; i += kRowsPerTile) {
        const Index rows = std::min(kRowsPerTile, m - i);
        const auto lhs = lhs_group(i, rows, p0);
        S* c_rows = c + i * c_stride + j0;
        for (Index j = 0, width = 0; j < cols; j += width) {
          width = width_at<S>(cols - j);
          const S* panel = panels + (j - j % kPanel) * depth + j % kPanel;
          if (width >= kPacket) {
            tile_block(lhs, 0, rows, width, depth, panel, kPanel, c_rows + j, c_stride, add,
                       nothing);
          } else {
            tile_rows<kRowsPerTile, 1>(rows, lhs, 0, depth, panel, kPanel, sliver, kPacket, false,
                                       nothing);
            packed::store_sliver(sliver, rows, width, c_rows + j, c_stride, add);
          }
        }
      }
      p0 += depth;
    } while (p0 < k);
  }
}

/// Multiply-adds below which a product stays on the calling thread: a team costs a few µs.
inline constexpr double kThreadedProductMinWork = 1 << 21;

/// Runs body(first row, rows) over [0, m): once for all rows inside a team (the library's tile
/// loops) or with one thread, else over one contiguous range of whole register tiles per thread.
/// `threads` is what the caller allows (Eigen::nbThreads()). packed_product computes an element
/// the same way in any range, so the split changes no bit.
template <class Body>
void split_rows(Index m, double work, int threads, Body&& body) {
#if defined(_OPENMP)
  if (!omp_in_parallel() && threads > 1 && work >= kThreadedProductMinWork &&
      m >= 2 * skinny::kRowsPerTile) {
    const Index tiles = (m + skinny::kRowsPerTile - 1) / skinny::kRowsPerTile;
    const Index per_thread = (tiles + threads - 1) / threads * skinny::kRowsPerTile;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int t = 0; t < threads; ++t) {
      const Index first = t * per_thread;
      if (first < m) body(first, std::min(per_thread, m - first));
    }
    return;
  }
#else
  (void)work, (void)threads;
#endif
  body(Index{0}, m);
}

}  // namespace moe::detail
