// Router backward against central finite differences in double, for every option combination.
#include <string>

#include <moe/routing/router.hpp>

#include "support/catch.hpp"
#include "support/finite_difference.hpp"
#include "support/random_matrix.hpp"

namespace {

using moe::test::random_matrix;

using moe::Index;
using Matrix = moe::RowMatrix<double>;

struct Upstream {
  Matrix gates, scores, logits;
};

// loss = <G, gates> + <Gs, scores> + <Gz, logits>: any linear functional exercises every path.
double loss(const moe::Router<double>& router, const Matrix& x, const Upstream& up,
            moe::Mode mode) {
  moe::RouterContext<double> ctx;
  const auto& r = router.forward(x, ctx, mode, 42);
  double value = r.gates.cwiseProduct(up.gates).sum();
  if (up.scores.size()) value += r.scores.cwiseProduct(up.scores).sum();
  if (up.logits.size()) value += r.logits.cwiseProduct(up.logits).sum();
  return value;
}

void check_gradients(const moe::RouterConfig& c, bool with_scores, moe::Mode mode,
                     const std::string& name) {
  INFO(name << " scores_grad=" << with_scores << " train=" << (mode == moe::Mode::train));
  moe::Router<double> router(c);
  router.weight = random_matrix(c.num_experts, c.hidden, 1);
  router.bias = random_matrix(c.num_experts, 1, 2, 0.5);
  if (c.noise == moe::Noise::noisy_topk)
    router.noise_weight = random_matrix(c.num_experts, c.hidden, 3);
  router.selection_bias = random_matrix(c.num_experts, 1, 4, 0.05);
  if (c.expert_scale)
    router.expert_scale = (1.0 + random_matrix(c.num_experts, 1, 9, 0.5).array()).matrix();
  Matrix x = random_matrix(6, c.hidden, 5);
  Upstream up{random_matrix(6, c.top_k, 6),
              with_scores ? random_matrix(6, c.num_experts, 7) : Matrix(),
              with_scores ? random_matrix(6, c.num_experts, 8) : Matrix()};

  moe::RouterContext<double> ctx;
  router.forward(x, ctx, mode, 42);
  const auto grads =
      router.backward(x, ctx, moe::RouterUpstream<double>{up.gates, up.scores, up.logits});

  auto f = [&] { return loss(router, x, up, mode); };
  CHECK(moe::test::relative_error(grads.x, moe::test::numerical_gradient(x, f)) <= 1e-6);
  CHECK(moe::test::relative_error(grads.weight, moe::test::numerical_gradient(router.weight, f)) <=
        1e-6);
  if (c.linear_bias) {
    auto& b = router.bias;
    CHECK(moe::test::relative_error(grads.bias, moe::test::numerical_gradient(b, f)) <= 1e-6);
  } else {
    CHECK(grads.bias.isZero());
  }
  if (c.expert_scale) {
    auto& scale = router.expert_scale;
    CHECK(moe::test::relative_error(grads.expert_scale, moe::test::numerical_gradient(scale, f)) <=
          1e-6);
  } else {
    CHECK(grads.expert_scale.size() == 0);
  }
  if (c.noise == moe::Noise::noisy_topk) {
    const Matrix numeric = moe::test::numerical_gradient(router.noise_weight, f);
    if (mode == moe::Mode::train)
      CHECK(moe::test::relative_error(grads.noise_weight, numeric) <= 1e-6);
    else
      CHECK((grads.noise_weight.isZero() && numeric.isZero()));
  }
}

}  // namespace

TEST_CASE("router gradients match central finite differences", "[router][backward]") {
  for (int score = 0; score < 4; ++score)
    for (bool renorm : {false, true})
      for (bool groups : {false, true})
        for (int noise = 0; noise < 3; ++noise)
          for (bool extras : {false, true}) {
            moe::RouterConfig c;
            c.num_experts = 8;
            c.hidden = 5;
            c.top_k = 3;
            c.score = score == 2   ? moe::ScoreFunction::sigmoid
                      : score == 3 ? moe::ScoreFunction::sqrt_softplus
                                   : moe::ScoreFunction::softmax;
            c.softmax_order = score == 1 ? moe::SoftmaxOrder::topk_then_softmax
                                         : moe::SoftmaxOrder::softmax_then_topk;
            c.renormalize = renorm;
            c.renormalize_epsilon = extras ? 1e-2 : 0.0;
            c.renormalize_min = renorm && extras ? 0.6 : 0.0;  // a floor some sums are under
            c.scaling_factor = extras ? 2.5 : 1.0;
            c.linear_bias = extras;
            c.expert_scale = extras;
            c.min_top_k = extras ? 1 : 0;  // adaptive k: unused slots carry no gradient
            c.top_k_threshold = extras ? 0.7 : 0.0;
            if (groups) {
              c.num_groups = 4;
              c.groups_selected = 2;
            }
            c.noise = noise == 0   ? moe::Noise::none
                      : noise == 1 ? moe::Noise::jitter
                                   : moe::Noise::noisy_topk;
            c.jitter_epsilon = 0.1;
            const std::string name =
                "score=" + std::to_string(score) + " renorm=" + std::to_string(renorm) +
                " groups=" + std::to_string(groups) + " noise=" + std::to_string(noise) +
                " extras=" + std::to_string(extras);
            for (bool with_scores : {false, true})
              check_gradients(c, with_scores, moe::Mode::train, name);
            check_gradients(c, true, moe::Mode::eval, name);
          }
}

TEST_CASE("top-1 with softmax after top-k gives the router no gradient from the gates",
          "[router][backward]") {
  // Megatron-LM #894: softmax over a single logit is identically 1.
  moe::RouterConfig c;
  c.num_experts = 4;
  c.hidden = 3;
  c.top_k = 1;
  c.softmax_order = moe::SoftmaxOrder::topk_then_softmax;
  moe::Router<double> router(c);
  router.weight = random_matrix(4, 3, 1);
  const Matrix x = random_matrix(5, 3, 2);
  moe::RouterContext<double> ctx;
  const auto& r = router.forward(x, ctx, moe::Mode::eval);
  CHECK(r.gates.isOnes());
  const auto grads = router.backward(x, ctx, {random_matrix(5, 1, 3), Matrix(), Matrix()});
  CHECK(grads.weight.isZero());
  CHECK(grads.x.isZero());
}

#if defined(_OPENMP)
#include <omp.h>

TEST_CASE("router forward and backward give the same bits at 1 and 2 threads",
          "[router][determinism]") {
  moe::RouterConfig c;
  c.num_experts = 16;
  c.hidden = 300;  // over one 256 block in every product
  c.top_k = 2;
  c.noise = moe::Noise::noisy_topk;
  moe::Router<float> router(c);
  router.init_weights(1, 0.05);
  router.noise_weight = moe::test::random_matrix<float>(16, 300, 2, 0.05);
  const auto x = moe::test::random_matrix<float>(1100, 300, 3);
  const moe::RouterUpstream<float> up{moe::test::random_matrix<float>(1100, 2, 4), {}, {}};
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    moe::RouterContext<float> ctx;
    const moe::Routing<float> r = router.forward(x, ctx, moe::Mode::train, 9);
    return std::make_pair(r, router.backward(x, ctx, up));
  };
  const int saved = omp_get_max_threads();
  const auto one = run(1);
  const auto two = run(2);
  omp_set_num_threads(saved);
  CHECK(one.first.logits == two.first.logits);
  CHECK(one.first.gates == two.first.gates);
  CHECK(one.second.x == two.second.x);
  CHECK(one.second.weight == two.second.weight);
  CHECK(one.second.noise_weight == two.second.noise_weight);
}
#endif
