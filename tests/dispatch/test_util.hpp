// Shared fixtures of the dispatch tests: synthetic routings with named distributions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include <moe/core/random.hpp>
#include <moe/core/types.hpp>

#include "support/catch.hpp"

#if defined(MOE_CATCH3)
#define MOE_CONTAINS(text) Catch::Matchers::ContainsSubstring(text)
#else
#define MOE_CONTAINS(text) Catch::Matchers::Contains(text)
#endif

namespace moe::test {

/// A token-choice routing as a router would give it: k distinct experts per token, gates in (0, 1).
struct SyntheticRouting {
  ExpertIdMatrix ids;
  RowMatrix<double> gates;
};

enum class Load { uniform, skewed, all_to_one };

inline SyntheticRouting synthetic_routing(Index tokens, Index experts, Index k, std::uint64_t seed,
                                          Load load = Load::uniform) {
  const CounterRng rng(seed, 77);
  SyntheticRouting r;
  r.ids.resize(tokens, k);
  r.gates.resize(tokens, k);
  std::vector<ExpertId> perm(static_cast<std::size_t>(experts));
  std::uint64_t draw = 0;
  for (Index t = 0; t < tokens; ++t) {
    std::iota(perm.begin(), perm.end(), 0);
    // Partial Fisher-Yates; `skewed` biases toward low ids by squaring the uniform.
    for (Index j = 0; j < k; ++j) {
      double u = rng.uniform(draw++);
      if (load == Load::skewed) u = u * u;
      const Index pick = j + static_cast<Index>(u * static_cast<double>(experts - j));
      std::swap(perm[static_cast<std::size_t>(j)],
                perm[static_cast<std::size_t>(std::min(pick, experts - 1))]);
    }
    if (load == Load::all_to_one) std::iota(perm.begin(), perm.end(), 0);
    double previous = 1.0;
    for (Index j = 0; j < k; ++j) {
      r.ids(t, j) = perm[static_cast<std::size_t>(j)];
      // Decreasing gates, as selection order gives them; quantized so ties happen.
      const double g = previous * (0.25 + 0.5 * std::floor(rng.uniform(draw++) * 8.0) / 8.0);
      r.gates(t, j) = g;
      previous = g;
    }
  }
  return r;
}

inline RowMatrix<double> random_matrix(Index rows, Index cols, std::uint64_t seed) {
  const CounterRng rng(seed, 78);
  RowMatrix<double> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i)
    m.data()[i] = 2.0 * rng.uniform(static_cast<std::uint64_t>(i)) - 1.0;
  return m;
}

}  // namespace moe::test
