// Work tiles of the block-sparse products: fixed runs of whole blocks chosen from the shapes alone,
// never from the thread count, so every output element is computed by the same GEMM call (same
// blocking, same summation order) at any number of threads.
#pragma once

#include <algorithm>
#include <vector>

#include "moe/core/types.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/kernels/parallel.hpp"
#include "moe/sparse/topology.hpp"

namespace moe::detail {

/// Target tile extent (kernels/blocking.hpp).
inline constexpr Index kTileRows = kernels::ThreadBlocking::kSparseTileRows;
inline constexpr Index kTileCols = kernels::ThreadBlocking::kSparseTileCols;

/// Rows [begin, begin + rows) of one expert's group, whole row blocks; the first data_rows hold
/// data.
struct RowTile {
  Index expert;
  Index begin;
  Index data_rows;
  Index rows;
};

/// Each expert's data blocks split into equal runs of at most kTileRows rows (524 rows become
/// 384 + 140 rather than 512 + 12: a sliver of rows makes an inefficient GEMM), then its
/// padding-only blocks.
inline std::vector<RowTile> row_tiles(const BlockSparseTopology& topo) {
  const Index block = topo.block_rows;
  const Index max_blocks = std::max<Index>(1, kTileRows / block);
  std::vector<RowTile> tiles;
  for (Index e = 0; e < topo.num_experts; ++e) {
    const Index group = topo.group_offsets[e];
    const Index data = topo.group_rows[e];
    const Index total_blocks = (topo.group_offsets[e + 1] - group) / block;
    const Index data_blocks = (data + block - 1) / block;
    const Index runs = (data_blocks + max_blocks - 1) / max_blocks;
    const Index per_run = runs ? (data_blocks + runs - 1) / runs : 0;
    for (Index first = 0; first < data_blocks; first += per_run) {
      const Index rows = (std::min(data_blocks, first + per_run) - first) * block;
      tiles.push_back({e, group + first * block, std::min(rows, data - first * block), rows});
    }
    for (Index first = data_blocks; first < total_blocks; first += max_blocks) {
      const Index rows = (std::min(total_blocks, first + max_blocks) - first) * block;
      tiles.push_back({e, group + first * block, 0, rows});
    }
  }
  return tiles;
}

/// Width of a tile over an expert's f columns: whole column blocks.
inline Index sparse_tile_cols(const BlockSparseTopology& topo) {
  return topo.block_cols * std::max<Index>(1, kTileCols / topo.block_cols);
}

inline Index tile_count(Index extent, Index width) { return (extent + width - 1) / width; }

/// Whether every row tile's products stream the weights (a decode step's few rows per expert).
inline bool streams_weights(const std::vector<RowTile>& tiles) {
  return std::all_of(tiles.begin(), tiles.end(), [](const RowTile& t) {
    return t.data_rows <= kernels::kStreamedProductMaxRows;
  });
}

/// Width of the column tiles over `extent` columns, whole `unit`s: `width` as given, or when the
/// products stream the weights, the fewest equal pieces of at most kStreamedTileCols, so that each
/// product reads long runs of each weight row.
inline Index column_tile_width(Index extent, Index unit, Index width, bool streamed) {
  if (!streamed) return width;
  const Index units = tile_count(extent, unit);
  const Index pieces = tile_count(extent, kernels::ThreadBlocking::kStreamedTileCols);
  return std::max<Index>(1, tile_count(units, pieces)) * unit;
}

/// The work item a thread is likely to take after item i, under parallel_items' dynamic schedule
/// (the team takes items in turn): i + the team's size. A prefetch hint only: results never
/// depend on which thread runs what.
inline Index item_ahead(Index i) { return i + kernels::team_size(); }

}  // namespace moe::detail
