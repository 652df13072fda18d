// MoELayer: router -> (dropless | capacity) dispatch -> expert FFNs -> combine, plus shared
// experts, the balancing losses, the bias balancer and the step's health report; forward and
// backward.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>

#include "moe/balance/bias_balancer.hpp"
#include "moe/balance/load_balancing_loss.hpp"
#include "moe/balance/z_loss.hpp"
#include "moe/dispatch/capacity_planner.hpp"
#include "moe/dispatch/capacity_stats.hpp"
#include "moe/dispatch/dispatch.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "moe/experts/capacity_ffn.hpp"
#include "moe/experts/dropless_ffn.hpp"
#include "moe/health/report.hpp"
#include "moe/routing/router.hpp"

namespace moe {

/// How tokens reach the experts: MegaBlocks' dropless block-sparse path, or a capacity-factor
/// buffer [E, C, d] whose overflow is dropped (the caller's residual carries dropped tokens).
enum class DispatchKind { dropless, capacity };

/// Always-on experts every token passes through, added to the routed output (DeepSeek-V3), and
/// optionally scaled by sigmoid(x . w_gate) (Qwen2-MoE shared_expert_gate). ffn_hidden 0: none.
struct SharedExpertConfig {
  Index ffn_hidden = 0;
  bool gated = false;
};

struct MoELayerConfig {
  RouterConfig router;
  Index ffn_hidden = 0;  ///< f of every routed expert
  Activation activation = Activation::swiglu;
  bool expert_bias = false;
  DispatchKind dispatch = DispatchKind::dropless;
  Index block_size = 128;  ///< dropless: each expert's rows padded to a multiple of this
  CapacityConfig capacity;
  std::optional<AuxLossConfig> aux_loss;             ///< its coefficient is inside
  double z_loss_coefficient = 0.0;                   ///< ST-MoE router z-loss; 0 = off
  std::optional<BiasBalancerOptions> bias_balancer;  ///< aux-loss-free balancing; nullopt = off
  SharedExpertConfig shared;

  ExpertFFNConfig experts() const {
    ExpertFFNConfig c;
    c.num_experts = router.num_experts;
    c.hidden = router.hidden;
    c.ffn_hidden = ffn_hidden;
    c.activation = activation;
    c.bias = expert_bias;
    return c;
  }
  ExpertFFNConfig shared_experts() const {
    ExpertFFNConfig c = experts();
    c.num_experts = 1;
    c.ffn_hidden = shared.ffn_hidden;
    return c;
  }
};

/// Checks a MoELayerConfig; every message names the field.
inline void validate(const MoELayerConfig& c) {
  validate(c.router);
  validate(c.experts());
  require(c.block_size >= 1, "MoELayerConfig::block_size", ">= 1", c.block_size);
  require(c.z_loss_coefficient >= 0.0, "MoELayerConfig::z_loss_coefficient", ">= 0",
          c.z_loss_coefficient);
  require(c.shared.ffn_hidden >= 0, "MoELayerConfig::shared.ffn_hidden", ">= 0 (0 = none)",
          c.shared.ffn_hidden);
  if (c.dispatch == DispatchKind::capacity) validate(c.capacity);
  if (c.aux_loss) validate(*c.aux_loss);
}

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
  DroplessPlan shared_plan;            ///< every token to the one shared expert
  DroplessFFNContext<S> shared;
  RowMatrix<S> shared_gate;  ///< [T, 1] sigmoid(x w_gate), or ones
  LossGradient<S> aux, z;    ///< values and their gradients (empty when off)
  // backward's scratch, kept so that a step with the shapes of the last one does not allocate it
  RouterUpstream<S> upstream;
  CombineGradients<S> combine;
  RowMatrix<S> grad_expert_in, shared_grad_x, shared_grad_gate;
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

  /// Router N(0, 0.02^2) (Megatron init_method_std), experts N(0, 1/d) for W1/W3 and N(0, 1/f)
  /// for W2 scale, all from `seed`.
  void init_weights(std::uint64_t seed) {
    router.init_weights(seed, 0.02);
    experts.init_weights(seed + 1, 1.0 / std::sqrt(static_cast<double>(config.router.hidden)));
    if (config.shared.ffn_hidden > 0)
      shared.init_weights(seed + 2, 1.0 / std::sqrt(static_cast<double>(config.router.hidden)));
    if (config.shared.gated) {
      const CounterRng rng = make_rng(seed + 3, RandomStream::init);
      for (Index i = 0; i < shared_gate_weight.size(); ++i)
        shared_gate_weight[i] = static_cast<S>(0.02 * rng.normal(static_cast<std::uint64_t>(i)));
    }
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

    if (config.shared.ffn_hidden > 0) add_shared_forward(x, ctx, out.y);

    ctx.aux = LossGradient<S>();
    ctx.z = LossGradient<S>();
    if (mode == Mode::train) {
      if (config.aux_loss) {
        // Megatron and HF recompute the top-k inside the loss; the others count the routing used
        const bool given = config.aux_loss->selection == AuxSelection::given;
        ctx.aux = load_balancing_loss(routing.scores, given ? routing.expert_ids : ExpertIdMatrix(),
                                      *config.aux_loss);
        out.aux_loss = ctx.aux.value;
      }
      if (config.z_loss_coefficient > 0) {
        ctx.z = router_z_loss(routing.logits, config.z_loss_coefficient);
        out.z_loss = ctx.z.value;
      }
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
      dropless_ffn_backward<S>(experts, grad_y, ctx.plan, ctx.dropless, grads.experts, grads.x,
                               upstream.gates);
    } else {
      const CapacityPlan<S>& plan = ctx.capacity_plan;
      ctx.combine.expert_out.resize(plan.num_slots(), d);
      ctx.combine.weight.resize(plan.num_entries());
      combine_backward<S>(plan, ctx.expert_out, grad_y, ctx.combine.expert_out, ctx.combine.weight);
      ctx.grad_expert_in.resize(plan.num_slots(), d);
      capacity_ffn_backward<S>(experts, ctx.combine.expert_out, ctx.capacity_ffn, grads.experts,
                               ctx.grad_expert_in);
      dispatch_backward<S>(plan, ctx.grad_expert_in, grads.x);
      upstream.gates = capacity_plan_backward<S>(plan, ctx.combine.weight);
    }

    if (config.shared.ffn_hidden > 0) add_shared_backward(x, ctx, grad_y, grads);

    upstream.scores = ctx.aux.grad;
    upstream.logits = ctx.z.grad;
    router.backward(x, ctx.router, upstream, grads.router);
    grads.x += grads.router.x;
  }

  /// Once per optimizer step: the bias balancer updates from the loads of the step's micro-batches
  /// and hands its bias to the router's selection (Wang et al. 2024; DeepSeek-V3).
  void step_balancer() {
    require(balancer.has_value(), "MoELayer::step_balancer",
            "a layer configured with bias_balancer", "none");
    balancer->step();
    balancer->apply_to(router);
  }

 private:
  void add_shared_forward(const ConstMatrixRef<S>& x, MoELayerContext<S>& ctx, RowMatrix<S>& y) {
    const Index tokens = x.rows();
    make_dropless_plan(ExpertIdMatrix::Zero(tokens, 1), 1, config.block_size, ctx.shared_plan);
    if (config.shared.gated)
      ctx.shared_gate = (x * shared_gate_weight).array().logistic().matrix();
    else
      ctx.shared_gate = RowMatrix<S>::Ones(tokens, 1);
    y += dropless_ffn_forward<S>(shared, x, ctx.shared_gate, ctx.shared_plan, ctx.shared);
  }

  void add_shared_backward(const ConstMatrixRef<S>& x, MoELayerContext<S>& ctx,
                           const ConstMatrixRef<S>& grad_y, MoEGradients<S>& grads) {
    const Index tokens = x.rows();
    RowMatrix<S>&grad_x = ctx.shared_grad_x, &grad_gate = ctx.shared_grad_gate;
    grad_x.resize(tokens, config.router.hidden);
    grad_gate.resize(tokens, 1);
    dropless_ffn_backward<S>(shared, grad_y, ctx.shared_plan, ctx.shared, grads.shared, grad_x,
                             grad_gate);
    grads.x += grad_x;
    if (config.shared.gated) {
      // g = sigmoid(x w): dg/du = g (1 - g)
      const Vector<S> du = grad_gate.col(0).cwiseProduct(
          ctx.shared_gate.col(0).cwiseProduct((S(1) - ctx.shared_gate.col(0).array()).matrix()));
      grads.shared_gate = x.transpose() * du;
      grads.x.noalias() += du * shared_gate_weight.transpose();
    }
  }

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
    auto reshape = [](ExpertGradients<S>& g, const ExpertFFNConfig& c, bool wanted) {
      const bool same = g.config.num_experts == c.num_experts && g.config.hidden == c.hidden &&
                        g.config.ffn_hidden == c.ffn_hidden &&
                        g.config.activation == c.activation && g.config.bias == c.bias &&
                        g.w1.size() == c.num_experts * c.hidden * c.ffn_hidden;
      if (wanted && !same) g = ExpertGradients<S>(c);
      if (!wanted && g.w1.size() != 0) g = ExpertGradients<S>();
    };
    reshape(grads.experts, config.experts(), true);
    reshape(grads.shared, config.shared_experts(), config.shared.ffn_hidden > 0);
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
