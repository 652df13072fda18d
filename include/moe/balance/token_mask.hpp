// Padding masks: which tokens (rows) take part in counts and losses, and which (token, choice)
// pairs survived capacity dropping.
#pragma once

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// `[T]`, true for a real token, false for padding. An empty mask means every token is real.
using TokenMask = Eigen::Matrix<bool, Eigen::Dynamic, 1>;

/// `[T, k]`, true where choice j of token t was kept by the dispatcher, false where it was dropped
/// for capacity. An empty matrix means nothing was dropped.
using ChoiceMask = Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace detail {

inline void require_token_mask(const TokenMask& mask, Index num_tokens, const char* argument) {
  require(mask.size() == 0 || mask.size() == num_tokens, argument,
          concat("empty or ", num_tokens, " entries (one per token)"), mask.size());
}

inline bool is_real_token(const TokenMask& mask, Index t) { return mask.size() == 0 || mask(t); }

inline Index count_real_tokens(const TokenMask& mask, Index num_tokens) {
  if (mask.size() == 0) return num_tokens;
  Index n = 0;
  for (Index t = 0; t < num_tokens; ++t) n += mask(t) ? 1 : 0;
  return n;
}

}  // namespace detail
}  // namespace moe
