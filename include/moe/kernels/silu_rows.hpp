// SiLU and SwiGLU over a row on the products' AVX-512 copy (gemm.hpp, product_isa). A build for an
// x86-64 older than AVX-512 evaluates the experts' activations with Eigen's packets of its own
// instruction set (four floats with CMake's default flags): between products that run on
// AVX-512, the default activation alone cost 7-10% of a layer's forward. SiLU and SwiGLU (the
// default, and Mixtral's, DeepSeek's, Qwen's and Llama's) follow the products; the other
// activations run as compiled. The formulas are the compiled ones (moe/experts/activation.hpp),
// with this instruction set's exp: the bits differ from the compiled path's in the last places.
#pragma once

#include "moe/core/types.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/simd.hpp"

namespace moe::kernels {

/// Whether silu_rows' AVX-512 forms run in place of the compiled activations: where the products
/// run their AVX-512 copy.
inline bool activations_on_avx512() { return product_isa() == ProductIsa::avx512; }

}  // namespace moe::kernels

#if MOE_RUNTIME_AVX512
MOE_BEGIN_AVX512
namespace moe::kernels::avx512 {

namespace detail {

/// Applies `step(offset, lanes)` to each packet of a row of n values, the last one partial.
template <class S, class Step>
MOE_ALWAYS_INLINE void for_packets(Index n, const Step& step) {
  constexpr Index kLanes = simd::kLanes<S>;
  Index j = 0;
  for (; j + kLanes <= n; j += kLanes) step(j, kLanes);
  if (j < n) step(j, n - j);
}

template <class S>
MOE_ALWAYS_INLINE simd::Packet<S> load_lanes(const S* p, Index lanes) {
  return lanes == simd::kLanes<S> ? simd::loadu(p) : simd::load_first(p, lanes);
}
template <class S, class P>
MOE_ALWAYS_INLINE void store_lanes(S* p, P v, Index lanes) {
  if (lanes == simd::kLanes<S>)
    simd::storeu(p, v);
  else
    simd::store_first(p, v, lanes);
}

/// out[l] = exp(x[l]) for the kLanes<S> values at x: the seam's exp, for tests.
template <class S>
void exp_into(const S* x, S* out) {
  simd::storeu(out, simd::exp(simd::loadu(x)));
}

}  // namespace detail

/// a = h / (1 + exp(-h)) (SiLU), times up when `up` is given (SwiGLU), for n values of a row.
template <class S>
void silu_row(const S* h, const S* up, S* a, Index n) {
  const auto one = simd::broadcast(S(1));
  detail::for_packets<S>(n, [&](Index j, Index lanes) {
    const auto x = detail::load_lanes(h + j, lanes);
    auto y = simd::div(x, simd::add(one, simd::exp(simd::sub(simd::broadcast(S(0)), x))));
    if (up != nullptr) y = simd::mul(y, detail::load_lanes(up + j, lanes));
    detail::store_lanes(a + j, y, lanes);
  });
}

/// SiLU's and SwiGLU's backward for n values of a row, s = sigmoid(h): da *= s (1 + h (1 - s))
/// (SiLU), or dup = da h s and da *= up s (1 + h (1 - s)) (SwiGLU, `up` and `dup` given).
template <class S>
void silu_row_backward(const S* h, const S* up, S* da, S* dup, Index n) {
  const auto one = simd::broadcast(S(1));
  detail::for_packets<S>(n, [&](Index j, Index lanes) {
    const auto x = detail::load_lanes(h + j, lanes);
    const auto s = simd::div(one, simd::add(one, simd::exp(simd::sub(simd::broadcast(S(0)), x))));
    const auto d = detail::load_lanes(da + j, lanes);
    const auto slope = simd::add(one, simd::mul(x, simd::sub(one, s)));
    if (up == nullptr) {
      detail::store_lanes(da + j, simd::mul(d, simd::mul(s, slope)), lanes);
      return;
    }
    const auto u = detail::load_lanes(up + j, lanes);
    detail::store_lanes(dup + j, simd::mul(simd::mul(d, x), s), lanes);
    detail::store_lanes(da + j, simd::mul(d, simd::mul(simd::mul(u, s), slope)), lanes);
  });
}

}  // namespace moe::kernels::avx512
MOE_END_AVX512
#endif
