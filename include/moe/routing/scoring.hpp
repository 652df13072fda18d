// Score functions over a [T, E] logit matrix and their backward passes.
#pragma once

#include <limits>
#include <type_traits>

#include <Eigen/Core>

#include "moe/core/detail/parallel.hpp"
#include "moe/core/types.hpp"

namespace moe {

namespace detail {

/// Rows up to this many experts are padded on the stack for a vectorized exp.
inline constexpr Index kPaddedSoftmaxMax = 512;

}  // namespace detail

/// One token's softmax, s_e = exp(z_e - max z) / sum_e exp(z_e - max z), into `scores`.
template <class In, class Out>
void softmax_row(const In& logits, Out&& scores) {
  using S = typename std::decay_t<Out>::Scalar;
  constexpr Index packet = Eigen::internal::packet_traits<S>::size;
  const Index n = logits.size();
  const Index padded = (n + packet - 1) / packet * packet;
  const S max = logits.maxCoeff();
  if (n % packet == 0 || padded > detail::kPaddedSoftmaxMax) {
    scores = logits.array() - max;
    scores = scores.array().exp();
    scores /= scores.sum();
    return;
  }
  // Eigen evaluates a dynamic-size exp in whole packets and calls libm for the rest, one value at
  // a time: with 16-float AVX-512 packets a row of 8 experts is all remainder. Pad the row to
  // whole packets; the padding's exp is computed and never read.
  alignas(64) S buffer[detail::kPaddedSoftmaxMax];
  Eigen::Map<Eigen::Array<S, 1, Eigen::Dynamic>, Eigen::Aligned64> z(buffer, padded);
  z.head(n) = logits.array() - max;
  z.tail(padded - n).setConstant(std::numeric_limits<S>::lowest());
  z = z.exp();
  const S sum = z.head(n).sum();
  scores = (z.head(n) / sum).matrix();
}

/// s_te = exp(z_te - max_e z_t) / sum_e exp(z_te - max_e z_t): the stable row softmax.
/// Row by row, so it allocates nothing once `scores` has its size.
template <class S>
void softmax_rows(const ConstMatrixRef<S>& logits, RowMatrix<S>& scores) {
  scores.resize(logits.rows(), logits.cols());
  detail::parallel_for(0, logits.rows(),
                       [&](Index t) { softmax_row(logits.row(t), scores.row(t)); });
}

/// s = 1 / (1 + exp(-z)) (DeepSeek-V3, Megatron-Core `sigmoid`).
template <class S>
void sigmoid(const ConstMatrixRef<S>& logits, RowMatrix<S>& scores) {
  scores = logits.array().logistic().matrix();
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

}  // namespace moe
