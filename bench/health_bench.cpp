// Cost of the health report beside what it monitors, at T=16384, d=1024, E=64, k=8:
// moe::Router::forward (the acceptance baseline: report <= 5% of it), the logits GEMM plus a
// softmax, and a memcpy of the bytes the report reads (the limit of a memory-bound pass).
// Counters: tokens/s, GB/s over the bytes read, fwd_ratio = time / Router::forward time,
// gemm_softmax_ratio and memcpy_ratio likewise, all measured in this process.
// GCC 12 also reports a false "used uninitialized" inside Eigen's AVX-512 float log under
// -march=native (the bench CMake already silences the "maybe" variant).
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <vector>

#include <benchmark/benchmark.h>
#include <moe/health/report.hpp>
#include <moe/routing/router.hpp>

#include "support.hpp"

namespace {

using moe::Index;
using S = float;

constexpr Index kTokens = 16384, kHidden = 1024, kExperts = 64, kTopK = 8;

enum Distribution { balanced = 0, skewed = 1, all_to_one = 2 };
const char* const kDistributionNames[] = {"balanced", "skewed", "all_to_one"};

// Bytes the full report reads: scores and logits [T, E] plus ids [T, k].
constexpr double kReportBytes = double(2 * kTokens * kExperts * sizeof(S) + kTokens * kTopK * 4);

const moe::RowMatrix<S>& tokens() {
  static const moe::RowMatrix<S> x = moe::bench::random_matrix<S>(kTokens, kHidden, 1);
  return x;
}

// A top-8 softmax router (renormalized, as Mixtral/Qwen); skewed adds a Zipf-like logit bias
// -log(1 + e), all_to_one puts expert 0 far ahead, so a hot expert's cost is measured too.
moe::Router<S> make_router(Distribution dist) {
  moe::RouterConfig c;
  c.num_experts = kExperts;
  c.hidden = kHidden;
  c.top_k = kTopK;
  c.renormalize = true;
  c.linear_bias = dist != balanced;
  moe::Router<S> router(c);
  router.init_weights(2, 1.0 / std::sqrt(double(kHidden)));
  if (dist == skewed)
    for (Index e = 0; e < kExperts; ++e) router.bias[e] = -S(std::log(1.0 + double(e)));
  if (dist == all_to_one) router.bias[0] = S(20);
  return router;
}

struct Baselines {
  double forward, gemm_softmax, memcpy;
};

// Median times of the baselines, once per process.
const Baselines& baselines() {
  static const Baselines b = [] {
    const auto router = make_router(balanced);
    moe::RouterContext<S> ctx;
    Baselines out{};
    out.forward = moe::bench::median_seconds([&] {
      benchmark::DoNotOptimize(router.forward(tokens(), ctx, moe::Mode::eval).gates.data());
    });
    moe::RowMatrix<S> logits(kTokens, kExperts), probs(kTokens, kExperts);
    out.gemm_softmax = moe::bench::median_seconds([&] {
      logits.noalias() = tokens() * router.weight.transpose();
      probs = (logits.colwise() - logits.rowwise().maxCoeff()).array().exp().matrix();
      probs.array().colwise() /= probs.rowwise().sum().array();
      benchmark::DoNotOptimize(probs.data());
    });
    std::vector<char> src(static_cast<std::size_t>(kReportBytes), 1), dst(src.size());
    out.memcpy = moe::bench::median_seconds([&] {
      std::memcpy(dst.data(), src.data(), src.size());
      benchmark::ClobberMemory();
    });
    return out;
  }();
  return b;
}

void counters(benchmark::State& state, double seconds, double bytes) {
  const Baselines& b = baselines();
  state.counters["tokens/s"] = double(kTokens) / seconds;
  if (bytes > 0) state.counters["GB/s"] = bytes * 1e-9 / seconds;
  state.counters["fwd_ratio"] = seconds / b.forward;
  state.counters["gemm_softmax_ratio"] = seconds / b.gemm_softmax;
  state.counters["memcpy_ratio"] = seconds / b.memcpy;
}

const moe::Routing<S>& routed(Distribution dist) {
  static std::vector<moe::Routing<S>> cache = [] {
    std::vector<moe::Routing<S>> out;
    for (auto d : {balanced, skewed, all_to_one}) {
      moe::RouterContext<S> ctx;
      out.push_back(make_router(d).forward(tokens(), ctx, moe::Mode::eval));
    }
    return out;
  }();
  return cache[static_cast<std::size_t>(dist)];
}

void BM_RouterForward(benchmark::State& state) {
  baselines();  // inputs and baselines are built once, outside every timed loop
  const auto router = make_router(balanced);
  moe::RouterContext<S> ctx;
  const double s = moe::bench::timed_loop(state, [&] {
    benchmark::DoNotOptimize(router.forward(tokens(), ctx, moe::Mode::eval).gates.data());
  });
  counters(state, s, 0);
}
BENCHMARK(BM_RouterForward)->Unit(benchmark::kMillisecond);

// The full report from a Routing: soft and hard loads, entropies, confidence, logsumexp.
void BM_HealthReport(benchmark::State& state) {
  const auto& r = routed(static_cast<Distribution>(state.range(0)));
  state.SetLabel(kDistributionNames[state.range(0)]);
  const double s = moe::bench::timed_loop(
      state, [&] { benchmark::DoNotOptimize(moe::health_report(r).hard.max_vio); });
  counters(state, s, kReportBytes);
}
BENCHMARK(BM_HealthReport)->DenseRange(0, 2)->Unit(benchmark::kMillisecond);

// Probabilities and the router's ids only (no logits): the per-token entropy then takes a log
// per probability.
void BM_HealthReportProbabilities(benchmark::State& state) {
  const auto& r = routed(balanced);
  const double s = moe::bench::timed_loop(state, [&] {
    benchmark::DoNotOptimize(moe::health_report(r.scores, r.expert_ids).soft.variance);
  });
  counters(state, s, double(kTokens * kExperts * sizeof(S) + kTokens * kTopK * 4));
}
BENCHMARK(BM_HealthReportProbabilities)->Unit(benchmark::kMillisecond);

// Probabilities alone, as in the reference check: hard loads from their own top-k.
void BM_HealthReportTopkFromProbabilities(benchmark::State& state) {
  const auto& r = routed(balanced);
  const double s = moe::bench::timed_loop(
      state, [&] { benchmark::DoNotOptimize(moe::health_report(r.scores, kTopK).soft.variance); });
  counters(state, s, double(kTokens * kExperts * sizeof(S)));
}
BENCHMARK(BM_HealthReportTopkFromProbabilities)->Unit(benchmark::kMillisecond);

// Forward and report back to back on fresh outputs, timed separately in every iteration, so
// report/forward is a ratio of sums over the same stretch of (noisy, shared) machine time; the
// _cpu variant uses this thread's CPU time, which time slices given to other processes leave out.
void BM_ReportAfterRouterForward(benchmark::State& state) {
  baselines();
  const auto router = make_router(balanced);
  moe::RouterContext<S> ctx;
  double forward = 0, report = 0, forward_cpu = 0, report_cpu = 0;
  using Clock = std::chrono::steady_clock;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    const double c0 = moe::bench::thread_seconds();
    const auto& r = router.forward(tokens(), ctx, moe::Mode::eval);
    const auto t1 = Clock::now();
    const double c1 = moe::bench::thread_seconds();
    benchmark::DoNotOptimize(moe::health_report(r).normalized_entropy);
    const auto t2 = Clock::now();
    const double c2 = moe::bench::thread_seconds();
    forward += std::chrono::duration<double>(t1 - t0).count();
    report += std::chrono::duration<double>(t2 - t1).count();
    forward_cpu += c1 - c0;
    report_cpu += c2 - c1;
  }
  state.counters["report/forward"] = report / forward;
  state.counters["report/forward_cpu"] = report_cpu / forward_cpu;
}
BENCHMARK(BM_ReportAfterRouterForward)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
