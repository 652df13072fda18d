// HealthCounts: the additive part of many health reports (loads, drops, token counts), merged
// across steps, layers or processes by plain sums, from which global balance statistics follow.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/health/config.hpp"
#include "moe/health/load.hpp"
#include "moe/health/report.hpp"

namespace moe {

struct HealthCounts {
  Index steps = 0;                 ///< reports added
  Index tokens = 0;                ///< sum of T
  Index assignments = 0;           ///< sum of T k
  IndexVector hard_load;           ///< [E] top-k counts
  Eigen::VectorXd soft_load;       ///< [E] probability sums
  IndexVector kept, dropped;       ///< [E] capacity counts (zero for reports without capacity)
  Index capacity_slots = 0;        ///< sum of E C over reports with capacity
  Index capacity_assignments = 0;  ///< sum of T k over reports with capacity
  Index capacity_tokens = 0;       ///< sum of T over reports with capacity
  Index tokens_without_expert = 0;
  Index nonfinite_logits = 0;
  Index skipped_tokens = 0;

  HealthCounts() = default;
  explicit HealthCounts(Index num_experts)
      : hard_load(IndexVector::Zero(num_experts)),
        soft_load(Eigen::VectorXd::Zero(num_experts)),
        kept(IndexVector::Zero(num_experts)),
        dropped(IndexVector::Zero(num_experts)) {}

  Index experts() const noexcept { return hard_load.size(); }

  /// Adds one report's counts (the report's E must match).
  void add(const HealthReport& r) {
    require(r.experts == experts(), "report.experts",
            detail::concat(experts(), " (the counts' experts)"), r.experts);
    ++steps;
    tokens += r.tokens;
    assignments += r.tokens * r.top_k;
    hard_load += r.hard.load.array().round().cast<Index>().matrix();
    soft_load += r.soft.load;
    if (r.capacity) {
      kept += r.capacity->kept;
      dropped += r.capacity->dropped;
      capacity_slots += r.experts * r.capacity->capacity;
      capacity_assignments += r.tokens * r.top_k;
      capacity_tokens += r.tokens;
      tokens_without_expert += r.capacity->tokens_without_expert;
    }
    if (r.logits) nonfinite_logits += r.logits->nonfinite;
    skipped_tokens += r.skipped_tokens;
  }

  /// Plain element-wise sum: merging in any order gives the same counts.
  void merge(const HealthCounts& o) {
    require(o.experts() == experts(), "other",
            detail::concat("counts over ", experts(), " experts (this one's)"), o.experts());
    steps += o.steps;
    tokens += o.tokens;
    assignments += o.assignments;
    hard_load += o.hard_load;
    soft_load += o.soft_load;
    kept += o.kept;
    dropped += o.dropped;
    capacity_slots += o.capacity_slots;
    capacity_assignments += o.capacity_assignments;
    capacity_tokens += o.capacity_tokens;
    tokens_without_expert += o.tokens_without_expert;
    nonfinite_logits += o.nonfinite_logits;
    skipped_tokens += o.skipped_tokens;
  }

  /// Flat buffer of 9 + 4 E doubles (exact for counts below 2^53) whose element-wise sum over
  /// processes is the packed merge: sum-all-reduce it (e.g. MPI_Allreduce with MPI_DOUBLE and
  /// MPI_SUM), then unpack. E is implied by the length.
  std::vector<double> pack() const {
    std::vector<double> out = {double(steps),
                               double(tokens),
                               double(assignments),
                               double(capacity_slots),
                               double(capacity_assignments),
                               double(capacity_tokens),
                               double(tokens_without_expert),
                               double(nonfinite_logits),
                               double(skipped_tokens)};
    for (const IndexVector* v : {&hard_load, &kept, &dropped})
      for (Index e = 0; e < experts(); ++e) out.push_back(static_cast<double>((*v)[e]));
    for (Index e = 0; e < experts(); ++e) out.push_back(soft_load[e]);
    return out;
  }

  static HealthCounts unpack(const std::vector<double>& flat) {
    require(flat.size() >= 9 && (flat.size() - 9) % 4 == 0, "flat", "9 + 4 E values", flat.size());
    const auto experts = static_cast<Index>((flat.size() - 9) / 4);
    HealthCounts c(experts);
    const auto at = [&](std::size_t i) { return static_cast<Index>(std::llround(flat[i])); };
    c.steps = at(0);
    c.tokens = at(1);
    c.assignments = at(2);
    c.capacity_slots = at(3);
    c.capacity_assignments = at(4);
    c.capacity_tokens = at(5);
    c.tokens_without_expert = at(6);
    c.nonfinite_logits = at(7);
    c.skipped_tokens = at(8);
    std::size_t i = 9;
    for (IndexVector* v : {&c.hard_load, &c.kept, &c.dropped})
      for (Index e = 0; e < experts; ++e) (*v)[e] = at(i++);
    for (Index e = 0; e < experts; ++e) c.soft_load[e] = flat[i++];
    return c;
  }

  /// Balance of the summed hard loads: the global MaxVio of Wang et al. 2024 when the counts
  /// span many steps or processes. Average load: assignments / E (or tokens / E, per_token).
  LoadStats hard_stats(const HealthConfig& config = {}) const {
    require(experts() >= 1, "HealthCounts", "counts over at least one expert (HealthCounts(E))",
            experts());
    const double total =
        config.average == AverageLoad::per_choice ? double(assignments) : double(tokens);
    return load_stats(hard_load.cast<double>(), total / static_cast<double>(experts()), config);
  }

  /// sum dropped / sum T k over the reports that carried capacity counts (NaN if none).
  double drop_rate() const {
    return static_cast<double>(dropped.sum()) / static_cast<double>(capacity_assignments);
  }
};

}  // namespace moe
