// Work tiles of the block-sparse products: fixed runs of whole blocks chosen from the shapes alone,
// never from the thread count, so every output element is computed by the same GEMM call (same
// blocking, same summation order) at any number of threads.
#pragma once

#include <algorithm>
#include <vector>

#include "moe/core/types.hpp"
#include "moe/sparse/topology.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace moe::detail {

/// Target tile extent: large enough that packing stays a small fraction of a tile's GEMM, small
/// enough that a hot expert splits into many tiles.
inline constexpr Index kTileRows = 512;
inline constexpr Index kTileCols = 512;

/// Rows [begin, begin + rows) of one expert's group, whole row blocks; the first data_rows hold
/// data.
struct RowTile {
  Index expert;
  Index begin;
  Index data_rows;
  Index rows;
};

inline std::vector<RowTile> row_tiles(const BlockSparseTopology& topo) {
  const Index step = topo.block_rows * std::max<Index>(1, kTileRows / topo.block_rows);
  std::vector<RowTile> tiles;
  for (Index e = 0; e < topo.num_experts; ++e) {
    const Index group = topo.group_offsets[e];
    const Index data_end = group + topo.group_rows[e];
    for (Index begin = group; begin < topo.group_offsets[e + 1]; begin += step) {
      const Index rows = std::min(step, topo.group_offsets[e + 1] - begin);
      const Index data = std::clamp<Index>(data_end - begin, 0, rows);
      tiles.push_back({e, begin, data, rows});
    }
  }
  return tiles;
}

/// Width of a tile over an expert's f columns: whole column blocks.
inline Index sparse_tile_cols(const BlockSparseTopology& topo) {
  return topo.block_cols * std::max<Index>(1, kTileCols / topo.block_cols);
}

inline Index tile_count(Index extent, Index width) { return (extent + width - 1) / width; }

/// Runs body(i) for i in [0, n), each index on one thread. Tiles differ in cost (a hot expert's
/// against a padding-only one), so they are handed out dynamically; the result does not depend on
/// which thread ran a tile.
template <class Body>
void parallel_tiles(Index n, Body&& body) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1)
  for (Index i = 0; i < n; ++i) body(i);
#else
  for (Index i = 0; i < n; ++i) body(i);
#endif
}

}  // namespace moe::detail
