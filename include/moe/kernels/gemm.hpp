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
//
// The kernels (detail/products/) are compiled for the instruction set of the translation unit, in
// moe::kernels, and where that set is older than AVX-512 on x86-64 (CMake's default flags) a
// second time for AVX-512, in moe::kernels::avx512 (and, below AVX2 with FMA, for AVX2 in
// moe::kernels::avx2); each product takes the widest copy the CPU runs (product_isa). So a build
// without -march flags multiplies at the speed of one with -march=native on the same machine, and
// still runs on any x86-64.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include <cstdlib>
#include <string>
#include "moe/core/types.hpp"
#include "moe/kernels/blocking.hpp"

#include "moe/core/error.hpp"
#include "moe/kernels/detail/thread_buffer.hpp"
#include "moe/kernels/panels.hpp"
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

/// Eigen's two kernels for c [m, n] (+)= lhs * rhs, c row-major: its blocked GEMM with the calling
/// thread's packing buffers (eigen_gemm) or its product expression (eigen), in the instruction set
/// the translation unit is compiled for.
template <class S>
void run_eigen_product(ProductKernel kernel, S* c, Index c_stride, const View<S>& lhs,
                       const View<S>& rhs, bool accumulate) {
  const Index m = lhs.rows, n = rhs.cols, k = lhs.cols;
  const bool lhs_rows = lhs.storage == Storage::row_major;
  const bool rhs_rows = rhs.storage == Storage::row_major;
  if (kernel == ProductKernel::eigen_gemm) {
    if (!accumulate)
      for (Index i = 0; i < m; ++i) std::fill(c + i * c_stride, c + i * c_stride + n, S(0));
    simd::EigenGemm<S> gemm(m, n, k);
    S* scratch = thread_buffer<S>(gemm.scratch_size());
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
  } else if (lhs_rows && rhs_rows) {
    eigen_product<S, Eigen::RowMajor, Eigen::RowMajor>(c, c_stride, lhs, rhs, accumulate);
  } else if (lhs_rows) {
    eigen_product<S, Eigen::RowMajor, Eigen::ColMajor>(c, c_stride, lhs, rhs, accumulate);
  } else if (rhs_rows) {
    eigen_product<S, Eigen::ColMajor, Eigen::RowMajor>(c, c_stride, lhs, rhs, accumulate);
  } else {
    eigen_product<S, Eigen::ColMajor, Eigen::ColMajor>(c, c_stride, lhs, rhs, accumulate);
  }
}

}  // namespace detail

// The product kernels for the instruction set this translation unit is compiled for.
#include "moe/kernels/detail/products/all.inc"

using detail::select_product_kernel;

}  // namespace moe::kernels

#if MOE_RUNTIME_AVX512
// The same kernels for AVX-512, taken at run time (product_isa).
MOE_BEGIN_AVX512
namespace moe::kernels::avx512 {
namespace simd = moe::simd::avx512;
#include "moe/kernels/detail/products/run_time_copy.inc"
}  // namespace moe::kernels::avx512
MOE_END_AVX512
#endif

#if MOE_RUNTIME_AVX2
// And for AVX2 with FMA, taken on a CPU without AVX-512.
MOE_BEGIN_AVX2
namespace moe::kernels::avx2 {
namespace simd = moe::simd::avx2;
#include "moe/kernels/detail/products/run_time_copy.inc"
}  // namespace moe::kernels::avx2
MOE_END_AVX2
#endif

namespace moe::kernels {

/// The instruction set the products run on: the one compiled for, or one picked at run time.
enum class ProductIsa {
  compiled,  ///< the translation unit's (-march), Eigen's packets
  avx512,    ///< AVX-512 on a CPU that has it, in a build for an older x86-64
  avx2       ///< AVX2 and FMA on a CPU that has them without AVX-512, in a build for an older one
};

/// The instruction set the products take, decided on first use: of the copies compiled here
/// (MOE_RUNTIME_AVX512, MOE_RUNTIME_AVX2) the widest this CPU runs, else the compiled one. The
/// environment variable MOE_PRODUCT_ISA (as oneDNN's ONEDNN_MAX_CPU_ISA) names one instead:
/// `compiled`, `avx2` or `avx512`, refused where neither the build nor a run-time copy gives it.
inline ProductIsa product_isa() {
  static const ProductIsa isa = [] {
    const char* asked = std::getenv("MOE_PRODUCT_ISA");
    const std::string name = asked == nullptr ? "" : asked;
    if (name.empty())
      return simd::cpu_has_avx512() ? ProductIsa::avx512
             : simd::cpu_has_avx2() ? ProductIsa::avx2
                                    : ProductIsa::compiled;
    require(name == "compiled" || name == "avx2" || name == "avx512", "MOE_PRODUCT_ISA",
            "'compiled', 'avx2' or 'avx512'", "'" + name + "'");
    if (name == "compiled") return ProductIsa::compiled;
    const bool avx512 = name == "avx512";
    // A build for the named set already (or for a wider one) is that set.
#if defined(__AVX512F__)
    return ProductIsa::compiled;
#endif
#if defined(__AVX2__) && defined(__FMA__)
    if (!avx512) return ProductIsa::compiled;
#endif
    require(avx512 ? simd::cpu_has_avx512() : simd::cpu_has_avx2(),
            avx512 ? "MOE_PRODUCT_ISA=avx512" : "MOE_PRODUCT_ISA=avx2",
            avx512 ? "a CPU with AVX-512 (x86-64-v4)" : "a CPU with AVX2 and FMA (x86-64-v3)",
            "a CPU or build without it");
    return avx512 ? ProductIsa::avx512 : ProductIsa::avx2;
  }();
  return isa;
}

namespace detail {

/// c (+)= lhs * rhs over views, on the instruction set product_isa() names.
template <class S>
void product(S* c, Index c_stride, const View<S>& lhs, const View<S>& rhs, bool accumulate,
             const PrefetchBlock& next) {
  if constexpr (std::is_same_v<S, float> || std::is_same_v<S, double>) {
#if MOE_RUNTIME_AVX512
    if (product_isa() == ProductIsa::avx512)
      return avx512::detail::product_here(c, c_stride, lhs, rhs, accumulate, next);
#endif
#if MOE_RUNTIME_AVX2
    if (product_isa() == ProductIsa::avx2)
      return avx2::detail::product_here(c, c_stride, lhs, rhs, accumulate, next);
#endif
  }
  product_here(c, c_stride, lhs, rhs, accumulate, next);
}

/// panel_product on the instruction set product_isa() names.
template <class S>
void panels_product(S* c, Index c_stride, const View<S>& lhs, const S* panels, const Panels& shape,
                    Index col0, Index cols, bool accumulate) {
  if constexpr (std::is_same_v<S, float> || std::is_same_v<S, double>) {
#if MOE_RUNTIME_AVX512
    if (product_isa() == ProductIsa::avx512)
      return avx512::detail::panel_product(c, c_stride, lhs, panels, shape, col0, cols, accumulate);
#endif
#if MOE_RUNTIME_AVX2
    if (product_isa() == ProductIsa::avx2)
      return avx2::detail::panel_product(c, c_stride, lhs, panels, shape, col0, cols, accumulate);
#endif
  }
  panel_product(c, c_stride, lhs, panels, shape, col0, cols, accumulate);
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

/// dst = lhs * W[:, col0 .. col0 + dst.cols()), or dst += with `accumulate`, W [shape.depth,
/// shape.cols] in panels (pack_panels); lhs row-major or GatheredRows; col0 a multiple of 16. Each
/// element is summed as gemm sums it over W row-major for the same rows (streamed, skinny or
/// packed order: detail::panel_product), so the bits equal gemm's wherever gemm runs its own
/// kernels (a result of at least a packet of columns, no BLAS backend).
template <class Dst, class Lhs, class S>
void panel_product(Dst&& dst, const Lhs& lhs, const S* panels, const Panels& shape, Index col0,
                   bool accumulate = false) {
  using D = std::decay_t<Dst>;
  static_assert(std::is_same_v<typename D::Scalar, S> && storage_of<D>() == Storage::row_major,
                "panel_product writes a row-major result of the panels' scalar");
  detail::View<S> rows;
  if constexpr (std::is_same_v<Lhs, GatheredRows<S>>) {
    rows = detail::view_of(lhs);
  } else {
    static_assert(storage_of<Lhs>() == Storage::row_major,
                  "panel_product reads the rows of a row-major lhs or GatheredRows");
    rows = detail::view_of<S>(lhs);
  }
  require(lhs.cols() == shape.depth, "lhs",
          moe::detail::concat(shape.depth, " columns (the panels' depth)"), lhs.cols());
  require(dst.rows() == lhs.rows(), "dst", moe::detail::concat(lhs.rows(), " rows (lhs rows)"),
          dst.rows());
  require(
      col0 >= 0 && col0 % 16 == 0 && col0 + dst.cols() <= shape.cols, "col0",
      moe::detail::concat("a multiple of 16 with col0 + ", dst.cols(), " columns <= ", shape.cols),
      col0);
  detail::panels_product<S>(dst.data(), dst.outerStride(), rows, panels, shape, col0, dst.cols(),
                            accumulate);
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
