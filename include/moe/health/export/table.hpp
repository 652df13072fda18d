// Compact text table of health records for a terminal: one line per layer and step.
#pragma once

#include <cmath>
#include <cstdio>
#include <iterator>
#include <ostream>
#include <string>
#include <vector>

#include "moe/health/monitor.hpp"

namespace moe {

namespace detail {

/// One right-aligned cell after a space: the value with `decimals` decimals, "-" when NaN.
inline std::string table_cell(double v, int width, int decimals) {
  char buffer[64];
  if (std::isnan(v))
    std::snprintf(buffer, sizeof buffer, " %*s", width, "-");
  else
    std::snprintf(buffer, sizeof buffer, " %*.*f", width, decimals, v);
  return buffer;
}

inline std::string table_head(const char* name, int width) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, " %*s", width, name);
  return buffer;
}

}  // namespace detail

/// Columns: layer, step, tokens, soft and hard CV, hard MaxVio, hard hot/cold counts, normalized
/// entropy, mean top-1 probability, mean logsumexp, drop rate (%), non-finite logits; "-" = absent.
inline std::string format_health_table(const std::vector<HealthRecord>& records) {
  struct Column {
    const char* name;
    int width, decimals;
  };
  static constexpr Column columns[] = {
      {"layer", 5, 0},   {"step", 8, 0},  {"tokens", 8, 0},   {"soft_cv", 8, 3}, {"hard_cv", 8, 3},
      {"max_vio", 8, 3}, {"hot", 4, 0},   {"cold", 4, 0},     {"entropy", 8, 3}, {"top1", 6, 3},
      {"lse", 8, 3},     {"drop%", 6, 2}, {"nonfinite", 9, 0}};
  std::string out;
  for (const auto& c : columns) out += detail::table_head(c.name, c.width);
  out += '\n';
  const double nan = std::nan("");
  for (const auto& rec : records) {
    const HealthReport& r = rec.report;
    const double values[] = {static_cast<double>(rec.layer),
                             static_cast<double>(rec.step),
                             static_cast<double>(r.tokens),
                             r.soft.cv,
                             r.hard.cv,
                             r.hard.max_vio,
                             static_cast<double>(r.hard.hot_count()),
                             static_cast<double>(r.hard.cold_count()),
                             r.normalized_entropy,
                             r.mean_top1,
                             r.logits ? r.logits->mean_logsumexp : nan,
                             r.capacity ? 100.0 * r.capacity->drop_rate : nan,
                             r.logits ? static_cast<double>(r.logits->nonfinite) : nan};
    static_assert(std::size(values) == std::size(columns));
    for (std::size_t i = 0; i < std::size(columns); ++i)
      out += detail::table_cell(values[i], columns[i].width, columns[i].decimals);
    out += '\n';
  }
  return out;
}

inline void write_health_table(std::ostream& out, const std::vector<HealthRecord>& records) {
  out << format_health_table(records);
}

}  // namespace moe
