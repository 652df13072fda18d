// Dispatch / combine and their backward against the dense one-hot reference and central finite
// differences; expert choice routing against a full-sort reference.
#include <moe/dispatch/capacity_planner.hpp>
#include <moe/dispatch/dispatch.hpp>
#include <moe/dispatch/expert_choice.hpp>
#include <moe/routing/presets.hpp>
#include <moe/routing/router.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "dispatch/test_util.hpp"
#include "support/dispatch_reference.hpp"
#include "support/finite_difference.hpp"

using moe::CapacityConfig;
using moe::CapacityPlan;
using moe::CapacityRounding;
using moe::DropPolicy;
using moe::Index;
using moe::Mode;
using moe::RowMatrix;
using moe::Vector;

namespace {

CapacityPlan<double> random_plan(Index tokens, Index experts, Index k, std::uint64_t seed,
                                 DropPolicy policy, double factor, bool renormalize,
                                 moe::test::SyntheticRouting* routing_out = nullptr) {
  auto r = moe::test::synthetic_routing(tokens, experts, k, seed, moe::test::Load::skewed);
  CapacityConfig config;
  config.policy = policy;
  config.train_factor = factor;
  config.renormalize_survivors = renormalize;
  if (routing_out) *routing_out = r;
  return moe::make_capacity_plan<double>(r.ids, r.gates, experts, config, Mode::train, seed);
}

// Per-plan [T, k] weights and reference slots, for the dense reference.
moe::test::DenseRouting dense_of(const CapacityPlan<double>& plan) {
  moe::test::ReferenceSlots slots;
  slots.capacity = plan.capacity;
  slots.slot.resize(plan.num_tokens, plan.top_k);
  RowMatrix<double> weights(plan.num_tokens, plan.top_k);
  for (Index t = 0; t < plan.num_tokens; ++t)
    for (Index j = 0; j < plan.top_k; ++j) {
      slots.slot(t, j) = plan.entry_slot[plan.entry(t, j)];
      weights(t, j) = plan.entry_weight[plan.entry(t, j)];
    }
  return moe::test::dense_routing(slots, weights, plan.num_experts);
}

}  // namespace

TEST_CASE("dispatch and combine match the dense one-hot reference", "[dispatch][reference]") {
  std::uint64_t seed = 100;
  for (auto policy : {DropPolicy::position, DropPolicy::choice_major, DropPolicy::probability,
                      DropPolicy::batch_prioritized, DropPolicy::random})
    for (bool renormalize : {false, true})
      for (double factor : {0.5, 1.0, 3.0}) {
        ++seed;
        const Index tokens = 23, experts = 5, k = 2, d = 7;
        auto plan = random_plan(tokens, experts, k, seed, policy, factor, renormalize);
        auto dense = dense_of(plan);
        RowMatrix<double> x = moe::test::random_matrix(tokens, d, seed);
        RowMatrix<double> buffer = moe::dispatch(plan, x);
        CHECK(buffer == moe::test::dense_dispatch(dense, x));  // copies are exact
        RowMatrix<double> out = moe::test::random_matrix(plan.num_slots(), d, seed + 1);
        RowMatrix<double> y = moe::combine(plan, out);
        CHECK(moe::test::relative_error(y, moe::test::dense_combine(dense, out)) < 1e-14);

        // float agrees with the double reference to float precision
        RowMatrix<float> xf = x.cast<float>();
        auto r = moe::test::synthetic_routing(tokens, experts, k, seed, moe::test::Load::skewed);
        CapacityConfig config;
        config.policy = policy;
        config.train_factor = factor;
        config.renormalize_survivors = renormalize;
        RowMatrix<float> gf = r.gates.cast<float>();
        auto planf = moe::make_capacity_plan<float>(r.ids, gf, experts, config, Mode::train, seed);
        CHECK(planf.entry_slot == plan.entry_slot);
        RowMatrix<float> yf = moe::combine(planf, RowMatrix<float>(out.cast<float>()));
        CHECK(moe::test::relative_error(yf.cast<double>(), y) < 1e-5);
      }
}

TEST_CASE("combine after dispatch is the gate-weighted identity when nothing drops",
          "[dispatch][invariant]") {
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    const Index tokens = 5 + static_cast<Index>(seed * 7 % 40);
    const Index experts = 1 + static_cast<Index>(seed % 6);
    const Index k = 1 + static_cast<Index>(seed % static_cast<std::uint64_t>(experts));
    const Index d = 1 + static_cast<Index>(seed % 9);
    moe::test::SyntheticRouting r;
    // Factor E makes C = T·k >= any expert's load: nothing can drop.
    auto plan = random_plan(tokens, experts, k, seed, DropPolicy::choice_major,
                            static_cast<double>(experts), false, &r);
    REQUIRE(plan.total_dropped == 0);
    RowMatrix<double> x = moe::test::random_matrix(tokens, d, seed);
    RowMatrix<double> y = moe::combine(plan, RowMatrix<double>(moe::dispatch(plan, x)));
    RowMatrix<double> expected = r.gates.rowwise().sum().asDiagonal() * x;
    CHECK(moe::test::relative_error(y, expected) < 1e-14);
    // Renormalized weights sum to one: the round trip is the identity.
    auto renorm = random_plan(tokens, experts, k, seed, DropPolicy::choice_major,
                              static_cast<double>(experts), true);
    RowMatrix<double> same = moe::combine(renorm, RowMatrix<double>(moe::dispatch(renorm, x)));
    CHECK(moe::test::relative_error(same, x) < 1e-14);
    // dispatch_backward is the adjoint of dispatch: <dispatch(x), B> = <x, dispatch^T(B)>.
    RowMatrix<double> b = moe::test::random_matrix(plan.num_slots(), d, seed + 9);
    const double lhs = moe::dispatch(plan, x).cwiseProduct(b).sum();
    const double rhs = x.cwiseProduct(moe::dispatch_backward(plan, b)).sum();
    CHECK(lhs == Approx(rhs).epsilon(1e-12));
  }
}

TEST_CASE("dropped choices add nothing; empty slots are zero", "[dispatch][drop]") {
  moe::ExpertIdMatrix ids(3, 1);
  ids << 0, 0, 1;
  RowMatrix<double> gates(3, 1);
  gates << 0.5, 0.25, 0.75;
  CapacityConfig config;
  config.rounding = CapacityRounding::fixed;
  config.fixed_capacity = 1;
  auto plan = moe::make_capacity_plan<double>(ids, gates, 3, config, Mode::train);
  RowMatrix<double> x(3, 2);
  x << 1, 2, 3, 4, 5, 6;
  RowMatrix<double> buffer = RowMatrix<double>::Constant(3, 2, 42.0);  // stale contents
  moe::dispatch(plan, x, buffer);
  RowMatrix<double> expected_buffer(3, 2);
  expected_buffer << 1, 2, 5, 6, 0, 0;
  CHECK(buffer == expected_buffer);
  RowMatrix<double> y = RowMatrix<double>::Constant(3, 2, 42.0);
  moe::combine(plan, buffer, y);
  RowMatrix<double> expected_y(3, 2);
  expected_y << 0.5, 1.0, 0, 0, 3.75, 4.5;
  CHECK(y == expected_y);
  RowMatrix<double> grad_x = moe::dispatch_backward(plan, RowMatrix<double>::Ones(3, 2));
  RowMatrix<double> expected_grad(3, 2);
  expected_grad << 1, 1, 0, 0, 1, 1;
  CHECK(grad_x == expected_grad);
}

TEST_CASE("dispatch backward matches finite differences", "[dispatch][gradient]") {
  for (auto policy : {DropPolicy::position, DropPolicy::probability}) {
    auto plan = random_plan(9, 3, 2, 7, policy, 0.7, false);
    RowMatrix<double> x = moe::test::random_matrix(9, 4, 1);
    RowMatrix<double> upstream = moe::test::random_matrix(plan.num_slots(), 4, 2);
    auto loss = [&] { return moe::dispatch(plan, x).cwiseProduct(upstream).sum(); };
    RowMatrix<double> numeric = moe::test::numerical_gradient(x, loss);
    CHECK(moe::test::relative_error(moe::dispatch_backward(plan, upstream), numeric) < 1e-8);
  }
}

TEST_CASE("combine backward matches finite differences for outputs and gates",
          "[dispatch][gradient]") {
  for (bool renormalize : {false, true})
    for (auto policy : {DropPolicy::position, DropPolicy::choice_major}) {
      // position and choice-major keep the same entries under small gate changes.
      const Index tokens = 11, experts = 4, k = 3, d = 5;
      auto r = moe::test::synthetic_routing(tokens, experts, k, 17, moe::test::Load::skewed);
      CapacityConfig config;
      config.policy = policy;
      config.train_factor = 0.6;
      config.renormalize_survivors = renormalize;
      auto plan = moe::make_capacity_plan<double>(r.ids, r.gates, experts, config, Mode::train);
      REQUIRE(plan.total_dropped > 0);
      RowMatrix<double> out = moe::test::random_matrix(plan.num_slots(), d, 3);
      RowMatrix<double> upstream = moe::test::random_matrix(tokens, d, 4);
      auto grads = moe::combine_backward(plan, out, upstream);

      auto loss_out = [&] { return moe::combine(plan, out).cwiseProduct(upstream).sum(); };
      RowMatrix<double> numeric_out = moe::test::numerical_gradient(out, loss_out);
      CHECK(moe::test::relative_error(grads.expert_out, numeric_out) < 1e-8);

      RowMatrix<double> gates = r.gates;
      auto loss_gates = [&] {
        auto p = moe::make_capacity_plan<double>(r.ids, gates, experts, config, Mode::train);
        return moe::combine(p, out).cwiseProduct(upstream).sum();
      };
      RowMatrix<double> numeric_gates = moe::test::numerical_gradient(gates, loss_gates);
      RowMatrix<double> analytic = moe::capacity_plan_backward(plan, grads.weight);
      INFO("renormalize " << renormalize);
      CHECK(moe::test::relative_error(analytic, numeric_gates) < 1e-7);
    }
}

TEST_CASE("the full chain dispatch -> expert -> combine differentiates to x",
          "[dispatch][gradient]") {
  auto plan = random_plan(10, 3, 2, 21, DropPolicy::probability, 0.8, true);
  const Index d = 3;
  RowMatrix<double> x = moe::test::random_matrix(10, d, 5);
  RowMatrix<double> upstream = moe::test::random_matrix(10, d, 6);
  auto expert = [&](const RowMatrix<double>& in) {  // expert e: (e + 1) · tanh(in)
    RowMatrix<double> o = in.array().tanh();
    for (Index s = 0; s < o.rows(); ++s) o.row(s) *= static_cast<double>(s / plan.capacity + 1);
    return o;
  };
  auto loss = [&] {
    return moe::combine(plan, expert(moe::dispatch(plan, x))).cwiseProduct(upstream).sum();
  };
  RowMatrix<double> buffer = moe::dispatch(plan, x);
  auto grads = moe::combine_backward(plan, expert(buffer), upstream);
  RowMatrix<double> grad_buffer = grads.expert_out;
  for (Index s = 0; s < buffer.rows(); ++s)
    for (Index m = 0; m < d; ++m)
      grad_buffer(s, m) *= static_cast<double>(s / plan.capacity + 1) *
                           (1.0 - std::tanh(buffer(s, m)) * std::tanh(buffer(s, m)));
  RowMatrix<double> analytic = moe::dispatch_backward(plan, grad_buffer);
  CHECK(moe::test::relative_error(analytic, moe::test::numerical_gradient(x, loss)) < 1e-8);
}

TEST_CASE("renormalization backward when every survivor weight is below epsilon",
          "[dispatch][gradient]") {
  moe::ExpertIdMatrix ids(1, 2);
  ids << 0, 1;
  RowMatrix<double> gates(1, 2);
  gates << 1e-20, 3e-20;
  CapacityConfig config;
  config.renormalize_survivors = true;
  config.train_factor = 2.0;
  auto plan = moe::make_capacity_plan<double>(ids, gates, 2, config, Mode::train);
  const double eps = std::numeric_limits<double>::epsilon();
  CHECK(plan.entry_weight[0] == Approx(1e-20 / eps));
  Vector<double> grad_w(2);
  grad_w << 2.0, 5.0;
  RowMatrix<double> g = moe::capacity_plan_backward(plan, grad_w);
  CHECK(g(0, 0) == Approx(2.0 / eps));  // the clamped denominator is a constant
  CHECK(g(0, 1) == Approx(5.0 / eps));
}

TEST_CASE("expert choice matches the full-sort reference", "[expert_choice][reference]") {
  std::uint64_t seed = 300;
  for (Index tokens : {Index(1), Index(6), Index(40)})
    for (Index experts : {Index(1), Index(4), Index(9)})
      for (double factor : {0.3, 1.0, 2.0, 20.0})
        for (Index group : {Index(0), Index(2)}) {
          if (group > 0 && tokens % group != 0) continue;
          ++seed;
          RowMatrix<double> scores = moe::test::random_matrix(tokens, experts, seed);
          scores = (scores * 2.0).array().round() / 2.0;  // ties on purpose
          moe::ExpertChoiceConfig config;
          config.train_factor = factor;
          config.group_size = group;
          auto plan = moe::make_expert_choice_plan<double>(scores, config, Mode::train);
          auto chosen = moe::test::reference_expert_choice(scores, group, plan.group_capacity);
          INFO("T=" << tokens << " E=" << experts << " cf=" << factor << " group=" << group);
          Index total = 0;
          for (Index e = 0; e < experts; ++e) {
            const auto& want = chosen[static_cast<std::size_t>(e)];
            CHECK(plan.kept[e] == static_cast<Index>(want.size()));
            for (std::size_t c = 0; c < want.size(); ++c) {
              const Index s = e * plan.capacity + static_cast<Index>(c);
              CHECK(plan.slot_token[s] == want[c]);
              CHECK(plan.entry_weight[plan.slot_entry[s]] == scores(want[c], e));
            }
            total += static_cast<Index>(want.size());
          }
          CHECK(plan.total_kept == total);
          CHECK(plan.total_dropped == 0);
          CHECK(plan.num_entries() == total);
          // Token side lists each token's experts in ascending id.
          Index without = 0;
          for (Index t = 0; t < tokens; ++t) {
            if (plan.choices(t) == 0) ++without;
            for (Index i = plan.token_offsets[t] + 1; i < plan.token_offsets[t + 1]; ++i)
              CHECK(plan.entry_expert[i - 1] < plan.entry_expert[i]);
          }
          CHECK(plan.tokens_without_expert == without);
          // The same kernels combine it: y = Σ_e∈chosen(t) s_te · x_t for an identity expert.
          RowMatrix<double> x = moe::test::random_matrix(tokens, 3, seed + 1);
          RowMatrix<double> y = moe::combine(plan, RowMatrix<double>(moe::dispatch(plan, x)));
          for (Index t = 0; t < tokens; ++t) {
            double w = 0.0;
            for (Index i = plan.token_offsets[t]; i < plan.token_offsets[t + 1]; ++i)
              w += scores(t, plan.entry_expert[i]);
            CHECK((y.row(t) - w * x.row(t)).cwiseAbs().maxCoeff() < 1e-14);
          }
        }
}

TEST_CASE("expert choice by hand", "[expert_choice]") {
  RowMatrix<double> scores(4, 2);
  scores << 0.9, 0.1,  //
      0.2, 0.8,        //
      0.6, 0.4,        //
      0.6, 0.4;
  moe::ExpertChoiceConfig config;
  config.train_factor = 1.0;  // C = round(4 / 2) = 2
  auto plan = moe::make_expert_choice_plan<double>(scores, config, Mode::train);
  REQUIRE(plan.capacity == 2);
  // Expert 0: token 0 (.9), then token 2 (.6, tie with token 3 broken to the lower index).
  CHECK(plan.slot_token[0] == 0);
  CHECK(plan.slot_token[1] == 2);
  // Expert 1: token 1 (.8), then token 2 (.4, tie with token 3).
  CHECK(plan.slot_token[2] == 1);
  CHECK(plan.slot_token[3] == 2);
  CHECK(plan.choices(2) == 2);
  CHECK(plan.choices(3) == 0);
  CHECK(plan.tokens_without_expert == 1);
  CHECK(plan.top_k == 0);
  // C larger than T: every expert takes every token, the extra slots stay empty.
  config.train_factor = 4.0;  // C = 8
  auto all = moe::make_expert_choice_plan<double>(scores, config, Mode::train);
  CHECK(all.capacity == 8);
  CHECK(all.kept[0] == 4);
  CHECK(all.slot_token[4] == -1);
  CHECK(all.tokens_without_expert == 0);
  // eval factor
  config.eval_factor = 0.5;  // round(1) = 1
  CHECK(moe::make_expert_choice_plan<double>(scores, config, Mode::eval).capacity == 1);
  // T = 0
  RowMatrix<double> none(0, 3);
  auto empty = moe::make_expert_choice_plan<double>(none, config, Mode::train);
  CHECK(empty.num_entries() == 0);
  CHECK(empty.capacity == 0);
}

TEST_CASE("expert choice backward matches finite differences", "[expert_choice][gradient]") {
  RowMatrix<double> scores = moe::test::random_matrix(8, 3, 41);
  moe::ExpertChoiceConfig config;
  config.train_factor = 1.5;
  auto plan = moe::make_expert_choice_plan<double>(scores, config, Mode::train);
  RowMatrix<double> out = moe::test::random_matrix(plan.num_slots(), 4, 42);
  RowMatrix<double> upstream = moe::test::random_matrix(8, 4, 43);
  auto loss = [&] {
    auto p = moe::make_expert_choice_plan<double>(scores, config, Mode::train);
    return moe::combine(p, out).cwiseProduct(upstream).sum();
  };
  auto grads = moe::combine_backward(plan, out, upstream);
  RowMatrix<double> analytic = moe::expert_choice_backward(plan, grads.weight);
  CHECK(moe::test::relative_error(analytic, moe::test::numerical_gradient(scores, loss)) < 1e-8);
  CHECK_THROWS_WITH(moe::capacity_plan_backward(plan, grads.weight), MOE_CONTAINS("expert_choice"));
}

TEST_CASE("bad dispatch, combine and expert choice input throws moe::Error", "[dispatch][errors]") {
  auto plan = random_plan(6, 3, 2, 9, DropPolicy::position, 1.0, false);
  const Index slots = plan.num_slots();
  RowMatrix<double> x(5, 4);
  x.setZero();
  CHECK_THROWS_WITH(moe::dispatch(plan, x), MOE_CONTAINS("x: expected shape [6, *], got [5, 4]"));
  RowMatrix<double> x6 = RowMatrix<double>::Zero(6, 4);
  RowMatrix<double> small(slots - 1, 4);
  CHECK_THROWS_WITH(moe::dispatch(plan, x6, small), MOE_CONTAINS("buffer"));
  RowMatrix<double> wide(slots, 5);
  CHECK_THROWS_WITH(moe::dispatch(plan, x6, wide), MOE_CONTAINS("buffer"));
  CHECK_THROWS_WITH(moe::combine(plan, small), MOE_CONTAINS("expert_out"));
  RowMatrix<double> out = RowMatrix<double>::Zero(slots, 4);
  RowMatrix<double> y_bad(6, 3);
  CHECK_THROWS_WITH(moe::combine(plan, out, y_bad), MOE_CONTAINS("y:"));
  CHECK_THROWS_WITH(moe::dispatch_backward(plan, small), MOE_CONTAINS("grad_buffer"));
  RowMatrix<double> gx_bad(7, 4);
  CHECK_THROWS_WITH(moe::dispatch_backward(plan, out, gx_bad), MOE_CONTAINS("grad_x"));
  CHECK_THROWS_WITH(moe::combine_backward(plan, out, x), MOE_CONTAINS("grad_y"));
  CHECK_THROWS_WITH(moe::combine_backward(plan, small, x6), MOE_CONTAINS("expert_out"));
  RowMatrix<double> geo_bad(slots, 3);
  Vector<double> gw(plan.num_entries());
  CHECK_THROWS_WITH(moe::combine_backward(plan, out, x6, geo_bad, gw),
                    MOE_CONTAINS("grad_expert_out"));
  RowMatrix<double> geo(slots, 4);
  Vector<double> gw_bad(plan.num_entries() + 1);
  CHECK_THROWS_WITH(moe::combine_backward(plan, out, x6, geo, gw_bad), MOE_CONTAINS("grad_weight"));
  CHECK_THROWS_WITH(moe::capacity_plan_backward(plan, gw_bad), MOE_CONTAINS("grad_weight"));
  CHECK_THROWS_WITH(moe::expert_choice_backward(plan, gw_bad), MOE_CONTAINS("grad_weight"));
  auto broken = plan;
  broken.slot_token.resize(2);
  CHECK_THROWS_WITH(moe::dispatch(broken, x6), MOE_CONTAINS("plan.slot_token"));
  broken = plan;
  broken.token_offsets.resize(3);
  CHECK_THROWS_WITH(moe::combine(broken, out), MOE_CONTAINS("plan.token_offsets"));

  moe::ExpertChoiceConfig config;
  RowMatrix<double> no_experts(4, 0);
  CHECK_THROWS_WITH(moe::make_expert_choice_plan<double>(no_experts, config, Mode::train),
                    MOE_CONTAINS("scores"));
  RowMatrix<double> inf = RowMatrix<double>::Zero(4, 2);
  inf(1, 1) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(moe::make_expert_choice_plan<double>(inf, config, Mode::train),
                    MOE_CONTAINS("scores: expected finite values"));
  config.group_size = 3;
  CHECK_THROWS_WITH(
      moe::make_expert_choice_plan<double>(RowMatrix<double>::Zero(4, 2), config, Mode::train),
      MOE_CONTAINS("group_size"));
  config.group_size = 0;
  config.train_factor = 0.0;
  CHECK_THROWS_WITH(
      moe::make_expert_choice_plan<double>(RowMatrix<double>::Zero(4, 2), config, Mode::train),
      MOE_CONTAINS("train_factor"));
}

TEST_CASE("router -> capacity plan -> combine differentiates to the router weight",
          "[dispatch][gradient][router]") {
  const Index tokens = 12, hidden = 4, experts = 4;
  moe::Router<double> router(
      moe::presets::mixtral(moe::presets::Hidden{hidden}, moe::presets::Experts{experts}, 2));
  router.init_weights(3, 0.7);
  RowMatrix<double> x = moe::test::random_matrix(tokens, hidden, 31);
  RowMatrix<double> upstream = moe::test::random_matrix(tokens, hidden, 32);
  CapacityConfig config;
  config.train_factor = 0.6;  // C = ceil(12 * 2 / 4 * 0.6) = 4: drops happen
  config.policy = DropPolicy::position;
  config.renormalize_survivors = true;
  auto expert = [](const CapacityPlan<double>& plan, const RowMatrix<double>& in) {
    RowMatrix<double> out = in.array().sin();
    for (Index s = 0; s < out.rows(); ++s) out.row(s) *= static_cast<double>(s / plan.capacity + 1);
    return out;
  };
  auto loss = [&] {
    moe::RouterContext<double> ctx;
    const auto& routing = router.forward(x, ctx, Mode::eval);
    auto plan = moe::make_capacity_plan(routing, config, Mode::eval);
    return moe::combine(plan, expert(plan, moe::dispatch(plan, x))).cwiseProduct(upstream).sum();
  };
  moe::RouterContext<double> ctx;
  const auto& routing = router.forward(x, ctx, Mode::eval);
  auto plan = moe::make_capacity_plan(routing, config, Mode::eval);
  REQUIRE(plan.total_dropped > 0);
  auto grads = moe::combine_backward(plan, expert(plan, moe::dispatch(plan, x)), upstream);
  moe::RouterUpstream<double> up;
  up.gates = moe::capacity_plan_backward(plan, grads.weight);
  RowMatrix<double> analytic = router.backward(x, ctx, up).weight;
  RowMatrix<double> numeric = moe::test::numerical_gradient(router.weight, loss);
  CHECK(moe::test::relative_error(analytic, numeric) < 1e-6);
}
