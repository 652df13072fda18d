// Expert capacity C: how many (token, choice) entries one expert accepts from one routing group,
// with the rounding convention of each system that defines it.
#pragma once

#include <cmath>
#include <limits>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// How C is computed from the group's token count T, top-k k, experts E and capacity factor cf.
/// The conventions really differ: T = 50, E = 4, k = 1, cf = 1.2 gives 15 under megatron (double)
/// and 16 under deepspeed (float32).
enum class CapacityRounding {
  megatron,    ///< ceil((T·k / E) · cf) in double (Megatron-Core get_capacity)
  deepspeed,   ///< ceil(float(T / E) · float(k · cf)) in float32 (DeepSpeed _capacity)
  megablocks,  ///< trunc(cf · (k·T / E)) in double (MegaBlocks expert_capacity)
  tutel,       ///< k · trunc(cf · ceil(T / E)) (Tutel extract_critical; fairseq top-1 for k = 1)
  flaxformer,  ///< round-half-even((cf · T) / E), not multiplied by k (flaxformer / T5X MoeLayer)
  gshard,      ///< k · ceil(T / E), no factor (fairseq and NLLB-MoE top-2: 2 · ceil(T / E))
  fixed        ///< the given fixed_capacity (Hugging Face Switch expert_capacity)
};

/// Who keeps a slot when an expert receives more than C entries of one group.
enum class DropPolicy {
  /// Token order, all choices of a token together: entry (t, j) before (t', j') when t < t', or
  /// t = t' and j < j' (Megatron `position` intent, DeepSpeed top-k `position`, MegaBlocks,
  /// Hugging Face Switch per sequence with group_size = sequence length).
  position,
  /// Every first choice before any second choice, each in token order (GShard, DeepSpeed top-2,
  /// Tutel, fairseq, flaxformer, Mesh-TF).
  choice_major,
  /// Highest gate weight first over all choices (Megatron `probs`, DeepSpeed top-k `probs`).
  probability,
  /// Choice-major with tokens ordered by their largest gate weight, highest first (V-MoE batch
  /// prioritized routing; Tutel, flaxformer, fairseq BPR option).
  batch_prioritized,
  /// Uniform random priority per entry from the seed (DeepSpeed random token selection, RTS).
  random
};

/// Capacity and drop settings of one capacity-factor MoE layer.
struct CapacityConfig {
  CapacityRounding rounding = CapacityRounding::megatron;
  double train_factor = 1.0;  ///< capacity factor in Mode::train
  double eval_factor = 1.0;   ///< capacity factor in Mode::eval (DeepSpeed, flaxformer, Mesh-TF)
  Index min_capacity = 0;     ///< C = max(C, min_capacity): DeepSpeed 4, flaxformer 4
  Index fixed_capacity = 0;   ///< C under CapacityRounding::fixed
  Index alignment = 1;        ///< C rounded up to a multiple of this, last (Tutel alignment)
  /// Tokens per routing group: capacity and priority apply per group of this many consecutive
  /// tokens (Hugging Face Switch: the sequence length; flaxformer: tokens per group). 0 = one
  /// group.
  Index group_size = 0;
  DropPolicy policy = DropPolicy::choice_major;
  /// Divide the surviving weights of a token by their sum, clamped below at the scalar's epsilon,
  /// after dropping (DeepSpeed top-2 / top-k, fairseq default). Off: Megatron, Tutel, Switch.
  bool renormalize_survivors = false;

  double factor(Mode mode) const noexcept {
    return mode == Mode::train ? train_factor : eval_factor;
  }
};

/// Checks a CapacityConfig; every message names the field.
inline void validate(const CapacityConfig& c) {
  const bool uses_factor =
      c.rounding != CapacityRounding::fixed && c.rounding != CapacityRounding::gshard;
  if (uses_factor) {
    require(std::isfinite(c.train_factor) && c.train_factor > 0.0, "CapacityConfig::train_factor",
            "a finite value > 0", c.train_factor);
    require(std::isfinite(c.eval_factor) && c.eval_factor > 0.0, "CapacityConfig::eval_factor",
            "a finite value > 0", c.eval_factor);
  }
  require(c.min_capacity >= 0, "CapacityConfig::min_capacity", ">= 0", c.min_capacity);
  require(c.fixed_capacity >= 0, "CapacityConfig::fixed_capacity", ">= 0", c.fixed_capacity);
  require(c.alignment >= 1, "CapacityConfig::alignment", ">= 1", c.alignment);
  require(c.group_size >= 0, "CapacityConfig::group_size", ">= 0 (0 = one group)", c.group_size);
}

/// Capacity of one expert for one routing group of `tokens` tokens: the convention's formula
/// (see CapacityRounding), then max(C, min_capacity), then rounded up to `alignment`.
inline Index expert_capacity(const CapacityConfig& config, Index tokens, Index top_k,
                             Index num_experts, Mode mode) {
  validate(config);
  require(tokens >= 0, "tokens", ">= 0", tokens);
  require(top_k >= 1, "top_k", ">= 1", top_k);
  require(num_experts >= 1, "num_experts", ">= 1", num_experts);
  const double cf = config.factor(mode);
  const double t = static_cast<double>(tokens);
  const double k = static_cast<double>(top_k);
  const double e = static_cast<double>(num_experts);
  const Index ceil_t_over_e = (tokens + num_experts - 1) / num_experts;
  double c = 0.0;
  switch (config.rounding) {
    case CapacityRounding::megatron:
      c = std::ceil((t * k / e) * cf);
      break;
    case CapacityRounding::deepspeed: {
      // PyTorch multiplies the Python float T / E into a float32 tensor holding k * cf: both are
      // rounded to float32 and the product is a float32 product.
      const float tokens_per_expert = static_cast<float>(t / e);
      const float factor = static_cast<float>(cf * k);
      const float product = tokens_per_expert * factor;
      c = std::ceil(static_cast<double>(product));
      break;
    }
    case CapacityRounding::megablocks:
      c = std::trunc(cf * (k * t / e));
      break;
    case CapacityRounding::tutel:
      c = k * std::trunc(cf * static_cast<double>(ceil_t_over_e));
      break;
    case CapacityRounding::flaxformer:
      c = std::nearbyint((cf * t) / e);  // Python round(): half to even, as the default FP mode
      break;
    case CapacityRounding::gshard:
      c = k * static_cast<double>(ceil_t_over_e);
      break;
    case CapacityRounding::fixed:
      c = static_cast<double>(config.fixed_capacity);
      break;
  }
  require(c < static_cast<double>(std::numeric_limits<Index>::max() / 4), "expert capacity",
          "a size that fits a 64-bit index", c);
  Index capacity = static_cast<Index>(c);
  if (capacity < config.min_capacity) capacity = config.min_capacity;
  const Index remainder = capacity % config.alignment;
  if (remainder != 0) capacity += config.alignment - remainder;
  return capacity;
}

}  // namespace moe
