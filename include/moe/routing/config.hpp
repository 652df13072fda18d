// RouterConfig: every option of the router, named after what it does, with each anchor system's
// setting given by the presets in routing/presets.hpp.
#pragma once

#include <limits>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// How logits become scores: softmax over the experts; sigmoid as in DeepSeek-V3 and
/// Megatron-Core's `sigmoid`; sqrt_softplus, s = sqrt(softplus(z)), as in DeepSeek-V4
/// (Megatron-Core and Hugging Face `sqrtsoftplus`).
enum class ScoreFunction { softmax, sigmoid, sqrt_softplus };

/// Where softmax sits relative to top-k (Megatron-Core `moe_router_pre_softmax`).
///  - softmax_then_topk: p = softmax over all E, keep the top k (Switch, Mixtral, Qwen, DeepSpeed).
///  - topk_then_softmax: top k of the logits, softmax over those k (Megatron-Core's default).
enum class SoftmaxOrder { softmax_then_topk, topk_then_softmax };

/// Score of a group in group-limited routing, from its members' selection scores:
///  - sum_top2: the sum of the group's two best (DeepSeek-V3 `Gate`, Hugging Face DeepSeek-V3);
///  - max: the group's best (DeepSeek-V3's official `Gate` without a correction bias);
///  - sum_top_k_per_selected_group: the sum of the group's top (top_k / groups_selected), integer
///    division (Megatron-Core `moe_utils.group_limited_topk`; equal to sum_top2 for DeepSeek-V3's
///    k = 8 over 4 groups, and to max whenever top_k < 2 * groups_selected).
enum class GroupScore { sum_top2, max, sum_top_k_per_selected_group };

/// What replaces the scores of experts in unselected groups: -inf (DeepSeek-V3, Megatron,
/// torchtitan) or 0 (Hugging Face DeepSeek-V3, where a masked expert can still win if every kept
/// score is < 0).
enum class GroupMask { neg_inf, zero };

/// Training-time noise; never applied in Mode::eval.
///  - jitter: router input x *= U(1 - eps, 1 + eps), per element (Switch Transformer, HF,
///  DeepSpeed).
///  - noisy_topk: H = x W^T + N(0,1) * (softplus(x W_noise^T) + noise_epsilon) (Shazeer et al.
///  2017).
enum class Noise { none, jitter, noisy_topk };

struct RouterConfig {
  Index num_experts = 8;
  Index hidden = 0;  ///< d, the token width
  Index top_k = 2;

  ScoreFunction score = ScoreFunction::softmax;
  SoftmaxOrder softmax_order = SoftmaxOrder::softmax_then_topk;

  /// Divide the k selected weights by their sum (+ renormalize_epsilon). Mixtral, Qwen
  /// norm_topk_prob, DeepSeek-V3 sigmoid. Implied by topk_then_softmax.
  bool renormalize = false;
  double renormalize_epsilon = 0.0;  ///< Megatron and HF DeepSeek-V3 use 1e-20; Mixtral 0
  /// Floor of the renormalizing denominator: w_j = s_j / max(sum + renormalize_epsilon,
  /// renormalize_min) (llama.cpp clamps the sum at 6.103515625e-5, ERNIE 4.5 at `norm_min`); below
  /// it the weights sum to less than 1 and the sum passes no gradient. 0 (the default): no floor.
  double renormalize_min = 0.0;
  double scaling_factor = 1.0;  ///< DeepSeek-V3 routed_scaling_factor (2.5)

  /// Group-limited top-k (DeepSeek-V3 n_group / topk_group): experts split in num_groups equal
  /// groups, the best groups_selected groups kept, top-k taken inside them. 1 / 1 disables it.
  Index num_groups = 1;
  Index groups_selected = 1;
  GroupScore group_score = GroupScore::sum_top2;
  GroupMask group_mask = GroupMask::neg_inf;

  bool linear_bias = false;  ///< logits = x W^T + b
  /// w_tj *= c[e_tj], a learned scale per expert applied to the finished gates (after
  /// renormalization and scaling_factor): Gemma 4's `per_expert_scale` (HF Gemma4TextRouter).
  /// Router::expert_scale [E] starts at 1.
  bool expert_scale = false;

  Noise noise = Noise::none;
  double jitter_epsilon = 1e-2;  ///< Switch / DeepSpeed default
  double noise_epsilon = 1e-2;   ///< floor of the noisy-top-k standard deviation

  /// Adaptive k, chosen per call (llama.cpp `--moe-n-expert`; ik_llama.cpp's smart expert
  /// reduction, PR 239): of the top_k choices, choice j is used when j < min_top_k, or when
  /// j < active_top_k and s_j >= top_k_threshold * max_i s_i over the chosen (s the unbiased
  /// scores); the others become unused slots (kUnusedSlot, gate 0) and the gates are computed over
  /// the used ones (renormalized over them when renormalize is on). 0 means top_k for
  /// active_top_k, and active_top_k for min_top_k; the defaults use all top_k.
  Index active_top_k = 0;
  Index min_top_k = 0;
  double top_k_threshold = 0.0;

  bool groups_enabled() const noexcept { return num_groups > 1; }

  /// The most experts a token uses: active_top_k, or top_k when 0.
  Index max_active_k() const noexcept { return active_top_k > 0 ? active_top_k : top_k; }
  /// The fewest experts a token uses: min_top_k, or max_active_k() when 0.
  Index min_active_k() const noexcept { return min_top_k > 0 ? min_top_k : max_active_k(); }
  /// Whether a token may use fewer than top_k experts (some slots may be unused).
  bool adaptive_k() const noexcept { return min_active_k() < top_k; }

  /// How many of a group's best scores its group score sums (1 for GroupScore::max).
  Index group_score_terms() const noexcept {
    switch (group_score) {
      case GroupScore::max:
        return 1;
      case GroupScore::sum_top2:
        return 2;
      case GroupScore::sum_top_k_per_selected_group:
        return top_k / groups_selected;
    }
    return 1;
  }
};

/// Checks a RouterConfig; every message names the field.
inline void validate(const RouterConfig& c) {
  require(c.num_experts >= 1, "RouterConfig::num_experts", ">= 1", c.num_experts);
  require(c.hidden >= 1, "RouterConfig::hidden", ">= 1", c.hidden);
  require(c.top_k >= 1 && c.top_k <= c.num_experts, "RouterConfig::top_k",
          detail::concat("1 <= top_k <= num_experts (", c.num_experts, ")"), c.top_k);
  require(std::isfinite(c.renormalize_epsilon) && c.renormalize_epsilon >= 0.0,
          "RouterConfig::renormalize_epsilon", "a finite value >= 0", c.renormalize_epsilon);
  // A floor below float's smallest normal number would reach the log-space ratios that keep
  // underflowing sums finite, whose weights always sum to 1.
  require(c.renormalize_min == 0.0 || (std::isfinite(c.renormalize_min) &&
                                       c.renormalize_min >= std::numeric_limits<float>::min()),
          "RouterConfig::renormalize_min",
          detail::concat("0, or a finite value >= ", std::numeric_limits<float>::min()),
          c.renormalize_min);
  require(c.renormalize_min == 0.0 || c.renormalize, "RouterConfig::renormalize_min",
          "0 without renormalize (there is no sum to floor)", c.renormalize_min);
  require(std::isfinite(c.scaling_factor) && c.scaling_factor > 0.0, "RouterConfig::scaling_factor",
          "a finite value > 0", c.scaling_factor);
  require(c.score == ScoreFunction::softmax || c.softmax_order == SoftmaxOrder::softmax_then_topk,
          "RouterConfig::softmax_order", "softmax_then_topk with a sigmoid or sqrt_softplus score",
          "topk_then_softmax");
  require(c.num_groups >= 1, "RouterConfig::num_groups", ">= 1", c.num_groups);
  require(c.num_experts % c.num_groups == 0, "RouterConfig::num_groups",
          detail::concat("a divisor of num_experts (", c.num_experts, ")"), c.num_groups);
  require(
      c.groups_selected >= 1 && c.groups_selected <= c.num_groups, "RouterConfig::groups_selected",
      detail::concat("1 <= groups_selected <= num_groups (", c.num_groups, ")"), c.groups_selected);
  if (c.groups_enabled()) {
    const Index per_group = c.num_experts / c.num_groups;
    require(c.group_score != GroupScore::sum_top2 || per_group >= 2, "RouterConfig::group_score",
            "max when a group has a single expert", "sum_top2");
    if (c.group_score == GroupScore::sum_top_k_per_selected_group) {
      const Index terms = c.top_k / c.groups_selected;
      require(
          terms >= 1 && terms <= per_group, "RouterConfig::groups_selected",
          detail::concat("top_k / groups_selected between 1 and the experts per group (", per_group,
                         ") with sum_top_k_per_selected_group (top_k = ", c.top_k, ")"),
          c.groups_selected);
    }
    require(c.groups_selected * per_group >= c.top_k, "RouterConfig::groups_selected",
            detail::concat("groups_selected * experts per group (", per_group, ") >= top_k (",
                           c.top_k, ")"),
            c.groups_selected);
  }
  require(c.jitter_epsilon >= 0.0 && c.jitter_epsilon < 1.0, "RouterConfig::jitter_epsilon",
          "0 <= eps < 1", c.jitter_epsilon);
  require(std::isfinite(c.noise_epsilon) && c.noise_epsilon >= 0.0, "RouterConfig::noise_epsilon",
          "a finite value >= 0", c.noise_epsilon);
  require(c.active_top_k >= 0 && c.active_top_k <= c.top_k, "RouterConfig::active_top_k",
          detail::concat("0 (top_k) or 1 <= active_top_k <= top_k (", c.top_k, ")"),
          c.active_top_k);
  require(
      c.min_top_k >= 0 && c.min_top_k <= c.max_active_k(), "RouterConfig::min_top_k",
      detail::concat("0 (active_top_k) or 1 <= min_top_k <= active_top_k (", c.max_active_k(), ")"),
      c.min_top_k);
  require(c.top_k_threshold >= 0.0 && c.top_k_threshold <= 1.0, "RouterConfig::top_k_threshold",
          "a ratio in [0, 1]", c.top_k_threshold);
}

}  // namespace moe
