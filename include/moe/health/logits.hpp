// What the router's logits say about one step: mean logsumexp (the z-loss quantity), mean
// per-token entropy of softmax(z), and the count of non-finite logits, in one pass over [T, E].
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/health/detail/row_blocks.hpp"

namespace moe {

struct LogitStats {
  double mean_logsumexp = 0.0;  ///< mean_t log sum_e exp z_te
  /// mean_t lse(z_t)^2, the z-loss before its coefficient; +inf (its correct rounding) once it
  /// passes DBL_MAX, i.e. |lse| beyond about 1.3e154 (router_z_loss refuses such logits).
  double mean_squared_logsumexp = 0.0;
  double mean_entropy = 0.0;  ///< mean_t H(softmax(z_t)) in nats (fairseq entropy_gating)
  Index nonfinite = 0;        ///< count of NaN or infinite logits
  Index tokens = 0;           ///< T
  Index skipped_tokens = 0;   ///< rows with a non-finite logit, left out of the means
};

namespace detail {

struct LogitPartial {
  double lse = 0.0, lse2 = 0.0, entropy = 0.0;
  Index nonfinite = 0, skipped = 0;
};

/// lse is summed scaled by 2^-32: a power of two changes no bit of the sum or of the mean taken
/// from it, and the sum of T finite lse no longer overflows where their mean is finite (logits
/// near -DBL_MAX).
inline constexpr double kLseSumScale = 1.0 / 4294967296.0;

/// Adds lse and entropy of each row from e = exp(z - shift) with s = sum e: lse = shift + log s,
/// H(softmax z) = log s - sum e (z - shift) / s (the same exponentials give both).
template <class S>
void add_row_sums(const BlockColumn<S>& shift, const BlockColumn<S>& sum, const BlockColumn<S>& dot,
                  LogitPartial& out) {
  const BlockColumn<S> log_sum = sum.log();
  const Eigen::ArrayXd lse = (shift + log_sum).template cast<double>();
  out.lse = (lse * kLseSumScale).sum();
  out.lse2 = lse.square().sum();
  out.entropy = (log_sum - dot / sum).template cast<double>().sum();
}

/// e = exp(u) and e u for the shifted logits u = z - max, both 0 where u < log(smallest normal):
/// exp(u) u -> 0 as u -> -inf, but a vectorized exp returns about exp(log min) for any u below
/// that, and that times a huge |u| (u = -inf when z - max overflows: a row holding -DBL_MAX and
/// DBL_MAX) would be a large or NaN term of the entropy.
template <class U>
auto exp_or_zero(const U& u) {
  using S = typename U::Scalar;
  return (u < std::log(std::numeric_limits<S>::min())).select(S(0), u.exp());
}
template <class U, class E>
auto exp_times_or_zero(const U& u, const E& e) {
  using S = typename U::Scalar;
  return (u < std::log(std::numeric_limits<S>::min())).select(S(0), e * u);
}

/// Fast path: one shift for the whole block (its maximum), so subtraction and exp run over the
/// block as one array. Returns false, adding nothing, when a row's sum came out non-finite or
/// so small that it lost precision (a row far below the block's maximum): the caller then takes
/// the row-by-row path.
template <class A>
bool add_logit_block(const A& z, LogitPartial& out) {
  using S = typename A::Scalar;
  using Block = Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  if (z.rows() == 0) return true;
  const S shift = z.maxCoeff();
  // (z - shift) is recomputed rather than stored: one block-sized temporary keeps the block and
  // its exponentials within L2.
  // NaN and +inf give a NaN sum below; -inf would give a 0 term, so it is looked for here.
  if (!(z.minCoeff() > -std::numeric_limits<S>::infinity())) return false;
  const Block e = exp_or_zero(z - shift);
  const BlockColumn<S> sum = e.rowwise().sum();
  const BlockColumn<S> dot = exp_times_or_zero(z - shift, e).rowwise().sum();
  // Sums above min/epsilon keep every term that matters far from the subnormal range.
  const S smallest = std::numeric_limits<S>::min() / std::numeric_limits<S>::epsilon();
  if (!(sum.minCoeff() >= smallest) || !sums_finite(dot)) return false;
  add_row_sums<S>(BlockColumn<S>::Constant(z.rows(), shift), sum, dot, out);
  return true;
}

/// Row-by-row path, each row shifted by its own maximum; rows flagged in `skip` add nothing.
template <class A>
void add_logit_rows(const A& z, const BlockColumn<bool>& skip, LogitPartial& out) {
  using S = typename A::Scalar;
  const Index rows = z.rows();
  BlockColumn<S> max(rows), sum(rows), dot(rows);
  Eigen::Array<S, 1, Eigen::Dynamic> shifted(z.cols()), e(z.cols());
  for (Index r = 0; r < rows; ++r) {
    if (skip[r]) {
      max[r] = S(0), sum[r] = S(1), dot[r] = S(0);  // lse = 0 and H = 0: adds nothing
      continue;
    }
    max[r] = z.row(r).maxCoeff();
    shifted = z.row(r) - max[r];
    e = exp_or_zero(shifted);
    sum[r] = e.sum();
    dot[r] = exp_times_or_zero(shifted, e).sum();
  }
  add_row_sums(max, sum, dot, out);
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
  detail::for_each_row_block(rows, z.cols(), [&](Index b, Index first, Index count) {
    auto block = z.middleRows(first, count).array();
    auto& out = partial[static_cast<std::size_t>(b)];
    // The fast path refuses a block holding a NaN or infinity (see add_logit_block); the rows
    // are then taken one by one and the non-finite ones counted.
    if (detail::add_logit_block(block, out)) return;
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
  s.mean_logsumexp = lse / counted / detail::kLseSumScale;
  s.mean_squared_logsumexp = lse2 / counted;
  s.mean_entropy = entropy / counted;
  return s;
}

}  // namespace moe
