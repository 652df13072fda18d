// The layer with its routed experts read from panels (MoELayerConfig::expert_layout = panels): the
// bits of the row-major layer, forward and backward, dropless and capacity, float and double; the
// copy follows an optimizer step by itself; the configs it refuses.
#include "moe/layer/moe_layer.hpp"
#include "moe/routing/presets.hpp"
#include "support/catch.hpp"
#include "support/random_matrix.hpp"

using namespace moe;

namespace {

template <class S>
MoELayer<S> panel_test_layer(const MoELayerConfig& c) {
  MoELayer<S> layer(c);
  layer.init_weights(13);
  layer.router.weight = test::random_matrix<S>(c.router.num_experts, c.router.hidden, 14);
  if (c.expert_bias)
    layer.experts.b2 =
        test::random_matrix<S>(layer.experts.b2.rows(), layer.experts.b2.cols(), 15, 0.3);
  return layer;
}

/// A step of the panel layer and of the row-major layer with the same weights: the same bits.
template <class S>
void require_layouts_agree(const MoELayerConfig& c, Index tokens) {
  MoELayerConfig row_major = c;
  row_major.expert_layout = ExpertLayout::row_major;
  MoELayer<S> layer = panel_test_layer<S>(c);
  MoELayer<S> plain(row_major);
  plain.load_from(layer);
  const RowMatrix<S> x = test::random_matrix<S>(tokens, c.router.hidden, 16);
  const RowMatrix<S> grad_y = test::random_matrix<S>(tokens, c.router.hidden, 17);
  typename MoELayer<S>::Context ctx, plain_ctx;
  for (Mode mode : {Mode::eval, Mode::train}) {
    const MoEOutput<S> out = layer.forward(x, ctx, mode, 1);
    const MoEOutput<S> want = plain.forward(x, plain_ctx, mode, 1);
    REQUIRE((out.y.array() == want.y.array()).all());
  }
  const MoEGradients<S> grads = layer.backward(x, ctx, grad_y);
  const MoEGradients<S> want = plain.backward(x, plain_ctx, grad_y);
  REQUIRE((grads.x.array() == want.x.array()).all());
  REQUIRE((grads.router.weight.array() == want.router.weight.array()).all());
  REQUIRE((grads.experts.w1.array() == want.experts.w1.array()).all());
  REQUIRE((grads.experts.w2.array() == want.experts.w2.array()).all());
  REQUIRE(layer.expert_panels().config().num_experts == c.num_ffn_experts());
}

MoELayerConfig panel_layer_config() {
  MoELayerConfig c;
  c.router = presets::mixtral(presets::Hidden{80}, presets::Experts{6});
  c.ffn_hidden = 100;
  c.expert_bias = true;
  c.aux_loss = aux_presets::megatron(2);
  c.expert_layout = ExpertLayout::panels;
  return c;
}

}  // namespace

TEST_CASE("a layer reading its experts from panels gives the row-major layer's bits",
          "[layer][panels]") {
  MoELayerConfig c = panel_layer_config();
  SECTION("dropless, a few rows and tens of rows per expert") {
    for (Index tokens : {3, 150}) {
      require_layouts_agree<float>(c, tokens);
      require_layouts_agree<double>(c, tokens);
    }
  }
  SECTION("capacity") {
    c.dispatch = DispatchKind::capacity;
    c.capacity.train_factor = c.capacity.eval_factor = 1.0;  // some tokens dropped
    require_layouts_agree<float>(c, 120);
  }
  SECTION("an ungated activation") {
    c.activation = Activation::gelu;
    require_layouts_agree<float>(c, 40);
  }
}

TEST_CASE("a layer's panels follow its weights after an optimizer step", "[layer][panels]") {
  const MoELayerConfig c = panel_layer_config();
  MoELayerConfig row_major = c;
  row_major.expert_layout = ExpertLayout::row_major;
  MoELayer<float> layer = panel_test_layer<float>(c);
  const RowMatrix<float> x = test::random_matrix<float>(30, 80, 18);
  MoELayer<float>::Context ctx, plain_ctx;
  layer.forward(x, ctx, Mode::train, 1);
  const MoEGradients<float> grads = layer.backward(x, ctx, x);
  layer.experts.w1 -= 0.5f * grads.experts.w1;  // an SGD step on the weights
  layer.experts.w2 -= 0.5f * grads.experts.w2;
  MoELayer<float> plain(row_major);
  plain.load_from(layer);
  const MoEOutput<float> out = layer.forward(x, ctx, Mode::eval, 1);
  const MoEOutput<float> want = plain.forward(x, plain_ctx, Mode::eval, 1);
  REQUIRE((out.y.array() == want.y.array()).all());
  // An edit the sampled values miss is picked up by refresh_expert_panels().
  layer.experts.w2(0, 0) += 1.0f;
  plain.experts.w2(0, 0) += 1.0f;
  layer.refresh_expert_panels();
  const MoEOutput<float> edited = layer.forward(x, ctx, Mode::eval, 1);
  const MoEOutput<float> edited_want = plain.forward(x, plain_ctx, Mode::eval, 1);
  REQUIRE((edited.y.array() == edited_want.y.array()).all());
}

TEST_CASE("expert panels are refused where they do not apply", "[layer][panels][errors]") {
  MoELayerConfig c = panel_layer_config();
  c.expert_precision = ExpertPrecision::bf16;
  REQUIRE_THROWS_WITH(MoELayer<float>(c),
                      Catch::Contains("MoELayerConfig::expert_layout") && Catch::Contains("bf16"));
  MoELayerConfig row_major = panel_layer_config();
  row_major.expert_layout = ExpertLayout::row_major;
  MoELayer<float> layer(row_major);
  REQUIRE_THROWS_WITH(layer.refresh_expert_panels(),
                      Catch::Contains("MoELayer::refresh_expert_panels") &&
                          Catch::Contains("expert_layout = row_major"));
}
