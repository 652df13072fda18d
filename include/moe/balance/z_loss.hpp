// Router z-loss (ST-MoE): penalizes large logits so the router's softmax stays in a range where
// rounding does not decide routing.
#pragma once

#include <algorithm>
#include <cmath>

#include "moe/balance/loss_result.hpp"
#include "moe/balance/token_mask.hpp"
#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// L = b * sum_{t real} logsumexp(z_t)^2 / max(n_real, 1) (ST-MoE; Megatron-Core z_loss_func with
/// its padding mask); grad_tj = 2 b lse_t softmax(z_t)_j / max(n_real, 1), zero on padding rows.
/// For RouterUpstream::logits. Without a mask this is HF Switch's and flaxformer's sum / (G T).
template <class Derived>
LossGradient<typename Derived::Scalar> router_z_loss(const Eigen::MatrixBase<Derived>& logits,
                                                     double coefficient,
                                                     const TokenMask& mask = TokenMask()) {
  using S = typename Derived::Scalar;
  const ConstMatrixRef<S> z(logits.derived());
  require(std::isfinite(coefficient) && coefficient >= 0.0, "coefficient", "a finite value >= 0",
          coefficient);
  require(z.cols() >= 1, "logits", "at least one expert column", z.cols());
  detail::require_token_mask(mask, z.rows(), "mask");
  require_finite(z, "logits");

  const double n =
      static_cast<double>(std::max<Index>(1, detail::count_real_tokens(mask, z.rows())));
  LossGradient<S> out;
  out.grad = RowMatrix<S>::Zero(z.rows(), z.cols());
  double total = 0;
  Eigen::Array<double, 1, Eigen::Dynamic> shifted(z.cols());
  for (Index t = 0; t < z.rows(); ++t) {
    if (!detail::is_real_token(mask, t)) continue;
    // exp once per entry, max-subtracted: lse = m + log(sum), softmax = exp / sum
    shifted = z.row(t).template cast<double>().array();
    const double m = shifted.maxCoeff();
    shifted = (shifted - m).exp();
    const double sum = shifted.sum();
    const double lse = m + std::log(sum);
    total += lse * lse;
    out.grad.row(t) = (shifted * (2.0 * coefficient * lse / (n * sum))).template cast<S>().matrix();
  }
  // Finite logits whose squared logsumexp passes the scalar's range (|lse| past 1.8e19 in float,
  // 1.3e154 in double) have no finite z-loss to return: refused, never returned as inf.
  const double value = coefficient * total / n;
  if (!std::isfinite(static_cast<double>(static_cast<S>(value))))
    detail::fail("logits", "logits whose z-loss fits the scalar type",
                 detail::concat("a z-loss of ", value));
  out.value = static_cast<S>(value);
  return out;
}

}  // namespace moe
