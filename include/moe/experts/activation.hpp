// Expert FFN activations and their derivatives, applied to a tile of the hidden activation while it
// is in cache.
#pragma once

#include <algorithm>
#include <cmath>

#include <Eigen/Core>

#include "moe/core/types.hpp"

namespace moe {

/// relu: max(h, 0) (derivative 0 at 0, as PyTorch); gelu: h * Phi(h) (exact, erf);
/// gelu_tanh: 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3))) (GPT-2, PyTorch approximate="tanh");
/// silu: h * sigmoid(h); swiglu: silu(x W1 + b1) * (x W3 + b3) (Shazeer 2020; Mixtral, DeepSeek).
enum class Activation { relu, gelu, gelu_tanh, silu, swiglu };

/// Gated activations have a second input projection, W3.
constexpr bool is_gated(Activation activation) noexcept { return activation == Activation::swiglu; }

inline const char* to_string(Activation activation) noexcept {
  switch (activation) {
    case Activation::relu:
      return "relu";
    case Activation::gelu:
      return "gelu";
    case Activation::gelu_tanh:
      return "gelu_tanh";
    case Activation::silu:
      return "silu";
    case Activation::swiglu:
      return "swiglu";
  }
  return "unknown";
}

namespace detail {

inline constexpr double kSqrt2OverPi = 0.79788456080286535588;
inline constexpr double kGeluTanhCubic = 0.044715;
inline constexpr double kInvSqrt2 = 0.70710678118654752440;
inline constexpr double kInvSqrt2Pi = 0.39894228040143267794;
/// Columns per stack chunk when an intermediate is reused.
inline constexpr Index kActivationChunk = 256;

template <class S>
S gelu_exact(S h) {
  return S(0.5) * h * (S(1) + std::erf(h * S(kInvSqrt2)));
}

/// d/dh [h Phi(h)] = Phi(h) + h phi(h).
template <class S>
S gelu_exact_derivative(S h) {
  return S(0.5) * (S(1) + std::erf(h * S(kInvSqrt2))) +
         h * S(kInvSqrt2Pi) * std::exp(S(-0.5) * h * h);
}

}  // namespace detail

/// a = act(h1) or, gated, a = silu(h1) * h3, over same-shaped blocks (h3 unused when not gated).
template <class H1, class H3, class A>
void activation_forward(Activation activation, const Eigen::MatrixBase<H1>& h1,
                        const Eigen::MatrixBase<H3>& h3, const Eigen::MatrixBase<A>& a_out) {
  using S = typename H1::Scalar;
  auto& a = const_cast<Eigen::MatrixBase<A>&>(a_out);
  const auto h = h1.array();
  switch (activation) {
    case Activation::relu:
      a.array() = h.cwiseMax(S(0));
      break;
    case Activation::gelu:
      a.array() = h.unaryExpr([](S v) { return detail::gelu_exact(v); });
      break;
    case Activation::gelu_tanh:
      a.array() =
          S(0.5) * h *
          (S(1) + (S(detail::kSqrt2OverPi) * (h + S(detail::kGeluTanhCubic) * h.cube())).tanh());
      break;
    case Activation::silu:
      a.array() = h / (S(1) + (-h).exp());
      break;
    case Activation::swiglu:
      a.array() = h / (S(1) + (-h).exp()) * h3.array();
      break;
  }
}

/// dh1 = da * act'(h1); gated: dh1 = da * h3 * silu'(h1), dh3 = da * silu(h1), with
/// silu'(h) = s (1 + h (1 - s)), s = sigmoid(h). `da_dh1` holds da on entry and dh1 on exit.
template <class H1, class H3, class D1, class D3>
void activation_backward(Activation activation, const Eigen::MatrixBase<H1>& h1,
                         const Eigen::MatrixBase<H3>& h3, const Eigen::MatrixBase<D1>& da_dh1,
                         const Eigen::MatrixBase<D3>& dh3_out) {
  using S = typename H1::Scalar;
  auto& d1 = const_cast<Eigen::MatrixBase<D1>&>(da_dh1);
  auto& d3 = const_cast<Eigen::MatrixBase<D3>&>(dh3_out);
  const auto h = h1.array();
  switch (activation) {
    case Activation::relu:
      d1.array() = (h > S(0)).select(d1.array(), S(0));
      break;
    case Activation::gelu:
      d1.array() *= h.unaryExpr([](S v) { return detail::gelu_exact_derivative(v); });
      break;
    case Activation::gelu_tanh: {
      const S c = S(detail::kSqrt2OverPi), q = S(detail::kGeluTanhCubic);
      const auto t = (c * (h + q * h.cube())).tanh();
      d1.array() *= S(0.5) * (S(1) + t) +
                    S(0.5) * h * (S(1) - t.square()) * c * (S(1) + S(3) * q * h.square());
      break;
    }
    case Activation::silu:
    case Activation::swiglu:
      // The sigmoid is evaluated once per element into a stack chunk, not once per use.
      for (Index r = 0; r < h1.rows(); ++r)
        for (Index c0 = 0; c0 < h1.cols(); c0 += detail::kActivationChunk) {
          const Index w = std::min(detail::kActivationChunk, h1.cols() - c0);
          const auto x = h1.row(r).segment(c0, w).array();
          const Eigen::Array<S, 1, Eigen::Dynamic, Eigen::RowMajor, 1, detail::kActivationChunk> s =
              S(1) / (S(1) + (-x).exp());
          auto da = d1.row(r).segment(c0, w).array();
          if (activation == Activation::silu) {
            da *= s * (S(1) + x * (S(1) - s));
          } else {
            d3.row(r).segment(c0, w).array() = da * x * s;
            da *= h3.row(r).segment(c0, w).array() * s * (S(1) + x * (S(1) - s));
          }
        }
      break;
  }
}

}  // namespace moe
