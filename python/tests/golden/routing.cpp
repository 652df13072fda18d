// The routing part's golden results: select_experts, replay_experts and select_experts_backward
// for four configurations, and the Router's forward, replay, backward and init_weights, in float
// and double. Files are <case>_<f32|f64>_<what>.npy; test_routing.py rebuilds the same inputs.
#include <cstdint>
#include <string>
#include <type_traits>

#include "areas.hpp"
#include "inputs.hpp"
#include "moe/moe.hpp"
#include "npy.hpp"

namespace moe::golden {

namespace {

// Token counts that are not a multiple of any SIMD width, so the kernels' tails run too.
constexpr Index kTokens = 37;
constexpr Index kRouterTokens = 29;
constexpr Index kRouterHidden = 24;

template <class S>
std::string prefix(const std::string& dir, const std::string& name) {
  return dir + "/" + name + (std::is_same_v<S, float> ? "_f32_" : "_f64_");
}

// Scaled down so that logits stay in the range where softmax and sigmoid are not saturated; a
// division by 64 keeps every value exactly representable (n / 16384).
template <class S>
RowMatrix<S> small_inputs(Index rows, Index cols, long salt) {
  return exact_inputs<S>(rows, cols, salt) / S(64);
}

template <class S>
void write_routing(const std::string& p, const Routing<S>& r) {
  write_npy(p + "expert_ids.npy", r.expert_ids);
  write_npy(p + "gates.npy", r.gates);
  write_npy(p + "scores.npy", r.scores);
  if (r.logits.size() != 0) write_npy(p + "logits.npy", r.logits);
}

// select_experts on exact_inputs(T, E, salt) logits, then its backward with grad_gates =
// exact_inputs(T, k, 5), with and without grad_scores = exact_inputs(T, E, 6).
template <class S>
void selection_case(const std::string& dir, const std::string& name, const RouterConfig& config,
                    long salt, const Vector<S>& selection_bias = Vector<S>()) {
  const std::string p = prefix<S>(dir, name);
  const RowMatrix<S> logits = exact_inputs<S>(kTokens, config.num_experts, salt);
  Routing<S> routing;
  RowMatrix<S> selection;
  select_experts<S>(config, logits, selection_bias, routing, selection);
  write_routing(p, routing);

  const RowMatrix<S> grad_gates = exact_inputs<S>(kTokens, config.top_k, 5);
  const RowMatrix<S> grad_scores = exact_inputs<S>(kTokens, config.num_experts, 6);
  write_npy(p + "grad_logits.npy",
            select_experts_backward<S>(config, logits, routing, grad_gates, grad_scores));
  write_npy(p + "grad_logits_gates_only.npy",
            select_experts_backward<S>(config, logits, routing, grad_gates, RowMatrix<S>()));
}

// Recorded ids for a replay: k distinct experts per row, the last slot unused in every fifth row.
ExpertIdMatrix recorded_ids(Index tokens, Index experts, Index k) {
  ExpertIdMatrix ids(tokens, k);
  for (Index t = 0; t < tokens; ++t)
    for (Index j = 0; j < k; ++j) ids(t, j) = static_cast<ExpertId>((t + 3 * j) % experts);
  for (Index t = 0; t < tokens; t += 5) ids(t, k - 1) = kUnusedSlot;
  return ids;
}

template <class S>
void selections(const std::string& dir) {
  const RouterConfig mixtral = presets::mixtral(presets::Hidden{16}, presets::Experts{8});
  selection_case<S>(dir, "mixtral", mixtral, 1);

  const RouterConfig deepseek = presets::deepseek_v3(presets::Hidden{16}, presets::Experts{32},
                                                     /*top_k=*/4, /*num_groups=*/4,
                                                     /*groups_selected=*/2);
  const Vector<S> bias = small_inputs<S>(1, 32, 3).row(0).transpose();
  selection_case<S>(dir, "deepseek", deepseek, 2, bias);

  const RouterConfig topk_softmax = presets::megatron_topk(
      presets::Hidden{16}, presets::Experts{16}, /*top_k=*/3, /*pre_softmax=*/false);
  selection_case<S>(dir, "topk_softmax", topk_softmax, 4);

  RouterConfig adaptive = presets::mixtral(presets::Hidden{16}, presets::Experts{8}, 4);
  adaptive.active_top_k = 3;
  adaptive.min_top_k = 1;
  adaptive.top_k_threshold = 0.5;
  selection_case<S>(dir, "adaptive", adaptive, 7);

  const ExpertIdMatrix ids = recorded_ids(kTokens, mixtral.num_experts, mixtral.top_k);
  write_npy(prefix<S>(dir, "replay") + "recorded_ids.npy", ids);
  Routing<S> replayed;
  replay_experts<S>(mixtral, exact_inputs<S>(kTokens, 8, 1), ids, replayed);
  write_routing(prefix<S>(dir, "replay"), replayed);
}

// A Router with weight = small_inputs(E, d, 20) (bias small_inputs(1, E, 21), noise_weight
// small_inputs(E, d, 22), selection bias small_inputs(1, E, 23) where the config has them), a
// forward over x = exact_inputs(T, d, 24) in `mode` with `seed`, and its backward for upstream
// gates exact_inputs(T, k, 25), scores exact_inputs(T, E, 26) and logits exact_inputs(T, E, 27).
template <class S>
void router_case(const std::string& dir, const std::string& name, const RouterConfig& config,
                 Mode mode, std::uint64_t seed, bool selection_bias = false) {
  const std::string p = prefix<S>(dir, name);
  const Index experts = config.num_experts, d = config.hidden, k = config.top_k;
  Router<S> router(config);
  router.weight = small_inputs<S>(experts, d, 20);
  if (config.linear_bias) router.bias = small_inputs<S>(1, experts, 21).row(0).transpose();
  if (config.noise == Noise::noisy_topk) router.noise_weight = small_inputs<S>(experts, d, 22);
  if (selection_bias) router.selection_bias = small_inputs<S>(1, experts, 23).row(0).transpose();

  const RowMatrix<S> x = exact_inputs<S>(kRouterTokens, d, 24);
  RouterContext<S> ctx;
  write_routing(p, router.forward(x, ctx, mode, seed));

  RouterUpstream<S> upstream;
  upstream.gates = exact_inputs<S>(kRouterTokens, k, 25);
  upstream.scores = exact_inputs<S>(kRouterTokens, experts, 26);
  upstream.logits = exact_inputs<S>(kRouterTokens, experts, 27);
  const RouterGradients<S> grads = router.backward(x, ctx, upstream);
  write_npy(p + "grad_x.npy", grads.x);
  write_npy(p + "grad_weight.npy", grads.weight);
  write_npy(p + "grad_bias.npy", grads.bias);
  if (grads.noise_weight.size() != 0) write_npy(p + "grad_noise_weight.npy", grads.noise_weight);
}

template <class S>
void routers(const std::string& dir) {
  using presets::Experts;
  using presets::Hidden;
  const RouterConfig gpt_oss = presets::gpt_oss(Hidden{kRouterHidden}, Experts{8}, 2);
  router_case<S>(dir, "router_gpt_oss", gpt_oss, Mode::eval, 0);
  router_case<S>(dir, "router_deepseek",
                 presets::deepseek_v3(Hidden{kRouterHidden}, Experts{16}, 4, 4, 2), Mode::eval, 0,
                 /*selection_bias=*/true);
  RouterConfig noisy = presets::mixtral(Hidden{kRouterHidden}, Experts{8});
  noisy.noise = Noise::noisy_topk;
  router_case<S>(dir, "router_noisy", noisy, Mode::train, 3);
  router_case<S>(dir, "router_switch",
                 presets::switch_transformer(Hidden{kRouterHidden}, Experts{8}), Mode::train, 11);

  // Router::replay of recorded ids (eval), on the gpt-oss router's weights and input.
  Router<S> router(gpt_oss);
  router.weight = small_inputs<S>(8, kRouterHidden, 20);
  router.bias = small_inputs<S>(1, 8, 21).row(0).transpose();
  RouterContext<S> ctx;
  const ExpertIdMatrix ids = recorded_ids(kRouterTokens, 8, 2);
  write_routing(
      prefix<S>(dir, "router_replay"),
      router.replay(exact_inputs<S>(kRouterTokens, kRouterHidden, 24), ids, ctx, Mode::eval, 0));

  router.init_weights(/*seed=*/42, /*stddev=*/0.02);
  write_npy(prefix<S>(dir, "router_init") + "weight.npy", router.weight);
}

}  // namespace

void routing(const std::string& dir) {
  selections<float>(dir);
  selections<double>(dir);
  routers<float>(dir);
  routers<double>(dir);
}

}  // namespace moe::golden
