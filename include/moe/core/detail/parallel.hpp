// Static loop partitioning over OpenMP when the library is built with MOE_WITH_OPENMP, a plain loop
// otherwise. Each index is processed by exactly one thread with no reduction across threads, so
// results are bitwise identical at any thread count.
#pragma once

#include <algorithm>

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

/// Values of row work (a copy, a weighted sum) below which a loop runs on the calling thread.
inline constexpr Index kParallelMinValues = Index{1} << 15;

/// min_parallel for a loop whose iterations each touch `width` values: a few wide rows (a decode
/// step's 8 KB token rows) are worth a team, many narrow ones only past kParallelMinValues.
inline Index min_parallel_rows(Index width) {
  return std::max<Index>(2, kParallelMinValues / std::max<Index>(width, 1));
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
