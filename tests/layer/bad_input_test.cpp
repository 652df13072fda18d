// The bad-input catalogue of the layer: its config (also when edited after construction), the
// forward's input, the backward's context and upstream gradient, mapped buffers, assignment into
// them, the balancer and loading from another layer. Then the edges that must work, under both
// dispatchers: no tokens, every expert chosen (k = E), one expert, and a capacity of 0 that drops
// every choice; forward against plain loops, backward for shapes, zeros and finiteness, in double.
// (One file: the two share the layer's instantiations, the larger part of their compile time.)
#include <cmath>
#include <limits>
#include <vector>

#include <moe/layer/moe_layer.hpp>

#include "support/bad_input.hpp"
#include "support/catch.hpp"
#include "support/dropless_reference.hpp"
#include "support/finite_difference.hpp"  // relative_error
#include "support/layer_helpers.hpp"
#include "support/random_matrix.hpp"

namespace {

using moe::Index;
using moe::test::require_rejects;
using Matrix = moe::RowMatrix<double>;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

moe::MoELayerConfig config(moe::DispatchKind dispatch = moe::DispatchKind::dropless) {
  moe::MoELayerConfig c;
  c.router.num_experts = 4;
  c.router.hidden = 6;
  c.router.top_k = 2;
  c.ffn_hidden = 3;
  c.dispatch = dispatch;
  c.block_size = 4;
  c.shared = {5, true};
  c.aux_loss = moe::aux_presets::megatron(2, 0.1);
  return c;
}

template <class Change>
moe::MoELayerConfig with(Change change) {
  moe::MoELayerConfig c = config();
  change(c);
  return c;
}

}  // namespace

TEST_CASE("bad layer configs are refused where the layer is built", "[layer][errors]") {
  using C = moe::MoELayerConfig;
  const auto build = [](const moe::MoELayerConfig& c) {
    return [c] { moe::MoELayer<double> l(c); };
  };
  require_rejects(build(with([](C& c) { c.block_size = 0; })), "MoELayerConfig::block_size", ">= 1",
                  "0");
  require_rejects(build(with([](C& c) { c.swiglu_limit = 0; })), "MoELayerConfig::swiglu_limit",
                  "a finite value > 0", "0");
  require_rejects(build(with([](C& c) { c.z_loss_coefficient = -1; })),
                  "MoELayerConfig::z_loss_coefficient", ">= 0", "-1");
  require_rejects(build(with([](C& c) { c.shared.ffn_hidden = -1; })),
                  "MoELayerConfig::shared.ffn_hidden", ">= 0 (0 = none)", "-1");
  require_rejects(build(with([](C& c) { c.ffn_hidden = 0; })), "ExpertFFNConfig::ffn_hidden",
                  ">= 1", "0");
  require_rejects(build(with([](C& c) { c.weight_before_ffn = true; })),
                  "MoELayerConfig::weight_before_ffn",
                  "top_k == 1 (the gate scales the one expert's input)", "top_k 2");
  require_rejects(build(with([](C& c) {
                    c.weight_before_ffn = true, c.router.top_k = 1;
                    c.aux_loss = moe::aux_presets::megatron(1, 0.1);
                    c.dispatch = moe::DispatchKind::capacity;
                  })),
                  "MoELayerConfig::weight_before_ffn", "dropless dispatch", "capacity dispatch");
  require_rejects(build(with([](C& c) { c.router.top_k = 5; })), "RouterConfig::top_k",
                  "1 <= top_k <= num_experts (4)", "5");
  require_rejects(build(with([](C& c) {
                    c.dispatch = moe::DispatchKind::capacity;
                    c.capacity.alignment = 0;
                  })),
                  "CapacityConfig::alignment", ">= 1", "0");
  require_rejects(build(with([](C& c) { c.aux_loss->coefficient = kNaN; })),
                  "AuxLossConfig::coefficient", "a finite value >= 0", "nan");
}

TEST_CASE("the layer's forward and backward check their input, context and edited config",
          "[layer][errors]") {
  moe::MoELayer<double> layer(config());
  layer.init_weights(3);
  const Matrix x = moe::test::random_matrix(5, 6, 1);
  moe::MoELayerContext<double> ctx;
  require_rejects([&] { layer.forward(Matrix::Zero(5, 7), ctx, moe::Mode::train); }, "x",
                  "shape [*, 6]", "[5, 7]");
  Matrix nan_x = x;
  nan_x(4, 5) = kNaN;
  require_rejects([&] { layer.forward(nan_x, ctx, moe::Mode::train); }, "x", "finite values",
                  "nan at row 4, column 5");

  // The config is a public member: an edit is checked at the next step.
  moe::MoELayer<double> edited = layer;
  edited.config.router.top_k = 1;
  require_rejects([&] { edited.forward(x, ctx, moe::Mode::train); }, "MoELayer::config.router",
                  "the router's config (router.config)", "edit both");
  edited = layer;
  edited.config.ffn_hidden = 4;
  require_rejects([&] { edited.forward(x, ctx, moe::Mode::train); }, "MoELayer::config",
                  "the shapes of the experts it was built with", "f = 4");
  edited = layer;
  edited.config.shared.gated = false;
  require_rejects([&] { edited.forward(x, ctx, moe::Mode::train); }, "MoELayer::config.shared",
                  "the shapes of the shared expert it was built with", "ffn_hidden 5");
  edited = layer;
  edited.config.block_size = -3;
  require_rejects([&] { edited.forward(x, ctx, moe::Mode::train); }, "MoELayerConfig::block_size",
                  ">= 1", "-3");

  // Backward: before any forward, after another batch's, with a bad upstream gradient.
  moe::MoELayerContext<double> empty;
  require_rejects([&] { layer.backward(x, empty, x); }, "ctx",
                  "a context filled by the forward of 5 tokens", "0 tokens");
  const auto out = layer.forward(x, ctx, moe::Mode::train);
  require_rejects([&] { layer.backward(x.topRows(4), ctx, x.topRows(4)); }, "ctx",
                  "the forward of 4 tokens", "5 tokens");
  require_rejects([&] { layer.backward(x, ctx, Matrix::Zero(5, 5)); }, "grad_y", "shape [5, 6]",
                  "[5, 5]");
  Matrix grad_y = out.y;
  grad_y(0, 2) = kNaN;
  require_rejects([&] { layer.backward(x, ctx, grad_y); }, "grad_y", "finite values",
                  "nan at row 0, column 2");
  require_rejects([&] { layer.step_balancer(); }, "MoELayer::step_balancer",
                  "a layer configured with bias_balancer", "none");

  // A token mask: one entry per row, no sequence-wise aux loss, its backward on the same batch.
  const moe::TokenMask mask = moe::TokenMask::Constant(5, true);
  require_rejects(
      [&] { layer.forward(x, moe::TokenMask::Constant(4, true), ctx, moe::Mode::train); },
      "token_mask", "5 entries (one per row of x)", "4");
  moe::MoELayer<double> sequence_wise(
      with([](moe::MoELayerConfig& c) { c.aux_loss = moe::aux_presets::megatron_sequence(2, 5); }));
  require_rejects(
      [&] { sequence_wise.forward(x, mask, ctx, moe::Mode::train); }, "MoELayerConfig::aux_loss",
      "a loss over the whole batch (sequence_length 0) with a token mask", "sequence_length 5");
  layer.forward(x, mask, ctx, moe::Mode::train);
  require_rejects([&] { layer.backward(x.topRows(4), ctx, x.topRows(4)); }, "ctx",
                  "the forward of 4 tokens", "a context of 5 (padded) tokens");
  require_rejects([&] { layer.backward(x, ctx, Matrix::Zero(5, 5)); }, "grad_y", "shape [5, 6]",
                  "[5, 5]");

  moe::MoELayer<double> other(with([](moe::MoELayerConfig& c) { c.ffn_hidden = 7; }));
  require_rejects([&] { layer.load_from(other); }, "whole",
                  "a layer holding every expert, with this layer's parameter shapes",
                  "another shape");
}

TEST_CASE(
    "a layer over caller buffers refuses buffers it would not use and assignments of other "
    "shapes",
    "[layer][errors][parameters]") {
  auto plain = config();
  plain.shared = {};
  std::vector<double> router_w(24), w1(72), w3(72), w2(72), spare(30);
  moe::MoELayerBuffers<double> b;
  b.router.weight = {router_w.data(), 24};
  b.experts = {{w1.data(), 72}, {w3.data(), 72}, {w2.data(), 72}, {}, {}, {}};
  b.shared.w2 = {spare.data(), 30};  // no shared expert configured
  require_rejects([&] { moe::MoELayer<double>::mapped(plain, b); }, "buffers.shared",
                  "empty buffers (no shared expert configured)", "a buffer");
  b.shared = {};
  b.shared_gate_weight = {spare.data(), 6};  // not gated
  require_rejects([&] { moe::MoELayer<double>::mapped(plain, b); }, "buffers.shared_gate_weight",
                  "0 elements", "6");
  b.shared_gate_weight = {};
  b.experts.w2.size = 71;
  require_rejects([&] { moe::MoELayer<double>::mapped(plain, b); }, "buffers.experts.w2",
                  "72 elements ([12, 6])", "71");
  b.experts.w2.size = 72;
  auto mapped = moe::MoELayer<double>::mapped(plain, b);
  const moe::MoELayer<double> wider(with([](moe::MoELayerConfig& c) {
    c.shared = {};
    c.ffn_hidden = 4;
  }));
  require_rejects([&] { mapped = wider; }, "MoELayer::experts.w1 (assigned into caller buffers)",
                  "shape [24, 3]", "[24, 4]");
}

namespace {

using moe::Index;
using moe::test::random_matrix;
using Matrix = moe::RowMatrix<double>;

constexpr Index kHidden = 5;
constexpr double kAuxCoefficient = 0.1;

/// E experts, top-k, softmax then renormalize, SwiGLU experts with biases, aux and z losses on;
/// capacity: Megatron's ceil(T k / E * 1.0).
moe::MoELayerConfig edge_config(moe::DispatchKind dispatch, Index experts, Index top_k,
                                bool shared) {
  moe::MoELayerConfig c;
  c.router.num_experts = experts;
  c.router.hidden = kHidden;
  c.router.top_k = top_k;
  c.router.renormalize = true;
  c.ffn_hidden = 3;
  c.activation = moe::Activation::swiglu;
  c.expert_bias = true;
  c.dispatch = dispatch;
  c.block_size = 4;
  c.capacity.train_factor = 1.0;
  c.capacity.eval_factor = 1.0;
  c.aux_loss = moe::aux_presets::megatron(top_k, kAuxCoefficient);
  c.z_loss_coefficient = 0.01;
  if (shared) c.shared = {4, true};
  return c;
}

/// softmax(x_t W^T) by loops: the router's scores (no bias, no noise).
Matrix reference_scores(const moe::MoELayer<double>& layer, const Matrix& x) {
  const Index T = x.rows(), E = layer.config.router.num_experts;
  Matrix s(T, E);
  for (Index t = 0; t < T; ++t) {
    std::vector<double> z(static_cast<std::size_t>(E), 0.0);
    double max = -HUGE_VAL, sum = 0.0;
    for (Index e = 0; e < E; ++e) {
      for (Index i = 0; i < x.cols(); ++i) z[e] += x(t, i) * layer.router.weight(e, i);
      max = std::max(max, z[e]);
    }
    for (Index e = 0; e < E; ++e) sum += std::exp(z[e] - max);
    for (Index e = 0; e < E; ++e) s(t, e) = std::exp(z[e] - max) / sum;
  }
  return s;
}

/// sigmoid(x_t . w_gate) FFN_shared(x_t) by loops; zero without a shared expert.
Matrix reference_shared(const moe::MoELayer<double>& layer, const Matrix& x) {
  Matrix y = Matrix::Zero(x.rows(), x.cols());
  if (layer.config.shared.ffn_hidden == 0) return y;
  for (Index t = 0; t < x.rows(); ++t) {
    double u = 0.0;
    for (Index i = 0; i < x.cols(); ++i) u += x(t, i) * layer.shared_gate_weight[i];
    const double g = layer.config.shared.gated ? 1.0 / (1.0 + std::exp(-u)) : 1.0;
    const auto row = moe::test::reference_expert_row(layer.shared, 0, x.row(t).data());
    for (Index i = 0; i < x.cols(); ++i) y(t, i) = g * row.o[i];
  }
  return y;
}

/// With k = E every expert is chosen: y_t = sum_e gate_te FFN_e(x_t) (+ shared), the gates being
/// the softmax scores renormalized over all E, i.e. divided by their sum.
Matrix reference_all_experts(const moe::MoELayer<double>& layer, const Matrix& x) {
  const Matrix s = reference_scores(layer, x);
  Matrix y = reference_shared(layer, x);
  for (Index t = 0; t < x.rows(); ++t) {
    const double sum = s.row(t).sum();
    for (Index e = 0; e < s.cols(); ++e) {
      const auto row = moe::test::reference_expert_row(layer.experts, e, x.row(t).data());
      for (Index i = 0; i < x.cols(); ++i) y(t, i) += s(t, e) / sum * row.o[i];
    }
  }
  return y;
}

bool all_finite(const moe::MoEGradients<double>& g) {
  const auto& e = g.experts;
  const auto& s = g.shared;
  return g.x.allFinite() && g.router.weight.allFinite() && g.router.bias.allFinite() &&
         e.w1.allFinite() && e.w3.allFinite() && e.w2.allFinite() && e.b1.allFinite() &&
         e.b3.allFinite() && e.b2.allFinite() && s.w1.allFinite() && s.w3.allFinite() &&
         s.w2.allFinite() && s.b1.allFinite() && s.b3.allFinite() && s.b2.allFinite() &&
         g.shared_gate.allFinite();
}

/// Every routed expert's gradient is zero, in the shapes of the layer's experts.
void check_zero_expert_gradients(const moe::MoELayer<double>& layer,
                                 const moe::ExpertGradients<double>& g) {
  const auto& w = layer.experts;
  REQUIRE(g.w1.rows() == w.w1.rows());
  REQUIRE(g.w1.cols() == w.w1.cols());
  REQUIRE(g.w3.rows() == w.w3.rows());
  REQUIRE(g.w3.cols() == w.w3.cols());
  REQUIRE(g.w2.rows() == w.w2.rows());
  REQUIRE(g.w2.cols() == w.w2.cols());
  REQUIRE(g.b1.rows() == w.b1.rows());
  REQUIRE(g.b1.cols() == w.b1.cols());
  REQUIRE(g.b2.rows() == w.b2.rows());
  REQUIRE(g.b2.cols() == w.b2.cols());
  CHECK(g.w1.isZero(0));
  CHECK(g.w3.isZero(0));
  CHECK(g.w2.isZero(0));
  CHECK(g.b1.isZero(0));
  CHECK(g.b3.isZero(0));
  CHECK(g.b2.isZero(0));
}

}  // namespace

TEST_CASE("the layer at its edges: no tokens, k = E, one expert, every choice dropped",
          "[layer][edge]") {
  SECTION("T = 0: empty output, zero losses, zero gradients of the right shapes") {
    for (auto dispatch : {moe::DispatchKind::dropless, moe::DispatchKind::capacity}) {
      INFO(moe::test::dispatch_name(dispatch));
      for (bool shared : {false, true}) {
        INFO("shared " << shared);
        auto layer = moe::test::random_layer(edge_config(dispatch, 4, 2, shared));
        const Matrix x(0, kHidden);
        moe::MoELayerContext<double> ctx;
        const auto out = layer.forward(x, ctx, moe::Mode::train);
        CHECK(out.y.rows() == 0);
        CHECK(out.y.cols() == kHidden);
        // No token: the aux loss has no domain with a real token (each adds 0) and the z-loss
        // divides its empty sum by max(1, T): both are exactly 0.
        CHECK(out.aux_loss == 0.0);
        CHECK(out.z_loss == 0.0);
        CHECK(out.health.tokens == 0);
        CHECK(out.health.experts == 4);
        if (dispatch == moe::DispatchKind::capacity) {
          REQUIRE(out.health.capacity.has_value());
          CHECK(out.health.capacity->capacity == 0);  // ceil(0 * 2 / 4 * 1.0)
          CHECK(out.health.capacity->kept.sum() == 0);
          CHECK(out.health.capacity->dropped.sum() == 0);
        } else {
          CHECK_FALSE(out.health.capacity.has_value());
        }

        const auto grads = layer.backward(x, ctx, Matrix(0, kHidden));
        CHECK(grads.x.rows() == 0);
        CHECK(grads.x.cols() == kHidden);
        check_zero_expert_gradients(layer, grads.experts);
        CHECK(grads.router.weight.rows() == 4);
        CHECK(grads.router.weight.cols() == kHidden);
        CHECK(grads.router.weight.isZero(0));
        if (shared) {
          CHECK(grads.shared.w1.rows() == layer.shared.w1.rows());
          CHECK(grads.shared.w1.cols() == layer.shared.w1.cols());
          CHECK(grads.shared.w1.isZero(0));
          CHECK(grads.shared.w2.isZero(0));
          CHECK(grads.shared.w3.isZero(0));
          CHECK(grads.shared_gate.size() == kHidden);
          CHECK(grads.shared_gate.isZero(0));
        }
        CHECK(all_finite(grads));
      }
    }
  }

  SECTION("k = E = 4: every expert's output, weighted by its gate") {
    for (auto dispatch : {moe::DispatchKind::dropless, moe::DispatchKind::capacity}) {
      INFO(moe::test::dispatch_name(dispatch));
      // Capacity: C = ceil(T * 4 / 4 * 1.0) = T, and every expert receives exactly T entries (one
      // per token), so nothing drops.
      for (bool shared : {false, true}) {
        INFO("shared " << shared);
        auto layer = moe::test::random_layer(edge_config(dispatch, 4, 4, shared));
        const Matrix x = random_matrix(12, kHidden, 8);
        moe::MoELayerContext<double> ctx;
        const auto out = layer.forward(x, ctx, moe::Mode::train);
        REQUIRE(out.y.rows() == 12);
        REQUIRE(out.y.cols() == kHidden);
        CHECK(moe::test::relative_error(out.y, reference_all_experts(layer, x)) <= 1e-12);
        CHECK(out.y.allFinite());
        // Recomputed top-k with k = E counts every token for every expert: c_e = T, and Megatron's
        // E / (k T^2) sum_e c_e sum_t s_te = (1 / T) sum_t sum_e s_te = 1.
        CHECK(out.aux_loss == Approx(kAuxCoefficient).epsilon(1e-12));
        CHECK(std::isfinite(out.z_loss));
        CHECK(out.z_loss > 0.0);
        CHECK(out.health.hard.load == Eigen::VectorXd::Constant(4, 12.0));
        if (dispatch == moe::DispatchKind::capacity) {
          REQUIRE(out.health.capacity.has_value());
          CHECK(out.health.capacity->capacity == 12);
          CHECK(out.health.capacity->dropped.sum() == 0);
          CHECK(out.health.capacity->kept.sum() == 48);
        }
        const auto grads = layer.backward(x, ctx, random_matrix(12, kHidden, 9));
        CHECK(all_finite(grads));
        CHECK(grads.x.rows() == 12);
      }
    }
  }

  SECTION("E = 1, k = 1: the gate is 1 and y is that expert's FFN") {
    for (auto dispatch : {moe::DispatchKind::dropless, moe::DispatchKind::capacity}) {
      INFO(moe::test::dispatch_name(dispatch));
      auto layer = moe::test::random_layer(edge_config(dispatch, 1, 1, false));
      const Matrix x = random_matrix(12, kHidden, 10);
      moe::MoELayerContext<double> ctx;
      const auto out = layer.forward(x, ctx, moe::Mode::train);
      const moe::Routing<double>& routing = ctx.router.routing;
      CHECK((routing.expert_ids.array() == 0).all());
      CHECK((routing.scores.array() == 1.0).all());  // softmax over one logit
      CHECK((routing.gates.array() == 1.0).all());   // renormalized: 1 / (1 + 0)
      Matrix expected(12, kHidden);
      for (Index t = 0; t < 12; ++t) {
        const auto row = moe::test::reference_expert_row(layer.experts, 0, x.row(t).data());
        for (Index i = 0; i < kHidden; ++i) expected(t, i) = row.o[i];
      }
      CHECK(moe::test::relative_error(out.y, expected) <= 1e-12);
      // c_0 = T and s_t0 = 1: the aux loss is its coefficient. The z-loss is the mean of
      // lse(z_t)^2 = z_t^2 (one logit) times its coefficient.
      CHECK(out.aux_loss == Approx(kAuxCoefficient).epsilon(1e-12));
      double z2 = 0.0;
      for (Index t = 0; t < 12; ++t) z2 += routing.logits(t, 0) * routing.logits(t, 0);
      CHECK(out.z_loss == Approx(0.01 * z2 / 12).epsilon(1e-12));
      CHECK(out.health.normalized_entropy == 1.0);
      if (dispatch == moe::DispatchKind::capacity) {
        REQUIRE(out.health.capacity.has_value());
        CHECK(out.health.capacity->capacity == 12);  // ceil(12 * 1 / 1 * 1.0)
        CHECK(out.health.capacity->dropped.sum() == 0);
      }
      const auto grads = layer.backward(x, ctx, random_matrix(12, kHidden, 11));
      CHECK(all_finite(grads));
      // The gate is constant 1, so the router's gradient comes from the z-loss alone: the aux
      // loss does not depend on the logits (its scores are all 1) and neither do the gates.
      Matrix z_grad = Matrix::Zero(1, kHidden);
      for (Index t = 0; t < 12; ++t)
        z_grad += (0.01 * 2.0 * routing.logits(t, 0) / 12.0) * x.row(t);
      CHECK(moe::test::relative_error(grads.router.weight, z_grad) <= 1e-10);
    }
  }

  SECTION("capacity 0 (CapacityRounding::fixed): every choice dropped") {
    for (bool shared : {false, true}) {
      INFO("shared " << shared);
      auto c = edge_config(moe::DispatchKind::capacity, 4, 2, shared);
      c.capacity.rounding = moe::CapacityRounding::fixed;
      c.capacity.fixed_capacity = 0;  // allowed: CapacityConfig::fixed_capacity >= 0
      auto layer = moe::test::random_layer(c);
      const Index T = 12, k = 2;
      const Matrix x = random_matrix(T, kHidden, 12);
      moe::MoELayerContext<double> ctx;
      const auto out = layer.forward(x, ctx, moe::Mode::train);
      // Nothing reaches a routed expert: y is the shared expert's output, or 0 without one.
      if (shared)
        CHECK(moe::test::relative_error(out.y, reference_shared(layer, x)) <= 1e-12);
      else
        CHECK(out.y.isZero(0));
      CHECK(out.y.allFinite());
      CHECK(std::isfinite(out.aux_loss));
      CHECK(std::isfinite(out.z_loss));
      CHECK(ctx.exchange.capacity_plan.capacity == 0);
      CHECK(ctx.exchange.capacity_plan.total_kept == 0);
      CHECK(ctx.exchange.capacity_plan.total_dropped == T * k);
      CHECK(ctx.exchange.capacity_plan.tokens_without_expert == T);
      REQUIRE(out.health.capacity.has_value());
      const moe::CapacityReport& cap = *out.health.capacity;
      CHECK(cap.capacity == 0);
      CHECK(cap.kept.sum() == 0);
      CHECK(cap.dropped.sum() == T * k);
      CHECK(cap.drop_rate == 1.0);
      CHECK(cap.tokens_without_expert == T);
      CHECK(cap.tokens_left_behind == 1.0);
      CHECK(std::isnan(cap.capacity_utilization));  // sum kept / (E C) = 0 / 0
      // The hard load counts the choices before the drop.
      CHECK(out.health.hard.load.sum() == double(T * k));

      const auto grads = layer.backward(x, ctx, random_matrix(T, kHidden, 13));
      check_zero_expert_gradients(layer, grads.experts);
      CHECK(all_finite(grads));
      CHECK(grads.x.rows() == T);
      CHECK(grads.x.cols() == kHidden);
    }
  }
}
