// ExpertParallelMoELayer: a MoE layer whose experts are sharded over MPI ranks. Each rank routes
// its own tokens, sends every routed row to its expert's owner with MPI_Alltoallv, runs its local
// experts on what it received, and gets the outputs back by the reverse exchange (Megatron-Core's
// all-to-all token dispatcher; DeepSpeed expert parallelism). Forward and backward.
#pragma once

#include <cstdint>
#include <exception>
#include <optional>
#include <vector>

#include "moe/balance/bias_balancer.hpp"
#include "moe/dispatch/capacity_planner.hpp"
#include "moe/dispatch/capacity_stats.hpp"
#include "moe/experts/dropless_ffn.hpp"
#include "moe/health/report.hpp"
#include "moe/layer/config.hpp"
#include "moe/layer/detail/routing_losses.hpp"
#include "moe/layer/detail/shared_expert.hpp"
#include "moe/layer/moe_layer.hpp"
#include "moe/parallel/communicator.hpp"
#include "moe/parallel/expert_placement.hpp"
#include "moe/parallel/token_exchange.hpp"
#include "moe/routing/router.hpp"

namespace moe {

/// Which tokens the capacity C is counted over under DispatchKind::capacity.
enum class CapacityScope {
  /// C from the whole batch (every rank's tokens, in rank order), tokens kept exactly as a single
  /// process keeps them on the concatenated batch (GShard's global capacity).
  global,
  /// C from each rank's own tokens, each rank dropping its own overflow before the exchange
  /// (Megatron-Core's all-to-all dispatcher with token dropping); an expert then takes up to P * C.
  per_rank,
};

/// What this rank saved for backward and the buffers a step reuses. Owned by the caller.
template <class S>
struct ExpertParallelContext {
  Mode mode = Mode::eval;
  RouterContext<S> router;
  std::vector<Index> rank_tokens;  ///< [P] tokens of each rank this step
  Index first_token = 0;           ///< this rank's first row in the concatenated batch
  Routing<S> global;               ///< every rank's routing, concatenated in rank order
  CapacityPlan<S> capacity_plan;   ///< of the whole batch (global scope) or this rank's tokens
  RowMatrix<S> weights;            ///< [T, k] combine weight of each entry (0 when dropped)
  ChoiceMask sent;                 ///< [T, k] entries sent to an expert (empty: all)
  ExchangePlan exchange;
  RowMatrix<S> outgoing, incoming, computed, returned;  ///< exchange buffers, reused
  RowMatrix<S> unit_gates, unit_gate_grad;              ///< [received, 1] ones, and scratch
  RouterUpstream<S> upstream;                           ///< backward's scratch, kept
  RowMatrix<S> grad_weights;
  DroplessFFNContext<S> experts;  ///< the local experts' activations
  detail::SharedExpertContext<S> shared;
  LossGradient<S> aux, z;  ///< whole-batch values; gradient rows of this rank's tokens
};

/// One MoE layer with its experts sharded over the ranks of `comm`: rank r owns the experts
/// placement.experts_of(r). The router, the shared expert and the balancer are replicated: their
/// gradients stay on each rank (sum them across ranks as data-parallel gradients are summed);
/// expert gradients stay on their owner. Forward and backward are collective: every rank calls
/// them, with any number of tokens (zero included) and the same `seed`.
template <class S>
class ExpertParallelMoELayer {
 public:
  MoELayerConfig config;
  Communicator comm;
  ExpertPlacement placement;
  CapacityScope capacity_scope = CapacityScope::global;
  Router<S> router;
  ExpertWeights<S> experts;  ///< this rank's experts, in ascending global id
  ExpertWeights<S> shared;   ///< replicated shared expert, when configured
  Vector<S> shared_gate_weight;
  std::optional<BiasBalancer<S>> balancer;

  /// `placement` defaults to contiguous blocks over comm.size() ranks.
  ExpertParallelMoELayer(const MoELayerConfig& layer_config, const Communicator& communicator,
                         std::optional<ExpertPlacement> expert_placement = std::nullopt,
                         CapacityScope scope = CapacityScope::global)
      : config((validate(layer_config), layer_config)),
        comm(communicator),
        placement(expert_placement ? *expert_placement
                                   : ExpertPlacement::contiguous(config.router.num_experts,
                                                                 communicator.size())),
        capacity_scope(scope),
        router(config.router) {
    require(placement.num_experts() == config.router.num_experts, "placement",
            detail::concat("a placement of ", config.router.num_experts, " experts"),
            placement.num_experts());
    require(placement.num_ranks() == comm.size(), "placement",
            detail::concat("a placement over ", comm.size(), " ranks (the communicator's size)"),
            placement.num_ranks());
    if (num_local_experts() > 0) experts = ExpertWeights<S>(local_expert_config());
    if (config.shared.ffn_hidden > 0) shared = ExpertWeights<S>(config.shared_experts());
    if (config.shared.gated) shared_gate_weight = Vector<S>::Zero(config.router.hidden);
    if (config.bias_balancer) balancer.emplace(config.router.num_experts, *config.bias_balancer);
  }

  Index num_local_experts() const { return placement.num_local_experts(comm.rank()); }
  const std::vector<Index>& local_experts() const { return placement.experts_of(comm.rank()); }

  /// The values MoELayer<S>::init_weights(seed) gives the same parameters of the whole layer.
  void init_weights(std::uint64_t seed) {
    router.init_weights(seed, kRouterInitStddev);
    if (num_local_experts() > 0)
      experts.init_weights(seed + 1, config.expert_init_stddev(), local_experts(),
                           config.router.num_experts);
    detail::init_shared_expert<S>(config, seed, shared, shared_gate_weight);
  }

  /// Copies the parameters this rank holds from a single-process layer of the same config: the
  /// router, the shared expert, and this rank's experts (e.g. to shard a checkpoint).
  void load_from(const MoELayer<S>& whole) {
    require(whole.config.router.num_experts == config.router.num_experts &&
                whole.config.router.hidden == config.router.hidden &&
                whole.config.ffn_hidden == config.ffn_hidden,
            "whole", "a MoELayer with this layer's experts, hidden and ffn_hidden",
            "another shape");
    router.weight = whole.router.weight;
    router.bias = whole.router.bias;
    router.noise_weight = whole.router.noise_weight;
    router.selection_bias = whole.router.selection_bias;
    const std::vector<Index>& mine = local_experts();
    for (std::size_t i = 0; i < mine.size(); ++i)
      copy_expert(whole.experts, mine[i], experts, static_cast<Index>(i));
    if (config.shared.ffn_hidden > 0) shared = whole.shared;
    if (config.shared.gated) shared_gate_weight = whole.shared_gate_weight;
  }

  /// y = sum_j w_tj FFN_{e_tj}(x_t) over kept choices (+ the shared expert), as MoELayer::forward,
  /// with the experts on their owners. Losses, health and balancer loads cover every rank's
  /// tokens (the routing is all-gathered: O(T E) values beside the O(T k d) of the token rows),
  /// so every rank returns the same losses and health report. Collective.
  MoEOutput<S> forward(const ConstMatrixRef<S>& x, ExpertParallelContext<S>& ctx, Mode mode,
                       std::uint64_t seed = 0, Index micro_batch = 0) {
    ctx.mode = mode;
    const Index tokens = x.rows(), d = config.router.hidden, k = config.router.top_k;
    // Router noise differs per rank: each rank draws its own tokens' noise from (seed, rank).
    const std::uint64_t rank_seed =
        make_rng(seed, RandomStream::rank_seed).bits(static_cast<std::uint64_t>(comm.rank()));
    const Routing<S>* routed = nullptr;
    agree([&] { routed = &router.forward(x, ctx.router, mode, rank_seed); });
    const Routing<S>& routing = *routed;
    gather_routing(routing, ctx);

    if (config.dispatch == DispatchKind::dropless) {
      ctx.weights = routing.gates;
      ctx.sent.resize(0, 0);
    } else {
      plan_capacity(routing, mode, seed, ctx);
    }

    make_exchange_plan(comm, placement, routing.expert_ids, ctx.sent, config.block_size,
                       ctx.exchange);
    const ExchangePlan& ex = ctx.exchange;
    ctx.outgoing.resize(tokens * k, d);
    dropless_permute<S>(x, ex.send, ctx.outgoing);
    ctx.incoming.resize(ex.rows_received, d);
    send_rows<S>(comm, ex, ctx.outgoing, ctx.incoming);
    ctx.computed.resize(ex.rows_received, d);
    if (ex.rows_received > 0) {
      ctx.unit_gates = RowMatrix<S>::Ones(ex.rows_received, 1);
      dropless_ffn_forward<S>(experts, ctx.incoming, ctx.unit_gates, ex.experts, ctx.experts,
                              ctx.computed);
    }
    ctx.returned.resize(tokens * k, d);
    return_rows<S>(comm, ex, ctx.computed, ctx.returned);

    MoEOutput<S> out;
    out.y.resize(tokens, d);
    dropless_unpermute<S>(ctx.returned, ctx.weights, ex.send, out.y);
    if (config.shared.ffn_hidden > 0)
      detail::shared_expert_forward<S>(shared, shared_gate_weight, config.shared.gated,
                                       config.block_size, x, ctx.shared, out.y, mode);

    ctx.aux = LossGradient<S>();
    ctx.z = LossGradient<S>();
    std::optional<IndexVector> kept_counts;
    if (config.dispatch == DispatchKind::capacity) kept_counts = global_kept(ctx);
    if (mode == Mode::train) {
      detail::routing_losses(config, ctx.global, ctx.aux, ctx.z);
      keep_own_rows(ctx.aux, ctx);
      keep_own_rows(ctx.z, ctx);
      out.aux_loss = ctx.aux.value;
      out.z_loss = ctx.z.value;
      if (balancer) {
        // loads after capacity drops (Megatron counts the final routing map)
        if (kept_counts)
          balancer->accumulate_counts(micro_batch, *kept_counts);
        else
          balancer->accumulate(micro_batch, ctx.global.expert_ids);
      }
    }
    out.health = config.dispatch == DispatchKind::capacity
                     ? health_report(ctx.global, global_capacity_stats(ctx, *kept_counts))
                     : health_report(ctx.global);
    return out;
  }

  /// Gradients of <grad_y, y> + aux_loss + z_loss: x and the router's and shared expert's
  /// parameters for this rank's share of the loss, and this rank's experts for every rank's
  /// tokens. Summed over ranks, the router gradients are the single-process ones. Collective.
  MoEGradients<S> backward(const ConstMatrixRef<S>& x, ExpertParallelContext<S>& ctx,
                           const ConstMatrixRef<S>& grad_y) {
    MoEGradients<S> grads;
    backward(x, ctx, grad_y, grads);
    return grads;
  }

  /// As above into caller-kept gradients, shaped on first use and overwritten after: a training
  /// loop that keeps one MoEGradients allocates no gradient memory per step. Collective.
  void backward(const ConstMatrixRef<S>& x, ExpertParallelContext<S>& ctx,
                const ConstMatrixRef<S>& grad_y, MoEGradients<S>& grads) {
    const Routing<S>& routing = ctx.router.routing;
    const Index tokens = routing.num_tokens(), d = config.router.hidden, k = config.router.top_k;
    agree([&] {
      require(ctx.exchange.send.num_tokens == tokens, "ctx", "a context filled by forward",
              "a context of another step");
      require_shape(grad_y, "grad_y", tokens, d);
      require_shape(x, "x", tokens, d);
    });
    const ExchangePlan& ex = ctx.exchange;
    if (num_local_experts() > 0) detail::shape_gradients(grads.experts, local_expert_config());
    grads.x.resize(tokens, d);
    RouterUpstream<S>& upstream = ctx.upstream;
    RowMatrix<S>& grad_weights = ctx.grad_weights;
    grad_weights.resize(tokens, k);

    // Back through the combine, to the experts' owners, through the experts, and home again;
    // the buffers of forward are free now and take the gradient rows.
    dropless_unpermute_backward<S>(grad_y, ctx.returned, ctx.weights, ex.send, ctx.outgoing,
                                   grad_weights);
    send_rows<S>(comm, ex, ctx.outgoing, ctx.incoming);
    if (ex.rows_received > 0) {
      ctx.unit_gate_grad.resize(ex.rows_received, 1);  // the unit gates' gradient: unused
      dropless_ffn_backward<S>(experts, ctx.incoming, ex.experts, ctx.experts, grads.experts,
                               ctx.computed, ctx.unit_gate_grad);
    } else {
      // no rows reached this rank's experts: their gradients are zero, not last step's
      for (auto* g : {&grads.experts.w1, &grads.experts.w3, &grads.experts.w2, &grads.experts.b1,
                      &grads.experts.b3, &grads.experts.b2})
        g->setZero();
    }
    return_rows<S>(comm, ex, ctx.computed, ctx.returned);
    dropless_permute_backward<S>(ctx.returned, ex.send, grads.x);
    upstream.gates = gate_gradient(ctx, grad_weights);

    detail::replicated_backward<S>(config, router, shared, shared_gate_weight, x, ctx.router,
                                   ctx.shared, ctx.aux, ctx.z, grad_y, upstream, grads);
  }

  /// Once per optimizer step, as MoELayer::step_balancer: the loads were counted over every
  /// rank's tokens, so every rank computes the same bias.
  void step_balancer() {
    detail::step_bias_balancer(balancer, router, "ExpertParallelMoELayer::step_balancer");
  }

 private:
  /// Runs this rank's local checks and work, then agrees with every rank on whether all of them
  /// succeeded before the first collective: a rank that fails rethrows its own moe::Error and the
  /// others throw one naming how many ranks failed, instead of waiting for them forever.
  template <class Local>
  void agree(Local&& local) const {
    std::exception_ptr failure;
    try {
      local();
    } catch (...) {
      failure = std::current_exception();
    }
    Index failed = failure ? 1 : 0;
    comm.allreduce_sum(&failed, 1);
    if (failure) std::rethrow_exception(failure);
    if (failed > 0)
      detail::fail("ExpertParallelMoELayer", "valid input on every rank",
                   detail::concat(failed, " other rank(s) failed their checks"));
  }

  ExpertFFNConfig local_expert_config() const {
    ExpertFFNConfig c = config.experts();
    c.num_experts = num_local_experts();
    return c;
  }

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

  /// ctx.global = every rank's routing in rank order (MPI_Allgatherv of ids, gates, scores and
  /// logits); ctx.rank_tokens and ctx.first_token locate this rank's rows in it.
  void gather_routing(const Routing<S>& routing, ExpertParallelContext<S>& ctx) const {
    const Index k = config.router.top_k, E = config.router.num_experts;
    ctx.rank_tokens = comm.allgather(routing.num_tokens());
    Index total = 0;
    ctx.first_token = 0;
    for (Index q = 0; q < comm.size(); ++q) {
      if (q == comm.rank()) ctx.first_token = total;
      total += ctx.rank_tokens[static_cast<std::size_t>(q)];
    }
    auto counts = [&](Index width) {
      std::vector<Index> c(ctx.rank_tokens.size());
      for (std::size_t q = 0; q < c.size(); ++q) c[q] = ctx.rank_tokens[q] * width;
      return c;
    };
    Routing<S>& g = ctx.global;
    g.expert_ids.resize(total, k);
    g.gates.resize(total, k);
    g.scores.resize(total, E);
    g.logits.resize(total, E);
    comm.allgatherv(routing.expert_ids.data(), counts(k), g.expert_ids.data());
    comm.allgatherv(routing.gates.data(), counts(k), g.gates.data());
    comm.allgatherv(routing.scores.data(), counts(E), g.scores.data());
    comm.allgatherv(routing.logits.data(), counts(E), g.logits.data());
  }

  /// Capacity plan of the whole batch or of this rank's tokens; this rank's entries' weights and
  /// which of them are sent. The seed must be the same on every rank (random drop policy).
  void plan_capacity(const Routing<S>& routing, Mode mode, std::uint64_t seed,
                     ExpertParallelContext<S>& ctx) const {
    const bool global = capacity_scope == CapacityScope::global;
    ctx.capacity_plan =
        make_capacity_plan(global ? ctx.global : routing, config.capacity, mode, seed);
    const Index tokens = routing.num_tokens(), k = routing.top_k();
    const Index first_entry = global ? ctx.first_token * k : 0;
    ctx.weights.resize(tokens, k);
    ctx.sent.resize(tokens, k);
    for (Index t = 0; t < tokens; ++t)
      for (Index j = 0; j < k; ++j) {
        const Index entry = first_entry + t * k + j;
        ctx.weights(t, j) = ctx.capacity_plan.entry_weight[entry];
        ctx.sent(t, j) = ctx.capacity_plan.is_kept(entry);
      }
  }

  /// Entries each expert keeps over the whole batch.
  IndexVector global_kept(const ExpertParallelContext<S>& ctx) const {
    IndexVector kept = ctx.capacity_plan.kept;
    if (capacity_scope == CapacityScope::per_rank) comm.allreduce_sum(kept.data(), kept.size());
    return kept;
  }

  /// Capacity counts of the whole batch. Per rank, an expert's capacity is the sum of the ranks'
  /// C, and its dropped entries the sum of the ranks' overflows.
  CapacityStats global_capacity_stats(const ExpertParallelContext<S>& ctx,
                                      const IndexVector& kept) const {
    CapacityStats stats = capacity_stats(ctx.capacity_plan);
    if (capacity_scope == CapacityScope::global) return stats;
    stats.kept = kept;
    comm.allreduce_sum(&stats.capacity, 1);
    comm.allreduce_sum(stats.dropped.data(), stats.dropped.size());
    IndexVector own = stats.token_kept;
    stats.token_kept.resize(ctx.global.num_tokens());
    comm.allgatherv(own.data(), ctx.rank_tokens, stats.token_kept.data());
    return stats;
  }

  /// Keeps this rank's rows of a whole-batch loss gradient.
  static void keep_own_rows(LossGradient<S>& loss, const ExpertParallelContext<S>& ctx) {
    if (loss.grad.size() == 0) return;
    const Index tokens = ctx.router.routing.num_tokens();
    loss.grad = RowMatrix<S>(loss.grad.middleRows(ctx.first_token, tokens));
  }

  /// d loss / d gates [T, k] from d loss / d combine weight: the same under dropless; through the
  /// capacity plan's renormalization otherwise (token by token, so the whole-batch plan only
  /// needs this rank's entries filled in).
  RowMatrix<S> gate_gradient(const ExpertParallelContext<S>& ctx,
                             const RowMatrix<S>& grad_weights) const {
    if (config.dispatch == DispatchKind::dropless) return grad_weights;
    const Index tokens = grad_weights.rows(), k = grad_weights.cols();
    const Eigen::Map<const Vector<S>> own(grad_weights.data(), tokens * k);
    if (capacity_scope == CapacityScope::per_rank)
      return capacity_plan_backward<S>(ctx.capacity_plan, own);
    Vector<S> whole = Vector<S>::Zero(ctx.capacity_plan.num_entries());
    whole.segment(ctx.first_token * k, tokens * k) = own;
    return RowMatrix<S>(
        capacity_plan_backward<S>(ctx.capacity_plan, whole).middleRows(ctx.first_token, tokens));
  }
};

}  // namespace moe
