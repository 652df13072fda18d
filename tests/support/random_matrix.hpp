// Reproducible random test inputs, uniform in [-scale, scale], from the library's counter RNG.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include <moe/core/random.hpp>
#include <moe/core/types.hpp>

namespace moe::test {

template <class S = double>
RowMatrix<S> random_matrix(Index rows, Index cols, std::uint64_t seed, double scale = 1.0) {
  const CounterRng rng(seed, 99);
  RowMatrix<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i)
    m.data()[i] = static_cast<S>(scale * (2.0 * rng.uniform(static_cast<std::uint64_t>(i)) - 1.0));
  return m;
}

/// [tokens, k] expert ids, distinct within a row as top-k gives them, uniformly random.
inline ExpertIdMatrix random_expert_ids(Index tokens, Index k, Index experts, std::uint64_t seed) {
  const CounterRng rng(seed, 98);
  ExpertIdMatrix ids(tokens, k);
  std::vector<ExpertId> all(static_cast<std::size_t>(experts));
  std::uint64_t draw = 0;
  for (Index t = 0; t < tokens; ++t) {
    std::iota(all.begin(), all.end(), ExpertId{0});
    for (Index j = 0; j < k; ++j) {  // a partial Fisher-Yates shuffle
      const auto pick = static_cast<std::size_t>(
          j + static_cast<Index>(rng.uniform(draw++) * static_cast<double>(experts - j)));
      std::swap(all[static_cast<std::size_t>(j)], all[pick]);
      ids(t, j) = all[static_cast<std::size_t>(j)];
    }
  }
  return ids;
}

}  // namespace moe::test
