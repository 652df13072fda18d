// Products of bfloat16 operands summed in float: c (+)= a W with a's rows in bf16 and W (an
// expert's weights) in bf16 panels, the layout vdpbf16ps reads. Two kernels with the same bits on
// normal values: AVX512-BF16 (vdpbf16ps, two products per float lane and instruction) where the
// CPU has it, and a portable one that widens to float and adds in the same order elsewhere.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "moe/core/bfloat16.hpp"
#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/kernels/simd.hpp"

namespace moe::kernels {

/// The panel layout of a [depth, cols] right operand in bf16: panels of kCols columns, each
/// [ceil(depth / 2), kCols, 2], the values of depth rows 2q and 2q + 1 of a column side by side, so
/// one 64-byte load holds the pairs of 16 columns (one vdpbf16ps operand) and a panel is read front
/// to back once per group of rows. Zeros past the last column and below an odd last row. Each
/// panel starts on a cache line.
struct Bf16Panels {
  /// Three registers of 16 float sums per row: a tile of 8 rows x 48 columns holds 24 of the 32.
  static constexpr Index kCols = 48;

  Index depth = 0;  ///< rows of the operand: the products' depth
  Index cols = 0;   ///< columns of the operand: the products' width

  Index pairs() const noexcept { return (depth + 1) / 2; }
  Index panels() const noexcept { return (cols + kCols - 1) / kCols; }
  /// bf16 values of one panel.
  Index panel_size() const noexcept { return pairs() * kCols * 2; }
  /// bf16 values of all panels.
  Index size() const noexcept { return panels() * panel_size(); }
};

/// panels = bf16 of w in the layout of `shape` (to_bf16: nearest, ties to even): w(p, j) =
/// w[p * stride + j] (row-major [depth, cols]), or w[j * stride + p] when `transposed` (the
/// transpose of a row-major [cols, depth]), each source row read in order. `panels` holds
/// shape.size() values, 64-byte aligned. Runs on the calling thread: callers spread whole
/// matrices over a team (Bf16ExpertWeights::refresh).
template <class S>
void pack_bf16_panels(const S* w, Index stride, bool transposed, const Bf16Panels& shape,
                      bf16* panels) {
  constexpr Index kCols = Bf16Panels::kCols;
  const auto round = [](S v) {
    if constexpr (std::is_same_v<S, bf16>)
      return v;
    else
      return to_bf16(static_cast<float>(v));
  };
  const bf16 zero = bf16_from_bits(0);
  const Index pairs = shape.pairs();
  for (Index panel = 0; panel < shape.panels(); ++panel) {
    bf16* out = panels + panel * shape.panel_size();
    const Index j0 = panel * kCols, width = std::min(kCols, shape.cols - j0);
    if (transposed) {
      for (Index j = 0; j < width; ++j) {
        const S* column = w + (j0 + j) * stride;
        for (Index p = 0; p < shape.depth; ++p)
          out[(p / 2 * kCols + j) * 2 + p % 2] = round(column[p]);
        if (shape.depth % 2 != 0) out[((pairs - 1) * kCols + j) * 2 + 1] = zero;
      }
    } else {
      for (Index q = 0; q < pairs; ++q) {
        const S* even = w + 2 * q * stride + j0;
        bf16* pair = out + q * kCols * 2;
        if (2 * q + 1 < shape.depth) {
          const S* odd = even + stride;
          for (Index j = 0; j < width; ++j) {
            pair[2 * j] = round(even[j]);
            pair[2 * j + 1] = round(odd[j]);
          }
        } else {
          for (Index j = 0; j < width; ++j) {
            pair[2 * j] = round(even[j]);
            pair[2 * j + 1] = zero;
          }
        }
      }
    }
    for (Index q = 0; q < pairs; ++q)  // columns past the operand's last
      std::fill(out + (q * kCols + width) * 2, out + (q + 1) * kCols * 2, zero);
  }
}

/// The kernels of the bf16 products.
enum class Bf16Kernel {
  portable,    ///< widen to float, the same additions in the same order: any CPU
  avx512_bf16  ///< vdpbf16ps: a CPU with AVX512-BF16 (cpu_has_avx512bf16)
};

/// The kernel the bf16 products take, decided on first use: AVX512-BF16 where the build compiled it
/// (MOE_AVX512BF16) and the CPU runs it, else the portable one. The environment variable
/// MOE_BF16_KERNEL names one instead: `portable` or `avx512_bf16`, the latter refused where the
/// CPU lacks it.
inline Bf16Kernel bf16_kernel() {
  static const Bf16Kernel kernel = [] {
    const char* asked = std::getenv("MOE_BF16_KERNEL");
    const std::string name = asked == nullptr ? "" : asked;
    if (name.empty())
      return simd::cpu_has_avx512bf16() ? Bf16Kernel::avx512_bf16 : Bf16Kernel::portable;
    require(name == "portable" || name == "avx512_bf16", "MOE_BF16_KERNEL",
            "'portable' or 'avx512_bf16'", "'" + name + "'");
    if (name == "portable") return Bf16Kernel::portable;
    require(simd::cpu_has_avx512bf16(), "MOE_BF16_KERNEL=avx512_bf16",
            "a CPU with AVX512-BF16 (and a GCC or Clang x86-64 build)", "a CPU without it");
    return Bf16Kernel::avx512_bf16;
  }();
  return kernel;
}

namespace detail::bf16_tiles {

/// Rows of a register tile, and depth rows of a panel block every group of rows runs over while
/// it stays in L1 (128 pairs x 48 columns: 24 KiB); each element's sum runs over one block from 0,
/// the blocks' sums added to c in order. Bits depend on kDepth.
inline constexpr Index kRows = 8;
inline constexpr Index kDepth = 256;

/// One tile's arguments: c[i, j] (+)= sum_{p < depth} a[i][p] * panel(p, j) for i < rows <= kRows,
/// j < width <= 48; `panel` points at the block's first pair, a[i] at its row's first value of the
/// block. The sum of each element starts at 0 and takes, for each pair (p, p + 1) in order, the
/// product of row p + 1, then that of row p (vdpbf16ps's order); then it is stored or added to c.
struct Tile {
  float* c;
  Index c_stride;
  Index width;
  const bf16* const* a;
  Index depth;
  const bf16* panel;
  bool accumulate;
};

/// The portable tile: each product exact in float (8-bit by 8-bit significands), each addition
/// rounded to nearest even, so it gives vdpbf16ps's bits wherever no value is subnormal.
template <int Rows>
void portable_tile(const Tile& t) {
  constexpr Index kCols = Bf16Panels::kCols;
  float sums[Rows][kCols] = {};
  for (Index p = 0; p < t.depth; p += 2) {
    const bf16* pairs = t.panel + p / 2 * kCols * 2;
    const bool second = p + 1 < t.depth;
    for (int i = 0; i < Rows; ++i) {
      const float a0 = to_float(t.a[i][p]);
      const float a1 = second ? to_float(t.a[i][p + 1]) : 0.0f;
      for (Index j = 0; j < kCols; ++j) {
        const float high = a1 * to_float(pairs[2 * j + 1]);
        const float low = a0 * to_float(pairs[2 * j]);
        sums[i][j] = (sums[i][j] + high) + low;
      }
    }
  }
  for (int i = 0; i < Rows; ++i) {
    float* out = t.c + i * t.c_stride;
    for (Index j = 0; j < t.width; ++j) out[j] = t.accumulate ? out[j] + sums[i][j] : sums[i][j];
  }
}

}  // namespace detail::bf16_tiles

}  // namespace moe::kernels

#if MOE_AVX512BF16
MOE_BEGIN_AVX512BF16
namespace moe::kernels::detail::bf16_tiles {

/// The AVX512-BF16 tile: Rows x 3 registers of sums, three loads of pairs and Rows broadcasts per
/// pair of depth rows; the panel's lines kAhead values on are prefetched (a decode step streams
/// the panels from memory: 1.3-1.5x faster at 1-8 rows with it, 16 pairs ahead measured best).
template <int Rows>
void avx512_bf16_tile(const Tile& t) {
  namespace v = simd::avx512bf16;
  constexpr Index kCols = Bf16Panels::kCols;
  constexpr Index kAhead = 16 * 2 * kCols;
  v::Sums sums[Rows][3];
  MOE_UNROLL(8)
  for (int i = 0; i < Rows; ++i)
    for (int r = 0; r < 3; ++r) sums[i][r] = v::zero();
  const Index whole = t.depth / 2;
  const bf16* pairs = t.panel;
  for (Index q = 0; q < whole; ++q, pairs += 2 * kCols) {
    const v::Pairs w0 = v::load_pairs(pairs);
    const v::Pairs w1 = v::load_pairs(pairs + 32);
    const v::Pairs w2 = v::load_pairs(pairs + 64);
    for (Index line = 0; line < 3; ++line) simd::prefetch<3>(pairs + kAhead + 32 * line);
    MOE_UNROLL(8)
    for (int i = 0; i < Rows; ++i) {
      const v::Pairs a = v::broadcast_pair(t.a[i] + 2 * q);
      sums[i][0] = v::dot_pairs(sums[i][0], a, w0);
      sums[i][1] = v::dot_pairs(sums[i][1], a, w1);
      sums[i][2] = v::dot_pairs(sums[i][2], a, w2);
    }
  }
  if (t.depth % 2 != 0) {  // the last row alone, its pair's other half 0
    const v::Pairs w0 = v::load_pairs(pairs);
    const v::Pairs w1 = v::load_pairs(pairs + 32);
    const v::Pairs w2 = v::load_pairs(pairs + 64);
    MOE_UNROLL(8)
    for (int i = 0; i < Rows; ++i) {
      const v::Pairs a = v::broadcast_first(t.a[i] + t.depth - 1);
      sums[i][0] = v::dot_pairs(sums[i][0], a, w0);
      sums[i][1] = v::dot_pairs(sums[i][1], a, w1);
      sums[i][2] = v::dot_pairs(sums[i][2], a, w2);
    }
  }
  MOE_UNROLL(8)
  for (int i = 0; i < Rows; ++i)
    for (int r = 0; r < 3; ++r) {
      const Index count = std::min<Index>(v::kLanes, t.width - r * v::kLanes);
      if (count <= 0) break;
      float* out = t.c + i * t.c_stride + r * v::kLanes;
      const v::Sums value =
          t.accumulate ? v::add(v::load_first(out, count), sums[i][r]) : sums[i][r];
      v::store_first(out, value, count);
    }
}

}  // namespace moe::kernels::detail::bf16_tiles
MOE_END_AVX512BF16
#endif

namespace moe::kernels {

namespace detail::bf16_tiles {

/// The tile of `rows` rows on `kernel`.
inline void run_tile(Bf16Kernel kernel, Index rows, const Tile& t) {
#if MOE_AVX512BF16
  if (kernel == Bf16Kernel::avx512_bf16) {
    switch (rows) {
      case 1:
        return avx512_bf16_tile<1>(t);
      case 2:
        return avx512_bf16_tile<2>(t);
      case 3:
        return avx512_bf16_tile<3>(t);
      case 4:
        return avx512_bf16_tile<4>(t);
      case 5:
        return avx512_bf16_tile<5>(t);
      case 6:
        return avx512_bf16_tile<6>(t);
      case 7:
        return avx512_bf16_tile<7>(t);
      default:
        return avx512_bf16_tile<8>(t);
    }
  }
#endif
  (void)kernel;
  switch (rows) {
    case 1:
      return portable_tile<1>(t);
    case 2:
      return portable_tile<2>(t);
    case 3:
      return portable_tile<3>(t);
    case 4:
      return portable_tile<4>(t);
    case 5:
      return portable_tile<5>(t);
    case 6:
      return portable_tile<6>(t);
    case 7:
      return portable_tile<7>(t);
    default:
      return portable_tile<8>(t);
  }
}

}  // namespace detail::bf16_tiles

/// c[i, j] (+)= sum_p a_row(i)[p] * W(p, col0 + j) for i < m, j < cols, p < W's depth: a_row(i)
/// gives row i of the bf16 left operand; W the bf16 panels of `shape`, col0 a multiple of
/// Bf16Panels::kCols. Each element is summed in float from 0 over each depth block of
/// bf16_tiles::kDepth in pairs of rows (vdpbf16ps's order, see Tile), the blocks added to c in
/// order: the bits depend on the shapes alone, never on how callers split rows or columns.
/// Callers that split a product over threads pass `kernel` from bf16_kernel() called outside the
/// team, so that a refused MOE_BF16_KERNEL throws on the calling thread.
template <class ARow>
void bf16_product(float* c, Index c_stride, Index m, const ARow& a_row, const bf16* panels,
                  const Bf16Panels& shape, Index col0, Index cols, bool accumulate,
                  Bf16Kernel kernel = bf16_kernel()) {
  using namespace detail::bf16_tiles;
  constexpr Index kCols = Bf16Panels::kCols;
  if (shape.depth == 0) {
    if (!accumulate)
      for (Index i = 0; i < m; ++i) std::fill(c + i * c_stride, c + i * c_stride + cols, 0.0f);
    return;
  }
  const bf16* rows[kRows];
  for (Index j = 0; j < cols; j += kCols) {
    const Index width = std::min(kCols, cols - j);
    const bf16* panel = panels + (col0 + j) / kCols * shape.panel_size();
    for (Index p0 = 0; p0 < shape.depth; p0 += kDepth) {
      const Index depth = std::min(kDepth, shape.depth - p0);
      for (Index i = 0; i < m; i += kRows) {
        const Index count = std::min(kRows, m - i);
        for (Index r = 0; r < count; ++r) rows[r] = a_row(i + r) + p0;
        run_tile(kernel, count,
                 Tile{c + i * c_stride + j, c_stride, width, rows, depth, panel + p0 * kCols,
                      accumulate || p0 > 0});
      }
    }
  }
}

}  // namespace moe::kernels
