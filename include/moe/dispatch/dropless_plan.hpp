// DroplessPlan: every (token, choice) pair sorted by expert, each expert's group padded to a block
// size, so experts run as block-aligned row ranges of one buffer and no token is ever dropped.
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/kernels/parallel.hpp"
#include "moe/routing/routing.hpp"

namespace moe {

/// Where each of the T*k (token, choice) pairs goes in the padded, expert-sorted row buffer.
///
/// Pair p = t * k + j is token t's j-th choice. Sorted order is (expert, p) ascending: a stable
/// sort, so within an expert tokens keep their order (lower token index first). Expert e owns the
/// padded rows [padded_offsets[e], padded_offsets[e + 1]); its first tokens_per_expert[e] rows hold
/// pairs, the rest are zero padding. A pair whose id is kUnusedSlot is routed nowhere: no row
/// (pair_row -1), not in sorted_pairs, not counted.
struct DroplessPlan {
  Index num_tokens = 0;
  Index top_k = 0;
  Index num_experts = 0;
  Index block_size = 1;

  IndexVector tokens_per_expert;  ///< [E] pairs routed to each expert (MegaBlocks `histogram`)
  IndexVector offsets;            ///< [E+1] unpadded group starts: exclusive cumsum of the counts
  IndexVector padded_offsets;     ///< [E+1] padded group starts: cumsum of round_up(count, B)
  IndexVector sorted_pairs;       ///< [routed] pair at sorted position i (MegaBlocks `indices`)
  IndexVector pair_row;  ///< [T*k] padded row of pair p (-1 if unused): what unpermute reads

  /// Pairs, used or not: T * k.
  Index num_pairs() const noexcept { return num_tokens * top_k; }
  /// Pairs routed to an expert, offsets[E]: num_pairs() less the unused slots.
  Index num_routed() const noexcept { return offsets.size() ? offsets[num_experts] : 0; }
  /// Rows of the padded buffer, padded_offsets[E] (MegaBlocks `padded_bins[-1]`).
  Index padded_rows() const noexcept {
    return padded_offsets.size() ? padded_offsets[num_experts] : 0;
  }
  /// Real (non-padding) rows of expert e's group.
  Index group_rows(Index e) const noexcept { return tokens_per_expert[e]; }
};

/// round_up(n, b) = ceil(n / b) * b, MegaBlocks' padding of each expert's count to the block size.
inline Index round_up(Index n, Index block) noexcept { return (n + block - 1) / block * block; }

/// round_up(n, block), refusing a padded count past Index's range (a huge block size).
inline Index padded_rows(Index n, Index block) {
  return n == 0 ? 0 : checked_mul((n - 1) / block + 1, block, "block_size");
}

namespace detail {

/// Checks that `plan` is whole and consistent, in O(E + T k): the arrays have the plan's sizes,
/// the offsets rise, and every pair's row lies inside its expert's group. A plan is plain data
/// the caller may have built or edited.
inline void require_dropless_plan(const DroplessPlan& plan) {
  const Index experts = plan.num_experts;
  require(plan.num_tokens >= 0 && plan.top_k >= 0 && experts >= 1 && plan.block_size >= 1, "plan",
          "a plan from make_dropless_plan (T, k >= 0; E, block_size >= 1)",
          concat("T ", plan.num_tokens, ", k ", plan.top_k, ", E ", experts, ", block ",
                 plan.block_size));
  const Index pairs = checked_mul(plan.num_tokens, plan.top_k, "plan.num_tokens");
  require(plan.tokens_per_expert.size() == experts && plan.offsets.size() == experts + 1 &&
              plan.padded_offsets.size() == experts + 1,
          "plan.offsets", concat("E + 1 = ", experts + 1, " offsets"), plan.offsets.size());
  require(plan.pair_row.size() == pairs, "plan.pair_row", concat("size T * k = ", pairs),
          plan.pair_row.size());
  require(plan.padded_offsets[0] == 0 && plan.offsets[0] == 0 && plan.offsets[experts] <= pairs &&
              plan.sorted_pairs.size() == plan.offsets[experts],
          "plan.offsets",
          concat("offsets from 0 to the routed pairs (sorted_pairs: ", plan.sorted_pairs.size(),
                 ", at most T * k = ", pairs, ")"),
          concat(plan.offsets[0], " to ", plan.offsets[experts]));
  for (Index e = 0; e < experts; ++e) {
    const Index count = plan.tokens_per_expert[e];
    if (count < 0 || plan.offsets[e + 1] - plan.offsets[e] != count ||
        plan.padded_offsets[e + 1] - plan.padded_offsets[e] < count ||
        plan.padded_offsets[e + 1] < plan.padded_offsets[e])
      fail("plan.padded_offsets", "groups that hold their expert's pairs",
           concat("expert ", e, " with ", count, " pairs"));
  }
  const Index rows = plan.padded_offsets[experts];
  for (Index p = 0; p < pairs; ++p)
    if (plan.pair_row[p] < -1 || plan.pair_row[p] >= rows)
      fail("plan.pair_row", concat("rows in [0, ", rows, ") or -1 (unused)"),
           concat(plan.pair_row[p], " at pair ", p));
  for (Index i = 0; i < plan.sorted_pairs.size(); ++i)
    if (plan.sorted_pairs[i] < 0 || plan.sorted_pairs[i] >= pairs ||
        plan.pair_row[plan.sorted_pairs[i]] < 0)
      fail("plan.sorted_pairs", concat("routed pairs in [0, ", pairs, ")"),
           concat(plan.sorted_pairs[i], " at position ", i));
}

}  // namespace detail

namespace detail {

/// Pairs per histogram chunk: enough work per thread that the O(chunks * E) prefix stays small.
inline constexpr Index kSortChunk = 16384;

}  // namespace detail

/// Stable counting sort of expert_ids [T, k] by expert in O(T*k + E), unused slots (kUnusedSlot)
/// left out; groups padded to block_size
/// (MegaBlocks dMoE: sort, histogram, round_up, inclusive cumsum; block_size = 1 is grouped GEMM).
/// Refills `plan`, reusing its storage. Per-chunk histograms, an ordered prefix and an ordered
/// scatter: the result is unique, so it is the same at any thread count.
inline void make_dropless_plan(const Eigen::Ref<const ExpertIdMatrix>& expert_ids,
                               Index num_experts, Index block_size, DroplessPlan& plan) {
  require(num_experts >= 1, "num_experts", ">= 1", num_experts);
  require(block_size >= 1, "block_size", ">= 1", block_size);
  const Index tokens = expert_ids.rows();
  const Index k = expert_ids.cols();
  require(k >= 1 || tokens == 0, "expert_ids", "at least one column (top_k >= 1)", k);
  const Index pairs = checked_mul(tokens, k, "expert_ids");
  const ExpertId* ids = expert_ids.data();
  const Index stride = expert_ids.outerStride();
  // Pair p is (token p / k, choice p % k); a dense id matrix (the usual case) needs no division.
  const bool dense = stride == k || tokens <= 1;
  auto id_of = [&](Index p) { return dense ? ids[p] : ids[(p / k) * stride + p % k]; };
  Index unused = 0;
  for (Index p = 0; p < pairs; ++p) {
    const ExpertId e = id_of(p);
    if (e < 0 || e >= num_experts)  // kUnusedSlot, or a failure naming the id
      unused += detail::routed_slot(e, num_experts, "expert_ids", p / k, p % k) ? 0 : 1;
  }
  const Index routed = pairs - unused;
  // The passes below test for unused slots only when there are some: `skip` is a
  // std::integral_constant, so the usual case compiles to the loops without the test.
  const auto dispatch_skip = [&](auto&& pass) {
    if (unused == 0)
      pass(std::false_type{});
    else
      pass(std::true_type{});
  };

  plan.num_tokens = tokens;
  plan.top_k = k;
  plan.num_experts = num_experts;
  plan.block_size = block_size;
  plan.tokens_per_expert.resize(num_experts);
  plan.offsets.resize(num_experts + 1);
  plan.padded_offsets.resize(num_experts + 1);
  plan.sorted_pairs.resize(routed);
  plan.pair_row.resize(pairs);

  const Index chunks =
      std::max<Index>(1, std::min<Index>(kernels::max_threads(),
                                         (pairs + detail::kSortChunk - 1) / detail::kSortChunk));
  const Index chunk_len = (pairs + chunks - 1) / std::max<Index>(chunks, 1);
  // histogram[c * E + e]: pairs of chunk c on expert e; becomes chunk c's first slot for e.
  std::vector<Index> histogram(static_cast<std::size_t>(chunks * num_experts), 0);
  dispatch_skip([&](auto skip) {
    kernels::parallel_for(
        0, chunks,
        [&](Index c) {
          Index* h = histogram.data() + c * num_experts;
          const Index end = std::min(pairs, (c + 1) * chunk_len);
          for (Index p = c * chunk_len; p < end; ++p) {
            const ExpertId e = id_of(p);
            if constexpr (decltype(skip)::value)
              if (e == kUnusedSlot) continue;
            ++h[e];
          }
        },
        /*min_parallel=*/1);  // each chunk is already kSortChunk pairs
  });

  plan.offsets[0] = 0;
  plan.padded_offsets[0] = 0;
  for (Index e = 0; e < num_experts; ++e) {
    Index next = plan.offsets[e];
    for (Index c = 0; c < chunks; ++c) {
      Index& h = histogram[static_cast<std::size_t>(c * num_experts + e)];
      const Index count = h;
      h = next;
      next += count;
    }
    plan.tokens_per_expert[e] = next - plan.offsets[e];
    plan.offsets[e + 1] = next;
    plan.padded_offsets[e + 1] = checked_add(
        plan.padded_offsets[e], padded_rows(plan.tokens_per_expert[e], block_size), "block_size");
  }

  dispatch_skip([&](auto skip) {
    kernels::parallel_for(
        0, chunks,
        [&](Index c) {
          Index* slot = histogram.data() + c * num_experts;
          const Index end = std::min(pairs, (c + 1) * chunk_len);
          for (Index p = c * chunk_len; p < end; ++p) {
            const ExpertId e = id_of(p);
            if constexpr (decltype(skip)::value)
              if (e == kUnusedSlot) {
                plan.pair_row[p] = -1;
                continue;
              }
            const Index position = slot[e]++;
            plan.sorted_pairs[position] = p;
            plan.pair_row[p] = plan.padded_offsets[e] + (position - plan.offsets[e]);
          }
        },
        /*min_parallel=*/1);
  });
}

/// row_token[pair_row[p]] = p / k for every routed pair p: the token each data row of the padded
/// buffer holds, so an expert's products can read its rows where the tokens are. row_token has
/// plan.padded_rows() entries; padding rows' entries are left as they are (never read).
template <class RowTokens>
void fill_row_tokens(const DroplessPlan& plan, RowTokens&& row_token) {
  for (Index p = 0; p < plan.num_pairs(); ++p)
    if (plan.pair_row[p] >= 0) row_token[plan.pair_row[p]] = p / plan.top_k;
}

/// Convenience form of make_dropless_plan that returns a fresh plan.
inline DroplessPlan make_dropless_plan(const Eigen::Ref<const ExpertIdMatrix>& expert_ids,
                                       Index num_experts, Index block_size = 128) {
  DroplessPlan plan;
  make_dropless_plan(expert_ids, num_experts, block_size, plan);
  return plan;
}

}  // namespace moe
