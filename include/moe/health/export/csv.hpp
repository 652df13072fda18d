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
  for (double v : health_metrics(record.report))
    out << ',' << (std::isnan(v) ? std::string() : detail::format_number(v));
  for (const auto& list : health_lists(record.report)) {
    out << ',';
    for (std::size_t i = 0; i < list.size(); ++i)
      out << (i ? ";" : "") << detail::format_number(list[i]);
  }
  out << '\n';
}

/// Header and one row per record.
inline void write_csv(std::ostream& out, const std::vector<HealthRecord>& records) {
  write_csv_header(out);
  for (const auto& r : records) write_csv_row(out, r);
}

}  // namespace moe
