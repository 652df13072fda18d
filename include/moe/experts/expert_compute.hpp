// The routed experts as a layer's token exchange runs them: in the layer's own precision, or in
// bf16 from a bf16 copy of the layer's float weights (MoELayerConfig::expert_precision). One entry
// for the dropless FFN either way, so an exchange (local, all-to-all) does not branch on precision.
#pragma once

#include <type_traits>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "moe/experts/bf16_dropless_ffn.hpp"
#include "moe/experts/dropless_ffn.hpp"
#include "moe/experts/expert_weights.hpp"

namespace moe {

/// The routed experts' weights as the products read them: `weights` (the master copy, which takes
/// the gradients), and `bf16`, when set, the copy the dropless FFN's products read instead.
template <class S>
struct ExpertCompute {
  const ExpertWeights<S>& weights;
  const Bf16ExpertWeights* bf16 = nullptr;
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
  dropless_ffn_forward<S>(experts.weights, x, gates, plan, ctx.native, y);
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

}  // namespace moe
