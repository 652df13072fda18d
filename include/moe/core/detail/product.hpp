// Matrix products whose bits do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>

#include "moe/core/types.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace moe::detail {

/// Eigen's GEMM packing buffers, kept per thread across calls. A plain Eigen product allocates them
/// on every call and frees them after; glibc returns large freed blocks to the system, so the next
/// product page-faults them back in (a few percent of a step made of many tile products).
template <class S>
class PackingBlocking : public Eigen::internal::level3_blocking<S, S> {
 public:
  /// The blocking Eigen picks for a row-major [m, n] result over depth k, which it computes as the
  /// column-major product of the transposes: mc runs over n, nc over m.
  PackingBlocking(Index m, Index n, Index k) {
    this->m_mc = n;
    this->m_nc = m;
    this->m_kc = k;
    Eigen::internal::computeProductBlockingSizes<S, S, 1, Index>(this->m_kc, this->m_mc, this->m_nc,
                                                                 Index{1});
    const std::size_t size_a = round_to_line(this->m_mc * this->m_kc);
    S* buffer = thread_buffer(size_a + static_cast<std::size_t>(this->m_kc * this->m_nc));
    this->m_blockA = buffer;
    this->m_blockB = buffer + size_a;
  }

 private:
  static std::size_t round_to_line(Index count) {
    constexpr std::size_t per_line = 64 / sizeof(S);
    return (static_cast<std::size_t>(count) + per_line - 1) / per_line * per_line;
  }

  /// A 64-byte aligned buffer of at least `count` scalars owned by the calling thread; it grows to
  /// the largest product the thread has run and is freed when the thread exits.
  static S* thread_buffer(std::size_t count) {
    struct Free {
      void operator()(void* p) const noexcept { Eigen::internal::handmade_aligned_free(p); }
    };
    thread_local std::unique_ptr<void, Free> data;
    thread_local std::size_t capacity = 0;
    if (capacity < count || !data) {
      void* grown = Eigen::internal::handmade_aligned_malloc(count * sizeof(S), 64);
      if (grown == nullptr) throw std::bad_alloc();
      data.reset(grown);
      capacity = count;
    }
    return static_cast<S*>(data.get());
  }
};

/// True for an operand Eigen's GEMM reads in place: direct access, unit inner stride.
template <class T>
inline constexpr bool is_gemm_operand = (Eigen::internal::traits<T>::Flags &
                                         Eigen::DirectAccessBit) != 0 &&
                                        Eigen::internal::traits<T>::InnerStrideAtCompileTime == 1;

/// dst = lhs * rhs, or dst += lhs * rhs when `accumulate`: the same blocked GEMM, blocking and
/// bits as `dst.noalias() = lhs * rhs`, with packing buffers that persist per thread
/// (PackingBlocking). Products Eigen would not run as a single-threaded GEMM (vectors, tiny
/// shapes, a BLAS backend, or a product Eigen threads itself outside a team) go through Eigen's
/// own product.
template <class Dst, class Lhs, class Rhs>
void gemm(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate = false) {
  using D = std::decay_t<Dst>;
  using S = typename D::Scalar;
  const Index m = dst.rows(), n = dst.cols(), k = lhs.cols();
  bool blocked = m > 1 && n > 1 && k > 0 && m + n + k >= EIGEN_GEMM_TO_COEFFBASED_THRESHOLD;
#if defined(EIGEN_USE_BLAS)
  blocked = false;
#endif
#if defined(_OPENMP)
  blocked = blocked && (omp_get_num_threads() > 1 || Eigen::nbThreads() == 1);
#endif
  if constexpr (D::IsRowMajor && is_gemm_operand<D> && is_gemm_operand<Lhs> &&
                is_gemm_operand<Rhs>) {
    if (blocked) {
      constexpr int lhs_order = Lhs::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor;
      constexpr int rhs_order = Rhs::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor;
      if (!accumulate) dst.setZero();
      PackingBlocking<S> blocking(m, n, k);
      Eigen::internal::general_matrix_matrix_product<Index, S, lhs_order, false, S, rhs_order,
                                                     false, Eigen::RowMajor,
                                                     1>::run(m, n, k, lhs.data(), lhs.outerStride(),
                                                             rhs.data(), rhs.outerStride(),
                                                             dst.data(), 1, dst.outerStride(), S(1),
                                                             blocking);
      return;
    }
  }
  if (accumulate)
    dst.noalias() += lhs * rhs;
  else
    dst.noalias() = lhs * rhs;
}

/// dst = lhs * rhs, split into fixed blocks of 256 rows of dst (or of columns, when dst has fewer
/// rows than columns), each block one Eigen product on one thread. Eigen threading a product by
/// itself picks its cache blocking from the thread count, so the bits would change with it; fixed
/// blocks inside one OpenMP team give the same bits at any thread count.
template <class Dst, class Lhs, class Rhs>
void fixed_block_product(Dst& dst, const Lhs& lhs, const Rhs& rhs) {
  constexpr Index block = 256;
  const bool by_rows = dst.rows() >= dst.cols();
  const Index extent = by_rows ? dst.rows() : dst.cols();
  const Index blocks = (extent + block - 1) / block;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (Index b = 0; b < blocks; ++b) {
    const Index first = b * block, size = std::min(block, extent - first);
    if (by_rows)
      gemm(dst.middleRows(first, size), lhs.middleRows(first, size), rhs);
    else
      gemm(dst.middleCols(first, size), lhs, rhs.middleCols(first, size));
  }
}

}  // namespace moe::detail
