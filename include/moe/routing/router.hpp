// Router: logits = x W^T (+ b), optional training noise, score function, (group-limited) top-k
// selection with a selection-only bias, gate weights; and the backward pass of all of it.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/parameters.hpp"
#include "moe/core/random.hpp"
#include "moe/core/types.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/parallel.hpp"
#include "moe/kernels/simd.hpp"
#include "moe/routing/config.hpp"
#include "moe/routing/group_limit.hpp"
#include "moe/routing/routing.hpp"
#include "moe/routing/scoring.hpp"
#include "moe/routing/topk.hpp"

namespace moe {

namespace detail {

/// log sigmoid(z) = -softplus(-z) = min(z, 0) - log1p(exp(-|z|)), finite for every finite z.
template <class S>
S log_sigmoid(S z) {
  return std::min(z, S(0)) - std::log1p(std::exp(-std::abs(z)));
}

/// r_j = s_j / (sum_i s_i + eps) over a token's k selected scores: the quotient itself while the
/// sum is a normal number (what PyTorch computes), and, when it is not (eps = 0 and chosen scores
/// that underflow: sigmoid logits below about -87 in float, or softmax scores picked by a bias or a
/// group limit far below the row's best), exp(log s_j - logsumexp_i log s_i), the same ratio in
/// log space, finite and summing to 1. `log_s(j)` is log s_j up to a constant shared by the token:
/// log sigmoid(z_j) for sigmoid scores, log softplus(z_j) / 2 for sqrt_softplus, z_j itself for
/// softmax scores (log s_j = z_j - lse(z)).
template <class S, class Score, class LogScore>
void renormalized_ratios(Index k, const Score& s, const LogScore& log_s, double eps,
                         double min_denominator, S* r) {
  S sum = 0;
  for (Index j = 0; j < k; ++j) sum += s(j);
  // The floor is 0 or a normal number (validate): a floored denominator takes the first branch.
  const S denominator = std::max(sum + static_cast<S>(eps), static_cast<S>(min_denominator));
  if (denominator >= std::numeric_limits<S>::min()) {
    for (Index j = 0; j < k; ++j) r[j] = s(j) / denominator;
    return;
  }
  S max_log = log_s(0);
  for (Index j = 1; j < k; ++j) max_log = std::max(max_log, log_s(j));
  S total = 0;
  for (Index j = 0; j < k; ++j) total += r[j] = std::exp(log_s(j) - max_log);
  for (Index j = 0; j < k; ++j) r[j] /= total;
}

/// log softplus(z), finite for every finite z: softplus(z) = exp(z) (1 - exp(z) / 2 + ...) is
/// exp(z) to double precision below z = -37 (where log(softplus) would also lose the digits).
template <class S>
S log_softplus(S z) {
  return z < S(-37) ? z : std::log(std::max(z, S(0)) + std::log1p(std::exp(-std::abs(z))));
}

/// log s_j of a selected score, up to a constant per token (see renormalized_ratios):
/// log sigmoid(z), log sqrt(softplus(z)) = log softplus(z) / 2, or z itself for softmax.
template <class S>
S log_score(ScoreFunction score, S logit) {
  switch (score) {
    case ScoreFunction::sigmoid:
      return log_sigmoid(logit);
    case ScoreFunction::sqrt_softplus:
      return log_softplus(logit) / 2;
    case ScoreFunction::softmax:
      break;
  }
  return logit;
}

/// Positions of a token's used slots (ids not kUnusedSlot), ascending, into `used`; their count.
inline Index used_slots(const ExpertId* ids, Index k, Index* used) {
  Index m = 0;
  for (Index j = 0; j < k; ++j)
    if (ids[j] != kUnusedSlot) used[m++] = j;
  return m;
}

/// Adaptive k (RouterConfig::active_top_k, min_top_k, top_k_threshold): token t's choice j stays
/// when j < k_min, or when j < k_max and s_j >= threshold * max_i s_i over its top_k choices; the
/// others become kUnusedSlot (ik_llama.cpp smart expert reduction: keep K_min, add p_j > t p_0).
template <class S>
void drop_below_threshold(const RouterConfig& config, Routing<S>& routing, Index t) {
  ExpertId* ids = routing.expert_ids.row(t).data();
  const Index k = config.top_k, k_min = config.min_active_k(), k_max = config.max_active_k();
  S best = routing.scores(t, ids[0]);
  for (Index j = 1; j < k_max; ++j) best = std::max(best, routing.scores(t, ids[j]));
  const S floor = static_cast<S>(config.top_k_threshold) * best;
  for (Index j = k_min; j < k; ++j)
    if (j >= k_max || routing.scores(t, ids[j]) < floor) ids[j] = kUnusedSlot;
}

/// Whether a token's row of ids holds an unused slot.
inline bool has_unused_slot(const ExpertId* ids, Index k) {
  for (Index j = 0; j < k; ++j)
    if (ids[j] == kUnusedSlot) return true;
  return false;
}

/// Token t's gates `w` of its m chosen experts `ids` (all used) by the config's rule:
/// softmax over their logits (topk_then_softmax), or their scores, optionally renormalized
/// (renormalized_ratios); then times scaling_factor.
template <class S>
MOE_ALWAYS_INLINE void token_gates(const RouterConfig& config, bool by_logits,
                                   const ConstMatrixRef<S>& logits, const RowMatrix<S>& scores,
                                   Index t, Index m, const ExpertId* ids, S* w) {
  if (m == 0) return;  // every slot unused (a replayed row of kUnusedSlot)
  if (by_logits) {
    S max_logit = logits(t, ids[0]);
    for (Index j = 1; j < m; ++j) max_logit = std::max(max_logit, logits(t, ids[j]));
    S sum = 0;
    for (Index j = 0; j < m; ++j) sum += w[j] = std::exp(logits(t, ids[j]) - max_logit);
    for (Index j = 0; j < m; ++j) w[j] /= sum;
  } else if (config.renormalize) {
    renormalized_ratios<S>(
        m, [&](Index j) { return scores(t, ids[j]); },
        [&](Index j) { return log_score(config.score, logits(t, ids[j])); },
        config.renormalize_epsilon, config.renormalize_min, w);
  } else {
    for (Index j = 0; j < m; ++j) w[j] = scores(t, ids[j]);
  }
  if (config.scaling_factor != 1.0)
    for (Index j = 0; j < m; ++j) w[j] *= static_cast<S>(config.scaling_factor);
}

/// select_experts without its argument checks, for callers that made them (Router::forward).
/// With `replayed` ([T, k], checked by the caller) its ids replace the top-k selection and the
/// gates are computed from the logits at those ids exactly as for selected ones.
template <class S>
void select_experts_unchecked(const RouterConfig& config, const ConstMatrixRef<S>& logits,
                              const ConstVectorRef<S>& selection_bias, Routing<S>& out,
                              RowMatrix<S>& selection, const ExpertIdMatrix* replayed = nullptr) {
  const Index tokens = logits.rows(), experts = logits.cols(), k = config.top_k;
  const bool by_logits = config.score == ScoreFunction::softmax &&
                         config.softmax_order == SoftmaxOrder::topk_then_softmax;
  const bool rewrite =
      replayed == nullptr && (selection_bias.size() > 0 || config.groups_enabled());
  // Only adaptive k and a replay (whose recorded ids may hold -1) leave slots unused.
  const bool adaptive = replayed == nullptr && config.adaptive_k();
  const bool may_be_unused = adaptive || replayed != nullptr;
  out.scores.resize(tokens, experts);
  if (rewrite) selection.resize(tokens, experts);
  out.expert_ids.resize(tokens, k);
  out.gates.resize(tokens, k);

  // Tokens in blocks of a packet's worth of rows, while the rows are in L1: the block's scores
  // (lane-parallel softmax), each token's selection values, top-k over the block (lane-parallel),
  // each token's gates.
  const S* ranked_rows = rewrite ? selection.data() : by_logits ? logits.data() : out.scores.data();
  const Index ranked_stride = rewrite ? experts : by_logits ? logits.outerStride() : experts;
  constexpr Index block = simd::kLanes<S>;
  const Index blocks = (tokens + block - 1) / block;
  kernels::parallel_for(
      0, blocks,
      [&](Index b) {
        const Index first = b * block, rows = std::min(block, tokens - first);
        if (config.score == ScoreFunction::softmax)
          softmax_rows_block(logits.row(first).data(), logits.outerStride(), rows, experts,
                             out.scores.row(first).data(), experts);
        else if (config.score == ScoreFunction::sigmoid)
          out.scores.middleRows(first, rows) =
              sigmoid_of(logits.middleRows(first, rows).array()).matrix();
        else
          out.scores.middleRows(first, rows) =
              softplus<S>(logits.middleRows(first, rows)).array().sqrt().matrix();
        for (Index t = first; rewrite && t < first + rows; ++t) {
          auto ranked = selection.row(t);
          if (by_logits)
            ranked = logits.row(t);
          else
            ranked = out.scores.row(t);
          if (selection_bias.size() > 0) ranked += selection_bias.transpose();
          if (config.groups_enabled()) {
            thread_local std::vector<S> group_scores;
            thread_local std::vector<ExpertId> group_ids;
            const Index groups = config.num_groups, terms = config.group_score_terms();
            group_scores.resize(static_cast<std::size_t>(2 * groups + terms));
            group_ids.resize(static_cast<std::size_t>(std::max(groups, terms)));
            mask_unselected_groups(config, ranked.data(), group_scores.data(), group_ids.data());
          }
        }
        if (replayed != nullptr)
          out.expert_ids.middleRows(first, rows) = replayed->middleRows(first, rows);
        else  // gates holds the selection values until rewritten below
          top_k_rows_block(ranked_rows + first * ranked_stride, ranked_stride, rows, experts, k,
                           out.expert_ids.row(first).data(), k, out.gates.row(first).data(), k);
        for (Index t = first; t < first + rows; ++t) {
          ExpertId* ids = out.expert_ids.row(t).data();
          if (adaptive) drop_below_threshold(config, out, t);
          S* gates = out.gates.row(t).data();
          if (!may_be_unused || !has_unused_slot(ids, k)) {
            token_gates<S>(config, by_logits, logits, out.scores, t, k, ids, gates);
            continue;
          }
          // Unused slots (adaptive k, a replayed -1): the gates of the used ones, in slot order.
          thread_local std::vector<ExpertId> used_ids;
          thread_local std::vector<S> used_gates;
          used_ids.clear();
          for (Index j = 0; j < k; ++j)
            if (ids[j] != kUnusedSlot) used_ids.push_back(ids[j]);
          used_gates.resize(used_ids.size());
          token_gates<S>(config, by_logits, logits, out.scores, t,
                         static_cast<Index>(used_ids.size()), used_ids.data(), used_gates.data());
          for (Index j = 0, i = 0; j < k; ++j)
            gates[j] = ids[j] == kUnusedSlot ? S(0) : used_gates[static_cast<std::size_t>(i++)];
        }
      },
      /*min_parallel=*/512 / block);
}

/// Checks a selection bias: [E] or empty, finite.
template <class S>
void require_selection_bias(const ConstVectorRef<S>& bias, Index experts, const char* argument) {
  require(bias.size() == 0 || bias.size() == experts, argument,
          concat("size 0 or ", experts, " (E)"), bias.size());
  require_finite(bias, argument);
}

}  // namespace detail

/// Scores over all experts, the top-k experts and their gate weights, from the logits the router
/// scores with. `selection_bias` ([E] or empty) shifts which experts win, never the gate weights
/// (Wang et al. 2024; DeepSeek-V3's e_score_correction_bias).
///   softmax_then_topk: w = s[top-k(s + b)], optionally w /= max(sum w + eps, renormalize_min)
///   topk_then_softmax: w = softmax(z[top-k(z + b)]) (Megatron-Core's default)
///   sigmoid, sqrt_softplus: w = s[top-k(s + b)], optionally renormalized;  then w *=
///   scaling_factor
/// With adaptive k (RouterConfig::active_top_k, min_top_k, top_k_threshold) the choices it leaves
/// out are kUnusedSlot with gate 0, and each formula runs over the used choices only.
/// The config is validated, the logits and the bias must be finite (moe::Error otherwise).
namespace detail {

/// The free functions have no per-expert scale: a config asking for one would be routed without it.
inline void require_no_expert_scale(const RouterConfig& config, const char* function) {
  require(!config.expert_scale, "RouterConfig::expert_scale",
          concat("false in ", function, " (the scale is a Router parameter: Router::forward, ",
                 "replay and backward apply it)"),
          "true");
}

}  // namespace detail

template <class S>
void select_experts(const RouterConfig& config, const ConstMatrixRef<S>& logits,
                    const ConstVectorRef<S>& selection_bias, Routing<S>& out,
                    RowMatrix<S>& selection) {
  validate(config);
  detail::require_no_expert_scale(config, "select_experts");
  require_shape(logits, "logits", -1, config.num_experts);
  require_finite(logits, "logits");
  detail::require_selection_bias<S>(selection_bias, config.num_experts, "selection_bias");
  detail::select_experts_unchecked<S>(config, logits, selection_bias, out, selection);
}

/// Routing replay (Megatron-Core `RouterReplay`, REPLAY_FORWARD): the recorded experts
/// `recorded_ids` ([T, k], e.g. the choices an inference engine made) replace the top-k selection,
/// and the gates are computed from the live `logits` at those ids by the config's rule, as
/// select_experts computes them for its own choices:
///   w_j = s[e_j] (optionally / (sum s[e] + eps)), or softmax(z[e]) for topk_then_softmax; * scale
/// so select_experts_backward sends gradients to the router through the recorded choices (a
/// recorded kUnusedSlot stays unused, gate 0; adaptive k is not applied again). The
/// selection bias and the group limit steer only selection, so a replay ignores them. Replaying
/// the ids a select_experts call chose, on the same logits, reproduces its gates bit for bit.
template <class S>
void replay_experts(const RouterConfig& config, const ConstMatrixRef<S>& logits,
                    const ExpertIdMatrix& recorded_ids, Routing<S>& out) {
  validate(config);
  detail::require_no_expert_scale(config, "replay_experts");
  require_shape(logits, "logits", -1, config.num_experts);
  require_finite(logits, "logits");
  detail::require_expert_ids(recorded_ids, logits.rows(), config.top_k, config.num_experts,
                             "recorded_ids");
  RowMatrix<S> unused;
  detail::select_experts_unchecked<S>(config, logits, Vector<S>(), out, unused, &recorded_ids);
}

namespace detail {

/// select_experts_backward without its argument checks (Router::backward makes them).
template <class S>
RowMatrix<S> select_experts_backward_unchecked(const RouterConfig& config,
                                               const ConstMatrixRef<S>& logits,
                                               const Routing<S>& routing,
                                               const ConstMatrixRef<S>& grad_gates,
                                               const ConstMatrixRef<S>& grad_scores) {
  const Index tokens = logits.rows(), experts = logits.cols(), k = config.top_k;
  const bool by_logits = config.score == ScoreFunction::softmax &&
                         config.softmax_order == SoftmaxOrder::topk_then_softmax;
  const S scale = static_cast<S>(config.scaling_factor);

  RowMatrix<S> d_scores =
      grad_scores.size() != 0 ? RowMatrix<S>(grad_scores) : RowMatrix<S>::Zero(tokens, experts);
  // Gradients that reach the logits without going through the score transform.
  RowMatrix<S> d_logits = RowMatrix<S>::Zero(tokens, by_logits ? experts : 0);
  // Tokens whose renormalizing sum D is so small that D^2 underflows: their gate gradient is added
  // to the logits' gradient after the score transform (see select_experts_backward).
  std::vector<char> in_log_space(static_cast<std::size_t>(config.renormalize ? tokens : 0), 0);
  kernels::parallel_for(0, tokens, [&](Index t) {
    // Unused slots (kUnusedSlot) have a constant gate 0: only the used ones carry gradient.
    thread_local std::vector<Index> used;
    used.resize(static_cast<std::size_t>(k));
    const ExpertId* ids = routing.expert_ids.row(t).data();
    const Index m = used_slots(ids, k, used.data());
    auto id = [&](Index i) { return ids[used[static_cast<std::size_t>(i)]]; };
    auto dw = [&](Index i) { return scale * grad_gates(t, used[static_cast<std::size_t>(i)]); };
    if (m == 0) return;
    if (by_logits) {
      // p recomputed from the logits rather than read back from the scaled gates
      S max_logit = logits(t, id(0));
      for (Index i = 1; i < m; ++i) max_logit = std::max(max_logit, logits(t, id(i)));
      S sum = 0, inner = 0;
      for (Index i = 0; i < m; ++i) sum += std::exp(logits(t, id(i)) - max_logit);
      for (Index i = 0; i < m; ++i)
        inner += std::exp(logits(t, id(i)) - max_logit) / sum * scale *
                 grad_gates(t, used[static_cast<std::size_t>(i)]);
      for (Index i = 0; i < m; ++i) {
        const S p = std::exp(logits(t, id(i)) - max_logit) / sum;
        d_logits(t, id(i)) += p * (dw(i) - inner);
      }
      return;
    }
    if (!config.renormalize) {
      for (Index i = 0; i < m; ++i) d_scores(t, id(i)) += dw(i);
      return;
    }
    S sum = 0, inner = 0;
    for (Index i = 0; i < m; ++i) {
      sum += routing.scores(t, id(i));
      inner += dw(i) * routing.scores(t, id(i));
    }
    const S unfloored = sum + static_cast<S>(config.renormalize_epsilon);
    if (unfloored < static_cast<S>(config.renormalize_min)) {
      // w_j = s_j / renormalize_min: the constant denominator passes no gradient.
      const auto floor_value = static_cast<S>(config.renormalize_min);
      for (Index i = 0; i < m; ++i) d_scores(t, id(i)) += dw(i) / floor_value;
      return;
    }
    const S denominator = unfloored;
    if (denominator * denominator < std::numeric_limits<S>::min()) {
      in_log_space[static_cast<std::size_t>(t)] = 1;
      return;
    }
    for (Index i = 0; i < m; ++i)
      d_scores(t, id(i)) += dw(i) / denominator - inner / (denominator * denominator);
  });

  RowMatrix<S> through_scores = score_rows_backward<S>(config.score, routing.scores, d_scores);
  if (d_logits.size() != 0) through_scores += d_logits;

  // The tokens left above: q_j = s_j ds_j = r_j (dw_j - sum_i dw_i r_i), with r from
  // renormalized_ratios, is finite where ds_j = dw_j / D - ... is not; then
  // dz_j += q_j (1 - s_j) (sigmoid), q_j (ds_j/dz_j) / s_j (sqrt_softplus), or
  // dz_e += q_e [e chosen] - s_e sum_j q_j (softmax).
  std::vector<S> r(static_cast<std::size_t>(k)), q(r);
  std::vector<Index> used(static_cast<std::size_t>(k));
  for (Index t = 0; t < static_cast<Index>(in_log_space.size()); ++t) {
    if (!in_log_space[static_cast<std::size_t>(t)]) continue;
    const ExpertId* ids = routing.expert_ids.row(t).data();
    const Index m = used_slots(ids, k, used.data());
    auto id = [&](Index i) { return ids[used[static_cast<std::size_t>(i)]]; };
    auto dw = [&](Index i) { return scale * grad_gates(t, used[static_cast<std::size_t>(i)]); };
    renormalized_ratios<S>(
        m, [&](Index i) { return routing.scores(t, id(i)); },
        [&](Index i) { return log_score(config.score, logits(t, id(i))); },
        config.renormalize_epsilon, config.renormalize_min, r.data());
    S weighted = 0, q_sum = 0;
    for (Index i = 0; i < m; ++i) weighted += dw(i) * r[static_cast<std::size_t>(i)];
    for (Index i = 0; i < m; ++i) {
      const auto u = static_cast<std::size_t>(i);
      q_sum += q[u] = r[u] * (dw(i) - weighted);
    }
    if (config.score == ScoreFunction::sigmoid) {
      for (Index i = 0; i < m; ++i)
        through_scores(t, id(i)) +=
            q[static_cast<std::size_t>(i)] * (S(1) - routing.scores(t, id(i)));
    } else if (config.score == ScoreFunction::sqrt_softplus) {
      for (Index i = 0; i < m; ++i)
        through_scores(t, id(i)) +=
            q[static_cast<std::size_t>(i)] * sqrt_softplus_relative_slope(routing.scores(t, id(i)));
    } else {
      for (Index i = 0; i < m; ++i) through_scores(t, id(i)) += q[static_cast<std::size_t>(i)];
      through_scores.row(t) -= q_sum * routing.scores.row(t);
    }
  }
  return through_scores;
}

}  // namespace detail

/// Backward of select_experts: d loss / d logits from d loss / d gates ([T, k]) and, optionally,
/// d loss / d scores ([T, E], e.g. from an aux loss; empty when absent). Selection is a constant.
///   renormalized: ds_l = dw_l / D - (sum_i dw_i s_i) / D^2, D = sum s + eps
///   renormalized, D^2 subnormal: with q_l = s_l ds_l = r_l (dw_l - sum_i dw_i r_i) and r = s / D
///     from renormalized_ratios, dz_l = q_l (1 - s_l) (sigmoid), q_l (-expm1(-s_l^2)) / (2 s_l^2)
///     (sqrt_softplus) or dz_e = q_e - s_e sum_l q_l (softmax): the same derivative, finite for
///     every finite logit
///   topk_then_softmax: dz_j = p_j (dw_j - sum_i p_i dw_i) on the selected logits
///   then dz = s (ds - <s, ds>) (softmax), ds s (1 - s) (sigmoid) or ds (-expm1(-s^2)) / (2 s)
///   (sqrt_softplus)
template <class S>
RowMatrix<S> select_experts_backward(const RouterConfig& config, const ConstMatrixRef<S>& logits,
                                     const Routing<S>& routing, const ConstMatrixRef<S>& grad_gates,
                                     const ConstMatrixRef<S>& grad_scores) {
  validate(config);
  detail::require_no_expert_scale(config, "select_experts_backward");
  const Index tokens = logits.rows();
  require_shape(logits, "logits", -1, config.num_experts);
  require_finite(logits, "logits");
  require_shape(routing.expert_ids, "routing.expert_ids", tokens, config.top_k);
  require_shape(routing.scores, "routing.scores", tokens, config.num_experts);
  require_shape(grad_gates, "grad_gates", tokens, config.top_k);
  require_finite(grad_gates, "grad_gates");
  if (grad_scores.size() != 0) {
    require_shape(grad_scores, "grad_scores", tokens, config.num_experts);
    require_finite(grad_scores, "grad_scores");
  }
  return detail::select_experts_backward_unchecked<S>(config, logits, routing, grad_gates,
                                                      grad_scores);
}

/// What forward saved for backward. The caller owns it; reusing it across steps reuses its memory.
template <class S>
struct RouterContext {
  Routing<S> routing;  ///< the result forward returned a reference to
  Mode mode = Mode::eval;
  RowMatrix<S> jitter;          ///< [T, d] multiplicative factors (training with Noise::jitter)
  RowMatrix<S> noise;           ///< [T, E] N(0, 1) samples (training with Noise::noisy_topk)
  RowMatrix<S> noise_logits;    ///< [T, E] x W_noise^T
  RowMatrix<S> noise_stddev;    ///< [T, E] softplus(x W_noise^T) + noise_epsilon
  RowMatrix<S> noisy_logits;    ///< [T, E] logits + noise * noise_stddev: what was scored
  RowMatrix<S> selection;       ///< [T, E] scratch for biased / group-masked selection scores
  RowMatrix<S> unscaled_gates;  ///< [T, k] the gates before Router::expert_scale (expert_scale)
  Index hidden = 0;             ///< d of the router whose forward filled this context

  bool jittered() const noexcept { return jitter.size() != 0; }
  bool noisy() const noexcept { return noisy_logits.size() != 0; }
};

/// Gradients flowing into the router from above; an empty matrix means zero.
template <class S>
struct RouterUpstream {
  RowMatrix<S> gates;   ///< [T, k] d loss / d Routing::gates (from combine)
  RowMatrix<S> scores;  ///< [T, E] d loss / d Routing::scores (aux losses)
  RowMatrix<S> logits;  ///< [T, E] d loss / d Routing::logits (z-loss)
};

template <class S>
struct RouterGradients {
  RowMatrix<S> x;             ///< [T, d]
  RowMatrix<S> weight;        ///< [E, d]
  Vector<S> bias;             ///< [E], zero unless config.linear_bias
  RowMatrix<S> noise_weight;  ///< [E, d] with Noise::noisy_topk, else empty
  Vector<S> expert_scale;     ///< [E] with config.expert_scale, else empty
};

/// The caller's buffers a Router is mapped over, with E experts and token width d.
template <class S>
struct RouterBuffers {
  ParameterBuffer<S> weight;  ///< E*d elements: [E, d] row-major (nn.Linear layout)
  /// E elements. May stay empty (null, 0) without config.linear_bias: the router then owns a zero
  /// bias, as it does for every config.
  ParameterBuffer<S> bias;
  ParameterBuffer<S> noise_weight;  ///< E*d elements with Noise::noisy_topk, else 0
  /// E elements. May stay empty (null, 0): the router then owns it (zero until a balancer writes).
  ParameterBuffer<S> selection_bias;
  ParameterBuffer<S> expert_scale;  ///< E elements with config.expert_scale, else 0
};

/// The parameters of a Router, in nn.Linear layout (see ParameterSet).
template <class S>
struct RouterSlots {
  using Scalar = S;
  static constexpr const char* kName = "Router";

  MatrixMap<S> weight{nullptr, 0, 0};  ///< [E, d]
  VectorMap<S> bias{nullptr, 0};       ///< [E], used when config.linear_bias
  MatrixMap<S> noise_weight{nullptr, 0,
                            0};             ///< [E, d] with Noise::noisy_topk (W_noise), else empty
  VectorMap<S> selection_bias{nullptr, 0};  ///< [E] selection-only bias (aux-loss-free balancer)
  VectorMap<S> expert_scale{nullptr, 0};    ///< [E] gate scale per expert with config.expert_scale

  static constexpr auto slots() {
    return std::make_tuple(slot(&RouterSlots::weight, "weight"), slot(&RouterSlots::bias, "bias"),
                           slot(&RouterSlots::noise_weight, "noise_weight"),
                           slot(&RouterSlots::selection_bias, "selection_bias"),
                           slot(&RouterSlots::expert_scale, "expert_scale"));
  }

  /// Unbound parameters of the config's shapes.
  explicit RouterSlots(const RouterConfig& c)
      : weight(unbound<MatrixMap<S>>(c.num_experts, c.hidden)),
        bias(unbound<VectorMap<S>>(c.num_experts, 1)),
        noise_weight(unbound<MatrixMap<S>>(noisy(c) ? c.num_experts : 0, noisy(c) ? c.hidden : 0)),
        selection_bias(unbound<VectorMap<S>>(c.num_experts, 1)),
        expert_scale(unbound<VectorMap<S>>(c.expert_scale ? c.num_experts : 0, 1)) {}

  /// Over the caller's buffers; the bias without linear_bias, and the selection bias, may be left
  /// empty and are then owned.
  RouterSlots(const RouterConfig& c, const RouterBuffers<S>& b, const std::string& name)
      : weight(map_buffer<MatrixMap<S>>(b.weight, c.num_experts, c.hidden, name + ".weight")),
        bias(c.linear_bias || given(b.bias)
                 ? map_buffer<VectorMap<S>>(b.bias, c.num_experts, 1, name + ".bias")
                 : unbound<VectorMap<S>>(c.num_experts, 1)),
        noise_weight(map_buffer<MatrixMap<S>>(b.noise_weight, noisy(c) ? c.num_experts : 0,
                                              noisy(c) ? c.hidden : 0, name + ".noise_weight")),
        selection_bias(given(b.selection_bias)
                           ? map_buffer<VectorMap<S>>(b.selection_bias, c.num_experts, 1,
                                                      name + ".selection_bias")
                           : unbound<VectorMap<S>>(c.num_experts, 1)),
        expert_scale(map_buffer<VectorMap<S>>(b.expert_scale, c.expert_scale ? c.num_experts : 0, 1,
                                              name + ".expert_scale")) {}

 private:
  static bool noisy(const RouterConfig& c) { return c.noise == Noise::noisy_topk; }
  static bool given(const ParameterBuffer<S>& b) { return b.data != nullptr || b.size != 0; }
};

/// The gating network of one MoE layer. Parameters are public members in nn.Linear layout
/// (RouterSlots): Eigen::Map views of fixed shape over one allocation the router owns, or over the
/// caller's buffers (mapped()). A copy always owns its values; assigning to a router that maps
/// caller buffers writes the values into those buffers.
template <class S>
class Router : public ParameterSet<RouterSlots<S>> {
 public:
  using RouterSlots<S>::weight;
  using RouterSlots<S>::bias;
  using RouterSlots<S>::noise_weight;
  using RouterSlots<S>::selection_bias;
  using RouterSlots<S>::expert_scale;

  RouterConfig config;

  /// Zero parameters of the configured shapes, owned (one allocation); expert_scale ones.
  explicit Router(const RouterConfig& router_config)
      : ParameterSet<RouterSlots<S>>(std::in_place, validated(router_config)),
        config(router_config) {
    expert_scale.setOnes();
  }

  /// A router whose parameters are views over the caller's buffers, without copying: writing into
  /// a buffer changes the routing, and weight.data() == buffers.weight.data. Each buffer must hold
  /// exactly the size listed in RouterBuffers (moe::Error naming it otherwise, or when a needed
  /// one is null).
  /// `name` is what errors call `buffers` (e.g. "buffers.router" inside a layer's buffers).
  static Router mapped(const RouterConfig& router_config, const RouterBuffers<S>& buffers,
                       const std::string& name = "buffers") {
    return Router(router_config, buffers, name);
  }

  /// weight ~ N(0, stddev^2) from `seed` (Switch Transformer initializes with stddev 0.1 /
  /// sqrt(d)).
  void init_weights(std::uint64_t seed, double stddev) {
    require(std::isfinite(stddev) && stddev >= 0, "stddev", "a finite value >= 0", stddev);
    const CounterRng rng = make_rng(seed, RandomStream::init);
    for (Index i = 0; i < weight.size(); ++i)
      weight.data()[i] = static_cast<S>(stddev * rng.normal(static_cast<std::uint64_t>(i)));
  }

  /// Routes the tokens `x` [T, d]. In Mode::train the configured noise is drawn from `seed`
  /// (pass a different seed each step); Mode::eval is deterministic and ignores it.
  /// Returns a reference into `ctx`, valid until ctx is reused.
  const Routing<S>& forward(const ConstMatrixRef<S>& x, RouterContext<S>& ctx, Mode mode,
                            std::uint64_t seed = 0) const {
    return route(x, ctx, mode, seed, nullptr);
  }

  /// Routing replay: forward with the experts `recorded_ids` ([T, k], a RoutingRecord layer's
  /// expert_ids or an inference engine's choices) in place of top-k selection; logits, noise and
  /// scores are computed as in forward, and the gates from them at the recorded ids (see
  /// replay_experts), so backward trains the router through the recorded choices. Replaying what a
  /// forward chose, with the same weights, input, mode and seed, reproduces its routing bit for
  /// bit.
  const Routing<S>& replay(const ConstMatrixRef<S>& x, const ExpertIdMatrix& recorded_ids,
                           RouterContext<S>& ctx, Mode mode, std::uint64_t seed = 0) const {
    return route(x, ctx, mode, seed, &recorded_ids);
  }

  /// Gradients of x and every parameter from the upstream gradients of gates, scores and logits.
  /// `x` is the same input forward saw; `ctx` is what forward filled.
  RouterGradients<S> backward(const ConstMatrixRef<S>& x, const RouterContext<S>& ctx,
                              const RouterUpstream<S>& upstream) const {
    RouterGradients<S> grads;
    backward(x, ctx, upstream, grads);
    return grads;
  }

  /// The same into `grads`, whose matrices keep their memory when the shapes repeat: pass one
  /// RouterGradients every step.
  void backward(const ConstMatrixRef<S>& x, const RouterContext<S>& ctx,
                const RouterUpstream<S>& upstream, RouterGradients<S>& grads) const {
    const Routing<S>& routing = ctx.routing;
    check_parameters();
    require_context(ctx, x.rows());
    require_shape(x, "x", routing.num_tokens(), config.hidden);
    require_upstream(upstream, routing.num_tokens());
    const RowMatrix<S>& scored = ctx.noisy() ? ctx.noisy_logits : routing.logits;
    const RowMatrix<S> no_gates = RowMatrix<S>::Zero(routing.num_tokens(), config.top_k);
    const RowMatrix<S>& grad_gates = upstream.gates.size() != 0 ? upstream.gates : no_gates;
    // w = c[e] u: dc[e] = sum over the slots choosing e of dw u, and du = dw c[e].
    RowMatrix<S> grad_unscaled;
    if (config.expert_scale) {
      grads.expert_scale.setZero(config.num_experts);
      grad_unscaled.resize(grad_gates.rows(), grad_gates.cols());
      for (Index t = 0; t < grad_gates.rows(); ++t)
        for (Index j = 0; j < grad_gates.cols(); ++j) {
          const ExpertId e = routing.expert_ids(t, j);
          if (e == kUnusedSlot) {
            grad_unscaled(t, j) = S(0);
            continue;
          }
          grads.expert_scale[e] += grad_gates(t, j) * ctx.unscaled_gates(t, j);
          grad_unscaled(t, j) = grad_gates(t, j) * expert_scale[e];
        }
    } else {
      grads.expert_scale.resize(0);
    }
    RowMatrix<S> d_scored = detail::select_experts_backward_unchecked<S>(
        config, scored, routing, config.expert_scale ? grad_unscaled : grad_gates, upstream.scores);

    RowMatrix<S> d_noise_logits;
    if (ctx.noisy()) {
      // d stddev = dH * n;  d softplus(u)/du = sigmoid(u)
      d_noise_logits =
          (d_scored.array() * ctx.noise.array() * detail::sigmoid_of(ctx.noise_logits.array()))
              .matrix();
    }
    RowMatrix<S>& d_logits = d_scored;  // dH/d logits = 1
    if (upstream.logits.size() != 0) d_logits += upstream.logits;

    const RowMatrix<S> x_seen =
        ctx.jittered() ? RowMatrix<S>(x.cwiseProduct(ctx.jitter)) : RowMatrix<S>(x);
    grads.weight.resize(config.num_experts, config.hidden);
    kernels::fixed_block_product(grads.weight, d_logits.transpose(), x_seen);
    grads.bias.resize(config.num_experts);
    if (config.linear_bias)
      grads.bias = d_logits.colwise().sum().transpose();
    else
      grads.bias.setZero();
    grads.x.resize(routing.num_tokens(), config.hidden);
    kernels::fixed_block_product(grads.x, d_logits, weight);
    if (ctx.noisy()) {
      grads.noise_weight.resize(config.num_experts, config.hidden);
      kernels::fixed_block_product(grads.noise_weight, d_noise_logits.transpose(), x_seen);
      RowMatrix<S> through_noise(routing.num_tokens(), config.hidden);
      kernels::fixed_block_product(through_noise, d_noise_logits, noise_weight);
      grads.x += through_noise;
    } else if (config.noise == Noise::noisy_topk) {
      grads.noise_weight.resize(config.num_experts, config.hidden);
      grads.noise_weight.setZero();
    } else {
      grads.noise_weight.resize(0, 0);
    }
    if (ctx.jittered()) grads.x.array() *= ctx.jitter.array();
  }

 private:
  /// forward (replayed null) and replay.
  const Routing<S>& route(const ConstMatrixRef<S>& x, RouterContext<S>& ctx, Mode mode,
                          std::uint64_t seed, const ExpertIdMatrix* replayed) const {
    check_parameters();
    require_shape(x, "x", -1, config.hidden);
    if (replayed != nullptr)
      detail::require_expert_ids(*replayed, x.rows(), config.top_k, config.num_experts,
                                 "recorded_ids");
    ctx.mode = mode;
    ctx.hidden = config.hidden;
    const bool jitter =
        mode == Mode::train && config.noise == Noise::jitter && config.jitter_epsilon > 0;
    const bool noisy = mode == Mode::train && config.noise == Noise::noisy_topk;
    Routing<S>& out = ctx.routing;

    if (jitter) {
      // x *= U(1 - eps, 1 + eps), one factor per element (HF Switch, DeepSpeed 'Jitter')
      draw_jitter(x.rows(), seed, ctx.jitter);
      out.logits.resize(x.rows(), config.num_experts);
      kernels::fixed_block_product(out.logits, RowMatrix<S>(x.cwiseProduct(ctx.jitter)),
                                   weight.transpose());
    } else {
      ctx.jitter.resize(0, 0);
      out.logits.resize(x.rows(), config.num_experts);
      kernels::fixed_block_product(out.logits, x, weight.transpose());
    }
    if (config.linear_bias) out.logits.rowwise() += bias.transpose();
    if (!detail::all_finite(out.logits)) name_non_finite_logits(x, out.logits);

    if (noisy) {
      // H = x W^T + N(0, 1) * (softplus(x W_noise^T) + eps) (Shazeer et al. 2017)
      ctx.noise_logits.resize(x.rows(), config.num_experts);
      kernels::fixed_block_product(ctx.noise_logits, x, noise_weight.transpose());
      ctx.noise_stddev =
          softplus<S>(ctx.noise_logits).array() + static_cast<S>(config.noise_epsilon);
      const CounterRng rng = make_rng(seed, RandomStream::gate_noise);
      ctx.noise.resize(x.rows(), config.num_experts);
      for (Index i = 0; i < ctx.noise.size(); ++i)
        ctx.noise.data()[i] = static_cast<S>(rng.normal(static_cast<std::uint64_t>(i)));
      ctx.noisy_logits = out.logits + ctx.noise.cwiseProduct(ctx.noise_stddev);
      require_finite(ctx.noisy_logits, "noisy_logits");
    } else {
      ctx.noisy_logits.resize(0, 0);
    }
    const RowMatrix<S>& scored = noisy ? ctx.noisy_logits : out.logits;
    detail::select_experts_unchecked<S>(config, scored, selection_bias, out, ctx.selection,
                                        replayed);
    if (config.expert_scale) {
      ctx.unscaled_gates = out.gates;
      for (Index t = 0; t < out.gates.rows(); ++t)
        for (Index j = 0; j < out.gates.cols(); ++j)
          if (out.expert_ids(t, j) != kUnusedSlot)
            out.gates(t, j) *= expert_scale[out.expert_ids(t, j)];
    } else {
      ctx.unscaled_gates.resize(0, 0);
    }
    return out;
  }

  Router(const RouterConfig& router_config, const RouterBuffers<S>& buffers,
         const std::string& name)
      : ParameterSet<RouterSlots<S>>(std::in_place, validated(router_config), buffers, name),
        config(router_config) {}

  static const RouterConfig& validated(const RouterConfig& c) {
    validate(c);
    return c;
  }

  /// Logits that are not finite: the first of x, the weights and the bias that is not finite is
  /// named, else the product overflowed.
  void name_non_finite_logits(const ConstMatrixRef<S>& x, const RowMatrix<S>& logits) const {
    require_finite(x, "x");
    require_finite(weight, "Router::weight");
    if (config.linear_bias) require_finite(bias, "Router::bias");
    require_finite(logits, "logits");
  }

  /// Upstream gradients of the shapes of the routing of `tokens` tokens (or empty), finite.
  void require_upstream(const RouterUpstream<S>& up, Index tokens) const {
    const auto check = [](const RowMatrix<S>& g, const char* name, Index rows, Index cols) {
      if (g.size() == 0) return;
      require_shape(g, name, rows, cols);
      require_finite(g, name);
    };
    check(up.gates, "upstream.gates", tokens, config.top_k);
    check(up.scores, "upstream.scores", tokens, config.num_experts);
    check(up.logits, "upstream.logits", tokens, config.num_experts);
  }

  /// A context filled by a forward of this router's shapes over `tokens` tokens.
  void require_context(const RouterContext<S>& ctx, Index tokens) const {
    const Routing<S>& r = ctx.routing;
    const bool filled = r.expert_ids.cols() == config.top_k &&
                        r.scores.cols() == config.num_experts &&
                        r.logits.cols() == config.num_experts && ctx.hidden == config.hidden &&
                        r.gates.rows() == r.num_tokens() && r.scores.rows() == r.num_tokens() &&
                        r.logits.rows() == r.num_tokens();
    require(filled || (tokens == 0 && r.num_tokens() == 0), "ctx",
            detail::concat("a context filled by this router's forward (E = ", config.num_experts,
                           ", d = ", config.hidden, ", k = ", config.top_k, ")"),
            detail::concat("a context of E = ", r.scores.cols(), ", d = ", ctx.hidden,
                           ", k = ", r.expert_ids.cols()));
  }

  void check_parameters() const {
    validate(config);
    require_shape(weight, "Router::weight", config.num_experts, config.hidden);
    if (config.linear_bias)
      require(bias.size() == config.num_experts, "Router::bias",
              detail::concat("size ", config.num_experts), bias.size());
    if (config.noise == Noise::noisy_topk)
      require_shape(noise_weight, "Router::noise_weight", config.num_experts, config.hidden);
    detail::require_selection_bias<S>(selection_bias, config.num_experts, "Router::selection_bias");
    if (config.expert_scale) {
      require(expert_scale.size() == config.num_experts, "Router::expert_scale",
              detail::concat("size ", config.num_experts), expert_scale.size());
      require_finite(expert_scale, "Router::expert_scale");
    }
  }

  void draw_jitter(Index tokens, std::uint64_t seed, RowMatrix<S>& jitter) const {
    const CounterRng rng = make_rng(seed, RandomStream::jitter);
    const double eps = config.jitter_epsilon;
    jitter.resize(tokens, config.hidden);
    for (Index i = 0; i < jitter.size(); ++i)
      jitter.data()[i] =
          static_cast<S>(1.0 - eps + 2.0 * eps * rng.uniform(static_cast<std::uint64_t>(i)));
  }
};

}  // namespace moe
