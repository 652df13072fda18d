// SVG heatmap of one layer's expert load over steps: experts down, steps across, colour = load /
// average load on a log scale (blue under, white at 1, red over), hot cells outlined solid and
// cold cells dotted. Plain SVG 1.1 that any browser opens; each cell has a hover tooltip.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ostream>
#include <string>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/health/export/detail/number.hpp"
#include "moe/health/monitor.hpp"

namespace moe {

struct SvgHeatmapOptions {
  Index layer = 0;    ///< records of other layers are ignored
  bool hard = true;   ///< hard (top-k count) loads; false: soft (probability sum) loads
  int cell = 12;      ///< cell side in pixels
  std::string run;    ///< names the run in the default title, so that heatmaps side by side differ
  std::string title;  ///< defaults to "<run>: layer L: hard load / average load, steps A-B"
};

namespace detail {

inline std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

/// Diverging colour of a load ratio: log2(ratio) / 2 clamped to [-1, 1], so 1/4 and below is full
/// blue, 1 is white and 4 and above is full red. Grey when the ratio is undefined.
inline std::string ratio_colour(double ratio) {
  if (std::isnan(ratio)) return "#bbbbbb";
  const double t = std::clamp(std::log2(ratio) / 2.0, -1.0, 1.0);  // log2(0) = -inf -> -1
  const double end[2][3] = {{33, 102, 172}, {178, 24, 43}};
  const double* c = t < 0 ? end[0] : end[1];
  const double a = std::abs(t);
  char hex[8];
  std::snprintf(hex, sizeof hex, "#%02x%02x%02x",
                static_cast<int>(std::lround(255 + a * (c[0] - 255))),
                static_cast<int>(std::lround(255 + a * (c[1] - 255))),
                static_cast<int>(std::lround(255 + a * (c[2] - 255))));
  return hex;
}

}  // namespace detail

/// Writes the heatmap of `options.layer` over `records` (in the order given, normally by step).
inline void write_svg_heatmap(std::ostream& out, const std::vector<HealthRecord>& records,
                              const SvgHeatmapOptions& options = {}) {
  require(options.cell >= 2, "SvgHeatmapOptions::cell", ">= 2", options.cell);
  std::vector<const HealthRecord*> rows;
  for (const auto& r : records)
    if (r.layer == options.layer) rows.push_back(&r);
  const Index experts = rows.empty() ? 0 : rows.front()->report.experts;
  for (const HealthRecord* r : rows) {
    require(r->report.experts == experts, "records",
            detail::concat(experts, " experts in every record of the layer"), r->report.experts);
    const LoadStats& load = options.hard ? r->report.hard : r->report.soft;
    require(load.load.size() == experts, "records",
            detail::concat("loads of ", experts, " experts (report.experts) in every record"),
            load.load.size());
  }
  const Index cell = options.cell;
  const Index left = 64, top = 36, bottom = 64, right = 16;
  const auto steps = static_cast<Index>(rows.size());
  const Index width = checked_add(
      left + right, std::max<Index>(checked_mul(steps, cell, "SvgHeatmapOptions::cell"), 240),
      "SvgHeatmapOptions::cell");
  const Index height =
      checked_add(top + bottom, checked_mul(experts, cell, "SvgHeatmapOptions::cell"),
                  "SvgHeatmapOptions::cell");
  const std::string kind = options.hard ? "hard" : "soft";
  const std::string title =
      !options.title.empty()
          ? options.title
          : detail::concat(options.run.empty() ? "" : options.run + ": ", "layer ", options.layer,
                           ": ", kind, " load / average load",
                           rows.empty() ? std::string(", no steps")
                                        : detail::concat(", steps ", rows.front()->step, "-",
                                                         rows.back()->step));

  out << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      << "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" << width
      << "\" height=\"" << height << "\" viewBox=\"0 0 " << width << ' ' << height
      << "\" font-family=\"sans-serif\" font-size=\"10\">\n"
      << "<title>" << detail::xml_escape(title) << "</title>\n"
      << "<text x=\"" << left << "\" y=\"16\" font-size=\"13\">" << detail::xml_escape(title)
      << "</text>\n"
      << "<text x=\"4\" y=\"" << top - 6 << "\">expert</text>\n";
  const Index expert_every = std::max<Index>(1, (experts + 15) / 16);
  for (Index e = 0; e < experts; e += expert_every)
    out << "<text x=\"" << left - 4 << "\" y=\"" << top + e * cell + cell - 2
        << "\" text-anchor=\"end\">" << e << "</text>\n";
  const Index step_every = std::max<Index>(1, (steps + 9) / 10);
  for (Index s = 0; s < steps; s += step_every)
    out << "<text x=\"" << left + s * cell << "\" y=\"" << top + experts * cell + 12 << "\">"
        << rows[static_cast<std::size_t>(s)]->step << "</text>\n";
  out << "<text x=\"" << left << "\" y=\"" << top + experts * cell + 26 << "\">step</text>\n";

  out << "<g stroke-width=\"1.5\">\n";
  for (Index s = 0; s < steps; ++s) {
    const HealthRecord& rec = *rows[static_cast<std::size_t>(s)];
    const LoadStats& load = options.hard ? rec.report.hard : rec.report.soft;
    for (Index e = 0; e < experts; ++e) {
      const double ratio = load.load[e] / load.average_load;
      const bool hot =
          std::binary_search(load.hot.begin(), load.hot.end(), static_cast<ExpertId>(e));
      const bool cold =
          std::binary_search(load.cold.begin(), load.cold.end(), static_cast<ExpertId>(e));
      out << "<rect class=\"cell" << (hot ? " hot" : "") << (cold ? " cold" : "") << "\" x=\""
          << left + s * cell << "\" y=\"" << top + e * cell << "\" width=\"" << cell
          << "\" height=\"" << cell << "\" fill=\"" << detail::ratio_colour(ratio) << '"';
      if (hot) out << " stroke=\"#000000\"";
      if (cold) out << " stroke=\"#000000\" stroke-dasharray=\"2,2\"";
      out << "><title>step " << rec.step << ", expert " << e << ": load "
          << detail::format_number(load.load[e]) << ", " << detail::format_number(ratio)
          << " x average" << (hot ? " (hot)" : "") << (cold ? " (cold)" : "")
          << "</title></rect>\n";
    }
  }
  out << "</g>\n";

  // Legend: the colour scale from 1/4 to 4 times the average, then the two outlines.
  const Index ly = top + experts * cell + 34;
  out << "<defs><linearGradient id=\"ratio\" x1=\"0\" x2=\"1\" y1=\"0\" y2=\"0\">"
      << "<stop offset=\"0\" stop-color=\"" << detail::ratio_colour(0.25) << "\"/>"
      << "<stop offset=\"0.5\" stop-color=\"#ffffff\"/>"
      << "<stop offset=\"1\" stop-color=\"" << detail::ratio_colour(4.0) << "\"/>"
      << "</linearGradient></defs>\n"
      << "<rect class=\"legend\" x=\"" << left << "\" y=\"" << ly
      << "\" width=\"120\" height=\"10\" "
      << "fill=\"url(#ratio)\" stroke=\"#888888\"/>\n"
      << "<text x=\"" << left << "\" y=\"" << ly + 22 << "\">&#8804;0.25</text>\n"
      << "<text x=\"" << left + 60 << "\" y=\"" << ly + 22 << "\" text-anchor=\"middle\">1</text>\n"
      << "<text x=\"" << left + 120 << "\" y=\"" << ly + 22
      << "\" text-anchor=\"end\">&#8805;4</text>\n"
      << "<rect class=\"legend\" x=\"" << left + 136 << "\" y=\"" << ly
      << "\" width=\"10\" height=\"10\" "
      << "fill=\"#ffffff\" stroke=\"#000000\" stroke-width=\"1.5\"/>\n"
      << "<text x=\"" << left + 150 << "\" y=\"" << ly + 9 << "\">hot</text>\n"
      << "<rect class=\"legend\" x=\"" << left + 180 << "\" y=\"" << ly
      << "\" width=\"10\" height=\"10\" "
      << "fill=\"#ffffff\" stroke=\"#000000\" stroke-width=\"1.5\" stroke-dasharray=\"2,2\"/>\n"
      << "<text x=\"" << left + 194 << "\" y=\"" << ly + 9 << "\">cold</text>\n"
      << "</svg>\n";
}

}  // namespace moe
