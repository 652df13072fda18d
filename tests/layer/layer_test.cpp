// MoELayer against a plain per-token reference (router loops, expert loops, capacity slots), and
// its gradients against central finite differences, in double.
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <moe/layer/moe_layer.hpp>
#include <moe/routing/presets.hpp>
#include <moe/routing/replay.hpp>

#include "support/catch.hpp"
#include "support/dispatch_reference.hpp"
#include "support/dropless_reference.hpp"
#include "support/finite_difference.hpp"
#include "support/layer_helpers.hpp"
#include "support/random_matrix.hpp"
#include "support/routing_reference.hpp"

namespace {

using moe::test::random_matrix;

using moe::Index;
using Matrix = moe::RowMatrix<double>;

moe::MoELayerConfig small_config(moe::DispatchKind dispatch, moe::Activation activation,
                                 bool shared) {
  moe::MoELayerConfig c;
  c.router.num_experts = 4;
  c.router.hidden = 5;
  c.router.top_k = 2;
  c.router.renormalize = true;
  c.ffn_hidden = 3;
  c.activation = activation;
  c.expert_bias = true;
  c.dispatch = dispatch;
  c.block_size = 4;
  c.capacity.train_factor = 0.75;  // C = ceil(12 * 2 / 4 * 0.75) = 5 of 6 average: some drop
  c.capacity.eval_factor = 0.75;
  c.capacity.policy = moe::DropPolicy::choice_major;
  c.aux_loss = moe::aux_presets::megatron(2, 0.1);
  c.z_loss_coefficient = 0.01;
  if (shared) c.shared = {4, true};
  return c;
}

// y_t = sum over kept choices of g_tj FFN_e(x_t) + sigmoid(x_t . w) FFN_shared(x_t), by loops;
// with `replayed`, the choices are those ids (routing replay). Unused slots (-1) add nothing; a
// zero-computation expert (id >= E - Z) adds g_tj x_t.
Matrix reference_forward(const moe::MoELayer<double>& layer, const Matrix& x, moe::Mode mode,
                         const std::vector<std::vector<int>>* replayed = nullptr) {
  const auto& c = layer.config;
  const auto routing = moe::test::reference_route(
      c.router, x, layer.router.weight, layer.router.bias, layer.router.noise_weight,
      layer.router.selection_bias, mode == moe::Mode::train, 0, replayed);
  const Index T = x.rows(), k = c.router.top_k, E = c.router.num_experts;
  moe::ExpertIdMatrix ids(T, k);
  Matrix gates(T, k);
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < k; ++j) ids(t, j) = routing.ids[t][j], gates(t, j) = routing.gates[t][j];
  Eigen::Matrix<Index, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> slot =
      Eigen::Matrix<Index, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>::Zero(T, k);
  if (c.dispatch == moe::DispatchKind::capacity) {
    const double cf = mode == moe::Mode::train ? c.capacity.train_factor : c.capacity.eval_factor;
    const auto capacity =
        static_cast<Index>(std::ceil(static_cast<double>(T * k) / E * cf));  // Megatron
    slot = moe::test::reference_slots(ids, gates, E, 0, capacity, c.capacity.policy, 0).slot;
  }
  Matrix y = Matrix::Zero(T, x.cols());
  for (Index t = 0; t < T; ++t) {
    for (Index j = 0; j < k; ++j) {
      if (ids(t, j) < 0 || slot(t, j) < 0) continue;
      if (ids(t, j) >= c.num_ffn_experts()) {
        for (Index i = 0; i < x.cols(); ++i) y(t, i) += gates(t, j) * x(t, i);
        continue;
      }
      const auto row = moe::test::reference_expert_row(layer.experts, ids(t, j), x.row(t).data());
      for (Index i = 0; i < x.cols(); ++i) y(t, i) += gates(t, j) * row.o[i];
    }
    if (c.shared.ffn_hidden > 0) {
      double u = 0;
      for (Index i = 0; i < x.cols(); ++i) u += x(t, i) * layer.shared_gate_weight[i];
      const double g = c.shared.gated ? 1 / (1 + std::exp(-u)) : 1.0;
      const auto row = moe::test::reference_expert_row(layer.shared, 0, x.row(t).data());
      for (Index i = 0; i < x.cols(); ++i) y(t, i) += g * row.o[i];
    }
  }
  return y;
}

// Backward's gradients after `step(ctx)`, a forward or replay of `layer` on `x` in Mode::train,
// with those of x, the router weight and W1 checked against central differences of
// L = <grad_y, y> + aux_loss + z_loss; returns them with L for the caller's further checks.
template <class Step>
auto checked_gradients(moe::MoELayer<double>& layer, Matrix& x, const Matrix& grad_y, Step step) {
  auto loss = [&grad_y, step] {
    moe::MoELayerContext<double> ctx;
    const auto out = step(ctx);
    return out.y.cwiseProduct(grad_y).sum() + out.aux_loss + out.z_loss;
  };
  moe::MoELayerContext<double> ctx;
  step(ctx);
  auto g = layer.backward(x, ctx, grad_y);
  using moe::test::numerical_gradient;
  using moe::test::relative_error;
  CHECK(relative_error(g.x, numerical_gradient(x, loss)) <= 1e-6);
  CHECK(relative_error(g.router.weight, numerical_gradient(layer.router.weight, loss)) <= 1e-6);
  CHECK(relative_error(g.experts.w1, numerical_gradient(layer.experts.w1, loss)) <= 1e-6);
  return std::make_pair(std::move(g), loss);
}

}  // namespace

TEST_CASE("MoELayer forward matches the per-token reference", "[layer]") {
  for (auto dispatch : {moe::DispatchKind::dropless, moe::DispatchKind::capacity})
    for (auto activation : {moe::Activation::swiglu, moe::Activation::gelu, moe::Activation::relu})
      for (bool shared : {false, true})
        for (auto mode : {moe::Mode::train, moe::Mode::eval}) {
          INFO(moe::test::dispatch_name(dispatch)
               << " activation=" << moe::to_string(activation) << " shared=" << shared);
          auto layer = moe::test::random_layer(small_config(dispatch, activation, shared));
          const Matrix x = random_matrix(12, 5, 8);
          moe::MoELayerContext<double> ctx;
          const auto out = layer.forward(x, ctx, mode);
          const Matrix expected = reference_forward(layer, x, mode);
          CHECK(moe::test::relative_error(out.y, expected) <= 1e-12);
          if (mode == moe::Mode::eval) {
            CHECK(out.aux_loss == 0);
            CHECK(out.z_loss == 0);
          } else {
            CHECK(out.aux_loss > 0);
            CHECK(out.z_loss > 0);
          }
          if (dispatch == moe::DispatchKind::capacity) {
            CHECK(out.health.capacity.has_value());
            CHECK(ctx.exchange.capacity_plan.total_dropped > 0);  // the case exercises drops
          }
        }
}

TEST_CASE("MoELayer gradients match central finite differences", "[layer][backward]") {
  for (auto dispatch : {moe::DispatchKind::dropless, moe::DispatchKind::capacity})
    for (auto activation : {moe::Activation::swiglu, moe::Activation::gelu_tanh}) {
      INFO(moe::test::dispatch_name(dispatch) << " activation=" << moe::to_string(activation));
      auto config = small_config(dispatch, activation, true);
      config.router.expert_scale = activation == moe::Activation::swiglu;  // Gemma 4's scale
      auto layer = moe::test::random_layer(config);
      const Index experts = config.router.num_experts;
      if (config.router.expert_scale)
        layer.router.expert_scale = (1.0 + random_matrix(experts, 1, 11, 0.5).array()).matrix();
      Matrix x = random_matrix(12, 5, 9);
      const Matrix grad_y = random_matrix(12, 5, 10);
      const auto [g, loss] = checked_gradients(
          layer, x, grad_y, [&](auto& ctx) { return layer.forward(x, ctx, moe::Mode::train); });
      using moe::test::numerical_gradient;
      using moe::test::relative_error;
      CHECK(relative_error(g.experts.w2, numerical_gradient(layer.experts.w2, loss)) <= 1e-6);
      CHECK(relative_error(g.experts.b1, numerical_gradient(layer.experts.b1, loss)) <= 1e-6);
      CHECK(relative_error(g.experts.b2, numerical_gradient(layer.experts.b2, loss)) <= 1e-6);
      if (activation == moe::Activation::swiglu)
        CHECK(relative_error(g.experts.w3, numerical_gradient(layer.experts.w3, loss)) <= 1e-6);
      CHECK(relative_error(g.shared.w1, numerical_gradient(layer.shared.w1, loss)) <= 1e-6);
      CHECK(relative_error(g.shared.w2, numerical_gradient(layer.shared.w2, loss)) <= 1e-6);
      auto& gate_w = layer.shared_gate_weight;
      CHECK(relative_error(g.shared_gate, numerical_gradient(gate_w, loss)) <= 1e-6);
      if (config.router.expert_scale) {
        auto& scale = layer.router.expert_scale;
        CHECK(relative_error(g.router.expert_scale, numerical_gradient(scale, loss)) <= 1e-6);
      }
    }
}

TEST_CASE("MoELayer backward after an eval forward, which reads token rows in place",
          "[layer][backward]") {
  // Without losses and noise, train and eval route alike; only the eval forward skips the grouped
  // copy of x, which the backward then makes from the x it is given.
  for (bool shared : {false, true}) {
    INFO("shared " << shared);
    moe::MoELayerConfig config =
        small_config(moe::DispatchKind::dropless, moe::Activation::swiglu, shared);
    config.aux_loss.reset();
    config.z_loss_coefficient = 0.0;
    auto layer = moe::test::random_layer(config);
    const Matrix x = random_matrix(12, 5, 21);
    const Matrix grad_y = random_matrix(12, 5, 22);
    moe::MoELayerContext<double> train_ctx, eval_ctx;
    const auto train_out = layer.forward(x, train_ctx, moe::Mode::train);
    const auto eval_out = layer.forward(x, eval_ctx, moe::Mode::eval);
    CHECK(eval_out.y == train_out.y);
    const auto train_grads = layer.backward(x, train_ctx, grad_y);
    const auto eval_grads = layer.backward(x, eval_ctx, grad_y);
    CHECK(eval_grads.x == train_grads.x);
    CHECK(eval_grads.experts.w1 == train_grads.experts.w1);
    CHECK(eval_grads.experts.w2 == train_grads.experts.w2);
    CHECK(eval_grads.experts.w3 == train_grads.experts.w3);
    CHECK(eval_grads.router.weight == train_grads.router.weight);
    if (shared) CHECK(eval_grads.shared.w1 == train_grads.shared.w1);
  }
}

TEST_CASE("MoELayer bias balancer steers selection once per step", "[layer][balance]") {
  auto c = small_config(moe::DispatchKind::dropless, moe::Activation::relu, false);
  c.router.score = moe::ScoreFunction::sigmoid;
  c.bias_balancer = moe::BiasBalancerOptions{};
  auto layer = moe::test::random_layer(c);
  const Matrix x = random_matrix(40, 5, 11);
  moe::MoELayerContext<double> ctx;
  const auto before = layer.forward(x, ctx, moe::Mode::train);
  CHECK(layer.router.selection_bias.isZero());
  layer.step_balancer();
  // the loads of that step, by hand: u * sign(mean - load)
  moe::Vector<double> load = moe::Vector<double>::Zero(4);
  for (Index t = 0; t < 40; ++t)
    for (Index j = 0; j < 2; ++j) load[ctx.router.routing.expert_ids(t, j)] += 1;
  for (Index e = 0; e < 4; ++e) {
    const double mean = 20, expected = load[e] < mean ? 1e-3 : load[e] > mean ? -1e-3 : 0;
    CHECK(layer.router.selection_bias[e] == Approx(expected));
  }
  CHECK(before.health.hard.max_vio > 0);

  moe::MoELayer<double> plain(
      small_config(moe::DispatchKind::dropless, moe::Activation::relu, false));
  CHECK_THROWS_AS(plain.step_balancer(), moe::Error);
}

TEST_CASE("MoELayer rejects bad configuration and input", "[layer][errors]") {
  auto c = small_config(moe::DispatchKind::dropless, moe::Activation::relu, false);
  c.ffn_hidden = 0;
  CHECK_THROWS_AS(moe::MoELayer<double>(c), moe::Error);
  c = small_config(moe::DispatchKind::dropless, moe::Activation::relu, false);
  c.block_size = 0;
  CHECK_THROWS_AS(moe::MoELayer<double>(c), moe::Error);
  auto layer = moe::test::random_layer(
      small_config(moe::DispatchKind::dropless, moe::Activation::relu, false));
  moe::MoELayerContext<double> ctx;
  CHECK_THROWS_AS(layer.forward(Matrix::Zero(3, 4), ctx, moe::Mode::eval), moe::Error);
  layer.forward(Matrix::Zero(3, 5), ctx, moe::Mode::eval);
  CHECK_THROWS_AS(layer.backward(Matrix::Zero(3, 5), ctx, Matrix::Zero(2, 5)), moe::Error);
}

TEST_CASE("MoELayer replay routes to the recorded experts and reproduces a recorded step",
          "[layer][replay]") {
  for (auto dispatch : {moe::DispatchKind::dropless, moe::DispatchKind::capacity}) {
    INFO(moe::test::dispatch_name(dispatch));
    moe::MoELayerConfig config = small_config(dispatch, moe::Activation::swiglu, true);
    config.router.noise = moe::Noise::jitter;  // the replay draws the same noise from the seed
    config.bias_balancer = moe::BiasBalancerOptions{};
    auto recorder = moe::test::random_layer(config);
    auto replayer = moe::test::random_layer(config);
    const Matrix x = random_matrix(12, 5, 31);
    const Matrix grad_y = random_matrix(12, 5, 32);

    // Bit for bit: the same weights, input, mode and seed, the recorded choices replayed.
    moe::MoELayerContext<double> recorded_ctx, replayed_ctx;
    const auto recorded = recorder.forward(x, recorded_ctx, moe::Mode::train, 5);
    moe::RoutingRecord record;
    record.append(recorded_ctx.router.routing);
    const auto replayed =
        replayer.replay(x, record.layers[0].expert_ids, replayed_ctx, moe::Mode::train, 5);
    CHECK(replayed.y == recorded.y);
    CHECK(replayed.aux_loss == recorded.aux_loss);
    CHECK(replayed.z_loss == recorded.z_loss);
    CHECK(replayed.health.hard.load == recorded.health.hard.load);
    CHECK(replayed.health.capacity.has_value() == recorded.health.capacity.has_value());
    const auto recorded_grads = recorder.backward(x, recorded_ctx, grad_y);
    const auto replayed_grads = replayer.backward(x, replayed_ctx, grad_y);
    CHECK(replayed_grads.x == recorded_grads.x);
    CHECK(replayed_grads.router.weight == recorded_grads.router.weight);
    CHECK(replayed_grads.experts.w1 == recorded_grads.experts.w1);
    CHECK(replayed_grads.experts.w2 == recorded_grads.experts.w2);
    CHECK(replayed_grads.shared.w1 == recorded_grads.shared.w1);
    recorder.step_balancer();
    replayer.step_balancer();
    CHECK(replayer.router.selection_bias == recorder.router.selection_bias);

    // Other ids: the layer routes to them, with gates from the live router (loop reference);
    // loads follow the replayed ids, the Megatron aux loss counts the live top-k.
    const moe::ExpertIdMatrix other = moe::test::random_expert_ids(12, 2, 4, 33);
    std::vector<std::vector<int>> rows(12);
    for (Index t = 0; t < 12; ++t) rows[t] = {other(t, 0), other(t, 1)};
    for (auto mode : {moe::Mode::train, moe::Mode::eval}) {
      moe::MoELayerConfig quiet = config;
      quiet.router.noise = moe::Noise::none;
      auto layer = moe::test::random_layer(quiet);
      moe::MoELayerContext<double> ctx, live_ctx;
      const auto out = layer.replay(x, other, ctx, mode);
      CHECK(moe::test::relative_error(out.y, reference_forward(layer, x, mode, &rows)) <= 1e-12);
      Eigen::VectorXd counts = Eigen::VectorXd::Zero(4);
      for (Index i = 0; i < other.size(); ++i) counts[other.data()[i]] += 1;
      CHECK(out.health.hard.load == counts);
      const auto live = layer.forward(x, live_ctx, mode);
      CHECK(out.aux_loss == live.aux_loss);
    }

    // Gradients through the replayed choices, against central differences.
    moe::MoELayerConfig quiet = config;
    quiet.router.noise = moe::Noise::none;
    auto layer = moe::test::random_layer(quiet);
    Matrix x_var = x;
    checked_gradients(layer, x_var, grad_y,
                      [&](auto& ctx) { return layer.replay(x_var, other, ctx, moe::Mode::train); });
  }
}

TEST_CASE("MoELayer with a token mask: padding takes no work, adds nothing, gets zeros",
          "[layer][mask]") {
  const double kNaN = std::numeric_limits<double>::quiet_NaN();
  for (auto dispatch : {moe::DispatchKind::dropless, moe::DispatchKind::capacity})
    for (auto mode : {moe::Mode::train, moe::Mode::eval}) {
      INFO(moe::test::dispatch_name(dispatch) << " train=" << (mode == moe::Mode::train));
      auto layer = moe::test::random_layer(small_config(dispatch, moe::Activation::swiglu, true));
      moe::TokenMask mask(15);
      mask << 1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1;  // 11 real tokens, 4 padding
      Matrix x = random_matrix(15, 5, 41);
      Matrix real_x(11, 5);
      for (Index t = 0, r = 0; t < 15; ++t)
        if (mask(t)) real_x.row(r++) = x.row(t);
      for (Index t = 0; t < 15; ++t)
        if (!mask(t)) x.row(t).setConstant(kNaN);  // padding is never read
      moe::MoELayerContext<double> ctx, real_ctx;
      const auto out = layer.forward(x, mask, ctx, mode);
      const Matrix expected = reference_forward(layer, real_x, mode);
      const auto real = layer.forward(real_x, real_ctx, mode);
      for (Index t = 0, r = 0; t < 15; ++t) {
        if (!mask(t)) {
          CHECK(out.y.row(t).isZero(0.0));
          continue;
        }
        CHECK((out.y.row(t) - expected.row(r)).cwiseAbs().maxCoeff() <= 1e-12);
        ++r;
      }
      CHECK(out.aux_loss == real.aux_loss);  // the losses see the real tokens only
      CHECK(out.z_loss == real.z_loss);
      CHECK(out.health.tokens == 11);
      CHECK(out.health.hard.load.sum() == 11 * 2);
    }

  // gradients: finite differences on the real rows, exact zeros on padding
  auto layer = moe::test::random_layer(
      small_config(moe::DispatchKind::dropless, moe::Activation::swiglu, true));
  moe::TokenMask mask(12);
  mask << 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0;
  Matrix x = random_matrix(12, 5, 42);
  const Matrix grad_y = random_matrix(12, 5, 43);
  const auto g = checked_gradients(layer, x, grad_y, [&](auto& ctx) {
                   return layer.forward(x, mask, ctx, moe::Mode::train);
                 }).first;
  for (Index t = 0; t < 12; ++t)
    if (!mask(t)) CHECK(g.x.row(t).isZero(0.0));
  // every token padded: nothing routed, zero output and gradient
  moe::MoELayerContext<double> none_ctx;
  const auto none = layer.forward(x, moe::TokenMask::Zero(12), none_ctx, moe::Mode::train);
  CHECK(none.y.isZero(0.0));
  CHECK(layer.backward(x, none_ctx, grad_y).x.isZero(0.0));
}

TEST_CASE("MoELayer with the weight before the FFN (Llama 4): y = FFN_e(w x) + shared(x)",
          "[layer][weight_before_ffn]") {
  moe::MoELayerConfig c;
  c.router = moe::presets::llama4(moe::presets::Hidden{5}, moe::presets::Experts{4});
  c.ffn_hidden = 3;
  c.expert_bias = true;
  c.block_size = 4;
  c.shared = {4, false};
  c.weight_before_ffn = true;
  c.aux_loss = moe::aux_presets::megatron(1, 0.1, moe::ScoreFunction::sigmoid);
  auto layer = moe::test::random_layer(c);
  Matrix x = random_matrix(12, 5, 51);
  for (auto mode : {moe::Mode::train, moe::Mode::eval}) {
    moe::MoELayerContext<double> ctx;
    const auto out = layer.forward(x, ctx, mode);
    const auto routing = moe::test::reference_route(c.router, x, layer.router.weight,
                                                    layer.router.bias, layer.router.noise_weight,
                                                    layer.router.selection_bias, false, 0);
    Matrix expected = Matrix::Zero(12, 5);
    for (Index t = 0; t < 12; ++t) {
      const double w = routing.gates[t][0];
      CHECK(w == Approx(1 / (1 + std::exp(-routing.logits[t][routing.ids[t][0]]))));
      const Eigen::RowVectorXd scaled = w * x.row(t);
      const auto row =
          moe::test::reference_expert_row(layer.experts, routing.ids[t][0], scaled.data());
      const auto shared = moe::test::reference_expert_row(layer.shared, 0, x.row(t).data());
      for (Index i = 0; i < 5; ++i) expected(t, i) = row.o[i] + shared.o[i];
    }
    CHECK(moe::test::relative_error(out.y, expected) <= 1e-12);
  }
  const Matrix grad_y = random_matrix(12, 5, 52);
  const auto [g, loss] = checked_gradients(layer, x, grad_y, [&](auto& ctx) {
    return layer.forward(x, ctx, moe::Mode::train);  // z_loss is off: L = <grad_y, y> + aux
  });
  using moe::test::numerical_gradient;
  using moe::test::relative_error;
  CHECK(relative_error(g.experts.b1, numerical_gradient(layer.experts.b1, loss)) <= 1e-6);
  CHECK(relative_error(g.shared.w2, numerical_gradient(layer.shared.w2, loss)) <= 1e-6);
}

TEST_CASE("MoELayer with zero-computation experts (LongCat-Flash): y gets w x, no FFN work",
          "[layer][zero_computation]") {
  moe::MoELayerConfig c;
  c.router =
      moe::presets::longcat_flash(moe::presets::Hidden{5}, moe::presets::Experts{6}, /*top_k=*/3);
  c.zero_computation_experts = 2;  // experts 4 and 5 are identities
  c.ffn_hidden = 3;
  c.expert_bias = true;
  c.block_size = 4;
  c.aux_loss = moe::aux_presets::megatron(3, 0.1);
  c.z_loss_coefficient = 0.01;
  c.bias_balancer = moe::BiasBalancerOptions{};
  auto layer = moe::test::random_layer(c);
  REQUIRE(layer.experts.config.num_experts == 4);
  layer.router.selection_bias = random_matrix(6, 1, 60, 0.2);
  Matrix x = random_matrix(12, 5, 61);
  for (auto mode : {moe::Mode::train, moe::Mode::eval}) {
    moe::MoELayerContext<double> ctx;
    const auto out = layer.forward(x, ctx, mode);
    CHECK(moe::test::relative_error(out.y, reference_forward(layer, x, mode)) <= 1e-12);
    const auto& ids = ctx.router.routing.expert_ids;
    const Index zero_choices = (ids.array() >= 4).count();
    CHECK(zero_choices > 0);  // the case exercises both kinds of expert
    CHECK(zero_choices < ids.size());
    // the FFN experts ran on their own choices only; loads and health count the zero experts
    CHECK(ctx.exchange.plan.num_routed() == ids.size() - zero_choices);
    REQUIRE(out.health.hard.load.size() == 6);
    CHECK(out.health.hard.load[4] + out.health.hard.load[5] == static_cast<double>(zero_choices));
    CHECK(out.health.unused_slots == 0);
    if (mode == moe::Mode::train)
      CHECK(layer.balancer->pending_load().tail(2).sum() == zero_choices);
  }
  const Matrix grad_y = random_matrix(12, 5, 62);
  const auto [g, loss] = checked_gradients(
      layer, x, grad_y, [&](auto& ctx) { return layer.forward(x, ctx, moe::Mode::train); });
  CHECK(moe::test::relative_error(g.experts.w2,
                                  moe::test::numerical_gradient(layer.experts.w2, loss)) <= 1e-6);

  c.dispatch = moe::DispatchKind::capacity;
  REQUIRE_THROWS_WITH(moe::MoELayer<double>(c),
                      Catch::Contains("MoELayerConfig::zero_computation_experts") &&
                          Catch::Contains("dropless dispatch"));
  c.dispatch = moe::DispatchKind::dropless;
  c.zero_computation_experts = 6;
  REQUIRE_THROWS_WITH(moe::MoELayer<double>(c),
                      Catch::Contains("0 <= Z < router.num_experts (6)") && Catch::Contains("6"));
}

TEST_CASE("MoELayer with adaptive k: unused slots take no work, no load and no gradient",
          "[layer][adaptive_k]") {
  for (auto dispatch : {moe::DispatchKind::dropless, moe::DispatchKind::capacity}) {
    INFO(moe::test::dispatch_name(dispatch));
    moe::MoELayerConfig c = small_config(dispatch, moe::Activation::swiglu, true);
    c.router.top_k = 3;
    c.router.min_top_k = 1;
    c.router.top_k_threshold = 0.6;  // keep the best, add those within 0.6x of it
    c.aux_loss = moe::aux_presets::megatron(3, 0.1);
    auto layer = moe::test::random_layer(c);
    Matrix x = random_matrix(12, 5, 71);
    moe::MoELayerContext<double> ctx;
    const auto out = layer.forward(x, ctx, moe::Mode::train);
    CHECK(moe::test::relative_error(out.y, reference_forward(layer, x, moe::Mode::train)) <= 1e-12);
    const auto& ids = ctx.router.routing.expert_ids;
    const Index unused = (ids.array() == moe::kUnusedSlot).count();
    CHECK(unused > 0);  // the case exercises unused slots
    CHECK(out.health.unused_slots == unused);
    CHECK(out.health.active_experts_per_token == Approx(double(36 - unused) / 12));
    CHECK(out.health.hard.load.sum() == double(36 - unused));
    if (dispatch == moe::DispatchKind::capacity) {
      const auto& plan = ctx.exchange.capacity_plan;
      CHECK(plan.total_kept + plan.total_dropped == 36 - unused);
      CHECK(out.health.capacity->drop_rate ==
            Approx(double(plan.total_dropped) / double(36 - unused)));
    } else {
      CHECK(ctx.exchange.plan.num_routed() == 36 - unused);
    }
    const Matrix grad_y = random_matrix(12, 5, 72);
    checked_gradients(layer, x, grad_y,
                      [&](auto& ctx2) { return layer.forward(x, ctx2, moe::Mode::train); });

    // k chosen per call: one expert each, then back to the configured rule
    layer.config.router.active_top_k = 1;
    layer.config.router.min_top_k = 0;
    moe::MoELayerContext<double> one_ctx;
    const auto one = layer.forward(x, one_ctx, moe::Mode::eval);
    CHECK(moe::test::relative_error(one.y, reference_forward(layer, x, moe::Mode::eval)) <= 1e-12);
    CHECK((one_ctx.router.routing.expert_ids.col(0).array() >= 0).all());
    CHECK((one_ctx.router.routing.expert_ids.rightCols(2).array() == moe::kUnusedSlot).all());
    CHECK(one.health.active_experts_per_token == 1.0);
  }
}

TEST_CASE("MoELayer over packed sequences: the sequence-wise aux loss per cu_seqlens sequence",
          "[layer][packed]") {
  moe::MoELayerConfig c = small_config(moe::DispatchKind::dropless, moe::Activation::swiglu, false);
  c.aux_loss = moe::aux_presets::deepseek_v3_packed_sequence(2, 0.1);
  c.health.selection_metrics = true;  // the layer's report takes the layer's HealthConfig
  auto layer = moe::test::random_layer(c);
  Matrix x = random_matrix(12, 5, 81);
  const moe::IndexVector cu_seqlens = (moe::IndexVector(4) << 0, 5, 7, 12).finished();
  moe::MoELayerContext<double> ctx;
  const auto out = layer.forward_packed(x, cu_seqlens, ctx, moe::Mode::train);
  // Reference: DeepSeek-V3's sequence-wise loss by loops, each sequence over its own length:
  // a * sum_e f_e P_e, f_e = E / (k L) * count_e, P_e = mean over the sequence of the scores.
  const auto& r = ctx.router.routing;
  double expected = 0;
  for (Index s = 0; s + 1 < cu_seqlens.size(); ++s) {
    const Index begin = cu_seqlens[s], length = cu_seqlens[s + 1] - begin;
    for (Index e = 0; e < 4; ++e) {
      double count = 0, mean = 0;
      for (Index t = begin; t < begin + length; ++t) {
        for (Index j = 0; j < 2; ++j) count += r.expert_ids(t, j) == e;
        mean += r.scores(t, e) / static_cast<double>(length);
      }
      expected += 0.1 * (4.0 / (2.0 * static_cast<double>(length)) * count) * mean / 3.0;
    }
  }
  CHECK(out.aux_loss == Approx(expected).epsilon(1e-12));
  CHECK_FALSE(std::isnan(out.health.margins.p50));  // selection metrics on
  CHECK(moe::test::relative_error(out.y, reference_forward(layer, x, moe::Mode::train)) <= 1e-12);
  const Matrix grad_y = random_matrix(12, 5, 82);
  checked_gradients(layer, x, grad_y, [&](auto& ctx2) {
    return layer.forward_packed(x, cu_seqlens, ctx2, moe::Mode::train);
  });
  const moe::IndexVector short_offsets = (moe::IndexVector(2) << 0, 11).finished();
  REQUIRE_THROWS_WITH(layer.forward_packed(x, short_offsets, ctx, moe::Mode::train),
                      Catch::Contains("cu_seqlens") &&
                          Catch::Contains("offsets from 0 to the rows of x (12)") &&
                          Catch::Contains("0 to 11"));
}
