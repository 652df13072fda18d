// DroplessPlan, permute/unpermute and the block-sparse topology and products, against
// std::stable_sort, per-row loops and dense products over the explicit [P, E*f] matrix.
#include <random>

#include "moe/dispatch/dropless_permute.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "moe/sparse/ops.hpp"
#include "moe/sparse/topology.hpp"
#include "support/catch.hpp"
#include "support/dropless_reference.hpp"
#include "support/finite_difference.hpp"

using namespace moe;
using moe::test::RowMatrixD;

namespace {

ExpertIdMatrix random_ids(Index tokens, Index k, Index experts, unsigned seed) {
  // Distinct experts per token, as top-k gives.
  std::mt19937 gen(seed);
  ExpertIdMatrix ids(tokens, k);
  for (Index t = 0; t < tokens; ++t) {
    std::vector<ExpertId> all(static_cast<std::size_t>(experts));
    for (Index e = 0; e < experts; ++e) all[e] = static_cast<ExpertId>(e);
    std::shuffle(all.begin(), all.end(), gen);
    for (Index j = 0; j < k; ++j) ids(t, j) = all[j];
  }
  return ids;
}

RowMatrixD random_matrix(Index rows, Index cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal;
  RowMatrixD m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = normal(gen);
  return m;
}

/// The explicit [P, E*f] matrix of Block-ELL values: zero outside each row's expert, and in
/// padding.
RowMatrixD densify(const BlockSparseTopology& topo, const RowMatrixD& values) {
  const Index f = topo.ffn_hidden;
  RowMatrixD dense = RowMatrixD::Zero(topo.rows(), topo.columns());
  for (Index e = 0; e < topo.num_experts; ++e)
    for (Index r = topo.group_offsets[e]; r < topo.group_offsets[e] + topo.group_rows[e]; ++r)
      for (Index c = 0; c < f; ++c) dense(r, e * f + c) = values(r, c);
  return dense;
}

/// [E*K, f] expert-major -> the dense [K, E*f] it stands for.
RowMatrixD expert_major_to_dense(const RowMatrixD& stacked, Index experts) {
  const Index k = stacked.rows() / experts, f = stacked.cols();
  RowMatrixD dense(k, experts * f);
  for (Index e = 0; e < experts; ++e)
    for (Index i = 0; i < k; ++i)
      for (Index c = 0; c < f; ++c) dense(i, e * f + c) = stacked(e * k + i, c);
  return dense;
}

}  // namespace

TEST_CASE("dropless plan matches a stable sort, with padding to the block size",
          "[dropless][plan]") {
  for (Index experts : {1, 3, 8, 17}) {
    for (Index block : {1, 4, 128}) {
      const Index tokens = 37, k = std::min<Index>(2, experts);
      const ExpertIdMatrix ids = random_ids(tokens, k, experts, 7 + static_cast<unsigned>(experts));
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
    ids(1, 0) = -1;
    REQUIRE_THROWS_AS(make_dropless_plan(ids, 3, 4), Error);
    ids(1, 0) = 2;
    REQUIRE_THROWS_WITH(make_dropless_plan(ids, 0, 4), Catch::Contains("num_experts"));
    REQUIRE_THROWS_WITH(make_dropless_plan(ids, 3, 0), Catch::Contains("block_size"));
  }
}

TEST_CASE("permute and unpermute match row loops; backward is the adjoint", "[dropless][permute]") {
  const Index tokens = 23, k = 3, experts = 5, d = 6;
  const ExpertIdMatrix ids = random_ids(tokens, k, experts, 3);
  const RowMatrixD x = random_matrix(tokens, d, 4);
  const RowMatrixD gates = random_matrix(tokens, k, 5);
  for (Index block : {1, 4, 64}) {
    const DroplessPlan plan = make_dropless_plan(ids, experts, block);
    const Index rows = plan.padded_rows();
    RowMatrixD permuted(rows, d);
    dropless_permute<double>(x, plan, permuted);
    RowMatrixD expected = RowMatrixD::Zero(rows, d);
    for (Index p = 0; p < tokens * k; ++p) expected.row(plan.pair_row[p]) = x.row(p / k);
    REQUIRE(permuted == expected);

    // unpermute(permute(x)) with gates summing to one per token is x.
    RowMatrixD uniform = RowMatrixD::Constant(tokens, k, 1.0 / k), back(tokens, d);
    dropless_unpermute<double>(permuted, uniform, plan, back);
    REQUIRE(test::relative_error(back, x) <= 1e-15);

    const RowMatrixD y = random_matrix(rows, d, 6);
    RowMatrixD out(tokens, d);
    dropless_unpermute<double>(y, gates, plan, out);
    RowMatrixD out_ref = RowMatrixD::Zero(tokens, d);
    for (Index t = 0; t < tokens; ++t)
      for (Index j = 0; j < k; ++j) out_ref.row(t) += gates(t, j) * y.row(plan.pair_row[t * k + j]);
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

TEST_CASE("topology hand case: MegaBlocks BCSR and transposed indices", "[dropless][sparse]") {
  // E = 2, groups of 3 and 1 rows padded to B = 2: row blocks {0: e0, 1: e0, 2: e1}; f = 5 with
  // block_cols 2 gives nb = 3 column blocks per expert, the last one 1 wide.
  ExpertIdMatrix ids(4, 1);
  ids << 0, 1, 0, 0;
  const DroplessPlan plan = make_dropless_plan(ids, 2, 2);
  const BlockSparseTopology topo = make_topology(plan, 5, 2);
  REQUIRE(topo.rows() == 6);
  REQUIRE(topo.columns() == 10);
  REQUIRE(topo.column_blocks_per_expert() == 3);
  REQUIRE(topo.column_block_width(2) == 1);
  REQUIRE(topo.nnz_blocks() == 9);
  REQUIRE(topo.row_block_expert == (IndexVector(3) << 0, 0, 1).finished());
  REQUIRE(topo.block_offsets == (IndexVector(4) << 0, 3, 6, 9).finished());
  REQUIRE(topo.row_indices == (IndexVector(9) << 0, 0, 0, 1, 1, 1, 2, 2, 2).finished());
  REQUIRE(topo.column_indices == (IndexVector(9) << 0, 1, 2, 0, 1, 2, 3, 4, 5).finished());
  REQUIRE(topo.transpose_offsets == (IndexVector(7) << 0, 2, 4, 6, 7, 8, 9).finished());
  REQUIRE(topo.transpose_blocks == (IndexVector(9) << 0, 3, 1, 4, 2, 5, 6, 7, 8).finished());
  REQUIRE(topo.group_rows == (IndexVector(2) << 3, 1).finished());
  // Default block_cols is the plan's block size: square blocks.
  REQUIRE(make_topology(plan, 4).block_cols == 2);
}

TEST_CASE("sdd, dsd, dds and transposes equal dense products over the explicit matrix",
          "[dropless][sparse]") {
  const Index experts = 4, tokens = 300, d = 7, f = 300;  // f > one column tile, not a multiple
  ExpertIdMatrix ids = random_ids(tokens, 1, experts, 11);
  for (Index t = 0; t < 10; ++t) ids(t, 0) = 0;  // uneven groups
  for (Index t = 0; t < tokens; ++t)
    if (ids(t, 0) == 3) ids(t, 0) = 2;  // expert 3 gets no rows
  for (Index block : {1, 16, 128}) {
    const DroplessPlan plan = make_dropless_plan(ids, experts, block);
    const BlockSparseTopology topo = make_topology(plan, f, 0);
    const Index rows = topo.rows();
    // Dense operands with zero padding rows, as a padded gather leaves them.
    RowMatrixD a = random_matrix(rows, d, 21), dy = random_matrix(rows, d, 22);
    RowMatrixD sparse_vals = random_matrix(rows, f, 23);
    for (Index e = 0; e < experts; ++e)
      for (Index r = topo.group_offsets[e] + topo.group_rows[e]; r < topo.group_offsets[e + 1];
           ++r) {
        a.row(r).setZero();
        dy.row(r).setZero();
        sparse_vals.row(r).setZero();
      }
    const RowMatrixD w1 = random_matrix(experts * d, f, 24);         // [E*d, f]
    const RowMatrixD w2 = random_matrix(experts * f, d, 25);         // [E*f, d]
    const RowMatrixD w1_dense = expert_major_to_dense(w1, experts);  // [d, E*f]
    const RowMatrixD& w2_dense = w2;  // [E*f, d] expert-major is already the dense [E*f, d]
    const RowMatrixD s_dense = densify(topo, sparse_vals);
    auto sparse_of = [&](const RowMatrixD& dense) {  // keep the topology's entries
      RowMatrixD v = RowMatrixD::Zero(rows, f);
      for (Index e = 0; e < experts; ++e)
        for (Index r = topo.group_offsets[e]; r < topo.group_offsets[e] + topo.group_rows[e]; ++r)
          v.row(r) = dense.block(r, e * f, 1, f);
      return v;
    };

    RowMatrixD c(rows, f);
    c.setConstant(42.0);
    sdd<double>(a, w1, topo, c);
    REQUIRE(test::relative_error(densify(topo, c), densify(topo, sparse_of(a * w1_dense))) <=
            1e-13);
    REQUIRE(test::relative_error(c, sparse_of(a * w1_dense)) <= 1e-13);  // padding written as zero

    // sdd_pair: both products tile by tile, the epilogue called once per data tile of both.
    const RowMatrixD w3 = random_matrix(experts * d, f, 27);
    RowMatrixD c3(rows, f);
    c.setConstant(42.0);
    c3.setConstant(42.0);
    Index epilogue_rows = 0;
    sdd_pair<double>(a, w1, w3, topo, c, c3,
                     [&](Index, Index, Index n, Index, Index cw) { epilogue_rows += n * cw; });
    REQUIRE(test::relative_error(c, sparse_of(a * w1_dense)) <= 1e-13);
    REQUIRE(test::relative_error(c3, sparse_of(a * expert_major_to_dense(w3, experts))) <= 1e-13);
    Index data_rows = 0;
    for (Index e = 0; e < experts; ++e) data_rows += topo.group_rows[e];
    REQUIRE(epilogue_rows == data_rows * f);

    c.setConstant(42.0);
    sdd_nt<double>(dy, w2, topo, c);
    REQUIRE(test::relative_error(c, sparse_of(dy * w2_dense.transpose())) <= 1e-13);

    RowMatrixD y(rows, d);
    y.setConstant(42.0);
    dsd<double>(sparse_vals, w2, topo, y);
    REQUIRE(test::relative_error(y, s_dense * w2_dense) <= 1e-13);
    dsd<double>(sparse_vals, w2, topo, y, /*accumulate=*/true);
    REQUIRE(test::relative_error(y, 2 * s_dense * w2_dense) <= 1e-13);

    y.setConstant(42.0);
    dsd_nt<double>(sparse_vals, w1, topo, y);
    REQUIRE(test::relative_error(y, s_dense * w1_dense.transpose()) <= 1e-13);

    RowMatrixD gw2(experts * f, d);
    dsd_tn<double>(sparse_vals, dy, topo, gw2);
    REQUIRE(test::relative_error(gw2, s_dense.transpose() * dy) <= 1e-13);

    RowMatrixD gw1(experts * d, f);
    dds_tn<double>(a, sparse_vals, topo, gw1);
    REQUIRE(test::relative_error(expert_major_to_dense(gw1, experts), a.transpose() * s_dense) <=
            1e-13);

    const RowMatrixD left = random_matrix(5, rows, 26);
    RowMatrixD out(experts * 5, f);
    dds<double>(left, sparse_vals, topo, out);
    REQUIRE(test::relative_error(expert_major_to_dense(out, experts), left * s_dense) <= 1e-13);
  }
}

TEST_CASE("block-sparse products check shapes", "[dropless][sparse][errors]") {
  ExpertIdMatrix ids(3, 1);
  ids << 0, 1, 1;
  const DroplessPlan plan = make_dropless_plan(ids, 2, 2);
  const BlockSparseTopology topo = make_topology(plan, 4, 2);
  RowMatrixD a(4, 3), w1(6, 4), c(4, 4), bad(5, 4), w2(8, 3), y(4, 3);
  REQUIRE_THROWS_WITH(sdd<double>(bad, w1, topo, c), Catch::Contains("a"));
  REQUIRE_THROWS_WITH(sdd<double>(a, bad, topo, c), Catch::Contains("b"));
  REQUIRE_THROWS_WITH(sdd<double>(a, w1, topo, bad), Catch::Contains("c_values"));
  REQUIRE_THROWS_WITH(dsd<double>(bad, w2, topo, y), Catch::Contains("a_values"));
  REQUIRE_THROWS_WITH(dsd<double>(c, bad, topo, y), Catch::Contains("b"));
  REQUIRE_THROWS_WITH(dsd_tn<double>(c, y, topo, bad), Catch::Contains("c"));
  REQUIRE_THROWS_WITH(dds_tn<double>(a, c, topo, bad), Catch::Contains("c"));
  REQUIRE_THROWS_WITH(make_topology(plan, 0, 2), Catch::Contains("ffn_hidden"));
  REQUIRE_THROWS_WITH(make_topology(plan, 4, -1), Catch::Contains("block_cols"));
  IndexVector offsets(3), rows(2);
  offsets << 0, 3, 4;
  rows << 1, 1;
  REQUIRE_THROWS_WITH(make_topology(offsets, rows, 2, 4, 2), Catch::Contains("group_offsets"));
  offsets << 0, 2, 4;
  rows << 3, 1;
  REQUIRE_THROWS_WITH(make_topology(offsets, rows, 2, 4, 2), Catch::Contains("group_rows"));
}
