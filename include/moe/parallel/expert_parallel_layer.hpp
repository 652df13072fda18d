// Expert parallelism: a MoELayer over the all-to-all token exchange, its experts sharded over MPI
// ranks (moe/parallel/all_to_all_exchange.hpp). Everything else is the layer of moe/layer/: the
// same parameters (mapped buffers included), losses, balancer and health, forward and backward.
#pragma once

#include "moe/layer/moe_layer.hpp"
#include "moe/parallel/all_to_all_exchange.hpp"
#include "moe/parallel/routing_record_exchange.hpp"

namespace moe {

/// A MoE layer whose experts are sharded over the ranks of a Communicator. Built as
/// `ExpertParallelMoELayer<S> layer(config, comm[, placement[, capacity scope]])`; its forward and
/// backward are collective.
template <class S>
using ExpertParallelMoELayer = MoELayer<S, AllToAllExchange>;

/// What an ExpertParallelMoELayer's forward saves for its backward.
template <class S>
using ExpertParallelContext = MoELayerContext<S, AllToAllExchange>;

}  // namespace moe
