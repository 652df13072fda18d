// Router forward against the plain-loop reference, over every option combination.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <moe/routing/presets.hpp>
#include <moe/routing/router.hpp>

#include "support/catch.hpp"
#include "support/random_matrix.hpp"
#include "support/routing_reference.hpp"

namespace {

using moe::test::random_matrix;

using moe::Index;
using moe::RouterConfig;

// Every router option, one combination per entry, each with a readable name.
std::vector<std::pair<std::string, RouterConfig>> option_grid(Index experts, Index hidden) {
  std::vector<std::pair<std::string, RouterConfig>> grid;
  for (int score = 0; score < 4; ++score)
    for (bool renorm : {false, true})
      for (int groups = 0; groups < 3; ++groups)
        for (int noise = 0; noise < 3; ++noise)
          for (bool extras : {false, true}) {
            RouterConfig c;
            c.num_experts = experts;
            c.hidden = hidden;
            c.top_k = 3;
            c.score = score == 2   ? moe::ScoreFunction::sigmoid
                      : score == 3 ? moe::ScoreFunction::sqrt_softplus
                                   : moe::ScoreFunction::softmax;
            c.softmax_order = score == 1 ? moe::SoftmaxOrder::topk_then_softmax
                                         : moe::SoftmaxOrder::softmax_then_topk;
            c.renormalize = renorm;
            c.renormalize_epsilon = renorm && extras ? 1e-3 : 0.0;
            // A floor above many of the sums, so that both sides of it are taken.
            c.renormalize_min = renorm && extras ? 0.6 : 0.0;
            c.scaling_factor = extras ? 2.5 : 1.0;
            c.linear_bias = extras;
            c.min_top_k = extras ? 1 : 0;  // adaptive k: some choices become unused slots
            c.top_k_threshold = extras ? 0.7 : 0.0;
            if (groups > 0) {
              c.num_groups = 4;
              c.groups_selected = 2;
              c.group_score = groups == 1 ? moe::GroupScore::sum_top2 : moe::GroupScore::max;
              c.group_mask = extras ? moe::GroupMask::zero : moe::GroupMask::neg_inf;
            }
            c.noise = noise == 0   ? moe::Noise::none
                      : noise == 1 ? moe::Noise::jitter
                                   : moe::Noise::noisy_topk;
            c.jitter_epsilon = 0.05;
            const std::string name =
                "score=" + std::to_string(score) + " renorm=" + std::to_string(renorm) +
                " groups=" + std::to_string(groups) + " noise=" + std::to_string(noise) +
                " extras=" + std::to_string(extras);
            grid.emplace_back(name, c);
          }
  return grid;
}

template <class S>
moe::Router<S> random_router(const RouterConfig& c, std::uint64_t seed, bool selection_bias) {
  moe::Router<S> router(c);
  router.weight = random_matrix<S>(c.num_experts, c.hidden, seed + 1);
  router.bias = random_matrix<S>(c.num_experts, 1, seed + 2, 0.5);
  if (c.noise == moe::Noise::noisy_topk)
    router.noise_weight = random_matrix<S>(c.num_experts, c.hidden, seed + 3);
  if (selection_bias) router.selection_bias = random_matrix<S>(c.num_experts, 1, seed + 4, 0.05);
  return router;
}

template <class S>
void check_against_reference(const RouterConfig& c, const std::string& name, double tolerance) {
  for (bool bias : {false, true})
    for (moe::Mode mode : {moe::Mode::train, moe::Mode::eval}) {
      INFO(name << " selection_bias=" << bias << " train=" << (mode == moe::Mode::train));
      const auto router = random_router<S>(c, 7, bias);
      const auto x = random_matrix<S>(13, c.hidden, 11);
      moe::RouterContext<S> ctx;
      const auto& r = router.forward(x, ctx, mode, 1234);
      const auto ref =
          moe::test::reference_route(c, x, router.weight, router.bias, router.noise_weight,
                                     router.selection_bias, mode == moe::Mode::train, 1234);
      for (Index t = 0; t < x.rows(); ++t) {
        for (Index j = 0; j < c.top_k; ++j) {
          REQUIRE(r.expert_ids(t, j) == ref.ids[t][j]);
          REQUIRE(std::abs(r.gates(t, j) - ref.gates[t][j]) <= tolerance);
        }
        for (Index e = 0; e < c.num_experts; ++e) {
          REQUIRE(std::abs(r.scores(t, e) - ref.scores[t][e]) <= tolerance);
          REQUIRE(std::abs(r.logits(t, e) - ref.logits[t][e]) <= tolerance * 10);
        }
      }
    }
}

}  // namespace

TEST_CASE("router forward matches the loop reference for every option combination", "[router]") {
  for (const auto& [name, config] : option_grid(8, 6)) {
    check_against_reference<double>(config, name, 1e-12);
    check_against_reference<float>(config, name, 2e-5);
  }
}

TEST_CASE("router forward matches the reference for every k, including k = E", "[router]") {
  for (Index experts : {1, 5, 8, 20}) {
    for (Index k = 1; k <= experts; ++k) {
      RouterConfig c;
      c.num_experts = experts;
      c.hidden = 4;
      c.top_k = k;
      c.renormalize = true;
      check_against_reference<double>(c, "E=" + std::to_string(experts) + " k=" + std::to_string(k),
                                      1e-12);
    }
  }
}

TEST_CASE("eval mode ignores noise and is deterministic; train noise follows the seed",
          "[router]") {
  RouterConfig noisy;
  noisy.num_experts = 8;
  noisy.hidden = 5;
  noisy.top_k = 2;
  noisy.noise = moe::Noise::jitter;
  noisy.jitter_epsilon = 0.3;
  RouterConfig clean = noisy;
  clean.noise = moe::Noise::none;
  auto r_noisy = random_router<double>(noisy, 3, false);
  auto r_clean = random_router<double>(clean, 3, false);
  const auto x = random_matrix<double>(50, 5, 17);
  moe::RouterContext<double> a, b, c;
  const moe::Routing<double> eval = r_noisy.forward(x, a, moe::Mode::eval, 1);
  const moe::Routing<double> plain = r_clean.forward(x, b, moe::Mode::train, 1);
  CHECK(eval.gates == plain.gates);
  CHECK(eval.expert_ids == plain.expert_ids);

  const moe::Routing<double> train1 = r_noisy.forward(x, a, moe::Mode::train, 1);
  const moe::Routing<double> train1_again = r_noisy.forward(x, b, moe::Mode::train, 1);
  const moe::Routing<double> train2 = r_noisy.forward(x, c, moe::Mode::train, 2);
  CHECK(train1.gates == train1_again.gates);
  CHECK(train1.gates != train2.gates);
  CHECK(train1.gates != eval.gates);
}

TEST_CASE("ties go to the lower expert index", "[router][ties]") {
  for (int score = 0; score < 3; ++score) {
    RouterConfig c;
    c.num_experts = 6;
    c.hidden = 1;
    c.top_k = 3;
    c.score = score == 2 ? moe::ScoreFunction::sigmoid : moe::ScoreFunction::softmax;
    c.softmax_order =
        score == 1 ? moe::SoftmaxOrder::topk_then_softmax : moe::SoftmaxOrder::softmax_then_topk;
    moe::Router<double> router(c);
    router.weight << 1, 2, 2, 1, 2, 0;  // experts 1, 2, 4 tie at the top, 0 and 3 tie next
    moe::RowMatrix<double> x(1, 1);
    x << 1.0;
    moe::RouterContext<double> ctx;
    const auto& r = router.forward(x, ctx, moe::Mode::eval);
    CHECK(r.expert_ids(0, 0) == 1);
    CHECK(r.expert_ids(0, 1) == 2);
    CHECK(r.expert_ids(0, 2) == 4);
    c.top_k = 4;
    moe::Router<double> four(c);
    four.weight = router.weight;
    const auto& r4 = four.forward(x, ctx, moe::Mode::eval);
    CHECK(r4.expert_ids(0, 3) == 0);
  }
  // all experts equal: top-k is 0, 1, ..., k-1 and the gates are equal
  RouterConfig c;
  c.num_experts = 16;
  c.hidden = 3;
  c.top_k = 8;
  moe::Router<float> flat(c);
  moe::RouterContext<float> ctx;
  const auto& r = flat.forward(random_matrix<float>(4, 3, 5), ctx, moe::Mode::eval);
  for (Index t = 0; t < 4; ++t)
    for (Index j = 0; j < 8; ++j) {
      CHECK(r.expert_ids(t, j) == j);
      CHECK(r.gates(t, j) == r.gates(t, 0));
    }
}

TEST_CASE("a per-expert gate scale multiplies the finished gates and selects nothing",
          "[router][expert_scale]") {
  // Gemma 4's per_expert_scale: w_tj = c[e_tj] * (the gates without it).
  for (const auto& [name, plain] : option_grid(8, 5)) {
    INFO(name);
    RouterConfig scaled_config = plain;
    scaled_config.expert_scale = true;
    moe::Router<double> unscaled = random_router<double>(plain, 7, true);
    moe::Router<double> scaled(scaled_config);
    scaled.weight = unscaled.weight;
    scaled.bias = unscaled.bias;
    scaled.noise_weight = unscaled.noise_weight;
    scaled.selection_bias = unscaled.selection_bias;
    REQUIRE(scaled.expert_scale.isOnes());  // a new router's scale changes nothing
    scaled.expert_scale = random_matrix<double>(8, 1, 11, 0.5);
    const moe::RowMatrix<double> x = random_matrix<double>(9, 5, 12);
    moe::RouterContext<double> a, b;
    const auto& u = unscaled.forward(x, a, moe::Mode::train, 3);
    const auto& s = scaled.forward(x, b, moe::Mode::train, 3);
    REQUIRE(s.expert_ids == u.expert_ids);
    REQUIRE(s.scores == u.scores);
    for (Index t = 0; t < 9; ++t)
      for (Index j = 0; j < plain.top_k; ++j) {
        const moe::ExpertId e = u.expert_ids(t, j);
        CHECK(s.gates(t, j) ==
              (e == moe::kUnusedSlot ? 0.0 : u.gates(t, j) * scaled.expert_scale[e]));
      }
  }
}

TEST_CASE("float sigmoid scores keep their relative precision in the tails", "[router][numerics]") {
  // PyTorch's 1 / (1 + exp(-z)) is accurate to a few ulps for every z; Eigen's logistic() is
  // exp(z) below z = -9 in float, 1.2e-4 off there, which renormalized gates would inherit.
  RouterConfig c;
  c.num_experts = 601;
  c.hidden = 1;
  c.top_k = 1;
  c.score = moe::ScoreFunction::sigmoid;
  moe::RowMatrix<float> logits(1, c.num_experts);
  for (Index e = 0; e < c.num_experts; ++e) logits(0, e) = -40.f + 0.125f * static_cast<float>(e);
  moe::Routing<float> routing;
  moe::RowMatrix<float> selection;
  moe::select_experts<float>(c, logits, moe::Vector<float>(), routing, selection);
  for (Index e = 0; e < c.num_experts; ++e) {
    const double z = logits(0, e), exact = 1.0 / (1.0 + std::exp(-z));
    INFO("z = " << z);
    CHECK(std::abs(routing.scores(0, e) - exact) <=
          4 * std::numeric_limits<float>::epsilon() * exact);
  }
}

TEST_CASE("a floor on the renormalizing sum divides small sums by the floor (llama.cpp)",
          "[router][renormalize]") {
  // llama.cpp build_moe_ffn: w_j = s_j / clamp(sum_i s_i, 6.103515625e-5, inf), in float.
  RouterConfig c;
  c.num_experts = 4;
  c.hidden = 1;
  c.top_k = 2;
  c.score = moe::ScoreFunction::sigmoid;
  c.renormalize = true;
  c.renormalize_min = 6.103515625e-5;
  moe::RowMatrix<float> logits(2, 4);
  logits << -11.f, -12.f, -20.f, -30.f,  // sigmoids 1.67e-5 + 6.1e-6: under the floor
      1.f, 2.f, -1.f, 0.f;               // well above it: the plain ratio
  moe::Routing<float> routing;
  moe::RowMatrix<float> selection;
  moe::select_experts<float>(c, logits, moe::Vector<float>(), routing, selection);
  const auto sigmoid = [](float z) { return 1.f / (1.f + std::exp(-z)); };
  REQUIRE(routing.expert_ids.row(0) == (moe::ExpertIdMatrix(1, 2) << 0, 1).finished());
  CHECK(routing.gates(0, 0) == routing.scores(0, 0) / 6.103515625e-5f);
  CHECK(routing.gates(0, 1) == routing.scores(0, 1) / 6.103515625e-5f);
  CHECK(routing.gates(0, 0) == Approx(sigmoid(-11.f) / 6.103515625e-5f).epsilon(1e-5));
  CHECK(routing.gates.row(0).sum() < 0.5f);
  const float sum = routing.scores(1, 1) + routing.scores(1, 0);
  CHECK(routing.gates(1, 0) == routing.scores(1, 1) / sum);
  CHECK(routing.gates(1, 1) == routing.scores(1, 0) / sum);

  // Under the floor the sum passes no gradient: d logit_j = dw_j s_j (1 - s_j) / floor.
  moe::RowMatrix<float> grad_gates(2, 2);
  grad_gates << 1.f, -2.f, 0.f, 0.f;
  const moe::RowMatrix<float> d =
      moe::select_experts_backward<float>(c, logits, routing, grad_gates, moe::RowMatrix<float>());
  for (int j = 0; j < 2; ++j) {
    const float s = routing.scores(0, j);
    CHECK(d(0, j) == Approx(grad_gates(0, j) * s * (1.f - s) / 6.103515625e-5f).epsilon(1e-5));
  }
  CHECK(d(0, 2) == 0.f);
  CHECK(d(0, 3) == 0.f);
}

TEST_CASE("logits of 1e4 give finite, correct routing", "[router][numerics]") {
  for (int score = 0; score < 3; ++score) {
    RouterConfig c;
    c.num_experts = 4;
    c.hidden = 1;
    c.top_k = 2;
    c.renormalize = true;
    c.score = score == 2 ? moe::ScoreFunction::sigmoid : moe::ScoreFunction::softmax;
    c.softmax_order =
        score == 1 ? moe::SoftmaxOrder::topk_then_softmax : moe::SoftmaxOrder::softmax_then_topk;
    moe::Router<float> router(c);
    router.weight << 1e4f, -1e4f, 0.5e4f, 0.f;
    moe::RowMatrix<float> x(2, 1);
    x << 1.f, -1.f;
    moe::RouterContext<float> ctx;
    const auto& r = router.forward(x, ctx, moe::Mode::eval);
    REQUIRE(r.scores.allFinite());
    REQUIRE(r.gates.allFinite());
    // softmax over E underflows every loser to exactly 0: those ties go to the lower index
    const bool by_probability = score == 0;
    CHECK(r.expert_ids(0, 0) == 0);
    CHECK(r.expert_ids(0, 1) == (by_probability ? 1 : 2));
    CHECK(r.expert_ids(1, 0) == 1);
    CHECK(r.expert_ids(1, 1) == (by_probability ? 0 : 3));
    if (score == 2) {
      CHECK(r.gates(0, 0) == 0.5f);  // both sigmoids saturate at exactly 1
      CHECK(r.gates(1, 0) == Approx(1.f / 1.5f));
    } else {
      CHECK(r.gates(0, 0) == 1.f);
      CHECK(r.gates(0, 1) <
            1e-30f);  // exp(-5000): 0, or the smallest value a vectorized exp returns
    }
  }
}

TEST_CASE("adaptive k per call: active_top_k = k' routes as a top-k' router, the rest unused",
          "[router][adaptive_k]") {
  // The reference is the same router configured with top_k = k': its k' choices and gates must
  // come back bit for bit, followed by unused slots (llama.cpp --moe-n-expert).
  for (int score = 0; score < 3; ++score) {
    RouterConfig c;
    c.num_experts = 8;
    c.hidden = 6;
    c.top_k = 4;
    c.renormalize = true;
    c.score = score == 1   ? moe::ScoreFunction::sigmoid
              : score == 2 ? moe::ScoreFunction::sqrt_softplus
                           : moe::ScoreFunction::softmax;
    c.scaling_factor = 2.5;
    for (Index k_active = 1; k_active <= 4; ++k_active) {
      INFO("score=" << score << " active_top_k=" << k_active);
      RouterConfig adaptive = c, fixed = c;
      adaptive.active_top_k = k_active;
      fixed.top_k = k_active;
      auto router = random_router<float>(adaptive, 3, true);
      auto reference = random_router<float>(fixed, 3, true);
      const auto x = random_matrix<float>(37, c.hidden, 5);
      moe::RouterContext<float> ctx, reference_ctx;
      const auto& r = router.forward(x, ctx, moe::Mode::eval);
      const auto& expected = reference.forward(x, reference_ctx, moe::Mode::eval);
      for (Index t = 0; t < x.rows(); ++t)
        for (Index j = 0; j < 4; ++j) {
          if (j < k_active) {
            REQUIRE(r.expert_ids(t, j) == expected.expert_ids(t, j));
            REQUIRE(r.gates(t, j) == expected.gates(t, j));
          } else {
            REQUIRE(r.expert_ids(t, j) == moe::kUnusedSlot);
            REQUIRE(r.gates(t, j) == 0.0f);
          }
        }
      // A replay of the ids, unused slots included, reproduces the gates bit for bit.
      moe::RouterContext<float> replay_ctx;
      const auto& replayed = router.replay(x, r.expert_ids, replay_ctx, moe::Mode::eval);
      REQUIRE(replayed.gates == r.gates);
    }
  }
}
