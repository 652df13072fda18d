// Dropless plans and the permute / unpermute round trip (MegaBlocks semantics). Invariants: the
// counts are a histogram of the ids; each expert's group holds its pairs in pair order, padded to
// the block size; every routed pair has its own row and an unused slot (-1) none; permute copies
// token t into each of its pairs' rows and zeroes the padding; unpermute sums g · row over a
// token's routed choices; the backwards are the transposes of both.
#include <cstdint>
#include <vector>

#include <moe/dispatch/dropless_permute.hpp>
#include <moe/dispatch/dropless_plan.hpp>

#include "fuzz_input.hpp"

namespace {

using moe::Index;
using Matrix = moe::RowMatrix<double>;

void check_plan(const moe::DroplessPlan& plan, const moe::ExpertIdMatrix& ids, Index E, Index B) {
  const Index T = ids.rows(), k = ids.cols(), pairs = T * k;
  MOE_FUZZ_CHECK(plan.num_pairs() == pairs);
  std::vector<Index> count(static_cast<std::size_t>(E), 0);
  Index routed = 0;
  for (Index p = 0; p < pairs; ++p)
    if (ids(p / k, p % k) != moe::kUnusedSlot)
      ++count[static_cast<std::size_t>(ids(p / k, p % k))], ++routed;
  MOE_FUZZ_CHECK(plan.num_routed() == routed && plan.sorted_pairs.size() == routed);
  MOE_FUZZ_CHECK(plan.offsets[0] == 0 && plan.padded_offsets[0] == 0);
  for (Index e = 0; e < E; ++e) {
    const Index n = count[static_cast<std::size_t>(e)];
    MOE_FUZZ_CHECK(plan.tokens_per_expert[e] == n);
    MOE_FUZZ_CHECK(plan.offsets[e + 1] - plan.offsets[e] == n);
    MOE_FUZZ_CHECK(plan.padded_offsets[e + 1] - plan.padded_offsets[e] == (n + B - 1) / B * B);
  }
  // Sorted by (expert, pair): a stable sort of the pairs by expert.
  std::vector<char> seen(static_cast<std::size_t>(pairs), 0);
  for (Index i = 0; i < routed; ++i) {
    const Index p = plan.sorted_pairs[i];
    MOE_FUZZ_CHECK(p >= 0 && p < pairs && !seen[static_cast<std::size_t>(p)]);
    MOE_FUZZ_CHECK(ids(p / k, p % k) != moe::kUnusedSlot);
    seen[static_cast<std::size_t>(p)] = 1;
    if (i > 0) {
      const Index q = plan.sorted_pairs[i - 1];
      const auto e = ids(p / k, p % k), f = ids(q / k, q % k);
      MOE_FUZZ_CHECK(f < e || (f == e && q < p));
    }
  }
  std::vector<char> row_used(static_cast<std::size_t>(plan.padded_rows()), 0);
  for (Index p = 0; p < pairs; ++p) {
    const Index e = ids(p / k, p % k), row = plan.pair_row[p];
    if (e == moe::kUnusedSlot) {
      MOE_FUZZ_CHECK(row == -1);
      continue;
    }
    MOE_FUZZ_CHECK(row >= plan.padded_offsets[e] &&
                   row < plan.padded_offsets[e] + plan.tokens_per_expert[e]);
    MOE_FUZZ_CHECK(!row_used[static_cast<std::size_t>(row)]);
    row_used[static_cast<std::size_t>(row)] = 1;
  }
}

void check_round_trip(const moe::DroplessPlan& plan, moe::fuzz::FuzzInput& in, Index d) {
  const Index T = plan.num_tokens, k = plan.top_k, rows = plan.padded_rows();
  Matrix x(T, d), gates(T, k), grad_y(T, d);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = in.unit<double>() - 0.5;
  for (Index i = 0; i < gates.size(); ++i) gates.data()[i] = in.unit<double>();
  for (Index i = 0; i < grad_y.size(); ++i) grad_y.data()[i] = in.unit<double>() - 0.5;

  Matrix permuted = Matrix::Constant(rows, d, 7.0);
  moe::dropless_permute<double>(x, plan, permuted);
  std::vector<char> real(static_cast<std::size_t>(rows), 0);
  for (Index p = 0; p < T * k; ++p) {
    if (plan.pair_row[p] < 0) continue;  // an unused slot
    MOE_FUZZ_CHECK(permuted.row(plan.pair_row[p]) == x.row(p / k));
    real[static_cast<std::size_t>(plan.pair_row[p])] = 1;
  }
  for (Index r = 0; r < rows; ++r)
    if (!real[static_cast<std::size_t>(r)]) MOE_FUZZ_CHECK(permuted.row(r).isZero(0.0));

  // Expert outputs: the permuted rows, so unpermute gives sum_j g_tj · x[t].
  Matrix y(T, d);
  moe::dropless_unpermute<double>(permuted, gates, plan, y);
  for (Index t = 0; t < T; ++t)
    for (Index c = 0; c < d; ++c) {
      double expected = 0.0;
      for (Index j = 0; j < k; ++j)
        if (plan.pair_row[t * k + j] >= 0) expected += gates(t, j) * x(t, c);
      MOE_FUZZ_CHECK(moe::fuzz::close(y(t, c), expected, 1e-12));
    }

  Matrix grad_rows(rows, d), grad_gates(T, k), grad_x(T, d);
  moe::dropless_unpermute_backward<double>(grad_y, permuted, gates, plan, grad_rows, grad_gates);
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < k; ++j) {
      const Index row = plan.pair_row[t * k + j];
      MOE_FUZZ_CHECK(
          row >= 0 ? moe::fuzz::close(grad_gates(t, j), permuted.row(row).dot(grad_y.row(t)), 1e-12)
                   : grad_gates(t, j) == 0.0);
    }
  MOE_FUZZ_CHECK(moe::fuzz::close(y.cwiseProduct(grad_y).sum(),
                                  permuted.cwiseProduct(grad_rows).sum(), 1e-10));
  moe::dropless_permute_backward<double>(permuted, plan, grad_x);
  MOE_FUZZ_CHECK(
      moe::fuzz::close(permuted.cwiseProduct(permuted).sum(), x.cwiseProduct(grad_x).sum(), 1e-10));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  moe::fuzz::FuzzInput in(data, size);
  const Index T = in.range(0, 48), E = in.range(1, 16), k = in.range(1, 4), d = in.range(1, 3);
  static constexpr Index kBlocks[] = {1, 2, 3, 4, 8, 16, 128, 0};
  const Index B = kBlocks[in.byte() % 8];
  moe::ExpertIdMatrix ids(T, k);
  // ids in [0, E), or E read as an unused slot (adaptive k)
  for (Index i = 0; i < ids.size(); ++i) {
    const Index e = in.range(0, E);
    ids.data()[i] = e == E ? moe::kUnusedSlot : static_cast<moe::ExpertId>(e);
  }
  moe::DroplessPlan plan;
  try {
    plan = moe::make_dropless_plan(ids, E, B);
  } catch (const moe::Error&) {
    MOE_FUZZ_CHECK(B == 0);  // the one refusal here: a block size below 1
    return 0;
  }
  MOE_FUZZ_CHECK(B != 0);
  check_plan(plan, ids, E, B);
  check_round_trip(plan, in, d);
  return 0;
}
