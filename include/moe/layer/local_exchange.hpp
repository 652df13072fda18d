// LocalExchange: the token exchange of a MoELayer whose experts all live in this process. A
// MoELayer's exchange takes the routed tokens to the experts, runs them and brings the outputs back
// (Megatron-Core's token dispatchers; MegaBlocks' forward functions); this one does it in memory:
// the dropless path sorts the rows by expert and reads them in place, the capacity path copies them
// into the [E, C, d] buffer and combines from it. The all-to-all exchange over MPI ranks,
// moe/parallel/all_to_all_exchange.hpp, answers the same calls.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "moe/balance/loss_result.hpp"
#include "moe/core/types.hpp"
#include "moe/dispatch/capacity_planner.hpp"
#include "moe/dispatch/dispatch.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "moe/experts/capacity_ffn.hpp"
#include "moe/experts/dropless_ffn.hpp"
#include "moe/experts/expert_compute.hpp"
#include "moe/experts/expert_weights.hpp"
#include "moe/health/capacity.hpp"
#include "moe/layer/config.hpp"
#include "moe/routing/routing.hpp"

namespace moe {

/// Every expert in this process; tokens reach them without leaving it.
///
/// What a token exchange answers, for MoELayer (AllToAllExchange answers the same):
/// - local_experts(E): the global ids of the routed experts held here, ascending;
/// - bind(config): checks itself against the layer's config, once, before the layer is built;
/// - router_seed(seed): the seed of this process's router noise;
/// - agree(work): runs `work` (checks, the router), then agrees with every process on whether all
///   succeeded, so a failure on one never leaves the others waiting in a collective;
/// - batch_routing(own, ctx): the routing of the whole batch the losses, balancer and health read;
/// - batch_sequences(own, ctx): packed-sequence offsets over that batch, from this process's;
/// - keep_own_rows(loss, ctx): this process's rows of a whole-batch loss gradient;
/// - forward(...): y = the combined expert outputs of this process's tokens; returns the whole
///   batch's capacity counts under capacity dispatch;
/// - require_forward(ctx, tokens) and backward(...): the adjoint of forward.
class LocalExchange {
 public:
  /// What a step keeps for backward, and the buffers it reuses.
  template <class S>
  struct Context {
    DroplessPlan plan;                ///< dropless: the rows sorted by expert
    DroplessFFNContexts<S> dropless;  ///< dropless: the experts' activations
    CapacityPlan<S> capacity_plan;    ///< capacity: each entry's slot, or dropped
    CapacityFFNContexts<S> capacity_ffn;
    RowMatrix<S> expert_in, expert_out;  ///< capacity buffers [E*C, d], kept until backward
    CombineGradients<S> combine;         ///< backward's scratch
    RowMatrix<S> grad_expert_in;
  };

  std::vector<Index> local_experts(Index num_experts) const {
    std::vector<Index> all(static_cast<std::size_t>(num_experts));
    for (Index e = 0; e < num_experts; ++e) all[static_cast<std::size_t>(e)] = e;
    return all;
  }
  void bind(const MoELayerConfig& /*config*/) {}
  std::uint64_t router_seed(std::uint64_t seed) const { return seed; }
  template <class Work>
  void agree(Work&& work) const {
    work();
  }
  template <class S>
  const Routing<S>& batch_routing(const Routing<S>& own, Context<S>& /*ctx*/) const {
    return own;
  }
  template <class S>
  IndexVector batch_sequences(const IndexVector& own, const Context<S>& /*ctx*/) const {
    return own;
  }
  template <class S>
  void keep_own_rows(LossGradient<S>& /*loss*/, const Context<S>& /*ctx*/) const {}

  /// y[t] = sum_j w_tj FFN_{e_tj}(x_t) over the kept choices of `routing`. Dropless: MegaBlocks'
  /// dMoE (in eval the expert products read the rows of x in place). Capacity: dispatch into the
  /// [E, C, d] buffer, the experts over its filled slots, combine (GShard, DeepSpeed, Tutel).
  template <class S>
  std::optional<CapacityStats> forward(const MoELayerConfig& config,
                                       const ExpertCompute<S>& experts, ConstMatrixRef<S> x,
                                       const Routing<S>& routing, const Routing<S>& /*batch*/,
                                       Mode mode, std::uint64_t seed, Context<S>& ctx,
                                       MatrixRef<S> y) const {
    if (config.dispatch == DispatchKind::dropless) {
      make_dropless_plan(routing.expert_ids, config.num_ffn_experts(), config.block_size, ctx.plan);
      // Eval reads token rows in place; a backward after it groups x then (it is given x).
      dropless_ffn_forward<S>(experts, x, routing.gates, ctx.plan, ctx.dropless,
                              /*save_for_backward=*/mode == Mode::train, y);
      return std::nullopt;
    }
    ctx.capacity_plan = make_capacity_plan(routing, config.capacity, mode, seed);
    const CapacityPlan<S>& plan = ctx.capacity_plan;
    ctx.expert_in.resize(plan.num_slots(), config.router.hidden);
    ctx.expert_out.resize(plan.num_slots(), config.router.hidden);
    dispatch<S>(plan, x, ctx.expert_in);
    // The dispatch buffer stays in the context until backward: the experts read it in place.
    capacity_ffn_forward<S>(experts, ctx.expert_in, plan.capacity, plan.kept, ctx.capacity_ffn,
                            /*save_for_backward=*/false, ctx.expert_out);
    combine<S>(plan, ctx.expert_out, y);
    return capacity_stats(plan);
  }

  /// Checks that `ctx` holds the forward of `tokens` tokens.
  template <class S>
  void require_forward(const Context<S>& ctx, DispatchKind kind, Index tokens) const {
    const Index planned =
        kind == DispatchKind::dropless
            ? ctx.dropless.num_tokens()
            : (ctx.capacity_ffn.capacity() < 0 ? -1 : ctx.capacity_plan.num_tokens);
    require(planned == tokens, "ctx",
            detail::concat("a context filled by the forward of ", tokens, " tokens"),
            detail::concat("a context of ", std::max<Index>(planned, 0), " tokens"));
  }

  /// Backward of forward: grad_x of the routed path, every expert's gradient (overwritten; experts
  /// that received no rows get zeros) and d loss / d gates [T, k].
  template <class S>
  void backward(const MoELayerConfig& config, const ExpertCompute<S>& experts, ConstMatrixRef<S> x,
                ConstMatrixRef<S> grad_y, Context<S>& ctx, ExpertGradients<S>& grads,
                MatrixRef<S> grad_x, RowMatrix<S>& grad_gates) const {
    if (config.dispatch == DispatchKind::dropless) {
      dropless_ffn_backward<S>(experts, x, grad_y, ctx.plan, ctx.dropless, grads, grad_x,
                               grad_gates);
      return;
    }
    const Index d = config.router.hidden;
    const CapacityPlan<S>& plan = ctx.capacity_plan;
    ctx.combine.expert_out.resize(plan.num_slots(), d);
    ctx.combine.weight.resize(plan.num_entries());
    combine_backward<S>(plan, ctx.expert_out, grad_y, ctx.combine.expert_out, ctx.combine.weight);
    ctx.grad_expert_in.resize(plan.num_slots(), d);
    capacity_ffn_backward<S>(experts, ctx.expert_in, ctx.combine.expert_out, ctx.capacity_ffn,
                             grads, ctx.grad_expert_in);
    dispatch_backward<S>(plan, ctx.grad_expert_in, grad_x);
    grad_gates = capacity_plan_backward<S>(plan, ctx.combine.weight);
  }
};

}  // namespace moe
