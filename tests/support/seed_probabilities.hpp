// The reference JAX health check's probabilities, shared by the health tests.
#pragma once

#include <moe/core/types.hpp>

namespace moe::test {

/// Rows sum to one; column sums are [4.0, 2.5, 1.4, 0.1] (T = 8, E = 4, avg_load = 2).
inline RowMatrix<double> seed_probs() {
  RowMatrix<double> p(8, 4);
  p << 1, 0, 0, 0,    //
      1, 0, 0, 0,     //
      1, 0, 0, 0,     //
      .5, .5, 0, 0,   //
      .5, .5, 0, 0,   //
      0, .5, .5, 0,   //
      0, .5, .4, .1,  //
      0, .5, .5, 0;
  return p;
}

}  // namespace moe::test
