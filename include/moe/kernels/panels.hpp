// The panel layout of a right operand (an expert's weights) that the register tiles read without
// packing it per product: column panels, each [depth, kCols] contiguous, made once and read front
// to back by every product over those weights (kernels::panel_product). A row-major [d, f] matrix
// read in place gives a tile's 48-column slice from a different page at every depth step; the same
// slice of a panel is the next 192 bytes, a sequential stream the hardware prefetchers follow.
#pragma once

#include <algorithm>

#include "moe/core/types.hpp"

namespace moe::kernels {

/// The layout of a [depth, cols] operand as panels of kCols columns: panel q holds columns
/// [q * kCols, (q + 1) * kCols) as a row-major [depth, kCols] block, zeros past the operand's last
/// column; the panels follow each other. 48 columns are one AVX-512 register tile of float (3
/// packets), two of AVX2, four of SSE or NEON, so every instruction set reads the same layout.
struct Panels {
  static constexpr Index kCols = 48;

  Index depth = 0;  ///< rows of the operand: the products' depth
  Index cols = 0;   ///< columns of the operand: the products' width

  Index panels() const noexcept { return (cols + kCols - 1) / kCols; }
  /// Values of one panel.
  Index panel_size() const noexcept { return depth * kCols; }
  /// Values of all panels.
  Index size() const noexcept { return panels() * panel_size(); }
};

/// out = w in the layout of `shape`, w row-major [depth, cols] with rows `stride` apart. `out`
/// holds shape.size() values. Runs on the calling thread: callers spread whole matrices over a
/// team (PackedExpertWeights::refresh).
template <class S>
void pack_panels(const S* w, Index stride, const Panels& shape, S* out) {
  constexpr Index kCols = Panels::kCols;
  for (Index q = 0; q < shape.panels(); ++q) {
    S* panel = out + q * shape.panel_size();
    const Index j0 = q * kCols, width = std::min(kCols, shape.cols - j0);
    for (Index p = 0; p < shape.depth; ++p) {
      std::copy_n(w + p * stride + j0, width, panel + p * kCols);
      std::fill(panel + p * kCols + width, panel + (p + 1) * kCols, S(0));
    }
  }
}

}  // namespace moe::kernels
