// Eigen's blocked GEMM entered directly: packing buffers kept per thread instead of allocated by
// every product, and a left operand that is rows gathered from a matrix, read in place. Products of
// up to 64 rows, or over up to 64 rows of depth, read their operands in place instead
// (streamed_product.hpp, skinny_product.hpp, skinny_transposed.hpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <utility>

#include "moe/core/detail/skinny_product.hpp"
#include "moe/core/detail/skinny_transposed.hpp"
#include "moe/core/detail/streamed_product.hpp"
#include "moe/core/detail/thread_buffer.hpp"
#include "moe/core/types.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace moe::detail {

/// Eigen's GEMM packing buffers, kept per thread across calls (thread_buffer). A plain Eigen
/// product allocates them on every call and frees them after, and page-faults them back in on the
/// next (a few percent of a step made of many tile products).
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
    S* buffer = thread_buffer<S>(size_a + static_cast<std::size_t>(this->m_kc * this->m_nc));
    this->m_blockA = buffer;
    this->m_blockB = buffer + size_a;
  }

 private:
  static std::size_t round_to_line(Index count) {
    constexpr std::size_t per_line = 64 / sizeof(S);
    return (static_cast<std::size_t>(count) + per_line - 1) / per_line * per_line;
  }
};

/// True for an operand Eigen's GEMM reads in place: direct access, unit inner stride.
template <class T>
inline constexpr bool is_gemm_operand = (Eigen::internal::traits<T>::Flags &
                                         Eigen::DirectAccessBit) != 0 &&
                                        Eigen::internal::traits<T>::InnerStrideAtCompileTime == 1;

/// Whether a row-major dst and rhs let gemm run a product of few rows over rhs in place
/// (streamed_product, skinny_product, skinny_product_tn).
template <class Dst, class Rhs>
inline constexpr bool reads_rhs_in_place = (Dst::IsRowMajor && Rhs::IsRowMajor) &&
                                           (is_gemm_operand<Dst> && is_gemm_operand<Rhs>);

/// Whether a row-major dst and a column-major rhs (row-major weights seen transposed) let gemm run
/// a product of few rows over rhs in place (skinny_product_nt).
template <class Dst, class Rhs>
inline constexpr bool reads_transposed_rhs_in_place = (Dst::IsRowMajor && !Rhs::IsRowMajor) &&
                                                      (is_gemm_operand<Dst> &&
                                                       is_gemm_operand<Rhs>);

/// Stands for lhs_row in few_rows_product when the left operand's rows are not contiguous.
struct NoLhsRows {};

/// Runs dst (+)= lhs * rhs through a kernel that reads rhs in place when one serves the shapes, and
/// says whether it did. lhs_at(i, p) reads the left operand; lhs_row(i) points at its row i when
/// its rows are contiguous (a row-major matrix, gathered rows), else it is NoLhsRows.
template <class Dst, class Rhs, class LhsAt, class LhsRow>
bool few_rows_product(Dst& dst, Index k, const LhsAt& lhs_at, const LhsRow& lhs_row, const Rhs& rhs,
                      bool accumulate, const PrefetchBlock& next) {
  using D = std::decay_t<Dst>;
  using S = typename D::Scalar;
  constexpr bool kHasRows = !std::is_same_v<LhsRow, NoLhsRows>;
  const Index m = dst.rows(), n = dst.cols();
  if constexpr (reads_rhs_in_place<D, Rhs>) {
    if (uses_streamed_product<S>(m, n)) {
      streamed_product(dst.data(), dst.outerStride(), m, n, k, lhs_at, rhs.data(),
                       rhs.outerStride(), accumulate);
      return true;
    }
    if constexpr (kHasRows) {
      if (uses_skinny_product<S>(m, n)) {
        skinny_product(dst.data(), dst.outerStride(), m, n, k, lhs_row, rhs.data(),
                       rhs.outerStride(), accumulate, next);
        return true;
      }
    }
  }
  if constexpr (reads_transposed_rhs_in_place<D, Rhs> && kHasRows) {
    if (uses_skinny_product<S>(m, n)) {
      skinny_product_nt(dst.data(), dst.outerStride(), m, n, k, lhs_row, rhs.data(),
                        rhs.outerStride(), accumulate, next);
      return true;
    }
  }
  return false;
}

/// Whether Eigen would run an [m, n] = [m, k] * [k, n] product as one single-threaded blocked GEMM
/// (not a GEMV, not its coefficient-based small product, not a BLAS call, not threaded by itself).
inline bool uses_blocked_gemm(Index m, Index n, Index k) {
#if defined(EIGEN_USE_BLAS)
  (void)m, (void)n, (void)k;
  return false;
#else
  bool blocked = m > 1 && n > 1 && k > 0 && m + n + k >= EIGEN_GEMM_TO_COEFFBASED_THRESHOLD;
#if defined(_OPENMP)
  blocked = blocked && (omp_get_num_threads() > 1 || Eigen::nbThreads() == 1);
#endif
  return blocked;
#endif
}

/// dst = lhs * rhs, or dst += lhs * rhs when `accumulate`: the same blocked GEMM, blocking and
/// bits as `dst.noalias() = lhs * rhs`, with packing buffers that persist per thread
/// (PackingBlocking). With any backend, a few rows times a row-major rhs stream rhs instead
/// (streamed_product); tens of rows read a row-major rhs, or one seen transposed, in place while
/// prefetching `next`, the operand of the product to come (skinny_product, skinny_product_nt); a
/// transposed lhs over tens of rows of depth (a weight gradient) is summed straight into dst, row
/// after row (skinny_product_tn). Products Eigen would not run as a single-threaded GEMM
/// (vectors, tiny shapes, a BLAS backend, or a product Eigen threads itself outside a team) go
/// through Eigen's own product.
template <class Dst, class Lhs, class Rhs>
void gemm(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate = false,
          const PrefetchBlock& next = {}) {
  using D = std::decay_t<Dst>;
  using S = typename D::Scalar;
  const Index m = dst.rows(), n = dst.cols(), k = lhs.cols();
  const auto lhs_at = [&](Index i, Index p) { return lhs.coeff(i, p); };
  if constexpr (Lhs::IsRowMajor && is_gemm_operand<Lhs>) {
    const auto lhs_row = [&](Index i) { return lhs.data() + i * lhs.outerStride(); };
    if (few_rows_product(dst, k, lhs_at, lhs_row, rhs, accumulate, next)) return;
  } else {
    if (few_rows_product(dst, k, lhs_at, NoLhsRows{}, rhs, accumulate, next)) return;
  }
  if constexpr (reads_rhs_in_place<D, Rhs> && !Lhs::IsRowMajor && is_gemm_operand<Lhs>) {
    if (uses_skinny_product_tn<S>(n, k)) {
      skinny_product_tn(dst.data(), dst.outerStride(), m, n, k, lhs.data(), lhs.outerStride(),
                        rhs.data(), rhs.outerStride(), accumulate);
      return;
    }
  }
  if constexpr (D::IsRowMajor && is_gemm_operand<D> && is_gemm_operand<Lhs> &&
                is_gemm_operand<Rhs>) {
    if (uses_blocked_gemm(m, n, k)) {
      constexpr int lhs_order = Lhs::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor;
      constexpr int rhs_order = Rhs::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor;
      if (!accumulate) dst.setZero();
      PackingBlocking<S> blocking(m, n, k);
      using Product =
          Eigen::internal::general_matrix_matrix_product<Index, S, lhs_order, false, S, rhs_order,
                                                         false, Eigen::RowMajor, 1>;
      Product::run(m, n, k, lhs.data(), lhs.outerStride(), rhs.data(), rhs.outerStride(),
                   dst.data(), 1, dst.outerStride(), S(1), blocking);
      return;
    }
  }
  if (accumulate)
    dst.noalias() += lhs * rhs;
  else
    dst.noalias() = lhs * rhs;
}

/// Whether gemm over GatheredRows packs the rows straight from their source. A BLAS backend cannot:
/// there each product gathers a copy first, and a caller is better off grouping the rows once.
#if defined(EIGEN_USE_BLAS)
inline constexpr bool kGemmReadsGatheredRowsInPlace = false;
#else
inline constexpr bool kGemmReadsGatheredRowsInPlace = true;
#endif

/// The rows of a row-major matrix in the order of an index list: row r is source row index[r].
/// A GEMM reads them in place, so a grouped product needs no gathered copy of its input. Offers
/// the rows(), cols() and middleRows() of a matrix.
template <class S>
class GatheredRows {
 public:
  GatheredRows(const S* data, Index stride, const Index* index, Index rows, Index cols)
      : data_(data), stride_(stride), index_(index), rows_(rows), cols_(cols) {}

  Index rows() const noexcept { return rows_; }
  Index cols() const noexcept { return cols_; }
  const S* data() const noexcept { return data_; }
  Index stride() const noexcept { return stride_; }
  const Index* index() const noexcept { return index_; }
  const S* row_data(Index r) const noexcept { return data_ + index_[r] * stride_; }
  GatheredRows middleRows(Index first, Index n) const {
    return GatheredRows(data_, stride_, index_ + first, n, cols_);
  }

 private:
  const S* data_;
  Index stride_;
  const Index* index_;
  Index rows_, cols_;
};

/// Eigen's data-mapper interface over the transpose of GatheredRows: column j of the mapped
/// [cols, count] matrix is gathered row j, contiguous. What gemm_pack_rhs reads.
template <class S>
class GatheredColumnsMapper {
 public:
  using LinearMapper = Eigen::internal::BlasLinearMapper<const S, Index, Eigen::Unaligned>;

  GatheredColumnsMapper(const S* data, Index stride, const Index* rows)
      : data_(data), stride_(stride), rows_(rows) {}
  GatheredColumnsMapper getSubMapper(Index i, Index j) const {
    return GatheredColumnsMapper(data_ + i, stride_, rows_ + j);
  }
  LinearMapper getLinearMapper(Index i, Index j) const {
    return LinearMapper(data_ + rows_[j] * stride_ + i);
  }
  const S& operator()(Index i, Index j) const { return data_[rows_[j] * stride_ + i]; }

 private:
  const S* data_;
  Index stride_;
  const Index* rows_;
};

/// dst = gathered * rhs (or +=): the loop of Eigen's sequential GEMM (general_matrix_matrix_product
/// for the transposed, column-major product) with the gathered rows packed straight from their
/// source, so the bits equal gemm(dst, gathered copy, rhs).
template <class Dst, class S, class Rhs>
void gemm(Dst&& dst, const GatheredRows<S>& lhs, const Rhs& rhs, bool accumulate = false,
          const PrefetchBlock& next = {}) {
  using namespace Eigen::internal;
  using D = std::decay_t<Dst>;
  const Index m = dst.rows(), n = dst.cols(), k = lhs.cols();
  if (few_rows_product(
          dst, k, [&](Index i, Index p) { return lhs.row_data(i)[p]; },
          [&](Index i) { return lhs.row_data(i); }, rhs, accumulate, next))
    return;
  if constexpr (D::IsRowMajor && is_gemm_operand<D> && is_gemm_operand<Rhs>) {
    if (uses_blocked_gemm(m, n, k)) {
      // C^T [n, m] = rhs^T [n, k] * gathered^T [k, m], column-major.
      constexpr int lhs_order = Rhs::IsRowMajor ? Eigen::ColMajor : Eigen::RowMajor;
      using Traits = gebp_traits<S, S>;
      using LhsMapper = const_blas_data_mapper<S, Index, lhs_order>;
      using RhsMapper = GatheredColumnsMapper<S>;
      using ResMapper = blas_data_mapper<S, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;
      gemm_pack_lhs<S, Index, LhsMapper, Traits::mr, Traits::LhsProgress,
                    typename Traits::LhsPacket4Packing, lhs_order>
          pack_lhs;
      gemm_pack_rhs<S, Index, RhsMapper, Traits::nr, Eigen::ColMajor> pack_rhs;
      gebp_kernel<S, S, Index, ResMapper, Traits::mr, Traits::nr, false, false> gebp;

      if (!accumulate) dst.setZero();
      PackingBlocking<S> blocking(m, n, k);
      const LhsMapper a(rhs.data(), rhs.outerStride());
      const RhsMapper b(lhs.data(), lhs.stride(), lhs.index());
      const ResMapper c(dst.data(), dst.outerStride());
      const Index kc = blocking.kc(), mc = std::min(n, blocking.mc()),
                  nc = std::min(m, blocking.nc());
      const bool pack_b_once = mc != n && kc == k && nc == m;
      for (Index i2 = 0; i2 < n; i2 += mc) {
        const Index actual_mc = std::min(i2 + mc, n) - i2;
        for (Index k2 = 0; k2 < k; k2 += kc) {
          const Index actual_kc = std::min(k2 + kc, k) - k2;
          pack_lhs(blocking.blockA(), a.getSubMapper(i2, k2), actual_kc, actual_mc);
          for (Index j2 = 0; j2 < m; j2 += nc) {
            const Index actual_nc = std::min(j2 + nc, m) - j2;
            if (!pack_b_once || i2 == 0)
              pack_rhs(blocking.blockB(), b.getSubMapper(k2, j2), actual_kc, actual_nc);
            gebp(c.getSubMapper(i2, j2), blocking.blockA(), blocking.blockB(), actual_mc, actual_kc,
                 actual_nc, S(1));
          }
        }
      }
      return;
    }
  }
  // Vectors and tiny products: Eigen's GEMV or coefficient-based product, over the one row in
  // place or over a gathered copy.
  if (lhs.rows() == 1) {
    const Eigen::Map<const RowMatrix<S>> row(lhs.row_data(0), 1, lhs.cols());
    gemm(std::forward<Dst>(dst), row, rhs, accumulate);
    return;
  }
  RowMatrix<S> copy(lhs.rows(), lhs.cols());
  for (Index r = 0; r < lhs.rows(); ++r)
    copy.row(r) =
        Eigen::Map<const Eigen::Matrix<S, 1, Eigen::Dynamic>>(lhs.row_data(r), lhs.cols());
  gemm(std::forward<Dst>(dst), copy, rhs, accumulate);
}

}  // namespace moe::detail
