// Cost of the health report beside what it monitors: the router forward at T=16384, d=1024,
// E=64, k=8 (the logits GEMM plus softmax, and moe::Router::forward when it is available), and
// a memcpy of the bytes the report reads.
//
// GCC 12 reports a false maybe-uninitialized inside Eigen's AVX-512 packet code under
// -march=native.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include <benchmark/benchmark.h>

#include "moe/core/random.hpp"
#include "moe/health/report.hpp"

#if __has_include("moe/routing/router.hpp")
#include "moe/routing/router.hpp"
#define MOE_HEALTH_BENCH_ROUTER 1
#endif

namespace {

using moe::Index;
using S = float;
using Clock = std::chrono::steady_clock;

constexpr Index kTokens = 16384, kHidden = 1024, kExperts = 64, kTopK = 8;

enum Distribution { balanced = 0, skewed = 1, all_to_one = 2 };
const char* const kDistributionNames[] = {"balanced", "skewed", "all_to_one"};

moe::RowMatrix<S> normal_matrix(Index rows, Index cols, std::uint64_t seed, double stddev) {
  moe::CounterRng rng(seed, 0);
  moe::RowMatrix<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i)
    m.data()[i] = static_cast<S>(stddev * rng.normal(static_cast<std::uint64_t>(i)));
  return m;
}

struct Inputs {
  moe::RowMatrix<S> x, weight;  // [T, d], [E, d]
};

const Inputs& inputs() {
  static const Inputs in{normal_matrix(kTokens, kHidden, 1, 1.0),
                         normal_matrix(kExperts, kHidden, 2, 1.0 / std::sqrt(double(kHidden)))};
  return in;
}

// The baseline: logits = x W^T (Eigen GEMM) and a row softmax, what any router does first.
void logits_softmax(const Inputs& in, moe::RowMatrix<S>& logits, moe::RowMatrix<S>& probs) {
  logits.noalias() = in.x * in.weight.transpose();
  const auto m = logits.rowwise().maxCoeff().eval();
  probs = (logits.colwise() - m).array().exp().matrix();
  const auto sum = probs.rowwise().sum().eval();
  probs.array().colwise() /= sum.array();
}

// Top-k of each row, ties to the lower index (the bench's own routing before the router lands).
moe::ExpertIdMatrix topk(const moe::RowMatrix<S>& p, Index k) {
  moe::ExpertIdMatrix ids(p.rows(), k);
  std::vector<moe::ExpertId> order(static_cast<std::size_t>(p.cols()));
  for (Index t = 0; t < p.rows(); ++t) {
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](auto a, auto b) {
      return p(t, a) > p(t, b) || (p(t, a) == p(t, b) && a < b);
    });
    for (Index j = 0; j < k; ++j) ids(t, j) = order[static_cast<std::size_t>(j)];
  }
  return ids;
}

// A routed batch of the named distribution: balanced = the random router as is; skewed = a
// Zipf-like logit bias (expert e gets -log(1 + e)); all_to_one = expert 0 far ahead.
moe::Routing<S> routed(Distribution dist) {
  moe::Routing<S> r;
  moe::RowMatrix<S> logits(kTokens, kExperts), probs;
  logits_softmax(inputs(), logits, probs);
  for (Index e = 0; e < kExperts; ++e) {
    const S bias =
        dist == skewed ? -S(std::log(1.0 + e)) : (dist == all_to_one && e == 0 ? S(20) : S(0));
    logits.col(e).array() += bias;
  }
  const auto m = logits.rowwise().maxCoeff().eval();
  probs = (logits.colwise() - m).array().exp().matrix();
  probs.array().colwise() /= probs.rowwise().sum().array();
  r.expert_ids = topk(probs, kTopK);
  r.gates = moe::RowMatrix<S>::Zero(kTokens, kTopK);
  r.scores = std::move(probs);
  r.logits = std::move(logits);
  return r;
}

const moe::Routing<S>& routed_cached(Distribution dist) {
  static const moe::Routing<S> cache[] = {routed(balanced), routed(skewed), routed(all_to_one)};
  return cache[dist];
}

void set_counters(benchmark::State& state, double bytes) {
  state.counters["tokens/s"] =
      benchmark::Counter(double(kTokens), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] =
      benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Bytes the full report reads: probabilities and logits [T, E] plus ids [T, k].
constexpr double kReportBytes = double(2 * kTokens * kExperts * sizeof(S) + kTokens * kTopK * 4);

void BM_LogitsSoftmax(benchmark::State& state) {
  moe::RowMatrix<S> logits(kTokens, kExperts), probs(kTokens, kExperts);
  logits_softmax(inputs(), logits, probs);  // builds the inputs outside the timed loop
  for (auto _ : state) {
    logits_softmax(inputs(), logits, probs);
    benchmark::DoNotOptimize(probs.data());
  }
  set_counters(state, 0);
  state.counters["GFLOP/s"] = benchmark::Counter(2e-9 * kTokens * kHidden * kExperts,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_LogitsSoftmax)->Unit(benchmark::kMillisecond);

void BM_HealthReport(benchmark::State& state) {
  const auto& r = routed_cached(static_cast<Distribution>(state.range(0)));
  state.SetLabel(kDistributionNames[state.range(0)]);
  for (auto _ : state) benchmark::DoNotOptimize(moe::health_report(r).hard.max_vio);
  set_counters(state, kReportBytes);
}
BENCHMARK(BM_HealthReport)->DenseRange(0, 2)->Unit(benchmark::kMillisecond);

// The probability-only pass (no logits): the reference check's input with the router's ids.
void BM_HealthReportProbabilities(benchmark::State& state) {
  const auto& r = routed_cached(balanced);
  for (auto _ : state)
    benchmark::DoNotOptimize(moe::health_report(r.scores, r.expert_ids).soft.variance);
  set_counters(state, double(kTokens * kExperts * sizeof(S) + kTokens * kTopK * 4));
}
BENCHMARK(BM_HealthReportProbabilities)->Unit(benchmark::kMillisecond);

// Probabilities alone, hard loads from their top-k (selection included in the cost).
void BM_HealthReportTopkFromProbabilities(benchmark::State& state) {
  const auto& r = routed_cached(balanced);
  for (auto _ : state) benchmark::DoNotOptimize(moe::health_report(r.scores, kTopK).soft.variance);
  set_counters(state, double(kTokens * kExperts * sizeof(S)));
}
BENCHMARK(BM_HealthReportTopkFromProbabilities)->Unit(benchmark::kMillisecond);

// The limit for a memory-bound pass: copying the bytes the report reads.
void BM_MemcpyReportBytes(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(kReportBytes);
  std::vector<char> src(n, 1), dst(n);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), n);
    benchmark::ClobberMemory();
  }
  set_counters(state, kReportBytes);
}
BENCHMARK(BM_MemcpyReportBytes)->Unit(benchmark::kMillisecond);

// The acceptance ratio in one run: each iteration times the forward and the report back to back,
// and `report/forward` is the ratio of their summed times (the reported time is the report's).
void BM_ReportOverForwardGemmSoftmax(benchmark::State& state) {
  moe::RowMatrix<S> logits(kTokens, kExperts), probs(kTokens, kExperts);
  moe::Routing<S> r = routed_cached(balanced);
  double forward = 0, report = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    logits_softmax(inputs(), logits, probs);
    const auto t1 = Clock::now();
    r.scores.swap(probs);
    r.logits.swap(logits);
    benchmark::DoNotOptimize(moe::health_report(r).normalized_entropy);
    const auto t2 = Clock::now();
    forward += std::chrono::duration<double>(t1 - t0).count();
    report += std::chrono::duration<double>(t2 - t1).count();
    state.SetIterationTime(std::chrono::duration<double>(t2 - t1).count());
  }
  state.counters["report/forward"] = report / forward;
  set_counters(state, kReportBytes);
}
BENCHMARK(BM_ReportOverForwardGemmSoftmax)->UseManualTime()->Unit(benchmark::kMillisecond);

#if defined(MOE_HEALTH_BENCH_ROUTER)
moe::Router<S> make_router() {
  moe::RouterConfig c;
  c.num_experts = kExperts;
  c.hidden = kHidden;
  c.top_k = kTopK;
  moe::Router<S> router(c);
  router.init_weights(3, 1.0 / std::sqrt(double(kHidden)));
  return router;
}

void BM_RouterForward(benchmark::State& state) {
  const auto router = make_router();
  moe::RouterContext<S> ctx;
  for (auto _ : state) {
    auto r = router.forward(inputs().x, ctx, moe::Mode::eval);
    benchmark::DoNotOptimize(r.gates.data());
  }
  set_counters(state, 0);
}
BENCHMARK(BM_RouterForward)->Unit(benchmark::kMillisecond);

void BM_ReportOverRouterForward(benchmark::State& state) {
  const auto router = make_router();
  moe::RouterContext<S> ctx;
  double forward = 0, report = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    const auto r = router.forward(inputs().x, ctx, moe::Mode::eval);
    const auto t1 = Clock::now();
    benchmark::DoNotOptimize(moe::health_report(r).normalized_entropy);
    const auto t2 = Clock::now();
    forward += std::chrono::duration<double>(t1 - t0).count();
    report += std::chrono::duration<double>(t2 - t1).count();
    state.SetIterationTime(std::chrono::duration<double>(t2 - t1).count());
  }
  state.counters["report/forward"] = report / forward;
  set_counters(state, kReportBytes);
}
BENCHMARK(BM_ReportOverRouterForward)->UseManualTime()->Unit(benchmark::kMillisecond);
#endif

}  // namespace

BENCHMARK_MAIN();
