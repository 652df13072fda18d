// The limit of the expert FFN benchmarks: the FLOPs of SwiGLU experts as dense GEMMs over
// [T*k, d], and the deterministic fill both benchmarks use.
#pragma once

#include <cstdint>

#include <benchmark/benchmark.h>
#include <moe/core/types.hpp>

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
  void step() {
    h1.noalias() = x * w1;
    h3.noalias() = x * w3;
    y.noalias() = h1 * w2;
    benchmark::DoNotOptimize(y.data());
    if (backward) {
      dh1.noalias() = dy * w2.transpose();
      dw2.noalias() = h1.transpose() * dy;
      dw1.noalias() = x.transpose() * dh1;
      dw3.noalias() = x.transpose() * dh3;
      dx.noalias() = dh1 * w1.transpose();
      dx.noalias() += dh3 * w3.transpose();
      benchmark::DoNotOptimize(dx.data());
      benchmark::DoNotOptimize(dw1.data());
    }
  }
  bool backward;
  Index rows;
  Matrix x, w1, w3, w2, h1, h3, y, dy, dh1, dh3, dw1, dw3, dw2, dx;
};

}  // namespace moe::bench
