// Plain-loop reference implementations of the health metrics, in double (long double where a sum
// is long), written for obviousness rather than speed: the independent check of moe/health.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "moe/core/types.hpp"

namespace moe::test {

using RefMatrix = std::vector<std::vector<double>>;

template <class M>
RefMatrix to_ref(const M& m) {
  RefMatrix out(static_cast<std::size_t>(m.rows()),
                std::vector<double>(static_cast<std::size_t>(m.cols())));
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) out[r][c] = static_cast<double>(m(r, c));
  return out;
}

inline bool row_finite(const std::vector<double>& row) {
  for (double v : row)
    if (!std::isfinite(v)) return false;
  return true;
}

/// tokens_per_expert = router_probs.sum(axis=0), over the rows whose entries are all finite.
inline std::vector<double> ref_soft_load(const RefMatrix& p, std::size_t experts) {
  std::vector<long double> sum(experts, 0.0L);
  for (const auto& row : p)
    if (row_finite(row))
      for (std::size_t e = 0; e < experts; ++e) sum[e] += row[e];
  return std::vector<double>(sum.begin(), sum.end());
}

/// Top-k by k rounds of "largest remaining, first index on ties" (NaN never wins over a number).
inline std::vector<std::vector<int>> ref_topk(const RefMatrix& p, std::size_t k) {
  std::vector<std::vector<int>> ids;
  for (const auto& row : p) {
    std::vector<bool> taken(row.size(), false);
    std::vector<int> chosen;
    for (std::size_t j = 0; j < k; ++j) {
      int best = -1;
      for (std::size_t e = 0; e < row.size(); ++e) {
        if (taken[e]) continue;
        const double v = std::isnan(row[e]) ? -std::numeric_limits<double>::infinity() : row[e];
        const double b = best < 0                ? 0.0
                         : std::isnan(row[best]) ? -std::numeric_limits<double>::infinity()
                                                 : row[best];
        if (best < 0 || v > b) best = static_cast<int>(e);
      }
      taken[best] = true;
      chosen.push_back(best);
    }
    ids.push_back(chosen);
  }
  return ids;
}

inline std::vector<double> ref_hard_load(const std::vector<std::vector<int>>& ids,
                                         std::size_t experts) {
  std::vector<double> counts(experts, 0.0);
  for (const auto& row : ids)
    for (int e : row) counts[static_cast<std::size_t>(e)] += 1.0;
  return counts;
}

struct RefLoad {
  double mean, variance, cv, max_vio, min, max, p10, p50, p90;
  std::vector<int> hot, cold;
};

/// numpy.percentile(x, q) with the default linear interpolation.
inline double ref_percentile(std::vector<double> x, double q) {
  std::sort(x.begin(), x.end());
  const double h = (x.size() - 1) * q / 100.0;
  const std::size_t lo = static_cast<std::size_t>(h);
  if (lo + 1 >= x.size()) return x.back();
  return x[lo] * (1.0 - (h - lo)) + x[lo + 1] * (h - lo);
}

inline RefLoad ref_load(const std::vector<double>& load, double average, double hot_factor = 1.25,
                        double cold_factor = 0.1) {
  RefLoad r{};
  const double n = static_cast<double>(load.size());
  long double sum = 0;
  for (double v : load) sum += v;
  r.mean = static_cast<double>(sum / n);
  long double sq = 0;
  for (double v : load) sq += (v - r.mean) * (v - r.mean);
  r.variance = static_cast<double>(sq / n);
  r.min = *std::min_element(load.begin(), load.end());
  r.max = *std::max_element(load.begin(), load.end());
  r.cv = std::sqrt(r.variance) / r.mean;
  r.max_vio = (r.max - r.mean) / r.mean;
  r.p10 = ref_percentile(load, 10);
  r.p50 = ref_percentile(load, 50);
  r.p90 = ref_percentile(load, 90);
  for (std::size_t e = 0; e < load.size(); ++e) {
    if (load[e] > hot_factor * average) r.hot.push_back(static_cast<int>(e));
    if (load[e] < cold_factor * average) r.cold.push_back(static_cast<int>(e));
  }
  return r;
}

/// -sum q log q / log E over q = load / sum(load).
inline double ref_normalized_entropy(const std::vector<double>& load) {
  if (load.size() == 1) return 1.0;
  double total = 0;
  for (double v : load) total += v;
  double h = 0;
  for (double v : load)
    if (v > 0) h -= (v / total) * std::log(v / total);
  return h / std::log(static_cast<double>(load.size()));
}

struct RefTokens {
  double mean_entropy, mean_top1;
  long skipped;
};

/// Mean over finite rows of H(p / sum p) and of max p.
inline RefTokens ref_tokens(const RefMatrix& p) {
  long double h = 0, top = 0;
  long counted = 0, skipped = 0;
  for (const auto& row : p) {
    if (!row_finite(row)) {
      ++skipped;
      continue;
    }
    double s = 0, m = row[0];
    for (double v : row) {
      s += v;
      m = std::max(m, v);
    }
    double hr = 0;
    for (double v : row)
      if (v > 0) hr -= (v / s) * std::log(v / s);
    h += hr;
    top += m;
    ++counted;
  }
  return {static_cast<double>(h / counted), static_cast<double>(top / counted), skipped};
}

struct RefLogits {
  double mean_lse, mean_lse2;
  long nonfinite, skipped;
};

/// log sum exp in long double without the max shift (fine for the test's logit range).
inline RefLogits ref_logits(const RefMatrix& z) {
  long double a = 0, b = 0;
  long counted = 0, nonfinite = 0, skipped = 0;
  for (const auto& row : z) {
    long bad = 0;
    for (double v : row) bad += std::isfinite(v) ? 0 : 1;
    nonfinite += bad;
    if (bad) {
      ++skipped;
      continue;
    }
    long double s = 0;
    for (double v : row) s += std::exp(static_cast<long double>(v));
    const long double lse = std::log(s);
    a += lse;
    b += lse * lse;
    ++counted;
  }
  return {static_cast<double>(a / counted), static_cast<double>(b / counted), nonfinite, skipped};
}

/// -sum q log q over q = load / sum(load), in nats; NaN when the load sums to 0.
inline double ref_entropy(const std::vector<double>& load) {
  long double total = 0;
  for (double v : load) total += v;
  if (total == 0) return std::numeric_limits<double>::quiet_NaN();
  long double h = 0;
  for (double v : load)
    if (v > 0) h -= (v / total) * std::log(v / total);
  return static_cast<double>(h);
}

/// Per finite row with k < E, the k-th minus the (k+1)-th largest value (a full sort).
inline std::vector<double> ref_margins(const RefMatrix& p, std::size_t k) {
  std::vector<double> out;
  for (auto row : p) {
    if (!row_finite(row) || k >= row.size()) continue;
    std::sort(row.begin(), row.end(), [](double a, double b) { return a > b; });
    out.push_back(row[k - 1] - row[k]);
  }
  return out;
}

/// The nearest bfloat16 (8 significant bits, ties to the even one) to x rounded to float, found
/// as the nearer of the two multiples of the bfloat16 spacing around it: no bit manipulation.
/// For values well inside the float range (the tests' logits).
inline double ref_bfloat16(double x) {
  const double f = static_cast<float>(x);
  if (f == 0 || !std::isfinite(f)) return f;
  int exponent = 0;
  std::frexp(f, &exponent);  // f = m 2^exponent, 0.5 <= |m| < 1
  const double spacing = std::ldexp(1.0, std::max(exponent - 8, -133));
  const double lo = std::floor(f / spacing) * spacing, hi = lo + spacing;
  if (f - lo < hi - f) return lo;
  if (hi - f < f - lo) return hi;
  return std::fmod(lo / spacing, 2.0) == 0 ? lo : hi;
}

struct RefFlips {
  long tokens = 0, flipped_tokens = 0, flipped_choices = 0;
};

/// Top-k sets of each finite row and of its bfloat16 rounding (ref_topk: ties to the lower
/// index), compared as sets.
inline RefFlips ref_bf16_flips(const RefMatrix& z, std::size_t k) {
  RefFlips out;
  for (const auto& row : z) {
    if (!row_finite(row)) continue;
    ++out.tokens;
    std::vector<double> rounded;
    for (double v : row) rounded.push_back(ref_bfloat16(v));
    const auto a = ref_topk({row}, k)[0], b = ref_topk({rounded}, k)[0];
    long missing = 0;
    for (int e : a) missing += std::find(b.begin(), b.end(), e) == b.end() ? 1 : 0;
    out.flipped_tokens += missing > 0 ? 1 : 0;
    out.flipped_choices += missing;
  }
  return out;
}

}  // namespace moe::test
