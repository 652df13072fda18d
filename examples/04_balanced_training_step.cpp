// Balancing in a training step: the aux loss and the z-loss added to the step's loss and to the
// router's gradient, and the aux-loss-free bias balancer run once per optimizer step.
#include <algorithm>
#include <cstdio>

#include "moe/balance/bias_balancer.hpp"
#include "moe/balance/load_balancing_loss.hpp"
#include "moe/balance/z_loss.hpp"
#include "moe/core/random.hpp"
#include "moe/routing/presets.hpp"
#include "moe/routing/router.hpp"

namespace {

using Mat = moe::RowMatrix<double>;

/// Tokens that all lean one way, so an untrained router sends most of them to the same experts.
Mat make_tokens(moe::Index tokens, moe::Index hidden, std::uint64_t seed) {
  const moe::CounterRng rng(seed, 1);
  Mat x(tokens, hidden);
  for (moe::Index i = 0; i < x.size(); ++i) x.data()[i] = rng.normal(static_cast<std::uint64_t>(i));
  x.col(0).array() += 3.0;
  return x;
}

double max_violation(const moe::ExpertIdMatrix& ids, moe::Index experts) {
  moe::IndexVector load = moe::IndexVector::Zero(experts);
  for (moe::Index i = 0; i < ids.size(); ++i) load(ids.data()[i]) += 1;
  const double mean = static_cast<double>(ids.size()) / static_cast<double>(experts);
  return (static_cast<double>(load.maxCoeff()) - mean) / mean;
}

}  // namespace

int main() {
  const moe::Index tokens = 256, hidden = 16;
  const Mat x = make_tokens(tokens, hidden, 7);

  // 1. Mixtral router: HF's aux loss and the z-loss, both as gradients of the logits.
  moe::Router<double> mixtral(
      moe::presets::mixtral(moe::presets::Hidden{hidden}, moe::presets::Experts{8}, 2));
  mixtral.init_weights(1, 0.3);
  mixtral.weight(0, 0) += 1.0;  // expert 0 starts out hot
  const auto aux_config = moe::aux_presets::hf_mixtral(2, 0.01);
  moe::RouterContext<double> ctx;
  double first_violation = 0, last_violation = 0, first_loss = 0, last_loss = 0;
  for (int step = 0; step < 200; ++step) {
    const auto& routing = mixtral.forward(x, ctx, moe::Mode::train, step);
    const auto aux = moe::load_balancing_loss_from_logits(
        routing.logits, moe::ScoreFunction::softmax, moe::ExpertIdMatrix(), aux_config);
    const auto z = moe::router_z_loss(routing.logits, 1e-3);
    const double loss = aux.value + z.value;  // + the task loss of the layer
    moe::RouterUpstream<double> upstream;     // upstream.gates: from the layer's combine backward
    upstream.logits = aux.grad + z.grad;
    const auto grads = mixtral.backward(x, ctx, upstream);
    mixtral.weight -= 2.0 * grads.weight;
    if (step == 0) {
      first_violation = max_violation(routing.expert_ids, 8);
      first_loss = loss;
    }
    last_violation = max_violation(routing.expert_ids, 8);
    last_loss = loss;
  }
  std::printf("aux + z-loss: MaxVio %.2f -> %.2f, loss %.5f -> %.5f (perfect balance: %.5f)\n",
              first_violation, last_violation, first_loss, last_loss, 0.01 * 2);

  // 2. DeepSeek-V3 router: the bias balancer, fed every micro-batch, updated once per step.
  moe::Router<double> deepseek(
      moe::presets::deepseek_v3(moe::presets::Hidden{hidden}, moe::presets::Experts{16}, 4, 4, 2));
  deepseek.init_weights(2, 0.3);
  deepseek.weight(0, 0) += 1.0;
  moe::BiasBalancer<double> balancer(16);  // u = 1e-3, sign rule
  const moe::Index micro_batches = 4, micro = tokens / micro_batches;
  double bias_first = 0, bias_last = 0;
  for (int step = 0; step < 300; ++step) {
    double worst = 0;
    for (moe::Index m = 0; m < micro_batches; ++m) {
      const auto& routing =
          deepseek.forward(x.middleRows(m * micro, micro), ctx, moe::Mode::train, step);
      balancer.accumulate(m, routing.expert_ids);  // once per micro-batch, padding masked if any
      worst = std::max(worst, max_violation(routing.expert_ids, 16));
      // ... the layer's forward and backward for this micro-batch ...
    }
    balancer.step();              // after the last micro-batch, with the optimizer step
    balancer.apply_to(deepseek);  // Router::selection_bias = bias: selection only
    if (step == 0) bias_first = worst;
    bias_last = worst;
  }
  std::printf("bias balancer: worst micro-batch MaxVio %.2f -> %.2f\n", bias_first, bias_last);

  const bool ok = last_violation < 0.5 * first_violation && last_loss < first_loss &&
                  bias_last < 0.5 * bias_first;
  if (!ok) std::printf("FAILED: balancing did not reduce the imbalance\n");
  return ok ? 0 : 1;
}
