// Quickstart: route a batch with a Mixtral-style router and look at where the tokens went.
#include <cstdio>

#include <moe/moe.hpp>

int main() {
  const moe::Index tokens = 512, hidden = 64, experts = 8;

  // A router with Mixtral's settings (softmax over E, top-2, renormalized) and random weights.
  moe::Router<float> router(
      moe::presets::mixtral(moe::presets::Hidden{hidden}, moe::presets::Experts{experts}));
  router.init_weights(/*seed=*/1, /*stddev=*/0.1);

  moe::RowMatrix<float> x(tokens, hidden);
  const moe::CounterRng rng(/*seed=*/2, /*stream=*/0);
  for (moe::Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.normal(i));

  moe::RouterContext<float> ctx;  // what backward needs; reuse it across steps
  const moe::Routing<float>& routing = router.forward(x, ctx, moe::Mode::eval);

  // Tokens per expert (hard counts over all k choices) and a check of the routing's invariants.
  moe::Vector<moe::Index> load = moe::Vector<moe::Index>::Zero(experts);
  bool ok = true;
  for (moe::Index t = 0; t < tokens; ++t) {
    for (moe::Index j = 0; j < routing.top_k(); ++j) ++load(routing.expert_ids(t, j));
    ok = ok && std::abs(routing.gates.row(t).sum() - 1.0f) < 1e-5f;  // renormalized top-2
    ok = ok && routing.expert_ids(t, 0) != routing.expert_ids(t, 1);
  }
  std::printf("expert  tokens  share\n");
  for (moe::Index e = 0; e < experts; ++e)
    std::printf(
        "%6ld  %6ld  %5.1f%%\n", static_cast<long>(e), static_cast<long>(load(e)),
        100.0 * static_cast<double>(load(e)) / static_cast<double>(tokens * routing.top_k()));
  ok = ok && load.sum() == tokens * routing.top_k();
  std::printf("%s\n", ok ? "quickstart: ok" : "quickstart: FAILED");
  return ok ? 0 : 1;
}
