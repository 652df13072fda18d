// Capacity dispatcher benchmarks: plan build (tokens/s), dispatch and combine (GB/s) with the
// limit beside them: a std::memcpy moving the same number of bytes, timed in the same iteration,
// so `vs_memcpy` = (memcpy time) / (kernel time) is a ratio taken under the same machine load.
#include <benchmark/benchmark.h>

#include <moe/dispatch/capacity_planner.hpp>
#include <moe/dispatch/dispatch.hpp>
#include <moe/dispatch/expert_choice.hpp>
#include <moe/routing/synthetic.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

using moe::Index;
using S = float;

/// Named routing distributions: balanced (round robin), uniform random, Zipf-skewed, all-to-one.
enum Distribution { balanced = 0, uniform = 1, zipf = 2, all_to_one = 3 };

struct Synthetic {
  moe::ExpertIdMatrix ids;
  moe::RowMatrix<S> gates;
};

/// Ids from moe/routing/synthetic.hpp: the first expert from the distribution, then the next k - 1
/// (SyntheticDraw::consecutive), on CounterRng(2024, 9): the same ids, bit for bit, as this bench's
/// own generator before. Gates 1 / (k + j): dispatch does not care what they are.
Synthetic make_routing(Index tokens, Index experts, Index k, int distribution) {
  using D = moe::SyntheticDistribution;
  static constexpr D kinds[] = {D::balanced, D::uniform, D::zipf, D::all_to_one};
  moe::SyntheticRoutingConfig c;
  c.num_tokens = tokens;
  c.num_experts = experts;
  c.top_k = k;
  c.distribution = kinds[distribution];
  c.draw = moe::SyntheticDraw::consecutive;
  Synthetic r;
  r.ids = moe::synthetic_expert_ids(c, moe::CounterRng(2024, 9));
  r.gates.resize(tokens, k);
  for (Index t = 0; t < tokens; ++t)
    for (Index j = 0; j < k; ++j) r.gates(t, j) = static_cast<S>(1.0 / static_cast<double>(k + j));
  return r;
}

moe::CapacityConfig config_for(moe::DropPolicy policy) {
  moe::CapacityConfig c;
  c.rounding = moe::CapacityRounding::megatron;
  c.train_factor = 1.0;
  c.policy = policy;
  return c;
}

using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

/// Runs `kernel` and a memcpy of `traffic / 2` bytes (it reads and writes that much) in every
/// iteration; reports the kernel's time, its GB/s over `traffic` bytes and vs_memcpy.
template <class Kernel>
void run_with_memcpy_limit(benchmark::State& state, double traffic, Index tokens, Kernel&& kernel) {
  const std::size_t copy_bytes = static_cast<std::size_t>(traffic / 2.0);
  std::vector<char> src(copy_bytes, 1), dst(copy_bytes, 0);
  // Warm-up: first-touch page faults of the output buffers are not the kernel's cost.
  kernel();
  std::memcpy(dst.data(), src.data(), copy_bytes);
  double kernel_time = 0.0, copy_time = 0.0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    kernel();
    const auto t1 = Clock::now();
    std::memcpy(dst.data(), src.data(), copy_bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
    const auto t2 = Clock::now();
    state.SetIterationTime(seconds(t0, t1));
    kernel_time += seconds(t0, t1);
    copy_time += seconds(t1, t2);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(traffic) * state.iterations());
  state.counters["tokens"] = benchmark::Counter(static_cast<double>(tokens),
                                                benchmark::Counter::kIsIterationInvariantRate);
  state.counters["memcpy_GB/s"] = benchmark::Counter(
      traffic * 1e-9 * static_cast<double>(state.iterations()) / std::max(copy_time, 1e-12));
  state.counters["vs_memcpy"] = benchmark::Counter(copy_time / std::max(kernel_time, 1e-12));
}

// Args: T, d, E, k, distribution
void BM_dispatch(benchmark::State& state) {
  const Index tokens = state.range(0), d = state.range(1), experts = state.range(2),
              k = state.range(3);
  auto r = make_routing(tokens, experts, k, static_cast<int>(state.range(4)));
  auto plan = moe::make_capacity_plan<S>(
      r.ids, r.gates, experts, config_for(moe::DropPolicy::choice_major), moe::Mode::train);
  moe::RowMatrix<S> x = moe::RowMatrix<S>::Constant(tokens, d, 1.0f);
  moe::RowMatrix<S> buffer(plan.num_slots(), d);
  const double traffic = static_cast<double>((plan.total_kept + plan.num_slots()) * d) * sizeof(S);
  run_with_memcpy_limit(state, traffic, tokens, [&] {
    moe::dispatch(plan, x, buffer);
    benchmark::DoNotOptimize(buffer.data());
  });
  state.counters["drop_rate"] = plan.drop_rate();
}

void BM_combine(benchmark::State& state) {
  const Index tokens = state.range(0), d = state.range(1), experts = state.range(2),
              k = state.range(3);
  auto r = make_routing(tokens, experts, k, static_cast<int>(state.range(4)));
  auto plan = moe::make_capacity_plan<S>(
      r.ids, r.gates, experts, config_for(moe::DropPolicy::choice_major), moe::Mode::train);
  moe::RowMatrix<S> out = moe::RowMatrix<S>::Constant(plan.num_slots(), d, 0.5f);
  moe::RowMatrix<S> y(tokens, d);
  const double traffic = static_cast<double>((plan.total_kept + tokens) * d) * sizeof(S);
  run_with_memcpy_limit(state, traffic, tokens, [&] {
    moe::combine(plan, out, y);
    benchmark::DoNotOptimize(y.data());
  });
  state.counters["drop_rate"] = plan.drop_rate();
}

void BM_dispatch_backward(benchmark::State& state) {
  const Index tokens = state.range(0), d = state.range(1), experts = state.range(2),
              k = state.range(3);
  auto r = make_routing(tokens, experts, k, static_cast<int>(state.range(4)));
  auto plan = moe::make_capacity_plan<S>(
      r.ids, r.gates, experts, config_for(moe::DropPolicy::choice_major), moe::Mode::train);
  moe::RowMatrix<S> grad_buffer = moe::RowMatrix<S>::Constant(plan.num_slots(), d, 0.5f);
  moe::RowMatrix<S> grad_x(tokens, d);
  const double traffic = static_cast<double>((plan.total_kept + tokens) * d) * sizeof(S);
  run_with_memcpy_limit(state, traffic, tokens, [&] {
    moe::dispatch_backward(plan, grad_buffer, grad_x);
    benchmark::DoNotOptimize(grad_x.data());
  });
}

void BM_combine_backward(benchmark::State& state) {
  const Index tokens = state.range(0), d = state.range(1), experts = state.range(2),
              k = state.range(3);
  auto r = make_routing(tokens, experts, k, static_cast<int>(state.range(4)));
  auto plan = moe::make_capacity_plan<S>(
      r.ids, r.gates, experts, config_for(moe::DropPolicy::choice_major), moe::Mode::train);
  moe::RowMatrix<S> out = moe::RowMatrix<S>::Constant(plan.num_slots(), d, 0.5f);
  moe::RowMatrix<S> grad_y = moe::RowMatrix<S>::Constant(tokens, d, 0.25f);
  moe::RowMatrix<S> grad_out(plan.num_slots(), d);
  moe::Vector<S> grad_w(plan.num_entries());
  // grad_out: read kept rows of grad_y, write every slot; grad_w: read kept rows of out and grad_y.
  const double traffic =
      static_cast<double>((3 * plan.total_kept + plan.num_slots()) * d) * sizeof(S);
  run_with_memcpy_limit(state, traffic, tokens, [&] {
    moe::combine_backward(plan, out, grad_y, grad_out, grad_w);
    benchmark::DoNotOptimize(grad_out.data());
  });
}

// Args: T, E, k, policy
void BM_plan(benchmark::State& state) {
  const Index tokens = state.range(0), experts = state.range(1), k = state.range(2);
  const auto policy = static_cast<moe::DropPolicy>(state.range(3));
  auto r = make_routing(tokens, experts, k, uniform);
  const auto config = config_for(policy);
  for (auto _ : state) {
    auto plan = moe::make_capacity_plan<S>(r.ids, r.gates, experts, config, moe::Mode::train, 7);
    benchmark::DoNotOptimize(plan.entry_slot.data());
  }
  state.counters["tokens"] = benchmark::Counter(static_cast<double>(tokens),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

void BM_expert_choice_plan(benchmark::State& state) {
  const Index tokens = state.range(0), experts = state.range(1);
  moe::RowMatrix<S> scores(tokens, experts);
  const moe::CounterRng rng(5, 5);
  for (Index i = 0; i < scores.size(); ++i)
    scores.data()[i] = static_cast<S>(rng.uniform(static_cast<std::uint64_t>(i)));
  moe::ExpertChoiceConfig config;
  for (auto _ : state) {
    auto plan = moe::make_expert_choice_plan<S>(scores, config, moe::Mode::train);
    benchmark::DoNotOptimize(plan.entry_slot.data());
  }
  state.counters["tokens"] = benchmark::Counter(static_cast<double>(tokens),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

// T in {64, 4096, 65536}, d in {1024, 4096}, E in {8, 64, 256}, k in {1, 2, 8}, minus shapes whose
// buffers exceed ~1.5 GB.
void data_grid(benchmark::internal::Benchmark* b) {
  for (Index tokens : {64, 4096, 65536})
    for (Index d : {1024, 4096})
      for (Index experts : {8, 64, 256})
        for (Index k : {1, 2, 8}) {
          const double bytes = static_cast<double>(tokens) * static_cast<double>(d) * sizeof(S) *
                               (2.0 + static_cast<double>(k));  // x, y and ~T·k buffer rows
          if (bytes > 1.5e9) continue;
          b->Args({tokens, d, experts, k, balanced});
        }
  // Load distributions at one shape.
  for (int dist : {uniform, zipf, all_to_one}) b->Args({4096, 1024, 64, 2, dist});
}

void backward_grid(benchmark::internal::Benchmark* b) {
  for (Index tokens : {4096, 65536})
    for (Index d : {1024})
      for (Index k : {1, 2}) b->Args({tokens, d, 64, k, balanced});
}

void plan_grid(benchmark::internal::Benchmark* b) {
  for (Index tokens : {64, 4096, 65536})
    for (Index experts : {8, 64, 256})
      for (Index k : {1, 2, 8})
        for (int policy : {static_cast<int>(moe::DropPolicy::choice_major),
                           static_cast<int>(moe::DropPolicy::probability)})
          b->Args({tokens, experts, k, policy});
}

}  // namespace

BENCHMARK(BM_dispatch)->Apply(data_grid)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_combine)->Apply(data_grid)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_dispatch_backward)
    ->Apply(backward_grid)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_combine_backward)
    ->Apply(backward_grid)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_plan)->Apply(plan_grid)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_expert_choice_plan)
    ->Args({4096, 64})
    ->Args({65536, 64})
    ->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
