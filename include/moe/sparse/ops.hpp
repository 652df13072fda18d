// The block-sparse products of the dropless expert FFN (MegaBlocks/stk `sdd`, `dsd`, `dds` and the
// transposed forms backward needs). Sparse operands are Block-ELL values `[P, f]` over a
// BlockSparseTopology; the dense per-expert operands are stored expert-major: `[E*K, f]` is the
// dense `[K, E*f]` matrix whose expert e block is rows [e*K, (e+1)*K), i.e. the W1 `[E, d, f]`
// layout.
//
// Each product runs as independent tile GEMMs (Eigen's GEMM over contiguous row blocks,
// kernels::gemm), split by blocks, not by experts, so a hot expert's rows spread over all threads.
#pragma once

#include <utility>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/parallel.hpp"
#include "moe/kernels/prefetch.hpp"
#include "moe/kernels/simd.hpp"
#include "moe/sparse/detail/tiles.hpp"
#include "moe/sparse/topology.hpp"

namespace moe {

/// Called after a tile of a sparse result is computed: (expert, first row, data rows, first
/// column inside the expert's f, columns). Lets a caller fuse bias and activation while the
/// tile is in cache.
struct NoEpilogue {
  void operator()(Index, Index, Index, Index, Index) const noexcept {}
};

namespace detail {

template <class Matrix>
void require_sparse_values(const Matrix& values, const BlockSparseTopology& topo,
                           const char* argument) {
  require_shape(values, argument, topo.rows(), topo.ffn_hidden);
}

/// One work item of a loop over row tiles x column tiles: its row tile (null past the last item)
/// and its columns.
struct TileItem {
  const RowTile* tile = nullptr;
  Index col = 0;
  Index cols = 0;
};

/// Work item w of a loop over row tiles x `col_tiles` column tiles of `width` over `extent`
/// columns (cols <= 0 for a column tile past the extent).
inline TileItem work_item(const std::vector<RowTile>& tiles, Index col_tiles, Index width,
                          Index extent, Index w) {
  if (w >= static_cast<Index>(tiles.size()) * col_tiles) return {};
  const Index col = (w % col_tiles) * width;
  return {&tiles[static_cast<std::size_t>(w / col_tiles)], col, std::min(width, extent - col)};
}

/// The item a thread probably computes after item w, whose weights a product may prefetch: empty
/// when there is none or it has no data rows.
inline TileItem tile_ahead(const std::vector<RowTile>& tiles, Index col_tiles, Index width,
                           Index extent, Index w) {
  const TileItem ahead = work_item(tiles, col_tiles, width, extent, item_ahead(w));
  return ahead.tile && ahead.tile->data_rows > 0 && ahead.cols > 0 ? ahead : TileItem{};
}

/// What the item ahead reads from expert-major weights b (`per_expert` rows per expert), for a
/// product to prefetch: its expert's rows at its columns. Empty when nothing is ahead.
template <class S>
kernels::PrefetchBlock expert_columns_ahead(ConstMatrixRef<S> b, Index per_expert,
                                            const TileItem& ahead) {
  if (!ahead.tile) return {};
  return kernels::prefetch_block(
      b.block(ahead.tile->expert * per_expert, ahead.col, per_expert, ahead.cols));
}

/// The same for a product over b seen transposed: the item's columns are rows of its expert's
/// block, read whole.
template <class S>
kernels::PrefetchBlock expert_rows_ahead(ConstMatrixRef<S> b, Index per_expert,
                                         const TileItem& ahead) {
  if (!ahead.tile) return {};
  return kernels::prefetch_block(
      b.block(ahead.tile->expert * per_expert + ahead.col, 0, ahead.cols, b.cols()));
}

/// Row tiles x dense column tiles of a [P, N] result, padding rows set to zero unless accumulating.
/// product(tile, first column, columns, the TileItem likely next).
template <class S, class TileProduct>
void for_dense_row_tiles(const BlockSparseTopology& topo, MatrixRef<S> c, bool accumulate,
                         TileProduct&& product) {
  const std::vector<RowTile> tiles = row_tiles(topo);
  const Index n = c.cols();
  const Index width = column_tile_width(n, simd::kLanes<S>, kTileCols, streams_weights(tiles));
  const Index col_tiles = std::max<Index>(1, tile_count(n, width));
  kernels::parallel_items(static_cast<Index>(tiles.size()) * col_tiles, [&](Index w) {
    const auto [tile, n0, nw] = work_item(tiles, col_tiles, width, n, w);
    if (nw <= 0) return;
    if (tile->data_rows > 0) product(*tile, n0, nw, tile_ahead(tiles, col_tiles, width, n, w));
    if (topo.write_padding && !accumulate && tile->rows > tile->data_rows)
      c.block(tile->begin + tile->data_rows, n0, tile->rows - tile->data_rows, nw).setZero();
  });
}

/// Row tiles x column-block tiles of sparse [P, f] results; the epilogue runs on data rows.
/// product(tile, first column, columns, the TileItem likely next).
template <class TileProduct, class Epilogue, class... Results>
void for_sparse_tiles(const BlockSparseTopology& topo, TileProduct&& product, Epilogue&& epilogue,
                      Results&... results) {
  const std::vector<RowTile> tiles = row_tiles(topo);
  const Index width = column_tile_width(topo.ffn_hidden, topo.block_cols, sparse_tile_cols(topo),
                                        streams_weights(tiles));
  const Index col_tiles = tile_count(topo.ffn_hidden, width);
  kernels::parallel_items(static_cast<Index>(tiles.size()) * col_tiles, [&](Index w) {
    const auto [tile, c0, cw] = work_item(tiles, col_tiles, width, topo.ffn_hidden, w);
    if (tile->data_rows > 0) {
      product(*tile, c0, cw, tile_ahead(tiles, col_tiles, width, topo.ffn_hidden, w));
      epilogue(tile->expert, tile->begin, tile->data_rows, c0, cw);
    }
    if (topo.write_padding && tile->rows > tile->data_rows)
      (results.block(tile->begin + tile->data_rows, c0, tile->rows - tile->data_rows, cw).setZero(),
       ...);
  });
}

/// Per-expert [m, n] output tiles of a reduction over each expert's data rows.
template <class Product>
void for_expert_tiles(const BlockSparseTopology& topo, Index m, Index m_tile, Index n, Index n_tile,
                      Product&& product) {
  const Index m_tiles = std::max<Index>(1, tile_count(m, m_tile));
  const Index n_tiles = std::max<Index>(1, tile_count(n, n_tile));
  const Index per_expert = m_tiles * n_tiles;
  kernels::parallel_items(topo.num_experts * per_expert, [&](Index w) {
    const Index e = w / per_expert;
    const Index m0 = (w % per_expert) / n_tiles * m_tile;
    const Index n0 = (w % n_tiles) * n_tile;
    const Index mw = std::min(m_tile, m - m0);
    const Index nw = std::min(n_tile, n - n0);
    if (mw > 0 && nw > 0) product(e, topo.group_offsets[e], topo.group_rows[e], m0, mw, n0, nw);
  });
}

}  // namespace detail

namespace detail {

/// sdd over a row operand that is a matrix or GatheredRows (the grouped rows read in place).
template <class S, class Rows, class Epilogue>
void sdd_rows(const Rows& a, ConstMatrixRef<S> b, const BlockSparseTopology& topo,
              MatrixRef<S> c_values, Epilogue&& epilogue) {
  const Index k = a.cols();
  require_shape(a, "a", topo.rows(), -1);
  require_shape(b, "b", topo.num_experts * k, topo.ffn_hidden);
  require_sparse_values(c_values, topo, "c_values");
  for_sparse_tiles(
      topo,
      [&](const RowTile& t, Index c0, Index cw, const TileItem& ahead) {
        kernels::gemm(c_values.block(t.begin, c0, t.data_rows, cw),
                      a.middleRows(t.begin, t.data_rows), b.block(t.expert * k, c0, k, cw), false,
                      expert_columns_ahead<S>(b, k, ahead));
      },
      epilogue, c_values);
}

/// sdd_pair over a matrix or GatheredRows.
template <class S, class Rows, class Epilogue>
void sdd_pair_rows(const Rows& a, ConstMatrixRef<S> b1, ConstMatrixRef<S> b2,
                   const BlockSparseTopology& topo, MatrixRef<S> c1_values, MatrixRef<S> c2_values,
                   Epilogue&& epilogue) {
  const Index k = a.cols();
  require_shape(a, "a", topo.rows(), -1);
  require_shape(b1, "b1", topo.num_experts * k, topo.ffn_hidden);
  require_shape(b2, "b2", topo.num_experts * k, topo.ffn_hidden);
  require_sparse_values(c1_values, topo, "c1_values");
  require_sparse_values(c2_values, topo, "c2_values");
  for_sparse_tiles(
      topo,
      [&](const RowTile& t, Index c0, Index cw, const TileItem& ahead) {
        // Each product prefetches the weights the next one reads: B2's block, then the next
        // tile's B1 block.
        const auto rows = a.middleRows(t.begin, t.data_rows);
        const auto w2 = b2.block(t.expert * k, c0, k, cw);
        kernels::gemm(c1_values.block(t.begin, c0, t.data_rows, cw), rows,
                      b1.block(t.expert * k, c0, k, cw), false, kernels::prefetch_block(w2));
        kernels::gemm(c2_values.block(t.begin, c0, t.data_rows, cw), rows, w2, false,
                      expert_columns_ahead<S>(b1, k, ahead));
      },
      epilogue, c1_values, c2_values);
}

}  // namespace detail

/// sdd: C = A * B at the topology's blocks (MegaBlocks `stk.ops.sdd(x, w1.t(), topo)`).
/// a [P, K] dense; b [E*K, f] expert-major; c_values [P, f] Block-ELL.
template <class S, class Epilogue = NoEpilogue>
void sdd(ConstMatrixRef<S> a, ConstMatrixRef<S> b, const BlockSparseTopology& topo,
         MatrixRef<S> c_values, Epilogue&& epilogue = Epilogue{}) {
  detail::sdd_rows<S>(a, b, topo, c_values, std::forward<Epilogue>(epilogue));
}

/// Two sdd products over the same A, tile by tile: C1 = A * B1 and C2 = A * B2 at the blocks (the
/// gate and up projections of a gated FFN), so the epilogue sees both tiles while in cache.
template <class S, class Epilogue>
void sdd_pair(ConstMatrixRef<S> a, ConstMatrixRef<S> b1, ConstMatrixRef<S> b2,
              const BlockSparseTopology& topo, MatrixRef<S> c1_values, MatrixRef<S> c2_values,
              Epilogue&& epilogue) {
  detail::sdd_pair_rows<S>(a, b1, b2, topo, c1_values, c2_values, std::forward<Epilogue>(epilogue));
}

/// sdd with B transposed: C = A * B^T at the blocks (backward: dA = dY * W2^T).
/// a [P, K]; b [E*f, K] expert-major (the W2 `[E, f, d]` layout); c_values [P, f].
template <class S, class Epilogue = NoEpilogue>
void sdd_nt(ConstMatrixRef<S> a, ConstMatrixRef<S> b, const BlockSparseTopology& topo,
            MatrixRef<S> c_values, Epilogue&& epilogue = Epilogue{}) {
  const Index k = a.cols();
  const Index f = topo.ffn_hidden;
  require_shape(a, "a", topo.rows(), -1);
  require_shape(b, "b", topo.num_experts * f, k);
  detail::require_sparse_values(c_values, topo, "c_values");
  detail::for_sparse_tiles(
      topo,
      [&](const detail::RowTile& t, Index c0, Index cw, const detail::TileItem& ahead) {
        kernels::gemm(c_values.block(t.begin, c0, t.data_rows, cw),
                      a.middleRows(t.begin, t.data_rows),
                      b.block(t.expert * f + c0, 0, cw, k).transpose(), false,
                      detail::expert_rows_ahead<S>(b, f, ahead));
      },
      epilogue, c_values);
}

/// dsd: C = A * B, sparse times dense (MegaBlocks `stk.ops.dsd(act, w2)`).
/// a_values [P, f]; b [E*f, N] expert-major; c [P, N], padding rows 0 (or untouched if accumulate).
template <class S>
void dsd(ConstMatrixRef<S> a_values, ConstMatrixRef<S> b, const BlockSparseTopology& topo,
         MatrixRef<S> c, bool accumulate = false) {
  const Index f = topo.ffn_hidden;
  detail::require_sparse_values(a_values, topo, "a_values");
  require_shape(b, "b", topo.num_experts * f, -1);
  require_shape(c, "c", topo.rows(), b.cols());
  detail::for_dense_row_tiles<S>(
      topo, c, accumulate,
      [&](const detail::RowTile& t, Index n0, Index nw, const detail::TileItem& ahead) {
        kernels::gemm(c.block(t.begin, n0, t.data_rows, nw),
                      a_values.middleRows(t.begin, t.data_rows), b.block(t.expert * f, n0, f, nw),
                      accumulate, detail::expert_columns_ahead<S>(b, f, ahead));
      });
}

/// dsd with B transposed: C = A * B^T (backward: dX = dH * W1^T).
/// a_values [P, f]; b [E*N, f] expert-major (the W1 `[E, d, f]` layout); c [P, N].
template <class S>
void dsd_nt(ConstMatrixRef<S> a_values, ConstMatrixRef<S> b, const BlockSparseTopology& topo,
            MatrixRef<S> c, bool accumulate = false) {
  const Index f = topo.ffn_hidden;
  const Index n = c.cols();
  detail::require_sparse_values(a_values, topo, "a_values");
  require_shape(c, "c", topo.rows(), -1);
  require_shape(b, "b", topo.num_experts * n, f);
  detail::for_dense_row_tiles<S>(
      topo, c, accumulate,
      [&](const detail::RowTile& t, Index n0, Index nw, const detail::TileItem& ahead) {
        kernels::gemm(c.block(t.begin, n0, t.data_rows, nw),
                      a_values.middleRows(t.begin, t.data_rows),
                      b.block(t.expert * n + n0, 0, nw, f).transpose(), accumulate,
                      detail::expert_rows_ahead<S>(b, n, ahead));
      });
}

/// dsd with A transposed: C = A^T * B, a dense [E*f, N] expert-major result (backward:
/// dW2 = act^T * dY). a_values [P, f]; b [P, N]. An expert without rows gets zeros.
template <class S>
void dsd_tn(ConstMatrixRef<S> a_values, ConstMatrixRef<S> b, const BlockSparseTopology& topo,
            MatrixRef<S> c) {
  const Index f = topo.ffn_hidden;
  const Index n = b.cols();
  detail::require_sparse_values(a_values, topo, "a_values");
  require_shape(b, "b", topo.rows(), -1);
  require_shape(c, "c", topo.num_experts * f, n);
  detail::for_expert_tiles(
      topo, f, detail::sparse_tile_cols(topo), n, detail::kTileCols,
      [&](Index e, Index g0, Index rows, Index m0, Index mw, Index n0, Index nw) {
        auto out = c.block(e * f + m0, n0, mw, nw);
        if (rows == 0)
          out.setZero();
        else
          kernels::gemm(out, a_values.block(g0, m0, rows, mw).transpose(),
                        b.block(g0, n0, rows, nw));
      });
}

/// dds: C = A * B, dense times sparse, a dense [M, E*f] result stored expert-major as [E*M, f]
/// (MegaBlocks `stk.ops.dds`). a [M, P]; b_values [P, f]. An expert without rows gets zeros.
template <class S>
void dds(ConstMatrixRef<S> a, ConstMatrixRef<S> b_values, const BlockSparseTopology& topo,
         MatrixRef<S> c) {
  const Index f = topo.ffn_hidden;
  const Index m = a.rows();
  require_shape(a, "a", -1, topo.rows());
  detail::require_sparse_values(b_values, topo, "b_values");
  require_shape(c, "c", topo.num_experts * m, f);
  detail::for_expert_tiles(
      topo, m, detail::kTileCols, f, detail::sparse_tile_cols(topo),
      [&](Index e, Index g0, Index rows, Index m0, Index mw, Index n0, Index nw) {
        auto out = c.block(e * m + m0, n0, mw, nw);
        if (rows == 0)
          out.setZero();
        else
          kernels::gemm(out, a.block(m0, g0, mw, rows), b_values.block(g0, n0, rows, nw));
      });
}

/// dds with A transposed: C = A^T * B, dense times sparse, a dense [E*K, f] expert-major result
/// (backward: dW1 = X^T * dH). a [P, K]; b_values [P, f]. An expert without rows gets zeros.
template <class S>
void dds_tn(ConstMatrixRef<S> a, ConstMatrixRef<S> b_values, const BlockSparseTopology& topo,
            MatrixRef<S> c) {
  const Index f = topo.ffn_hidden;
  const Index k = a.cols();
  require_shape(a, "a", topo.rows(), -1);
  detail::require_sparse_values(b_values, topo, "b_values");
  require_shape(c, "c", topo.num_experts * k, f);
  detail::for_expert_tiles(
      topo, k, detail::kTileCols, f, detail::sparse_tile_cols(topo),
      [&](Index e, Index g0, Index rows, Index m0, Index mw, Index n0, Index nw) {
        auto out = c.block(e * k + m0, n0, mw, nw);
        if (rows == 0)
          out.setZero();
        else
          kernels::gemm(out, a.block(g0, m0, rows, mw).transpose(),
                        b_values.block(g0, n0, rows, nw));
      });
}

}  // namespace moe
