// MoELayerConfig: every option of a MoE layer (router, dispatch, experts, balancing, shared
// experts), shared by MoELayer and the expert-parallel layer.
#pragma once

#include <cmath>
#include <optional>

#include "moe/balance/bias_balancer.hpp"
#include "moe/balance/load_balancing_loss.hpp"
#include "moe/dispatch/capacity.hpp"
#include "moe/experts/expert_weights.hpp"
#include "moe/health/config.hpp"
#include "moe/routing/config.hpp"

namespace moe {

/// How tokens reach the experts: MegaBlocks' dropless block-sparse path, or a capacity-factor
/// buffer [E, C, d] whose overflow is dropped (the caller's residual carries dropped tokens).
enum class DispatchKind { dropless, capacity };

/// The precision the routed experts compute in.
enum class ExpertPrecision {
  native,  ///< the layer's scalar (float or double), as its weights
  /// bf16 products with float sums over a bf16 copy of the float weights, kept by the layer
  /// (MoELayer<float>): mixed-precision training and bf16 inference
  bf16
};

/// How the routed experts' forward products read their matrices (native precision).
enum class ExpertLayout {
  row_major,  ///< in place, as the parameters are stored
  /// from a copy in column panels (PackedExpertWeights) that the layer makes at its first forward
  /// and again once the weights changed: the same bits, read at the speed of a plain pass over the
  /// weights at decode and near the GEMM rate at tens of rows per expert, for one more copy of the
  /// matrices (README: expert FFNs at serving batch sizes)
  panels
};

/// Always-on experts every token passes through, added to the routed output (DeepSeek-V3), and
/// optionally scaled by sigmoid(x . w_gate) (Qwen2-MoE shared_expert_gate). ffn_hidden 0: none.
struct SharedExpertConfig {
  Index ffn_hidden = 0;
  bool gated = false;
};

struct MoELayerConfig {
  RouterConfig router;
  Index ffn_hidden = 0;  ///< f of every routed expert
  Activation activation = Activation::swiglu;
  double swiglu_limit = 7.0;  ///< L of the clamped SwiGLUs (ExpertFFNConfig::swiglu_limit)
  bool expert_bias = false;
  DispatchKind dispatch = DispatchKind::dropless;
  Index block_size = 128;  ///< dropless: each expert's rows padded to a multiple of this
  CapacityConfig capacity;
  std::optional<AuxLossConfig> aux_loss;             ///< its coefficient is inside
  double z_loss_coefficient = 0.0;                   ///< ST-MoE router z-loss; 0 = off
  std::optional<BiasBalancerOptions> bias_balancer;  ///< aux-loss-free balancing; nullopt = off
  SharedExpertConfig shared;
  /// y_t = FFN_e(w_t x_t) instead of w_t FFN_e(x_t): the gate scales the expert's input (Llama 4;
  /// llama.cpp `weight_before_ffn`, Megatron-Core `moe_apply_probs_on_input`). Top-1 and dropless
  /// only (Megatron's restriction: with k > 1 each choice would need its own scaled input).
  bool weight_before_ffn = false;
  /// Zero-computation experts (LongCat-Flash, Hugging Face `LongcatFlashExperts`): the last Z of
  /// the router's num_experts are identities, so choosing one adds w_tj x_t to y_t with no
  /// weights and no FFN work. The router, losses, balancer and health see all num_experts (their
  /// loads and the selection bias include the zero experts); the FFN experts are the first
  /// num_experts - Z. Dropless dispatch only, as LongCat runs them.
  Index zero_computation_experts = 0;
  /// bf16: the routed experts' products read a bf16 copy of their float weights, which the layer
  /// makes at its first forward and refreshes (MoELayer::refresh_bf16_experts) once the float
  /// weights changed; gradients stay float. The router, shared expert, losses and health stay in
  /// the layer's precision.
  ExpertPrecision expert_precision = ExpertPrecision::native;
  /// panels: the routed experts' forward reads a panel copy of their weights that the layer keeps
  /// (MoELayer::refresh_expert_panels), bit for bit the forward over the weights themselves; the
  /// backward reads the weights. Native precision only (bf16 experts read bf16 panels).
  ExpertLayout expert_layout = ExpertLayout::row_major;
  /// The step's health report (MoEOutput::health): thresholds, and the opt-in top-k margins and
  /// bfloat16 stability (HealthConfig::selection_metrics).
  HealthConfig health;

  /// The experts with weights: router.num_experts less the zero-computation ones.
  Index num_ffn_experts() const noexcept { return router.num_experts - zero_computation_experts; }

  ExpertFFNConfig experts() const {
    ExpertFFNConfig c;
    c.num_experts = num_ffn_experts();
    c.hidden = router.hidden;
    c.ffn_hidden = ffn_hidden;
    c.activation = activation;
    c.swiglu_limit = swiglu_limit;
    c.bias = expert_bias;
    return c;
  }
  /// Expert weights start N(0, 1/d): unit-variance activations for unit-variance tokens.
  double expert_init_stddev() const { return 1.0 / std::sqrt(static_cast<double>(router.hidden)); }
  ExpertFFNConfig shared_experts() const {
    ExpertFFNConfig c = experts();
    c.num_experts = 1;
    c.ffn_hidden = shared.ffn_hidden;
    return c;
  }
};

/// Router weights start N(0, 0.02^2), Megatron-Core's init_method_std.
inline constexpr double kRouterInitStddev = 0.02;

/// Checks a MoELayerConfig; every message names the field.
inline void validate(const MoELayerConfig& c) {
  validate(c.router);
  require(c.zero_computation_experts >= 0 && c.zero_computation_experts < c.router.num_experts,
          "MoELayerConfig::zero_computation_experts",
          detail::concat("0 <= Z < router.num_experts (", c.router.num_experts, ")"),
          c.zero_computation_experts);
  require(std::isfinite(c.swiglu_limit) && c.swiglu_limit > 0.0, "MoELayerConfig::swiglu_limit",
          "a finite value > 0", c.swiglu_limit);
  validate(c.experts());
  require(c.block_size >= 1, "MoELayerConfig::block_size", ">= 1", c.block_size);
  require(c.z_loss_coefficient >= 0.0, "MoELayerConfig::z_loss_coefficient", ">= 0",
          c.z_loss_coefficient);
  require(c.shared.ffn_hidden >= 0, "MoELayerConfig::shared.ffn_hidden", ">= 0 (0 = none)",
          c.shared.ffn_hidden);
  if (c.dispatch == DispatchKind::capacity) validate(c.capacity);
  if (c.weight_before_ffn) {
    require(c.router.top_k == 1, "MoELayerConfig::weight_before_ffn",
            "top_k == 1 (the gate scales the one expert's input)",
            detail::concat("top_k ", c.router.top_k));
    require(c.dispatch == DispatchKind::dropless, "MoELayerConfig::weight_before_ffn",
            "dropless dispatch", "capacity dispatch");
  }
  require(
      c.expert_layout == ExpertLayout::row_major || c.expert_precision == ExpertPrecision::native,
      "MoELayerConfig::expert_layout",
      "row_major with expert_precision = bf16 (bf16 experts "
      "always read their bf16 panels)",
      "panels");
  if (c.aux_loss) validate(*c.aux_loss);
  validate(c.health);
  if (c.zero_computation_experts > 0) {
    require(c.dispatch == DispatchKind::dropless, "MoELayerConfig::zero_computation_experts",
            "dropless dispatch", "capacity dispatch");
    require(!c.weight_before_ffn, "MoELayerConfig::zero_computation_experts",
            "weight_before_ffn off", "weight_before_ffn on");
  }
}

}  // namespace moe
