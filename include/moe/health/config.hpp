// HealthConfig: the thresholds that classify an expert as hot or cold, and which average load they
// are measured against.
#pragma once

#include <cmath>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// The average load hot and cold are measured against, for T tokens, E experts and k choices.
///  - per_choice: hard loads against T*k/E, the mean of the top-k counts, so a perfectly balanced
///    router is at ratio 1 for any k (NeMo Automodel's utilization ratio); soft loads against T/E,
///    since a token's probabilities sum to one whatever k is.
///  - per_token: T/E for both, the literal `avg_load = router_probs.shape[0] / num_experts` of the
///    reference JAX check. With k > 1 every expert of a balanced router then looks k times hot.
enum class AverageLoad { per_choice, per_token };

struct HealthConfig {
  /// Hot: load > hot_factor * average (the reference check's capacity_factor, 1.25).
  double hot_factor = 1.25;
  /// Cold: load < cold_factor * average (0.1 in the reference check).
  double cold_factor = 0.1;
  AverageLoad average = AverageLoad::per_choice;
  /// Top-k margins (topk_margins) and bfloat16 stability (bf16_stability) in reports of plain
  /// probabilities, ids or a Routing. Off by default: they are one more pass over the scores and
  /// one over the logits, about half the report's cost again (docs/health.md), and the report is
  /// held to 5% of the router forward. Off, they are NaN in the exports.
  bool selection_metrics = false;
  /// A MoELayer's report also holds bf16_what_if(router, x, Bf16Operands::both)
  /// (HealthReport::what_if): which tokens an engine holding the router's input and weights in
  /// bf16 would route elsewhere. One more router forward over the rounded operands; off by default.
  bool bf16_what_if = false;
};

/// Checks a HealthConfig; every message names the field.
inline void validate(const HealthConfig& c) {
  require(std::isfinite(c.hot_factor) && c.hot_factor > 0.0, "HealthConfig::hot_factor",
          "a finite value > 0", c.hot_factor);
  require(std::isfinite(c.cold_factor) && c.cold_factor >= 0.0, "HealthConfig::cold_factor",
          "a finite value >= 0", c.cold_factor);
  require(c.cold_factor <= c.hot_factor, "HealthConfig::cold_factor",
          detail::concat("<= hot_factor (", c.hot_factor, ")"), c.cold_factor);
}

/// Average load of the hard (top-k count) or soft (probability sum) load for T tokens, E experts
/// and k choices per token (the mean routed choices under adaptive k), as `config.average`
/// chooses.
inline double average_load(bool hard, Index tokens, Index experts, double choices_per_token,
                           const HealthConfig& config) {
  const double per_token = static_cast<double>(tokens) / static_cast<double>(experts);
  return (hard && config.average == AverageLoad::per_choice) ? per_token * choices_per_token
                                                             : per_token;
}

}  // namespace moe
