// select_experts forward and backward over every score function, softmax order, renormalization,
// group limit, adaptive k and selection bias, in float and double, on logits with ties, zeros,
// subnormals, the largest finite magnitudes and the values where exp and sigmoid leave the normal
// range. Invariants: ids distinct and in range, and the k best by the selection values (ties to the
// lower id); scores and gates finite and in range; renormalized gates sum to the scaling factor; a
// replay of the chosen ids gives the same gates bit for bit; the gradient is finite.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <moe/routing/router.hpp>

#include "fuzz_input.hpp"

namespace {

using moe::Index;

template <class S>
void check_selection(const moe::RouterConfig& c, const moe::RowMatrix<S>& logits,
                     const moe::Vector<S>& bias, const moe::Routing<S>& r,
                     const moe::RowMatrix<S>& selection) {
  const Index T = logits.rows(), E = c.num_experts, k = c.top_k;
  const bool by_logits = c.score == moe::ScoreFunction::softmax &&
                         c.softmax_order == moe::SoftmaxOrder::topk_then_softmax;
  const bool rewritten = bias.size() > 0 || c.groups_enabled();
  const double tol = 64 * std::numeric_limits<S>::epsilon();
  for (Index t = 0; t < T; ++t) {
    // Scores: a probability row (softmax), per-expert probabilities (sigmoid), or sqrt(softplus),
    // finite and >= 0.
    double row_sum = 0.0;
    for (Index e = 0; e < E; ++e) {
      const S s = r.scores(t, e);
      MOE_FUZZ_CHECK(std::isfinite(s) && s >= S(0));
      MOE_FUZZ_CHECK(c.score == moe::ScoreFunction::sqrt_softplus || s <= S(1));
      row_sum += static_cast<double>(s);
    }
    if (c.score == moe::ScoreFunction::softmax) MOE_FUZZ_CHECK(std::abs(row_sum - 1.0) <= E * tol);

    // Ids: distinct, in range, the k best of the values selection ran on.
    // With adaptive k, choices past min_top_k may be unused slots (-1, gate 0), and every used
    // choice past it lies within active_top_k.
    std::vector<char> chosen(static_cast<std::size_t>(E), 0);
    const auto ranked = [&](Index e) {
      return rewritten ? selection(t, e) : by_logits ? logits(t, e) : r.scores(t, e);
    };
    for (Index j = 0; j < k; ++j) {
      const Index e = r.expert_ids(t, j);
      if (e == moe::kUnusedSlot) {
        MOE_FUZZ_CHECK(c.adaptive_k() && j >= c.min_active_k() && r.gates(t, j) == S(0));
        continue;
      }
      MOE_FUZZ_CHECK(e >= 0 && e < E && !chosen[static_cast<std::size_t>(e)]);
      MOE_FUZZ_CHECK(j < c.max_active_k());
      chosen[static_cast<std::size_t>(e)] = 1;
    }
    for (Index j = 0; !c.adaptive_k() && j < k; ++j)
      for (Index e = 0; e < E; ++e) {
        if (chosen[static_cast<std::size_t>(e)]) continue;
        const Index mine = r.expert_ids(t, j);
        MOE_FUZZ_CHECK(ranked(mine) > ranked(e) || (ranked(mine) == ranked(e) && mine < e));
      }

    // Gates: finite, >= 0; renormalized ones sum to the scaling factor.
    double gate_sum = 0.0;
    for (Index j = 0; j < k; ++j) {
      const S g = r.gates(t, j);
      MOE_FUZZ_CHECK(std::isfinite(g) && g >= S(0));
      gate_sum += static_cast<double>(g);
    }
    const bool sums_to_one =
        by_logits || (c.renormalize && c.renormalize_epsilon == 0.0 && c.renormalize_min == 0.0);
    if (sums_to_one)
      MOE_FUZZ_CHECK(std::abs(gate_sum - c.scaling_factor) <= 4 * k * tol * c.scaling_factor);
    if (!by_logits && !c.renormalize)
      for (Index j = 0; j < k; ++j)
        MOE_FUZZ_CHECK(r.expert_ids(t, j) == moe::kUnusedSlot ||
                       r.gates(t, j) ==
                           r.scores(t, r.expert_ids(t, j)) * static_cast<S>(c.scaling_factor));
  }
}

template <class S>
void run(moe::fuzz::FuzzInput& in) {
  moe::RouterConfig c;
  c.num_experts = in.range(1, 24);
  c.hidden = 1;
  c.top_k = in.range(1, std::min<Index>(c.num_experts, 8));
  c.score = in.pick<moe::ScoreFunction>(3);
  c.softmax_order = c.score == moe::ScoreFunction::softmax ? in.pick<moe::SoftmaxOrder>(2)
                                                           : moe::SoftmaxOrder::softmax_then_topk;
  c.renormalize = in.flag();
  static constexpr double kEpsilons[] = {0.0, 1e-20, 1e-6, 0.0};
  c.renormalize_epsilon = kEpsilons[in.byte() % 4];
  c.renormalize_min = c.renormalize && in.flag() ? 6.103515625e-5 : 0.0;  // llama.cpp's floor
  c.scaling_factor = in.flag() ? 2.5 : 1.0;
  if (in.flag()) {  // adaptive k
    c.active_top_k = in.range(0, c.top_k);
    c.min_top_k = in.range(0, c.max_active_k());
    c.top_k_threshold = in.unit<double>();
  }
  if (in.flag()) {
    // A group limit: num_groups a divisor of E, enough experts in the kept groups for k.
    std::vector<Index> divisors;
    for (Index g = 2; g <= c.num_experts; ++g)
      if (c.num_experts % g == 0) divisors.push_back(g);
    if (!divisors.empty()) {
      c.num_groups =
          divisors[static_cast<std::size_t>(in.range(0, static_cast<Index>(divisors.size()) - 1))];
      const Index per_group = c.num_experts / c.num_groups;
      c.groups_selected =
          std::min(c.num_groups, in.range((c.top_k + per_group - 1) / per_group, c.num_groups));
      c.group_score = per_group >= 2 ? in.pick<moe::GroupScore>(3) : moe::GroupScore::max;
      const Index terms = c.top_k / c.groups_selected;  // Megatron's rule needs 1..per_group
      if (c.group_score == moe::GroupScore::sum_top_k_per_selected_group &&
          (terms < 1 || terms > per_group))
        c.group_score = moe::GroupScore::max;
      c.group_mask = in.pick<moe::GroupMask>(2);
    }
  }
  const Index T = in.range(0, 12);
  moe::RowMatrix<S> logits(T, c.num_experts);
  for (Index i = 0; i < logits.size(); ++i) logits.data()[i] = in.value<S>();
  moe::Vector<S> bias;
  if (in.flag()) {
    bias.resize(c.num_experts);
    for (Index e = 0; e < c.num_experts; ++e) bias[e] = in.value<S>() * S(1e-3);
  }

  moe::Routing<S> routing;
  moe::RowMatrix<S> selection;
  moe::select_experts<S>(c, logits, bias, routing, selection);
  routing.logits = logits;
  check_selection(c, logits, bias, routing, selection);

  // A replay of the chosen ids recomputes the same gates, bit for bit.
  moe::Routing<S> replayed;
  moe::replay_experts<S>(c, logits, routing.expert_ids, replayed);
  MOE_FUZZ_CHECK(replayed.expert_ids == routing.expert_ids);
  MOE_FUZZ_CHECK(replayed.gates == routing.gates);

  moe::RowMatrix<S> grad_gates(T, c.top_k), grad_scores;
  for (Index i = 0; i < grad_gates.size(); ++i) grad_gates.data()[i] = in.unit<S>() - S(0.5);
  if (in.flag()) {
    grad_scores.resize(T, c.num_experts);
    for (Index i = 0; i < grad_scores.size(); ++i) grad_scores.data()[i] = in.unit<S>() - S(0.5);
  }
  const moe::RowMatrix<S> grad_logits =
      moe::select_experts_backward<S>(c, logits, routing, grad_gates, grad_scores);
  MOE_FUZZ_CHECK(grad_logits.rows() == T && grad_logits.cols() == c.num_experts);
  MOE_FUZZ_CHECK(grad_logits.allFinite());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  moe::fuzz::FuzzInput in(data, size);
  if (in.flag())
    run<float>(in);
  else
    run<double>(in);
  return 0;
}
