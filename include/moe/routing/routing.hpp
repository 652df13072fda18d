// Routing: what the router decided for one batch, the input of every dispatcher, balancer and
// health metric.
#pragma once

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// Token-choice routing of T tokens over E experts, k choices per token.
///
/// Row t of `expert_ids` lists token t's experts in selection order (highest selection score
/// first, ties to the lower expert id); `gates(t, j)` is the combine weight of choice j. A slot
/// holding kUnusedSlot (-1) is unused and has gate 0: a token routed to fewer than k experts.
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

namespace detail {

/// Whether the slot at (row, column) holding `id` routes a token: true for an id in [0, E), false
/// for kUnusedSlot; any other id fails naming `argument`.
inline bool routed_slot(Index id, Index num_experts, const char* argument, Index row,
                        Index column) {
  if (id >= 0 && id < num_experts) return true;
  if (id == kUnusedSlot) return false;
  fail(argument, concat("expert ids in [0, ", num_experts, ") or ", kUnusedSlot, " (unused)"),
       concat(id, " at row ", row, ", column ", column));
}

/// expert_ids must be [T, k] with every id in [0, E), or kUnusedSlot where `unused_allowed`, and
/// no expert twice in a row.
inline void require_expert_ids(const ExpertIdMatrix& ids, Index num_tokens, Index top_k,
                               Index num_experts, const char* argument,
                               bool unused_allowed = true) {
  require_shape(ids, argument, num_tokens, top_k);
  for (Index t = 0; t < ids.rows(); ++t)
    for (Index j = 0; j < ids.cols(); ++j) {
      const ExpertId id = ids(t, j);
      if (!routed_slot(id, num_experts, argument, t, j)) {
        if (!unused_allowed)
          fail(argument, concat("expert ids in [0, ", num_experts, ")"),
               concat(id, " at row ", t, ", column ", j));
        continue;
      }
      for (Index i = 0; i < j; ++i)
        if (ids(t, i) == id)
          fail(argument, "distinct expert ids in each row",
               concat("expert ", id, " twice in row ", t));
    }
}

}  // namespace detail

/// `expert_ids` with every slot of a padded token (token_mask false; a TokenMask, empty = all real)
/// made kUnusedSlot: the standalone dropless and capacity planners, the losses, the balancer and
/// the hard loads then give padding no row, no slot, no drop and no count (Megatron-Core removes
/// padding from the routing map before capacity). The capacity formula still counts every row:
/// gather the real rows first, as MoELayer::forward(x, token_mask, ...) does, to size it by them.
inline ExpertIdMatrix without_padding(const ExpertIdMatrix& expert_ids,
                                      const Eigen::Matrix<bool, Eigen::Dynamic, 1>& token_mask) {
  require(token_mask.size() == 0 || token_mask.size() == expert_ids.rows(), "token_mask",
          detail::concat("empty or ", expert_ids.rows(), " entries (one per row of expert_ids)"),
          token_mask.size());
  ExpertIdMatrix out = expert_ids;
  for (Index t = 0; t < token_mask.size(); ++t)
    if (!token_mask(t)) out.row(t).setConstant(kUnusedSlot);
  return out;
}

}  // namespace moe
