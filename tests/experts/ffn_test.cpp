// Expert FFNs over the dropless plan and over a capacity buffer: against the per-token loop
// reference in double, central finite differences for every parameter, edge cases, bad input and
// bit-identity across thread counts.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "moe/experts/capacity_ffn.hpp"
#include "moe/experts/dropless_ffn.hpp"
#include "support/catch.hpp"
#include "support/dropless_reference.hpp"
#include "support/finite_difference.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace moe;
using moe::test::RowMatrixD;

namespace {

constexpr Activation kActivations[] = {
    Activation::relu,         Activation::gelu,       Activation::gelu_tanh,     Activation::silu,
    Activation::swiglu,       Activation::geglu,      Activation::geglu_tanh,    Activation::reglu,
    Activation::squared_relu, Activation::swiglu_oai, Activation::swiglu_clamped};

RowMatrixD random_matrix(Index rows, Index cols, unsigned seed, double scale = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, scale);
  RowMatrixD m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = normal(gen);
  return m;
}

ExpertIdMatrix random_ids(Index tokens, Index k, Index experts, unsigned seed, double hot = 0.0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u;
  ExpertIdMatrix ids(tokens, k);
  for (Index t = 0; t < tokens; ++t) {
    std::vector<ExpertId> all(static_cast<std::size_t>(experts));
    for (Index e = 0; e < experts; ++e) all[e] = static_cast<ExpertId>(e);
    std::shuffle(all.begin(), all.end(), gen);
    if (u(gen) < hot) std::swap(all[0], *std::find(all.begin(), all.end(), 0));  // expert 0 first
    for (Index j = 0; j < k; ++j) ids(t, j) = all[j];
  }
  return ids;
}

ExpertFFNConfig make_config(Index experts, Index d, Index f, Activation act, bool bias,
                            Index block_cols) {
  ExpertFFNConfig c;
  c.num_experts = experts;
  c.hidden = d;
  c.ffn_hidden = f;
  c.activation = act;
  c.bias = bias;
  c.block_cols = block_cols;
  c.swiglu_limit = 2.0;  // the clamped SwiGLUs' clamps engage on these random inputs
  return c;
}

struct Problem {
  ExpertWeights<double> weights;
  RowMatrixD x, gates, grad_out;
  ExpertIdMatrix ids;
};

Problem make_problem(const ExpertFFNConfig& c, Index tokens, Index k, unsigned seed,
                     double hot = 0.0) {
  Problem p{ExpertWeights<double>(c), random_matrix(tokens, c.hidden, seed),
            random_matrix(tokens, k, seed + 1), random_matrix(tokens, c.hidden, seed + 2),
            random_ids(tokens, k, c.num_experts, seed + 3, hot)};
  p.weights.init_weights(seed + 4, 0.5);
  return p;
}

struct Result {
  RowMatrixD y, grad_x, grad_gates;
  ExpertGradients<double> grads;
};

/// Forward and backward; with `save` off the forward reads token rows in place and backward is
/// given x to group them then.
Result run_dropless(const Problem& p, Index block, bool save = true) {
  const DroplessPlan plan = make_dropless_plan(p.ids, p.weights.config.num_experts, block);
  DroplessFFNContext<double> ctx;
  ctx.save_for_backward = save;
  Result r{RowMatrixD(p.x.rows(), p.x.cols()), RowMatrixD(p.x.rows(), p.x.cols()),
           RowMatrixD(p.gates.rows(), p.gates.cols()), ExpertGradients<double>(p.weights.config)};
  dropless_ffn_forward<double>(p.weights, p.x, p.gates, plan, ctx, r.y);
  if (save)
    dropless_ffn_backward<double>(p.weights, p.grad_out, plan, ctx, r.grads, r.grad_x,
                                  r.grad_gates);
  else
    dropless_ffn_backward<double>(p.weights, p.x, p.grad_out, plan, ctx, r.grads, r.grad_x,
                                  r.grad_gates);
  return r;
}

void require_close(const RowMatrixD& a, const RowMatrixD& b, double tolerance) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  if (a.size() == 0) return;
  INFO("relative error " << test::relative_error(a, b));
  REQUIRE(test::relative_error(a, b) <= tolerance);
}

void require_matches_reference(const Problem& p, const Result& r, double tolerance = 1e-12) {
  require_close(r.y, test::reference_dropless_forward(p.weights, p.x, p.ids, p.gates), tolerance);
  const test::ReferenceGradients g =
      test::reference_dropless_backward(p.weights, p.x, p.ids, p.gates, p.grad_out);
  require_close(r.grad_x, g.x, tolerance);
  require_close(r.grad_gates, g.gates, tolerance);
  require_close(r.grads.w1, g.weights.w1, tolerance);
  require_close(r.grads.w3, g.weights.w3, tolerance);
  require_close(r.grads.w2, g.weights.w2, tolerance);
  require_close(r.grads.b1, g.weights.b1, tolerance);
  require_close(r.grads.b3, g.weights.b3, tolerance);
  require_close(r.grads.b2, g.weights.b2, tolerance);
}

}  // namespace

TEST_CASE("dropless FFN matches the per-token reference for every activation", "[dropless][ffn]") {
  for (Activation act : kActivations)
    for (bool bias : {false, true})
      for (Index block : {1, 4, 128})
        for (bool save : {true, false}) {
          INFO(to_string(act) << " bias " << bias << " block " << block << " save " << save);
          const Problem p = make_problem(make_config(5, 6, 10, act, bias, 4), 29, 2, 100);
          require_matches_reference(p, run_dropless(p, block, save));
        }
}

TEST_CASE("dropless FFN spans many tiles with a hot expert", "[dropless][ffn]") {
  for (Index block : {1, 128})
    for (bool save : {true, false}) {
      INFO("block " << block << " save " << save);
      const Problem p =
          make_problem(make_config(3, 8, 300, Activation::swiglu, true, 128), 700, 2, 7, 0.8);
      require_matches_reference(p, run_dropless(p, block, save));
    }
}

TEST_CASE("a forward that saves nothing reads token rows in place, to the same bits",
          "[dropless][ffn]") {
  // d = 40 and 300 rows per expert: the tile products take the blocked GEMM path, which reads the
  // gathered rows while packing them.
  for (Activation act : {Activation::swiglu, Activation::gelu}) {
    INFO(to_string(act));
    const Problem p = make_problem(make_config(3, 40, 96, act, true, 32), 450, 2, 11, 0.5);
    const Result saved = run_dropless(p, 16, true), in_place = run_dropless(p, 16, false);
    REQUIRE(in_place.y == saved.y);
    REQUIRE(in_place.grad_x == saved.grad_x);
    REQUIRE(in_place.grad_gates == saved.grad_gates);
    REQUIRE(in_place.grads.w1 == saved.grads.w1);
    REQUIRE(in_place.grads.w2 == saved.grads.w2);
    require_matches_reference(p, in_place);
  }
  SECTION("backward without x refuses such a context") {
    const Problem p = make_problem(make_config(3, 4, 6, Activation::swiglu, false, 2), 9, 2, 12);
    const DroplessPlan plan = make_dropless_plan(p.ids, 3, 4);
    DroplessFFNContext<double> ctx;
    ctx.save_for_backward = false;
    RowMatrixD y(9, 4), gx(9, 4), gg(9, 2);
    ExpertGradients<double> grads(p.weights.config);
    dropless_ffn_forward<double>(p.weights, p.x, p.gates, plan, ctx, y);
    // (A BLAS build groups the rows anyway, and then this backward has what it needs.)
    if (kernels::kGemmReadsGatheredRowsInPlace)
      REQUIRE_THROWS_WITH(
          dropless_ffn_backward<double>(p.weights, p.grad_out, plan, ctx, grads, gx, gg),
          Catch::Contains("save_for_backward"));
    REQUIRE_THROWS_WITH(dropless_ffn_backward<double>(p.weights, RowMatrixD(8, 4), p.grad_out, plan,
                                                      ctx, grads, gx, gg),
                        Catch::Contains("x"));
  }
}

TEST_CASE("dropless FFN gradients match central finite differences", "[dropless][ffn][gradient]") {
  for (Activation act : kActivations) {
    INFO(to_string(act));
    Problem p = make_problem(make_config(3, 3, 4, act, true, 2), 5, 2, 200);
    const DroplessPlan plan = make_dropless_plan(p.ids, 3, 2);
    const Result r = run_dropless(p, 2);
    auto loss = [&] {
      DroplessFFNContext<double> ctx;
      const RowMatrixD y = dropless_ffn_forward<double>(p.weights, p.x, p.gates, plan, ctx);
      return y.cwiseProduct(p.grad_out).sum();
    };
    const double tol = 1e-6;
    REQUIRE(test::relative_error(r.grads.w1, test::numerical_gradient(p.weights.w1, loss)) <= tol);
    REQUIRE(test::relative_error(r.grads.w2, test::numerical_gradient(p.weights.w2, loss)) <= tol);
    REQUIRE(test::relative_error(r.grads.b1, test::numerical_gradient(p.weights.b1, loss)) <= tol);
    REQUIRE(test::relative_error(r.grads.b2, test::numerical_gradient(p.weights.b2, loss)) <= tol);
    if (is_gated(act)) {
      REQUIRE(test::relative_error(r.grads.w3, test::numerical_gradient(p.weights.w3, loss)) <=
              tol);
      REQUIRE(test::relative_error(r.grads.b3, test::numerical_gradient(p.weights.b3, loss)) <=
              tol);
    }
    REQUIRE(test::relative_error(r.grad_x, test::numerical_gradient(p.x, loss)) <= tol);
    REQUIRE(test::relative_error(r.grad_gates, test::numerical_gradient(p.gates, loss)) <= tol);
  }
}

TEST_CASE("a dropless plan's topology: its groups, square blocks by default",
          "[dropless][sparse]") {
  // E = 2, groups of 3 and 1 rows padded to B = 2.
  ExpertIdMatrix ids(4, 1);
  ids << 0, 1, 0, 0;
  const DroplessPlan plan = make_dropless_plan(ids, 2, 2);
  const BlockSparseTopology topo = make_topology(plan, 5, 2);
  REQUIRE(topo.group_offsets == (IndexVector(3) << 0, 4, 6).finished());
  REQUIRE(topo.group_rows == (IndexVector(2) << 3, 1).finished());
  REQUIRE(topo.block_rows == 2);
  REQUIRE(topo.block_cols == 2);
  REQUIRE(make_topology(plan, 4).block_cols == 2);  // the plan's block size
  REQUIRE_THROWS_WITH(make_topology(plan, 4, -1), Catch::Contains("block_cols"));
}

TEST_CASE("dropless FFN edge cases", "[dropless][ffn]") {
  SECTION("one expert") {
    const Problem p = make_problem(make_config(1, 4, 6, Activation::gelu, true, 4), 9, 1, 300);
    require_matches_reference(p, run_dropless(p, 4));
  }
  SECTION("an expert with no tokens, and all tokens on one expert") {
    Problem p = make_problem(make_config(4, 4, 6, Activation::swiglu, true, 4), 11, 2, 301);
    for (Index t = 0; t < 11; ++t) {
      p.ids(t, 0) = 1;
      p.ids(t, 1) = t % 2 ? 2 : 3;  // expert 0 gets nothing
    }
    require_matches_reference(p, run_dropless(p, 4));
    const Result r = run_dropless(p, 4);
    REQUIRE(r.grads.w1.topRows(4).isZero(0));
    REQUIRE(r.grads.b2.row(0).isZero(0));
    Problem single = make_problem(make_config(4, 4, 6, Activation::relu, false, 4), 11, 1, 302);
    single.ids.setConstant(3);
    require_matches_reference(single, run_dropless(single, 8));
  }
  SECTION("block larger than any group") {
    const Problem p = make_problem(make_config(3, 4, 5, Activation::silu, true, 3), 7, 2, 303);
    require_matches_reference(p, run_dropless(p, 1000));
  }
  SECTION("no tokens") {
    const Problem p = make_problem(make_config(3, 4, 5, Activation::silu, true, 3), 0, 2, 304);
    const Result r = run_dropless(p, 16);
    REQUIRE(r.y.rows() == 0);
    REQUIRE(r.grads.w1.isZero(0));
    REQUIRE(r.grads.b1.isZero(0));
  }
}

TEST_CASE("dropless FFN in float follows the double reference", "[dropless][ffn]") {
  const Problem p = make_problem(make_config(4, 16, 24, Activation::swiglu, true, 8), 40, 2, 400);
  ExpertWeights<float> wf(p.weights.config);
  wf.w1 = p.weights.w1.cast<float>();
  wf.w3 = p.weights.w3.cast<float>();
  wf.w2 = p.weights.w2.cast<float>();
  wf.b1 = p.weights.b1.cast<float>();
  wf.b3 = p.weights.b3.cast<float>();
  wf.b2 = p.weights.b2.cast<float>();
  const DroplessPlan plan = make_dropless_plan(p.ids, 4, 8);
  DroplessFFNContext<float> ctx;
  const RowMatrix<float> xf = p.x.cast<float>(), gf = p.gates.cast<float>();
  const RowMatrix<float> y = dropless_ffn_forward<float>(wf, xf, gf, plan, ctx);
  REQUIRE(test::relative_error(y.cast<double>(), test::reference_dropless_forward(
                                                     p.weights, p.x, p.ids, p.gates)) <= 1e-5);
}

TEST_CASE("steady state: the workspace stops growing", "[dropless][ffn]") {
  const Problem p = make_problem(make_config(4, 8, 12, Activation::swiglu, true, 4), 50, 2, 500);
  const DroplessPlan plan = make_dropless_plan(p.ids, 4, 8);
  DroplessFFNContext<double> ctx;
  ExpertGradients<double> grads(p.weights.config);
  RowMatrixD y(50, 8), gx(50, 8), gg(50, 2);
  dropless_ffn_forward<double>(p.weights, p.x, p.gates, plan, ctx, y);
  dropless_ffn_backward<double>(p.weights, p.grad_out, plan, ctx, grads, gx, gg);
  const std::size_t grown = ctx.workspace.capacity_bytes();
  const RowMatrixD y0 = y, gx0 = gx, gw1 = grads.w1;
  const Index rows = plan.padded_rows();
  for (int step = 0; step < 3; ++step) {
    // Poison every buffer, padding rows included: nothing may read a row it did not write.
    for (std::size_t slot = 0; slot < detail::kFirstFreeSlot; ++slot) {
      const bool token_width =
          slot == detail::kX || slot == detail::kY || slot == detail::kDY || slot == detail::kDX;
      ctx.workspace.matrix<double>(slot, rows, token_width ? 8 : 12).setConstant(std::nan(""));
    }
    dropless_ffn_forward<double>(p.weights, p.x, p.gates, plan, ctx, y);
    dropless_ffn_backward<double>(p.weights, p.grad_out, plan, ctx, grads, gx, gg);
    REQUIRE(ctx.workspace.capacity_bytes() == grown);
    REQUIRE(y == y0);
    REQUIRE(gx == gx0);
    REQUIRE(grads.w1 == gw1);
  }
}

TEST_CASE("capacity FFN matches the per-slot reference", "[dropless][ffn][capacity]") {
  for (Activation act : kActivations)
    for (bool bias : {false, true}) {
      INFO(to_string(act) << " bias " << bias);
      const ExpertFFNConfig c = make_config(3, 5, 9, act, bias, 4);
      const Index capacity = 7;
      ExpertWeights<double> w(c);
      w.init_weights(600, 0.5);
      const RowMatrixD x = random_matrix(3 * capacity, 5, 601);
      const RowMatrixD grad_out = random_matrix(3 * capacity, 5, 602);
      for (bool partial : {false, true}) {
        IndexVector filled(partial ? 3 : 0);
        if (partial) filled << 7, 0, 3;
        CapacityFFNContext<double> ctx;
        RowMatrixD y(3 * capacity, 5), gx(3 * capacity, 5);
        ExpertGradients<double> grads(c), ref(c);
        capacity_ffn_forward<double>(w, x, capacity, filled, ctx, y);
        capacity_ffn_backward<double>(w, grad_out, ctx, grads, gx);
        RowMatrixD y_ref = RowMatrixD::Zero(3 * capacity, 5),
                   gx_ref = RowMatrixD::Zero(3 * capacity, 5);
        for (Index e = 0; e < 3; ++e) {
          const Index used = partial ? filled[e] : capacity;
          for (Index s = 0; s < used; ++s) {
            const Index row = e * capacity + s;
            const test::ReferenceExpertRow r = test::reference_expert_row(w, e, x.row(row).data());
            for (Index i = 0; i < 5; ++i) y_ref(row, i) = r.o[i];
            test::reference_row_backward(w, e, x.row(row).data(), grad_out.row(row).data(), 1.0,
                                         ref, gx_ref.row(row).data(), nullptr);
          }
        }
        require_close(y, y_ref, 1e-12);
        require_close(gx, gx_ref, 1e-12);
        require_close(grads.w1, ref.w1, 1e-12);
        require_close(grads.w3, ref.w3, 1e-12);
        require_close(grads.w2, ref.w2, 1e-12);
        require_close(grads.b1, ref.b1, 1e-12);
        require_close(grads.b3, ref.b3, 1e-12);
        require_close(grads.b2, ref.b2, 1e-12);

        // A forward that keeps no copy reads x in place (here into its own buffer: out = x) and
        // gives the same bits; only the backward given x works after it, with the same bits.
        CapacityFFNContext<double> in_place;
        in_place.save_for_backward = false;
        RowMatrixD xy = x, gx_in_place(3 * capacity, 5);
        ExpertGradients<double> grads_in_place(c);
        capacity_ffn_forward<double>(w, xy, capacity, filled, in_place, xy);
        REQUIRE(xy == y);
        REQUIRE_THROWS_WITH(
            capacity_ffn_backward<double>(w, grad_out, in_place, grads_in_place, gx_in_place),
            Catch::Contains("save_for_backward"));
        capacity_ffn_backward<double>(w, x, grad_out, in_place, grads_in_place, gx_in_place);
        REQUIRE(gx_in_place == gx);
        REQUIRE(grads_in_place.w1 == grads.w1);
        REQUIRE(grads_in_place.w2 == grads.w2);
        REQUIRE(grads_in_place.w3 == grads.w3);
        REQUIRE(grads_in_place.b1 == grads.b1);
        REQUIRE(grads_in_place.b3 == grads.b3);
        REQUIRE(grads_in_place.b2 == grads.b2);
      }
    }
}

TEST_CASE("activations over a wide range, past the SwiGLU clamps, match the scalar reference",
          "[ffn][activation]") {
  // Random FFN inputs stay within a few units; these reach the clamps at +-7 (gpt-oss's limit,
  // and the one the test gives DeepSeek-V4's clamped SwiGLU) and both sides of 0.
  const std::vector<double> values = {-9.5, -7.0, -6.5, -3.0, -0.75, 0.0,
                                      0.5,  2.0,  6.75, 7.0,  8.25};
  const Index n = static_cast<Index>(values.size());
  RowMatrixD h1(n, n), h3(n, n), da(n, n);
  for (Index r = 0; r < n; ++r)
    for (Index c = 0; c < n; ++c) {
      h1(r, c) = values[r];
      h3(r, c) = values[c];
      da(r, c) = 0.25 + 0.125 * static_cast<double>((r + 2 * c) % 5);
    }
  for (Activation act : kActivations) {
    INFO(to_string(act));
    const test::ReferenceActivation ref{act, 7.0};
    RowMatrixD a(n, n), dh1 = da, dh3(n, n);
    activation_forward(act, 7.0, h1, h3, a);
    activation_backward(act, 7.0, h1, h3, dh1, dh3);
    for (Index r = 0; r < n; ++r)
      for (Index c = 0; c < n; ++c) {
        INFO("h1 " << h1(r, c) << " h3 " << h3(r, c));
        const double scale = 1.0 + std::abs(ref.value(h1(r, c), h3(r, c)));
        REQUIRE(std::abs(a(r, c) - ref.value(h1(r, c), h3(r, c))) <= 1e-14 * scale);
        REQUIRE(std::abs(dh1(r, c) - da(r, c) * ref.d_h1(h1(r, c), h3(r, c))) <= 1e-13 * scale);
        if (is_gated(act))
          REQUIRE(std::abs(dh3(r, c) - da(r, c) * ref.d_h3(h1(r, c), h3(r, c))) <= 1e-13 * scale);
      }
  }
  // Hand-worked gpt-oss points: past the clamps the value is that of the bound and the gradient 0.
  const test::ReferenceActivation oai{Activation::swiglu_oai};
  const double glu7 = 7.0 / (1.0 + std::exp(-1.702 * 7.0));
  CHECK(oai.value(9.5, 8.25) == Approx(glu7 * 8.0).epsilon(1e-15));
  CHECK(oai.value(9.5, -9.5) == Approx(glu7 * -6.0).epsilon(1e-15));
  CHECK(oai.d_h1(9.5, 1.0) == 0.0);
  CHECK(oai.d_h3(1.0, -9.5) == 0.0);
  CHECK(oai.d_h3(1.0, 7.0) == Approx(1.0 / (1.0 + std::exp(-1.702))).epsilon(1e-15));
  // DeepSeek-V4's: silu(min(h1, L)) clamp(h3, -L, L), at its limit of 10.
  const test::ReferenceActivation v4{Activation::swiglu_clamped, 10.0};
  const double silu10 = 10.0 / (1.0 + std::exp(-10.0));
  CHECK(v4.value(12.0, -11.0) == Approx(silu10 * -10.0).epsilon(1e-15));
  CHECK(v4.value(2.0, 3.0) == Approx(2.0 / (1.0 + std::exp(-2.0)) * 3.0).epsilon(1e-15));
  CHECK(v4.d_h1(12.0, 1.0) == 0.0);
  CHECK(v4.d_h3(1.0, 10.5) == 0.0);
  // The library at that limit, past both clamps and inside them.
  RowMatrixD g(1, 3), u(1, 3), out(1, 3);
  g << 12.0, 2.0, -3.0;
  u << -11.0, 3.0, 10.0;
  activation_forward(Activation::swiglu_clamped, 10.0, g, u, out);
  for (Index c = 0; c < 3; ++c)
    CHECK(out(0, c) == Approx(v4.value(g(0, c), u(0, c))).epsilon(1e-14));
}

TEST_CASE("expert FFNs reject bad input", "[dropless][ffn][errors]") {
  const Problem p = make_problem(make_config(3, 4, 5, Activation::swiglu, true, 4), 6, 2, 700);
  const DroplessPlan plan = make_dropless_plan(p.ids, 3, 4);
  DroplessFFNContext<double> ctx;
  RowMatrixD y(6, 4), gx(6, 4), gg(6, 2);
  ExpertGradients<double> grads(p.weights.config);

  REQUIRE_THROWS_WITH(
      dropless_ffn_backward<double>(p.weights, p.grad_out, plan, ctx, grads, gx, gg),
      Catch::Contains("ctx"));
  RowMatrixD x_bad(6, 5);
  REQUIRE_THROWS_WITH(dropless_ffn_forward<double>(p.weights, x_bad, p.gates, plan, ctx, y),
                      Catch::Contains("x"));
  RowMatrixD gates_bad(6, 3);
  REQUIRE_THROWS_WITH(dropless_ffn_forward<double>(p.weights, p.x, gates_bad, plan, ctx, y),
                      Catch::Contains("gates"));
  const DroplessPlan other = make_dropless_plan(p.ids, 4, 4);
  REQUIRE_THROWS_WITH(dropless_ffn_forward<double>(p.weights, p.x, p.gates, other, ctx, y),
                      Catch::Contains("plan.num_experts"));
  ExpertWeights<double> broken = p.weights;
  broken.config.ffn_hidden +=
      1;  // parameter shapes are fixed: a config edited afterwards mismatches
  REQUIRE_THROWS_WITH(dropless_ffn_forward<double>(broken, p.x, p.gates, plan, ctx, y),
                      Catch::Contains("weights.w1"));
  ExpertFFNConfig bad_config = p.weights.config;
  bad_config.ffn_hidden = 0;
  REQUIRE_THROWS_WITH(ExpertWeights<double>(bad_config),
                      Catch::Contains("ExpertFFNConfig::ffn_hidden"));
  bad_config = p.weights.config;
  bad_config.block_cols = 0;
  REQUIRE_THROWS_WITH(ExpertWeights<double>(bad_config), Catch::Contains("block_cols"));
  bad_config = p.weights.config;
  bad_config.swiglu_limit = std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_WITH(
      ExpertWeights<double>(bad_config),
      Catch::Contains("ExpertFFNConfig::swiglu_limit: expected a finite value > 0"));

  dropless_ffn_forward<double>(p.weights, p.x, p.gates, plan, ctx, y);
  // Gradients of another shape are reshaped to the weights' (as MoEGradients are), not refused.
  ExpertGradients<double> reshaped(make_config(3, 4, 5, Activation::gelu, true, 4));
  dropless_ffn_backward<double>(p.weights, p.grad_out, plan, ctx, reshaped, gx, gg);
  REQUIRE(reshaped.config.activation == p.weights.config.activation);
  REQUIRE(reshaped.w1.size() == p.weights.w1.size());
  RowMatrixD grad_bad(5, 4);
  REQUIRE_THROWS_WITH(dropless_ffn_backward<double>(p.weights, grad_bad, plan, ctx, grads, gx, gg),
                      Catch::Contains("grad_out"));
  const DroplessPlan coarser = make_dropless_plan(p.ids, 3, 8);
  REQUIRE_THROWS_WITH(
      dropless_ffn_backward<double>(p.weights, p.grad_out, coarser, ctx, grads, gx, gg),
      Catch::Contains("plan"));

  CapacityFFNContext<double> cctx;
  RowMatrixD xc(3 * 2, 4), yc(3 * 2, 4);
  IndexVector filled(3);
  filled << 1, 3, 0;
  REQUIRE_THROWS_WITH(capacity_ffn_forward<double>(p.weights, xc, 2, filled, cctx, yc),
                      Catch::Contains("filled"));
  REQUIRE_THROWS_WITH(capacity_ffn_forward<double>(p.weights, xc, 3, IndexVector(), cctx, yc),
                      Catch::Contains("x"));
  REQUIRE_THROWS_WITH(capacity_ffn_forward<double>(p.weights, xc, -1, IndexVector(), cctx, yc),
                      Catch::Contains("capacity"));
  REQUIRE_THROWS_WITH(capacity_ffn_backward<double>(p.weights, yc, cctx, grads, xc),
                      Catch::Contains("ctx"));
  REQUIRE_THROWS_WITH(capacity_ffn_backward<double>(p.weights, xc, yc, cctx, grads, xc),
                      Catch::Contains("ctx"));
  xc.setZero();
  capacity_ffn_forward<double>(p.weights, xc, 2, IndexVector(), cctx, yc);
  const RowMatrixD x_wide(3 * 2, 5);
  REQUIRE_THROWS_WITH(capacity_ffn_backward<double>(p.weights, x_wide, yc, cctx, grads, xc),
                      Catch::Contains("x"));
}

#if defined(_OPENMP)
TEST_CASE("same bits at 1 and 2 threads", "[dropless][ffn][threads]") {
  const Problem p =
      make_problem(make_config(6, 24, 300, Activation::swiglu, true, 64), 900, 2, 800, 0.6);
  ExpertWeights<float> wf(p.weights.config);
  wf.w1 = p.weights.w1.cast<float>();
  wf.w3 = p.weights.w3.cast<float>();
  wf.w2 = p.weights.w2.cast<float>();
  wf.b1 = p.weights.b1.cast<float>();
  wf.b3 = p.weights.b3.cast<float>();
  wf.b2 = p.weights.b2.cast<float>();
  const RowMatrix<float> x = p.x.cast<float>(), gates = p.gates.cast<float>(),
                         g = p.grad_out.cast<float>();
  struct Out {
    RowMatrix<float> y, gx, gg;
    ExpertGradients<float> grads;
    IndexVector sorted;
  };
  auto run = [&](int threads, Index block) {
    omp_set_num_threads(threads);
    const DroplessPlan plan = make_dropless_plan(p.ids, 6, block);
    DroplessFFNContext<float> ctx;
    Out o{RowMatrix<float>(900, 24), RowMatrix<float>(900, 24), RowMatrix<float>(900, 2),
          ExpertGradients<float>(wf.config), plan.sorted_pairs};
    dropless_ffn_forward<float>(wf, x, gates, plan, ctx, o.y);
    dropless_ffn_backward<float>(wf, g, plan, ctx, o.grads, o.gx, o.gg);
    // The forward that reads token rows in place gives the same bits as well.
    DroplessFFNContext<float> in_place;
    in_place.save_for_backward = false;
    RowMatrix<float> y_in_place(900, 24);
    dropless_ffn_forward<float>(wf, x, gates, plan, in_place, y_in_place);
    REQUIRE(y_in_place == o.y);
    return o;
  };
  const int saved = omp_get_max_threads();
  // A plan large enough for several histogram chunks, against the single-threaded sort.
  const ExpertIdMatrix many = random_ids(40000, 2, 7, 801, 0.3);
  omp_set_num_threads(1);
  const DroplessPlan plan_one = make_dropless_plan(many, 7, 16);
  omp_set_num_threads(2);
  const DroplessPlan plan_two = make_dropless_plan(many, 7, 16);
  REQUIRE(plan_one.sorted_pairs == plan_two.sorted_pairs);
  REQUIRE(plan_one.pair_row == plan_two.pair_row);
  REQUIRE(plan_one.padded_offsets == plan_two.padded_offsets);
  for (Index block : {1, 128}) {
    const Out one = run(1, block), two = run(2, block);
    REQUIRE(one.sorted == two.sorted);
    REQUIRE(one.y == two.y);
    REQUIRE(one.gx == two.gx);
    REQUIRE(one.gg == two.gg);
    REQUIRE(one.grads.w1 == two.grads.w1);
    REQUIRE(one.grads.w3 == two.grads.w3);
    REQUIRE(one.grads.w2 == two.grads.w2);
    REQUIRE(one.grads.b1 == two.grads.b1);
    REQUIRE(one.grads.b3 == two.grads.b3);
    REQUIRE(one.grads.b2 == two.grads.b2);
  }
  omp_set_num_threads(saved);
}
#endif

TEST_CASE("a default-built ExpertGradients shapes itself on first use and is then reused",
          "[experts][backward]") {
  moe::ExpertFFNConfig c;
  c.num_experts = 3;
  c.hidden = 4;
  c.ffn_hidden = 5;
  c.activation = moe::Activation::swiglu;
  c.bias = true;
  moe::ExpertWeights<double> w(c);
  w.init_weights(1, 0.5);
  moe::ExpertIdMatrix ids(4, 1);
  ids << 0, 2, 2, 1;
  const moe::DroplessPlan plan = moe::make_dropless_plan(ids, 3, 4);
  const moe::RowMatrix<double> x = moe::RowMatrix<double>::Random(4, 4);
  const moe::RowMatrix<double> gates = moe::RowMatrix<double>::Ones(4, 1);
  const moe::RowMatrix<double> grad_y = moe::RowMatrix<double>::Random(4, 4);
  moe::RowMatrix<double> grad_x(4, 4), grad_gates(4, 1);
  moe::DroplessFFNContext<double> ctx;
  moe::dropless_ffn_forward<double>(w, x, gates, plan, ctx);
  moe::ExpertGradients<double> fresh(c), shaped;  // the second default-built
  moe::dropless_ffn_backward<double>(w, x, grad_y, plan, ctx, fresh, grad_x, grad_gates);
  moe::dropless_ffn_backward<double>(w, x, grad_y, plan, ctx, shaped, grad_x, grad_gates);
  CHECK(shaped.w1 == fresh.w1);
  CHECK(shaped.w2 == fresh.w2);
  CHECK(shaped.b3 == fresh.b3);
  const double* kept = shaped.w1.data();
  moe::dropless_ffn_backward<double>(w, x, grad_y, plan, ctx, shaped, grad_x, grad_gates);
  CHECK(shaped.w1.data() == kept);  // no reallocation once shaped
}
