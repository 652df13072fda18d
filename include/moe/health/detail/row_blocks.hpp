// Row blocks for the health passes over [T, E]: each block fits in L1/L2, so the several
// reductions over one block read memory once; per-block partials are combined in block order,
// which keeps the result bitwise identical at any thread count.
#pragma once

#include <algorithm>

#include "moe/core/types.hpp"
#include "moe/kernels/parallel.hpp"

namespace moe::detail {

/// Rows per block: 128 rows of 64 floats is 32 KiB.
inline constexpr Index kHealthBlockRows = 128;

inline Index health_block_count(Index rows) noexcept {
  return (rows + kHealthBlockRows - 1) / kHealthBlockRows;
}

/// Calls body(block, first_row, row_count) for every block of a [rows, cols] pass, in parallel
/// when built with OpenMP and the pass is worth a team (a block holds 128 · cols values: at
/// T = 16384, E = 64 the 128 blocks are split). The body must not throw (an exception cannot
/// leave an OpenMP region): record and raise after.
template <class Body>
void for_each_row_block(Index rows, Index cols, Body&& body) {
  kernels::parallel_for(
      0, health_block_count(rows),
      [&](Index b) {
        const Index first = b * kHealthBlockRows;
        body(b, first, std::min(kHealthBlockRows, rows - first));
      },
      kernels::min_parallel_rows(kHealthBlockRows * cols));
}

/// True when every entry is finite: x - x is 0 for finite x and NaN otherwise, and a sum of
/// packets is vectorized where Eigen 3.4's allFinite() walks coefficient by coefficient.
template <class A>
bool sums_finite(const A& a) {
  return (a - a).sum() == typename A::Scalar(0);
}

/// One value per row of a block. (Heap-allocated: a fixed-capacity array here trips GCC 12's
/// -Wmaybe-uninitialized inside Eigen's packet loads; one allocation per 128 rows is noise.)
template <class S>
using BlockColumn = Eigen::Array<S, Eigen::Dynamic, 1>;

/// A copy of one block, for the slow path that zeroes rows holding non-finite values.
template <class S>
using BlockCopy = Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

}  // namespace moe::detail
