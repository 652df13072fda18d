// bfloat16 storage (1 sign, 8 exponent, 7 mantissa bits): the value type of weights and
// activations held in bf16, and the library's one rounding from float to it. Arithmetic is never
// done in bf16: the kernels widen to float and sum in float (kernels/bf16_product.hpp).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include <Eigen/Core>

#include "moe/core/types.hpp"

namespace moe {

/// A bfloat16 value: Eigen's type (Eigen 3.4 and later), so a caller's Eigen matrices of it
/// (RowMatrix<bf16>, a Map over a PyTorch bf16 tensor's memory) are the library's operands as they
/// are. The library reads and writes its bits only; conversions go through to_bf16 and to_float.
using bf16 = Eigen::bfloat16;
static_assert(sizeof(bf16) == 2 && std::is_trivially_copyable_v<bf16>,
              "bf16 is two bytes of plain bits");

/// The 16 bits of a bf16: the upper half of the float it widens to.
inline std::uint16_t bits_of(bf16 value) noexcept {
  std::uint16_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

/// The bf16 of the given bits.
inline bf16 bf16_from_bits(std::uint16_t bits) noexcept {
  bf16 value;
  std::memcpy(static_cast<void*>(&value), &bits, sizeof bits);  // trivially copyable
  return value;
}

/// The float a bf16 holds, exactly: its bits in the upper half of a float.
inline float to_float(bf16 value) noexcept {
  const std::uint32_t bits = std::uint32_t{bits_of(value)} << 16;
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

/// x rounded to the nearest bf16, ties to even: PyTorch's float -> bfloat16 cast
/// (c10::round_to_nearest_even), overflowing to +-inf past the largest bf16 (3.3895e38); every NaN
/// becomes the quiet NaN 0x7fc0, as there.
inline bf16 to_bf16(float x) noexcept {
  if (x != x) return bf16_from_bits(0x7fc0u);
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  // Adding 0x7fff plus the lowest kept bit carries into the kept half exactly when the dropped
  // half is above one half ulp, or equal to it and the kept half is odd: nearest, ties to even.
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return bf16_from_bits(static_cast<std::uint16_t>(bits >> 16));
}

/// dst[i] = to_bf16(src[i]) for i < n.
inline void to_bf16(const float* src, bf16* dst, Index n) noexcept {
  for (Index i = 0; i < n; ++i) dst[i] = to_bf16(src[i]);
}

/// dst[i] = to_float(src[i]) for i < n.
inline void to_float(const bf16* src, float* dst, Index n) noexcept {
  for (Index i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

/// A row's values as bf16: converted from float, copied from bf16.
inline void to_bf16(const bf16* src, bf16* dst, Index n) noexcept {
  std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(bf16));
}

/// The value nearest to x in bf16, as a float: to_float(to_bf16(x)); a double is first rounded to
/// float, to +-inf beyond its range. NaN stays NaN.
template <class S>
float round_to_bfloat16(S value) noexcept {
  constexpr double max_float = std::numeric_limits<float>::max();
  const double v = static_cast<double>(value);
  const float x = v > max_float    ? std::numeric_limits<float>::infinity()
                  : v < -max_float ? -std::numeric_limits<float>::infinity()
                                   : static_cast<float>(value);
  return x != x ? x : to_float(to_bf16(x));
}

}  // namespace moe
