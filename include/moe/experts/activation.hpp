// Expert FFN activations and their derivatives, applied to a tile of the hidden activation while it
// is in cache.
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>

#include <Eigen/Core>

#include "moe/core/types.hpp"
#include "moe/kernels/silu_rows.hpp"

namespace moe {

/// With h1 = x W1 + b1 and, gated, h3 = x W3 + b3:
///  - relu: max(h1, 0) (derivative 0 at 0, as PyTorch); gelu: h1 Phi(h1) (exact, erf);
///  - gelu_tanh: 0.5 h1 (1 + tanh(sqrt(2/pi) (h1 + 0.044715 h1^3))) (GPT-2, approximate="tanh");
///  - silu: h1 sigmoid(h1);
///  - swiglu: silu(h1) h3 (Shazeer 2020; Mixtral, DeepSeek, Qwen);
///  - geglu: gelu(h1) h3 (Shazeer 2020); geglu_tanh: gelu_tanh(h1) h3 (Gemma's
///    gelu_pytorch_tanh, T5 v1.1 gated-gelu); reglu: relu(h1) h3 (Shazeer 2020);
///  - squared_relu: max(h1, 0)^2 (So et al. 2021, Primer; Nemotron-H's relu2 experts);
///  - swiglu_oai: g sigmoid(1.702 g) (u + 1), g = min(h1, L), u = clamp(h3, -L, L) (gpt-oss,
///    HF GptOssExperts, L = 7);
///  - swiglu_clamped: silu(g) u with the same g and u (DeepSeek-V4, HF DeepseekV4Experts; GLM-5's
///    clamped SwiGLU), L the model's swiglu_limit.
/// L is ExpertFFNConfig::swiglu_limit; the clamps pass no gradient outside [., L] and [-L, L], as
/// torch.clamp's backward. New values are appended, so the numbers of the old ones never change.
enum class Activation {
  relu,
  gelu,
  gelu_tanh,
  silu,
  swiglu,
  geglu,
  geglu_tanh,
  reglu,
  squared_relu,
  swiglu_oai,
  swiglu_clamped
};

/// Gated activations have a second input projection, W3.
constexpr bool is_gated(Activation activation) noexcept {
  return activation == Activation::swiglu || activation == Activation::geglu ||
         activation == Activation::geglu_tanh || activation == Activation::reglu ||
         activation == Activation::swiglu_oai || activation == Activation::swiglu_clamped;
}

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
    case Activation::geglu:
      return "geglu";
    case Activation::geglu_tanh:
      return "geglu_tanh";
    case Activation::reglu:
      return "reglu";
    case Activation::squared_relu:
      return "squared_relu";
    case Activation::swiglu_oai:
      return "swiglu_oai";
    case Activation::swiglu_clamped:
      return "swiglu_clamped";
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
/// gpt-oss's SwiGLU: sigmoid(alpha g) of the clamped gate, and its linear input shifted by 1.
inline constexpr double kOaiSwigluAlpha = 1.702;

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

/// gelu_tanh(h) over an array expression.
template <class H>
auto gelu_tanh(const H& h) {
  using S = typename H::Scalar;
  return S(0.5) * h * (S(1) + (S(kSqrt2OverPi) * (h + S(kGeluTanhCubic) * h.cube())).tanh());
}

/// d/dh gelu_tanh(h) over an array expression.
template <class H>
auto gelu_tanh_derivative(const H& h) {
  using S = typename H::Scalar;
  const S c = S(kSqrt2OverPi), q = S(kGeluTanhCubic);
  const auto t = (c * (h + q * h.cube())).tanh();
  return S(0.5) * (S(1) + t) +
         S(0.5) * h * (S(1) - t.square()) * c * (S(1) + S(3) * q * h.square());
}

#if MOE_RUNTIME_AVX512
/// Runs `row(i)` (a generic lambda: instantiated only here) for every row i of `rows` rows when
/// SiLU and SwiGLU run on the products' AVX-512 copy (kernels/silu_rows.hpp) and every operand is a
/// row-major block of float or double; false, having done nothing, otherwise.
template <class S, class... Operands, class Row>
bool silu_rows_on_avx512(Index rows, const Row& row) {
  constexpr bool kRowMajor =
      ((kernels::storage_of<Operands>() == kernels::Storage::row_major) && ...);
  if constexpr (kRowMajor && (std::is_same_v<S, float> || std::is_same_v<S, double>)) {
    if (!kernels::activations_on_avx512()) return false;
    for (Index i = 0; i < rows; ++i) row(i);
    return true;
  }
  return false;
}
#endif

}  // namespace detail

/// a = act(h1) or, gated, a = act(h1, h3), over same-shaped blocks (h3 unused when not gated);
/// `swiglu_limit` is L of the clamped SwiGLUs.
template <class H1, class H3, class A>
void activation_forward(Activation activation, double swiglu_limit, const Eigen::MatrixBase<H1>& h1,
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
      a.array() = detail::gelu_tanh(h);
      break;
    case Activation::silu:
    case Activation::swiglu: {
      const bool gated = activation == Activation::swiglu;
#if MOE_RUNTIME_AVX512
      if (detail::silu_rows_on_avx512<S, H1, H3, A>(h1.rows(), [&](auto i) {
            kernels::avx512::silu_row(h1.derived().row(i).data(),
                                      gated ? h3.derived().row(i).data() : nullptr,
                                      a.derived().row(i).data(), h1.cols());
          }))
        break;
#endif
      if (gated)
        a.array() = h / (S(1) + (-h).exp()) * h3.array();
      else
        a.array() = h / (S(1) + (-h).exp());
      break;
    }
    case Activation::geglu:
      a.array() = h.unaryExpr([](S v) { return detail::gelu_exact(v); }) * h3.array();
      break;
    case Activation::geglu_tanh:
      a.array() = detail::gelu_tanh(h) * h3.array();
      break;
    case Activation::reglu:
      a.array() = h.cwiseMax(S(0)) * h3.array();
      break;
    case Activation::squared_relu:
      a.array() = h.cwiseMax(S(0)).square();
      break;
    case Activation::swiglu_oai: {
      const S limit = S(swiglu_limit), alpha = S(detail::kOaiSwigluAlpha);
      const auto g = h.cwiseMin(limit);
      a.array() =
          g / (S(1) + (-alpha * g).exp()) * (h3.array().cwiseMax(-limit).cwiseMin(limit) + S(1));
      break;
    }
    case Activation::swiglu_clamped: {
      const S limit = S(swiglu_limit);
      const auto g = h.cwiseMin(limit);
      a.array() = g / (S(1) + (-g).exp()) * h3.array().cwiseMax(-limit).cwiseMin(limit);
      break;
    }
  }
}

/// dh1 = da * act'(h1); gated act(h1) h3: dh1 = da * h3 * act'(h1), dh3 = da * act(h1), with
/// silu'(h) = s (1 + h (1 - s)), s = sigmoid(h). `da_dh1` holds da on entry and dh1 on exit; it
/// may alias `dh3_out` when the activation is not gated (dh3 is then not written).
template <class H1, class H3, class D1, class D3>
void activation_backward(Activation activation, double swiglu_limit,
                         const Eigen::MatrixBase<H1>& h1, const Eigen::MatrixBase<H3>& h3,
                         const Eigen::MatrixBase<D1>& da_dh1,
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
    case Activation::gelu_tanh:
      d1.array() *= detail::gelu_tanh_derivative(h);
      break;
    case Activation::geglu:
      // Phi(h) once per element into a stack chunk: gelu(h) = h Phi(h) and gelu'(h) = Phi(h) +
      // h phi(h) both read it (the same bits as gelu_exact and gelu_exact_derivative: the factor
      // 1/2 is exact).
      for (Index r = 0; r < h1.rows(); ++r)
        for (Index c0 = 0; c0 < h1.cols(); c0 += detail::kActivationChunk) {
          const Index w = std::min(detail::kActivationChunk, h1.cols() - c0);
          const auto x = h1.row(r).segment(c0, w).array();
          const Eigen::Array<S, 1, Eigen::Dynamic, Eigen::RowMajor, 1, detail::kActivationChunk>
              cdf = x.unaryExpr(
                  [](S v) { return S(0.5) * (S(1) + std::erf(v * S(detail::kInvSqrt2))); });
          auto da = d1.row(r).segment(c0, w).array();
          d3.row(r).segment(c0, w).array() = da * (x * cdf);
          da *= h3.row(r).segment(c0, w).array() *
                (cdf + x * S(detail::kInvSqrt2Pi) * (S(-0.5) * x * x).exp());
        }
      break;
    case Activation::geglu_tanh:
      d3.array() = d1.array() * detail::gelu_tanh(h);
      d1.array() *= h3.array() * detail::gelu_tanh_derivative(h);
      break;
    case Activation::reglu:
      d3.array() = d1.array() * h.cwiseMax(S(0));
      d1.array() = (h > S(0)).select(d1.array() * h3.array(), S(0));
      break;
    case Activation::squared_relu:
      d1.array() *= S(2) * h.cwiseMax(S(0));
      break;
    case Activation::silu:
    case Activation::swiglu:
    case Activation::swiglu_oai:
    case Activation::swiglu_clamped: {
      // The sigmoid is evaluated once per element into a stack chunk, not once per use. The
      // clamped ones take sigmoid(alpha g) of g = min(h1, limit) (alpha 1.702 for gpt-oss, 1
      // otherwise), d/dg [g s] = s (1 + alpha g (1 - s)), times u + offset (gpt-oss's 1, else 0);
      // their clamps pass the gradient inside their bounds, limits included (torch.clamp).
      const bool clamped =
          activation == Activation::swiglu_oai || activation == Activation::swiglu_clamped;
      const bool oai = activation == Activation::swiglu_oai;
      const S limit = S(swiglu_limit), alpha = S(oai ? detail::kOaiSwigluAlpha : 1.0),
              offset = S(oai ? 1 : 0);
#if MOE_RUNTIME_AVX512
      const bool gated = activation == Activation::swiglu;
      if (!clamped && detail::silu_rows_on_avx512<S, H1, H3, D1, D3>(h1.rows(), [&](auto i) {
            kernels::avx512::silu_row_backward(
                h1.derived().row(i).data(), gated ? h3.derived().row(i).data() : nullptr,
                d1.derived().row(i).data(), gated ? d3.derived().row(i).data() : nullptr,
                h1.cols());
          }))
        break;
#endif
      for (Index r = 0; r < h1.rows(); ++r)
        for (Index c0 = 0; c0 < h1.cols(); c0 += detail::kActivationChunk) {
          const Index w = std::min(detail::kActivationChunk, h1.cols() - c0);
          const auto x = h1.row(r).segment(c0, w).array();
          Eigen::Array<S, 1, Eigen::Dynamic, Eigen::RowMajor, 1, detail::kActivationChunk> s(w);
          if (clamped)
            s = S(1) / (S(1) + (-alpha * x.cwiseMin(limit)).exp());
          else
            s = S(1) / (S(1) + (-x).exp());
          auto da = d1.row(r).segment(c0, w).array();
          const auto up = h3.row(r).segment(c0, w).array();
          if (activation == Activation::silu) {
            da *= s * (S(1) + x * (S(1) - s));
          } else if (activation == Activation::swiglu) {
            d3.row(r).segment(c0, w).array() = da * x * s;
            da *= up * s * (S(1) + x * (S(1) - s));
          } else {
            const auto g = x.cwiseMin(limit);
            d3.row(r).segment(c0, w).array() = (up.abs() <= limit).select(da * g * s, S(0));
            da = (x <= limit)
                     .select(da * (up.cwiseMax(-limit).cwiseMin(limit) + offset) * s *
                                 (S(1) + alpha * g * (S(1) - s)),
                             S(0));
          }
        }
      break;
    }
  }
}

}  // namespace moe
