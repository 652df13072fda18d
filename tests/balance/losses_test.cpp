// Auxiliary load-balancing losses, z-loss and the noisy top-k losses against plain-loop
// transcriptions of each system, hand-computed values and central finite differences.
#include <cmath>
#include <vector>

#include "moe/balance/bias_balancer.hpp"
#include "moe/balance/global_load_balancing_loss.hpp"
#include "moe/balance/load_balancing_loss.hpp"
#include "moe/balance/noisy_topk_losses.hpp"
#include "moe/balance/z_loss.hpp"
#include "moe/core/random.hpp"
#include "support/balance_reference.hpp"
#include "support/catch.hpp"
#include "support/finite_difference.hpp"

namespace {

using moe::ExpertIdMatrix;
using moe::Index;
using moe::RowMatrix;
using moe::TokenMask;
using Mat = RowMatrix<double>;

Mat random_matrix(Index rows, Index cols, std::uint64_t seed, double scale = 1.0) {
  const moe::CounterRng rng(seed, 11);
  Mat m(rows, cols);
  for (Index i = 0; i < m.size(); ++i)
    m.data()[i] = scale * rng.normal(static_cast<std::uint64_t>(i));
  return m;
}

moe::ref::Mat to_ref(const Mat& m) {
  moe::ref::Mat out(static_cast<std::size_t>(m.rows()),
                    std::vector<double>(static_cast<std::size_t>(m.cols())));
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c) out[r][c] = m(r, c);
  return out;
}

Mat softmax(const Mat& z) {
  Mat p(z.rows(), z.cols());
  for (Index t = 0; t < z.rows(); ++t) {
    const auto row = moe::ref::softmax(to_ref(z.row(t)).front());
    for (Index e = 0; e < z.cols(); ++e) p(t, e) = row[e];
  }
  return p;
}

ExpertIdMatrix top_k(const Mat& s, int k) {
  ExpertIdMatrix ids(s.rows(), k);
  for (Index t = 0; t < s.rows(); ++t) {
    const auto idx = moe::ref::topk(to_ref(s.row(t)).front(), k);
    for (int j = 0; j < k; ++j) ids(t, j) = idx[j];
  }
  return ids;
}

std::vector<bool> to_vector(const TokenMask& m) {
  return std::vector<bool>(m.data(), m.data() + m.size());
}

TokenMask mask_every(Index T, Index period) {
  TokenMask m(T);
  for (Index t = 0; t < T; ++t) m(t) = (t % period) != period - 1;
  return m;
}

constexpr double tight = 1e-12;
constexpr double fd_tolerance = 1e-6;

}  // namespace

TEST_CASE("aux loss: hand-computed Switch value and gradient", "[balance][aux]") {
  // Two tokens, two experts, both routed to expert 0: f = (1, 0), P = (0.575, 0.425).
  Mat scores(2, 2);
  scores << 0.75, 0.25, 0.4, 0.6;
  ExpertIdMatrix ids(2, 1);
  ids << 0, 0;
  const auto out = moe::load_balancing_loss(scores, ids, moe::aux_presets::switch_transformer(0.1));
  CHECK(out.value == Approx(0.1 * 2 * 0.575).epsilon(1e-14));
  Mat expected(2, 2);
  expected << 0.1, 0.0, 0.1, 0.0;  // a E f_e / T
  CHECK(moe::test::relative_error(out.grad, expected) < tight);
}

TEST_CASE("aux loss: perfect balance gives a for the /k forms and a*k for HF's", "[balance][aux]") {
  const Index E = 4, k = 2, T = 8;
  const Mat uniform = Mat::Constant(T, E, 1.0 / E);
  ExpertIdMatrix ids(T, k);
  for (Index t = 0; t < T; ++t) {
    ids(t, 0) = static_cast<moe::ExpertId>(t % E);
    ids(t, 1) = static_cast<moe::ExpertId>((t + 1) % E);
  }
  const double a = 0.01;
  SECTION("Megatron aux_loss (given selection): a") {
    auto c = moe::aux_presets::megatron(k, a);
    c.selection = moe::AuxSelection::given;
    CHECK(moe::load_balancing_loss(uniform, ids, c).value == Approx(a).epsilon(1e-14));
  }
  SECTION("DeepSpeed top-k: a") {
    CHECK(moe::load_balancing_loss(uniform, ids, moe::aux_presets::deepspeed_topk(k, a)).value ==
          Approx(a).epsilon(1e-14));
  }
  SECTION("DeepSeek-V3 sequence-wise: a") {
    CHECK(moe::load_balancing_loss(uniform, ids, moe::aux_presets::deepseek_v3_sequence(k, 4, a))
              .value == Approx(a).epsilon(1e-14));
  }
  SECTION("HF Mixtral form: a * k") {
    auto c = moe::aux_presets::hf_mixtral(k, a);
    c.selection = moe::AuxSelection::given;
    CHECK(moe::load_balancing_loss(uniform, ids, c).value == Approx(a * k).epsilon(1e-14));
  }
  SECTION("Switch top-1: a") {
    CHECK(moe::load_balancing_loss(uniform, ids.leftCols(1).eval(),
                                   moe::aux_presets::switch_transformer(a))
              .value == Approx(a).epsilon(1e-14));
  }
}

TEST_CASE(
    "aux loss: Megatron aux_loss matches moe_utils, softmax, sigmoid and sqrtsoftplus, with "
    "padding",
    "[balance][aux]") {
  const Index T = 13, E = 6;
  const int k = 2;
  const Mat z = random_matrix(T, E, 1);
  const TokenMask mask = mask_every(T, 4);
  for (int score : {0, 1, 2}) {
    const auto fn = score == 0   ? moe::ScoreFunction::softmax
                    : score == 1 ? moe::ScoreFunction::sigmoid
                                 : moe::ScoreFunction::sqrt_softplus;
    const auto config = moe::aux_presets::megatron(k, 0.01, fn);
    for (bool masked : {false, true}) {
      const TokenMask m = masked ? mask : TokenMask();
      const auto out = moe::load_balancing_loss_from_logits(z, fn, ExpertIdMatrix(), config, m);
      const double expected = moe::ref::megatron_aux_loss(to_ref(z), k, 0.01, score, to_vector(m));
      CHECK(out.value == Approx(expected).epsilon(tight));

      Mat zz = z;
      const Mat numeric = moe::test::numerical_gradient(zz, [&] {
        return static_cast<double>(
            moe::load_balancing_loss_from_logits(zz, fn, ExpertIdMatrix(), config, m).value);
      });
      CHECK(moe::test::relative_error(out.grad, numeric) < fd_tolerance);
      if (masked)
        for (Index t = 0; t < T; ++t)
          if (!m(t)) CHECK(out.grad.row(t).isZero(0.0));
    }
  }
}

TEST_CASE("aux loss: gradient with respect to the scores", "[balance][aux]") {
  const Index T = 12, E = 5;
  const Mat z = random_matrix(T, E, 2);
  const Mat sig = z.unaryExpr([](double v) { return moe::ref::sigmoid(v); });
  const ExpertIdMatrix ids = top_k(sig, 2);
  const TokenMask mask = mask_every(T, 5);
  for (const auto& config : {moe::aux_presets::deepseek_v3_sequence(2, 4, 0.3),
                             moe::aux_presets::deepspeed_topk(2, 0.7)}) {
    const auto out = moe::load_balancing_loss(sig, ids, config, mask);
    Mat s = sig;
    const Mat numeric = moe::test::numerical_gradient(
        s, [&] { return moe::load_balancing_loss(s, ids, config, mask).value; });
    CHECK(moe::test::relative_error(out.grad, numeric) < fd_tolerance);
  }
}

TEST_CASE("aux loss: Megatron seq_aux_loss in [S, B] order", "[balance][aux]") {
  const int S = 5, B = 3, k = 2;
  const Index E = 4;
  const Mat z = random_matrix(S * B, E, 3);
  const auto config = moe::aux_presets::megatron_sequence(k, S, 0.02);
  const auto out = moe::load_balancing_loss_from_logits(z, moe::ScoreFunction::softmax,
                                                        ExpertIdMatrix(), config);
  CHECK(out.value ==
        Approx(moe::ref::megatron_seq_aux_loss(to_ref(z), S, B, k, 0.02)).epsilon(tight));
  Mat zz = z;
  const Mat numeric = moe::test::numerical_gradient(zz, [&] {
    return moe::load_balancing_loss_from_logits(zz, moe::ScoreFunction::softmax, ExpertIdMatrix(),
                                                config)
        .value;
  });
  CHECK(moe::test::relative_error(out.grad, numeric) < fd_tolerance);
}

TEST_CASE("aux loss: HF Mixtral over concatenated layers with an attention mask",
          "[balance][aux]") {
  const Index T = 10, E = 6;
  const int k = 2;
  std::vector<Mat> layers = {random_matrix(T, E, 4), random_matrix(T, E, 5),
                             random_matrix(T, E, 6)};
  const TokenMask mask = mask_every(T, 3);
  const double a = 0.001;
  std::vector<moe::ref::Mat> ref_layers;
  for (const auto& l : layers) ref_layers.push_back(to_ref(l));
  for (bool masked : {false, true}) {
    const TokenMask m = masked ? mask : TokenMask();
    const auto out = moe::load_balancing_loss_over_layers(layers, moe::ScoreFunction::softmax,
                                                          moe::aux_presets::hf_mixtral(k, a), m);
    CHECK(out.value ==
          Approx(a * moe::ref::hf_mixtral_loss(ref_layers, k, to_vector(m))).epsilon(tight));
    REQUIRE(out.grads.size() == layers.size());
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const Mat numeric = moe::test::numerical_gradient(layers[l], [&] {
        return moe::load_balancing_loss_over_layers(layers, moe::ScoreFunction::softmax,
                                                    moe::aux_presets::hf_mixtral(k, a), m)
            .value;
      });
      CHECK(moe::test::relative_error(out.grads[l], numeric) < fd_tolerance);
    }
  }
  SECTION("one layer equals the single-matrix call") {
    const auto one = moe::load_balancing_loss_over_layers(std::vector<Mat>{layers[0]},
                                                          moe::ScoreFunction::softmax,
                                                          moe::aux_presets::hf_mixtral(k, a));
    const auto direct =
        moe::load_balancing_loss_from_logits(layers[0], moe::ScoreFunction::softmax,
                                             ExpertIdMatrix(), moe::aux_presets::hf_mixtral(k, a));
    CHECK(one.value == direct.value);
    CHECK(one.grads[0] == direct.grad);
  }
}

TEST_CASE("aux loss: HF Switch counts a dropped token for expert 0, per group", "[balance][aux]") {
  const int G = 3, S = 4;
  const Index E = 4, T = G * S;
  const Mat probs = softmax(random_matrix(T, E, 7));
  const ExpertIdMatrix ids = top_k(probs, 1);
  moe::ChoiceMask kept(T, 1);
  for (Index t = 0; t < T; ++t) kept(t, 0) = (t % 3) != 1;  // a third of the tokens dropped
  std::vector<moe::ref::Mat> ref_probs(G), ref_mask(G, moe::ref::zeros(S, E));
  for (int g = 0; g < G; ++g) {
    ref_probs[g] = to_ref(probs.middleRows(g * S, S));
    for (int s = 0; s < S; ++s)
      if (kept(g * S + s, 0)) ref_mask[g][s][ids(g * S + s, 0)] = 1.0;
  }
  const double a = 0.001;
  const auto out =
      moe::load_balancing_loss(probs, ids, moe::aux_presets::hf_switch(S, a), TokenMask(), kept);
  CHECK(out.value == Approx(a * moe::ref::hf_switch_loss(ref_probs, ref_mask)).epsilon(tight));
  SECTION("dropped choices excluded or counted differ from expert_zero") {
    auto c = moe::aux_presets::hf_switch(S, a);
    c.dropped = moe::DroppedChoices::counted;
    const double counted = moe::load_balancing_loss(probs, ids, c, TokenMask(), kept).value;
    CHECK(counted == Approx(moe::load_balancing_loss(probs, ids, c).value).epsilon(tight));
    c.dropped = moe::DroppedChoices::excluded;
    const double excluded = moe::load_balancing_loss(probs, ids, c, TokenMask(), kept).value;
    CHECK(excluded < counted + 1.0);
    CHECK(excluded != Approx(out.value));
  }
}

TEST_CASE("aux loss: DeepSpeed top-2 (first choices) and top-k (/k)", "[balance][aux]") {
  const Index T = 11, E = 5;
  const Mat gates = softmax(random_matrix(T, E, 8));
  const auto top2 =
      moe::load_balancing_loss(gates, top_k(gates, 2), moe::aux_presets::deepspeed_top2());
  CHECK(top2.value == Approx(moe::ref::deepspeed_top2_loss(to_ref(gates))).epsilon(tight));
  const auto top3 =
      moe::load_balancing_loss(gates, top_k(gates, 3), moe::aux_presets::deepspeed_topk(3));
  CHECK(top3.value == Approx(moe::ref::deepspeed_topk_loss(to_ref(gates), 3)).epsilon(tight));
}

TEST_CASE(
    "aux loss: DeepSeek-V3 sequence-wise with normalized sigmoid scores and a biased selection",
    "[balance][aux]") {
  const int B = 3, S = 6, k = 2;
  const Index E = 6;
  const Mat z = random_matrix(B * S, E, 9);
  const Mat sig = z.unaryExpr([](double v) { return moe::ref::sigmoid(v); });
  Mat biased = sig;
  biased.col(0).array() += 0.5;  // the selection bias reorders experts
  const ExpertIdMatrix ids = top_k(biased, k);
  std::vector<moe::ref::Mat> ref_scores;
  std::vector<std::vector<std::vector<int>>> ref_idx(B);
  for (int b = 0; b < B; ++b) {
    ref_scores.push_back(to_ref(sig.middleRows(b * S, S)));
    for (int s = 0; s < S; ++s) ref_idx[b].push_back({ids(b * S + s, 0), ids(b * S + s, 1)});
  }
  const double a = 1e-4;
  const auto config = moe::aux_presets::deepseek_v3_sequence(k, S, a);
  const double expected = moe::ref::deepseek_seq_loss(ref_scores, ref_idx, k, a);
  const auto from_scores = moe::load_balancing_loss(sig, ids, config);
  CHECK(from_scores.value == Approx(expected).epsilon(tight));
  const auto from_logits =
      moe::load_balancing_loss_from_logits(z, moe::ScoreFunction::sigmoid, ids, config);
  CHECK(from_logits.value == Approx(expected).epsilon(tight));
  Mat zz = z;
  const Mat numeric = moe::test::numerical_gradient(zz, [&] {
    return moe::load_balancing_loss_from_logits(zz, moe::ScoreFunction::sigmoid, ids, config).value;
  });
  CHECK(moe::test::relative_error(from_logits.grad, numeric) < fd_tolerance);
  // Chain rule: dL/dz = dL/ds * s (1 - s).
  const Mat chained = from_scores.grad.cwiseProduct(sig.cwiseProduct((1.0 - sig.array()).matrix()));
  CHECK(moe::test::relative_error(from_logits.grad, chained) < tight);
}

TEST_CASE("aux loss: Megatron global_aux_loss averages counts over the step's micro-batches",
          "[balance][aux]") {
  const Index T = 9, E = 4;
  const int k = 2;
  moe::GlobalLoadBalancingLoss<double> global(E, moe::aux_presets::megatron(k, 0.05));
  std::vector<double> sum(E, 0.0);
  for (int step = 0; step < 2; ++step) {
    for (int m = 1; m <= 3; ++m) {
      const Mat z = random_matrix(T, E, 100 + 10 * step + m);
      const Mat p = softmax(z);
      const ExpertIdMatrix ids = top_k(p, k);
      for (Index t = 0; t < T; ++t)
        for (int j = 0; j < k; ++j) sum[ids(t, j)] += 1;
      std::vector<double> avg(E);
      for (Index e = 0; e < E; ++e) avg[e] = sum[e] / m;
      const auto out =
          global.micro_batch_from_logits(z, moe::ScoreFunction::softmax, ExpertIdMatrix());
      CHECK(global.micro_batches() == m);
      CHECK(out.value ==
            Approx(moe::ref::megatron_switch_loss(to_ref(p), avg, T, k, 0.05)).epsilon(tight));
      if (m == 1) {
        const auto single =
            moe::load_balancing_loss(p, ExpertIdMatrix(), moe::aux_presets::megatron(k, 0.05));
        CHECK(out.value == Approx(single.value).epsilon(tight));
      }
    }
    global.reset();
    CHECK(global.micro_batches() == 0);
    CHECK(global.accumulated_counts().isZero(0.0));
    std::fill(sum.begin(), sum.end(), 0.0);
  }
}

TEST_CASE("aux loss: edge cases", "[balance][aux]") {
  SECTION("no tokens") {
    const auto out = moe::load_balancing_loss(Mat(0, 4), ExpertIdMatrix(0, 2),
                                              moe::aux_presets::deepspeed_topk(2));
    CHECK(out.value == 0.0);
    CHECK(out.grad.rows() == 0);
    CHECK(out.grad.cols() == 4);
  }
  SECTION("one expert: f = P = 1, value a") {
    const Mat s = Mat::Ones(5, 1);
    const auto out = moe::load_balancing_loss(s, ExpertIdMatrix::Zero(5, 1),
                                              moe::aux_presets::switch_transformer(0.3));
    CHECK(out.value == Approx(0.3));
  }
  SECTION("k = E: every expert counted for every token") {
    const Mat p = softmax(random_matrix(6, 3, 12));
    const auto out =
        moe::load_balancing_loss(p, ExpertIdMatrix(), moe::aux_presets::megatron(3, 1.0));
    CHECK(out.value == Approx(1.0).epsilon(1e-14));  // f_e = 1/E, sum_e P_e = 1
  }
  SECTION("all padding") {
    TokenMask none = TokenMask::Constant(4, false);
    const auto out = moe::load_balancing_loss(softmax(random_matrix(4, 3, 13)), ExpertIdMatrix(),
                                              moe::aux_presets::megatron(1, 1.0), none);
    CHECK(out.value == 0.0);
    CHECK(out.grad.isZero(0.0));
  }
  SECTION("float matches double") {
    const Mat z = random_matrix(10, 5, 14);
    const RowMatrix<float> zf = z.cast<float>();
    const auto config = moe::aux_presets::megatron(2, 0.01);
    const auto d = moe::load_balancing_loss_from_logits(
        zf.cast<double>().eval(), moe::ScoreFunction::softmax, ExpertIdMatrix(), config);
    const auto f = moe::load_balancing_loss_from_logits(zf, moe::ScoreFunction::softmax,
                                                        ExpertIdMatrix(), config);
    CHECK(f.value == Approx(d.value).epsilon(1e-6));
    CHECK(moe::test::relative_error(f.grad.cast<double>(), d.grad) < 1e-6);
  }
}

TEST_CASE("aux loss: bad input raises moe::Error", "[balance][aux][errors]") {
  const Mat p = softmax(random_matrix(6, 4, 15));
  const ExpertIdMatrix ids = top_k(p, 2);
  const auto given = moe::aux_presets::deepspeed_topk(2);
  CHECK_THROWS_AS(moe::load_balancing_loss(p, ids.leftCols(1).eval(), given), moe::Error);
  ExpertIdMatrix bad = ids;
  bad(2, 1) = 4;
  CHECK_THROWS_AS(moe::load_balancing_loss(p, bad, given), moe::Error);
  bad(2, 1) = -2;  // -1 is an unused slot
  CHECK_THROWS_AS(moe::load_balancing_loss(p, bad, given), moe::Error);
  bad(2, 1) = bad(2, 0);
  CHECK_THROWS_AS(moe::load_balancing_loss(p, bad, given), moe::Error);
  CHECK_THROWS_AS(moe::load_balancing_loss(p, ids, given, TokenMask::Ones(5)), moe::Error);
  CHECK_THROWS_AS(moe::load_balancing_loss(p, ids, given, TokenMask(), moe::ChoiceMask::Ones(6, 1)),
                  moe::Error);
  auto c = given;
  c.coefficient = -1;
  CHECK_THROWS_AS(moe::load_balancing_loss(p, ids, c), moe::Error);
  c = given;
  c.top_k = 5;
  CHECK_THROWS_AS(moe::load_balancing_loss(p, ExpertIdMatrix(6, 5), c), moe::Error);
  c = given;
  c.sequence_length = 4;  // 6 rows
  CHECK_THROWS_AS(moe::load_balancing_loss(p, ids, c), moe::Error);
  CHECK_THROWS_AS(moe::load_balancing_loss(p, ids, moe::aux_presets::megatron(2)), moe::Error);
  Mat nan = p;
  nan(1, 1) = std::nan("");
  CHECK_THROWS_AS(moe::load_balancing_loss(nan, ids, given), moe::Error);
  CHECK_THROWS_AS(moe::load_balancing_loss_over_layers(std::vector<Mat>{p, p.leftCols(3)},
                                                       moe::ScoreFunction::softmax,
                                                       moe::aux_presets::hf_mixtral(2)),
                  moe::Error);
  CHECK_THROWS_AS(
      moe::load_balancing_loss_over_layers(std::vector<Mat>{p}, moe::ScoreFunction::softmax, given),
      moe::Error);
  CHECK_THROWS_AS(
      moe::load_balancing_loss_over_layers(std::vector<Mat>{}, moe::ScoreFunction::softmax,
                                           moe::aux_presets::hf_mixtral(2)),
      moe::Error);
  CHECK_THROWS_AS(
      moe::GlobalLoadBalancingLoss<double>(4, moe::aux_presets::megatron_sequence(2, 3)),
      moe::Error);
  moe::GlobalLoadBalancingLoss<double> global(5, moe::aux_presets::megatron(2));
  CHECK_THROWS_AS(global.micro_batch(p, ExpertIdMatrix()), moe::Error);
  CHECK(global.micro_batches() == 0);
  try {
    moe::load_balancing_loss(p, bad, given);
  } catch (const moe::Error& e) {
    CHECK(std::string(e.what()).find("expert_ids") != std::string::npos);
  }
}

TEST_CASE("z-loss: value, padding mask and gradient", "[balance][zloss]") {
  const Index T = 9, E = 5;
  const Mat z = random_matrix(T, E, 20, 3.0);
  const TokenMask mask = mask_every(T, 3);
  for (bool masked : {false, true}) {
    const TokenMask m = masked ? mask : TokenMask();
    const auto out = moe::router_z_loss(z, 1e-3, m);
    CHECK(out.value == Approx(moe::ref::z_loss(to_ref(z), to_vector(m), 1e-3)).epsilon(tight));
    Mat zz = z;
    const Mat numeric =
        moe::test::numerical_gradient(zz, [&] { return moe::router_z_loss(zz, 1e-3, m).value; });
    CHECK(moe::test::relative_error(out.grad, numeric) < fd_tolerance);
  }
  SECTION("hand-computed: zero logits give (log E)^2") {
    CHECK(moe::router_z_loss(Mat::Zero(3, 4), 2.0).value ==
          Approx(2.0 * std::log(4.0) * std::log(4.0)));
  }
  SECTION("huge logits stay finite") {
    Mat big = Mat::Constant(2, 3, 1000.0);
    big(0, 1) = -1000.0;
    const auto out = moe::router_z_loss(big, 1e-3);
    CHECK(std::isfinite(out.value));
    CHECK(out.grad.allFinite());
    const RowMatrix<float> bigf = big.cast<float>();
    CHECK(std::isfinite(moe::router_z_loss(bigf, 1e-3).value));
  }
  SECTION("no tokens, all padding") {
    CHECK(moe::router_z_loss(Mat(0, 3), 1.0).value == 0.0);
    CHECK(moe::router_z_loss(z, 1.0, TokenMask::Constant(T, false)).value == 0.0);
  }
  SECTION("bad input") {
    CHECK_THROWS_AS(moe::router_z_loss(z, -1.0), moe::Error);
    CHECK_THROWS_AS(moe::router_z_loss(z, 1.0, TokenMask::Ones(2)), moe::Error);
    Mat inf = z;
    inf(0, 0) = INFINITY;
    CHECK_THROWS_AS(moe::router_z_loss(inf, 1.0), moe::Error);
  }
}

TEST_CASE("CV^2 losses of noisy top-k: importance", "[balance][cv2]") {
  const Index T = 7, E = 5;
  const Mat g = softmax(random_matrix(T, E, 30));
  const TokenMask mask = mask_every(T, 4);
  for (auto conv : {moe::VarianceConvention::population, moe::VarianceConvention::unbiased}) {
    const bool unbiased = conv == moe::VarianceConvention::unbiased;
    std::vector<double> imp(E, 0.0);
    for (Index t = 0; t < T; ++t)
      if (mask(t))
        for (Index e = 0; e < E; ++e) imp[e] += g(t, e);
    const auto dense = moe::importance_loss(g, 0.1, conv, mask);
    CHECK(dense.value == Approx(0.1 * moe::ref::cv_squared(imp, unbiased)).epsilon(tight));
    Mat gg = g;
    const Mat numeric = moe::test::numerical_gradient(
        gg, [&] { return moe::importance_loss(gg, 0.1, conv, mask).value; });
    CHECK(moe::test::relative_error(dense.grad, numeric) < fd_tolerance);

    // Routed gates [T, k]: importance from the sparse combine weights.
    const ExpertIdMatrix ids = top_k(g, 2);
    Mat gates(T, 2);
    for (Index t = 0; t < T; ++t)
      for (int j = 0; j < 2; ++j) gates(t, j) = g(t, ids(t, j));
    std::vector<double> imp2(E, 0.0);
    for (Index t = 0; t < T; ++t)
      for (int j = 0; j < 2; ++j) imp2[ids(t, j)] += gates(t, j);
    const auto sparse = moe::importance_loss(gates, ids, E, 0.1, conv);
    CHECK(sparse.value == Approx(0.1 * moe::ref::cv_squared(imp2, unbiased)).epsilon(tight));
    Mat gt = gates;
    const Mat numeric2 = moe::test::numerical_gradient(
        gt, [&] { return moe::importance_loss(gt, ids, E, 0.1, conv).value; });
    CHECK(moe::test::relative_error(sparse.grad, numeric2) < fd_tolerance);
  }
  SECTION("hand-computed CV^2 and one expert") {
    Mat x(1, 4);
    x << 1, 2, 3, 6;  // mean 3, squared deviations 4 + 1 + 0 + 9 = 14
    CHECK(moe::cv_squared(x, moe::VarianceConvention::population) ==
          Approx(14.0 / 4 / (9 + 1e-10)));
    CHECK(moe::cv_squared(x, moe::VarianceConvention::unbiased) == Approx(14.0 / 3 / (9 + 1e-10)));
    CHECK(moe::importance_loss(Mat::Ones(3, 1), 1.0).value == 0.0);
    CHECK(moe::cv_squared(Mat::Constant(1, 4, 2.0)) == 0.0);
  }
  SECTION("bad input") {
    CHECK_THROWS_AS(moe::importance_loss(g, -0.1), moe::Error);
    CHECK_THROWS_AS(
        moe::importance_loss(g, 0.1, moe::VarianceConvention::unbiased, TokenMask::Ones(3)),
        moe::Error);
    CHECK_THROWS_AS(moe::importance_loss(Mat::Ones(2, 2), ExpertIdMatrix::Zero(2, 2), 3, 0.1),
                    moe::Error);
  }
}

TEST_CASE("CV^2 losses of noisy top-k: smooth load through the normal CDF", "[balance][cv2]") {
  const Index T = 8, E = 6;
  const int k = 2;
  const Mat clean = random_matrix(T, E, 40);
  const Mat raw_noise = random_matrix(T, E, 41);
  Mat sigma =
      random_matrix(T, E, 42).unaryExpr([](double v) { return std::log1p(std::exp(v)) + 0.01; });
  const Mat sample = random_matrix(T, E, 43);  // the N(0, 1) draws, held fixed
  auto noisy_of = [&](const Mat& c, const Mat& s) { return (c + sample.cwiseProduct(s)).eval(); };
  (void)raw_noise;
  for (auto conv : {moe::VarianceConvention::population, moe::VarianceConvention::unbiased}) {
    const bool unbiased = conv == moe::VarianceConvention::unbiased;
    const Mat noisy = noisy_of(clean, sigma);
    const auto out = moe::noisy_topk_load_loss(clean, noisy, sigma, k, 0.2, conv);
    const auto load = moe::ref::smooth_load(to_ref(clean), to_ref(noisy), to_ref(sigma), k);
    CHECK(out.value == Approx(0.2 * moe::ref::cv_squared(load, unbiased)).epsilon(tight));

    Mat c = clean;
    const Mat numeric_z = moe::test::numerical_gradient(c, [&] {
      return moe::noisy_topk_load_loss(c, noisy_of(c, sigma), sigma, k, 0.2, conv).value;
    });
    CHECK(moe::test::relative_error(out.logits, numeric_z) < fd_tolerance);
    Mat s = sigma;
    const Mat numeric_s = moe::test::numerical_gradient(s, [&] {
      return moe::noisy_topk_load_loss(clean, noisy_of(clean, s), s, k, 0.2, conv).value;
    });
    CHECK(moe::test::relative_error(out.noise_stddev, numeric_s) < fd_tolerance);
  }
  SECTION("padding rows get no gradient and no load") {
    const TokenMask mask = mask_every(T, 2);
    const Mat noisy = noisy_of(clean, sigma);
    const auto out = moe::noisy_topk_load_loss(clean, noisy, sigma, k, 0.2,
                                               moe::VarianceConvention::unbiased, mask);
    for (Index t = 0; t < T; ++t)
      if (!mask(t)) {
        CHECK(out.logits.row(t).isZero(0.0));
        CHECK(out.noise_stddev.row(t).isZero(0.0));
      }
  }
  SECTION("noise standard deviation backward through softplus") {
    const double eps = 0.01;
    const Mat r = random_matrix(T, E, 44);
    auto stddev_of = [&](const Mat& rr) {
      return rr.unaryExpr([&](double v) { return std::log1p(std::exp(v)) + eps; }).eval();
    };
    const Mat ds = random_matrix(T, E, 45);
    const Mat dr = moe::noise_stddev_backward(stddev_of(r), ds, eps);
    Mat rr = r;
    const Mat numeric =
        moe::test::numerical_gradient(rr, [&] { return stddev_of(rr).cwiseProduct(ds).sum(); });
    CHECK(moe::test::relative_error(dr, numeric) < fd_tolerance);
    CHECK_THROWS_AS(moe::noise_stddev_backward(Mat::Constant(2, 2, 0.005), Mat::Ones(2, 2), eps),
                    moe::Error);
  }
  SECTION("bad input") {
    const Mat noisy = noisy_of(clean, sigma);
    CHECK_THROWS_AS(moe::noisy_topk_load_loss(clean, noisy, sigma, E, 0.2), moe::Error);
    CHECK_THROWS_AS(moe::noisy_topk_load_loss(clean, noisy.leftCols(3), sigma, k, 0.2), moe::Error);
    CHECK_THROWS_AS(moe::noisy_topk_load_loss(clean, noisy, (-sigma).eval(), k, 0.2), moe::Error);
  }
}

TEST_CASE("aux loss and bias balancer skip unused slots (adaptive k), normalizing by T k",
          "[balance][aux][adaptive_k]") {
  const Index T = 11, E = 4;
  const int k = 3;
  const Mat z = random_matrix(T, E, 300);
  const Mat p = softmax(z);
  ExpertIdMatrix ids = top_k(p, k);
  for (Index t = 0; t < T; ++t)
    for (int j = 1; j < k; ++j)
      if ((t + j) % 3 == 0) ids(t, j) = moe::kUnusedSlot;
  // Reference: Megatron's switch loss over the used choices' counts, with the configured k.
  std::vector<double> counts(E, 0.0);
  for (Index t = 0; t < T; ++t)
    for (int j = 0; j < k; ++j)
      if (ids(t, j) >= 0) counts[static_cast<std::size_t>(ids(t, j))] += 1;
  auto config = moe::aux_presets::megatron(k, 0.05);
  config.selection = moe::AuxSelection::given;
  const auto out = moe::load_balancing_loss(p, ids, config);
  CHECK(out.value ==
        Approx(moe::ref::megatron_switch_loss(to_ref(p), counts, T, k, 0.05)).epsilon(tight));

  moe::BiasBalancer<double> balancer(E);
  balancer.accumulate(0, ids);
  for (Index e = 0; e < E; ++e)
    CHECK(balancer.pending_load()[e] == counts[static_cast<std::size_t>(e)]);
}
