// The dispatch part of moe_routing: expert capacity under each system's rounding, token-choice and
// expert-choice capacity plans with dispatch / combine and their backward passes, and dropless
// (MegaBlocks-style) plans with permute / unpermute.
#include <utility>

#include "arguments.hpp"

namespace moe::python {

namespace {

constexpr const char* kPlanArrays =
    " Array attributes are read-only NumPy views over the plan's own memory (no copy), valid as "
    "long as they are referenced.";

void bind_capacity_config(py::module_& m) {
  py::enum_<CapacityRounding>(m, "CapacityRounding",
                              "How expert capacity C is computed from the group's tokens T, top-k "
                              "k, experts E and capacity factor cf.")
      .value("megatron", CapacityRounding::megatron,
             "ceil((T k / E) cf) in double (Megatron-Core get_capacity)")
      .value("deepspeed", CapacityRounding::deepspeed,
             "ceil(float(T / E) * float(k cf)) in float32 (DeepSpeed _capacity)")
      .value("megablocks", CapacityRounding::megablocks,
             "trunc(cf (k T / E)) in double (MegaBlocks expert_capacity)")
      .value("tutel", CapacityRounding::tutel,
             "k trunc(cf ceil(T / E)) (Tutel; fairseq top-1 for k = 1)")
      .value("flaxformer", CapacityRounding::flaxformer,
             "round-half-even(cf T / E), not multiplied by k (flaxformer / T5X)")
      .value("gshard", CapacityRounding::gshard, "k ceil(T / E), no factor (fairseq top-2)")
      .value("fixed", CapacityRounding::fixed,
             "CapacityConfig.fixed_capacity (Hugging Face Switch expert_capacity)");

  py::enum_<DropPolicy>(m, "DropPolicy",
                        "Which entries keep a slot when an expert receives more than C entries of "
                        "one group.")
      .value("position", DropPolicy::position,
             "token order, a token's choices together (Megatron position, MegaBlocks, HF Switch)")
      .value("choice_major", DropPolicy::choice_major,
             "every first choice before any second one, each in token order (GShard, Tutel)")
      .value("probability", DropPolicy::probability,
             "highest gate weight first (Megatron probs, DeepSpeed top-k probs)")
      .value("batch_prioritized", DropPolicy::batch_prioritized,
             "choice-major, tokens by their largest gate weight (V-MoE batch prioritized routing)")
      .value("random", DropPolicy::random,
             "uniform random priority from the seed (DeepSpeed random token selection)");

  py::class_<CapacityConfig> config(m, "CapacityConfig",
                                    "Capacity and drop settings of a capacity-factor MoE layer.");
  config.def_readwrite("rounding", &CapacityConfig::rounding)
      .def_readwrite("train_factor", &CapacityConfig::train_factor, "capacity factor in Mode.train")
      .def_readwrite("eval_factor", &CapacityConfig::eval_factor, "capacity factor in Mode.eval")
      .def_readwrite("min_capacity", &CapacityConfig::min_capacity, "C = max(C, min_capacity)")
      .def_readwrite("fixed_capacity", &CapacityConfig::fixed_capacity,
                     "C under CapacityRounding.fixed")
      .def_readwrite("alignment", &CapacityConfig::alignment,
                     "C rounded up to a multiple of this, last (Tutel)")
      .def_readwrite("group_size", &CapacityConfig::group_size,
                     "tokens per routing group (capacity and priority apply per group); 0 = one "
                     "group")
      .def_readwrite("policy", &CapacityConfig::policy)
      .def_readwrite("renormalize_survivors", &CapacityConfig::renormalize_survivors,
                     "divide a token's surviving gate weights by their sum (DeepSpeed, fairseq)");
  def_keyword_init<CapacityConfig>(config);
  def_fields_repr(config);
  config.def("factor", &CapacityConfig::factor, py::arg("mode"),
             "The capacity factor of `mode` (train_factor or eval_factor).");
  config.def(
      "validate", [](const CapacityConfig& c) { validate(c); },
      "Raises moe_routing.Error naming the first invalid field.");

  py::class_<ExpertChoiceConfig> expert_choice(
      m, "ExpertChoiceConfig",
      "Capacity of expert choice routing: C = T cf / E per group (k = 1 in the formula); the "
      "defaults are flaxformer's rounding and the paper's cf = 2.");
  expert_choice.def_readwrite("rounding", &ExpertChoiceConfig::rounding)
      .def_readwrite("train_factor", &ExpertChoiceConfig::train_factor)
      .def_readwrite("eval_factor", &ExpertChoiceConfig::eval_factor)
      .def_readwrite("min_capacity", &ExpertChoiceConfig::min_capacity)
      .def_readwrite("fixed_capacity", &ExpertChoiceConfig::fixed_capacity)
      .def_readwrite("alignment", &ExpertChoiceConfig::alignment)
      .def_readwrite("group_size", &ExpertChoiceConfig::group_size,
                     "tokens per routing group; 0 = one group");
  def_keyword_init<ExpertChoiceConfig>(expert_choice);
  def_fields_repr(expert_choice);
  expert_choice.def("capacity_config", &ExpertChoiceConfig::capacity_config,
                    "The equivalent CapacityConfig.");

  m.def(
      "validate", [](const CapacityConfig& c) { validate(c); }, py::arg("config"),
      "Checks a CapacityConfig; raises moe_routing.Error naming the first invalid field.");
  m.def("expert_capacity", &expert_capacity, py::arg("config"), py::arg("tokens"), py::arg("top_k"),
        py::arg("num_experts"), py::arg("mode") = Mode::train,
        "Capacity C of one expert for one routing group of `tokens` tokens: the rounding's "
        "formula, then max(C, min_capacity), then rounded up to a multiple of alignment. E.g. "
        "T = 50, E = 4, k = 1, cf = 1.2 gives 15 under megatron and 16 under deepspeed.");
}

template <class S>
void bind_capacity_plan_for(py::module_& m) {
  using Plan = CapacityPlan<S>;
  py::class_<Plan> plan(
      m, dtype_name<S>("CapacityPlan").c_str(),
      (std::string("Where every routed (token, choice) entry goes in the padded [E * capacity, "
                   "d] expert buffer, and the per-expert counts. Entries are token-major: token t "
                   "owns entries token_offsets[t] .. token_offsets[t + 1] - 1 (entry t * k + j "
                   "is choice j under token choice). Slot e * capacity + c is row c of expert e. "
                   "Made by make_capacity_plan or make_expert_choice_plan.") +
       kPlanArrays)
          .c_str());
  plan.def_readonly("num_tokens", &Plan::num_tokens)
      .def_readonly("num_experts", &Plan::num_experts)
      .def_readonly("top_k", &Plan::top_k, "choices per token; 0 under expert choice")
      .def_readonly("capacity", &Plan::capacity,
                    "rows per expert in the buffer: num_groups * group_capacity")
      .def_readonly("group_capacity", &Plan::group_capacity, "C of one routing group")
      .def_readonly("num_groups", &Plan::num_groups)
      .def_readonly("token_offsets", &Plan::token_offsets, "[T + 1] int64")
      .def_readonly("entry_expert", &Plan::entry_expert, "[N] int32: expert of each entry")
      .def_readonly("entry_slot", &Plan::entry_slot,
                    "[N] int64: flat slot e * capacity + c, -1 when dropped")
      .def_readonly("entry_weight", &Plan::entry_weight, "[N]: combine weight, 0 when dropped")
      .def_readonly("slot_entry", &Plan::slot_entry, "[E * capacity] int64: entry, -1 if empty")
      .def_readonly("slot_token", &Plan::slot_token, "[E * capacity] int64: token, -1 if empty")
      .def_readonly("kept", &Plan::kept, "[E] int64: entries each expert keeps")
      .def_readonly("dropped", &Plan::dropped, "[E] int64: entries each expert dropped")
      .def_readonly("total_kept", &Plan::total_kept)
      .def_readonly("total_dropped", &Plan::total_dropped)
      .def_readonly("tokens_without_expert", &Plan::tokens_without_expert,
                    "tokens with a routed entry, none of them kept")
      .def_readonly("renormalized", &Plan::renormalized)
      .def_readonly("survivor_sum", &Plan::survivor_sum,
                    "[T]: sum of each token's kept gates before renormalization (empty unless "
                    "renormalized)")
      .def("num_entries", &Plan::num_entries,
           "The (token, choice) entries the plan holds, kept or dropped.")
      .def("num_slots", &Plan::num_slots, "E * capacity")
      .def("drop_rate", &Plan::drop_rate, "Dropped entries over all entries (NaN if none).")
      .def("fraction_tokens_without_expert", &Plan::fraction_tokens_without_expert,
           "Tokens with a routed entry and none kept, over T (flaxformer).")
      .def("utilization", py::overload_cast<>(&Plan::utilization, py::const_),
           "Kept entries over all buffer slots (flaxformer expert_usage).")
      .def("utilization", py::overload_cast<Index>(&Plan::utilization, py::const_),
           py::arg("expert"), "Kept entries of `expert` over its capacity.")
      .def(
          "kept_mask",
          [](const Plan& p) {
            require(p.top_k >= 1, "plan", "a token-choice plan (top_k >= 1)",
                    "an expert-choice plan");
            ChoiceMask mask(p.num_tokens, p.top_k);
            for (Index i = 0; i < p.num_entries(); ++i) mask.data()[i] = p.entry_slot[i] >= 0;
            return to_numpy(std::move(mask));
          },
          "[T, k] bool: True where choice j of token t kept a slot (the `kept` mask the losses "
          "and the BiasBalancer take). Token-choice plans only.")
      .def("__repr__", [](const Plan& p) {
        return detail::concat(dtype_name<S>("CapacityPlan"), "(num_tokens=", p.num_tokens,
                              ", num_experts=", p.num_experts, ", top_k=", p.top_k,
                              ", capacity=", p.capacity, ", total_kept=", p.total_kept,
                              ", total_dropped=", p.total_dropped, ")")
            .str();
      });

  using Gradients = CombineGradients<S>;
  py::class_<Gradients>(m, dtype_name<S>("CombineGradients").c_str(),
                        "What combine_backward returns: d loss / d expert_out [E * capacity, d] "
                        "and d loss / d entry_weight [N] (read-only views).")
      .def_readonly("expert_out", &Gradients::expert_out)
      .def_readonly("weight", &Gradients::weight);

  // The plan fixes the precision: the arrays are taken in it, another float dtype refused.
  const std::string note = std::string(" ") + kArrayNote;
  m.def(
      "make_capacity_plan",
      [](const Routing<S>& routing, const CapacityConfig& config, Mode mode, std::uint64_t seed) {
        return make_capacity_plan<S>(routing, config, mode, seed);
      },
      py::arg("routing"), py::arg("config"), py::arg("mode") = Mode::train, py::arg("seed") = 0,
      py::call_guard<py::gil_scoped_release>(),
      "make_capacity_plan over a Routing: its expert_ids, its gates and E = scores.shape[1].");
  m.def(
      "capacity_plan_backward",
      [](const Plan& p, const py::object& grad_weight) {
        const auto dw = float_array<S>(grad_weight, "grad_weight", 1, "[N]");
        const auto dw_map = vector_map(dw);
        return without_gil([&] { return capacity_plan_backward<S>(p, dw_map); });
      },
      py::arg("plan"), py::arg("grad_weight"),
      ("d loss / d gates [T, k] from d loss / d entry_weight [N] of a token-choice plan: 0 for "
       "dropped entries; through the renormalization when the plan was renormalized." +
       note)
          .c_str());
  m.def(
      "expert_choice_backward",
      [](const Plan& p, const py::object& grad_weight) {
        const auto dw = float_array<S>(grad_weight, "grad_weight", 1, "[N]");
        const auto dw_map = vector_map(dw);
        return without_gil([&] { return expert_choice_backward<S>(p, dw_map); });
      },
      py::arg("plan"), py::arg("grad_weight"),
      ("d loss / d scores [T, E] from d loss / d entry_weight [N] of an expert choice plan." + note)
          .c_str());
  m.def(
      "dispatch",
      [](const Plan& p, const py::object& x) {
        const auto a = float_array<S>(x, "x", 2, "[T, d]");
        const auto x_map = matrix_map(a);
        return without_gil([&] { return dispatch<S>(p, x_map); });
      },
      py::arg("plan"), py::arg("x"),
      ("buffer [E * capacity, d]: row e * capacity + c = x[token of that slot], 0 for an empty "
       "slot (GShard 'sec,sm->ecm')." +
       note)
          .c_str());
  m.def(
      "dispatch_backward",
      [](const Plan& p, const py::object& grad_buffer) {
        const auto a = float_array<S>(grad_buffer, "grad_buffer", 2, "[E * capacity, d]");
        const auto grad_map = matrix_map(a);
        return without_gil([&] { return dispatch_backward<S>(p, grad_map); });
      },
      py::arg("plan"), py::arg("grad_buffer"),
      ("grad_x [T, d]: the sum over token t's kept entries, in choice order, of "
       "grad_buffer[slot]." +
       note)
          .c_str());
  m.def(
      "combine",
      [](const Plan& p, const py::object& expert_out) {
        const auto a = float_array<S>(expert_out, "expert_out", 2, "[E * capacity, d]");
        const auto out_map = matrix_map(a);
        return without_gil([&] { return combine<S>(p, out_map); });
      },
      py::arg("plan"), py::arg("expert_out"),
      ("y [T, d]: the sum over token t's kept entries, in choice order, of weight * "
       "expert_out[slot]; 0 for a token with no kept entry." +
       note)
          .c_str());
  m.def(
      "combine_backward",
      [](const Plan& p, const py::object& expert_out, const py::object& grad_y) {
        const auto out = float_array<S>(expert_out, "expert_out", 2, "[E * capacity, d]");
        const auto dy = float_array<S>(grad_y, "grad_y", 2, "[T, d]");
        const auto out_map = matrix_map(out), dy_map = matrix_map(dy);
        return without_gil([&] { return combine_backward<S>(p, out_map, dy_map); });
      },
      py::arg("plan"), py::arg("expert_out"), py::arg("grad_y"),
      ("Backward of combine: CombineGradients with expert_out = weight * grad_y[token] per slot "
       "and weight[i] = <expert_out[slot], grad_y[token]> per kept entry (0 when dropped)." +
       note)
          .c_str());
}

/// The planners over plain arrays, bound once for both precisions (in_precision): the gates' or
/// scores' dtype picks the plan's. Bound after make_capacity_plan(routing, ...), so that a Routing
/// finds its overload before this one takes any object.
void bind_array_planners(py::module_& m) {
  const std::string note = std::string(" ") + kArrayNote;
  m.def(
      "make_capacity_plan",
      [](const py::object& expert_ids, const py::object& gates, Index num_experts,
         const CapacityConfig& config, Mode mode, std::uint64_t seed) {
        return in_precision(gates, [&](auto s) {
          using S = decltype(s);
          const auto g = float_array<S>(gates, "gates", 2, "[T, k]");
          const ExpertIds ids(expert_ids, "expert_ids");
          const auto ids_map = ids.map();
          const auto g_map = matrix_map(g);
          return without_gil([&] {
            return make_capacity_plan<S>(ids_map, g_map, num_experts, config, mode, seed);
          });
        });
      },
      py::arg("expert_ids"), py::arg("gates"), py::arg("num_experts"), py::arg("config"),
      py::arg("mode") = Mode::train, py::arg("seed") = 0,
      ("Token-choice capacity plan from expert_ids [T, k] (int32; -1 = unused slot) and gates "
       "[T, k]: per group C = expert_capacity(config, group tokens, k, E, mode); the entries past "
       "C dropped by config.policy; combine weight = gate for a kept entry (divided by the sum of "
       "the token's kept gates under renormalize_survivors), 0 for a dropped one. `seed` only "
       "matters for DropPolicy.random. The dtype of gates picks CapacityPlan_float32 or "
       "_float64." +
       note)
          .c_str());
  m.def(
      "make_expert_choice_plan",
      [](const py::object& scores, const ExpertChoiceConfig& config, Mode mode) {
        return in_precision(scores, [&](auto s) {
          using S = decltype(s);
          const auto a = float_array<S>(scores, "scores", 2, "[T, E]");
          const auto scores_map = matrix_map(a);
          return without_gil([&] { return make_expert_choice_plan<S>(scores_map, config, mode); });
        });
      },
      py::arg("scores"), py::arg("config") = ExpertChoiceConfig(), py::arg("mode") = Mode::train,
      ("Expert choice routing (Zhou et al. 2022) from scores [T, E]: per group each expert keeps "
       "its top-C tokens by score (ties to the lower token), in slots ordered by score; combine "
       "weight = score. A token gets 0..E entries, in ascending expert id; top_k is 0. The dtype "
       "of scores picks CapacityPlan_float32 or _float64." +
       note)
          .c_str());
}

void bind_dropless_plan(py::module_& m) {
  py::class_<DroplessPlan>(
      m, "DroplessPlan",
      (std::string("Every (token, choice) pair sorted by expert (stable), each expert's group "
                   "padded to block_size rows: no token is dropped (MegaBlocks dMoE; block_size "
                   "1 is grouped GEMM). Pair p = t * k + j; expert e owns padded rows "
                   "padded_offsets[e] .. padded_offsets[e + 1] - 1, the first "
                   "tokens_per_expert[e] of them real. Made by make_dropless_plan.") +
       kPlanArrays)
          .c_str())
      .def_readonly("num_tokens", &DroplessPlan::num_tokens)
      .def_readonly("top_k", &DroplessPlan::top_k)
      .def_readonly("num_experts", &DroplessPlan::num_experts)
      .def_readonly("block_size", &DroplessPlan::block_size)
      .def_readonly("tokens_per_expert", &DroplessPlan::tokens_per_expert,
                    "[E] int64: pairs routed to each expert (MegaBlocks histogram)")
      .def_readonly("offsets", &DroplessPlan::offsets,
                    "[E + 1] int64: unpadded group starts (exclusive cumsum of the counts)")
      .def_readonly("padded_offsets", &DroplessPlan::padded_offsets,
                    "[E + 1] int64: padded group starts (cumsum of round_up(count, block_size))")
      .def_readonly("sorted_pairs", &DroplessPlan::sorted_pairs,
                    "[routed] int64: the pair at each sorted position (MegaBlocks indices)")
      .def_readonly("pair_row", &DroplessPlan::pair_row,
                    "[T * k] int64: padded row of each pair, -1 for an unused slot")
      .def("num_pairs", &DroplessPlan::num_pairs, "T * k")
      .def("num_routed", &DroplessPlan::num_routed, "pairs routed to an expert")
      .def("padded_rows", &DroplessPlan::padded_rows, "rows of the padded buffer")
      .def("group_rows", &DroplessPlan::group_rows, py::arg("expert"),
           "real rows of the expert's group")
      .def("__repr__", [](const DroplessPlan& p) {
        return detail::concat("DroplessPlan(num_tokens=", p.num_tokens, ", top_k=", p.top_k,
                              ", num_experts=", p.num_experts, ", block_size=", p.block_size,
                              ", padded_rows=", p.padded_rows(), ")")
            .str();
      });

  m.def(
      "make_dropless_plan",
      [](const py::object& expert_ids, Index num_experts, Index block_size) {
        const ExpertIds ids(expert_ids, "expert_ids");
        py::gil_scoped_release release;
        return make_dropless_plan(ids.map(), num_experts, block_size);
      },
      py::arg("expert_ids"), py::arg("num_experts"), py::arg("block_size") = 128,
      "Dropless plan of expert_ids [T, k] (int32; -1 = unused slot, routed nowhere): a stable "
      "counting sort by expert, each group padded to a multiple of block_size (MegaBlocks: "
      "sort, histogram, round_up, cumsum).");
}

/// The dropless kernels, bound once for both precisions: the first array's dtype picks the
/// precision (in_precision), every other array is taken in it.
void bind_dropless_ops(py::module_& m) {
  const std::string note = std::string(" ") + kArrayNote;
  m.def(
      "dropless_permute",
      [](const py::object& x, const DroplessPlan& plan, bool zero_padding) {
        return in_precision(x, [&](auto s) {
          using S = decltype(s);
          const auto a = float_array<S>(x, "x", 2, "[T, d]");
          const auto x_map = matrix_map(a);
          return without_gil([&] {
            RowMatrix<S> out(plan.padded_rows(), x_map.cols());
            dropless_permute<S>(x_map, plan, out, zero_padding);
            return out;
          });
        });
      },
      py::arg("x"), py::arg("plan"), py::arg("zero_padding") = true,
      ("out [padded_rows, d]: out[pair_row[p]] = x[p // k] for every routed pair, padding rows 0 "
       "(MegaBlocks padded_gather, Megatron permute). zero_padding=False leaves the padding rows "
       "uninitialized, as numpy.empty." +
       note)
          .c_str());
  m.def(
      "dropless_permute_backward",
      [](const py::object& grad_out, const DroplessPlan& plan) {
        return in_precision(grad_out, [&](auto s) {
          using S = decltype(s);
          const auto a = float_array<S>(grad_out, "grad_out", 2, "[padded_rows, d]");
          const auto grad_map = matrix_map(a);
          return without_gil([&] {
            RowMatrix<S> grad_x(plan.num_tokens, grad_map.cols());
            dropless_permute_backward<S>(grad_map, plan, grad_x);
            return grad_x;
          });
        });
      },
      py::arg("grad_out"), py::arg("plan"),
      ("grad_x [T, d]: the sum over token t's routed pairs, in choice order, of "
       "grad_out[pair_row]." +
       note)
          .c_str());
  m.def(
      "dropless_unpermute",
      [](const py::object& y, const py::object& gates, const DroplessPlan& plan) {
        return in_precision(y, [&](auto s) {
          using S = decltype(s);
          const auto a = float_array<S>(y, "y", 2, "[padded_rows, d]");
          const auto g = float_array<S>(gates, "gates", 2, "[T, k]");
          const auto y_map = matrix_map(a), g_map = matrix_map(g);
          return without_gil([&] {
            RowMatrix<S> out(plan.num_tokens, y_map.cols());
            dropless_unpermute<S>(y_map, g_map, plan, out);
            return out;
          });
        });
      },
      py::arg("y"), py::arg("gates"), py::arg("plan"),
      ("out [T, d]: out[t] = sum_j gates[t, j] * y[pair_row[t * k + j]] over the routed pairs, j "
       "in order (MegaBlocks padded_scatter)." +
       note)
          .c_str());
  m.def(
      "dropless_unpermute_backward",
      [](const py::object& grad_out, const py::object& y, const py::object& gates,
         const DroplessPlan& plan, bool zero_padding) {
        return in_precision(grad_out, [&](auto s) {
          using S = decltype(s);
          const auto dout = float_array<S>(grad_out, "grad_out", 2, "[T, d]");
          const auto a = float_array<S>(y, "y", 2, "[padded_rows, d]");
          const auto g = float_array<S>(gates, "gates", 2, "[T, k]");
          const auto dout_map = matrix_map(dout), y_map = matrix_map(a), g_map = matrix_map(g);
          // A pair of matrices becomes a tuple of two arrays, each owning its matrix.
          return without_gil([&] {
            std::pair<RowMatrix<S>, RowMatrix<S>> grads(
                RowMatrix<S>(plan.padded_rows(), dout_map.cols()),
                RowMatrix<S>(plan.num_tokens, plan.top_k));
            dropless_unpermute_backward<S>(dout_map, y_map, g_map, plan, grads.first, grads.second,
                                           zero_padding);
            return grads;
          });
        });
      },
      py::arg("grad_out"), py::arg("y"), py::arg("gates"), py::arg("plan"),
      py::arg("zero_padding") = true,
      ("(grad_y [padded_rows, d], grad_gates [T, k]): grad_y[pair_row] = gates[t, j] * "
       "grad_out[t] (padding rows 0 unless zero_padding is False: then uninitialized) and "
       "grad_gates[t, j] = <y[pair_row], grad_out[t]>, 0 for an unused pair (MegaBlocks "
       "padded_scatter_wgrad)." +
       note)
          .c_str());
}

}  // namespace

void bind_dispatch(py::module_& m) {
  bind_capacity_config(m);
  bind_capacity_plan_for<float>(m);
  bind_capacity_plan_for<double>(m);
  bind_array_planners(m);
  bind_dropless_plan(m);
  bind_dropless_ops(m);
}

}  // namespace moe::python
