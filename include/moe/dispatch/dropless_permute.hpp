// Moving token rows into a DroplessPlan's padded, expert-sorted buffer and back, with the weighted
// combine. Every output row is written by one thread and each token's k rows are summed in choice
// order, so results are the same bits at any thread count (no atomics).
#pragma once

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "moe/kernels/parallel.hpp"

namespace moe {

namespace detail {

inline void require_plan_tokens(const DroplessPlan& plan, Index rows, const char* argument) {
  require_dropless_plan(plan);
  require(rows == plan.num_tokens, argument,
          detail::concat(plan.num_tokens, " rows (the plan's tokens)"), rows);
}

/// Zeroes the padding rows of every group (rows past the group's pairs).
template <class S>
void zero_padding_rows(const DroplessPlan& plan, MatrixRef<S> buffer) {
  kernels::parallel_for(0, plan.num_experts, [&](Index e) {
    const Index begin = plan.padded_offsets[e] + plan.tokens_per_expert[e];
    const Index end = plan.padded_offsets[e + 1];
    if (end > begin) buffer.middleRows(begin, end - begin).setZero();
  });
}

}  // namespace detail

/// out[pair_row[p]] = x[p / k] for every routed pair, padding rows 0 (MegaBlocks `padded_gather`;
/// Megatron `permute`).
/// zero_padding = false leaves padding rows unwritten, for a consumer that never reads them.
template <class S>
void dropless_permute(ConstMatrixRef<S> x, const DroplessPlan& plan, MatrixRef<S> out,
                      bool zero_padding = true) {
  detail::require_plan_tokens(plan, x.rows(), "x");
  require_shape(out, "out", plan.padded_rows(), x.cols());
  require_disjoint(out, "out", x, "x");
  const Index k = plan.top_k;
  // Walk sorted positions so the writes stream through the buffer in order.
  kernels::parallel_for(
      0, plan.num_routed(),
      [&](Index i) {
        const Index p = plan.sorted_pairs[i];
        out.row(plan.pair_row[p]) = x.row(p / k);
      },
      kernels::min_parallel_rows(x.cols()));
  if (zero_padding) detail::zero_padding_rows<S>(plan, out);
}

/// grad_x[t] = sum_j grad_out[pair_row[t*k + j]] over token t's routed pairs, j in order (adjoint
/// of dropless_permute; 0 for a token without one).
template <class S>
void dropless_permute_backward(ConstMatrixRef<S> grad_out, const DroplessPlan& plan,
                               MatrixRef<S> grad_x) {
  detail::require_dropless_plan(plan);
  require_shape(grad_out, "grad_out", plan.padded_rows(), -1);
  require_shape(grad_x, "grad_x", plan.num_tokens, grad_out.cols());
  require_disjoint(grad_x, "grad_x", grad_out, "grad_out");
  const Index k = plan.top_k;
  const bool all_routed = plan.num_routed() == plan.num_pairs();
  kernels::parallel_for(
      0, plan.num_tokens,
      [&](Index t) {
        const Index* rows = plan.pair_row.data() + t * k;
        if (all_routed) {
          grad_x.row(t) = grad_out.row(rows[0]);
          for (Index j = 1; j < k; ++j) grad_x.row(t) += grad_out.row(rows[j]);
          return;
        }
        grad_x.row(t).setZero();
        for (Index j = 0; j < k; ++j)
          if (rows[j] >= 0) grad_x.row(t) += grad_out.row(rows[j]);
      },
      kernels::min_parallel_rows(k * grad_x.cols()));
}

/// out[t] = sum_j gates(t, j) * y[pair_row[t*k + j]] over token t's routed pairs, j in order
/// (MegaBlocks `padded_scatter`, whose [T, k, H] buffer summed over k is the same fixed order); 0
/// for a token without one.
template <class S>
void dropless_unpermute(ConstMatrixRef<S> y, ConstMatrixRef<S> gates, const DroplessPlan& plan,
                        MatrixRef<S> out) {
  detail::require_dropless_plan(plan);
  require_shape(y, "y", plan.padded_rows(), -1);
  require_shape(gates, "gates", plan.num_tokens, plan.top_k);
  require_finite(gates, "gates");
  require_shape(out, "out", plan.num_tokens, y.cols());
  require_disjoint(out, "out", y, "y");
  require_disjoint(out, "out", gates, "gates");
  const Index k = plan.top_k;
  const bool all_routed = plan.num_routed() == plan.num_pairs();
  kernels::parallel_for(
      0, plan.num_tokens,
      [&](Index t) {
        const Index* rows = plan.pair_row.data() + t * k;
        if (all_routed) {
          out.row(t) = gates(t, 0) * y.row(rows[0]);
          for (Index j = 1; j < k; ++j) out.row(t) += gates(t, j) * y.row(rows[j]);
          return;
        }
        out.row(t).setZero();
        for (Index j = 0; j < k; ++j)
          if (rows[j] >= 0) out.row(t) += gates(t, j) * y.row(rows[j]);
      },
      kernels::min_parallel_rows(k * out.cols()));
}

/// grad_y[pair_row[t*k+j]] = gates(t,j) * grad_out[t] (padding rows 0 unless zero_padding is
/// false) and grad_gates(t, j) = <y[pair_row[t*k+j]], grad_out[t]> (MegaBlocks
/// `padded_scatter_wgrad`); an unused pair's grad_gates is 0.
template <class S>
void dropless_unpermute_backward(ConstMatrixRef<S> grad_out, ConstMatrixRef<S> y,
                                 ConstMatrixRef<S> gates, const DroplessPlan& plan,
                                 MatrixRef<S> grad_y, MatrixRef<S> grad_gates,
                                 bool zero_padding = true) {
  detail::require_dropless_plan(plan);
  require_shape(grad_out, "grad_out", plan.num_tokens, -1);
  require_shape(y, "y", plan.padded_rows(), grad_out.cols());
  require_shape(gates, "gates", plan.num_tokens, plan.top_k);
  require_finite(gates, "gates");
  require_shape(grad_y, "grad_y", plan.padded_rows(), grad_out.cols());
  require_shape(grad_gates, "grad_gates", plan.num_tokens, plan.top_k);
  require_disjoint(grad_y, "grad_y", grad_out, "grad_out");
  require_disjoint(grad_y, "grad_y", y, "y");
  require_disjoint(grad_gates, "grad_gates", gates, "gates");
  const Index k = plan.top_k;
  kernels::parallel_for(
      0, plan.num_tokens,
      [&](Index t) {
        for (Index j = 0; j < k; ++j) {
          const Index row = plan.pair_row[t * k + j];
          if (row < 0) {
            grad_gates(t, j) = S(0);
            continue;
          }
          grad_y.row(row) = gates(t, j) * grad_out.row(t);
          grad_gates(t, j) = y.row(row).dot(grad_out.row(t));
        }
      },
      kernels::min_parallel_rows(2 * k * grad_out.cols()));
  if (zero_padding) detail::zero_padding_rows<S>(plan, grad_y);
}

}  // namespace moe
