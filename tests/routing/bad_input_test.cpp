// The bad-input catalogue of the routing family: every entry point, one bad argument at a time,
// must raise moe::Error naming the argument, what was expected and what was given.
#include <cmath>
#include <limits>
#include <vector>

#include <moe/routing/hash.hpp>
#include <moe/routing/presets.hpp>
#include <moe/routing/replay.hpp>
#include <moe/routing/router.hpp>
#include <moe/routing/scoring.hpp>
#include <moe/routing/synthetic.hpp>
#include <moe/routing/topk.hpp>

#include "support/bad_input.hpp"
#include "support/catch.hpp"

namespace {

using moe::Index;
using moe::presets::Experts;
using moe::presets::Hidden;
using moe::test::require_rejects;
using Matrix = moe::RowMatrix<double>;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

moe::RouterConfig good_config() {
  moe::RouterConfig c;
  c.num_experts = 8;
  c.hidden = 4;
  c.top_k = 2;
  c.renormalize = true;
  return c;
}

template <class Change>
moe::RouterConfig with(Change change) {
  moe::RouterConfig c = good_config();
  change(c);
  return c;
}

/// A router over good_config() with random weights, and one forward of 3 tokens in `ctx`.
struct Routed {
  moe::Router<double> router{good_config()};
  moe::RouterContext<double> ctx;
  Matrix x = Matrix::Random(3, 4);
  Routed() {
    router.init_weights(1, 0.5);
    router.forward(x, ctx, moe::Mode::eval);
  }
};

}  // namespace

TEST_CASE("bad router configurations are refused where the router is built", "[routing][errors]") {
  using C = moe::RouterConfig;
  const auto build = [](const moe::RouterConfig& c) { return [c] { moe::Router<float> r(c); }; };
  require_rejects(build(with([](C& c) { c.num_experts = 0; })), "RouterConfig::num_experts", ">= 1",
                  "0");
  require_rejects(build(with([](C& c) { c.hidden = 0; })), "RouterConfig::hidden", ">= 1", "0");
  require_rejects(build(with([](C& c) { c.top_k = 0; })), "RouterConfig::top_k",
                  "1 <= top_k <= num_experts (8)", "0");
  require_rejects(build(with([](C& c) { c.top_k = 9; })), "RouterConfig::top_k",
                  "1 <= top_k <= num_experts (8)", "9");
  require_rejects(build(with([](C& c) { c.num_groups = 3; })), "RouterConfig::num_groups",
                  "a divisor of num_experts (8)", "3");
  require_rejects(build(with([](C& c) { c.num_groups = 0; })), "RouterConfig::num_groups", ">= 1",
                  "0");
  require_rejects(build(with([](C& c) { c.num_groups = 4, c.groups_selected = 5; })),
                  "RouterConfig::groups_selected", "1 <= groups_selected <= num_groups (4)", "5");
  require_rejects(build(with([](C& c) { c.num_groups = 4, c.groups_selected = 0; })),
                  "RouterConfig::groups_selected", "1 <= groups_selected <= num_groups (4)", "0");
  require_rejects(build(with([](C& c) { c.num_groups = 8, c.groups_selected = 2; })),
                  "RouterConfig::group_score", "max when a group has a single expert", "sum_top2");
  require_rejects(build(with([](C& c) {
                    c.num_groups = 8, c.groups_selected = 1, c.group_score = moe::GroupScore::max;
                  })),
                  "RouterConfig::groups_selected", ">= top_k (2)", "1");
  require_rejects(build(with([](C& c) { c.scaling_factor = 0; })), "RouterConfig::scaling_factor",
                  "a finite value > 0", "0");
  require_rejects(build(with([](C& c) { c.scaling_factor = kNaN; })),
                  "RouterConfig::scaling_factor", "a finite value > 0", "nan");
  require_rejects(build(with([](C& c) { c.scaling_factor = kInf; })),
                  "RouterConfig::scaling_factor", "a finite value > 0", "inf");
  require_rejects(build(with([](C& c) { c.renormalize_epsilon = -1; })),
                  "RouterConfig::renormalize_epsilon", "a finite value >= 0", "-1");
  require_rejects(build(with([](C& c) { c.renormalize_epsilon = kInf; })),
                  "RouterConfig::renormalize_epsilon", "a finite value >= 0", "inf");
  const std::string floor_expected = "0, or a finite value >= 1.17549e-38";
  require_rejects(build(with([](C& c) { c.renormalize = true, c.renormalize_min = -1; })),
                  "RouterConfig::renormalize_min", floor_expected, "-1");
  require_rejects(build(with([](C& c) { c.renormalize = true, c.renormalize_min = 1e-40; })),
                  "RouterConfig::renormalize_min", floor_expected, "1e-40");  // not a normal float
  require_rejects(build(with([](C& c) { c.renormalize = true, c.renormalize_min = kInf; })),
                  "RouterConfig::renormalize_min", floor_expected, "inf");
  require_rejects(
      build(with([](C& c) { c.renormalize = false, c.renormalize_min = 6.103515625e-5; })),
      "RouterConfig::renormalize_min", "0 without renormalize (there is no sum to floor)",
      "6.10352e-05");
  require_rejects(build(with([](C& c) { c.jitter_epsilon = 1.0; })), "RouterConfig::jitter_epsilon",
                  "0 <= eps < 1", "1");
  require_rejects(build(with([](C& c) { c.jitter_epsilon = kNaN; })),
                  "RouterConfig::jitter_epsilon", "0 <= eps < 1", "nan");
  require_rejects(build(with([](C& c) { c.noise_epsilon = -0.5; })), "RouterConfig::noise_epsilon",
                  "a finite value >= 0", "-0.5");
  require_rejects(build(with([](C& c) { c.noise_epsilon = kInf; })), "RouterConfig::noise_epsilon",
                  "a finite value >= 0", "inf");
  require_rejects(build(with([](C& c) { c.active_top_k = 3; })), "RouterConfig::active_top_k",
                  "0 (top_k) or 1 <= active_top_k <= top_k (2)", "3");
  require_rejects(build(with([](C& c) { c.active_top_k = -1; })), "RouterConfig::active_top_k",
                  "0 (top_k) or 1 <= active_top_k <= top_k (2)", "-1");
  require_rejects(build(with([](C& c) { c.active_top_k = 1, c.min_top_k = 2; })),
                  "RouterConfig::min_top_k",
                  "0 (active_top_k) or 1 <= min_top_k <= active_top_k (1)", "2");
  require_rejects(build(with([](C& c) { c.top_k_threshold = 1.5; })),
                  "RouterConfig::top_k_threshold", "a ratio in [0, 1]", "1.5");
  require_rejects(build(with([](C& c) { c.top_k_threshold = kNaN; })),
                  "RouterConfig::top_k_threshold", "a ratio in [0, 1]", "nan");
  require_rejects(build(with([](C& c) {
                    c.score = moe::ScoreFunction::sigmoid;
                    c.softmax_order = moe::SoftmaxOrder::topk_then_softmax;
                  })),
                  "RouterConfig::softmax_order",
                  "softmax_then_topk with a sigmoid or sqrt_softplus score", "topk_then_softmax");
  // Presets take their sizes from the caller: a bad one is refused by the router built on it.
  require_rejects(build(moe::presets::mixtral(Hidden{0})), "RouterConfig::hidden", ">= 1", "0");
  require_rejects(build(moe::presets::switch_transformer(Hidden{16}, Experts{0})),
                  "RouterConfig::num_experts", ">= 1", "0");
}

TEST_CASE("the router's forward checks its input, its parameters and its edited config",
          "[routing][errors]") {
  Routed r;
  moe::RouterContext<double> ctx;
  const auto forward = [&](const moe::Router<double>& router, const Matrix& x) {
    return [&router, x, &ctx] { router.forward(x, ctx, moe::Mode::eval); };
  };
  require_rejects(forward(r.router, Matrix::Zero(3, 5)), "x", "shape [*, 4]", "[3, 5]");
  Matrix x = Matrix::Zero(3, 4);
  x(1, 2) = kNaN;
  require_rejects(forward(r.router, x), "x", "finite values", "nan at row 1, column 2");
  x(1, 2) = -kInf;
  require_rejects(forward(r.router, x), "x", "finite values", "-inf at row 1, column 2");

  moe::Router<double> nan_weight = r.router;
  nan_weight.weight(3, 1) = kNaN;
  require_rejects(forward(nan_weight, Matrix::Ones(2, 4)), "Router::weight", "finite values",
                  "nan at row 3, column 1");
  moe::Router<double> biased(with([](moe::RouterConfig& c) { c.linear_bias = true; }));
  biased.bias[5] = kInf;
  require_rejects(forward(biased, Matrix::Ones(2, 4)), "Router::bias", "finite values",
                  "inf at row 5");
  moe::Router<double> huge = r.router;
  huge.weight.setConstant(std::numeric_limits<double>::max());
  require_rejects(forward(huge, Matrix::Ones(2, 4)), "logits", "finite values", "inf at row 0");
  moe::Router<double> nan_bias = r.router;
  nan_bias.selection_bias[2] = kNaN;
  require_rejects(forward(nan_bias, Matrix::Ones(2, 4)), "Router::selection_bias", "finite values",
                  "nan at row 2");
  moe::Router<double> scaled(with([](moe::RouterConfig& c) { c.expert_scale = true; }));
  scaled.expert_scale[6] = kNaN;
  require_rejects(forward(scaled, Matrix::Ones(2, 4)), "Router::expert_scale", "finite values",
                  "nan at row 6");
  moe::RouterBuffers<double> buffers;
  std::vector<double> weight(8 * 4);
  buffers.weight = {weight.data(), 32};
  require_rejects(
      [&] {
        moe::Router<double>::mapped(with([](moe::RouterConfig& c) { c.expert_scale = true; }),
                                    buffers);
      },
      "buffers.expert_scale", "8 elements ([8, 1])", "0");

  // The config is a public member: an edit is checked at the next use.
  moe::Router<double> edited = r.router;
  edited.config.top_k = 9;
  require_rejects(forward(edited, Matrix::Ones(2, 4)), "RouterConfig::top_k",
                  "1 <= top_k <= num_experts (8)", "9");
  edited = r.router;
  edited.config.hidden = 3;
  require_rejects(forward(edited, Matrix::Ones(2, 3)), "Router::weight", "shape [8, 3]", "[8, 4]");
  edited = r.router;
  edited.config.num_experts = 4;
  require_rejects(forward(edited, Matrix::Ones(2, 4)), "Router::weight", "shape [4, 4]", "[8, 4]");
  edited = r.router;
  edited.config.noise = moe::Noise::noisy_topk;
  require_rejects(forward(edited, Matrix::Ones(2, 4)), "Router::noise_weight", "shape [8, 4]",
                  "[0, 0]");
  edited = r.router;
  edited.config.num_groups = 3;
  require_rejects(forward(edited, Matrix::Ones(2, 4)), "RouterConfig::num_groups",
                  "a divisor of num_experts (8)", "3");
}

TEST_CASE("the router's backward checks its context and the upstream gradients",
          "[routing][errors]") {
  Routed r;
  const auto backward = [&](const moe::RouterContext<double>& ctx, const Matrix& x,
                            const moe::RouterUpstream<double>& up) {
    return [&r, &ctx, x, up] { r.router.backward(x, ctx, up); };
  };
  const moe::RouterContext<double> empty;
  require_rejects(backward(empty, r.x, {}), "ctx", "a context filled by this router's forward",
                  "E = 0");
  moe::Router<double> other(with([](moe::RouterConfig& c) { c.num_experts = 4; }));
  moe::RouterContext<double> other_ctx;
  other.forward(r.x, other_ctx, moe::Mode::eval);
  require_rejects(backward(other_ctx, r.x, {}), "ctx", "E = 8", "E = 4");
  moe::Router<double> wide(with([](moe::RouterConfig& c) { c.hidden = 6; }));
  moe::RouterContext<double> wide_ctx;
  wide.forward(Matrix::Zero(3, 6), wide_ctx, moe::Mode::eval);
  require_rejects(backward(wide_ctx, r.x, {}), "ctx", "d = 4", "d = 6");
  require_rejects(backward(r.ctx, Matrix::Zero(2, 4), {}), "x", "shape [3, 4]", "[2, 4]");

  Matrix gates = Matrix::Zero(3, 2), scores = Matrix::Zero(3, 8), logits = Matrix::Zero(3, 8);
  require_rejects(backward(r.ctx, r.x, {Matrix::Zero(3, 3), {}, {}}), "upstream.gates",
                  "shape [3, 2]", "[3, 3]");
  gates(2, 1) = kNaN;
  require_rejects(backward(r.ctx, r.x, {gates, {}, {}}), "upstream.gates", "finite values",
                  "nan at row 2, column 1");
  require_rejects(backward(r.ctx, r.x, {{}, Matrix::Zero(3, 7), {}}), "upstream.scores",
                  "shape [3, 8]", "[3, 7]");
  scores(0, 7) = kInf;
  require_rejects(backward(r.ctx, r.x, {{}, scores, {}}), "upstream.scores", "finite values",
                  "inf at row 0, column 7");
  require_rejects(backward(r.ctx, r.x, {{}, {}, Matrix::Zero(4, 8)}), "upstream.logits",
                  "shape [3, 8]", "[4, 8]");
  logits(1, 1) = -kInf;
  require_rejects(backward(r.ctx, r.x, {{}, {}, logits}), "upstream.logits", "finite values",
                  "-inf at row 1, column 1");
  moe::Router<double> edited = r.router;
  edited.config.top_k = 3;  // same parameter shapes, another routing
  require_rejects([&] { edited.backward(r.x, r.ctx, {}); }, "ctx", "k = 3", "k = 2");
}

TEST_CASE("init_weights refuses a standard deviation that is not finite and >= 0",
          "[routing][errors]") {
  moe::Router<float> router(good_config());
  require_rejects([&] { router.init_weights(1, kNaN); }, "stddev", "a finite value >= 0", "nan");
  require_rejects([&] { router.init_weights(1, -0.1); }, "stddev", "a finite value >= 0", "-0.1");
  require_rejects([&] { router.init_weights(1, kInf); }, "stddev", "a finite value >= 0", "inf");
}

TEST_CASE("select_experts and its backward check what they are given", "[routing][errors]") {
  moe::Routing<double> routing;
  Matrix selection;
  const moe::Vector<double> none;
  const auto select = [&](const moe::RouterConfig& c, const Matrix& logits,
                          const moe::Vector<double>& bias) {
    return
        [&, c, logits, bias] { moe::select_experts<double>(c, logits, bias, routing, selection); };
  };
  Matrix logits = Matrix::Zero(3, 8);
  require_rejects(select(good_config(), Matrix::Zero(3, 7), none), "logits", "shape [*, 8]",
                  "[3, 7]");
  logits(2, 3) = kNaN;
  require_rejects(select(good_config(), logits, none), "logits", "finite values",
                  "nan at row 2, column 3");
  logits(2, 3) = 0;
  require_rejects(select(good_config(), logits, moe::Vector<double>::Zero(3)), "selection_bias",
                  "size 0 or 8", "3");
  moe::Vector<double> nan_bias = moe::Vector<double>::Zero(8);
  nan_bias[4] = kNaN;
  require_rejects(select(good_config(), logits, nan_bias), "selection_bias", "finite values",
                  "nan at row 4");
  require_rejects(select(with([](moe::RouterConfig& c) { c.top_k = 0; }), logits, none),
                  "RouterConfig::top_k", "1 <= top_k", "0");
  require_rejects(
      select(with([](moe::RouterConfig& c) { c.num_groups = 2, c.groups_selected = 3; }), logits,
             none),
      "RouterConfig::groups_selected", "<= num_groups (2)", "3");
  // A per-expert scale is the Router's parameter: the free functions would route without it.
  const moe::RouterConfig scaled = with([](moe::RouterConfig& c) { c.expert_scale = true; });
  require_rejects(select(scaled, logits, none), "RouterConfig::expert_scale",
                  "false in select_experts (the scale is a Router parameter", "true");
  require_rejects([&] { moe::replay_experts<double>(scaled, logits, routing.expert_ids, routing); },
                  "RouterConfig::expert_scale", "false in replay_experts", "true");

  moe::select_experts<double>(good_config(), logits, none, routing, selection);
  const auto backward = [&](const moe::RouterConfig& c, const Matrix& grad_gates,
                            const Matrix& grad_scores) {
    return [&, c, grad_gates, grad_scores] {
      moe::select_experts_backward<double>(c, logits, routing, grad_gates, grad_scores);
    };
  };
  require_rejects(backward(good_config(), Matrix::Zero(3, 1), Matrix()), "grad_gates",
                  "shape [3, 2]", "[3, 1]");
  Matrix grad_gates = Matrix::Zero(3, 2);
  grad_gates(0, 0) = kInf;
  require_rejects(backward(good_config(), grad_gates, Matrix()), "grad_gates", "finite values",
                  "inf");
  require_rejects(backward(good_config(), Matrix::Zero(3, 2), Matrix::Zero(2, 8)), "grad_scores",
                  "shape [3, 8]", "[2, 8]");
  require_rejects(
      backward(with([](moe::RouterConfig& c) { c.top_k = 3; }), Matrix::Zero(3, 3), Matrix()),
      "routing.expert_ids", "shape [3, 3]", "[3, 2]");
  require_rejects(backward(scaled, Matrix::Zero(3, 2), Matrix()), "RouterConfig::expert_scale",
                  "false in select_experts_backward", "true");
}

TEST_CASE("top-k and the score functions check their arguments", "[routing][errors]") {
  const double values[4] = {0.5, -1.0, kNaN, 2.0};
  moe::ExpertId ids[5];
  double selected[5];
  require_rejects([&] { moe::top_k(values, 4, 0, ids, selected); }, "k",
                  "1 <= k <= num_experts (4)", "0");
  require_rejects([&] { moe::top_k(values, 4, 5, ids, selected); }, "k",
                  "1 <= k <= num_experts (4)", "5");
  require_rejects([&] { moe::top_k(values, 0, 1, ids, selected); }, "num_experts", ">= 1", "0");
  require_rejects([&] { moe::top_k(values, 4, 2, ids, selected); }, "values",
                  "values that are not NaN", "nan at 2");
  moe::ExpertIdMatrix id_rows;
  Matrix selected_rows, scores;
  Matrix rows = Matrix::Zero(3, 4);
  require_rejects([&] { moe::top_k_rows<double>(rows, 5, id_rows, selected_rows); }, "k",
                  "1 <= k <= num_experts (4)", "5");
  rows(1, 0) = kNaN;
  require_rejects([&] { moe::top_k_rows<double>(rows, 2, id_rows, selected_rows); }, "values",
                  "values that are not NaN", "nan at row 1, column 0");
  require_rejects([&] { moe::softmax_rows<double>(rows, scores); }, "logits", "finite values",
                  "nan at row 1, column 0");
  require_rejects([&] { moe::sigmoid<double>(rows, scores); }, "logits", "finite values",
                  "nan at row 1, column 0");
}

TEST_CASE("synthetic routing checks its config", "[routing][errors][synthetic]") {
  using D = moe::SyntheticDistribution;
  const auto rejects = [](auto change, const char* argument, const char* expected,
                          const char* given) {
    moe::SyntheticRoutingConfig c;
    c.num_tokens = 4;
    c.distribution = D::biased;
    c.favoured = {1, 2};
    change(c);
    require_rejects([c] { moe::synthetic_expert_ids(c); }, argument, expected, given);
    require_rejects([c] { moe::synthetic_routing<float>(c); }, argument, expected, given);
    require_rejects([c] { moe::synthetic_expert_probabilities(c); }, argument, expected, given);
  };
  using C = moe::SyntheticRoutingConfig;
  rejects([](C& c) { c.num_tokens = -1; }, "SyntheticRoutingConfig::num_tokens", ">= 0", "-1");
  rejects([](C& c) { c.num_experts = 0; }, "SyntheticRoutingConfig::num_experts", ">= 1", "0");
  rejects([](C& c) { c.num_experts = Index{1} << 40; }, "SyntheticRoutingConfig::num_experts",
          "an expert count that fits ExpertId", "1099511627776");
  rejects([](C& c) { c.top_k = 0; }, "SyntheticRoutingConfig::top_k",
          "1 <= top_k <= num_experts (8)", "0");
  rejects([](C& c) { c.top_k = 9; }, "SyntheticRoutingConfig::top_k",
          "1 <= top_k <= num_experts (8)", "9");
  rejects([](C& c) { c.num_tokens = Index{1} << 62; }, "SyntheticRoutingConfig::num_tokens",
          "a size that fits a 64-bit index", "4611686018427387904 * 2");
  rejects([](C& c) { c.logit_gap = 0; }, "SyntheticRoutingConfig::logit_gap", "a finite value > 0",
          "0");
  rejects([](C& c) { c.logit_gap = kNaN; }, "SyntheticRoutingConfig::logit_gap",
          "a finite value > 0", "nan");
  rejects(
      [](C& c) {
        c.distribution = D::zipf;
        c.zipf_exponent = -0.5;
      },
      "SyntheticRoutingConfig::zipf_exponent", "a finite value >= 0", "-0.5");
  rejects(
      [](C& c) {
        c.distribution = D::zipf;
        c.zipf_exponent = kInf;
      },
      "SyntheticRoutingConfig::zipf_exponent", "a finite value >= 0", "inf");
  rejects(
      [](C& c) {
        c.distribution = D::zipf;
        c.zipf_exponent = 2000;
      },
      "SyntheticRoutingConfig::zipf_exponent",
      "an exponent that leaves top_k (2) experts a positive weight", "2000");
  rejects([](C& c) { c.favoured = {}; }, "SyntheticRoutingConfig::favoured",
          "1 to num_experts - 1 (7) experts", "0");
  rejects([](C& c) { c.favoured = {0, 1, 2, 3, 4, 5, 6, 7}; }, "SyntheticRoutingConfig::favoured",
          "1 to num_experts - 1 (7) experts", "8");
  rejects(
      [](C& c) {
        c.favoured = {1, 8};
      },
      "SyntheticRoutingConfig::favoured", "ids in [0, 8)", "8");
  rejects([](C& c) { c.favoured = {-1}; }, "SyntheticRoutingConfig::favoured", "ids in [0, 8)",
          "-1");
  rejects(
      [](C& c) {
        c.favoured = {3, 3};
      },
      "SyntheticRoutingConfig::favoured", "distinct ids", "3 twice");
  rejects([](C& c) { c.favoured_mass = 1.5; }, "SyntheticRoutingConfig::favoured_mass",
          "a value in [0, 1]", "1.5");
  rejects([](C& c) { c.favoured_mass = kNaN; }, "SyntheticRoutingConfig::favoured_mass",
          "a value in [0, 1]", "nan");
  rejects(
      [](C& c) {
        c.favoured = {5};
        c.favoured_mass = 1.0;
      },
      "SyntheticRoutingConfig::favoured_mass",
      "a mass that leaves top_k (2) experts a positive weight", "1");
  rejects(
      [](C& c) {
        c.favoured = {0, 1, 2, 3, 4, 5, 6};
        c.favoured_mass = 0.0;
      },
      "SyntheticRoutingConfig::favoured_mass",
      "a mass that leaves top_k (2) experts a positive weight", "0");
  // A logit -k gap beyond float: refused for float, fine for double.
  moe::SyntheticRoutingConfig c;
  c.num_tokens = 2;
  c.logit_gap = 2e38;
  require_rejects([c] { moe::synthetic_routing<float>(c); }, "SyntheticRoutingConfig::logit_gap",
                  "logit_gap * top_k <= the largest value of the scalar type", "2e+38");
  CHECK_NOTHROW(moe::synthetic_routing<double>(c));
  // The edges that must work: T = 0, k = E, E = 1, a mass of 1 on k experts.
  c = moe::SyntheticRoutingConfig{};
  CHECK(moe::synthetic_expert_ids(c).rows() == 0);
  c.num_tokens = 3;
  c.num_experts = 1;
  c.top_k = 1;
  CHECK(moe::synthetic_expert_ids(c) == moe::ExpertIdMatrix::Zero(3, 1));
  c.distribution = D::biased;
  c.num_experts = 4;
  c.top_k = 2;
  c.favoured = {1, 3};
  c.favoured_mass = 1.0;
  const moe::ExpertIdMatrix ids = moe::synthetic_expert_ids(c);
  for (Index t = 0; t < 3; ++t)
    CHECK(((ids(t, 0) == 1 && ids(t, 1) == 3) || (ids(t, 0) == 3 && ids(t, 1) == 1)));
}

TEST_CASE("routing at the edges of finite input stays finite", "[routing][numerics]") {
  SECTION("sigmoid scores renormalized without epsilon, every chosen logit far below zero") {
    for (double logit : {-60.0, -120.0, -800.0, -1e30}) {
      INFO("logit " << logit);
      auto c = moe::presets::deepseek_v3(Hidden{1}, Experts{16}, /*top_k=*/4);
      c.num_groups = 1;
      c.groups_selected = 1;
      moe::Router<float> router(c);
      for (Index e = 0; e < 16; ++e) router.weight(e, 0) = static_cast<float>(logit) - float(e);
      moe::RouterContext<float> ctx;
      const moe::RowMatrix<float> x = moe::RowMatrix<float>::Ones(2, 1);
      const auto& r = router.forward(x, ctx, moe::Mode::train);
      REQUIRE(r.gates.allFinite());
      // sigmoid(z) ~ exp(z) this far down: the gates are softmax(z) over the chosen four.
      double sum = 0;
      for (Index j = 0; j < 4; ++j)
        sum += std::exp(double(router.weight(j, 0) - router.weight(0, 0)));
      for (Index j = 0; j < 4; ++j) {
        const double expected =
            c.scaling_factor * std::exp(double(router.weight(j, 0) - router.weight(0, 0))) / sum;
        CHECK(r.gates(0, j) == Approx(expected).epsilon(1e-5));
      }
      moe::RouterUpstream<float> up;
      up.gates = moe::RowMatrix<float>::Ones(2, 4);
      up.gates(0, 0) = 3;
      const auto g = router.backward(x, ctx, up);
      CHECK(g.weight.allFinite());
      CHECK(g.x.allFinite());
    }
  }
  SECTION("softmax scores renormalized without epsilon, chosen by a bias far below the best") {
    // Scores e^-800 and e^-801 underflow; renormalized they are the softmax of the two chosen
    // logits, which z_0 does not change: dz_0 = 0, dz_j = p_j (dw_j - sum_i p_i dw_i).
    moe::RouterConfig c;
    c.num_experts = 3;
    c.hidden = 1;
    c.top_k = 2;
    c.renormalize = true;
    const Matrix logits = (Matrix(1, 3) << 0.0, -800.0, -801.0).finished();
    const moe::Vector<double> bias = (moe::Vector<double>(3) << -10.0, 0.0, 0.0).finished();
    moe::Routing<double> routing;
    Matrix selection;
    moe::select_experts<double>(c, logits, bias, routing, selection);
    REQUIRE(routing.expert_ids(0, 0) == 1);
    REQUIRE(routing.expert_ids(0, 1) == 2);
    const double p1 = 1.0 / (1.0 + std::exp(-1.0)), p2 = 1.0 - p1;
    CHECK(routing.gates(0, 0) == Approx(p1).epsilon(1e-14));
    CHECK(routing.gates(0, 1) == Approx(p2).epsilon(1e-14));
    routing.logits = logits;
    const Matrix dw = (Matrix(1, 2) << 0.75, -0.5).finished();
    const Matrix dz = moe::select_experts_backward<double>(c, logits, routing, dw, Matrix());
    const double inner = p1 * 0.75 + p2 * -0.5;
    CHECK(std::abs(dz(0, 0)) <= 1e-15);
    CHECK(dz(0, 1) == Approx(p1 * (0.75 - inner)).epsilon(1e-12));
    CHECK(dz(0, 2) == Approx(p2 * (-0.5 - inner)).epsilon(1e-12));
  }
  SECTION("a softmax row of lowest() values is uniform") {
    for (Index experts : {Index(3), Index(8), Index(20)}) {
      const Matrix logits = Matrix::Constant(2, experts, std::numeric_limits<double>::lowest());
      Matrix scores;
      moe::softmax_rows<double>(logits, scores);
      for (Index e = 0; e < experts; ++e) CHECK(scores(1, e) == Approx(1.0 / double(experts)));
    }
  }
}

TEST_CASE("routing replay checks the recorded ids and the record bytes", "[routing][errors]") {
  Routed r;
  moe::RouterContext<double> ctx;
  const auto replay = [&](moe::ExpertIdMatrix ids) {
    return [&r, &ctx, ids] { r.router.replay(r.x, ids, ctx, moe::Mode::eval); };
  };
  moe::ExpertIdMatrix ids(3, 2);
  ids << 0, 1, 2, 3, 4, 5;
  require_rejects(replay(ids.topRows(2)), "recorded_ids", "shape [3, 2]", "[2, 2]");
  require_rejects(replay(ids.leftCols(1)), "recorded_ids", "shape [3, 2]", "[3, 1]");
  moe::ExpertIdMatrix bad = ids;
  bad(2, 1) = 8;
  require_rejects(replay(bad), "recorded_ids", "expert ids in [0, 8)", "8 at row 2, column 1");
  bad(2, 1) = -2;  // -1 is an unused slot, any other negative id an error
  require_rejects(replay(bad), "recorded_ids", "expert ids in [0, 8) or -1 (unused)",
                  "-2 at row 2");
  bad(2, 1) = 4;
  require_rejects(replay(bad), "recorded_ids", "distinct expert ids in each row", "expert 4 twice");
  moe::Routing<double> out;
  require_rejects([&] { moe::replay_experts<double>(good_config(), Matrix::Zero(3, 8), bad, out); },
                  "recorded_ids", "distinct expert ids in each row", "expert 4 twice in row 2");
  require_rejects([&] { moe::replay_experts<double>(good_config(), Matrix::Zero(3, 7), ids, out); },
                  "logits", "shape [*, 8]", "[3, 7]");

  using C = moe::RouterConfig;
  const auto build = [](const moe::RouterConfig& c) { return [c] { moe::Router<float> r(c); }; };
  require_rejects(build(with([](C& c) {
                    c.num_groups = 4, c.groups_selected = 4, c.top_k = 2;
                    c.group_score = moe::GroupScore::sum_top_k_per_selected_group;
                  })),
                  "RouterConfig::groups_selected",
                  "top_k / groups_selected between 1 and the experts per group (2)", "4");
  require_rejects(build(with([](C& c) {
                    c.num_groups = 4, c.groups_selected = 1, c.top_k = 3;
                    c.group_score = moe::GroupScore::sum_top_k_per_selected_group;
                  })),
                  "RouterConfig::groups_selected", "between 1 and the experts per group (2)", "1");

  moe::RoutingRecord record;
  record.layers.push_back({8, ids});
  const std::vector<std::uint8_t> good = record.to_bytes();
  const auto parse = [](std::vector<std::uint8_t> bytes) {
    return [bytes] { moe::RoutingRecord::from_bytes(bytes.data(), bytes.size()); };
  };
  auto edited = [&](std::size_t at, std::uint8_t value) {
    std::vector<std::uint8_t> b = good;
    b[at] = value;
    return b;
  };
  require_rejects(parse(edited(0, 'X')), "bytes", "a routing record starting with \"MOEROUTE\"",
                  "other bytes");
  require_rejects(parse(edited(8, 2)), "bytes", "format version 1", "2");
  require_rejects(parse(edited(16, 0)), "bytes", "1 <= top_k <= num_experts", "num_experts 0");
  require_rejects(parse(edited(20, 9)), "bytes", "1 <= top_k <= num_experts", "top_k 9");
  require_rejects(parse(edited(32, 2)), "bytes",
                  "1-byte ids (1 with unused slots) for 8 experts in layer 0", "2");
  require_rejects(parse(edited(24, 4)), "bytes", "4 tokens of 2 ids in layer 0", "6 bytes left");
  require_rejects(parse(edited(33, 8)), "bytes[0]", "expert ids in [0, 8)", "8 at row 0, column 0");
  require_rejects(parse(edited(34, 0)), "bytes[0]", "distinct expert ids in each row",
                  "expert 0 twice in row 0");
  require_rejects(parse({good.begin(), good.begin() + 20}), "bytes",
                  "a routing record with its top_k", "truncated bytes");
  std::vector<std::uint8_t> longer = good;
  longer.push_back(0);
  require_rejects(parse(longer), "bytes", "no bytes after the last layer", "1 more bytes");
  moe::RoutingRecord wrong;
  wrong.layers.push_back({4, ids});
  require_rejects([&] { wrong.to_bytes(); }, "RoutingRecord::layers[0]", "expert ids in [0, 4)",
                  "4 at row 2, column 0");
  require_rejects([] { moe::RoutingRecord::load("/nonexistent/record.bin"); }, "path",
                  "a readable file", "/nonexistent/record.bin");
  require_rejects([&] { record.save("/nonexistent/record.bin"); }, "path", "a writable file",
                  "/nonexistent/record.bin");
}

TEST_CASE("hash routing checks its table and the token ids", "[routing][errors]") {
  moe::ExpertIdMatrix table(3, 2);
  table << 0, 1, 2, 3, 1, 0;
  require_rejects([&] { moe::HashTable(0, table); }, "num_experts", ">= 1", "0");
  require_rejects([&] { moe::HashTable(3, table); }, "experts", "expert ids in [0, 3)",
                  "3 at row 1, column 1");
  moe::ExpertIdMatrix repeated = table;
  repeated(2, 1) = 1;
  require_rejects([&] { moe::HashTable(4, repeated); }, "experts",
                  "distinct expert ids in each row", "expert 1 twice in row 2");
  require_rejects([&] { moe::HashTable(4, moe::ExpertIdMatrix(0, 2)); }, "experts",
                  "a table of at least one token id and one expert", "[0, 2]");
  const moe::HashTable hash(4, table);
  moe::TokenIds tokens(3);
  tokens << 0, 3, 1;
  require_rejects([&] { hash.expert_ids(tokens); }, "token_ids", "ids in [0, 3) (the vocabulary)",
                  "3 at token 1");
  tokens(1) = -1;
  require_rejects([&] { hash.expert_ids(tokens); }, "token_ids", "ids in [0, 3)", "-1 at token 1");
}
