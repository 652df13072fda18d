// AllToAllExchange: the token exchange of a MoELayer whose experts are sharded over MPI ranks.
// Each rank routes its own tokens, sends every routed row to its expert's owner with
// MPI_Alltoallv, runs its local experts on what it received, and gets the outputs back by the
// reverse exchange (Megatron-Core's all-to-all token dispatcher; DeepSpeed expert parallelism).
// The routing is all-gathered (O(T E) values beside the O(T k d) of the token rows), so losses,
// balancer loads, capacity and health cover every rank's tokens, as a single process computes them
// on the concatenated batch.
#pragma once

#include <cstdint>
#include <exception>
#include <optional>
#include <vector>

#include "moe/balance/loss_result.hpp"
#include "moe/balance/token_mask.hpp"
#include "moe/core/random.hpp"
#include "moe/core/types.hpp"
#include "moe/dispatch/capacity_planner.hpp"
#include "moe/dispatch/dropless_permute.hpp"
#include "moe/experts/dropless_ffn.hpp"
#include "moe/experts/expert_compute.hpp"
#include "moe/experts/expert_weights.hpp"
#include "moe/health/capacity.hpp"
#include "moe/layer/config.hpp"
#include "moe/parallel/communicator.hpp"
#include "moe/parallel/expert_placement.hpp"
#include "moe/parallel/token_exchange.hpp"
#include "moe/routing/routing.hpp"

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

/// The experts sharded over the ranks of `comm`: rank r holds placement.experts_of(r). A layer
/// over this exchange keeps its router, shared expert and balancer on every rank (their gradients
/// stay on each rank: sum them as data-parallel gradients are summed); expert gradients stay on
/// their owner. Its forward and backward are collective: every rank calls them, with any number
/// of tokens (zero included) and the same `seed`. See LocalExchange for the calls it answers.
class AllToAllExchange {
 public:
  Communicator comm;
  ExpertPlacement placement;  ///< empty until bind(): contiguous blocks unless given
  CapacityScope capacity_scope = CapacityScope::global;

  /// What a step keeps for backward, and the buffers it reuses.
  template <class S>
  struct Context {
    std::vector<Index> rank_tokens;  ///< [P] tokens of each rank this step
    Index first_token = 0;           ///< this rank's first row in the concatenated batch
    Routing<S> global;               ///< every rank's routing, concatenated in rank order
    CapacityPlan<S> capacity_plan;   ///< of the whole batch (global scope) or this rank's tokens
    RowMatrix<S> weights;            ///< [T, k] combine weight of each entry (0 when dropped)
    ChoiceMask sent;                 ///< [T, k] entries sent to an expert (empty: all)
    ExchangePlan plan;
    RowMatrix<S> outgoing, incoming, computed, returned;  ///< exchange buffers, reused
    RowMatrix<S> unit_gates, unit_gate_grad;              ///< [received, 1] ones, and scratch
    RowMatrix<S> grad_weights;
    DroplessFFNContexts<S> experts;  ///< the local experts' activations
  };

  /// `expert_placement` defaults to contiguous blocks over comm.size() ranks.
  explicit AllToAllExchange(const Communicator& communicator,
                            std::optional<ExpertPlacement> expert_placement = std::nullopt,
                            CapacityScope scope = CapacityScope::global)
      : comm(communicator),
        placement(expert_placement ? *expert_placement : ExpertPlacement()),
        capacity_scope(scope),
        given_placement_(expert_placement.has_value()) {}

  void bind(const MoELayerConfig& config) {
    const Index experts = config.num_ffn_experts();
    if (!given_placement_) placement = ExpertPlacement::contiguous(experts, comm.size());
    require(placement.num_experts() == experts, "placement",
            detail::concat("a placement of ", experts, " experts"), placement.num_experts());
    require(placement.num_ranks() == comm.size(), "placement",
            detail::concat("a placement over ", comm.size(), " ranks (the communicator's size)"),
            placement.num_ranks());
  }

  std::vector<Index> local_experts(Index /*num_experts*/) const {
    return placement.experts_of(comm.rank());
  }

  /// Router noise differs per rank: each rank draws its own tokens' noise from (seed, rank).
  std::uint64_t router_seed(std::uint64_t seed) const {
    return make_rng(seed, RandomStream::rank_seed).bits(static_cast<std::uint64_t>(comm.rank()));
  }

  /// Runs this rank's local checks and work, then agrees with every rank on whether all of them
  /// succeeded before the first collective: a rank that fails rethrows its own moe::Error and the
  /// others throw one naming how many ranks failed, instead of waiting for them forever.
  template <class Work>
  void agree(Work&& work) const {
    std::exception_ptr failure;
    try {
      work();
    } catch (...) {
      failure = std::current_exception();
    }
    Index failed = failure ? 1 : 0;
    comm.allreduce_sum(&failed, 1);
    if (failure) std::rethrow_exception(failure);
    if (failed > 0)
      detail::fail("AllToAllExchange", "valid input on every rank",
                   detail::concat(failed, " other rank(s) failed their checks"));
  }

  /// ctx.global = every rank's routing in rank order (MPI_Allgatherv of ids, gates, scores and
  /// logits); ctx.rank_tokens and ctx.first_token locate this rank's rows in it.
  template <class S>
  const Routing<S>& batch_routing(const Routing<S>& own, Context<S>& ctx) const {
    const Index k = own.top_k(), E = own.num_experts();
    ctx.rank_tokens = comm.allgather(own.num_tokens());
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
    comm.allgatherv(own.expert_ids.data(), counts(k), g.expert_ids.data());
    comm.allgatherv(own.gates.data(), counts(k), g.gates.data());
    comm.allgatherv(own.scores.data(), counts(E), g.scores.data());
    comm.allgatherv(own.logits.data(), counts(E), g.logits.data());
    return g;
  }

  /// The whole batch's packed-sequence offsets: every rank's `own` offsets (over its tokens)
  /// shifted to its first row of the batch, in rank order. Call after batch_routing. Collective.
  template <class S>
  IndexVector batch_sequences(const IndexVector& own, const Context<S>& ctx) const {
    const std::vector<Index> counts = comm.allgather(own.size() - 1);
    Index total = 0;
    for (Index n : counts) total += n;
    IndexVector ends = own.tail(own.size() - 1).array() + ctx.first_token;
    IndexVector batch(total + 1);
    batch[0] = 0;
    comm.allgatherv(ends.data(), counts, batch.data() + 1);
    return batch;
  }

  /// Keeps this rank's rows of a whole-batch loss gradient.
  template <class S>
  void keep_own_rows(LossGradient<S>& loss, const Context<S>& ctx) const {
    if (loss.grad.size() == 0) return;
    const Index tokens = ctx.rank_tokens[static_cast<std::size_t>(comm.rank())];
    loss.grad = RowMatrix<S>(loss.grad.middleRows(ctx.first_token, tokens));
  }

  /// y = this rank's tokens' combined expert outputs: the rows go to their experts' owners, the
  /// owners run their experts (a dropless FFN over what they received, one unit-gated row each),
  /// the outputs come back and are combined with the gate weights (or, under capacity dispatch,
  /// the capacity plan's weights, dropped entries never sent). Collective.
  template <class S>
  std::optional<CapacityStats> forward(const MoELayerConfig& config,
                                       const ExpertCompute<S>& experts, ConstMatrixRef<S> x,
                                       const Routing<S>& own, const Routing<S>& /*batch*/,
                                       Mode mode, std::uint64_t seed, Context<S>& ctx,
                                       MatrixRef<S> y) const {
    const Index tokens = x.rows(), d = config.router.hidden, k = config.router.top_k;
    if (config.dispatch == DispatchKind::dropless) {
      ctx.weights = own.gates;
      ctx.sent.resize(0, 0);
    } else {
      plan_capacity(config, own, mode, seed, ctx);
    }

    make_exchange_plan(comm, placement, own.expert_ids, ctx.sent, config.block_size, ctx.plan);
    const ExchangePlan& ex = ctx.plan;
    ctx.outgoing.resize(tokens * k, d);
    dropless_permute<S>(x, ex.send, ctx.outgoing);
    ctx.incoming.resize(ex.rows_received, d);
    send_rows<S>(comm, ex, ctx.outgoing, ctx.incoming);
    ctx.computed.resize(ex.rows_received, d);
    if (ex.rows_received > 0) {
      ctx.unit_gates = RowMatrix<S>::Ones(ex.rows_received, 1);
      dropless_ffn_forward<S>(experts, ctx.incoming, ctx.unit_gates, ex.experts, ctx.experts,
                              /*save_for_backward=*/true, ctx.computed);
    }
    ctx.returned.resize(tokens * k, d);
    return_rows<S>(comm, ex, ctx.computed, ctx.returned);
    dropless_unpermute<S>(ctx.returned, ctx.weights, ex.send, y);

    if (config.dispatch == DispatchKind::dropless) return std::nullopt;
    return global_capacity_stats(ctx);
  }

  /// Checks that `ctx` holds the forward of `tokens` tokens.
  template <class S>
  void require_forward(const Context<S>& ctx, DispatchKind /*kind*/, Index tokens) const {
    require(ctx.plan.send.num_tokens == tokens, "ctx",
            detail::concat("a context filled by the forward of ", tokens, " tokens"),
            detail::concat("a context of ", ctx.plan.send.num_tokens, " tokens"));
  }

  /// Backward of forward: back through the combine, to the experts' owners, through the experts
  /// and home again, in forward's buffers. Collective.
  template <class S>
  void backward(const MoELayerConfig& config, const ExpertCompute<S>& experts,
                ConstMatrixRef<S> /*x*/, ConstMatrixRef<S> grad_y, Context<S>& ctx,
                ExpertGradients<S>& grads, MatrixRef<S> grad_x, RowMatrix<S>& grad_gates) const {
    const ExchangePlan& ex = ctx.plan;
    ctx.grad_weights.resize(grad_y.rows(), config.router.top_k);
    dropless_unpermute_backward<S>(grad_y, ctx.returned, ctx.weights, ex.send, ctx.outgoing,
                                   ctx.grad_weights);
    send_rows<S>(comm, ex, ctx.outgoing, ctx.incoming);
    if (ex.rows_received > 0) {
      ctx.unit_gate_grad.resize(ex.rows_received, 1);  // the unit gates' gradient: unused
      dropless_ffn_backward<S>(experts, ctx.incoming, ex.experts, ctx.experts, grads, ctx.computed,
                               ctx.unit_gate_grad);
    } else {
      // no rows reached this rank's experts: their gradients are zero, not last step's
      for (auto* g : {&grads.w1, &grads.w3, &grads.w2, &grads.b1, &grads.b3, &grads.b2})
        g->setZero();
    }
    return_rows<S>(comm, ex, ctx.computed, ctx.returned);
    dropless_permute_backward<S>(ctx.returned, ex.send, grad_x);
    grad_gates = gate_gradient(config, ctx);
  }

 private:
  /// Capacity plan of the whole batch or of this rank's tokens; this rank's entries' weights and
  /// which of them are sent. The seed must be the same on every rank (random drop policy).
  template <class S>
  void plan_capacity(const MoELayerConfig& config, const Routing<S>& own, Mode mode,
                     std::uint64_t seed, Context<S>& ctx) const {
    const bool global = capacity_scope == CapacityScope::global;
    ctx.capacity_plan = make_capacity_plan(global ? ctx.global : own, config.capacity, mode, seed);
    const Index tokens = own.num_tokens(), k = own.top_k();
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

  /// Capacity counts of the whole batch. Per rank, an expert's capacity is the sum of the ranks'
  /// C, and its kept and dropped entries the sums of the ranks'. Collective.
  template <class S>
  CapacityStats global_capacity_stats(const Context<S>& ctx) const {
    CapacityStats stats = capacity_stats(ctx.capacity_plan);
    if (capacity_scope == CapacityScope::global) return stats;
    comm.allreduce_sum(stats.kept.data(), stats.kept.size());
    comm.allreduce_sum(&stats.capacity, 1);
    comm.allreduce_sum(stats.dropped.data(), stats.dropped.size());
    // Every rank gathers both per-token counts, also one whose tokens used all k slots.
    if (stats.token_routed.size() == 0)
      stats.token_routed.setConstant(stats.token_kept.size(), ctx.capacity_plan.top_k);
    for (IndexVector* per_token : {&stats.token_kept, &stats.token_routed}) {
      const IndexVector own = *per_token;
      per_token->resize(ctx.global.num_tokens());
      comm.allgatherv(own.data(), ctx.rank_tokens, per_token->data());
    }
    return stats;
  }

  /// d loss / d gates [T, k] from d loss / d combine weight: the same under dropless; through the
  /// capacity plan's renormalization otherwise (token by token, so the whole-batch plan only
  /// needs this rank's entries filled in).
  template <class S>
  RowMatrix<S> gate_gradient(const MoELayerConfig& config, const Context<S>& ctx) const {
    const RowMatrix<S>& grad_weights = ctx.grad_weights;
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

  bool given_placement_ = false;
};

}  // namespace moe
