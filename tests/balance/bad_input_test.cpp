// The bad-input catalogue of the balance family: loss configs, scores, logits, expert ids, masks,
// the z-loss (also where its value leaves the scalar's range) and the bias balancer.
#include <limits>
#include <sstream>

#include <moe/balance/bias_balancer.hpp>
#include <moe/balance/load_balancing_loss.hpp>
#include <moe/balance/z_loss.hpp>
#include <moe/routing/router.hpp>

#include "support/bad_input.hpp"
#include "support/catch.hpp"

namespace {

using moe::Index;
using moe::test::require_rejects;
using Matrix = moe::RowMatrix<double>;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

const moe::ExpertIdMatrix kIds = (moe::ExpertIdMatrix(4, 2) << 0, 1, 1, 2, 2, 3, 3, 0).finished();
const Matrix kScores = Matrix::Constant(4, 4, 0.25);

}  // namespace

TEST_CASE("the balancing losses refuse bad configs, scores, ids and masks", "[balance][errors]") {
  const auto loss = [](const Matrix& scores, const moe::ExpertIdMatrix& ids,
                       const moe::AuxLossConfig& c, const moe::TokenMask& mask = {},
                       const moe::ChoiceMask& kept = {}) {
    return [=] { moe::load_balancing_loss(scores, ids, c, mask, kept); };
  };
  auto c = moe::aux_presets::switch_transformer();
  c.top_k = 2;
  c.selection = moe::AuxSelection::given;
  auto bad = c;
  bad.coefficient = -1;
  require_rejects(loss(kScores, kIds, bad), "AuxLossConfig::coefficient", "a finite value >= 0",
                  "-1");
  bad = c;
  bad.top_k = 0;
  require_rejects(loss(kScores, kIds, bad), "AuxLossConfig::top_k", ">= 1", "0");
  bad = c;
  bad.top_k = 5;
  require_rejects(loss(kScores, kIds, bad), "AuxLossConfig::top_k", "4", "5");
  bad = c;
  bad.sequence_length = 3;
  require_rejects(loss(kScores, kIds, bad), "scores", "divisible", "4");
  Matrix scores = kScores;
  scores(1, 2) = kNaN;
  require_rejects(loss(scores, kIds, c), "scores", "finite values", "nan at row 1, column 2");
  moe::ExpertIdMatrix ids = kIds;
  ids(2, 1) = 4;
  require_rejects(loss(kScores, ids, c), "expert_ids", "expert ids in [0, 4)",
                  "4 at row 2, column 1");
  ids = kIds;
  ids(2, 1) = 2;
  require_rejects(loss(kScores, ids, c), "expert_ids", "distinct expert ids in each row",
                  "expert 2 twice in row 2");
  require_rejects(loss(kScores, kIds.topRows(3), c), "expert_ids", "shape [4, 2]", "[3, 2]");
  require_rejects(loss(kScores, kIds, c, moe::TokenMask::Ones(3)), "mask", "one per token", "3");
  require_rejects(loss(kScores, kIds, c, {}, moe::ChoiceMask::Ones(4, 1)), "kept", "shape [4, 2]",
                  "[4, 1]");
  // Packed sequences: cu_seqlens [S + 1] offsets, non-decreasing from 0 to T (4 rows here).
  const auto packed = [](const moe::AuxLossConfig& config, const moe::IndexVector& cu_seqlens) {
    return [=] { moe::load_balancing_loss_packed(kScores, kIds, config, cu_seqlens); };
  };
  require_rejects(packed(c, moe::IndexVector()), "cu_seqlens", "at least one entry", "no entries");
  require_rejects(packed(c, (moe::IndexVector(3) << 1, 2, 4).finished()), "cu_seqlens",
                  "a first offset of 0", "1");
  require_rejects(packed(c, (moe::IndexVector(4) << 0, 3, 2, 4).finished()), "cu_seqlens",
                  "non-decreasing offsets", "2 at entry 2 after 3");
  require_rejects(packed(c, (moe::IndexVector(3) << 0, 2, 5).finished()), "cu_seqlens",
                  "a last offset equal to the number of rows of the scores (4)", "5");
  require_rejects(packed(c, (moe::IndexVector(2) << 0, 3).finished()), "cu_seqlens",
                  "a last offset equal to the number of rows of the scores (4)", "3");
  bad = c;
  bad.sequence_length = 2;
  require_rejects(packed(bad, (moe::IndexVector(3) << 0, 2, 4).finished()),
                  "AuxLossConfig::sequence_length", "0 when cu_seqlens gives the sequences", "2");
  require_rejects(
      [] {
        moe::load_balancing_loss_packed(kScores, kIds, moe::aux_presets::switch_transformer(),
                                        (moe::IndexVector(2) << 0, 4).finished(),
                                        moe::TokenMask::Ones(5));
      },
      "mask", "one per token", "5");
  require_rejects(
      [] {
        moe::load_balancing_loss_packed_from_logits(kScores, moe::ScoreFunction::softmax, {},
                                                    moe::aux_presets::megatron_packed_sequence(2),
                                                    (moe::IndexVector(3) << 0, -1, 4).finished());
      },
      "cu_seqlens", "non-decreasing offsets", "-1 at entry 1 after 0");
  Matrix logits = kScores;
  logits(3, 3) = kNaN;
  require_rejects(
      [&] {
        moe::load_balancing_loss_from_logits(logits, moe::ScoreFunction::softmax, kIds,
                                             moe::aux_presets::megatron(2));
      },
      "logits", "finite values", "nan at row 3, column 3");
}

TEST_CASE("the z-loss refuses bad input, and values past the scalar's range", "[balance][errors]") {
  require_rejects([] { moe::router_z_loss(kScores, kNaN); }, "coefficient", "a finite value >= 0",
                  "nan");
  require_rejects([] { moe::router_z_loss(kScores, -0.5); }, "coefficient", "a finite value >= 0",
                  "-0.5");
  require_rejects([] { moe::router_z_loss(Matrix(3, 0), 1e-3); }, "logits",
                  "at least one expert column", "0");
  Matrix logits = kScores;
  logits(0, 0) = -std::numeric_limits<double>::infinity();
  require_rejects([&] { moe::router_z_loss(logits, 1e-3); }, "logits", "finite values", "-inf");
  require_rejects([] { moe::router_z_loss(kScores, 1e-3, moe::TokenMask::Ones(5)); }, "mask",
                  "one per token", "5");
  const moe::RowMatrix<float> huge = moe::RowMatrix<float>::Constant(2, 4, 1e30f);
  require_rejects([&] { moe::router_z_loss(huge, 1e-3); }, "logits",
                  "logits whose z-loss fits the scalar type", "a z-loss of");
  // A large but representable z-loss is returned.
  const moe::RowMatrix<float> large = moe::RowMatrix<float>::Constant(2, 4, 1e15f);
  CHECK(std::isfinite(moe::router_z_loss(large, 1e-3).value));
}

TEST_CASE("the bias balancer refuses bad input", "[balance][errors]") {
  require_rejects([] { moe::BiasBalancer<float> b(0); }, "num_experts", ">= 1", "0");
  require_rejects(
      [] {
        moe::BiasBalancer<float> b(4, {kNaN, moe::BiasUpdateRule::sign});
      },
      "BiasBalancerOptions::update_rate", "a finite value >= 0", "nan");
  require_rejects(
      [] {
        moe::BiasBalancer<float> b(4, {-1e-3, moe::BiasUpdateRule::sign});
      },
      "BiasBalancerOptions::update_rate", "a finite value >= 0", "-0.001");
  moe::BiasBalancer<double> balancer(4);
  require_rejects([&] { balancer.accumulate(-1, kIds); }, "micro_batch", ">= 0", "-1");
  moe::ExpertIdMatrix ids = kIds;
  ids(0, 0) = 7;
  require_rejects([&] { balancer.accumulate(0, ids); }, "expert_ids", "expert ids in [0, 4)",
                  "7 at row 0, column 0");
  require_rejects([&] { balancer.accumulate(0, kIds, moe::TokenMask::Ones(2)); }, "mask",
                  "one per token", "2");
  require_rejects([&] { balancer.accumulate_counts(0, moe::IndexVector::Zero(3)); }, "counts",
                  "4 entries (one per expert)", "3");
  require_rejects(
      [&] { balancer.accumulate_counts(0, (moe::IndexVector(4) << 1, -1, 0, 0).finished()); },
      "counts", "non-negative counts", "a negative count");
  moe::RouterConfig rc;
  rc.num_experts = 6;
  rc.hidden = 2;
  moe::Router<double> router(rc);
  require_rejects([&] { balancer.apply_to(router); }, "router.selection_bias", "4 entries", "6");
  auto state = balancer.state();
  state.bias[1] = kNaN;
  require_rejects([&] { balancer.restore(state); }, "state.bias", "finite values",
                  "a non-finite value");
  std::istringstream wrong("moe-bias-balancer 1\nexperts 5\n");
  require_rejects([&] { balancer.load(wrong); }, "checkpoint experts", "4", "5");
}
