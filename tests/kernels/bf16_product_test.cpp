// bfloat16 storage and the bf16 products (moe/core/bfloat16.hpp, moe/kernels/bf16_product.hpp):
// the rounding against hand-computed cases and every bf16 value, the panel layout element by
// element, both kernels bit for bit against a plain loop of vdpbf16ps's order, and the products
// against a double reference within the bound bf16 operands and float sums allow.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "moe/core/aligned_buffer.hpp"
#include "moe/kernels/bf16_product.hpp"
#include "support/bf16_reference.hpp"
#include "support/catch.hpp"
#include "support/random_matrix.hpp"

using namespace moe;

namespace {

/// The kernels this CPU runs.
std::vector<kernels::Bf16Kernel> bf16_kernels_here() {
  std::vector<kernels::Bf16Kernel> all{kernels::Bf16Kernel::portable};
  if (simd::cpu_has_avx512bf16()) all.push_back(kernels::Bf16Kernel::avx512_bf16);
  return all;
}

/// Panels of w [depth, cols] (row-major), owned.
struct PackedOperand {
  kernels::Bf16Panels shape;
  AlignedBuffer<bf16> values;
  explicit PackedOperand(const RowMatrix<float>& w)
      : shape{w.rows(), w.cols()}, values(static_cast<std::size_t>(shape.size())) {
    kernels::pack_bf16_panels(w.data(), w.cols(), false, shape, values.data());
  }
};

}  // namespace

TEST_CASE("to_bf16 rounds to nearest even as PyTorch's cast does", "[kernels][bf16]") {
  CHECK(bits_of(to_bf16(1.0f)) == 0x3f80);
  CHECK(to_float(to_bf16(1.00390625f)) == 1.0f);       // 1 + 2^-8: a tie, to even 1.0
  CHECK(to_float(to_bf16(1.01171875f)) == 1.015625f);  // 1 + 3 2^-8: a tie, to even 1 + 2^-6
  CHECK(to_float(to_bf16(std::nextafter(1.00390625f, 2.0f))) == 1.0078125f);  // above the tie
  CHECK(to_float(to_bf16(-1.005f)) == -1.0078125f);
  CHECK(bits_of(to_bf16(-0.0f)) == 0x8000);
  CHECK(std::isinf(to_float(to_bf16(std::numeric_limits<float>::max()))));
  CHECK(to_float(to_bf16(3.3895314e38f)) == 3.3895314e38f);  // the largest bf16
  CHECK(bits_of(to_bf16(std::numeric_limits<float>::quiet_NaN())) == 0x7fc0);
  CHECK(bits_of(to_bf16(-std::numeric_limits<float>::quiet_NaN())) == 0x7fc0);
  // Every bf16 but NaN survives the round trip through float.
  for (std::uint32_t b = 0; b <= 0xffff; ++b) {
    const bf16 v = bf16_from_bits(static_cast<std::uint16_t>(b));
    const float x = to_float(v);
    if (x != x) continue;
    REQUIRE(bits_of(to_bf16(x)) == b);
  }
}

TEST_CASE("pack_bf16_panels places w(p, j) at panel j/48, pair p/2, column j%48, half p%2",
          "[kernels][bf16]") {
  for (const bool transposed : {false, true}) {
    const Index depth = 7, cols = 50;  // an odd depth, and a second panel of two columns
    const RowMatrix<float> w = test::random_matrix<float>(depth, cols, 3);
    const RowMatrix<float> stored = transposed ? RowMatrix<float>(w.transpose()) : w;
    const kernels::Bf16Panels shape{depth, cols};
    REQUIRE(shape.pairs() == 4);
    REQUIRE(shape.panels() == 2);
    AlignedBuffer<bf16> panels(static_cast<std::size_t>(shape.size()), bf16_from_bits(0x7fc0));
    kernels::pack_bf16_panels(stored.data(), stored.cols(), transposed, shape, panels.data());
    for (Index panel = 0; panel < 2; ++panel)
      for (Index q = 0; q < 4; ++q)
        for (Index jj = 0; jj < 48; ++jj)
          for (Index half = 0; half < 2; ++half) {
            const Index p = 2 * q + half, j = panel * 48 + jj;
            const bf16 got = panels.data()[panel * shape.panel_size() + (q * 48 + jj) * 2 + half];
            const std::uint16_t want = p < depth && j < cols ? bits_of(to_bf16(w(p, j))) : 0;
            REQUIRE(bits_of(got) == want);
          }
  }
}

TEST_CASE("bf16_product: each kernel gives the plain loop's bits", "[kernels][bf16]") {
  std::uint64_t seed = 10;
  for (const kernels::Bf16Kernel kernel : bf16_kernels_here())
    for (const Index m : {1, 3, 8, 9, 17})
      for (const Index depth : {0, 1, 2, 7, 256, 257, 600})
        for (const Index cols : {1, 16, 47, 48, 49, 100}) {
          INFO("kernel " << static_cast<int>(kernel) << " m " << m << " depth " << depth << " cols "
                         << cols);
          const RowMatrix<bf16> a =
              test::rounded(test::random_matrix<float>(m, depth, ++seed, 2.0));
          const RowMatrix<float> w = test::random_matrix<float>(depth, cols, ++seed, 1.5);
          const PackedOperand packed(w);
          const RowMatrix<float> c0 = test::random_matrix<float>(m, cols, ++seed);
          for (const bool accumulate : {false, true}) {
            RowMatrix<float> c = c0;
            kernels::bf16_product(
                c.data(), c.cols(), m, [&](Index i) { return a.row(i).data(); },
                packed.values.data(), packed.shape, 0, cols, accumulate, kernel);
            const RowMatrix<float> want =
                test::reference_bf16_product(a, test::rounded(w), c0, accumulate);
            REQUIRE((c.array() == want.array()).all());
          }
          // A column range of whole panels, as a tile of a threaded product computes it.
          if (cols > 48) {
            RowMatrix<float> c = c0, want = c0;
            kernels::bf16_product(
                c.data() + 48, c.cols(), m, [&](Index i) { return a.row(i).data(); },
                packed.values.data(), packed.shape, 48, cols - 48, false, kernel);
            want.rightCols(cols - 48) =
                test::reference_bf16_product(a, test::rounded(w), c0, false).rightCols(cols - 48);
            REQUIRE((c.array() == want.array()).all());
          }
        }
}

TEST_CASE("bf16_product against double within the bf16 and float rounding bound",
          "[kernels][bf16]") {
  // |c - a w| <= (2 u_b + u_b^2) sum|a w| (each operand rounded to bf16, u_b = 2^-8; the product
  // of two bf16 is exact in float) + gamma_n(u_f) sum|a w| (n = depth + blocks float additions per
  // element, u_f = 2^-24), gamma_n = n u / (1 - n u).
  const double ub = std::ldexp(1.0, -8), uf = std::ldexp(1.0, -24);
  for (const kernels::Bf16Kernel kernel : bf16_kernels_here())
    for (const Index depth : {5, 300, 2048}) {
      const Index m = 11, cols = 70;
      const RowMatrix<float> a = test::random_matrix<float>(m, depth, 40 + depth, 3.0);
      const RowMatrix<float> w = test::random_matrix<float>(depth, cols, 41 + depth, 0.5);
      const RowMatrix<bf16> ab = test::rounded(a);
      const PackedOperand packed(w);
      RowMatrix<float> c(m, cols);
      kernels::bf16_product(
          c.data(), c.cols(), m, [&](Index i) { return ab.row(i).data(); }, packed.values.data(),
          packed.shape, 0, cols, false, kernel);
      const double n = static_cast<double>(depth + (depth + 255) / 256);
      const double bound = 2 * ub + ub * ub + n * uf / (1 - n * uf);
      double worst = 0;  // |c - exact| / (bound sum|a w|), at most 1
      for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < cols; ++j) {
          double exact = 0, magnitude = 0;
          for (Index p = 0; p < depth; ++p) {
            exact += static_cast<double>(a(i, p)) * w(p, j);
            magnitude += std::fabs(static_cast<double>(a(i, p)) * w(p, j));
          }
          worst = std::max(worst, std::fabs(c(i, j) - exact) / (bound * magnitude));
        }
      INFO("depth " << depth << " worst error / bound " << worst);
      CHECK(worst <= 1.0);
      CHECK(worst > 0.0);  // bf16 operands do change the result
    }
}
