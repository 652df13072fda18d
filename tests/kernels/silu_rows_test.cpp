// The run-time AVX-512 forms of SiLU and SwiGLU (moe/kernels/silu_rows.hpp) and the exp under them,
// against std::exp in long double: within a few units in the last place over the whole range,
// every tail length of a row, and the special values.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "moe/kernels/silu_rows.hpp"
#include "support/catch.hpp"

using namespace moe;

#if MOE_RUNTIME_AVX512

namespace {

/// |ours - exact| in units of the last place of exact (at least the smallest normal's).
template <class S>
double ulps(S ours, long double exact) {
  const long double scale = std::max<long double>(
      std::fabs(exact) * std::numeric_limits<S>::epsilon(), std::numeric_limits<S>::min());
  return static_cast<double>(std::fabs(static_cast<long double>(ours) - exact) / scale);
}

template <class S>
std::vector<S> values(std::size_t n, double lo, double hi, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> uniform(lo, hi);
  std::vector<S> v(n);
  for (S& x : v) x = static_cast<S>(uniform(gen));
  return v;
}

long double sigmoid(long double x) { return 1.0L / (1.0L + std::exp(-x)); }

}  // namespace

TEMPLATE_TEST_CASE("silu_row and silu_row_backward on AVX-512 against long double",
                   "[kernels][activation]", float, double) {
  using S = TestType;
  if (!simd::cpu_has_avx512()) return;  // nothing to check on a CPU without AVX-512
  constexpr Index lanes = simd::avx512::kLanes<S>;
  for (Index n : {Index(1), lanes - 1, lanes, 3 * lanes + 5, Index(300)}) {
    INFO("n=" << n);
    const std::vector<S> h = values<S>(static_cast<std::size_t>(n), -30, 30, 1),
                         up = values<S>(static_cast<std::size_t>(n), -3, 3, 2),
                         dy = values<S>(static_cast<std::size_t>(n), -2, 2, 3);
    // One more element past the row, which no kernel may write.
    std::vector<S> a(static_cast<std::size_t>(n) + 1, S(7)), swiglu(a), da(dy), dup(a), dsilu(dy);
    da.push_back(S(7));
    dsilu.push_back(S(7));
    kernels::avx512::silu_row(h.data(), static_cast<const S*>(nullptr), a.data(), n);
    kernels::avx512::silu_row(h.data(), up.data(), swiglu.data(), n);
    kernels::avx512::silu_row_backward(h.data(), up.data(), da.data(), dup.data(), n);
    kernels::avx512::silu_row_backward(h.data(), static_cast<const S*>(nullptr), dsilu.data(),
                                       static_cast<S*>(nullptr), n);
    double worst = 0;
    for (std::size_t j = 0; j < static_cast<std::size_t>(n); ++j) {
      const long double x = h[j], u = up[j], d = dy[j], s = sigmoid(x);
      const long double slope = s * (1.0L + x * (1.0L - s));
      // Compared with the scale of the operands, as an error of a few roundings each.
      const long double tolerance = 8 * std::numeric_limits<S>::epsilon();
      CHECK(std::fabs(a[j] - x * s) <= tolerance * (std::fabs(x) + 1));
      CHECK(std::fabs(swiglu[j] - x * s * u) <= tolerance * (std::fabs(x * u) + 1));
      CHECK(std::fabs(dup[j] - d * x * s) <= tolerance * (std::fabs(d * x) + 1));
      CHECK(std::fabs(da[j] - d * u * slope) <= tolerance * (std::fabs(d * u) * 2 + 1));
      CHECK(std::fabs(dsilu[j] - d * slope) <= tolerance * (std::fabs(d) * 2 + 1));
      worst = std::max(worst, ulps(a[j], x * s));
    }
    CHECK(worst < 8);
    CHECK(a.back() == S(7));
    CHECK(swiglu.back() == S(7));
    CHECK(da.back() == S(7));
    CHECK(dup.back() == S(7));
    CHECK(dsilu.back() == S(7));
  }
}

TEMPLATE_TEST_CASE("the AVX-512 exp against long double over its whole range", "[kernels]", float,
                   double) {
  using S = TestType;
  if (!simd::cpu_has_avx512()) return;  // nothing to check on a CPU without AVX-512
  constexpr Index lanes = simd::avx512::kLanes<S>;
  const double top = std::is_same_v<S, float> ? 88.7 : 709.7;
  // Down to where the result is still a normal number.
  const double bottom = std::is_same_v<S, float> ? -87.3 : -708.3;
  const std::vector<S> x = values<S>(4096 * lanes, bottom, top, 4);
  double worst = 0;
  for (std::size_t i = 0; i < x.size(); i += static_cast<std::size_t>(lanes)) {
    S out[64 / sizeof(S)];
    kernels::avx512::detail::exp_into(x.data() + i, out);
    for (Index l = 0; l < lanes; ++l)
      worst = std::max(worst, ulps(out[l], std::exp(static_cast<long double>(x[i + l]))));
  }
  CHECK(worst <= 2);
  // Special values: exp(0) = 1 exactly, +inf stays +inf, -inf and far below go to (almost) 0,
  // NaN stays NaN.
  const S inf = std::numeric_limits<S>::infinity();
  S special[64 / sizeof(S)] = {S(0), inf, -inf, S(-1000), std::numeric_limits<S>::quiet_NaN()};
  S out[64 / sizeof(S)];
  kernels::avx512::detail::exp_into(special, out);
  CHECK(out[0] == S(1));
  CHECK(out[1] == inf);
  CHECK(out[2] >= S(0));
  CHECK(out[2] < std::numeric_limits<S>::min());
  CHECK(out[3] < std::numeric_limits<S>::min());
  CHECK(std::isnan(out[4]));
}

#endif
