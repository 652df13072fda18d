// Scalar, index and matrix aliases shared by every part of the library.
#pragma once

#include <cstdint>

#include <Eigen/Core>

namespace moe {

/// Counts, offsets and slots: 64-bit, so T * k never overflows.
using Index = Eigen::Index;

/// Expert ids, as in Megatron-Core and PyTorch's `topk` indices (int32 there too).
using ExpertId = std::int32_t;

/// The id of an unused routing slot: a token that uses fewer than k experts (adaptive k, zero-
/// computation experts taken out of the FFN dispatch) fills its remaining slots with it, gate 0.
/// Every dispatcher, loss, balancer and health metric skips such a slot (vLLM and llama.cpp use -1
/// the same way).
inline constexpr ExpertId kUnusedSlot = -1;

/// Token matrices: one token a row, row-major as in PyTorch.
template <class S>
using RowMatrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class S>
using Vector = Eigen::Matrix<S, Eigen::Dynamic, 1>;

/// `[T, k]` expert ids, row-major like the token matrices.
using ExpertIdMatrix = Eigen::Matrix<ExpertId, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

using IndexVector = Eigen::Matrix<Index, Eigen::Dynamic, 1>;

/// Read-only view over a caller's row-major matrix or Map, without copying. Anything else binds
/// through a temporary row-major copy that Eigen makes at each call: a column-major matrix
/// (Eigen's default MatrixXf) or an expression costs a pass over its elements and their memory
/// every time. Keep activations row-major (RowMatrix, or a Map with Eigen::RowMajor).
template <class S>
using ConstMatrixRef = Eigen::Ref<const RowMatrix<S>>;

template <class S>
using MatrixRef = Eigen::Ref<RowMatrix<S>>;

template <class S>
using ConstVectorRef = Eigen::Ref<const Vector<S>>;

/// T itself, in a context that takes no part in template argument deduction (C++20's
/// std::type_identity_t): a function taking a plan of S and `ConstMatrixRef<type_identity_t<S>>`
/// deduces S from the plan alone, so any Eigen expression converts to the Ref.
template <class T>
struct type_identity {
  using type = T;
};
template <class T>
using type_identity_t = typename type_identity<T>::type;

/// Training enables noise, jitter, and the statistics balancers accumulate; evaluation is
/// deterministic.
enum class Mode { train, eval };

}  // namespace moe
