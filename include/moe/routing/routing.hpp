// Routing: what the router decided for one batch, the input of every dispatcher, balancer and
// health metric.
#pragma once

#include "moe/core/error.hpp"
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

namespace detail {

/// expert_ids must be [T, k] with every id in [0, E) and no id twice in a row.
inline void require_expert_ids(const ExpertIdMatrix& ids, Index num_tokens, Index top_k,
                               Index num_experts, const char* argument) {
  require_shape(ids, argument, num_tokens, top_k);
  for (Index t = 0; t < ids.rows(); ++t)
    for (Index j = 0; j < ids.cols(); ++j) {
      const ExpertId id = ids(t, j);
      if (id < 0 || id >= num_experts)
        fail(argument, concat("expert ids in [0, ", num_experts, ")"),
             concat(id, " at row ", t, ", column ", j));
      for (Index i = 0; i < j; ++i)
        if (ids(t, i) == id)
          fail(argument, "distinct expert ids in each row",
               concat("expert ", id, " twice in row ", t));
    }
}

}  // namespace detail

}  // namespace moe
