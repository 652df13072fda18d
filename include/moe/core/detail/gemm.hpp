// The products of the library, each picked from the shapes alone so that bits never depend on the
// thread count: a few rows stream the right operand (streamed_product.hpp), tens of rows run
// register tiles over it in place (skinny_product.hpp, skinny_transposed.hpp), more rows run the
// same tiles over packed panels of it (packed_product.hpp). What none of these serves (narrow
// results, a BLAS backend, operands without direct access) goes through Eigen, its blocked GEMM
// entered directly with packing buffers kept per thread.
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <utility>

#include "moe/core/detail/packed_product.hpp"
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

/// Runs dst (+)= lhs * rhs through packed_product when it serves the shapes and operands, and says
/// whether it did; lhs_group as packed_product takes it. Outside a team the rows are split over
/// Eigen::nbThreads() threads, which changes no bit.
template <class Dst, class Rhs, class LhsGroup>
bool packed_rows_product(Dst& dst, Index k, const LhsGroup& lhs_group, const Rhs& rhs,
                         bool accumulate) {
  using D = std::decay_t<Dst>;
  using S = typename D::Scalar;
  if constexpr (D::IsRowMajor && is_gemm_operand<D> && is_gemm_operand<Rhs>) {
    const Index m = dst.rows(), n = dst.cols();
    if (!uses_packed_product<S>(m, n)) return false;
    const double work = static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
    split_rows(m, work, Eigen::nbThreads(), [&](Index first, Index rows) {
      packed_product(
          dst.data() + first * dst.outerStride(), dst.outerStride(), rows, n, k,
          [&](Index i, Index count, Index p0) { return lhs_group(first + i, count, p0); },
          rhs.data(), rhs.outerStride(), !Rhs::IsRowMajor, accumulate);
    });
    return true;
  } else {
    (void)dst, (void)k, (void)lhs_group, (void)rhs, (void)accumulate;
    return false;
  }
}

/// lhs_group for packed_product over a left operand whose row i starts at lhs_row(i).
template <class S, class LhsRow>
auto row_groups(const LhsRow& lhs_row) {
  return [&lhs_row](Index first, Index count, Index p0) {
    packed::RowGroup<S> group{};
    for (Index r = 0; r < count; ++r) group.rows[r] = lhs_row(first + r) + p0;
    return group;
  };
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

/// dst = lhs * rhs, or dst += lhs * rhs when `accumulate`, by the first kernel that serves the
/// shapes: a few rows times a row-major rhs stream it (streamed_product); tens of rows read a
/// row-major rhs, or one seen transposed, in place while prefetching `next`, the operand of the
/// product to come (skinny_product, skinny_product_nt); a transposed lhs over tens of rows of depth
/// (a weight gradient) is summed straight into dst, row after row (skinny_product_tn); more rows,
/// or a deeper transposed lhs, run register tiles over packed panels of rhs (packed_product,
/// threaded over rows outside a team). The rest (narrow results, a BLAS backend, operands without
/// direct access) goes to Eigen: its blocked GEMM with packing buffers that persist per thread
/// (PackingBlocking) when it would run one single-threaded, else its own product.
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
    if (packed_rows_product(dst, k, row_groups<S>(lhs_row), rhs, accumulate)) return;
  } else {
    if (few_rows_product(dst, k, lhs_at, NoLhsRows{}, rhs, accumulate, next)) return;
  }
  if constexpr (!Lhs::IsRowMajor && is_gemm_operand<Lhs>) {
    if constexpr (reads_rhs_in_place<D, Rhs>) {
      if (uses_skinny_product_tn<S>(n, k)) {
        skinny_product_tn(dst.data(), dst.outerStride(), m, n, k, lhs.data(), lhs.outerStride(),
                          rhs.data(), rhs.outerStride(), accumulate);
        return;
      }
    }
    // The transpose of a row-major matrix: a group of rows is a run of columns of it.
    const auto transposed_groups = [&](Index first, Index, Index p0) {
      return skinny::TransposedRows<S>{lhs.data() + p0 * lhs.outerStride() + first,
                                       lhs.outerStride()};
    };
    if (packed_rows_product(dst, k, transposed_groups, rhs, accumulate)) return;
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

/// dst = gathered * rhs (or +=): the kernels of gemm over the rows read where they are, so the
/// bits equal gemm(dst, gathered copy, rhs).
template <class Dst, class S, class Rhs>
void gemm(Dst&& dst, const GatheredRows<S>& lhs, const Rhs& rhs, bool accumulate = false,
          const PrefetchBlock& next = {}) {
  const Index k = lhs.cols();
  const auto lhs_row = [&](Index i) { return lhs.row_data(i); };
  if (few_rows_product(
          dst, k, [&](Index i, Index p) { return lhs.row_data(i)[p]; }, lhs_row, rhs, accumulate,
          next))
    return;
  if (packed_rows_product(dst, k, row_groups<S>(lhs_row), rhs, accumulate)) return;
  // What the kernels above do not serve (a single row, narrow results, a BLAS backend): over the
  // one row in place, or over a gathered copy.
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
