// Plain-loop references for the dropless path: a std::stable_sort plan, and the expert FFN computed
// token by token, choice by choice, in double, with no sorting, padding or matrix products.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "moe/core/types.hpp"
#include "moe/experts/activation.hpp"
#include "moe/experts/expert_weights.hpp"

namespace moe::test {

using RowMatrixD = RowMatrix<double>;

/// Sorted order of the T*k pairs by (expert, pair index), by std::stable_sort.
inline std::vector<Index> reference_sorted_pairs(const ExpertIdMatrix& ids) {
  const Index k = ids.cols();
  std::vector<Index> order(static_cast<std::size_t>(ids.size()));
  std::iota(order.begin(), order.end(), Index{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](Index a, Index b) { return ids(a / k, a % k) < ids(b / k, b % k); });
  return order;
}

/// Activation and its derivative(s), written out per scalar.
struct ReferenceActivation {
  Activation kind;
  double limit = 7.0;  ///< L of the clamped SwiGLUs

  static double sigmoid(double h) { return 1.0 / (1.0 + std::exp(-h)); }
  static double gelu(double h) { return 0.5 * h * (1.0 + std::erf(h / std::sqrt(2.0))); }
  static double gelu_derivative(double h) {
    return 0.5 * (1.0 + std::erf(h / std::sqrt(2.0))) +
           h * std::exp(-0.5 * h * h) / std::sqrt(2.0 * M_PI);
  }
  static double gelu_tanh(double h) {
    const double u = std::sqrt(2.0 / M_PI) * (h + 0.044715 * h * h * h);
    return 0.5 * h * (1.0 + std::tanh(u));
  }
  static double gelu_tanh_derivative(double h) {
    const double c = std::sqrt(2.0 / M_PI);
    const double t = std::tanh(c * (h + 0.044715 * h * h * h));
    return 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * h * h);
  }
  static double silu(double h) { return h * sigmoid(h); }
  static double silu_derivative(double h) {
    const double s = sigmoid(h);
    return s + h * s * (1.0 - s);
  }
  // gpt-oss (HF GptOssExperts._apply_gate): gate.clamp(max=7), up.clamp(-7, 7),
  // gate * sigmoid(1.702 gate) * (up + 1); torch.clamp passes the gradient inside the bounds.
  /// The clamped SwiGLUs: glu(h1) = g sigmoid(alpha g), g = min(h1, L), times clamp(h3, -L, L)
  /// + offset; gpt-oss alpha 1.702 and offset 1, DeepSeek-V4 1 and 0.
  double alpha() const { return kind == Activation::swiglu_oai ? 1.702 : 1.0; }
  double offset() const { return kind == Activation::swiglu_oai ? 1.0 : 0.0; }
  double clamped_glu(double h1) const {
    const double g = std::min(h1, limit);
    return g * sigmoid(alpha() * g);
  }
  double clamped_glu_derivative(double h1) const {
    if (h1 > limit) return 0.0;
    const double s = sigmoid(alpha() * h1);
    return s + alpha() * h1 * s * (1.0 - s);
  }
  double clamped_up(double h3) const { return std::clamp(h3, -limit, limit) + offset(); }

  double value(double h1, double h3) const {
    switch (kind) {
      case Activation::relu:
        return h1 > 0 ? h1 : 0.0;
      case Activation::gelu:
        return gelu(h1);
      case Activation::gelu_tanh:
        return gelu_tanh(h1);
      case Activation::silu:
        return silu(h1);
      case Activation::swiglu:
        return silu(h1) * h3;
      case Activation::geglu:
        return gelu(h1) * h3;
      case Activation::geglu_tanh:
        return gelu_tanh(h1) * h3;
      case Activation::reglu:
        return (h1 > 0 ? h1 : 0.0) * h3;
      case Activation::squared_relu:
        return h1 > 0 ? h1 * h1 : 0.0;
      case Activation::swiglu_oai:
      case Activation::swiglu_clamped:
        return clamped_glu(h1) * clamped_up(h3);
    }
    return 0.0;
  }
  /// d value / d h1.
  double d_h1(double h1, double h3) const {
    switch (kind) {
      case Activation::relu:
        return h1 > 0 ? 1.0 : 0.0;
      case Activation::gelu:
        return gelu_derivative(h1);
      case Activation::gelu_tanh:
        return gelu_tanh_derivative(h1);
      case Activation::silu:
        return silu_derivative(h1);
      case Activation::swiglu:
        return silu_derivative(h1) * h3;
      case Activation::geglu:
        return gelu_derivative(h1) * h3;
      case Activation::geglu_tanh:
        return gelu_tanh_derivative(h1) * h3;
      case Activation::reglu:
        return h1 > 0 ? h3 : 0.0;
      case Activation::squared_relu:
        return h1 > 0 ? 2.0 * h1 : 0.0;
      case Activation::swiglu_oai:
      case Activation::swiglu_clamped:
        return clamped_glu_derivative(h1) * clamped_up(h3);
    }
    return 0.0;
  }
  /// d value / d h3 (gated only).
  double d_h3(double h1, double h3) const {
    switch (kind) {
      case Activation::swiglu:
        return silu(h1);
      case Activation::geglu:
        return gelu(h1);
      case Activation::geglu_tanh:
        return gelu_tanh(h1);
      case Activation::reglu:
        return h1 > 0 ? h1 : 0.0;
      case Activation::swiglu_oai:
      case Activation::swiglu_clamped:
        return std::abs(h3) <= limit ? clamped_glu(h1) : 0.0;
      default:
        return 0.0;
    }
  }
};

/// One expert on one row: h1 = x W1[e] + b1[e], h3 likewise, a = act, o = a W2[e] + b2[e].
struct ReferenceExpertRow {
  std::vector<double> h1, h3, a, o;
};

inline ReferenceExpertRow reference_expert_row(const ExpertWeights<double>& w, Index e,
                                               const double* x) {
  const ExpertFFNConfig& c = w.config;
  const Index d = c.hidden, f = c.ffn_hidden;
  const bool gated = is_gated(c.activation);
  const ReferenceActivation act{c.activation, c.swiglu_limit};
  ReferenceExpertRow r;
  r.h1.assign(static_cast<std::size_t>(f), 0.0);
  r.h3.assign(static_cast<std::size_t>(f), 0.0);
  r.a.assign(static_cast<std::size_t>(f), 0.0);
  r.o.assign(static_cast<std::size_t>(d), 0.0);
  for (Index m = 0; m < f; ++m) {
    double s1 = c.bias ? w.b1(e, m) : 0.0, s3 = (c.bias && gated) ? w.b3(e, m) : 0.0;
    for (Index i = 0; i < d; ++i) {
      s1 += x[i] * w.w1(e * d + i, m);
      if (gated) s3 += x[i] * w.w3(e * d + i, m);
    }
    r.h1[m] = s1;
    r.h3[m] = s3;
    r.a[m] = act.value(s1, s3);
  }
  for (Index i = 0; i < d; ++i) {
    double s = c.bias ? w.b2(e, i) : 0.0;
    for (Index m = 0; m < f; ++m) s += r.a[m] * w.w2(e * f + m, i);
    r.o[i] = s;
  }
  return r;
}

/// y[t] = sum_j gates(t, j) * FFN_{ids(t, j)}(x[t]).
inline RowMatrixD reference_dropless_forward(const ExpertWeights<double>& w, const RowMatrixD& x,
                                             const ExpertIdMatrix& ids, const RowMatrixD& gates) {
  RowMatrixD y = RowMatrixD::Zero(x.rows(), x.cols());
  for (Index t = 0; t < x.rows(); ++t)
    for (Index j = 0; j < ids.cols(); ++j) {
      const ReferenceExpertRow r = reference_expert_row(w, ids(t, j), x.row(t).data());
      for (Index i = 0; i < x.cols(); ++i) y(t, i) += gates(t, j) * r.o[i];
    }
  return y;
}

struct ReferenceGradients {
  ExpertWeights<double> weights;
  RowMatrixD x;
  RowMatrixD gates;
};

/// Gradients of sum(grad_out .* y) by the chain rule, one (token, choice) at a time. A row whose
/// gradient is wanted but which is not a token (a capacity slot) uses gate 1.
inline void reference_row_backward(const ExpertWeights<double>& w, Index e, const double* x,
                                   const double* grad_o, double gate, ExpertWeights<double>& g,
                                   double* grad_x, double* grad_gate) {
  const ExpertFFNConfig& c = w.config;
  const Index d = c.hidden, f = c.ffn_hidden;
  const bool gated = is_gated(c.activation);
  const ReferenceActivation act{c.activation, c.swiglu_limit};
  const ReferenceExpertRow r = reference_expert_row(w, e, x);
  if (grad_gate) {
    double s = 0.0;
    for (Index i = 0; i < d; ++i) s += r.o[i] * grad_o[i];
    *grad_gate = s;
  }
  std::vector<double> d_o(static_cast<std::size_t>(d));
  for (Index i = 0; i < d; ++i) d_o[i] = gate * grad_o[i];
  for (Index i = 0; i < d; ++i)
    if (c.bias) g.b2(e, i) += d_o[i];
  for (Index m = 0; m < f; ++m) {
    double d_a = 0.0;
    for (Index i = 0; i < d; ++i) {
      g.w2(e * f + m, i) += r.a[m] * d_o[i];
      d_a += w.w2(e * f + m, i) * d_o[i];
    }
    const double d_h1 = d_a * act.d_h1(r.h1[m], r.h3[m]);
    const double d_h3 = gated ? d_a * act.d_h3(r.h1[m], r.h3[m]) : 0.0;
    if (c.bias) g.b1(e, m) += d_h1;
    if (c.bias && gated) g.b3(e, m) += d_h3;
    for (Index i = 0; i < d; ++i) {
      g.w1(e * d + i, m) += x[i] * d_h1;
      grad_x[i] += w.w1(e * d + i, m) * d_h1;
      if (gated) {
        g.w3(e * d + i, m) += x[i] * d_h3;
        grad_x[i] += w.w3(e * d + i, m) * d_h3;
      }
    }
  }
}

inline ReferenceGradients reference_dropless_backward(const ExpertWeights<double>& w,
                                                      const RowMatrixD& x,
                                                      const ExpertIdMatrix& ids,
                                                      const RowMatrixD& gates,
                                                      const RowMatrixD& grad_out) {
  ReferenceGradients g{ExpertWeights<double>(w.config), RowMatrixD::Zero(x.rows(), x.cols()),
                       RowMatrixD::Zero(gates.rows(), gates.cols())};
  for (Index t = 0; t < x.rows(); ++t)
    for (Index j = 0; j < ids.cols(); ++j)
      reference_row_backward(w, ids(t, j), x.row(t).data(), grad_out.row(t).data(), gates(t, j),
                             g.weights, g.x.row(t).data(), &g.gates(t, j));
  return g;
}

}  // namespace moe::test
