// Shared benchmark helpers: random inputs, and timing a reference operation (the "limit") inside a
// benchmark so the ratio to it is printed by the same run.
#pragma once

#include <algorithm>
#include <chrono>
#include <ctime>
#include <vector>

#include <benchmark/benchmark.h>
#include <moe/core/random.hpp>
#include <moe/core/types.hpp>
#include <moe/kernels/parallel.hpp>

namespace moe::bench {

template <class S>
RowMatrix<S> random_matrix(Index rows, Index cols, std::uint64_t seed, double scale = 1.0) {
  const CounterRng rng(seed, 0);
  RowMatrix<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i)
    m.data()[i] = static_cast<S>(scale * rng.normal(static_cast<std::uint64_t>(i)));
  return m;
}

/// Median wall time in seconds of `fn` over `repeats` runs after one warm-up.
template <class Fn>
double median_seconds(Fn&& fn, int repeats = 7) {
  fn();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    times.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(times.begin(), times.begin() + repeats / 2, times.end());
  return times[static_cast<std::size_t>(repeats / 2)];
}

/// Runs the benchmark loop over `fn`, timing it by hand as well, and returns seconds per iteration
/// so a ratio to a limit measured in the same process can be reported as a counter.
template <class Fn>
double timed_loop(benchmark::State& state, Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) fn();
  const double total =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return total / static_cast<double>(std::max<benchmark::IterationCount>(1, state.iterations()));
}

/// CPU time of the calling thread: what load from other processes on a shared machine does not
/// inflate (wall time does).
inline double thread_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

/// The clock of a timed pair: this thread's CPU time when the work runs on this thread alone
/// (robust to other processes taking the core), wall time when it runs on several threads, whose
/// CPU time this thread's clock does not see.
inline double pair_clock_seconds() {
  if (kernels::max_threads() > 1)
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  return thread_seconds();
}

/// Runs `op` and `limit` back to back each iteration, in thread CPU time, and returns the median
/// of time(op) / time(limit): both sides of every pair see the same machine state.
template <class Op, class Limit>
double paired_median_ratio(benchmark::State& state, Op&& op, Limit&& limit) {
  std::vector<double> ratios;
  for (auto _ : state) {
    const double t0 = thread_seconds();
    limit();
    const double t1 = thread_seconds();
    op();
    const double t2 = thread_seconds();
    ratios.push_back((t2 - t1) / (t1 - t0));
  }
  std::nth_element(ratios.begin(), ratios.begin() + static_cast<std::ptrdiff_t>(ratios.size() / 2),
                   ratios.end());
  return ratios.empty() ? 0.0 : ratios[ratios.size() / 2];
}

}  // namespace moe::bench
