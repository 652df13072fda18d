// Per-expert load and its balance statistics: variance, coefficient of variation, MaxVio, hot and
// cold experts, min/max/percentiles.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/health/config.hpp"
#include "moe/routing/routing.hpp"
#include "moe/routing/topk.hpp"

namespace moe {

/// Balance of one per-expert load vector (soft: probability sums; hard: top-k counts).
struct LoadStats {
  Eigen::VectorXd load;         ///< [E]
  double average_load = 0.0;    ///< what hot and cold are measured against (HealthConfig::average)
  double mean = 0.0;            ///< mean over experts of `load`
  double variance = 0.0;        ///< population variance, jnp.var
  double cv = 0.0;              ///< sqrt(variance) / mean
  double max_vio = 0.0;         ///< (max - mean) / mean
  double min = 0.0, max = 0.0;  ///< extremes of `load`
  double p10 = 0.0, p50 = 0.0, p90 = 0.0;  ///< percentiles, linear interpolation (numpy default)
  std::vector<ExpertId> hot;               ///< load > hot_factor * average_load, ascending ids
  std::vector<ExpertId> cold;              ///< load < cold_factor * average_load, ascending ids
  double hot_threshold = 0.0;              ///< hot_factor * average_load, the line `hot` is above
  double cold_threshold = 0.0;             ///< cold_factor * average_load, the line `cold` is below
  /// H(load / sum load) in nats, in [0, log E]: for soft loads the entropy of the mean routing
  /// distribution, for hard loads that of the assignment counts. NaN when the loads sum to 0.
  double entropy = 0.0;

  Index hot_count() const noexcept { return static_cast<Index>(hot.size()); }
  Index cold_count() const noexcept { return static_cast<Index>(cold.size()); }
};

/// q-th percentile of `sorted` (ascending), numpy's linear rule: s[floor(h)] + frac(h) * (next -
/// it), h = q/100 * (n - 1). NaN when empty.
inline double percentile_sorted(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return std::numeric_limits<double>::quiet_NaN();
  const double h = q / 100.0 * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(h));
  const std::size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (h - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

/// var = mean((c - mean c)^2), cv = std/mean, MaxVio = (max c - mean c)/mean c (Wang et al. 2024,
/// arXiv 2408.15664), hot/cold = c > hot_factor*avg / c < cold_factor*avg (reference JAX check),
/// entropy = -sum q log q over q = c / sum c (0 log 0 = 0). cv, MaxVio and entropy are NaN when
/// the mean load is 0 (no tokens).
inline LoadStats load_stats(const Eigen::Ref<const Eigen::VectorXd>& load, double average_load,
                            const HealthConfig& config = {}) {
  validate(config);
  require(load.size() >= 1, "load", "at least one expert", load.size());
  require(std::isfinite(average_load) && average_load >= 0.0, "average_load", "a finite value >= 0",
          average_load);
  LoadStats s;
  s.load = load;
  s.average_load = average_load;
  const auto n = static_cast<double>(load.size());
  s.mean = load.sum() / n;
  s.variance = (load.array() - s.mean).square().sum() / n;
  s.cv = std::sqrt(s.variance) / s.mean;
  s.min = load.minCoeff();
  s.max = load.maxCoeff();
  s.max_vio = (s.max - s.mean) / s.mean;
  if (s.mean == 0.0) {
    s.cv = std::numeric_limits<double>::quiet_NaN();
    s.max_vio = std::numeric_limits<double>::quiet_NaN();
  }
  std::vector<double> sorted(load.data(), load.data() + load.size());
  std::sort(sorted.begin(), sorted.end());
  s.p10 = percentile_sorted(sorted, 10.0);
  s.p50 = percentile_sorted(sorted, 50.0);
  s.p90 = percentile_sorted(sorted, 90.0);
  s.hot_threshold = config.hot_factor * average_load;
  s.cold_threshold = config.cold_factor * average_load;
  for (Index e = 0; e < load.size(); ++e) {
    if (load[e] > s.hot_threshold) s.hot.push_back(static_cast<ExpertId>(e));
    if (load[e] < s.cold_threshold) s.cold.push_back(static_cast<ExpertId>(e));
  }
  s.entropy = std::numeric_limits<double>::quiet_NaN();
  if (s.max > 0.0 && std::isfinite(s.max)) {
    // q = c / sum c over loads scaled by their maximum first, so a sum of huge loads cannot
    // overflow. Each term -q log q lies in [0, 1/e]; the clamp to [0, log E] only absorbs the
    // last ulp of rounding.
    const Eigen::ArrayXd scaled = load.array() / s.max;
    const double total = scaled.sum();
    double h = 0.0;
    for (Index e = 0; e < load.size(); ++e) {
      const double q = scaled[e] / total;
      if (q > 0.0) h -= q * std::log(q);
    }
    s.entropy = std::clamp(h, 0.0, std::log(n));
  }
  return s;
}

/// Hard load c_e = #{(t, j) : expert_ids(t, j) = e}, the top-k assignment counts before any
/// capacity drop (DeepSpeed `exp_counts`, Tutel `dispatch_count`); unused slots (kUnusedSlot)
/// count nowhere. `argument` names the ids in messages.
template <class Ids>
IndexVector hard_load(const Eigen::DenseBase<Ids>& expert_ids, Index num_experts,
                      const char* argument = "expert_ids") {
  require(num_experts >= 1, "num_experts", ">= 1", num_experts);
  IndexVector counts = IndexVector::Zero(num_experts);
  const auto& ids = expert_ids.derived();
  for (Index t = 0; t < ids.rows(); ++t)
    for (Index j = 0; j < ids.cols(); ++j) {
      const auto e = static_cast<Index>(ids(t, j));
      if (detail::routed_slot(e, num_experts, argument, t, j)) ++counts[e];
    }
  return counts;
}

/// Hard load of the top-k of each row of `probabilities` [T, E], selected by moe::top_k (ties to
/// the lower expert index); a NaN ranks below everything, as -inf.
template <class P>
IndexVector topk_load(const Eigen::DenseBase<P>& probabilities, Index top_k) {
  using S = typename P::Scalar;
  const auto& p = probabilities.derived();
  const Index experts = p.cols();
  require(experts >= 1, "probabilities", "at least one column (expert)", experts);
  require(top_k >= 1 && top_k <= experts, "top_k",
          detail::concat("1 <= top_k <= number of experts (", experts, ")"), top_k);
  IndexVector counts = IndexVector::Zero(experts);
  Eigen::Array<S, 1, Eigen::Dynamic> row(experts);
  std::vector<ExpertId> ids(static_cast<std::size_t>(top_k));
  std::vector<S> selected(static_cast<std::size_t>(top_k));
  for (Index t = 0; t < p.rows(); ++t) {
    // A contiguous copy (the input may be strided) without NaN, which moe::top_k does not take.
    for (Index e = 0; e < experts; ++e) {
      const S v = p(t, e);
      row[e] = std::isnan(v) ? -std::numeric_limits<S>::infinity() : v;
    }
    detail::top_k_unchecked(row.data(), experts, top_k, ids.data(), selected.data());
    for (ExpertId e : ids) ++counts[e];
  }
  return counts;
}

}  // namespace moe
