// The always-on shared expert of a MoE layer, forward and backward: one FFN every token passes
// through, optionally scaled by a per-token sigmoid gate (DeepSeek-V3 shared experts; Qwen2-MoE
// shared_expert_gate). Replicated on every process under expert parallelism.
#pragma once

#include <cstdint>

#include "moe/core/random.hpp"
#include "moe/core/types.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "moe/experts/dropless_ffn.hpp"
#include "moe/layer/config.hpp"
#include "moe/routing/scoring.hpp"

namespace moe {

/// What the shared expert's forward saves for its backward, and its scratch; reused across steps.
template <class S>
struct SharedExpertContext {
  DroplessPlan plan;               ///< every token to the one shared expert
  DroplessFFNContext<S> ffn;       ///< the FFN's saved activations
  RowMatrix<S> gate;               ///< [T, 1] sigmoid(x w_gate), or ones
  RowMatrix<S> grad_x, grad_gate;  ///< backward's scratch, kept across steps
};

/// The shared expert's weights N(0, 1/d) from seed + 2 and its gate N(0, 0.02^2) from seed + 3
/// (MoELayer::init_weights; the routed experts take seed + 1).
template <class S>
void init_shared_expert(const MoELayerConfig& config, std::uint64_t seed, ExpertWeights<S>& weights,
                        Eigen::Ref<Vector<S>> gate_weight) {
  if (config.shared.ffn_hidden > 0) weights.init_weights(seed + 2, config.expert_init_stddev());
  if (!config.shared.gated) return;
  const CounterRng rng = make_rng(seed + 3, RandomStream::init);
  for (Index i = 0; i < gate_weight.size(); ++i)
    gate_weight[i] = static_cast<S>(kRouterInitStddev * rng.normal(static_cast<std::uint64_t>(i)));
}

/// y_t += g_t FFN_shared(x_t), g_t = sigmoid(x_t . w_gate) when gated, else 1 (DeepSeek-V3 shared
/// experts; Qwen2-MoE shared_expert_gate).
template <class S>
void shared_expert_forward(const ExpertWeights<S>& weights, ConstVectorRef<S> gate_weight,
                           bool gated, Index block_size, ConstMatrixRef<S> x,
                           SharedExpertContext<S>& ctx, MatrixRef<S> y, Mode mode) {
  const Index tokens = x.rows();
  make_dropless_plan(ExpertIdMatrix::Zero(tokens, 1), 1, block_size, ctx.plan);
  if (gated)
    ctx.gate = detail::sigmoid_of((x * gate_weight).array()).matrix();
  else
    ctx.gate = RowMatrix<S>::Ones(tokens, 1);
  ctx.ffn.save_for_backward = mode == Mode::train;
  y += dropless_ffn_forward<S>(weights, x, ctx.gate, ctx.plan, ctx.ffn);
}

/// Backward of shared_expert_forward: grad_x += dx; grads and grad_gate_weight (when gated)
/// overwritten, shaped on first use. The gate's derivative is g (1 - g).
template <class S>
void shared_expert_backward(const ExpertWeights<S>& weights, ConstVectorRef<S> gate_weight,
                            bool gated, ConstMatrixRef<S> x, SharedExpertContext<S>& ctx,
                            ConstMatrixRef<S> grad_y, ExpertGradients<S>& grads,
                            Vector<S>& grad_gate_weight, MatrixRef<S> grad_x) {
  const Index tokens = x.rows();
  detail::shape_gradients(grads, weights.config);
  ctx.grad_x.resize(tokens, x.cols());
  ctx.grad_gate.resize(tokens, 1);
  dropless_ffn_backward<S>(weights, x, grad_y, ctx.plan, ctx.ffn, grads, ctx.grad_x, ctx.grad_gate);
  grad_x += ctx.grad_x;
  if (!gated) return;
  const auto g = ctx.gate.col(0).array();
  const Vector<S> du = (ctx.grad_gate.col(0).array() * g * (S(1) - g)).matrix();
  grad_gate_weight = x.transpose() * du;
  grad_x.noalias() += du * gate_weight.transpose();
}

}  // namespace moe
