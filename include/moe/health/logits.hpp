// What the router's logits say about one step: mean logsumexp (the z-loss quantity), mean
// per-token entropy of softmax(z), and the count of non-finite logits, in one pass over [T, E].
#pragma once

#include <cmath>
#include <vector>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/health/detail/row_blocks.hpp"

namespace moe {

struct LogitStats {
  double mean_logsumexp = 0.0;          ///< mean_t log sum_e exp z_te
  double mean_squared_logsumexp = 0.0;  ///< mean_t lse(z_t)^2, the z-loss before its coefficient
  double mean_entropy = 0.0;            ///< mean_t H(softmax(z_t)) in nats (fairseq entropy_gating)
  Index nonfinite = 0;                  ///< count of NaN or infinite logits
  Index tokens = 0;                     ///< T
  Index skipped_tokens = 0;             ///< rows with a non-finite logit, left out of the means
};

namespace detail {

struct LogitPartial {
  double lse = 0.0, lse2 = 0.0, entropy = 0.0;
  Index nonfinite = 0, skipped = 0;
};

/// Adds the rows of block `z` not flagged in `skip` (empty: none skipped). Row by row, so exp
/// runs in packets along contiguous memory; with e = exp(z - m) and s = sum e, lse = m + log s
/// and H(softmax z) = log s - sum e (z - m) / s come from the same exponentials.
template <class A>
void add_logit_rows(const A& z, const BlockColumn<bool>& skip, LogitPartial& out) {
  using S = typename A::Scalar;
  Eigen::Array<S, 1, Eigen::Dynamic> shifted(z.cols()), e(z.cols());
  for (Index r = 0; r < z.rows(); ++r) {
    if (skip.size() > 0 && skip[r]) continue;
    const S m = z.row(r).maxCoeff();
    shifted = z.row(r) - m;
    e = shifted.exp();
    const double sum = double(e.sum());
    const double log_sum = std::log(sum);
    const double lse = double(m) + log_sum;
    out.lse += lse;
    out.lse2 += lse * lse;
    out.entropy += log_sum - double((e * shifted).sum()) / sum;
  }
}

}  // namespace detail

/// mean_t lse(z_t) and mean_t lse(z_t)^2 (ST-MoE router z-loss, Zoph et al. 2022) with
/// lse = max + log sum exp(z - max), and mean_t H(softmax(z_t)) (fairseq `entropy_gating`).
/// Rows holding a NaN or infinite logit are counted (nonfinite per entry, skipped_tokens per
/// row) and left out of the means: they are reported, not averaged.
template <class Z>
LogitStats logit_stats(const Eigen::DenseBase<Z>& logits) {
  const auto& z = logits.derived();
  const Index rows = z.rows();
  require(z.cols() >= 1, "logits", "at least one column (expert)", z.cols());
  const Index blocks = detail::health_block_count(rows);
  std::vector<detail::LogitPartial> partial(static_cast<std::size_t>(blocks));
  detail::for_each_row_block(rows, [&](Index b, Index first, Index count) {
    auto block = z.middleRows(first, count).array();
    auto& out = partial[static_cast<std::size_t>(b)];
    // Fast path: a row holding a NaN or infinity gives a NaN logsumexp or entropy (inf - inf,
    // 0 * -inf), and a finite row never does, so the sums tell whether the block was clean.
    detail::add_logit_rows(block, detail::BlockColumn<bool>(), out);
    if (std::isfinite(out.lse) && std::isfinite(out.entropy)) return;
    out = detail::LogitPartial{};
    detail::BlockColumn<bool> skip(count);
    for (Index r = 0; r < count; ++r) {
      const Index finite = block.row(r).isFinite().count();
      skip[r] = finite < block.cols();
      if (skip[r]) {
        out.nonfinite += block.cols() - finite;
        ++out.skipped;
      }
    }
    detail::add_logit_rows(block, skip, out);
  });
  LogitStats s;
  s.tokens = rows;
  double lse = 0.0, lse2 = 0.0, entropy = 0.0;
  for (const auto& part : partial) {
    lse += part.lse;
    lse2 += part.lse2;
    entropy += part.entropy;
    s.nonfinite += part.nonfinite;
    s.skipped_tokens += part.skipped;
  }
  const auto counted = static_cast<double>(rows - s.skipped_tokens);
  s.mean_logsumexp = lse / counted;
  s.mean_squared_logsumexp = lse2 / counted;
  s.mean_entropy = entropy / counted;
  return s;
}

}  // namespace moe
