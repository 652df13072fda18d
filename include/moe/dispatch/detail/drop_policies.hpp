// Slot assignment inside one routing group under each DropPolicy. Every policy walks the group's
// entries once in a fixed order, so plans are the same bits at any thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "moe/core/random.hpp"
#include "moe/core/types.hpp"
#include "moe/dispatch/capacity.hpp"

namespace moe::detail {

/// Scratch of the slot assignment, kept across groups so a plan allocates it once.
struct SlotScratch {
  std::vector<Index> used;       ///< [E] entries kept by each expert in the current group
  std::vector<Index> order;      ///< tokens (batch_prioritized) or bucketed entries (by priority)
  std::vector<Index> bucket;     ///< [E + 2] offsets of each bucket (unused slots, then experts)
  std::vector<double> priority;  ///< per entry of the group (probability, random)
  std::vector<char> keep;        ///< per entry of the group
};

/// Assigns flat slots to the entries of tokens [t0, t1). `base[e]` is how many entries expert e
/// kept in earlier groups; on return it includes this group. Entry (t, j) has index t·k + j.
template <class S>
void assign_group_slots(const Eigen::Ref<const ExpertIdMatrix>& ids,
                        const Eigen::Ref<const RowMatrix<S>>& gates, Index t0, Index t1,
                        Index group_capacity, Index capacity, DropPolicy policy, std::uint64_t seed,
                        std::vector<Index>& base, IndexVector& entry_slot, SlotScratch& scratch) {
  const Index k = ids.cols();
  const Index num_experts = static_cast<Index>(base.size());
  std::vector<Index>& used = scratch.used;
  used.assign(static_cast<std::size_t>(num_experts), 0);
  auto take = [&](Index t, Index j) {
    const ExpertId e = ids(t, j);
    if (e != kUnusedSlot && used[e] < group_capacity) {
      entry_slot[t * k + j] = e * capacity + base[e] + used[e];
      ++used[e];
    }
  };

  switch (policy) {
    case DropPolicy::position:
      for (Index t = t0; t < t1; ++t)
        for (Index j = 0; j < k; ++j) take(t, j);
      break;
    case DropPolicy::choice_major:
      for (Index j = 0; j < k; ++j)
        for (Index t = t0; t < t1; ++t) take(t, j);
      break;
    case DropPolicy::batch_prioritized: {
      // Importance of a token is its largest gate weight; the stable sort keeps equal tokens in
      // ascending index.
      std::vector<Index>& order = scratch.order;
      order.resize(static_cast<std::size_t>(t1 - t0));
      std::iota(order.begin(), order.end(), t0);
      std::vector<double>& importance = scratch.priority;
      importance.resize(order.size());
      for (Index t = t0; t < t1; ++t) {
        // A scalar loop: k is small, and Eigen's vectorized maxCoeff trips GCC 12's
        // maybe-uninitialized warning under AVX-512.
        double best = static_cast<double>(gates(t, 0));
        for (Index j = 1; j < k; ++j) best = std::max(best, static_cast<double>(gates(t, j)));
        importance[static_cast<std::size_t>(t - t0)] = best;
      }
      std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) {
        return importance[static_cast<std::size_t>(a - t0)] >
               importance[static_cast<std::size_t>(b - t0)];
      });
      for (Index j = 0; j < k; ++j)
        for (Index t : order) take(t, j);
      break;
    }
    case DropPolicy::probability:
    case DropPolicy::random: {
      // Each expert keeps its group_capacity best entries by priority (ties: lower token, then
      // lower choice); the kept entries then take slots in token order, as DeepSpeed's cumsum over
      // the kept mask and Megatron's stable permutation do.
      const Index n = (t1 - t0) * k;
      const Index first = t0 * k;
      std::vector<double>& priority = scratch.priority;
      priority.resize(static_cast<std::size_t>(n));
      if (policy == DropPolicy::probability) {
        for (Index i = 0; i < n; ++i)
          priority[static_cast<std::size_t>(i)] =
              static_cast<double>(gates((first + i) / k, (first + i) % k));
      } else {
        const CounterRng rng = make_rng(seed, RandomStream::token_selection);
        for (Index i = 0; i < n; ++i)
          priority[static_cast<std::size_t>(i)] =
              rng.uniform(static_cast<std::uint64_t>(first + i));
      }
      std::vector<Index>& bucket = scratch.bucket;
      // Unused slots (kUnusedSlot) sort into bucket -1, before expert 0's, and are never kept.
      bucket.assign(static_cast<std::size_t>(num_experts + 2), 0);
      for (Index i = 0; i < n; ++i)
        ++bucket[static_cast<std::size_t>(ids((first + i) / k, (first + i) % k)) + 2];
      for (Index e = 0; e <= num_experts; ++e) bucket[e + 1] += bucket[e];
      std::vector<Index>& order = scratch.order;
      order.resize(static_cast<std::size_t>(n));
      std::fill(used.begin(), used.end(), 0);  // reused as fill cursors, reset below
      for (Index i = 0; i < n; ++i) {
        const ExpertId e = ids((first + i) / k, (first + i) % k);
        if (e != kUnusedSlot) order[static_cast<std::size_t>(bucket[e + 1] + used[e]++)] = i;
      }
      std::vector<char>& keep = scratch.keep;
      keep.assign(static_cast<std::size_t>(n), 0);
      auto better = [&](Index a, Index b) {
        const double pa = priority[static_cast<std::size_t>(a)];
        const double pb = priority[static_cast<std::size_t>(b)];
        return pa > pb || (pa == pb && a < b);
      };
      for (Index e = 0; e < num_experts; ++e) {
        auto begin = order.begin() + bucket[e + 1];
        auto end = order.begin() + bucket[e + 2];
        if (end - begin > group_capacity) {
          std::nth_element(begin, begin + group_capacity, end, better);
          end = begin + group_capacity;
        }
        for (auto it = begin; it != end; ++it) keep[static_cast<std::size_t>(*it)] = 1;
      }
      std::fill(used.begin(), used.end(), 0);
      for (Index i = 0; i < n; ++i) {
        if (!keep[static_cast<std::size_t>(i)]) continue;
        const Index t = (first + i) / k;
        const Index j = (first + i) % k;
        const ExpertId e = ids(t, j);
        entry_slot[t * k + j] = e * capacity + base[e] + used[e];
        ++used[e];
      }
      break;
    }
  }
  for (Index e = 0; e < num_experts; ++e) base[e] += used[e];
}

}  // namespace moe::detail
