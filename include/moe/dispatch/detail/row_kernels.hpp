// Row kernels of dispatch and combine: copy, zero and weighted sum of rows of d scalars. Outputs
// too large to stay in cache are written with non-temporal (streaming) stores, as glibc's memcpy
// does: they would be evicted anyway, and streaming skips the read-for-ownership of each
// destination line, a third of the memory traffic of a copy. Sources are gathered rows, so each
// kernel prefetches the rows of a later work item while it writes (RowsAhead).
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

#if defined(__AVX512F__)
template <>
struct Lanes<float> {
  using V = __m512;
  static constexpr Index width = 16;
  static constexpr std::size_t align = 64;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void stream(float* p, V v) { _mm512_stream_ps(p, v); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V zero() { return _mm512_setzero_ps(); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
};
template <>
struct Lanes<double> {
  using V = __m512d;
  static constexpr Index width = 8;
  static constexpr std::size_t align = 64;
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static void stream(double* p, V v) { _mm512_stream_pd(p, v); }
  static V set1(double x) { return _mm512_set1_pd(x); }
  static V zero() { return _mm512_setzero_pd(); }
  static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
};
#elif defined(__AVX__)
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

/// Bytes of a cache line: the unit a kernel prefetches in.
inline constexpr Index kCacheLineBytes = 64;

/// The source rows of a later work item (a few slots or tokens ahead), which a row kernel
/// prefetches a few cache lines at a time as it writes its own row. A gather of whole rows
/// otherwise starts every row on a miss, since the hardware prefetchers stop at page boundaries:
/// one core (AMD Zen 5) gathers 4 KiB rows of a 256 MB buffer at 17.5 GB/s alone, 26 GB/s so.
template <class S>
struct RowsAhead {
  static constexpr int kMaxRows = 8;
  /// Work items between the one a kernel runs and the one whose rows it prefetches.
  static constexpr Index kDistance = 4;

  const S* rows[kMaxRows] = {};
  int count = 0;

  void add(const S* row) noexcept {
    if (count < kMaxRows) rows[count++] = row;
  }
  EIGEN_ALWAYS_INLINE void fetch(Index i) const noexcept {
#if defined(__GNUC__)
    for (int j = 0; j < count; ++j) __builtin_prefetch(rows[j] + i, 0, 3);
#else
    (void)i;
#endif
  }
};

/// Runs body(i) for i = first, first + L::width, ... while a whole vector fits in n, fetching
/// `ahead` once per cache line; returns the first i left for scalar code.
template <class L, class S, class Body>
EIGEN_ALWAYS_INLINE Index vector_loop(Index first, Index n, const RowsAhead<S>& ahead,
                                      Body&& body) {
  constexpr Index kLine = std::max<Index>(L::width, kCacheLineBytes / Index{sizeof(S)});
  Index i = first;
  for (; i + kLine <= n; i += kLine) {
    ahead.fetch(i);
    for (Index v = 0; v < kLine; v += L::width) body(i + v);
  }
  for (; i + L::width <= n; i += L::width) body(i);
  return i;
}

/// dst[i] = Σ_j w_j · rows[j][i] for a compile-time number of rows: the row pointers and weights
/// live in registers, where the generic loop would reload them after every store to dst (which
/// the compiler must assume may alias them).
template <bool Weighted, int Count, class S>
void sum_rows_fixed(S* dst, Index n, const S* const* rows_in, const S* weights_in, bool stream,
                    const RowsAhead<S>& ahead) {
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
    auto sum_at = [&](Index at) {
      auto acc = Weighted ? L::mul(w[0], L::load(rows[0] + at)) : L::load(rows[0] + at);
      for (int j = 1; j < Count; ++j)
        acc = L::add(acc, Weighted ? L::mul(w[j], L::load(rows[j] + at)) : L::load(rows[j] + at));
      return acc;
    };
    const Index head = stream ? head_elements(dst, L::align, n) : 0;
    for (; i < head; ++i) scalar(i);
    if (stream)
      i = vector_loop<L>(i, n, ahead, [&](Index at) { L::stream(dst + at, sum_at(at)); });
    else
      i = vector_loop<L>(i, n, ahead, [&](Index at) { L::store(dst + at, sum_at(at)); });
  }
  for (; i < n; ++i) scalar(i);
}

/// dst[i] (+)= Σ_j w_j · rows[j][i] for i < n, j = 0 .. count - 1 in order (w_j = 1 unless
/// Weighted). With `accumulate` the sum starts from dst[i], continuing an earlier batch of rows in
/// the same left-to-right order. count >= 1.
template <bool Weighted, class S>
void sum_rows(S* dst, Index n, const S* const* rows, const S* weights, Index count, bool accumulate,
              bool stream, const RowsAhead<S>& ahead = {}) {
  if (!accumulate) {
    switch (count) {
      case 1:
        return sum_rows_fixed<Weighted, 1>(dst, n, rows, weights, stream, ahead);
      case 2:
        return sum_rows_fixed<Weighted, 2>(dst, n, rows, weights, stream, ahead);
      case 3:
        return sum_rows_fixed<Weighted, 3>(dst, n, rows, weights, stream, ahead);
      case 4:
        return sum_rows_fixed<Weighted, 4>(dst, n, rows, weights, stream, ahead);
      case 5:
        return sum_rows_fixed<Weighted, 5>(dst, n, rows, weights, stream, ahead);
      case 6:
        return sum_rows_fixed<Weighted, 6>(dst, n, rows, weights, stream, ahead);
      case 7:
        return sum_rows_fixed<Weighted, 7>(dst, n, rows, weights, stream, ahead);
      case 8:
        return sum_rows_fixed<Weighted, 8>(dst, n, rows, weights, stream, ahead);
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
    i = vector_loop<L>(i, n, ahead, [&](Index at) {
      auto acc = accumulate ? L::add(L::load(dst + at), vterm(0, at)) : vterm(0, at);
      for (Index j = 1; j < count; ++j) acc = L::add(acc, vterm(j, at));
      if (stream)
        L::stream(dst + at, acc);
      else
        L::store(dst + at, acc);
    });
  }
  for (; i < n; ++i) scalar(i);
}

/// dst[i] = src[i] for i < n. Stores that stay in cache go through memcpy, 1 KiB at a time after
/// prefetching the same span of `ahead`: a loop of vector copies in its place cost 10–25% where the
/// rows were in cache (dispatch at T = 64, or k = 8 at T = 4096).
template <class S>
void copy_row(S* dst, const S* src, Index n, bool stream, const RowsAhead<S>& ahead = {}) {
  if constexpr (HasLanes<S>::value) {
    if (stream) {
      using L = Lanes<S>;
      Index i = head_elements(dst, L::align, n);
      std::memcpy(dst, src, static_cast<std::size_t>(i) * sizeof(S));
      i = vector_loop<L>(i, n, ahead, [&](Index at) { L::stream(dst + at, L::load(src + at)); });
      std::memcpy(dst + i, src + i, static_cast<std::size_t>(n - i) * sizeof(S));
      return;
    }
  }
  constexpr Index kLine = kCacheLineBytes / Index{sizeof(S)}, kChunk = 16 * kLine;
  for (Index i = 0; i < n; i += kChunk) {
    const Index m = std::min(kChunk, n - i);
    for (Index l = 0; l < m; l += kLine) ahead.fetch(i + l);
    std::memcpy(dst + i, src + i, static_cast<std::size_t>(m) * sizeof(S));
  }
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
