// The health family in one include: metrics of one step, the monitor, and the exporters.
// (The tensor overloads live in moe/health/tensor.hpp, which pulls in Eigen's Tensor module.)
#pragma once

#include "moe/health/capacity.hpp"
#include "moe/health/config.hpp"
#include "moe/health/counts.hpp"
#include "moe/health/distribution.hpp"
#include "moe/health/export/columns.hpp"
#include "moe/health/export/csv.hpp"
#include "moe/health/export/jsonl.hpp"
#include "moe/health/export/svg.hpp"
#include "moe/health/export/table.hpp"
#include "moe/health/load.hpp"
#include "moe/health/logits.hpp"
#include "moe/health/metrics.hpp"
#include "moe/health/monitor.hpp"
#include "moe/health/report.hpp"
