// Matrix products whose bits do not depend on the thread count.
#pragma once

#include <algorithm>

#include "moe/core/detail/gemm.hpp"
#include "moe/core/types.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace moe::detail {

/// dst = lhs * rhs, split into fixed blocks of 256 rows of dst (or of columns, when dst has fewer
/// rows than columns), each block one Eigen product on one thread. Eigen threading a product by
/// itself picks its cache blocking from the thread count, so the bits would change with it; fixed
/// blocks inside one OpenMP team give the same bits at any thread count.
template <class Dst, class Lhs, class Rhs>
void fixed_block_product(Dst& dst, const Lhs& lhs, const Rhs& rhs) {
  constexpr Index block = 256;
  const bool by_rows = dst.rows() >= dst.cols();
  const Index extent = by_rows ? dst.rows() : dst.cols();
  const Index blocks = (extent + block - 1) / block;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (Index b = 0; b < blocks; ++b) {
    const Index first = b * block, size = std::min(block, extent - first);
    if (by_rows)
      gemm(dst.middleRows(first, size), lhs.middleRows(first, size), rhs);
    else
      gemm(dst.middleCols(first, size), lhs, rhs.middleCols(first, size));
  }
}

}  // namespace moe::detail
