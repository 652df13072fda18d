// The bf16 dropless FFN (moe/experts/bf16_dropless_ffn.hpp): the forward against the per-token
// double reference on the float weights, within a bound built from the bf16 and float unit
// roundoffs, the depths of the sums and the activation's derivatives; the backward stage by stage
// against plain loops (bit for bit) and as a whole near the float backward; the same bits at 1 and
// 2 threads and from float or bf16 token rows; refresh() after a weight update; bad input.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "moe/experts/bf16_dropless_ffn.hpp"
#include "support/bf16_reference.hpp"
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

  // Backward: the training copies, a context its forward filled and saved, the forward's plan.
  const Bf16ExpertWeights training(p.weights, Bf16Copies::training);
  ExpertGradients<float> grads;
  RowMatrix<float> grad_x(10, 16), grad_gates(10, 2);
  Bf16FFNContext fresh;
  CHECK_THROWS_WITH(dropless_ffn_backward(training, p.x, plan, fresh, grads, grad_x, grad_gates),
                    Contains("ctx") && Contains("an empty context"));
  dropless_ffn_forward(weights, p.x, p.gates, plan, ctx, out);
  CHECK_THROWS_WITH(dropless_ffn_backward(weights, p.x, plan, ctx, grads, grad_x, grad_gates),
                    Contains("Bf16Copies::training") && Contains("forward copies only"));
  Bf16FFNContext unsaved;
  unsaved.save_for_backward = false;
  dropless_ffn_forward(training, p.x, p.gates, plan, unsaved, out);
  CHECK_THROWS_WITH(dropless_ffn_backward(training, p.x, plan, unsaved, grads, grad_x, grad_gates),
                    Contains("save_for_backward = false"));
  const DroplessPlan fewer = make_dropless_plan(p.ids.topRows(9), 3, 1);
  CHECK_THROWS_WITH(dropless_ffn_backward(training, p.x, fewer, ctx, grads, grad_x, grad_gates),
                    Contains("plan") && Contains("another shape"));
  RowMatrix<float> bad_grad = p.x;
  bad_grad(0, 0) = std::nanf("");
  CHECK_THROWS_WITH(dropless_ffn_backward(training, bad_grad, plan, ctx, grads, grad_x, grad_gates),
                    Contains("grad_out") && Contains("row 0, column 0"));
  CHECK_NOTHROW(dropless_ffn_backward(training, p.x, plan, ctx, grads, grad_x, grad_gates));
}

TEST_CASE("bf16 dropless FFN backward: every stage the plain loops' bits, near the float gradients",
          "[dropless][ffn][bf16][gradient]") {
  for (const Activation activation : {Activation::swiglu, Activation::gelu}) {
    const bool gated = is_gated(activation), bias = gated;
    INFO("activation " << to_string(activation));
    // d > 256 (dA's depth spans two blocks), ~270 rows per expert (the weight gradients' too).
    const Index experts = 3, d = 260, f = 100, tokens = 400, k = 2;
    const Bf16Problem p = bf16_problem(activation, bias, experts, d, f, tokens, k, 21);
    const DroplessPlan plan = make_dropless_plan(p.ids, experts, 4);
    const Bf16ExpertWeights weights(p.weights, Bf16Copies::training);
    RowMatrix<float> grad_out(tokens, d);
    std::mt19937 gen(5);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (Index i = 0; i < grad_out.size(); ++i) grad_out.data()[i] = normal(gen);
    Bf16FFNContext ctx;
    RowMatrix<float> out(tokens, d), grad_x(tokens, d), grad_gates(tokens, k);
    ExpertGradients<float> grads;
    dropless_ffn_forward(weights, p.x, p.gates, plan, ctx, out);
    dropless_ffn_backward(weights, grad_out, plan, ctx, grads, grad_x, grad_gates);

    // The forward's saved values it starts from (the forward has its own test).
    const Index rows = plan.padded_rows();
    const RowMatrix<float> h1 = ctx.workspace.matrix<float>(Bf16FFNContext::kH1, rows, f);
    const RowMatrix<float> h3 =
        ctx.workspace.matrix<float>(Bf16FFNContext::kH3, gated ? rows : 0, gated ? f : 0);
    const RowMatrix<bf16> a16 = ctx.workspace.matrix<bf16>(Bf16FFNContext::kA16, rows, f);
    const RowMatrix<float> y = ctx.expert_outputs(d);
    const RowMatrix<bf16> x16 = test::rounded(p.x);

    ExpertGradients<float> want(p.weights.config);
    RowMatrix<float> dx(rows, d);
    for (Index e = 0; e < experts; ++e) {
      const Index r0 = plan.padded_offsets[e], n = plan.tokens_per_expert[e];
      // dY = bf16(g grad_out) and the expert's token rows, in plan order.
      RowMatrix<float> dy(n, d);
      RowMatrix<bf16> x_rows(n, d);
      for (Index i = 0; i < n; ++i) {
        const Index pair = plan.sorted_pairs[plan.offsets[e] + i], t = pair / k;
        dy.row(i) = p.gates(t, pair % k) * grad_out.row(t);
        x_rows.row(i) = x16.row(t);
      }
      const RowMatrix<bf16> dy16 = test::rounded(dy);
      const auto transpose16 = [](const auto& m) {
        return test::rounded(RowMatrix<float>(m.transpose()));
      };
      const RowMatrix<float> zero_nf = RowMatrix<float>::Zero(n, f),
                             zero_nd = RowMatrix<float>::Zero(n, d);
      // dA = dY W2^T, through the activation in float.
      RowMatrix<float> dh1 = test::reference_bf16_product(
          dy16, transpose16(p.weights.w2.middleRows(e * f, f)), zero_nf, false);
      RowMatrix<float> dh3(gated ? n : 0, gated ? f : 0);
      if (gated)
        activation_backward(activation, p.weights.config.swiglu_limit, h1.middleRows(r0, n),
                            h3.middleRows(r0, n), dh1, dh3);
      else
        activation_backward(activation, p.weights.config.swiglu_limit, h1.middleRows(r0, n), dh1,
                            dh1, dh1);
      const RowMatrix<bf16> dh16 = test::rounded(dh1), dh316 = test::rounded(dh3);
      // dX = dH1 W1^T + dH3 W3^T.
      RowMatrix<float> dx_e = test::reference_bf16_product(
          dh16, transpose16(p.weights.w1.middleRows(e * d, d)), zero_nd, false);
      if (gated)
        dx_e = test::reference_bf16_product(dh316, transpose16(p.weights.w3.middleRows(e * d, d)),
                                            dx_e, true);
      dx.middleRows(r0, n) = dx_e;
      // dW2 = A^T dY, dW1 = X^T dH1, dW3 = X^T dH3, over the expert's rows in plan order.
      const RowMatrix<bf16> a_t = a16.middleRows(r0, n).transpose(), x_t = x_rows.transpose();
      want.w2.middleRows(e * f, f) =
          test::reference_bf16_product(a_t, dy16, RowMatrix<float>::Zero(f, d), false);
      want.w1.middleRows(e * d, d) =
          test::reference_bf16_product(x_t, dh16, RowMatrix<float>::Zero(d, f), false);
      if (gated)
        want.w3.middleRows(e * d, d) =
            test::reference_bf16_product(x_t, dh316, RowMatrix<float>::Zero(d, f), false);
      if (bias) {  // float sums over the rows in order
        want.b2.row(e).setZero();
        want.b1.row(e).setZero();
        want.b3.row(e).setZero();
        for (Index i = 0; i < n; ++i) {
          want.b2.row(e) += dy.row(i);
          want.b1.row(e) += dh1.row(i);
          want.b3.row(e) += dh3.row(i);
        }
      }
    }
    CHECK((grads.w1.array() == want.w1.array()).all());
    CHECK((grads.w2.array() == want.w2.array()).all());
    CHECK((grads.w3.array() == want.w3.array()).all());
    CHECK((grads.b1.array() == want.b1.array()).all());
    CHECK((grads.b2.array() == want.b2.array()).all());
    CHECK((grads.b3.array() == want.b3.array()).all());
    // grad_x[t] = sum_j dX[row(t, j)] in order of j; grad_gates(t, j) = <y[row], grad_out[t]> in
    // float, within gamma_d of the exact dot product.
    const double uf = std::ldexp(1.0, -24);
    for (Index t = 0; t < tokens; ++t) {
      RowMatrix<float> sum = RowMatrix<float>::Zero(1, d);
      for (Index j = 0; j < k; ++j) {
        const Index r = plan.pair_row[t * k + j];
        sum += dx.row(r);
        double dot = 0, magnitude = 0;
        for (Index q = 0; q < d; ++q) {
          dot += static_cast<double>(y(r, q)) * grad_out(t, q);
          magnitude += std::fabs(static_cast<double>(y(r, q)) * grad_out(t, q));
        }
        REQUIRE(std::fabs(grad_gates(t, j) - dot) <= d * uf / (1 - d * uf) * magnitude);
      }
      REQUIRE((grad_x.row(t).array() == sum.array()).all());
    }

    // As a whole, near the float backward's gradients: each operand of a product carries a relative
    // rounding of at most 2^-8, so a gradient's relative (Frobenius) error is a few 2^-8.
    DroplessFFNContext<float> float_ctx;
    RowMatrix<float> float_out(tokens, d), float_gx(tokens, d), float_gg(tokens, k);
    ExpertGradients<float> float_grads;
    dropless_ffn_forward<float>(p.weights, p.x, p.gates, plan, float_ctx, float_out);
    dropless_ffn_backward<float>(p.weights, grad_out, plan, float_ctx, float_grads, float_gx,
                                 float_gg);
    const auto relative = [](const auto& ours, const auto& exact) {
      return (ours - exact).norm() / exact.norm();
    };
    const double bound = 8 * std::ldexp(1.0, -8);
    CHECK(relative(grads.w1, float_grads.w1) < bound);
    CHECK(relative(grads.w2, float_grads.w2) < bound);
    CHECK(relative(grad_x, float_gx) < bound);
    CHECK(relative(grad_gates, float_gg) < bound);
    CHECK(relative(out, float_out) < bound);
    INFO("relative to float: w1 " << relative(grads.w1, float_grads.w1) << " grad_x "
                                  << relative(grad_x, float_gx));
    CHECK(relative(grads.w1, float_grads.w1) > 0);
  }
}
