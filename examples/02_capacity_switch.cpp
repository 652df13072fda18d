// Switch Transformer top-1 routing with capacity factor 1.25: route, dispatch into the padded
// [E, C, d] buffer, run one function per expert, combine, and report the drop rate.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include <moe/dispatch/capacity_planner.hpp>
#include <moe/dispatch/dispatch.hpp>
#include <moe/moe.hpp>

int main() {
  using S = float;
  const moe::Index tokens = 512, hidden = 64, experts = 8;

  // Switch router: softmax over E, top-1, the raw top-1 probability as the gate.
  moe::Router<S> router(moe::presets::switch_transformer(moe::presets::Hidden{hidden},
                                                         moe::presets::Experts{experts}));
  router.init_weights(/*seed=*/42, /*stddev=*/0.3);
  moe::RowMatrix<S> x(tokens, hidden);
  const moe::CounterRng rng(/*seed=*/7, /*stream=*/0);
  for (moe::Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<S>(rng.normal(i));
  moe::RouterContext<S> ctx;
  const moe::Routing<S>& routing = router.forward(x, ctx, moe::Mode::train, /*seed=*/1);

  // Capacity factor 1.25: C = ceil(T / E * 1.25) = 80; overflow dropped in token order.
  moe::CapacityConfig config;
  config.rounding = moe::CapacityRounding::megatron;
  config.train_factor = 1.25;
  config.policy = moe::DropPolicy::position;
  const auto plan = moe::make_capacity_plan(routing, config, moe::Mode::train);

  // Expert e: out = tanh(in) * (e + 1), run on its kept rows only.
  moe::RowMatrix<S> buffer = moe::dispatch(plan, x);
  moe::RowMatrix<S> expert_out = moe::RowMatrix<S>::Zero(buffer.rows(), hidden);
  for (moe::Index e = 0; e < experts; ++e)
    expert_out.middleRows(e * plan.capacity, plan.kept[e]) =
        buffer.middleRows(e * plan.capacity, plan.kept[e]).array().tanh() * static_cast<S>(e + 1);
  moe::RowMatrix<S> y = moe::combine(plan, expert_out);  // the layer output is x + y

  std::printf("capacity %lld per expert, kept %lld, dropped %lld, drop rate %.2f%%\n",
              static_cast<long long>(plan.capacity), static_cast<long long>(plan.total_kept),
              static_cast<long long>(plan.total_dropped), 100.0 * plan.drop_rate());
  for (moe::Index e = 0; e < experts; ++e)
    std::printf("  expert %lld: kept %lld dropped %lld\n", static_cast<long long>(e),
                static_cast<long long>(plan.kept[e]), static_cast<long long>(plan.dropped[e]));

  // Self-check against a direct loop: token t keeps its expert iff fewer than C earlier tokens
  // chose the same expert; then y[t] = p_t * (e + 1) * tanh(x[t]), else 0.
  bool ok = plan.capacity == 80 && plan.total_kept + plan.total_dropped == tokens;
  std::vector<moe::Index> seen(static_cast<std::size_t>(experts), 0);
  double worst = 0.0;
  for (moe::Index t = 0; t < tokens; ++t) {
    const moe::ExpertId e = routing.expert_ids(t, 0);
    const bool kept = seen[static_cast<std::size_t>(e)]++ < plan.capacity;
    for (moe::Index m = 0; m < hidden; ++m) {
      const double want =
          kept ? routing.gates(t, 0) * (e + 1) * std::tanh(static_cast<double>(x(t, m))) : 0.0;
      worst = std::max(worst, std::abs(want - static_cast<double>(y(t, m))));
    }
  }
  ok = ok && worst < 1e-5 && plan.total_dropped > 0;
  std::printf("max deviation from the direct loop: %.3g -> %s\n", worst, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
