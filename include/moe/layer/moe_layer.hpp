// MoELayer: router -> (dropless | capacity) dispatch -> expert FFNs -> combine, plus shared
// experts, the balancing losses, the bias balancer and the step's health report; forward and
// backward.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>

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
  // backward's scratch, kept so that a step with the shapes of the last one does not allocate it
  RouterUpstream<S> upstream;
  CombineGradients<S> combine;
  RowMatrix<S> grad_expert_in;
};

template <class S>
struct MoEOutput {
  RowMatrix<S> y;     ///< [T, d] routed (+ shared) experts' output; add the residual outside
  S aux_loss = S(0);  ///< coefficient included; 0 in eval or when off
  S z_loss = S(0);    ///< coefficient included; 0 in eval or when off
  HealthReport health;
};

/// Gradients of every parameter (owned) and of x. backward(x, ctx, grad_y, grads) shapes them on
/// first use and then overwrites them in place, so one MoEGradients kept across steps is allocated
/// once.
template <class S>
struct MoEGradients {
  RowMatrix<S> x;
  RouterGradients<S> router;
  ExpertGradients<S> experts;
  ExpertGradients<S> shared;
  Vector<S> shared_gate;  ///< [d] when the shared expert is gated
};

namespace detail {

/// The end of a layer's backward over parameters every rank holds whole: the shared expert, then
/// the router from its three upstream gradients (gates from the routed experts, scores from the
/// aux loss, logits from the z-loss). Both add their input gradient to grads.x.
template <class S>
void replicated_backward(const MoELayerConfig& config, const Router<S>& router,
                         const ExpertWeights<S>& shared, ConstVectorRef<S> shared_gate_weight,
                         ConstMatrixRef<S> x, const RouterContext<S>& router_ctx,
                         SharedExpertContext<S>& shared_ctx, const LossGradient<S>& aux,
                         const LossGradient<S>& z, ConstMatrixRef<S> grad_y,
                         RouterUpstream<S>& upstream, MoEGradients<S>& grads) {
  if (config.shared.ffn_hidden > 0)
    shared_expert_backward<S>(shared, shared_gate_weight, config.shared.gated, x, shared_ctx,
                              grad_y, grads.shared, grads.shared_gate, grads.x);
  upstream.scores = aux.grad;
  upstream.logits = z.grad;
  router.backward(x, router_ctx, upstream, grads.router);
  grads.x += grads.router.x;
}

/// Once per optimizer step: the bias balancer updates from the loads of the step's micro-batches
/// and hands its bias to the router's selection (Wang et al. 2024; DeepSeek-V3).
template <class S>
void step_bias_balancer(std::optional<BiasBalancer<S>>& balancer, Router<S>& router,
                        const char* caller) {
  require(balancer.has_value(), caller, "a layer configured with bias_balancer", "none");
  balancer->step();
  balancer->apply_to(router);
}

}  // namespace detail

/// The caller's buffers a MoELayer is mapped over (see RouterBuffers and ExpertBuffers for each
/// size; E experts, token width d, expert width f, shared width f_s = shared.ffn_hidden).
template <class S>
struct MoELayerBuffers {
  RouterBuffers<S> router;
  ExpertBuffers<S> experts;               ///< E experts of width f
  ExpertBuffers<S> shared;                ///< one expert of width f_s when f_s > 0, else all empty
  ParameterBuffer<S> shared_gate_weight;  ///< d elements when shared.gated, else 0
};

/// One MoE layer. Parameters are Eigen::Map views of fixed shape, owned (the constructor) or over
/// the caller's buffers (mapped()). A copy always owns its values; assigning to a layer whose
/// parameters map caller buffers writes the values into those buffers. The training loop calls
/// forward and backward each micro-batch and step_balancer() once per optimizer step.
template <class S>
class MoELayer {
 public:
  MoELayerConfig config;
  Router<S> router;
  ExpertWeights<S> experts;
  ExpertWeights<S> shared;  ///< one expert of width shared.ffn_hidden, when configured
  VectorMap<S> shared_gate_weight{nullptr, 0};  ///< [d] when the shared expert is gated
  std::optional<BiasBalancer<S>> balancer;

  /// Zero parameters of the configured shapes, owned; init_weights() draws them.
  explicit MoELayer(const MoELayerConfig& layer_config)
      : config((validate(layer_config), layer_config)),
        router(config.router),
        experts(config.experts()) {
    if (config.shared.ffn_hidden > 0) shared = ExpertWeights<S>(config.shared_experts());
    gate_storage_.bind(gate_visitor(nullptr));
    if (config.bias_balancer) balancer.emplace(config.router.num_experts, *config.bias_balancer);
  }

  /// A layer whose parameters are views over the caller's buffers, without copying (writing into
  /// a buffer changes the layer; router.weight.data() == buffers.router.weight.data, ...). Sizes
  /// as MoELayerBuffers lists; a wrong size or a needed null buffer throws moe::Error naming it.
  static MoELayer mapped(const MoELayerConfig& layer_config, const MoELayerBuffers<S>& buffers) {
    validate(layer_config);
    return MoELayer(layer_config, buffers);
  }

  MoELayer(const MoELayer& other)
      : config(other.config),
        router(other.router),
        experts(other.experts),
        shared(other.shared),
        balancer(other.balancer) {
    gate_storage_.bind(gate_visitor(nullptr));
    shared_gate_weight = other.shared_gate_weight;
  }
  MoELayer(MoELayer&& other) noexcept
      : config(std::move(other.config)),
        router(std::move(other.router)),
        experts(std::move(other.experts)),
        shared(std::move(other.shared)),
        balancer(std::move(other.balancer)) {
    detail::steal_parameters<S>(gate_storage_, gate_visitor(nullptr), other.gate_storage_,
                                other.gate_visitor(nullptr));
  }
  MoELayer& operator=(const MoELayer& other) {
    if (this == &other) return *this;
    if (!gate_storage_.maps_caller) {
      MoELayer copy(other);
      return *this = std::move(copy);
    }
    require_same_shapes(other);
    detail::copy_parameters<S>(gate_visitor(nullptr), other.gate_visitor(nullptr),
                               "MoELayer::shared_gate_weight");
    router = other.router;
    experts = other.experts;
    shared = other.shared;
    balancer = other.balancer;
    config = other.config;
    return *this;
  }
  /// Member by member: a member over caller buffers receives the values, an owned one the storage.
  MoELayer& operator=(MoELayer&& other) {
    if (this == &other) return *this;
    if (gate_storage_.maps_caller) {
      require_same_shapes(other);
      detail::copy_parameters<S>(gate_visitor(nullptr), other.gate_visitor(nullptr),
                                 "MoELayer::shared_gate_weight");
    } else {
      detail::steal_parameters<S>(gate_storage_, gate_visitor(nullptr), other.gate_storage_,
                                  other.gate_visitor(nullptr));
    }
    router = std::move(other.router);
    experts = std::move(other.experts);
    shared = std::move(other.shared);
    balancer = std::move(other.balancer);
    config = std::move(other.config);
    return *this;
  }
  ~MoELayer() = default;

  /// Router N(0, 0.02^2) (Megatron init_method_std), every expert matrix N(0, 1/d), all from
  /// `seed`.
  void init_weights(std::uint64_t seed) {
    router.init_weights(seed, kRouterInitStddev);
    experts.init_weights(seed + 1, config.expert_init_stddev());
    detail::init_shared_expert<S>(config, seed, shared, shared_gate_weight);
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
      // Eval reads token rows in place; a backward after it groups x then (it is given x).
      ctx.dropless.save_for_backward = mode == Mode::train;
      dropless_ffn_forward<S>(experts, x, routing.gates, ctx.plan, ctx.dropless, out.y);
      out.health = health_report(routing);
    } else {
      ctx.capacity_plan = make_capacity_plan(routing, config.capacity, mode, seed);
      const CapacityPlan<S>& plan = ctx.capacity_plan;
      ctx.expert_in.resize(plan.num_slots(), config.router.hidden);
      ctx.expert_out.resize(plan.num_slots(), config.router.hidden);
      dispatch<S>(plan, x, ctx.expert_in);
      // The dispatch buffer stays in the context until backward: the experts read it in place.
      ctx.capacity_ffn.save_for_backward = false;
      capacity_ffn_forward<S>(experts, ctx.expert_in, plan.capacity, plan.kept, ctx.capacity_ffn,
                              ctx.expert_out);
      combine<S>(plan, ctx.expert_out, out.y);
      out.health = health_report(routing, capacity_stats(plan));
    }

    if (config.shared.ffn_hidden > 0)
      detail::shared_expert_forward<S>(shared, shared_gate_weight, config.shared.gated,
                                       config.block_size, x, ctx.shared, out.y, mode);

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
    MoEGradients<S> grads;
    backward(x, ctx, grad_y, grads);
    return grads;
  }

  /// The same into `grads`, overwritten in place: keep one MoEGradients across steps and a step
  /// allocates no gradient memory (each active expert's block is written once, only experts that
  /// received no rows are zeroed). Shapes it on first use, or when they do not match the layer.
  void backward(const ConstMatrixRef<S>& x, MoELayerContext<S>& ctx,
                const ConstMatrixRef<S>& grad_y, MoEGradients<S>& grads) {
    const Routing<S>& routing = ctx.router.routing;
    const Index tokens = routing.num_tokens(), d = config.router.hidden;
    require_shape(grad_y, "grad_y", tokens, d);
    require_shape(x, "x", tokens, d);
    shape_gradients(grads, tokens);
    RouterUpstream<S>& upstream = ctx.upstream;
    upstream.gates.resize(tokens, config.router.top_k);

    if (config.dispatch == DispatchKind::dropless) {
      dropless_ffn_backward<S>(experts, x, grad_y, ctx.plan, ctx.dropless, grads.experts, grads.x,
                               upstream.gates);
    } else {
      const CapacityPlan<S>& plan = ctx.capacity_plan;
      ctx.combine.expert_out.resize(plan.num_slots(), d);
      ctx.combine.weight.resize(plan.num_entries());
      combine_backward<S>(plan, ctx.expert_out, grad_y, ctx.combine.expert_out, ctx.combine.weight);
      ctx.grad_expert_in.resize(plan.num_slots(), d);
      capacity_ffn_backward<S>(experts, ctx.expert_in, ctx.combine.expert_out, ctx.capacity_ffn,
                               grads.experts, ctx.grad_expert_in);
      dispatch_backward<S>(plan, ctx.grad_expert_in, grads.x);
      upstream.gates = capacity_plan_backward<S>(plan, ctx.combine.weight);
    }

    detail::replicated_backward<S>(config, router, shared, shared_gate_weight, x, ctx.router,
                                   ctx.shared, ctx.aux, ctx.z, grad_y, upstream, grads);
  }

  /// Once per optimizer step: the bias balancer updates from the loads of the step's micro-batches
  /// and hands its bias to the router's selection (Wang et al. 2024; DeepSeek-V3).
  void step_balancer() { detail::step_bias_balancer(balancer, router, "MoELayer::step_balancer"); }

 private:
  /// Before values are written into caller buffers: every parameter of `other` has this layer's
  /// shape, so a failed assignment writes nothing.
  void require_same_shapes(const MoELayer& other) const {
    bool same = true;
    auto check = [&](const auto& a, const auto& b) {
      same = same && a.rows() == b.rows() && a.cols() == b.cols();
    };
    check(router.weight, other.router.weight);
    check(router.bias, other.router.bias);
    check(router.noise_weight, other.router.noise_weight);
    check(router.selection_bias, other.router.selection_bias);
    for (auto [a, b] : {std::pair{&experts, &other.experts}, std::pair{&shared, &other.shared}}) {
      check(a->w1, b->w1);
      check(a->w3, b->w3);
      check(a->w2, b->w2);
      check(a->b1, b->b1);
      check(a->b3, b->b3);
      check(a->b2, b->b2);
    }
    check(shared_gate_weight, other.shared_gate_weight);
    require(same, "MoELayer (assigned to a layer over caller buffers)",
            "a layer of the same parameter shapes", "other shapes");
  }

  /// Gradients of this layer's shapes; memory already of those shapes is kept.
  void shape_gradients(MoEGradients<S>& grads, Index tokens) const {
    detail::shape_gradients(grads.experts, config.experts());
    detail::shape_gradients(grads.shared, config.shared_experts(), config.shared.ffn_hidden > 0);
    grads.x.resize(tokens, config.router.hidden);
    grads.shared_gate.resize(config.shared.gated ? config.router.hidden : 0);
  }

  /// A layer over the caller's buffers (the config validated by the caller).
  MoELayer(const MoELayerConfig& layer_config, const MoELayerBuffers<S>& buffers)
      : config(layer_config),
        router(Router<S>::mapped(config.router, buffers.router, "buffers.router")),
        experts(ExpertWeights<S>::mapped(config.experts(), buffers.experts, "buffers.experts")) {
    if (config.shared.ffn_hidden > 0)
      shared = ExpertWeights<S>::mapped(config.shared_experts(), buffers.shared, "buffers.shared");
    else
      require(buffers.shared.w1.data == nullptr && buffers.shared.w1.size == 0, "buffers.shared",
              "empty buffers (no shared expert configured)", "a w1 buffer");
    gate_storage_.bind(gate_visitor(&buffers.shared_gate_weight));
    if (config.bias_balancer) balancer.emplace(config.router.num_experts, *config.bias_balancer);
  }

  /// f(map, rows, cols, caller buffer or nullptr, name) for shared_gate_weight.
  auto gate_visitor(const ParameterBuffer<S>* buffer) const {
    auto* self = const_cast<MoELayer*>(this);  // const layers only read through the map
    return [self, buffer](auto&& f) {
      const Index d = self->config.shared.gated ? self->config.router.hidden : 0;
      f(self->shared_gate_weight, d, 1, buffer, "buffers.shared_gate_weight");
    };
  }

  detail::ParameterStorage<S> gate_storage_;
};

}  // namespace moe
