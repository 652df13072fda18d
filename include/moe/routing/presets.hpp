// Named router configurations that reproduce public systems' routers. Each says what it sets;
// capacity, balancing and dispatch settings of those systems live with their own components.
#pragma once

#include "moe/routing/config.hpp"

namespace moe::presets {

/// The token width d of a preset, named at the call: `mixtral(Hidden{4096}, Experts{8})`. Every
/// preset takes (Hidden, Experts, ...) in that order; the two are types of their own so that
/// swapped or bare numbers do not compile, where two Index arguments would route a wrong shape.
struct Hidden {
  explicit constexpr Hidden(Index d) noexcept : value(d) {}
  Index value;
};

/// The number of routed experts E of a preset (see Hidden).
struct Experts {
  explicit constexpr Experts(Index e) noexcept : value(e) {}
  Index value;
};

namespace detail {
inline RouterConfig base(Hidden hidden, Experts experts, Index top_k) {
  RouterConfig c;
  c.num_experts = experts.value;
  c.hidden = hidden.value;
  c.top_k = top_k;
  return c;
}
}  // namespace detail

/// Switch Transformer as in Hugging Face `SwitchTransformersTop1Router`: softmax over E, top-1,
/// the raw probability as the gate, input jitter U(1 - 0.01, 1 + 0.01) in training, no bias.
inline RouterConfig switch_transformer(Hidden hidden, Experts experts, double jitter = 1e-2) {
  RouterConfig c = detail::base(hidden, experts, 1);
  c.noise = jitter > 0 ? Noise::jitter : Noise::none;
  c.jitter_epsilon = jitter;
  return c;
}

/// Mixtral (HF `MixtralSparseMoeBlock`): softmax over E, top-2, weights renormalized to sum 1.
inline RouterConfig mixtral(Hidden hidden, Experts experts = Experts{8}, Index top_k = 2) {
  RouterConfig c = detail::base(hidden, experts, top_k);
  c.renormalize = true;
  return c;
}

/// Qwen2-MoE / Qwen3-MoE: softmax over E, top-k, renormalized only with `norm_topk_prob`
/// (false in Qwen2-MoE's config, true in Qwen3 checkpoints).
inline RouterConfig qwen_moe(Hidden hidden, Experts experts, Index top_k, bool norm_topk_prob) {
  RouterConfig c = detail::base(hidden, experts, top_k);
  c.renormalize = norm_topk_prob;
  return c;
}

/// Qwen3-MoE (HF `Qwen3MoeSparseMoeBlock`, Qwen3-30B-A3B / 235B-A22B checkpoints): softmax over
/// 128 experts, top-8, renormalized (`norm_topk_prob` true), no shared expert.
inline RouterConfig qwen3_moe(Hidden hidden, Experts experts = Experts{128}, Index top_k = 8) {
  return qwen_moe(hidden, experts, top_k, /*norm_topk_prob=*/true);
}

/// OLMoE (HF `OlmoeSparseMoeBlock`, OLMoE-1B-7B): softmax over 64 experts, top-8, the raw
/// probabilities as weights (`norm_topk_prob` false).
inline RouterConfig olmoe(Hidden hidden, Experts experts = Experts{64}, Index top_k = 8) {
  return qwen_moe(hidden, experts, top_k, /*norm_topk_prob=*/false);
}

/// GPT-OSS (HF `GptOssTopKRouter`, gpt-oss-120b; 32 experts in gpt-oss-20b): logits = x W^T + b,
/// top-4 of the logits, softmax over the four.
inline RouterConfig gpt_oss(Hidden hidden, Experts experts = Experts{128}, Index top_k = 4) {
  RouterConfig c = detail::base(hidden, experts, top_k);
  c.linear_bias = true;
  c.softmax_order = SoftmaxOrder::topk_then_softmax;
  return c;
}

/// Llama 4 (HF `Llama4TextMoe`, Scout: 16 experts; Maverick: 128): the best logit of each token,
/// its sigmoid as the weight. The layer scales the expert's input by it
/// (MoELayerConfig::weight_before_ffn) and adds a shared expert of the same width.
inline RouterConfig llama4(Hidden hidden, Experts experts = Experts{16}) {
  RouterConfig c = detail::base(hidden, experts, 1);
  c.score = ScoreFunction::sigmoid;
  return c;
}

/// DeepSeek-V3 (official `Gate`): sigmoid scores, group-limited top-8 of 256 experts in 8 groups
/// keeping 4 (group score = sum of the group's top-2 biased scores, other groups -inf), weights
/// = unbiased scores renormalized with no epsilon, times routed_scaling_factor 2.5.
/// Hugging Face's port differs in two places: set group_mask = GroupMask::zero and
/// renormalize_epsilon = 1e-20 to match it.
inline RouterConfig deepseek_v3(Hidden hidden, Experts experts = Experts{256}, Index top_k = 8,
                                Index num_groups = 8, Index groups_selected = 4) {
  RouterConfig c = detail::base(hidden, experts, top_k);
  c.score = ScoreFunction::sigmoid;
  c.renormalize = true;
  c.scaling_factor = 2.5;
  c.num_groups = num_groups;
  c.groups_selected = groups_selected;
  c.group_score = GroupScore::sum_top2;
  c.group_mask = GroupMask::neg_inf;
  return c;
}

/// DeepSeek-V4 (Hugging Face `DeepseekV4TopKRouter`, config of DeepSeek-V4-Flash): scores
/// s = sqrt(softplus(z)), top-6 of 256 experts by s + the correction bias (Router::selection_bias,
/// kept by a BiasBalancer), no group limit, weights = s over their sum + 1e-20, times 1.5.
/// Its first three MoE layers route by a frozen token-id table instead (HashTable): the same
/// config weights the table's experts.
inline RouterConfig deepseek_v4(Hidden hidden, Experts experts = Experts{256}, Index top_k = 6) {
  RouterConfig c = detail::base(hidden, experts, top_k);
  c.score = ScoreFunction::sqrt_softplus;
  c.renormalize = true;
  c.renormalize_epsilon = 1e-20;
  c.scaling_factor = 1.5;
  return c;
}

/// LongCat-Flash (Hugging Face `LongcatFlashTopkRouter`): softmax over 512 FFN experts and 256
/// zero-computation ones (768 in all), top-12 by the scores + the correction bias
/// (Router::selection_bias, kept by a BiasBalancer), the raw probabilities times 6.0 as weights.
/// The layer makes the last 256 identities (MoELayerConfig::zero_computation_experts = 256).
inline RouterConfig longcat_flash(Hidden hidden, Experts experts = Experts{768}, Index top_k = 12) {
  RouterConfig c = detail::base(hidden, experts, top_k);
  c.scaling_factor = 6.0;
  return c;
}

/// Megatron-Core TopKRouter with score_function = softmax. pre_softmax = false (its default):
/// top-k of the logits, softmax over the k. pre_softmax = true: softmax over E, top-k, no renorm.
inline RouterConfig megatron_topk(Hidden hidden, Experts experts, Index top_k, bool pre_softmax) {
  RouterConfig c = detail::base(hidden, experts, top_k);
  c.softmax_order = pre_softmax ? SoftmaxOrder::softmax_then_topk : SoftmaxOrder::topk_then_softmax;
  return c;
}

/// Megatron-Core TopKRouter with score_function = sigmoid: weights renormalized with +1e-20 when
/// k > 1, times the optional topk_scaling_factor.
inline RouterConfig megatron_sigmoid(Hidden hidden, Experts experts, Index top_k,
                                     double scaling_factor = 1.0) {
  RouterConfig c = detail::base(hidden, experts, top_k);
  c.score = ScoreFunction::sigmoid;
  c.renormalize = top_k > 1;
  c.renormalize_epsilon = 1e-20;
  c.scaling_factor = scaling_factor;
  return c;
}

/// DeepSpeed `top2gating`: softmax over E, the two best experts with their raw probabilities.
/// DeepSpeed renormalizes the two weights only after capacity dropping, over the survivors; that
/// step belongs to the capacity dispatcher (survivor renormalization), so the router leaves the
/// probabilities raw. No noise by default (noisy_gate_policy None).
inline RouterConfig deepspeed_top2(Hidden hidden, Experts experts) {
  return detail::base(hidden, experts, 2);
}

}  // namespace moe::presets
