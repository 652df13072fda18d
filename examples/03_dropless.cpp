// Dropless expert FFN: every token reaches all k of its experts, whatever the load.
// Builds a routing by hand (top-2 over 4 experts, one expert deliberately hot), runs a SwiGLU
// expert FFN forward and backward over the dropless plan, and checks the output of one token
// against a direct computation.
#include <cmath>
#include <cstdio>

#include <moe/dispatch/dropless_plan.hpp>
#include <moe/experts/dropless_ffn.hpp>
#include <moe/routing/routing.hpp>

int main() {
  using S = double;
  const moe::Index tokens = 64, d = 16, f = 32, experts = 4, k = 2;

  // A routing as a router would produce it: expert ids [T, k] and combine weights [T, k].
  moe::Routing<S> routing;
  routing.expert_ids.resize(tokens, k);
  routing.gates.resize(tokens, k);
  for (moe::Index t = 0; t < tokens; ++t) {
    routing.expert_ids(t, 0) = t % 4 == 3 ? 3 : 0;  // expert 0 takes 3/4 of the first choices
    routing.expert_ids(t, 1) = static_cast<moe::ExpertId>(1 + t % 2);
    routing.gates(t, 0) = 0.75;
    routing.gates(t, 1) = 0.25;
  }

  moe::ExpertFFNConfig config;
  config.num_experts = experts;
  config.hidden = d;
  config.ffn_hidden = f;
  config.activation = moe::Activation::swiglu;
  config.bias = true;
  moe::ExpertWeights<S> weights(config);
  weights.init_weights(/*seed=*/1, /*stddev=*/0.1);

  moe::RowMatrix<S> x(tokens, d);
  for (moe::Index i = 0; i < x.size(); ++i) x.data()[i] = std::sin(0.1 * static_cast<double>(i));

  // Sort (token, choice) pairs by expert, pad each group to a multiple of 8 rows.
  const moe::DroplessPlan plan =
      moe::make_dropless_plan(routing.expert_ids, experts, /*block_size=*/8);
  moe::DroplessFFNContext<S> ctx;
  const moe::RowMatrix<S> y = moe::dropless_ffn_forward<S>(weights, x, routing.gates, plan, ctx);

  moe::RowMatrix<S> grad_x(tokens, d), grad_gates(tokens, k);
  moe::ExpertGradients<S> grads(config);
  const moe::RowMatrix<S> grad_y = moe::RowMatrix<S>::Ones(tokens, d);  // loss = sum(y)
  moe::dropless_ffn_backward<S>(weights, grad_y, plan, ctx, grads, grad_x, grad_gates);

  // Token 5 directly: sum_j gate_j * (silu(x W1 + b1) * (x W3 + b3)) W2 + b2 for its experts.
  const moe::Index t = 5;
  Eigen::Matrix<S, 1, Eigen::Dynamic> expected = Eigen::Matrix<S, 1, Eigen::Dynamic>::Zero(d);
  double gate_grad_expected = 0.0;
  for (moe::Index j = 0; j < k; ++j) {
    const moe::Index e = routing.expert_ids(t, j);
    const auto h1 = (x.row(t) * weights.w1.middleRows(e * d, d) + weights.b1.row(e)).eval();
    const auto h3 = (x.row(t) * weights.w3.middleRows(e * d, d) + weights.b3.row(e)).eval();
    const auto a = (h1.array() / (1.0 + (-h1.array()).exp()) * h3.array()).matrix().eval();
    const auto out = (a * weights.w2.middleRows(e * f, f) + weights.b2.row(e)).eval();
    expected += routing.gates(t, j) * out;
    if (j == 0) gate_grad_expected = out.sum();
  }
  const double error = (y.row(t) - expected).cwiseAbs().maxCoeff();
  const double gate_error = std::abs(grad_gates(t, 0) - gate_grad_expected);
  std::printf(
      "padded rows %ld for %ld pairs; expert loads %ld %ld %ld %ld\n",
      static_cast<long>(plan.padded_rows()), static_cast<long>(plan.num_pairs()),
      static_cast<long>(plan.tokens_per_expert[0]), static_cast<long>(plan.tokens_per_expert[1]),
      static_cast<long>(plan.tokens_per_expert[2]), static_cast<long>(plan.tokens_per_expert[3]));
  std::printf("token %ld: max |y - direct| = %.3g, |d gate - direct| = %.3g\n",
              static_cast<long>(t), error, gate_error);
  const bool ok = error < 1e-12 && gate_error < 1e-12 && grads.w1.allFinite() && grad_x.allFinite();
  std::printf("%s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
