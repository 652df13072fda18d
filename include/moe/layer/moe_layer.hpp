// MoELayer: router -> token exchange (dispatch, expert FFNs, combine) -> shared experts, the
// balancing losses, the bias balancer and the step's health report; forward and backward. The
// exchange is a policy: LocalExchange keeps every expert in this process, AllToAllExchange
// (moe/parallel/) shards them over MPI ranks; everything else is this one class.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "moe/balance/bias_balancer.hpp"
#include "moe/balance/loss_result.hpp"
#include "moe/balance/token_mask.hpp"
#include "moe/core/bfloat16.hpp"
#include "moe/core/parameters.hpp"
#include "moe/experts/bf16_expert_weights.hpp"
#include "moe/experts/expert_compute.hpp"
#include "moe/experts/expert_weights.hpp"
#include "moe/experts/packed_expert_weights.hpp"
#include "moe/health/bf16_what_if.hpp"
#include "moe/health/report.hpp"
#include "moe/layer/config.hpp"
#include "moe/layer/detail/routing_losses.hpp"
#include "moe/layer/local_exchange.hpp"
#include "moe/layer/shared_expert.hpp"
#include "moe/routing/router.hpp"

namespace moe {

/// What forward saved for backward, and the buffers a step reuses. Owned by the caller.
template <class S, class Exchange = LocalExchange>
struct MoELayerContext {
  Mode mode = Mode::eval;
  RouterContext<S> router;
  typename Exchange::template Context<S> exchange;  ///< plans, exchanged rows, expert activations
  SharedExpertContext<S> shared;
  LossGradient<S> aux, z;      ///< values and their gradients (empty when off)
  RouterUpstream<S> upstream;  ///< backward's scratch, kept across steps

  /// A forward with a token mask ran on the real tokens only: their rows of the padded batch
  /// (ascending), the padded batch's token count (-1 after a forward without a mask), and the
  /// gathered rows backward reuses.
  IndexVector real_tokens;
  Index padded_tokens = -1;
  RowMatrix<S> real_x, real_grad_y, real_grad_x;

  /// With weight_before_ffn: the experts' input w_t x_t, and the routing they were given (the
  /// chosen experts with unit gates).
  RowMatrix<S> weighted_x;
  RowMatrix<S> widened_x;  ///< forward over bf16 rows: x as S
  Routing<S> unit_routing;
  RowMatrix<S> unit_gate_grad;  ///< backward's scratch for the unit gates' (unused) gradient

  /// With zero-computation experts: the routing the FFN experts were given (zero-expert slots
  /// unused), and per token the sum of the gates of its zero-expert choices, w0_t.
  Routing<S> ffn_routing;
  Vector<S> identity_gate;
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
  ExpertGradients<S> experts;  ///< this process's routed experts
  ExpertGradients<S> shared;
  Vector<S> shared_gate;  ///< [d] when the shared expert is gated
};

/// The caller's buffers a MoELayer is mapped over (see RouterBuffers and ExpertBuffers for each
/// size; E experts, token width d, expert width f, shared width f_s = shared.ffn_hidden). Under
/// expert parallelism `experts` holds this process's experts only.
template <class S>
struct MoELayerBuffers {
  RouterBuffers<S> router;
  ExpertBuffers<S> experts;               ///< the routed experts held here, of width f
  ExpertBuffers<S> shared;                ///< one expert of width f_s when f_s > 0, else all empty
  ParameterBuffer<S> shared_gate_weight;  ///< d elements when shared.gated, else 0
};

/// The parameters of a MoELayer (see ParameterSet): the router's, the routed experts' held in this
/// process, the shared expert's and its gate.
template <class S>
struct MoELayerSlots {
  using Scalar = S;
  static constexpr const char* kName = "MoELayer";

  Router<S> router;
  ExpertWeights<S> experts;                     ///< routed experts held here, ascending global id
  ExpertWeights<S> shared;                      ///< one expert of width shared.ffn_hidden
  VectorMap<S> shared_gate_weight{nullptr, 0};  ///< [d] when the shared expert is gated

  static constexpr auto slots() {
    return std::make_tuple(slot(&MoELayerSlots::router, "router"),
                           slot(&MoELayerSlots::experts, "experts"),
                           slot(&MoELayerSlots::shared, "shared"),
                           slot(&MoELayerSlots::shared_gate_weight, "shared_gate_weight"));
  }

  /// Unbound (owned, zero) parameters; `routed` configures the experts held here.
  MoELayerSlots(const MoELayerConfig& c, const ExpertFFNConfig& routed)
      : router(c.router),
        experts(routed.num_experts > 0 ? ExpertWeights<S>(routed) : ExpertWeights<S>()),
        shared(c.shared.ffn_hidden > 0 ? ExpertWeights<S>(c.shared_experts()) : ExpertWeights<S>()),
        shared_gate_weight(unbound<VectorMap<S>>(gate_size(c), 1)) {}

  /// Over the caller's buffers.
  MoELayerSlots(const MoELayerConfig& c, const ExpertFFNConfig& routed, const MoELayerBuffers<S>& b)
      : router(Router<S>::mapped(c.router, b.router, "buffers.router")),
        experts(routed.num_experts > 0
                    ? ExpertWeights<S>::mapped(routed, b.experts, "buffers.experts")
                    : ExpertWeights<S>()),
        shared(mapped_shared(c, b.shared)),
        shared_gate_weight(map_buffer<VectorMap<S>>(b.shared_gate_weight, gate_size(c), 1,
                                                    "buffers.shared_gate_weight")) {}

 private:
  static Index gate_size(const MoELayerConfig& c) { return c.shared.gated ? c.router.hidden : 0; }
  static ExpertWeights<S> mapped_shared(const MoELayerConfig& c, const ExpertBuffers<S>& b) {
    if (c.shared.ffn_hidden > 0)
      return ExpertWeights<S>::mapped(c.shared_experts(), b, "buffers.shared");
    for (const ParameterBuffer<S>* given : {&b.w1, &b.w3, &b.w2, &b.b1, &b.b3, &b.b2})
      require(given->data == nullptr && given->size == 0, "buffers.shared",
              "empty buffers (no shared expert configured)", "a buffer");
    return ExpertWeights<S>();
  }
};

/// The token exchange of a layer, a base of MoELayer so that it exists before the parameters it
/// decides the shape of (the routed experts held in this process): base-from-member.
template <class Exchange>
struct TokenExchangeMember {
  Exchange exchange;

  template <class... Args>
  explicit TokenExchangeMember(const MoELayerConfig& config, Args&&... args)
      : exchange(std::forward<Args>(args)...) {
    validate(config);
    exchange.bind(config);
  }
};

/// One MoE layer. Parameters are Eigen::Map views of fixed shape (MoELayerSlots), owned (the
/// constructor) or over the caller's buffers (mapped()). A copy always owns its values; assigning
/// to a layer whose parameters map caller buffers writes the values into those buffers, after
/// checking every shape. The training loop calls forward and backward each micro-batch and
/// step_balancer() once per optimizer step.
///
/// `Exchange` moves the routed tokens to the experts and back (LocalExchange: all experts here;
/// AllToAllExchange: sharded over MPI ranks, forward and backward then collective). Losses,
/// balancer loads and health always cover the whole batch, so every exchange computes what a
/// single process computes on the concatenated batch.
template <class S, class Exchange = LocalExchange>
class MoELayer : public TokenExchangeMember<Exchange>, public ParameterSet<MoELayerSlots<S>> {
 public:
  using TokenExchangeMember<Exchange>::exchange;
  using MoELayerSlots<S>::router;
  using MoELayerSlots<S>::experts;
  using MoELayerSlots<S>::shared;
  using MoELayerSlots<S>::shared_gate_weight;
  using Context = MoELayerContext<S, Exchange>;

  MoELayerConfig config;
  std::optional<BiasBalancer<S>> balancer;

  /// Zero parameters of the configured shapes, owned; init_weights() draws them. `exchange_args`
  /// construct the Exchange (e.g. a Communicator for AllToAllExchange).
  template <class... ExchangeArgs>
  explicit MoELayer(const MoELayerConfig& layer_config, ExchangeArgs&&... exchange_args)
      : TokenExchangeMember<Exchange>(layer_config, std::forward<ExchangeArgs>(exchange_args)...),
        ParameterSet<MoELayerSlots<S>>(std::in_place, layer_config,
                                       routed_experts(layer_config, this->exchange)),
        config(layer_config) {
    make_balancer();
  }

  /// A layer whose parameters are views over the caller's buffers, without copying (writing into
  /// a buffer changes the layer; router.weight.data() == buffers.router.weight.data, ...). Sizes
  /// as MoELayerBuffers lists; a wrong size or a needed null buffer throws moe::Error naming it.
  template <class... ExchangeArgs>
  static MoELayer mapped(const MoELayerConfig& layer_config, const MoELayerBuffers<S>& buffers,
                         ExchangeArgs&&... exchange_args) {
    return MoELayer(Mapped{}, layer_config, buffers, std::forward<ExchangeArgs>(exchange_args)...);
  }

  /// Global ids of the routed experts this layer holds (all of them with LocalExchange).
  std::vector<Index> local_experts() const {
    return exchange.local_experts(config.num_ffn_experts());
  }

  /// How many routed experts this layer holds.
  Index num_local_experts() const { return static_cast<Index>(local_experts().size()); }

  /// Router N(0, 0.02^2) (Megatron init_method_std), every expert matrix N(0, 1/d), all from
  /// `seed`; an expert gets the values it has in a single-process layer, wherever it is held.
  void init_weights(std::uint64_t seed) {
    router.init_weights(seed, kRouterInitStddev);
    const std::vector<Index> mine = local_experts();
    if (!mine.empty())
      experts.init_weights(seed + 1, config.expert_init_stddev(), mine, config.num_ffn_experts());
    init_shared_expert<S>(config, seed, shared, shared_gate_weight);
  }

  /// Copies the parameters this layer holds from a layer of the same config that holds every
  /// expert (e.g. a single-process checkpoint): the router, the shared expert, and this layer's
  /// experts by global id.
  template <class OtherExchange>
  void load_from(const MoELayer<S, OtherExchange>& whole) {
    const MoELayerConfig& c = whole.config;
    require(c.router.num_experts == config.router.num_experts &&
                c.router.hidden == config.router.hidden && c.ffn_hidden == config.ffn_hidden &&
                c.activation == config.activation && c.expert_bias == config.expert_bias &&
                c.shared.ffn_hidden == config.shared.ffn_hidden &&
                c.shared.gated == config.shared.gated &&
                c.zero_computation_experts == config.zero_computation_experts &&
                whole.experts.config.num_experts == config.num_ffn_experts(),
            "whole", "a layer holding every expert, with this layer's parameter shapes",
            "another shape");
    router = whole.router;
    const std::vector<Index> mine = local_experts();
    for (std::size_t i = 0; i < mine.size(); ++i)
      copy_expert(whole.experts, mine[i], experts, static_cast<Index>(i));
    shared = whole.shared;
    shared_gate_weight = whole.shared_gate_weight;
  }

  /// y = sum_j w_tj FFN_{e_tj}(x_t) over kept choices (+ gate_t * FFN_shared(x_t)). In Mode::train
  /// it also computes the aux and z losses and counts loads for the bias balancer under
  /// `micro_batch`. `seed` drives router noise and random token selection; pass one per step (the
  /// same on every process of an exchange).
  MoEOutput<S> forward(const ConstMatrixRef<S>& x, Context& ctx, Mode mode, std::uint64_t seed = 0,
                       Index micro_batch = 0) {
    ctx.padded_tokens = -1;
    return step(x, nullptr, ctx, mode, seed, micro_batch);
  }

  /// forward over token rows held in bf16 (a bf16 model's activations): widened to S once, exactly
  /// (every bf16 is a float), then forward; the router, the losses and y are in S. So the router
  /// selects on bf16 inputs exactly what it selects on their float values, and bf16 experts
  /// (ExpertPrecision::bf16) round nothing more. Costs one [T, d] copy (ctx.widened_x).
  MoEOutput<S> forward(const ConstMatrixRef<bf16>& x, Context& ctx, Mode mode,
                       std::uint64_t seed = 0, Index micro_batch = 0) {
    widen(x, ctx.widened_x);
    return forward(ctx.widened_x, ctx, mode, seed, micro_batch);
  }

  /// forward over a padded batch: `token_mask` [T] is true for real tokens. Padding takes no
  /// capacity slot and no expert work, adds nothing to the losses, the balancer's loads or health,
  /// and gets a zero output row and a zero gradient (Megatron-Core removes padding from the
  /// routing map before capacity and dispatch). The step runs on the real tokens gathered in
  /// order, so every count, capacity and loss normalization is that of the real tokens. A
  /// sequence-wise aux loss (AuxLossConfig::sequence_length > 0) is refused with a mask: gathering
  /// would move tokens across its sequences.
  MoEOutput<S> forward(const ConstMatrixRef<S>& x, const TokenMask& token_mask, Context& ctx,
                       Mode mode, std::uint64_t seed = 0, Index micro_batch = 0) {
    exchange.agree([&] {
      require(token_mask.size() == x.rows(), "token_mask",
              detail::concat(x.rows(), " entries (one per row of x)"), token_mask.size());
      require(!config.aux_loss || config.aux_loss->sequence_length == 0, "MoELayerConfig::aux_loss",
              "a loss over the whole batch (sequence_length 0) with a token mask",
              detail::concat("sequence_length ",
                             config.aux_loss ? config.aux_loss->sequence_length : Index(0)));
      require_shape(x, "x", -1, config.router.hidden);
    });
    ctx.padded_tokens = -1;  // until the step below succeeds
    const Index real = detail::count_real_tokens(token_mask, x.rows());
    ctx.real_tokens.resize(real);
    for (Index t = 0, r = 0; t < x.rows(); ++t)
      if (token_mask(t)) ctx.real_tokens[r++] = t;
    ctx.real_x.resize(real, x.cols());
    for (Index r = 0; r < real; ++r) ctx.real_x.row(r) = x.row(ctx.real_tokens[r]);
    MoEOutput<S> out = step(ctx.real_x, nullptr, ctx, mode, seed, micro_batch);
    ctx.padded_tokens = x.rows();
    RowMatrix<S> y = RowMatrix<S>::Zero(x.rows(), x.cols());
    for (Index r = 0; r < real; ++r) y.row(ctx.real_tokens[r]) = out.y.row(r);
    out.y = std::move(y);
    return out;
  }

  /// forward over packed sequences (THD layout, flash-attention / Megatron): `cu_seqlens` [S + 1]
  /// are the offsets of this process's sequences in x (0 first, x.rows() last). A sequence-wise
  /// aux loss with sequence_length 0 (aux_presets::megatron_packed_sequence,
  /// deepseek_v3_packed_sequence) is then taken per sequence, normalized as its
  /// sequence_normalization says (load_balancing_loss_packed); the rest is forward's. Under
  /// expert parallelism each process gives the offsets of its own tokens.
  MoEOutput<S> forward_packed(const ConstMatrixRef<S>& x, const IndexVector& cu_seqlens,
                              Context& ctx, Mode mode, std::uint64_t seed = 0,
                              Index micro_batch = 0) {
    exchange.agree([&] {
      require(cu_seqlens.size() >= 1 && cu_seqlens[0] == 0 &&
                  cu_seqlens[cu_seqlens.size() - 1] == x.rows(),
              "cu_seqlens", detail::concat("offsets from 0 to the rows of x (", x.rows(), ")"),
              cu_seqlens.size() == 0
                  ? std::string("no offsets")
                  : detail::concat(cu_seqlens[0], " to ", cu_seqlens[cu_seqlens.size() - 1]));
      require(!config.aux_loss || config.aux_loss->sequence_length == 0, "MoELayerConfig::aux_loss",
              "sequence_length 0 with cu_seqlens (the offsets give the sequences)",
              detail::concat("sequence_length ",
                             config.aux_loss ? config.aux_loss->sequence_length : Index(0)));
    });
    ctx.padded_tokens = -1;
    return step(x, nullptr, ctx, mode, seed, micro_batch, &cu_seqlens);
  }

  /// Routing replay (Megatron-Core `RouterReplay`): forward with this process's tokens routed to
  /// the recorded experts `recorded_ids` ([T, k], see Router::replay) instead of the router's
  /// top-k. Gates come from the live router at those ids; dispatch, capacity, the balancer's counts
  /// and health follow the recorded ids; an aux loss with AuxSelection::recomputed (Megatron,
  /// Hugging Face) counts the live router's own top-k, as Megatron's does under replay, one with
  /// AuxSelection::given counts the recorded ids. backward is the usual one. Replaying a forward's
  /// own choices (ctx.router.routing.expert_ids) with the same weights, x, mode, seed and
  /// micro_batch reproduces that step bit for bit.
  MoEOutput<S> replay(const ConstMatrixRef<S>& x, const ExpertIdMatrix& recorded_ids, Context& ctx,
                      Mode mode, std::uint64_t seed = 0, Index micro_batch = 0) {
    ctx.padded_tokens = -1;
    return step(x, &recorded_ids, ctx, mode, seed, micro_batch);
  }

  /// Gradients of <grad_y, y> + aux_loss + z_loss with respect to x and every parameter held here
  /// (the router's and the shared expert's for this process's share of the loss: sum them across
  /// processes as data-parallel gradients are summed).
  /// backward of the forward over bf16 rows: x as that forward was given it; gradients in S.
  MoEGradients<S> backward(const ConstMatrixRef<bf16>& x, Context& ctx,
                           const ConstMatrixRef<S>& grad_y) {
    widen(x, ctx.widened_x);
    return backward(ctx.widened_x, ctx, grad_y);
  }

  MoEGradients<S> backward(const ConstMatrixRef<S>& x, Context& ctx,
                           const ConstMatrixRef<S>& grad_y) {
    MoEGradients<S> grads;
    backward(x, ctx, grad_y, grads);
    return grads;
  }

  /// The same into `grads`, overwritten in place: keep one MoEGradients across steps and a step
  /// allocates no gradient memory (each active expert's block is written once, only experts that
  /// received no rows are zeroed). Shapes it on first use, or when they do not match the layer.
  void backward(const ConstMatrixRef<S>& x, Context& ctx, const ConstMatrixRef<S>& grad_y,
                MoEGradients<S>& grads) {
    if (ctx.padded_tokens < 0) return backward_of_step(x, ctx, grad_y, grads);
    // After a forward with a token mask: the step's backward on the real rows, whose x gradient is
    // scattered back into the padded batch (zero on padding).
    exchange.agree([&] {
      require(x.rows() == ctx.padded_tokens, "ctx",
              detail::concat("a context filled by the forward of ", x.rows(), " tokens"),
              detail::concat("a context of ", ctx.padded_tokens, " (padded) tokens"));
      require_shape(grad_y, "grad_y", x.rows(), config.router.hidden);
      require_shape(x, "x", -1, config.router.hidden);
    });
    const Index real = ctx.real_tokens.size();
    ctx.real_x.resize(real, x.cols());
    ctx.real_grad_y.resize(real, x.cols());
    for (Index r = 0; r < real; ++r) {
      ctx.real_x.row(r) = x.row(ctx.real_tokens[r]);
      ctx.real_grad_y.row(r) = grad_y.row(ctx.real_tokens[r]);
    }
    backward_of_step(ctx.real_x, ctx, ctx.real_grad_y, grads);
    ctx.real_grad_x.swap(grads.x);
    grads.x.setZero(x.rows(), x.cols());
    for (Index r = 0; r < real; ++r) grads.x.row(ctx.real_tokens[r]) = ctx.real_grad_x.row(r);
  }

  /// Every trained parameter of this layer beside its gradient in `grads` (filled by a backward
  /// of this layer), in the order router.weight, router.bias (with linear_bias),
  /// router.noise_weight (noisy top-k), router.expert_scale (expert_scale), experts.{w1, w3, w2,
  /// b1, b3, b2}, shared.{...}, shared_gate_weight, each present only when the config gives it
  /// elements. Not router.selection_bias: the balancer's state, which no gradient trains. A pair
  /// whose gradient is not of its parameter's size (no backward yet) throws moe::Error naming it.
  std::vector<ParameterAndGradient<S>> parameters(const MoEGradients<S>& grads) {
    std::vector<ParameterAndGradient<S>> pairs;
    const auto add = [&](const std::string& name, auto& value, const auto& gradient) {
      if (value.size() == 0) return;
      require(gradient.size() == value.size(), ("grads." + name).c_str(),
              detail::concat(value.size(), " elements (the gradient of a backward of this layer)"),
              gradient.size());
      pairs.push_back({name, {value.data(), value.size()}, {gradient.data(), gradient.size()}});
    };
    add("router.weight", router.weight, grads.router.weight);
    if (config.router.linear_bias) add("router.bias", router.bias, grads.router.bias);
    if (config.router.noise == Noise::noisy_topk)
      add("router.noise_weight", router.noise_weight, grads.router.noise_weight);
    if (config.router.expert_scale)
      add("router.expert_scale", router.expert_scale, grads.router.expert_scale);
    // ExpertGradients is ExpertWeights: the same slots, in slots() order, name both sides.
    const auto add_experts = [&](const std::string& prefix, ExpertWeights<S>& w,
                                 const ExpertGradients<S>& g) {
      std::apply([&](auto... s) { (add(prefix + s.name, w.*s.member, g.*s.member), ...); },
                 ExpertSlots<S>::slots());
    };
    add_experts("experts.", experts, grads.experts);
    add_experts("shared.", shared, grads.shared);
    add("shared_gate_weight", shared_gate_weight, grads.shared_gate);
    return pairs;
  }

  /// Once per optimizer step: the bias balancer updates from the loads of the step's micro-batches
  /// (the whole batch's, under any exchange) and hands its bias to the router's selection (Wang et
  /// al. 2024; DeepSeek-V3).
  void step_balancer() {
    require(balancer.has_value(), "MoELayer::step_balancer",
            "a layer configured with bias_balancer", "none");
    balancer->step();
    balancer->apply_to(router);
  }

  /// With ExpertPrecision::bf16: rounds the routed experts' float weights into the bf16 copy their
  /// products read, now. A forward does it by itself when it finds the float weights changed: the
  /// layer compares a few values of each expert's matrices (an optimizer step changes them all);
  /// call this after an edit that may leave those untouched (a few weights set by hand). The copy
  /// holds the transposes the backward reads once a forward ran in Mode::train (Bf16Copies).
  void refresh_bf16_experts() {
    require(config.expert_precision == ExpertPrecision::bf16, "MoELayer::refresh_bf16_experts",
            "a layer configured with expert_precision = bf16", "native expert precision");
    refresh_bf16(bf16_experts_.copies());
  }

  /// The bf16 copy of the routed experts (ExpertPrecision::bf16, after a forward or
  /// refresh_bf16_experts; empty before).
  const Bf16ExpertWeights& bf16_experts() const noexcept { return bf16_experts_; }

  /// With ExpertLayout::panels: lays the routed experts' weights out in the panel copy the
  /// forward's products read, now. A forward does it by itself when it finds the weights changed
  /// (as for the bf16 copy: a few values of each expert's matrices compared); call this after an
  /// edit that may leave those untouched.
  void refresh_expert_panels() {
    require(config.expert_layout == ExpertLayout::panels, "MoELayer::refresh_expert_panels",
            "a layer configured with expert_layout = panels", "expert_layout = row_major");
    refresh_panels();
  }

  /// The panel copy of the routed experts (ExpertLayout::panels, after a forward or
  /// refresh_expert_panels; empty before).
  const PackedExpertWeights<S>& expert_panels() const noexcept { return panel_experts_; }

 private:
  /// The backward of one step(), over the rows it ran on. Defined below the class, not inline:
  /// with the compiled component (moe::compiled) it is instantiated there, not in every
  /// translation unit that calls backward.
  void backward_of_step(const ConstMatrixRef<S>& x, Context& ctx, const ConstMatrixRef<S>& grad_y,
                        MoEGradients<S>& grads);

  /// forward (recorded_ids null) and replay. Defined below the class, as backward_of_step.
  MoEOutput<S> step(const ConstMatrixRef<S>& x, const ExpertIdMatrix* recorded_ids, Context& ctx,
                    Mode mode, std::uint64_t seed, Index micro_batch,
                    const IndexVector* cu_seqlens = nullptr);

  struct Mapped {};

  /// out = x as S, exactly.
  static void widen(const ConstMatrixRef<bf16>& x, RowMatrix<S>& out) {
    out.resize(x.rows(), x.cols());
    for (Index t = 0; t < x.rows(); ++t)
      for (Index j = 0; j < x.cols(); ++j) out(t, j) = static_cast<S>(to_float(x(t, j)));
  }

  /// The routed experts as the exchange runs them. With bf16 experts the copy is brought up to
  /// date first by a forward (`forward`) when the float weights changed since it was made, and
  /// made with the transposes the backward reads when `training` (never dropped once made).
  ExpertCompute<S> expert_compute(bool forward, bool training) {
    if (experts.w1.size() == 0) return ExpertCompute<S>{experts};
    if (config.expert_layout == ExpertLayout::panels) {
      // The backward reads the weights themselves: only a forward needs the copy current.
      if (forward &&
          (panel_experts_.config().num_experts < 0 || panel_fingerprint_ != fingerprint()))
        refresh_panels();
      return ExpertCompute<S>{experts, nullptr, &panel_experts_};
    }
    if (config.expert_precision != ExpertPrecision::bf16) return ExpertCompute<S>{experts};
    const bool has_transposes = bf16_experts_.copies() == Bf16Copies::training;
    const Bf16Copies copies =
        training || has_transposes ? Bf16Copies::training : Bf16Copies::forward;
    const bool missing = bf16_experts_.config().num_experts < 0 || (training && !has_transposes);
    if (missing || (forward && bf16_fingerprint_ != fingerprint())) refresh_bf16(copies);
    return ExpertCompute<S>{experts, &bf16_experts_};
  }

  void refresh_bf16(Bf16Copies copies) {
    if constexpr (std::is_same_v<S, float>) {
      if (experts.w1.size() == 0) return;
      bf16_experts_.refresh(experts, copies);
      bf16_fingerprint_ = fingerprint();
    } else {
      (void)copies;
    }
  }

  void refresh_panels() {
    if (experts.w1.size() == 0) return;
    panel_experts_.refresh(experts);
    panel_fingerprint_ = fingerprint();
  }

  /// A few values of each expert's matrices and biases (8 spread over each block), compared bit
  /// for bit: when none changed, the float weights are taken as unchanged.
  std::vector<std::uint32_t> fingerprint() const {
    std::vector<std::uint32_t> values;
    const Index count = std::max<Index>(experts.config.num_experts, 1);
    for (const MatrixMap<S>* m :
         {&experts.w1, &experts.w3, &experts.w2, &experts.b1, &experts.b3, &experts.b2}) {
      const Index block = m->size() / count;
      for (Index e = 0; block > 0 && e < count; ++e)
        for (Index i = 0; i < 8; ++i) {
          const float v = static_cast<float>(m->data()[e * block + (2 * i + 1) * block / 16]);
          std::uint32_t bits;
          std::memcpy(&bits, &v, sizeof bits);
          values.push_back(bits);
        }
    }
    return values;
  }

  template <class... ExchangeArgs>
  MoELayer(Mapped, const MoELayerConfig& layer_config, const MoELayerBuffers<S>& buffers,
           ExchangeArgs&&... exchange_args)
      : TokenExchangeMember<Exchange>(layer_config, std::forward<ExchangeArgs>(exchange_args)...),
        ParameterSet<MoELayerSlots<S>>(std::in_place, layer_config,
                                       routed_experts(layer_config, this->exchange), buffers),
        config(layer_config) {
    make_balancer();
  }

  /// The config is a public member, checked where it is used: valid, and the parameters' shapes are
  /// still the ones it gives (the router's config and the experts' are their own copies).
  void check_config() const {
    validate(config);
    const RouterConfig &mine = config.router, &held = router.config;
    const bool same_router =
        mine.num_experts == held.num_experts && mine.hidden == held.hidden &&
        mine.top_k == held.top_k && mine.score == held.score &&
        mine.softmax_order == held.softmax_order && mine.renormalize == held.renormalize &&
        mine.renormalize_epsilon == held.renormalize_epsilon &&
        mine.renormalize_min == held.renormalize_min && mine.expert_scale == held.expert_scale &&
        mine.scaling_factor == held.scaling_factor && mine.num_groups == held.num_groups &&
        mine.groups_selected == held.groups_selected && mine.group_score == held.group_score &&
        mine.group_mask == held.group_mask && mine.linear_bias == held.linear_bias &&
        mine.noise == held.noise && mine.jitter_epsilon == held.jitter_epsilon &&
        mine.noise_epsilon == held.noise_epsilon;
    require(same_router, "MoELayer::config.router", "the router's config (router.config)",
            "another config: edit both, or build a new layer");
    const ExpertFFNConfig routed = routed_experts(config, exchange);
    require(experts.w1.size() == 0 ? routed.num_experts == 0
                                   : detail::same_shapes(experts.config, routed),
            "MoELayer::config", "the shapes of the experts it was built with",
            detail::concat("E = ", routed.num_experts, ", d = ", routed.hidden,
                           ", f = ", routed.ffn_hidden,
                           " against experts of E = ", experts.config.num_experts,
                           ", d = ", experts.config.hidden, ", f = ", experts.config.ffn_hidden));
    // Not a shape, but the experts read their own copy: an edit of the layer's would not reach
    // them.
    require(experts.w1.size() == 0 || experts.config.swiglu_limit == config.swiglu_limit,
            "MoELayer::config.swiglu_limit",
            detail::concat("the experts' (", experts.config.swiglu_limit, ")"),
            config.swiglu_limit);
    const bool shared_ok = config.shared.ffn_hidden > 0
                               ? detail::same_shapes(shared.config, config.shared_experts())
                               : shared.w1.size() == 0;
    require(
        shared_ok && shared_gate_weight.size() == (config.shared.gated ? config.router.hidden : 0),
        "MoELayer::config.shared", "the shapes of the shared expert it was built with",
        detail::concat("ffn_hidden ", config.shared.ffn_hidden,
                       config.shared.gated ? ", gated" : ""));
    require(config.expert_precision == ExpertPrecision::native || std::is_same_v<S, float>,
            "MoELayerConfig::expert_precision", "bf16 experts in a MoELayer<float>",
            "a MoELayer<double>");
    require(!balancer || balancer->num_experts() == config.router.num_experts, "MoELayer::balancer",
            detail::concat("a balancer of ", config.router.num_experts, " experts"),
            balancer ? balancer->num_experts() : 0);
  }

  /// The config of the routed experts `held_by` holds.
  static ExpertFFNConfig routed_experts(const MoELayerConfig& layer_config,
                                        const Exchange& held_by) {
    ExpertFFNConfig c = layer_config.experts();
    c.num_experts =
        static_cast<Index>(held_by.local_experts(layer_config.num_ffn_experts()).size());
    return c;
  }

  void make_balancer() {
    if (config.bias_balancer) balancer.emplace(config.router.num_experts, *config.bias_balancer);
  }

  /// Gradients of this layer's shapes; memory already of those shapes is kept.
  void shape_gradients(MoEGradients<S>& grads, Index tokens) const {
    detail::shape_gradients(grads.experts, experts.config, experts.w1.size() > 0);
    detail::shape_gradients(grads.shared, config.shared_experts(), config.shared.ffn_hidden > 0);
    grads.x.resize(tokens, config.router.hidden);
    grads.shared_gate.resize(config.shared.gated ? config.router.hidden : 0);
  }

  /// Expert `to_expert` of `to` = expert `from_expert` of `from` (same widths).
  static void copy_expert(const ExpertWeights<S>& from, Index from_expert, ExpertWeights<S>& to,
                          Index to_expert) {
    const MatrixMap<S>* source[] = {&from.w1, &from.w3, &from.w2, &from.b1, &from.b3, &from.b2};
    MatrixMap<S>* target[] = {&to.w1, &to.w3, &to.w2, &to.b1, &to.b3, &to.b2};
    for (int p = 0; p < 6; ++p) {
      const Index block = target[p]->size() / std::max<Index>(to.config.num_experts, 1);
      std::copy_n(source[p]->data() + from_expert * block, block,
                  target[p]->data() + to_expert * block);
    }
  }

  Bf16ExpertWeights bf16_experts_;                ///< ExpertPrecision::bf16: what the products read
  std::vector<std::uint32_t> bf16_fingerprint_;   ///< fingerprint() when bf16_experts_ was made
  PackedExpertWeights<S> panel_experts_;          ///< ExpertLayout::panels: what the forward reads
  std::vector<std::uint32_t> panel_fingerprint_;  ///< fingerprint() when panel_experts_ was made
};

template <class S, class Exchange>
void MoELayer<S, Exchange>::backward_of_step(const ConstMatrixRef<S>& x, Context& ctx,
                                             const ConstMatrixRef<S>& grad_y,
                                             MoEGradients<S>& grads) {
  const Routing<S>& routing = ctx.router.routing;
  const Index tokens = routing.num_tokens(), d = config.router.hidden;
  exchange.agree([&] {
    check_config();
    // The context first: a backward without its forward is what a wrong shape here means.
    exchange.require_forward(ctx.exchange, config.dispatch, x.rows());
    require(tokens == x.rows(), "ctx",
            detail::concat("a context filled by the forward of ", x.rows(), " tokens"),
            detail::concat("a router context of ", tokens, " tokens"));
    require_shape(x, "x", tokens, d);
    require_shape(grad_y, "grad_y", tokens, d);
    require_finite(grad_y, "grad_y");
  });
  shape_gradients(grads, tokens);
  RouterUpstream<S>& upstream = ctx.upstream;
  upstream.gates.resize(tokens, config.router.top_k);
  if (config.weight_before_ffn) {
    // The experts saw x'_t = w_t x_t with unit gates: dw_t = <dx'_t, x_t>, dx_t = w_t dx'_t.
    ctx.unit_gate_grad.resize(tokens, 1);
    exchange.template backward<S>(config, expert_compute(/*forward=*/false, /*training=*/true),
                                  ctx.weighted_x, grad_y, ctx.exchange, grads.experts, grads.x,
                                  ctx.unit_gate_grad);
    for (Index t = 0; t < tokens; ++t) {
      upstream.gates(t, 0) = grads.x.row(t).dot(x.row(t));
      grads.x.row(t) *= routing.gates(t, 0);
    }
  } else {
    exchange.template backward<S>(config, expert_compute(/*forward=*/false, /*training=*/true), x,
                                  grad_y, ctx.exchange, grads.experts, grads.x, upstream.gates);
    if (config.zero_computation_experts > 0) {
      // y_t += w0_t x_t: dx_t += w0_t dy_t, and each zero-expert gate gets <x_t, dy_t>.
      const ExpertId first_zero = static_cast<ExpertId>(config.num_ffn_experts());
      for (Index t = 0; t < tokens; ++t) {
        const S through = x.row(t).dot(grad_y.row(t));
        for (Index j = 0; j < routing.top_k(); ++j)
          if (routing.expert_ids(t, j) >= first_zero) upstream.gates(t, j) = through;
        grads.x.row(t) += ctx.identity_gate[t] * grad_y.row(t);
      }
    }
  }

  // Parameters every process holds whole: the shared expert, then the router from its three
  // upstream gradients (gates from the routed experts, scores from the aux loss, logits from the
  // z-loss). Both add their input gradient to grads.x.
  if (config.shared.ffn_hidden > 0)
    shared_expert_backward<S>(shared, shared_gate_weight, config.shared.gated, x, ctx.shared,
                              grad_y, grads.shared, grads.shared_gate, grads.x);
  upstream.scores = ctx.aux.grad;
  upstream.logits = ctx.z.grad;
  router.backward(x, ctx.router, upstream, grads.router);
  grads.x += grads.router.x;
}

template <class S, class Exchange>
MoEOutput<S> MoELayer<S, Exchange>::step(const ConstMatrixRef<S>& x,
                                         const ExpertIdMatrix* recorded_ids, Context& ctx,
                                         Mode mode, std::uint64_t seed, Index micro_batch,
                                         const IndexVector* cu_seqlens) {
  ctx.mode = mode;
  const Routing<S>* routed = nullptr;
  exchange.agree([&] {
    check_config();
    // Adaptive k is chosen per call: the layer's config.router sets it for the router.
    router.config.active_top_k = config.router.active_top_k;
    router.config.min_top_k = config.router.min_top_k;
    router.config.top_k_threshold = config.router.top_k_threshold;
    const std::uint64_t router_seed = exchange.router_seed(seed);
    routed = recorded_ids != nullptr
                 ? &router.replay(x, *recorded_ids, ctx.router, mode, router_seed)
                 : &router.forward(x, ctx.router, mode, router_seed);
  });
  const Routing<S>& own = *routed;
  const Routing<S>& batch = exchange.batch_routing(own, ctx.exchange);
  const ExpertCompute<S> experts_now =
      expert_compute(/*forward=*/true, /*training=*/mode == Mode::train);

  MoEOutput<S> out;
  out.y.resize(x.rows(), config.router.hidden);
  std::optional<CapacityStats> capacity;
  if (config.weight_before_ffn) {
    // y_t = FFN_e(w_t x_t) (Llama 4): the experts take the scaled rows with unit gates.
    ctx.weighted_x = (x.array().colwise() * own.gates.col(0).array()).matrix();
    ctx.unit_routing.expert_ids = own.expert_ids;
    ctx.unit_routing.gates.setOnes(own.num_tokens(), 1);
    capacity = exchange.template forward<S>(config, experts_now, ctx.weighted_x, ctx.unit_routing,
                                            batch, mode, seed, ctx.exchange, out.y);
  } else if (config.zero_computation_experts > 0) {
    // LongCat-Flash: the FFN experts get the choices of FFN experts; the zero-computation ones
    // add w0_t x_t, w0_t the sum of their gates in choice order.
    const ExpertId first_zero = static_cast<ExpertId>(config.num_ffn_experts());
    ctx.ffn_routing.expert_ids = own.expert_ids;
    ctx.ffn_routing.gates = own.gates;
    ctx.identity_gate.setZero(own.num_tokens());
    for (Index t = 0; t < own.num_tokens(); ++t)
      for (Index j = 0; j < own.top_k(); ++j)
        if (own.expert_ids(t, j) >= first_zero) {
          ctx.identity_gate[t] += own.gates(t, j);
          ctx.ffn_routing.expert_ids(t, j) = kUnusedSlot;
        }
    capacity = exchange.template forward<S>(config, experts_now, x, ctx.ffn_routing, batch, mode,
                                            seed, ctx.exchange, out.y);
    out.y += (x.array().colwise() * ctx.identity_gate.array()).matrix();
  } else {
    capacity = exchange.template forward<S>(config, experts_now, x, own, batch, mode, seed,
                                            ctx.exchange, out.y);
  }
  if (config.shared.ffn_hidden > 0)
    shared_expert_forward<S>(shared, shared_gate_weight, config.shared.gated, config.block_size, x,
                             ctx.shared, out.y, mode);

  ctx.aux = LossGradient<S>();
  ctx.z = LossGradient<S>();
  if (mode == Mode::train) {
    if (cu_seqlens != nullptr) {
      const IndexVector sequences = exchange.batch_sequences(*cu_seqlens, ctx.exchange);
      detail::routing_losses(config, batch, ctx.aux, ctx.z, &sequences);
    } else {
      detail::routing_losses(config, batch, ctx.aux, ctx.z);
    }
    exchange.keep_own_rows(ctx.aux, ctx.exchange);
    exchange.keep_own_rows(ctx.z, ctx.exchange);
    out.aux_loss = ctx.aux.value;
    out.z_loss = ctx.z.value;
    if (balancer) {
      // loads after capacity drops (Megatron counts the final routing map)
      if (capacity)
        balancer->accumulate_counts(micro_batch, capacity->kept);
      else
        balancer->accumulate(micro_batch, batch.expert_ids);
    }
  }
  out.health = capacity ? health_report(batch, *capacity, config.health)
                        : health_report(batch, config.health);
  // This process's tokens (the whole batch with LocalExchange): the router and x are its own.
  if (config.health.bf16_what_if) out.health.what_if = bf16_what_if(router, x, Bf16Operands::both);
  return out;
}

#if defined(MOE_COMPILED_LAYER)
// The compiled component (moe::compiled, src/moe_layer.cpp) holds the layer's instantiations for
// float and double: a translation unit that uses the layer then compiles its inline members only,
// not the step and backward below them (README, "Your build's flags").
extern template class MoELayer<float>;
extern template class MoELayer<double>;
#endif

}  // namespace moe
