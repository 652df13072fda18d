// Plain-loop references of the bf16 products: the rounding of a matrix to bf16, and c (+)= a w in
// the order kernels::bf16_product states, element by element.
#pragma once

#include <algorithm>

#include "moe/core/bfloat16.hpp"
#include "moe/core/types.hpp"

namespace moe::test {

/// Each value of m rounded to bf16.
template <class S>
RowMatrix<bf16> rounded(const RowMatrix<S>& m) {
  RowMatrix<bf16> r(m.rows(), m.cols());
  for (Index i = 0; i < m.size(); ++i) r.data()[i] = to_bf16(static_cast<float>(m.data()[i]));
  return r;
}

/// c (+)= a w by a plain loop in the bf16 products' stated order: per depth block of 256, from
/// 0, per pair (p, p + 1): + a[p+1] w[p+1] (0 past an odd depth), then + a[p] w[p]; the block's sum
/// stored, or added to c after the first block or with `accumulate`.
inline RowMatrix<float> reference_bf16_product(const RowMatrix<bf16>& a, const RowMatrix<bf16>& w,
                                               RowMatrix<float> c, bool accumulate) {
  const Index depth = a.cols();
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < w.cols(); ++j) {
      if (depth == 0 && !accumulate) c(i, j) = 0.0f;
      for (Index p0 = 0; p0 < depth; p0 += 256) {
        float sum = 0.0f;
        for (Index p = p0; p < std::min(p0 + 256, depth); p += 2) {
          const float high = p + 1 < depth ? to_float(a(i, p + 1)) * to_float(w(p + 1, j)) : 0.0f;
          sum = sum + high;
          sum = sum + to_float(a(i, p)) * to_float(w(p, j));
        }
        c(i, j) = (accumulate || p0 > 0) ? c(i, j) + sum : sum;
      }
    }
  return c;
}

}  // namespace moe::test
