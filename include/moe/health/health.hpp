// The health family in one include: metrics of one step and the monitor. The exporters (CSV, JSON
// Lines, SVG, table) are in moe/health/export.hpp, the tensor overloads in moe/health/tensor.hpp
// (which pulls in Eigen's Tensor module); neither is included here.
#pragma once

#include "moe/health/bf16_what_if.hpp"
#include "moe/health/capacity.hpp"
#include "moe/health/config.hpp"
#include "moe/health/counts.hpp"
#include "moe/health/distribution.hpp"
#include "moe/health/load.hpp"
#include "moe/health/logits.hpp"
#include "moe/health/margins.hpp"
#include "moe/health/metrics.hpp"
#include "moe/health/monitor.hpp"
#include "moe/health/report.hpp"
#include "moe/health/stability.hpp"
