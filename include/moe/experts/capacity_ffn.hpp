// The expert FFN over a capacity buffer [E, C, d] (stored as E*C rows): batched per-expert GEMMs,
// as DeepSpeed, Tutel, fairseq and GShard run their experts. Dispatch and combine belong to the
// capacity dispatcher; this works on the buffer alone.
#pragma once

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/core/workspace.hpp"
#include "moe/experts/detail/grouped_ffn.hpp"
#include "moe/experts/expert_weights.hpp"
#include "moe/experts/packed_expert_weights.hpp"
#include "moe/sparse/topology.hpp"

namespace moe {

/// What capacity_ffn_forward saves for backward, plus its scratch; reused across steps.
template <class S>
struct CapacityFFNContext {
  BlockSparseTopology topology;
  Workspace workspace;
  /// Whether forward keeps a copy of its input for backward. Off, the expert products read x in
  /// place, and only the backward that is given x again works (MoELayer keeps its dispatch buffer
  /// until backward and passes it, so it never copies).
  bool save_for_backward = true;
  Index capacity = -1;  ///< -1 until a forward ran
  bool saved = false;   ///< whether the last forward kept its input
  /// The config of the weights the last forward ran with (num_experts -1 before any).
  ExpertFFNConfig experts{-1};
};

namespace detail {

template <class S>
GroupedBuffers<S> capacity_buffers(const ExpertWeights<S>& w, CapacityFFNContext<S>& ctx) {
  return GroupedBuffers<S>{ctx.workspace, w.config.num_experts * ctx.capacity, w.config.hidden,
                           w.config.ffn_hidden, is_gated(w.config.activation)};
}

/// capacity_ffn_forward, its products reading `panels` (a copy of weights' matrices) when set.
template <class S>
void capacity_ffn_forward_over(const ExpertWeights<S>& weights,
                               const PackedExpertWeights<S>* panels, ConstMatrixRef<S> x,
                               Index capacity, const Eigen::Ref<const IndexVector>& filled,
                               CapacityFFNContext<S>& ctx, MatrixRef<S> out) {
  require_weights(weights, "weights");
  if (panels != nullptr) require_panels_of(*panels, weights.config);
  const ExpertFFNConfig& c = weights.config;
  const Index experts = c.num_experts;
  require(capacity >= 0, "capacity", ">= 0", capacity);
  const Index slots = checked_mul(experts, capacity, "capacity");
  require_shape(x, "x", slots, c.hidden);
  require_shape(out, "out", slots, c.hidden);
  require(filled.size() == 0 || filled.size() == experts, "filled",
          concat("0 or ", experts, " entries"), filled.size());
  IndexVector offsets(experts + 1), rows(experts);
  for (Index e = 0; e <= experts; ++e) offsets[e] = e * capacity;
  for (Index e = 0; e < experts; ++e) {
    rows[e] = filled.size() ? filled[e] : capacity;
    require(rows[e] >= 0 && rows[e] <= capacity, "filled",
            concat("0 <= filled <= capacity (", capacity, ") for expert ", e), rows[e]);
  }
  // Only the filled slots are read: a NaN in an empty one is the dispatcher's padding, not input.
  for (Index e = 0; e < experts; ++e) require_finite(x.middleRows(e * capacity, rows[e]), "x");
  ctx.capacity = capacity;
  ctx.experts = c;
  ctx.topology = make_topology(offsets, rows, 1, c.ffn_hidden, c.block_cols);
  ctx.topology.write_padding = false;  // empty slots are set to zero below, never read
  ctx.saved = ctx.save_for_backward;
  GroupedBuffers<S> buf = capacity_buffers(weights, ctx);
  if (ctx.saved) {
    // Copied so backward does not depend on the caller keeping x alive.
    auto xs = buf.x();
    kernels::parallel_for(0, experts, [&](Index e) {
      const Index g0 = e * capacity;
      xs.middleRows(g0, rows[e]) = x.middleRows(g0, rows[e]);
    });
    grouped_ffn_forward<S>(weights, ctx.topology, buf.x(), buf, out, panels);
  } else {
    // Every read of x (the first products) ends before the last product writes out.
    grouped_ffn_forward<S>(weights, ctx.topology, x, buf, out, panels);
  }
  kernels::parallel_for(0, experts, [&](Index e) {
    out.middleRows(e * capacity + rows[e], capacity - rows[e]).setZero();
  });
}

}  // namespace detail

/// y[e*C + s] = act(x[e*C + s] W1[e] + b1[e]) W2[e] + b2[e] for the first filled[e] slots of each
/// expert; the other slots are empty: not read, and 0 in the output (DeepSpeed/Tutel expert
/// batching, skipping what the dispatcher left empty). x and out [E*C, d], out written in place
/// (it may be x itself); `filled` [E] or empty for "every slot holds a token" (then empty slots
/// give FFN(0), as a dense batched GEMM does).
template <class S>
void capacity_ffn_forward(const ExpertWeights<S>& weights, ConstMatrixRef<S> x, Index capacity,
                          const Eigen::Ref<const IndexVector>& filled, CapacityFFNContext<S>& ctx,
                          MatrixRef<S> out) {
  detail::capacity_ffn_forward_over<S>(weights, nullptr, x, capacity, filled, ctx, out);
}

/// The same with the products reading `panels`, the panel copy of weights' matrices
/// (PackedExpertWeights(weights), refreshed since weights last changed): the same bits.
template <class S>
void capacity_ffn_forward(const ExpertWeights<S>& weights, const PackedExpertWeights<S>& panels,
                          ConstMatrixRef<S> x, Index capacity,
                          const Eigen::Ref<const IndexVector>& filled, CapacityFFNContext<S>& ctx,
                          MatrixRef<S> out) {
  detail::capacity_ffn_forward_over<S>(weights, &panels, x, capacity, filled, ctx, out);
}

namespace detail {

/// The body of capacity_ffn_backward over the forward's grouped input x.
template <class S>
void capacity_ffn_backward_grouped(const ExpertWeights<S>& weights, ConstMatrixRef<S> x,
                                   ConstMatrixRef<S> grad_out, CapacityFFNContext<S>& ctx,
                                   ExpertGradients<S>& grads, MatrixRef<S> grad_x) {
  // Shaped like the weights on first use (a default-built ExpertGradients), as MoEGradients is.
  shape_gradients(grads, weights.config);
  require_weights(grads, "grads");
  const ExpertFFNConfig& c = weights.config;
  const Index rows_total = c.num_experts * ctx.capacity;
  require_shape(grad_out, "grad_out", rows_total, c.hidden);
  require_shape(grad_x, "grad_x", rows_total, c.hidden);
  const BlockSparseTopology& topo = ctx.topology;
  for (Index e = 0; e < c.num_experts; ++e)
    require_finite(grad_out.middleRows(topo.group_offsets[e], topo.group_rows[e]), "grad_out");
  GroupedBuffers<S> buf = capacity_buffers(weights, ctx);
  auto dy = buf.dy();
  kernels::parallel_for(0, c.num_experts, [&](Index e) {
    const Index g0 = topo.group_offsets[e], n = topo.group_rows[e];
    dy.middleRows(g0, n) = grad_out.middleRows(g0, n);
  });
  grouped_ffn_backward<S>(weights, topo, x, buf, grads);
  auto dx = buf.dx();
  kernels::parallel_for(0, c.num_experts, [&](Index e) {
    const Index g0 = topo.group_offsets[e], n = topo.group_rows[e];
    grad_x.middleRows(g0, n) = dx.middleRows(g0, n);
    grad_x.middleRows(g0 + n, ctx.capacity - n).setZero();
  });
}

template <class S>
void require_capacity_context(const ExpertWeights<S>& weights, const CapacityFFNContext<S>& ctx) {
  require_weights(weights, "weights");
  require_forward_of(ctx.experts, weights.config, "capacity_ffn_forward");
}

}  // namespace detail

/// Backward of capacity_ffn_forward: grad_x [E*C, d] (0 in empty slots) and every parameter
/// gradient into `grads` (overwritten). Gradients in empty slots of grad_out are ignored. The
/// forward must have run with ctx.save_for_backward; the overload taking x does not need it.
template <class S>
void capacity_ffn_backward(const ExpertWeights<S>& weights, ConstMatrixRef<S> grad_out,
                           CapacityFFNContext<S>& ctx, ExpertGradients<S>& grads,
                           MatrixRef<S> grad_x) {
  detail::require_capacity_context(weights, ctx);
  require(ctx.saved, "ctx", "a context whose forward ran with save_for_backward = true",
          "a context of a forward that saved nothing (save_for_backward = false)");
  detail::GroupedBuffers<S> buf = detail::capacity_buffers(weights, ctx);
  detail::capacity_ffn_backward_grouped<S>(weights, buf.x(), grad_out, ctx, grads, grad_x);
}

/// The same given the forward's input x [E*C, d] (unchanged since the forward), read in place
/// whether or not the forward saved a copy of it.
template <class S>
void capacity_ffn_backward(const ExpertWeights<S>& weights, ConstMatrixRef<S> x,
                           ConstMatrixRef<S> grad_out, CapacityFFNContext<S>& ctx,
                           ExpertGradients<S>& grads, MatrixRef<S> grad_x) {
  detail::require_capacity_context(weights, ctx);
  require_shape(x, "x", weights.config.num_experts * ctx.capacity, weights.config.hidden);
  detail::capacity_ffn_backward_grouped<S>(weights, x, grad_out, ctx, grads, grad_x);
}

}  // namespace moe
