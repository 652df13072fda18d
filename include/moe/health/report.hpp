// HealthReport: every health metric of one routing step (one layer), from a Routing or from plain
// Eigen data: a probability matrix [T, E] with top-k ids or k.
#pragma once

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
  r.soft = load_stats(d.soft_load, average_load(false, tokens, experts, top_k, config), config);
  r.hard = load_stats(hard_counts.cast<double>(),
                      average_load(true, tokens, experts, top_k, config), config);
  r.normalized_entropy = d.normalized_entropy;
  r.mean_token_entropy = d.mean_token_entropy;
  r.mean_top1 = d.mean_top1;
  r.skipped_tokens = d.skipped_tokens;
  return r;
}

}  // namespace detail

/// The reference JAX check (tokens_per_expert = column sums, hot > 1.25 T/E, cold < 0.1 T/E,
/// variance) extended with hard loads from the top-k of each row of `probabilities` [T, E]
/// (ties to the lower expert index) and the entropy/confidence metrics.
template <class P>
HealthReport health_report(const Eigen::DenseBase<P>& probabilities, Index top_k,
                           const HealthConfig& config = {}) {
  validate(config);
  return detail::report_from(probabilities, topk_load(probabilities, top_k), top_k, config);
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
  return detail::report_from(probabilities, hard_load(expert_ids, probabilities.cols()),
                             expert_ids.cols(), config);
}

/// Health of one router step: soft loads from `routing.scores`, hard loads from
/// `routing.expert_ids`, logit metrics from `routing.logits` when it is not empty. With logits,
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
  if (with_logits) {
    r.logits = logit_stats(routing.logits);
    r.mean_token_entropy = r.logits->mean_entropy;
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
