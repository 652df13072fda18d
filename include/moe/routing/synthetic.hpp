// Synthetic routing: the named routing distributions benchmarks and tests route with (balanced,
// uniform, Zipf, all-to-one, biased towards a set of experts), as expert ids [T, k] with k
// distinct experts per row, or as a whole Routing whose logits, scores and gates agree with them.
// Deterministic from a seed: draws come from the counter RNG at positions 0, 1, 2, ... in row
// order, so a seed gives the same bits on every machine.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/random.hpp"
#include "moe/core/types.hpp"
#include "moe/routing/routing.hpp"

namespace moe {

/// Which experts a token's choices fall on.
///  - balanced:   token t takes experts (t k + j) mod E, j < k: every expert gets T k / E choices
///                when E divides T k (round robin; no randomness).
///  - uniform:    every expert equally likely.
///  - zipf:       expert e with weight (e + 1)^-s, s = zipf_exponent (expert 0 hottest).
///  - all_to_one: every token takes experts 0, 1, ..., k - 1 (a collapsed router; no randomness).
///  - biased:     the experts of `favoured` share favoured_mass equally, the others 1 - mass.
enum class SyntheticDistribution { balanced, uniform, zipf, all_to_one, biased };

/// How a token's k distinct experts follow from the weights of the random distributions.
///  - without_replacement: successive sampling, each choice drawn from the weights of the experts
///    not chosen yet (the first choice follows the weights exactly).
///  - consecutive: the first choice drawn from the weights, then the next k - 1 experts mod E
///    (one draw per token; neighbouring experts share load).
enum class SyntheticDraw { without_replacement, consecutive };

struct SyntheticRoutingConfig {
  Index num_tokens = 0;   ///< T
  Index num_experts = 8;  ///< E
  Index top_k = 2;        ///< k, 1 <= k <= E
  SyntheticDistribution distribution = SyntheticDistribution::uniform;
  SyntheticDraw draw = SyntheticDraw::without_replacement;
  double zipf_exponent = 1.0;      ///< s >= 0 (0 is uniform)
  std::vector<ExpertId> favoured;  ///< biased: distinct ids in [0, E), fewer than E
  double favoured_mass = 0.9;      ///< biased: their total probability, in [0, 1]
  std::uint64_t seed = 0;          ///< with RandomStream::synthetic_routing
  double logit_gap = 1.0;          ///< synthetic_routing: logit step between choices, > 0
};

namespace detail {

inline bool synthetic_random(SyntheticDistribution d) noexcept {
  return d != SyntheticDistribution::balanced && d != SyntheticDistribution::all_to_one;
}

/// Unnormalized weights of one draw; uniform is all ones, which the benches' cdf summed.
inline std::vector<double> synthetic_raw_weights(const SyntheticRoutingConfig& c) {
  const auto experts = static_cast<std::size_t>(c.num_experts);
  std::vector<double> w(experts, 1.0);
  if (c.distribution == SyntheticDistribution::zipf) {
    // 1 / (e + 1) for s = 1: a correctly rounded quotient, where std::pow need not be.
    for (std::size_t e = 0; e < experts; ++e)
      w[e] = c.zipf_exponent == 1.0 ? 1.0 / static_cast<double>(e + 1)
                                    : std::pow(static_cast<double>(e + 1), -c.zipf_exponent);
  } else if (c.distribution == SyntheticDistribution::biased) {
    const double in = c.favoured_mass / static_cast<double>(c.favoured.size());
    const double out = (1.0 - c.favoured_mass) / static_cast<double>(experts - c.favoured.size());
    std::fill(w.begin(), w.end(), out);
    for (ExpertId e : c.favoured) w[static_cast<std::size_t>(e)] = in;
  } else if (c.distribution == SyntheticDistribution::all_to_one) {
    std::fill(w.begin(), w.end(), 0.0);
    w[0] = 1.0;
  }
  return w;
}

/// Rejected draws (an expert already chosen) before a choice is drawn from the remaining weights
/// directly. Either way the choice follows the weights restricted to the experts not chosen, so
/// the fallback changes no probability; it bounds the work when the chosen experts hold nearly
/// all the weight (biased with favoured_mass near 1).
inline constexpr int kSyntheticMaxRejections = 64;

}  // namespace detail

/// Checks a SyntheticRoutingConfig; every message names the field.
inline void validate(const SyntheticRoutingConfig& c) {
  require(c.num_tokens >= 0, "SyntheticRoutingConfig::num_tokens", ">= 0", c.num_tokens);
  require(c.num_experts >= 1, "SyntheticRoutingConfig::num_experts", ">= 1", c.num_experts);
  require(c.num_experts <= Index{std::numeric_limits<ExpertId>::max()},
          "SyntheticRoutingConfig::num_experts", "an expert count that fits ExpertId",
          c.num_experts);
  require(c.top_k >= 1 && c.top_k <= c.num_experts, "SyntheticRoutingConfig::top_k",
          detail::concat("1 <= top_k <= num_experts (", c.num_experts, ")"), c.top_k);
  checked_mul(c.num_tokens, c.top_k, "SyntheticRoutingConfig::num_tokens");
  require(std::isfinite(c.logit_gap) && c.logit_gap > 0.0, "SyntheticRoutingConfig::logit_gap",
          "a finite value > 0", c.logit_gap);
  if (c.distribution == SyntheticDistribution::zipf) {
    require(std::isfinite(c.zipf_exponent) && c.zipf_exponent >= 0.0,
            "SyntheticRoutingConfig::zipf_exponent", "a finite value >= 0", c.zipf_exponent);
    // The k-th heaviest weight, k^-s, must not underflow to 0 (s beyond about 1075 / log2 k).
    require(c.draw == SyntheticDraw::consecutive ||
                std::pow(static_cast<double>(c.top_k), -c.zipf_exponent) > 0.0,
            "SyntheticRoutingConfig::zipf_exponent",
            detail::concat("an exponent that leaves top_k (", c.top_k,
                           ") experts a positive weight (draw without replacement)"),
            c.zipf_exponent);
  }
  if (c.distribution != SyntheticDistribution::biased) return;
  const auto favoured = static_cast<Index>(c.favoured.size());
  require(favoured >= 1 && favoured < c.num_experts, "SyntheticRoutingConfig::favoured",
          detail::concat("1 to num_experts - 1 (", c.num_experts - 1, ") experts"), favoured);
  std::vector<char> seen(static_cast<std::size_t>(c.num_experts), 0);
  for (ExpertId e : c.favoured) {
    require(e >= 0 && e < c.num_experts, "SyntheticRoutingConfig::favoured",
            detail::concat("ids in [0, ", c.num_experts, ")"), e);
    require(!seen[static_cast<std::size_t>(e)], "SyntheticRoutingConfig::favoured", "distinct ids",
            detail::concat(e, " twice"));
    seen[static_cast<std::size_t>(e)] = 1;
  }
  require(std::isfinite(c.favoured_mass) && c.favoured_mass >= 0.0 && c.favoured_mass <= 1.0,
          "SyntheticRoutingConfig::favoured_mass", "a value in [0, 1]", c.favoured_mass);
  // Successive sampling needs k experts of positive weight.
  if (c.draw == SyntheticDraw::without_replacement) {
    const Index positive = (c.favoured_mass > 0.0 ? favoured : 0) +
                           (c.favoured_mass < 1.0 ? c.num_experts - favoured : 0);
    require(positive >= c.top_k, "SyntheticRoutingConfig::favoured_mass",
            detail::concat("a mass that leaves top_k (", c.top_k,
                           ") experts a positive weight (draw without replacement)"),
            c.favoured_mass);
  }
}

/// P(first choice = e) for each expert [E]: the normalized weights of the distribution
/// (balanced and uniform 1/E, zipf (e + 1)^-s / sum_i (i + 1)^-s, all_to_one the unit vector of
/// expert 0, biased mass / |favoured| and (1 - mass) / (E - |favoured|)).
inline Eigen::VectorXd synthetic_expert_probabilities(const SyntheticRoutingConfig& config) {
  validate(config);
  const std::vector<double> w = detail::synthetic_raw_weights(config);
  Eigen::VectorXd p = Eigen::Map<const Eigen::VectorXd>(w.data(), config.num_experts);
  return p / p.sum();
}

/// Expert ids [T, k] of `config`, k distinct experts per row in choice order, drawn from `rng`
/// at positions 0, 1, 2, ... in row order (balanced and all_to_one draw nothing). A draw maps
/// u in [0, 1) to the first expert e whose cumulative weight reaches u * (total weight).
inline ExpertIdMatrix synthetic_expert_ids(const SyntheticRoutingConfig& config,
                                           const CounterRng& rng) {
  validate(config);
  const Index tokens = config.num_tokens, experts = config.num_experts, k = config.top_k;
  ExpertIdMatrix ids(tokens, k);
  if (!detail::synthetic_random(config.distribution)) {
    const bool balanced = config.distribution == SyntheticDistribution::balanced;
    for (Index t = 0; t < tokens; ++t)
      for (Index j = 0; j < k; ++j)
        ids(t, j) = static_cast<ExpertId>(balanced ? (t * k + j) % experts : j);
    return ids;
  }
  const std::vector<double> weight = detail::synthetic_raw_weights(config);
  std::vector<double> cdf(weight.size());
  double total = 0.0;
  for (std::size_t e = 0; e < weight.size(); ++e) cdf[e] = total += weight[e];
  const auto draw_expert = [&](double u) {
    const auto e = std::lower_bound(cdf.begin(), cdf.end(), u * total) - cdf.begin();
    return static_cast<ExpertId>(std::min<Index>(e, experts - 1));
  };
  std::uint64_t position = 0;
  std::vector<char> taken(weight.size(), 0);
  for (Index t = 0; t < tokens; ++t) {
    if (config.draw == SyntheticDraw::consecutive) {
      const ExpertId first = draw_expert(rng.uniform(position++));
      for (Index j = 0; j < k; ++j) ids(t, j) = static_cast<ExpertId>((first + j) % experts);
      continue;
    }
    for (Index j = 0; j < k; ++j) {
      ExpertId chosen = -1;
      for (int attempt = 0; attempt < detail::kSyntheticMaxRejections && chosen < 0; ++attempt) {
        const ExpertId e = draw_expert(rng.uniform(position++));
        if (!taken[static_cast<std::size_t>(e)]) chosen = e;
      }
      if (chosen < 0) {
        // Inverse cdf over the weights of the experts not chosen yet.
        double left = 0.0;
        for (std::size_t e = 0; e < weight.size(); ++e) left += taken[e] ? 0.0 : weight[e];
        const double u = rng.uniform(position++) * left;
        double acc = 0.0;
        for (std::size_t e = 0; e < weight.size(); ++e) {
          if (taken[e] || weight[e] <= 0.0) continue;
          chosen = static_cast<ExpertId>(e);  // the last positive one if rounding runs past u
          if ((acc += weight[e]) > u) break;
        }
      }
      taken[static_cast<std::size_t>(chosen)] = 1;
      ids(t, j) = chosen;
    }
    for (Index j = 0; j < k; ++j) taken[static_cast<std::size_t>(ids(t, j))] = 0;
  }
  return ids;
}

/// As above from `config.seed` on RandomStream::synthetic_routing.
inline ExpertIdMatrix synthetic_expert_ids(const SyntheticRoutingConfig& config) {
  return synthetic_expert_ids(config, make_rng(config.seed, RandomStream::synthetic_routing));
}

/// A Routing<S> around synthetic ids: logits z_t,ids(t,j) = -j gap for the k choices and -k gap
/// for every other expert (gap = config.logit_gap), scores = softmax(z_t) over all E, gates = the
/// chosen scores over their sum (so each row's gates sum to 1). These are what a softmax router
/// with renormalized top-k (Mixtral, Qwen norm_topk_prob) returns for such logits. The top-k of
/// the logits is `expert_ids`, in order; so is the top-k of the scores while the k + 1 score
/// values stay distinct normal numbers of S (k gap below about 87 in float, 708 in double, and gap
/// not so small that rounding merges them). The logits must be finite in S: k gap <= max of S.
template <class S>
Routing<S> synthetic_routing(const SyntheticRoutingConfig& config, const CounterRng& rng) {
  validate(config);
  const Index k = config.top_k, experts = config.num_experts;
  require(config.logit_gap * static_cast<double>(k) <= double(std::numeric_limits<S>::max()),
          "SyntheticRoutingConfig::logit_gap",
          detail::concat("logit_gap * top_k <= the largest value of the scalar type (",
                         double(std::numeric_limits<S>::max()), ")"),
          config.logit_gap);
  Routing<S> r;
  r.expert_ids = synthetic_expert_ids(config, rng);
  const Index tokens = r.expert_ids.rows();
  r.logits = RowMatrix<S>::Constant(tokens, experts, static_cast<S>(-config.logit_gap * k));
  r.scores.resize(tokens, experts);
  r.gates.resize(tokens, k);
  // The softmax is the same for every row up to the order of its columns: exp(-j gap) / Z for
  // choice j and exp(-k gap) / Z for the rest, Z = sum_j exp(-j gap) + (E - k) exp(-k gap),
  // computed once in double (shifted by the largest logit, 0).
  std::vector<double> chosen(static_cast<std::size_t>(k));
  double chosen_sum = 0.0;
  for (Index j = 0; j < k; ++j)
    chosen_sum += chosen[static_cast<std::size_t>(j)] = std::exp(-config.logit_gap * double(j));
  const double rest = std::exp(-config.logit_gap * double(k));
  const double z = chosen_sum + static_cast<double>(experts - k) * rest;
  r.scores.setConstant(static_cast<S>(rest / z));
  for (Index t = 0; t < tokens; ++t)
    for (Index j = 0; j < k; ++j) {
      const ExpertId e = r.expert_ids(t, j);
      const double c = chosen[static_cast<std::size_t>(j)];
      r.logits(t, e) = static_cast<S>(-config.logit_gap * double(j));
      r.scores(t, e) = static_cast<S>(c / z);
      r.gates(t, j) = static_cast<S>(c / chosen_sum);
    }
  return r;
}

/// As above from `config.seed` on RandomStream::synthetic_routing.
template <class S>
Routing<S> synthetic_routing(const SyntheticRoutingConfig& config) {
  return synthetic_routing<S>(config, make_rng(config.seed, RandomStream::synthetic_routing));
}

}  // namespace moe
