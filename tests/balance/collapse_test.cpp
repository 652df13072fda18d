// Deterministic routing collapse: a router trained by SGD on clustered tokens from a skewed start
// ends with most experts cold unless it is balanced, by the auxiliary loss or by the aux-loss-free
// bias; and the bias never reaches the gate weights' gradient.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "moe/balance/bias_balancer.hpp"
#include "moe/balance/load_balancing_loss.hpp"
#include "moe/core/random.hpp"
#include "moe/routing/router.hpp"
#include "support/catch.hpp"
#include "support/finite_difference.hpp"

namespace {

using moe::ExpertIdMatrix;
using moe::Index;
using Mat = moe::RowMatrix<double>;

constexpr Index kHidden = 12, kExperts = 8, kTopK = 2, kClusters = 32, kTokens = 512;

/// Tokens in clusters around random centers, all sharing one common direction; each cluster has a
/// preferred expert it earns a higher reward on.
struct Task {
  Mat x;
  std::vector<int> cluster;
  Mat affinity;  // [clusters, E]
  Mat common;    // [1, d] the shared direction, unit length
};

Task make_task(std::uint64_t seed) {
  const moe::CounterRng rng(seed, 101);
  std::uint64_t n = 0;
  Task task;
  task.common = Mat(1, kHidden);
  for (Index i = 0; i < kHidden; ++i) task.common(0, i) = rng.normal(n++);
  task.common /= task.common.norm();
  Mat centers(kClusters, kHidden);
  for (Index i = 0; i < centers.size(); ++i) centers.data()[i] = rng.normal(n++);
  task.x = Mat(kTokens, kHidden);
  for (Index t = 0; t < kTokens; ++t) {
    const int c = static_cast<int>(t % kClusters);
    task.cluster.push_back(c);
    for (Index i = 0; i < kHidden; ++i)
      task.x(t, i) = centers(c, i) + 0.5 * rng.normal(n++) + 2.0 * task.common(0, i);
  }
  task.affinity = Mat::Constant(kClusters, kExperts, 0.5);
  for (Index c = 0; c < kClusters; ++c) task.affinity(c, c % kExperts) = 1.0;
  return task;
}

enum class Balancing { none, aux_loss, bias };

struct Outcome {
  std::vector<double> max_violation;  // per step, from the hard counts of all k choices
  moe::IndexVector final_load;
  Index cold = 0;  // experts with load < 0.1 * mean load at the end
};

moe::IndexVector loads(const ExpertIdMatrix& ids) {
  moe::IndexVector load = moe::IndexVector::Zero(kExperts);
  for (Index i = 0; i < ids.size(); ++i) load(ids.data()[i]) += 1;
  return load;
}

double max_violation(const moe::IndexVector& load) {
  const double mean = static_cast<double>(load.sum()) / static_cast<double>(load.size());
  return (static_cast<double>(load.maxCoeff()) - mean) / mean;
}

/// softmax over E with the raw top-k probabilities as gates (Switch / Qwen norm_topk_prob=False),
/// or sigmoid with the k gates renormalized (DeepSeek-V3), the setting the bias is made for.
moe::RouterConfig router_config(moe::ScoreFunction score) {
  moe::RouterConfig c;
  c.renormalize = score == moe::ScoreFunction::sigmoid;
  c.num_experts = kExperts;
  c.hidden = kHidden;
  c.top_k = kTopK;
  c.score = score;
  return c;
}

/// Router-only SGD on L = -(1/T) sum_t sum_j gate_tj * affinity(cluster_t, expert_tj)
/// (+ the aux loss), from weights that send every token to experts 0 and 1.
Outcome train(const Task& task, moe::ScoreFunction score, Balancing balancing, int steps, double lr,
              double aux_coefficient, double bias_rate) {
  moe::Router<double> router(router_config(score));
  router.init_weights(7, 0.1);
  router.weight.row(0) += 3.0 * task.common;
  router.weight.row(1) += 2.5 * task.common;
  moe::BiasBalancer<double> balancer(kExperts, {bias_rate, moe::BiasUpdateRule::sign});
  const moe::AuxLossConfig aux =
      score == moe::ScoreFunction::softmax
          ? moe::aux_presets::deepspeed_topk(kTopK, aux_coefficient)
          : moe::aux_presets::deepseek_v3_sequence(kTopK, 0, aux_coefficient);
  Outcome out;
  moe::RouterContext<double> ctx;
  for (int step = 0; step < steps; ++step) {
    const auto& routing =
        router.forward(task.x, ctx, moe::Mode::train, static_cast<std::uint64_t>(step));
    moe::RouterUpstream<double> up;
    up.gates.resize(kTokens, kTopK);
    for (Index t = 0; t < kTokens; ++t)
      for (Index j = 0; j < kTopK; ++j)
        up.gates(t, j) = -task.affinity(task.cluster[t], routing.expert_ids(t, j)) / kTokens;
    if (balancing == Balancing::aux_loss)
      up.scores = moe::load_balancing_loss(routing.scores, routing.expert_ids, aux).grad;
    const moe::IndexVector load = loads(routing.expert_ids);
    out.max_violation.push_back(max_violation(load));
    if (balancing == Balancing::bias) {
      balancer.accumulate(0, routing.expert_ids);
      balancer.step();
    }
    const auto grads = router.backward(task.x, ctx, up);
    router.weight -= lr * grads.weight;
    if (balancing == Balancing::bias) balancer.apply_to(router);
  }
  const auto& final_routing = router.forward(task.x, ctx, moe::Mode::eval);
  out.final_load = loads(final_routing.expert_ids);
  const double mean = static_cast<double>(out.final_load.sum()) / kExperts;
  for (Index e = 0; e < kExperts; ++e) out.cold += out.final_load(e) < 0.1 * mean ? 1 : 0;
  return out;
}

double max_after(const std::vector<double>& v, int warmup) {
  return *std::max_element(v.begin() + warmup, v.end());
}

void report(const char* name, const Outcome& o, int warmup) {
  std::printf("%-28s cold %ld  MaxVio after warm-up %.3f  final load", name,
              static_cast<long>(o.cold), max_after(o.max_violation, warmup));
  for (Index e = 0; e < kExperts; ++e) std::printf(" %ld", static_cast<long>(o.final_load(e)));
  std::printf("\n");
}

constexpr int kSteps = 400, kWarmup = 250;
constexpr double kLearningRate = 0.05;

}  // namespace

TEST_CASE("collapse: without balancing at least half the experts end cold", "[balance][collapse]") {
  const Task task = make_task(3);
  for (auto score : {moe::ScoreFunction::softmax, moe::ScoreFunction::sigmoid}) {
    const Outcome none = train(task, score, Balancing::none, kSteps, kLearningRate, 0.0, 0.0);
    report(score == moe::ScoreFunction::softmax ? "softmax, no balancing" : "sigmoid, no balancing",
           none, kWarmup);
    CHECK(none.cold >= kExperts / 2);
    CHECK(max_after(none.max_violation, kWarmup) > 2.0);
  }
}

TEST_CASE("collapse: the aux loss keeps MaxVio below 0.3 after warm-up", "[balance][collapse]") {
  const Task task = make_task(3);
  const Outcome aux = train(task, moe::ScoreFunction::softmax, Balancing::aux_loss, kSteps,
                            kLearningRate, 3.0, 0.0);
  report("softmax, aux loss", aux, kWarmup);
  CHECK(max_after(aux.max_violation, kWarmup) < 0.3);
  CHECK(aux.cold == 0);
}

TEST_CASE("collapse: the bias balancer keeps MaxVio below 0.3 after warm-up, deterministically",
          "[balance][collapse]") {
  const Task task = make_task(3);
  const Outcome bias =
      train(task, moe::ScoreFunction::sigmoid, Balancing::bias, kSteps, kLearningRate, 0.0, 1e-3);
  report("sigmoid, bias balancer", bias, kWarmup);
  CHECK(max_after(bias.max_violation, kWarmup) < 0.3);
  CHECK(bias.cold == 0);
  // The same inputs and seeds give the same bits: a second run retraces the first step by step.
  const Outcome again =
      train(task, moe::ScoreFunction::sigmoid, Balancing::bias, 100, kLearningRate, 0.0, 1e-3);
  CHECK(std::equal(again.max_violation.begin(), again.max_violation.end(),
                   bias.max_violation.begin()));
}

TEST_CASE("collapse: the selection bias leaves the gate weights' gradient unchanged",
          "[balance][collapse]") {
  const Index T = 24;
  const moe::RouterConfig config = router_config(moe::ScoreFunction::sigmoid);
  moe::Router<double> router(config);
  router.init_weights(11, 0.5);
  const moe::CounterRng rng(5, 202);
  Mat x(T, kHidden), upstream_gates(T, kTopK);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = rng.normal(static_cast<std::uint64_t>(i));
  for (Index i = 0; i < upstream_gates.size(); ++i)
    upstream_gates.data()[i] = rng.normal(static_cast<std::uint64_t>(1000 + i));

  moe::RouterContext<double> plain_ctx;
  const ExpertIdMatrix plain_ids = router.forward(x, plain_ctx, moe::Mode::train).expert_ids;

  // A balancer state that changes the selection of many tokens.
  moe::BiasBalancer<double> balancer(kExperts, {0.2, moe::BiasUpdateRule::sign});
  balancer.accumulate(0, plain_ids);
  balancer.step();
  balancer.apply_to(router);
  moe::RouterContext<double> ctx;
  const auto& routing = router.forward(x, ctx, moe::Mode::train);
  const ExpertIdMatrix ids = routing.expert_ids;
  Index changed = 0;
  for (Index t = 0; t < T; ++t) changed += (ids.row(t) != plain_ids.row(t)) ? 1 : 0;
  CHECK(changed >= T / 4);

  // Gates are the unbiased sigmoid scores of the chosen experts, renormalized.
  auto gates_of = [&](const Mat& weight) {
    Mat gates(T, kTopK);
    for (Index t = 0; t < T; ++t) {
      double sum = 0;
      for (Index j = 0; j < kTopK; ++j)
        sum += gates(t, j) = 1.0 / (1.0 + std::exp(-x.row(t).dot(weight.row(ids(t, j)))));
      gates.row(t) /= sum;
    }
    return gates;
  };
  CHECK(moe::test::relative_error(routing.gates, gates_of(router.weight)) < 1e-14);

  moe::RouterUpstream<double> up;
  up.gates = upstream_gates;
  const auto grads = router.backward(x, ctx, up);
  Mat weight = router.weight;
  const Mat numeric = moe::test::numerical_gradient(
      weight, [&] { return gates_of(weight).cwiseProduct(upstream_gates).sum(); });
  CHECK(moe::test::relative_error(grads.weight, numeric) < 1e-6);
}
