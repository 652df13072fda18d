// bf16_what_if: hand-worked flips under each rounding, random routers against a plain-loop
// reference whose logits are exact in both precisions, and bad input.
#include <algorithm>
#include <random>
#include <vector>

#include "moe/health/bf16_what_if.hpp"
#include "support/bad_input.hpp"
#include "support/catch.hpp"

using moe::Index;

namespace {

// Near 1 the bfloat16 grid is 1, 1 + 2^-7, ... (7 stored fraction bits): both values round to
// 1 + 2^-7, the second is the larger before rounding.
constexpr double kBelow = 1.0 + 3.0 / 512;    // 1.005859375
constexpr double kAbove = 1.0 + 3.5 / 512;    // 1.0068359375
constexpr double kRounded = 1.0 + 1.0 / 128;  // both, in bfloat16

moe::Router<double> two_expert_router(double w0, double w1) {
  moe::RouterConfig c;
  c.num_experts = 2;
  c.hidden = 2;
  c.top_k = 1;
  moe::Router<double> router(c);
  router.weight << w0, 0, 0, w1;
  return router;
}

}  // namespace

TEST_CASE("bf16_what_if: a tie made by rounding x flips the token to the lower expert",
          "[health][bf16]") {
  REQUIRE(moe::round_to_bfloat16(kBelow) == static_cast<float>(kRounded));
  REQUIRE(moe::round_to_bfloat16(kAbove) == static_cast<float>(kRounded));
  const moe::Router<double> router = two_expert_router(1, 1);
  moe::RowMatrix<double> x(2, 2);
  x << kBelow, kAbove,  // expert 1 wins; rounded, the two tie and expert 0 wins
      2, 1;             // expert 0 either way
  for (auto rounded : {moe::Bf16Operands::x, moe::Bf16Operands::both}) {
    const moe::Bf16WhatIf w = moe::bf16_what_if<double>(router, x, rounded);
    CHECK(w.tokens == 2);
    CHECK(w.flipped_tokens == 1);
    CHECK(w.flipped_choices == 1);
    CHECK(w.lost == std::vector<Index>{0, 1});
    CHECK(w.gained == std::vector<Index>{1, 0});
  }
  // The weights are 1 and 0, exact in bfloat16: rounding them changes nothing.
  const moe::Bf16WhatIf w = moe::bf16_what_if<double>(router, x, moe::Bf16Operands::weights);
  CHECK(w.flipped_tokens == 0);
  CHECK(w.lost == std::vector<Index>{0, 0});
}

TEST_CASE("bf16_what_if: rounding the weights flips what rounding x cannot", "[health][bf16]") {
  const moe::Router<double> router = two_expert_router(kBelow, kAbove);
  const moe::RowMatrix<double> x = moe::RowMatrix<double>::Ones(3, 2);
  CHECK(moe::bf16_what_if<double>(router, x, moe::Bf16Operands::x).flipped_tokens == 0);
  const moe::Bf16WhatIf w = moe::bf16_what_if<double>(router, x, moe::Bf16Operands::weights);
  CHECK(w.flipped_tokens == 3);
  CHECK(w.flipped_choices == 3);
  CHECK(w.lost == std::vector<Index>{0, 3});
  CHECK(w.gained == std::vector<Index>{3, 0});
}

TEST_CASE("bf16_what_if matches a plain-loop reference on random routers", "[health][bf16]") {
  // x and W take 12-bit values in [1, 2): x W^T over d = 4 is exact in double, and the rounded
  // operands' (8 bits each) products and sums are exact in float, so the reference's plain loops
  // give the library's logits to the bit and the same selections.
  const Index tokens = 300, experts = 8, d = 4, k = 2;
  std::mt19937 gen(7);
  std::uniform_int_distribution<int> twelve_bits(0, 4095);
  const auto draw = [&] { return 1.0 + twelve_bits(gen) / 4096.0; };
  moe::RouterConfig c;
  c.num_experts = experts;
  c.hidden = d;
  c.top_k = k;
  moe::Router<double> router(c);
  for (Index i = 0; i < router.weight.size(); ++i) router.weight.data()[i] = draw();
  moe::RowMatrix<double> x(tokens, d);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = draw();

  const auto top_k_set = [&](const std::vector<double>& z) {
    std::vector<Index> order(static_cast<std::size_t>(experts));
    for (Index e = 0; e < experts; ++e) order[static_cast<std::size_t>(e)] = e;
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) {
      return z[static_cast<std::size_t>(a)] > z[static_cast<std::size_t>(b)];
    });
    std::vector<Index> set(order.begin(), order.begin() + k);
    std::sort(set.begin(), set.end());
    return set;
  };
  for (auto rounded : {moe::Bf16Operands::x, moe::Bf16Operands::weights, moe::Bf16Operands::both}) {
    const bool round_x = rounded != moe::Bf16Operands::weights;
    const bool round_w = rounded != moe::Bf16Operands::x;
    const auto maybe = [](bool round, double v) {
      return round ? static_cast<double>(moe::round_to_bfloat16(v)) : v;
    };
    moe::Bf16WhatIf expected;
    expected.lost.assign(experts, 0);
    expected.gained.assign(experts, 0);
    for (Index t = 0; t < tokens; ++t) {
      std::vector<double> z(experts, 0.0), zr(experts, 0.0);
      for (Index e = 0; e < experts; ++e)
        for (Index p = 0; p < d; ++p) {
          z[static_cast<std::size_t>(e)] += x(t, p) * router.weight(e, p);
          zr[static_cast<std::size_t>(e)] +=
              maybe(round_x, x(t, p)) * maybe(round_w, router.weight(e, p));
        }
      const std::vector<Index> before = top_k_set(z), after = top_k_set(zr);
      Index swapped = 0;
      for (Index e : before)
        if (!std::binary_search(after.begin(), after.end(), e))
          ++swapped, ++expected.lost[static_cast<std::size_t>(e)];
      for (Index e : after)
        if (!std::binary_search(before.begin(), before.end(), e))
          ++expected.gained[static_cast<std::size_t>(e)];
      expected.flipped_tokens += swapped > 0 ? 1 : 0;
      expected.flipped_choices += swapped;
    }
    const moe::Bf16WhatIf got = moe::bf16_what_if<double>(router, x, rounded);
    INFO("rounded " << static_cast<int>(rounded));
    CHECK(got.tokens == tokens);
    CHECK(got.flipped_tokens == expected.flipped_tokens);
    CHECK(got.flipped_choices == expected.flipped_choices);
    CHECK(got.lost == expected.lost);
    CHECK(got.gained == expected.gained);
    CHECK(expected.flipped_tokens > 0);  // the case exercises flips
  }
}

TEST_CASE("bf16_what_if names bad input", "[health][bf16][bad_input]") {
  const moe::Router<double> router = two_expert_router(1, 1);
  moe::RowMatrix<double> wide(1, 3);
  wide.setOnes();
  moe::test::require_rejects([&] { moe::bf16_what_if<double>(router, wide, moe::Bf16Operands::x); },
                             "x", "[*, 2]", "[1, 3]");
  moe::RowMatrix<double> nan(1, 2);
  nan << 1, std::nan("");
  moe::test::require_rejects([&] { moe::bf16_what_if<double>(router, nan, moe::Bf16Operands::x); },
                             "x", "finite", "nan at row 0, column 1");
}
