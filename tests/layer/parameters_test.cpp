// Parameters mapped over the caller's buffers (no copy), copies of owning objects, the backward
// that reuses one MoEGradients across steps, and the parameter/gradient pairs of an optimizer loop.
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <moe/layer/moe_layer.hpp>

#include "support/bad_input.hpp"
#include "support/catch.hpp"
#include "support/random_matrix.hpp"

namespace {

using moe::Index;
using moe::test::random_matrix;
using Matrix = moe::RowMatrix<double>;

moe::MoELayerConfig parameters_config(moe::DispatchKind dispatch) {
  moe::MoELayerConfig c;
  c.router.num_experts = 4;
  c.router.hidden = 6;
  c.router.top_k = 2;
  c.router.renormalize = true;
  c.router.linear_bias = true;
  c.ffn_hidden = 3;
  c.activation = moe::Activation::swiglu;
  c.expert_bias = true;
  c.dispatch = dispatch;
  c.block_size = 4;
  c.capacity.train_factor = 0.75;  // some choices drop
  c.aux_loss = moe::aux_presets::megatron(2, 0.1);
  c.z_loss_coefficient = 0.01;
  c.shared = {5, true};
  return c;
}

/// An owned layer with every parameter random (biases included).
moe::MoELayer<double> random_parameters_layer(const moe::MoELayerConfig& c) {
  moe::MoELayer<double> layer(c);
  layer.init_weights(3);
  layer.router.weight = random_matrix(c.router.num_experts, c.router.hidden, 4);
  layer.router.bias = random_matrix(c.router.num_experts, 1, 5, 0.3);
  layer.router.selection_bias = random_matrix(c.router.num_experts, 1, 6, 0.01);
  for (auto* w : {&layer.experts, &layer.shared}) {
    w->b1 = random_matrix(w->b1.rows(), w->b1.cols(), 7, 0.3);
    w->b3 = random_matrix(w->b3.rows(), w->b3.cols(), 8, 0.3);
    w->b2 = random_matrix(w->b2.rows(), w->b2.cols(), 9, 0.3);
  }
  layer.shared_gate_weight = random_matrix(c.router.hidden, 1, 10);
  return layer;
}

/// The caller's storage: one std::vector per parameter, holding a copy of `from`'s values.
struct CallerBuffers {
  std::vector<std::vector<double>> storage;
  moe::MoELayerBuffers<double> buffers;

  template <class Map>
  moe::ParameterBuffer<double> keep(const Map& values) {
    storage.emplace_back(values.data(), values.data() + values.size());
    return {storage.back().data(), static_cast<Index>(storage.back().size())};
  }
  void keep(const moe::ExpertWeights<double>& w, moe::ExpertBuffers<double>& b) {
    b = {keep(w.w1), keep(w.w3), keep(w.w2), keep(w.b1), keep(w.b3), keep(w.b2)};
  }
  explicit CallerBuffers(const moe::MoELayer<double>& from) {
    storage.reserve(32);  // the pointers handed out stay valid
    buffers.router = {keep(from.router.weight), keep(from.router.bias),
                      keep(from.router.noise_weight), keep(from.router.selection_bias),
                      keep(from.router.expert_scale)};
    keep(from.experts, buffers.experts);
    keep(from.shared, buffers.shared);
    buffers.shared_gate_weight = keep(from.shared_gate_weight);
  }
};

void require_same_gradients(const moe::MoEGradients<double>& a,
                            const moe::MoEGradients<double>& b) {
  CHECK(a.x == b.x);
  CHECK(a.router.weight == b.router.weight);
  CHECK(a.router.bias == b.router.bias);
  for (auto [u, v] : {std::pair{&a.experts, &b.experts}, std::pair{&a.shared, &b.shared}}) {
    CHECK(u->w1 == v->w1);
    CHECK(u->w3 == v->w3);
    CHECK(u->w2 == v->w2);
    CHECK(u->b1 == v->b1);
    CHECK(u->b3 == v->b3);
    CHECK(u->b2 == v->b2);
  }
  CHECK(a.shared_gate == b.shared_gate);
}

/// Forward in training mode then backward; returns y and the gradients.
std::pair<Matrix, moe::MoEGradients<double>> step(moe::MoELayer<double>& layer, const Matrix& x,
                                                  const Matrix& grad_y) {
  moe::MoELayerContext<double> ctx;
  const auto out = layer.forward(x, ctx, moe::Mode::train, 17);
  return {out.y, layer.backward(x, ctx, grad_y)};
}

}  // namespace

TEST_CASE("a layer mapped over caller buffers computes what the owned layer does",
          "[layer][parameters]") {
  for (auto dispatch : {moe::DispatchKind::dropless, moe::DispatchKind::capacity}) {
    INFO((dispatch == moe::DispatchKind::dropless ? "dropless" : "capacity"));
    const auto c = parameters_config(dispatch);
    auto owned = random_parameters_layer(c);
    CallerBuffers caller(owned);
    auto mapped = moe::MoELayer<double>::mapped(c, caller.buffers);
    CHECK(mapped.router.maps_caller_buffers());
    CHECK_FALSE(owned.router.maps_caller_buffers());

    // views, not copies
    const auto& b = caller.buffers;
    CHECK(mapped.router.weight.data() == b.router.weight.data);
    CHECK(mapped.router.bias.data() == b.router.bias.data);
    CHECK(mapped.router.selection_bias.data() == b.router.selection_bias.data);
    CHECK(mapped.experts.w1.data() == b.experts.w1.data);
    CHECK(mapped.experts.w3.data() == b.experts.w3.data);
    CHECK(mapped.experts.w2.data() == b.experts.w2.data);
    CHECK(mapped.experts.b1.data() == b.experts.b1.data);
    CHECK(mapped.experts.b3.data() == b.experts.b3.data);
    CHECK(mapped.experts.b2.data() == b.experts.b2.data);
    CHECK(mapped.shared.w1.data() == b.shared.w1.data);
    CHECK(mapped.shared_gate_weight.data() == b.shared_gate_weight.data);
    CHECK(mapped.experts.w1.rows() == 4 * 6);
    CHECK(mapped.experts.w1.cols() == 3);

    const Matrix x = random_matrix(12, 6, 11), grad_y = random_matrix(12, 6, 12);
    const auto [y_owned, g_owned] = step(owned, x, grad_y);
    const auto [y_mapped, g_mapped] = step(mapped, x, grad_y);
    CHECK(y_mapped == y_owned);  // bit for bit
    require_same_gradients(g_mapped, g_owned);

    // a write into the caller's buffer is what the layer computes with next
    double* w2 = caller.buffers.experts.w2.data;
    for (Index i = 0; i < caller.buffers.experts.w2.size; ++i) w2[i] *= -2.0;
    caller.buffers.shared_gate_weight.data[0] += 1.0;
    const Matrix y_changed = step(mapped, x, grad_y).first;
    CHECK(y_changed != y_mapped);
    owned.experts.w2 *= -2.0;
    owned.shared_gate_weight[0] += 1.0;
    CHECK(step(owned, x, grad_y).first == y_changed);

    // an optimizer step through the members lands in the caller's buffer
    mapped.router.weight -= 0.5 * g_mapped.router.weight;
    owned.router.weight -= 0.5 * g_owned.router.weight;
    CHECK(Eigen::Map<const Matrix>(caller.buffers.router.weight.data, 4, 6) == owned.router.weight);
  }
}

TEST_CASE("mapped parameters reject null and wrong-size buffers", "[layer][parameters][errors]") {
  const auto c = parameters_config(moe::DispatchKind::dropless);
  const auto owned = random_parameters_layer(c);
  auto throws_naming = [&](auto edit, const char* name) {
    CallerBuffers caller(owned);
    edit(caller.buffers);
    CHECK_THROWS_AS(moe::MoELayer<double>::mapped(c, caller.buffers), moe::Error);
    CHECK_THROWS_WITH(moe::MoELayer<double>::mapped(c, caller.buffers), Catch::Contains(name));
  };
  using B = moe::MoELayerBuffers<double>;
  throws_naming([](B& b) { b.router.weight.data = nullptr; }, "buffers.router.weight");
  throws_naming([](B& b) { b.router.weight.size -= 1; }, "buffers.router.weight");
  throws_naming([](B& b) { b.router.bias = {}; }, "buffers.router.bias");  // linear_bias needs it
  throws_naming([](B& b) { b.router.selection_bias.size = 3; }, "buffers.router.selection_bias");
  throws_naming([](B& b) { b.router.noise_weight.size = 24; }, "buffers.router.noise_weight");
  throws_naming([](B& b) { b.experts.w1.data = nullptr; }, "buffers.experts.w1");
  throws_naming([](B& b) { b.experts.w3 = {}; }, "buffers.experts.w3");
  throws_naming([](B& b) { b.experts.w2.size += 1; }, "buffers.experts.w2");
  throws_naming([](B& b) { b.experts.b1.data = nullptr; }, "buffers.experts.b1");
  throws_naming([](B& b) { b.experts.b3.size = 0; }, "buffers.experts.b3");
  throws_naming([](B& b) { b.experts.b2.size = 1; }, "buffers.experts.b2");
  throws_naming([](B& b) { b.shared.w1.size = 1; }, "buffers.shared.w1");
  throws_naming([](B& b) { b.shared_gate_weight.data = nullptr; }, "buffers.shared_gate_weight");
  throws_naming([](B& b) { b.shared_gate_weight.size = 5; }, "buffers.shared_gate_weight");

  // without linear_bias the router bias, and always the selection bias, may be left to the router
  auto plain = c;
  plain.router.linear_bias = false;
  plain.shared = {};
  std::vector<double> weight(24, 0.5);
  std::vector<double> w1(72), w3(72), w2(72), b1(12), b3(12), b2(24);
  moe::MoELayerBuffers<double> b;
  b.router.weight = {weight.data(), 24};
  b.experts = {{w1.data(), 72}, {w3.data(), 72}, {w2.data(), 72},
               {b1.data(), 12}, {b3.data(), 12}, {b2.data(), 24}};
  const auto layer = moe::MoELayer<double>::mapped(plain, b);
  CHECK(layer.router.bias.size() == 4);
  CHECK(layer.router.selection_bias.isZero());
  CHECK(layer.router.weight.data() == weight.data());
  b.shared.w1 = {w1.data(), 72};  // no shared expert configured
  CHECK_THROWS_WITH(moe::MoELayer<double>::mapped(plain, b), Catch::Contains("buffers.shared"));

  moe::ExpertFFNConfig ec = c.experts();
  moe::ExpertBuffers<double> eb{{w1.data(), 72}, {nullptr, 0}, {w2.data(), 72}, {}, {}, {}};
  ec.bias = false;
  CHECK_THROWS_WITH(moe::ExpertWeights<double>::mapped(ec, eb), Catch::Contains("buffers.w3"));
  auto rc = c.router;
  rc.noise = moe::Noise::noisy_topk;
  moe::RouterBuffers<double> rb;
  rb.weight = {weight.data(), 24};
  rb.bias = {b1.data(), 4};
  CHECK_THROWS_WITH(moe::Router<double>::mapped(rc, rb), Catch::Contains("buffers.noise_weight"));
  rb.noise_weight = {w1.data(), 24};
  const auto noisy = moe::Router<double>::mapped(rc, rb);
  CHECK(noisy.noise_weight.data() == w1.data());
}

TEST_CASE("copies own their parameters; moves keep the storage", "[layer][parameters]") {
  const auto c = parameters_config(moe::DispatchKind::dropless);
  auto original = random_parameters_layer(c);
  const Matrix x = random_matrix(10, 6, 13), grad_y = random_matrix(10, 6, 14);
  const Matrix y = step(original, x, grad_y).first;

  moe::MoELayer<double> copy = original;
  CHECK(copy.experts.w1 == original.experts.w1);
  CHECK(copy.experts.w1.data() != original.experts.w1.data());
  CHECK(copy.router.weight.data() != original.router.weight.data());
  CHECK(copy.shared_gate_weight.data() != original.shared_gate_weight.data());
  CHECK(step(copy, x, grad_y).first == y);
  copy.experts.w1.setZero();
  copy.router.weight.setZero();
  copy.shared_gate_weight.setZero();
  copy.shared.w2.setZero();
  CHECK(step(original, x, grad_y).first == y);  // the original is untouched
  CHECK(step(copy, x, grad_y).first != y);

  moe::MoELayer<double> assigned(parameters_config(moe::DispatchKind::capacity));
  assigned = original;  // an owning layer takes a copy of any shape
  CHECK(assigned.config.dispatch == moe::DispatchKind::dropless);
  CHECK(assigned.experts.w1.data() != original.experts.w1.data());
  CHECK(step(assigned, x, grad_y).first == y);

  const double* w1 = original.experts.w1.data();
  const double* gate = original.shared_gate_weight.data();
  moe::MoELayer<double> moved = std::move(original);
  CHECK(moved.experts.w1.data() == w1);
  CHECK(moved.shared_gate_weight.data() == gate);
  CHECK(step(moved, x, grad_y).first == y);

  // a copy of a mapped layer owns its values; assigning to a mapped layer writes into the buffers
  CallerBuffers caller(moved);
  auto mapped = moe::MoELayer<double>::mapped(c, caller.buffers);
  moe::MoELayer<double> detached = mapped;
  CHECK_FALSE(detached.experts.maps_caller_buffers());
  CHECK(detached.experts.w1.data() != caller.buffers.experts.w1.data);
  detached.experts.w1.setZero();
  CHECK(mapped.experts.w1 == moved.experts.w1);
  mapped = detached;
  CHECK(mapped.experts.w1.data() == caller.buffers.experts.w1.data);
  CHECK(caller.storage[5][0] == 0.0);  // storage[5] is experts.w1, after the router's five
  CHECK(mapped.experts.w1.isZero());
  moe::MoELayer<double> wrong(parameters_config(moe::DispatchKind::dropless));
  wrong = moe::MoELayer<double>([&] {
    auto other = c;
    other.ffn_hidden = 4;
    return other;
  }());
  CHECK(wrong.experts.w1.cols() == 4);
  CHECK_THROWS_AS(mapped = wrong, moe::Error);
  CHECK(mapped.router.weight == detached.router.weight);  // nothing written
  CHECK_FALSE(mapped.router.weight.isZero());

  moe::Router<double> router(c.router);
  router.weight.setOnes();
  moe::Router<double> router_copy(router);
  router_copy.weight(0, 0) = 5.0;
  CHECK(router.weight(0, 0) == 1.0);
  moe::ExpertWeights<double> experts(c.experts());
  moe::ExpertWeights<double> experts_copy = experts;
  experts_copy.w2.setOnes();
  CHECK(experts.w2.isZero());
  experts = experts_copy;
  CHECK(experts.w2.isOnes());
  CHECK(experts.w2.data() != experts_copy.w2.data());
}

TEST_CASE("backward into a kept MoEGradients matches a fresh one when the experts change",
          "[layer][backward][parameters]") {
  // Routing forced through x: router weight [I_E | 0] and x's first E columns favour the wanted
  // experts, so step 1 uses experts {0, 1} and step 2 experts {2, 3}: stale step-1 gradients of
  // experts 0 and 1 would show in step 2 if they were not zeroed.
  for (auto dispatch : {moe::DispatchKind::dropless, moe::DispatchKind::capacity}) {
    INFO((dispatch == moe::DispatchKind::dropless ? "dropless" : "capacity"));
    auto c = parameters_config(dispatch);
    c.capacity.train_factor = 2.0;
    auto layer = random_parameters_layer(c);
    layer.router.weight.setZero();
    layer.router.bias.setZero();
    layer.router.selection_bias.setZero();
    for (Index e = 0; e < 4; ++e) layer.router.weight(e, e) = 1.0;
    auto batch = [](Index tokens, Index first_expert, std::uint64_t seed) {
      Matrix x = random_matrix(tokens, 6, seed, 0.1);
      x.leftCols(4).setConstant(-3.0);
      x.col(first_expert).setConstant(3.0);
      x.col(first_expert + 1).setConstant(2.0);
      return x;
    };
    const Matrix x1 = batch(9, 0, 21), x2 = batch(7, 2, 22);
    const Matrix gy1 = random_matrix(9, 6, 23), gy2 = random_matrix(7, 6, 24);

    moe::MoEGradients<double> kept;
    moe::MoELayerContext<double> ctx;
    layer.forward(x1, ctx, moe::Mode::train);
    layer.backward(x1, ctx, gy1, kept);
    CHECK_FALSE(kept.experts.w1.topRows(2 * 6).isZero());  // experts 0 and 1 had rows
    const double* w1 = kept.experts.w1.data();
    const double* router_weight = kept.router.weight.data();

    layer.forward(x2, ctx, moe::Mode::train);
    layer.backward(x2, ctx, gy2, kept);
    CHECK(kept.experts.w1.data() == w1);  // reused, not reallocated
    CHECK(kept.router.weight.data() == router_weight);
    CHECK(kept.experts.w1.topRows(2 * 6).isZero(0));
    CHECK(kept.experts.w3.topRows(2 * 6).isZero(0));
    CHECK(kept.experts.w2.topRows(2 * 3).isZero(0));
    CHECK(kept.experts.b1.topRows(2).isZero(0));
    CHECK(kept.experts.b2.topRows(2).isZero(0));
    CHECK_FALSE(kept.experts.w1.bottomRows(2 * 6).isZero());

    moe::MoELayerContext<double> fresh_ctx;
    layer.forward(x2, fresh_ctx, moe::Mode::train);
    require_same_gradients(kept, layer.backward(x2, fresh_ctx, gy2));
  }
}

TEST_CASE("parameters(grads) pairs every trained parameter with its gradient, by name",
          "[layer][parameters]") {
  const auto c = parameters_config(moe::DispatchKind::dropless);
  auto layer = random_parameters_layer(c);
  moe::MoEGradients<double> grads;
  // Before a backward the gradients have no shape: the first pair says so.
  moe::test::require_rejects([&] { layer.parameters(grads); }, "grads.router.weight",
                             "24 elements (the gradient of a backward of this layer)", "0");

  const Matrix x = random_matrix(7, 6, 31), grad_y = random_matrix(7, 6, 32);
  moe::MoELayerContext<double> ctx;
  layer.forward(x, ctx, moe::Mode::train);
  layer.backward(x, ctx, grad_y, grads);

  // Hand-listed: with linear_bias, expert biases and a gated shared expert, everything but the
  // balancer's selection_bias (and the noise weights this router does not have) is trained.
  const std::vector<std::pair<std::string, std::pair<double*, const double*>>> expected = {
      {"router.weight", {layer.router.weight.data(), grads.router.weight.data()}},
      {"router.bias", {layer.router.bias.data(), grads.router.bias.data()}},
      {"experts.w1", {layer.experts.w1.data(), grads.experts.w1.data()}},
      {"experts.w3", {layer.experts.w3.data(), grads.experts.w3.data()}},
      {"experts.w2", {layer.experts.w2.data(), grads.experts.w2.data()}},
      {"experts.b1", {layer.experts.b1.data(), grads.experts.b1.data()}},
      {"experts.b3", {layer.experts.b3.data(), grads.experts.b3.data()}},
      {"experts.b2", {layer.experts.b2.data(), grads.experts.b2.data()}},
      {"shared.w1", {layer.shared.w1.data(), grads.shared.w1.data()}},
      {"shared.w3", {layer.shared.w3.data(), grads.shared.w3.data()}},
      {"shared.w2", {layer.shared.w2.data(), grads.shared.w2.data()}},
      {"shared.b1", {layer.shared.b1.data(), grads.shared.b1.data()}},
      {"shared.b3", {layer.shared.b3.data(), grads.shared.b3.data()}},
      {"shared.b2", {layer.shared.b2.data(), grads.shared.b2.data()}},
      {"shared_gate_weight", {layer.shared_gate_weight.data(), grads.shared_gate.data()}},
  };
  auto pairs = layer.parameters(grads);
  REQUIRE(pairs.size() == expected.size());
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    INFO(expected[i].first);
    CHECK(pairs[i].name == expected[i].first);
    CHECK(pairs[i].value.data() == expected[i].second.first);  // views, not copies
    CHECK(pairs[i].gradient.data() == expected[i].second.second);
  }

  // An SGD step through the pairs is the step written out member by member.
  auto by_hand = layer;
  const double lr = 0.125;
  for (auto& p : pairs) p.value -= lr * p.gradient;
  by_hand.router.weight -= lr * grads.router.weight;
  by_hand.router.bias -= lr * grads.router.bias;
  for (auto [w, g] :
       {std::pair{&by_hand.experts, &grads.experts}, {&by_hand.shared, &grads.shared}}) {
    w->w1 -= lr * g->w1;
    w->w3 -= lr * g->w3;
    w->w2 -= lr * g->w2;
    w->b1 -= lr * g->b1;
    w->b3 -= lr * g->b3;
    w->b2 -= lr * g->b2;
  }
  by_hand.shared_gate_weight -= lr * grads.shared_gate;
  CHECK(layer.router.weight == by_hand.router.weight);
  CHECK(layer.router.bias == by_hand.router.bias);
  CHECK(layer.router.selection_bias == by_hand.router.selection_bias);
  CHECK(layer.experts.w1 == by_hand.experts.w1);
  CHECK(layer.experts.b2 == by_hand.experts.b2);
  CHECK(layer.shared.w3 == by_hand.shared.w3);
  CHECK(layer.shared_gate_weight == by_hand.shared_gate_weight);

  // Noisy top-k trains its noise weights, expert_scale its scale; without linear_bias the
  // router's bias is not listed.
  auto noisy = c;
  noisy.router.noise = moe::Noise::noisy_topk;
  noisy.router.linear_bias = false;
  noisy.router.expert_scale = true;  // Gemma 4's per-expert gate scale is trained too
  noisy.shared = {};
  noisy.expert_bias = false;
  moe::MoELayer<double> noisy_layer(noisy);
  noisy_layer.init_weights(5);
  moe::MoELayerContext<double> noisy_ctx;
  moe::MoEGradients<double> noisy_grads;
  noisy_layer.forward(x, noisy_ctx, moe::Mode::train, 1);
  noisy_layer.backward(x, noisy_ctx, grad_y, noisy_grads);
  std::vector<std::string> names;
  for (const auto& p : noisy_layer.parameters(noisy_grads)) names.push_back(p.name);
  CHECK(names == std::vector<std::string>{"router.weight", "router.noise_weight",
                                          "router.expert_scale", "experts.w1", "experts.w3",
                                          "experts.w2"});
}
