// Central finite differences, the independent reference every analytic gradient is checked against.
#pragma once

#include <algorithm>
#include <cmath>

#include <Eigen/Core>

namespace moe::test {

/// Gradient of the scalar `loss()` with respect to every entry of `param`, by central differences
/// (f(p + h) - f(p - h)) / 2h with h = step * max(1, |p|). `param` is perturbed in place and
/// restored.
template <class Matrix, class Loss>
typename Matrix::PlainObject numerical_gradient(Matrix& param, Loss&& loss, double step = 1e-6) {
  typename Matrix::PlainObject grad(param.rows(), param.cols());
  for (Eigen::Index i = 0; i < param.size(); ++i) {
    auto& p = param.data()[i];
    const auto saved = p;
    const double h = step * std::max(1.0, std::abs(static_cast<double>(saved)));
    p = saved + h;
    const double up = loss();
    p = saved - h;
    const double down = loss();
    p = saved;
    grad.data()[i] = static_cast<typename Matrix::Scalar>((up - down) / (2 * h));
  }
  return grad;
}

/// max |a - b| / max(1e-12, max |b|): one number for a whole gradient, robust to tiny entries.
template <class A, class B>
double relative_error(const A& a, const B& b) {
  const double scale = std::max(1e-12, static_cast<double>(b.cwiseAbs().maxCoeff()));
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / scale;
}

}  // namespace moe::test
