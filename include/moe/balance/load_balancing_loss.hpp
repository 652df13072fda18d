// Load-balancing (auxiliary) losses L = a * E * sum_e f_e * P_e, with the normalization of each
// system that ships one: f_e the detached fraction of routed choices, P_e the mean score.
#pragma once

#include <cmath>
#include <vector>

#include "moe/balance/detail/counting.hpp"
#include "moe/balance/detail/scores.hpp"
#include "moe/balance/loss_result.hpp"
#include "moe/balance/token_mask.hpp"
#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/routing/config.hpp"

namespace moe {

/// Which of a token's choices f_e counts.
enum class AuxCounting {
  all_choices,   ///< all k (Megatron, HF Mixtral/Qwen, DeepSpeed top-k, DeepSeek, flaxformer)
  first_choice,  ///< choice 0 only (Switch, DeepSpeed top-1/top-2, fairseq, Tutel gshard_loss)
};

/// What a choice dropped for capacity (ChoiceMask false) contributes to f_e.
enum class DroppedChoices {
  counted,      ///< counted as routed: counts before dropping (Megatron, DeepSpeed)
  excluded,     ///< not counted: counts after dropping
  expert_zero,  ///< counted for expert 0, as HF Switch Transformers (argmax of an all-zero row)
};

/// Which scores P_e averages.
enum class AuxScores {
  as_given,        ///< the scores themselves (softmax over E, or sigmoid)
  sum_normalized,  ///< s_te / sum_j s_tj (DeepSeek-V3 sequence-wise loss; Megatron with sigmoid)
};

/// Which selection f_e counts.
enum class AuxSelection {
  given,  ///< the caller's expert_ids: the routing actually used (bias, groups, noise included)
  recomputed,  ///< top-k of the loss's own scores, unbiased and not group-limited (Megatron, HF)
};

/// Token order when the loss is taken per sequence.
enum class SequenceLayout {
  batch_major,     ///< row = b * S + i, a [B, S] batch flattened (HF, DeepSeek)
  sequence_major,  ///< row = i * B + b, a [S, B] batch flattened (Megatron)
};

/// What a sequence's f and P are divided by when the loss is taken per sequence (fixed-length or
/// packed). Both agree when every sequence has the same number of real tokens.
enum class SequenceNormalization {
  own_length,   ///< n_b, the sequence's own real-token count (DeepSeek-V3 sequence-wise loss)
  mean_length,  ///< N / S, the mean real-token count per sequence (Megatron seq_aux_loss with a
                ///< padding mask; Megatron-LM PR #6115 for packed sequences)
};

struct AuxLossConfig {
  double coefficient = 1e-2;  ///< a
  Index top_k = 1;            ///< k: columns of expert_ids, and the k of a recomputed selection
  AuxCounting counting = AuxCounting::all_choices;
  bool divide_by_top_k = true;  ///< f_e = c_e / (k T): perfect balance gives a; false gives a * k
  DroppedChoices dropped = DroppedChoices::counted;
  AuxScores scores = AuxScores::as_given;
  AuxSelection selection = AuxSelection::given;
  /// 0: the whole batch is one domain. S > 0: one loss per sequence of S tokens, averaged over the
  /// sequences (Megatron seq_aux_loss, DeepSeek-V3, HF Switch groups).
  Index sequence_length = 0;
  SequenceLayout layout = SequenceLayout::batch_major;
  /// Per sequence (sequence_length > 0, or packed sequences): what each sequence is divided by.
  SequenceNormalization sequence_normalization = SequenceNormalization::own_length;
};

/// Checks an AuxLossConfig; every message names the field.
inline void validate(const AuxLossConfig& c) {
  require(std::isfinite(c.coefficient) && c.coefficient >= 0.0, "AuxLossConfig::coefficient",
          "a finite value >= 0", c.coefficient);
  require(c.top_k >= 1, "AuxLossConfig::top_k", ">= 1", c.top_k);
  require(c.sequence_length >= 0, "AuxLossConfig::sequence_length", ">= 0 (0: whole batch)",
          c.sequence_length);
}

/// Each system's loss as a configuration; the default coefficient is the one it ships with.
namespace aux_presets {

/// Switch Transformer paper: a * E * sum_e f_e P_e, f = top-1 fraction of the batch.
inline AuxLossConfig switch_transformer(double coefficient = 1e-2) {
  AuxLossConfig c;
  c.coefficient = coefficient;
  c.top_k = 1;
  c.counting = AuxCounting::first_choice;
  c.divide_by_top_k = false;
  return c;
}

/// HF SwitchTransformers: per group (batch row) of group_size tokens, averaged over groups; f after
/// capacity dropping, a dropped token counted for expert 0 (pass the dispatcher's kept mask).
inline AuxLossConfig hf_switch(Index group_size, double coefficient = 1e-3) {
  AuxLossConfig c = switch_transformer(coefficient);
  c.dropped = DroppedChoices::expert_zero;
  c.sequence_length = group_size;
  c.layout = SequenceLayout::batch_major;
  return c;
}

/// HF Mixtral / Qwen-MoE / OLMoE load_balancing_loss_func: softmax of the logits, top-k recomputed,
/// all k counted and not divided by k (perfect balance gives a * k).
inline AuxLossConfig hf_mixtral(Index top_k, double coefficient = 1e-3) {
  AuxLossConfig c;
  c.coefficient = coefficient;
  c.top_k = top_k;
  c.divide_by_top_k = false;
  c.selection = AuxSelection::recomputed;
  return c;
}

/// Megatron-Core aux_loss: a E / (k T^2) sum_e (sum_t s_te) c_e over the micro-batch, counts of the
/// unbiased, not group-limited top-k; sigmoid and sqrt_softplus scores are divided by their row
/// sum (Megatron-Core `compute_routing_scores_for_aux_loss`).
inline AuxLossConfig megatron(Index top_k, double coefficient = 1e-2,
                              ScoreFunction score = ScoreFunction::softmax) {
  AuxLossConfig c;
  c.coefficient = coefficient;
  c.top_k = top_k;
  c.selection = AuxSelection::recomputed;
  c.scores = score == ScoreFunction::softmax ? AuxScores::as_given : AuxScores::sum_normalized;
  return c;
}

/// Megatron-Core seq_aux_loss: the aux_loss of each sequence, averaged over the batch ([S, B]
/// order).
inline AuxLossConfig megatron_sequence(Index top_k, Index sequence_length,
                                       double coefficient = 1e-2,
                                       ScoreFunction score = ScoreFunction::softmax) {
  AuxLossConfig c = megatron(top_k, coefficient, score);
  c.sequence_length = sequence_length;
  c.layout = SequenceLayout::sequence_major;
  return c;
}

/// DeepSpeed top1gating l_aux = E * sum_e me_e ce_e, counts before dropping (the caller scales).
inline AuxLossConfig deepspeed_top1(double coefficient = 1.0) {
  return switch_transformer(coefficient);
}

/// DeepSpeed top2gating l_aux = E^2 mean_e(me_e ce_e) with ce from the first choices only.
inline AuxLossConfig deepspeed_top2(double coefficient = 1.0) {
  AuxLossConfig c = switch_transformer(coefficient);
  c.top_k = 2;
  return c;
}

/// DeepSpeed topkgating (k > 2) l_aux = E^2 / k mean_e(me_e ce_e), ce over all k.
inline AuxLossConfig deepspeed_topk(Index top_k, double coefficient = 1.0) {
  AuxLossConfig c;
  c.coefficient = coefficient;
  c.top_k = top_k;
  return c;
}

/// DeepSeek-V3 complementary sequence-wise loss: per sequence, f_i = E/(kT) * count of the routed
/// top-k (the biased selection), P_i = mean of s_i / sum_j s_j.
inline AuxLossConfig deepseek_v3_sequence(Index top_k, Index sequence_length,
                                          double coefficient = 1e-4) {
  AuxLossConfig c;
  c.coefficient = coefficient;
  c.top_k = top_k;
  c.scores = AuxScores::sum_normalized;
  c.sequence_length = sequence_length;
  c.layout = SequenceLayout::batch_major;
  return c;
}

/// Megatron-Core seq_aux_loss over packed sequences of varying length (give cu_seqlens to
/// load_balancing_loss_packed): each sequence's loss divided by the mean real-token count per
/// sequence, as Megatron-LM PR #6115 makes a pack give the loss of its padded batch.
inline AuxLossConfig megatron_packed_sequence(Index top_k, double coefficient = 1e-2,
                                              ScoreFunction score = ScoreFunction::softmax) {
  AuxLossConfig c = megatron(top_k, coefficient, score);
  c.sequence_normalization = SequenceNormalization::mean_length;
  return c;
}

/// DeepSeek-V3 sequence-wise loss over packed sequences of varying length (give cu_seqlens to
/// load_balancing_loss_packed): each sequence normalized by its own length, as the paper defines
/// it.
inline AuxLossConfig deepseek_v3_packed_sequence(Index top_k, double coefficient = 1e-4) {
  return deepseek_v3_sequence(top_k, 0, coefficient);
}

}  // namespace aux_presets

namespace detail {

/// Row -> domain index (sequence) of an AuxLossConfig, or of packed sequences.
struct AuxDomains {
  Index count = 1;
  Index sequence_length = 0;
  SequenceLayout layout = SequenceLayout::batch_major;
  std::vector<Index> packed;  ///< packed sequences: the domain of every row; empty otherwise

  Index operator()(Index t) const {
    if (!packed.empty()) return packed[static_cast<std::size_t>(t)];
    if (sequence_length == 0) return 0;
    return layout == SequenceLayout::batch_major ? t / sequence_length : t % count;
  }
};

inline AuxDomains aux_domains(const AuxLossConfig& c, Index num_tokens) {
  AuxDomains d;
  d.sequence_length = c.sequence_length;
  d.layout = c.layout;
  if (c.sequence_length > 0) {
    require(num_tokens % c.sequence_length == 0, "scores",
            concat("a number of rows divisible by AuxLossConfig::sequence_length (",
                   c.sequence_length, ")"),
            num_tokens);
    d.count = num_tokens / c.sequence_length;
  }
  return d;
}

/// The domains of packed sequences: rows [cu_seqlens(b), cu_seqlens(b + 1)) form sequence b
/// (flash-attention's and Megatron's THD cu_seqlens). A sequence without rows is skipped and not
/// counted, so offsets padded to a fixed size by repeating the last one give the same loss.
inline AuxDomains packed_domains(const IndexVector& cu_seqlens, Index num_tokens,
                                 const AuxLossConfig& c) {
  require(c.sequence_length == 0, "AuxLossConfig::sequence_length",
          "0 when cu_seqlens gives the sequences", c.sequence_length);
  require(cu_seqlens.size() >= 1, "cu_seqlens", "[S + 1] offsets, the first 0 (at least one entry)",
          "no entries");
  require(cu_seqlens(0) == 0, "cu_seqlens", "a first offset of 0", cu_seqlens(0));
  for (Index b = 1; b < cu_seqlens.size(); ++b)
    if (cu_seqlens(b) < cu_seqlens(b - 1))
      detail::fail("cu_seqlens", "non-decreasing offsets",
                   concat(cu_seqlens(b), " at entry ", b, " after ", cu_seqlens(b - 1)));
  const Index last = cu_seqlens(cu_seqlens.size() - 1);
  require(last == num_tokens, "cu_seqlens",
          concat("a last offset equal to the number of rows of the scores (", num_tokens, ")"),
          last);
  AuxDomains d;
  d.count = 0;
  d.packed.resize(static_cast<std::size_t>(num_tokens));
  for (Index b = 0; b + 1 < cu_seqlens.size(); ++b) {
    if (cu_seqlens(b + 1) == cu_seqlens(b)) continue;
    for (Index t = cu_seqlens(b); t < cu_seqlens(b + 1); ++t)
      d.packed[static_cast<std::size_t>(t)] = d.count;
    ++d.count;
  }
  return d;
}

inline DropRule drop_rule(DroppedChoices d) {
  switch (d) {
    case DroppedChoices::counted:
      return DropRule::counted;
    case DroppedChoices::excluded:
      return DropRule::excluded;
    case DroppedChoices::expert_zero:
      break;
  }
  return DropRule::expert_zero;
}

inline Index counted_choices(const AuxLossConfig& c) {
  return c.counting == AuxCounting::first_choice ? 1 : c.top_k;
}

/// The loss of one batch before its gradient is spread over tokens: every real token of domain b
/// has the same gradient row row_grad(b) = a E f_b / (m_b B), m_b its normalizer (n_b or N / B).
struct AuxLossParts {
  double value = 0;
  RowMatrix<double> row_grad;  // [B, E]
  AuxDomains domains;
};

/// value = a E / B sum_b sum_e f_be P_be with f_be = counts_be / (m_b k'), P_be = sum s / m_b over
/// the real tokens of domain b; m_b = n_b (own_length) or N / B (mean_length, N real tokens).
/// Domains without real tokens add 0; B counts them. No domain (packed, T = 0): value 0.
template <class Scores>
AuxLossParts aux_loss_from_counts(const Scores& scores, const RowMatrix<double>& counts,
                                  const Vector<double>& tokens, const AuxDomains& domains,
                                  const TokenMask& mask, double coefficient, double count_divisor,
                                  SequenceNormalization normalization) {
  const Index num_experts = scores.cols();
  RowMatrix<double> score_sums = RowMatrix<double>::Zero(domains.count, num_experts);
  for (Index t = 0; t < scores.rows(); ++t)
    if (is_real_token(mask, t)) score_sums.row(domains(t)) += scores.row(t).template cast<double>();

  AuxLossParts parts;
  parts.domains = domains;
  parts.row_grad = RowMatrix<double>::Zero(domains.count, num_experts);
  if (domains.count == 0) return parts;
  const double scale =
      coefficient * static_cast<double>(num_experts) / static_cast<double>(domains.count);
  // Megatron-LM router.py _apply_seq_aux_loss (moe_utils.py get_tokens_per_expert_and_token_count,
  // topk * bsz): with a padding mask its per-sequence T is the real tokens / bsz.
  const double mean_tokens = tokens.sum() / static_cast<double>(domains.count);
  for (Index b = 0; b < domains.count; ++b) {
    if (!(tokens(b) > 0)) continue;
    const double n = normalization == SequenceNormalization::own_length ? tokens(b) : mean_tokens;
    for (Index e = 0; e < num_experts; ++e) {
      const double f = counts(b, e) / (n * count_divisor);
      parts.value += scale * f * score_sums(b, e) / n;
      parts.row_grad(b, e) = scale * f / n;
    }
  }
  return parts;
}

/// grad_te = row_grad(domain of t) on real rows, 0 on padding.
template <class T>
RowMatrix<T> spread_gradient(const AuxLossParts& parts, const TokenMask& mask, Index num_tokens) {
  RowMatrix<T> grad = RowMatrix<T>::Zero(num_tokens, parts.row_grad.cols());
  for (Index t = 0; t < num_tokens; ++t)
    if (is_real_token(mask, t))
      grad.row(t) = parts.row_grad.row(parts.domains(t)).template cast<T>();
  return grad;
}

/// The loss over scores already transformed by the caller; `selection_scores` ranks a recomputed
/// selection. `adjust_counts(counts)` may replace this batch's counts before the loss is formed
/// (the global-batch loss substitutes its running average there).
template <class Scores, class AdjustCounts>
AuxLossParts aux_loss_core(const Scores& used_scores, const Scores& selection_scores,
                           const ExpertIdMatrix& expert_ids, const AuxLossConfig& config,
                           const TokenMask& mask, const ChoiceMask& kept,
                           const IndexVector* cu_seqlens, AdjustCounts&& adjust_counts) {
  using Scalar = typename Scores::Scalar;
  validate(config);
  const Index num_tokens = used_scores.rows(), num_experts = used_scores.cols();
  require(num_experts >= 1, "scores", "at least one expert column", num_experts);
  require(config.top_k <= num_experts, "AuxLossConfig::top_k",
          concat("<= the number of experts (", num_experts, ")"), config.top_k);
  require_token_mask(mask, num_tokens, "mask");
  require_choice_mask(kept, num_tokens, config.top_k, "kept");

  ExpertIdMatrix recomputed;
  const ExpertIdMatrix* ids = &expert_ids;
  if (config.selection == AuxSelection::recomputed) {
    require(expert_ids.size() == 0, "expert_ids",
            "empty when AuxLossConfig::selection is recomputed", "a selection");
    recomputed = top_k_rows<Scalar>(selection_scores, config.top_k);
    ids = &recomputed;
  } else {
    require_expert_ids(expert_ids, num_tokens, config.top_k, num_experts, "expert_ids");
  }

  const AuxDomains domains = cu_seqlens ? packed_domains(*cu_seqlens, num_tokens, config)
                                        : aux_domains(config, num_tokens);
  RowMatrix<double> counts = RowMatrix<double>::Zero(domains.count, num_experts);
  add_expert_counts(*ids, counted_choices(config), mask, kept, drop_rule(config.dropped), domains,
                    counts);
  adjust_counts(counts);
  Vector<double> tokens = Vector<double>::Zero(domains.count);
  for (Index t = 0; t < num_tokens; ++t)
    if (is_real_token(mask, t)) tokens(domains(t)) += 1;
  const double divisor = config.divide_by_top_k ? static_cast<double>(config.top_k) : 1.0;
  return aux_loss_from_counts(used_scores, counts, tokens, domains, mask, config.coefficient,
                              divisor, config.sequence_normalization);
}

/// Scores [T, E] (double) -> loss value and grad wrt `scores`, through the optional division by
/// the row sum.
template <class AdjustCounts>
double aux_loss_over_scores(const RowMatrix<double>& scores, const ExpertIdMatrix& expert_ids,
                            const AuxLossConfig& config, const TokenMask& mask,
                            const ChoiceMask& kept, const IndexVector* cu_seqlens,
                            AdjustCounts&& adjust_counts, RowMatrix<double>& grad) {
  if (config.scores == AuxScores::as_given) {
    const AuxLossParts parts =
        aux_loss_core(scores, scores, expert_ids, config, mask, kept, cu_seqlens, adjust_counts);
    grad = spread_gradient<double>(parts, mask, scores.rows());
    return parts.value;
  }
  const RowMatrix<double> normalized = sum_normalize_rows(scores);
  const AuxLossParts parts =
      aux_loss_core(normalized, scores, expert_ids, config, mask, kept, cu_seqlens, adjust_counts);
  grad = spread_gradient<double>(parts, mask, scores.rows());
  sum_normalize_backward_inplace(scores, normalized, grad);
  return parts.value;
}

struct KeepCounts {
  void operator()(RowMatrix<double>&) const {}
};

template <class S, class AdjustCounts>
LossGradient<S> aux_loss_from_scores(const ConstMatrixRef<S>& scores,
                                     const ExpertIdMatrix& expert_ids, const AuxLossConfig& config,
                                     const TokenMask& mask, const ChoiceMask& kept,
                                     const IndexVector* cu_seqlens, AdjustCounts&& adjust_counts) {
  require_finite(scores, "scores");
  LossGradient<S> out;
  if (config.scores == AuxScores::as_given) {
    // No Jacobian to apply: read the scores in place and write the gradient rows directly.
    const AuxLossParts parts =
        aux_loss_core(scores, scores, expert_ids, config, mask, kept, cu_seqlens, adjust_counts);
    out.value = static_cast<S>(parts.value);
    out.grad = spread_gradient<S>(parts, mask, scores.rows());
    return out;
  }
  RowMatrix<double> grad;
  out.value =
      static_cast<S>(aux_loss_over_scores(scores.template cast<double>(), expert_ids, config, mask,
                                          kept, cu_seqlens, adjust_counts, grad));
  out.grad = grad.cast<S>();
  return out;
}

template <class S, class AdjustCounts>
LossGradient<S> aux_loss_from_logits(const ConstMatrixRef<S>& logits, ScoreFunction score,
                                     const ExpertIdMatrix& expert_ids, const AuxLossConfig& config,
                                     const TokenMask& mask, const ChoiceMask& kept,
                                     const IndexVector* cu_seqlens, AdjustCounts&& adjust_counts) {
  require_finite(logits, "logits");
  const RowMatrix<double> s = score_rows<S>(logits, score);
  RowMatrix<double> grad;
  LossGradient<S> out;
  out.value = static_cast<S>(
      aux_loss_over_scores(s, expert_ids, config, mask, kept, cu_seqlens, adjust_counts, grad));
  score_backward_inplace(s, score, grad);
  out.grad = grad.cast<S>();
  return out;
}

}  // namespace detail

/// L = a E mean_b sum_e f_be P_be over the given scores [T, E] (Switch/GShard family; the config
/// selects the system). grad = dL/d scores, for RouterUpstream::scores.
template <class Derived>
LossGradient<typename Derived::Scalar> load_balancing_loss(const Eigen::MatrixBase<Derived>& scores,
                                                           const ExpertIdMatrix& expert_ids,
                                                           const AuxLossConfig& config,
                                                           const TokenMask& mask = TokenMask(),
                                                           const ChoiceMask& kept = ChoiceMask()) {
  using S = typename Derived::Scalar;
  return detail::aux_loss_from_scores<S>(ConstMatrixRef<S>(scores.derived()), expert_ids, config,
                                         mask, kept, nullptr, detail::KeepCounts());
}

/// The same loss with the scores computed from the logits [T, E] by `score` (softmax over E or
/// sigmoid), as HF recomputes softmax(logits) and Megatron sigmoid / sum; grad = dL/d logits,
/// through the score Jacobian, for RouterUpstream::logits.
template <class Derived>
LossGradient<typename Derived::Scalar> load_balancing_loss_from_logits(
    const Eigen::MatrixBase<Derived>& logits, ScoreFunction score, const ExpertIdMatrix& expert_ids,
    const AuxLossConfig& config, const TokenMask& mask = TokenMask(),
    const ChoiceMask& kept = ChoiceMask()) {
  using S = typename Derived::Scalar;
  return detail::aux_loss_from_logits<S>(ConstMatrixRef<S>(logits.derived()), score, expert_ids,
                                         config, mask, kept, nullptr, detail::KeepCounts());
}

/// The per-sequence loss over packed sequences of varying length (THD layout): sequence b is rows
/// [cu_seqlens(b), cu_seqlens(b + 1)), cu_seqlens [S + 1] non-decreasing, first 0, last T. Each
/// sequence's real tokens (mask) form one domain, normalized as config.sequence_normalization
/// says; sequences without rows are skipped and not counted in S. config.sequence_length must be
/// 0 (layout is not read). grad = dL/d scores, as load_balancing_loss.
template <class Derived>
LossGradient<typename Derived::Scalar> load_balancing_loss_packed(
    const Eigen::MatrixBase<Derived>& scores, const ExpertIdMatrix& expert_ids,
    const AuxLossConfig& config, const IndexVector& cu_seqlens, const TokenMask& mask = TokenMask(),
    const ChoiceMask& kept = ChoiceMask()) {
  using S = typename Derived::Scalar;
  return detail::aux_loss_from_scores<S>(ConstMatrixRef<S>(scores.derived()), expert_ids, config,
                                         mask, kept, &cu_seqlens, detail::KeepCounts());
}

/// load_balancing_loss_packed with the scores computed from the logits by `score`; grad = dL/d
/// logits, as load_balancing_loss_from_logits.
template <class Derived>
LossGradient<typename Derived::Scalar> load_balancing_loss_packed_from_logits(
    const Eigen::MatrixBase<Derived>& logits, ScoreFunction score, const ExpertIdMatrix& expert_ids,
    const AuxLossConfig& config, const IndexVector& cu_seqlens, const TokenMask& mask = TokenMask(),
    const ChoiceMask& kept = ChoiceMask()) {
  using S = typename Derived::Scalar;
  return detail::aux_loss_from_logits<S>(ConstMatrixRef<S>(logits.derived()), score, expert_ids,
                                         config, mask, kept, &cu_seqlens, detail::KeepCounts());
}

/// Value and one gradient per layer (dL/d logits of that layer).
template <class S>
struct LayeredLossGradient {
  S value = S(0);
  std::vector<RowMatrix<S>> grads;
};

/// HF's form over several layers: the layers' logits [T, E] concatenated along tokens into one
/// domain (per-layer imbalances can cancel, as in HF), the same token mask for every layer, the
/// selection recomputed from each layer's scores.
template <class S>
LayeredLossGradient<S> load_balancing_loss_over_layers(
    const std::vector<RowMatrix<S>>& layer_logits, ScoreFunction score, const AuxLossConfig& config,
    const TokenMask& mask = TokenMask()) {
  require(!layer_logits.empty(), "layer_logits", "at least one layer", 0);
  require(config.selection == AuxSelection::recomputed, "AuxLossConfig::selection",
          "recomputed (each layer's top-k of its own scores)", "given");
  require(config.sequence_length == 0, "AuxLossConfig::sequence_length",
          "0 (layers are concatenated into one domain)", config.sequence_length);
  const Index T = layer_logits.front().rows(), E = layer_logits.front().cols();
  detail::require_token_mask(mask, T, "mask");
  const Index L = static_cast<Index>(layer_logits.size());
  RowMatrix<S> stacked(L * T, E);
  TokenMask stacked_mask(mask.size() == 0 ? 0 : L * T);
  for (Index l = 0; l < L; ++l) {
    const auto& z = layer_logits[static_cast<std::size_t>(l)];
    require_shape(z, "layer_logits", T, E);
    stacked.middleRows(l * T, T) = z;
    if (mask.size() != 0) stacked_mask.segment(l * T, T) = mask;
  }
  const auto total =
      load_balancing_loss_from_logits(stacked, score, ExpertIdMatrix(), config, stacked_mask);
  LayeredLossGradient<S> out;
  out.value = total.value;
  for (Index l = 0; l < L; ++l) out.grads.push_back(total.grad.middleRows(l * T, T));
  return out;
}

}  // namespace moe
