// The dropless FFN over a panel copy of the expert weights (PackedExpertWeights): the bits of the
// forward over the row-major weights at every rows-per-expert regime (streamed, register tiles in
// place, packed), gated and not, with biases, in float and double; near the double loop reference;
// the backward after it; refresh, copies, threads and bad input.
#include <vector>

#include "moe/dispatch/dropless_plan.hpp"
#include "moe/experts/dropless_ffn.hpp"
#include "moe/experts/packed_expert_weights.hpp"
#include "support/catch.hpp"
#include "support/dropless_reference.hpp"
#include "support/finite_difference.hpp"
#include "support/random_matrix.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace moe;

namespace {

/// Experts whose f (150) and d (100) end in a partial panel and a column sliver.
ExpertFFNConfig panel_config(Activation activation, bool bias) {
  ExpertFFNConfig c;
  c.num_experts = 6;
  c.hidden = 100;
  c.ffn_hidden = 150;
  c.activation = activation;
  c.bias = bias;
  c.swiglu_limit = 2.0;
  return c;
}

template <class S>
ExpertWeights<S> panel_weights(const ExpertFFNConfig& c, std::uint64_t seed) {
  ExpertWeights<S> w(c);
  w.init_weights(seed, 0.5);
  if (c.bias) {
    w.b1 = test::random_matrix<S>(w.b1.rows(), w.b1.cols(), seed + 1, 0.1);
    w.b3 = test::random_matrix<S>(w.b3.rows(), w.b3.cols(), seed + 2, 0.1);
    w.b2 = test::random_matrix<S>(w.b2.rows(), w.b2.cols(), seed + 3, 0.1);
  }
  return w;
}

/// The forward of `tokens` tokens over the weights and over their panels, in the same context
/// mode: the same bits; then the backward after the panel forward, against the one after the
/// forward over the weights.
template <class S>
void require_panel_bits(const ExpertWeights<S>& w, Index tokens, Index k, bool save,
                        std::uint64_t seed) {
  const ExpertFFNConfig& c = w.config;
  const PackedExpertWeights<S> panels(w);
  const RowMatrix<S> x = test::random_matrix<S>(tokens, c.hidden, seed);
  const RowMatrix<S> gates = test::random_matrix<S>(tokens, k, seed + 1);
  const RowMatrix<S> grad_y = test::random_matrix<S>(tokens, c.hidden, seed + 2);
  const DroplessPlan plan = make_dropless_plan(
      test::random_expert_ids(tokens, k, c.num_experts, seed + 3), c.num_experts, 16);
  INFO("tokens=" << tokens << " k=" << k << " save=" << save
                 << " activation=" << to_string(c.activation) << " bias=" << c.bias);
  DroplessFFNContext<S> plain_ctx, panel_ctx;
  plain_ctx.save_for_backward = panel_ctx.save_for_backward = save;
  RowMatrix<S> plain(tokens, c.hidden), ours(tokens, c.hidden);
  dropless_ffn_forward<S>(w, x, gates, plan, plain_ctx, plain);
  dropless_ffn_forward<S>(w, panels, x, gates, plan, panel_ctx, ours);
  REQUIRE(ours == plain);
  ExpertGradients<S> plain_grads, panel_grads;
  RowMatrix<S> plain_gx(tokens, c.hidden), panel_gx(tokens, c.hidden);
  RowMatrix<S> plain_gg(tokens, k), panel_gg(tokens, k);
  dropless_ffn_backward<S>(w, x, grad_y, plan, plain_ctx, plain_grads, plain_gx, plain_gg);
  dropless_ffn_backward<S>(w, x, grad_y, plan, panel_ctx, panel_grads, panel_gx, panel_gg);
  REQUIRE(panel_gx == plain_gx);
  REQUIRE(panel_gg == plain_gg);
  REQUIRE(panel_grads.w1 == plain_grads.w1);
  REQUIRE(panel_grads.w2 == plain_grads.w2);
  REQUIRE(panel_grads.w3 == plain_grads.w3);
  REQUIRE(panel_grads.b1 == plain_grads.b1);
}

}  // namespace

TEST_CASE("the forward over panels gives the bits of the forward over the weights",
          "[dropless][ffn][panels]") {
  // 1 token (1 row per active expert), 12 (about 4), 150 (about 50: register tiles in place) and
  // 600 (about 200: packed) over 6 experts with k = 2.
  for (Activation activation : {Activation::swiglu, Activation::gelu, Activation::swiglu_oai})
    for (bool bias : {false, true}) {
      const ExpertWeights<float> w = panel_weights<float>(panel_config(activation, bias), 10);
      for (Index tokens : {1, 12, 150, 600})
        for (bool save : {false, true}) require_panel_bits<float>(w, tokens, 2, save, 20 + tokens);
    }
  const ExpertWeights<double> wd =
      panel_weights<double>(panel_config(Activation::swiglu, true), 11);
  for (Index tokens : {3, 150, 600}) require_panel_bits<double>(wd, tokens, 2, false, 30 + tokens);
}

TEST_CASE("the forward over panels follows the double loop reference", "[dropless][ffn][panels]") {
  const ExpertWeights<double> w = panel_weights<double>(panel_config(Activation::swiglu, true), 40);
  const PackedExpertWeights<double> panels(w);
  for (Index tokens : {2, 300}) {
    const RowMatrix<double> x = test::random_matrix<double>(tokens, 100, 41);
    const RowMatrix<double> gates = test::random_matrix<double>(tokens, 2, 42);
    const ExpertIdMatrix ids = test::random_expert_ids(tokens, 2, 6, 43);
    const DroplessPlan plan = make_dropless_plan(ids, 6, 128);
    DroplessFFNContext<double> ctx;
    RowMatrix<double> y(tokens, 100);
    dropless_ffn_forward<double>(w, panels, x, gates, plan, ctx, y);
    REQUIRE(test::relative_error(y, test::reference_dropless_forward(w, x, ids, gates)) <= 1e-13);
  }
}

TEST_CASE("panels follow the weights through refresh and copies", "[dropless][ffn][panels]") {
  ExpertWeights<float> w = panel_weights<float>(panel_config(Activation::swiglu, false), 50);
  PackedExpertWeights<float> panels(w);
  const PackedExpertWeights<float> before = panels;  // a copy owns its panels
  const RowMatrix<float> x = test::random_matrix<float>(20, 100, 51);
  const RowMatrix<float> gates = test::random_matrix<float>(20, 2, 52);
  const DroplessPlan plan = make_dropless_plan(test::random_expert_ids(20, 2, 6, 53), 6, 128);
  DroplessFFNContext<float> ctx;
  RowMatrix<float> old_y(20, 100), y(20, 100), expected(20, 100);
  dropless_ffn_forward<float>(w, before, x, gates, plan, ctx, old_y);
  w.w1 *= 0.5f;  // an optimizer step
  w.w2.array() += 0.25f;
  dropless_ffn_forward<float>(w, x, gates, plan, ctx, expected);
  panels.refresh(w);
  dropless_ffn_forward<float>(w, panels, x, gates, plan, ctx, y);
  REQUIRE(y == expected);
  // The copy made before the step still holds the old weights' panels.
  RowMatrix<float> stale(20, 100);
  dropless_ffn_forward<float>(w, before, x, gates, plan, ctx, stale);
  REQUIRE(stale == old_y);
  REQUIRE(stale != y);
  REQUIRE(panels.bytes_per_expert() == (2 * 100 * 192 + 150 * 144) * sizeof(float));
}

TEST_CASE("the forward over panels refuses panels of other weights", "[dropless][ffn][panels]") {
  const ExpertWeights<float> w = panel_weights<float>(panel_config(Activation::swiglu, false), 60);
  ExpertFFNConfig wider = w.config;
  wider.ffn_hidden = 160;
  const PackedExpertWeights<float> other(panel_weights<float>(wider, 61)), empty;
  const RowMatrix<float> x = RowMatrix<float>::Ones(4, 100), gates = RowMatrix<float>::Ones(4, 2);
  const DroplessPlan plan = make_dropless_plan(test::random_expert_ids(4, 2, 6, 62), 6, 128);
  DroplessFFNContext<float> ctx;
  RowMatrix<float> y(4, 100);
  REQUIRE_THROWS_WITH(dropless_ffn_forward<float>(w, other, x, gates, plan, ctx, y),
                      Catch::Contains("panels") && Catch::Contains("another shape"));
  REQUIRE_THROWS_WITH(dropless_ffn_forward<float>(w, empty, x, gates, plan, ctx, y),
                      Catch::Contains("panels") && Catch::Contains("empty PackedExpertWeights"));
  ExpertWeights<float> unbound;
  REQUIRE_THROWS_WITH(PackedExpertWeights<float>{unbound},
                      Catch::Contains("ExpertFFNConfig::hidden"));
}

#if defined(_OPENMP)
TEST_CASE("the forward over panels gives the same bits at 1 and 2 threads",
          "[dropless][ffn][panels][threads]") {
  const ExpertWeights<float> w = panel_weights<float>(panel_config(Activation::swiglu, true), 70);
  const PackedExpertWeights<float> panels(w);
  const int saved = omp_get_max_threads();
  for (Index tokens : {1, 16, 700}) {
    const RowMatrix<float> x = test::random_matrix<float>(tokens, 100, 71);
    const RowMatrix<float> gates = test::random_matrix<float>(tokens, 2, 72);
    const DroplessPlan plan = make_dropless_plan(test::random_expert_ids(tokens, 2, 6, 73), 6, 128);
    RowMatrix<float> one(tokens, 100), two(tokens, 100);
    DroplessFFNContext<float> ctx;
    omp_set_num_threads(1);
    dropless_ffn_forward<float>(w, panels, x, gates, plan, ctx, one);
    omp_set_num_threads(2);
    dropless_ffn_forward<float>(w, panels, x, gates, plan, ctx, two);
    REQUIRE(one == two);
  }
  omp_set_num_threads(saved);
}
#endif
