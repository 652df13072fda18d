// Software prefetch of what a kernel reads next, while it computes on what it has. Two walks over
// one primitive (simd::prefetch):
// - LinePrefetcher spreads the lines of a strided block (the weights of the product that comes
//   next) evenly over a product's depth steps, so the memory works while the FMA units do;
// - RowsAhead fetches the gathered source rows of a later work item of a row kernel, one line of
//   each per line written: gathered rows otherwise start each on a miss, since the hardware
//   prefetchers stop at page boundaries (one Zen 5 core gathers 4 KiB rows at 17.5 GB/s alone,
//   26 GB/s with it).
#pragma once

#include <algorithm>

#include "moe/core/types.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/kernels/simd.hpp"

namespace moe::kernels {

/// A strided block of memory that a later product reads: `rows` runs of `row_bytes` bytes,
/// `stride_bytes` apart. Empty when nothing follows.
struct PrefetchBlock {
  const char* first = nullptr;
  Index rows = 0;
  Index row_bytes = 0;
  Index stride_bytes = 0;

  Index lines() const noexcept {
    return rows * ((row_bytes + simd::kCacheLineBytes - 1) / simd::kCacheLineBytes);
  }
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

/// Walks a PrefetchBlock in address order, spreading its lines evenly over the ticks a product has:
/// line l is fetched at tick l * ticks / lines, into L2.
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
    simd::prefetch<2>(block_.first + row_ * block_.stride_bytes + offset_);
    // Row by row, in address order: a sequential walk the L2 streamer joins in on.
    offset_ += simd::kCacheLineBytes;
    if (offset_ >= block_.row_bytes) offset_ = 0, ++row_;
  }

  PrefetchBlock block_;
  Index lines_;
  Index ticks_;
  Index credit_ = 0;
  Index row_ = 0;
  Index offset_ = 0;
};

/// The source rows of a later work item (RowBlocking::kPrefetchDistance slots or tokens ahead),
/// which a row kernel prefetches one cache line of each at a time, into every cache level, as it
/// writes its own row.
template <class S>
struct RowsAhead {
  static constexpr int kMaxRows = RowBlocking::kPrefetchRows;
  static constexpr Index kDistance = RowBlocking::kPrefetchDistance;

  const S* rows[kMaxRows] = {};
  int count = 0;

  void add(const S* row) noexcept {
    if (count < kMaxRows) rows[count++] = row;
  }
  /// Fetches the line holding element i of every row.
  MOE_ALWAYS_INLINE void fetch(Index i) const noexcept {
    for (int j = 0; j < count; ++j) simd::prefetch<3>(rows[j] + i);
  }
};

}  // namespace moe::kernels
