// Plain-loop references for the dispatch family: a priority sort over all entries instead of the
// planner's buckets, dense one-hot [T, E, C] dispatch and combine tensors (the GShard einsum
// formulation) instead of row copies, and a full sort per expert for expert choice.
#pragma once

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include <moe/core/random.hpp>
#include <moe/core/types.hpp>
#include <moe/dispatch/capacity.hpp>

namespace moe::test {

/// Reference token-choice slots: [T, k] flat slot e·capacity + c, or -1 when dropped.
struct ReferenceSlots {
  Eigen::Matrix<Index, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> slot;
  Index capacity = 0;
};

/// Sorts every entry of a group by the policy's full priority key, then walks that order giving
/// each expert up to `group_capacity` entries. Slot order inside an expert is the walk order,
/// except for probability / random where the kept entries are numbered in (token, choice) order.
inline ReferenceSlots reference_slots(const ExpertIdMatrix& ids, const RowMatrix<double>& gates,
                                      Index num_experts, Index group_size, Index group_capacity,
                                      DropPolicy policy, std::uint64_t seed) {
  const Index tokens = ids.rows();
  const Index k = ids.cols();
  const Index group = group_size == 0 ? tokens : group_size;
  const Index groups = group_size == 0 ? 1 : tokens / group_size;
  ReferenceSlots out;
  out.capacity = groups * group_capacity;
  out.slot.setConstant(tokens, k, -1);
  const CounterRng rng = make_rng(seed, RandomStream::token_selection);
  std::vector<Index> filled(static_cast<std::size_t>(num_experts), 0);
  for (Index g = 0; g < groups; ++g) {
    // key: (primary, secondary, tertiary) ascending
    std::vector<std::tuple<double, double, double, Index, Index>> entries;
    for (Index t = g * group; t < (g + 1) * group; ++t) {
      double importance = -1e300;
      for (Index j = 0; j < k; ++j) importance = std::max(importance, gates(t, j));
      for (Index j = 0; j < k; ++j) {
        const double tt = static_cast<double>(t), jj = static_cast<double>(j);
        switch (policy) {
          case DropPolicy::position:
            entries.emplace_back(tt, jj, 0.0, t, j);
            break;
          case DropPolicy::choice_major:
            entries.emplace_back(jj, tt, 0.0, t, j);
            break;
          case DropPolicy::batch_prioritized:
            entries.emplace_back(jj, -importance, tt, t, j);
            break;
          case DropPolicy::probability:
            entries.emplace_back(-gates(t, j), tt, jj, t, j);
            break;
          case DropPolicy::random:
            entries.emplace_back(-rng.uniform(static_cast<std::uint64_t>(t * k + j)), tt, jj, t, j);
            break;
        }
      }
    }
    std::sort(entries.begin(), entries.end());
    std::vector<Index> count(static_cast<std::size_t>(num_experts), 0);
    std::vector<std::vector<char>> kept(static_cast<std::size_t>(tokens),
                                        std::vector<char>(static_cast<std::size_t>(k), 0));
    for (const auto& entry : entries) {
      const Index t = std::get<3>(entry), j = std::get<4>(entry);
      const ExpertId e = ids(t, j);
      if (e < 0) continue;  // an unused slot: no slot, and not a drop
      if (count[e] >= group_capacity) continue;
      if (policy == DropPolicy::probability || policy == DropPolicy::random) {
        kept[t][j] = 1;
      } else {
        out.slot(t, j) = e * out.capacity + filled[e] + count[e];
      }
      ++count[e];
    }
    if (policy == DropPolicy::probability || policy == DropPolicy::random) {
      std::vector<Index> next(static_cast<std::size_t>(num_experts), 0);
      for (Index t = g * group; t < (g + 1) * group; ++t)
        for (Index j = 0; j < k; ++j)
          if (kept[t][j])
            out.slot(t, j) = ids(t, j) * out.capacity + filled[ids(t, j)] + next[ids(t, j)]++;
    }
    for (Index e = 0; e < num_experts; ++e) filled[e] += count[e];
  }
  return out;
}

/// Dense combine tensor cw[t][e·capacity + c] = weight of the entry in that slot (0 elsewhere),
/// and dispatch mask dm = [entry present], as GShard / DeepSpeed build them.
struct DenseRouting {
  RowMatrix<double> combine;  ///< [T, E·capacity]
  RowMatrix<double> mask;     ///< [T, E·capacity]
};

inline DenseRouting dense_routing(const ReferenceSlots& slots, const RowMatrix<double>& weights,
                                  Index num_experts) {
  DenseRouting d;
  const Index tokens = slots.slot.rows();
  d.combine.setZero(tokens, num_experts * slots.capacity);
  d.mask.setZero(tokens, num_experts * slots.capacity);
  for (Index t = 0; t < tokens; ++t)
    for (Index j = 0; j < slots.slot.cols(); ++j)
      if (slots.slot(t, j) >= 0) {
        d.combine(t, slots.slot(t, j)) += weights(t, j);
        d.mask(t, slots.slot(t, j)) = 1.0;
      }
  return d;
}

/// buffer[s][m] = Σ_t mask[t][s] · x[t][m]  ("sec,sm->ecm")
inline RowMatrix<double> dense_dispatch(const DenseRouting& d, const RowMatrix<double>& x) {
  RowMatrix<double> buffer = RowMatrix<double>::Zero(d.mask.cols(), x.cols());
  for (Index s = 0; s < d.mask.cols(); ++s)
    for (Index t = 0; t < d.mask.rows(); ++t)
      if (d.mask(t, s) != 0.0)
        for (Index m = 0; m < x.cols(); ++m) buffer(s, m) += d.mask(t, s) * x(t, m);
  return buffer;
}

/// y[t][m] = Σ_s combine[t][s] · out[s][m]  ("sec,ecm->sm")
inline RowMatrix<double> dense_combine(const DenseRouting& d, const RowMatrix<double>& out) {
  RowMatrix<double> y = RowMatrix<double>::Zero(d.combine.rows(), out.cols());
  for (Index t = 0; t < d.combine.rows(); ++t)
    for (Index s = 0; s < d.combine.cols(); ++s)
      for (Index m = 0; m < out.cols(); ++m) y(t, m) += d.combine(t, s) * out(s, m);
  return y;
}

/// Expert choice reference: chosen[e] = the min(C, group) tokens of each group with the highest
/// score for e (ties to the lower token), listed by score, groups one after the other.
inline std::vector<std::vector<Index>> reference_expert_choice(const RowMatrix<double>& scores,
                                                               Index group_size,
                                                               Index group_capacity) {
  const Index tokens = scores.rows();
  const Index group = group_size == 0 ? tokens : group_size;
  const Index groups = group_size == 0 ? 1 : tokens / group_size;
  std::vector<std::vector<Index>> chosen(static_cast<std::size_t>(scores.cols()));
  for (Index e = 0; e < scores.cols(); ++e)
    for (Index g = 0; g < groups; ++g) {
      std::vector<std::pair<double, Index>> column;
      for (Index t = g * group; t < (g + 1) * group; ++t) column.emplace_back(-scores(t, e), t);
      std::sort(column.begin(), column.end());
      for (Index c = 0; c < std::min(group_capacity, group); ++c)
        chosen[e].push_back(column[static_cast<std::size_t>(c)].second);
    }
  return chosen;
}

}  // namespace moe::test
