// Routing collapse and its cure, in a few seconds. A tiny MoE regression model (y = x + MoE(x))
// learns a different linear map per cluster of tokens. The router starts skewed towards experts
// 0 and 1. Trained without balancing, it stays collapsed: most experts go cold and the capacity
// buffers overflow. The auxiliary loss (softmax router) and the aux-loss-free bias balancer
// (sigmoid router) each spread the load. Each run writes health_<run>.csv and heatmap_<run>.svg.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <moe/health/export.hpp>
#include <moe/health/health.hpp>
#include <moe/layer/moe_layer.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using S = float;
using Mat = moe::RowMatrix<S>;
using moe::Index;

constexpr Index kHidden = 32, kExperts = 8, kTopK = 2, kFfn = 64, kClusters = 16, kTokens = 512;
constexpr int kSteps = 150;
constexpr S kLearningRate = 0.5f;

/// Tokens around cluster centers, all leaning along one shared direction, and a target made by a
/// random linear map per cluster: an expert that specializes on a few clusters helps.
struct Data {
  Mat x, target;
  Mat common;  // [1, d] the shared direction, unit length
};

Data make_data(std::uint64_t seed) {
  const moe::CounterRng rng(seed, 1);
  std::uint64_t n = 0;
  const auto normal = [&] { return static_cast<S>(rng.normal(n++)); };
  Data data;
  data.common = Mat(1, kHidden);
  for (Index i = 0; i < kHidden; ++i) data.common(0, i) = normal();
  data.common /= data.common.norm();
  Mat centers(kClusters, kHidden);
  for (Index i = 0; i < centers.size(); ++i) centers.data()[i] = normal();
  std::vector<Mat> maps(kClusters, Mat(kHidden, kHidden));
  for (Mat& m : maps)
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = normal() / std::sqrt(S(kHidden));
  data.x.resize(kTokens, kHidden);
  data.target.resize(kTokens, kHidden);
  for (Index t = 0; t < kTokens; ++t) {
    const Index c = t % kClusters;
    for (Index i = 0; i < kHidden; ++i)
      data.x(t, i) = centers(c, i) + S(0.3) * normal() + S(1.5) * data.common(0, i);
    data.target.row(t) = data.x.row(t) * maps[c].transpose();
  }
  return data;
}

struct Run {
  const char* name;
  moe::ScoreFunction score;
  bool aux_loss, bias_balancer;
};

struct Result {
  double loss = 0, max_vio = 0, drop_rate = 0, seconds = 0;
  Index cold = 0;
  bool wrote_files = false;
};

moe::MoELayerConfig layer_config(const Run& run) {
  moe::MoELayerConfig c;
  c.router.num_experts = kExperts;
  c.router.hidden = kHidden;
  c.router.top_k = kTopK;
  c.router.score = run.score;
  // softmax: the raw top-k probabilities as gates (Switch, Qwen norm_topk_prob=False), so the
  // gradient reaches every logit through the softmax; sigmoid: DeepSeek-V3, renormalized.
  c.router.renormalize = run.score == moe::ScoreFunction::sigmoid;
  c.ffn_hidden = kFfn;
  c.activation = moe::Activation::swiglu;
  c.dispatch = moe::DispatchKind::capacity;  // overflow is dropped: collapse costs tokens
  c.capacity.train_factor = 1.25;
  c.capacity.eval_factor = 1.25;
  c.z_loss_coefficient = 1e-3;
  if (run.aux_loss) c.aux_loss = moe::aux_presets::megatron(kTopK, 0.5);
  if (run.bias_balancer)
    c.bias_balancer = moe::BiasBalancerOptions{2e-2, moe::BiasUpdateRule::sign};
  return c;
}

Result train(const Run& run, const Data& data, bool terminal) {
  const auto start = std::chrono::steady_clock::now();
  moe::MoELayer<S> layer(layer_config(run));
  layer.init_weights(42);
  layer.router.weight.row(0) += S(3.5) * data.common;  // the skewed start: 0 and 1 are hot
  layer.router.weight.row(1) += S(3.2) * data.common;

  moe::HealthMonitor monitor(moe::MonitorConfig{});  // keeps every step for the heatmap
  moe::MoELayerContext<S> ctx;
  moe::MoEGradients<S> grads;  // shaped by the first backward, overwritten after
  Result result;
  for (int step = 0; step < kSteps; ++step) {
    const auto out = layer.forward(data.x, ctx, moe::Mode::train, static_cast<std::uint64_t>(step));
    const Mat error = data.x + out.y - data.target;  // residual model, MSE loss
    const S mse = error.squaredNorm() / S(kTokens * kHidden);
    const Mat grad_y = (S(2) / S(kTokens * kHidden)) * error;
    layer.backward(data.x, ctx, grad_y, grads);
    for (auto& p : layer.parameters(grads)) p.value -= kLearningRate * p.gradient;  // plain SGD
    if (layer.balancer) layer.step_balancer();
    monitor.record(step, 0, out.health);

    result.loss = mse;
    result.max_vio = out.health.hard.max_vio;
    result.cold = out.health.hard.cold_count();
    result.drop_rate = out.health.capacity->drop_rate;
    const bool last = step + 1 == kSteps;
    if (terminal || (step + 1) % 50 == 0) {
      std::printf(
          "%s%-14s step %3d/%d  loss %.4f  aux %.4f  MaxVio %5.2f  cold %ld  drop %4.1f%%%s",
          terminal ? "\r" : "", run.name, step + 1, kSteps, static_cast<double>(mse),
          static_cast<double>(out.aux_loss), result.max_vio, static_cast<long>(result.cold),
          100 * result.drop_rate, terminal && !last ? "" : "\n");
      std::fflush(stdout);
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const std::string run_name(run.name);
  std::ofstream csv("health_" + run_name + ".csv");
  moe::write_csv(csv, monitor.records());
  std::ofstream svg("heatmap_" + run_name + ".svg");
  moe::SvgHeatmapOptions heatmap;
  heatmap.run = run_name;  // the three heatmaps open side by side: the title says which is which
  moe::write_svg_heatmap(svg, monitor.records(), heatmap);
  csv.close();
  svg.close();
  result.wrote_files = !csv.fail() && !svg.fail();
  if (!result.wrote_files)
    std::printf("FAILED: could not write the health files of %s\n", run.name);
  return result;
}

}  // namespace

int main() {
#ifdef _OPENMP
  // At T=1024, d=32 a step is too small for threads to pay off, and on a busy machine waiting
  // threads cost ten times the work. One thread unless OMP_NUM_THREADS says otherwise.
  if (std::getenv("OMP_NUM_THREADS") == nullptr) omp_set_num_threads(1);
#endif
  const bool terminal = isatty(fileno(stdout)) != 0;
  const Data data = make_data(7);
  std::printf("tiny MoE: T=%ld d=%ld E=%ld k=%ld f=%ld, %d SGD steps, capacity factor 1.25\n\n",
              static_cast<long>(kTokens), static_cast<long>(kHidden), static_cast<long>(kExperts),
              static_cast<long>(kTopK), static_cast<long>(kFfn), kSteps);
  const std::vector<Run> runs = {{"no_balancing", moe::ScoreFunction::softmax, false, false},
                                 {"aux_loss", moe::ScoreFunction::softmax, true, false},
                                 {"bias_balancer", moe::ScoreFunction::sigmoid, false, true}};
  std::vector<Result> results;
  for (const Run& run : runs) results.push_back(train(run, data, terminal));

  std::printf("\n%-14s %10s %8s %6s %7s %8s\n", "run", "loss", "MaxVio", "cold", "drop", "time");
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const Result& r = results[i];
    std::printf("%-14s %10.4f %8.2f %6ld %6.1f%% %7.2fs\n", runs[i].name, r.loss, r.max_vio,
                static_cast<long>(r.cold), 100 * r.drop_rate, r.seconds);
  }
  std::printf("\nwrote health_<run>.csv and heatmap_<run>.svg for each run\n");

  // The story the demo tells: without balancing the routing stays collapsed (cold experts, an
  // expert at more than twice the mean load, a third of the assignments dropped); each balancer
  // spreads the load, stops the drops, and the model fits better for it.
  const Result &none = results[0], &aux = results[1], &bias = results[2];
  bool ok =
      std::all_of(results.begin(), results.end(), [](const Result& r) { return r.wrote_files; });
  ok = ok && none.cold >= 2 && none.max_vio > 1.5 && none.drop_rate > 0.3;
  for (const Result* r : {&aux, &bias})
    ok = ok && r->cold == 0 && r->max_vio < 0.5 && r->drop_rate < 0.05 && r->loss < 0.5 * none.loss;
  if (!ok) std::printf("FAILED: the expected contrast between the runs did not appear\n");
  return ok ? 0 : 1;
}
