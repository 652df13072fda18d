// The routing part of moe_routing: the router's configuration and its presets, select_experts,
// replay and their backward, the Router with the context its forward fills, and routing records.
#include <cstddef>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "arguments.hpp"

namespace moe::python {

namespace {

// ---------------------------------------------------------------------------------------------
// Views of the library's matrices.

/// A view of an Eigen matrix member of the object `self` (a vector becomes 1-D).
template <class Matrix>
py::array_t<typename Matrix::Scalar> member_view(Matrix& matrix, py::handle self) {
  if constexpr (Matrix::ColsAtCompileTime == 1)
    return vector_view(matrix.data(), matrix.size(), self);
  else
    return matrix_view(matrix.data(), matrix.rows(), matrix.cols(), self);
}

/// `cls.name`: a view of the Eigen member `field` of the bound object, kept alive by it.
template <class Object, class Class, class Matrix>
void def_view(Class& cls, const char* name, Matrix Object::*field, bool writable, const char* doc) {
  cls.def_property_readonly(
      name,
      [field, writable](py::object self) {
        auto view = member_view(self.cast<Object&>().*field, self);
        return writable ? view : read_only(std::move(view));
      },
      doc);
}

// ---------------------------------------------------------------------------------------------
// Configuration and presets.

void bind_enums(py::module_& m) {
  py::enum_<Mode>(m, "Mode",
                  "Training enables noise, jitter, and the statistics balancers accumulate; "
                  "evaluation is deterministic.")
      .value("train", Mode::train)
      .value("eval", Mode::eval);
  py::enum_<ScoreFunction>(
      m, "ScoreFunction",
      "How logits become scores: softmax over the experts; sigmoid as in DeepSeek-V3 and "
      "Megatron-Core; sqrt_softplus, s = sqrt(softplus(z)), as in DeepSeek-V4.")
      .value("softmax", ScoreFunction::softmax)
      .value("sigmoid", ScoreFunction::sigmoid)
      .value("sqrt_softplus", ScoreFunction::sqrt_softplus);
  py::enum_<SoftmaxOrder>(
      m, "SoftmaxOrder",
      "Where softmax sits relative to top-k (Megatron-Core moe_router_pre_softmax): "
      "softmax_then_topk (Switch, Mixtral, Qwen, DeepSpeed) or topk_then_softmax (softmax over "
      "the k best logits, Megatron-Core's default).")
      .value("softmax_then_topk", SoftmaxOrder::softmax_then_topk)
      .value("topk_then_softmax", SoftmaxOrder::topk_then_softmax);
  py::enum_<GroupScore>(
      m, "GroupScore",
      "Score of a group in group-limited routing: sum_top2 (DeepSeek-V3), max, or "
      "sum_top_k_per_selected_group (Megatron-Core group_limited_topk).")
      .value("sum_top2", GroupScore::sum_top2)
      .value("max", GroupScore::max)
      .value("sum_top_k_per_selected_group", GroupScore::sum_top_k_per_selected_group);
  py::enum_<GroupMask>(m, "GroupMask",
                       "What replaces the scores of experts in unselected groups: -inf "
                       "(DeepSeek-V3, Megatron, torchtitan) or 0 (Hugging Face DeepSeek-V3).")
      .value("neg_inf", GroupMask::neg_inf)
      .value("zero", GroupMask::zero);
  py::enum_<Noise>(m, "Noise",
                   "Training-time noise, never applied in Mode.eval: jitter multiplies the router "
                   "input by U(1 - eps, 1 + eps) (Switch Transformer); noisy_topk adds "
                   "N(0, 1) * (softplus(x W_noise^T) + noise_epsilon) (Shazeer et al. 2017).")
      .value("none", Noise::none)
      .value("jitter", Noise::jitter)
      .value("noisy_topk", Noise::noisy_topk);
  m.attr("UNUSED_SLOT") = kUnusedSlot;
}

/// What Router.bf16_what_if takes and returns (bound before the Router, whose method defaults to
/// Bf16Operands.both).
void bind_bf16_what_if(py::module_& m) {
  py::enum_<Bf16Operands>(m, "Bf16Operands", "What bf16_what_if rounds to bfloat16.")
      .value("x", Bf16Operands::x, "the router's input")
      .value("weights", Bf16Operands::weights, "the router's weight and linear bias")
      .value("both", Bf16Operands::both, "both");
  py::class_<Bf16WhatIf> what_if(
      m, "Bf16WhatIf",
      "The router's selections in its own precision against those from bfloat16 operands: tokens "
      "(compared), flipped_tokens, flipped_choices (experts swapped out, summed over tokens), "
      "lost [E] and gained [E] (tokens each expert lost or gained).");
  what_if.def(py::init<>())
      .def_readwrite("tokens", &Bf16WhatIf::tokens)
      .def_readwrite("flipped_tokens", &Bf16WhatIf::flipped_tokens)
      .def_readwrite("flipped_choices", &Bf16WhatIf::flipped_choices)
      .def_readwrite("lost", &Bf16WhatIf::lost)
      .def_readwrite("gained", &Bf16WhatIf::gained);
  def_fields_repr(what_if);
}

void bind_config(py::module_& m) {
  py::class_<RouterConfig> cls(
      m, "RouterConfig",
      "Every option of the router. RouterConfig(**fields) sets the named fields (C++ names); the "
      "presets submodule builds public systems' settings.");
  cls.def_readwrite("num_experts", &RouterConfig::num_experts, "E, the routed experts")
      .def_readwrite("hidden", &RouterConfig::hidden, "d, the token width")
      .def_readwrite("top_k", &RouterConfig::top_k, "k, the experts a token is routed to")
      .def_readwrite("score", &RouterConfig::score, "ScoreFunction")
      .def_readwrite("softmax_order", &RouterConfig::softmax_order, "SoftmaxOrder")
      .def_readwrite("renormalize", &RouterConfig::renormalize,
                     "Divide the k selected weights by their sum (+ renormalize_epsilon): Mixtral, "
                     "Qwen norm_topk_prob, DeepSeek-V3. Implied by topk_then_softmax.")
      .def_readwrite("renormalize_epsilon", &RouterConfig::renormalize_epsilon,
                     "Megatron and HF DeepSeek-V3 use 1e-20; Mixtral 0")
      .def_readwrite("renormalize_min", &RouterConfig::renormalize_min,
                     "Floor of the renormalizing denominator, w_j = s_j / max(sum + "
                     "renormalize_epsilon, renormalize_min): llama.cpp 6.103515625e-5, ERNIE 4.5 "
                     "norm_min; 0 = none")
      .def_readwrite("scaling_factor", &RouterConfig::scaling_factor,
                     "Gate multiplier (DeepSeek-V3 routed_scaling_factor 2.5)")
      .def_readwrite("num_groups", &RouterConfig::num_groups,
                     "Group-limited top-k (DeepSeek-V3 n_group); 1 disables it")
      .def_readwrite("groups_selected", &RouterConfig::groups_selected,
                     "Groups kept (DeepSeek-V3 topk_group)")
      .def_readwrite("group_score", &RouterConfig::group_score, "GroupScore")
      .def_readwrite("group_mask", &RouterConfig::group_mask, "GroupMask")
      .def_readwrite("linear_bias", &RouterConfig::linear_bias, "logits = x W^T + b")
      .def_readwrite("expert_scale", &RouterConfig::expert_scale,
                     "gates *= Router.expert_scale[e], learned per expert, after renormalization "
                     "and scaling_factor (Gemma 4's per_expert_scale)")
      .def_readwrite("noise", &RouterConfig::noise, "Noise (training only)")
      .def_readwrite("jitter_epsilon", &RouterConfig::jitter_epsilon,
                     "Jitter half-width (Switch / DeepSpeed 1e-2)")
      .def_readwrite("noise_epsilon", &RouterConfig::noise_epsilon,
                     "Floor of the noisy-top-k standard deviation")
      .def_readwrite("active_top_k", &RouterConfig::active_top_k,
                     "Adaptive k: the most choices used (0: top_k)")
      .def_readwrite("min_top_k", &RouterConfig::min_top_k,
                     "Adaptive k: the fewest choices used (0: active_top_k)")
      .def_readwrite("top_k_threshold", &RouterConfig::top_k_threshold,
                     "Adaptive k: choice j beyond min_top_k is used when s_j >= threshold * the "
                     "best chosen score (ik_llama.cpp smart expert reduction)");
  def_keyword_init<RouterConfig>(cls);
  def_fields_repr(cls);
  cls.def("groups_enabled", &RouterConfig::groups_enabled, "Whether num_groups > 1.")
      .def("max_active_k", &RouterConfig::max_active_k,
           "The most experts a token uses: active_top_k, or top_k when 0.")
      .def("min_active_k", &RouterConfig::min_active_k,
           "The fewest experts a token uses: min_top_k, or max_active_k() when 0.")
      .def("adaptive_k", &RouterConfig::adaptive_k,
           "Whether a token may use fewer than top_k experts (some slots may be unused).")
      .def("group_score_terms", &RouterConfig::group_score_terms,
           "How many of a group's best scores its group score sums (1 for GroupScore.max).");
  m.def(
      "validate", [](const RouterConfig& config) { moe::validate(config); }, py::arg("config"),
      "Checks a RouterConfig; raises moe_routing.Error naming the field (e.g. "
      "'RouterConfig::top_k: expected 1 <= top_k <= num_experts (8), got 9').");
}

void bind_presets(py::module_& m) {
  using presets::Experts;
  using presets::Hidden;
  py::module_ p = m.def_submodule(
      "presets",
      "Named RouterConfigs reproducing public systems' routers. Every preset takes hidden= (d) "
      "and experts= (E) as keywords, as the C++ presets take Hidden and Experts types, so that "
      "swapped numbers cannot route a wrong shape.");
  p.def(
      "switch_transformer",
      [](Index hidden, Index experts, double jitter) {
        return presets::switch_transformer(Hidden{hidden}, Experts{experts}, jitter);
      },
      py::kw_only(), py::arg("hidden"), py::arg("experts"), py::arg("jitter") = 1e-2,
      "Switch Transformer (HF SwitchTransformersTop1Router): softmax over E, top-1, the raw "
      "probability as the gate, input jitter U(1 - jitter, 1 + jitter) in training.");
  p.def(
      "mixtral",
      [](Index hidden, Index experts, Index top_k) {
        return presets::mixtral(Hidden{hidden}, Experts{experts}, top_k);
      },
      py::kw_only(), py::arg("hidden"), py::arg("experts") = 8, py::arg("top_k") = 2,
      "Mixtral (HF MixtralSparseMoeBlock): softmax over E, top-2, weights renormalized to sum 1.");
  p.def(
      "qwen_moe",
      [](Index hidden, Index experts, Index top_k, bool norm_topk_prob) {
        return presets::qwen_moe(Hidden{hidden}, Experts{experts}, top_k, norm_topk_prob);
      },
      py::kw_only(), py::arg("hidden"), py::arg("experts"), py::arg("top_k"),
      py::arg("norm_topk_prob"),
      "Qwen2-MoE / Qwen3-MoE: softmax over E, top-k, renormalized only with norm_topk_prob.");
  p.def(
      "qwen3_moe",
      [](Index hidden, Index experts, Index top_k) {
        return presets::qwen3_moe(Hidden{hidden}, Experts{experts}, top_k);
      },
      py::kw_only(), py::arg("hidden"), py::arg("experts") = 128, py::arg("top_k") = 8,
      "Qwen3-MoE (HF Qwen3MoeSparseMoeBlock): softmax over 128 experts, top-8, renormalized.");
  p.def(
      "olmoe",
      [](Index hidden, Index experts, Index top_k) {
        return presets::olmoe(Hidden{hidden}, Experts{experts}, top_k);
      },
      py::kw_only(), py::arg("hidden"), py::arg("experts") = 64, py::arg("top_k") = 8,
      "OLMoE (HF OlmoeSparseMoeBlock): softmax over 64 experts, top-8, raw probabilities.");
  p.def(
      "gpt_oss",
      [](Index hidden, Index experts, Index top_k) {
        return presets::gpt_oss(Hidden{hidden}, Experts{experts}, top_k);
      },
      py::kw_only(), py::arg("hidden"), py::arg("experts") = 128, py::arg("top_k") = 4,
      "GPT-OSS (HF GptOssTopKRouter): logits = x W^T + b, top-4 of the logits, softmax over the "
      "four.");
  p.def(
      "llama4",
      [](Index hidden, Index experts) { return presets::llama4(Hidden{hidden}, Experts{experts}); },
      py::kw_only(), py::arg("hidden"), py::arg("experts") = 16,
      "Llama 4 (HF Llama4TextMoe): the best logit of each token, its sigmoid as the weight.");
  p.def(
      "deepseek_v3",
      [](Index hidden, Index experts, Index top_k, Index num_groups, Index groups_selected) {
        return presets::deepseek_v3(Hidden{hidden}, Experts{experts}, top_k, num_groups,
                                    groups_selected);
      },
      py::kw_only(), py::arg("hidden"), py::arg("experts") = 256, py::arg("top_k") = 8,
      py::arg("num_groups") = 8, py::arg("groups_selected") = 4,
      "DeepSeek-V3 (official Gate): sigmoid scores, group-limited top-8 of 256 experts in 8 "
      "groups keeping 4 (group score: sum of the top-2 biased scores, other groups -inf), weights "
      "= unbiased scores renormalized, times 2.5. For Hugging Face's port set group_mask = "
      "GroupMask.zero and renormalize_epsilon = 1e-20.");
  p.def(
      "deepseek_v4",
      [](Index hidden, Index experts, Index top_k) {
        return presets::deepseek_v4(Hidden{hidden}, Experts{experts}, top_k);
      },
      py::kw_only(), py::arg("hidden"), py::arg("experts") = 256, py::arg("top_k") = 6,
      "DeepSeek-V4 (HF DeepseekV4TopKRouter): s = sqrt(softplus(z)), top-6 of 256 by s + the "
      "correction bias, weights = s over their sum + 1e-20, times 1.5.");
  p.def(
      "longcat_flash",
      [](Index hidden, Index experts, Index top_k) {
        return presets::longcat_flash(Hidden{hidden}, Experts{experts}, top_k);
      },
      py::kw_only(), py::arg("hidden"), py::arg("experts") = 768, py::arg("top_k") = 12,
      "LongCat-Flash (HF LongcatFlashTopkRouter): softmax over 512 FFN + 256 zero-computation "
      "experts, top-12 by score + correction bias, raw probabilities times 6.0.");
  p.def(
      "megatron_topk",
      [](Index hidden, Index experts, Index top_k, bool pre_softmax) {
        return presets::megatron_topk(Hidden{hidden}, Experts{experts}, top_k, pre_softmax);
      },
      py::kw_only(), py::arg("hidden"), py::arg("experts"), py::arg("top_k"),
      py::arg("pre_softmax"),
      "Megatron-Core TopKRouter, softmax: pre_softmax=False is top-k of the logits then softmax "
      "over the k; True is softmax over E then top-k, no renormalization.");
  p.def(
      "megatron_sigmoid",
      [](Index hidden, Index experts, Index top_k, double scaling_factor) {
        return presets::megatron_sigmoid(Hidden{hidden}, Experts{experts}, top_k, scaling_factor);
      },
      py::kw_only(), py::arg("hidden"), py::arg("experts"), py::arg("top_k"),
      py::arg("scaling_factor") = 1.0,
      "Megatron-Core TopKRouter, sigmoid: weights renormalized with +1e-20 when k > 1, times "
      "scaling_factor.");
  p.def(
      "deepspeed_top2",
      [](Index hidden, Index experts) {
        return presets::deepspeed_top2(Hidden{hidden}, Experts{experts});
      },
      py::kw_only(), py::arg("hidden"), py::arg("experts"),
      "DeepSpeed top2gating: softmax over E, the two best experts with their raw probabilities.");
}

// ---------------------------------------------------------------------------------------------
// Results and functions over a dtype.

template <class S>
void bind_results_for(py::module_& m) {
  const std::string routing_name = dtype_name<S>("Routing");
  py::class_<Routing<S>> routing(
      m, routing_name.c_str(),
      "What the router decided for T tokens over E experts, k choices each. Row t of expert_ids "
      "lists token t's experts in selection order (UNUSED_SLOT = -1 with gate 0 for a slot a "
      "token does not use). The arrays are read-only views over this object's memory.");
  def_view<Routing<S>>(routing, "expert_ids", &Routing<S>::expert_ids, false,
                       "[T, k] int32 expert ids, best first");
  def_view<Routing<S>>(routing, "gates", &Routing<S>::gates, false, "[T, k] combine weights");
  def_view<Routing<S>>(routing, "scores", &Routing<S>::scores, false,
                       "[T, E] unbiased scores over all experts (softmax, sigmoid or "
                       "sqrt_softplus of the logits scored, noise included in training)");
  def_view<Routing<S>>(routing, "logits", &Routing<S>::logits, false,
                       "[T, E] x W^T + b before any noise (select_experts: the logits given)");
  routing.def_property_readonly("num_tokens", &Routing<S>::num_tokens, "T")
      .def_property_readonly("top_k", &Routing<S>::top_k, "k")
      .def_property_readonly("num_experts", &Routing<S>::num_experts, "E")
      .def("__repr__", [routing_name](const Routing<S>& r) {
        return routing_name + "(num_tokens=" + std::to_string(r.num_tokens()) +
               ", top_k=" + std::to_string(r.top_k()) +
               ", num_experts=" + std::to_string(r.num_experts()) + ")";
      });

  py::class_<RouterGradients<S>> grads(
      m, dtype_name<S>("RouterGradients").c_str(),
      "Router.backward's gradients: writable views over this object's memory.");
  def_view<RouterGradients<S>>(grads, "x", &RouterGradients<S>::x, true, "[T, d]");
  def_view<RouterGradients<S>>(grads, "weight", &RouterGradients<S>::weight, true, "[E, d]");
  def_view<RouterGradients<S>>(grads, "bias", &RouterGradients<S>::bias, true,
                               "[E], zero unless config.linear_bias");
  def_view<RouterGradients<S>>(grads, "noise_weight", &RouterGradients<S>::noise_weight, true,
                               "[E, d] with Noise.noisy_topk, else empty");
  def_view<RouterGradients<S>>(grads, "expert_scale", &RouterGradients<S>::expert_scale, true,
                               "[E] with config.expert_scale, else empty");
}

/// select_experts and its kin are bound once: the logits' dtype picks the precision (in_precision)
/// and every array argument is converted by name, so that a wrong array is an error naming it.
void bind_functions(py::module_& m) {
  const std::string array_note = std::string("\n\n") + kArrayNote;
  m.def(
      "select_experts",
      [](const RouterConfig& config, const py::object& logits, const py::object& selection_bias) {
        return in_precision(logits, [&](auto s) {
          using S = decltype(s);
          const auto z = float_array<S>(logits, "logits", 2, "[T, E]");
          const auto bias = optional_float_array<S>(selection_bias, "selection_bias", 1, "[E]");
          Routing<S> out;
          {
            py::gil_scoped_release release;
            RowMatrix<S> selection;
            moe::select_experts<S>(config, matrix_map(z), vector_map(bias), out, selection);
            // The library leaves Routing::logits to the router; here they are the ones given.
            out.logits = matrix_map(z);
          }
          return py::cast(std::move(out));
        });
      },
      py::arg("config"), py::arg("logits"), py::arg("selection_bias") = py::none(),
      (std::string("Scores over all experts, the top-k experts and their gates from logits "
                   "[T, E]. selection_bias ([E] or None) shifts which experts win, never the gates "
                   "(DeepSeek-V3's e_score_correction_bias). softmax_then_topk: w = s[top-k(s + "
                   "b)], optionally renormalized; topk_then_softmax: w = softmax(z[top-k(z + b)]); "
                   "sigmoid / sqrt_softplus: w = s[top-k(s + b)], optionally renormalized; then w "
                   "*= scaling_factor. Adaptive k leaves UNUSED_SLOT with gate 0. Returns a "
                   "Routing of the logits' dtype; raises moe_routing.Error for a bad config, "
                   "shape or non-finite input.") +
       array_note)
          .c_str());
  m.def(
      "replay_experts",
      [](const RouterConfig& config, const py::object& logits, const py::object& recorded_ids) {
        return in_precision(logits, [&](auto s) {
          using S = decltype(s);
          const auto z = float_array<S>(logits, "logits", 2, "[T, E]");
          const ExpertIdMatrix ids = ExpertIds(recorded_ids, "recorded_ids").matrix();
          Routing<S> out;
          {
            py::gil_scoped_release release;
            moe::replay_experts<S>(config, matrix_map(z), ids, out);
            out.logits = matrix_map(z);
          }
          return py::cast(std::move(out));
        });
      },
      py::arg("config"), py::arg("logits"), py::arg("recorded_ids"),
      (std::string("Routing replay (Megatron-Core RouterReplay): the recorded experts [T, k] "
                   "(integers that fit int32, UNUSED_SLOT allowed) replace top-k selection, and "
                   "the gates are computed from the live logits [T, E] at those ids by the "
                   "config's rule, so select_experts_backward trains through the recorded "
                   "choices. Replaying what select_experts chose on the same logits reproduces "
                   "its gates bit for bit.") +
       array_note)
          .c_str());
  m.def(
      "select_experts_backward",
      [](const RouterConfig& config, const py::object& logits, const py::object& routing,
         const py::object& grad_gates, const py::object& grad_scores) {
        return in_precision(logits, [&](auto s) {
          using S = decltype(s);
          const auto z = float_array<S>(logits, "logits", 2, "[T, E]");
          // The routing's class has a precision too: another is refused as the arrays are.
          if (!py::isinstance<Routing<S>>(routing))
            throw py::type_error(detail::concat("routing: expected a ", dtype_name<S>("Routing"),
                                                " like the logits, got ", type_name(routing))
                                     .str());
          const auto& r = routing.cast<const Routing<S>&>();
          const auto dw = float_array<S>(grad_gates, "grad_gates", 2, "[T, k]");
          const auto ds = optional_float_array<S>(grad_scores, "grad_scores", 2, "[T, E]");
          RowMatrix<S> d_logits;
          {
            py::gil_scoped_release release;
            d_logits = moe::select_experts_backward<S>(config, matrix_map(z), r, matrix_map(dw),
                                                       matrix_map(ds));
          }
          return to_numpy(std::move(d_logits));
        });
      },
      py::arg("config"), py::arg("logits"), py::arg("routing"), py::arg("grad_gates"),
      py::arg("grad_scores") = py::none(),
      (std::string("Backward of select_experts (or replay_experts): d loss / d logits [T, E] "
                   "from d loss / d gates [T, k] and, optionally, d loss / d scores [T, E] (e.g. "
                   "from an aux loss). The selection is a constant. logits are the ones routing "
                   "was computed from (a Routing of their dtype).") +
       array_note)
          .c_str());
}

// ---------------------------------------------------------------------------------------------
// Router.

/// A Router with the context its forward fills, so that backward finds what forward saved.
template <class S>
struct RouterObject {
  explicit RouterObject(const RouterConfig& config) : router(config) {}

  Router<S> router;
  RouterContext<S> ctx;
  bool filled = false;  // a forward or replay has filled ctx
  // forward / backward run without the GIL: two Python threads on one router take turns on ctx.
  std::mutex mutex;
};

/// `cls.name`: a writable view of a router parameter, kept alive by the router; assigning an
/// array copies its values in (same shape). `present` says whether the config has the parameter
/// (`needs` names what it takes): without it the view is empty and assigning is an error.
template <class S, class Class, class Map>
void def_parameter(Class& cls, const char* name, Map RouterSlots<S>::*field,
                   bool (*present)(const RouterConfig&), const char* needs, const char* doc) {
  using Value =
      std::conditional_t<Map::ColsAtCompileTime == 1, ConstVectorRef<S>, ConstMatrixRef<S>>;
  cls.def_property(
      name,
      [field, present](py::object self) {
        auto& object = self.cast<RouterObject<S>&>();
        Map& map = object.router.*field;
        if (present(object.router.config)) return member_view(map, self);
        return py::array_t<S>(std::vector<py::ssize_t>(Map::ColsAtCompileTime == 1 ? 1 : 2, 0));
      },
      [field, present, name, needs](RouterObject<S>& object, const Value& value) {
        Map& map = object.router.*field;
        require(present(object.router.config), name, needs, "an assignment to a router without it");
        require_shape(value, name, map.rows(), map.cols());
        map = value;
      },
      doc);
}

template <class S>
void bind_router_for(py::module_& m) {
  using Object = RouterObject<S>;
  const std::string array_note = std::string("\n\n") + kArrayNote;
  py::class_<Object> cls(
      m, dtype_name<S>("Router").c_str(),
      "The gating network of one MoE layer: logits = x W^T (+ b), optional training noise, score "
      "function, (group-limited) top-k with a selection-only bias, gate weights, and the backward "
      "of all of it. It keeps the context its last forward filled, for backward. Parameters are "
      "writable views over the router's memory in nn.Linear layout.");
  cls.def(py::init<const RouterConfig&>(), py::arg("config"),
          "Zero parameters of the config's shapes (validated: moe_routing.Error naming the "
          "field).");
  cls.def_property_readonly(
      "config", [](const Object& o) { return o.router.config; },
      "A copy of the router's RouterConfig (its shapes are fixed at construction).");
  def_parameter<S>(
      cls, "weight", &RouterSlots<S>::weight, [](const RouterConfig&) { return true; }, "a router",
      "[E, d] router weight W (writable view; assigning copies the values in)");
  def_parameter<S>(
      cls, "bias", &RouterSlots<S>::bias, [](const RouterConfig& c) { return c.linear_bias; },
      "a router with config.linear_bias",
      "[E] linear bias b with config.linear_bias, else an empty array");
  def_parameter<S>(
      cls, "noise_weight", &RouterSlots<S>::noise_weight,
      [](const RouterConfig& c) { return c.noise == Noise::noisy_topk; },
      "a router with config.noise = Noise.noisy_topk",
      "[E, d] W_noise with Noise.noisy_topk, else an empty array");
  def_parameter<S>(
      cls, "selection_bias", &RouterSlots<S>::selection_bias,
      [](const RouterConfig&) { return true; }, "a router",
      "[E] selection-only bias (aux-loss-free balancing, DeepSeek-V3's e_score_correction_bias): "
      "shifts which experts win, never the gates; zero until written");
  def_parameter<S>(
      cls, "expert_scale", &RouterSlots<S>::expert_scale,
      [](const RouterConfig& c) { return c.expert_scale; }, "a router with config.expert_scale",
      "[E] learned scale of each expert's gates with config.expert_scale (Gemma 4's "
      "per_expert_scale), ones at construction; else an empty array");
  cls.def(
      "init_weights",
      [](Object& o, std::uint64_t seed, double stddev) { o.router.init_weights(seed, stddev); },
      py::arg("seed"), py::arg("stddev"),
      "weight ~ N(0, stddev^2) from seed (counter-based: the same bits on every machine).");

  const auto route = [](Object& o, const ConstMatrixRef<S>& x, const ExpertIdMatrix* recorded,
                        Mode mode, std::uint64_t seed) {
    const std::lock_guard<std::mutex> lock(o.mutex);
    o.filled = false;  // a failed forward leaves no context to differentiate
    const Routing<S>& routing = recorded ? o.router.replay(x, *recorded, o.ctx, mode, seed)
                                         : o.router.forward(x, o.ctx, mode, seed);
    o.filled = true;
    return Routing<S>(routing);  // the context's copy stays for backward
  };
  cls.def(
      "forward",
      [route](Object& o, const InMatrix<S>& x, Mode mode, std::uint64_t seed) {
        return route(o, *x, nullptr, mode, seed);
      },
      py::arg("x"), py::arg("mode") = Mode::eval, py::arg("seed") = 0,
      py::call_guard<py::gil_scoped_release>(),
      (std::string("Routes the tokens x [T, d]; returns a Routing. In Mode.train the configured "
                   "noise is drawn from seed (pass a different seed each step); Mode.eval is "
                   "deterministic and ignores it. The router keeps what backward needs.") +
       array_note)
          .c_str());
  cls.def(
      "bf16_what_if",
      [](const Object& o, const InMatrix<S>& x, Bf16Operands rounded) {
        return bf16_what_if<S>(o.router, *x, rounded);
      },
      py::arg("x"), py::arg("rounded") = Bf16Operands::both,
      py::call_guard<py::gil_scoped_release>(),
      (std::string("Bf16WhatIf: the tokens x [T, d] that this router's selection sends elsewhere "
                   "when x, its weights or both (rounded: Bf16Operands) are rounded to bfloat16 "
                   "and the logits accumulated in float32; per expert, the tokens lost and "
                   "gained.") +
       array_note)
          .c_str());
  cls.def(
      "replay",
      [route](Object& o, const InMatrix<S>& x, const py::object& recorded_ids, Mode mode,
              std::uint64_t seed) {
        const ExpertIdMatrix ids = ExpertIds(recorded_ids, "recorded_ids").matrix();
        py::gil_scoped_release release;
        return route(o, *x, &ids, mode, seed);
      },
      py::arg("x"), py::arg("recorded_ids"), py::arg("mode") = Mode::eval, py::arg("seed") = 0,
      (std::string("Routing replay: forward with the experts recorded_ids [T, k] (integers that "
                   "fit int32, e.g. "
                   "a RoutingRecord layer's or an inference engine's) in place of top-k; logits, "
                   "noise and scores as in forward, gates from them at the recorded ids, so "
                   "backward trains the router through the recorded choices.") +
       array_note)
          .c_str());
  cls.def(
      "backward",
      [](Object& o, const InMatrix<S>& x, const py::object& gates, const py::object& scores,
         const py::object& logits) {
        RouterUpstream<S> upstream;
        const auto take = [](const py::object& given, const char* argument, const char* shape,
                             RowMatrix<S>& into) {
          if (given.is_none()) return;
          const auto a = float_array<S>(given, argument, 2, shape);
          into = Eigen::Map<const RowMatrix<S>>(a.data(), a.shape(0), a.shape(1));
        };
        take(gates, "gates", "[T, k]", upstream.gates);
        take(scores, "scores", "[T, E]", upstream.scores);
        take(logits, "logits", "[T, E]", upstream.logits);
        py::gil_scoped_release release;
        const std::lock_guard<std::mutex> lock(o.mutex);
        require(o.filled, "Router.backward", "a forward or replay of this router first", "none");
        return o.router.backward(*x, o.ctx, upstream);
      },
      py::arg("x"), py::arg("gates") = py::none(), py::arg("scores") = py::none(),
      py::arg("logits") = py::none(),
      (std::string("Gradients of x and every parameter (a RouterGradients) from the upstream "
                   "gradients d loss / d gates [T, k] (combine), d loss / d scores [T, E] (aux "
                   "losses) and d loss / d logits [T, E] (z-loss); None means zero. x is the "
                   "input the last forward or replay saw; its context is used.") +
       array_note)
          .c_str());
  register_dtype_pair(m, "Router");
}

// ---------------------------------------------------------------------------------------------
// Routing records.

template <class S>
void bind_record_append_for(py::class_<RoutingRecord>& cls) {
  cls.def(
      "append", [](RoutingRecord& r, const Routing<S>& routing) { r.append(routing); },
      py::arg("routing"), "Appends a layer's choices (once per layer per step, in layer order).");
}

void bind_records(py::module_& m) {
  py::class_<RecordedLayer> layer(
      m, "RecordedLayer", "One layer's choices: expert_ids [T, k] over num_experts experts.");
  layer
      .def(py::init([](Index num_experts, const py::object& expert_ids) {
             return RecordedLayer{num_experts, ExpertIds(expert_ids, "expert_ids").matrix()};
           }),
           py::kw_only(), py::arg("num_experts"), py::arg("expert_ids"))
      .def_readwrite("num_experts", &RecordedLayer::num_experts)
      .def_property(
          "expert_ids",
          [](py::object self) { return member_view(self.cast<RecordedLayer&>().expert_ids, self); },
          [](RecordedLayer& l, const py::object& ids) {
            l.expert_ids = ExpertIds(ids, "expert_ids").matrix();
          },
          "[T, k] int32 ids in selection order, UNUSED_SLOT for an unused slot (a writable view; "
          "assigning copies)");

  py::class_<RoutingRecord> cls(
      m, "RoutingRecord",
      "The routed experts of a forward over several layers, in recording order (Megatron-Core "
      "RouterReplay RECORD; what vLLM and SGLang return per token), to replay in training with "
      "Router.replay or replay_experts. to_bytes/from_bytes and save/load use a compact byte "
      "format ('MOEROUTE', one byte per id up to 256 experts).");
  cls.def(py::init<>());
  bind_record_append_for<float>(cls);
  bind_record_append_for<double>(cls);
  cls.def(
         "append", [](RoutingRecord& r, const RecordedLayer& l) { r.layers.push_back(l); },
         py::arg("layer"), "Appends a RecordedLayer (e.g. an inference engine's choices).")
      .def("__len__", [](const RoutingRecord& r) { return r.layers.size(); })
      .def(
          "__getitem__",
          [](const RoutingRecord& r, std::ptrdiff_t i) {
            const auto n = static_cast<std::ptrdiff_t>(r.layers.size());
            if (i < 0) i += n;
            if (i < 0 || i >= n) throw py::index_error("RoutingRecord index out of range");
            return r.layers[static_cast<std::size_t>(i)];
          },
          py::arg("index"),
          "A copy of layer `index`: appending later may move the record's layers.")
      .def(
          "to_bytes",
          [](const RoutingRecord& r) {
            const std::vector<std::uint8_t> bytes = r.to_bytes();
            return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
          },
          "The byte format (little-endian, version 1); moe_routing.Error for an invalid layer.")
      .def_static(
          "from_bytes",
          [](const py::bytes& data) {
            const std::string_view view(data);
            return RoutingRecord::from_bytes(reinterpret_cast<const std::uint8_t*>(view.data()),
                                             view.size());
          },
          py::arg("data"),
          "Parses the byte format; moe_routing.Error naming 'bytes' for anything malformed.")
      .def("save", &RoutingRecord::save, py::arg("path"), "Writes the byte format to path.")
      .def_static("load", &RoutingRecord::load, py::arg("path"),
                  "Reads a record save() wrote; moe_routing.Error when unreadable or malformed.");

  m.def(
      "without_padding",
      [](const py::object& expert_ids, const py::object& mask) {
        const ExpertIds ids(expert_ids, "expert_ids");
        return to_numpy(moe::without_padding(ids.matrix(), token_mask(mask, "token_mask")));
      },
      py::arg("expert_ids"), py::arg("token_mask"),
      "expert_ids [T, k] with every slot of a padded token (token_mask false; an empty mask = "
      "all real) made UNUSED_SLOT, so planners, losses and balancers give padding nothing.");
}

}  // namespace

void bind_routing(py::module_& m) {
  bind_enums(m);
  bind_config(m);
  bind_bf16_what_if(m);
  bind_presets(m);
  bind_results_for<float>(m);
  bind_results_for<double>(m);
  bind_functions(m);
  bind_router_for<float>(m);
  bind_router_for<double>(m);
  bind_records(m);
}

}  // namespace moe::python
