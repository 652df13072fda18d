// What the layer's test files share: a layer with spread routing and non-zero biases, and the name
// of a dispatch for INFO messages.
#pragma once

#include <moe/layer/moe_layer.hpp>

#include "support/random_matrix.hpp"

namespace moe::test {

/// A layer of config c with init_weights(3), then a router spread by random weights and random
/// expert biases b1, b2 (and shared gate), so that routing and biases are not degenerate.
inline MoELayer<double> random_layer(const MoELayerConfig& c) {
  MoELayer<double> layer(c);
  layer.init_weights(3);
  layer.router.weight = random_matrix(c.router.num_experts, c.router.hidden, 4);  // spread routing
  layer.experts.b1 = random_matrix(layer.experts.b1.rows(), layer.experts.b1.cols(), 5, 0.3);
  layer.experts.b2 = random_matrix(layer.experts.b2.rows(), layer.experts.b2.cols(), 6, 0.3);
  if (c.shared.gated) layer.shared_gate_weight = random_matrix(c.router.hidden, 1, 7);
  return layer;
}

inline const char* dispatch_name(DispatchKind d) {
  return d == DispatchKind::dropless ? "dropless" : "capacity";
}

}  // namespace moe::test
