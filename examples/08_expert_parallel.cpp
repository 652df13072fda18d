// Expert parallelism: the layer of 06_training_step with its 8 experts sharded over the MPI ranks.
// Each rank trains on its own tokens; the router gradients are summed across ranks as any
// data-parallel gradient is, the expert gradients stay on their owner. Run with
//   mpirun -n 2 ./example_08_expert_parallel      (root: add --allow-run-as-root --oversubscribe)
#include <mpi.h>

#include <cmath>
#include <cstdio>

#include <moe/parallel/expert_parallel_layer.hpp>

namespace {

using Mat = moe::RowMatrix<float>;

Mat random_matrix(moe::Index rows, moe::Index cols, std::uint64_t seed, double scale) {
  const moe::CounterRng rng(seed, 0);
  Mat m(rows, cols);
  for (moe::Index i = 0; i < m.size(); ++i)
    m.data()[i] = static_cast<float>(scale * rng.normal(static_cast<std::uint64_t>(i)));
  return m;
}

int run() {
  const moe::Communicator comm;  // MPI_COMM_WORLD
  const moe::Index T = 256, d = 32;
  const Mat x = random_matrix(T, d, 100 + static_cast<std::uint64_t>(comm.rank()), 1.0);
  const Mat target = x * random_matrix(d, d, 2, 1.0 / std::sqrt(d)).transpose();

  moe::MoELayerConfig config;
  config.router.hidden = d;
  config.router.num_experts = 8;
  config.router.top_k = 2;
  config.router.score = moe::ScoreFunction::sigmoid;
  config.router.renormalize = true;
  config.ffn_hidden = 64;
  config.aux_loss = moe::aux_presets::megatron(2, 1e-3);  // over the whole batch of all ranks
  config.bias_balancer = moe::BiasBalancerOptions{};

  // The training loop (the README shows these lines).
  moe::ExpertParallelMoELayer<float> layer(config, comm);  // experts in contiguous blocks
  layer.init_weights(/*seed=*/7);  // the same values as MoELayer<float>::init_weights(7)
  moe::ExpertParallelContext<float> ctx;
  const float lr = 1.0f, scale = 2.0f / static_cast<float>(x.size() * comm.size());
  float first_loss = 0, loss = 0;
  for (int step = 0; step < 60; ++step) {
    auto out = layer.forward(x, ctx, moe::Mode::train, /*seed=*/step);  // collective
    const Mat error = x + out.y - target;
    float sq = error.squaredNorm();
    comm.allreduce_sum(&sq, 1);  // the MSE of the whole batch
    loss = sq / static_cast<float>(x.size() * comm.size()) + out.aux_loss;
    auto grads = layer.backward(x, ctx, scale * error);
    comm.allreduce_sum(grads.router.weight.data(), grads.router.weight.size());  // data parallel
    layer.router.weight -= lr * grads.router.weight;
    layer.experts.w1 -= lr * grads.experts.w1;  // this rank's experts only
    layer.experts.w3 -= lr * grads.experts.w3;
    layer.experts.w2 -= lr * grads.experts.w2;
    layer.step_balancer();  // the same bias on every rank
    if (step == 0) first_loss = loss;
    if (comm.rank() == 0 && (step % 20 == 0 || step == 59))
      std::printf("step %2d  loss %.4f  MaxVio %.2f  (%lld ranks, %lld experts here)\n", step, loss,
                  out.health.hard.max_vio, static_cast<long long>(comm.size()),
                  static_cast<long long>(layer.num_local_experts()));
  }

  // Every rank must have learned, and hold the same router weights and bias as rank 0.
  Mat rank0 = layer.router.weight;
  moe::Vector<float> bias0 = layer.router.selection_bias;
  MPI_Bcast(rank0.data(), static_cast<int>(rank0.size()), MPI_FLOAT, 0, comm.comm());
  MPI_Bcast(bias0.data(), static_cast<int>(bias0.size()), MPI_FLOAT, 0, comm.comm());
  const bool learned = loss < 0.67f * first_loss;
  const bool replicated = rank0 == layer.router.weight && bias0 == layer.router.selection_bias;
  if (!learned)
    std::printf("FAILED: loss %.4f -> %.4f did not fall by a third\n", first_loss, loss);
  if (!replicated)
    std::printf("FAILED: rank %lld's router differs from rank 0's\n",
                static_cast<long long>(comm.rank()));
  return learned && replicated ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Only the main thread calls MPI, outside OpenMP regions: FUNNELED is the level that allows that.
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  const int status = run();
  MPI_Finalize();
  return status;
}
