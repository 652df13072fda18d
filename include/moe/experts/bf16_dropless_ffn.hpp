// The dropless expert FFN with bf16 weights and activations and float sums (MegaBlocks dMoE as
// bf16 training and inference run it): token rows rounded to bf16 once, h = x W1 summed in float,
// the activation in float, its output rounded to bf16 for y = a W2 summed in float, the gate-
// weighted combine in float. Forward, for inference and for the forward pass of mixed precision.
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
#include "moe/kernels/bf16_product.hpp"
#include "moe/kernels/parallel.hpp"

namespace moe {

/// Scratch of the bf16 dropless forward, owned by the caller and reused across steps: once its
/// workspace has grown to the largest step, a step allocates nothing.
struct Bf16FFNContext {
  Workspace workspace;
  Index num_tokens = -1;  ///< -1 until a forward ran
  Index padded_rows = 0;

  /// The expert outputs before combine, [padded rows, d] float in plan order (padding rows
  /// unspecified).
  Eigen::Map<RowMatrix<float>, Eigen::Aligned64> expert_outputs(Index d) {
    return workspace.matrix<float>(kY, padded_rows, d);
  }

  /// Workspace slots.
  enum Slot : std::size_t { kTokens = 0, kRowToken, kH1, kH3, kA, kA16, kY };
};

namespace detail {

/// Panels a work item of the bf16 FFN spans (192 columns): enough items for two threads at a decode
/// step's one or two rows per expert, each a run of whole panels.
inline constexpr Index kBf16ItemPanels = 4;
/// Rows of an expert's group one work item takes: a hot expert's rows split over the threads.
inline constexpr Index kBf16ItemRows = 256;

/// body(expert, first row, rows, first column, columns) over every expert's data rows in chunks of
/// kBf16ItemRows and `cols` columns in runs of kBf16ItemPanels panels, spread over the threads.
/// Each element is computed by one item whatever the thread count.
template <class Body>
void for_bf16_items(const DroplessPlan& plan, Index cols, Body&& body) {
  const Index width = kBf16ItemPanels * kernels::Bf16Panels::kCols;
  const Index col_items = (cols + width - 1) / width;
  std::vector<Index> first_item(static_cast<std::size_t>(plan.num_experts) + 1, 0);
  for (Index e = 0; e < plan.num_experts; ++e) {
    const Index chunks = (plan.tokens_per_expert[e] + kBf16ItemRows - 1) / kBf16ItemRows;
    first_item[static_cast<std::size_t>(e) + 1] =
        first_item[static_cast<std::size_t>(e)] + chunks * col_items;
  }
  kernels::parallel_items(first_item.back(), [&](Index item) {
    const auto e = static_cast<Index>(std::upper_bound(first_item.begin(), first_item.end(), item) -
                                      first_item.begin() - 1);
    const Index local = item - first_item[static_cast<std::size_t>(e)];
    const Index r0 = local / col_items * kBf16ItemRows;
    const Index c0 = local % col_items * width;
    body(e, plan.padded_offsets[e] + r0, std::min(kBf16ItemRows, plan.tokens_per_expert[e] - r0),
         c0, std::min(width, cols - c0));
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
  ctx.padded_rows = plan.padded_rows();
  Workspace& ws = ctx.workspace;
  const bool gated = is_gated(c.activation);
  // The token rows in bf16: rounded once per token (not per choice), or the caller's own.
  const bf16* rows = nullptr;
  Index row_stride = 0;
  if constexpr (std::is_same_v<X, bf16>) {
    rows = x.data();
    row_stride = x.outerStride();
  } else {
    auto rounded = ws.matrix<bf16>(Bf16FFNContext::kTokens, tokens, d);
    kernels::parallel_for(0, tokens, [&](Index t) { to_bf16(x.row(t).data(), &rounded(t, 0), d); });
    rows = rounded.data();
    row_stride = d;
  }
  // row_token[pair_row[p]] = p / k: the token each data row reads.
  auto row_token = ws.vector<Index>(Bf16FFNContext::kRowToken, ctx.padded_rows);
  for (Index p = 0; p < tokens * k; ++p)
    if (plan.pair_row[p] >= 0) row_token[plan.pair_row[p]] = p / k;

  auto h1 = ws.matrix<float>(Bf16FFNContext::kH1, ctx.padded_rows, f);
  auto h3 = ws.matrix<float>(Bf16FFNContext::kH3, gated ? ctx.padded_rows : 0, gated ? f : 0);
  auto a = ws.matrix<float>(Bf16FFNContext::kA, ctx.padded_rows, f);
  auto a16 = ws.matrix<bf16>(Bf16FFNContext::kA16, ctx.padded_rows, f);
  auto y = ws.matrix<float>(Bf16FFNContext::kY, ctx.padded_rows, d);

  // h1 = x W1[e] + b1[e] (and h3), activated in float, rounded to bf16: per item, while in cache.
  for_bf16_items(plan, f, [&](Index e, Index r0, Index n, Index c0, Index cw) {
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
  for_bf16_items(plan, d, [&](Index e, Index r0, Index n, Index c0, Index cw) {
    const auto act_row = [&](Index i) { return &a16(r0 + i, 0); };
    kernels::bf16_product(&y(r0, c0), d, n, act_row, weights.w2(e), weights.down_panels(), c0, cw,
                          false, kernel);
    if (c.bias) y.block(r0, c0, n, cw).rowwise() += weights.b2().row(e).segment(c0, cw);
  });
  dropless_unpermute<float>(y, gates, plan, out);
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

}  // namespace moe
