// Hash routing: a frozen token-id -> k experts table picks the experts, the router's scores weight
// them (DeepSeek-V4's first MoE layers; Hugging Face `DeepseekV4HashRouter`, vLLM
// `hash_indices_table`, llama.cpp `selected_experts_in`).
#pragma once

#include <cstdint>
#include <utility>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/routing/routing.hpp"

namespace moe {

/// Token ids of a batch, one per token row.
using TokenIds = Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1>;

/// DeepSeek-V4's `tid2eid`: row v lists the k experts of every token whose id is v. Checked once
/// when built (ids in [0, E), distinct in a row) and immutable after, so a lookup checks only the
/// token ids. Routing a batch by it is a replay of the looked-up ids:
///   router.replay(x, table.expert_ids(token_ids), ctx, mode)     (or MoELayer::replay)
/// which takes the gates from the live router at those ids: for DeepSeek-V4,
/// w = sqrt(softplus(z))[ids] / (sum + 1e-20) * 1.5 (presets::deepseek_v4).
class HashTable {
 public:
  /// `experts` [vocab, k] over `num_experts` experts; moe::Error naming `experts` if an id is out
  /// of range or repeated in a row.
  HashTable(Index num_experts, ExpertIdMatrix experts)
      : num_experts_(num_experts), experts_(std::move(experts)) {
    require(num_experts >= 1, "num_experts", ">= 1", num_experts);
    require(experts_.rows() >= 1 && experts_.cols() >= 1, "experts",
            "a table of at least one token id and one expert",
            detail::concat("[", experts_.rows(), ", ", experts_.cols(), "]"));
    detail::require_expert_ids(experts_, experts_.rows(), experts_.cols(), num_experts_, "experts",
                               /*unused_allowed=*/false);
  }

  Index num_experts() const noexcept { return num_experts_; }
  Index vocab_size() const noexcept { return experts_.rows(); }
  Index top_k() const noexcept { return experts_.cols(); }
  const ExpertIdMatrix& table() const noexcept { return experts_; }

  /// ids(t, j) = table(token_ids(t), j): [T, k], each token's row of the table.
  ExpertIdMatrix expert_ids(const Eigen::Ref<const TokenIds>& token_ids) const {
    ExpertIdMatrix ids(token_ids.size(), top_k());
    for (Index t = 0; t < token_ids.size(); ++t) {
      const std::int64_t v = token_ids(t);
      if (v < 0 || v >= vocab_size())
        detail::fail("token_ids", detail::concat("ids in [0, ", vocab_size(), ") (the vocabulary)"),
                     detail::concat(v, " at token ", t));
      ids.row(t) = experts_.row(static_cast<Index>(v));
    }
    return ids;
  }

 private:
  Index num_experts_;
  ExpertIdMatrix experts_;
};

}  // namespace moe
