// The whole MoELayer<float> (router, dispatch, SwiGLU experts, combine) forward and
// forward+backward beside its limit in the same binary, and the routing pieces alone.
//
// Limits: the same FLOPs as dense Eigen GEMMs over [T*k, d] (what a perfect grouped GEMM would
// cost, router excluded); for decode, reading the active experts' weights (a memcpy of their
// bytes). The layer and its limit run back to back in alternation; `ratio` is the median of the
// pair ratios, so the machine's load swings hit both sides alike. `layer_ms` / `limit_ms` are the
// medians of each side, what bench/compare_torch.sh puts beside PyTorch.
//
// Routing is forced, not learned: the router weight is [I_E | 0] and the first E columns of x hold
// the wanted choices, so every distribution (balanced, uniform random, Zipf, all-to-one) reaches
// the layer exactly. A full run (4 minutes on a loaded 2-core machine; add --benchmark_filter=piece
// for the routing pieces alone, about 20 s):
//   OMP_NUM_THREADS=2 ./bench_layer --benchmark_min_time=0.1
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

#include <moe/core/random.hpp>
#include <moe/dispatch/dropless_permute.hpp>
#include <moe/dispatch/dropless_plan.hpp>
#include <moe/kernels/parallel.hpp>
#include <moe/layer/moe_layer.hpp>
#include <moe/routing/router.hpp>
#include <moe/routing/synthetic.hpp>

#include "support.hpp"
#include "swiglu_limit.hpp"

namespace {

using moe::bench::fill;
using moe::bench::SwigluGemmLimit;

using moe::Index;
using Matrix = moe::RowMatrix<float>;

struct Shape {
  const char* name;
  Index tokens, d, f, experts, k;
  double capacity_factor;  ///< 0: dropless
};

const Shape kShapes[] = {{"small", 2048, 512, 1024, 8, 2, 0.0},
                         {"medium", 4096, 1024, 2816, 8, 2, 0.0},
                         {"fine_grained", 4096, 512, 256, 64, 6, 0.0},
                         {"switch", 4096, 768, 3072, 16, 1, 1.25},
                         {"decode", 16, 2048, 1408, 64, 6, 0.0}};
constexpr Index kSmall = 0, kMedium = 1, kFine = 2, kSwitch = 3, kDecode = 4;

enum Distribution : Index { balanced = 0, uniform = 1, zipf = 2, all_to_one = 3 };
const char* const kDistributionNames[] = {"balanced", "uniform", "zipf", "all_to_one"};

/// k distinct experts per token from moe/routing/synthetic.hpp (seed 42): balanced (expert
/// (t k + j) mod E, T k / E pairs each), uniform, Zipf(1) (expert 0 hottest), all_to_one (experts
/// 0..k-1, the collapsed router). The same ids, bit for bit, as this bench's own generator before.
moe::ExpertIdMatrix route(const Shape& s, Distribution distribution) {
  using D = moe::SyntheticDistribution;
  static constexpr D kinds[] = {D::balanced, D::uniform, D::zipf, D::all_to_one};
  moe::SyntheticRoutingConfig c;
  c.num_tokens = s.tokens;
  c.num_experts = s.experts;
  c.top_k = s.k;
  c.distribution = kinds[distribution];
  c.seed = 42;
  return moe::synthetic_expert_ids(c);
}

/// Writes the routing into x's first E columns: chosen experts get 4, 3.5, ... in choice order,
/// the others -1, so with the router weight [I_E | 0] the top-k is exactly `ids` in that order.
void encode_routing(const moe::ExpertIdMatrix& ids, Index experts, Matrix& x) {
  x.leftCols(experts).setConstant(-1.0f);
  for (Index t = 0; t < ids.rows(); ++t)
    for (Index j = 0; j < ids.cols(); ++j) x(t, ids(t, j)) = 4.0f - 0.5f * static_cast<float>(j);
}

moe::MoELayerConfig layer_config(const Shape& s) {
  moe::MoELayerConfig c;
  c.router.num_experts = s.experts;
  c.router.hidden = s.d;
  c.router.top_k = s.k;
  c.router.renormalize = s.k > 1;  // Mixtral / DeepSeek renormalize; Switch keeps the top-1 prob
  c.ffn_hidden = s.f;
  c.activation = moe::Activation::swiglu;
  if (s.capacity_factor > 0) {
    c.dispatch = moe::DispatchKind::capacity;
    c.capacity.train_factor = s.capacity_factor;
    c.capacity.eval_factor = s.capacity_factor;
  }
  return c;
}

moe::MoELayerConfig with_precision(moe::MoELayerConfig c, moe::ExpertPrecision precision) {
  c.expert_precision = precision;
  return c;
}

/// One layer step on forced routing: the forward alone in Mode::eval (inference, as the no_grad
/// PyTorch forward it is compared with), forward and backward in Mode::train.
struct LayerRun {
  LayerRun(const Shape& shape, Distribution distribution, bool with_backward,
           moe::ExpertPrecision precision = moe::ExpertPrecision::native)
      : s(shape),
        backward(with_backward),
        layer(with_precision(layer_config(shape), precision)),
        ids(route(shape, distribution)),
        x(s.tokens, s.d),
        grad_y(s.tokens, s.d) {
    layer.router.weight.setZero();
    for (Index e = 0; e < s.experts; ++e) layer.router.weight(e, e) = 1.0f;
    fill(layer.experts.w1, 1);
    fill(layer.experts.w3, 2);
    fill(layer.experts.w2, 3);
    fill(x, 4);
    encode_routing(ids, s.experts, x);
    fill(grad_y, 5);
  }
  /// The training loop's way: gradients into `grads`, kept across steps. `fresh`: a new
  /// MoEGradients each step (the value-returning backward), which allocates and zero-fills every
  /// expert's gradient first.
  void step(bool fresh = false) {
    const moe::MoEOutput<float> out =
        layer.forward(x, ctx, backward ? moe::Mode::train : moe::Mode::eval);
    benchmark::DoNotOptimize(out.y.data());
    if (!backward) return;
    if (fresh) {
      const moe::MoEGradients<float> new_grads = layer.backward(x, ctx, grad_y);
      benchmark::DoNotOptimize(new_grads.experts.w1.data());
    } else {
      layer.backward(x, ctx, grad_y, grads);
      benchmark::DoNotOptimize(grads.experts.w1.data());
    }
  }

  Shape s;
  bool backward;
  moe::MoELayer<float> layer;
  moe::ExpertIdMatrix ids;
  Matrix x, grad_y;
  moe::MoELayerContext<float> ctx;
  moe::MoEGradients<float> grads;
};

/// Active FLOPs of SwiGLU experts over T*k rows: three [T*k, d] x [d, f]-sized GEMMs.
double forward_flops(const Shape& s) { return 2.0 * 3.0 * s.tokens * s.k * s.d * s.f; }

/// The memory limit of a decode step: the active experts' W1, W3, W2 bytes read once (a memcpy in
/// 256 KiB chunks into a cache-resident buffer per thread) for forward; forward+backward reads
/// them again and writes as many gradient bytes (a memcpy into a buffer of that size).
struct MemoryLimit {
  MemoryLimit(const moe::ExpertWeights<float>& w, const moe::ExpertIdMatrix& ids,
              bool with_backward)
      : backward(with_backward) {
    const moe::ExpertFFNConfig& c = w.config;
    std::vector<bool> active(static_cast<std::size_t>(c.num_experts), false);
    for (Index i = 0; i < ids.size(); ++i) active[static_cast<std::size_t>(ids.data()[i])] = true;
    const std::size_t block = static_cast<std::size_t>(c.hidden * c.ffn_hidden);
    for (Index e = 0; e < c.num_experts; ++e) {
      if (!active[static_cast<std::size_t>(e)]) continue;
      const std::size_t offset = static_cast<std::size_t>(e) * block;
      for (const float* base : {w.w1.data(), w.w3.data(), w.w2.data()})
        for (std::size_t at = 0; at < block; at += kChunk)
          chunks.push_back({base + offset + at, std::min(kChunk, block - at)});
      ++active_experts;
    }
    floats = active_experts * 3 * static_cast<Index>(block);
    scratch.resize(static_cast<std::size_t>(moe::kernels::max_threads()) * kChunk);
    if (backward) gradient.resize(static_cast<std::size_t>(floats));
  }
  void step() {
    const Index parts = moe::kernels::max_threads();
    const Index n = static_cast<Index>(chunks.size());
    moe::kernels::parallel_for(0, parts, [&](Index part) {
      float* to = scratch.data() + static_cast<std::size_t>(part) * kChunk;
      for (Index i = part * n / parts; i < (part + 1) * n / parts; ++i)
        std::memcpy(to, chunks[i].data, chunks[i].size * sizeof(float));
      benchmark::DoNotOptimize(to);
    });
    if (backward) {
      moe::kernels::parallel_for(0, parts, [&](Index part) {
        std::size_t at = 0;
        for (Index i = 0; i < n; ++i) {
          if (i >= part * n / parts && i < (part + 1) * n / parts)
            std::memcpy(gradient.data() + at, chunks[i].data, chunks[i].size * sizeof(float));
          at += chunks[i].size;
        }
      });
      benchmark::DoNotOptimize(gradient.data());
    }
  }
  double bytes() const { return static_cast<double>(floats) * sizeof(float); }

  static constexpr std::size_t kChunk = 64 * 1024;  // floats: 256 KiB
  struct Chunk {
    const float* data;
    std::size_t size;
  };
  bool backward;
  std::vector<Chunk> chunks;
  Index active_experts = 0, floats = 0;
  std::vector<float> scratch, gradient;
};

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

/// Times of `a` and `b` run in alternation, each pair back to back in wall time (the work runs on
/// every thread), after one warm-up of each. Pairs: enough for about 2 s, at least 3, at most 25.
struct Paired {
  std::vector<double> ratios, a_s, b_s;  ///< a / b per pair, and each side's seconds
};
template <class A, class B>
Paired run_paired(benchmark::State& state, A&& a, B&& b) {
  double t0 = moe::bench::pair_clock_seconds();
  a();  // warm up both: workspaces grow, pages fault in
  b();
  const double warm = moe::bench::pair_clock_seconds() - t0;
  const int pairs = std::clamp(static_cast<int>(2.0 / warm), 3, 25);
  Paired p;
  for (auto _ : state) {
    for (int i = 0; i < pairs; ++i) {
      t0 = moe::bench::pair_clock_seconds();
      a();
      const double t1 = moe::bench::pair_clock_seconds();
      b();
      const double t2 = moe::bench::pair_clock_seconds();
      p.a_s.push_back(t1 - t0);
      p.b_s.push_back(t2 - t1);
      p.ratios.push_back((t1 - t0) / (t2 - t1));
    }
  }
  state.counters["ratio"] = median(p.ratios);
  state.counters["ratio_min"] = *std::min_element(p.ratios.begin(), p.ratios.end());
  state.counters["pairs"] = static_cast<double>(p.ratios.size());
  return p;
}

/// The layer and its limit in alternation.
void layer_vs_limit(benchmark::State& state, bool backward) {
  const Shape& s = kShapes[state.range(0)];
  const auto distribution = static_cast<Distribution>(state.range(1));
  LayerRun run(s, distribution, backward);
  std::unique_ptr<SwigluGemmLimit> gemm;
  std::unique_ptr<MemoryLimit> memory;
  if (&s == &kShapes[kDecode])
    memory = std::make_unique<MemoryLimit>(run.layer.experts, run.ids, backward);
  else
    gemm = std::make_unique<SwigluGemmLimit>(s.tokens * s.k, s.d, s.f, backward);
  const Paired p = run_paired(
      state, [&] { run.step(); }, [&] { gemm ? gemm->step() : memory->step(); });
  const double layer_median = median(p.a_s);
  state.counters["layer_ms"] = 1e3 * layer_median;
  state.counters["limit_ms"] = 1e3 * median(p.b_s);
  state.counters["tokens/s"] = static_cast<double>(s.tokens) / layer_median;
  if (gemm) {
    state.counters["GFLOP/s"] = 1e-9 * forward_flops(s) * (backward ? 3.0 : 1.0) / layer_median;
  } else {
    state.counters["active_experts"] = static_cast<double>(memory->active_experts);
    state.counters["GB/s"] = 1e-9 * memory->bytes() * (backward ? 2.0 : 1.0) / layer_median;
  }
  state.SetLabel(std::string(s.name) + "/" + kDistributionNames[distribution]);
}

void BM_layer_forward(benchmark::State& state) { layer_vs_limit(state, false); }
void BM_layer_forward_backward(benchmark::State& state) { layer_vs_limit(state, true); }

/// The layer with bf16 experts (ExpertPrecision::bf16) and the float layer in alternation, at the
/// dropless shapes: bf16_ms and float_ms, ratio = bf16 / float (below 1 bf16 is faster). The bf16
/// copy is made at the warm-up and stays current (the weights do not change).
void layer_bf16_vs_float(benchmark::State& state, bool backward) {
  const Shape& s = kShapes[state.range(0)];
  const auto distribution = static_cast<Distribution>(state.range(1));
  LayerRun bf16(s, distribution, backward, moe::ExpertPrecision::bf16);
  LayerRun native(s, distribution, backward);
  const Paired p = run_paired(
      state, [&] { bf16.step(); }, [&] { native.step(); });
  state.counters["layer_ms"] = 1e3 * median(p.a_s);
  state.counters["float_ms"] = 1e3 * median(p.b_s);
  state.counters["tokens/s"] = static_cast<double>(s.tokens) / median(p.a_s);
  state.SetLabel(std::string(s.name) + "/" + kDistributionNames[distribution]);
}
void BM_layer_bf16_forward(benchmark::State& state) { layer_bf16_vs_float(state, false); }
void BM_layer_bf16_forward_backward(benchmark::State& state) { layer_bf16_vs_float(state, true); }

/// Forward+backward with a fresh MoEGradients each step (what the value-returning backward costs:
/// every expert's gradient allocated and zero-filled) against gradients kept across steps, in
/// alternation; ratio = fresh / kept.
void BM_layer_gradients_fresh_vs_kept(benchmark::State& state) {
  const Shape& s = kShapes[state.range(0)];
  LayerRun run(s, static_cast<Distribution>(state.range(1)), true);
  const Paired p = run_paired(
      state, [&] { run.step(/*fresh=*/true); }, [&] { run.step(); });
  state.counters["fresh_ms"] = 1e3 * median(p.a_s);
  state.counters["kept_ms"] = 1e3 * median(p.b_s);
  state.SetLabel(std::string(s.name) + "/" +
                 kDistributionNames[static_cast<Distribution>(state.range(1))]);
}

void layer_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"shape", "dist"});
  for (Index shape : {kSmall, kMedium, kFine, kSwitch, kDecode}) b->Args({shape, uniform});
  for (Index d : {balanced, zipf, all_to_one}) b->Args({kFine, d});
  b->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
}

/// The dropless shapes (bf16 experts run dropless only).
void bf16_layer_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"shape", "dist"});
  for (Index shape : {kSmall, kMedium, kFine, kDecode}) b->Args({shape, uniform});
  b->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
}

/// Inputs of the routing pieces at a shape: forced logits, their routing, a plan, expert outputs.
struct Pieces {
  Pieces(const Shape& shape, Distribution distribution)
      : s(shape),
        config(layer_config(shape)),
        ids(route(shape, distribution)),
        x(s.tokens, s.d),
        logits(s.tokens, s.experts) {
    fill(x, 4);
    encode_routing(ids, s.experts, x);
    logits = x.leftCols(s.experts);  // x [I_E | 0]^T
    moe::select_experts<float>(config.router, logits, no_bias, routing, scratch);
    moe::make_dropless_plan(routing.expert_ids, s.experts, config.block_size, plan);
    permuted.resize(plan.padded_rows(), s.d);
    moe::dropless_permute<float>(x, plan, permuted);
    out.resize(s.tokens, s.d);
  }
  Shape s;
  moe::MoELayerConfig config;
  moe::ExpertIdMatrix ids;
  Matrix x, logits;
  moe::Vector<float> no_bias;
  moe::Routing<float> routing;
  Matrix scratch;
  moe::DroplessPlan plan;
  Matrix permuted, out;
};

void piece_counters(benchmark::State& state, const Pieces& p, double bytes) {
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(p.s.tokens),
                                                  benchmark::Counter::kIsIterationInvariantRate);
  if (bytes > 0)
    state.counters["GB/s"] =
        benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string(p.s.name) + "/" +
                 kDistributionNames[static_cast<Distribution>(state.range(1))]);
}

/// Scoring (softmax), top-k and the gate renormalization from precomputed logits [T, E].
void BM_piece_score_topk(benchmark::State& state) {
  Pieces p(kShapes[state.range(0)], static_cast<Distribution>(state.range(1)));
  for (auto _ : state) {
    moe::select_experts<float>(p.config.router, p.logits, p.no_bias, p.routing, p.scratch);
    benchmark::DoNotOptimize(p.routing.gates.data());
  }
  piece_counters(state, p, 0);
}

/// The dispatch plan: counts, offsets and the stable expert-major order of the T*k pairs.
void BM_piece_plan(benchmark::State& state) {
  Pieces p(kShapes[state.range(0)], static_cast<Distribution>(state.range(1)));
  for (auto _ : state) {
    moe::make_dropless_plan(p.routing.expert_ids, p.s.experts, p.config.block_size, p.plan);
    benchmark::DoNotOptimize(p.plan.pair_row.data());
  }
  piece_counters(state, p, 0);
}

/// Token rows gathered into the expert-sorted buffer (padding rows left alone, as the layer does).
void BM_piece_permute(benchmark::State& state) {
  Pieces p(kShapes[state.range(0)], static_cast<Distribution>(state.range(1)));
  for (auto _ : state) {
    moe::dropless_permute<float>(p.x, p.plan, p.permuted, false);
    benchmark::DoNotOptimize(p.permuted.data());
  }
  piece_counters(state, p, 2.0 * static_cast<double>(p.s.tokens * p.s.k * p.s.d) * sizeof(float));
}

/// Expert outputs gathered back to token order and summed with the gates.
void BM_piece_unpermute_combine(benchmark::State& state) {
  Pieces p(kShapes[state.range(0)], static_cast<Distribution>(state.range(1)));
  for (auto _ : state) {
    moe::dropless_unpermute<float>(p.permuted, p.routing.gates, p.plan, p.out);
    benchmark::DoNotOptimize(p.out.data());
  }
  piece_counters(state, p,
                 static_cast<double>((p.s.tokens * p.s.k + p.s.tokens) * p.s.d) * sizeof(float));
}

/// The limit of permute and unpermute: a memcpy of the T*k*d floats they move.
void BM_piece_memcpy_limit(benchmark::State& state) {
  const Shape& s = kShapes[state.range(0)];
  const std::size_t floats = static_cast<std::size_t>(s.tokens * s.k * s.d);
  std::vector<float> from(floats, 1.0f), to(floats);
  for (auto _ : state) {
    std::memcpy(to.data(), from.data(), floats * sizeof(float));
    benchmark::DoNotOptimize(to.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(s.tokens),
                                                  benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] =
      benchmark::Counter(2.0 * static_cast<double>(floats) * sizeof(float) * 1e-9,
                         benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(s.name);
}

void piece_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"shape", "dist"});
  for (Index shape : {kSmall, kMedium, kFine, kSwitch, kDecode}) b->Args({shape, uniform});
  for (Index d : {balanced, zipf, all_to_one}) b->Args({kFine, d});
  b->MinTime(0.2)->Unit(benchmark::kMicrosecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_layer_forward)->Apply(layer_args);
BENCHMARK(BM_layer_forward_backward)->Apply(layer_args);
BENCHMARK(BM_layer_bf16_forward)->Apply(bf16_layer_args);
BENCHMARK(BM_layer_bf16_forward_backward)->Apply(bf16_layer_args);
BENCHMARK(BM_layer_gradients_fresh_vs_kept)
    ->ArgNames({"shape", "dist"})
    ->Args({kDecode, uniform})
    ->Args({kFine, uniform})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_piece_score_topk)->Apply(piece_args);
BENCHMARK(BM_piece_plan)->Apply(piece_args);
BENCHMARK(BM_piece_permute)->Apply(piece_args);
BENCHMARK(BM_piece_unpermute_combine)->Apply(piece_args);
BENCHMARK(BM_piece_memcpy_limit)
    ->DenseRange(0, 4)
    ->ArgName("shape")
    ->MinTime(0.2)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

BENCHMARK_MAIN();
