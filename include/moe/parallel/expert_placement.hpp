// ExpertPlacement: which process owns each expert under expert parallelism, and where the expert
// sits among its owner's local experts. Plain data, no MPI: plans are built and checked anywhere.
#pragma once

#include <algorithm>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// Expert e lives on rank owner[e] as that rank's local expert local_index[e]; a rank's local
/// experts are its experts in ascending global id. Megatron-Core and DeepSpeed place contiguous
/// blocks (rank r owns experts [r E/P, (r+1) E/P)); a table allows any other placement.
class ExpertPlacement {
 public:
  ExpertPlacement() = default;

  /// Contiguous blocks: rank r owns experts [r E / P, (r + 1) E / P) when P divides E; otherwise
  /// the first E mod P ranks own one expert more.
  static ExpertPlacement contiguous(Index num_experts, Index num_ranks) {
    require(num_experts >= 1, "num_experts", ">= 1", num_experts);
    require(num_ranks >= 1, "num_ranks", ">= 1", num_ranks);
    require(num_ranks <= num_experts, "num_ranks",
            detail::concat("<= num_experts (", num_experts, "): every rank owns an expert"),
            num_ranks);
    std::vector<Index> owner(static_cast<std::size_t>(num_experts));
    const Index base = num_experts / num_ranks, extra = num_experts % num_ranks;
    Index e = 0;
    for (Index r = 0; r < num_ranks; ++r)
      for (Index i = 0; i < base + (r < extra ? 1 : 0); ++i)
        owner[static_cast<std::size_t>(e++)] = r;
    return from_table(owner, num_ranks);
  }

  /// owner[e] = the rank that owns expert e. A rank may own no expert.
  static ExpertPlacement from_table(const std::vector<Index>& owner, Index num_ranks) {
    require(!owner.empty(), "owner", "one entry per expert (>= 1 expert)", "an empty table");
    require(num_ranks >= 1, "num_ranks", ">= 1", num_ranks);
    ExpertPlacement p;
    p.num_ranks_ = num_ranks;
    p.owner_ = owner;
    p.local_index_.assign(owner.size(), 0);
    p.experts_.assign(static_cast<std::size_t>(num_ranks), {});
    for (std::size_t e = 0; e < owner.size(); ++e) {
      const Index r = owner[e];
      if (r < 0 || r >= num_ranks)
        detail::fail("owner", detail::concat("ranks in [0, ", num_ranks, ")"),
                     detail::concat(r, " for expert ", e));
      auto& local = p.experts_[static_cast<std::size_t>(r)];
      p.local_index_[e] = static_cast<Index>(local.size());
      local.push_back(static_cast<Index>(e));
    }
    // Exchange order: by owner rank, then local index. The send buffer is sorted this way so each
    // destination's rows are one contiguous range, grouped by its local experts.
    p.exchange_position_.assign(owner.size(), 0);
    Index position = 0;
    for (const auto& local : p.experts_)
      for (Index e : local) p.exchange_position_[static_cast<std::size_t>(e)] = position++;
    return p;
  }

  Index num_experts() const noexcept { return static_cast<Index>(owner_.size()); }
  Index num_ranks() const noexcept { return num_ranks_; }
  Index owner(Index expert) const { return owner_[checked(expert)]; }
  Index local_index(Index expert) const { return local_index_[checked(expert)]; }
  /// Position of `expert` when experts are ordered by (owner, local index).
  Index exchange_position(Index expert) const { return exchange_position_[checked(expert)]; }
  /// Global ids of the experts `rank` owns, ascending.
  const std::vector<Index>& experts_of(Index rank) const {
    require(rank >= 0 && rank < num_ranks_, "rank", detail::concat("in [0, ", num_ranks_, ")"),
            rank);
    return experts_[static_cast<std::size_t>(rank)];
  }
  Index num_local_experts(Index rank) const { return static_cast<Index>(experts_of(rank).size()); }
  /// The most experts any rank owns: the width of the per-rank count blocks exchanged.
  Index max_local_experts() const noexcept {
    Index m = 0;
    for (const auto& local : experts_) m = std::max<Index>(m, static_cast<Index>(local.size()));
    return m;
  }

 private:
  std::size_t checked(Index expert) const {
    require(expert >= 0 && expert < num_experts(), "expert",
            detail::concat("in [0, ", num_experts(), ")"), expert);
    return static_cast<std::size_t>(expert);
  }

  Index num_ranks_ = 0;
  std::vector<Index> owner_, local_index_, exchange_position_;
  std::vector<std::vector<Index>> experts_;
};

}  // namespace moe
