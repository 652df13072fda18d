// Counter-based random numbers: the value drawn for element i depends only on (seed, stream, i),
// so results are the same bits at any thread count and in any evaluation order.
#pragma once

#include <cmath>
#include <cstdint>

namespace moe {

/// Reproducible stream of random numbers addressed by position rather than drawn in sequence.
class CounterRng {
 public:
  /// `stream` separates independent uses of one seed (jitter, gate noise, token selection, ...).
  constexpr CounterRng(std::uint64_t seed, std::uint64_t stream) noexcept
      : key_(mix(seed ^ mix(stream + 0x632be59bd9b4e019ULL))) {}

  /// 64 random bits for position `i`: SplitMix64's finalizer over a keyed counter.
  constexpr std::uint64_t bits(std::uint64_t i) const noexcept {
    return mix(key_ + (i + 1) * 0x9e3779b97f4a7c15ULL);
  }

  /// Uniform in [0, 1) with 53 random bits.
  double uniform(std::uint64_t i) const noexcept {
    return static_cast<double>(bits(i) >> 11) * 0x1.0p-53;
  }

  /// Standard normal by Box-Muller over the uniforms at positions 2i and 2i + 1.
  double normal(std::uint64_t i) const noexcept {
    const double u1 = 1.0 - uniform(2 * i);  // in (0, 1]: log stays finite
    const double u2 = uniform(2 * i + 1);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  static constexpr std::uint64_t mix(std::uint64_t z) noexcept {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  std::uint64_t key_;
};

/// Named streams, so two features seeded alike never draw correlated numbers.
enum class RandomStream : std::uint64_t {
  jitter = 1,
  gate_noise = 2,
  token_selection = 3,
  init = 4,
  rank_seed = 5,         ///< per-rank seeds of expert parallelism
  synthetic_routing = 7  ///< moe/routing/synthetic.hpp (7: the stream the benches drew from)
};

inline CounterRng make_rng(std::uint64_t seed, RandomStream stream) noexcept {
  return CounterRng(seed, static_cast<std::uint64_t>(stream));
}

}  // namespace moe
