// The balance part of moe_routing: the load-balancing (auxiliary) losses of each system, the
// global-batch loss, the router z-loss, the noisy top-k importance and load losses, all with their
// gradients, and the auxiliary-loss-free BiasBalancer.
#include <cstddef>
#include <sstream>
#include <string>
#include <vector>

#include "arguments.hpp"

namespace moe::python {

namespace {

constexpr const char* kMasks =
    " mask: None or a [T] bool array, False for a padding token (no count, no score, zero "
    "gradient row). kept: None or a [T, k] bool array, False for a choice dropped for capacity "
    "(CapacityPlan.kept_mask()); config.dropped says what it counts.";

std::string with_notes(const char* doc, bool masks = true) {
  return std::string(doc) + (masks ? kMasks : "") + " " + kArrayNote;
}

/// A float array argument read in place, seen as the Eigen::Ref R (ConstMatrixRef<S> or
/// ConstVectorRef<S>) that the losses were bound with per dtype: they are templates on their
/// argument's type, and a Map (linear access) could order their sums otherwise, so the results
/// keep the instantiation the golden values were checked against. The array lives as long.
template <class R>
class FloatArgument {
  using S = typename R::Scalar;
  static constexpr bool kVector = R::ColsAtCompileTime == 1;
  using Array = py::array_t<S, py::array::c_style>;

 public:
  FloatArgument(const py::handle& object, const char* argument, const char* shape)
      : array_(float_array<S>(object, argument, kVector ? 1 : 2, shape)), ref_(view(array_)) {}
  const R& operator*() const { return ref_; }

 private:
  static R view(const Array& a) {
    if constexpr (kVector)
      return vector_map(a);
    else
      return matrix_map(a);
  }

  Array array_;
  R ref_;
};

template <class S>
using FloatMatrix = FloatArgument<ConstMatrixRef<S>>;
template <class S>
using FloatVector = FloatArgument<ConstVectorRef<S>>;

void bind_enums_and_configs(py::module_& m) {
  py::enum_<AuxCounting>(m, "AuxCounting", "Which of a token's choices f_e counts.")
      .value("all_choices", AuxCounting::all_choices,
             "all k (Megatron, HF Mixtral/Qwen, DeepSpeed top-k, DeepSeek, flaxformer)")
      .value("first_choice", AuxCounting::first_choice,
             "choice 0 only (Switch, DeepSpeed top-1/top-2, fairseq, Tutel)");
  py::enum_<DroppedChoices>(m, "DroppedChoices",
                            "What a choice dropped for capacity (kept False) contributes to f_e.")
      .value("counted", DroppedChoices::counted, "counted as routed (Megatron, DeepSpeed)")
      .value("excluded", DroppedChoices::excluded, "not counted: counts after dropping")
      .value("expert_zero", DroppedChoices::expert_zero,
             "counted for expert 0, as HF Switch Transformers");
  py::enum_<AuxScores>(m, "AuxScores", "Which scores P_e averages.")
      .value("as_given", AuxScores::as_given, "the scores themselves")
      .value("sum_normalized", AuxScores::sum_normalized,
             "s_te / sum_j s_tj (DeepSeek-V3; Megatron with sigmoid)");
  py::enum_<AuxSelection>(m, "AuxSelection", "Which selection f_e counts.")
      .value("given", AuxSelection::given, "the caller's expert_ids")
      .value("recomputed", AuxSelection::recomputed,
             "top-k of the loss's own scores (Megatron, HF); expert_ids must be None");
  py::enum_<SequenceLayout>(m, "SequenceLayout", "Token order when the loss is per sequence.")
      .value("batch_major", SequenceLayout::batch_major, "row = b * S + i (HF, DeepSeek)")
      .value("sequence_major", SequenceLayout::sequence_major, "row = i * B + b (Megatron)");
  py::enum_<SequenceNormalization>(m, "SequenceNormalization",
                                   "What a sequence's f and P are divided by.")
      .value("own_length", SequenceNormalization::own_length,
             "the sequence's own real-token count (DeepSeek-V3)")
      .value("mean_length", SequenceNormalization::mean_length,
             "the mean real-token count per sequence (Megatron seq_aux_loss with padding)");
  py::enum_<VarianceConvention>(m, "VarianceConvention", "Divisor of the variance in cv^2.")
      .value("population", VarianceConvention::population, "n")
      .value("unbiased", VarianceConvention::unbiased, "n - 1 (torch.var's default, Tutel)");
  py::enum_<BiasUpdateRule>(m, "BiasUpdateRule",
                            "How the step's load error mean - load_i becomes a bias change.")
      .value("sign", BiasUpdateRule::sign, "u sign(error) (DeepSeek-V3, Megatron-Core)")
      .value("centered_sign", BiasUpdateRule::centered_sign,
             "u sign(error) minus its mean over experts (torchtitan)")
      .value("proportional", BiasUpdateRule::proportional, "u error / mean load");

  py::class_<AuxLossConfig> aux(m, "AuxLossConfig",
                                "A load-balancing loss L = a E mean_b sum_e f_be P_be, with the "
                                "normalization of the system it follows (see aux_presets).");
  aux.def_readwrite("coefficient", &AuxLossConfig::coefficient, "a")
      .def_readwrite("top_k", &AuxLossConfig::top_k,
                     "k: columns of expert_ids, and the k of a recomputed selection")
      .def_readwrite("counting", &AuxLossConfig::counting)
      .def_readwrite("divide_by_top_k", &AuxLossConfig::divide_by_top_k,
                     "f_e = c_e / (k T): perfect balance gives a; False gives a k")
      .def_readwrite("dropped", &AuxLossConfig::dropped)
      .def_readwrite("scores", &AuxLossConfig::scores)
      .def_readwrite("selection", &AuxLossConfig::selection)
      .def_readwrite("sequence_length", &AuxLossConfig::sequence_length,
                     "0: the whole batch is one domain; S > 0: one loss per sequence of S "
                     "tokens, averaged")
      .def_readwrite("layout", &AuxLossConfig::layout)
      .def_readwrite("sequence_normalization", &AuxLossConfig::sequence_normalization);
  def_keyword_init<AuxLossConfig>(aux);
  def_fields_repr(aux);
  aux.def(
      "validate", [](const AuxLossConfig& c) { validate(c); },
      "Raises moe_routing.Error naming the first invalid field.");
  m.def(
      "validate", [](const AuxLossConfig& c) { validate(c); }, py::arg("config"),
      "Checks an AuxLossConfig; raises moe_routing.Error naming the first invalid field.");

  py::class_<BiasBalancerOptions> options(m, "BiasBalancerOptions",
                                          "Settings of the auxiliary-loss-free BiasBalancer.");
  options.def_readwrite("update_rate", &BiasBalancerOptions::update_rate, "u")
      .def_readwrite("rule", &BiasBalancerOptions::rule);
  def_keyword_init<BiasBalancerOptions>(options);
  def_fields_repr(options);

  py::module_ presets =
      m.def_submodule("aux_presets",
                      "Each system's load-balancing loss as an AuxLossConfig, with its default "
                      "coefficient.");
  presets.def("switch_transformer", &aux_presets::switch_transformer, py::arg("coefficient") = 1e-2,
              "Switch Transformer: a E sum_e f_e P_e, f the top-1 fraction of the batch.");
  presets.def("hf_switch", &aux_presets::hf_switch, py::arg("group_size"),
              py::arg("coefficient") = 1e-3,
              "HF SwitchTransformers: per group of group_size tokens; f after dropping, a dropped "
              "token counted for expert 0 (pass kept).");
  presets.def("hf_mixtral", &aux_presets::hf_mixtral, py::arg("top_k"),
              py::arg("coefficient") = 1e-3,
              "HF Mixtral / Qwen-MoE / OLMoE: top-k recomputed, all k counted, not divided by k.");
  presets.def("megatron", &aux_presets::megatron, py::arg("top_k"), py::arg("coefficient") = 1e-2,
              py::arg("score") = ScoreFunction::softmax,
              "Megatron-Core aux_loss: a E / (k T^2) sum_e (sum_t s_te) c_e, the unbiased top-k "
              "recomputed; sigmoid scores divided by their row sum.");
  presets.def("megatron_sequence", &aux_presets::megatron_sequence, py::arg("top_k"),
              py::arg("sequence_length"), py::arg("coefficient") = 1e-2,
              py::arg("score") = ScoreFunction::softmax,
              "Megatron-Core seq_aux_loss: per sequence ([S, B] order), averaged.");
  presets.def("deepspeed_top1", &aux_presets::deepspeed_top1, py::arg("coefficient") = 1.0,
              "DeepSpeed top1gating l_aux = E sum_e me_e ce_e.");
  presets.def("deepspeed_top2", &aux_presets::deepspeed_top2, py::arg("coefficient") = 1.0,
              "DeepSpeed top2gating l_aux, ce from the first choices only.");
  presets.def("deepspeed_topk", &aux_presets::deepspeed_topk, py::arg("top_k"),
              py::arg("coefficient") = 1.0, "DeepSpeed topkgating (k > 2), ce over all k.");
  presets.def("deepseek_v3_sequence", &aux_presets::deepseek_v3_sequence, py::arg("top_k"),
              py::arg("sequence_length"), py::arg("coefficient") = 1e-4,
              "DeepSeek-V3 complementary sequence-wise loss over normalized affinities.");
  presets.def("megatron_packed_sequence", &aux_presets::megatron_packed_sequence, py::arg("top_k"),
              py::arg("coefficient") = 1e-2, py::arg("score") = ScoreFunction::softmax,
              "Megatron-Core seq_aux_loss over packed sequences (load_balancing_loss_packed).");
  presets.def("deepseek_v3_packed_sequence", &aux_presets::deepseek_v3_packed_sequence,
              py::arg("top_k"), py::arg("coefficient") = 1e-4,
              "DeepSeek-V3 sequence-wise loss over packed sequences.");
}

/// The result types over one scalar type, and the global-batch loss, whose class fixes the
/// precision its arrays are taken in.
template <class S>
void bind_loss_types_for(py::module_& m) {
  using Loss = LossGradient<S>;
  py::class_<Loss>(m, dtype_name<S>("LossGradient").c_str(),
                   "A balancing loss: value (the loss, coefficient included) and grad, d value / "
                   "d input shaped like the input (a read-only view of the result's memory).")
      .def_readonly("value", &Loss::value)
      .def_readonly("grad", &Loss::grad)
      .def("__repr__", [](const Loss& l) {
        return detail::concat(dtype_name<S>("LossGradient"), "(value=", l.value, ", grad=[",
                              l.grad.rows(), ", ", l.grad.cols(), "])")
            .str();
      });
  using NoisyLoss = NoisyLoadLossGradient<S>;
  py::class_<NoisyLoss>(m, dtype_name<S>("NoisyLoadLossGradient").c_str(),
                        "The noisy top-k load loss: value, logits (d value / d clean logits [T, "
                        "E]) and noise_stddev (d value / d noise standard deviation [T, E]).")
      .def_readonly("value", &NoisyLoss::value)
      .def_readonly("logits", &NoisyLoss::logits)
      .def_readonly("noise_stddev", &NoisyLoss::noise_stddev);
  using Layered = LayeredLossGradient<S>;
  py::class_<Layered>(m, dtype_name<S>("LayeredLossGradient").c_str(),
                      "A loss over several layers: value and grads, one d value / d logits per "
                      "layer (a list of arrays).")
      .def_readonly("value", &Layered::value)
      .def_readonly("grads", &Layered::grads);

  using Global = GlobalLoadBalancingLoss<S>;
  py::class_<Global>(m, dtype_name<S>("GlobalLoadBalancingLoss").c_str(),
                     "Megatron-Core's global_aux_loss (Qwen's global-batch balancing): the "
                     "load-balancing loss whose counts average every micro-batch of the step so "
                     "far. One object per layer; reset() once per optimizer step.")
      .def(py::init<Index, const AuxLossConfig&>(), py::arg("num_experts"), py::arg("config"),
           "config picks counting, scores and selection as for load_balancing_loss; its "
           "sequence_length must be 0.")
      .def(
          "micro_batch",
          [](Global& self, const py::object& scores, const py::object& expert_ids,
             const py::object& mask, const py::object& kept) {
            const FloatMatrix<S> s(scores, "scores", "[T, E]");
            const ExpertIdMatrix ids = expert_id_matrix(expert_ids, "expert_ids");
            const TokenMask token = token_mask(mask);
            const ChoiceMask choices = choice_mask(kept);
            py::gil_scoped_release release;
            return self.micro_batch(*s, ids, token, choices);
          },
          py::arg("scores"), py::arg("expert_ids"), py::arg("mask") = py::none(),
          py::arg("kept") = py::none(),
          with_notes("Counts this micro-batch once, then returns the LossGradient (dL/d scores) "
                     "with the averaged counts.")
              .c_str())
      .def(
          "micro_batch_from_logits",
          [](Global& self, const py::object& logits, ScoreFunction score,
             const py::object& expert_ids, const py::object& mask, const py::object& kept) {
            const FloatMatrix<S> z(logits, "logits", "[T, E]");
            const ExpertIdMatrix ids = expert_id_matrix(expert_ids, "expert_ids");
            const TokenMask token = token_mask(mask);
            const ChoiceMask choices = choice_mask(kept);
            py::gil_scoped_release release;
            return self.micro_batch_from_logits(*z, score, ids, token, choices);
          },
          py::arg("logits"), py::arg("score"), py::arg("expert_ids"), py::arg("mask") = py::none(),
          py::arg("kept") = py::none(),
          with_notes("As micro_batch, scores computed from the logits; grad = dL/d logits.")
              .c_str())
      .def("reset", &Global::reset, "Starts a new global batch: once per optimizer step.")
      .def_property_readonly("micro_batches", &Global::micro_batches)
      .def_property_readonly("accumulated_counts", &Global::accumulated_counts,
                             "[E] float64: counts summed over this step's micro-batches (a "
                             "read-only view of the object's memory)")
      .def_property_readonly("config", &Global::config);
  register_dtype_pair(m, "GlobalLoadBalancingLoss");
}

/// The losses over plain arrays, bound once for both precisions: the first array's dtype picks the
/// precision (in_precision), every other array is taken in it.
void bind_losses(py::module_& m) {
  m.def(
      "load_balancing_loss",
      [](const py::object& scores, const py::object& expert_ids, const AuxLossConfig& config,
         const py::object& mask, const py::object& kept) {
        return in_precision(scores, [&](auto p) {
          using S = decltype(p);
          const FloatMatrix<S> s(scores, "scores", "[T, E]");
          const ExpertIdMatrix ids = expert_id_matrix(expert_ids, "expert_ids");
          const TokenMask token = token_mask(mask);
          const ChoiceMask choices = choice_mask(kept);
          return without_gil([&] { return load_balancing_loss(*s, ids, config, token, choices); });
        });
      },
      py::arg("scores"), py::arg("expert_ids"), py::arg("config"), py::arg("mask") = py::none(),
      py::arg("kept") = py::none(),
      with_notes("LossGradient of L = a E mean_b sum_e f_be P_be over scores [T, E] (the "
                 "Switch/GShard family; the config selects the system): grad = dL/d scores. "
                 "expert_ids [T, k] int32, or None when config.selection is recomputed.")
          .c_str());
  m.def(
      "load_balancing_loss_from_logits",
      [](const py::object& logits, ScoreFunction score, const py::object& expert_ids,
         const AuxLossConfig& config, const py::object& mask, const py::object& kept) {
        return in_precision(logits, [&](auto p) {
          using S = decltype(p);
          const FloatMatrix<S> z(logits, "logits", "[T, E]");
          const ExpertIdMatrix ids = expert_id_matrix(expert_ids, "expert_ids");
          const TokenMask token = token_mask(mask);
          const ChoiceMask choices = choice_mask(kept);
          return without_gil([&] {
            return load_balancing_loss_from_logits(*z, score, ids, config, token, choices);
          });
        });
      },
      py::arg("logits"), py::arg("score"), py::arg("expert_ids"), py::arg("config"),
      py::arg("mask") = py::none(), py::arg("kept") = py::none(),
      with_notes("load_balancing_loss with the scores computed from logits [T, E] by `score` "
                 "(as HF recomputes softmax(logits)); grad = dL/d logits.")
          .c_str());
  m.def(
      "load_balancing_loss_packed",
      [](const py::object& scores, const py::object& expert_ids, const AuxLossConfig& config,
         const py::object& cu_seqlens, const py::object& mask, const py::object& kept) {
        return in_precision(scores, [&](auto p) {
          using S = decltype(p);
          const FloatMatrix<S> s(scores, "scores", "[T, E]");
          const ExpertIdMatrix ids = expert_id_matrix(expert_ids, "expert_ids");
          const IndexVector offsets = index_vector(cu_seqlens, "cu_seqlens");
          const TokenMask token = token_mask(mask);
          const ChoiceMask choices = choice_mask(kept);
          return without_gil(
              [&] { return load_balancing_loss_packed(*s, ids, config, offsets, token, choices); });
        });
      },
      py::arg("scores"), py::arg("expert_ids"), py::arg("config"), py::arg("cu_seqlens"),
      py::arg("mask") = py::none(), py::arg("kept") = py::none(),
      with_notes("The per-sequence loss over packed sequences: sequence b is rows cu_seqlens[b] "
                 ".. cu_seqlens[b + 1] - 1 (cu_seqlens [S + 1] integers, non-decreasing, first 0, "
                 "last T); config.sequence_length must be 0. grad = dL/d scores.")
          .c_str());
  m.def(
      "load_balancing_loss_packed_from_logits",
      [](const py::object& logits, ScoreFunction score, const py::object& expert_ids,
         const AuxLossConfig& config, const py::object& cu_seqlens, const py::object& mask,
         const py::object& kept) {
        return in_precision(logits, [&](auto p) {
          using S = decltype(p);
          const FloatMatrix<S> z(logits, "logits", "[T, E]");
          const ExpertIdMatrix ids = expert_id_matrix(expert_ids, "expert_ids");
          const IndexVector offsets = index_vector(cu_seqlens, "cu_seqlens");
          const TokenMask token = token_mask(mask);
          const ChoiceMask choices = choice_mask(kept);
          return without_gil([&] {
            return load_balancing_loss_packed_from_logits(*z, score, ids, config, offsets, token,
                                                          choices);
          });
        });
      },
      py::arg("logits"), py::arg("score"), py::arg("expert_ids"), py::arg("config"),
      py::arg("cu_seqlens"), py::arg("mask") = py::none(), py::arg("kept") = py::none(),
      with_notes("load_balancing_loss_packed with the scores computed from the logits by "
                 "`score`; grad = dL/d logits.")
          .c_str());
  m.def(
      "load_balancing_loss_over_layers",
      [](const py::object& layer_logits, ScoreFunction score, const AuxLossConfig& config,
         const py::object& mask) {
        // Any sequence of arrays (a list, a 3-D array), but not a string, which is one too.
        if (!py::isinstance<py::sequence>(layer_logits) || py::isinstance<py::str>(layer_logits) ||
            py::isinstance<py::bytes>(layer_logits))
          detail::fail("layer_logits", "a list of [T, E] float arrays", type_name(layer_logits));
        const auto layers = py::reinterpret_borrow<py::sequence>(layer_logits);
        const py::object first = layers.size() > 0 ? py::object(layers[0]) : py::none();
        return in_precision(first, [&](auto p) {
          using S = decltype(p);
          std::vector<RowMatrix<S>> logits;
          for (std::size_t l = 0; l < layers.size(); ++l) {
            const std::string argument = detail::concat("layer_logits[", l, "]").str();
            logits.emplace_back(
                matrix_map(float_array<S>(layers[l], argument.c_str(), 2, "[T, E]")));
          }
          const TokenMask token = token_mask(mask);
          return without_gil(
              [&] { return load_balancing_loss_over_layers<S>(logits, score, config, token); });
        });
      },
      py::arg("layer_logits"), py::arg("score"), py::arg("config"), py::arg("mask") = py::none(),
      with_notes("HF's form over several layers: the layers' logits (a list of [T, E] arrays, "
                 "copied) concatenated along tokens into one domain, the selection recomputed "
                 "from each layer's scores. LayeredLossGradient, one gradient per layer; the "
                 "first layer's dtype picks the precision.",
                 false)
          .c_str());
  m.def(
      "router_z_loss",
      [](const py::object& logits, double coefficient, const py::object& mask) {
        return in_precision(logits, [&](auto p) {
          using S = decltype(p);
          const FloatMatrix<S> z(logits, "logits", "[T, E]");
          const TokenMask token = token_mask(mask);
          return without_gil([&] { return router_z_loss(*z, coefficient, token); });
        });
      },
      py::arg("logits"), py::arg("coefficient"), py::arg("mask") = py::none(),
      with_notes("Router z-loss (ST-MoE): L = b sum_{t real} logsumexp(z_t)^2 / max(n_real, 1), "
                 "grad_tj = 2 b lse_t softmax(z_t)_j / max(n_real, 1) (Megatron-Core z_loss_func "
                 "with its padding mask; without one HF Switch's and flaxformer's). logits [T, "
                 "E]; mask None or [T] bool.",
                 false)
          .c_str());
  m.def(
      "cv_squared",
      [](const py::object& x, VarianceConvention convention) {
        return in_precision(x, [&](auto p) {
          using S = decltype(p);
          const FloatVector<S> v(x, "x", "[n]");
          return cv_squared(*v, convention);
        });
      },
      py::arg("x"), py::arg("convention") = VarianceConvention::unbiased,
      with_notes("cv^2(x) = var(x) / (mean(x)^2 + 1e-10) of a 1-D array, 0 for one entry "
                 "(Shazeer et al. 2017), as a Python float.",
                 false)
          .c_str());
  m.def(
      "importance_loss",
      [](const py::object& gate_matrix, double weight, VarianceConvention convention,
         const py::object& mask) {
        return in_precision(gate_matrix, [&](auto p) {
          using S = decltype(p);
          const FloatMatrix<S> g(gate_matrix, "gate_matrix", "[T, E]");
          const TokenMask token = token_mask(mask);
          return without_gil([&] { return importance_loss(*g, weight, convention, token); });
        });
      },
      py::arg("gate_matrix"), py::arg("weight"),
      py::arg("convention") = VarianceConvention::unbiased, py::arg("mask") = py::none(),
      with_notes("Importance loss (Shazeer et al. 2017): L = w cv^2(Importance), Importance_e = "
                 "sum_{t real} G_te over dense gate weights or scores [T, E]; grad = dL/dG.",
                 false)
          .c_str());
  m.def(
      "importance_loss",
      [](const py::object& gates, const py::object& expert_ids, Index num_experts, double weight,
         VarianceConvention convention, const py::object& mask) {
        return in_precision(gates, [&](auto p) {
          using S = decltype(p);
          const FloatMatrix<S> g(gates, "gates", "[T, k]");
          const ExpertIdMatrix ids = expert_id_matrix(expert_ids, "expert_ids");
          const TokenMask token = token_mask(mask);
          return without_gil(
              [&] { return importance_loss(*g, ids, num_experts, weight, convention, token); });
        });
      },
      py::arg("gates"), py::arg("expert_ids"), py::arg("num_experts"), py::arg("weight"),
      py::arg("convention") = VarianceConvention::unbiased, py::arg("mask") = py::none(),
      with_notes("The importance loss from routed gates [T, k] and their expert_ids [T, k]: "
                 "Importance_e = sum of the gates routed to e; grad = dL/d gates [T, k].",
                 false)
          .c_str());
  m.def(
      "noisy_topk_load_loss",
      [](const py::object& clean_logits, const py::object& noisy_logits,
         const py::object& noise_stddev, Index top_k, double weight, VarianceConvention convention,
         const py::object& mask) {
        return in_precision(clean_logits, [&](auto p) {
          using S = decltype(p);
          const FloatMatrix<S> clean(clean_logits, "clean_logits", "[T, E]");
          const FloatMatrix<S> noisy(noisy_logits, "noisy_logits", "[T, E]");
          const FloatMatrix<S> sigma(noise_stddev, "noise_stddev", "[T, E]");
          const TokenMask token = token_mask(mask);
          return without_gil([&] {
            return noisy_topk_load_loss(*clean, *noisy, *sigma, top_k, weight, convention, token);
          });
        });
      },
      py::arg("clean_logits"), py::arg("noisy_logits"), py::arg("noise_stddev"), py::arg("top_k"),
      py::arg("weight"), py::arg("convention") = VarianceConvention::unbiased,
      py::arg("mask") = py::none(),
      with_notes("Smooth load loss of noisy top-k gating (Shazeer et al. 2017): L = w "
                 "cv^2(Load), Load_e = sum_t Phi((z_te - thr_te) / sigma_te) over [T, E] arrays; "
                 "requires top_k < E. Returns NoisyLoadLossGradient (gradients to the clean "
                 "logits and the noise standard deviations, the noise samples held fixed).",
                 false)
          .c_str());
  m.def(
      "noise_stddev_backward",
      [](const py::object& noise_stddev, const py::object& d_noise_stddev, double noise_epsilon) {
        return in_precision(noise_stddev, [&](auto p) {
          using S = decltype(p);
          const FloatMatrix<S> sigma(noise_stddev, "noise_stddev", "[T, E]");
          const FloatMatrix<S> d_sigma(d_noise_stddev, "d_noise_stddev", "[T, E]");
          return without_gil(
              [&] { return noise_stddev_backward(*sigma, *d_sigma, noise_epsilon); });
        });
      },
      py::arg("noise_stddev"), py::arg("d_noise_stddev"), py::arg("noise_epsilon"),
      with_notes("d / d r [T, E] from d / d sigma through sigma = softplus(r) + noise_epsilon.",
                 false)
          .c_str());
}

template <class S>
void bind_bias_balancer_for(py::module_& m) {
  using Balancer = BiasBalancer<S>;
  py::class_<Balancer>(
      m, dtype_name<S>("BiasBalancer").c_str(),
      "Auxiliary-loss-free balancing (Wang et al. 2024, DeepSeek-V3, Megatron-Core "
      "moe_router_enable_expert_bias): a per-expert bias added to the scores for selection only, "
      "b_i += u sign(mean load - load_i) once per optimizer step. Loads are the routed choices "
      "kept after dropping, padding excluded, summed over the step's micro-batches.")
      .def(py::init<Index, BiasBalancerOptions>(), py::arg("num_experts"),
           py::arg("options") = BiasBalancerOptions(), "A zero bias over num_experts experts.")
      .def_property_readonly("num_experts", &Balancer::num_experts)
      .def(
          "accumulate",
          [](Balancer& self, Index micro_batch, const py::object& expert_ids,
             const py::object& mask, const py::object& kept) {
            const ExpertIdMatrix ids = expert_id_matrix(expert_ids, "expert_ids");
            self.accumulate(micro_batch, ids, token_mask(mask), choice_mask(kept));
          },
          py::arg("micro_batch"), py::arg("expert_ids"), py::arg("mask") = py::none(),
          py::arg("kept") = py::none(),
          (std::string("Counts the routed experts (expert_ids [T, k] int32, e.g. "
                       "Routing.expert_ids) of micro-batch `micro_batch` of this step; counting "
                       "the same micro-batch again replaces its counts.") +
           kMasks)
              .c_str())
      .def(
          "accumulate_counts",
          [](Balancer& self, Index micro_batch, const py::object& counts) {
            self.accumulate_counts(micro_batch, index_vector(counts, "counts"));
          },
          py::arg("micro_batch"), py::arg("counts"),
          "Micro-batch counts [E] (integers) formed elsewhere, e.g. summed across ranks.")
      .def(
          "pending_load", [](const Balancer& self) { return to_numpy(self.pending_load()); },
          "[E] int64: the loads counted so far in this step (a copy).")
      .def_property_readonly("pending_micro_batches", &Balancer::pending_micro_batches)
      .def("step", &Balancer::step,
           "Once per optimizer step: updates the bias from the step's loads and clears them.")
      .def_property_readonly("bias", &Balancer::bias,
                             "[E]: the current bias, a read-only NumPy VIEW over the balancer's "
                             "own buffer (no copy): it follows every step() and stays valid while "
                             "the balancer lives. Copy it to keep a snapshot.")
      .def_property_readonly("options", &Balancer::options)
      .def_property_readonly("steps", &Balancer::steps)
      .def(
          "apply_to", [](const Balancer& self, Router<S>& router) { self.apply_to(router); },
          py::arg("router"), "Router.selection_bias = bias.")
      .def(
          "save",
          [](const Balancer& self) {
            std::ostringstream out;
            self.save(out);
            return out.str();
          },
          "The exact text checkpoint (options, steps, bias).")
      .def(
          "load",
          [](Balancer& self, const std::string& text) {
            std::istringstream in(text);
            self.load(in);
          },
          py::arg("text"),
          "Restores what save() returned; the counts of an unfinished step are dropped.");
  register_dtype_pair(m, "BiasBalancer");
}

}  // namespace

void bind_balance(py::module_& m) {
  bind_enums_and_configs(m);
  bind_loss_types_for<float>(m);
  bind_loss_types_for<double>(m);
  bind_losses(m);
  bind_bias_balancer_for<float>(m);
  bind_bias_balancer_for<double>(m);
}

}  // namespace moe::python
