// The forward's block-sparse products (sdd, dsd) over expert weights kept in column panels
// (kernels::Panels) instead of row-major: the same row tiles as sparse/ops.hpp, so each product
// has the rows, and each element the bits, of its in-place counterpart; the columns run in whole
// panels, each a contiguous stream of the weights.
#pragma once

#include <algorithm>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/panels.hpp"
#include "moe/kernels/parallel.hpp"
#include "moe/sparse/detail/tiles.hpp"
#include "moe/sparse/ops.hpp"
#include "moe/sparse/topology.hpp"

namespace moe {

/// Expert-major weights in panels: expert e's [shape.depth, shape.cols] matrix is the panels at
/// data + e * shape.size() (W1 [E, d, f] as E matrices [d, f]).
template <class S>
struct ExpertPanels {
  const S* data = nullptr;
  kernels::Panels shape;

  const S* expert(Index e) const noexcept { return data + e * shape.size(); }
};

namespace detail {

/// Panels one work item of a panel product spans (384 columns of float): a decode step's few
/// experts still split into items for every thread, each reading whole panels.
inline constexpr Index kItemPanels = 8;

/// Row tiles x runs of kItemPanels panels over `cols` columns, spread over the threads:
/// product(tile, first column, columns) for tiles with data rows; padding rows of `results` set to
/// zero where the topology asks for it.
template <class TileProduct, class... Results>
void for_panel_tiles(const BlockSparseTopology& topo, Index cols, TileProduct&& product,
                     Results&... results) {
  const std::vector<RowTile> tiles = row_tiles(topo);
  const Index width = kItemPanels * kernels::Panels::kCols;
  const Index col_tiles = tile_count(cols, width);
  kernels::parallel_items(static_cast<Index>(tiles.size()) * col_tiles, [&](Index w) {
    const auto [tile, c0, cw] = work_item(tiles, col_tiles, width, cols, w);
    if (tile->data_rows > 0) product(*tile, c0, cw);
    if (topo.write_padding && tile->rows > tile->data_rows)
      (results.block(tile->begin + tile->data_rows, c0, tile->rows - tile->data_rows, cw).setZero(),
       ...);
  });
}

template <class S>
void require_expert_panels(const ExpertPanels<S>& b, const char* argument, Index depth,
                           Index cols) {
  require(b.data != nullptr && b.shape.depth == depth && b.shape.cols == cols, argument,
          concat("panels of [", depth, ", ", cols, "] matrices"),
          concat("panels of [", b.shape.depth, ", ", b.shape.cols, "]"));
}

}  // namespace detail

/// sdd_pair over panels: C1 = A * B1 and C2 = A * B2 at the topology's blocks, tile by tile, the
/// epilogue on each pair of tiles while in cache. a [P, K] (a matrix or GatheredRows); b1, b2 the
/// panels of E matrices [K, f]; c1_values, c2_values [P, f]. The bits of sdd_pair over the
/// row-major weights.
template <class S, class Rows, class Epilogue>
void sdd_pair_panels(const Rows& a, const ExpertPanels<S>& b1, const ExpertPanels<S>& b2,
                     const BlockSparseTopology& topo, MatrixRef<S> c1_values,
                     MatrixRef<S> c2_values, Epilogue&& epilogue) {
  const Index k = a.cols(), f = topo.ffn_hidden;
  require_shape(a, "a", topo.rows(), -1);
  detail::require_expert_panels(b1, "b1", k, f);
  detail::require_expert_panels(b2, "b2", k, f);
  detail::require_sparse_values(c1_values, topo, "c1_values");
  detail::require_sparse_values(c2_values, topo, "c2_values");
  detail::for_panel_tiles(
      topo, f,
      [&](const detail::RowTile& t, Index c0, Index cw) {
        const auto rows = a.middleRows(t.begin, t.data_rows);
        kernels::panel_product(c1_values.block(t.begin, c0, t.data_rows, cw), rows,
                               b1.expert(t.expert), b1.shape, c0);
        kernels::panel_product(c2_values.block(t.begin, c0, t.data_rows, cw), rows,
                               b2.expert(t.expert), b2.shape, c0);
        epilogue(t.expert, t.begin, t.data_rows, c0, cw);
      },
      c1_values, c2_values);
}

/// sdd over panels: C = A * B at the topology's blocks (one matrix: an ungated FFN's W1).
template <class S, class Rows, class Epilogue>
void sdd_panels(const Rows& a, const ExpertPanels<S>& b, const BlockSparseTopology& topo,
                MatrixRef<S> c_values, Epilogue&& epilogue) {
  const Index k = a.cols(), f = topo.ffn_hidden;
  require_shape(a, "a", topo.rows(), -1);
  detail::require_expert_panels(b, "b", k, f);
  detail::require_sparse_values(c_values, topo, "c_values");
  detail::for_panel_tiles(
      topo, f,
      [&](const detail::RowTile& t, Index c0, Index cw) {
        kernels::panel_product(c_values.block(t.begin, c0, t.data_rows, cw),
                               a.middleRows(t.begin, t.data_rows), b.expert(t.expert), b.shape, c0);
        epilogue(t.expert, t.begin, t.data_rows, c0, cw);
      },
      c_values);
}

/// dsd over panels: C = A * B, sparse times dense. a_values [P, f]; b the panels of E matrices
/// [f, N]; c [P, N], padding rows 0 where the topology writes them. The bits of dsd over the
/// row-major weights.
template <class S>
void dsd_panels(ConstMatrixRef<S> a_values, const ExpertPanels<S>& b,
                const BlockSparseTopology& topo, MatrixRef<S> c) {
  const Index f = topo.ffn_hidden, n = c.cols();
  detail::require_sparse_values(a_values, topo, "a_values");
  detail::require_expert_panels(b, "b", f, n);
  require_shape(c, "c", topo.rows(), -1);
  detail::for_panel_tiles(
      topo, n,
      [&](const detail::RowTile& t, Index n0, Index nw) {
        kernels::panel_product(c.block(t.begin, n0, t.data_rows, nw),
                               a_values.middleRows(t.begin, t.data_rows), b.expert(t.expert),
                               b.shape, n0);
      },
      c);
}

}  // namespace moe
