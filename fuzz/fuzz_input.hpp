// What every fuzz target shares: a reader that turns libFuzzer's bytes into sizes, choices and
// the values that break numerics (ties, zeros, subnormals, the largest finite magnitudes), and a
// check that stops the run with the failed invariant.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include <moe/core/types.hpp>

/// Stops the fuzzer on a broken invariant: libFuzzer saves the input that broke it.
#define MOE_FUZZ_CHECK(condition)                                                            \
  do {                                                                                       \
    if (!(condition)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

namespace moe::fuzz {

/// Reads the fuzzer's bytes front to back; past the end every read gives zero bits, so each
/// input, however short, is one complete case.
class FuzzInput {
 public:
  FuzzInput(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::uint8_t byte() { return at_ < size_ ? data_[at_++] : 0; }

  std::uint32_t u32() {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = v << 8 | byte();
    return v;
  }

  /// An integer in [lo, hi].
  Index range(Index lo, Index hi) {
    const auto span = static_cast<std::uint64_t>(hi - lo) + 1;
    return lo + static_cast<Index>(u32() % span);
  }

  bool flag() { return byte() & 1; }

  template <class Enum>
  Enum pick(int count) {
    return static_cast<Enum>(byte() % count);
  }

  /// A value of S: mostly ordinary magnitudes, often a tie with the previous value, and the edges
  /// of the finite range (zero, subnormal, the most negative logits a softmax or sigmoid sees,
  /// the largest magnitudes). Never NaN or infinity: entry points refuse those, which the
  /// targets test by asking for them explicitly.
  template <class S>
  S value() {
    using L = std::numeric_limits<S>;
    const std::uint8_t kind = byte();
    S v;
    switch (kind % 16) {
      case 0:
        v = previous<S>();
        break;
      case 1:
        v = S(0);
        break;
      case 2:
        v = L::denorm_min();
        break;
      case 3:
        v = -L::min() / S(2);
        break;
      case 4:
        v = L::max();
        break;
      case 5:
        v = L::lowest();
        break;
      case 6:
        v = S(-60);
        break;  // sigmoid below float's normal range once summed
      case 7:
        v = S(-750);
        break;  // exp underflows in double
      case 8:
        v = S(1e30);
        break;
      default:
        v = static_cast<S>((static_cast<double>(u32()) / 4294967295.0 - 0.5) * 16.0);
    }
    previous_ = static_cast<double>(v);
    return v;
  }

  /// A value in [0, 1], with exact 0 and 1 often.
  template <class S>
  S unit() {
    const std::uint8_t kind = byte();
    if (kind % 8 == 0) return S(0);
    if (kind % 8 == 1) return S(1);
    return static_cast<S>(static_cast<double>(u32()) / 4294967295.0);
  }

 private:
  template <class S>
  S previous() const {
    const double p = previous_;
    return p > static_cast<double>(std::numeric_limits<S>::max()) ||
                   p < static_cast<double>(std::numeric_limits<S>::lowest())
               ? S(0)
               : static_cast<S>(p);
  }

  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
  double previous_ = 0.0;
};

/// |a - b| <= tol * (1 + max(|a|, |b|)).
template <class S>
bool close(S a, S b, double tol) {
  const double x = static_cast<double>(a), y = static_cast<double>(b);
  const double scale = 1.0 + (x < 0 ? -x : x) + (y < 0 ? -y : y);
  const double diff = x > y ? x - y : y - x;
  return diff <= tol * scale;
}

}  // namespace moe::fuzz
