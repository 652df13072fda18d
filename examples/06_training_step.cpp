// A custom training step with MoELayer: forward, an MSE loss, backward, a plain SGD step over the
// router's and the experts' weights, with the DeepSeek-V3 balancing: the sequence-wise aux loss
// and the z-loss in the gradient, and the aux-loss-free bias updated once per optimizer step.
#include <cmath>
#include <cstdio>

#include <moe/layer/moe_layer.hpp>

namespace {

using Mat = moe::RowMatrix<float>;

Mat random_matrix(moe::Index rows, moe::Index cols, std::uint64_t seed, double scale) {
  const moe::CounterRng rng(seed, 0);
  Mat m(rows, cols);
  for (moe::Index i = 0; i < m.size(); ++i)
    m.data()[i] = static_cast<float>(scale * rng.normal(static_cast<std::uint64_t>(i)));
  return m;
}

}  // namespace

int main() {
  const moe::Index T = 512, d = 32, sequence = 128;
  const Mat x = random_matrix(T, d, 1, 1.0);
  const Mat target = x * random_matrix(d, d, 2, 1.0 / std::sqrt(d)).transpose();  // a linear map

  moe::MoELayerConfig config;  // DeepSeek-V3 style: sigmoid scores, renormalized top-2 of 8
  config.router.hidden = d;
  config.router.num_experts = 8;
  config.router.top_k = 2;
  config.router.score = moe::ScoreFunction::sigmoid;
  config.router.renormalize = true;
  config.ffn_hidden = 64;  // SwiGLU experts
  config.aux_loss = moe::aux_presets::deepseek_v3_sequence(2, sequence, 1e-3);
  config.z_loss_coefficient = 1e-3;
  config.bias_balancer = moe::BiasBalancerOptions{};  // u = 1e-3, sign rule

  const float lr = 1.0f;
  const int steps = 60;
  float first_loss = 0, loss = 0;
  // The training loop (the README shows these lines).
  moe::MoELayer<float> layer(config);
  layer.init_weights(/*seed=*/7);
  moe::MoELayerContext<float> ctx;
  moe::MoEGradients<float> grads;  // allocated by the first backward, overwritten after
  for (int step = 0; step < steps; ++step) {
    auto out = layer.forward(x, ctx, moe::Mode::train, /*seed=*/step);  // y, aux/z loss, health
    const Mat error = x + out.y - target;                               // residual block, MSE
    loss = error.squaredNorm() / error.size() + out.aux_loss + out.z_loss;
    layer.backward(x, ctx, (2.0f / error.size()) * error, grads);  // + aux and z gradients
    layer.router.weight -= lr * grads.router.weight;               // plain SGD
    layer.experts.w1 -= lr * grads.experts.w1;
    layer.experts.w3 -= lr * grads.experts.w3;
    layer.experts.w2 -= lr * grads.experts.w2;
    layer.step_balancer();  // bias update, once per optimizer step
    if (step == 0) first_loss = loss;
    if (step % 20 == 0 || step + 1 == steps)
      std::printf("step %2d  loss %.4f  aux %.5f  z %.5f  MaxVio %.2f\n", step, loss, out.aux_loss,
                  out.z_loss, out.health.hard.max_vio);
  }

  // The step must learn (loss down by a third) and the balancer must have moved the bias.
  const bool learned = loss < 0.67f * first_loss;
  const bool biased = layer.router.selection_bias.cwiseAbs().maxCoeff() > 0;
  if (!learned)
    std::printf("FAILED: loss %.4f -> %.4f did not fall by a third\n", first_loss, loss);
  if (!biased) std::printf("FAILED: the bias balancer left the selection bias at zero\n");
  return learned && biased ? 0 : 1;
}
