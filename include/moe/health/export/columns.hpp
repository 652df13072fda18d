// The columns of the CSV and JSON Lines exports, in order: step, layer, the scalar metrics
// (kHealthMetricNames), then the per-expert lists. Stable: new columns are only appended.
#pragma once

#include <array>
#include <string_view>
#include <vector>

#include "moe/health/metrics.hpp"
#include "moe/health/monitor.hpp"

namespace moe {

/// Per-expert lists of a record: ';'-separated in CSV, arrays in JSON Lines.
inline constexpr std::array<std::string_view, 7> kHealthListColumns = {
    "soft_hot_experts", "soft_cold_experts", "hard_hot_experts", "hard_cold_experts",
    "soft_load",        "hard_load",         "dropped",
};

/// Every export column name in order.
inline std::vector<std::string_view> health_columns() {
  std::vector<std::string_view> names = {"step", "layer"};
  names.insert(names.end(), kHealthMetricNames.begin(), kHealthMetricNames.end());
  names.insert(names.end(), kHealthListColumns.begin(), kHealthListColumns.end());
  return names;
}

/// The lists of kHealthListColumns for one report (`dropped` is empty without capacity counts).
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
          r.capacity ? vec(r.capacity->dropped) : std::vector<double>{}};
}

}  // namespace moe
