// MoELayer from Python: its config, forward (plain, padded, packed, replayed) and backward, and its
// parameters and gradients as NumPy views over the layer's own memory.
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "arguments.hpp"

namespace moe::python {
namespace {

/// Where a parameter lives and its shape; cols 0 marks a vector.
template <class S>
struct ParameterShape {
  S* data;
  Index rows, cols;
};

template <class Owner, class F>
void for_each_parameter(Owner& owner, const std::string& prefix, const F& f);

template <class Member, class F>
void visit_slot(Member& member, const std::string& name, const F& f) {
  if constexpr (detail::IsParameterMap<Member>::value)
    f(name, member);
  else
    for_each_parameter(member, name + ".", f);
}

/// f(path, map) for every parameter map of a parameter set, nested sets included, with the paths
/// MoELayer::parameters names them by ("router.weight", "experts.w1", ...).
template <class Owner, class F>
void for_each_parameter(Owner& owner, const std::string& prefix, const F& f) {
  std::apply([&](auto... slot) { (visit_slot(owner.*slot.member, prefix + slot.name, f), ...); },
             Owner::slots());
}

/// A MoELayer with the state a step needs between calls: the context forward fills for backward,
/// and the gradients backward overwrites in place (allocated once, on the first backward).
template <class S>
class PyMoELayer {
 public:
  explicit PyMoELayer(const MoELayerConfig& config) : layer_(config) {}

  MoELayer<S>& layer() { return layer_; }
  const MoELayerContext<S>& context() const { return context_; }

  MoEOutput<S> forward(const ConstMatrixRef<S>& x, Mode mode, std::uint64_t seed, Index micro_batch,
                       const std::optional<TokenMask>& token_mask,
                       const std::optional<IndexVector>& cu_seqlens) {
    require(!(token_mask && cu_seqlens), "token_mask",
            "None when cu_seqlens is given (padding or packing, not both)", "a mask");
    forwarded_ = false;
    MoEOutput<S> out =
        token_mask   ? layer_.forward(x, *token_mask, context_, mode, seed, micro_batch)
        : cu_seqlens ? layer_.forward_packed(x, *cu_seqlens, context_, mode, seed, micro_batch)
                     : layer_.forward(x, context_, mode, seed, micro_batch);
    forwarded_ = true;
    return out;
  }

  MoEOutput<S> replay(const ConstMatrixRef<S>& x, const ExpertIdMatrix& recorded_ids, Mode mode,
                      std::uint64_t seed, Index micro_batch) {
    forwarded_ = false;
    MoEOutput<S> out = layer_.replay(x, recorded_ids, context_, mode, seed, micro_batch);
    forwarded_ = true;
    return out;
  }

  /// grad_x; the parameters' gradients stay in the layer (gradients()).
  RowMatrix<S> backward(const ConstMatrixRef<S>& x, const ConstMatrixRef<S>& grad_y) {
    require(forwarded_, "MoELayer.backward", "a forward (or replay) of this layer first",
            "no forward");
    layer_.backward(x, context_, grad_y, gradients_);
    backward_done_ = true;
    RowMatrix<S> grad_x;
    grad_x.swap(gradients_.x);  // handed to NumPy; the next backward allocates it again
    return grad_x;
  }

  /// Every parameter by path, shaped, in MoELayer's own lookup (router.selection_bias included).
  std::map<std::string, ParameterShape<S>> shapes() {
    std::map<std::string, ParameterShape<S>> out;
    for_each_parameter(
        static_cast<MoELayerSlots<S>&>(layer_), "", [&](const std::string& name, auto& map) {
          out[name] = {map.data(), map.rows(),
                       std::decay_t<decltype(map)>::ColsAtCompileTime == 1 ? 0 : map.cols()};
        });
    return out;
  }

  /// The trained parameters and their gradients, as MoELayer::parameters lists them: shaped
  /// gradients when a backward ran, else zero-sized ones (only the names and values are used).
  std::vector<ParameterAndGradient<S>> pairs() {
    if (backward_done_) return layer_.parameters(gradients_);
    // Before any backward: zero gradients of the parameters' sizes, made once, so that the
    // library's own list (its selection and order) names the parameters.
    if (!zero_gradients_) {
      const MoELayerConfig& c = layer_.config;
      MoEGradients<S>& g = zero_gradients_.emplace();
      g.router.weight.setZero(layer_.router.weight.rows(), layer_.router.weight.cols());
      g.router.bias.setZero(layer_.router.bias.size());
      g.router.noise_weight.setZero(layer_.router.noise_weight.rows(),
                                    layer_.router.noise_weight.cols());
      g.router.expert_scale.setZero(layer_.router.expert_scale.size());
      if (layer_.experts.w1.size() > 0) g.experts = ExpertGradients<S>(layer_.experts.config);
      if (c.shared.ffn_hidden > 0) g.shared = ExpertGradients<S>(c.shared_experts());
      g.shared_gate.setZero(layer_.shared_gate_weight.size());
    }
    return layer_.parameters(*zero_gradients_);
  }

  bool backward_done() const { return backward_done_; }

 private:
  MoELayer<S> layer_;
  MoELayerContext<S> context_;
  MoEGradients<S> gradients_;
  std::optional<MoEGradients<S>> zero_gradients_;
  bool forwarded_ = false;
  bool backward_done_ = false;
};

/// A view of a parameter (or of its gradient at `data`) with the parameter's shape.
template <class S>
py::array shaped_view(const ParameterShape<S>& shape, const S* data, py::handle owner,
                      bool writable) {
  py::array view =
      shape.cols == 0 ? py::array(vector_view(const_cast<S*>(data), shape.rows, owner))
                      : py::array(matrix_view(const_cast<S*>(data), shape.rows, shape.cols, owner));
  return writable ? view : read_only(std::move(view));
}

template <class S>
void bind_output_for(py::module_& m) {
  py::class_<MoEOutput<S>>(m, dtype_name<S>("MoEOutput").c_str(),
                           "What MoELayer.forward returns: y [T, d] (the routed and shared "
                           "experts' output; add the residual outside), the aux and z losses "
                           "(coefficients included; 0 in eval or when off), and the step's "
                           "HealthReport.")
      .def_property_readonly(
          "y",
          [](py::object self) {
            RowMatrix<S>& y = self.cast<MoEOutput<S>&>().y;
            return matrix_view(y.data(), y.rows(), y.cols(), self);
          },
          "[T, d], a view over this output's memory.")
      .def_readonly("aux_loss", &MoEOutput<S>::aux_loss)
      .def_readonly("z_loss", &MoEOutput<S>::z_loss)
      .def_readonly("health", &MoEOutput<S>::health);
}

template <class S>
void bind_layer_for(py::module_& m) {
  using Layer = PyMoELayer<S>;
  const std::string name = dtype_name<S>("MoELayer");
  py::class_<Layer>(m, name.c_str(),
                    ("A Mixture-of-Experts layer (router, dropless or capacity dispatch, expert "
                     "FFNs, losses, bias balancer, shared experts), forward and backward, in " +
                     std::string(std::is_same_v<S, float> ? "float32" : "float64") +
                     ". The object keeps what forward saved for backward and the gradients "
                     "backward writes: one layer object serves one step at a time.")
                        .c_str())
      .def(py::init<const MoELayerConfig&>(), py::arg("config"),
           "Zero parameters of the configured shapes (init_weights draws them). Raises "
           "moe_routing.Error naming the first bad field of the config.")
      .def_property_readonly(
          "config", [](Layer& l) { return l.layer().config; },
          "The layer's MoELayerConfig (a copy).")
      .def(
          "init_weights", [](Layer& l, std::uint64_t seed) { l.layer().init_weights(seed); },
          py::arg("seed"),
          "Router N(0, 0.02^2) (Megatron init_method_std), every expert matrix N(0, 1/d), all "
          "drawn from `seed`: the same values as the C++ MoELayer::init_weights.")
      .def(
          "forward",
          [](Layer& l, const InMatrix<S>& x, Mode mode, std::uint64_t seed, Index micro_batch,
             const py::object& token_mask, const py::object& cu_seqlens) {
            // None stays "absent" (not an empty mask): forward refuses a mask with offsets.
            std::optional<TokenMask> mask;
            std::optional<IndexVector> offsets;
            if (!token_mask.is_none()) mask = moe::python::token_mask(token_mask, "token_mask");
            if (!cu_seqlens.is_none()) offsets = index_vector(cu_seqlens, "cu_seqlens");
            py::gil_scoped_release release;
            return l.forward(*x, mode, seed, micro_batch, mask, offsets);
          },
          py::arg("x"), py::arg("mode") = Mode::eval, py::arg("seed") = 0,
          py::arg("micro_batch") = 0, py::arg("token_mask") = py::none(),
          py::arg("cu_seqlens") = py::none(),
          (std::string("y = sum_j w_tj FFN_{e_tj}(x_t) over the kept choices (+ the shared "
                       "experts), x [T, d]. Mode.train also computes the aux and z losses and "
                       "counts loads for the bias balancer under `micro_batch`; `seed` drives "
                       "router noise (pass one per step). token_mask [T] bool: True for real "
                       "tokens, padding gets a zero row and takes no capacity (Megatron-Core). "
                       "cu_seqlens [S + 1] int64: packed sequences' offsets (0 first, T last) "
                       "for a per-sequence aux loss. ") +
           kArrayNote)
              .c_str())
      .def(
          "replay",
          [](Layer& l, const InMatrix<S>& x, const py::object& recorded_ids, Mode mode,
             std::uint64_t seed, Index micro_batch) {
            const ExpertIdMatrix ids = ExpertIds(recorded_ids, "recorded_ids").matrix();
            py::gil_scoped_release release;
            return l.replay(*x, ids, mode, seed, micro_batch);
          },
          py::arg("x"), py::arg("recorded_ids"), py::arg("mode") = Mode::eval, py::arg("seed") = 0,
          py::arg("micro_batch") = 0,
          (std::string("Routing replay (Megatron-Core RouterReplay): forward with the tokens "
                       "routed to recorded_ids [T, k] (integers that fit int32: an inference "
                       "engine's choices, or "
                       "layer.routing.expert_ids of an earlier forward) instead of the router's "
                       "top-k; the gates come from the live router at those ids. ") +
           kArrayNote)
              .c_str())
      .def(
          "backward",
          [](Layer& l, const InMatrix<S>& x, const InMatrix<S>& grad_y) {
            RowMatrix<S> grad_x;
            {
              py::gil_scoped_release release;
              grad_x = l.backward(*x, *grad_y);
            }
            return to_numpy(std::move(grad_x));
          },
          py::arg("x"), py::arg("grad_y"),
          (std::string(
               "Gradients of <grad_y, y> + aux_loss + z_loss for the last forward, whose "
               "x must be passed again. Returns grad_x [T, d]; the parameters' gradients "
               "are kept in the layer and overwritten by the next backward (gradients()). ") +
           kArrayNote)
              .c_str())
      .def(
          "parameters",
          [](py::object self) {
            Layer& l = self.cast<Layer&>();
            const auto shapes = l.shapes();
            py::dict out;
            for (const auto& pair : l.pairs()) {
              const ParameterShape<S>& shape = shapes.at(pair.name);
              out[pair.name.c_str()] = shaped_view(shape, shape.data, self, true);
            }
            return out;
          },
          "Every trained parameter by name, in the order of the C++ MoELayer::parameters "
          "(router.weight, router.bias with linear_bias, router.noise_weight with noisy top-k, "
          "experts.{w1, w3, w2, b1, b3, b2}, shared.{...}, shared_gate_weight; those with "
          "elements only), as writable NumPy views over the layer's memory: an optimizer updates "
          "them in place (p -= lr * g). Shapes: router.weight [E, d], experts.w1 [E * d, f], "
          "experts.w2 [E * f, d], biases [E, f] or [E, d], vectors 1-D.")
      .def(
          "gradients",
          [](py::object self) {
            Layer& l = self.cast<Layer&>();
            require(l.backward_done(), "MoELayer.gradients", "a backward of this layer first",
                    "no backward");
            const auto shapes = l.shapes();
            py::dict out;
            for (const auto& pair : l.pairs())
              out[pair.name.c_str()] =
                  shaped_view(shapes.at(pair.name), pair.gradient.data(), self, false);
            return out;
          },
          "The last backward's gradient of every parameter parameters() lists, by the same "
          "names and shapes: read-only views over the layer's gradient memory, which the next "
          "backward overwrites in place.")
      .def_property_readonly(
          "selection_bias",
          [](py::object self) {
            MoELayer<S>& layer = self.cast<Layer&>().layer();
            return vector_view(layer.router.selection_bias.data(),
                               layer.router.selection_bias.size(), self);
          },
          "[E] the router's selection-only bias (the bias balancer's state; trained by no "
          "gradient), a writable view.")
      .def_property_readonly(
          "routing", [](const Layer& l) { return l.context().router.routing; },
          "The last forward's Routing (a copy): expert_ids, gates, scores, logits.")
      .def(
          "step_balancer", [](Layer& l) { l.layer().step_balancer(); },
          "Once per optimizer step: the bias balancer updates from the loads of the step's "
          "micro-batches and hands its bias to the router's selection (DeepSeek-V3). Raises "
          "moe_routing.Error on a layer configured without bias_balancer.")
      .def(
          "refresh_bf16_experts", [](Layer& l) { l.layer().refresh_bf16_experts(); },
          "With expert_precision = bf16: rounds the routed experts' float weights into the bf16 "
          "copy their products read, now (a forward does it by itself when sampled weights "
          "changed; call this after editing a few weights by hand).")
      .def(
          "refresh_expert_panels", [](Layer& l) { l.layer().refresh_expert_panels(); },
          "With expert_layout = panels: lays the routed experts' weights out in the panel copy "
          "the forward reads, now (a forward does it by itself when sampled weights changed; call "
          "this after editing a few weights by hand).");
  register_dtype_pair(m, "MoELayer");
}

}  // namespace

void bind_layer(py::module_& m) {
  py::enum_<Activation>(
      m, "Activation",
      "The experts' activation: relu, gelu, gelu_tanh, silu (ungated); swiglu, "
      "geglu, geglu_tanh, reglu, swiglu_oai, swiglu_clamped (gated, with a second projection "
      "W3); squared_relu.")
      .value("relu", Activation::relu)
      .value("gelu", Activation::gelu)
      .value("gelu_tanh", Activation::gelu_tanh)
      .value("silu", Activation::silu)
      .value("swiglu", Activation::swiglu)
      .value("geglu", Activation::geglu)
      .value("geglu_tanh", Activation::geglu_tanh)
      .value("reglu", Activation::reglu)
      .value("squared_relu", Activation::squared_relu)
      .value("swiglu_oai", Activation::swiglu_oai)
      .value("swiglu_clamped", Activation::swiglu_clamped);
  py::enum_<DispatchKind>(m, "DispatchKind",
                          "dropless (MegaBlocks' block-sparse path) or capacity (a [E, C, d] "
                          "buffer whose overflow is dropped).")
      .value("dropless", DispatchKind::dropless)
      .value("capacity", DispatchKind::capacity);
  py::enum_<ExpertPrecision>(m, "ExpertPrecision",
                             "native (the layer's dtype) or bf16 (bf16 products with float sums "
                             "over a bf16 copy of the float32 weights; float32 layers).")
      .value("native", ExpertPrecision::native)
      .value("bf16", ExpertPrecision::bf16);
  py::enum_<ExpertLayout>(m, "ExpertLayout",
                          "row_major (the forward reads the experts' weights in place) or panels "
                          "(from a copy in column panels the layer keeps: the same bits, faster "
                          "at decode and at tens of rows per expert, one more copy in memory).")
      .value("row_major", ExpertLayout::row_major)
      .value("panels", ExpertLayout::panels);

  py::class_<SharedExpertConfig> shared(
      m, "SharedExpertConfig",
      "Always-on experts every token passes through (DeepSeek-V3), optionally scaled by "
      "sigmoid(x . w_gate) (Qwen2-MoE shared_expert_gate); ffn_hidden 0: none.");
  shared.def_readwrite("ffn_hidden", &SharedExpertConfig::ffn_hidden)
      .def_readwrite("gated", &SharedExpertConfig::gated);
  def_keyword_init<SharedExpertConfig>(shared);
  def_fields_repr(shared);

  py::class_<MoELayerConfig> config(
      m, "MoELayerConfig",
      "Every option of a MoE layer, with the C++ MoELayerConfig's field names. The nested configs "
      "(router, capacity, shared, health) are edited in place (config.router.top_k = 4); the "
      "optional ones (aux_loss, bias_balancer) are None or a whole AuxLossConfig / "
      "BiasBalancerOptions, assigned as a whole.");
  config.def_readwrite("router", &MoELayerConfig::router)
      .def_readwrite("ffn_hidden", &MoELayerConfig::ffn_hidden)
      .def_readwrite("activation", &MoELayerConfig::activation)
      .def_readwrite("swiglu_limit", &MoELayerConfig::swiglu_limit,
                     "L of the clamped SwiGLUs (swiglu_oai: gpt-oss 7; swiglu_clamped: "
                     "DeepSeek-V4's swiglu_limit)")
      .def_readwrite("expert_bias", &MoELayerConfig::expert_bias)
      .def_readwrite("dispatch", &MoELayerConfig::dispatch)
      .def_readwrite("block_size", &MoELayerConfig::block_size)
      .def_readwrite("capacity", &MoELayerConfig::capacity)
      .def_readwrite("aux_loss", &MoELayerConfig::aux_loss)
      .def_readwrite("z_loss_coefficient", &MoELayerConfig::z_loss_coefficient)
      .def_readwrite("bias_balancer", &MoELayerConfig::bias_balancer)
      .def_readwrite("shared", &MoELayerConfig::shared)
      .def_readwrite("weight_before_ffn", &MoELayerConfig::weight_before_ffn)
      .def_readwrite("zero_computation_experts", &MoELayerConfig::zero_computation_experts)
      .def_readwrite("expert_precision", &MoELayerConfig::expert_precision)
      .def_readwrite("expert_layout", &MoELayerConfig::expert_layout)
      .def_readwrite("health", &MoELayerConfig::health)
      .def("num_ffn_experts", &MoELayerConfig::num_ffn_experts,
           "The experts with weights: router.num_experts less the zero-computation ones.");
  def_keyword_init<MoELayerConfig>(config);
  def_fields_repr(config);
  m.def(
      "validate", [](const MoELayerConfig& c) { validate(c); }, py::arg("config"),
      "Checks a MoELayerConfig; raises moe_routing.Error naming the first bad field.");

  bind_output_for<float>(m);
  bind_output_for<double>(m);
  bind_layer_for<float>(m);
  bind_layer_for<double>(m);
}

}  // namespace moe::python
