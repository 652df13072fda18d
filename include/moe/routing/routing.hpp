// Routing: what the router decided for one batch, the input of every dispatcher, balancer and
// health metric.
#pragma once

#include "moe/core/types.hpp"

namespace moe {

/// Token-choice routing of T tokens over E experts, k choices per token.
///
/// Row t of `expert_ids` lists token t's experts in selection order (highest selection score
/// first, ties to the lower expert id); `gates(t, j)` is the combine weight of choice j.
/// `scores` are the unbiased scores over all experts (softmax or sigmoid of the logits the router
/// selected with, noise included in training): the quantity aux losses and health metrics read.
template <class S>
struct Routing {
  ExpertIdMatrix expert_ids;  ///< [T, k]
  RowMatrix<S> gates;         ///< [T, k] combine weights
  RowMatrix<S> scores;        ///< [T, E]
  RowMatrix<S> logits;        ///< [T, E] x W^T + b, before any noise

  Index num_tokens() const noexcept { return expert_ids.rows(); }
  Index top_k() const noexcept { return expert_ids.cols(); }
  Index num_experts() const noexcept { return scores.cols(); }
};

}  // namespace moe
