// The dropless expert FFN with bf16 weights and activations and float sums (MegaBlocks dMoE as
// bf16 training and inference run it): token rows rounded to bf16 once, h = x W1 summed in float,
// the activation in float, its output rounded to bf16 for y = a W2 summed in float, the gate-
// weighted combine in float. Forward and backward: inference, and the expert FFN of mixed-precision
// training (bf16 copies of float master weights, gradients summed in float into float gradients).
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "moe/core/bfloat16.hpp"
#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/core/workspace.hpp"
#include "moe/dispatch/dropless_permute.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "moe/experts/activation.hpp"
#include "moe/experts/bf16_expert_weights.hpp"
#include "moe/experts/expert_weights.hpp"
#include "moe/kernels/bf16_product.hpp"
#include "moe/kernels/parallel.hpp"

namespace moe {

/// What the bf16 dropless forward saves for backward, and its scratch, owned by the caller and
/// reused across steps: once its workspace has grown to the largest step, a step allocates nothing.
struct Bf16FFNContext {
  Workspace workspace;
  /// Whether forward keeps what backward needs (the bf16 token rows, the gates, h1, h3, a). Off
  /// (inference), bf16 token rows are read in place and backward is refused.
  bool save_for_backward = true;
  Index num_tokens = -1;  ///< -1 until a forward ran
  bool saved = false;     ///< whether the last forward saved for backward
  Index top_k = 0;
  Index padded_rows = 0;
  /// The config of the weights the last forward ran with (num_experts -1 before any).
  ExpertFFNConfig experts{-1};

  /// The expert outputs before combine, [padded rows, d] float in plan order (padding rows
  /// unspecified).
  Eigen::Map<RowMatrix<float>, Eigen::Aligned64> expert_outputs(Index d) {
    return workspace.matrix<float>(kY, padded_rows, d);
  }

  /// Workspace slots: the forward's, then the backward's.
  enum Slot : std::size_t {
    kTokens = 0,
    kRowToken,
    kGates,
    kH1,
    kH3,
    kA,
    kA16,
    kY,
    kDY,
    kDY16,
    kDH1,
    kDH3,
    kDH16,
    kDH316,
    kDX,
    kLeft,
    kPanels
  };
};

namespace detail {

/// Panels a work item of the bf16 FFN spans (192 columns): enough items for two threads at a decode
/// step's one or two rows per expert, each a run of whole panels.
inline constexpr Index kBf16ItemPanels = 4;
/// Rows one work item takes: a hot expert's rows (or a weight gradient's) split over the threads,
/// and few enough that a depth block of them stays in L2 while the item's panels pass.
inline constexpr Index kBf16ItemRows = 256;

/// body(expert, first row, rows, first column, columns) over rows_of(e) rows of each expert in
/// chunks of kBf16ItemRows and `cols` columns in runs of kBf16ItemPanels panels, spread over the
/// threads; rows count from the expert's first. Each element is computed by one item whatever the
/// thread count.
template <class RowsOf, class Body>
void for_bf16_items(Index experts, const RowsOf& rows_of, Index cols, Body&& body) {
  const Index width = kBf16ItemPanels * kernels::Bf16Panels::kCols;
  const Index col_items = (cols + width - 1) / width;
  std::vector<Index> first_item(static_cast<std::size_t>(experts) + 1, 0);
  for (Index e = 0; e < experts; ++e) {
    const Index chunks = (rows_of(e) + kBf16ItemRows - 1) / kBf16ItemRows;
    first_item[static_cast<std::size_t>(e) + 1] =
        first_item[static_cast<std::size_t>(e)] + chunks * col_items;
  }
  kernels::parallel_items(first_item.back(), [&](Index item) {
    const auto e = static_cast<Index>(std::upper_bound(first_item.begin(), first_item.end(), item) -
                                      first_item.begin() - 1);
    const Index local = item - first_item[static_cast<std::size_t>(e)];
    const Index r0 = local / col_items * kBf16ItemRows;
    const Index c0 = local % col_items * width;
    body(e, r0, std::min(kBf16ItemRows, rows_of(e) - r0), c0, std::min(width, cols - c0));
  });
}

/// The same over each expert's data rows of the plan, rows counted in the padded buffer.
template <class Body>
void for_bf16_data_items(const DroplessPlan& plan, Index cols, Body&& body) {
  for_bf16_items(
      plan.num_experts, [&](Index e) { return plan.tokens_per_expert[e]; }, cols,
      [&](Index e, Index r0, Index n, Index c0, Index cw) {
        body(e, plan.padded_offsets[e] + r0, n, c0, cw);
      });
}

/// The bf16 forward over x of scalar X (float, rounded here; or bf16, read as it is).
template <class X>
void bf16_dropless_ffn_forward(const Bf16ExpertWeights& weights,
                               const Eigen::Ref<const RowMatrix<X>>& x, ConstMatrixRef<float> gates,
                               const DroplessPlan& plan, Bf16FFNContext& ctx,
                               MatrixRef<float> out) {
  const ExpertFFNConfig& c = weights.config();
  require(c.num_experts >= 1, "weights", "bf16 weights made from master weights",
          "an empty Bf16ExpertWeights");
  require(plan.num_experts == c.num_experts, "plan.num_experts",
          concat(c.num_experts, " (weights.config().num_experts)"), plan.num_experts);
  require_dropless_plan(plan);
  const Index tokens = plan.num_tokens, k = plan.top_k, d = c.hidden, f = c.ffn_hidden;
  require_shape(x, "x", tokens, d);
  require_shape(gates, "gates", tokens, k);
  require_shape(out, "out", tokens, d);
  require_finite(x, "x");
  require_finite(gates, "gates");
  require_disjoint(out, "out", x, "x");
  require_disjoint(out, "out", gates, "gates");

  // Picked here, on the calling thread: a refused MOE_BF16_KERNEL throws where the caller catches.
  const kernels::Bf16Kernel kernel = kernels::bf16_kernel();
  ctx.num_tokens = tokens;
  ctx.top_k = k;
  ctx.padded_rows = plan.padded_rows();
  ctx.experts = c;
  ctx.saved = ctx.save_for_backward;
  Workspace& ws = ctx.workspace;
  const bool gated = is_gated(c.activation);
  // The token rows in bf16: rounded once per token (not per choice); the caller's own bf16 rows
  // are read in place unless backward needs them kept.
  const bf16* rows = nullptr;
  Index row_stride = 0;
  if constexpr (std::is_same_v<X, bf16>) {
    rows = x.data();
    row_stride = x.outerStride();
  }
  if (rows == nullptr || ctx.saved) {
    auto kept = ws.matrix<bf16>(Bf16FFNContext::kTokens, tokens, d);
    kernels::parallel_for(0, tokens, [&](Index t) { to_bf16(x.row(t).data(), &kept(t, 0), d); });
    rows = kept.data();
    row_stride = d;
  }
  if (ctx.saved) ws.matrix<float>(Bf16FFNContext::kGates, tokens, k) = gates;
  auto row_token = ws.vector<Index>(Bf16FFNContext::kRowToken, ctx.padded_rows);
  fill_row_tokens(plan, row_token);

  auto h1 = ws.matrix<float>(Bf16FFNContext::kH1, ctx.padded_rows, f);
  auto h3 = ws.matrix<float>(Bf16FFNContext::kH3, gated ? ctx.padded_rows : 0, gated ? f : 0);
  auto a = ws.matrix<float>(Bf16FFNContext::kA, ctx.padded_rows, f);
  auto a16 = ws.matrix<bf16>(Bf16FFNContext::kA16, ctx.padded_rows, f);
  auto y = ws.matrix<float>(Bf16FFNContext::kY, ctx.padded_rows, d);

  // h1 = x W1[e] + b1[e] (and h3), activated in float, rounded to bf16: per item, while in cache.
  for_bf16_data_items(plan, f, [&](Index e, Index r0, Index n, Index c0, Index cw) {
    const auto token_row = [&](Index i) { return rows + row_token[r0 + i] * row_stride; };
    kernels::bf16_product(&h1(r0, c0), f, n, token_row, weights.w1(e), weights.up_panels(), c0, cw,
                          false, kernel);
    auto gate = h1.block(r0, c0, n, cw);
    if (c.bias) gate.rowwise() += weights.b1().row(e).segment(c0, cw);
    if (gated) {
      kernels::bf16_product(&h3(r0, c0), f, n, token_row, weights.w3(e), weights.up_panels(), c0,
                            cw, false, kernel);
      auto up = h3.block(r0, c0, n, cw);
      if (c.bias) up.rowwise() += weights.b3().row(e).segment(c0, cw);
      activation_forward(c.activation, c.swiglu_limit, gate, up, a.block(r0, c0, n, cw));
    } else {
      activation_forward(c.activation, c.swiglu_limit, gate, gate, a.block(r0, c0, n, cw));
    }
    for (Index i = 0; i < n; ++i) to_bf16(&a(r0 + i, c0), &a16(r0 + i, c0), cw);
  });
  // y = a W2[e] + b2[e] in float.
  for_bf16_data_items(plan, d, [&](Index e, Index r0, Index n, Index c0, Index cw) {
    const auto act_row = [&](Index i) { return &a16(r0 + i, 0); };
    kernels::bf16_product(&y(r0, c0), d, n, act_row, weights.w2(e), weights.down_panels(), c0, cw,
                          false, kernel);
    if (c.bias) y.block(r0, c0, n, cw).rowwise() += weights.b2().row(e).segment(c0, cw);
  });
  dropless_unpermute<float>(y, gates, plan, out);
}

/// Where each expert's share of a per-expert scratch starts: offsets[e] = sum over earlier
/// experts of size_of(e), 64-byte aligned; offsets[E] is the total.
template <class SizeOf>
std::vector<Index> expert_offsets(Index experts, const SizeOf& size_of) {
  std::vector<Index> offsets(static_cast<std::size_t>(experts) + 1, 0);
  for (Index e = 0; e < experts; ++e)
    offsets[static_cast<std::size_t>(e) + 1] =
        offsets[static_cast<std::size_t>(e)] + (size_of(e) + 31) / 32 * 32;
  return offsets;
}

}  // namespace detail

/// out[t] = sum_j gates(t, j) * FFN_{e(t,j)}(x[t]) with bf16 weights and activations:
/// FFN_e(x) = act(bf16(x) W1[e] + b1[e]) rounded to bf16, times W2[e], + b2[e]; every product
/// summed in float (kernels::bf16_product), the activation and the combine in float. x [T, d] in
/// float (rounded to bf16 here, once per token) or bf16; gates [T, k] and out [T, d] in float.
inline void dropless_ffn_forward(const Bf16ExpertWeights& weights, ConstMatrixRef<float> x,
                                 ConstMatrixRef<float> gates, const DroplessPlan& plan,
                                 Bf16FFNContext& ctx, MatrixRef<float> out) {
  detail::bf16_dropless_ffn_forward<float>(weights, x, gates, plan, ctx, out);
}

/// The same over token rows already in bf16.
inline void dropless_ffn_forward(const Bf16ExpertWeights& weights, ConstMatrixRef<bf16> x,
                                 ConstMatrixRef<float> gates, const DroplessPlan& plan,
                                 Bf16FFNContext& ctx, MatrixRef<float> out) {
  detail::bf16_dropless_ffn_forward<bf16>(weights, x, gates, plan, ctx, out);
}

/// Backward of the bf16 dropless_ffn_forward, as mixed-precision training runs it (Megatron-Core
/// and MegaBlocks under bf16: bf16 operands, float sums, float gradients):
///   dY = gates * grad_out in float, rounded to bf16;  grad_gates(t, j) = <y, grad_out[t]> in
///   float; dA = dY W2^T; dH1, dH3 through the activation in float, rounded to bf16; dW2[e] = A^T
///   dY, dW1[e] = X^T dH1, dW3[e] = X^T dH3 (depth: the expert's rows in plan order); dX = dH1 W1^T
///   + dH3 W3^T; grad_x[t] = sum_j dX[row(t, j)]; bias gradients the float sums of dY, dH1, dH3
///   over the expert's rows. Every product by kernels::bf16_product (float sums).
/// `weights` must hold the training copies (Bf16Copies::training) of the master weights the
/// forward ran with; `grads` (float, shaped like the master weights on first use) are overwritten.
inline void dropless_ffn_backward(const Bf16ExpertWeights& weights, ConstMatrixRef<float> grad_out,
                                  const DroplessPlan& plan, Bf16FFNContext& ctx,
                                  ExpertGradients<float>& grads, MatrixRef<float> grad_x,
                                  MatrixRef<float> grad_gates) {
  const ExpertFFNConfig& c = weights.config();
  require(weights.copies() == Bf16Copies::training, "weights",
          "bf16 weights with the training copies (Bf16Copies::training)",
          "the forward copies only (Bf16Copies::forward)");
  detail::require_forward_of(ctx.experts, c, "the bf16 dropless_ffn_forward");
  require(ctx.saved, "ctx", "a context whose forward ran with save_for_backward = true",
          "a context of a forward that saved nothing (save_for_backward = false)");
  detail::require_dropless_plan(plan);
  require(ctx.num_tokens == plan.num_tokens && ctx.top_k == plan.top_k &&
              ctx.padded_rows == plan.padded_rows(),
          "plan", "the plan of the forward that filled ctx", "a plan of another shape");
  const Index tokens = plan.num_tokens, k = plan.top_k, d = c.hidden, f = c.ffn_hidden;
  const Index rows = ctx.padded_rows, experts = c.num_experts;
  require_shape(grad_out, "grad_out", tokens, d);
  require_finite(grad_out, "grad_out");
  require_shape(grad_x, "grad_x", tokens, d);
  require_shape(grad_gates, "grad_gates", tokens, k);
  detail::shape_gradients(grads, c);

  const kernels::Bf16Kernel kernel = kernels::bf16_kernel();
  Workspace& ws = ctx.workspace;
  using Slot = Bf16FFNContext::Slot;
  const bool gated = is_gated(c.activation);
  const auto tokens16 = ws.matrix<bf16>(Slot::kTokens, tokens, d);
  const auto row_token = ws.vector<Index>(Slot::kRowToken, rows);
  const auto gates = ws.matrix<float>(Slot::kGates, tokens, k);
  const auto h1 = ws.matrix<float>(Slot::kH1, rows, f);
  const auto h3 = ws.matrix<float>(Slot::kH3, gated ? rows : 0, gated ? f : 0);
  const auto a16 = ws.matrix<bf16>(Slot::kA16, rows, f);
  const auto y = ws.matrix<float>(Slot::kY, rows, d);
  auto dy = ws.matrix<float>(Slot::kDY, rows, d);
  auto dy16 = ws.matrix<bf16>(Slot::kDY16, rows, d);
  auto dh1 = ws.matrix<float>(Slot::kDH1, rows, f);
  auto dh3 = ws.matrix<float>(Slot::kDH3, gated ? rows : 0, gated ? f : 0);
  auto dh16 = ws.matrix<bf16>(Slot::kDH16, rows, f);
  auto dh316 = ws.matrix<bf16>(Slot::kDH316, gated ? rows : 0, gated ? f : 0);
  auto dx = ws.matrix<float>(Slot::kDX, rows, d);

  dropless_unpermute_backward<float>(grad_out, y, gates, plan, dy, grad_gates,
                                     /*zero_padding=*/false);
  detail::for_bf16_data_items(plan, d, [&](Index, Index r0, Index n, Index c0, Index cw) {
    for (Index i = 0; i < n; ++i) to_bf16(&dy(r0 + i, c0), &dy16(r0 + i, c0), cw);
  });
  // dA = dY W2^T into dh1, through the activation in place (dh1, dh3), rounded to bf16.
  detail::for_bf16_data_items(plan, f, [&](Index e, Index r0, Index n, Index c0, Index cw) {
    kernels::bf16_product(
        &dh1(r0, c0), f, n, [&](Index i) { return &dy16(r0 + i, 0); }, weights.w2t(e),
        weights.up_panels(), c0, cw, false, kernel);
    auto tile = dh1.block(r0, c0, n, cw);
    if (gated) {
      activation_backward(c.activation, c.swiglu_limit, h1.block(r0, c0, n, cw),
                          h3.block(r0, c0, n, cw), tile, dh3.block(r0, c0, n, cw));
      for (Index i = 0; i < n; ++i) to_bf16(&dh3(r0 + i, c0), &dh316(r0 + i, c0), cw);
    } else {
      activation_backward(c.activation, c.swiglu_limit, h1.block(r0, c0, n, cw), tile, tile, tile);
    }
    for (Index i = 0; i < n; ++i) to_bf16(&dh1(r0 + i, c0), &dh16(r0 + i, c0), cw);
  });
  // dX = dH1 W1^T (+ dH3 W3^T), summed in float.
  detail::for_bf16_data_items(plan, d, [&](Index e, Index r0, Index n, Index c0, Index cw) {
    kernels::bf16_product(
        &dx(r0, c0), d, n, [&](Index i) { return &dh16(r0 + i, 0); }, weights.w1t(e),
        weights.down_panels(), c0, cw, false, kernel);
    if (gated)
      kernels::bf16_product(
          &dx(r0, c0), d, n, [&](Index i) { return &dh316(r0 + i, 0); }, weights.w3t(e),
          weights.down_panels(), c0, cw, true, kernel);
  });
  dropless_permute_backward<float>(dx, plan, grad_x);

  // Weight gradients, depth = the expert's rows: the left operand (X^T or A^T) transposed into
  // rows of bf16, the right one (dH1, dH3 or dY over the expert's rows) packed into panels.
  const auto group = [&](Index e) { return plan.tokens_per_expert[e]; };
  const std::vector<Index> left_at =
      detail::expert_offsets(experts, [&](Index e) { return std::max(d, f) * group(e); });
  const auto panels_of = [&](Index e, Index cols) { return kernels::Bf16Panels{group(e), cols}; };
  const std::vector<Index> panels_at =
      detail::expert_offsets(experts, [&](Index e) { return panels_of(e, std::max(d, f)).size(); });
  bf16* left = ws.vector<bf16>(Slot::kLeft, left_at.back()).data();
  bf16* panels = ws.vector<bf16>(Slot::kPanels, panels_at.back()).data();
  // grad(e) [m, n] = left^T right over the expert's rows: left [rows, m] (its rows r0 .. in
  // the padded buffer, or the tokens' rows), right [rows, n] bf16.
  const auto weight_gradient = [&](auto left_row, Index m, const auto& right, Index n,
                                   MatrixMap<float>& grad) {
    kernels::parallel_items(experts, [&](Index e) {
      const Index r0 = plan.padded_offsets[e], count = group(e);
      if (count == 0) return;
      bf16* transposed = left + left_at[static_cast<std::size_t>(e)];
      for (Index r = 0; r < count; ++r) {
        const bf16* source = left_row(r0 + r);
        for (Index i = 0; i < m; ++i) transposed[i * count + r] = source[i];
      }
      kernels::pack_bf16_panels(&right(r0, 0), n, false, panels_of(e, n),
                                panels + panels_at[static_cast<std::size_t>(e)]);
    });
    detail::for_bf16_items(
        experts, [&](Index) { return m; }, n,
        [&](Index e, Index i0, Index count, Index c0, Index cw) {
          const bf16* transposed = left + left_at[static_cast<std::size_t>(e)];
          kernels::bf16_product(
              &grad(e * m + i0, c0), n, count,
              [&](Index i) { return transposed + (i0 + i) * group(e); },
              panels + panels_at[static_cast<std::size_t>(e)], panels_of(e, n), c0, cw, false,
              kernel);
        });
  };
  const auto token_row = [&](Index r) { return &tokens16(row_token[r], 0); };
  const auto act_row = [&](Index r) { return &a16(r, 0); };
  weight_gradient(act_row, f, dy16, d, grads.w2);
  weight_gradient(token_row, d, dh16, f, grads.w1);
  if (gated) weight_gradient(token_row, d, dh316, f, grads.w3);
  if (c.bias) {
    // grad_bias.row(e) = the sum of the expert's rows of `values`, in row order.
    const auto column_sums = [&](const auto& values, MatrixMap<float>& grad_bias) {
      kernels::parallel_for(0, experts, [&](Index e) {
        grad_bias.row(e).setZero();
        for (Index r = plan.padded_offsets[e]; r < plan.padded_offsets[e] + group(e); ++r)
          grad_bias.row(e) += values.row(r);
      });
    };
    column_sums(dy, grads.b2);
    column_sums(dh1, grads.b1);
    if (gated) column_sums(dh3, grads.b3);
  }
}

}  // namespace moe
