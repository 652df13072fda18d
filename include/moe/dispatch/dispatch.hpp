// Dispatch and combine over a CapacityPlan, forward and backward: row copies between the token
// matrix [T, d] and the padded expert buffer [E · C, d] (expert e's rows are e·C .. e·C + C - 1).
// Every output row is written by exactly one loop iteration and every sum runs in a fixed order,
// so results are the same bits at any thread count.
#pragma once

#include <cstring>

#include "moe/core/detail/parallel.hpp"
#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/dispatch/capacity_plan.hpp"
#include "moe/dispatch/detail/plan_finalize.hpp"

namespace moe {

namespace detail {

template <class S>
void check_plan_arrays(const CapacityPlan<S>& plan) {
  require(plan.token_offsets.size() == plan.num_tokens + 1, "plan.token_offsets",
          detail::concat("size T + 1 = ", plan.num_tokens + 1), plan.token_offsets.size());
  require(plan.slot_token.size() == plan.num_slots() && plan.slot_entry.size() == plan.num_slots(),
          "plan.slot_token", detail::concat("size E * capacity = ", plan.num_slots()),
          plan.slot_token.size());
  require(plan.entry_weight.size() == plan.num_entries(), "plan.entry_weight",
          detail::concat("size ", plan.num_entries(), " (one per entry)"),
          plan.entry_weight.size());
}

/// Rows [e·C, (e + 1)·C) of expert e, so threads split the buffer by expert.
template <class Body>
void for_each_expert_slot(Index num_experts, Index capacity, Body&& body) {
  detail::parallel_for(0, num_experts, [&](Index e) {
    for (Index s = e * capacity; s < (e + 1) * capacity; ++s) body(s);
  });
}

}  // namespace detail

/// buffer[e·C + c] = x[token of slot (e, c)], zero for an empty slot (GShard "sec,sm->ecm").
template <class S>
void dispatch(const CapacityPlan<S>& plan, const ConstMatrixRef<detail::plan_scalar_t<S>>& x,
              MatrixRef<detail::plan_scalar_t<S>> buffer) {
  detail::check_plan_arrays(plan);
  require_shape(x, "x", plan.num_tokens, -1);
  require_shape(buffer, "buffer", plan.num_slots(), x.cols());
  const std::size_t row_bytes = static_cast<std::size_t>(x.cols()) * sizeof(S);
  if (row_bytes == 0) return;
  detail::for_each_expert_slot(plan.num_experts, plan.capacity, [&](Index s) {
    const Index t = plan.slot_token[s];
    if (t >= 0)
      std::memcpy(buffer.row(s).data(), x.row(t).data(), row_bytes);
    else
      std::memset(static_cast<void*>(buffer.row(s).data()), 0, row_bytes);
  });
}

template <class S>
RowMatrix<S> dispatch(const CapacityPlan<S>& plan,
                      const ConstMatrixRef<detail::plan_scalar_t<S>>& x) {
  RowMatrix<S> buffer(plan.num_slots(), x.cols());
  dispatch(plan, x, buffer);
  return buffer;
}

/// grad_x[t] = Σ over t's kept entries, in choice order, of grad_buffer[slot]; 0 if none kept.
template <class S>
void dispatch_backward(const CapacityPlan<S>& plan,
                       const ConstMatrixRef<detail::plan_scalar_t<S>>& grad_buffer,
                       MatrixRef<detail::plan_scalar_t<S>> grad_x) {
  detail::check_plan_arrays(plan);
  require_shape(grad_buffer, "grad_buffer", plan.num_slots(), -1);
  require_shape(grad_x, "grad_x", plan.num_tokens, grad_buffer.cols());
  detail::parallel_for(0, plan.num_tokens, [&](Index t) {
    auto out = grad_x.row(t);
    bool first = true;
    for (Index i = plan.token_offsets[t]; i < plan.token_offsets[t + 1]; ++i) {
      const Index s = plan.entry_slot[i];
      if (s < 0) continue;
      if (first)
        out = grad_buffer.row(s);
      else
        out += grad_buffer.row(s);
      first = false;
    }
    if (first) out.setZero();
  });
}

template <class S>
RowMatrix<S> dispatch_backward(const CapacityPlan<S>& plan,
                               const ConstMatrixRef<detail::plan_scalar_t<S>>& grad_buffer) {
  RowMatrix<S> grad_x(plan.num_tokens, grad_buffer.cols());
  dispatch_backward(plan, grad_buffer, grad_x);
  return grad_x;
}

/// y[t] = Σ over t's kept entries, in choice order, of w · expert_out[slot]; a dropped entry adds
/// nothing and a token with no kept entry gets 0 (its residual carries it).
template <class S>
void combine(const CapacityPlan<S>& plan,
             const ConstMatrixRef<detail::plan_scalar_t<S>>& expert_out,
             MatrixRef<detail::plan_scalar_t<S>> y) {
  detail::check_plan_arrays(plan);
  require_shape(expert_out, "expert_out", plan.num_slots(), -1);
  require_shape(y, "y", plan.num_tokens, expert_out.cols());
  detail::parallel_for(0, plan.num_tokens, [&](Index t) {
    auto out = y.row(t);
    bool first = true;
    for (Index i = plan.token_offsets[t]; i < plan.token_offsets[t + 1]; ++i) {
      const Index s = plan.entry_slot[i];
      if (s < 0) continue;
      const S w = plan.entry_weight[i];
      if (first)
        out.noalias() = w * expert_out.row(s);
      else
        out.noalias() += w * expert_out.row(s);
      first = false;
    }
    if (first) out.setZero();
  });
}

template <class S>
RowMatrix<S> combine(const CapacityPlan<S>& plan,
                     const ConstMatrixRef<detail::plan_scalar_t<S>>& expert_out) {
  RowMatrix<S> y(plan.num_tokens, expert_out.cols());
  combine(plan, expert_out, y);
  return y;
}

/// Backward of combine: grad_expert_out[slot] = w · grad_y[t] (0 for an empty slot);
/// grad_weight[i] = <expert_out[slot], grad_y[t]> for a kept entry, 0 for a dropped one.
template <class S>
void combine_backward(const CapacityPlan<S>& plan,
                      const ConstMatrixRef<detail::plan_scalar_t<S>>& expert_out,
                      const ConstMatrixRef<detail::plan_scalar_t<S>>& grad_y,
                      MatrixRef<detail::plan_scalar_t<S>> grad_expert_out,
                      Eigen::Ref<Vector<detail::plan_scalar_t<S>>> grad_weight) {
  detail::check_plan_arrays(plan);
  require_shape(expert_out, "expert_out", plan.num_slots(), -1);
  require_shape(grad_y, "grad_y", plan.num_tokens, expert_out.cols());
  require_shape(grad_expert_out, "grad_expert_out", plan.num_slots(), expert_out.cols());
  require(grad_weight.size() == plan.num_entries(), "grad_weight",
          detail::concat("size ", plan.num_entries(), " (one per plan entry)"), grad_weight.size());
  detail::for_each_expert_slot(plan.num_experts, plan.capacity, [&](Index s) {
    const Index i = plan.slot_entry[s];
    if (i >= 0)
      grad_expert_out.row(s).noalias() = plan.entry_weight[i] * grad_y.row(plan.slot_token[s]);
    else
      grad_expert_out.row(s).setZero();
  });
  detail::parallel_for(0, plan.num_tokens, [&](Index t) {
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
                                     const ConstMatrixRef<detail::plan_scalar_t<S>>& expert_out,
                                     const ConstMatrixRef<detail::plan_scalar_t<S>>& grad_y) {
  CombineGradients<S> grads;
  grads.expert_out.resize(plan.num_slots(), expert_out.cols());
  grads.weight.resize(plan.num_entries());
  combine_backward(plan, expert_out, grad_y, grads.expert_out, grads.weight);
  return grads;
}

}  // namespace moe
