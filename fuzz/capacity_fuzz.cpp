// Capacity plans and the dispatch / combine round trip, over every rounding convention and drop
// policy. Invariants: every (token, choice) entry is kept in exactly one slot of its own expert or
// counted dropped; no expert keeps more than its capacity (per routing group); kept slots fill
// each expert's rows from the top; dispatch copies the token into its slot, combine sums
// w · row over the kept entries, and the backwards are the transposes of both.
#include <cstdint>
#include <vector>

#include <moe/dispatch/capacity_planner.hpp>
#include <moe/dispatch/dispatch.hpp>

#include "fuzz_input.hpp"

namespace {

using moe::Index;
using Matrix = moe::RowMatrix<double>;

void check_plan(const moe::CapacityPlan<double>& plan, const moe::ExpertIdMatrix& ids,
                const Matrix& gates, bool renormalized) {
  const Index T = ids.rows(), k = ids.cols(), E = plan.num_experts, C = plan.capacity;
  MOE_FUZZ_CHECK(plan.num_entries() == T * k);
  MOE_FUZZ_CHECK(plan.slot_entry.size() == E * C && plan.slot_token.size() == E * C);
  MOE_FUZZ_CHECK(C == plan.num_groups * plan.group_capacity);
  std::vector<Index> kept(static_cast<std::size_t>(E), 0), dropped(kept);
  std::vector<Index> group_kept(static_cast<std::size_t>(E * plan.num_groups), 0);
  std::vector<char> used(static_cast<std::size_t>(E * C), 0);
  Index without_expert = 0;
  const Index group_tokens = plan.num_groups > 0 ? T / plan.num_groups : 0;
  for (Index t = 0; t < T; ++t) {
    MOE_FUZZ_CHECK(plan.token_offsets[t] == t * k);
    Index kept_here = 0;
    double kept_gates = 0.0;
    for (Index j = 0; j < k; ++j) kept_gates += plan.entry_slot[t * k + j] >= 0 ? gates(t, j) : 0.0;
    for (Index j = 0; j < k; ++j) {
      const Index i = t * k + j, e = ids(t, j), slot = plan.entry_slot[i];
      MOE_FUZZ_CHECK(plan.entry_expert[i] == e);
      if (slot < 0) {
        MOE_FUZZ_CHECK(slot == -1 && plan.entry_weight[i] == 0.0);
        ++dropped[static_cast<std::size_t>(e)];
        continue;
      }
      MOE_FUZZ_CHECK(slot >= e * C && slot < (e + 1) * C);
      MOE_FUZZ_CHECK(!used[static_cast<std::size_t>(slot)]);
      used[static_cast<std::size_t>(slot)] = 1;
      MOE_FUZZ_CHECK(plan.slot_entry[slot] == i && plan.slot_token[slot] == t);
      ++kept[static_cast<std::size_t>(e)];
      ++group_kept[static_cast<std::size_t>(e * plan.num_groups + t / group_tokens)];
      ++kept_here;
      const double w =
          renormalized ? gates(t, j) / std::max(kept_gates, 2.220446049250313e-16) : gates(t, j);
      MOE_FUZZ_CHECK(moe::fuzz::close(plan.entry_weight[i], w, 1e-12));
    }
    without_expert += kept_here == 0;
  }
  Index total_kept = 0, total_dropped = 0;
  for (Index e = 0; e < E; ++e) {
    const auto u = static_cast<std::size_t>(e);
    MOE_FUZZ_CHECK(plan.kept[e] == kept[u] && plan.dropped[e] == dropped[u]);
    MOE_FUZZ_CHECK(kept[u] <= C);
    for (Index g = 0; g < plan.num_groups; ++g)
      MOE_FUZZ_CHECK(group_kept[static_cast<std::size_t>(e * plan.num_groups + g)] <=
                     plan.group_capacity);
    // Kept rows first, without a gap; the rest of the expert's rows empty.
    for (Index c = 0; c < C; ++c) {
      const bool full = plan.slot_entry[e * C + c] >= 0;
      MOE_FUZZ_CHECK(full == (c < kept[u]));
      if (!full) MOE_FUZZ_CHECK(plan.slot_token[e * C + c] == -1);
    }
    total_kept += kept[u];
    total_dropped += dropped[u];
  }
  MOE_FUZZ_CHECK(plan.total_kept == total_kept && plan.total_dropped == total_dropped);
  MOE_FUZZ_CHECK(total_kept + total_dropped == T * k);
  MOE_FUZZ_CHECK(plan.tokens_without_expert == without_expert);
}

void check_round_trip(const moe::CapacityPlan<double>& plan, moe::fuzz::FuzzInput& in, Index d) {
  const Index T = plan.num_tokens, k = plan.top_k;
  Matrix x(T, d), grad_y(T, d);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = in.unit<double>() - 0.5;
  for (Index i = 0; i < grad_y.size(); ++i) grad_y.data()[i] = in.unit<double>() - 0.5;

  const Matrix buffer = moe::dispatch(plan, x);
  for (Index s = 0; s < plan.num_slots(); ++s) {
    const Index t = plan.slot_token[s];
    MOE_FUZZ_CHECK(t >= 0 ? buffer.row(s) == x.row(t) : buffer.row(s).isZero(0.0));
  }
  // Expert outputs: the dispatched rows, so combine gives sum_kept w · x[t].
  const Matrix y = moe::combine(plan, buffer);
  for (Index t = 0; t < T; ++t)
    for (Index c = 0; c < d; ++c) {
      double expected = 0.0;
      for (Index j = 0; j < k; ++j)
        if (plan.entry_slot[t * k + j] >= 0) expected += plan.entry_weight[t * k + j] * x(t, c);
      MOE_FUZZ_CHECK(moe::fuzz::close(y(t, c), expected, 1e-12));
    }

  // Transposes: <dispatch(x), g> = <x, dispatch_backward(g)> and the same for combine.
  const Matrix grad_x = moe::dispatch_backward(plan, buffer);
  const double lhs = buffer.cwiseProduct(buffer).sum(), rhs = x.cwiseProduct(grad_x).sum();
  MOE_FUZZ_CHECK(moe::fuzz::close(lhs, rhs, 1e-10));
  const auto grads = moe::combine_backward(plan, buffer, grad_y);
  MOE_FUZZ_CHECK(moe::fuzz::close(y.cwiseProduct(grad_y).sum(),
                                  buffer.cwiseProduct(grads.expert_out).sum(), 1e-10));
  for (Index i = 0; i < plan.num_entries(); ++i) {
    const Index s = plan.entry_slot[i];
    const double expected = s >= 0 ? buffer.row(s).dot(grad_y.row(i / k)) : 0.0;
    MOE_FUZZ_CHECK(moe::fuzz::close(grads.weight[i], expected, 1e-12));
  }
  const Matrix grad_gates = moe::capacity_plan_backward(plan, grads.weight);
  MOE_FUZZ_CHECK(grad_gates.rows() == T && grad_gates.cols() == k && grad_gates.allFinite());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  moe::fuzz::FuzzInput in(data, size);
  const Index T = in.range(0, 40), E = in.range(1, 12), k = in.range(1, 4), d = in.range(1, 3);
  moe::CapacityConfig config;
  config.rounding = in.pick<moe::CapacityRounding>(7);
  config.policy = in.pick<moe::DropPolicy>(5);
  static constexpr double kFactors[] = {1.0, 0.25, 0.5, 1.25, 2.0, 1e-9, 64.0, 0.0};
  config.train_factor = kFactors[in.byte() % 8];
  config.eval_factor = kFactors[in.byte() % 8];
  config.min_capacity = in.range(0, 6);
  config.fixed_capacity = in.range(0, 12);
  config.alignment = in.range(1, 4);
  config.group_size = in.flag() ? in.range(1, 8) : 0;
  config.renormalize_survivors = in.flag();
  const moe::Mode mode = in.flag() ? moe::Mode::train : moe::Mode::eval;
  const std::uint64_t seed = in.u32();

  moe::ExpertIdMatrix ids(T, k);
  Matrix gates(T, k);
  for (Index t = 0; t < T; ++t)
    for (Index j = 0; j < k; ++j) {
      ids(t, j) = static_cast<moe::ExpertId>(in.range(0, E - 1));
      gates(t, j) = in.unit<double>();
    }
  // What must be refused: a capacity factor of 0 where the convention uses one, or a token count
  // the group size does not divide. Everything else must be planned.
  const bool uses_factor = config.rounding != moe::CapacityRounding::fixed &&
                           config.rounding != moe::CapacityRounding::gshard;
  const bool refused = (uses_factor && (config.train_factor == 0.0 || config.eval_factor == 0.0)) ||
                       (config.group_size > 0 && T % config.group_size != 0);
  moe::CapacityPlan<double> plan;
  try {
    plan = moe::make_capacity_plan<double>(ids, gates, E, config, mode, seed);
  } catch (const moe::Error&) {
    MOE_FUZZ_CHECK(refused);
    return 0;
  }
  MOE_FUZZ_CHECK(!refused);
  check_plan(plan, ids, gates, config.renormalize_survivors);
  check_round_trip(plan, in, d);
  return 0;
}
