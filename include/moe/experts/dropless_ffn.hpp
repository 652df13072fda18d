// The dropless expert FFN (MegaBlocks dMoE): permute into the padded expert-sorted buffer, run
// every expert's FFN through block-sparse products, unpermute with the gate weights. Forward and
// backward.
#pragma once

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/core/workspace.hpp"
#include "moe/dispatch/dropless_permute.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "moe/experts/detail/grouped_ffn.hpp"
#include "moe/experts/expert_weights.hpp"
#include "moe/experts/packed_expert_weights.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/sparse/topology.hpp"

namespace moe {

/// Topology of a dropless plan's padded buffer; block_cols = 0 takes the plan's block size, giving
/// MegaBlocks' square B x B blocks.
inline BlockSparseTopology make_topology(const DroplessPlan& plan, Index ffn_hidden,
                                         Index block_cols = 0) {
  require(block_cols >= 0, "block_cols", ">= 0 (0: the plan's block size)", block_cols);
  return make_topology(plan.padded_offsets, plan.tokens_per_expert, plan.block_size, ffn_hidden,
                       block_cols == 0 ? plan.block_size : block_cols);
}

/// What dropless_ffn_forward saves for backward, plus its scratch. Owned by the caller and reused
/// across steps: once its workspace has grown to the largest step, a step does not allocate its
/// activation buffers again.
template <class S>
struct DroplessFFNContext {
  BlockSparseTopology topology;
  Workspace workspace;
  /// Whether forward keeps what backward needs. Off (inference), the expert products read the
  /// token rows of x in place instead of from a copy grouped by expert, and the backward that is
  /// not given x is refused (with a BLAS backend the copy is made anyway: see `saved`).
  bool save_for_backward = true;
  Index num_tokens = -1;  ///< -1 until a forward ran
  bool saved = false;     ///< whether the last forward saved for backward
  Index top_k = 0;
  Index padded_rows = 0;
  /// The config of the weights the last forward ran with (num_experts -1 before any).
  ExpertFFNConfig experts{-1};

  /// The expert outputs before combine, [padded rows, d] in plan order (padding rows unspecified).
  Eigen::Map<RowMatrix<S>, Eigen::Aligned64> expert_outputs(Index d) {
    return workspace.template matrix<S>(detail::kY, padded_rows, d);
  }
};

namespace detail {

inline constexpr std::size_t kGatesSlot = kFirstFreeSlot;
inline constexpr std::size_t kRowTokenSlot = kFirstFreeSlot + 1;

template <class S>
GroupedBuffers<S> dropless_buffers(const ExpertWeights<S>& w, DroplessFFNContext<S>& ctx) {
  return GroupedBuffers<S>{ctx.workspace, ctx.padded_rows, w.config.hidden, w.config.ffn_hidden,
                           is_gated(w.config.activation)};
}

}  // namespace detail

namespace detail {

/// dropless_ffn_forward, its products reading `panels` (a copy of weights' matrices) when set.
template <class S>
void dropless_ffn_forward_over(const ExpertWeights<S>& weights,
                               const PackedExpertWeights<S>* panels, ConstMatrixRef<S> x,
                               ConstMatrixRef<S> gates, const DroplessPlan& plan,
                               DroplessFFNContext<S>& ctx, MatrixRef<S> out) {
  require_weights(weights, "weights");
  const ExpertFFNConfig& c = weights.config;
  if (panels != nullptr) require_panels_of(*panels, c);
  require(plan.num_experts == c.num_experts, "plan.num_experts",
          concat(c.num_experts, " (weights.config.num_experts)"), plan.num_experts);
  require_shape(x, "x", plan.num_tokens, c.hidden);
  require_shape(gates, "gates", plan.num_tokens, plan.top_k);
  require_shape(out, "out", plan.num_tokens, c.hidden);
  require_finite(x, "x");
  require_finite(gates, "gates");
  require_disjoint(out, "out", x, "x");
  require_disjoint(out, "out", gates, "gates");

  ctx.topology = make_topology(plan, c.ffn_hidden, c.block_cols);
  ctx.topology.write_padding = false;  // the FFN reads data rows only
  ctx.num_tokens = plan.num_tokens;
  ctx.experts = c;
  ctx.top_k = plan.top_k;
  ctx.padded_rows = plan.padded_rows();
  // Under a BLAS backend the products cannot read gathered rows in place: group them once anyway.
  ctx.saved = ctx.save_for_backward || !kernels::kGemmReadsGatheredRowsInPlace;
  GroupedBuffers<S> buf = dropless_buffers(weights, ctx);
  ctx.workspace.template matrix<S>(kGatesSlot, plan.num_tokens, plan.top_k) = gates;
  if (ctx.saved) {
    dropless_permute<S>(x, plan, buf.x(), /*zero_padding=*/false);
    grouped_ffn_forward<S>(weights, ctx.topology, buf.x(), buf, buf.y(), panels);
  } else {
    auto row_token = ctx.workspace.template vector<Index>(kRowTokenSlot, ctx.padded_rows);
    fill_row_tokens(plan, row_token);
    const kernels::GatheredRows<S> rows(x.data(), x.outerStride(), row_token.data(),
                                        ctx.padded_rows, c.hidden);
    grouped_ffn_forward<S>(weights, ctx.topology, rows, buf, buf.y(), panels);
  }
  dropless_unpermute<S>(buf.y(), gates, plan, out);
}

}  // namespace detail

/// out[t] = sum_j gates(t, j) * FFN_{e(t,j)}(x[t]), FFN_e(x) = act(x W1[e] + b1[e]) W2[e] + b2[e]
/// (MegaBlocks dMoE: padded_gather -> sdd -> act -> dsd -> padded_scatter). x [T, d]; gates [T, k].
template <class S>
void dropless_ffn_forward(const ExpertWeights<S>& weights, ConstMatrixRef<S> x,
                          ConstMatrixRef<S> gates, const DroplessPlan& plan,
                          DroplessFFNContext<S>& ctx, MatrixRef<S> out) {
  detail::dropless_ffn_forward_over<S>(weights, nullptr, x, gates, plan, ctx, out);
}

/// The same with the products reading `panels`, the panel copy of weights' matrices
/// (PackedExpertWeights(weights), refreshed since weights last changed): the bits of the forward
/// over weights, at the read speed of contiguous panels. The biases are read from weights, and
/// the backward takes weights as after any forward.
template <class S>
void dropless_ffn_forward(const ExpertWeights<S>& weights, const PackedExpertWeights<S>& panels,
                          ConstMatrixRef<S> x, ConstMatrixRef<S> gates, const DroplessPlan& plan,
                          DroplessFFNContext<S>& ctx, MatrixRef<S> out) {
  detail::dropless_ffn_forward_over<S>(weights, &panels, x, gates, plan, ctx, out);
}

/// Returns the combined output [T, d]; see the overload writing into `out`.
template <class S>
RowMatrix<S> dropless_ffn_forward(const ExpertWeights<S>& weights, ConstMatrixRef<S> x,
                                  ConstMatrixRef<S> gates, const DroplessPlan& plan,
                                  DroplessFFNContext<S>& ctx) {
  RowMatrix<S> out(x.rows(), weights.config.hidden);
  dropless_ffn_forward<S>(weights, x, gates, plan, ctx, out);
  return out;
}

namespace detail {

/// The checks and body of dropless_ffn_backward once the grouped input is in the context.
template <class S>
void dropless_ffn_backward_grouped(const ExpertWeights<S>& weights, ConstMatrixRef<S> grad_out,
                                   const DroplessPlan& plan, DroplessFFNContext<S>& ctx,
                                   ExpertGradients<S>& grads, MatrixRef<S> grad_x,
                                   MatrixRef<S> grad_gates) {
  // Shaped like the weights on first use (a default-built ExpertGradients), as MoEGradients is;
  // memory already of those shapes is kept and overwritten.
  shape_gradients(grads, weights.config);
  require_weights(grads, "grads");
  const Index d = weights.config.hidden;
  require_shape(grad_out, "grad_out", plan.num_tokens, d);
  require_finite(grad_out, "grad_out");
  require_shape(grad_x, "grad_x", plan.num_tokens, d);
  require_shape(grad_gates, "grad_gates", plan.num_tokens, plan.top_k);

  GroupedBuffers<S> buf = dropless_buffers(weights, ctx);
  auto gates = ctx.workspace.template matrix<S>(kGatesSlot, plan.num_tokens, plan.top_k);
  dropless_unpermute_backward<S>(grad_out, buf.y(), gates, plan, buf.dy(), grad_gates,
                                 /*zero_padding=*/false);
  grouped_ffn_backward<S>(weights, ctx.topology, buf.x(), buf, grads);
  dropless_permute_backward<S>(buf.dx(), plan, grad_x);
}

template <class S>
void require_forward_context(const ExpertWeights<S>& weights, const DroplessPlan& plan,
                             const DroplessFFNContext<S>& ctx) {
  require_weights(weights, "weights");
  require_forward_of(ctx.experts, weights.config, "dropless_ffn_forward");
  require_dropless_plan(plan);
  require(ctx.num_tokens == plan.num_tokens && ctx.top_k == plan.top_k &&
              ctx.padded_rows == plan.padded_rows(),
          "plan", "the plan of the forward that filled ctx", "a plan of another shape");
}

}  // namespace detail

/// Backward of dropless_ffn_forward: grad_x [T, d], grad_gates(t, j) = <FFN_e(x_t), grad_out[t]>,
/// and every parameter gradient into `grads` (overwritten, shaped like `weights`). The forward must
/// have run with ctx.save_for_backward; the overload taking x does not need it.
template <class S>
void dropless_ffn_backward(const ExpertWeights<S>& weights, ConstMatrixRef<S> grad_out,
                           const DroplessPlan& plan, DroplessFFNContext<S>& ctx,
                           ExpertGradients<S>& grads, MatrixRef<S> grad_x,
                           MatrixRef<S> grad_gates) {
  detail::require_forward_context(weights, plan, ctx);
  require(ctx.saved, "ctx", "a context whose forward ran with save_for_backward = true",
          "a context of a forward that saved nothing (save_for_backward = false)");
  detail::dropless_ffn_backward_grouped<S>(weights, grad_out, plan, ctx, grads, grad_x, grad_gates);
}

/// The same given the forward's input x [T, d]: when the forward saved nothing, x is grouped by
/// expert now (the copy the forward skipped), so an inference-style forward can still be
/// differentiated.
template <class S>
void dropless_ffn_backward(const ExpertWeights<S>& weights, ConstMatrixRef<S> x,
                           ConstMatrixRef<S> grad_out, const DroplessPlan& plan,
                           DroplessFFNContext<S>& ctx, ExpertGradients<S>& grads,
                           MatrixRef<S> grad_x, MatrixRef<S> grad_gates) {
  detail::require_forward_context(weights, plan, ctx);
  if (!ctx.saved) {
    require_shape(x, "x", plan.num_tokens, weights.config.hidden);
    detail::GroupedBuffers<S> buf = detail::dropless_buffers(weights, ctx);
    dropless_permute<S>(x, plan, buf.x(), /*zero_padding=*/false);
  }
  detail::dropless_ffn_backward_grouped<S>(weights, grad_out, plan, ctx, grads, grad_x, grad_gates);
}

}  // namespace moe
