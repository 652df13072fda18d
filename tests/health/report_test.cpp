// One-step health metrics: the reference JAX check reproduced by hand, each metric on hand-worked
// cases, random inputs against the plain-loop reference, tensors, non-finite input. (Bad input:
// bad_input_test.cpp.)
#include <cmath>
#include <limits>
#include <vector>

#include <unsupported/Eigen/CXX11/Tensor>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "moe/core/random.hpp"
#include "moe/health/report.hpp"
#include "moe/health/tensor.hpp"
#include "support/catch.hpp"
#include "support/health_reference.hpp"
#include "support/seed_probabilities.hpp"

using moe::Index;
using moe::RowMatrix;

namespace {

using moe::test::seed_probs;

/// The default config with the top-k margins and bf16 stability on.
moe::HealthConfig selection_on() {
  moe::HealthConfig c;
  c.selection_metrics = true;
  return c;
}

std::vector<int> ids(const std::vector<moe::ExpertId>& v) {
  return std::vector<int>(v.begin(), v.end());
}

template <class S>
RowMatrix<S> random_logits(Index t, Index e, std::uint64_t seed, double scale, bool quantize) {
  moe::CounterRng rng(seed, 1);
  RowMatrix<S> z(t, e);
  for (Index i = 0; i < z.size(); ++i) {
    double v = scale * rng.normal(static_cast<std::uint64_t>(i));
    if (quantize) v = std::round(v);  // many exact ties
    z.data()[i] = static_cast<S>(v);
  }
  return z;
}

template <class S>
RowMatrix<S> softmax_rows(const RowMatrix<S>& z) {
  RowMatrix<S> p(z.rows(), z.cols());
  for (Index t = 0; t < z.rows(); ++t) {
    const S m = z.row(t).maxCoeff();
    p.row(t) = (z.row(t).array() - m).exp();
    p.row(t) /= p.row(t).sum();
  }
  return p;
}

void check_load(const moe::LoadStats& got, const std::vector<double>& load, double average,
                double tol, double hot = 1.25, double cold = 0.1) {
  const auto ref = moe::test::ref_load(load, average, hot, cold);
  REQUIRE(got.load.size() == static_cast<Index>(load.size()));
  for (std::size_t e = 0; e < load.size(); ++e)
    CHECK(got.load[e] == Approx(load[e]).epsilon(tol).margin(tol));
  CHECK(got.average_load == Approx(average));
  CHECK(got.mean == Approx(ref.mean).epsilon(tol).margin(tol));
  CHECK(got.variance == Approx(ref.variance).epsilon(tol).margin(tol));
  if (ref.mean > 0) {
    CHECK(got.cv == Approx(ref.cv).epsilon(tol).margin(tol));
    CHECK(got.max_vio == Approx(ref.max_vio).epsilon(tol).margin(tol));
  }
  CHECK(got.min == Approx(ref.min).epsilon(tol).margin(tol));
  CHECK(got.max == Approx(ref.max).epsilon(tol).margin(tol));
  CHECK(got.p10 == Approx(ref.p10).epsilon(tol).margin(tol));
  CHECK(got.p50 == Approx(ref.p50).epsilon(tol).margin(tol));
  CHECK(got.p90 == Approx(ref.p90).epsilon(tol).margin(tol));
  CHECK(ids(got.hot) == ref.hot);
  CHECK(ids(got.cold) == ref.cold);
}

}  // namespace

TEST_CASE("reference JAX check on soft loads, reproduced by hand", "[health][seeds]") {
  // tokens_per_expert = [4, 2.5, 1.4, 0.1], avg_load = 8 / 4 = 2, max_capacity = 2.5:
  // hot = [4 > 2.5] (2.5 itself is not above), cold = [0.1 < 0.2], var = (4 + .25 + .36 + 3.61)/4.
  const auto p = seed_probs();
  for (Index k : {1, 2}) {
    const auto r = moe::health_report(p, k);
    CHECK(r.soft.load.isApprox(Eigen::Vector4d(4.0, 2.5, 1.4, 0.1)));
    CHECK(r.soft.average_load == 2.0);
    CHECK(r.soft.variance == Approx(2.055));
    CHECK(r.soft.hot_count() == 1);
    CHECK(ids(r.soft.hot) == std::vector<int>{0});
    CHECK(r.soft.cold_count() == 1);
    CHECK(ids(r.soft.cold) == std::vector<int>{3});
  }
  // The same in float through a Map, the way a caller's buffer arrives.
  const RowMatrix<float> pf = p.cast<float>();
  const auto rf = moe::health_report(Eigen::Map<const RowMatrix<float>>(pf.data(), 8, 4), 1);
  CHECK(rf.soft.variance == Approx(2.055).epsilon(1e-6));
  CHECK(rf.soft.hot_count() == 1);
  CHECK(rf.soft.cold_count() == 1);
}

TEST_CASE("reference JAX check on hard loads, reproduced by hand", "[health][seeds]") {
  const auto p = seed_probs();
  SECTION("k = 1: top-1 counts [5, 3, 0, 0] (ties to the lower expert), avg 2") {
    const auto r = moe::health_report(p, 1);
    CHECK(r.hard.load == Eigen::Vector4d(5, 3, 0, 0));
    CHECK(r.hard.average_load == 2.0);
    CHECK(r.hard.variance == Approx(4.5));
    CHECK(ids(r.hard.hot) == std::vector<int>{0, 1});
    CHECK(ids(r.hard.cold) == std::vector<int>{2, 3});
  }
  SECTION("k = 2: counts [5, 8, 3, 0]; T k / E = 4 by default, T / E = 2 literally") {
    const auto r = moe::health_report(p, 2);
    CHECK(r.hard.load == Eigen::Vector4d(5, 8, 3, 0));
    CHECK(r.hard.average_load == 4.0);
    CHECK(r.hard.variance == Approx(8.5));
    CHECK(ids(r.hard.hot) == std::vector<int>{1});  // 5 is not above 1.25 * 4
    CHECK(ids(r.hard.cold) == std::vector<int>{3});
    CHECK(r.hard.max_vio == Approx(1.0));
    CHECK(r.hard.cv == Approx(std::sqrt(8.5) / 4.0));
    CHECK(r.hard.min == 0.0);
    CHECK(r.hard.max == 8.0);
    CHECK(r.hard.p10 == Approx(0.9));  // sorted [0, 3, 5, 8]
    CHECK(r.hard.p50 == Approx(4.0));
    CHECK(r.hard.p90 == Approx(7.1));

    moe::HealthConfig literal;
    literal.average = moe::AverageLoad::per_token;
    const auto l = moe::health_report(p, 2, literal);
    CHECK(l.hard.average_load == 2.0);
    CHECK(ids(l.hard.hot) == std::vector<int>{0, 1, 2});
    CHECK(ids(l.hard.cold) == std::vector<int>{3});
    CHECK(l.soft.average_load == 2.0);
  }
  SECTION("the router's own ids give the same counts as the top-k of the probabilities") {
    moe::ExpertIdMatrix chosen(8, 2);
    chosen << 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 2, 1, 2, 1, 2;
    const auto r = moe::health_report(p, chosen);
    CHECK(r.hard.load == Eigen::Vector4d(5, 8, 3, 0));
    CHECK(r.top_k == 2);
  }
  SECTION("configurable thresholds") {
    moe::HealthConfig c;
    c.hot_factor = 1.0;
    c.cold_factor = 0.5;
    const auto r = moe::health_report(p, 2, c);
    CHECK(ids(r.hard.hot) == std::vector<int>{0, 1});
    CHECK(ids(r.hard.cold) == std::vector<int>{3});  // 3 is not below 2
    CHECK(ids(r.soft.cold) == std::vector<int>{3});  // 1.4 is not below 1
  }
}

TEST_CASE("distribution metrics, hand-worked", "[health]") {
  const auto r = moe::health_report(seed_probs(), 1);
  const double ln2 = std::log(2.0);
  const double h6 = -(.5 * std::log(.5) + .4 * std::log(.4) + .1 * std::log(.1));
  CHECK(r.mean_token_entropy == Approx((4 * ln2 + h6) / 8));
  CHECK(r.mean_top1 == Approx(5.5 / 8));
  double h = 0;
  for (double c : {4.0, 2.5, 1.4, 0.1}) h -= c / 8 * std::log(c / 8);
  CHECK(r.normalized_entropy == Approx(h / std::log(4.0)));
  CHECK(r.skipped_tokens == 0);
  CHECK_FALSE(r.logits.has_value());
  CHECK_FALSE(r.capacity.has_value());

  SECTION("uniform rows: entropy 1 normalized, log E per token") {
    const RowMatrix<float> u = RowMatrix<float>::Constant(5, 8, 0.125f);
    const auto ru = moe::health_report(u, 2);
    CHECK(ru.normalized_entropy == Approx(1.0).epsilon(1e-6));
    CHECK(ru.mean_token_entropy == Approx(std::log(8.0)).epsilon(1e-6));
    CHECK(ru.mean_top1 == Approx(0.125));
    CHECK(ru.soft.variance == Approx(0.0).margin(1e-12));
    CHECK(ru.soft.max_vio == Approx(0.0).margin(1e-6));
  }
  SECTION("sigmoid-like rows are normalized before the entropy") {
    RowMatrix<double> s(1, 2);
    s << 0.9, 0.9;
    const auto rs = moe::health_report(s, 1);
    CHECK(rs.mean_token_entropy == Approx(std::log(2.0)));
    CHECK(rs.mean_top1 == Approx(0.9));
  }
}

TEST_CASE("logit metrics, hand-worked", "[health]") {
  moe::Routing<double> routing;
  routing.logits.resize(4, 2);
  routing.logits << 0, 0, std::log(3.0), 0, 1000, 1000, -5, -5;
  routing.scores = RowMatrix<double>::Constant(4, 2, 0.5);
  routing.expert_ids.resize(4, 1);
  routing.expert_ids << 0, 1, 0, 1;
  const auto r = moe::health_report(routing);
  REQUIRE(r.logits.has_value());
  const double lse[] = {std::log(2.0), std::log(4.0), 1000 + std::log(2.0), -5 + std::log(2.0)};
  double a = 0, b = 0;
  for (double v : lse) {
    a += v / 4;
    b += v * v / 4;
  }
  CHECK(r.logits->mean_logsumexp == Approx(a));
  CHECK(r.logits->mean_squared_logsumexp == Approx(b));
  CHECK(r.logits->nonfinite == 0);
  // With logits, the per-token entropy is that of softmax(z) (fairseq entropy_gating).
  const double h34 = -(0.75 * std::log(0.75) + 0.25 * std::log(0.25));
  CHECK(r.logits->mean_entropy == Approx((3 * std::log(2.0) + h34) / 4));
  CHECK(r.mean_token_entropy == r.logits->mean_entropy);

  SECTION("rows far below the block's maximum keep full precision") {
    routing.logits << 100, 100, -100, -100, 0, std::log(3.0), -200, -200;
    const auto rf = moe::health_report(routing);
    CHECK(rf.logits->mean_logsumexp ==
          Approx((100 + std::log(2.0) - 100 + std::log(2.0) + std::log(4.0) - 200 + std::log(2.0)) /
                 4));
    CHECK(rf.logits->mean_entropy == Approx((3 * std::log(2.0) + h34) / 4));
    CHECK(rf.logits->nonfinite == 0);
    // In float, e^-100 is below the normal range: the block falls back to per-row shifts.
    RowMatrix<float> zf(2, 2);
    zf << 40, 40, -60, -60;
    const auto lf = moe::logit_stats(zf);
    CHECK(lf.mean_logsumexp == Approx((40 + std::log(2.0) - 60 + std::log(2.0)) / 2).epsilon(1e-6));
    CHECK(lf.mean_entropy == Approx(std::log(2.0)).epsilon(1e-6));
  }
  SECTION("non-finite logits are counted and left out of the means") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    routing.logits << 0, 0, nan, 0, inf, -inf, std::log(3.0), 0;
    const auto rn = moe::health_report(routing);
    CHECK(rn.logits->nonfinite == 3);
    CHECK(rn.logits->skipped_tokens == 2);
    CHECK(rn.logits->mean_logsumexp == Approx((std::log(2.0) + std::log(4.0)) / 2));
    // A lone -inf (which a masked router could produce) is non-finite too, not a zero weight.
    routing.logits << 0, 0, -inf, 0, 0, 0, 0, 0;
    const auto rm = moe::health_report(routing);
    CHECK(rm.logits->nonfinite == 1);
    CHECK(rm.logits->skipped_tokens == 1);
    CHECK(rm.logits->mean_logsumexp == Approx(std::log(2.0)));
  }
}

TEST_CASE("capacity metrics, hand-worked", "[health]") {
  // E = 3, C = 2, k = 2: expert 0 takes tokens 0 and 1 and drops the first choice of tokens 2, 3.
  moe::Routing<double> routing;
  routing.expert_ids.resize(4, 2);
  routing.expert_ids << 0, 1, 0, 1, 0, 2, 0, 2;
  routing.scores = RowMatrix<double>::Constant(4, 3, 1.0 / 3);
  Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> kept(4, 2);
  kept << 1, 1, 1, 1, 0, 1, 0, 1;
  const auto stats = moe::capacity_stats_from_mask(routing.expert_ids, kept, 3, 2);
  CHECK(stats.kept == moe::IndexVector::Constant(3, 2));
  CHECK(stats.dropped == (moe::IndexVector(3) << 2, 0, 0).finished());
  CHECK(stats.token_kept == (moe::IndexVector(4) << 2, 2, 1, 1).finished());
  const auto r = moe::health_report(routing, stats);
  REQUIRE(r.capacity.has_value());
  CHECK(r.capacity->drop_rate == 0.25);
  CHECK(r.capacity->tokens_left_behind == 0.0);
  CHECK(r.capacity->capacity_utilization == 1.0);
  CHECK(r.capacity->overflowing_experts == 1);
  CHECK(r.hard.load == Eigen::Vector3d(4, 2, 2));  // hard loads are counted before the drop

  SECTION("a token with every choice dropped is left behind") {
    moe::ExpertIdMatrix two(3, 2);
    two << 0, 1, 0, 1, 0, 1;
    Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> m(3, 2);
    m << 1, 1, 1, 1, 0, 0;
    const auto c = moe::capacity_report(moe::capacity_stats_from_mask(two, m, 2, 2), 3, 2, 2);
    CHECK(c.drop_rate == Approx(2.0 / 6));
    CHECK(c.tokens_left_behind == Approx(1.0 / 3));
    CHECK(c.tokens_without_expert == 1);
    CHECK(c.capacity_utilization == 1.0);
    CHECK(c.overflowing_experts == 2);
  }
}

TEMPLATE_TEST_CASE("random inputs against the plain-loop reference", "[health][reference]", float,
                   double) {
  using S = TestType;
  const double tol = std::is_same_v<S, float> ? 2e-5 : 1e-10;
  struct Shape {
    Index t, e, k;
    double scale;
    bool quantize;
  };
  const Shape shapes[] = {{1, 1, 1, 1, false},   {7, 3, 2, 1, false},   {300, 64, 8, 2, false},
                          {257, 16, 4, 1, true}, {1000, 8, 8, 3, true}, {130, 5, 1, 0.1, false}};
  std::uint64_t seed = 1;
  for (const auto& s : shapes) {
    CAPTURE(s.t, s.e, s.k, s.quantize);
    const RowMatrix<S> z = random_logits<S>(s.t, s.e, seed++, s.scale, s.quantize);
    const RowMatrix<S> p = softmax_rows(z);
    const auto pr = moe::test::to_ref(p);
    const auto topk = moe::test::ref_topk(pr, static_cast<std::size_t>(s.k));
    moe::Routing<S> routing;
    routing.scores = p;
    routing.logits = z;
    routing.expert_ids.resize(s.t, s.k);
    for (Index t = 0; t < s.t; ++t)
      for (Index j = 0; j < s.k; ++j) routing.expert_ids(t, j) = topk[t][j];

    const auto from_probs = moe::health_report(p, s.k, selection_on());
    const auto r = moe::health_report(routing, selection_on());
    const auto soft = moe::test::ref_soft_load(pr, static_cast<std::size_t>(s.e));
    const auto hard = moe::test::ref_hard_load(topk, static_cast<std::size_t>(s.e));
    const double t = static_cast<double>(s.t), e = static_cast<double>(s.e);
    for (const auto* rep : {&from_probs, &r}) {
      check_load(rep->soft, soft, t / e, tol);
      check_load(rep->hard, hard, t * s.k / e, 1e-12);
      const auto tok = moe::test::ref_tokens(pr);
      CHECK(rep->mean_token_entropy == Approx(tok.mean_entropy).epsilon(tol).margin(tol));
      CHECK(rep->mean_top1 == Approx(tok.mean_top1).epsilon(tol));
      CHECK(rep->normalized_entropy ==
            Approx(moe::test::ref_normalized_entropy(soft)).epsilon(tol));
    }
    // 0.2.0's fields: thresholds, entropies, the mean distribution, margins, bf16 flips.
    const auto margins = moe::test::ref_margins(pr, static_cast<std::size_t>(s.k));
    const auto flips =
        moe::test::ref_bf16_flips(moe::test::to_ref(z), static_cast<std::size_t>(s.k));
    for (const auto* rep : {&from_probs, &r}) {
      CHECK(rep->soft.hot_threshold == Approx(1.25 * t / e));
      CHECK(rep->soft.cold_threshold == Approx(0.1 * t / e));
      CHECK(rep->hard.hot_threshold == Approx(1.25 * t * s.k / e));
      CHECK(rep->hard.cold_threshold == Approx(0.1 * t * s.k / e));
      CHECK(rep->soft.entropy == Approx(moe::test::ref_entropy(soft)).epsilon(tol).margin(tol));
      CHECK(rep->hard.entropy == Approx(moe::test::ref_entropy(hard)).epsilon(1e-12));
      REQUIRE(rep->mean_distribution.size() == s.e);
      for (Index x = 0; x < s.e; ++x)
        CHECK(rep->mean_distribution[x] == Approx(soft[x] / t).epsilon(tol).margin(tol));
      CHECK(rep->margins.tokens == static_cast<Index>(margins.size()));
      if (margins.empty()) {
        CHECK(std::isnan(rep->margins.p50));
        continue;
      }
      CHECK(rep->margins.p1 == Approx(moe::test::ref_percentile(margins, 1)).margin(1e-15));
      CHECK(rep->margins.p10 == Approx(moe::test::ref_percentile(margins, 10)).margin(1e-15));
      CHECK(rep->margins.p50 == Approx(moe::test::ref_percentile(margins, 50)).margin(1e-15));
    }
    REQUIRE(r.stability.has_value());
    CHECK_FALSE(from_probs.stability.has_value());
    CHECK(r.stability->tokens == flips.tokens);
    CHECK(r.stability->flipped_tokens == flips.flipped_tokens);
    CHECK(r.stability->flipped_choices == flips.flipped_choices);
    const auto unhinted = moe::bf16_stability(z, s.k);
    CHECK(unhinted.flipped_tokens == flips.flipped_tokens);
    CHECK(unhinted.flipped_choices == flips.flipped_choices);
    if (s.t == 300) CHECK(flips.flipped_tokens > 0);  // the case exercises a flip

    const auto lg = moe::test::ref_logits(moe::test::to_ref(z));
    REQUIRE(r.logits.has_value());
    CHECK(r.logits->mean_logsumexp == Approx(lg.mean_lse).epsilon(tol).margin(tol));
    CHECK(r.logits->mean_squared_logsumexp == Approx(lg.mean_lse2).epsilon(tol).margin(tol));
  }
}

TEST_CASE("thresholds, entropies, mean distribution and top-k margins, hand-worked",
          "[health][seeds]") {
  // seed_probs: column sums [4, 2.5, 1.4, 0.1] over T = 8; top-1 ids 0,0,0,0,0,1,1,1 (ties to the
  // lower index) give hard loads [5, 3, 0, 0].
  const RowMatrix<double> p = seed_probs();
  const auto r = moe::health_report(p, 1, selection_on());
  CHECK(r.soft.hot_threshold == 2.5);   // 1.25 * 8 / 4
  CHECK(r.soft.cold_threshold == 0.2);  // 0.1 * 8 / 4
  CHECK(r.hard.hot_threshold == 2.5);   // 1.25 * 8 * 1 / 4
  CHECK(r.hard.cold_threshold == 0.2);
  CHECK(r.mean_distribution.isApprox(Eigen::Vector4d(0.5, 0.3125, 0.175, 0.0125), 1e-15));
  // -(.5 ln .5 + .3125 ln .3125 + .175 ln .175 + .0125 ln .0125) and -(5/8 ln 5/8 + 3/8 ln 3/8)
  CHECK(r.soft.entropy == Approx(1.0698531796629305).epsilon(1e-14));
  CHECK(r.hard.entropy == Approx(0.6615632381579821).epsilon(1e-14));
  CHECK(r.soft.entropy == Approx(r.normalized_entropy * std::log(4.0)).epsilon(1e-14));
  // k = 1 margins s(1) - s(2) per row: 1 1 1 0 0 0 .1 0 -> sorted 0 0 0 0 .1 1 1 1:
  // p1 (h = 0.07) and p10 (h = 0.7) are 0, p50 (h = 3.5) is (0 + .1) / 2.
  CHECK(r.margins.tokens == 8);
  CHECK(r.margins.p1 == 0.0);
  CHECK(r.margins.p10 == 0.0);
  CHECK(r.margins.p50 == Approx(0.05).epsilon(1e-15));
  // k = 2 margins s(2) - s(3): 0 0 0 .5 .5 .5 .3 .5 -> p50 = .3 + .5 (.5 - .3) = .4.
  const auto two = moe::health_report(p, 2, selection_on());
  CHECK(two.margins.p50 == Approx(0.4).epsilon(1e-15));
  CHECK(two.margins.p10 == 0.0);
  CHECK(two.hard.hot_threshold == 5.0);  // 1.25 * 8 * 2 / 4
  // The router's own ids as the hint give the same margins; ids that are not the top-k (a bias
  // chose them) are ranked again: margins never depend on which ids were given.
  moe::ExpertIdMatrix ids = moe::ExpertIdMatrix::Zero(8, 1);
  ids(7, 0) = 3;  // not the top-1 of row 7
  const auto hinted = moe::health_report(p, ids, selection_on());
  CHECK(hinted.margins.p50 == r.margins.p50);
  CHECK(moe::topk_margins(p, 1).p50 == r.margins.p50);
  // Percentiles over one and two tokens: margins .2 and .8 give p50 = .5, p10 = .2 + .1 (.6),
  // p1 = .2 + .01 (.6), numpy's linear rule.
  RowMatrix<double> few(2, 3);
  few << .5, .3, .2,  //
      .9, .1, 0;
  const auto single = moe::topk_margins(few.topRows(1), 1);
  CHECK(single.tokens == 1);
  CHECK(single.p1 == Approx(0.2).epsilon(1e-15));
  CHECK(single.p50 == Approx(0.2).epsilon(1e-15));
  const auto pair = moe::topk_margins(few, 1);
  CHECK(pair.p50 == Approx(0.5).epsilon(1e-15));
  CHECK(pair.p10 == Approx(0.26).epsilon(1e-14));
  CHECK(pair.p1 == Approx(0.206).epsilon(1e-14));
  // selection_metrics off (the default) leaves the margins and the stability out.
  CHECK(std::isnan(moe::health_report(p, 1).margins.p50));
  CHECK(moe::health_report(p, 1).margins.tokens == 0);
}

TEST_CASE("bfloat16 stability, hand-worked", "[health][bf16]") {
  // bfloat16 keeps 8 significant bits: near 1 the spacing is 2^-7 = 0.0078125.
  CHECK(moe::round_to_bfloat16(1.00390625f) == 1.0f);       // 1 + 2^-8: a tie, to even 1.0
  CHECK(moe::round_to_bfloat16(1.01171875f) == 1.015625f);  // 1 + 3 2^-8: a tie, to even
  CHECK(moe::round_to_bfloat16(1.005f) == 1.0078125f);
  CHECK(moe::round_to_bfloat16(-1.005f) == -1.0078125f);
  constexpr float max_float = std::numeric_limits<float>::max();
  CHECK(moe::round_to_bfloat16(max_float) == std::numeric_limits<float>::infinity());
  CHECK(moe::round_to_bfloat16(-max_float) == -std::numeric_limits<float>::infinity());
  CHECK(moe::round_to_bfloat16(3.3895314e38f) == 3.3895314e38f);  // the largest bfloat16
  CHECK(moe::round_to_bfloat16(1e300) == std::numeric_limits<float>::infinity());  // via float
  CHECK(std::isnan(moe::round_to_bfloat16(std::numeric_limits<float>::quiet_NaN())));

  // k = 1: row 0 flips (1 + 2^-8 rounds onto 1, and the tie goes to expert 0), row 1 does not
  // (1.005 rounds up), row 2 flips from expert 2 to 1; k = 2 below: {0, 2} becomes {0, 1}.
  RowMatrix<float> z(4, 4);
  z << 1.0f, 1.00390625f, 0.5f, 0.0f,  //
      1.0f, 1.005f, 0.5f, 0.0f,        //
      0.5f, 1.0f, 1.00390625f, 0.0f,   //
      3.0f, 1.0f, 1.00390625f, 0.5f;
  const auto one = moe::bf16_stability(z, 1);
  CHECK(one.tokens == 4);
  CHECK(one.flipped_tokens == 2);
  CHECK(one.flipped_choices == 2);
  // k = 2: rows 0 and 1 keep {0, 1}, row 2 keeps {1, 2} (its order changes, its set does not),
  // row 3's {0, 2} becomes {0, 1}.
  const auto two = moe::bf16_stability(z, 2);
  CHECK(two.flipped_tokens == 1);
  CHECK(two.flipped_choices == 1);
  CHECK(moe::bf16_stability(z.middleRows(3, 1), 2).flipped_tokens == 1);
  CHECK(moe::bf16_stability(z, 4).flipped_tokens == 0);  // k = E: nothing left out to swap in

  // Through a report, with the router's ids (the logits' own top-1) as the hint.
  moe::Routing<float> routing;
  routing.logits = z;
  routing.scores = softmax_rows(z);
  routing.expert_ids.resize(4, 1);
  routing.expert_ids << 1, 1, 2, 0;
  CHECK_FALSE(moe::health_report(routing).stability.has_value());  // off by default
  const auto r = moe::health_report(routing, selection_on());
  REQUIRE(r.stability.has_value());
  CHECK(r.stability->flipped_tokens == 2);
  CHECK(r.stability->tokens == 4);

  // Overflow to infinity is a rounding too: FLT_MAX and the float below it both become +inf,
  // and the tie goes to the lower index.
  RowMatrix<float> top(2, 3);
  const float below = std::nextafter(max_float, 0.0f);
  top << max_float, below, 0.0f,  //
      below, max_float, 0.0f;
  const auto o = moe::bf16_stability(top, 1);
  CHECK(o.flipped_tokens == 1);  // the second row: expert 1 -> expert 0
  // Rows holding a non-finite logit are left out.
  top(0, 2) = std::numeric_limits<float>::quiet_NaN();
  CHECK(moe::bf16_stability(top, 1).tokens == 1);
}

TEST_CASE("tensors: rank 2 and rank 3 in both storage orders match the matrix path",
          "[health][tensor]") {
  const Index L = 3, T = 150, E = 6, k = 2;
  std::vector<RowMatrix<float>> layers;
  for (Index l = 0; l < L; ++l)
    layers.push_back(softmax_rows(random_logits<float>(T, E, 40 + l, 1.5 * (l + 1), false)));

  Eigen::Tensor<float, 3, Eigen::RowMajor> row_major(L, T, E);
  Eigen::Tensor<float, 3, Eigen::ColMajor> col_major(L, T, E);
  for (Index l = 0; l < L; ++l)
    for (Index t = 0; t < T; ++t)
      for (Index e = 0; e < E; ++e) row_major(l, t, e) = col_major(l, t, e) = layers[l](t, e);

  const auto check_same = [](const moe::HealthReport& a, const moe::HealthReport& b) {
    CHECK(a.soft.load.isApprox(b.soft.load, 1e-6));
    CHECK(a.hard.load == b.hard.load);
    CHECK(a.normalized_entropy == Approx(b.normalized_entropy).epsilon(1e-6));
    CHECK(a.mean_token_entropy == Approx(b.mean_token_entropy).epsilon(1e-6));
    CHECK(a.mean_top1 == Approx(b.mean_top1).epsilon(1e-6));
  };
  const auto from_rows = moe::health_reports(row_major, k);
  const auto from_cols = moe::health_reports(col_major, k);
  const Eigen::TensorMap<const Eigen::Tensor<float, 3, Eigen::RowMajor>> mapped(row_major.data(), L,
                                                                                T, E);
  const auto from_map = moe::health_reports(mapped, k);
  REQUIRE(from_rows.size() == static_cast<std::size_t>(L));
  REQUIRE(from_cols.size() == static_cast<std::size_t>(L));
  for (Index l = 0; l < L; ++l) {
    const auto expected = moe::health_report(layers[l], k);
    check_same(from_rows[l], expected);
    check_same(from_cols[l], expected);
    check_same(from_map[l], expected);

    Eigen::Tensor<float, 2, Eigen::ColMajor> t2(T, E);
    for (Index t = 0; t < T; ++t)
      for (Index e = 0; e < E; ++e) t2(t, e) = layers[l](t, e);
    check_same(moe::health_report(t2, k), expected);
    const Eigen::TensorMap<Eigen::Tensor<float, 2, Eigen::RowMajor>> m2(layers[l].data(), T, E);
    check_same(moe::health_report(m2, k), expected);
  }
}

TEST_CASE("edge cases: no tokens, one expert, k = E, huge logits, non-finite probabilities",
          "[health]") {
  SECTION("T = 0") {
    const RowMatrix<double> p(0, 4);
    const auto r = moe::health_report(p, 2, selection_on());
    CHECK(r.soft.load.isZero());
    CHECK(r.hard.load.isZero());
    CHECK(r.soft.variance == 0.0);
    CHECK(std::isnan(r.hard.cv));
    CHECK(std::isnan(r.hard.max_vio));
    CHECK(std::isnan(r.mean_top1));
    CHECK(std::isnan(r.normalized_entropy));
    CHECK(r.hard.hot.empty());
    CHECK(r.hard.cold.empty());
    // 0.2.0's fields: means over no token are NaN, counts are 0, thresholds are 0.
    REQUIRE(r.mean_distribution.size() == 4);
    CHECK(r.mean_distribution.array().isNaN().all());
    CHECK(std::isnan(r.soft.entropy));
    CHECK(std::isnan(r.hard.entropy));
    CHECK(r.hard.hot_threshold == 0.0);
    CHECK(r.margins.tokens == 0);
    CHECK(std::isnan(r.margins.p1));
    moe::Routing<double> empty;
    empty.scores = p;
    empty.logits = p;
    empty.expert_ids.resize(0, 2);
    // [0, E] logits are empty, which a Routing reads as "no logits": no stability either.
    CHECK_FALSE(moe::health_report(empty, selection_on()).stability.has_value());
    const auto e = moe::bf16_stability(p, 2);
    CHECK(e.tokens == 0);
    CHECK(e.flipped_tokens == 0);
  }
  SECTION("E = 1, k = E") {
    const RowMatrix<float> p = RowMatrix<float>::Ones(9, 1);
    const auto r = moe::health_report(p, 1, selection_on());
    CHECK(r.normalized_entropy == 1.0);
    CHECK(r.mean_token_entropy == 0.0);
    CHECK(r.hard.load[0] == 9.0);
    CHECK(r.hard.cv == 0.0);
    CHECK(r.soft.entropy == 0.0);
    CHECK(r.hard.entropy == 0.0);
    CHECK(r.mean_distribution == Eigen::VectorXd::Ones(1));
    CHECK(r.margins.tokens == 0);  // k = E: no margin
    CHECK(std::isnan(r.margins.p50));
    CHECK(moe::bf16_stability(p, 1).flipped_tokens == 0);
  }
  SECTION("k = E counts every expert once per token") {
    const RowMatrix<float> p = softmax_rows(random_logits<float>(33, 5, 9, 1, false));
    const auto r = moe::health_report(p, 5, selection_on());
    CHECK(r.hard.load == Eigen::VectorXd::Constant(5, 33));
    CHECK(r.hard.entropy == Approx(std::log(5.0)).epsilon(1e-15));
    CHECK(r.margins.tokens == 0);
    CHECK(std::isnan(r.margins.p10));
  }
  SECTION("huge logits stay finite") {
    moe::Routing<float> routing;
    routing.logits = RowMatrix<float>::Constant(3, 4, 3e4f);
    routing.scores = RowMatrix<float>::Constant(3, 4, 0.25f);
    routing.expert_ids = moe::ExpertIdMatrix::Zero(3, 1);
    const auto r = moe::health_report(routing, selection_on());
    CHECK(r.logits->mean_logsumexp == Approx(3e4 + std::log(4.0)));
    CHECK(r.stability->flipped_tokens == 0);  // equal logits: the tie rule decides both ways
    CHECK(r.margins.p50 == 0.0);
  }
  SECTION("rows with a non-finite probability are skipped and counted") {
    RowMatrix<double> p = seed_probs();
    p(2, 1) = std::numeric_limits<double>::quiet_NaN();
    p(5, 3) = std::numeric_limits<double>::infinity();
    const auto r = moe::health_report(p, 1);
    CHECK(r.skipped_tokens == 2);
    const auto ref = moe::test::ref_soft_load(moe::test::to_ref(p), 4);
    CHECK(r.soft.load.isApprox(Eigen::Map<const Eigen::VectorXd>(ref.data(), 4)));
    CHECK(r.mean_top1 == Approx(moe::test::ref_tokens(moe::test::to_ref(p)).mean_top1));
    // -inf is skipped as non-finite, not rejected as negative.
    p(6, 0) = -std::numeric_limits<double>::infinity();
    CHECK(moe::health_report(p, 1).skipped_tokens == 3);
  }
}

TEST_CASE("same bits at any thread count", "[health][determinism]") {
  moe::Routing<float> routing;
  routing.logits = random_logits<float>(3000, 64, 77, 3, false);
  routing.scores = softmax_rows(routing.logits);
  routing.expert_ids = moe::ExpertIdMatrix::Zero(3000, 1);
  const auto report_at = [&](int threads) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#else
    (void)threads;  // built without OpenMP: one thread, and the same call twice
#endif
    return moe::health_report(routing, selection_on());
  };
  const auto a = report_at(1), b = report_at(2);
  CHECK(a.soft.load == b.soft.load);  // exact, not approximate
  CHECK(a.mean_top1 == b.mean_top1);
  CHECK(a.normalized_entropy == b.normalized_entropy);
  CHECK(a.mean_token_entropy == b.mean_token_entropy);
  CHECK(a.logits->mean_logsumexp == b.logits->mean_logsumexp);
  CHECK(a.margins.p1 == b.margins.p1);
  CHECK(a.margins.p50 == b.margins.p50);
  CHECK(a.stability->flipped_choices == b.stability->flipped_choices);
}

TEST_CASE("health skips unused slots (adaptive k) and reports the experts a token used",
          "[health][adaptive_k]") {
  // By hand: T = 3, E = 2, k = 2; token 2 routed nowhere.
  moe::ExpertIdMatrix ids(3, 2);
  ids << 0, moe::kUnusedSlot, 1, 0, moe::kUnusedSlot, moe::kUnusedSlot;
  Eigen::MatrixXd p(3, 2);
  p << 0.7, 0.3, 0.4, 0.6, 0.5, 0.5;
  const moe::HealthReport r = moe::health_report(p, ids);
  CHECK(r.hard.load == Eigen::Vector2d(2, 1));
  CHECK(r.unused_slots == 3);
  CHECK(r.active_experts_per_token == 1.0);
  CHECK(r.hard.average_load == 1.5);  // T / E * the routed choices per token

  // Capacity C = 2: token 0's expert 0 kept, token 1's expert 1 dropped and expert 0 kept.
  moe::ExpertIdMatrix kept(3, 2);
  kept << 1, 0, 0, 1, 0, 0;
  const moe::CapacityStats stats = moe::capacity_stats_from_mask(ids, kept, 2, 2);
  CHECK(stats.token_routed == (moe::IndexVector(3) << 1, 2, 0).finished());
  CHECK(moe::capacity_stats_from_mask(moe::ExpertIdMatrix::Zero(3, 1), kept.leftCols(1), 2, 3)
            .token_routed.size() == 0);  // no unused slot: every token routes k
  const moe::CapacityReport c = moe::capacity_report(stats, 3, 2, 2);
  CHECK(c.kept == (moe::IndexVector(2) << 2, 0).finished());
  CHECK(c.dropped == (moe::IndexVector(2) << 0, 1).finished());
  CHECK(c.drop_rate == 1.0 / 3.0);      // over the 3 routed choices, not T k = 6
  CHECK(c.tokens_without_expert == 0);  // token 2 chose no expert: not left behind
}
