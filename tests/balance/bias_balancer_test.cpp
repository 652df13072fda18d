// BiasBalancer: the aux-loss-free update rules, micro-batch accumulation with padding and drops,
// each micro-batch counted once, and exact state save / load.
#include <sstream>
#include <vector>

#include "moe/balance/bias_balancer.hpp"
#include "support/balance_reference.hpp"
#include "support/catch.hpp"

namespace {

using moe::ExpertIdMatrix;
using moe::Index;
using moe::TokenMask;

// Experts 0 1 2 3: loads over two micro-batches (k = 2) below.
ExpertIdMatrix micro_batch_a() {
  ExpertIdMatrix ids(4, 2);
  ids << 0, 1,  //
      0, 2,     //
      0, 1,     //
      3, 0;     // padding in the tests that mask row 3
  return ids;
}

ExpertIdMatrix micro_batch_b() {
  ExpertIdMatrix ids(3, 2);
  ids << 1, 0,  //
      2, 1,     //
      0, 2;
  return ids;
}

std::vector<double> to_vector(const moe::Vector<double>& v) {
  return {v.data(), v.data() + v.size()};
}

struct FakeRouter {
  moe::Vector<float> selection_bias = moe::Vector<float>::Zero(4);
};

}  // namespace

TEST_CASE("bias balancer: sign, centered and proportional updates match the reference",
          "[balance][bias]") {
  const TokenMask mask = (TokenMask(4) << true, true, true, false).finished();
  // Loads with row 3 of micro-batch a masked: expert 0: 3 + 2 = 5, 1: 2 + 2 = 4, 2: 1 + 2 = 3, 3:
  // 0.
  const std::vector<double> load = {5, 4, 3, 0};
  for (int rule = 0; rule < 3; ++rule) {
    moe::BiasBalancerOptions options;
    options.update_rate = 0.01;
    options.rule = static_cast<moe::BiasUpdateRule>(rule);
    moe::BiasBalancer<double> balancer(4, options);
    std::vector<double> expected(4, 0.0);
    for (int step = 0; step < 3; ++step) {
      balancer.accumulate(0, micro_batch_a(), mask);
      balancer.accumulate(1, micro_batch_b());
      CHECK(balancer.pending_load() == (moe::IndexVector(4) << 5, 4, 3, 0).finished());
      balancer.step();
      expected = moe::ref::bias_update(expected, load, 0.01, rule);
      for (Index e = 0; e < 4; ++e) CHECK(balancer.bias()(e) == Approx(expected[e]).epsilon(1e-15));
      CHECK(balancer.pending_micro_batches() == 0);
    }
    CHECK(balancer.steps() == 3);
  }
  SECTION("hand-computed sign step: mean load 3") {
    moe::BiasBalancer<double> balancer(4);
    balancer.accumulate(0, micro_batch_a(), mask);
    balancer.accumulate(1, micro_batch_b());
    balancer.step();
    CHECK(to_vector(balancer.bias()) == std::vector<double>{-1e-3, -1e-3, 0.0, 1e-3});
  }
  SECTION("centered: the bias sums to zero") {
    moe::BiasBalancer<double> balancer(4, {0.01, moe::BiasUpdateRule::centered_sign});
    balancer.accumulate(0, micro_batch_a(), mask);
    balancer.step();
    CHECK(balancer.bias().sum() == Approx(0.0).margin(1e-15));
  }
}

TEST_CASE("bias balancer: each micro-batch counted once, drops excluded", "[balance][bias]") {
  moe::BiasBalancer<double> balancer(4);
  balancer.accumulate(0, micro_batch_a());
  balancer.accumulate(0, micro_batch_a());  // recomputed forward of the same micro-batch
  CHECK(balancer.pending_load() == (moe::IndexVector(4) << 4, 2, 1, 1).finished());
  CHECK(balancer.pending_micro_batches() == 1);
  SECTION("a dropped choice is not load") {
    moe::ChoiceMask kept = moe::ChoiceMask::Constant(4, 2, true);
    kept(1, 0) = false;  // token 1's expert 0 dropped for capacity
    balancer.accumulate(0, micro_batch_a(), TokenMask(), kept);
    CHECK(balancer.pending_load() == (moe::IndexVector(4) << 3, 2, 1, 1).finished());
  }
  SECTION("counts from elsewhere (reduced across ranks)") {
    balancer.accumulate_counts(1, (moe::IndexVector(4) << 0, 0, 5, 0).finished());
    CHECK(balancer.pending_load() == (moe::IndexVector(4) << 4, 2, 6, 1).finished());
  }
  SECTION("a step without tokens leaves the bias unchanged") {
    moe::BiasBalancer<double> empty(4);
    empty.accumulate(0, ExpertIdMatrix(0, 2));
    empty.step();
    CHECK(empty.bias().isZero(0.0));
    moe::BiasBalancer<double> proportional(4, {1e-3, moe::BiasUpdateRule::proportional});
    proportional.step();
    CHECK(proportional.bias().isZero(0.0));
    CHECK(proportional.steps() == 1);
  }
  SECTION("balanced loads leave the bias unchanged") {
    moe::BiasBalancer<double> b(2);
    b.accumulate(0, (ExpertIdMatrix(2, 1) << 0, 1).finished());
    b.step();
    CHECK(b.bias().isZero(0.0));
  }
}

TEST_CASE("bias balancer: float state, applied to a router, saved and loaded exactly",
          "[balance][bias]") {
  moe::BiasBalancer<float> balancer(4, {3e-3, moe::BiasUpdateRule::proportional});
  for (int step = 0; step < 5; ++step) {
    balancer.accumulate(0, micro_batch_a());
    balancer.accumulate(1, micro_batch_b());
    balancer.step();
  }
  FakeRouter router;
  balancer.apply_to(router);
  CHECK(router.selection_bias == balancer.bias());

  std::stringstream stream;
  balancer.save(stream);
  moe::BiasBalancer<float> restored(4);
  restored.accumulate(0, micro_batch_a());  // pending counts are dropped by load
  restored.load(stream);
  CHECK(restored.bias() == balancer.bias());
  CHECK(restored.steps() == 5);
  CHECK(restored.options().rule == moe::BiasUpdateRule::proportional);
  CHECK(restored.options().update_rate == 3e-3);
  CHECK(restored.pending_micro_batches() == 0);
  // Both continue identically.
  for (auto* b : {&balancer, &restored}) {
    b->accumulate(0, micro_batch_b());
    b->step();
  }
  CHECK(restored.bias() == balancer.bias());

  SECTION("double round trip through state()") {
    moe::BiasBalancer<double> d(3);
    auto s = d.state();
    s.bias << 0.1, -1.0 / 3.0, 12.345678901234567;
    s.steps = 7;
    d.restore(s);
    std::stringstream out;
    d.save(out);
    moe::BiasBalancer<double> e(3);
    e.load(out);
    CHECK(e.bias() == s.bias);
    CHECK(e.steps() == 7);
  }
}

TEST_CASE("bias balancer: bad input raises moe::Error", "[balance][bias][errors]") {
  CHECK_THROWS_AS(moe::BiasBalancer<double>(0), moe::Error);
  CHECK_THROWS_AS(moe::BiasBalancer<double>(4, {-1e-3, moe::BiasUpdateRule::sign}), moe::Error);
  moe::BiasBalancer<double> b(4);
  CHECK_THROWS_AS(b.accumulate(-1, micro_batch_a()), moe::Error);
  CHECK_THROWS_AS(b.accumulate(0, (ExpertIdMatrix(1, 2) << 0, 4).finished()), moe::Error);
  CHECK_THROWS_AS(b.accumulate(0, (ExpertIdMatrix(1, 2) << 1, 1).finished()), moe::Error);
  CHECK_THROWS_AS(b.accumulate(0, micro_batch_a(), TokenMask::Ones(3)), moe::Error);
  CHECK_THROWS_AS(b.accumulate(0, micro_batch_a(), TokenMask(), moe::ChoiceMask::Ones(4, 1)),
                  moe::Error);
  CHECK_THROWS_AS(b.accumulate_counts(0, moe::IndexVector::Zero(3)), moe::Error);
  CHECK_THROWS_AS(b.accumulate_counts(0, (moe::IndexVector(4) << 1, -1, 0, 0).finished()),
                  moe::Error);
  CHECK(b.pending_micro_batches() == 0);

  struct WrongRouter {
    moe::Vector<double> selection_bias = moe::Vector<double>::Zero(3);
  } wrong;
  CHECK_THROWS_AS(b.apply_to(wrong), moe::Error);

  auto bad_state = b.state();
  bad_state.bias = moe::Vector<double>::Zero(5);
  CHECK_THROWS_AS(b.restore(bad_state), moe::Error);

  std::stringstream other;
  moe::BiasBalancer<double>(5).save(other);
  CHECK_THROWS_AS(b.load(other), moe::Error);
  std::stringstream garbage("moe-bias-balancer 1\nexperts 4\nrule sideways\n");
  CHECK_THROWS_AS(b.load(garbage), moe::Error);
  std::stringstream truncated(
      "moe-bias-balancer 1\nexperts 4\nrule sign\nupdate_rate 0.001\nsteps 2\nbias 0 0");
  CHECK_THROWS_AS(b.load(truncated), moe::Error);
  std::stringstream empty;
  CHECK_THROWS_AS(b.load(empty), moe::Error);
  CHECK(b.bias().isZero(0.0));
  CHECK(b.steps() == 0);
}
