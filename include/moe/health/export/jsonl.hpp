// JSON Lines export of health records: one object per layer and step, keys of health_columns()
// in order, readable by pandas.read_json(lines=True).
#pragma once

#include <cmath>
#include <ostream>
#include <vector>

#include "moe/health/export/columns.hpp"
#include "moe/health/export/detail/number.hpp"
#include "moe/health/monitor.hpp"

namespace moe {

namespace detail {
/// JSON has no NaN or infinity: both are null.
inline std::string json_number(double v) { return std::isfinite(v) ? format_number(v) : "null"; }
}  // namespace detail

/// One line `{"step":..,"layer":..,<metrics>,<lists as arrays>}`.
inline void write_jsonl_row(std::ostream& out, const HealthRecord& record) {
  out << "{\"step\":" << record.step << ",\"layer\":" << record.layer;
  const HealthMetrics values = health_metrics(record.report);
  const auto lists = health_lists(record.report);
  for (const HealthColumnGroup& g : kHealthColumnGroups) {
    for (std::size_t m = g.first_metric; m < g.end_metric; ++m)
      out << ",\"" << kHealthMetricNames[m] << "\":" << detail::json_number(values[m]);
    for (std::size_t c = g.first_list; c < g.end_list; ++c) {
      out << ",\"" << kHealthListColumns[c] << "\":[";
      for (std::size_t i = 0; i < lists[c].size(); ++i)
        out << (i ? "," : "") << detail::json_number(lists[c][i]);
      out << ']';
    }
  }
  out << "}\n";
}

inline void write_jsonl(std::ostream& out, const std::vector<HealthRecord>& records) {
  for (const auto& r : records) write_jsonl_row(out, r);
}

}  // namespace moe
