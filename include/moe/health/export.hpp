// The health exporters in one include: CSV, JSON Lines, SVG heatmap and terminal table of
// HealthMonitor records, and the column names they share. Kept out of moe/health/health.hpp and
// moe/moe.hpp: their string and stream code adds about 0.1 s to every translation unit that
// includes them (4% of moe/health/health.hpp alone, g++ 12 -O2; CHANGELOG.md, 0.2.0), which code
// that computes or monitors health without writing it out does not need.
#pragma once

#include "moe/health/export/columns.hpp"
#include "moe/health/export/csv.hpp"
#include "moe/health/export/jsonl.hpp"
#include "moe/health/export/svg.hpp"
#include "moe/health/export/table.hpp"
