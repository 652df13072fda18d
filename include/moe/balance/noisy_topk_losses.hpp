// The balancing losses of noisy top-k gating (Shazeer et al. 2017): the squared coefficient of
// variation of each expert's importance (summed gate weight) and of its smooth load (expected
// number of tokens, through the normal CDF of the gate noise).
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "moe/balance/detail/scores.hpp"
#include "moe/balance/loss_result.hpp"
#include "moe/balance/token_mask.hpp"
#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// Divisor of the variance in CV^2: population (n) or unbiased (n - 1, torch.var's default, used by
/// the reference PyTorch port of Shazeer et al. and by Tutel).
enum class VarianceConvention { population, unbiased };

namespace detail {

constexpr double cv_squared_epsilon = 1e-10;

/// cv^2(x) = var(x) / (mean(x)^2 + 1e-10), 0 for a single entry; fills d cv^2 / dx when asked.
inline double cv_squared_with_grad(const Vector<double>& x, VarianceConvention convention,
                                   Vector<double>* grad) {
  const Index n = x.size();
  if (grad) grad->setZero(n);
  if (n <= 1) return 0.0;
  const double mean = x.sum() / static_cast<double>(n);
  const double divisor = convention == VarianceConvention::unbiased ? static_cast<double>(n - 1)
                                                                    : static_cast<double>(n);
  const double var = (x.array() - mean).square().sum() / divisor;
  const double denom = mean * mean + cv_squared_epsilon;
  if (grad)
    for (Index i = 0; i < n; ++i)
      (*grad)(i) = 2.0 * (x(i) - mean) / (divisor * denom) -
                   var * 2.0 * mean / (static_cast<double>(n) * denom * denom);
  return var / denom;
}

inline double standard_normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

inline double standard_normal_pdf(double x) {
  return std::exp(-0.5 * x * x) / std::sqrt(2.0 * 3.14159265358979323846);
}

}  // namespace detail

/// cv^2(x) = var(x) / (mean(x)^2 + 1e-10); 0 when x has one entry (Shazeer et al. 2017).
template <class Derived>
double cv_squared(const Eigen::MatrixBase<Derived>& x,
                  VarianceConvention convention = VarianceConvention::unbiased) {
  Vector<double> v(x.size());
  Index i = 0;
  for (Index c = 0; c < x.cols(); ++c)
    for (Index r = 0; r < x.rows(); ++r) v(i++) = static_cast<double>(x.derived()(r, c));
  return detail::cv_squared_with_grad(v, convention, nullptr);
}

/// L = w cv^2(Importance), Importance_e = sum_{t real} G_te over a dense [T, E] matrix of gate
/// weights or scores (Shazeer et al. 2017; Tutel uses softmax scores). grad = dL/dG.
template <class Derived>
LossGradient<typename Derived::Scalar> importance_loss(
    const Eigen::MatrixBase<Derived>& gate_matrix, double weight,
    VarianceConvention convention = VarianceConvention::unbiased,
    const TokenMask& mask = TokenMask()) {
  using S = typename Derived::Scalar;
  const ConstMatrixRef<S> g(gate_matrix.derived());
  require(std::isfinite(weight) && weight >= 0.0, "weight", "a finite value >= 0", weight);
  require(g.cols() >= 1, "gate_matrix", "at least one expert column", g.cols());
  detail::require_token_mask(mask, g.rows(), "mask");
  require_finite(g, "gate_matrix");
  Vector<double> importance = Vector<double>::Zero(g.cols());
  for (Index t = 0; t < g.rows(); ++t)
    if (detail::is_real_token(mask, t)) importance += g.row(t).transpose().template cast<double>();
  Vector<double> d_importance;
  LossGradient<S> out;
  out.value =
      static_cast<S>(weight * detail::cv_squared_with_grad(importance, convention, &d_importance));
  out.grad = RowMatrix<S>::Zero(g.rows(), g.cols());
  const Eigen::Matrix<S, 1, Eigen::Dynamic> row = (weight * d_importance).transpose().cast<S>();
  for (Index t = 0; t < g.rows(); ++t)
    if (detail::is_real_token(mask, t)) out.grad.row(t) = row;
  return out;
}

/// The same loss from the routed gate weights [T, k] (Routing::gates) and their expert ids:
/// Importance_e = sum of the gates routed to e. grad = dL/d gates [T, k], for
/// RouterUpstream::gates.
template <class Derived>
LossGradient<typename Derived::Scalar> importance_loss(
    const Eigen::MatrixBase<Derived>& gates, const ExpertIdMatrix& expert_ids, Index num_experts,
    double weight, VarianceConvention convention = VarianceConvention::unbiased,
    const TokenMask& mask = TokenMask()) {
  using S = typename Derived::Scalar;
  const ConstMatrixRef<S> g(gates.derived());
  require(std::isfinite(weight) && weight >= 0.0, "weight", "a finite value >= 0", weight);
  require(num_experts >= 1, "num_experts", ">= 1", num_experts);
  detail::require_expert_ids(expert_ids, g.rows(), g.cols(), num_experts, "expert_ids");
  detail::require_token_mask(mask, g.rows(), "mask");
  require_finite(g, "gates");
  Vector<double> importance = Vector<double>::Zero(num_experts);
  for (Index t = 0; t < g.rows(); ++t)
    if (detail::is_real_token(mask, t))
      for (Index j = 0; j < g.cols(); ++j)
        if (expert_ids(t, j) != kUnusedSlot)
          importance(expert_ids(t, j)) += static_cast<double>(g(t, j));
  Vector<double> d_importance;
  LossGradient<S> out;
  out.value =
      static_cast<S>(weight * detail::cv_squared_with_grad(importance, convention, &d_importance));
  out.grad = RowMatrix<S>::Zero(g.rows(), g.cols());
  for (Index t = 0; t < g.rows(); ++t)
    if (detail::is_real_token(mask, t))
      for (Index j = 0; j < g.cols(); ++j)
        out.grad(t, j) = expert_ids(t, j) == kUnusedSlot
                             ? S(0)
                             : static_cast<S>(weight * d_importance(expert_ids(t, j)));
  return out;
}

/// Value of the load loss and its gradients with respect to the clean logits and the noise
/// standard deviations (the noise samples held fixed).
template <class S>
struct NoisyLoadLossGradient {
  S value = S(0);
  RowMatrix<S> logits;        ///< dL / d clean logits [T, E], for RouterUpstream::logits
  RowMatrix<S> noise_stddev;  ///< dL / d noise standard deviation [T, E]
};

/// L = w cv^2(Load), Load_e = sum_{t real} Phi((z_te - thr_te) / sigma_te), thr_te the (k+1)-th
/// largest noisy logit of token t when e is among its k best noisy logits and the k-th otherwise
/// (Shazeer et al. 2017, smooth load). The thresholds are noisy logits z_j + n_j sigma_j, so their
/// gradient reaches z and sigma of the threshold expert as well. Requires k < E.
template <class D1, class D2, class D3>
NoisyLoadLossGradient<typename D1::Scalar> noisy_topk_load_loss(
    const Eigen::MatrixBase<D1>& clean_logits, const Eigen::MatrixBase<D2>& noisy_logits,
    const Eigen::MatrixBase<D3>& noise_stddev, Index top_k, double weight,
    VarianceConvention convention = VarianceConvention::unbiased,
    const TokenMask& mask = TokenMask()) {
  using S = typename D1::Scalar;
  const ConstMatrixRef<S> z(clean_logits.derived()), h(noisy_logits.derived()),
      sigma(noise_stddev.derived());
  const Index T = z.rows(), E = z.cols();
  require(std::isfinite(weight) && weight >= 0.0, "weight", "a finite value >= 0", weight);
  require(top_k >= 1 && top_k < E, "top_k",
          detail::concat("1 <= top_k < number of experts (", E, ")"), top_k);
  require_shape(h, "noisy_logits", T, E);
  require_shape(sigma, "noise_stddev", T, E);
  detail::require_token_mask(mask, T, "mask");
  require_finite(z, "clean_logits");
  require_finite(h, "noisy_logits");
  require((sigma.array() > S(0)).all() && sigma.allFinite(), "noise_stddev", "finite values > 0",
          "a value <= 0 or not finite");

  // Per token: the experts at ranks k and k + 1 of the noisy logits (ties to the lower index).
  const ExpertIdMatrix ranked = detail::top_k_rows<S>(h, top_k + 1);
  auto threshold_expert = [&](Index t, Index e) -> Index {
    const ExpertId in = ranked(t, top_k), out = ranked(t, top_k - 1);
    return static_cast<double>(h(t, e)) > static_cast<double>(h(t, in)) ? in : out;
  };

  Vector<double> load = Vector<double>::Zero(E);
  for (Index t = 0; t < T; ++t) {
    if (!detail::is_real_token(mask, t)) continue;
    for (Index e = 0; e < E; ++e) {
      const Index j = threshold_expert(t, e);
      const double u = (static_cast<double>(z(t, e)) - static_cast<double>(h(t, j))) /
                       static_cast<double>(sigma(t, e));
      load(e) += detail::standard_normal_cdf(u);
    }
  }
  Vector<double> d_load;
  NoisyLoadLossGradient<S> out;
  out.value = static_cast<S>(weight * detail::cv_squared_with_grad(load, convention, &d_load));

  RowMatrix<double> dz = RowMatrix<double>::Zero(T, E), dsigma = RowMatrix<double>::Zero(T, E);
  for (Index t = 0; t < T; ++t) {
    if (!detail::is_real_token(mask, t)) continue;
    for (Index e = 0; e < E; ++e) {
      const Index j = threshold_expert(t, e);
      const double s_e = static_cast<double>(sigma(t, e));
      const double u = (static_cast<double>(z(t, e)) - static_cast<double>(h(t, j))) / s_e;
      const double g = weight * d_load(e) * detail::standard_normal_pdf(u) / s_e;
      dz(t, e) += g;
      dsigma(t, e) -= g * u;
      // threshold = z_j + n_j sigma_j with the sample n_j = (h_j - z_j) / sigma_j held fixed.
      const double sample = (static_cast<double>(h(t, j)) - static_cast<double>(z(t, j))) /
                            static_cast<double>(sigma(t, j));
      dz(t, j) -= g;
      dsigma(t, j) -= g * sample;
    }
  }
  out.logits = dz.cast<S>();
  out.noise_stddev = dsigma.cast<S>();
  return out;
}

/// d / d r from d / d sigma through sigma = softplus(r) + noise_epsilon, r = x W_noise^T the noise
/// logits: sigmoid(r) = 1 - exp(-(sigma - noise_epsilon)). Then dW_noise = dr^T x, dx += dr
/// W_noise.
template <class D1, class D2>
RowMatrix<typename D1::Scalar> noise_stddev_backward(const Eigen::MatrixBase<D1>& noise_stddev,
                                                     const Eigen::MatrixBase<D2>& d_noise_stddev,
                                                     double noise_epsilon) {
  using S = typename D1::Scalar;
  const ConstMatrixRef<S> sigma(noise_stddev.derived()), ds(d_noise_stddev.derived());
  require_shape(ds, "d_noise_stddev", sigma.rows(), sigma.cols());
  require(noise_epsilon >= 0.0, "noise_epsilon", ">= 0", noise_epsilon);
  RowMatrix<S> dr(sigma.rows(), sigma.cols());
  for (Index t = 0; t < sigma.rows(); ++t)
    for (Index e = 0; e < sigma.cols(); ++e) {
      const double softplus = static_cast<double>(sigma(t, e)) - noise_epsilon;
      require(softplus > 0.0, "noise_stddev", "values > noise_epsilon",
              detail::concat(sigma(t, e), " at row ", t, ", column ", e));
      dr(t, e) = static_cast<S>(static_cast<double>(ds(t, e)) * -std::expm1(-softplus));
    }
  return dr;
}

}  // namespace moe
