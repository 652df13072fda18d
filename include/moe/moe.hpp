// moe-routing: the umbrella header. Include the family headers directly for faster builds.
#pragma once

#include "moe/core/error.hpp"
#include "moe/core/random.hpp"
#include "moe/core/types.hpp"
#include "moe/core/workspace.hpp"
#include "moe/routing/config.hpp"
#include "moe/routing/presets.hpp"
#include "moe/routing/router.hpp"
#include "moe/routing/routing.hpp"
#include "moe/routing/topk.hpp"
