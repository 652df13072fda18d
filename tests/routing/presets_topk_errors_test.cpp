// Hand-worked cases per preset, top-k against a stable-sort reference, and every argument check.
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include <moe/routing/presets.hpp>
#include <moe/routing/router.hpp>

#include "support/catch.hpp"
#include "support/routing_reference.hpp"

namespace {

using moe::Index;
using moe::presets::Experts;
using moe::presets::Hidden;
using Matrix = moe::RowMatrix<double>;

// Routes one token x = [1] through a router whose weight column is `logits`: logits = W.
moe::Routing<double> route_logits(const moe::RouterConfig& config,
                                  std::initializer_list<double> logits,
                                  const moe::Vector<double>& selection_bias = {}) {
  moe::RouterConfig c = config;
  c.hidden = 1;
  moe::Router<double> router(c);
  Index e = 0;
  for (double z : logits) router.weight(e++, 0) = z;
  if (selection_bias.size()) router.selection_bias = selection_bias;
  moe::RouterContext<double> ctx;
  return router.forward(Matrix::Ones(1, 1), ctx, moe::Mode::eval);
}

double logit(double p) { return std::log(p / (1 - p)); }

void check_token(const moe::Routing<double>& r, std::initializer_list<int> ids,
                 std::initializer_list<double> gates) {
  Index j = 0;
  for (int id : ids) CHECK(r.expert_ids(0, j++) == id);
  j = 0;
  for (double g : gates) CHECK(r.gates(0, j++) == Approx(g).epsilon(1e-12));
}

template <class Fn>
void check_throws_naming(Fn&& fn, const std::string& argument) {
  try {
    fn();
    FAIL("no moe::Error for " << argument);
  } catch (const moe::Error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(argument) != std::string::npos);
    CHECK(std::string(e.what()).find("expected") != std::string::npos);
  }
}

}  // namespace

// Every preset takes (Hidden, Experts, ...): bare or swapped numbers do not compile, so the old
// (experts, hidden) order of switch_transformer, qwen_moe, megatron_* and deepspeed_top2 cannot
// silently route a transposed shape.
static_assert(!std::is_convertible_v<Index, Hidden> && !std::is_convertible_v<Index, Experts>);
static_assert(
    !std::is_invocable_v<decltype(moe::presets::switch_transformer), Index, Index, double>);
static_assert(
    !std::is_invocable_v<decltype(moe::presets::switch_transformer), Experts, Hidden, double>);
static_assert(
    !std::is_invocable_v<decltype(moe::presets::megatron_topk), Index, Index, Index, bool>);
static_assert(!std::is_invocable_v<decltype(moe::presets::mixtral), Index, Index, Index>);
static_assert(std::is_invocable_v<decltype(moe::presets::deepspeed_top2), Hidden, Experts>);

TEST_CASE("presets route hand-worked cases", "[router][presets]") {
  const auto ln = [](double v) { return std::log(v); };
  SECTION("Switch: softmax over E, top-1, raw probability") {
    check_token(
        route_logits(moe::presets::switch_transformer(Hidden{1}, Experts{3}), {0, ln(3), 0}), {1},
        {0.6});
  }
  SECTION("Mixtral: softmax, top-2, renormalized") {
    check_token(
        route_logits(moe::presets::mixtral(Hidden{1}, Experts{4}), {ln(1), ln(2), ln(3), ln(4)}),
        {3, 2}, {4.0 / 7, 3.0 / 7});
  }
  SECTION("Qwen-MoE with and without norm_topk_prob") {
    check_token(route_logits(moe::presets::qwen_moe(Hidden{1}, Experts{4}, 2, false),
                             {ln(1), ln(2), ln(3), ln(4)}),
                {3, 2}, {0.4, 0.3});
    check_token(route_logits(moe::presets::qwen_moe(Hidden{1}, Experts{4}, 2, true),
                             {ln(1), ln(2), ln(3), ln(4)}),
                {3, 2}, {4.0 / 7, 3.0 / 7});
  }
  SECTION("DeepSeek-V3: sigmoid, group-limited by top-2 sums, renormalized, x2.5") {
    const auto config = moe::presets::deepseek_v3(Hidden{1}, Experts{8}, 3, 4, 2);
    const std::initializer_list<double> z = {logit(0.9), logit(0.1), logit(0.6), logit(0.5),
                                             logit(0.8), logit(0.7), logit(0.2), logit(0.95)};
    // group sums 1.0, 1.1, 1.5, 1.15 keep groups 2 and 3; expert 0 (0.9) is out
    check_token(route_logits(config, z), {7, 4, 5},
                {0.95 / 2.45 * 2.5, 0.8 / 2.45 * 2.5, 0.7 / 2.45 * 2.5});
    // a bias of -0.3 on expert 7 drops group 3 (0.65 + 0.2) for group 1; weights stay unbiased
    moe::Vector<double> bias = moe::Vector<double>::Zero(8);
    bias(7) = -0.3;
    check_token(route_logits(config, z, bias), {4, 5, 2},
                {0.8 / 2.1 * 2.5, 0.7 / 2.1 * 2.5, 0.6 / 2.1 * 2.5});
  }
  SECTION("DeepSeek-V4: sqrt(softplus), bias-steered top-6 style selection, renormalized, x1.5") {
    const auto config = moe::presets::deepseek_v4(Hidden{1}, Experts{4}, 2);
    // z = softplus^-1(s^2) = log(expm1(s^2)) gives the scores s = 1, 2, 0.5, 1.5
    const auto z_of = [](double s) { return std::log(std::expm1(s * s)); };
    const std::initializer_list<double> z = {z_of(1), z_of(2), z_of(0.5), z_of(1.5)};
    check_token(route_logits(config, z), {1, 3}, {2 / 3.5 * 1.5, 1.5 / 3.5 * 1.5});
    moe::Vector<double> bias = moe::Vector<double>::Zero(4);
    bias(1) = -1.2;  // biased 1, 0.8, 0.5, 1.5: expert 1 loses to expert 0, weights stay unbiased
    check_token(route_logits(config, z, bias), {3, 0}, {1.5 / 2.5 * 1.5, 1 / 2.5 * 1.5});
  }
  SECTION("HF DeepSeek-V3's zero mask lets a masked expert win when kept scores are negative") {
    auto config = moe::presets::deepseek_v3(Hidden{1}, Experts{4}, 2, 2, 1);
    moe::Vector<double> bias = moe::Vector<double>::Constant(4, -1.0);
    // biased scores: group 0 = {-0.9, -0.8} (sum -1.7), group 1 = {-0.5, -0.4} (sum -0.9) wins
    const std::initializer_list<double> z = {logit(0.1), logit(0.2), logit(0.5), logit(0.6)};
    check_token(route_logits(config, z, bias), {3, 2}, {0.6 / 1.1 * 2.5, 0.5 / 1.1 * 2.5});
    config.group_mask = moe::GroupMask::zero;
    check_token(route_logits(config, z, bias), {0, 1}, {0.1 / 0.3 * 2.5, 0.2 / 0.3 * 2.5});
  }
  SECTION("Megatron-Core: top-k then softmax (default) and pre-softmax") {
    check_token(route_logits(moe::presets::megatron_topk(Hidden{1}, Experts{4}, 2, false),
                             {ln(1), ln(2), ln(3), ln(4)}),
                {3, 2}, {4.0 / 7, 3.0 / 7});
    check_token(route_logits(moe::presets::megatron_topk(Hidden{1}, Experts{4}, 2, true),
                             {ln(1), ln(2), ln(3), ln(4)}),
                {3, 2}, {0.4, 0.3});
    check_token(route_logits(moe::presets::megatron_sigmoid(Hidden{1}, Experts{4}, 2),
                             {logit(0.2), logit(0.5), logit(0.8), logit(0.6)}),
                {2, 3}, {0.8 / 1.4, 0.6 / 1.4});
  }
  SECTION("Qwen3-MoE renormalizes, OLMoE keeps raw probabilities") {
    check_token(route_logits(moe::presets::qwen3_moe(Hidden{1}, Experts{4}, 2),
                             {ln(1), ln(2), ln(3), ln(4)}),
                {3, 2}, {4.0 / 7, 3.0 / 7});
    check_token(
        route_logits(moe::presets::olmoe(Hidden{1}, Experts{4}, 2), {ln(1), ln(2), ln(3), ln(4)}),
        {3, 2}, {0.4, 0.3});
  }
  SECTION("GPT-OSS: biased logits, top-k, softmax over the k") {
    moe::RouterConfig c = moe::presets::gpt_oss(Hidden{1}, Experts{4}, 2);
    c.hidden = 1;
    moe::Router<double> router(c);
    router.weight << ln(1), ln(2), ln(3), ln(4);
    router.bias << ln(5), 0, 0, 0;  // expert 0's logit becomes ln 5, the best
    moe::RouterContext<double> ctx;
    check_token(router.forward(Matrix::Ones(1, 1), ctx, moe::Mode::eval), {0, 3},
                {5.0 / 9, 4.0 / 9});
  }
  SECTION("Llama 4: top-1, the sigmoid of the best logit") {
    check_token(route_logits(moe::presets::llama4(Hidden{1}, Experts{4}), {0, 2, 1, -1}), {1},
                {1 / (1 + std::exp(-2.0))});
  }
  SECTION("DeepSpeed top-2: raw probabilities of the two best") {
    check_token(route_logits(moe::presets::deepspeed_top2(Hidden{1}, Experts{4}),
                             {ln(1), ln(2), ln(3), ln(4)}),
                {3, 2}, {0.4, 0.3});
  }
}

TEST_CASE("top_k matches a stable sort for every k, with many ties and -inf", "[topk]") {
  const moe::CounterRng rng(5, 5);
  std::uint64_t draw = 0;
  for (Index experts : {1, 2, 7, 8, 17, 40}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<double> values(static_cast<std::size_t>(experts));
      for (double& v : values) {
        const double u = rng.uniform(draw++);
        v = u < 0.1 ? -std::numeric_limits<double>::infinity()
                    : std::floor(u * 5);  // few distinct values
      }
      for (Index k = 1; k <= experts; ++k) {
        std::vector<moe::ExpertId> ids(static_cast<std::size_t>(k));
        std::vector<double> selected(static_cast<std::size_t>(k));
        moe::top_k(values.data(), experts, k, ids.data(), selected.data());
        const auto expected = moe::test::reference_top_k(values, k);
        for (Index j = 0; j < k; ++j) {
          REQUIRE(ids[j] == expected[j]);
          REQUIRE(selected[j] == values[expected[j]]);
        }
      }
    }
  }
}

TEST_CASE("bad input raises moe::Error naming the argument", "[router][errors]") {
  moe::RouterConfig good;
  good.num_experts = 8;
  good.hidden = 4;
  good.top_k = 2;
  auto with = [&](auto change) {
    moe::RouterConfig c = good;
    change(c);
    return c;
  };
  using C = moe::RouterConfig;
  check_throws_naming([&] { moe::validate(with([](C& c) { c.top_k = 0; })); }, "top_k");
  check_throws_naming([&] { moe::validate(with([](C& c) { c.top_k = 9; })); }, "top_k");
  check_throws_naming([&] { moe::validate(with([](C& c) { c.num_experts = 0; })); }, "num_experts");
  check_throws_naming([&] { moe::validate(with([](C& c) { c.hidden = 0; })); }, "hidden");
  check_throws_naming([&] { moe::validate(with([](C& c) { c.num_groups = 3; })); }, "num_groups");
  check_throws_naming(
      [&] { moe::validate(with([](C& c) { c.num_groups = 4, c.groups_selected = 5; })); },
      "groups_selected");
  check_throws_naming(
      [&] { moe::validate(with([](C& c) { c.num_groups = 4, c.groups_selected = 0; })); },
      "groups_selected");
  check_throws_naming(
      [&] { moe::validate(with([](C& c) { c.num_groups = 8, c.groups_selected = 1; })); },
      "group_score");  // one expert per group has no top-2 sum
  check_throws_naming(
      [&] {
        moe::validate(with([](C& c) {
          c.num_groups = 8, c.groups_selected = 1, c.group_score = moe::GroupScore::max;
        }));
      },
      "groups_selected");  // 1 group of 1 expert cannot supply k = 2
  check_throws_naming([&] { moe::validate(with([](C& c) { c.scaling_factor = 0; })); },
                      "scaling_factor");
  check_throws_naming([&] { moe::validate(with([](C& c) { c.renormalize_epsilon = -1; })); },
                      "renormalize_epsilon");
  check_throws_naming([&] { moe::validate(with([](C& c) { c.jitter_epsilon = 1.0; })); },
                      "jitter_epsilon");
  check_throws_naming(
      [&] {
        moe::validate(with([](C& c) {
          c.score = moe::ScoreFunction::sigmoid;
          c.softmax_order = moe::SoftmaxOrder::topk_then_softmax;
        }));
      },
      "softmax_order");
  check_throws_naming([&] { moe::Router<float> r(with([](C& c) { c.top_k = 0; })); }, "top_k");

  moe::Router<double> router(good);
  moe::RouterContext<double> ctx;
  check_throws_naming([&] { router.forward(Matrix::Zero(3, 5), ctx, moe::Mode::eval); }, "x");
  moe::Router<double> bad_weight = router;
  bad_weight.config.hidden =
      3;  // parameter shapes are fixed: a config edited afterwards mismatches
  check_throws_naming([&] { bad_weight.forward(Matrix::Zero(3, 3), ctx, moe::Mode::eval); },
                      "Router::weight");
  const moe::Vector<double> short_bias = moe::Vector<double>::Zero(3);
  moe::Routing<double> routing;
  Matrix selection;
  check_throws_naming(
      [&] {
        moe::select_experts<double>(good, Matrix::Zero(3, 8), short_bias, routing, selection);
      },
      "selection_bias");
  Matrix x = Matrix::Zero(3, 4);
  x(1, 2) = std::numeric_limits<double>::quiet_NaN();
  check_throws_naming([&] { router.forward(x, ctx, moe::Mode::eval); }, "x");
  moe::Router<double> huge = router;
  huge.weight.setConstant(std::numeric_limits<double>::max());
  check_throws_naming([&] { huge.forward(Matrix::Ones(2, 4), ctx, moe::Mode::eval); }, "logits");

  router.forward(Matrix::Zero(3, 4), ctx, moe::Mode::eval);
  check_throws_naming(
      [&] {
        router.backward(Matrix::Zero(3, 4), ctx, {Matrix::Zero(3, 3), {}, {}});
      },
      "upstream.gates");
  check_throws_naming(
      [&] {
        router.backward(Matrix::Zero(3, 4), ctx, {Matrix::Zero(3, 2), Matrix::Zero(3, 7), {}});
      },
      "upstream.scores");
  check_throws_naming([&] { router.backward(Matrix::Zero(2, 4), ctx, {}); }, "x");
}

TEST_CASE("T = 0 routes nothing and differentiates to empty gradients", "[router][edge]") {
  moe::RouterConfig c;
  c.num_experts = 4;
  c.hidden = 3;
  c.top_k = 2;
  moe::Router<float> router(c);
  moe::RouterContext<float> ctx;
  const auto& r = router.forward(moe::RowMatrix<float>(0, 3), ctx, moe::Mode::train, 1);
  CHECK(r.num_tokens() == 0);
  CHECK(r.gates.rows() == 0);
  const auto g = router.backward(moe::RowMatrix<float>(0, 3), ctx, {});
  CHECK(g.x.rows() == 0);
  CHECK(g.weight.isZero());
}
