// The balance area: every balancing loss with its gradient under the configurations of several
// systems, the global-batch loss over two micro-batches, the z-loss, the noisy top-k losses and
// the BiasBalancer's bias after a few steps, in float and double (tests/test_balance.py repeats
// every call through the module).
#include <cmath>
#include <cstdint>
#include <vector>

#include "areas.hpp"
#include "inputs.hpp"
#include "npy.hpp"

#include "moe/moe.hpp"

namespace moe::golden {

namespace {

constexpr Index kTokens = 24, kExperts = 6, kTopK = 2;

/// The load-balancing cases of test_balance.py's LOSS_CASES, in the same order: the config, the
/// expert id columns it reads (0: None, a recomputed selection), and whether it takes the mask
/// and the kept mask.
struct LossCase {
  AuxLossConfig config;
  Index id_columns;
  bool masked;
  bool with_kept;
};

std::vector<LossCase> loss_cases() {
  AuxLossConfig custom;
  custom.coefficient = 0.02;
  custom.top_k = 2;
  custom.dropped = DroppedChoices::excluded;
  custom.divide_by_top_k = false;
  return {
      {aux_presets::switch_transformer(0.01), 1, false, false},
      {aux_presets::deepspeed_top2(1.0), 2, true, false},
      {aux_presets::megatron(2, 0.01), 0, true, false},
      {aux_presets::megatron_sequence(2, 6, 0.01), 0, false, false},
      {aux_presets::deepseek_v3_sequence(2, 8, 1e-4), 2, true, false},
      {aux_presets::hf_switch(8, 1e-3), 1, false, true},
      {custom, 2, true, true},
  };
}

template <class S>
void write_loss(const std::string& prefix, const LossGradient<S>& loss) {
  write_npy(prefix + "_value.npy", &loss.value, 1);
  write_npy(prefix + "_grad.npy", loss.grad);
}

/// Padding tokens 5 and 17; choices (2, 1), (7, 0) and (20, 1) dropped.
TokenMask padding_mask() {
  TokenMask mask = TokenMask::Ones(kTokens);
  mask(5) = mask(17) = false;
  return mask;
}

ChoiceMask kept_mask(Index columns) {
  ChoiceMask kept = ChoiceMask::Ones(kTokens, kTopK);
  kept(2, 1) = kept(7, 0) = kept(20, 1) = false;
  return kept.leftCols(columns);
}

template <class S>
void write_for(const std::string& dir, const ExpertIdMatrix& ids) {
  const std::string t = precision_name<S>();
  const std::string p = dir + "/";
  const RowMatrix<S> logits = mixed_logits<S>(kTokens, kExperts, 1);
  RowMatrix<S> scores;
  score_rows<S>(ScoreFunction::softmax, logits, scores);
  write_npy(p + "scores_" + t + ".npy", scores);
  const TokenMask mask = padding_mask();
  RowMatrix<S> gates(kTokens, kTopK);
  for (Index i = 0; i < kTokens; ++i)
    for (Index j = 0; j < kTopK; ++j) gates(i, j) = scores(i, ids(i, j));

  const auto cases = loss_cases();
  for (std::size_t c = 0; c < cases.size(); ++c) {
    const LossCase& lc = cases[c];
    const ExpertIdMatrix case_ids =
        lc.id_columns ? ExpertIdMatrix(ids.leftCols(lc.id_columns)) : ExpertIdMatrix();
    write_loss(p + "lbl" + std::to_string(c) + "_" + t,
               load_balancing_loss(scores, case_ids, lc.config, lc.masked ? mask : TokenMask(),
                                   lc.with_kept ? kept_mask(lc.config.top_k) : ChoiceMask()));
  }
  write_loss(p + "lbl_logits_sigmoid_" + t,
             load_balancing_loss_from_logits(logits, ScoreFunction::sigmoid, ExpertIdMatrix(),
                                             aux_presets::megatron(2, 0.01, ScoreFunction::sigmoid),
                                             mask));
  write_loss(p + "lbl_logits_mixtral_" + t,
             load_balancing_loss_from_logits(logits, ScoreFunction::softmax, ExpertIdMatrix(),
                                             aux_presets::hf_mixtral(2)));
  IndexVector cu_seqlens(5);
  cu_seqlens << 0, 5, 5, 13, 24;
  write_loss(
      p + "lbl_packed_" + t,
      load_balancing_loss_packed(scores, ExpertIdMatrix(), aux_presets::megatron_packed_sequence(2),
                                 cu_seqlens, mask));
  write_loss(p + "lbl_packed_logits_" + t,
             load_balancing_loss_packed_from_logits(logits, ScoreFunction::softmax, ids,
                                                    aux_presets::deepseek_v3_packed_sequence(2),
                                                    cu_seqlens, TokenMask(), kept_mask(2)));
  const auto layered =
      load_balancing_loss_over_layers<S>({logits, mixed_logits<S>(kTokens, kExperts, 9)},
                                         ScoreFunction::softmax, aux_presets::hf_mixtral(2), mask);
  write_npy(p + "layers_value_" + t + ".npy", &layered.value, 1);
  write_npy(p + "layers_grad0_" + t + ".npy", layered.grads[0]);
  write_npy(p + "layers_grad1_" + t + ".npy", layered.grads[1]);

  GlobalLoadBalancingLoss<S> global(kExperts, aux_presets::deepspeed_top2(0.5));
  write_loss(p + "global0_" + t,
             global.micro_batch(scores.topRows(12), ids.topRows(12).leftCols(2), mask.head(12)));
  write_loss(p + "global1_" + t,
             global.micro_batch_from_logits(logits.bottomRows(12), ScoreFunction::softmax,
                                            ids.bottomRows(12)));
  write_npy(p + "global_counts_" + t + ".npy", global.accumulated_counts());

  write_loss(p + "z_" + t, router_z_loss(logits, 1e-3));
  write_loss(p + "z_masked_" + t, router_z_loss(logits, 1e-3, mask));
  const double cv[] = {cv_squared(scores.row(0)),
                       cv_squared(scores.row(0), VarianceConvention::population)};
  write_npy(p + "cv_squared_" + t + ".npy", cv, 2);
  write_loss(p + "importance_dense_" + t,
             importance_loss(scores, 0.1, VarianceConvention::unbiased, mask));
  write_loss(p + "importance_routed_" + t,
             importance_loss(gates, ids, kExperts, 0.1, VarianceConvention::population));

  const RowMatrix<S> sigma =
      (exact_inputs<S>(kTokens, kExperts, 11).array().abs() * S(0.25) + S(0.5)).matrix();
  const RowMatrix<S> noisy =
      logits + exact_inputs<S>(kTokens, kExperts, 12).cwiseProduct(sigma) / S(4);
  write_npy(p + "noise_stddev_" + t + ".npy", sigma);
  write_npy(p + "noisy_logits_" + t + ".npy", noisy);
  const auto load =
      noisy_topk_load_loss(logits, noisy, sigma, kTopK, 0.1, VarianceConvention::unbiased, mask);
  write_npy(p + "noisy_value_" + t + ".npy", &load.value, 1);
  write_npy(p + "noisy_logits_grad_" + t + ".npy", load.logits);
  write_npy(p + "noisy_stddev_grad_" + t + ".npy", load.noise_stddev);
  write_npy(p + "noise_stddev_backward_" + t + ".npy",
            noise_stddev_backward(sigma, exact_inputs<S>(kTokens, kExperts, 13), 0.01));

  // Three steps of each rule: micro-batch 0 the routing (padding excluded), micro-batch 1 counts
  // that change from step to step.
  const BiasUpdateRule rules[] = {BiasUpdateRule::sign, BiasUpdateRule::centered_sign,
                                  BiasUpdateRule::proportional};
  for (int r = 0; r < 3; ++r) {
    BiasBalancer<S> balancer(kExperts, {r == 2 ? 1e-2 : 1e-3, rules[r]});
    RowMatrix<S> biases(3, kExperts);
    for (Index s = 0; s < 3; ++s) {
      balancer.accumulate(0, ids, mask, kept_mask(2));
      IndexVector counts(kExperts);
      counts << s, 0, 3, 1, 2 * s, 5;
      balancer.accumulate_counts(1, counts);
      balancer.step();
      biases.row(s) = balancer.bias().transpose();
    }
    write_npy(p + "bias" + std::to_string(r) + "_" + t + ".npy", biases);
  }
}

}  // namespace

void balance(const std::string& dir) {
  const ExpertIdMatrix expert_ids = mixed_routing(kTokens, kExperts, kTopK).expert_ids;
  write_npy(dir + "/expert_ids.npy", expert_ids);
  write_for<float>(dir, expert_ids);
  write_for<double>(dir, expert_ids);
}

}  // namespace moe::golden
