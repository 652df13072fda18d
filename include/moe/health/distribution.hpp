// What the router's probabilities say about one step: soft load, entropy of the mean routing
// distribution, mean per-token entropy and mean top-1 probability, in one pass over [T, E].
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/health/detail/row_blocks.hpp"

namespace moe {

struct DistributionStats {
  Eigen::VectorXd soft_load;        ///< [E] column sums of the probabilities (tokens_per_expert)
  double normalized_entropy = 0.0;  ///< H(soft_load / sum) / log E; 1 when E = 1
  double mean_token_entropy = 0.0;  ///< mean over tokens of H(p_t / sum_e p_te), in nats
  double mean_top1 = 0.0;           ///< mean over tokens of max_e p_te (router confidence)
  Index tokens = 0;                 ///< T
  Index skipped_tokens = 0;         ///< rows with a non-finite entry, left out of all of the above
};

namespace detail {

struct DistributionPartial {
  double entropy = 0.0, top1 = 0.0;
  Index skipped = 0;
  Index negative_row = -1;  ///< first row holding a negative probability, -1 if none
};

template <class A>
void accumulate_distribution(const A& a, bool token_entropy, Eigen::Ref<Eigen::RowVectorXd> colsum,
                             DistributionPartial& out) {
  using S = typename A::Scalar;
  // Row by row so every reduction runs along contiguous memory in packets (Eigen 3.4 does not
  // vectorize select() or a column broadcast across a row-major block).
  Eigen::Array<S, 1, Eigen::Dynamic> sum = Eigen::Array<S, 1, Eigen::Dynamic>::Zero(a.cols());
  // p log p with log(max(p, min normal)): 0 log 0 = 0, the limit, without a select; below the
  // smallest normal float the term is under 1e-36 either way.
  const S tiny = std::numeric_limits<S>::min();
  double entropy = 0.0, top1 = 0.0;
  for (Index r = 0; r < a.rows(); ++r) {
    const auto row = a.row(r);
    sum += row;
    top1 += double(row.maxCoeff());
    if (!token_entropy) continue;
    const S row_sum = row.sum();
    const S plogp = (row * row.max(tiny).log()).sum();
    // H(p / s) = log s - (sum p log p) / s: rows that do not sum to one (sigmoid scores) are
    // normalized without another pass.
    if (row_sum > S(0)) entropy += std::log(double(row_sum)) - double(plogp) / double(row_sum);
  }
  colsum = sum.template cast<double>().matrix();
  out.entropy = entropy;
  out.top1 = top1;
}

}  // namespace detail

/// Soft load c_e = sum_t p_te (reference JAX check's tokens_per_expert); normalized entropy
/// H(c / sum c) / log E; mean_t H(p_t / sum p_t) (fairseq `entropy_gating` over probabilities);
/// mean_t max_e p_te (flaxformer `router_confidence` over top-1). Rows with a NaN or infinite
/// entry are counted in skipped_tokens and left out; a negative entry raises moe::Error.
/// `token_entropy = false` skips the one logarithm per entry (mean_token_entropy is then NaN),
/// for callers that take the entropy from the logits (logit_stats) instead. `argument` names the
/// probabilities in messages.
template <class P>
DistributionStats distribution_stats(const Eigen::DenseBase<P>& probabilities,
                                     bool token_entropy = true,
                                     const char* argument = "probabilities") {
  using S = typename P::Scalar;
  const auto& p = probabilities.derived();
  const Index rows = p.rows(), experts = p.cols();
  require(experts >= 1, argument, "at least one column (expert)", experts);

  const Index blocks = detail::health_block_count(rows);
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> colsums(blocks, experts);
  std::vector<detail::DistributionPartial> partial(static_cast<std::size_t>(blocks));
  detail::for_each_row_block(rows, experts, [&](Index b, Index first, Index count) {
    auto block = p.middleRows(first, count).array();
    auto& out = partial[static_cast<std::size_t>(b)];
    // Fast path: a NaN or infinity anywhere in the block makes a column sum non-finite (finite
    // probabilities cannot overflow a sum), so no separate finiteness sweep is needed.
    detail::accumulate_distribution(block, token_entropy, colsums.row(b), out);
    if (detail::sums_finite(colsums.row(b)) && std::isfinite(out.entropy)) {
      if (block.minCoeff() < S(0))
        for (Index r = 0; r < count && out.negative_row < 0; ++r)
          if ((block.row(r) < S(0)).any()) out.negative_row = first + r;
      return;
    }
    // Slow path, only for blocks holding a non-finite value: zero those rows and count them.
    out = detail::DistributionPartial{};
    detail::BlockCopy<S> copy = block;
    for (Index r = 0; r < count; ++r) {
      if (!copy.row(r).isFinite().all()) {
        copy.row(r).setZero();
        ++out.skipped;
      } else if ((copy.row(r) < S(0)).any() && out.negative_row < 0) {
        out.negative_row = first + r;
      }
    }
    if (out.negative_row < 0)
      detail::accumulate_distribution(copy, token_entropy, colsums.row(b), out);
  });

  DistributionStats s;
  s.tokens = rows;
  s.soft_load = Eigen::VectorXd::Zero(experts);
  double entropy = 0.0, top1 = 0.0;
  for (Index b = 0; b < blocks; ++b) {
    const auto& part = partial[static_cast<std::size_t>(b)];
    if (part.negative_row >= 0) {
      const Index r = part.negative_row;
      Index c = 0;
      while (c + 1 < experts && !(p(r, c) < S(0))) ++c;
      detail::fail(argument, "entries >= 0",
                   detail::concat(p(r, c), " at row ", r, ", column ", c));
    }
    s.soft_load += colsums.row(b).transpose();
    entropy += part.entropy;
    top1 += part.top1;
    s.skipped_tokens += part.skipped;
  }
  const auto counted = static_cast<double>(rows - s.skipped_tokens);
  s.mean_token_entropy = token_entropy ? entropy / counted  // NaN when no token was counted
                                       : std::numeric_limits<double>::quiet_NaN();
  s.mean_top1 = top1 / counted;

  const double total = s.soft_load.sum();
  if (experts == 1) {
    s.normalized_entropy = 1.0;  // one expert: the only distribution there is, trivially uniform
  } else if (total > 0.0) {
    const Eigen::ArrayXd q = s.soft_load.array() / total;
    const double h = -(q > 0.0).select(q * q.log(), 0.0).sum();
    s.normalized_entropy = h / std::log(static_cast<double>(experts));
  } else {
    s.normalized_entropy = std::numeric_limits<double>::quiet_NaN();
  }
  return s;
}

}  // namespace moe
