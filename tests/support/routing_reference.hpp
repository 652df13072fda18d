// Plain-loop reference router: every step written out with scalar loops in the order the papers
// and systems describe it, sharing no code with include/moe/routing beyond the config and the RNG.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include <moe/core/random.hpp>
#include <moe/routing/config.hpp>

namespace moe::test {

struct ReferenceRouting {
  std::vector<std::vector<int>> ids;        // [T][k]
  std::vector<std::vector<double>> gates;   // [T][k]
  std::vector<std::vector<double>> scores;  // [T][E]
  std::vector<std::vector<double>> logits;  // [T][E]
};

// Indices of the k largest values, descending, equal values in ascending index order.
inline std::vector<int> reference_top_k(const std::vector<double>& v, long k) {
  std::vector<int> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return v[a] > v[b]; });
  order.resize(static_cast<std::size_t>(k));
  return order;
}

// Gate weights of the chosen `ids` from a token's scored logits h and scores s: softmax over
// h[ids] (top-k then softmax), else s[ids], optionally over their sum + eps; times the scale.
// An id of -1 is an unused slot: gate 0, left out of every sum.
inline std::vector<double> reference_gates(const RouterConfig& c, const std::vector<double>& h,
                                           const std::vector<double>& s,
                                           const std::vector<int>& ids) {
  const auto k = ids.size();
  std::vector<double> gates(k, 0.0);
  if (c.score == ScoreFunction::softmax && c.softmax_order == SoftmaxOrder::topk_then_softmax) {
    double m = -std::numeric_limits<double>::infinity(), sum = 0;
    for (int e : ids)
      if (e >= 0) m = std::max(m, h[e]);
    for (int e : ids)
      if (e >= 0) sum += std::exp(h[e] - m);
    for (std::size_t j = 0; j < k; ++j)
      if (ids[j] >= 0) gates[j] = std::exp(h[ids[j]] - m) / sum;
  } else {
    double sum = 0;
    for (std::size_t j = 0; j < k; ++j)
      if (ids[j] >= 0) sum += gates[j] = s[ids[j]];
    if (c.renormalize)
      for (std::size_t j = 0; j < k; ++j)
        gates[j] /= std::max(sum + c.renormalize_epsilon, c.renormalize_min);
  }
  for (double& g : gates) g *= c.scaling_factor;
  return gates;
}

// The router by loops. With `replayed` ([T][k]) those ids replace the top-k selection (routing
// replay) and the gates are taken at them.
template <class X, class W, class B, class WN, class SB>
ReferenceRouting reference_route(const RouterConfig& c, const X& x, const W& w, const B& bias,
                                 const WN& noise_w, const SB& selection_bias, bool train,
                                 std::uint64_t seed,
                                 const std::vector<std::vector<int>>* replayed = nullptr) {
  const long T = static_cast<long>(x.rows()), d = c.hidden, E = c.num_experts, k = c.top_k;
  ReferenceRouting r;
  const CounterRng jitter_rng = make_rng(seed, RandomStream::jitter);
  const CounterRng noise_rng = make_rng(seed, RandomStream::gate_noise);
  for (long t = 0; t < T; ++t) {
    std::vector<double> xt(static_cast<std::size_t>(d));
    for (long j = 0; j < d; ++j) {
      double factor = 1.0;
      if (train && c.noise == Noise::jitter && c.jitter_epsilon > 0)
        factor = 1.0 - c.jitter_epsilon +
                 2.0 * c.jitter_epsilon * jitter_rng.uniform(static_cast<std::uint64_t>(t * d + j));
      if constexpr (std::is_same_v<typename X::Scalar, float>) factor = static_cast<float>(factor);
      xt[j] = static_cast<double>(x(t, j)) * factor;
    }
    std::vector<double> z(E), h(E);
    for (long e = 0; e < E; ++e) {
      double acc = c.linear_bias ? static_cast<double>(bias(e)) : 0.0;
      for (long j = 0; j < d; ++j) acc += xt[j] * static_cast<double>(w(e, j));
      z[e] = acc;
      h[e] = acc;
      if (train && c.noise == Noise::noisy_topk) {
        double u = 0;
        for (long j = 0; j < d; ++j) u += xt[j] * static_cast<double>(noise_w(e, j));
        const double stddev = std::log1p(std::exp(u)) + c.noise_epsilon;
        h[e] = acc + noise_rng.normal(static_cast<std::uint64_t>(t * E + e)) * stddev;
      }
    }
    std::vector<double> s(E);
    if (c.score == ScoreFunction::softmax) {
      const double m = *std::max_element(h.begin(), h.end());
      double sum = 0;
      for (long e = 0; e < E; ++e) sum += std::exp(h[e] - m);
      for (long e = 0; e < E; ++e) s[e] = std::exp(h[e] - m) / sum;
    } else if (c.score == ScoreFunction::sigmoid) {
      for (long e = 0; e < E; ++e) s[e] = 1.0 / (1.0 + std::exp(-h[e]));
    } else {  // sqrt(softplus(h)), softplus(h) = log(1 + e^h) written stably
      for (long e = 0; e < E; ++e)
        s[e] = std::sqrt(std::max(h[e], 0.0) + std::log1p(std::exp(-std::abs(h[e]))));
    }
    const bool by_logits =
        c.score == ScoreFunction::softmax && c.softmax_order == SoftmaxOrder::topk_then_softmax;
    std::vector<double> sel = by_logits ? h : s;
    if (selection_bias.size() > 0)
      for (long e = 0; e < E; ++e) sel[e] += static_cast<double>(selection_bias(e));
    if (c.num_groups > 1) {
      const long per = E / c.num_groups;
      std::vector<double> group_score(c.num_groups);
      for (long g = 0; g < c.num_groups; ++g) {
        std::vector<double> members(sel.begin() + g * per, sel.begin() + (g + 1) * per);
        std::sort(members.begin(), members.end(), std::greater<double>());
        // max: the best; sum_top2: the two best; Megatron: the best top_k / groups_selected
        const long terms = c.group_score == GroupScore::max        ? 1
                           : c.group_score == GroupScore::sum_top2 ? 2
                                                                   : c.top_k / c.groups_selected;
        group_score[g] = 0;
        for (long j = 0; j < terms; ++j) group_score[g] += members[j];
      }
      const auto kept = reference_top_k(group_score, c.groups_selected);
      for (long g = 0; g < c.num_groups; ++g)
        if (std::find(kept.begin(), kept.end(), g) == kept.end())
          for (long e = g * per; e < (g + 1) * per; ++e)
            sel[e] =
                c.group_mask == GroupMask::neg_inf ? -std::numeric_limits<double>::infinity() : 0.0;
    }
    auto ids =
        replayed != nullptr ? (*replayed)[static_cast<std::size_t>(t)] : reference_top_k(sel, k);
    if (replayed == nullptr) {
      // adaptive k: keep the first k_min, then those of the first k_max whose score reaches
      // threshold * the best score among the first k_max; the rest are unused (-1)
      const long k_max = c.active_top_k > 0 ? c.active_top_k : k;
      const long k_min = c.min_top_k > 0 ? c.min_top_k : k_max;
      double best = -std::numeric_limits<double>::infinity();
      for (long j = 0; j < k_max; ++j) best = std::max(best, s[ids[j]]);
      for (long j = k_min; j < k; ++j)
        if (j >= k_max || s[ids[j]] < c.top_k_threshold * best) ids[j] = -1;
    }
    r.ids.push_back(ids);
    r.gates.push_back(reference_gates(c, h, s, ids));
    r.scores.push_back(s);
    r.logits.push_back(z);
  }
  return r;
}

}  // namespace moe::test
