// Compact text table of health records for a terminal: one line per layer and step.
#pragma once

#include <cmath>
#include <cstdio>
#include <ostream>
#include <string>
#include <vector>

#include "moe/health/monitor.hpp"

namespace moe {

namespace detail {
inline std::string table_cell(double v, const char* format, int width) {
  char buffer[48];
  if (std::isnan(v))
    std::snprintf(buffer, sizeof buffer, "%*s", width, "-");
  else
    std::snprintf(buffer, sizeof buffer, format, width, v);
  return buffer;
}
}  // namespace detail

/// Columns: layer, step, tokens, soft and hard CV, hard MaxVio, hard hot/cold counts, normalized
/// entropy, mean top-1 probability, mean logsumexp, drop rate (%), non-finite logits; "-" = absent.
inline std::string format_health_table(const std::vector<HealthRecord>& records) {
  std::string out =
      "layer     step  tokens  soft_cv  hard_cv  max_vio  hot cold  entropy   top1      lse  "
      "drop%  nonfinite\n";
  const double nan = std::nan("");
  for (const auto& rec : records) {
    const HealthReport& r = rec.report;
    char head[64];
    std::snprintf(head, sizeof head, "%5lld %8lld %7lld", static_cast<long long>(rec.layer),
                  static_cast<long long>(rec.step), static_cast<long long>(r.tokens));
    out += head;
    out += detail::table_cell(r.soft.cv, " %*.3f", 8);
    out += detail::table_cell(r.hard.cv, " %*.3f", 8);
    out += detail::table_cell(r.hard.max_vio, " %*.3f", 8);
    out += detail::table_cell(static_cast<double>(r.hard.hot_count()), " %*.0f", 4);
    out += detail::table_cell(static_cast<double>(r.hard.cold_count()), " %*.0f", 4);
    out += detail::table_cell(r.normalized_entropy, " %*.3f", 8);
    out += detail::table_cell(r.mean_top1, " %*.3f", 6);
    out += detail::table_cell(r.logits ? r.logits->mean_logsumexp : nan, " %*.3f", 8);
    out += detail::table_cell(r.capacity ? 100.0 * r.capacity->drop_rate : nan, " %*.2f", 6);
    out +=
        detail::table_cell(r.logits ? static_cast<double>(r.logits->nonfinite) : nan, " %*.0f", 10);
    out += '\n';
  }
  return out;
}

inline void write_health_table(std::ostream& out, const std::vector<HealthRecord>& records) {
  out << format_health_table(records);
}

}  // namespace moe
