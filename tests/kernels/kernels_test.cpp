// Each product kernel against its plain-loop reference (reference_kernels.hpp), bit for bit, over
// every row, column and depth remainder of its tiles; the transposition the kernels pack with; and
// which kernel select_product_kernel gives each shape. Every check runs on each copy of the
// kernels this build and CPU have: the compiled instruction set's and, in a build for an older
// x86-64, the run-time AVX-512 and AVX2 copies.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "kernels/reference_kernels.hpp"
#include "moe/kernels/gemm.hpp"
#include "support/catch.hpp"

using namespace moe;
using kernels::ProductKernel;
using kernels::Storage;

namespace {

/// One copy of the product kernels, from its namespace: its blocking, its kernels, and whether its
/// multiply-adds are fused.
#define MOE_PRODUCT_KERNEL_SET(Name, ns, fused_madd)                          \
  struct Name {                                                               \
    static constexpr const char* name = #ns;                                  \
    static constexpr bool fused = fused_madd;                                 \
    template <class S>                                                        \
    using Blocking = ns::ProductBlocking<S>;                                  \
    template <class S>                                                        \
    using RowGroup = ns::detail::packed::RowGroup<S>;                         \
    template <class S>                                                        \
    using TransposedRows = ns::detail::tiles::TransposedRows<S>;              \
    static constexpr int kBurstPackets = ns::detail::streamed::kBurstPackets; \
    static constexpr Index kStreamedDepth = ns::detail::streamed::kDepth;     \
    template <class... A>                                                     \
    static void streamed_product(A&&... a) {                                  \
      ns::detail::streamed_product(std::forward<A>(a)...);                    \
    }                                                                         \
    template <class... A>                                                     \
    static void skinny_product(A&&... a) {                                    \
      ns::detail::skinny_product(std::forward<A>(a)...);                      \
    }                                                                         \
    template <class... A>                                                     \
    static void skinny_product_nt(A&&... a) {                                 \
      ns::detail::skinny_product_nt(std::forward<A>(a)...);                   \
    }                                                                         \
    template <class... A>                                                     \
    static void skinny_product_tn(A&&... a) {                                 \
      ns::detail::skinny_product_tn(std::forward<A>(a)...);                   \
    }                                                                         \
    template <class S, class... A>                                            \
    static void packed_product(A&&... a) {                                    \
      ns::detail::packed_product<S>(std::forward<A>(a)...);                   \
    }                                                                         \
    template <class... A>                                                     \
    static void transpose_into(A&&... a) {                                    \
      ns::detail::transpose_into(std::forward<A>(a)...);                      \
    }                                                                         \
    template <class... A>                                                     \
    static void panel_product(A&&... a) {                                     \
      ns::detail::panel_product(std::forward<A>(a)...);                       \
    }                                                                         \
  }

#if defined(__FMA__)
constexpr bool kCompiledFma = true;
#else
constexpr bool kCompiledFma = false;
#endif
MOE_PRODUCT_KERNEL_SET(CompiledKernels, kernels, kCompiledFma);
#if MOE_RUNTIME_AVX512
MOE_PRODUCT_KERNEL_SET(Avx512Kernels, kernels::avx512, true);
#endif
#if MOE_RUNTIME_AVX2
MOE_PRODUCT_KERNEL_SET(Avx2Kernels, kernels::avx2, true);
#endif

/// Whether the copy gemm takes (product_isa) fuses its multiply-adds: every run-time copy does.
bool gemm_fuses_madd() {
  return kernels::product_isa() != kernels::ProductIsa::compiled || CompiledKernels::fused;
}

/// Runs check<Set>() for each copy of the kernels this build and CPU have, the reference's
/// multiply-add fused as that copy's is.
template <class Check>
void for_each_kernel_set(const Check& check) {
  const auto run = [&](auto set) {
    using Set = decltype(set);
    INFO("kernels: " << Set::name);
    test::ref::fused_madd = Set::fused;
    check(set);
  };
  run(CompiledKernels{});
#if MOE_RUNTIME_AVX512
  if (simd::cpu_has_avx512()) run(Avx512Kernels{});
#endif
#if MOE_RUNTIME_AVX2
  if (simd::cpu_has_avx2()) run(Avx2Kernels{});
#endif
  test::ref::fused_madd = gemm_fuses_madd();
}

/// A [rows, cols] row-major block at an offset inside a wider random buffer, so a kernel that
/// writes past the block's columns shows.
template <class S>
struct Buffer {
  Index rows, cols, stride;
  std::vector<S> values;
  Buffer(Index r, Index c, unsigned seed) : rows(r), cols(c), stride(c + 5) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<double> uniform(-1.0, 1.0);
    values.resize(static_cast<std::size_t>((r + 1) * stride + 3));
    for (S& v : values) v = static_cast<S>(uniform(gen));
  }
  S* data() { return values.data() + 3; }
  const S* data() const { return values.data() + 3; }
  const S* row(Index i) const { return data() + i * stride; }
};

/// Runs `kernel` and `reference` on the same copies of c and requires the same bits everywhere.
template <class S, class Kernel, class Reference>
void require_same_bits(Buffer<S> c, const Kernel& kernel, const Reference& reference) {
  Buffer<S> expected = c;
  kernel(c.data(), c.stride);
  reference(expected.data(), expected.stride);
  REQUIRE(std::memcmp(c.values.data(), expected.values.data(), c.values.size() * sizeof(S)) == 0);
}

template <class Set, class S>
void check_streamed(Index m, Index n, Index k) {
  const Buffer<S> a(m, k, 1), at(k, m, 2), b(k, n, 3);
  const auto by_rows = [&](Index i, Index p) { return a.row(i)[p]; };
  const auto by_columns = [&](Index i, Index p) { return at.row(p)[i]; };
  for (bool accumulate : {false, true}) {
    INFO("streamed m=" << m << " n=" << n << " k=" << k << " accumulate=" << accumulate);
    for (int transposed = 0; transposed < 2; ++transposed) {
      require_same_bits<S>(
          Buffer<S>(m, n, 4),
          [&](S* c, Index cs) {
            if (transposed)
              Set::streamed_product(c, cs, m, n, k, by_columns, b.data(), b.stride, accumulate);
            else
              Set::streamed_product(c, cs, m, n, k, by_rows, b.data(), b.stride, accumulate);
          },
          [&](S* c, Index cs) {
            if (transposed)
              test::ref::streamed_product(c, cs, m, n, k, by_columns, b.data(), b.stride,
                                          accumulate);
            else
              test::ref::streamed_product(c, cs, m, n, k, by_rows, b.data(), b.stride, accumulate);
          });
    }
  }
}

template <class Set, class S>
void check_skinny(Index m, Index n, Index k) {
  const Buffer<S> a(m, k, 5), b(k, n, 6), bt(n, k, 7), next(4, 300, 8);
  const auto lhs_row = [&](Index i) { return a.row(i); };
  // What the kernels prefetch never changes what they compute.
  const kernels::PrefetchBlock hint{reinterpret_cast<const char*>(next.data()), 4, 1000,
                                    static_cast<Index>(next.stride * sizeof(S))};
  for (bool accumulate : {false, true}) {
    INFO("skinny m=" << m << " n=" << n << " k=" << k << " accumulate=" << accumulate);
    require_same_bits<S>(
        Buffer<S>(m, n, 9),
        [&](S* c, Index cs) {
          Set::skinny_product(c, cs, m, n, k, lhs_row, b.data(), b.stride, accumulate, hint);
        },
        [&](S* c, Index cs) {
          test::ref::skinny_product(c, cs, m, n, k, lhs_row, b.data(), b.stride, accumulate, hint);
        });
    require_same_bits<S>(
        Buffer<S>(m, n, 10),
        [&](S* c, Index cs) {
          Set::skinny_product_nt(c, cs, m, n, k, lhs_row, bt.data(), bt.stride, accumulate, hint);
        },
        [&](S* c, Index cs) {
          test::ref::skinny_product_nt(c, cs, m, n, k, lhs_row, bt.data(), bt.stride, accumulate,
                                       hint);
        });
  }
}

template <class Set, class S>
void check_skinny_tn(Index m, Index n, Index k) {
  const Buffer<S> a(k, m, 11), b(k, n, 12);
  for (bool accumulate : {false, true}) {
    INFO("skinny_tn m=" << m << " n=" << n << " k=" << k << " accumulate=" << accumulate);
    require_same_bits<S>(
        Buffer<S>(m, n, 13),
        [&](S* c, Index cs) {
          Set::skinny_product_tn(c, cs, m, n, k, a.data(), a.stride, b.data(), b.stride,
                                 accumulate);
        },
        [&](S* c, Index cs) {
          test::ref::skinny_product_tn(c, cs, m, n, k, a.data(), a.stride, b.data(), b.stride,
                                       accumulate);
        });
  }
}

template <class Set, class S>
void check_packed(Index m, Index n, Index k) {
  const Buffer<S> a(m, k, 14), at(k, m, 15), b(k, n, 16), bt(n, k, 17);
  const auto row_groups = [&](Index first, Index count, Index p0) {
    typename Set::template RowGroup<S> group{};
    for (Index r = 0; r < count; ++r) group.rows[r] = a.row(first + r) + p0;
    return group;
  };
  const auto transposed_groups = [&](Index first, Index, Index p0) {
    return typename Set::template TransposedRows<S>{at.row(p0) + first, at.stride};
  };
  for (bool accumulate : {false, true})
    for (bool rhs_transposed : {false, true})
      for (bool lhs_transposed : {false, true}) {
        INFO("packed m=" << m << " n=" << n << " k=" << k << " accumulate=" << accumulate
                         << " rhs_transposed=" << rhs_transposed
                         << " lhs_transposed=" << lhs_transposed);
        const Buffer<S>& rhs = rhs_transposed ? bt : b;
        const auto run = [&](auto&& product) {
          return [&, product](S* c, Index cs) {
            if (lhs_transposed)
              product(c, cs, m, n, k, transposed_groups, rhs.data(), rhs.stride, rhs_transposed,
                      accumulate);
            else
              product(c, cs, m, n, k, row_groups, rhs.data(), rhs.stride, rhs_transposed,
                      accumulate);
          };
        };
        require_same_bits<S>(Buffer<S>(m, n, 18),
                             run([](auto&&... args) { Set::template packed_product<S>(args...); }),
                             run([](auto&&... args) { test::ref::packed_product<S>(args...); }));
      }
}

/// panel_product over the panels of b [k, n] for columns [col0, col0 + cols), rows read in place
/// or gathered, against the reference of the in-place kernel gemm runs for m rows.
template <class Set, class S>
void check_panels(Index m, Index n, Index k, Index col0, Index cols) {
  const Buffer<S> a(m, k, 21), b(k, n, 22);
  const kernels::Panels shape{k, n};
  AlignedBuffer<S> panels(static_cast<std::size_t>(shape.size()));
  kernels::pack_panels(b.data(), b.stride, shape, panels.data());
  std::vector<Index> order(static_cast<std::size_t>(m));
  for (Index i = 0; i < m; ++i) order[static_cast<std::size_t>(i)] = m - 1 - i;
  const auto lhs_row = [&](Index i) { return a.row(i); };
  const auto gathered_row = [&](Index i) { return a.row(m - 1 - i); };
  const S* w = b.data() + col0;
  for (bool accumulate : {false, true})
    for (bool gathered : {false, true}) {
      INFO("panels m=" << m << " n=" << n << " k=" << k << " col0=" << col0 << " cols=" << cols
                       << " accumulate=" << accumulate << " gathered=" << gathered);
      const kernels::detail::View<S> lhs{a.data(),
                                         m,
                                         k,
                                         a.stride,
                                         gathered ? Storage::gathered : Storage::row_major,
                                         gathered ? order.data() : nullptr};
      require_same_bits<S>(
          Buffer<S>(m, cols, 23),
          [&](S* c, Index cs) {
            Set::panel_product(c, cs, lhs, panels.data(), shape, col0, cols, accumulate);
          },
          [&](S* c, Index cs) {
            if (gathered)
              test::ref::panel_product(c, cs, m, cols, k, gathered_row, w, b.stride, accumulate);
            else
              test::ref::panel_product(c, cs, m, cols, k, lhs_row, w, b.stride, accumulate);
          });
    }
}

template <class Set, class S>
void check_transpose(Index width, Index depth) {
  constexpr Index kStride = Set::template Blocking<S>::kTileCols;
  const Buffer<S> w(width, depth, 19);
  // The kernels' buffer: cache-line aligned, kTileCols wide.
  AlignedBuffer<S> ours(static_cast<std::size_t>(kStride * depth), S(0));
  std::vector<S> expected(static_cast<std::size_t>(kStride * depth), S(0));
  Set::transpose_into(ours.data(), w.data(), w.stride, width, depth);
  test::ref::transpose_into(expected.data(), kStride, w.data(), w.stride, width, depth);
  for (Index p = 0; p < depth; ++p)
    for (Index j = 0; j < width; ++j)
      REQUIRE(ours.data()[p * kStride + j] == expected[static_cast<std::size_t>(p * kStride + j)]);
}

}  // namespace

TEMPLATE_TEST_CASE("each product kernel computes its reference's bits", "[kernels][reference]",
                   float, double) {
  using S = TestType;
  SECTION("streamed: every depth remainder of a pass, bursts, packets and a column sliver") {
    for_each_kernel_set([](auto set) {
      using Set = decltype(set);
      using B = typename Set::template Blocking<S>;
      constexpr Index lanes = B::kPacket;
      constexpr Index burst = Set::kBurstPackets * lanes;
      constexpr Index depth = Set::kStreamedDepth;
      for (Index m : {Index(1), Index(2), Index(5), B::kStreamedMaxRows})
        for (Index n : {Index(3), lanes, lanes + 3, burst, 2 * burst + lanes + 5})
          for (Index k : {Index(1), Index(3), depth, depth + 1, 3 * depth - 1})
            check_streamed<Set, S>(m, n, k);
    });
  }
  SECTION("register tiles in place and over transposed chunks") {
    for_each_kernel_set([](auto set) {
      using Set = decltype(set);
      using B = typename Set::template Blocking<S>;
      constexpr Index lanes = B::kPacket;
      for (Index m : {B::kStreamedMaxRows + 1, Index(13), Index(23), B::kSkinnyMaxRows})
        for (Index n : {lanes, lanes + 1, B::kTileCols, Index(131)})
          for (Index k : {Index(0), Index(1), Index(37), B::kTransposeDepth, Index(300),
                          2 * B::kSkinnyDepth + 1})
            check_skinny<Set, S>(m, n, k);
    });
  }
  SECTION("weight gradients over tens of rows of depth") {
    for_each_kernel_set([](auto set) {
      using Set = decltype(set);
      using B = typename Set::template Blocking<S>;
      constexpr Index lanes = B::kPacket;
      for (Index m : {Index(5), Index(37)})
        for (Index n : {lanes, B::kTileCols + 5, Index(70)})
          for (Index k : {Index(1), Index(20), B::kSkinnyMaxDepth})
            check_skinny_tn<Set, S>(m, n, k);
    });
  }
  SECTION("packed panels: row, column and depth blocks with their remainders") {
    for_each_kernel_set([](auto set) {
      using Set = decltype(set);
      using B = typename Set::template Blocking<S>;
      constexpr Index lanes = B::kPacket;
      for (Index m : {Index(2), B::kTileRows + 3, Index(100)})
        for (Index n : {lanes, lanes + 3, B::kTileCols + 5, B::kPackedCols + B::kTileCols + 1})
          for (Index k : {Index(1), Index(9), B::kPackedDepth + 44}) check_packed<Set, S>(m, n, k);
    });
  }
  SECTION("over weights in panels: each row count in the order of gemm's kernel for it") {
    for_each_kernel_set([](auto set) {
      using Set = decltype(set);
      using B = typename Set::template Blocking<S>;
      for (Index m : {Index(1), B::kStreamedMaxRows, B::kStreamedMaxRows + 3, B::kSkinnyMaxRows,
                      B::kSkinnyMaxRows + 9})
        for (Index k : {Index(0), Index(1), Index(130), B::kPackedDepth + 44}) {
          check_panels<Set, S>(m, 53, k, 0, 53);     // two panels, the second 5 wide
          check_panels<Set, S>(m, 150, k, 16, 112);  // from inside a panel to inside another
        }
    });
  }
  SECTION("the transposition of weights into panels") {
    for_each_kernel_set([](auto set) {
      using Set = decltype(set);
      using B = typename Set::template Blocking<S>;
      constexpr Index lanes = B::kPacket;
      for (Index width : {Index(1), lanes, std::min(2 * lanes + 1, B::kTileCols), B::kTileCols})
        for (Index depth : {Index(1), lanes, lanes * 8 + 1}) check_transpose<Set, S>(width, depth);
    });
  }
}

TEST_CASE("select_product_kernel picks each kernel from storage and shapes", "[kernels][gemm]") {
  using S = float;
  constexpr Index lanes = simd::kLanes<S>;
  using B = kernels::ProductBlocking<S>;
  constexpr auto R = Storage::row_major, C = Storage::column_major, G = Storage::gathered,
                 X = Storage::expression;
  const auto pick = [](Storage lhs, Storage rhs, Index m, Index n, Index k) {
    return kernels::select_product_kernel<S>(R, lhs, rhs, m, n, k);
  };
  const bool vectors = simd::kVectorized<S>;
  const bool own = kernels::kOwnLargeProducts;
  const ProductKernel large = own ? ProductKernel::packed : ProductKernel::eigen;
  if (vectors) {
    // A decode step's rows per expert stream the weights; tens of rows tile them in place.
    CHECK(pick(R, R, 2, 1024, 2048) == ProductKernel::streamed);
    CHECK(pick(G, R, B::kStreamedMaxRows, 1024, 2048) == ProductKernel::streamed);
    CHECK(pick(C, R, 4, 256, 512) == ProductKernel::streamed);
    CHECK(pick(R, R, B::kStreamedMaxRows + 1, 512, 256) == ProductKernel::skinny);
    CHECK(pick(G, R, B::kSkinnyMaxRows, 512, 256) == ProductKernel::skinny);
    CHECK(pick(R, C, 32, 512, 256) == ProductKernel::skinny_nt);
    // Weight gradients over an expert's tens of tokens sum straight into the result.
    CHECK(pick(C, R, 512, 256, B::kSkinnyMaxDepth) == ProductKernel::skinny_tn);
    // Everything larger runs over packed panels (or goes to a BLAS backend).
    CHECK(pick(R, R, B::kSkinnyMaxRows + 1, 512, 256) == large);
    CHECK(pick(R, C, 4, 512, 256) == large);
    CHECK(pick(C, R, 512, 256, B::kSkinnyMaxDepth + 1) == large);
    CHECK(pick(C, C, 100, 100, 100) == large);
    CHECK(pick(G, C, 4096, 1024, 512) == large);
  }
  // Results narrower than a packet: Eigen's blocked GEMM on this thread.
  CHECK(pick(R, R, 4096, lanes - 1 > 1 ? lanes - 1 : 2, 1024) ==
        (own ? ProductKernel::eigen_gemm : ProductKernel::eigen));
  // A row vector streams the weights too (Eigen's GEMV without vectors); tiny products are
  // Eigen's coefficient-wise product; expressions its own.
  CHECK(pick(R, R, 1, 1024, 2048) == (vectors ? ProductKernel::streamed : ProductKernel::eigen));
  CHECK(pick(G, R, 1, 1024, 2048) == (vectors ? ProductKernel::streamed : ProductKernel::eigen));
  CHECK(pick(R, R, 2, 2, 2) ==
        (vectors && lanes <= 2 ? ProductKernel::streamed : ProductKernel::eigen));
  CHECK(pick(X, R, 100, 100, 100) == ProductKernel::eigen);
  CHECK(pick(R, X, 100, 100, 100) == ProductKernel::eigen);
  CHECK(kernels::select_product_kernel<S>(C, R, R, 100, 100, 100) == ProductKernel::eigen);
  // What gemm passes for Eigen types.
  STATIC_REQUIRE(kernels::storage_of<RowMatrix<S>>() == R);
  STATIC_REQUIRE(kernels::storage_of<decltype(RowMatrix<S>().transpose())>() == C);
  STATIC_REQUIRE(kernels::storage_of<decltype(RowMatrix<S>().block(0, 0, 1, 1))>() == R);
  STATIC_REQUIRE(kernels::storage_of<decltype(RowMatrix<S>().col(0))>() == X);
  STATIC_REQUIRE(kernels::storage_of<decltype(RowMatrix<S>() + RowMatrix<S>())>() == X);
}

TEST_CASE("gemm takes the widest copy of the kernels the build and the CPU allow",
          "[kernels][gemm]") {
  const kernels::ProductIsa isa = kernels::product_isa();
  if (std::getenv("MOE_PRODUCT_ISA") == nullptr)
    CHECK(isa == (simd::cpu_has_avx512() ? kernels::ProductIsa::avx512
                  : simd::cpu_has_avx2() ? kernels::ProductIsa::avx2
                                         : kernels::ProductIsa::compiled));
#if MOE_RUNTIME_AVX512
  {
    // Each copy picks its kernels by its own packet: 8 floats are narrower than 16 lanes.
    constexpr auto R = Storage::row_major;
    using B = kernels::avx512::ProductBlocking<float>;
    STATIC_REQUIRE(B::kPacket == 16);
    STATIC_REQUIRE(B::kTileRows == 8);
    STATIC_REQUIRE(B::kTileCols == 48);
    CHECK(kernels::avx512::detail::select_product_kernel<float>(R, R, R, 4, 8, 512) ==
          ProductKernel::eigen_gemm);
    CHECK(kernels::avx512::detail::select_product_kernel<float>(R, R, R, 4, 16, 512) ==
          ProductKernel::streamed);
  }
#endif
#if MOE_RUNTIME_AVX2
  {
    // 16 vector registers: register tiles of 4 rows x 3 packets.
    constexpr auto R = Storage::row_major;
    using B = kernels::avx2::ProductBlocking<float>;
    STATIC_REQUIRE(B::kPacket == 8);
    STATIC_REQUIRE(B::kTileRows == 4);
    STATIC_REQUIRE(B::kTileCols == 24);
    CHECK(kernels::avx2::detail::select_product_kernel<float>(R, R, R, 4, 7, 512) ==
          ProductKernel::eigen_gemm);
    CHECK(kernels::avx2::detail::select_product_kernel<float>(R, R, R, 4, 8, 512) ==
          ProductKernel::streamed);
  }
#endif
  // The bits of a streamed product (4 rows, 64 columns: a whole packet on every instruction set)
  // are its reference's with the multiply-add of the copy that ran.
  using S = float;
  const Index m = 4, n = 64, k = 300;
  const Buffer<S> a(m, k, 31), b(k, n, 32);
  RowMatrix<S> lhs(m, k), rhs(k, n), c(m, n), expected(m, n);
  for (Index i = 0; i < m; ++i) std::copy_n(a.row(i), k, lhs.row(i).data());
  for (Index p = 0; p < k; ++p) std::copy_n(b.row(p), n, rhs.row(p).data());
  kernels::gemm(c, lhs, rhs);
  test::ref::fused_madd = gemm_fuses_madd();
  test::ref::streamed_product(
      expected.data(), n, m, n, k, [&](Index i, Index p) { return lhs(i, p); }, rhs.data(), n,
      false);
  CHECK(std::memcmp(c.data(), expected.data(), sizeof(S) * m * n) == 0);
  // And the other multiply-add gives other bits here, so the check above tells the copies apart.
  RowMatrix<S> other(m, n);
  test::ref::fused_madd = !test::ref::fused_madd;
  test::ref::streamed_product(
      other.data(), n, m, n, k, [&](Index i, Index p) { return lhs(i, p); }, rhs.data(), n, false);
  test::ref::fused_madd = !test::ref::fused_madd;
  CHECK(std::memcmp(other.data(), expected.data(), sizeof(S) * m * n) != 0);
}
