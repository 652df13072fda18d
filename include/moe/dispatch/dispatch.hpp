// Dispatch and combine over a CapacityPlan, forward and backward: row copies between the token
// matrix [T, d] and the padded expert buffer [E · C, d] (expert e's rows are e·C .. e·C + C - 1).
// Every output row is written by exactly one loop iteration and every sum runs in a fixed order,
// so results are the same bits at any thread count.
#pragma once

#include <cstring>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/dispatch/capacity_plan.hpp"
#include "moe/dispatch/detail/plan_finalize.hpp"
#include "moe/kernels/parallel.hpp"
#include "moe/kernels/rows.hpp"
#include "moe/kernels/simd.hpp"

namespace moe {

namespace detail {

/// The rows of `rows` that token t's kept entries read (the first RowsAhead::kMaxRows of them);
/// none past the last token.
template <class S, class Rows>
kernels::RowsAhead<S> token_rows(const CapacityPlan<S>& plan, Index t, const Rows& rows) {
  kernels::RowsAhead<S> ahead;
  if (t >= plan.num_tokens) return ahead;
  for (Index i = plan.token_offsets[t]; i < plan.token_offsets[t + 1]; ++i)
    if (plan.entry_slot[i] >= 0) ahead.add(rows.row(plan.entry_slot[i]).data());
  return ahead;
}

/// The token row that slot s copies, as a RowsAhead; none for an empty slot or past the last.
template <class S, class Rows>
kernels::RowsAhead<S> slot_row(const CapacityPlan<S>& plan, Index s, const Rows& rows) {
  kernels::RowsAhead<S> ahead;
  if (s < plan.num_slots() && plan.slot_token[s] >= 0)
    ahead.add(rows.row(plan.slot_token[s]).data());
  return ahead;
}

/// out_row = Σ over token t's kept entries, in choice order, of (w ·) rows[slot]; zero when none
/// is kept. Entries go through sum_rows in batches of up to 8 rows, continuing the same sum. The
/// rows of token t + RowsAhead::kDistance are prefetched meanwhile.
template <bool Weighted, class S, class Rows>
void reduce_token(const CapacityPlan<S>& plan, Index t, const Rows& rows, S* out_row, Index n,
                  bool stream) {
  constexpr Index batch = 8;
  const kernels::RowsAhead<S> ahead = token_rows(plan, t + kernels::RowsAhead<S>::kDistance, rows);
  const S* pointers[batch];
  S weights[batch];
  Index count = 0;
  bool started = false;
  const Index end = plan.token_offsets[t + 1];
  Index kept_total = 0;
  for (Index i = plan.token_offsets[t]; i < end; ++i) kept_total += plan.entry_slot[i] >= 0;
  // Streaming is only safe when the row is written once (no later batch reads it back).
  const bool single_pass = kept_total <= batch;
  for (Index i = plan.token_offsets[t]; i < end; ++i) {
    const Index s = plan.entry_slot[i];
    if (s < 0) continue;
    pointers[count] = rows.row(s).data();
    weights[count] = plan.entry_weight[i];
    if (++count == batch) {
      kernels::sum_rows<Weighted>(out_row, n, pointers, weights, count, started,
                                  stream && single_pass, ahead);
      started = true;
      count = 0;
    }
  }
  if (count > 0)
    kernels::sum_rows<Weighted>(out_row, n, pointers, weights, count, started,
                                stream && single_pass, ahead);
  else if (!started)
    kernels::zero_row(out_row, n, stream);
}

}  // namespace detail

/// buffer[e·C + c] = x[token of slot (e, c)], zero for an empty slot (GShard "sec,sm->ecm").
template <class S>
void dispatch(const CapacityPlan<S>& plan, const ConstMatrixRef<type_identity_t<S>>& x,
              MatrixRef<type_identity_t<S>> buffer) {
  detail::require_capacity_plan(plan);
  require_shape(x, "x", plan.num_tokens, -1);
  require_shape(buffer, "buffer", plan.num_slots(), x.cols());
  require_disjoint(buffer, "buffer", x, "x");
  const Index d = x.cols();
  if (d == 0) return;
  const bool stream = kernels::should_stream<S>(plan.num_slots(), d);
  kernels::parallel_for(0, plan.num_experts, [&](Index e) {
    for (Index s = e * plan.capacity; s < (e + 1) * plan.capacity; ++s) {
      const Index t = plan.slot_token[s];
      if (t >= 0)
        kernels::copy_row(buffer.row(s).data(), x.row(t).data(), d, stream,
                          detail::slot_row(plan, s + kernels::RowsAhead<S>::kDistance, x));
      else
        kernels::zero_row(buffer.row(s).data(), d, stream);
    }
    if (stream) simd::stream_fence();
  });
}

template <class S>
RowMatrix<S> dispatch(const CapacityPlan<S>& plan, const ConstMatrixRef<type_identity_t<S>>& x) {
  RowMatrix<S> buffer(plan.num_slots(), x.cols());
  dispatch(plan, x, buffer);
  return buffer;
}

/// grad_x[t] = Σ over t's kept entries, in choice order, of grad_buffer[slot]; 0 if none kept.
template <class S>
void dispatch_backward(const CapacityPlan<S>& plan,
                       const ConstMatrixRef<type_identity_t<S>>& grad_buffer,
                       MatrixRef<type_identity_t<S>> grad_x) {
  detail::require_capacity_plan(plan);
  require_shape(grad_buffer, "grad_buffer", plan.num_slots(), -1);
  require_shape(grad_x, "grad_x", plan.num_tokens, grad_buffer.cols());
  require_disjoint(grad_x, "grad_x", grad_buffer, "grad_buffer");
  const Index d = grad_buffer.cols();
  if (d == 0) return;
  const bool stream = kernels::should_stream<S>(plan.num_tokens, d);
  kernels::parallel_for(0, plan.num_tokens, [&](Index t) {
    detail::reduce_token<false>(plan, t, grad_buffer, grad_x.row(t).data(), d, stream);
    if (stream) simd::stream_fence();
  });
}

template <class S>
RowMatrix<S> dispatch_backward(const CapacityPlan<S>& plan,
                               const ConstMatrixRef<type_identity_t<S>>& grad_buffer) {
  RowMatrix<S> grad_x(plan.num_tokens, grad_buffer.cols());
  dispatch_backward(plan, grad_buffer, grad_x);
  return grad_x;
}

/// y[t] = Σ over t's kept entries, in choice order, of w · expert_out[slot]; a dropped entry adds
/// nothing and a token with no kept entry gets 0 (its residual carries it).
template <class S>
void combine(const CapacityPlan<S>& plan, const ConstMatrixRef<type_identity_t<S>>& expert_out,
             MatrixRef<type_identity_t<S>> y) {
  detail::require_capacity_plan(plan);
  require_shape(expert_out, "expert_out", plan.num_slots(), -1);
  require_shape(y, "y", plan.num_tokens, expert_out.cols());
  require_disjoint(y, "y", expert_out, "expert_out");
  const Index d = expert_out.cols();
  if (d == 0) return;
  const bool stream = kernels::should_stream<S>(plan.num_tokens, d);
  kernels::parallel_for(0, plan.num_tokens, [&](Index t) {
    detail::reduce_token<true>(plan, t, expert_out, y.row(t).data(), d, stream);
    if (stream) simd::stream_fence();
  });
}

template <class S>
RowMatrix<S> combine(const CapacityPlan<S>& plan,
                     const ConstMatrixRef<type_identity_t<S>>& expert_out) {
  RowMatrix<S> y(plan.num_tokens, expert_out.cols());
  combine(plan, expert_out, y);
  return y;
}

/// Backward of combine: grad_expert_out[slot] = w · grad_y[t] (0 for an empty slot);
/// grad_weight[i] = <expert_out[slot], grad_y[t]> for a kept entry, 0 for a dropped one.
template <class S>
void combine_backward(const CapacityPlan<S>& plan,
                      const ConstMatrixRef<type_identity_t<S>>& expert_out,
                      const ConstMatrixRef<type_identity_t<S>>& grad_y,
                      MatrixRef<type_identity_t<S>> grad_expert_out,
                      Eigen::Ref<Vector<type_identity_t<S>>> grad_weight) {
  detail::require_capacity_plan(plan);
  require_shape(expert_out, "expert_out", plan.num_slots(), -1);
  require_shape(grad_y, "grad_y", plan.num_tokens, expert_out.cols());
  require_shape(grad_expert_out, "grad_expert_out", plan.num_slots(), expert_out.cols());
  require(grad_weight.size() == plan.num_entries(), "grad_weight",
          detail::concat("size ", plan.num_entries(), " (one per plan entry)"), grad_weight.size());
  require_disjoint(grad_expert_out, "grad_expert_out", expert_out, "expert_out");
  require_disjoint(grad_expert_out, "grad_expert_out", grad_y, "grad_y");
  const Index d = expert_out.cols();
  const bool stream = kernels::should_stream<S>(plan.num_slots(), d);
  kernels::parallel_for(0, plan.num_experts, [&](Index e) {
    for (Index s = e * plan.capacity; s < (e + 1) * plan.capacity; ++s) {
      const Index i = plan.slot_entry[s];
      if (i >= 0) {
        const S* row = grad_y.row(plan.slot_token[s]).data();
        kernels::sum_rows<true>(
            grad_expert_out.row(s).data(), d, &row, &plan.entry_weight[i], 1, false, stream,
            detail::slot_row(plan, s + kernels::RowsAhead<S>::kDistance, grad_y));
      } else {
        kernels::zero_row(grad_expert_out.row(s).data(), d, stream);
      }
    }
    if (stream) simd::stream_fence();
  });
  kernels::parallel_for(0, plan.num_tokens, [&](Index t) {
    for (Index i = plan.token_offsets[t]; i < plan.token_offsets[t + 1]; ++i) {
      const Index s = plan.entry_slot[i];
      grad_weight[i] = s < 0 ? S(0) : expert_out.row(s).dot(grad_y.row(t));
    }
  });
}

/// What combine_backward returns: d loss / d expert_out [E · C, d] and d loss / d entry_weight [N].
template <class S>
struct CombineGradients {
  RowMatrix<S> expert_out;
  Vector<S> weight;
};

template <class S>
CombineGradients<S> combine_backward(const CapacityPlan<S>& plan,
                                     const ConstMatrixRef<type_identity_t<S>>& expert_out,
                                     const ConstMatrixRef<type_identity_t<S>>& grad_y) {
  CombineGradients<S> grads;
  grads.expert_out.resize(plan.num_slots(), expert_out.cols());
  grads.weight.resize(plan.num_entries());
  combine_backward(plan, expert_out, grad_y, grads.expert_out, grads.weight);
  return grads;
}

}  // namespace moe
