// HealthReport: every health metric of one routing step (one layer), from a Routing or from plain
// Eigen data: a probability matrix [T, E] with top-k ids or k.
#pragma once

#include <limits>
#include <optional>
#include <utility>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/health/capacity.hpp"
#include "moe/health/config.hpp"
#include "moe/health/distribution.hpp"
#include "moe/health/load.hpp"
#include "moe/health/logits.hpp"
#include "moe/health/margins.hpp"
#include "moe/health/stability.hpp"
#include "moe/routing/routing.hpp"

namespace moe {

struct HealthReport {
  Index tokens = 0, experts = 0, top_k = 0;
  LoadStats soft;                    ///< probability sums (the reference check's tokens_per_expert)
  LoadStats hard;                    ///< top-k assignment counts, before any capacity drop
  double normalized_entropy = 0.0;   ///< H(mean routing distribution) / log E
  double mean_token_entropy = 0.0;   ///< nats
  double mean_top1 = 0.0;            ///< router confidence
  Index skipped_tokens = 0;          ///< rows of the probabilities with a non-finite entry
  std::optional<LogitStats> logits;  ///< when logits were given
  std::optional<CapacityReport> capacity;  ///< when capacity counts were given
  /// [E] mean over the counted tokens of the score rows, soft.load / (T - skipped_tokens): the
  /// mean routing distribution, whose entropy in nats is soft.entropy. NaN when no token counted.
  Eigen::VectorXd mean_distribution;
  /// s_(k) - s_(k+1) percentiles (topk_margins); NaN unless HealthConfig::selection_metrics.
  TopkMargins margins;
  /// bf16_stability of the logits, with HealthConfig::selection_metrics when logits were given.
  std::optional<Bf16Stability> stability;
  /// Routed choices per token, sum hard.load / T: top_k unless slots went unused (adaptive k), the
  /// compute an adaptive router saves being top_k minus this. NaN when T = 0.
  double active_experts_per_token = 0.0;
  Index unused_slots = 0;  ///< T k - sum hard.load: slots holding kUnusedSlot
  /// bf16_what_if(router, x, Bf16Operands::both) of a MoELayer's step with
  /// HealthConfig::bf16_what_if: the selections that change when the router's input and weights
  /// are held in bf16 (the logits summed in float), per token and per expert.
  std::optional<Bf16WhatIf> what_if;
};

namespace detail {

template <class P>
HealthReport report_from(const Eigen::DenseBase<P>& probabilities, const IndexVector& hard_counts,
                         Index top_k, const HealthConfig& config, bool token_entropy = true,
                         const char* probabilities_name = "probabilities") {
  const Index tokens = probabilities.rows(), experts = probabilities.cols();
  DistributionStats d = distribution_stats(probabilities, token_entropy, probabilities_name);
  HealthReport r;
  r.tokens = tokens;
  r.experts = experts;
  r.top_k = top_k;
  const Index routed = hard_counts.sum();
  r.active_experts_per_token = tokens > 0
                                   ? static_cast<double>(routed) / static_cast<double>(tokens)
                                   : std::numeric_limits<double>::quiet_NaN();
  r.unused_slots = tokens * top_k - routed;
  r.soft = load_stats(d.soft_load, average_load(false, tokens, experts, top_k, config), config);
  // Hard loads against the choices actually routed: an adaptive router's fewer choices per token
  // are not a cold expert.
  r.hard = load_stats(hard_counts.cast<double>(),
                      average_load(true, tokens, experts,
                                   tokens > 0 ? r.active_experts_per_token : double(top_k), config),
                      config);
  r.normalized_entropy = d.normalized_entropy;
  r.mean_token_entropy = d.mean_token_entropy;
  r.mean_top1 = d.mean_top1;
  r.skipped_tokens = d.skipped_tokens;
  r.mean_distribution = d.soft_load / static_cast<double>(tokens - d.skipped_tokens);
  return r;
}

/// The margins of `probabilities` for the report's k, with `ids` (may be null) as the hint.
template <class P>
void add_margins(HealthReport& r, const Eigen::DenseBase<P>& probabilities,
                 const ExpertIdMatrix* ids, const HealthConfig& config) {
  if (config.selection_metrics) r.margins = topk_margins_hinted(probabilities, r.top_k, ids);
}

}  // namespace detail

/// The reference JAX check (tokens_per_expert = column sums, hot > 1.25 T/E, cold < 0.1 T/E,
/// variance) extended with hard loads from the top-k of each row of `probabilities` [T, E]
/// (ties to the lower expert index), the entropy/confidence metrics and the top-k margins.
template <class P>
HealthReport health_report(const Eigen::DenseBase<P>& probabilities, Index top_k,
                           const HealthConfig& config = {}) {
  validate(config);
  HealthReport r =
      detail::report_from(probabilities, topk_load(probabilities, top_k), top_k, config);
  detail::add_margins(r, probabilities, nullptr, config);
  return r;
}

/// As above with the router's own choices `expert_ids` [T, k] for the hard loads.
template <class P, class Ids>
HealthReport health_report(const Eigen::DenseBase<P>& probabilities,
                           const Eigen::DenseBase<Ids>& expert_ids,
                           const HealthConfig& config = {}) {
  validate(config);
  require(probabilities.cols() >= 1, "probabilities", "at least one column (expert)",
          probabilities.cols());
  require(expert_ids.cols() >= 1, "expert_ids", "at least one column (k >= 1)", expert_ids.cols());
  require_shape(expert_ids.derived(), "expert_ids", probabilities.rows(), -1);
  HealthReport r = detail::report_from(probabilities, hard_load(expert_ids, probabilities.cols()),
                                       expert_ids.cols(), config);
  if (config.selection_metrics) {
    // Any integer type, matrix or array, as the one id type the hint reads (checked in range
    // by hard_load above).
    ExpertIdMatrix ids(expert_ids.rows(), expert_ids.cols());
    for (Index t = 0; t < ids.rows(); ++t)
      for (Index j = 0; j < ids.cols(); ++j)
        ids(t, j) = static_cast<ExpertId>(expert_ids.derived()(t, j));
    detail::add_margins(r, probabilities, &ids, config);
  }
  return r;
}

/// Health of one router step: soft loads and top-k margins from `routing.scores`, hard loads from
/// `routing.expert_ids`, logit metrics and bfloat16 stability from `routing.logits` when it is
/// not empty. With logits,
/// mean_token_entropy is H(softmax(logits)) (fairseq `entropy_gating`), taken from the
/// exponentials the logsumexp computes anyway, so the probabilities need no logarithm; without,
/// it is the entropy of the normalized score rows.
template <class S>
HealthReport health_report(const Routing<S>& routing, const HealthConfig& config = {}) {
  validate(config);
  const auto& p = routing.scores;
  require(p.cols() >= 1, "routing.scores", "at least one column (expert)", p.cols());
  require(routing.expert_ids.cols() >= 1, "routing.expert_ids", "at least one column (k >= 1)",
          routing.expert_ids.cols());
  require_shape(routing.expert_ids, "routing.expert_ids", p.rows(), -1);
  const bool with_logits = routing.logits.size() > 0;
  if (with_logits) require_shape(routing.logits, "routing.logits", p.rows(), p.cols());
  HealthReport r =
      detail::report_from(p, hard_load(routing.expert_ids, p.cols(), "routing.expert_ids"),
                          routing.expert_ids.cols(), config, !with_logits, "routing.scores");
  detail::add_margins(r, p, &routing.expert_ids, config);
  if (with_logits) {
    r.logits = logit_stats(routing.logits);
    r.mean_token_entropy = r.logits->mean_entropy;
    if (config.selection_metrics)
      r.stability = detail::bf16_stability_hinted(routing.logits, r.top_k, &routing.expert_ids);
  }
  return r;
}

/// As above plus the capacity metrics of the dispatch that followed.
template <class S>
HealthReport health_report(const Routing<S>& routing, const CapacityStats& capacity,
                           const HealthConfig& config = {}) {
  HealthReport r = health_report(routing, config);
  r.capacity = capacity_report(capacity, r.tokens, r.experts, r.top_k);
  return r;
}

}  // namespace moe
