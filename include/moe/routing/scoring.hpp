// Score functions over a [T, E] logit matrix and their backward passes.
#pragma once

#include <algorithm>
#include <limits>
#include <type_traits>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/kernels/parallel.hpp"
#include "moe/kernels/simd.hpp"
#include "moe/routing/config.hpp"

namespace moe {

namespace detail {

/// sigmoid(z) = 1 / (1 + exp(-z)) elementwise, evaluated as written (PyTorch's and Megatron-Core's
/// sigmoid), within a few ulps everywhere. Not Eigen's logistic(): in float it returns exp(z) below
/// z = -9 (a relative error of exp(z), 1.2e-4 at -9), and its approximation is Eigen's own, so it
/// may change with the Eigen version. The expression refers to `z`: evaluate it in the statement.
template <class Derived>
auto sigmoid_of(const Eigen::ArrayBase<Derived>& z) {
  using S = typename Derived::Scalar;
  return (S(1) + (-z).exp()).inverse();
}

/// Rows up to this many experts are padded on the stack for a vectorized exp.
inline constexpr Index kPaddedSoftmaxMax = 512;

/// Softmax over `count` consecutive packets in three passes (max; exp and sum; normalize). With
/// `across_lanes` the packets are one row and max and sum reduce over every lane (a row of whole
/// packets); without, each lane is its own row (a transposed block of tokens: one packet per
/// expert, a token per lane).
template <bool across_lanes, class S>
void softmax_packets(const S* logits, Index count, S* scores) {
  using Packet = simd::Packet<S>;
  constexpr Index lanes = simd::kLanes<S>;
  const Index n = count * lanes;
  Packet max = simd::loadu(logits);
  for (Index i = lanes; i < n; i += lanes) max = simd::max(max, simd::loadu(logits + i));
  if constexpr (across_lanes) max = simd::broadcast(simd::reduce_max(max));
  Packet sum = simd::broadcast(S(0));
  for (Index i = 0; i < n; i += lanes) {
    const Packet z = simd::exp(simd::sub(simd::loadu(logits + i), max));
    simd::storeu(scores + i, z);
    sum = simd::add(sum, z);
  }
  if constexpr (across_lanes) sum = simd::broadcast(simd::reduce_add(sum));
  for (Index i = 0; i < n; i += lanes)
    simd::storeu(scores + i, simd::div(simd::loadu(scores + i), sum));
}

/// columns[e * lanes + lane] = rows[lane * row_stride + e] for e < experts: a block of token rows
/// transposed, expert e's column one packet.
template <class S>
void gather_columns(const S* rows, Index row_stride, Index experts, S* columns) {
  for (Index e = 0; e < experts; ++e)
    simd::store(columns + e * simd::kLanes<S>, simd::gather(rows + e, row_stride));
}

/// rows[lane * row_stride + e] = columns[e * lanes + lane] for e < experts.
template <class S>
void scatter_columns(const S* columns, Index experts, S* rows, Index row_stride) {
  for (Index e = 0; e < experts; ++e)
    simd::scatter(rows + e, simd::load(columns + e * simd::kLanes<S>), row_stride);
}

/// One token's softmax, s_e = exp(z_e - max z) / sum_e exp(z_e - max z), over n contiguous values.
template <class S>
void softmax_row(const S* logits, Index n, S* scores) {
  constexpr Index packet = simd::kLanes<S>;
  const Index padded = (n + packet - 1) / packet * packet;
  if (n % packet == 0) return softmax_packets<true>(logits, n / packet, scores);
  if (padded > kPaddedSoftmaxMax) {
    // Long rows with a remainder: Eigen's expressions (the remainder's exp goes through libm).
    const Eigen::Map<const Eigen::Array<S, 1, Eigen::Dynamic>> z(logits, n);
    Eigen::Map<Eigen::Array<S, 1, Eigen::Dynamic>> s(scores, n);
    s = (z - z.maxCoeff()).exp();
    s /= s.sum();
    return;
  }
  // A short row is padded to whole packets with -inf, which leaves the max alone and whose exp
  // (clamped by Eigen's exp to its lowest argument) adds less than 1e-38 to a sum of at least 1
  // (with 16-float AVX-512 packets, a row of 8 experts would otherwise be all remainder, one libm
  // call per value). Padding with the lowest finite value would count a row of lowest() values
  // twice over.
  alignas(64) S buffer[kPaddedSoftmaxMax];
  const auto minus_infinity = simd::broadcast(-std::numeric_limits<S>::infinity());
  for (Index i = 0; i < padded; i += packet) simd::store(buffer + i, minus_infinity);
  std::copy(logits, logits + n, buffer);
  softmax_packets<true>(buffer, padded / packet, buffer);
  std::copy(buffer, buffer + n, scores);
}

}  // namespace detail

/// The softmax of `rows` consecutive rows (`logit_stride` / `score_stride` apart). Rows shorter
/// than two packets spend most of a row-wise softmax in reductions over a padded packet, so a
/// whole block of simd::kLanes<S> such rows runs lane-parallel (transposed on the stack); longer
/// rows, where the transposing gathers and scatters would cost more than they save, go row by row.
template <class S>
void softmax_rows_block(const S* logits, Index logit_stride, Index rows, Index experts, S* scores,
                        Index score_stride) {
  constexpr Index lanes = simd::kLanes<S>;
  if (rows == lanes && experts < 2 * lanes) {
    alignas(64) S logit_columns[2 * lanes * lanes];
    alignas(64) S score_columns[2 * lanes * lanes];
    detail::gather_columns(logits, logit_stride, experts, logit_columns);
    detail::softmax_packets</*across_lanes=*/false>(logit_columns, experts, score_columns);
    detail::scatter_columns(score_columns, experts, scores, score_stride);
    return;
  }
  for (Index r = 0; r < rows; ++r)
    detail::softmax_row(logits + r * logit_stride, experts, scores + r * score_stride);
}

/// s_te = exp(z_te - max_e z_t) / sum_e exp(z_te - max_e z_t): the stable row softmax, in blocks
/// of rows (softmax_rows_block). Allocates nothing once `scores` has its size.
template <class S>
void softmax_rows(const ConstMatrixRef<S>& logits, RowMatrix<S>& scores) {
  require_finite(logits, "logits");
  scores.resize(logits.rows(), logits.cols());
  constexpr Index block = simd::kLanes<S>;
  const Index tokens = logits.rows();
  kernels::parallel_for(
      0, (tokens + block - 1) / block,
      [&](Index b) {
        const Index first = b * block;
        softmax_rows_block(logits.row(first).data(), logits.outerStride(),
                           std::min(block, tokens - first), logits.cols(), scores.row(first).data(),
                           scores.cols());
      },
      /*min_parallel=*/512 / block);
}

/// s = 1 / (1 + exp(-z)) (DeepSeek-V3, Megatron-Core `sigmoid`).
template <class S>
void sigmoid(const ConstMatrixRef<S>& logits, RowMatrix<S>& scores) {
  require_finite(logits, "logits");
  scores = detail::sigmoid_of(logits.array()).matrix();
}

/// dz_tj = s_tj (ds_tj - sum_i s_ti ds_ti): the softmax Jacobian applied row by row.
template <class S>
RowMatrix<S> softmax_rows_backward(const ConstMatrixRef<S>& scores,
                                   const ConstMatrixRef<S>& grad_scores) {
  const Vector<S> inner = scores.cwiseProduct(grad_scores).rowwise().sum();
  return (scores.array() * (grad_scores.colwise() - inner).array()).matrix();
}

/// dz = ds s (1 - s).
template <class S>
RowMatrix<S> sigmoid_backward(const ConstMatrixRef<S>& scores,
                              const ConstMatrixRef<S>& grad_scores) {
  return (grad_scores.array() * scores.array() * (S(1) - scores.array())).matrix();
}

/// softplus(z) = log(1 + exp(z)) = max(z, 0) + log1p(exp(-|z|)), finite for any finite z.
template <class S>
RowMatrix<S> softplus(const ConstMatrixRef<S>& z) {
  return (z.array().max(S(0)) + (-z.array().abs()).exp().log1p()).matrix();
}

/// s = sqrt(softplus(z)) (DeepSeek-V4 `sqrtsoftplus`, Hugging Face `DeepseekV4TopKRouter`).
template <class S>
void sqrt_softplus(const ConstMatrixRef<S>& logits, RowMatrix<S>& scores) {
  require_finite(logits, "logits");
  scores = softplus<S>(logits).array().sqrt().matrix();
}

namespace detail {

/// (ds/dz) / s of s = sqrt(softplus(z)), from s alone: sigmoid(z) = 1 - exp(-softplus(z)) =
/// -expm1(-s^2), so (ds/dz) / s = -expm1(-s^2) / (2 s^2), which tends to 1/2 as s^2 underflows.
template <class S>
S sqrt_softplus_relative_slope(S s) {
  const S square = s * s;
  return square >= std::numeric_limits<S>::min() ? -std::expm1(-square) / (2 * square) : S(0.5);
}

}  // namespace detail

/// dz = ds s (ds/dz / s) = ds (-expm1(-s^2)) / (2 s): the backward of sqrt_softplus from its
/// scores.
template <class S>
RowMatrix<S> sqrt_softplus_backward(const ConstMatrixRef<S>& scores,
                                    const ConstMatrixRef<S>& grad_scores) {
  RowMatrix<S> out(scores.rows(), scores.cols());
  for (Index t = 0; t < scores.rows(); ++t)
    for (Index e = 0; e < scores.cols(); ++e) {
      const S s = scores(t, e);
      out(t, e) = grad_scores(t, e) * s * detail::sqrt_softplus_relative_slope(s);
    }
  return out;
}

/// The scores of `fn` over every expert of each row: softmax_rows, sigmoid or sqrt_softplus.
template <class S>
void score_rows(ScoreFunction fn, const ConstMatrixRef<S>& logits, RowMatrix<S>& scores) {
  switch (fn) {
    case ScoreFunction::softmax:
      return softmax_rows<S>(logits, scores);
    case ScoreFunction::sigmoid:
      return sigmoid<S>(logits, scores);
    case ScoreFunction::sqrt_softplus:
      return sqrt_softplus<S>(logits, scores);
  }
}

/// dL/dz from dL/ds through the scores of `fn` (each backward above).
template <class S>
RowMatrix<S> score_rows_backward(ScoreFunction fn, const ConstMatrixRef<S>& scores,
                                 const ConstMatrixRef<S>& grad_scores) {
  switch (fn) {
    case ScoreFunction::softmax:
      return softmax_rows_backward<S>(scores, grad_scores);
    case ScoreFunction::sigmoid:
      return sigmoid_backward<S>(scores, grad_scores);
    case ScoreFunction::sqrt_softplus:
      return sqrt_softplus_backward<S>(scores, grad_scores);
  }
  return RowMatrix<S>();
}

}  // namespace moe
