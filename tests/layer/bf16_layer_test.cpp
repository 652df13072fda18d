// The layer with bf16 experts (MoELayerConfig::expert_precision = bf16): its routed output is the
// bf16 dropless FFN's, bit for bit; forward and backward stay near the float layer's; the router,
// losses and health are the float layer's own; the copy follows an optimizer step by itself;
// the same bits at 1 and 2 threads; the configs it refuses.
#include <cmath>
#include <random>

#include "moe/experts/bf16_dropless_ffn.hpp"
#include "moe/health/bf16_what_if.hpp"
#include "moe/health/metrics.hpp"
#include "moe/layer/moe_layer.hpp"
#include "moe/routing/presets.hpp"
#include "support/bf16_reference.hpp"
#include "support/catch.hpp"
#include "support/random_matrix.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace moe;

namespace {

MoELayerConfig bf16_layer_config(bool bias) {
  MoELayerConfig c;
  c.router = presets::mixtral(presets::Hidden{96}, presets::Experts{6});
  c.ffn_hidden = 130;
  c.expert_bias = bias;
  c.aux_loss = aux_presets::megatron(2);
  c.z_loss_coefficient = 1e-3;
  c.expert_precision = ExpertPrecision::bf16;
  return c;
}

MoELayer<float> bf16_test_layer(const MoELayerConfig& c) {
  MoELayer<float> layer(c);
  layer.init_weights(3);
  layer.router.weight = test::random_matrix<float>(c.router.num_experts, c.router.hidden, 4);
  if (c.expert_bias) {
    layer.experts.b1 =
        test::random_matrix<float>(layer.experts.b1.rows(), layer.experts.b1.cols(), 5, 0.3);
    layer.experts.b2 =
        test::random_matrix<float>(layer.experts.b2.rows(), layer.experts.b2.cols(), 6, 0.3);
  }
  return layer;
}

double relative_error(const RowMatrix<float>& ours, const RowMatrix<float>& exact) {
  return (ours - exact).norm() / exact.norm();
}

}  // namespace

TEST_CASE("a layer with bf16 experts: the bf16 FFN's output, near the float layer, float routing",
          "[layer][bf16]") {
  const MoELayerConfig c = bf16_layer_config(true);
  MoELayer<float> layer = bf16_test_layer(c);
  MoELayerConfig native_config = c;
  native_config.expert_precision = ExpertPrecision::native;
  MoELayer<float> native(native_config);
  native.load_from(layer);
  const RowMatrix<float> x = test::random_matrix<float>(200, 96, 8);
  const RowMatrix<float> grad_y = test::random_matrix<float>(200, 96, 9);
  MoELayer<float>::Context ctx, native_ctx;
  const MoEOutput<float> out = layer.forward(x, ctx, Mode::train, 1);
  const MoEOutput<float> want = native.forward(x, native_ctx, Mode::train, 1);
  // The router runs in float either way: the same routing, losses and health.
  CHECK(ctx.router.routing.expert_ids == native_ctx.router.routing.expert_ids);
  CHECK(out.aux_loss == want.aux_loss);
  CHECK(out.z_loss == want.z_loss);
  CHECK(out.health.hard.load == want.health.hard.load);
  // The routed output is the bf16 dropless FFN's over the same routing, bit for bit.
  const Bf16ExpertWeights copy(layer.experts);
  DroplessPlan plan;
  make_dropless_plan(ctx.router.routing.expert_ids, 6, c.block_size, plan);
  Bf16FFNContext ffn;
  RowMatrix<float> routed(200, 96);
  dropless_ffn_forward(copy, x, ctx.router.routing.gates, plan, ffn, routed);
  CHECK((out.y.array() == routed.array()).all());
  // Near the float layer: bf16 operands, a relative error of a few 2^-8.
  const double bound = 8 * std::ldexp(1.0, -8);
  CHECK(relative_error(out.y, want.y) < bound);
  CHECK(relative_error(out.y, want.y) > 0);
  const MoEGradients<float> grads = layer.backward(x, ctx, grad_y);
  const MoEGradients<float> native_grads = native.backward(x, native_ctx, grad_y);
  INFO("relative error of grad x " << relative_error(grads.x, native_grads.x) << ", of w1 "
                                   << relative_error(grads.experts.w1, native_grads.experts.w1));
  CHECK(relative_error(grads.x, native_grads.x) < bound);
  CHECK(relative_error(grads.experts.w1, native_grads.experts.w1) < bound);
  CHECK(relative_error(grads.experts.w2, native_grads.experts.w2) < bound);
  CHECK(relative_error(grads.experts.b1, native_grads.experts.b1) < bound);
  CHECK(relative_error(grads.router.weight, native_grads.router.weight) < bound);
}

TEST_CASE("a layer with bf16 experts follows its float weights after an optimizer step",
          "[layer][bf16]") {
  const MoELayerConfig c = bf16_layer_config(false);
  MoELayer<float> layer = bf16_test_layer(c);
  const RowMatrix<float> x = test::random_matrix<float>(64, 96, 10);
  MoELayer<float>::Context ctx;
  const RowMatrix<float> before = layer.forward(x, ctx, Mode::train, 1).y;
  const MoEGradients<float> grads = layer.backward(x, ctx, x);
  layer.experts.w1 -= 0.5f * grads.experts.w1;  // an SGD step on the float weights
  layer.experts.w3 -= 0.5f * grads.experts.w3;
  layer.experts.w2 -= 0.5f * grads.experts.w2;
  const RowMatrix<float> after = layer.forward(x, ctx, Mode::train, 2).y;
  // The bits of a layer built from the stepped weights: the copy was refreshed.
  MoELayer<float> fresh(c);
  fresh.load_from(layer);
  MoELayer<float>::Context fresh_ctx;
  CHECK((fresh.forward(x, fresh_ctx, Mode::train, 2).y.array() == after.array()).all());
  CHECK((after.array() != before.array()).any());
  // A single weight set by hand may escape the sampled comparison: refresh_bf16_experts() takes it.
  layer.experts.w2(0, 0) += 1.0f;
  layer.refresh_bf16_experts();
  MoELayer<float> edited(c);
  edited.load_from(layer);
  MoELayer<float>::Context edited_ctx;
  CHECK((edited.forward(x, edited_ctx, Mode::eval).y.array() ==
         layer.forward(x, ctx, Mode::eval).y.array())
            .all());
}

TEST_CASE("a layer with bf16 experts: same bits at 1 and 2 threads", "[layer][bf16][threads]") {
  const MoELayerConfig c = bf16_layer_config(true);
  const RowMatrix<float> x = test::random_matrix<float>(300, 96, 11);
  const auto run = [&](int threads) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    MoELayer<float> layer = bf16_test_layer(c);
    MoELayer<float>::Context ctx;
    const RowMatrix<float> y = layer.forward(x, ctx, Mode::train, 1).y;
    const MoEGradients<float> g = layer.backward(x, ctx, x);
    return std::make_pair(y, g);
  };
  const auto one = run(1), two = run(2);
  CHECK((one.first.array() == two.first.array()).all());
  CHECK((one.second.x.array() == two.second.x.array()).all());
  CHECK((one.second.experts.w1.array() == two.second.experts.w1.array()).all());
  CHECK((one.second.router.weight.array() == two.second.router.weight.array()).all());
}

TEST_CASE("bf16 experts are refused where they do not run", "[layer][bf16][errors]") {
  using Catch::Matchers::Contains;
  MoELayer<double> layer(bf16_layer_config(false));
  MoELayer<double>::Context ctx;
  const RowMatrix<double> x = test::random_matrix(8, 96, 12);
  CHECK_THROWS_WITH(layer.forward(x, ctx, Mode::train),
                    Contains("MoELayerConfig::expert_precision") && Contains("MoELayer<double>"));
  MoELayerConfig native = bf16_layer_config(false);
  native.expert_precision = ExpertPrecision::native;
  MoELayer<float> plain(native);
  CHECK_THROWS_WITH(plain.refresh_bf16_experts(), Contains("expert_precision = bf16"));
}

TEST_CASE("the layer's health report holds the bf16 what-if of its router when asked",
          "[layer][bf16][health]") {
  MoELayerConfig c = bf16_layer_config(false);
  c.expert_precision = ExpertPrecision::native;
  // Logits close together, so that rounding the router's operands to bf16 flips selections.
  c.router = presets::mixtral(presets::Hidden{96}, presets::Experts{16});
  MoELayer<float> layer(c);
  layer.init_weights(3);
  layer.router.weight = test::random_matrix<float>(16, 96, 4, 0.05);
  const RowMatrix<float> x = test::random_matrix<float>(400, 96, 13);
  MoELayer<float>::Context ctx;
  const HealthReport off = layer.forward(x, ctx, Mode::train, 1).health;
  CHECK(!off.what_if);
  CHECK(std::isnan(health_metrics(off)[health_metric_index("bf16_whatif_flipped_tokens")]));
  layer.config.health.bf16_what_if = true;
  const HealthReport on = layer.forward(x, ctx, Mode::train, 1).health;
  REQUIRE(on.what_if);
  const Bf16WhatIf want = bf16_what_if<float>(layer.router, x, Bf16Operands::both);
  CHECK(on.what_if->flipped_tokens == want.flipped_tokens);
  CHECK(on.what_if->flipped_choices == want.flipped_choices);
  CHECK(on.what_if->lost == want.lost);
  CHECK(on.what_if->gained == want.gained);
  CHECK(want.flipped_tokens > 0);  // the case exercises flips
  const HealthMetrics m = health_metrics(on);
  CHECK(m[health_metric_index("bf16_whatif_flipped_tokens")] ==
        static_cast<double>(want.flipped_tokens));
  CHECK(m[health_metric_index("bf16_whatif_flipped_choices")] ==
        static_cast<double>(want.flipped_choices));
}

TEST_CASE("a layer over bf16 token rows: the router selects what it selects on their float values",
          "[layer][bf16]") {
  for (const ExpertPrecision precision : {ExpertPrecision::native, ExpertPrecision::bf16}) {
    MoELayerConfig c = bf16_layer_config(true);
    c.expert_precision = precision;
    MoELayer<float> layer = bf16_test_layer(c);
    const RowMatrix<bf16> x16 = test::rounded(test::random_matrix<float>(120, 96, 14));
    RowMatrix<float> widened(120, 96);
    for (Index i = 0; i < widened.size(); ++i) widened.data()[i] = to_float(x16.data()[i]);
    MoELayer<float>::Context ctx, float_ctx;
    const MoEOutput<float> out = layer.forward(x16, ctx, Mode::train, 1);
    const MoEOutput<float> want = layer.forward(widened, float_ctx, Mode::train, 1);
    CHECK(ctx.router.routing.expert_ids == float_ctx.router.routing.expert_ids);
    CHECK((ctx.router.routing.gates.array() == float_ctx.router.routing.gates.array()).all());
    CHECK((out.y.array() == want.y.array()).all());
    const RowMatrix<float> grad_y = test::random_matrix<float>(120, 96, 15);
    const MoEGradients<float> grads = layer.backward(x16, ctx, grad_y);
    const MoEGradients<float> float_grads = layer.backward(widened, float_ctx, grad_y);
    CHECK((grads.x.array() == float_grads.x.array()).all());
    CHECK((grads.router.weight.array() == float_grads.router.weight.array()).all());
  }
}

TEST_CASE("a capacity layer with bf16 experts: near the float layer, the same drops, any threads",
          "[layer][bf16][capacity]") {
  MoELayerConfig c = bf16_layer_config(true);
  c.dispatch = DispatchKind::capacity;
  c.capacity.train_factor = 1.0;  // some tokens dropped
  MoELayerConfig native_config = c;
  native_config.expert_precision = ExpertPrecision::native;
  const RowMatrix<float> x = test::random_matrix<float>(160, 96, 16);
  const RowMatrix<float> grad_y = test::random_matrix<float>(160, 96, 17);
  const auto run = [&](const MoELayerConfig& config, int threads) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    MoELayer<float> layer = bf16_test_layer(config);
    MoELayer<float>::Context ctx;
    MoEOutput<float> out = layer.forward(x, ctx, Mode::train, 1);
    MoEGradients<float> grads = layer.backward(x, ctx, grad_y);
    return std::make_pair(out, grads);
  };
  const auto one = run(c, 1), two = run(c, 2), native = run(native_config, 2);
  REQUIRE(one.first.health.capacity);
  CHECK(one.first.health.capacity->dropped.sum() > 0);
  CHECK(one.first.health.capacity->dropped == native.first.health.capacity->dropped);
  CHECK((one.first.y.array() == two.first.y.array()).all());
  CHECK((one.second.experts.w1.array() == two.second.experts.w1.array()).all());
  CHECK((one.second.x.array() == two.second.x.array()).all());
  const double bound = 8 * std::ldexp(1.0, -8);
  CHECK(relative_error(one.first.y, native.first.y) < bound);
  CHECK(relative_error(one.first.y, native.first.y) > 0);
  CHECK(relative_error(one.second.x, native.second.x) < bound);
  CHECK(relative_error(one.second.experts.w1, native.second.experts.w1) < bound);
  CHECK(relative_error(one.second.experts.w2, native.second.experts.w2) < bound);
  CHECK(relative_error(one.second.router.weight, native.second.router.weight) < bound);
}
