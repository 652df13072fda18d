// The expert FFN over a capacity buffer [E, C, d] (stored as E*C rows): batched per-expert GEMMs,
// as DeepSpeed, Tutel, fairseq and GShard run their experts. Dispatch and combine belong to the
// capacity dispatcher; this works on the buffer alone.
#pragma once

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/core/workspace.hpp"
#include "moe/experts/detail/grouped_ffn.hpp"
#include "moe/experts/expert_weights.hpp"
#include "moe/sparse/topology.hpp"

namespace moe {

/// What capacity_ffn_forward saves for backward, plus its scratch; reused across steps.
template <class S>
struct CapacityFFNContext {
  BlockSparseTopology topology;
  Workspace workspace;
  Index capacity = -1;  ///< -1 until a forward ran
};

namespace detail {

template <class S>
GroupedBuffers<S> capacity_buffers(const ExpertWeights<S>& w, CapacityFFNContext<S>& ctx) {
  return GroupedBuffers<S>{ctx.workspace, w.config.num_experts * ctx.capacity, w.config.hidden,
                           w.config.ffn_hidden, is_gated(w.config.activation)};
}

}  // namespace detail

/// y[e*C + s] = act(x[e*C + s] W1[e] + b1[e]) W2[e] + b2[e] for the first filled[e] slots of each
/// expert; the other slots are empty: not read, and 0 in the output (DeepSpeed/Tutel expert
/// batching, skipping what the dispatcher left empty). x and out [E*C, d]; `filled` [E] or empty
/// for "every slot holds a token" (then empty slots give FFN(0), as a dense batched GEMM does).
template <class S>
void capacity_ffn_forward(const ExpertWeights<S>& weights, ConstMatrixRef<S> x, Index capacity,
                          const Eigen::Ref<const IndexVector>& filled, CapacityFFNContext<S>& ctx,
                          MatrixRef<S> out) {
  detail::require_weights(weights, "weights");
  const ExpertFFNConfig& c = weights.config;
  const Index experts = c.num_experts;
  require(capacity >= 0, "capacity", ">= 0", capacity);
  require_shape(x, "x", experts * capacity, c.hidden);
  require_shape(out, "out", experts * capacity, c.hidden);
  require(filled.size() == 0 || filled.size() == experts, "filled",
          detail::concat("0 or ", experts, " entries"), filled.size());
  IndexVector offsets(experts + 1), rows(experts);
  for (Index e = 0; e <= experts; ++e) offsets[e] = e * capacity;
  for (Index e = 0; e < experts; ++e) {
    rows[e] = filled.size() ? filled[e] : capacity;
    require(rows[e] >= 0 && rows[e] <= capacity, "filled",
            detail::concat("0 <= filled <= capacity (", capacity, ") for expert ", e), rows[e]);
  }
  ctx.capacity = capacity;
  ctx.topology = make_topology(offsets, rows, 1, c.ffn_hidden, c.block_cols);
  ctx.topology.write_padding = false;  // empty slots are copied out as zeros below, never read
  detail::GroupedBuffers<S> buf = detail::capacity_buffers(weights, ctx);
  auto xs = buf.x();
  // Copied so backward does not depend on the caller keeping x alive; empty slots are never read.
  detail::parallel_for(0, experts, [&](Index e) {
    const Index g0 = e * capacity;
    xs.middleRows(g0, rows[e]) = x.middleRows(g0, rows[e]);
  });
  detail::grouped_ffn_forward(weights, ctx.topology, buf.x(), buf);
  auto y = buf.y();
  detail::parallel_for(0, experts, [&](Index e) {
    const Index g0 = e * capacity;
    out.middleRows(g0, rows[e]) = y.middleRows(g0, rows[e]);
    out.middleRows(g0 + rows[e], capacity - rows[e]).setZero();
  });
}

/// Backward of capacity_ffn_forward: grad_x [E*C, d] (0 in empty slots) and every parameter
/// gradient into `grads` (overwritten). Gradients in empty slots of grad_out are ignored.
template <class S>
void capacity_ffn_backward(const ExpertWeights<S>& weights, ConstMatrixRef<S> grad_out,
                           CapacityFFNContext<S>& ctx, ExpertGradients<S>& grads,
                           MatrixRef<S> grad_x) {
  detail::require_weights(weights, "weights");
  require(ctx.capacity >= 0, "ctx", "a context filled by capacity_ffn_forward", "an empty context");
  detail::require_weights(grads, "grads");
  require(grads.w1.rows() == weights.w1.rows() && grads.w2.rows() == weights.w2.rows() &&
              grads.w3.size() == weights.w3.size() && grads.b1.size() == weights.b1.size(),
          "grads", "ExpertGradients built from the weights' config", "another config");
  const ExpertFFNConfig& c = weights.config;
  const Index rows_total = c.num_experts * ctx.capacity;
  require_shape(grad_out, "grad_out", rows_total, c.hidden);
  require_shape(grad_x, "grad_x", rows_total, c.hidden);
  const BlockSparseTopology& topo = ctx.topology;
  detail::GroupedBuffers<S> buf = detail::capacity_buffers(weights, ctx);
  auto dy = buf.dy();
  detail::parallel_for(0, c.num_experts, [&](Index e) {
    const Index g0 = topo.group_offsets[e], n = topo.group_rows[e];
    dy.middleRows(g0, n) = grad_out.middleRows(g0, n);
  });
  detail::grouped_ffn_backward(weights, topo, buf, grads);
  auto dx = buf.dx();
  detail::parallel_for(0, c.num_experts, [&](Index e) {
    const Index g0 = topo.group_offsets[e], n = topo.group_rows[e];
    grad_x.middleRows(g0, n) = dx.middleRows(g0, n);
    grad_x.middleRows(g0 + n, ctx.capacity - n).setZero();
  });
}

}  // namespace moe
