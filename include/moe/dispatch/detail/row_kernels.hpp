// Row kernels of dispatch and combine: copy, zero and weighted sum of rows of d scalars. Outputs
// too large to stay in cache are written with non-temporal (streaming) stores, as glibc's memcpy
// does: they would be evicted anyway, and streaming skips the read-for-ownership of each
// destination line, a third of the memory traffic of a copy.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>

#include <Eigen/Core>

#include "moe/core/types.hpp"

#if defined(__AVX__) || defined(__SSE2__)
#include <immintrin.h>
#endif

namespace moe::detail {

/// Whether a kernel writing `rows` rows of d scalars streams its stores: past 3/4 of one
/// hardware thread's share of the last-level cache (Eigen detects its size), the rule glibc's
/// memcpy applies to its non-temporal path.
template <class S>
bool should_stream(Index rows, Index d) {
  static const double threshold = [] {
    const double cache =
        static_cast<double>(std::max<std::ptrdiff_t>(Eigen::l3CacheSize(), 1 << 20));
    const double threads = static_cast<double>(std::max(1u, std::thread::hardware_concurrency()));
    return 0.75 * cache / threads;
  }();
  return static_cast<double>(rows) * static_cast<double>(d) * sizeof(S) > threshold;
}

template <class S>
struct Lanes;  // SIMD width and operations for S; `width` 1 means the scalar fallback

#if defined(__AVX__)
template <>
struct Lanes<float> {
  using V = __m256;
  static constexpr Index width = 8;
  static constexpr std::size_t align = 32;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void stream(float* p, V v) { _mm256_stream_ps(p, v); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V zero() { return _mm256_setzero_ps(); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
};
template <>
struct Lanes<double> {
  using V = __m256d;
  static constexpr Index width = 4;
  static constexpr std::size_t align = 32;
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static void stream(double* p, V v) { _mm256_stream_pd(p, v); }
  static V set1(double x) { return _mm256_set1_pd(x); }
  static V zero() { return _mm256_setzero_pd(); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
};
#elif defined(__SSE2__)
template <>
struct Lanes<float> {
  using V = __m128;
  static constexpr Index width = 4;
  static constexpr std::size_t align = 16;
  static V load(const float* p) { return _mm_loadu_ps(p); }
  static void store(float* p, V v) { _mm_storeu_ps(p, v); }
  static void stream(float* p, V v) { _mm_stream_ps(p, v); }
  static V set1(float x) { return _mm_set1_ps(x); }
  static V zero() { return _mm_setzero_ps(); }
  static V mul(V a, V b) { return _mm_mul_ps(a, b); }
  static V add(V a, V b) { return _mm_add_ps(a, b); }
};
template <>
struct Lanes<double> {
  using V = __m128d;
  static constexpr Index width = 2;
  static constexpr std::size_t align = 16;
  static V load(const double* p) { return _mm_loadu_pd(p); }
  static void store(double* p, V v) { _mm_storeu_pd(p, v); }
  static void stream(double* p, V v) { _mm_stream_pd(p, v); }
  static V set1(double x) { return _mm_set1_pd(x); }
  static V zero() { return _mm_setzero_pd(); }
  static V mul(V a, V b) { return _mm_mul_pd(a, b); }
  static V add(V a, V b) { return _mm_add_pd(a, b); }
};
#endif

template <class S, class = void>
struct HasLanes : std::false_type {};
template <class S>
struct HasLanes<S, std::void_t<decltype(Lanes<S>::width)>> : std::true_type {};

/// Orders this thread's streaming stores before anything it does next.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

/// Elements before the first `align`-byte boundary of dst (streaming stores need it).
template <class S>
Index head_elements(const S* dst, std::size_t align, Index n) {
  const auto address = reinterpret_cast<std::uintptr_t>(dst);
  const std::size_t misaligned = address % align;
  if (misaligned == 0) return 0;
  if (misaligned % sizeof(S) != 0) return n;  // cannot align: no streaming
  return std::min<Index>(n, static_cast<Index>((align - misaligned) / sizeof(S)));
}

/// dst[i] = Σ_j w_j · rows[j][i] for a compile-time number of rows: the row pointers and weights
/// live in registers, where the generic loop would reload them after every store to dst (which
/// the compiler must assume may alias them).
template <bool Weighted, int Count, class S>
void sum_rows_fixed(S* dst, Index n, const S* const* rows_in, const S* weights_in, bool stream) {
  const S* rows[Count];
  S weights[Count];
  for (int j = 0; j < Count; ++j) {
    rows[j] = rows_in[j];
    weights[j] = Weighted ? weights_in[j] : S(1);
  }
  auto scalar = [&](Index i) {
    S acc = Weighted ? weights[0] * rows[0][i] : rows[0][i];
    for (int j = 1; j < Count; ++j) acc += Weighted ? weights[j] * rows[j][i] : rows[j][i];
    dst[i] = acc;
  };
  Index i = 0;
  if constexpr (HasLanes<S>::value) {
    using L = Lanes<S>;
    typename L::V w[Count];
    for (int j = 0; j < Count; ++j) w[j] = L::set1(weights[j]);
    auto vterm = [&](int j, Index at) {
      return Weighted ? L::mul(w[j], L::load(rows[j] + at)) : L::load(rows[j] + at);
    };
    const Index head = stream ? head_elements(dst, L::align, n) : 0;
    for (; i < head; ++i) scalar(i);
    if (stream) {
      for (; i + L::width <= n; i += L::width) {
        auto acc = vterm(0, i);
        for (int j = 1; j < Count; ++j) acc = L::add(acc, vterm(j, i));
        L::stream(dst + i, acc);
      }
    } else {
      for (; i + L::width <= n; i += L::width) {
        auto acc = vterm(0, i);
        for (int j = 1; j < Count; ++j) acc = L::add(acc, vterm(j, i));
        L::store(dst + i, acc);
      }
    }
  }
  for (; i < n; ++i) scalar(i);
}

/// dst[i] (+)= Σ_j w_j · rows[j][i] for i < n, j = 0 .. count - 1 in order (w_j = 1 unless
/// Weighted). With `accumulate` the sum starts from dst[i], continuing an earlier batch of rows in
/// the same left-to-right order. count >= 1.
template <bool Weighted, class S>
void sum_rows(S* dst, Index n, const S* const* rows, const S* weights, Index count, bool accumulate,
              bool stream) {
  if (!accumulate) {
    switch (count) {
      case 1:
        return sum_rows_fixed<Weighted, 1>(dst, n, rows, weights, stream);
      case 2:
        return sum_rows_fixed<Weighted, 2>(dst, n, rows, weights, stream);
      case 3:
        return sum_rows_fixed<Weighted, 3>(dst, n, rows, weights, stream);
      case 4:
        return sum_rows_fixed<Weighted, 4>(dst, n, rows, weights, stream);
      case 5:
        return sum_rows_fixed<Weighted, 5>(dst, n, rows, weights, stream);
      case 6:
        return sum_rows_fixed<Weighted, 6>(dst, n, rows, weights, stream);
      case 7:
        return sum_rows_fixed<Weighted, 7>(dst, n, rows, weights, stream);
      case 8:
        return sum_rows_fixed<Weighted, 8>(dst, n, rows, weights, stream);
      default:
        break;
    }
  }
  auto term = [&](Index j, Index i) { return Weighted ? weights[j] * rows[j][i] : rows[j][i]; };
  auto scalar = [&](Index i) {
    S acc = accumulate ? dst[i] + term(0, i) : term(0, i);
    for (Index j = 1; j < count; ++j) acc += term(j, i);
    dst[i] = acc;
  };
  Index i = 0;
  if constexpr (HasLanes<S>::value) {
    using L = Lanes<S>;
    auto vterm = [&](Index j, Index at) {
      return Weighted ? L::mul(L::set1(weights[j]), L::load(rows[j] + at)) : L::load(rows[j] + at);
    };
    const Index head = stream ? head_elements(dst, L::align, n) : 0;
    for (; i < head; ++i) scalar(i);
    for (; i + L::width <= n; i += L::width) {
      auto acc = accumulate ? L::add(L::load(dst + i), vterm(0, i)) : vterm(0, i);
      for (Index j = 1; j < count; ++j) acc = L::add(acc, vterm(j, i));
      if (stream)
        L::stream(dst + i, acc);
      else
        L::store(dst + i, acc);
    }
  }
  for (; i < n; ++i) scalar(i);
}

/// dst[i] = src[i] for i < n.
template <class S>
void copy_row(S* dst, const S* src, Index n, bool stream) {
  if constexpr (HasLanes<S>::value) {
    if (stream) {
      using L = Lanes<S>;
      Index i = head_elements(dst, L::align, n);
      std::memcpy(dst, src, static_cast<std::size_t>(i) * sizeof(S));
      for (; i + L::width <= n; i += L::width) L::stream(dst + i, L::load(src + i));
      std::memcpy(dst + i, src + i, static_cast<std::size_t>(n - i) * sizeof(S));
      return;
    }
  }
  std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(S));
}

/// dst[i] = 0 for i < n.
template <class S>
void zero_row(S* dst, Index n, bool stream) {
  if constexpr (HasLanes<S>::value) {
    if (stream) {
      using L = Lanes<S>;
      Index i = head_elements(dst, L::align, n);
      for (Index h = 0; h < i; ++h) dst[h] = S(0);
      for (; i + L::width <= n; i += L::width) L::stream(dst + i, L::zero());
      for (; i < n; ++i) dst[i] = S(0);
      return;
    }
  }
  std::fill(dst, dst + n, S(0));
}

}  // namespace moe::detail
