// moe-routing: the umbrella header. Include the family headers directly for faster builds.
// Not included here: moe/health/export.hpp (the health exporters), moe/health/tensor.hpp (Eigen's
// Tensor module) and moe/parallel/ (MPI).
#pragma once

#include "moe/version.hpp"

#include "moe/core/aligned_buffer.hpp"
#include "moe/core/bfloat16.hpp"
#include "moe/core/error.hpp"
#include "moe/core/parameters.hpp"
#include "moe/core/random.hpp"
#include "moe/core/types.hpp"
#include "moe/core/workspace.hpp"

#include "moe/kernels/bf16_product.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/panels.hpp"

#include "moe/routing/config.hpp"
#include "moe/routing/hash.hpp"
#include "moe/routing/presets.hpp"
#include "moe/routing/replay.hpp"
#include "moe/routing/router.hpp"
#include "moe/routing/routing.hpp"
#include "moe/routing/topk.hpp"

#include "moe/dispatch/capacity_planner.hpp"
#include "moe/dispatch/dispatch.hpp"
#include "moe/dispatch/dropless_permute.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "moe/dispatch/expert_choice.hpp"

#include "moe/sparse/ops.hpp"
#include "moe/sparse/panel_ops.hpp"

#include "moe/experts/bf16_dropless_ffn.hpp"
#include "moe/experts/capacity_ffn.hpp"
#include "moe/experts/dropless_ffn.hpp"
#include "moe/experts/packed_expert_weights.hpp"

#include "moe/balance/bias_balancer.hpp"
#include "moe/balance/global_load_balancing_loss.hpp"
#include "moe/balance/load_balancing_loss.hpp"
#include "moe/balance/noisy_topk_losses.hpp"
#include "moe/balance/z_loss.hpp"

#include "moe/health/health.hpp"

#include "moe/layer/moe_layer.hpp"
