// The dispatch area: capacity plans under each rounding / drop policy worth telling apart, the
// dispatch and combine kernels over one of them, expert choice and dropless plans, for the
// routing of fixed logits (tests/test_dispatch.py repeats every call through the module).
#include <cstdint>
#include <vector>

#include "areas.hpp"
#include "inputs.hpp"
#include "npy.hpp"

#include "moe/moe.hpp"

namespace moe::golden {

namespace {

constexpr Index kTokens = 24, kExperts = 6, kTopK = 2, kWidth = 5;

/// The capacity cases of test_dispatch.py's CAPACITY_CASES, in the same order.
struct CapacityCase {
  CapacityConfig config;
  Mode mode = Mode::train;
  std::uint64_t seed = 0;
};

std::vector<CapacityCase> capacity_cases() {
  std::vector<CapacityCase> cases;
  auto add = [&](CapacityRounding rounding, DropPolicy policy, double factor) -> CapacityCase& {
    CapacityCase c;
    c.config.rounding = rounding;
    c.config.policy = policy;
    c.config.train_factor = factor;
    cases.push_back(c);
    return cases.back();
  };
  add(CapacityRounding::megatron, DropPolicy::position, 0.75);     // Megatron drop_and_pad
  add(CapacityRounding::megatron, DropPolicy::probability, 0.75);  // Megatron probs
  add(CapacityRounding::gshard, DropPolicy::choice_major, 1.0);    // GShard / fairseq top-2
  CapacityCase& deepspeed = add(CapacityRounding::deepspeed, DropPolicy::choice_major, 0.5);
  deepspeed.config.min_capacity = 4;
  deepspeed.config.renormalize_survivors = true;
  add(CapacityRounding::tutel, DropPolicy::batch_prioritized, 0.5).config.alignment = 4;
  add(CapacityRounding::flaxformer, DropPolicy::choice_major, 1.0).config.group_size = 8;
  add(CapacityRounding::megablocks, DropPolicy::random, 0.75).seed = 7;
  CapacityCase& switch_case = add(CapacityRounding::fixed, DropPolicy::position, 1.0);
  switch_case.config.fixed_capacity = 3;  // HF Switch: expert_capacity per sequence
  switch_case.config.group_size = 12;
  CapacityCase& eval = add(CapacityRounding::megatron, DropPolicy::position, 0.5);
  eval.config.eval_factor = 1.5;
  eval.mode = Mode::eval;
  return cases;
}

template <class S>
void write_capacity_plan(const std::string& prefix, const CapacityPlan<S>& plan) {
  write_npy(prefix + "token_offsets.npy", plan.token_offsets);
  write_npy(prefix + "entry_expert.npy", plan.entry_expert);
  write_npy(prefix + "entry_slot.npy", plan.entry_slot);
  write_npy(prefix + "entry_weight.npy", plan.entry_weight);
  write_npy(prefix + "slot_entry.npy", plan.slot_entry);
  write_npy(prefix + "slot_token.npy", plan.slot_token);
  write_npy(prefix + "kept.npy", plan.kept);
  write_npy(prefix + "dropped.npy", plan.dropped);
  write_npy(prefix + "survivor_sum.npy", plan.survivor_sum.data(), plan.survivor_sum.size());
  const std::int64_t scalars[] = {plan.capacity,   plan.group_capacity, plan.num_groups,
                                  plan.total_kept, plan.total_dropped,  plan.tokens_without_expert};
  write_npy(prefix + "scalars.npy", scalars, 6);
}

void write_dropless_plan(const std::string& prefix, const DroplessPlan& plan) {
  write_npy(prefix + "tokens_per_expert.npy", plan.tokens_per_expert);
  write_npy(prefix + "offsets.npy", plan.offsets);
  write_npy(prefix + "padded_offsets.npy", plan.padded_offsets);
  write_npy(prefix + "sorted_pairs.npy", plan.sorted_pairs.data(), plan.sorted_pairs.size());
  write_npy(prefix + "pair_row.npy", plan.pair_row);
}

template <class S>
void write_for(const std::string& dir, const Routing<float>& routing,
               const ExpertIdMatrix& ids_unused) {
  const std::string t = precision_name<S>();
  const RowMatrix<S> gates = routing.gates.cast<S>();
  const RowMatrix<S> scores = routing.scores.cast<S>();
  write_npy(dir + "/gates_" + t + ".npy", gates);
  write_npy(dir + "/scores_" + t + ".npy", scores);

  const auto cases = capacity_cases();
  for (std::size_t c = 0; c < cases.size(); ++c)
    write_capacity_plan(dir + "/plan" + std::to_string(c) + "_" + t + "_",
                        make_capacity_plan<S>(routing.expert_ids, gates, kExperts, cases[c].config,
                                              cases[c].mode, cases[c].seed));

  // The kernels over the renormalized plan with drops (case 3).
  const CapacityPlan<S> plan =
      make_capacity_plan<S>(routing.expert_ids, gates, kExperts, cases[3].config, cases[3].mode);
  const RowMatrix<S> x = exact_inputs<S>(kTokens, kWidth, 2);
  const RowMatrix<S> expert_out = exact_inputs<S>(plan.num_slots(), kWidth, 3);
  const RowMatrix<S> grad_y = exact_inputs<S>(kTokens, kWidth, 4);
  write_npy(dir + "/dispatch_" + t + ".npy", moe::dispatch(plan, x));
  write_npy(dir + "/dispatch_backward_" + t + ".npy", moe::dispatch_backward(plan, expert_out));
  write_npy(dir + "/combine_" + t + ".npy", moe::combine(plan, expert_out));
  const CombineGradients<S> grads = moe::combine_backward(plan, expert_out, grad_y);
  write_npy(dir + "/combine_backward_expert_out_" + t + ".npy", grads.expert_out);
  write_npy(dir + "/combine_backward_weight_" + t + ".npy", grads.weight);
  write_npy(dir + "/capacity_plan_backward_" + t + ".npy",
            capacity_plan_backward(plan, grads.weight));

  ExpertChoiceConfig choice;
  const CapacityPlan<S> chosen = make_expert_choice_plan<S>(scores, choice, Mode::train);
  write_capacity_plan(dir + "/expert_choice_" + t + "_", chosen);
  const Vector<S> grad_weight = exact_inputs<S>(chosen.num_entries(), 1, 5);
  write_npy(dir + "/expert_choice_backward_" + t + ".npy",
            expert_choice_backward(chosen, grad_weight));

  const DroplessPlan dropless = make_dropless_plan(ids_unused, kExperts, 4);
  const Index rows = dropless.padded_rows();
  RowMatrix<S> permuted(rows, kWidth), grad_x(kTokens, kWidth), out(kTokens, kWidth);
  RowMatrix<S> grad_rows(rows, kWidth), grad_gates(kTokens, kTopK);
  const RowMatrix<S> y = exact_inputs<S>(rows, kWidth, 7);
  dropless_permute<S>(x, dropless, permuted);
  dropless_permute_backward<S>(exact_inputs<S>(rows, kWidth, 6), dropless, grad_x);
  dropless_unpermute<S>(y, gates, dropless, out);
  dropless_unpermute_backward<S>(exact_inputs<S>(kTokens, kWidth, 8), y, gates, dropless, grad_rows,
                                 grad_gates);
  write_npy(dir + "/dropless_permute_" + t + ".npy", permuted);
  write_npy(dir + "/dropless_permute_backward_" + t + ".npy", grad_x);
  write_npy(dir + "/dropless_unpermute_" + t + ".npy", out);
  write_npy(dir + "/dropless_unpermute_backward_y_" + t + ".npy", grad_rows);
  write_npy(dir + "/dropless_unpermute_backward_gates_" + t + ".npy", grad_gates);
}

}  // namespace

void dispatch(const std::string& dir) {
  const Routing<float> routing = mixed_routing(kTokens, kExperts, kTopK);
  write_npy(dir + "/expert_ids.npy", routing.expert_ids);
  // Two unused slots (-1): a token routed to one expert only.
  ExpertIdMatrix ids_unused = routing.expert_ids;
  ids_unused(3, 1) = kUnusedSlot;
  ids_unused(10, 1) = kUnusedSlot;
  write_npy(dir + "/expert_ids_unused.npy", ids_unused);

  std::vector<std::int64_t> capacities;
  for (Index k : {1, 2})
    for (CapacityRounding r :
         {CapacityRounding::megatron, CapacityRounding::deepspeed, CapacityRounding::megablocks,
          CapacityRounding::tutel, CapacityRounding::flaxformer, CapacityRounding::gshard,
          CapacityRounding::fixed}) {
      CapacityConfig c;
      c.rounding = r;
      c.train_factor = 1.2;
      c.fixed_capacity = 7;
      capacities.push_back(expert_capacity(c, 50, k, 4, Mode::train));
    }
  write_npy(dir + "/expert_capacity.npy", capacities.data(), 2, 7);

  write_dropless_plan(dir + "/dropless_", make_dropless_plan(ids_unused, kExperts, 4));
  write_dropless_plan(dir + "/dropless_full_", make_dropless_plan(routing.expert_ids, kExperts, 1));
  write_for<float>(dir, routing, ids_unused);
  write_for<double>(dir, routing, ids_unused);
}

}  // namespace moe::golden
