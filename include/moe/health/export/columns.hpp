// The columns of the CSV and JSON Lines exports, in order: step, layer, then each generation of
// columns in turn, its scalar metrics then its per-expert lists. Stable: a new generation is
// only appended, so a column keeps its position once written.
#pragma once

#include <array>
#include <string_view>
#include <vector>

#include "moe/health/metrics.hpp"
#include "moe/health/monitor.hpp"

namespace moe {

/// Per-expert lists of a record: ';'-separated in CSV, arrays in JSON Lines.
inline constexpr std::array<std::string_view, 10> kHealthListColumns = {
    "soft_hot_experts",  "soft_cold_experts",  "hard_hot_experts", "hard_cold_experts",
    "soft_load",         "hard_load",          "dropped",
    "mean_distribution",                        // appended in 0.2.0
    "bf16_whatif_lost",  "bf16_whatif_gained",  // appended in 0.3.0
};

/// A generation of export columns: metrics [first_metric, end_metric) of kHealthMetricNames,
/// then lists [first_list, end_list) of kHealthListColumns.
struct HealthColumnGroup {
  std::size_t first_metric, end_metric, first_list, end_list;
};

/// 0.1.0's columns, then those of 0.2.0 (thresholds, entropies, margins, bf16 stability and
/// the mean routing distribution), then 0.3.0's (the layer's bf16 what-if, per expert too).
inline constexpr std::array<HealthColumnGroup, 3> kHealthColumnGroups = {{
    {0, kHealthMetricsBeforeLists, 0, 7},
    {kHealthMetricsBeforeLists, kHealthMetricsThrough020, 7, 8},
    {kHealthMetricsThrough020, kHealthMetricCount, 8, kHealthListColumns.size()},
}};

/// Every export column name in order.
inline std::vector<std::string_view> health_columns() {
  std::vector<std::string_view> names = {"step", "layer"};
  for (const HealthColumnGroup& g : kHealthColumnGroups) {
    names.insert(names.end(), kHealthMetricNames.begin() + g.first_metric,
                 kHealthMetricNames.begin() + g.end_metric);
    names.insert(names.end(), kHealthListColumns.begin() + g.first_list,
                 kHealthListColumns.begin() + g.end_list);
  }
  return names;
}

/// The lists of kHealthListColumns for one report (`dropped` is empty without capacity counts,
/// `mean_distribution` when no token was counted, the what-if's without HealthReport::what_if).
inline std::array<std::vector<double>, kHealthListColumns.size()> health_lists(
    const HealthReport& r) {
  const auto ids = [](const std::vector<ExpertId>& v) {
    return std::vector<double>(v.begin(), v.end());
  };
  const auto vec = [](const auto& v) {
    std::vector<double> out(static_cast<std::size_t>(v.size()));
    for (Index i = 0; i < v.size(); ++i)
      out[static_cast<std::size_t>(i)] = static_cast<double>(v[i]);
    return out;
  };
  return {ids(r.soft.hot),
          ids(r.soft.cold),
          ids(r.hard.hot),
          ids(r.hard.cold),
          vec(r.soft.load),
          vec(r.hard.load),
          r.capacity ? vec(r.capacity->dropped) : std::vector<double>{},
          r.mean_distribution.allFinite() ? vec(r.mean_distribution) : std::vector<double>{},
          r.what_if ? std::vector<double>(r.what_if->lost.begin(), r.what_if->lost.end())
                    : std::vector<double>{},
          r.what_if ? std::vector<double>(r.what_if->gained.begin(), r.what_if->gained.end())
                    : std::vector<double>{}};
}

}  // namespace moe
