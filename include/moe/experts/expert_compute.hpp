// The routed experts as a layer's token exchange runs them: in the layer's own precision, or in
// bf16 from a bf16 copy of the layer's float weights (MoELayerConfig::expert_precision). One entry
// for the dropless FFN either way, so an exchange (local, all-to-all) does not branch on precision.
#pragma once

#include <type_traits>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "moe/experts/bf16_dropless_ffn.hpp"
#include "moe/experts/capacity_ffn.hpp"
#include "moe/experts/dropless_ffn.hpp"
#include "moe/experts/expert_weights.hpp"
#include "moe/experts/packed_expert_weights.hpp"

namespace moe {

/// The routed experts' weights as the products read them: `weights` (the master copy, which takes
/// the gradients), and `bf16`, when set, the copy the FFN's products read instead; or `panels`,
/// when set, the panel copy of `weights` the forward's products read (the same bits).
template <class S>
struct ExpertCompute {
  const ExpertWeights<S>& weights;
  const Bf16ExpertWeights* bf16 = nullptr;
  const PackedExpertWeights<S>* panels = nullptr;
};

/// The dropless FFN's contexts in the layer's precision and in bf16; the forward that ran last
/// fills one of them.
template <class S>
struct DroplessFFNContexts {
  DroplessFFNContext<S> native;
  Bf16FFNContext bf16;
  bool ran_bf16 = false;  ///< whether the last forward ran in bf16

  /// Tokens of the last forward (-1 before any).
  Index num_tokens() const noexcept { return ran_bf16 ? bf16.num_tokens : native.num_tokens; }
};

/// dropless_ffn_forward in the experts' precision. `save_for_backward` as the contexts' own (the
/// bf16 context always saves: its backward has no x to group again).
template <class S>
void dropless_ffn_forward(const ExpertCompute<S>& experts, ConstMatrixRef<S> x,
                          ConstMatrixRef<S> gates, const DroplessPlan& plan,
                          DroplessFFNContexts<S>& ctx, bool save_for_backward, MatrixRef<S> y) {
  ctx.ran_bf16 = experts.bf16 != nullptr;
  if constexpr (std::is_same_v<S, float>) {
    if (experts.bf16 != nullptr) {
      ctx.bf16.save_for_backward = true;
      return dropless_ffn_forward(*experts.bf16, x, gates, plan, ctx.bf16, y);
    }
  }
  require(experts.bf16 == nullptr, "MoELayerConfig::expert_precision",
          "bf16 experts in a layer of float", "a layer of double");
  ctx.native.save_for_backward = save_for_backward;
  detail::dropless_ffn_forward_over<S>(experts.weights, experts.panels, x, gates, plan, ctx.native,
                                       y);
}

namespace detail {

/// Backward of that forward, given the forward's input x or not (`x` null: the forward saved).
template <class S>
void dropless_ffn_backward_of(const ExpertCompute<S>& experts, const ConstMatrixRef<S>* x,
                              ConstMatrixRef<S> grad_y, const DroplessPlan& plan,
                              DroplessFFNContexts<S>& ctx, ExpertGradients<S>& grads,
                              MatrixRef<S> grad_x, MatrixRef<S> grad_gates) {
  require(ctx.ran_bf16 == (experts.bf16 != nullptr), "ctx",
          experts.bf16 ? "a context of a bf16 forward"
                       : "a context of a forward in the layer's precision",
          ctx.ran_bf16 ? "a bf16 forward's" : "another precision's");
  if constexpr (std::is_same_v<S, float>) {
    if (experts.bf16 != nullptr)
      return dropless_ffn_backward(*experts.bf16, grad_y, plan, ctx.bf16, grads, grad_x,
                                   grad_gates);
  }
  if (x != nullptr)
    return dropless_ffn_backward<S>(experts.weights, *x, grad_y, plan, ctx.native, grads, grad_x,
                                    grad_gates);
  dropless_ffn_backward<S>(experts.weights, grad_y, plan, ctx.native, grads, grad_x, grad_gates);
}

}  // namespace detail

/// Backward of that forward: gradients in the master weights' shapes (float for bf16 experts).
/// Given x, a forward that saved nothing is differentiated too (dropless_ffn_backward).
template <class S>
void dropless_ffn_backward(const ExpertCompute<S>& experts, ConstMatrixRef<S> x,
                           ConstMatrixRef<S> grad_y, const DroplessPlan& plan,
                           DroplessFFNContexts<S>& ctx, ExpertGradients<S>& grads,
                           MatrixRef<S> grad_x, MatrixRef<S> grad_gates) {
  detail::dropless_ffn_backward_of<S>(experts, &x, grad_y, plan, ctx, grads, grad_x, grad_gates);
}

/// The same after a forward that saved for backward.
template <class S>
void dropless_ffn_backward(const ExpertCompute<S>& experts, ConstMatrixRef<S> grad_y,
                           const DroplessPlan& plan, DroplessFFNContexts<S>& ctx,
                           ExpertGradients<S>& grads, MatrixRef<S> grad_x,
                           MatrixRef<S> grad_gates) {
  detail::dropless_ffn_backward_of<S>(experts, nullptr, grad_y, plan, ctx, grads, grad_x,
                                      grad_gates);
}

/// The capacity FFN's contexts in the layer's precision and in bf16. bf16 experts run the capacity
/// buffer [E*C, d] as a dropless plan of E*C one-choice rows, slot s of expert e routed to e when
/// filled: the filled slots are computed in place of the buffer's rows, the others neither read
/// nor computed, and 0 in the output, as the capacity FFN leaves them.
template <class S>
struct CapacityFFNContexts {
  CapacityFFNContext<S> native;
  ExpertIdMatrix slot_experts;  ///< bf16: [E*C, 1] the expert of each filled slot, else unused
  DroplessPlan slots;           ///< bf16: the buffer's filled slots as a plan
  Bf16FFNContext bf16;
  RowMatrix<S> unit_gates, unit_gate_grad;  ///< bf16: [E*C, 1] ones, and their (unused) gradient
  bool ran_bf16 = false;                    ///< whether the last forward ran in bf16
  Index bf16_capacity = -1;

  /// C of the last forward (-1 before any).
  Index capacity() const noexcept { return ran_bf16 ? bf16_capacity : native.capacity; }
};

/// capacity_ffn_forward in the experts' precision over the buffer x [E*C, d] whose first filled[e]
/// slots of each expert hold tokens; out [E*C, d] (0 in empty slots). `save_for_backward` as the
/// native context's own (the bf16 one always saves).
template <class S>
void capacity_ffn_forward(const ExpertCompute<S>& experts, ConstMatrixRef<S> x, Index capacity,
                          const IndexVector& filled, CapacityFFNContexts<S>& ctx,
                          bool save_for_backward, MatrixRef<S> out) {
  ctx.ran_bf16 = experts.bf16 != nullptr;
  if constexpr (std::is_same_v<S, float>) {
    if (experts.bf16 != nullptr) {
      const Index count = experts.weights.config.num_experts;
      require(capacity >= 0, "capacity", ">= 0", capacity);
      require(filled.size() == count, "filled", detail::concat(count, " entries"), filled.size());
      ExpertIdMatrix& ids = ctx.slot_experts;  // kept across steps: no allocation once grown
      ids.resize(checked_mul(count, capacity, "capacity"), 1);
      for (Index e = 0; e < count; ++e) {
        require(filled[e] >= 0 && filled[e] <= capacity, "filled",
                detail::concat("0 <= filled <= capacity (", capacity, ") for expert ", e),
                filled[e]);
        for (Index s = 0; s < capacity; ++s)
          ids(e * capacity + s, 0) = s < filled[e] ? static_cast<ExpertId>(e) : kUnusedSlot;
      }
      make_dropless_plan(ids, count, /*block_size=*/1, ctx.slots);
      ctx.unit_gates.setOnes(ids.rows(), 1);
      ctx.bf16.save_for_backward = true;
      ctx.bf16_capacity = capacity;
      return dropless_ffn_forward(*experts.bf16, x, ctx.unit_gates, ctx.slots, ctx.bf16, out);
    }
  }
  require(experts.bf16 == nullptr, "MoELayerConfig::expert_precision",
          "bf16 experts in a layer of float", "a layer of double");
  ctx.native.save_for_backward = save_for_backward;
  detail::capacity_ffn_forward_over<S>(experts.weights, experts.panels, x, capacity, filled,
                                       ctx.native, out);
}

/// Backward of that forward given its buffer x: grad_x [E*C, d] (0 in empty slots) and the
/// gradients in the master weights' shapes (float for bf16 experts).
template <class S>
void capacity_ffn_backward(const ExpertCompute<S>& experts, ConstMatrixRef<S> x,
                           ConstMatrixRef<S> grad_out, CapacityFFNContexts<S>& ctx,
                           ExpertGradients<S>& grads, MatrixRef<S> grad_x) {
  require(ctx.ran_bf16 == (experts.bf16 != nullptr), "ctx",
          experts.bf16 ? "a context of a bf16 forward"
                       : "a context of a forward in the layer's precision",
          ctx.ran_bf16 ? "a bf16 forward's" : "another precision's");
  if constexpr (std::is_same_v<S, float>) {
    if (experts.bf16 != nullptr) {
      ctx.unit_gate_grad.resize(ctx.slots.num_tokens, 1);
      return dropless_ffn_backward(*experts.bf16, grad_out, ctx.slots, ctx.bf16, grads, grad_x,
                                   ctx.unit_gate_grad);
    }
  }
  capacity_ffn_backward<S>(experts.weights, x, grad_out, ctx.native, grads, grad_x);
}

}  // namespace moe
