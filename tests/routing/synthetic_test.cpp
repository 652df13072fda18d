// Synthetic routing (moe/routing/synthetic.hpp): k distinct experts per row, exact counts where the
// distribution is deterministic, frequencies against the analytic probabilities, determinism from
// the seed, and a Routing whose logits, scores and gates a softmax router agrees with. (Bad
// configs: bad_input_test.cpp.)
#include <cmath>
#include <vector>

#include <moe/routing/router.hpp>
#include <moe/routing/synthetic.hpp>

#include "support/catch.hpp"

namespace {

using moe::Index;
using D = moe::SyntheticDistribution;
using moe::SyntheticDraw;

moe::SyntheticRoutingConfig config(D distribution, Index tokens, Index experts, Index k,
                                   SyntheticDraw draw = SyntheticDraw::without_replacement) {
  moe::SyntheticRoutingConfig c;
  c.distribution = distribution;
  c.num_tokens = tokens;
  c.num_experts = experts;
  c.top_k = k;
  c.draw = draw;
  c.zipf_exponent = 1.2;
  c.favoured = {2, 5};
  c.favoured_mass = 0.7;
  c.seed = 11;
  return c;
}

bool rows_distinct(const moe::ExpertIdMatrix& ids, Index experts) {
  for (Index t = 0; t < ids.rows(); ++t)
    for (Index j = 0; j < ids.cols(); ++j) {
      if (ids(t, j) < 0 || ids(t, j) >= experts) return false;
      for (Index i = 0; i < j; ++i)
        if (ids(t, i) == ids(t, j)) return false;
    }
  return true;
}

/// The probabilities written out from the definitions, independently of the header.
std::vector<double> analytic(D distribution, Index experts, double s,
                             const std::vector<int>& favoured, double mass) {
  std::vector<double> p(static_cast<std::size_t>(experts));
  double total = 0;
  for (Index e = 0; e < experts; ++e) {
    double w = 1.0;
    if (distribution == D::zipf) w = 1.0 / std::pow(double(e + 1), s);
    if (distribution == D::biased) {
      bool in = false;
      for (int f : favoured) in = in || f == e;
      w = in ? mass / double(favoured.size()) : (1 - mass) / double(experts - favoured.size());
    }
    total += p[static_cast<std::size_t>(e)] = w;
  }
  for (double& v : p) v /= total;
  return p;
}

/// |f - p| <= 5 sqrt(p (1 - p) / n): a count over n independent draws is Binomial(n, p), and five
/// standard deviations leave a false failure below 6e-7 per check (the seed is fixed, so a
/// passing check stays passing; the bound says how tight the check is).
void check_frequency(double count, double n, double p) {
  CAPTURE(count, n, p);
  CHECK(std::abs(count / n - p) <= 5.0 * std::sqrt(p * (1 - p) / n) + 1e-12);
}

}  // namespace

TEST_CASE("synthetic ids: k distinct experts per row for every distribution and draw",
          "[routing][synthetic]") {
  for (D d : {D::balanced, D::uniform, D::zipf, D::all_to_one, D::biased})
    for (SyntheticDraw draw : {SyntheticDraw::without_replacement, SyntheticDraw::consecutive})
      for (Index k : {1, 3, 8}) {
        CAPTURE(static_cast<int>(d), static_cast<int>(draw), k);
        const auto ids = moe::synthetic_expert_ids(config(d, 257, 8, k, draw));
        REQUIRE(ids.rows() == 257);
        REQUIRE(ids.cols() == k);
        CHECK(rows_distinct(ids, 8));
      }
  // A mass so close to 1 that the second choice of a row is rejected again and again: the
  // fallback draws it from the rest directly, uniformly over the three others.
  auto c = config(D::biased, 30000, 4, 2);
  c.favoured = {0};
  c.favoured_mass = 1.0 - 1e-12;
  const auto ids = moe::synthetic_expert_ids(c);
  CHECK(rows_distinct(ids, 4));
  std::vector<double> second(4, 0.0);
  for (Index t = 0; t < ids.rows(); ++t) {
    CHECK(ids(t, 0) == 0);  // 1 - 1e-12 of the mass: a miss would be a 3e-8 event
    second[static_cast<std::size_t>(ids(t, 1))] += 1;
  }
  for (int e = 1; e < 4; ++e) check_frequency(second[e], 30000, 1.0 / 3);
}

TEST_CASE("balanced gives T k / E per expert, all_to_one experts 0..k-1", "[routing][synthetic]") {
  const Index T = 96, E = 16, k = 6;  // T k = 576 = 36 E
  for (SyntheticDraw draw : {SyntheticDraw::without_replacement, SyntheticDraw::consecutive}) {
    const auto balanced = moe::synthetic_expert_ids(config(D::balanced, T, E, k, draw));
    std::vector<Index> count(E, 0);
    for (Index i = 0; i < balanced.size(); ++i) ++count[balanced.data()[i]];
    for (Index e = 0; e < E; ++e) CHECK(count[e] == T * k / E);
    const auto one = moe::synthetic_expert_ids(config(D::all_to_one, T, E, k, draw));
    for (Index t = 0; t < T; ++t)
      for (Index j = 0; j < k; ++j) CHECK(one(t, j) == j);
  }
}

TEST_CASE("Zipf, uniform and biased frequencies match the analytic probabilities",
          "[routing][synthetic]") {
  const Index T = 40000, E = 8;
  const std::vector<int> favoured = {2, 5};
  for (D d : {D::uniform, D::zipf, D::biased}) {
    CAPTURE(static_cast<int>(d));
    const std::vector<double> p = analytic(d, E, 1.2, favoured, 0.7);
    const Eigen::VectorXd header = moe::synthetic_expert_probabilities(config(d, T, E, 1));
    for (Index e = 0; e < E; ++e) CHECK(header[e] == Approx(p[e]).epsilon(1e-14));

    // The first choice follows p in both draws: T independent draws per expert count.
    for (SyntheticDraw draw : {SyntheticDraw::without_replacement, SyntheticDraw::consecutive}) {
      const auto ids = moe::synthetic_expert_ids(config(d, T, E, 3, draw));
      std::vector<double> first(E, 0.0), any(E, 0.0);
      for (Index t = 0; t < T; ++t) {
        first[ids(t, 0)] += 1;
        for (Index j = 0; j < 3; ++j) any[ids(t, j)] += 1;
      }
      for (Index e = 0; e < E; ++e) check_frequency(first[e], double(T), p[e]);
      // P(e among the k = 3): consecutive takes e when the first is e, e - 1 or e - 2 (mod E);
      // successive sampling, summed over the ordered draws (a, b, c) with e among them.
      for (Index e = 0; e < E; ++e) {
        double in = 0.0;
        if (draw == SyntheticDraw::consecutive) {
          for (Index j = 0; j < 3; ++j) in += p[(e - j + E) % E];
        } else {
          for (Index a = 0; a < E; ++a)
            for (Index b = 0; b < E; ++b)
              for (Index c = 0; c < E; ++c) {
                if (a == b || a == c || b == c || (a != e && b != e && c != e)) continue;
                in += p[a] * p[b] / (1 - p[a]) * p[c] / (1 - p[a] - p[b]);
              }
        }
        check_frequency(any[e], double(T), in);
      }
    }
  }
}

TEST_CASE("synthetic ids are a function of the seed", "[routing][synthetic]") {
  auto c = config(D::zipf, 500, 16, 4);
  const auto a = moe::synthetic_expert_ids(c);
  CHECK(a == moe::synthetic_expert_ids(c));
  CHECK(a ==
        moe::synthetic_expert_ids(c, moe::make_rng(c.seed, moe::RandomStream::synthetic_routing)));
  c.seed = 12;
  CHECK(a != moe::synthetic_expert_ids(c));
  // The routing's ids are the same ids.
  c.seed = 11;
  CHECK(moe::synthetic_routing<float>(c).expert_ids == a);
}

TEST_CASE("a synthetic Routing: logits, scores and gates agree with a softmax router",
          "[routing][synthetic]") {
  for (Index k : {1, 3, 8}) {
    CAPTURE(k);
    auto c = config(D::zipf, 70, 8, k);
    c.logit_gap = 0.75;
    const moe::Routing<double> r = moe::synthetic_routing<double>(c);
    REQUIRE(r.logits.rows() == 70);
    REQUIRE(r.logits.cols() == 8);
    for (Index t = 0; t < 70; ++t) {
      // Logits by definition, softmax by hand, gates = chosen scores over their sum.
      std::vector<double> z(8, -0.75 * double(k));
      for (Index j = 0; j < k; ++j) z[r.expert_ids(t, j)] = -0.75 * double(j);
      double sum = 0;
      for (double v : z) sum += std::exp(v);
      double chosen = 0;
      for (Index j = 0; j < k; ++j) chosen += std::exp(z[r.expert_ids(t, j)]) / sum;
      for (Index e = 0; e < 8; ++e) {
        CHECK(r.logits(t, e) == z[e]);
        CHECK(r.scores(t, e) == Approx(std::exp(z[e]) / sum).epsilon(1e-14));
      }
      for (Index j = 0; j < k; ++j)
        CHECK(r.gates(t, j) ==
              Approx(std::exp(z[r.expert_ids(t, j)]) / sum / chosen).epsilon(1e-14));
    }
    // The router's own selection over these logits: softmax, top-k, renormalized.
    moe::RouterConfig rc;
    rc.num_experts = 8;
    rc.hidden = 1;
    rc.top_k = k;
    rc.renormalize = true;
    moe::Routing<double> routed;
    moe::RowMatrix<double> selection;
    moe::select_experts<double>(rc, r.logits, moe::Vector<double>(), routed, selection);
    CHECK(routed.expert_ids == r.expert_ids);
    CHECK(routed.gates.isApprox(r.gates, 1e-14));
    CHECK(routed.scores.isApprox(r.scores, 1e-14));
  }
}
