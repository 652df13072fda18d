// Loops over threads: OpenMP when compiled with it (link moe::openmp, or -fopenmp), plain loops
// otherwise. Every index is processed by exactly one thread and nothing is reduced across
// threads, so results are the same bits at any thread count.
#pragma once

#include <algorithm>

#include "moe/core/types.hpp"
#include "moe/kernels/blocking.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace moe::kernels {

/// body(i) for i in [begin, end), statically split over the team; loops shorter than
/// `min_parallel` stay on the calling thread.
template <class Body>
void parallel_for(Index begin, Index end, Body&& body,
                  Index min_parallel = ThreadBlocking::kMinParallelIterations) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (end - begin >= min_parallel && end - begin > 1)
  for (Index i = begin; i < end; ++i) body(i);
#else
  (void)min_parallel;
  for (Index i = begin; i < end; ++i) body(i);
#endif
}

/// min_parallel for a loop whose iterations each touch `width` values: a few wide rows (a decode
/// step's 8 KB token rows) are worth a team, many narrow ones only past kMinParallelValues.
inline Index min_parallel_rows(Index width) {
  return std::max<Index>(2, ThreadBlocking::kMinParallelValues / std::max<Index>(width, 1));
}

/// body(i) for i in [0, n), handed out one at a time to whichever thread is free: for work items
/// of unequal cost (a hot expert's tile beside a padding-only one). The team starts even for one
/// item, so that a product inside runs on one thread with shape-only blocking.
template <class Body>
void parallel_items(Index n, Body&& body) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1)
  for (Index i = 0; i < n; ++i) body(i);
#else
  for (Index i = 0; i < n; ++i) body(i);
#endif
}

/// Threads parallel_for may use.
inline int max_threads() noexcept {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Threads of the team the caller runs in (1 outside one).
inline int team_size() noexcept {
#if defined(_OPENMP)
  return omp_get_num_threads();
#else
  return 1;
#endif
}

/// Whether the caller runs inside a parallel region.
inline bool in_team() noexcept {
#if defined(_OPENMP)
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}

/// body(first row, rows) over [0, m): once for all rows inside a team, with one thread, or for
/// little work; else over one contiguous range of whole `row_unit`s per thread, `threads` of them.
template <class Body>
void split_rows(Index m, Index row_unit, double work, int threads, Body&& body) {
#if defined(_OPENMP)
  if (!in_team() && threads > 1 && work >= ThreadBlocking::kMinThreadedProductWork &&
      m >= 2 * row_unit) {
    const Index units = (m + row_unit - 1) / row_unit;
    const Index per_thread = (units + threads - 1) / threads * row_unit;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int t = 0; t < threads; ++t) {
      const Index first = t * per_thread;
      if (first < m) body(first, std::min(per_thread, m - first));
    }
    return;
  }
#else
  (void)row_unit, (void)work, (void)threads;
#endif
  body(Index{0}, m);
}

}  // namespace moe::kernels
