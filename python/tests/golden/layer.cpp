// The layer's results for the Python tests (test_layer.py builds the same configs): forward and
// backward of a dropless SwiGLU layer with a z-loss, and of a capacity layer with expert biases
// and a gated shared expert, in float and double.
#include <string>

#include "areas.hpp"
#include "inputs.hpp"
#include "npy.hpp"

#include "moe/moe.hpp"

namespace moe::golden {
namespace {

constexpr Index kTokens = 24, kHidden = 32, kFfn = 48, kExperts = 8, kTopK = 2;

MoELayerConfig dropless_config() {
  MoELayerConfig c;
  c.router.num_experts = kExperts;
  c.router.hidden = kHidden;
  c.router.top_k = kTopK;
  c.router.renormalize = true;
  c.ffn_hidden = kFfn;
  c.activation = Activation::swiglu;
  c.block_size = 4;
  c.z_loss_coefficient = 1e-3;
  return c;
}

MoELayerConfig capacity_config() {
  MoELayerConfig c = dropless_config();
  c.activation = Activation::gelu;
  c.expert_bias = true;
  c.dispatch = DispatchKind::capacity;
  c.capacity.train_factor = 1.0;
  c.shared.ffn_hidden = 40;
  c.shared.gated = true;
  c.z_loss_coefficient = 0.0;
  return c;
}

template <class S>
void write_step(const std::string& dir, const std::string& name, const MoELayerConfig& config) {
  const std::string prefix = dir + "/" + name + (std::is_same_v<S, float> ? "_f32_" : "_f64_");
  MoELayer<S> layer(config);
  layer.init_weights(7);
  const RowMatrix<S> x = exact_inputs<S>(kTokens, kHidden, 1);
  const RowMatrix<S> grad_y = exact_inputs<S>(kTokens, kHidden, 2);
  MoELayerContext<S> ctx;
  const MoEOutput<S> out = layer.forward(x, ctx, Mode::train, 0);
  write_npy(prefix + "y.npy", out.y);
  const Vector<S> losses = (Vector<S>(2) << out.aux_loss, out.z_loss).finished();
  write_npy(prefix + "losses.npy", losses);
  write_npy(prefix + "expert_ids.npy", ctx.router.routing.expert_ids);
  MoEGradients<S> grads = layer.backward(x, ctx, grad_y);
  write_npy(prefix + "grad_x.npy", grads.x);
  for (const ParameterAndGradient<S>& p : layer.parameters(grads)) {
    write_npy(prefix + "value_" + p.name + ".npy", p.value.data(), p.value.size());
    write_npy(prefix + "grad_" + p.name + ".npy", p.gradient.data(), p.gradient.size());
  }
}

}  // namespace

void layer(const std::string& dir) {
  write_step<float>(dir, "dropless", dropless_config());
  write_step<double>(dir, "dropless", dropless_config());
  write_step<float>(dir, "capacity", capacity_config());
  write_step<double>(dir, "capacity", capacity_config());
}

}  // namespace moe::golden
