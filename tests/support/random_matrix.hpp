// Reproducible random test inputs, uniform in [-scale, scale], from the library's counter RNG.
#pragma once

#include <cstdint>

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

}  // namespace moe::test
