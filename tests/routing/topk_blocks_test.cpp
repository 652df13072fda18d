// Row-block top-k and softmax (the lane-parallel paths taken for whole blocks of rows) against
// per-row references: a stable sort for top-k, a long double softmax.
#include <cmath>
#include <limits>
#include <vector>

#include "moe/core/random.hpp"
#include "moe/routing/scoring.hpp"
#include "moe/routing/topk.hpp"
#include "support/catch.hpp"
#include "support/routing_reference.hpp"

namespace {

using moe::Index;

/// [rows, E] values with many ties (few distinct levels) and some -inf, from a counter RNG.
template <class S>
moe::RowMatrix<S> tied_values(Index rows, Index experts, std::uint64_t seed) {
  const moe::CounterRng rng(seed, 11);
  moe::RowMatrix<S> v(rows, experts);
  for (Index i = 0; i < v.size(); ++i) {
    const double u = rng.uniform(static_cast<std::uint64_t>(i));
    v.data()[i] = u < 0.1 ? -std::numeric_limits<S>::infinity() : static_cast<S>(std::floor(u * 5));
  }
  return v;
}

template <class S>
void check_top_k_rows(Index rows, Index experts, std::uint64_t seed) {
  const moe::RowMatrix<S> values = tied_values<S>(rows, experts, seed);
  for (Index k = 1; k <= std::min<Index>(experts, 9); ++k) {
    moe::ExpertIdMatrix ids;
    moe::RowMatrix<S> selected;
    moe::top_k_rows<S>(values, k, ids, selected);
    for (Index r = 0; r < rows; ++r) {
      std::vector<double> row(static_cast<std::size_t>(experts));
      for (Index e = 0; e < experts; ++e) row[static_cast<std::size_t>(e)] = values(r, e);
      const auto expected = moe::test::reference_top_k(row, k);
      for (Index j = 0; j < k; ++j) {
        INFO("rows " << rows << " E " << experts << " k " << k << " row " << r << " j " << j);
        REQUIRE(ids(r, j) == expected[static_cast<std::size_t>(j)]);
        REQUIRE(selected(r, j) == values(r, expected[static_cast<std::size_t>(j)]));
      }
    }
  }
}

template <class S>
void check_softmax_rows(Index rows, Index experts, std::uint64_t seed) {
  const moe::CounterRng rng(seed, 12);
  moe::RowMatrix<S> logits(rows, experts);
  for (Index i = 0; i < logits.size(); ++i)
    logits.data()[i] = static_cast<S>(20.0 * rng.uniform(static_cast<std::uint64_t>(i)) - 10.0);
  moe::RowMatrix<S> scores;
  moe::softmax_rows<S>(logits, scores);
  const double tolerance = std::is_same_v<S, float> ? 4e-7 : 1e-15;
  for (Index r = 0; r < rows; ++r) {
    long double max = logits(r, 0), sum = 0;
    for (Index e = 1; e < experts; ++e) max = std::max<long double>(max, logits(r, e));
    for (Index e = 0; e < experts; ++e)
      sum += std::exp(static_cast<long double>(logits(r, e)) - max);
    for (Index e = 0; e < experts; ++e) {
      const long double want = std::exp(static_cast<long double>(logits(r, e)) - max) / sum;
      INFO("rows " << rows << " E " << experts << " row " << r << " e " << e);
      REQUIRE(std::abs(static_cast<double>(scores(r, e) - want)) <= tolerance * (1 + want * 8));
    }
  }
}

}  // namespace

TEST_CASE("top_k_rows matches a stable sort over whole and partial row blocks", "[topk]") {
  // 37 rows: two whole float blocks of 16 and a partial one; four double blocks of 8 and 5 rows.
  for (Index experts : {1, 2, 5, 8, 9, 16, 40, 64, 300}) {
    check_top_k_rows<float>(37, experts, static_cast<std::uint64_t>(experts));
    check_top_k_rows<double>(37, experts, static_cast<std::uint64_t>(experts) + 1000);
  }
}

TEST_CASE("top_k_rows keeps -inf experts when fewer than k are finite", "[topk]") {
  moe::RowMatrix<float> values(16, 6);
  values.setConstant(-std::numeric_limits<float>::infinity());
  for (Index r = 0; r < 16; ++r) values(r, 5 - r % 3) = static_cast<float>(r);
  moe::ExpertIdMatrix ids;
  moe::RowMatrix<float> selected;
  moe::top_k_rows<float>(values, 3, ids, selected);
  for (Index r = 0; r < 16; ++r) {
    const moe::ExpertId finite = static_cast<moe::ExpertId>(5 - r % 3);
    // The finite one first, then the -inf ones in id order.
    std::vector<moe::ExpertId> want = {finite};
    for (moe::ExpertId e = 0; want.size() < 3; ++e)
      if (e != finite) want.push_back(e);
    for (Index j = 0; j < 3; ++j) REQUIRE(ids(r, j) == want[static_cast<std::size_t>(j)]);
    REQUIRE(selected(r, 0) == static_cast<float>(r));
    REQUIRE(std::isinf(selected(r, 2)));
  }
}

TEST_CASE("softmax_rows matches a long double softmax over whole and partial row blocks",
          "[scoring]") {
  for (Index experts : {1, 2, 3, 8, 15, 16, 17, 31, 32, 33, 64, 256}) {
    check_softmax_rows<float>(37, experts, static_cast<std::uint64_t>(experts));
    check_softmax_rows<double>(37, experts, static_cast<std::uint64_t>(experts) + 1000);
  }
}
