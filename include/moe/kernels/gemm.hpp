// The library's matrix products. Each product runs one kernel, picked from the operands' storage
// and the shapes alone by select_product_kernel (so the bits never depend on the thread count, and
// tests assert which kernel a shape takes):
//   a few rows stream the right operand (streamed_product), tens of rows run register tiles over it
//   in place (skinny_product, skinny_product_nt, skinny_product_tn), more rows run the same tiles
//   over packed panels of it (packed_product); what none of these serves (a result narrower than a
//   packet, a BLAS backend) goes to Eigen's blocked GEMM on the calling thread with packing buffers
//   kept per thread, and a row vector, a tiny product or an operand without direct access to
//   Eigen's own product.
// Operands are reduced to views (pointer, stride, storage order) before a kernel is picked, so each
// kernel is compiled once per scalar type whatever Eigen expression the caller passes.
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "moe/core/types.hpp"
#include "moe/kernels/blocking.hpp"
#include "moe/kernels/detail/packed_product.hpp"
#include "moe/kernels/detail/skinny_product.hpp"
#include "moe/kernels/detail/streamed_product.hpp"
#include "moe/kernels/detail/thread_buffer.hpp"
#include "moe/kernels/parallel.hpp"
#include "moe/kernels/prefetch.hpp"
#include "moe/kernels/simd.hpp"

namespace moe::kernels {

/// The kernels a product can run (see select_product_kernel for which shapes take which).
enum class ProductKernel {
  streamed,    ///< 1..kStreamedMaxRows rows times a row-major rhs, read once in order
  skinny,      ///< up to kSkinnyMaxRows rows times a row-major rhs, register tiles in place
  skinny_nt,   ///< up to kSkinnyMaxRows rows times a row-major rhs seen transposed
  skinny_tn,   ///< a transposed lhs of at most kSkinnyMaxDepth rows of depth (weight gradients)
  packed,      ///< register tiles over packed panels of rhs (BLIS's loop order)
  eigen_gemm,  ///< Eigen's blocked GEMM on the calling thread, packing buffers kept per thread
  eigen        ///< Eigen's own product expression
};

/// How a product reads an operand.
enum class Storage {
  row_major,     ///< direct access, row i at data + i * stride
  column_major,  ///< direct access, column j at data + j * stride (a row-major matrix transposed)
  gathered,      ///< rows of a row-major matrix in the order of an index list (GatheredRows)
  expression     ///< no direct access with unit inner stride
};

/// The Storage of an Eigen operand type.
template <class T>
constexpr Storage storage_of() {
  constexpr bool kDirect =
      (T::Flags & Eigen::DirectAccessBit) != 0 && T::InnerStrideAtCompileTime == 1;
  if constexpr (!kDirect) return Storage::expression;
  return T::IsRowMajor ? Storage::row_major : Storage::column_major;
}

/// Whether the library's own kernels take products that a BLAS backend would (packed products);
/// with EIGEN_USE_BLAS those go to the BLAS through Eigen.
#if defined(EIGEN_USE_BLAS)
inline constexpr bool kOwnLargeProducts = false;
#else
inline constexpr bool kOwnLargeProducts = true;
#endif

/// The kernel gemm runs for dst [m, n] (+)= lhs [m, k] * rhs [k, n] of scalar S with operands
/// stored as given: the first that serves the shapes, in the order of ProductKernel.
template <class S>
constexpr ProductKernel select_product_kernel(Storage dst, Storage lhs, Storage rhs, Index m,
                                              Index n, Index k) {
  using B = ProductBlocking<S>;
  const bool vectors = simd::kVectorized<S> && n >= simd::kLanes<S>;
  const bool lhs_rows = lhs == Storage::row_major || lhs == Storage::gathered;
  const bool lhs_columns = lhs == Storage::column_major;
  const bool rhs_direct = rhs == Storage::row_major || rhs == Storage::column_major;
  if (dst == Storage::row_major && vectors) {
    const bool skinny_rows = m > B::kStreamedMaxRows && m <= B::kSkinnyMaxRows;
    if (rhs == Storage::row_major && (lhs_rows || lhs_columns) && m >= 1 &&
        m <= B::kStreamedMaxRows)
      return ProductKernel::streamed;
    if (rhs == Storage::row_major && lhs_rows && skinny_rows) return ProductKernel::skinny;
    if (rhs == Storage::column_major && lhs_rows && skinny_rows) return ProductKernel::skinny_nt;
    if (rhs == Storage::row_major && lhs_columns && k >= 1 && k <= B::kSkinnyMaxDepth)
      return ProductKernel::skinny_tn;
    if (kOwnLargeProducts && rhs_direct && (lhs_rows || lhs_columns) && m >= 2)
      return ProductKernel::packed;
  }
  if (kOwnLargeProducts && dst == Storage::row_major && lhs != Storage::expression && rhs_direct &&
      m >= 2 && n >= 2 && k >= 1 && m + n + k >= B::kCoefficientProductMaxSize)
    return ProductKernel::eigen_gemm;
  return ProductKernel::eigen;
}

/// The rows of a row-major matrix in the order of an index list: row r is source row index[r].
/// The kernels read them in place, so a grouped product needs no gathered copy of its input.
/// Offers the rows(), cols() and middleRows() of a matrix.
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

/// Whether the kernels read GatheredRows in place for every product. With a BLAS backend the
/// products the BLAS takes need a gathered copy first, and a caller is better off grouping the
/// rows once.
inline constexpr bool kGemmReadsGatheredRowsInPlace = kOwnLargeProducts;

namespace detail {

/// An operand as the kernels read it: element (i, j) of a [rows, cols] matrix.
template <class S>
struct View {
  const S* data = nullptr;
  Index rows = 0, cols = 0;
  Index stride = 0;  ///< between rows (row-major, gathered) or columns
  Storage storage = Storage::row_major;
  const Index* index = nullptr;  ///< gathered: row i is data + index[i] * stride

  S operator()(Index i, Index j) const noexcept {
    switch (storage) {
      case Storage::column_major:
        return data[j * stride + i];
      case Storage::gathered:
        return data[index[i] * stride + j];
      default:
        return data[i * stride + j];
    }
  }
  /// Row i of a row-major or gathered view.
  const S* row(Index i) const noexcept {
    return data + (storage == Storage::gathered ? index[i] : i) * stride;
  }
};

template <class S, class T>
View<S> view_of(const T& m) {
  return {m.data(), m.rows(), m.cols(), m.outerStride(), storage_of<T>(), nullptr};
}
template <class S>
View<S> view_of(const GatheredRows<S>& g) {
  return {g.data(), g.rows(), g.cols(), g.stride(), Storage::gathered, g.index()};
}

template <class S, int Order>
using StridedMap = Eigen::Map<const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Order>, 0,
                              Eigen::OuterStride<>>;

/// dst (+)= lhs * rhs by Eigen's product expression over maps of the views.
template <class S, int LhsOrder, int RhsOrder>
void eigen_product(S* c, Index c_stride, const View<S>& lhs, const View<S>& rhs, bool accumulate) {
  Eigen::Map<RowMatrix<S>, 0, Eigen::OuterStride<>> dst(c, lhs.rows, rhs.cols,
                                                        Eigen::OuterStride<>(c_stride));
  const StridedMap<S, LhsOrder> a(lhs.data, lhs.rows, lhs.cols, Eigen::OuterStride<>(lhs.stride));
  const StridedMap<S, RhsOrder> b(rhs.data, rhs.rows, rhs.cols, Eigen::OuterStride<>(rhs.stride));
  if (accumulate)
    dst.noalias() += a * b;
  else
    dst.noalias() = a * b;
}

/// Runs `kernel` (one select_product_kernel allows) for c [m, n] (+)= lhs * rhs, c row-major.
template <class S>
void run_product(ProductKernel kernel, S* c, Index c_stride, const View<S>& lhs, const View<S>& rhs,
                 bool accumulate, const PrefetchBlock& next) {
  const Index m = lhs.rows, n = rhs.cols, k = lhs.cols;
  const bool rhs_rows = rhs.storage == Storage::row_major;
  const auto lhs_row = [&lhs](Index i) { return lhs.row(i); };
  switch (kernel) {
    case ProductKernel::streamed:
      return streamed_product(c, c_stride, m, n, k, lhs, rhs.data, rhs.stride, accumulate);
    case ProductKernel::skinny:
      return skinny_product(c, c_stride, m, n, k, lhs_row, rhs.data, rhs.stride, accumulate, next);
    case ProductKernel::skinny_nt:
      return skinny_product_nt(c, c_stride, m, n, k, lhs_row, rhs.data, rhs.stride, accumulate,
                               next);
    case ProductKernel::skinny_tn:
      return skinny_product_tn(c, c_stride, m, n, k, lhs.data, lhs.stride, rhs.data, rhs.stride,
                               accumulate);
    case ProductKernel::packed: {
      const double work = static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
      // Outside a team the rows are split over Eigen::nbThreads() threads in whole register
      // tiles: an element's arithmetic never depends on its row range, so no bit changes.
      split_rows(
          m, ProductBlocking<S>::kTileRows, work, Eigen::nbThreads(), [&](Index first, Index rows) {
            S* c_rows = c + first * c_stride;
            if (lhs.storage == Storage::column_major) {
              // The transpose of a row-major matrix: a group of rows is a run of columns.
              const auto groups = [&](Index i, Index, Index p0) {
                return tiles::TransposedRows<S>{lhs.data + p0 * lhs.stride + first + i, lhs.stride};
              };
              packed_product(c_rows, c_stride, rows, n, k, groups, rhs.data, rhs.stride, !rhs_rows,
                             accumulate);
            } else {
              const auto groups = [&](Index i, Index count, Index p0) {
                packed::RowGroup<S> group{};
                for (Index r = 0; r < count; ++r) group.rows[r] = lhs.row(first + i + r) + p0;
                return group;
              };
              packed_product(c_rows, c_stride, rows, n, k, groups, rhs.data, rhs.stride, !rhs_rows,
                             accumulate);
            }
          });
      return;
    }
    case ProductKernel::eigen_gemm: {
      if (!accumulate)
        for (Index i = 0; i < m; ++i) std::fill(c + i * c_stride, c + i * c_stride + n, S(0));
      simd::EigenGemm<S> gemm(m, n, k);
      S* scratch = thread_buffer<S>(gemm.scratch_size());
      const bool lhs_rows = lhs.storage == Storage::row_major;
      if (lhs_rows && rhs_rows)
        gemm.template run<true, true>(m, n, k, lhs.data, lhs.stride, rhs.data, rhs.stride, c,
                                      c_stride, scratch);
      else if (lhs_rows)
        gemm.template run<true, false>(m, n, k, lhs.data, lhs.stride, rhs.data, rhs.stride, c,
                                       c_stride, scratch);
      else if (rhs_rows)
        gemm.template run<false, true>(m, n, k, lhs.data, lhs.stride, rhs.data, rhs.stride, c,
                                       c_stride, scratch);
      else
        gemm.template run<false, false>(m, n, k, lhs.data, lhs.stride, rhs.data, rhs.stride, c,
                                        c_stride, scratch);
      return;
    }
    case ProductKernel::eigen: {
      const bool lhs_rows = lhs.storage == Storage::row_major;
      if (lhs_rows && rhs_rows)
        eigen_product<S, Eigen::RowMajor, Eigen::RowMajor>(c, c_stride, lhs, rhs, accumulate);
      else if (lhs_rows)
        eigen_product<S, Eigen::RowMajor, Eigen::ColMajor>(c, c_stride, lhs, rhs, accumulate);
      else if (rhs_rows)
        eigen_product<S, Eigen::ColMajor, Eigen::RowMajor>(c, c_stride, lhs, rhs, accumulate);
      else
        eigen_product<S, Eigen::ColMajor, Eigen::ColMajor>(c, c_stride, lhs, rhs, accumulate);
      return;
    }
  }
}

/// c (+)= lhs * rhs over views: the kernel select_product_kernel names; gathered rows that only
/// Eigen can take are copied first (a single row is read in place).
template <class S>
void product(S* c, Index c_stride, const View<S>& lhs, const View<S>& rhs, bool accumulate,
             const PrefetchBlock& next) {
  const Index m = lhs.rows, n = rhs.cols, k = lhs.cols;
  const ProductKernel kernel =
      select_product_kernel<S>(Storage::row_major, lhs.storage, rhs.storage, m, n, k);
  if (lhs.storage != Storage::gathered ||
      (kernel != ProductKernel::eigen_gemm && kernel != ProductKernel::eigen))
    return run_product(kernel, c, c_stride, lhs, rhs, accumulate, next);
  if (m == 1) {
    const View<S> row{lhs.row(0), 1, k, k, Storage::row_major, nullptr};
    return product(c, c_stride, row, rhs, accumulate, next);
  }
  RowMatrix<S> copy(m, k);
  for (Index r = 0; r < m; ++r) std::copy_n(lhs.row(r), k, copy.row(r).data());
  product(c, c_stride, view_of<S>(copy), rhs, accumulate, next);
}

}  // namespace detail

/// dst = lhs * rhs, or dst += lhs * rhs with `accumulate`, by the kernel select_product_kernel
/// picks; `next` is the operand of the product to come, which the in-place kernels prefetch.
/// Operands without direct access go to Eigen's product as they are.
template <class Dst, class Lhs, class Rhs>
void gemm(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate = false,
          const PrefetchBlock& next = {}) {
  using D = std::decay_t<Dst>;
  using S = typename D::Scalar;
  if constexpr (storage_of<D>() == Storage::row_major && storage_of<Lhs>() != Storage::expression &&
                storage_of<Rhs>() != Storage::expression) {
    detail::product<S>(dst.data(), dst.outerStride(), detail::view_of<S>(lhs),
                       detail::view_of<S>(rhs), accumulate, next);
  } else if (accumulate) {
    dst.noalias() += lhs * rhs;
  } else {
    dst.noalias() = lhs * rhs;
  }
}

/// dst = gathered * rhs (or +=): the kernels of gemm over the rows read where they are, so the bits
/// equal gemm(dst, gathered copy, rhs).
template <class Dst, class S, class Rhs>
void gemm(Dst&& dst, const GatheredRows<S>& lhs, const Rhs& rhs, bool accumulate = false,
          const PrefetchBlock& next = {}) {
  static_assert(storage_of<std::decay_t<Dst>>() == Storage::row_major &&
                    storage_of<Rhs>() != Storage::expression,
                "gemm over gathered rows writes a row-major result from a direct-access rhs");
  detail::product<S>(dst.data(), dst.outerStride(), detail::view_of(lhs), detail::view_of<S>(rhs),
                     accumulate, next);
}

/// dst = lhs * rhs split into fixed blocks of kFixedProductBlock rows of dst (or of columns, when
/// dst has fewer rows than columns), each block one gemm on one thread of a team: the blocks, and
/// so the bits, are the same at any thread count.
template <class Dst, class Lhs, class Rhs>
void fixed_block_product(Dst& dst, const Lhs& lhs, const Rhs& rhs) {
  constexpr Index block = ThreadBlocking::kFixedProductBlock;
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

}  // namespace moe::kernels
