// DroplessPlan and permute/unpermute against std::stable_sort and per-row loops.
#include <algorithm>
#include <vector>

#include "moe/dispatch/dropless_permute.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "support/catch.hpp"
#include "support/dropless_reference.hpp"
#include "support/finite_difference.hpp"
#include "support/random_matrix.hpp"

using namespace moe;
using moe::test::random_expert_ids;
using moe::test::random_matrix;
using moe::test::RowMatrixD;

TEST_CASE("dropless plan matches a stable sort, with padding to the block size",
          "[dropless][plan]") {
  for (Index experts : {1, 3, 8, 17}) {
    for (Index block : {1, 4, 128}) {
      const Index tokens = 37, k = std::min<Index>(2, experts);
      const ExpertIdMatrix ids =
          random_expert_ids(tokens, k, experts, 7 + static_cast<unsigned>(experts));
      // The ids as given, and as the left columns of a wider matrix (outer stride != k).
      ExpertIdMatrix wide = ExpertIdMatrix::Constant(tokens, k + 3, -1);
      wide.leftCols(k) = ids;
      const DroplessPlan strided = make_dropless_plan(wide.leftCols(k), experts, block);
      const DroplessPlan plan = make_dropless_plan(ids, experts, block);
      REQUIRE(strided.sorted_pairs == plan.sorted_pairs);
      REQUIRE(strided.pair_row == plan.pair_row);
      const std::vector<Index> order = test::reference_sorted_pairs(ids);
      REQUIRE(plan.num_pairs() == tokens * k);
      Index padded = 0, total = 0;
      for (Index e = 0; e < experts; ++e) {
        Index count = 0;
        for (Index p = 0; p < tokens * k; ++p) count += ids(p / k, p % k) == e;
        REQUIRE(plan.tokens_per_expert[e] == count);
        REQUIRE(plan.offsets[e] == total);
        REQUIRE(plan.padded_offsets[e] == padded);
        total += count;
        padded += (count + block - 1) / block * block;
      }
      REQUIRE(plan.padded_rows() == padded);
      for (Index i = 0; i < tokens * k; ++i) {
        REQUIRE(plan.sorted_pairs[i] == order[static_cast<std::size_t>(i)]);
        const Index p = order[static_cast<std::size_t>(i)];
        const ExpertId e = ids(p / k, p % k);
        REQUIRE(plan.pair_row[p] == plan.padded_offsets[e] + (i - plan.offsets[e]));
      }
    }
  }
}

TEST_CASE("dropless plan hand case: MegaBlocks round_up and padded rows", "[dropless][plan]") {
  // Tokens 0..3, k = 2: experts (2,0) (0,1) (2,1) (0,2) over E = 3, B = 4.
  ExpertIdMatrix ids(4, 2);
  ids << 2, 0, 0, 1, 2, 1, 0, 2;
  const DroplessPlan plan = make_dropless_plan(ids, 3, 4);
  REQUIRE(plan.tokens_per_expert == (IndexVector(3) << 3, 2, 3).finished());
  REQUIRE(plan.offsets == (IndexVector(4) << 0, 3, 5, 8).finished());
  REQUIRE(plan.padded_offsets == (IndexVector(4) << 0, 4, 8, 12).finished());
  // Pairs (t*k + j) sorted by expert, stable: e0: 1, 2, 6; e1: 3, 5; e2: 0, 4, 7.
  REQUIRE(plan.sorted_pairs == (IndexVector(8) << 1, 2, 6, 3, 5, 0, 4, 7).finished());
  REQUIRE(plan.pair_row == (IndexVector(8) << 8, 0, 1, 4, 9, 5, 2, 10).finished());
  REQUIRE(round_up(0, 128) == 0);
  REQUIRE(round_up(1, 128) == 128);
  REQUIRE(round_up(128, 128) == 128);
  REQUIRE(round_up(129, 128) == 256);
}

TEST_CASE("dropless plan edge cases and bad input", "[dropless][plan][errors]") {
  SECTION("no tokens") {
    const DroplessPlan plan = make_dropless_plan(ExpertIdMatrix(0, 2), 4, 8);
    REQUIRE(plan.padded_rows() == 0);
    REQUIRE(plan.tokens_per_expert.sum() == 0);
  }
  SECTION("all tokens on one expert, block larger than any group") {
    ExpertIdMatrix ids = ExpertIdMatrix::Constant(5, 1, 2);
    const DroplessPlan plan = make_dropless_plan(ids, 4, 1000);
    REQUIRE(plan.padded_offsets == (IndexVector(5) << 0, 0, 0, 1000, 1000).finished());
    for (Index t = 0; t < 5; ++t) REQUIRE(plan.pair_row[t] == t);
  }
  SECTION("bad input") {
    ExpertIdMatrix ids(2, 2);
    ids << 0, 1, 3, 0;
    REQUIRE_THROWS_AS(make_dropless_plan(ids, 3, 4), Error);
    REQUIRE_THROWS_WITH(make_dropless_plan(ids, 3, 4),
                        Catch::Contains("expert_ids") && Catch::Contains("row 1"));
    ids(1, 0) = -2;  // -1 is an unused slot; any other negative id is an error
    REQUIRE_THROWS_WITH(make_dropless_plan(ids, 3, 4),
                        Catch::Contains("or -1 (unused)") && Catch::Contains("-2 at row 1"));
    ids(1, 0) = 2;
    REQUIRE_THROWS_WITH(make_dropless_plan(ids, 0, 4), Catch::Contains("num_experts"));
    REQUIRE_THROWS_WITH(make_dropless_plan(ids, 3, 0), Catch::Contains("block_size"));
  }
}

TEST_CASE("permute and unpermute match row loops; backward is the adjoint", "[dropless][permute]") {
  const Index tokens = 23, k = 3, experts = 5, d = 6;
  const RowMatrixD x = random_matrix(tokens, d, 4);
  for (bool unused : {false, true})
    for (Index block : {1, 4, 64}) {
      INFO("unused slots " << unused << ", block " << block);
      // With unused slots: every third pair, and all of token 5's (a token routed nowhere).
      ExpertIdMatrix ids = random_expert_ids(tokens, k, experts, 3);
      RowMatrixD gates = random_matrix(tokens, k, 5);
      for (Index p = 0; unused && p < tokens * k; ++p)
        if (p % 3 == 1 || p / k == 5) ids(p / k, p % k) = kUnusedSlot, gates(p / k, p % k) = 0;
      const DroplessPlan plan = make_dropless_plan(ids, experts, block);
      const Index rows = plan.padded_rows();
      RowMatrixD permuted(rows, d);
      dropless_permute<double>(x, plan, permuted);
      RowMatrixD expected = RowMatrixD::Zero(rows, d);
      for (Index p = 0; p < tokens * k; ++p) {
        REQUIRE((plan.pair_row[p] < 0) == (ids(p / k, p % k) == kUnusedSlot));
        if (plan.pair_row[p] >= 0) expected.row(plan.pair_row[p]) = x.row(p / k);
      }
      REQUIRE(plan.num_routed() == (ids.array() >= 0).count());
      REQUIRE(permuted == expected);

      // unpermute(permute(x)) with gates summing to one per token is x (a token routed nowhere: 0).
      RowMatrixD uniform = RowMatrixD::Zero(tokens, k), back(tokens, d);
      RowMatrixD expected_back = x;
      for (Index t = 0; t < tokens; ++t) {
        const Index used = (ids.row(t).array() >= 0).count();
        for (Index j = 0; j < k; ++j) uniform(t, j) = ids(t, j) >= 0 ? 1.0 / used : 0.0;
        if (used == 0) expected_back.row(t).setZero();
      }
      dropless_unpermute<double>(permuted, uniform, plan, back);
      REQUIRE(test::relative_error(back, expected_back) <= 1e-15);

      const RowMatrixD y = random_matrix(rows, d, 6);
      RowMatrixD out(tokens, d);
      dropless_unpermute<double>(y, gates, plan, out);
      RowMatrixD out_ref = RowMatrixD::Zero(tokens, d);
      for (Index t = 0; t < tokens; ++t)
        for (Index j = 0; j < k; ++j)
          if (ids(t, j) >= 0) out_ref.row(t) += gates(t, j) * y.row(plan.pair_row[t * k + j]);
      REQUIRE(test::relative_error(out, out_ref) <= 1e-15);

      // Adjoint identities: <permute(x), g> = <x, permute_backward(g)>, and unpermute's gradients
      // against central differences of <unpermute(y, gates), grad_out>.
      const RowMatrixD g = random_matrix(rows, d, 8);
      RowMatrixD gx(tokens, d);
      dropless_permute_backward<double>(g, plan, gx);
      REQUIRE(std::abs((permuted.cwiseProduct(g)).sum() - (x.cwiseProduct(gx)).sum()) <=
              1e-12 * g.norm() * x.norm());

      const RowMatrixD grad_out = random_matrix(tokens, d, 9);
      RowMatrixD grad_y(rows, d), grad_gates(tokens, k);
      dropless_unpermute_backward<double>(grad_out, y, gates, plan, grad_y, grad_gates);
      RowMatrixD y_var = y, gates_var = gates;
      auto loss = [&] {
        RowMatrixD o(tokens, d);
        dropless_unpermute<double>(y_var, gates_var, plan, o);
        return o.cwiseProduct(grad_out).sum();
      };
      RowMatrixD numeric_y = test::numerical_gradient(y_var, loss);
      RowMatrixD numeric_gates = test::numerical_gradient(gates_var, loss);
      REQUIRE(test::relative_error(grad_y, numeric_y) <= 1e-8);
      REQUIRE(test::relative_error(grad_gates, numeric_gates) <= 1e-8);
    }
}

TEST_CASE("permute checks shapes", "[dropless][permute][errors]") {
  ExpertIdMatrix ids(2, 1);
  ids << 0, 1;
  const DroplessPlan plan = make_dropless_plan(ids, 2, 2);
  RowMatrixD x(3, 4), out(4, 4), bad(3, 4), gates(2, 1), out_t(2, 4);
  REQUIRE_THROWS_WITH(dropless_permute<double>(x, plan, out), Catch::Contains("x"));
  RowMatrixD x2(2, 4);
  REQUIRE_THROWS_WITH(dropless_permute<double>(x2, plan, bad), Catch::Contains("out"));
  REQUIRE_THROWS_WITH(dropless_unpermute<double>(bad, gates, plan, out_t), Catch::Contains("y"));
  RowMatrixD gates_bad(2, 2);
  REQUIRE_THROWS_WITH(dropless_unpermute<double>(out, gates_bad, plan, out_t),
                      Catch::Contains("gates"));
  REQUIRE_THROWS_WITH(dropless_permute_backward<double>(bad, plan, out_t),
                      Catch::Contains("grad_out"));
  RowMatrixD gg(2, 1), gy(4, 4);
  REQUIRE_THROWS_WITH(dropless_unpermute_backward<double>(out_t, out, gates, plan, bad, gg),
                      Catch::Contains("grad_y"));
  REQUIRE_THROWS_WITH(dropless_unpermute_backward<double>(out_t, out, gates, plan, gy, gates_bad),
                      Catch::Contains("grad_gates"));
}

TEST_CASE("dropless plan leaves unused slots (-1) out: no row, no count, stable order kept",
          "[dropless][plan][unused]") {
  const Index tokens = 29, k = 3, experts = 6;
  ExpertIdMatrix ids = random_expert_ids(tokens, k, experts, 17);
  for (Index p = 0; p < tokens * k; p += 4) ids(p / k, p % k) = kUnusedSlot;
  const DroplessPlan plan = make_dropless_plan(ids, experts, 4);
  // Reference: the stable sort of the used pairs alone.
  std::vector<Index> used;
  for (Index p : test::reference_sorted_pairs(ids))
    if (ids(p / k, p % k) != kUnusedSlot) used.push_back(p);
  REQUIRE(plan.num_routed() == static_cast<Index>(used.size()));
  REQUIRE(plan.num_pairs() == tokens * k);
  REQUIRE(plan.sorted_pairs.size() == static_cast<Index>(used.size()));
  for (std::size_t i = 0; i < used.size(); ++i)
    REQUIRE(plan.sorted_pairs[static_cast<Index>(i)] == used[i]);
  for (Index e = 0; e < experts; ++e)
    REQUIRE(plan.tokens_per_expert[e] == (ids.array() == e).count());
  for (Index p = 0; p < tokens * k; ++p)
    REQUIRE((plan.pair_row[p] == -1) == (ids(p / k, p % k) == kUnusedSlot));
}

TEST_CASE("padding as unused slots: without_padding keeps padded tokens out of the plans",
          "[dropless][plan][padding]") {
  ExpertIdMatrix ids(4, 2);
  ids << 0, 1, 2, 0, 1, 2, 0, 2;
  const Eigen::Matrix<bool, Eigen::Dynamic, 1> mask =
      (Eigen::Matrix<bool, Eigen::Dynamic, 1>(4) << true, false, true, false).finished();
  const ExpertIdMatrix masked = without_padding(ids, mask);
  ExpertIdMatrix expected(4, 2);
  expected << 0, 1, -1, -1, 1, 2, -1, -1;
  REQUIRE(masked == expected);
  const DroplessPlan plan = make_dropless_plan(masked, 3, 1);
  REQUIRE(plan.tokens_per_expert == (IndexVector(3) << 1, 2, 1).finished());
  REQUIRE(without_padding(ids, Eigen::Matrix<bool, Eigen::Dynamic, 1>()) == ids);
  REQUIRE_THROWS_WITH(without_padding(ids, Eigen::Matrix<bool, Eigen::Dynamic, 1>::Ones(3)),
                      Catch::Contains("token_mask") && Catch::Contains("empty or 4 entries"));
}
