// The bad-input catalogue of the layer: its config (also when edited after construction), the
// forward's input, the backward's context and upstream gradient, mapped buffers, assignment into
// them, the balancer and loading from another layer.
#include <limits>
#include <vector>

#include <moe/layer/moe_layer.hpp>

#include "support/bad_input.hpp"
#include "support/catch.hpp"
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
  const auto build = [](const moe::MoELayerConfig& c) { return [c] { moe::MoELayer<float> l(c); }; };
  require_rejects(build(with([](C& c) { c.block_size = 0; })), "MoELayerConfig::block_size", ">= 1",
                  "0");
  require_rejects(build(with([](C& c) { c.z_loss_coefficient = -1; })),
                  "MoELayerConfig::z_loss_coefficient", ">= 0", "-1");
  require_rejects(build(with([](C& c) { c.shared.ffn_hidden = -1; })),
                  "MoELayerConfig::shared.ffn_hidden", ">= 0 (0 = none)", "-1");
  require_rejects(build(with([](C& c) { c.ffn_hidden = 0; })), "ExpertFFNConfig::ffn_hidden",
                  ">= 1", "0");
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

  moe::MoELayer<double> other(with([](moe::MoELayerConfig& c) { c.ffn_hidden = 7; }));
  require_rejects([&] { layer.load_from(other); }, "whole",
                  "a layer holding every expert, with this layer's parameter shapes",
                  "another shape");
}

TEST_CASE("a layer over caller buffers refuses buffers it would not use and assignments of other "
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
