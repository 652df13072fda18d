// Health reports over Eigen tensors: a probability tensor [T, E] (Tensor or TensorMap of rank 2)
// and a stack of layers [L, T, E] (rank 3, one report per layer), in either storage order.
#pragma once

#include <type_traits>
#include <vector>

#include <unsupported/Eigen/CXX11/Tensor>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/health/report.hpp"

namespace moe {

namespace detail {

/// Tensor or TensorMap holding data (not an unevaluated tensor expression) of the given rank.
template <class T, int Rank, class = void>
struct is_stored_tensor : std::false_type {};
template <class T, int Rank>
struct is_stored_tensor<
    T, Rank,
    std::enable_if_t<std::is_base_of_v<Eigen::TensorBase<T, Eigen::ReadOnlyAccessors>, T> &&
                     std::is_pointer_v<decltype(std::declval<const T&>().data())>>>
    : std::bool_constant<T::NumIndices == Rank> {};

template <class T>
using tensor_scalar_t = std::remove_const_t<typename T::Scalar>;

template <class T>
constexpr bool tensor_row_major = (static_cast<int>(T::Layout) ==
                                   static_cast<int>(Eigen::RowMajor));

/// [rows, cols] view with element (r, c) at data[r * row_stride + c * col_stride].
template <class S>
using StridedMatrixMap = Eigen::Map<const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>, 0,
                                    Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

}  // namespace detail

/// health_report over a probability tensor [T, E]; hard loads from the top-k of each row.
template <class Tensor, std::enable_if_t<detail::is_stored_tensor<Tensor, 2>::value, int> = 0>
HealthReport health_report(const Tensor& probabilities, Index top_k,
                           const HealthConfig& config = {}) {
  using S = detail::tensor_scalar_t<Tensor>;
  const Index rows = probabilities.dimension(0), cols = probabilities.dimension(1);
  if constexpr (detail::tensor_row_major<Tensor>) {
    return health_report(Eigen::Map<const RowMatrix<S>>(probabilities.data(), rows, cols), top_k,
                         config);
  } else {
    return health_report(Eigen::Map<const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>>(
                             probabilities.data(), rows, cols),
                         top_k, config);
  }
}

/// One health_report per layer of a probability tensor [L, T, E], the layer index first (a
/// row-major tensor then holds each layer as a contiguous [T, E] matrix).
template <class Tensor, std::enable_if_t<detail::is_stored_tensor<Tensor, 3>::value, int> = 0>
std::vector<HealthReport> health_reports(const Tensor& probabilities, Index top_k,
                                         const HealthConfig& config = {}) {
  using S = detail::tensor_scalar_t<Tensor>;
  const Index layers = probabilities.dimension(0), rows = probabilities.dimension(1),
              cols = probabilities.dimension(2);
  std::vector<HealthReport> reports;
  reports.reserve(static_cast<std::size_t>(layers));
  for (Index l = 0; l < layers; ++l) {
    if constexpr (detail::tensor_row_major<Tensor>) {
      reports.push_back(health_report(
          Eigen::Map<const RowMatrix<S>>(probabilities.data() + l * rows * cols, rows, cols), top_k,
          config));
    } else {
      // Column-major [L, T, E]: (l, t, e) sits at l + L t + L T e.
      reports.push_back(
          health_report(detail::StridedMatrixMap<S>(
                            probabilities.data() + l, rows, cols,
                            Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(layers * rows, layers)),
                        top_k, config));
    }
  }
  return reports;
}

}  // namespace moe
