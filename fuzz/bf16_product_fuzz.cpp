// bfloat16 rounding and the products over panels. Invariants: to_bf16 of any float is its
// nearest bf16, ties to even, overflowing to infinity past the largest and NaN to 0x7fc0; both
// bf16 kernels (the portable one, and vdpbf16ps where the CPU has it) give the plain loop's bits
// (tests/support/bf16_reference.hpp) for any shape, column range of whole panels and normal
// operands, storing or accumulating; the float panel product gives the plain loop's bits in the
// order it states for its row count (tests/kernels/reference_kernels.hpp), for any column range,
// depth (0 too) and accumulation, and leaves every other column alone.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <moe/core/aligned_buffer.hpp>
#include <moe/kernels/bf16_product.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/panels.hpp>

#include "fuzz_input.hpp"
#include "kernels/reference_kernels.hpp"
#include "support/bf16_reference.hpp"

namespace {

using moe::bf16;
using moe::Index;

/// to_bf16(x) is the bf16 nearest x, ties to the even significand.
void check_rounding(float x) {
  const std::uint16_t bits = moe::bits_of(moe::to_bf16(x));
  if (std::isnan(x)) {
    MOE_FUZZ_CHECK(bits == 0x7fc0);
    return;
  }
  const double exact = x;
  const double got = moe::to_float(moe::bf16_from_bits(bits));
  constexpr double kLargest = 3.3895313892515355e38;  // the largest finite bf16
  // Past the largest bf16 plus half its ulp (2^120), the cast overflows to infinity.
  if (std::fabs(exact) >= kLargest + std::ldexp(1.0, 119)) {
    MOE_FUZZ_CHECK(std::isinf(got));
    return;
  }
  MOE_FUZZ_CHECK(std::isfinite(got));
  // Its neighbours one bf16 step away are no nearer, and at a tie the kept significand is even.
  for (const int step : {-1, 1}) {
    const std::uint16_t next = static_cast<std::uint16_t>(bits + step);
    const double other = moe::to_float(moe::bf16_from_bits(next));
    if (!std::isfinite(other) || (next & 0x7fff) == 0 || ((next ^ bits) & 0x8000)) continue;
    const double mine = std::fabs(got - exact), theirs = std::fabs(other - exact);
    MOE_FUZZ_CHECK(mine < theirs || (mine == theirs && (bits & 1) == 0));
  }
}

/// A normal bf16 of magnitude in [2^-20, 2^20], or zero: no product or sum of a few hundred of them
/// comes near the subnormals, which vdpbf16ps flushes.
bf16 operand(moe::fuzz::FuzzInput& in) {
  const std::uint8_t kind = in.byte();
  if (kind % 8 == 0) return moe::bf16_from_bits(0);
  const auto exponent = static_cast<std::uint16_t>(127 - 20 + in.byte() % 41);
  const auto bits =
      static_cast<std::uint16_t>((kind & 0x80) << 8 | exponent << 7 | (in.byte() & 0x7f));
  return moe::bf16_from_bits(bits);
}

/// kernels::panel_product over the panels of a random [depth, cols] float matrix, from a column
/// that is a multiple of 16, against the plain loop of its order (tests/kernels).
void check_float_panels(moe::fuzz::FuzzInput& in) {
  const Index m = in.range(1, 90), depth = in.range(0, 300), cols = in.range(16, 150);
  const bool accumulate = in.flag();
  moe::RowMatrix<float> a(m, depth), w(depth, cols), c0(m, cols);
  for (moe::RowMatrix<float>* matrix : {&a, &w, &c0})
    for (Index i = 0; i < matrix->size(); ++i) matrix->data()[i] = in.unit<float>() - 0.5f;
  const moe::kernels::Panels shape{depth, cols};
  moe::AlignedBuffer<float> panels(static_cast<std::size_t>(shape.size()));
  moe::kernels::pack_panels(w.data(), cols, shape, panels.data());
  const Index col0 = 16 * in.range(0, (cols - 16) / 16);
  const Index width = in.range(std::min<Index>(16, cols - col0), cols - col0);
  moe::RowMatrix<float> want = c0, c = c0;
  // The products run on the copy product_isa() names: every run-time copy fuses its madds.
#if defined(__FMA__)
  moe::test::ref::fused_madd = true;
#else
  moe::test::ref::fused_madd = moe::kernels::product_isa() != moe::kernels::ProductIsa::compiled;
#endif
  const float* w_columns = depth > 0 ? w.data() + col0 : nullptr;  // depth 0: nothing to read
  moe::test::ref::panel_product(
      want.data() + col0, cols, m, width, depth, [&](Index i) { return a.row(i).data(); },
      w_columns, cols, accumulate);
  moe::kernels::panel_product(c.middleCols(col0, width), a, panels.data(), shape, col0, accumulate);
  MOE_FUZZ_CHECK(c == want);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  moe::fuzz::FuzzInput in(data, size);
  float x;
  const std::uint32_t raw = in.u32();
  std::memcpy(&x, &raw, sizeof x);
  check_rounding(x);

  const Index m = in.range(1, 19), depth = in.range(0, 600), cols = in.range(1, 150);
  const bool accumulate = in.flag();
  moe::RowMatrix<bf16> a(m, depth), w(depth, cols);
  moe::RowMatrix<float> c0(m, cols), w_float(depth, cols);
  for (Index i = 0; i < a.size(); ++i) a.data()[i] = operand(in);
  for (Index i = 0; i < w.size(); ++i) w_float.data()[i] = moe::to_float(w.data()[i] = operand(in));
  for (Index i = 0; i < c0.size(); ++i) c0.data()[i] = moe::to_float(operand(in));
  const moe::kernels::Bf16Panels shape{depth, cols};
  moe::AlignedBuffer<bf16> panels(static_cast<std::size_t>(shape.size()));
  moe::kernels::pack_bf16_panels(w_float.data(), cols, false, shape, panels.data());
  // A column range of whole panels, as a threaded caller's tile takes it.
  const Index panel0 = in.range(0, shape.panels() - 1);
  const Index col0 = panel0 * moe::kernels::Bf16Panels::kCols;
  const Index width = in.range(1, cols - col0);
  const moe::RowMatrix<float> want = moe::test::reference_bf16_product(a, w, c0, accumulate);

  std::vector<moe::kernels::Bf16Kernel> kernels = {moe::kernels::Bf16Kernel::portable};
  if (moe::simd::cpu_has_avx512bf16()) kernels.push_back(moe::kernels::Bf16Kernel::avx512_bf16);
  for (const moe::kernels::Bf16Kernel kernel : kernels) {
    moe::RowMatrix<float> c = c0;
    moe::kernels::bf16_product(
        c.data() + col0, cols, m, [&](Index i) { return a.row(i).data(); }, panels.data(), shape,
        col0, width, accumulate, kernel);
    for (Index i = 0; i < m; ++i)
      for (Index j = 0; j < cols; ++j) {
        const bool inside = j >= col0 && j < col0 + width;
        MOE_FUZZ_CHECK(c(i, j) == (inside ? want(i, j) : c0(i, j)));
      }
  }
  check_float_panels(in);
  return 0;
}
