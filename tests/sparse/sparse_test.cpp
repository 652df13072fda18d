// The block-sparse topology (MegaBlocks' BCSR) and its products (sdd, dsd, dds and the transposed
// forms) against dense products over the explicit [P, E*f] matrix.
#include <vector>

#include "moe/dispatch/dropless_plan.hpp"
#include "moe/sparse/ops.hpp"
#include "moe/sparse/topology.hpp"
#include "support/catch.hpp"
#include "support/dropless_reference.hpp"
#include "support/finite_difference.hpp"
#include "support/random_matrix.hpp"

using namespace moe;
using moe::test::random_matrix;
using moe::test::RowMatrixD;

namespace {

/// The topology of a dropless plan's padded buffer (the experts family builds it the same way).
BlockSparseTopology topology_of(const DroplessPlan& plan, Index f, Index block_cols) {
  return make_topology(plan.padded_offsets, plan.tokens_per_expert, plan.block_size, f,
                       block_cols == 0 ? plan.block_size : block_cols);
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

TEST_CASE("topology hand case: MegaBlocks BCSR and transposed indices", "[dropless][sparse]") {
  // E = 2, groups of 3 and 1 rows padded to B = 2: row blocks {0: e0, 1: e0, 2: e1}; f = 5 with
  // block_cols 2 gives nb = 3 column blocks per expert, the last one 1 wide.
  ExpertIdMatrix ids(4, 1);
  ids << 0, 1, 0, 0;
  const DroplessPlan plan = make_dropless_plan(ids, 2, 2);
  const BlockSparseTopology topo = topology_of(plan, 5, 2);
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
}

TEST_CASE("sdd, dsd, dds and transposes equal dense products over the explicit matrix",
          "[dropless][sparse]") {
  const Index experts = 4, tokens = 300, d = 7, f = 300;  // f > one column tile, not a multiple
  ExpertIdMatrix ids = moe::test::random_expert_ids(tokens, 1, experts, 11);
  for (Index t = 0; t < 10; ++t) ids(t, 0) = 0;  // uneven groups
  for (Index t = 0; t < tokens; ++t)
    if (ids(t, 0) == 3) ids(t, 0) = 2;  // expert 3 gets no rows
  for (Index block : {1, 16, 128}) {
    const DroplessPlan plan = make_dropless_plan(ids, experts, block);
    const BlockSparseTopology topo = topology_of(plan, f, 0);
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
  const BlockSparseTopology topo = topology_of(plan, 4, 2);
  RowMatrixD a(4, 3), w1(6, 4), c(4, 4), bad(5, 4), w2(8, 3), y(4, 3);
  REQUIRE_THROWS_WITH(sdd<double>(bad, w1, topo, c), Catch::Contains("a"));
  REQUIRE_THROWS_WITH(sdd<double>(a, bad, topo, c), Catch::Contains("b"));
  REQUIRE_THROWS_WITH(sdd<double>(a, w1, topo, bad), Catch::Contains("c_values"));
  REQUIRE_THROWS_WITH(dsd<double>(bad, w2, topo, y), Catch::Contains("a_values"));
  REQUIRE_THROWS_WITH(dsd<double>(c, bad, topo, y), Catch::Contains("b"));
  REQUIRE_THROWS_WITH(dsd_tn<double>(c, y, topo, bad), Catch::Contains("c"));
  REQUIRE_THROWS_WITH(dds_tn<double>(a, c, topo, bad), Catch::Contains("c"));
  REQUIRE_THROWS_WITH(topology_of(plan, 0, 2), Catch::Contains("ffn_hidden"));
  REQUIRE_THROWS_WITH(topology_of(plan, 4, -1), Catch::Contains("block_cols"));
  IndexVector offsets(3), rows(2);
  offsets << 0, 3, 4;
  rows << 1, 1;
  REQUIRE_THROWS_WITH(make_topology(offsets, rows, 2, 4, 2), Catch::Contains("group_offsets"));
  offsets << 0, 2, 4;
  rows << 3, 1;
  REQUIRE_THROWS_WITH(make_topology(offsets, rows, 2, 4, 2), Catch::Contains("group_rows"));
}
