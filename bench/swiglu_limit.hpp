// The limit of the expert FFN benchmarks: the FLOPs of SwiGLU experts as dense GEMMs over
// [T*k, d], and the deterministic fill both benchmarks use.
#pragma once

#include <cstdint>

#include <benchmark/benchmark.h>
#include <moe/core/types.hpp>
#include <moe/experts/expert_weights.hpp>
#include <moe/kernels/gemm.hpp>

namespace moe::bench {

using Matrix = RowMatrix<float>;

/// Deterministic values in [-1/32, 1/32) from a multiplicative hash of the index: fast to fill
/// gigabytes of weights, and the same on every run.
inline void fill(float* data, Index size, std::uint32_t salt) {
  for (Index i = 0; i < size; ++i) {
    const std::uint32_t h = (static_cast<std::uint32_t>(i) + salt) * 2654435761u;
    data[i] = static_cast<float>(static_cast<int>(h >> 20) - 2048) * (1.0f / 65536.0f);
  }
}
inline void fill(Eigen::Ref<Matrix> m, std::uint32_t salt) { fill(m.data(), m.size(), salt); }

/// The config of E SwiGLU experts of width d -> f -> d, which the expert benches run.
inline ExpertFFNConfig swiglu_experts(Index experts, Index d, Index f) {
  ExpertFFNConfig c;
  c.num_experts = experts;
  c.hidden = d;
  c.ffn_hidden = f;
  c.activation = Activation::swiglu;
  return c;
}

/// The same FLOPs as dense GEMMs over [T*k, d]: forward h1 = X W1, h3 = X W3, y = A W2; backward
/// dA = dY W2^T, dW2 = A^T dY, dW1 = X^T dH1, dW3 = X^T dH3, dX = dH1 W1^T + dH3 W3^T.
struct SwigluGemmLimit {
  SwigluGemmLimit(Index token_rows, Index d, Index f, bool with_backward)
      : backward(with_backward),
        rows(token_rows),
        x(rows, d),
        w1(d, f),
        w3(d, f),
        w2(f, d),
        h1(rows, f),
        h3(rows, f),
        y(rows, d),
        dy(rows, d),
        dh1(rows, f),
        dh3(rows, f),
        dw1(d, f),
        dw3(d, f),
        dw2(f, d),
        dx(rows, d) {
    fill(x, 1);
    fill(w1, 2);
    fill(w3, 3);
    fill(w2, 4);
    fill(dy, 5);
    fill(dh3, 6);
  }
  /// Through kernels::gemm, as the library's products: at these shapes its packed-panel kernel
  /// (1.4x Eigen 3.4's GEMM on one AVX-512 core, level with OpenBLAS's SkylakeX kernels), split
  /// over rows when threads are on, with scratch kept per thread as the measured code keeps it.
  void step() {
    using moe::kernels::gemm;
    gemm(h1, x, w1);
    gemm(h3, x, w3);
    gemm(y, h1, w2);
    benchmark::DoNotOptimize(y.data());
    if (backward) {
      gemm(dh1, dy, w2.transpose());
      gemm(dw2, h1.transpose(), dy);
      gemm(dw1, x.transpose(), dh1);
      gemm(dw3, x.transpose(), dh3);
      gemm(dx, dh1, w1.transpose());
      gemm(dx, dh3, w3.transpose(), /*accumulate=*/true);
      benchmark::DoNotOptimize(dx.data());
      benchmark::DoNotOptimize(dw1.data());
    }
  }
  bool backward;
  Index rows;
  Matrix x, w1, w3, w2, h1, h3, y, dy, dh1, dh3, dw1, dw3, dw2, dx;
};

}  // namespace moe::bench
