// Expert parallelism on one machine: the token exchange of a step (count all-to-all, rows out,
// rows back; and the same two row exchanges in backward) beside a memcpy of the same bytes, and
// the whole expert-parallel layer step. Run under mpirun, e.g.
//   mpirun -n 2 build/release/bench/bench_parallel     (root: --allow-run-as-root --oversubscribe)
// Every rank runs the same fixed number of iterations (collectives must match); rank 0 reports.
#include <mpi.h>

#include <cstring>

#include <benchmark/benchmark.h>
#include <moe/parallel/expert_parallel_layer.hpp>
#include <moe/routing/synthetic.hpp>

#include "support.hpp"

namespace {

using moe::Index;
using Matrix = moe::RowMatrix<float>;

// (T per rank, d, f, E, k): the medium and fine-grained shapes of the layer bench.
struct Shape {
  Index tokens, hidden, ffn, experts, top_k;
};
constexpr Shape kShapes[] = {{4096, 1024, 2816, 8, 2}, {4096, 512, 256, 64, 6}};
constexpr int kIterations = 10;

moe::MoELayerConfig config_of(const Shape& s) {
  moe::MoELayerConfig c;
  c.router.num_experts = s.experts;
  c.router.hidden = s.hidden;
  c.router.top_k = s.top_k;
  c.router.renormalize = true;
  c.ffn_hidden = s.ffn;
  c.activation = moe::Activation::swiglu;
  return c;
}

/// Expert ids (start + j) mod E from a uniform random start (moe/routing/synthetic.hpp, uniform,
/// SyntheticDraw::consecutive): each expert equally likely, distinct within a row.
moe::ExpertIdMatrix uniform_ids(Index tokens, Index experts, Index k, std::uint64_t seed) {
  moe::SyntheticRoutingConfig c;
  c.num_tokens = tokens;
  c.num_experts = experts;
  c.top_k = k;
  c.distribution = moe::SyntheticDistribution::uniform;
  c.draw = moe::SyntheticDraw::consecutive;
  c.seed = seed;
  return moe::synthetic_expert_ids(c);
}

/// Plan + rows out + rows back, forward and backward: the four row exchanges of a step.
/// bytes_exchanged counts what this rank sends and receives over the step (local rows included,
/// as MPI copies them too); memcpy_ratio is the time over a memcpy of those bytes.
void BM_TokenExchange(benchmark::State& state) {
  const Shape s = kShapes[state.range(0)];
  const moe::Communicator comm;
  const auto placement = moe::ExpertPlacement::contiguous(s.experts, comm.size());
  const moe::ExpertIdMatrix ids =
      uniform_ids(s.tokens, s.experts, s.top_k, static_cast<std::uint64_t>(comm.rank()));
  const Matrix x = moe::bench::random_matrix<float>(s.tokens * s.top_k, s.hidden, 1);
  moe::ExchangePlan plan;
  Matrix incoming, returned(s.tokens * s.top_k, s.hidden);
  auto step = [&] {
    moe::make_exchange_plan(comm, placement, ids, moe::ChoiceMask(), 128, plan);
    incoming.resize(plan.rows_received, s.hidden);
    for (int pass = 0; pass < 2; ++pass) {  // forward, then backward's gradient rows
      moe::send_rows<float>(comm, plan, x, incoming);
      moe::return_rows<float>(comm, plan, incoming, returned);
    }
  };
  step();
  MPI_Barrier(comm.comm());
  const double seconds = moe::bench::timed_loop(state, step);
  const double bytes =
      2.0 * static_cast<double>((plan.rows_sent + plan.rows_received) * s.hidden) * sizeof(float);
  std::vector<char> from(static_cast<std::size_t>(bytes)), to(from.size());
  const double copy = moe::bench::median_seconds([&] {
    std::memcpy(to.data(), from.data(), from.size());
    benchmark::DoNotOptimize(to.data());
  });
  state.counters["ranks"] = static_cast<double>(comm.size());
  state.counters["bytes_exchanged"] = bytes;
  state.counters["GB/s"] = bytes / seconds * 1e-9;
  state.counters["memcpy_ratio"] = seconds / copy;
}

/// The whole expert-parallel layer step (forward + backward) at the same shape; exchange_share is
/// the token exchange's fraction of it (measured above in the same process).
void BM_ExpertParallelLayer(benchmark::State& state) {
  const Shape s = kShapes[state.range(0)];
  const moe::Communicator comm;
  moe::ExpertParallelMoELayer<float> layer(config_of(s), comm);
  layer.init_weights(1);
  const Matrix x =
      moe::bench::random_matrix<float>(s.tokens, s.hidden, static_cast<std::uint64_t>(comm.rank()));
  const Matrix grad_y = moe::bench::random_matrix<float>(s.tokens, s.hidden, 99);
  moe::ExpertParallelContext<float> ctx;
  auto step = [&] {
    const auto out = layer.forward(x, ctx, moe::Mode::train, 1);
    benchmark::DoNotOptimize(out.y.data());
    const auto grads = layer.backward(x, ctx, grad_y);
    benchmark::DoNotOptimize(grads.x.data());
  };
  step();
  MPI_Barrier(comm.comm());
  const double seconds = moe::bench::timed_loop(state, step);
  state.counters["ranks"] = static_cast<double>(comm.size());
  state.counters["tokens/s"] =
      static_cast<double>(s.tokens * comm.size()) / seconds;  // whole batch over all ranks
}

BENCHMARK(BM_TokenExchange)
    ->DenseRange(0, 1)
    ->Iterations(kIterations)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ExpertParallelLayer)
    ->Arg(1)
    ->Iterations(kIterations / 2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

/// Ranks other than 0 run the same benchmarks silently.
class SilentReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  // Only the main thread calls MPI, outside OpenMP regions: FUNNELED is the level that allows that.
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  benchmark::Initialize(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    SilentReporter silent;
    benchmark::RunSpecifiedBenchmarks(&silent);
  }
  benchmark::Shutdown();
  MPI_Finalize();
  return 0;
}
