// The training losses a MoE layer takes on the routing of its whole batch: the configured
// load-balancing loss and the router z-loss, with their gradients for RouterUpstream.
#pragma once

#include "moe/balance/load_balancing_loss.hpp"
#include "moe/balance/z_loss.hpp"
#include "moe/layer/config.hpp"
#include "moe/routing/routing.hpp"

namespace moe::detail {

/// aux = load_balancing_loss(scores, ids) with the config's coefficient (Switch/GShard family;
/// Megatron and HF recompute the top-k inside the loss, the others count the routing used);
/// z = router_z_loss(logits) (ST-MoE). Either is left empty when off. With `cu_seqlens` (packed
/// sequences over the routing's rows) the aux loss is taken per sequence
/// (load_balancing_loss_packed).
template <class S>
void routing_losses(const MoELayerConfig& config, const Routing<S>& routing, LossGradient<S>& aux,
                    LossGradient<S>& z, const IndexVector* cu_seqlens = nullptr) {
  aux = LossGradient<S>();
  z = LossGradient<S>();
  if (config.aux_loss) {
    const bool given = config.aux_loss->selection == AuxSelection::given;
    const ExpertIdMatrix& ids = given ? routing.expert_ids : ExpertIdMatrix();
    aux = cu_seqlens != nullptr
              ? load_balancing_loss_packed(routing.scores, ids, *config.aux_loss, *cu_seqlens)
              : load_balancing_loss(routing.scores, ids, *config.aux_loss);
  }
  if (config.z_loss_coefficient > 0) z = router_z_loss(routing.logits, config.z_loss_coefficient);
}

}  // namespace moe::detail
