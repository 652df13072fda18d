// MoELayer: router -> (dropless | capacity) dispatch -> expert FFNs -> combine, plus shared
// experts, the balancing losses, the bias balancer and the step's health report; forward and
// backward.
#pragma once

#include <cstdint>
#include <optional>

#include "moe/balance/bias_balancer.hpp"
#include "moe/dispatch/capacity_planner.hpp"
#include "moe/dispatch/capacity_stats.hpp"
#include "moe/dispatch/dispatch.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "moe/experts/capacity_ffn.hpp"
#include "moe/experts/dropless_ffn.hpp"
#include "moe/health/report.hpp"
#include "moe/layer/config.hpp"
#include "moe/layer/detail/routing_losses.hpp"
#include "moe/layer/detail/shared_expert.hpp"
#include "moe/routing/router.hpp"

namespace moe {

/// What forward saved for backward, and the buffers a step reuses. Owned by the caller.
template <class S>
struct MoELayerContext {
  Mode mode = Mode::eval;
  RouterContext<S> router;
  DroplessPlan plan;
  DroplessFFNContext<S> dropless;
  CapacityPlan<S> capacity_plan;
  CapacityFFNContext<S> capacity_ffn;
  RowMatrix<S> expert_in, expert_out;  ///< capacity buffers [E*C, d]
  detail::SharedExpertContext<S> shared;
  LossGradient<S> aux, z;  ///< values and their gradients (empty when off)
};

template <class S>
struct MoEOutput {
  RowMatrix<S> y;     ///< [T, d] routed (+ shared) experts' output; add the residual outside
  S aux_loss = S(0);  ///< coefficient included; 0 in eval or when off
  S z_loss = S(0);    ///< coefficient included; 0 in eval or when off
  HealthReport health;
};

template <class S>
struct MoEGradients {
  RowMatrix<S> x;
  RouterGradients<S> router;
  ExpertGradients<S> experts;
  ExpertGradients<S> shared;
  Vector<S> shared_gate;  ///< [d] when the shared expert is gated
};

/// One MoE layer with owned parameters. The training loop calls forward and backward each
/// micro-batch and step_balancer() once per optimizer step.
template <class S>
class MoELayer {
 public:
  MoELayerConfig config;
  Router<S> router;
  ExpertWeights<S> experts;
  ExpertWeights<S> shared;       ///< one expert of width shared.ffn_hidden, when configured
  Vector<S> shared_gate_weight;  ///< [d] when the shared expert is gated
  std::optional<BiasBalancer<S>> balancer;

  explicit MoELayer(const MoELayerConfig& layer_config)
      : config((validate(layer_config), layer_config)),
        router(config.router),
        experts(config.experts()) {
    if (config.shared.ffn_hidden > 0) shared = ExpertWeights<S>(config.shared_experts());
    if (config.shared.gated) shared_gate_weight = Vector<S>::Zero(config.router.hidden);
    if (config.bias_balancer) balancer.emplace(config.router.num_experts, *config.bias_balancer);
  }

  /// Router N(0, 0.02^2) (Megatron init_method_std), every expert matrix N(0, 1/d), all from
  /// `seed`.
  void init_weights(std::uint64_t seed) {
    router.init_weights(seed, kRouterInitStddev);
    experts.init_weights(seed + 1, config.expert_init_stddev());
    detail::init_shared_expert(config, seed, shared, shared_gate_weight);
  }

  /// y = sum_j w_tj FFN_{e_tj}(x_t) over kept choices (+ gate_t * FFN_shared(x_t)). In Mode::train
  /// it also computes the aux and z losses and counts loads for the bias balancer under
  /// `micro_batch`. `seed` drives router noise and random token selection; pass one per step.
  MoEOutput<S> forward(const ConstMatrixRef<S>& x, MoELayerContext<S>& ctx, Mode mode,
                       std::uint64_t seed = 0, Index micro_batch = 0) {
    ctx.mode = mode;
    const Routing<S>& routing = router.forward(x, ctx.router, mode, seed);
    MoEOutput<S> out;
    out.y.resize(x.rows(), config.router.hidden);

    if (config.dispatch == DispatchKind::dropless) {
      make_dropless_plan(routing.expert_ids, config.router.num_experts, config.block_size,
                         ctx.plan);
      dropless_ffn_forward<S>(experts, x, routing.gates, ctx.plan, ctx.dropless, out.y);
      out.health = health_report(routing);
    } else {
      ctx.capacity_plan = make_capacity_plan(routing, config.capacity, mode, seed);
      const CapacityPlan<S>& plan = ctx.capacity_plan;
      ctx.expert_in.resize(plan.num_slots(), config.router.hidden);
      ctx.expert_out.resize(plan.num_slots(), config.router.hidden);
      dispatch<S>(plan, x, ctx.expert_in);
      capacity_ffn_forward<S>(experts, ctx.expert_in, plan.capacity, plan.kept, ctx.capacity_ffn,
                              ctx.expert_out);
      combine<S>(plan, ctx.expert_out, out.y);
      out.health = health_report(routing, capacity_stats(plan));
    }

    if (config.shared.ffn_hidden > 0)
      detail::shared_expert_forward<S>(shared, shared_gate_weight, config.shared.gated,
                                       config.block_size, x, ctx.shared, out.y);

    ctx.aux = LossGradient<S>();
    ctx.z = LossGradient<S>();
    if (mode == Mode::train) {
      detail::routing_losses(config, routing, ctx.aux, ctx.z);
      out.aux_loss = ctx.aux.value;
      out.z_loss = ctx.z.value;
      if (balancer) {
        // loads after capacity drops (Megatron counts the final routing map)
        if (config.dispatch == DispatchKind::capacity)
          balancer->accumulate_counts(micro_batch, ctx.capacity_plan.kept);
        else
          balancer->accumulate(micro_batch, routing.expert_ids);
      }
    }
    return out;
  }

  /// Gradients of <grad_y, y> + aux_loss + z_loss with respect to x and every parameter.
  MoEGradients<S> backward(const ConstMatrixRef<S>& x, MoELayerContext<S>& ctx,
                           const ConstMatrixRef<S>& grad_y) {
    const Routing<S>& routing = ctx.router.routing;
    const Index tokens = routing.num_tokens(), d = config.router.hidden;
    require_shape(grad_y, "grad_y", tokens, d);
    require_shape(x, "x", tokens, d);
    MoEGradients<S> grads;
    grads.experts = ExpertGradients<S>(config.experts());
    grads.x.resize(tokens, d);
    RouterUpstream<S> upstream;
    upstream.gates.resize(tokens, config.router.top_k);

    if (config.dispatch == DispatchKind::dropless) {
      dropless_ffn_backward<S>(experts, grad_y, ctx.plan, ctx.dropless, grads.experts, grads.x,
                               upstream.gates);
    } else {
      const CapacityPlan<S>& plan = ctx.capacity_plan;
      const CombineGradients<S> combined = combine_backward<S>(plan, ctx.expert_out, grad_y);
      RowMatrix<S> grad_expert_in(plan.num_slots(), d);
      capacity_ffn_backward<S>(experts, combined.expert_out, ctx.capacity_ffn, grads.experts,
                               grad_expert_in);
      dispatch_backward<S>(plan, grad_expert_in, grads.x);
      upstream.gates = capacity_plan_backward<S>(plan, combined.weight);
    }

    if (config.shared.ffn_hidden > 0)
      detail::shared_expert_backward<S>(shared, shared_gate_weight, config.shared.gated, x,
                                        ctx.shared, grad_y, grads.shared, grads.shared_gate,
                                        grads.x);

    upstream.scores = ctx.aux.grad;
    upstream.logits = ctx.z.grad;
    grads.router = router.backward(x, ctx.router, upstream);
    grads.x += grads.router.x;
    return grads;
  }

  /// Once per optimizer step: the bias balancer updates from the loads of the step's micro-batches
  /// and hands its bias to the router's selection (Wang et al. 2024; DeepSeek-V3).
  void step_balancer() {
    require(balancer.has_value(), "MoELayer::step_balancer",
            "a layer configured with bias_balancer", "none");
    balancer->step();
    balancer->apply_to(router);
  }
};

}  // namespace moe
