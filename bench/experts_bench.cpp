// The dropless expert FFN (SwiGLU, float, inference forward) at the batch sizes of serving, from a
// single decoded token to a prefill, beside the two limits of each shape in the same binary:
//   read   — one pass reading the weights of every expert the batch routes to (the least any
//            forward must move from memory; decode is bound by it);
//   memcpy — the same bytes copied (read and written), the limit the first tables quoted;
//   gemm   — the same FLOPs as dense GEMMs over [T*k, d] through the library's packed kernel.
// The same shapes with bf16 weights and activations (BM_experts_forward_bf16) beside the float
// forward and the bf16 limits: a read of the active bf16 weights, and the same FLOPs as dense bf16
// products through the library's bf16 kernel.
// Each round runs the forward and its limits back to back and the medians of the per-round ratios
// are reported, so load from other processes hits both sides of a ratio alike. Wall time: the
// 2-thread rows run a team.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "moe/dispatch/dropless_plan.hpp"
#include "moe/experts/bf16_dropless_ffn.hpp"
#include "moe/experts/dropless_ffn.hpp"
#include "moe/experts/packed_expert_weights.hpp"
#include "moe/kernels/simd.hpp"
#include "moe/routing/synthetic.hpp"

#include "swiglu_limit.hpp"

namespace {

using moe::Index;
using moe::bench::fill;
using moe::bench::SwigluGemmLimit;
using Matrix = moe::RowMatrix<float>;

struct Shape {
  Index tokens, d, f, experts, k;
};

// (T, d, f, E, k): a prefill, Mixtral-like 128 tokens, a single decoded token, a decode batch,
// Mixtral-like single-token decode.
const Shape kShapes[] = {{512, 2048, 1408, 64, 6},
                         {128, 4096, 14336, 8, 2},
                         {1, 2048, 1408, 64, 6},
                         {16, 2048, 1408, 64, 6},
                         {1, 4096, 14336, 8, 2}};

/// k distinct experts per token, uniformly random (moe/routing/synthetic.hpp, seed 42).
moe::ExpertIdMatrix uniform_ids(const Shape& s) {
  moe::SyntheticRoutingConfig routing;
  routing.num_tokens = s.tokens;
  routing.num_experts = s.experts;
  routing.top_k = s.k;
  routing.seed = 42;
  return moe::synthetic_expert_ids(routing);
}

/// The OpenMP team of one benchmark: `threads` threads while it lives, the former size after.
struct Team {
  explicit Team(int threads) {
#if defined(_OPENMP)
    saved = omp_get_max_threads();
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
  }
  ~Team() {
#if defined(_OPENMP)
    omp_set_num_threads(saved);
#endif
  }
  Team(const Team&) = delete;
  Team& operator=(const Team&) = delete;
  int saved = 1;
};

/// Everything one shape needs, built once and kept while consecutive benchmarks use the shape:
/// Mixtral-like weights are 5.6 GB.
struct Setup {
  explicit Setup(const Shape& shape)
      : s(shape), w(config(shape)), x(s.tokens, s.d), gates(s.tokens, s.k), y(s.tokens, s.d) {
    fill(w.w1, 1);
    fill(w.w3, 2);
    fill(w.w2, 3);
    fill(x, 4);
    fill(gates, 5);
    ids = uniform_ids(s);
    ctx.save_for_backward = false;
    std::vector<bool> active(static_cast<std::size_t>(s.experts), false);
    for (Index i = 0; i < ids.size(); ++i) active[static_cast<std::size_t>(ids.data()[i])] = true;
    // The active experts' weights as contiguous runs: each expert's W1, W3 and W2 block.
    const Index block = s.d * s.f;
    for (Index e = 0; e < s.experts; ++e)
      if (active[static_cast<std::size_t>(e)])
        for (const float* base : {w.w1.data(), w.w3.data(), w.w2.data()})
          runs.push_back(base + e * block);
    run_size = block;
    copy.resize(runs.size() * static_cast<std::size_t>(block));
  }
  static moe::ExpertFFNConfig config(const Shape& s) {
    return moe::bench::swiglu_experts(s.experts, s.d, s.f);
  }

  void forward() {
    moe::make_dropless_plan(ids, s.experts, 128, plan);
    moe::dropless_ffn_forward<float>(w, x, gates, plan, ctx, y);
    benchmark::DoNotOptimize(y.data());
  }

  /// The panel copy of the weights, made on first use; refresh() lays them out again.
  void make_panels() {
    if (panels.config().num_experts != s.experts) refresh_panels();
  }
  void refresh_panels() {
    panels.refresh(w);
    benchmark::DoNotOptimize(panels.w1().data);
  }
  void forward_panels() {
    moe::make_dropless_plan(ids, s.experts, 128, plan);
    moe::dropless_ffn_forward<float>(w, panels, x, gates, plan, ctx, y);
    benchmark::DoNotOptimize(y.data());
  }

  /// Chunks of the active weights, 1 MiB each, handed to the team in order: both threads stream.
  template <class Body>
  void for_chunks(Body&& body) {
    for_chunks(runs.size(), run_size, std::forward<Body>(body));
  }
  template <class Body>
  void for_chunks(std::size_t run_count, Index size, Body&& body) {
    constexpr Index kChunk = Index{1} << 18;
    const Index per_run = (size + kChunk - 1) / kChunk;
    const Index chunks = static_cast<Index>(run_count) * per_run;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (Index c = 0; c < chunks; ++c) {
      const Index r = c / per_run, first = (c % per_run) * kChunk;
      body(r, first, std::min(kChunk, size - first));
    }
  }

  /// Sums every active weight (four packet accumulators per thread): the reads alone.
  float read() { return read_runs(runs, run_size); }

  /// The same over runs of `size` floats' bytes each.
  template <class Runs>
  float read_runs(const Runs& over, Index size) {
    using namespace moe::simd;
    float total = 0;
    for_chunks(over.size(), size, [&](Index r, Index first, Index n) {
      const float* p = reinterpret_cast<const float*>(over[static_cast<std::size_t>(r)]) + first;
      constexpr Index kStep = 4 * kLanes<float>;
      Packet<float> a0 = broadcast(0.0f), a1 = a0, a2 = a0, a3 = a0;
      Index i = 0;
      for (; i + kStep <= n; i += kStep) {
        a0 = add(a0, loadu(p + i));
        a1 = add(a1, loadu(p + i + kLanes<float>));
        a2 = add(a2, loadu(p + i + 2 * kLanes<float>));
        a3 = add(a3, loadu(p + i + 3 * kLanes<float>));
      }
      float part = reduce_add(add(add(a0, a1), add(a2, a3)));
      for (; i < n; ++i) part += p[i];
#if defined(_OPENMP)
#pragma omp atomic
#endif
      total += part;
    });
    benchmark::DoNotOptimize(total);
    return total;
  }

  void memcpy_weights() {
    for_chunks([&](Index r, Index first, Index n) {
      std::memcpy(copy.data() + r * run_size + first, runs[static_cast<std::size_t>(r)] + first,
                  static_cast<std::size_t>(n) * sizeof(float));
    });
    benchmark::DoNotOptimize(copy.data());
  }

  double active_bytes() const {
    return static_cast<double>(runs.size()) * static_cast<double>(run_size) * sizeof(float);
  }

  /// The bf16 copy of the weights and the active experts' panels, made on first use.
  void make_bf16() {
    if (w16.config().num_experts == s.experts) return;
    w16.refresh(w);
    up16.clear();
    down16.clear();
    for (Index e = 0; e < s.experts; ++e)
      if (std::find(ids.data(), ids.data() + ids.size(), static_cast<moe::ExpertId>(e)) !=
          ids.data() + ids.size()) {
        up16.push_back(w16.w1(e));
        up16.push_back(w16.w3(e));
        down16.push_back(w16.w2(e));
      }
  }
  void forward_bf16() {
    moe::make_dropless_plan(ids, s.experts, 128, plan);
    moe::dropless_ffn_forward(w16, x, gates, plan, ctx16, y);
    benchmark::DoNotOptimize(y.data());
  }
  /// Reads the active experts' bf16 panels (as floats: the same bytes).
  float read_bf16() {
    return read_runs(up16, w16.up_panels().size() / 2) +
           read_runs(down16, w16.down_panels().size() / 2);
  }

  Shape s;
  moe::ExpertWeights<float> w;
  Matrix x, gates, y;
  moe::ExpertIdMatrix ids;
  moe::DroplessPlan plan;
  moe::DroplessFFNContext<float> ctx;
  moe::PackedExpertWeights<float> panels;
  moe::Bf16ExpertWeights w16;
  moe::Bf16FFNContext ctx16;
  std::vector<const moe::bf16*> up16, down16;
  std::vector<const float*> runs;
  Index run_size = 0;
  std::vector<float> copy;
};

Setup& setup_for(Index shape) {
  static std::unique_ptr<Setup> cached;
  static Index cached_shape = -1;
  if (cached_shape != shape) {
    cached.reset();  // free the last shape's weights first
    cached = std::make_unique<Setup>(kShapes[shape]);
    cached_shape = shape;
  }
  return *cached;
}

template <class Fn>
double seconds(Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// Args: shape, threads. Counters: the forward over the weights as stored (row-major) and over
/// their panel copy (PackedExpertWeights): median times (ms) and ratios to the limits (forward /
/// limit: 1 is at the limit); the read limit's bandwidth; refresh_ms, laying the weights out in
/// panels again (after an optimizer step).
void BM_experts_forward(benchmark::State& state) {
  const Index shape = state.range(0);
  const int threads = static_cast<int>(state.range(1));
#if !defined(_OPENMP)
  if (threads > 1) return state.SkipWithError("built without OpenMP");
#endif
  const Team team(threads);
  Setup& run = setup_for(shape);
  const Shape& s = run.s;
  SwigluGemmLimit gemm(s.tokens * s.k, s.d, s.f, /*with_backward=*/false);
  run.make_panels();
  run.forward();  // warm-up: workspaces grow, pages fault in
  run.forward_panels();
  run.read();
  run.memcpy_weights();
  gemm.step();
  std::vector<double> forward, to_read, to_memcpy, to_gemm, read;
  std::vector<double> panels, panels_to_read, panels_to_gemm, speedup, refresh;
  const int rounds = s.tokens * s.d * s.f > (Index{1} << 33) ? 5 : 15;
  for (auto _ : state) {
    for (int i = 0; i < rounds; ++i) {
      const double t_forward = seconds([&] { run.forward(); });
      const double t_panels = seconds([&] { run.forward_panels(); });
      const double t_read = seconds([&] { run.read(); });
      const double t_memcpy = seconds([&] { run.memcpy_weights(); });
      const double t_gemm = seconds([&] { gemm.step(); });
      forward.push_back(t_forward);
      panels.push_back(t_panels);
      read.push_back(t_read);
      to_read.push_back(t_forward / t_read);
      to_memcpy.push_back(t_forward / t_memcpy);
      to_gemm.push_back(t_forward / t_gemm);
      panels_to_read.push_back(t_panels / t_read);
      panels_to_gemm.push_back(t_panels / t_gemm);
      speedup.push_back(t_forward / t_panels);
    }
    for (int i = 0; i < 3; ++i) refresh.push_back(seconds([&] { run.refresh_panels(); }));
  }
  state.counters["forward_ms"] = 1e3 * median(forward);
  state.counters["read_GB/s"] = run.active_bytes() * 1e-9 / median(read);
  state.counters["fwd/read"] = median(to_read);
  state.counters["fwd/memcpy"] = median(to_memcpy);
  state.counters["fwd/gemm"] = median(to_gemm);
  state.counters["panels_ms"] = 1e3 * median(panels);
  state.counters["panels/read"] = median(panels_to_read);
  state.counters["panels/gemm"] = median(panels_to_gemm);
  state.counters["fwd/panels"] = median(speedup);
  state.counters["refresh_ms"] = 1e3 * median(refresh);
  state.counters["GFLOP/s"] =
      2.0 * 3.0 * static_cast<double>(s.tokens * s.k * s.d * s.f) * 1e-9 / median(panels);
}

/// The same FLOPs as dense bf16 products over [T*k, d] through kernels::bf16_product: h1 = X W1,
/// h3 = X W3, y = A W2 with X, A in bf16, split over the team in items of 256 rows by 192 columns.
struct Bf16GemmLimit {
  Bf16GemmLimit(Index token_rows, Index d, Index f)
      : rows(token_rows),
        up{d, f},
        down{f, d},
        x(static_cast<std::size_t>(rows * d), moe::to_bf16(0.5f)),
        a(static_cast<std::size_t>(rows * f), moe::to_bf16(0.25f)),
        w1(static_cast<std::size_t>(up.size()), moe::to_bf16(0.01f)),
        w3(static_cast<std::size_t>(up.size()), moe::to_bf16(0.02f)),
        w2(static_cast<std::size_t>(down.size()), moe::to_bf16(0.03f)),
        h1(rows, f),
        h3(rows, f),
        y(rows, d) {}
  void product(const moe::kernels::Bf16Panels& shape, const moe::bf16* left, const moe::bf16* w,
               Matrix& out) {
    constexpr Index kRows = 256, kCols = 4 * moe::kernels::Bf16Panels::kCols;
    const Index row_items = (rows + kRows - 1) / kRows,
                col_items = (shape.cols + kCols - 1) / kCols;
    const moe::kernels::Bf16Kernel kernel = moe::kernels::bf16_kernel();
    moe::kernels::parallel_items(row_items * col_items, [&](Index item) {
      const Index r0 = item / col_items * kRows, c0 = item % col_items * kCols;
      moe::kernels::bf16_product(
          &out(r0, c0), out.cols(), std::min(kRows, rows - r0),
          [&](Index i) { return left + (r0 + i) * shape.depth; }, w, shape, c0,
          std::min(kCols, shape.cols - c0), false, kernel);
    });
  }
  void step() {
    product(up, x.data(), w1.data(), h1);
    product(up, x.data(), w3.data(), h3);
    product(down, a.data(), w2.data(), y);
    benchmark::DoNotOptimize(y.data());
  }
  Index rows;
  moe::kernels::Bf16Panels up, down;
  moe::AlignedBuffer<moe::bf16> x, a, w1, w3, w2;
  Matrix h1, h3, y;
};

/// Args: shape, threads. Counters: the bf16 forward's median time (ms), the float forward's, their
/// ratio (float / bf16: above 1 bf16 is faster), and the bf16 forward over its limits.
void BM_experts_forward_bf16(benchmark::State& state) {
  const Index shape = state.range(0);
  const int threads = static_cast<int>(state.range(1));
#if !defined(_OPENMP)
  if (threads > 1) return state.SkipWithError("built without OpenMP");
#endif
  const Team team(threads);
  Setup& run = setup_for(shape);
  const Shape& s = run.s;
  run.make_bf16();
  Bf16GemmLimit gemm(s.tokens * s.k, s.d, s.f);
  run.forward_bf16();  // warm-up
  run.forward();
  run.read_bf16();
  gemm.step();
  std::vector<double> forward, float_forward, speedup, to_read, to_gemm;
  const int rounds = s.tokens * s.d * s.f > (Index{1} << 33) ? 5 : 15;
  for (auto _ : state) {
    for (int i = 0; i < rounds; ++i) {
      const double t_forward = seconds([&] { run.forward_bf16(); });
      const double t_float = seconds([&] { run.forward(); });
      const double t_read = seconds([&] { run.read_bf16(); });
      const double t_gemm = seconds([&] { gemm.step(); });
      forward.push_back(t_forward);
      float_forward.push_back(t_float);
      speedup.push_back(t_float / t_forward);
      to_read.push_back(t_forward / t_read);
      to_gemm.push_back(t_forward / t_gemm);
    }
  }
  state.counters["bf16_ms"] = 1e3 * median(forward);
  state.counters["float_ms"] = 1e3 * median(float_forward);
  state.counters["float/bf16"] = median(speedup);
  state.counters["fwd/read"] = median(to_read);
  state.counters["fwd/gemm"] = median(to_gemm);
  state.counters["GFLOP/s"] =
      2.0 * 3.0 * static_cast<double>(s.tokens * s.k * s.d * s.f) * 1e-9 / median(forward);
}

// Training shapes (T, d, f, E, k): the prefill above, and E = 8 against E = 256 at the same
// active FLOPs (bench_dropless's pair).
const Shape kTrainingShapes[] = {
    {512, 2048, 1408, 64, 6}, {4096, 512, 256, 8, 2}, {4096, 512, 256, 256, 2}};

/// A training step's expert FFN in float and in mixed precision (bf16 training copies of the float
/// weights, float gradients), forward and backward.
struct TrainingSetup {
  explicit TrainingSetup(const Shape& shape)
      : s(shape),
        w(moe::bench::swiglu_experts(s.experts, s.d, s.f)),
        x(s.tokens, s.d),
        gates(s.tokens, s.k),
        y(s.tokens, s.d),
        grad_out(s.tokens, s.d),
        grad_x(s.tokens, s.d),
        grad_gates(s.tokens, s.k) {
    fill(w.w1, 1);
    fill(w.w3, 2);
    fill(w.w2, 3);
    fill(x, 4);
    fill(gates, 5);
    fill(grad_out, 6);
    ids = uniform_ids(s);
    moe::make_dropless_plan(ids, s.experts, 128, plan);
    w16 = moe::Bf16ExpertWeights(w, moe::Bf16Copies::training);
  }
  void float_forward() {
    moe::dropless_ffn_forward<float>(w, x, gates, plan, ctx, y);
    benchmark::DoNotOptimize(y.data());
  }
  void float_backward() {
    moe::dropless_ffn_backward<float>(w, grad_out, plan, ctx, grads, grad_x, grad_gates);
    benchmark::DoNotOptimize(grads.w1.data());
  }
  void bf16_forward() {
    moe::dropless_ffn_forward(w16, x, gates, plan, ctx16, y);
    benchmark::DoNotOptimize(y.data());
  }
  void bf16_backward() {
    moe::dropless_ffn_backward(w16, grad_out, plan, ctx16, grads, grad_x, grad_gates);
    benchmark::DoNotOptimize(grads.w1.data());
  }
  void refresh() {
    w16.refresh(w);
    benchmark::DoNotOptimize(w16.w1(0));
  }

  Shape s;
  moe::ExpertWeights<float> w;
  moe::ExpertGradients<float> grads;
  Matrix x, gates, y, grad_out, grad_x, grad_gates;
  moe::ExpertIdMatrix ids;
  moe::DroplessPlan plan;
  moe::DroplessFFNContext<float> ctx;
  moe::Bf16ExpertWeights w16;
  moe::Bf16FFNContext ctx16;
};

/// Args: training shape, threads. Counters: float and bf16 forward, forward + backward (ms), their
/// ratios (float / bf16), and refresh_ms, the rounding of the master weights into the training
/// copies that follows each optimizer step.
void BM_experts_training_bf16(benchmark::State& state) {
  const Index shape = state.range(0);
  const int threads = static_cast<int>(state.range(1));
#if !defined(_OPENMP)
  if (threads > 1) return state.SkipWithError("built without OpenMP");
#endif
  const Team team(threads);
  static std::unique_ptr<TrainingSetup> cached;
  static Index cached_shape = -1;
  if (cached_shape != shape) {
    cached.reset();
    cached = std::make_unique<TrainingSetup>(kTrainingShapes[shape]);
    cached_shape = shape;
  }
  TrainingSetup& run = *cached;
  run.float_forward();  // warm-up
  run.float_backward();
  run.bf16_forward();
  run.bf16_backward();
  std::vector<double> fwd32, fwd16, step32, step16, fwd_ratio, step_ratio, refresh;
  for (auto _ : state) {
    for (int i = 0; i < 7; ++i) {
      const double f32 = seconds([&] { run.float_forward(); });
      const double b32 = seconds([&] { run.float_backward(); });
      const double f16 = seconds([&] { run.bf16_forward(); });
      const double b16 = seconds([&] { run.bf16_backward(); });
      refresh.push_back(seconds([&] { run.refresh(); }));
      fwd32.push_back(f32);
      fwd16.push_back(f16);
      step32.push_back(f32 + b32);
      step16.push_back(f16 + b16);
      fwd_ratio.push_back(f32 / f16);
      step_ratio.push_back((f32 + b32) / (f16 + b16));
    }
  }
  state.counters["float_fwd_ms"] = 1e3 * median(fwd32);
  state.counters["bf16_fwd_ms"] = 1e3 * median(fwd16);
  state.counters["float_step_ms"] = 1e3 * median(step32);
  state.counters["bf16_step_ms"] = 1e3 * median(step16);
  state.counters["fwd_float/bf16"] = median(fwd_ratio);
  state.counters["step_float/bf16"] = median(step_ratio);
  state.counters["refresh_ms"] = 1e3 * median(refresh);
}

void training_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"shape", "threads"});
  for (Index shape = 0; shape < 3; ++shape)
    for (Index threads : {1, 2}) b->Args({shape, threads});
  b->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"shape", "threads"});
  for (Index shape = 0; shape < 5; ++shape)
    for (Index threads : {1, 2}) b->Args({shape, threads});
  b->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_experts_forward)->Apply(shapes);
BENCHMARK(BM_experts_forward_bf16)->Apply(shapes);
BENCHMARK(BM_experts_training_bf16)->Apply(training_shapes);

BENCHMARK_MAIN();
