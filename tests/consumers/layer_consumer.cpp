// A user's program over the layer, built against moe::compiled: two tokens, two experts, one
// hidden unit, so the output and a weight gradient are worked out by hand below. Its translation
// unit compiles none of the layer's step or backward (the compiled component holds them).
#include <cmath>
#include <cstdio>

#include <moe/layer/moe_layer.hpp>

int main() {
  moe::MoELayerConfig config;
  config.router.hidden = 2;
  config.router.num_experts = 2;
  config.router.top_k = 1;
  config.router.renormalize = true;  // the one gate is 1
  config.ffn_hidden = 1;             // SwiGLU: y = (silu(x W1) * (x W3)) W2
  moe::MoELayer<float> layer(config);
  layer.router.weight << 2, 0, 0, 2;  // token 0 = [1, 0] goes to expert 0, token 1 to expert 1
  layer.experts.w1 << 1, 0, 0, 1;     // [E·d, f]: expert 0 reads feature 0, expert 1 feature 1
  layer.experts.w3 << 2, 0, 0, 1;
  layer.experts.w2 << 3, 0, 0, 5;  // [E·f, d]
  moe::RowMatrix<float> x(2, 2);
  x << 1, 0, 0, 1;
  moe::MoELayerContext<float> ctx;
  const auto out = layer.forward(x, ctx, moe::Mode::train);
  // silu(1) = 1 / (1 + e^-1) = 0.7310585786: y_0 = [3 * 2 * silu(1), 0], y_1 = [0, 5 * silu(1)].
  const double silu1 = 0.7310585786300049;
  const double expected[2][2] = {{6 * silu1, 0}, {0, 5 * silu1}};
  bool ok = true;
  for (int t = 0; t < 2; ++t)
    for (int j = 0; j < 2; ++j) ok = ok && std::abs(out.y(t, j) - expected[t][j]) < 1e-5;
  // d<grad_y, y>/d W2[expert 0] row 0 = a_0 = 2 silu(1) against grad_y = [[1, 0], [0, 0]].
  moe::RowMatrix<float> grad_y = moe::RowMatrix<float>::Zero(2, 2);
  grad_y(0, 0) = 1;
  const moe::MoEGradients<float> grads = layer.backward(x, ctx, grad_y);
  ok = ok && std::abs(grads.experts.w2(0, 0) - 2 * silu1) < 1e-5;
  std::printf("layer consumer: y = [[%.6f, %.6f], [%.6f, %.6f]], dW2[0,0] = %.6f -> %s\n",
              out.y(0, 0), out.y(0, 1), out.y(1, 0), out.y(1, 1), grads.experts.w2(0, 0),
              ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
