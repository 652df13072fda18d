// Workspace: scratch buffers that grow to a step's size once and are reused after, so the hot path
// does not allocate in steady state.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include <Eigen/Core>

#include "moe/core/aligned_buffer.hpp"
#include "moe/core/types.hpp"

namespace moe {

class Workspace {
 public:
  /// Scratch `[rows, cols]` matrix in `slot`; contents are unspecified. Distinct slots never alias.
  /// The view stays valid until the same slot is requested larger.
  template <class S>
  Eigen::Map<RowMatrix<S>, Eigen::Aligned64> matrix(std::size_t slot, Index rows, Index cols) {
    return Eigen::Map<RowMatrix<S>, Eigen::Aligned64>(
        static_cast<S*>(bytes(slot, static_cast<std::size_t>(rows * cols) * sizeof(S))), rows,
        cols);
  }

  template <class S>
  Eigen::Map<Vector<S>, Eigen::Aligned64> vector(std::size_t slot, Index size) {
    return Eigen::Map<Vector<S>, Eigen::Aligned64>(
        static_cast<S*>(bytes(slot, static_cast<std::size_t>(size) * sizeof(S))), size);
  }

  /// Bytes held over all slots: stops growing once the workspace has seen the largest step.
  std::size_t capacity_bytes() const noexcept {
    std::size_t total = 0;
    for (const auto& b : buffers_) total += b.size();
    return total;
  }

 private:
  void* bytes(std::size_t slot, std::size_t size) {
    if (slot >= buffers_.size()) buffers_.resize(slot + 1);
    AlignedBuffer<unsigned char>& b = buffers_[slot];
    if (b.size() < size || b.data() == nullptr) {
      // Geometric growth keeps the number of reallocations logarithmic in the largest step.
      b = AlignedBuffer<unsigned char>(std::max<std::size_t>({size, b.size() + b.size() / 2, 64}));
    }
    return b.data();
  }

  // 64-byte aligned whatever the instruction set Eigen was compiled for: the views promise it.
  static_assert(kBufferAlignment >= 64, "Workspace views are Aligned64");
  std::vector<AlignedBuffer<unsigned char>> buffers_;
};

}  // namespace moe
