// Dropless expert FFN (SwiGLU, float) forward and forward+backward beside its limit in the same
// binary: the same FLOPs as dense GEMMs over [T*k, d], the best any grouped computation can do.
// Ratios to read: dropless / limit at each shape, and E = 256 / E = 8 at fixed active FLOPs.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <memory>
#include <vector>

#include "moe/core/random.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "moe/experts/dropless_ffn.hpp"
#include "moe/experts/packed_expert_weights.hpp"
#include "moe/kernels/parallel.hpp"
#include "moe/routing/synthetic.hpp"

#include "support.hpp"
#include "swiglu_limit.hpp"

namespace {

using moe::bench::fill;
using moe::bench::SwigluGemmLimit;

using moe::Index;
using Matrix = moe::RowMatrix<float>;

struct Shape {
  Index tokens, d, f, experts, k;
};

// The target shapes (T, d, f, E, k), then the fixed-active-FLOPs pair E = 8 vs E = 256.
const Shape kShapes[] = {{2048, 512, 1024, 8, 2}, {4096, 1024, 2816, 8, 2},
                         {4096, 512, 256, 64, 6}, {16, 2048, 1408, 64, 6},
                         {4096, 512, 256, 8, 2},  {4096, 512, 256, 256, 2}};

/// Cheap deterministic fill: GEMM speed does not depend on the values, and the largest shapes hold
/// billions of parameters.

enum Routing { uniform = 0, zipf = 1 };

/// k distinct experts per token from moe/routing/synthetic.hpp (seed 42): uniform, or Zipf(1)
/// over experts (expert 0 hottest). The same ids, bit for bit, as this bench's own generator
/// before.
moe::ExpertIdMatrix route(const Shape& s, Routing routing) {
  moe::SyntheticRoutingConfig c;
  c.num_tokens = s.tokens;
  c.num_experts = s.experts;
  c.top_k = s.k;
  c.distribution =
      routing == zipf ? moe::SyntheticDistribution::zipf : moe::SyntheticDistribution::uniform;
  c.seed = 42;
  return moe::synthetic_expert_ids(c);
}

/// Active FLOPs of a SwiGLU expert FFN over T*k rows: three [T*k, d] x [d, f]-sized GEMMs.
double forward_flops(const Shape& s) { return 2.0 * 3.0 * s.tokens * s.k * s.d * s.f; }

void set_counters(benchmark::State& state, const Shape& s, double flops) {
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(s.tokens),
                                                  benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

/// What a step runs: a forward with nothing to follow (token rows read in place), the same over a
/// panel copy of the weights (PackedExpertWeights, made once), a training forward (keeps its
/// grouped input for backward), or forward and backward.
enum Pass { inference_forward, panel_forward, training_forward, forward_backward };

/// One dropless expert FFN step (plan, forward, optionally backward) with its buffers.
struct DroplessRun {
  DroplessRun(const Shape& shape, Index block_size, Routing routing, Pass pass)
      : s(shape),
        block(block_size),
        backward(pass == forward_backward),
        config(make_config(shape)),
        w(config),
        x(s.tokens, s.d),
        gates(s.tokens, s.k),
        grad_out(s.tokens, s.d),
        ids(route(s, routing)),
        y(s.tokens, s.d),
        grad_x(s.tokens, s.d),
        grad_gates(s.tokens, s.k),
        grads(backward ? config
                       : moe::ExpertFFNConfig{1, 1, 1, moe::Activation::swiglu, false, 1}) {
    fill(w.w1, 1);
    fill(w.w3, 2);
    fill(w.w2, 3);
    fill(x, 4);
    fill(gates, 5);
    fill(grad_out, 6);
    ctx.save_for_backward = pass != inference_forward && pass != panel_forward;
    if (pass == panel_forward) panels.refresh(w);
  }
  static moe::ExpertFFNConfig make_config(const Shape& s) {
    return moe::bench::swiglu_experts(s.experts, s.d, s.f);
  }
  void step() {
    moe::make_dropless_plan(ids, s.experts, block, plan);
    if (panels.config().num_experts > 0)
      moe::dropless_ffn_forward<float>(w, panels, x, gates, plan, ctx, y);
    else
      moe::dropless_ffn_forward<float>(w, x, gates, plan, ctx, y);
    if (backward)
      moe::dropless_ffn_backward<float>(w, grad_out, plan, ctx, grads, grad_x, grad_gates);
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(grad_x.data());
  }

  Shape s;
  Index block;
  bool backward;
  moe::ExpertFFNConfig config;
  moe::ExpertWeights<float> w;
  moe::PackedExpertWeights<float> panels;  ///< panel_forward only
  Matrix x, gates, grad_out;
  moe::ExpertIdMatrix ids;
  moe::DroplessPlan plan;
  moe::DroplessFFNContext<float> ctx;
  Matrix y, grad_x, grad_gates;
  moe::ExpertGradients<float> grads;
};

void dropless(benchmark::State& state, Pass pass) {
  const bool backward = pass == forward_backward;
  const Shape s = kShapes[state.range(0)];
  DroplessRun run(s, state.range(1), static_cast<Routing>(state.range(2)), pass);
  run.step();  // warm-up outside the timing: the workspace grows and its pages fault in once
  for (auto _ : state) run.step();
  state.counters["padded_rows/Tk"] =
      static_cast<double>(run.plan.padded_rows()) / static_cast<double>(s.tokens * s.k);
  set_counters(state, s, forward_flops(s) * (backward ? 3.0 : 1.0));
}

void dense_limit(benchmark::State& state, bool backward) {
  const Shape s = kShapes[state.range(0)];
  SwigluGemmLimit run(s.tokens * s.k, s.d, s.f, backward);
  run.step();  // warm-up, as the dropless side's
  for (auto _ : state) run.step();
  set_counters(state, s, forward_flops(s) * (backward ? 3.0 : 1.0));
}

/// dropless / limit measured in alternation, each pair back to back (thread CPU time on one
/// thread), so load from other processes hits both sides alike. Reports the median of the pair
/// ratios. The "compare" shape (range 3) replaces the limit with the dropless FFN at another shape:
/// E = 256 against E = 8 at the same active FLOPs.
void paired_ratio(benchmark::State& state, Pass pass) {
  const bool backward = pass == forward_backward;
  const Shape s = kShapes[state.range(0)];
  const Index block = state.range(1);
  const Index against = state.range(2);
  DroplessRun run(s, block, uniform, pass);
  std::unique_ptr<DroplessRun> other;
  std::unique_ptr<SwigluGemmLimit> limit;
  if (against >= 0)
    other = std::make_unique<DroplessRun>(kShapes[against], block, uniform, pass);
  else
    limit = std::make_unique<SwigluGemmLimit>(s.tokens * s.k, s.d, s.f, backward);
  auto baseline = [&] { other ? other->step() : limit->step(); };
  run.step();  // warm up both: workspaces grow, pages fault in
  baseline();
  const double seconds = forward_flops(s) * (backward ? 3.0 : 1.0) / 60e9;
  const int pairs = std::max(5, static_cast<int>(1.5 / seconds));
  std::vector<double> ratios;
  for (auto _ : state) {
    for (int i = 0; i < pairs; ++i) {
      const double t0 = moe::bench::pair_clock_seconds();
      run.step();
      const double t1 = moe::bench::pair_clock_seconds();
      baseline();
      const double t2 = moe::bench::pair_clock_seconds();
      ratios.push_back((t1 - t0) / (t2 - t1));
    }
  }
  std::sort(ratios.begin(), ratios.end());
  state.counters["ratio"] = ratios[ratios.size() / 2];
  state.counters["ratio_min"] = ratios.front();
  state.counters["pairs"] = static_cast<double>(ratios.size());
}

/// Memory limit for tiny batches: reading the weights of every expert the batch touches.
void active_weights_memcpy(benchmark::State& state) {
  const Shape s = kShapes[state.range(0)];
  const moe::ExpertIdMatrix ids = route(s, uniform);
  std::vector<bool> active(static_cast<std::size_t>(s.experts), false);
  for (Index i = 0; i < ids.size(); ++i) active[static_cast<std::size_t>(ids.data()[i])] = true;
  const Index used = std::count(active.begin(), active.end(), true);
  const std::size_t bytes = static_cast<std::size_t>(used * 3 * s.d * s.f) * sizeof(float);
  std::vector<float> from(bytes / sizeof(float)), to(bytes / sizeof(float));
  fill(from.data(), static_cast<Index>(from.size()), 7);
  for (auto _ : state) {
    std::memcpy(to.data(), from.data(), bytes);
    benchmark::DoNotOptimize(to.data());
  }
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(bytes) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  state.counters["active_experts"] = static_cast<double>(used);
}

/// Whether one core overlaps a stream of weights from memory with the FMA work of E = 256's
/// forward products (32 rows x [512, 256] and [256, 512] per expert, through kernels::gemm):
/// `weights` 0 reuses one expert's weights, in cache, for every expert; 1 does the same while
/// prefetching an unrelated 400 MB stream, one expert-sized block per product as the forward
/// prefetches the next product's weights; 2 reads each expert's own weights, as the forward.
void BM_weight_stream_overlap(benchmark::State& state) {
  const Index experts = 256, d = 512, f = 256, rows = 32;
  const int weights = static_cast<int>(state.range(0));
  const Index stored = weights == 2 ? experts : 1;
  Matrix w1(stored * d, f), w3(stored * d, f), w2(stored * f, d);
  fill(w1, 1);
  fill(w3, 2);
  fill(w2, 3);
  Matrix stream(weights == 1 ? 3 * experts * d : 0, f);
  fill(stream, 4);
  Matrix x(experts * rows, d), h(experts * rows, f), y(experts * rows, d);
  fill(x, 5);
  Index block = 0;
  // What a product prefetches: expert `expert`'s block of `own` (the forward's choice), or the
  // stream's next block.
  const auto next = [&](const Matrix& own, Index expert, Index depth) {
    if (weights == 1)
      return moe::kernels::prefetch_block(stream.middleRows(d * (block++ % (3 * experts)), d));
    if (weights == 2)
      return moe::kernels::prefetch_block(own.middleRows(depth * (expert % experts), depth));
    return moe::kernels::PrefetchBlock{};
  };
  const auto step = [&] {
    for (Index e = 0; e < experts; ++e) {
      const Index we = weights == 2 ? e : 0;
      moe::kernels::gemm(h.middleRows(e * rows, rows), x.middleRows(e * rows, rows),
                         w1.middleRows(we * d, d), false, next(w3, e, d));
      moe::kernels::gemm(h.middleRows(e * rows, rows), x.middleRows(e * rows, rows),
                         w3.middleRows(we * d, d), false, next(w1, e + 1, d));
    }
    for (Index e = 0; e < experts; ++e)
      moe::kernels::gemm(y.middleRows(e * rows, rows), h.middleRows(e * rows, rows),
                         w2.middleRows((weights == 2 ? e : 0) * f, f), false, next(w2, e + 1, f));
    benchmark::DoNotOptimize(y.data());
  };
  step();
  for (auto _ : state) step();
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * 3 * experts * rows * d * f * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void BM_dropless_forward(benchmark::State& state) { dropless(state, inference_forward); }
void BM_dropless_forward_backward(benchmark::State& state) { dropless(state, forward_backward); }
void BM_dense_limit_forward(benchmark::State& state) { dense_limit(state, false); }
void BM_dense_limit_forward_backward(benchmark::State& state) { dense_limit(state, true); }
void BM_ratio_forward(benchmark::State& state) { paired_ratio(state, inference_forward); }
void BM_ratio_panel_forward(benchmark::State& state) { paired_ratio(state, panel_forward); }
void BM_ratio_training_forward(benchmark::State& state) { paired_ratio(state, training_forward); }
void BM_ratio_forward_backward(benchmark::State& state) { paired_ratio(state, forward_backward); }

void dropless_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"shape", "block", "zipf"});
  for (Index shape = 0; shape < 6; ++shape) b->Args({shape, 128, uniform});
  b->Args({0, 1, uniform});
  b->Args({3, 1, uniform});
  b->Args({4, 1, uniform});
  b->Args({5, 1, uniform});
  b->Args({0, 128, zipf});
  b->Unit(benchmark::kMillisecond);
}
void limit_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"shape"});
  for (Index shape = 0; shape < 5; ++shape) b->Args({shape});  // shape 5 has shape 4's active FLOPs
  b->Unit(benchmark::kMillisecond);
}

void ratio_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"shape", "block", "against"});
  for (Index shape = 0; shape < 5; ++shape) b->Args({shape, 128, -1});
  b->Args({0, 1, -1});
  b->Args({5, 128, 4});  // E = 256 over E = 8, same active FLOPs
  b->Args({5, 1, 4});
  b->Iterations(1)->Unit(benchmark::kMillisecond);
}

/// The target shapes only: a training forward differs from the inference one by the grouped copy.
void training_ratio_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"shape", "block", "against"});
  for (Index shape = 0; shape < 3; ++shape) b->Args({shape, 128, -1});
  b->Iterations(1)->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_ratio_forward)->Apply(ratio_args);
BENCHMARK(BM_ratio_panel_forward)->Apply(training_ratio_args)->Args({5, 128, 4});
BENCHMARK(BM_ratio_training_forward)->Apply(training_ratio_args);
BENCHMARK(BM_ratio_forward_backward)->Apply(ratio_args);
BENCHMARK(BM_dropless_forward)->Apply(dropless_args);
BENCHMARK(BM_dense_limit_forward)->Apply(limit_args);
BENCHMARK(BM_dropless_forward_backward)->Apply(dropless_args);
BENCHMARK(BM_dense_limit_forward_backward)->Apply(limit_args);
BENCHMARK(BM_weight_stream_overlap)
    ->ArgName("weights")
    ->DenseRange(0, 2)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(active_weights_memcpy)
    ->Arg(3)
    ->Arg(4)
    ->Arg(5)
    ->ArgName("shape")
    ->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
