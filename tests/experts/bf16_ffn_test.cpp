// The bf16 dropless FFN (moe/experts/bf16_dropless_ffn.hpp): against the per-token double reference
// on the float weights, within a bound built from the bf16 and float unit roundoffs, the depths of
// the sums and the activation's derivatives; the same bits at 1 and 2 threads and from float or
// bf16 token rows; refresh() after a weight update; bad input.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "moe/experts/bf16_dropless_ffn.hpp"
#include "support/catch.hpp"
#include "support/dropless_reference.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace moe;

namespace {

struct Bf16Problem {
  ExpertWeights<float> weights;
  RowMatrix<float> x, gates;
  ExpertIdMatrix ids;
};

Bf16Problem bf16_problem(Activation activation, bool bias, Index experts, Index d, Index f,
                         Index tokens, Index k, unsigned seed) {
  ExpertFFNConfig c;
  c.num_experts = experts;
  c.hidden = d;
  c.ffn_hidden = f;
  c.activation = activation;
  c.bias = bias;
  Bf16Problem p{ExpertWeights<float>(c), RowMatrix<float>(tokens, d), RowMatrix<float>(tokens, k),
                ExpertIdMatrix(tokens, k)};
  p.weights.init_weights(seed, 1.0 / std::sqrt(static_cast<double>(d)));
  if (bias) {  // init_weights draws the biases too; make them visible next to the products
    p.weights.b1 *= 4.0f;
    p.weights.b2 *= 4.0f;
  }
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> gate(0.1f, 1.0f);
  for (Index i = 0; i < p.x.size(); ++i) p.x.data()[i] = normal(gen);
  for (Index i = 0; i < p.gates.size(); ++i) p.gates.data()[i] = gate(gen);
  for (Index t = 0; t < tokens; ++t) {
    std::vector<ExpertId> all(static_cast<std::size_t>(experts));
    for (Index e = 0; e < experts; ++e) all[static_cast<std::size_t>(e)] = static_cast<ExpertId>(e);
    std::shuffle(all.begin(), all.end(), gen);
    for (Index j = 0; j < k; ++j) p.ids(t, j) = all[static_cast<std::size_t>(j)];
  }
  return p;
}

/// out and, per element, the bound |bf16 forward - exact| may reach: the exact FFN in double on the
/// float weights, and the first-order propagation of every rounding the bf16 forward makes.
/// With u_b = 2^-8 (bf16) and u_f = 2^-24 (float), gamma_n = n u_f / (1 - n u_f):
///   h = bf16(x) bf16(W) summed in float: |dh| <= (2 u_b + u_b^2 + gamma_{d+d/256+1}) sum|x w|
///     (+ u_f |h| for the bias added in float);
///   a = bf16(act(h)) in float:           |da| <= |act'| |dh| + 8 u_f |a| (float activation)
///                                                 + u_b (|a| + |da|) (the rounding to bf16);
///   y = a bf16(W2) summed in float:      |dy| <= sum (|da| + (u_b (1+u_b)+ gamma_n)|a|) |w2|
///   out = sum_j g_j y_j in float:        |dout| <= sum g |dy| + gamma_k sum |g y|.
struct Bounded {
  RowMatrix<double> out, bound;
};

Bounded reference_with_bound(const Bf16Problem& p) {
  const ExpertFFNConfig& c = p.weights.config;
  const test::ReferenceActivation act{c.activation, c.swiglu_limit};
  const Index d = c.hidden, f = c.ffn_hidden, k = p.ids.cols();
  const double ub = std::ldexp(1.0, -8), uf = std::ldexp(1.0, -24);
  const auto gamma = [&](double n) { return n * uf / (1 - n * uf); };
  const double operand = 2 * ub + ub * ub;
  const bool gated = is_gated(c.activation);
  Bounded r{RowMatrix<double>::Zero(p.x.rows(), d), RowMatrix<double>::Zero(p.x.rows(), d)};
  std::vector<double> h1(f), h3(f), m1(f), m3(f), a(f), da(f);
  for (Index t = 0; t < p.x.rows(); ++t)
    for (Index j = 0; j < k; ++j) {
      const Index e = p.ids(t, j);
      const double g = p.gates(t, j);
      for (Index col = 0; col < f; ++col) {
        double s1 = c.bias ? p.weights.b1(e, col) : 0,
               s3 = c.bias && gated ? p.weights.b3(e, col) : 0;
        double n1 = 0, n3 = 0;
        for (Index q = 0; q < d; ++q) {
          const double xv = p.x(t, q);
          s1 += xv * p.weights.w1(e * d + q, col);
          n1 += std::fabs(xv * p.weights.w1(e * d + q, col));
          if (gated) {
            s3 += xv * p.weights.w3(e * d + q, col);
            n3 += std::fabs(xv * p.weights.w3(e * d + q, col));
          }
        }
        const double depth_error = operand + gamma(static_cast<double>(d + d / 256 + 2));
        const double dh1 = depth_error * n1 + uf * std::fabs(s1);
        const double dh3 = depth_error * n3 + uf * std::fabs(s3);
        h1[col] = s1;
        h3[col] = s3;
        a[col] = act.value(s1, s3);
        // First order, with the derivative's largest size over [h - dh, h + dh].
        const auto steepest = [&](auto derivative, double h, double dh) {
          return std::max({std::fabs(derivative(h)), std::fabs(derivative(h - dh)),
                           std::fabs(derivative(h + dh))});
        };
        double spread = steepest([&](double v) { return act.d_h1(v, s3); }, s1, dh1) * dh1 +
                        8 * uf * std::fabs(a[col]);
        if (gated) spread += steepest([&](double v) { return act.d_h3(s1, v); }, s3, dh3) * dh3;
        da[col] = spread + ub * (std::fabs(a[col]) + spread);
        (void)m1;
        (void)m3;
      }
      for (Index col = 0; col < d; ++col) {
        double y = c.bias ? p.weights.b2(e, col) : 0, dy = 0, magnitude = 0;
        for (Index q = 0; q < f; ++q) {
          const double w = p.weights.w2(e * f + q, col);
          y += a[q] * w;
          dy +=
              (da[q] + (operand + gamma(static_cast<double>(f + f / 256 + 2))) * std::fabs(a[q])) *
              std::fabs(w);
          magnitude += std::fabs(a[q] * w);
        }
        dy += uf * std::fabs(y) + uf * magnitude;
        r.out(t, col) += g * y;
        r.bound(t, col) += g * dy + gamma(static_cast<double>(k + 1)) * std::fabs(g * y);
      }
    }
  return r;
}

RowMatrix<float> bf16_forward(const Bf16Problem& p, Index block_size = 4) {
  const DroplessPlan plan = make_dropless_plan(p.ids, p.weights.config.num_experts, block_size);
  const Bf16ExpertWeights weights(p.weights);
  Bf16FFNContext ctx;
  RowMatrix<float> out(p.x.rows(), p.weights.config.hidden);
  dropless_ffn_forward(weights, p.x, p.gates, plan, ctx, out);
  return out;
}

}  // namespace

TEST_CASE("bf16 dropless FFN against the double FFN on float weights, within the derived bound",
          "[dropless][ffn][bf16]") {
  struct Case {
    Activation activation;
    bool bias;
    Index experts, d, f, tokens, k;
  };
  // Depths past one block of 256 and odd, widths past one panel of 48 and not a multiple of it.
  for (const Case& s : {Case{Activation::swiglu, false, 4, 300, 130, 40, 2},
                        Case{Activation::swiglu, true, 3, 64, 97, 25, 2},
                        Case{Activation::gelu, true, 5, 129, 520, 30, 3},
                        Case{Activation::relu, false, 2, 17, 48, 9, 1}}) {
    INFO("activation " << to_string(s.activation) << " d " << s.d << " f " << s.f);
    const Bf16Problem p = bf16_problem(s.activation, s.bias, s.experts, s.d, s.f, s.tokens, s.k,
                                       static_cast<unsigned>(s.d + s.f));
    const RowMatrix<float> out = bf16_forward(p);
    const Bounded want = reference_with_bound(p);
    double worst = 0, typical = 0;  // |out - exact| / bound: at most 1
    for (Index i = 0; i < out.size(); ++i) {
      const double error = std::fabs(out.data()[i] - want.out.data()[i]);
      worst = std::max(worst, error / want.bound.data()[i]);
      typical += error / want.bound.data()[i] / static_cast<double>(out.size());
    }
    INFO("worst error / bound " << worst << ", mean " << typical);
    CHECK(worst <= 1.0);
    CHECK(typical > 1e-4);  // the bound is not vacuous: bf16 shows in every result
  }
}

TEST_CASE("bf16 dropless FFN: same bits at 1 and 2 threads, from float or bf16 rows, any padding",
          "[dropless][ffn][bf16][threads]") {
  const Bf16Problem p = bf16_problem(Activation::swiglu, true, 6, 200, 300, 700, 2, 7);
  const RowMatrix<float> one = [&] {
#if defined(_OPENMP)
    omp_set_num_threads(1);
#endif
    return bf16_forward(p);
  }();
#if defined(_OPENMP)
  omp_set_num_threads(2);
#endif
  const RowMatrix<float> two = bf16_forward(p, 64);
  CHECK((one.array() == two.array()).all());
  // Token rows given in bf16 (the rounding the forward makes of float rows) give the same bits.
  RowMatrix<bf16> x16(p.x.rows(), p.x.cols());
  for (Index i = 0; i < x16.size(); ++i) x16.data()[i] = to_bf16(p.x.data()[i]);
  const DroplessPlan plan = make_dropless_plan(p.ids, 6, 1);
  const Bf16ExpertWeights weights(p.weights);
  Bf16FFNContext ctx;
  RowMatrix<float> from_bf16(p.x.rows(), p.x.cols());
  dropless_ffn_forward(weights, x16, p.gates, plan, ctx, from_bf16);
  CHECK((from_bf16.array() == one.array()).all());
}

TEST_CASE("Bf16ExpertWeights::refresh rounds the updated master weights", "[dropless][ffn][bf16]") {
  Bf16Problem p = bf16_problem(Activation::swiglu, false, 3, 50, 60, 20, 2, 9);
  const DroplessPlan plan = make_dropless_plan(p.ids, 3, 1);
  Bf16ExpertWeights weights(p.weights);
  const bf16* w1 = weights.w1(0);
  p.weights.w2 *= 0.5f;  // an optimizer step
  p.weights.w1.array() += 0.01f;
  weights.refresh(p.weights);
  CHECK(weights.w1(0) == w1);  // same shapes: memory kept
  Bf16FFNContext ctx, fresh_ctx;
  RowMatrix<float> refreshed(20, 50), fresh(20, 50);
  dropless_ffn_forward(weights, p.x, p.gates, plan, ctx, refreshed);
  dropless_ffn_forward(Bf16ExpertWeights(p.weights), p.x, p.gates, plan, fresh_ctx, fresh);
  CHECK((refreshed.array() == fresh.array()).all());
  // W1, W3: 2 panels x 25 pairs x 96 values each; W2: 2 panels x 30 pairs x 96; 2 bytes a value.
  CHECK(weights.bytes_per_expert() == (2 * (2 * 25 * 96) + 2 * 30 * 96) * 2u);
}

TEST_CASE("bf16 dropless FFN refuses bad input", "[dropless][ffn][bf16][errors]") {
  const Bf16Problem p = bf16_problem(Activation::swiglu, false, 3, 16, 20, 10, 2, 11);
  const DroplessPlan plan = make_dropless_plan(p.ids, 3, 1);
  const Bf16ExpertWeights weights(p.weights);
  Bf16FFNContext ctx;
  RowMatrix<float> out(10, 16);
  using Catch::Matchers::Contains;
  CHECK_THROWS_WITH(dropless_ffn_forward(Bf16ExpertWeights(), p.x, p.gates, plan, ctx, out),
                    Contains("weights") && Contains("empty Bf16ExpertWeights"));
  const DroplessPlan other = make_dropless_plan(p.ids, 4, 1);
  CHECK_THROWS_WITH(dropless_ffn_forward(weights, p.x, p.gates, other, ctx, out),
                    Contains("plan.num_experts") && Contains("4"));
  CHECK_THROWS_WITH(dropless_ffn_forward(weights, p.x.leftCols(15), p.gates, plan, ctx, out),
                    Contains("x"));
  RowMatrix<float> bad_x = p.x;
  bad_x(3, 4) = std::nanf("");
  CHECK_THROWS_WITH(dropless_ffn_forward(weights, bad_x, p.gates, plan, ctx, out),
                    Contains("x") && Contains("row 3, column 4"));
  RowMatrix<bf16> bad_x16(10, 16);
  for (Index i = 0; i < bad_x16.size(); ++i) bad_x16.data()[i] = to_bf16(1.0f);
  bad_x16(2, 1) = to_bf16(std::numeric_limits<float>::infinity());
  CHECK_THROWS_WITH(dropless_ffn_forward(weights, bad_x16, p.gates, plan, ctx, out),
                    Contains("x") && Contains("row 2, column 1"));
  RowMatrix<float> small_out(10, 15);
  CHECK_THROWS_WITH(dropless_ffn_forward(weights, p.x, p.gates, plan, ctx, small_out),
                    Contains("out"));
  RowMatrix<float> x_and_out = p.x;
  CHECK_THROWS_WITH(dropless_ffn_forward(weights, x_and_out, p.gates, plan, ctx, x_and_out),
                    Contains("out") && Contains("overlap"));
}
