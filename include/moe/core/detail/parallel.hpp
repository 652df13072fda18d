// Static loop partitioning over OpenMP when the library is built with MOE_WITH_OPENMP, a plain loop
// otherwise. Each index is processed by exactly one thread with no reduction across threads, so
// results are bitwise identical at any thread count.
#pragma once

#include "moe/core/types.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace moe::detail {

/// Loops shorter than `min_parallel` run on the calling thread: waking a team costs more than
/// a few hundred cheap iterations.
template <class Body>
void parallel_for(Index begin, Index end, Body&& body, Index min_parallel = 512) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (end - begin >= min_parallel && end - begin > 1)
  for (Index i = begin; i < end; ++i) body(i);
#else
  (void)min_parallel;
  for (Index i = begin; i < end; ++i) body(i);
#endif
}

/// Number of threads parallel_for may use.
inline int max_threads() noexcept {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace moe::detail
