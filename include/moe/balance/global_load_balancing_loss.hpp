// Megatron-Core's global_aux_loss: the load-balancing loss whose counts cover every micro-batch of
// the global batch seen so far, so balance is asked of the optimizer step rather than of each
// micro-batch (Qwen's global-batch balancing).
#pragma once

#include "moe/balance/load_balancing_loss.hpp"

namespace moe {

/// L_m = a E / (k T_m^2) sum_e (sum_t s_te) cbar_e, cbar_e = (sum over micro-batches 1..m of c_e) /
/// m (Megatron-Core global_aux_loss): one object per layer, reset() once per optimizer step. Only
/// P_e carries gradient; T_m is the number of real tokens of micro-batch m.
template <class S>
class GlobalLoadBalancingLoss {
 public:
  /// `config` picks counting, division by k, scores and selection as for load_balancing_loss; it
  /// must be taken over the whole micro-batch (sequence_length 0).
  GlobalLoadBalancingLoss(Index num_experts, const AuxLossConfig& config)
      : config_(config), counts_(Vector<double>::Zero(num_experts)) {
    validate(config_);
    require(num_experts >= 1, "num_experts", ">= 1", num_experts);
    require(config_.sequence_length == 0, "AuxLossConfig::sequence_length",
            "0 (the global-batch loss spans whole micro-batches)", config_.sequence_length);
  }

  /// Counts this micro-batch once, then returns the loss and dL/d scores with the averaged counts.
  template <class Derived>
  LossGradient<S> micro_batch(const Eigen::MatrixBase<Derived>& scores,
                              const ExpertIdMatrix& expert_ids, const TokenMask& mask = TokenMask(),
                              const ChoiceMask& kept = ChoiceMask()) {
    check_width(scores.cols(), "scores");
    return detail::aux_loss_from_scores<S>(ConstMatrixRef<S>(scores.derived()), expert_ids, config_,
                                           mask, kept, nullptr, accumulate());
  }

  /// As micro_batch, with the scores computed from the logits; returns dL/d logits.
  template <class Derived>
  LossGradient<S> micro_batch_from_logits(const Eigen::MatrixBase<Derived>& logits,
                                          ScoreFunction score, const ExpertIdMatrix& expert_ids,
                                          const TokenMask& mask = TokenMask(),
                                          const ChoiceMask& kept = ChoiceMask()) {
    check_width(logits.cols(), "logits");
    return detail::aux_loss_from_logits<S>(ConstMatrixRef<S>(logits.derived()), score, expert_ids,
                                           config_, mask, kept, nullptr, accumulate());
  }

  /// Starts a new global batch: call once per optimizer step.
  void reset() {
    counts_.setZero();
    micro_batches_ = 0;
  }

  Index micro_batches() const noexcept { return micro_batches_; }
  /// Counts summed over this step's micro-batches.
  const Vector<double>& accumulated_counts() const noexcept { return counts_; }
  const AuxLossConfig& config() const noexcept { return config_; }

 private:
  void check_width(Index columns, const char* argument) const {
    require(columns == counts_.size(), argument, detail::concat(counts_.size(), " expert columns"),
            columns);
  }

  /// Adds the micro-batch's counts to the running sum and hands back their average.
  auto accumulate() {
    return [this](RowMatrix<double>& counts) {
      counts_ += counts.row(0).transpose();
      ++micro_batches_;
      counts.row(0) = counts_.transpose() / static_cast<double>(micro_batches_);
    };
  }

  AuxLossConfig config_;
  Vector<double> counts_;
  Index micro_batches_ = 0;
};

}  // namespace moe
