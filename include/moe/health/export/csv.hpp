// CSV export of health records: one row per layer and step, columns of health_columns(), readable
// by pandas.read_csv (missing values are empty cells, lists are ';'-separated).
#pragma once

#include <cmath>
#include <ostream>
#include <vector>

#include "moe/health/export/columns.hpp"
#include "moe/health/export/detail/number.hpp"
#include "moe/health/monitor.hpp"

namespace moe {

inline void write_csv_header(std::ostream& out) {
  const auto names = health_columns();
  for (std::size_t i = 0; i < names.size(); ++i) out << (i ? "," : "") << names[i];
  out << '\n';
}

/// One row; NaN is an empty cell (pandas NaN), infinities are "inf" / "-inf".
inline void write_csv_row(std::ostream& out, const HealthRecord& record) {
  out << record.step << ',' << record.layer;
  const HealthMetrics values = health_metrics(record.report);
  const auto lists = health_lists(record.report);
  for (const HealthColumnGroup& g : kHealthColumnGroups) {
    for (std::size_t m = g.first_metric; m < g.end_metric; ++m)
      out << ',' << (std::isnan(values[m]) ? std::string() : detail::format_number(values[m]));
    for (std::size_t c = g.first_list; c < g.end_list; ++c) {
      out << ',';
      for (std::size_t i = 0; i < lists[c].size(); ++i)
        out << (i ? ";" : "") << detail::format_number(lists[c][i]);
    }
  }
  out << '\n';
}

/// Header and one row per record.
inline void write_csv(std::ostream& out, const std::vector<HealthRecord>& records) {
  write_csv_header(out);
  for (const auto& r : records) write_csv_row(out, r);
}

}  // namespace moe
