// kernels::gemm against a plain triple loop: every kernel (streamed, register tiles in place,
// packed panels, Eigen's GEMM for what they do not serve), every storage order of the operands,
// strided blocks, accumulation; and bits that depend on the shapes alone, not on row blocks or
// threads.
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "moe/core/aligned_buffer.hpp"
#include "moe/kernels/gemm.hpp"
#include "support/bad_input.hpp"
#include "support/catch.hpp"

using namespace moe;

namespace {

template <class S>
RowMatrix<S> random_matrix(Index rows, Index cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  RowMatrix<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(uniform(gen));
  return m;
}

/// c(i, j) (+)= sum_p a(i, p) b(p, j), accumulated in long double; bound(i, j) = sum_p |a(i, p)
/// b(p, j)|, the scale of the rounding error a float or double GEMM may make.
template <class C, class A, class B>
void reference_product(C& c, RowMatrix<double>& bound, const A& a, const B& b, bool accumulate) {
  for (Index i = 0; i < c.rows(); ++i)
    for (Index j = 0; j < c.cols(); ++j) {
      long double sum = accumulate ? static_cast<long double>(c(i, j)) : 0.0L;
      double magnitude = std::abs(static_cast<double>(c(i, j)));
      for (Index p = 0; p < a.cols(); ++p) {
        sum += static_cast<long double>(a(i, p)) * static_cast<long double>(b(p, j));
        magnitude += std::abs(static_cast<double>(a(i, p)) * static_cast<double>(b(p, j)));
      }
      c(i, j) = static_cast<typename C::Scalar>(sum);
      bound(i, j) = magnitude;
    }
}

/// kernels::gemm into a block of a larger matrix (its outer stride is not its width): the block
/// matches the reference within k * epsilon of its scale, everything around it is untouched.
template <class S, class A, class B>
void check_product(const A& a, const B& b, bool accumulate) {
  RowMatrix<S> big = random_matrix<S>(a.rows() + 3, b.cols() + 5, 9);
  RowMatrix<S> expected = big;
  RowMatrix<double> bound = RowMatrix<double>::Zero(big.rows(), big.cols());
  auto dst = big.block(1, 2, a.rows(), b.cols());
  auto expected_block = expected.block(1, 2, a.rows(), b.cols());
  auto bound_block = bound.block(1, 2, a.rows(), b.cols());
  kernels::gemm(dst, a, b, accumulate);
  RowMatrix<double> block_bound(a.rows(), b.cols());
  reference_product(expected_block, block_bound, a, b, accumulate);
  bound_block = block_bound;
  const double epsilon = static_cast<double>(std::numeric_limits<S>::epsilon());
  for (Index i = 0; i < big.rows(); ++i)
    for (Index j = 0; j < big.cols(); ++j)
      REQUIRE(std::abs(static_cast<double>(big(i, j)) - static_cast<double>(expected(i, j))) <=
              static_cast<double>(a.cols() + 1) * epsilon * bound(i, j));
}

template <class S>
void check_all_orders(Index m, Index n, Index k) {
  const RowMatrix<S> a = random_matrix<S>(m + 2, k + 3, 1);   // A = a.block(1, 2, m, k)
  const RowMatrix<S> at = random_matrix<S>(k + 2, m + 3, 2);  // A = at.block(..)^T
  const RowMatrix<S> b = random_matrix<S>(k + 1, n + 4, 3);
  const RowMatrix<S> bt = random_matrix<S>(n + 1, k + 4, 4);
  const auto a_block = a.block(1, 2, m, k);
  const auto a_transposed = at.block(1, 2, k, m).transpose();
  const auto b_block = b.block(1, 1, k, n);
  const auto b_transposed = bt.block(1, 1, n, k).transpose();
  for (bool accumulate : {false, true}) {
    check_product<S>(a_block, b_block, accumulate);
    check_product<S>(a_block, b_transposed, accumulate);
    check_product<S>(a_transposed, b_block, accumulate);
    check_product<S>(a_transposed, b_transposed, accumulate);
  }
}

}  // namespace

TEST_CASE("gemm matches a triple loop for every operand storage order", "[core][gemm]") {
  // Outside an OpenMP team, packed products split their rows over Eigen::nbThreads() threads;
  // the test case "gemm's bits depend on the shapes alone" covers that.
  Eigen::setNbThreads(1);
  SECTION("packed panels, double") {
    check_all_orders<double>(37, 29, 41);
    check_all_orders<double>(130, 70, 300);  // two depth blocks of 256 and 44
    check_all_orders<double>(70, 400, 30);   // two column blocks: 384 and 16
  }
  SECTION("packed panels, float: every column remainder, every row remainder") {
    check_all_orders<float>(64, 48, 96);
    check_all_orders<float>(100, 53, 300);  // a 48-wide panel, then a sliver of 5 columns
    check_all_orders<float>(77, 100, 9);    // 48 + 48 + 4: the sliver in a panel of its own
    check_all_orders<float>(83, 800, 17);   // a column block of 768, then 32
    check_all_orders<float>(40, 37, 70);    // a transposed lhs deeper than 64: packed, not tiled
  }
  SECTION("a few rows times a row-major rhs: streamed, every depth and column remainder") {
    check_all_orders<double>(2, 37, 43);
    check_all_orders<double>(5, 8, 4);
    check_all_orders<double>(8, 70, 301);
    check_all_orders<float>(3, 50, 7);
    check_all_orders<float>(7, 16, 1);
    check_all_orders<float>(1, 300, 70);  // a row vector: two bursts, packets, a sliver
    check_all_orders<double>(1, 19, 33);
  }
  SECTION("tens of rows times a row-major rhs: register tiles, every row and column remainder") {
    check_all_orders<double>(9, 83, 37);
    check_all_orders<double>(13, 8, 5);
    check_all_orders<float>(64, 100, 50);
    check_all_orders<float>(30, 16, 3);
    check_all_orders<float>(11, 131, 1);
    check_all_orders<float>(23, 64, 20);  // tiles of 8, 8 and 7 rows (16 registers: 4, .., 4, 3)
    check_all_orders<float>(18, 50, 9);
    check_all_orders<double>(20, 24, 6);
  }
  SECTION("tens of rows times transposed weights: transposed depth chunks, every remainder") {
    check_all_orders<float>(9, 83, 37);
    check_all_orders<float>(32, 64, 128);  // one whole depth chunk
    check_all_orders<float>(21, 70, 600);  // four chunks of 128, then 88
    check_all_orders<double>(64, 40, 257);
    check_all_orders<double>(13, 8, 5);
  }
  SECTION("a transposed lhs over tens of rows of depth: a weight gradient, every remainder") {
    check_all_orders<float>(130, 83, 37);
    check_all_orders<float>(515, 64, 64);  // the deepest such product
    check_all_orders<double>(7, 21, 1);
    check_all_orders<double>(200, 9, 65);  // one row too deep: Eigen's GEMM
  }
  SECTION("shapes that go through Eigen's own product") {
    check_all_orders<double>(1, 17, 9);   // a row: GEMV
    check_all_orders<double>(17, 1, 9);   // a column: GEMV
    check_all_orders<double>(3, 4, 5);    // tiny: coefficient-based
    check_all_orders<float>(130, 9, 40);  // narrower than a packet: Eigen's blocked GEMM
  }
  SECTION("depth 0 gives zeros, or leaves an accumulated result as it was") {
    const RowMatrix<double> a(6, 0), b(0, 7);
    RowMatrix<double> c = RowMatrix<double>::Constant(6, 7, 3.0);
    kernels::gemm(c, a, b, /*accumulate=*/true);
    REQUIRE((c.array() == 3.0).all());
    kernels::gemm(c, a, b);
    REQUIRE((c.array() == 0.0).all());
    const RowMatrix<double> wide_b(0, 40);
    for (Index m : {6, 70}) {  // streamed, packed
      const RowMatrix<double> rows(m, 0);
      RowMatrix<double> wide_c = RowMatrix<double>::Constant(m, 40, 3.0);
      kernels::gemm(wide_c, rows, wide_b, /*accumulate=*/true);
      REQUIRE((wide_c.array() == 3.0).all());
      kernels::gemm(wide_c, rows, wide_b);
      REQUIRE((wide_c.array() == 0.0).all());
    }
  }
}

TEST_CASE("gemm's bits depend on the shapes alone", "[core][gemm]") {
  Eigen::setNbThreads(1);
  const RowMatrix<float> a = random_matrix<float>(300, 600, 5);
  const RowMatrix<float> b = random_matrix<float>(600, 150, 6);
  const RowMatrix<float> bt = random_matrix<float>(150, 600, 7);
  RowMatrix<float> whole(300, 150), again(300, 150), blocks(300, 150);
  kernels::gemm(whole, a, b);
  SECTION("run after run, with a larger product growing the thread's buffers in between") {
    const RowMatrix<float> big_a = random_matrix<float>(600, 900, 8);
    const RowMatrix<float> big_b = random_matrix<float>(900, 1000, 9);
    RowMatrix<float> large(600, 1000);
    kernels::gemm(large, big_a, big_b);
    kernels::gemm(again, a, b);
    REQUIRE(again == whole);
  }
  SECTION("in blocks of rows that do not align with the register tiles") {
    Index first = 0;
    for (Index rows : {101, 67, 132}) {  // each block packed, as the whole
      kernels::gemm(blocks.middleRows(first, rows), a.middleRows(first, rows), b);
      first += rows;
    }
    REQUIRE(blocks == whole);
  }
  SECTION("split over threads outside a team") {
    RowMatrix<float> transposed(300, 150), weight_gradient(600, 150), threaded(600, 150);
    kernels::gemm(transposed, a, bt.transpose());
    kernels::gemm(weight_gradient, a.transpose(), whole);
    Eigen::setNbThreads(2);
    kernels::gemm(again, a, b);
    REQUIRE(again == whole);
    kernels::gemm(again, a, bt.transpose());
    REQUIRE(again == transposed);
    kernels::gemm(threaded, a.transpose(), whole);
    REQUIRE(threaded == weight_gradient);
    Eigen::setNbThreads(1);
  }
}

TEST_CASE("gemm's prefetch hint changes no bit of the product", "[core][gemm]") {
  const RowMatrix<float> a = random_matrix<float>(37, 96, 17);
  const RowMatrix<float> b = random_matrix<float>(96, 150, 18);
  const RowMatrix<float> bt = random_matrix<float>(150, 96, 20);
  const RowMatrix<float> next = random_matrix<float>(200, 70, 19);
  const auto hint = kernels::prefetch_block(next.block(3, 5, 190, 60));
  for (Index m : {5, 37}) {  // streamed, register tiles
    RowMatrix<float> plain(m, 150), hinted(m, 150);
    kernels::gemm(plain, a.topRows(m), b);
    kernels::gemm(hinted, a.topRows(m), b, false, hint);
    REQUIRE(hinted == plain);
  }
  RowMatrix<float> plain(37, 150), hinted(37, 150);  // register tiles over transposed weights
  kernels::gemm(plain, a, bt.transpose());
  kernels::gemm(hinted, a, bt.transpose(), false, hint);
  REQUIRE(hinted == plain);
}

TEST_CASE("gemm inside a team: each thread packs into its own buffers", "[core][gemm]") {
  const RowMatrix<double> a = random_matrix<double>(96, 80, 10);
  const RowMatrix<double> b = random_matrix<double>(80, 72, 11);
  RowMatrix<double> expected(96, 72);
  RowMatrix<double> bound(96, 72);
  reference_product(expected, bound, a, b, false);
  constexpr int kProducts = 8;
  std::vector<RowMatrix<double>> results(kProducts, RowMatrix<double>(96, 72));
#if defined(_OPENMP)
#pragma omp parallel for schedule(static, 1) num_threads(2)
#endif
  for (int i = 0; i < kProducts; ++i) kernels::gemm(results[static_cast<std::size_t>(i)], a, b);
  for (const auto& result : results)
    REQUIRE(((result - expected).array().abs() <= 81 * 1e-16 * bound.array()).all());
}

TEST_CASE("gemm over gathered rows equals gemm over their gathered copy, bit for bit",
          "[core][gemm]") {
  Eigen::setNbThreads(1);
  const RowMatrix<float> source = random_matrix<float>(50, 70, 12);  // 50 rows, 64 used + 6
  const RowMatrix<float> b = random_matrix<float>(64, 90, 13);
  const RowMatrix<float> bt = random_matrix<float>(90, 64, 14);
  std::mt19937 gen(15);
  std::uniform_int_distribution<Index> pick(0, source.rows() - 1);
  for (Index m : {1, 2, 5, 40, 333}) {
    std::vector<Index> rows(static_cast<std::size_t>(m));
    for (Index& r : rows) r = pick(gen);  // repeats allowed, as a token chosen k times
    RowMatrix<float> copy(m, 64);
    for (Index r = 0; r < m; ++r)
      copy.row(r) = source.row(rows[static_cast<std::size_t>(r)]).head(64);
    const kernels::GatheredRows<float> gathered(source.data(), source.cols(), rows.data(), m, 64);
    for (bool accumulate : {false, true}) {
      RowMatrix<float> expected = random_matrix<float>(m, 90, 16), ours = expected;
      kernels::gemm(expected, copy, b, accumulate);
      kernels::gemm(ours, gathered, b, accumulate);
      REQUIRE(ours == expected);
      kernels::gemm(expected, copy, bt.transpose(), accumulate);
      kernels::gemm(ours, gathered, bt.transpose(), accumulate);
      REQUIRE(ours == expected);
      // And it is the product: against the triple loop.
      RowMatrix<float> reference = RowMatrix<float>::Zero(m, 90);
      RowMatrix<double> bound(m, 90);
      reference_product(reference, bound, copy, bt.transpose(), false);
      kernels::gemm(ours, gathered, bt.transpose());
      REQUIRE(
          ((ours - reference).cast<double>().array().abs() <= 65 * 1.2e-7 * bound.array()).all());
    }
  }
}

TEST_CASE("pack_panels lays a matrix out as column panels, zeros past its last column",
          "[core][gemm][panels]") {
  const RowMatrix<float> w = random_matrix<float>(7, 101, 30);  // 3 panels, the last 5 wide
  const kernels::Panels shape{7, 101};
  REQUIRE(shape.panels() == 3);
  REQUIRE(shape.size() == 3 * 7 * 48);
  std::vector<float> panels(static_cast<std::size_t>(shape.size()), -1.0f);
  kernels::pack_panels(w.data(), w.outerStride(), shape, panels.data());
  for (Index q = 0; q < 3; ++q)
    for (Index p = 0; p < 7; ++p)
      for (Index j = 0; j < 48; ++j) {
        const float value = panels[static_cast<std::size_t>(q * 7 * 48 + p * 48 + j)];
        const Index column = q * 48 + j;
        REQUIRE(value == (column < 101 ? w(p, column) : 0.0f));
      }
}

TEST_CASE("panel_product gives gemm's bits over the same weights, for every row count",
          "[core][gemm][panels]") {
  Eigen::setNbThreads(1);
  const Index d = 200, f = 176;  // 176 = 3 panels + 32 columns
  const RowMatrix<float> w = random_matrix<float>(d, f, 31);
  const RowMatrix<float> x = random_matrix<float>(150, d, 32);
  const kernels::Panels shape{d, f};
  AlignedBuffer<float> panels(static_cast<std::size_t>(shape.size()));
  kernels::pack_panels(w.data(), w.outerStride(), shape, panels.data());
  for (Index m : {1, 3, 8, 9, 40, 64, 65, 150})
    for (bool accumulate : {false, true}) {
      INFO("m=" << m << " accumulate=" << accumulate);
      RowMatrix<float> expected = random_matrix<float>(m, f, 33), ours = expected;
      kernels::gemm(expected, x.topRows(m), w, accumulate);
      kernels::panel_product(ours, x.topRows(m), panels.data(), shape, 0, accumulate);
      REQUIRE(ours == expected);
      // A column range from inside the second panel to the end, into a block of a wider result.
      RowMatrix<float> wide = random_matrix<float>(m, f, 34), wide_expected = wide;
      kernels::gemm(wide_expected.rightCols(f - 64), x.topRows(m), w.rightCols(f - 64), accumulate);
      kernels::panel_product(wide.rightCols(f - 64), x.topRows(m), panels.data(), shape, 64,
                             accumulate);
      REQUIRE(wide == wide_expected);
      // And it is the product: against the triple loop.
      RowMatrix<float> reference = RowMatrix<float>::Zero(m, f);
      RowMatrix<double> bound(m, f);
      reference_product(reference, bound, x.topRows(m), w, false);
      kernels::panel_product(ours, x.topRows(m), panels.data(), shape, 0);
      REQUIRE(
          ((ours - reference).cast<double>().array().abs() <= d * 1.2e-7 * bound.array()).all());
    }
}

TEST_CASE("panel_product refuses operands that do not fit its panels", "[core][gemm][panels]") {
  const kernels::Panels shape{32, 96};
  AlignedBuffer<float> panels(static_cast<std::size_t>(shape.size()), 0.0f);
  const RowMatrix<float> x = RowMatrix<float>::Ones(4, 32), short_x = RowMatrix<float>::Ones(4, 31);
  RowMatrix<float> out(4, 48), wrong_rows(3, 48);
  test::require_rejects([&] { kernels::panel_product(out, short_x, panels.data(), shape, 0); },
                        "lhs", "32 columns (the panels' depth)", "31");
  test::require_rejects([&] { kernels::panel_product(wrong_rows, x, panels.data(), shape, 0); },
                        "dst", "4 rows (lhs rows)", "3");
  test::require_rejects([&] { kernels::panel_product(out, x, panels.data(), shape, 8); }, "col0",
                        "a multiple of 16 with col0 + 48 columns <= 96", "8");
  test::require_rejects([&] { kernels::panel_product(out, x, panels.data(), shape, 64); }, "col0",
                        "a multiple of 16 with col0 + 48 columns <= 96", "64");
  REQUIRE_NOTHROW(kernels::panel_product(out, x, panels.data(), shape, 48));
}
