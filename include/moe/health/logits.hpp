// What the router's logits say about one step: mean logsumexp (the z-loss quantity) and the
// count of non-finite logits, in one pass over [T, E].
#pragma once

#include <cmath>
#include <vector>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/health/detail/row_blocks.hpp"

namespace moe {

struct LogitStats {
  double mean_logsumexp = 0.0;  ///< mean_t log sum_e exp z_te
  double mean_squared_logsumexp =
      0.0;                   ///< mean_t (log sum_e exp z_te)^2, the z-loss before its coefficient
  Index nonfinite = 0;       ///< count of NaN or infinite logits
  Index tokens = 0;          ///< T
  Index skipped_tokens = 0;  ///< rows with a non-finite logit, left out of the means
};

namespace detail {

struct LogitPartial {
  double lse = 0.0, lse2 = 0.0;
  Index nonfinite = 0, skipped = 0;
};

template <class S>
void add_logsumexp(const BlockColumn<S>& lse, LogitPartial& out) {
  out.lse = lse.template cast<double>().sum();
  out.lse2 = lse.template cast<double>().square().sum();
}

template <class A>
BlockColumn<typename A::Scalar> row_logsumexp(const A& z) {
  using S = typename A::Scalar;
  const BlockColumn<S> m = z.rowwise().maxCoeff();
  return m + (z.colwise() - m).exp().rowwise().sum().log();
}

}  // namespace detail

/// mean_t lse(z_t) and mean_t lse(z_t)^2 (ST-MoE router z-loss, Zoph et al. 2022), with
/// lse = max + log sum exp(z - max). Rows holding a NaN or infinite logit are counted (nonfinite
/// per entry, skipped_tokens per row) and left out of the means: they are reported, not averaged.
template <class Z>
LogitStats logit_stats(const Eigen::DenseBase<Z>& logits) {
  using S = typename Z::Scalar;
  const auto& z = logits.derived();
  const Index rows = z.rows();
  require(z.cols() >= 1, "logits", "at least one column (expert)", z.cols());
  const Index blocks = detail::health_block_count(rows);
  std::vector<detail::LogitPartial> partial(static_cast<std::size_t>(blocks));
  detail::for_each_row_block(rows, [&](Index b, Index first, Index count) {
    auto block = z.middleRows(first, count).array();
    auto& out = partial[static_cast<std::size_t>(b)];
    if (block.allFinite()) {
      detail::add_logsumexp(detail::row_logsumexp(block), out);
      return;
    }
    detail::BlockCopy<S> copy = block;
    detail::BlockColumn<bool> skip(count);
    for (Index r = 0; r < count; ++r) {
      const Index finite = copy.row(r).isFinite().count();
      skip[r] = finite < copy.cols();
      if (skip[r]) {
        out.nonfinite += copy.cols() - finite;
        ++out.skipped;
        copy.row(r).setZero();
      }
    }
    const detail::BlockColumn<S> lse = skip.select(S(0), detail::row_logsumexp(copy));
    detail::add_logsumexp(lse, out);
  });
  LogitStats s;
  s.tokens = rows;
  double lse = 0.0, lse2 = 0.0;
  for (const auto& part : partial) {
    lse += part.lse;
    lse2 += part.lse2;
    s.nonfinite += part.nonfinite;
    s.skipped_tokens += part.skipped;
  }
  const auto counted = static_cast<double>(rows - s.skipped_tokens);
  s.mean_logsumexp = lse / counted;
  s.mean_squared_logsumexp = lse2 / counted;
  return s;
}

}  // namespace moe
