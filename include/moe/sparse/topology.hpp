// Block-sparse topology of the expert hidden activation, as MegaBlocks builds it: a [P, E*f]
// matrix of block_rows x block_cols blocks in which a row block holds only its own expert's
// column blocks.
#pragma once

#include <algorithm>
#include <vector>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// Structure of the block-diagonal-by-expert sparse matrix [rows(), columns()].
///
/// Storage of values (Block-ELL): every row holds exactly f present columns, so a sparse matrix is
/// a dense row-major `[rows(), f]` buffer whose row r holds columns [e*f, (e+1)*f) of row r, e
/// being r's expert. Block b = (row block i, column block j of its expert) is the values rectangle
/// at rows [i*block_rows, ...) and columns [j*block_cols, ...): contiguous rows, so any run of
/// blocks is one GEMM operand. The BCSR index arrays below describe the same blocks in MegaBlocks'
/// order.
///
/// Rows past an expert's `group_rows` are padding: structural zeros the operations never read and
/// write as zero (unless write_padding is off).
struct BlockSparseTopology {
  Index num_experts = 0;
  Index ffn_hidden = 0;  ///< f: columns per expert
  Index block_rows = 1;  ///< B: height of a block, the plan's padding multiple
  Index block_cols = 1;  ///< width of a block; the last block of an expert is narrower if B_c ∤ f
  IndexVector group_offsets;  ///< [E+1] first row of each expert's group (multiples of block_rows)
  IndexVector group_rows;     ///< [E] rows of each group holding data; the rest is padding
  /// Whether products write zeros into the padding rows of their outputs. A caller that never
  /// reads padding rows (the expert FFN) turns it off and saves the stores.
  bool write_padding = true;

  // BCSR over blocks, row-major order (MegaBlocks `offsets`, `row_indices`, `column_indices`).
  IndexVector row_block_expert;  ///< [row blocks] expert owning each row block
  IndexVector
      block_offsets;        ///< [row blocks + 1] blocks of row block i: [offsets[i], offsets[i+1])
  IndexVector row_indices;  ///< [nnz] row block of block b
  IndexVector column_indices;  ///< [nnz] sparse column block of block b (e * nb + j)
  // The same blocks in column-major order, for the transposed products (MegaBlocks
  // `column_indices_t`, `offsets_t`, `block_offsets_t`).
  IndexVector transpose_offsets;  ///< [E*nb + 1] blocks of column block c in transpose order
  IndexVector transpose_blocks;   ///< [nnz] block id at each transpose position

  Index rows() const noexcept { return group_offsets.size() ? group_offsets[num_experts] : 0; }
  Index columns() const noexcept { return num_experts * ffn_hidden; }
  Index row_blocks() const noexcept { return rows() / block_rows; }
  /// nb = ceil(f / block_cols) column blocks per expert.
  Index column_blocks_per_expert() const noexcept {
    return (ffn_hidden + block_cols - 1) / block_cols;
  }
  Index nnz_blocks() const noexcept { return row_blocks() * column_blocks_per_expert(); }
  /// First column of column block j inside an expert's f columns, and its width.
  Index column_block_begin(Index j) const noexcept { return j * block_cols; }
  Index column_block_width(Index j) const noexcept {
    return std::min(block_cols, ffn_hidden - j * block_cols);
  }
};

/// Builds the topology over groups [offsets[e], offsets[e+1]), each a multiple of block_rows, of
/// which the first rows[e] hold data (MegaBlocks `topology`: ffn/B column blocks per row block).
inline BlockSparseTopology make_topology(const Eigen::Ref<const IndexVector>& group_offsets,
                                         const Eigen::Ref<const IndexVector>& group_rows,
                                         Index block_rows, Index ffn_hidden, Index block_cols) {
  require(group_offsets.size() >= 2, "group_offsets", "[E+1] entries with E >= 1",
          group_offsets.size());
  const Index experts = group_offsets.size() - 1;
  require(group_rows.size() == experts, "group_rows", detail::concat(experts, " entries"),
          group_rows.size());
  require(block_rows >= 1, "block_rows", ">= 1", block_rows);
  require(block_cols >= 1, "block_cols", ">= 1", block_cols);
  require(ffn_hidden >= 1, "ffn_hidden", ">= 1", ffn_hidden);
  require(group_offsets[0] == 0, "group_offsets[0]", 0, group_offsets[0]);
  for (Index e = 0; e < experts; ++e) {
    const Index size = group_offsets[e + 1] - group_offsets[e];
    require(size >= 0 && size % block_rows == 0, "group_offsets",
            detail::concat("groups that are multiples of block_rows (", block_rows, ")"),
            detail::concat(size, " rows in group ", e));
    require(group_rows[e] >= 0 && group_rows[e] <= size, "group_rows",
            detail::concat("0 <= rows <= group size (", size, ") for expert ", e), group_rows[e]);
  }

  BlockSparseTopology topo;
  topo.num_experts = experts;
  topo.ffn_hidden = ffn_hidden;
  topo.block_rows = block_rows;
  topo.block_cols = block_cols;
  topo.group_offsets = group_offsets;
  topo.group_rows = group_rows;

  const Index nb = topo.column_blocks_per_expert();
  const Index row_blocks = topo.row_blocks();
  topo.row_block_expert.resize(row_blocks);
  topo.block_offsets.resize(row_blocks + 1);
  topo.row_indices.resize(row_blocks * nb);
  topo.column_indices.resize(row_blocks * nb);
  for (Index e = 0; e < experts; ++e)
    for (Index i = group_offsets[e] / block_rows; i < group_offsets[e + 1] / block_rows; ++i)
      topo.row_block_expert[i] = static_cast<Index>(e);
  for (Index i = 0; i < row_blocks; ++i) {
    topo.block_offsets[i] = i * nb;
    for (Index j = 0; j < nb; ++j) {
      topo.row_indices[i * nb + j] = i;
      topo.column_indices[i * nb + j] = topo.row_block_expert[i] * nb + j;
    }
  }
  topo.block_offsets[row_blocks] = row_blocks * nb;

  // Column block e*nb + j holds row blocks of expert e only, ascending.
  topo.transpose_offsets.resize(experts * nb + 1);
  topo.transpose_blocks.resize(row_blocks * nb);
  Index position = 0;
  for (Index e = 0; e < experts; ++e) {
    for (Index j = 0; j < nb; ++j) {
      topo.transpose_offsets[e * nb + j] = position;
      for (Index i = group_offsets[e] / block_rows; i < group_offsets[e + 1] / block_rows; ++i)
        topo.transpose_blocks[position++] = i * nb + j;
    }
  }
  topo.transpose_offsets[experts * nb] = position;
  return topo;
}

}  // namespace moe
