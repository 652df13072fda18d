// Fast finiteness check of a row-major matrix: each row is scanned as one contiguous vector, and
// require_finite only runs (to name the offending entry) once something is not finite.
#pragma once

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe::detail {

template <class S>
void require_finite_rows(const Eigen::Ref<const RowMatrix<S>>& matrix, const char* argument) {
  for (Index r = 0; r < matrix.rows(); ++r)
    if (!Eigen::Map<const Vector<S>>(matrix.row(r).data(), matrix.cols()).allFinite()) {
      require_finite(matrix, argument);
      return;
    }
}

}  // namespace moe::detail
