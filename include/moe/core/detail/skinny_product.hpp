// Products of tens of rows with a row-major right operand (an expert's weights): the weights are
// read in place, without packing, while the weights of the product that comes next are prefetched
// into L2. With tens of tokens per expert (E = 256 at T·k = 8192 gives 32) a step streams every
// expert's weights from memory once; Eigen's GEMM packs them first, a pass with no arithmetic to
// hide the reads under, and the step then runs at the memory's pace instead of the FMA units'.
#pragma once

#include <algorithm>

#include "moe/core/detail/streamed_product.hpp"
#include "moe/core/types.hpp"

namespace moe::detail {

/// A strided block of memory that a later product reads: `rows` runs of `row_bytes` bytes,
/// `stride_bytes` apart. Empty when nothing follows.
struct PrefetchBlock {
  const char* first = nullptr;
  Index rows = 0;
  Index row_bytes = 0;
  Index stride_bytes = 0;

  Index lines() const noexcept { return rows * ((row_bytes + 63) / 64); }
};

/// The PrefetchBlock of a row-major block with direct access (an expert's weight block).
template <class Block>
PrefetchBlock prefetch_block(const Block& block) {
  using S = typename Block::Scalar;
  static_assert(Block::IsRowMajor, "prefetch_block describes a row-major block");
  return {reinterpret_cast<const char*>(block.data()), block.rows(),
          block.cols() * static_cast<Index>(sizeof(S)),
          block.outerStride() * static_cast<Index>(sizeof(S))};
}

/// A product with nothing to prefetch.
struct NoPrefetch {
  void tick() noexcept {}
};

/// Walks a PrefetchBlock in address order, spreading its lines evenly over the ticks a product has
/// (so the memory works while the FMA units do): line l is fetched at tick l * ticks / lines.
class LinePrefetcher {
 public:
  LinePrefetcher(const PrefetchBlock& block, Index ticks)
      : block_(block), lines_(block.lines()), ticks_(std::max<Index>(1, ticks)) {}

  void tick() noexcept {
    credit_ += lines_;
    while (credit_ >= ticks_) {
      credit_ -= ticks_;
      fetch_line();
    }
  }

 private:
  void fetch_line() noexcept {
    if (row_ >= block_.rows) return;
#if defined(__GNUC__)
    __builtin_prefetch(block_.first + row_ * block_.stride_bytes + offset_, 0, 2);
#endif
    // Row by row, in address order: a sequential walk the L2 streamer joins in on.
    offset_ += 64;
    if (offset_ >= block_.row_bytes) offset_ = 0, ++row_;
  }

  PrefetchBlock block_;
  Index lines_;
  Index ticks_;
  Index credit_ = 0;
  Index row_ = 0;
  Index offset_ = 0;
};

/// Products with more rows than kStreamedProductMaxRows and at most this many take skinny_product.
/// Past it the weights' reads are spread over enough rows that Eigen's packed GEMM is faster.
inline constexpr Index kSkinnyProductMaxRows = 64;

/// Whether skinny_product serves an [m, n] = [m, k] * [k, n] product of scalar S.
template <class S>
inline bool uses_skinny_product(Index m, Index n) {
  return Eigen::internal::packet_traits<S>::Vectorizable && m > kStreamedProductMaxRows &&
         m <= kSkinnyProductMaxRows && n >= Eigen::internal::packet_traits<S>::size;
}

namespace skinny {

/// A register tile holds rows x packets accumulators, the packets of weights of one depth step and
/// one broadcast token value; each weight packet loaded serves every row. With 32 vector registers
/// (AVX-512), 8 x 3 (28 registers) loads weights from L2 half as often per FMA as 4 x 4 did: one
/// core, 32 rows x [512, 256] products, 1.34x faster with the weights in cache, 1.2x streaming
/// them from memory. With 16 (AVX2), 4 x 3 fills them exactly; 4 x 4 spilled and ran at 0.6x.
inline constexpr bool kThirtyTwoRegisters = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32;
inline constexpr Index kRowsPerTile = kThirtyTwoRegisters ? 8 : 4;
inline constexpr int kPacketsPerTile = 3;

/// Columns of a full register tile.
template <class S>
inline constexpr Index kRegisterTileCols = kPacketsPerTile* Eigen::internal::packet_traits<S>::size;

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
/// registers in order of p, then stored (or added to c).
template <int Rows, int Packets, class S, class Lhs, class Prefetcher>
EIGEN_ALWAYS_INLINE void tile(const Lhs& lhs, Index first, Index k, const S* w, Index w_stride,
                              S* c, Index c_stride, bool accumulate, Prefetcher& prefetcher) {
  using namespace Eigen::internal;
  using Packet = typename packet_traits<S>::type;
  constexpr Index kPacket = packet_traits<S>::size;
  Packet acc[Rows][Packets];
  for (auto& row : acc)
    for (Packet& a : row) a = pset1<Packet>(S(0));
  for (Index p = 0; p < k; ++p, w += w_stride) {
    Packet wp[Packets];
    for (int q = 0; q < Packets; ++q) wp[q] = ploadu<Packet>(w + q * kPacket);
    for (int i = 0; i < Rows; ++i) {
      const Packet xb = pset1<Packet>(lhs(first + i, p));
      for (int q = 0; q < Packets; ++q) acc[i][q] = pmadd(xb, wp[q], acc[i][q]);
    }
    prefetcher.tick();
  }
  // Two loops, not a select per store: a select would read c before writing it, and a result
  // written once (a weight gradient) would wait on memory for every line.
  if (accumulate) {
    for (int i = 0; i < Rows; ++i)
      for (int q = 0; q < Packets; ++q) {
        S* out = c + i * c_stride + q * kPacket;
        pstoreu(out, padd(ploadu<Packet>(out), acc[i][q]));
      }
  } else {
    for (int i = 0; i < Rows; ++i)
      for (int q = 0; q < Packets; ++q) pstoreu(c + i * c_stride + q * kPacket, acc[i][q]);
  }
}

/// The same for a last sliver of fewer columns than a packet.
template <class S, class Lhs>
void scalar_tile(const Lhs& lhs, Index first, Index rows, Index cols, Index k, const S* w,
                 Index w_stride, S* c, Index c_stride, bool accumulate) {
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) {
      S sum(0);
      for (Index p = 0; p < k; ++p)
        sum = Eigen::internal::pmadd(lhs(first + i, p), w[p * w_stride + j], sum);
      S& out = c[i * c_stride + j];
      out = accumulate ? out + sum : sum;
    }
}

/// The register tile of Rows rows or, for the last rows of c, of fewer.
template <int Rows, int Packets, class S, class Lhs, class Prefetcher>
EIGEN_ALWAYS_INLINE void tile_rows(Index rows, const Lhs& lhs, Index first, Index k, const S* w,
                                   Index w_stride, S* c, Index c_stride, bool accumulate,
                                   Prefetcher& prefetcher) {
  if constexpr (Rows > 1) {
    if (rows < Rows)
      return tile_rows<Rows - 1, Packets>(rows, lhs, first, k, w, w_stride, c, c_stride, accumulate,
                                          prefetcher);
  }
  tile<Rows, Packets>(lhs, first, k, w, w_stride, c, c_stride, accumulate, prefetcher);
}

/// The width of the column range starting `remaining` columns before the end: a full register
/// tile, one packet, or the last sliver.
template <class S>
Index width_at(Index remaining) {
  constexpr Index kPacket = Eigen::internal::packet_traits<S>::size;
  return remaining >= kRegisterTileCols<S> ? kRegisterTileCols<S>
         : remaining >= kPacket            ? kPacket
                                           : remaining;
}

/// c[first .. first + rows, 0 .. width) over w[k, width] (width from width_at): the register
/// tile of that width, at most kRowsPerTile rows.
template <class S, class Lhs, class Prefetcher>
EIGEN_ALWAYS_INLINE void tile_block(const Lhs& lhs, Index first, Index rows, Index width, Index k,
                                    const S* w, Index w_stride, S* c, Index c_stride,
                                    bool accumulate, Prefetcher& prefetcher) {
  if (width == kRegisterTileCols<S>)
    tile_rows<kRowsPerTile, kPacketsPerTile>(rows, lhs, first, k, w, w_stride, c, c_stride,
                                             accumulate, prefetcher);
  else if (width == Eigen::internal::packet_traits<S>::size)
    tile_rows<kRowsPerTile, 1>(rows, lhs, first, k, w, w_stride, c, c_stride, accumulate,
                               prefetcher);
  else
    scalar_tile(lhs, first, rows, width, k, w, w_stride, c, c_stride, accumulate);
}

/// Register tiles over every row of c for one column range: w's rows are reused from L1 by each
/// group of rows.
template <class S, class Lhs>
void column_range(const Lhs& lhs, Index m, Index width, Index k, const S* w, Index w_stride, S* c,
                  Index c_stride, bool accumulate, LinePrefetcher& prefetcher) {
  for (Index i = 0; i < m; i += kRowsPerTile)
    tile_block(lhs, i, std::min(kRowsPerTile, m - i), width, k, w, w_stride, c + i * c_stride,
               c_stride, accumulate, prefetcher);
}

/// The ticks a product of m rows and n columns over depth k gives a LinePrefetcher.
template <class S>
Index ticks(Index m, Index n, Index k) {
  return (m + kRowsPerTile - 1) / kRowsPerTile * k *
         ((n + kRegisterTileCols<S> - 1) / kRegisterTileCols<S>);
}

}  // namespace skinny

/// c[i, :] = sum_p lhs_row(i)[p] * rhs[p, :] (or += when `accumulate`) for i < m <=
/// kSkinnyProductMaxRows: register tiles of kRowsPerTile rows x kPacketsPerTile packets of c, rhs
/// (row-major [k, n], row stride rhs_stride) read in place, one cache line of `next` prefetched
/// every few depth steps. Each element is summed in order of p; the bits depend on the shapes
/// alone.
template <class S, class LhsRow>
void skinny_product(S* c, Index c_stride, Index m, Index n, Index k, const LhsRow& lhs_row,
                    const S* rhs, Index rhs_stride, bool accumulate, const PrefetchBlock& next) {
  const S* rows[kSkinnyProductMaxRows];
  for (Index i = 0; i < m; ++i) rows[i] = lhs_row(i);
  const skinny::RowPointers<S> lhs{rows};
  LinePrefetcher prefetcher(next, skinny::ticks<S>(m, n, k));
  for (Index j = 0, width = 0; j < n; j += width) {
    width = skinny::width_at<S>(n - j);
    skinny::column_range(lhs, m, width, k, rhs + j, rhs_stride, c + j, c_stride, accumulate,
                         prefetcher);
  }
}

}  // namespace moe::detail
