// Router forward and backward beside the bare logits GEMM x W^T of the same shape.
// Counters: tokens/s; gemm_ratio = time / (logits GEMM time), measured in this process.
#include <moe/routing/router.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "support.hpp"

namespace {

using moe::Index;

moe::RouterConfig config_for(Index experts, Index hidden, Index k) {
  moe::RouterConfig c;
  c.num_experts = experts;
  c.hidden = hidden;
  c.top_k = k;
  c.renormalize = true;
  return c;
}

struct Problem {
  moe::RowMatrix<float> x;
  moe::Router<float> router;
  double gemm_seconds;

  Problem(Index tokens, Index hidden, Index experts, Index k)
      : x(moe::bench::random_matrix<float>(tokens, hidden, 1)),
        router(config_for(experts, hidden, k)) {
    router.init_weights(2, 1.0 / std::sqrt(static_cast<double>(hidden)));
    moe::RowMatrix<float> logits(tokens, experts);
    gemm_seconds =
        moe::bench::median_seconds([&] { logits.noalias() = x * router.weight.transpose(); });
  }
};

void report(benchmark::State& state, Index tokens, double seconds, double gemm_seconds) {
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(tokens) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
  state.counters["gemm_ratio"] = seconds / gemm_seconds;
}

// The limit: logits = x W^T alone.
void BM_logits_gemm(benchmark::State& state) {
  const Index T = state.range(0), d = state.range(1), E = state.range(2);
  Problem p(T, d, E, 1);
  moe::RowMatrix<float> logits(T, E);
  const double s = moe::bench::timed_loop(state, [&] {
    logits.noalias() = p.x * p.router.weight.transpose();
    benchmark::DoNotOptimize(logits.data());
  });
  report(state, T, s, p.gemm_seconds);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * T * d * E * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
}

// Scoring + top-k + gates from precomputed logits: what the router adds on top of the GEMM.
void BM_select_experts(benchmark::State& state) {
  const Index T = state.range(0), d = state.range(1), E = state.range(2), k = state.range(3);
  Problem p(T, d, E, k);
  const moe::RowMatrix<float> logits = p.x * p.router.weight.transpose();
  moe::Routing<float> routing;
  moe::RowMatrix<float> scratch;
  const moe::Vector<float> no_bias;
  const double s = moe::bench::timed_loop(state, [&] {
    moe::select_experts<float>(p.router.config, logits, no_bias, routing, scratch);
    benchmark::DoNotOptimize(routing.gates.data());
  });
  report(state, T, s, p.gemm_seconds);
}

void BM_router_forward(benchmark::State& state) {
  const Index T = state.range(0), d = state.range(1), E = state.range(2), k = state.range(3);
  Problem p(T, d, E, k);
  moe::RouterContext<float> ctx;
  const double s = moe::bench::timed_loop(state, [&] {
    benchmark::DoNotOptimize(p.router.forward(p.x, ctx, moe::Mode::eval).gates.data());
  });
  report(state, T, s, p.gemm_seconds);
}

void BM_router_backward(benchmark::State& state) {
  const Index T = state.range(0), d = state.range(1), E = state.range(2), k = state.range(3);
  Problem p(T, d, E, k);
  moe::RouterContext<float> ctx;
  p.router.forward(p.x, ctx, moe::Mode::train);
  const moe::RouterUpstream<float> upstream{moe::bench::random_matrix<float>(T, k, 3), {}, {}};
  const double s = moe::bench::timed_loop(state, [&] {
    benchmark::DoNotOptimize(p.router.backward(p.x, ctx, upstream).weight.data());
  });
  report(state, T, s, p.gemm_seconds);
}

// Scoring + top-k + gates over the logits GEMM, paired in one thread's CPU time (OpenMP off for
// the measurement): the target is select_over_gemm <= 0.15 at T=16384, d=1024, E=64, k=8.
void BM_select_over_gemm(benchmark::State& state) {
  const Index T = state.range(0), d = state.range(1), E = state.range(2), k = state.range(3);
  Problem p(T, d, E, k);
  moe::RowMatrix<float> logits(T, E);
  moe::Routing<float> routing;
  moe::RowMatrix<float> scratch;
  const moe::Vector<float> no_bias;
#if defined(_OPENMP)
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  state.counters["select_over_gemm"] = moe::bench::paired_median_ratio(
      state,
      [&] {
        moe::select_experts<float>(p.router.config, logits, no_bias, routing, scratch);
        benchmark::DoNotOptimize(routing.gates.data());
      },
      [&] {
        logits.noalias() = p.x * p.router.weight.transpose();
        benchmark::DoNotOptimize(logits.data());
      });
#if defined(_OPENMP)
  omp_set_num_threads(threads);
#endif
}

const std::vector<int64_t> tokens = {16, 1024, 16384}, hidden = {1024, 4096},
                           experts = {8, 64, 256}, top_k = {1, 2, 8};

}  // namespace

BENCHMARK(BM_logits_gemm)
    ->ArgsProduct({tokens, hidden, experts})
    ->ArgNames({"T", "d", "E"})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_select_experts)
    ->ArgsProduct({tokens, {1024}, experts, top_k})
    ->ArgNames({"T", "d", "E", "k"})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_select_over_gemm)
    ->ArgsProduct({{1024, 16384}, {1024}, {8, 64, 256}, top_k})
    ->ArgNames({"T", "d", "E", "k"})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_router_forward)
    ->ArgsProduct({tokens, hidden, experts, top_k})
    ->ArgNames({"T", "d", "E", "k"})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_router_backward)
    ->ArgsProduct({tokens, hidden, experts, top_k})
    ->ArgNames({"T", "d", "E", "k"})
    ->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
