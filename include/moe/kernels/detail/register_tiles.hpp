// Register tiles: the inner kernel of every product of more than a few rows. A tile holds
// Rows x Packets accumulators of c; each depth step loads Packets packets of the right operand
// once and applies them to every row, broadcasting one left-hand value per row. The right operand
// is read in place (skinny_product), from a transposed chunk (skinny_product_nt) or from packed
// panels (packed_product).
#pragma once

#include <algorithm>

#include "moe/core/types.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/kernels/prefetch.hpp"
#include "moe/kernels/simd.hpp"

namespace moe::kernels::detail::tiles {

template <class S>
using Blocking = ProductBlocking<S>;

/// The left operand read through row pointers: lhs(i, p) = rows[i][offset + p] (the rows of a
/// row-major matrix, or gathered rows; `offset` starts a later depth range).
template <class S>
struct RowPointers {
  const S* const* rows;
  Index offset = 0;
  S operator()(Index i, Index p) const noexcept { return rows[i][offset + p]; }
};

/// The left operand as the transpose of a row-major [k, m] matrix: lhs(i, p) = data[p * stride +
/// i].
template <class S>
struct TransposedRows {
  const S* data;
  Index stride;
  S operator()(Index i, Index p) const noexcept { return data[p * stride + i]; }
};

/// c[i, 0 .. Packets·P) = sum_p lhs(first + i, p) * w[p, 0 .. Packets·P) for i < Rows, summed in
/// registers from 0 in order of p (madd), then stored, or added to c with `accumulate`. With
/// `resume` the sums start from c instead of 0 and are stored: a depth range continues the sums an
/// earlier range stored, with the bits of one pass over both (c holds them exactly).
template <int Rows, int Packets, class S, class Lhs, class Prefetcher>
MOE_ALWAYS_INLINE void tile(const Lhs& lhs, Index first, Index k, const S* w, Index w_stride, S* c,
                            Index c_stride, bool accumulate, Prefetcher& prefetcher,
                            bool resume = false) {
  using Packet = simd::Packet<S>;
  constexpr Index kPacket = simd::kLanes<S>;
  Packet acc[Rows][Packets];
  for (int i = 0; i < Rows; ++i)
    for (int q = 0; q < Packets; ++q)
      acc[i][q] = resume ? simd::loadu(c + i * c_stride + q * kPacket) : simd::broadcast(S(0));
  for (Index p = 0; p < k; ++p, w += w_stride) {
    Packet wp[Packets];
    for (int q = 0; q < Packets; ++q) wp[q] = simd::loadu(w + q * kPacket);
    for (int i = 0; i < Rows; ++i) {
      const Packet xb = simd::broadcast(lhs(first + i, p));
      for (int q = 0; q < Packets; ++q) acc[i][q] = simd::madd(xb, wp[q], acc[i][q]);
    }
    prefetcher.tick();
  }
  // Two loops, not a select per store: a select would read c before writing it, and a result
  // written once (a weight gradient) would wait on memory for every line.
  if (accumulate) {
    for (int i = 0; i < Rows; ++i)
      for (int q = 0; q < Packets; ++q) {
        S* out = c + i * c_stride + q * kPacket;
        simd::storeu(out, simd::add(simd::loadu(out), acc[i][q]));
      }
  } else {
    for (int i = 0; i < Rows; ++i)
      for (int q = 0; q < Packets; ++q) simd::storeu(c + i * c_stride + q * kPacket, acc[i][q]);
  }
}

/// The same for a last sliver of fewer columns than a packet.
template <class S, class Lhs>
void scalar_tile(const Lhs& lhs, Index first, Index rows, Index cols, Index k, const S* w,
                 Index w_stride, S* c, Index c_stride, bool accumulate, bool resume = false) {
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) {
      S sum = resume ? c[i * c_stride + j] : S(0);
      for (Index p = 0; p < k; ++p) sum = simd::madd(lhs(first + i, p), w[p * w_stride + j], sum);
      S& out = c[i * c_stride + j];
      out = accumulate ? out + sum : sum;
    }
}

/// The register tile of Rows rows or, for the last rows of c, of fewer.
template <int Rows, int Packets, class S, class Lhs, class Prefetcher>
MOE_ALWAYS_INLINE void tile_rows(Index rows, const Lhs& lhs, Index first, Index k, const S* w,
                                 Index w_stride, S* c, Index c_stride, bool accumulate,
                                 Prefetcher& prefetcher, bool resume = false) {
  if constexpr (Rows > 1) {
    if (rows < Rows)
      return tile_rows<Rows - 1, Packets>(rows, lhs, first, k, w, w_stride, c, c_stride, accumulate,
                                          prefetcher, resume);
  }
  tile<Rows, Packets>(lhs, first, k, w, w_stride, c, c_stride, accumulate, prefetcher, resume);
}

/// The width of the column range starting `remaining` columns before the end: a full register
/// tile, one packet, or the last sliver.
template <class S>
Index width_at(Index remaining) {
  constexpr Index kPacket = simd::kLanes<S>;
  return remaining >= Blocking<S>::kTileCols ? Blocking<S>::kTileCols
         : remaining >= kPacket              ? kPacket
                                             : remaining;
}

/// c[first .. first + rows, 0 .. width) over w[k, width] (width from width_at): the register
/// tile of that width, at most kTileRows rows.
template <class S, class Lhs, class Prefetcher>
MOE_ALWAYS_INLINE void tile_block(const Lhs& lhs, Index first, Index rows, Index width, Index k,
                                  const S* w, Index w_stride, S* c, Index c_stride, bool accumulate,
                                  Prefetcher& prefetcher, bool resume = false) {
  constexpr int kRows = static_cast<int>(Blocking<S>::kTileRows);
  if (width == Blocking<S>::kTileCols)
    tile_rows<kRows, Blocking<S>::kTilePackets>(rows, lhs, first, k, w, w_stride, c, c_stride,
                                                accumulate, prefetcher, resume);
  else if (width == simd::kLanes<S>)
    tile_rows<kRows, 1>(rows, lhs, first, k, w, w_stride, c, c_stride, accumulate, prefetcher,
                        resume);
  else
    scalar_tile(lhs, first, rows, width, k, w, w_stride, c, c_stride, accumulate, resume);
}

/// Register tiles over every row of c for one column range: w's rows are reused from L1 by each
/// group of rows.
template <class S, class Lhs>
void column_range(const Lhs& lhs, Index m, Index width, Index k, const S* w, Index w_stride, S* c,
                  Index c_stride, bool accumulate, LinePrefetcher& prefetcher) {
  constexpr Index kRows = Blocking<S>::kTileRows;
  for (Index i = 0; i < m; i += kRows)
    tile_block(lhs, i, std::min(kRows, m - i), width, k, w, w_stride, c + i * c_stride, c_stride,
               accumulate, prefetcher);
}

/// The ticks a product of m rows and n columns over depth k gives a LinePrefetcher.
template <class S>
Index ticks(Index m, Index n, Index k) {
  constexpr Index kRows = Blocking<S>::kTileRows, kCols = Blocking<S>::kTileCols;
  return (m + kRows - 1) / kRows * k * ((n + kCols - 1) / kCols);
}

}  // namespace moe::kernels::detail::tiles
