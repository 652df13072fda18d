// Balancing losses and the bias balancer beside a memcpy of their input (the [T, E] scores or
// logits, read once) and beside the router's own selection over the same logits.
// Counters: tokens/s, GB/s of input read, memcpy_ratio and select_ratio = time / limit time.
#include <cstring>

#include <moe/balance/bias_balancer.hpp>
#include <moe/balance/load_balancing_loss.hpp>
#include <moe/balance/z_loss.hpp>
#include <moe/routing/router.hpp>

#include "support.hpp"

namespace {

using moe::Index;

struct Problem {
  moe::RowMatrix<float> logits;
  moe::Routing<float> routing;
  double memcpy_seconds = 0;
  double select_seconds = 0;

  Problem(Index tokens, Index experts, Index k)
      : logits(moe::bench::random_matrix<float>(tokens, experts, 1)) {
    moe::RouterConfig config;
    config.num_experts = experts;
    config.hidden = 1;
    config.top_k = k;
    moe::RowMatrix<float> scratch;
    const moe::Vector<float> no_bias;
    moe::select_experts<float>(config, logits, no_bias, routing, scratch);
    moe::RowMatrix<float> copy(tokens, experts);
    memcpy_seconds = moe::bench::median_seconds([&] {
      std::memcpy(copy.data(), logits.data(),
                  sizeof(float) * static_cast<std::size_t>(logits.size()));
      benchmark::DoNotOptimize(copy.data());
    });
    moe::Routing<float> again;
    select_seconds = moe::bench::median_seconds(
        [&] { moe::select_experts<float>(config, logits, no_bias, again, scratch); });
  }
};

void report(benchmark::State& state, const Problem& p, double seconds) {
  const double iterations = static_cast<double>(state.iterations());
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(p.logits.rows()) * iterations,
                                                  benchmark::Counter::kIsRate);
  state.counters["GB/s"] =
      benchmark::Counter(sizeof(float) * static_cast<double>(p.logits.size()) * iterations,
                         benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
  state.counters["memcpy_ratio"] = seconds / p.memcpy_seconds;
  state.counters["select_ratio"] = seconds / p.select_seconds;
}

// The limit: one copy of the [T, E] input.
void BM_memcpy_input(benchmark::State& state) {
  Problem p(state.range(0), state.range(1), state.range(2));
  moe::RowMatrix<float> copy(p.logits.rows(), p.logits.cols());
  const double s = moe::bench::timed_loop(state, [&] {
    std::memcpy(copy.data(), p.logits.data(),
                sizeof(float) * static_cast<std::size_t>(p.logits.size()));
    benchmark::DoNotOptimize(copy.data());
  });
  report(state, p, s);
}

// Megatron aux_loss over Routing::scores with the routed selection: value and dL/d scores.
void BM_aux_loss_scores(benchmark::State& state) {
  Problem p(state.range(0), state.range(1), state.range(2));
  auto config = moe::aux_presets::megatron(state.range(2), 1e-2);
  config.selection = moe::AuxSelection::given;
  const double s = moe::bench::timed_loop(state, [&] {
    benchmark::DoNotOptimize(
        moe::load_balancing_loss(p.routing.scores, p.routing.expert_ids, config).grad.data());
  });
  report(state, p, s);
}

// HF Mixtral loss from the logits: softmax and top-k recomputed, dL/d logits.
void BM_aux_loss_logits(benchmark::State& state) {
  Problem p(state.range(0), state.range(1), state.range(2));
  const auto config = moe::aux_presets::hf_mixtral(state.range(2), 1e-3);
  const double s = moe::bench::timed_loop(state, [&] {
    benchmark::DoNotOptimize(moe::load_balancing_loss_from_logits(p.logits,
                                                                  moe::ScoreFunction::softmax,
                                                                  moe::ExpertIdMatrix(), config)
                                 .grad.data());
  });
  report(state, p, s);
}

void BM_z_loss(benchmark::State& state) {
  Problem p(state.range(0), state.range(1), state.range(2));
  const double s = moe::bench::timed_loop(
      state, [&] { benchmark::DoNotOptimize(moe::router_z_loss(p.logits, 1e-3).grad.data()); });
  report(state, p, s);
}

// One micro-batch's counts into the bias balancer (reads [T, k] ids, not [T, E]).
void BM_bias_accumulate(benchmark::State& state) {
  Problem p(state.range(0), state.range(1), state.range(2));
  moe::BiasBalancer<float> balancer(state.range(1));
  const double s = moe::bench::timed_loop(state, [&] {
    balancer.accumulate(0, p.routing.expert_ids);
    benchmark::DoNotOptimize(&balancer);
  });
  report(state, p, s);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->Args({8192, 8, 2})->Args({8192, 64, 8})->Args({4096, 256, 8})->Unit(benchmark::kMicrosecond);
}

BENCHMARK(BM_memcpy_input)->Apply(shapes);
BENCHMARK(BM_aux_loss_scores)->Apply(shapes);
BENCHMARK(BM_aux_loss_logits)->Apply(shapes);
BENCHMARK(BM_z_loss)->Apply(shapes);
BENCHMARK(BM_bias_accumulate)->Apply(shapes);

}  // namespace

BENCHMARK_MAIN();
