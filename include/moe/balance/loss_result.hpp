// What a balancing loss returns: its value and its gradient, ready for RouterUpstream.
#pragma once

#include "moe/core/types.hpp"

namespace moe {

/// `value` is the loss (coefficient included); `grad` is d value / d input, shaped like the input
/// the loss was given (scores [T, E], logits [T, E] or gates [T, k]). Padding rows get zeros.
template <class S>
struct LossGradient {
  S value = S(0);
  RowMatrix<S> grad;
};

}  // namespace moe
