// Routing replay: recorded expert ids replace top-k, gates come from the live logits (against the
// loop reference), gradients flow through the recorded choices (against finite differences), a
// replay of a forward's own choices reproduces it bit for bit; and RoutingRecord's byte format
// (against bytes written out by hand).
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <moe/routing/hash.hpp>
#include <moe/routing/presets.hpp>
#include <moe/routing/replay.hpp>
#include <moe/routing/router.hpp>

#include "support/catch.hpp"
#include "support/finite_difference.hpp"
#include "support/random_matrix.hpp"
#include "support/routing_reference.hpp"

namespace {

using moe::presets::Experts;
using moe::presets::Hidden;
using moe::test::random_expert_ids;
using moe::test::random_matrix;

using moe::Index;
using Matrix = moe::RowMatrix<double>;

// Every gate rule a replay recomputes (softmax then top-k with and without renormalization, top-k
// then softmax, sigmoid and sqrt(softplus) with a selection bias and scaling), with groups and
// noise where they apply.
std::vector<std::pair<std::string, moe::RouterConfig>> replay_configs() {
  std::vector<std::pair<std::string, moe::RouterConfig>> configs;
  for (int rule = 0; rule < 5; ++rule)
    for (int extra = 0; extra < 3; ++extra) {
      moe::RouterConfig c;
      c.num_experts = 8;
      c.hidden = 5;
      c.top_k = 3;
      c.score = rule == 3   ? moe::ScoreFunction::sigmoid
                : rule == 4 ? moe::ScoreFunction::sqrt_softplus
                            : moe::ScoreFunction::softmax;
      c.softmax_order =
          rule == 2 ? moe::SoftmaxOrder::topk_then_softmax : moe::SoftmaxOrder::softmax_then_topk;
      c.renormalize = rule == 1 || rule >= 3;
      c.renormalize_epsilon = rule >= 3 ? 1e-20 : 0.0;
      c.scaling_factor = rule >= 3 ? 2.5 : 1.0;
      if (extra == 1) {  // group-limited selection (the replayed ids ignore it)
        c.num_groups = 4;
        c.groups_selected = 2;
      }
      if (extra == 2) c.noise = rule == 0 ? moe::Noise::noisy_topk : moe::Noise::jitter;
      configs.emplace_back("rule=" + std::to_string(rule) + " extra=" + std::to_string(extra), c);
    }
  return configs;
}

template <class S>
moe::Router<S> random_router(const moe::RouterConfig& c) {
  moe::Router<S> router(c);
  router.weight = random_matrix<S>(c.num_experts, c.hidden, 1);
  if (c.noise == moe::Noise::noisy_topk)
    router.noise_weight = random_matrix<S>(c.num_experts, c.hidden, 2);
  router.selection_bias = random_matrix<S>(c.num_experts, 1, 3, 0.1);
  return router;
}

std::vector<std::vector<int>> to_rows(const moe::ExpertIdMatrix& ids) {
  std::vector<std::vector<int>> rows(static_cast<std::size_t>(ids.rows()));
  for (Index t = 0; t < ids.rows(); ++t)
    for (Index j = 0; j < ids.cols(); ++j) rows[static_cast<std::size_t>(t)].push_back(ids(t, j));
  return rows;
}

template <class S>
void check_replay_reproduces_forward(const moe::RouterConfig& c) {
  const auto router = random_router<S>(c);
  const auto x = random_matrix<S>(37, c.hidden, 4);
  for (moe::Mode mode : {moe::Mode::train, moe::Mode::eval}) {
    moe::RouterContext<S> recorded_ctx, replayed_ctx;
    const moe::Routing<S>& recorded = router.forward(x, recorded_ctx, mode, 77);
    const moe::ExpertIdMatrix ids = recorded.expert_ids;
    const moe::Routing<S>& replayed = router.replay(x, ids, replayed_ctx, mode, 77);
    CHECK(replayed.expert_ids == recorded.expert_ids);
    CHECK(replayed.gates == recorded.gates);  // bit for bit
    CHECK(replayed.scores == recorded.scores);
    CHECK(replayed.logits == recorded.logits);
  }
}

}  // namespace

TEST_CASE("a replay of a forward's own choices reproduces its routing bit for bit", "[replay]") {
  for (const auto& [name, config] : replay_configs()) {
    INFO(name);
    check_replay_reproduces_forward<float>(config);
    check_replay_reproduces_forward<double>(config);
  }
}

TEST_CASE("replayed ids replace top-k; gates come from the live logits at them", "[replay]") {
  for (const auto& [name, c] : replay_configs()) {
    INFO(name);
    const auto router = random_router<double>(c);
    const Matrix x = random_matrix(23, c.hidden, 5);
    const moe::ExpertIdMatrix recorded = random_expert_ids(23, c.top_k, c.num_experts, 6);
    for (moe::Mode mode : {moe::Mode::train, moe::Mode::eval}) {
      moe::RouterContext<double> ctx;
      const auto& r = router.replay(x, recorded, ctx, mode, 9);
      const auto rows = to_rows(recorded);
      const auto ref =
          moe::test::reference_route(c, x, router.weight, router.bias, router.noise_weight,
                                     router.selection_bias, mode == moe::Mode::train, 9, &rows);
      REQUIRE(r.expert_ids == recorded);
      for (Index t = 0; t < x.rows(); ++t)
        for (Index j = 0; j < c.top_k; ++j)
          CHECK(std::abs(r.gates(t, j) - ref.gates[t][j]) < 1e-13);
    }
    // replay_experts over given logits: the same rule, without a router
    const Matrix logits = random_matrix(23, c.num_experts, 7, 4.0);
    moe::Routing<double> out;
    moe::replay_experts<double>(c, logits, recorded, out);
    const auto rows = to_rows(recorded);
    moe::RouterConfig identity = c;  // the reference router with W = I, x = logits, no noise
    identity.hidden = c.num_experts;
    identity.noise = moe::Noise::none;
    const Matrix eye = Matrix::Identity(c.num_experts, c.num_experts);
    const auto ref = moe::test::reference_route(identity, logits, eye, Matrix(), Matrix(), Matrix(),
                                                false, 0, &rows);
    for (Index t = 0; t < logits.rows(); ++t)
      for (Index j = 0; j < c.top_k; ++j)
        CHECK(std::abs(out.gates(t, j) - ref.gates[t][j]) < 1e-13);
  }
}

TEST_CASE("gradients flow to the router through the replayed choices", "[replay][backward]") {
  for (const auto& [name, c] : replay_configs()) {
    INFO(name);
    auto router = random_router<double>(c);
    Matrix x = random_matrix(7, c.hidden, 8);
    const moe::ExpertIdMatrix recorded = random_expert_ids(7, c.top_k, c.num_experts, 9);
    const Matrix grad_gates = random_matrix(7, c.top_k, 10);
    const Matrix grad_scores = random_matrix(7, c.num_experts, 11);
    auto loss = [&] {
      moe::RouterContext<double> ctx;
      const auto& r = router.replay(x, recorded, ctx, moe::Mode::train, 12);
      return r.gates.cwiseProduct(grad_gates).sum() + r.scores.cwiseProduct(grad_scores).sum();
    };
    moe::RouterContext<double> ctx;
    router.replay(x, recorded, ctx, moe::Mode::train, 12);
    const auto grads = router.backward(x, ctx, {grad_gates, grad_scores, Matrix()});
    using moe::test::numerical_gradient;
    using moe::test::relative_error;
    CHECK(relative_error(grads.x, numerical_gradient(x, loss)) <= 1e-6);
    CHECK(relative_error(grads.weight, numerical_gradient(router.weight, loss)) <= 1e-6);
    if (c.noise == moe::Noise::noisy_topk)
      CHECK(relative_error(grads.noise_weight, numerical_gradient(router.noise_weight, loss)) <=
            1e-6);
  }
}

TEST_CASE("Megatron's group score sums the top k / groups_selected of each group", "[groups]") {
  // 4 groups of 4 experts, k = 6 over 2 groups (Megatron sums each group's 3 best): the three
  // group scores keep three different pairs of groups here.
  moe::RouterConfig c;
  c.num_experts = 16;
  c.hidden = 16;
  c.top_k = 6;
  c.num_groups = 4;
  c.groups_selected = 2;
  c.softmax_order = moe::SoftmaxOrder::topk_then_softmax;  // groups rank the logits themselves
  Matrix logits(1, 16);
  logits << 9, 0, 0, 0,    // group 0: max 9, top-2 9, top-3 9
      6, 6, 0, 0,          // group 1: max 6, top-2 12, top-3 12
      5, 5, 5, 0,          // group 2: max 5, top-2 10, top-3 15
      4.5, 4.5, 4.5, 4.5;  // group 3: max 4.5, top-2 9, top-3 13.5
  const Matrix eye = Matrix::Identity(16, 16);
  const std::pair<moe::GroupScore, std::vector<int>> cases[] = {
      {moe::GroupScore::max, {0, 1}},
      {moe::GroupScore::sum_top2, {1, 2}},
      {moe::GroupScore::sum_top_k_per_selected_group, {2, 3}}};
  for (const auto& [score, kept_groups] : cases) {
    c.group_score = score;
    moe::Routing<double> out;
    Matrix selection;
    moe::select_experts<double>(c, logits, moe::Vector<double>(), out, selection);
    const auto ref =
        moe::test::reference_route(c, logits, eye, Matrix(), Matrix(), Matrix(), false, 0);
    for (Index j = 0; j < c.top_k; ++j) {
      CHECK(out.expert_ids(0, j) == ref.ids[0][j]);
      const int group = out.expert_ids(0, j) / 4;
      CHECK((group == kept_groups[0] || group == kept_groups[1]));
    }
  }
}

TEST_CASE("RoutingRecord writes the documented bytes and reads them back", "[replay][record]") {
  moe::RoutingRecord record;
  moe::RecordedLayer layer;
  layer.num_experts = 3;
  layer.expert_ids.resize(2, 2);
  layer.expert_ids << 2, 0, 1, 2;
  record.layers.push_back(layer);
  const std::vector<std::uint8_t> expected = {'M', 'O', 'E', 'R', 'O', 'U', 'T', 'E',  // magic
                                              1,   0,   0,   0,                        // version
                                              1,   0,   0,   0,                        // layers
                                              3,   0,   0,   0,                      // num_experts
                                              2,   0,   0,   0,                      // top_k
                                              2,   0,   0,   0,   0,   0,   0,   0,  // tokens
                                              1,                  // one byte per id
                                              2,   0,   1,   2};  // ids row by row
  CHECK(record.to_bytes() == expected);

  // every id width, through a file
  moe::RoutingRecord wide;
  for (Index experts : {1, 256, 257, 65536, 65537}) {
    const Index k = std::min<Index>(experts, 4);
    wide.layers.push_back({experts, random_expert_ids(9, k, experts, 13)});
  }
  wide.layers.push_back({8, moe::ExpertIdMatrix(0, 2)});  // a layer that saw no tokens
  const std::vector<std::uint8_t> bytes = wide.to_bytes();
  Index size = 16;
  for (const auto& l : wide.layers)
    size += 17 + l.expert_ids.size() * (l.num_experts <= 256 ? 1 : l.num_experts <= 65536 ? 2 : 4);
  CHECK(static_cast<Index>(bytes.size()) == size);
  const std::string path = "routing_record_test.bin";
  wide.save(path);
  const moe::RoutingRecord read = moe::RoutingRecord::load(path);
  std::remove(path.c_str());
  REQUIRE(read.layers.size() == wide.layers.size());
  for (std::size_t l = 0; l < read.layers.size(); ++l) {
    CHECK(read.layers[l].num_experts == wide.layers[l].num_experts);
    CHECK(read.layers[l].expert_ids == wide.layers[l].expert_ids);
  }
}

TEST_CASE("RoutingRecord keeps unused slots (adaptive k) in the fewest bytes that can say so",
          "[replay][record]") {
  moe::RoutingRecord record;
  moe::RecordedLayer small{3, moe::ExpertIdMatrix(2, 2)};
  small.expert_ids << 2, moe::kUnusedSlot, 1, 0;
  record.layers.push_back(small);
  const std::vector<std::uint8_t> bytes = record.to_bytes();
  // 0xff is no expert of 3: one byte per id still, the unused slot written as 0xff
  const std::vector<std::uint8_t> ids(bytes.end() - 4, bytes.end());
  CHECK(ids == std::vector<std::uint8_t>{2, 0xff, 1, 0});
  CHECK(bytes[bytes.size() - 5] == 1);
  // 256 experts need every byte value: with an unused slot the layer takes two bytes per id
  for (Index experts : {255, 256, 65535, 65536}) {
    INFO("E = " << experts);
    moe::RoutingRecord wide;
    moe::RecordedLayer layer{experts, moe::ExpertIdMatrix(2, 3)};
    layer.expert_ids << static_cast<moe::ExpertId>(experts - 1), moe::kUnusedSlot, 0, 1, 2,
        moe::kUnusedSlot;
    wide.layers.push_back(layer);
    const std::vector<std::uint8_t> out = wide.to_bytes();
    const Index width = experts < 256 ? 1 : experts < 65536 ? 2 : 4;
    CHECK(static_cast<Index>(out.size()) == 16 + 17 + 6 * width);
    const auto read = moe::RoutingRecord::from_bytes(out.data(), out.size());
    CHECK(read.layers[0].expert_ids == layer.expert_ids);
  }
  // A plain 256-expert layer's 0xff is expert 255, never an unused slot.
  moe::RoutingRecord plain;
  plain.layers.push_back({256, moe::ExpertIdMatrix::Constant(1, 1, 255)});
  const std::vector<std::uint8_t> plain_bytes = plain.to_bytes();
  CHECK(moe::RoutingRecord::from_bytes(plain_bytes.data(), plain_bytes.size())
            .layers[0]
            .expert_ids(0, 0) == 255);
}

TEST_CASE("a recorded routing replays through a file bit for bit", "[replay][record]") {
  moe::RouterConfig c = replay_configs()[9].second;  // sigmoid, bias, scaling
  const auto router = random_router<float>(c);
  const auto x = random_matrix<float>(19, c.hidden, 14);
  moe::RouterContext<float> ctx;
  moe::RoutingRecord record;
  record.append(router.forward(x, ctx, moe::Mode::train, 3));
  const moe::Routing<float> recorded = ctx.routing;
  const auto read =
      moe::RoutingRecord::from_bytes(record.to_bytes().data(), record.to_bytes().size());
  moe::RouterContext<float> replay_ctx;
  const auto& replayed =
      router.replay(x, read.layers.at(0).expert_ids, replay_ctx, moe::Mode::train, 3);
  CHECK(replayed.expert_ids == recorded.expert_ids);
  CHECK(replayed.gates == recorded.gates);
}

TEST_CASE("sqrt_softplus routing stays finite and exact at extreme logits", "[router][numerics]") {
  // z = -300 underflows softplus to 0 in float (and s = sqrt(softplus) with it): the renormalized
  // gates then come from log space, exp(z_j / 2) / sum exp(z_i / 2), and stay a distribution.
  moe::RouterConfig c;
  c.num_experts = 4;
  c.hidden = 1;
  c.top_k = 2;
  c.score = moe::ScoreFunction::sqrt_softplus;
  c.renormalize = true;
  moe::Router<float> router(c);
  router.weight << -300.f, -302.f, -310.f, -400.f;
  moe::RowMatrix<float> x(2, 1);
  x << 1.f, -0.01f;  // row 1: logits 3, 3.02, 3.1, 4
  moe::RouterContext<float> ctx;
  const auto& r = router.forward(x, ctx, moe::Mode::train);
  REQUIRE(r.gates.allFinite());
  CHECK(r.expert_ids(0, 0) == 0);
  CHECK(r.expert_ids(0, 1) == 1);
  const double w0 = 1.0 / (1.0 + std::exp(-1.0));  // exp(-150) / (exp(-150) + exp(-151))
  CHECK(r.gates(0, 0) == Approx(w0).epsilon(1e-6));
  CHECK(r.gates(0, 1) == Approx(1 - w0).epsilon(1e-6));
  for (Index j = 0; j < 2; ++j) {
    const double z = router.weight(r.expert_ids(1, j)) * -0.01;
    const double s3 = std::sqrt(std::log1p(std::exp(3.1))),
                 s4 = std::sqrt(std::log1p(std::exp(4.0)));
    const double s = std::sqrt(std::log1p(std::exp(z)));
    CHECK(r.gates(1, j) == Approx(s / (s3 + s4)).epsilon(1e-6));
  }
  const auto grads = router.backward(x, ctx, {moe::RowMatrix<float>::Ones(2, 2), {}, {}});
  CHECK(grads.weight.allFinite());
  CHECK(grads.x.allFinite());
}

TEST_CASE("hash routing: the table picks the experts, the router's scores weight them",
          "[replay][hash]") {
  // DeepSeek-V4's hash layers: tid2eid[token] replayed through the V4 router (loop reference).
  const moe::RouterConfig c = moe::presets::deepseek_v4(Hidden{6}, Experts{16}, /*k=*/4);
  const moe::HashTable table(16, random_expert_ids(50, 4, 16, 15));
  moe::TokenIds tokens(9);
  tokens << 3, 49, 0, 3, 17, 17, 8, 22, 41;
  const moe::ExpertIdMatrix ids = table.expert_ids(tokens);
  for (Index t = 0; t < tokens.size(); ++t)
    for (Index j = 0; j < 4; ++j) CHECK(ids(t, j) == table.table()(tokens(t), j));
  const auto router = random_router<double>(c);
  const Matrix x = random_matrix(9, 6, 16);
  moe::RouterContext<double> ctx;
  const auto& r = router.replay(x, ids, ctx, moe::Mode::train);
  const auto rows = to_rows(ids);
  const auto ref = moe::test::reference_route(c, x, router.weight, router.bias, router.noise_weight,
                                              router.selection_bias, true, 0, &rows);
  for (Index t = 0; t < 9; ++t)
    for (Index j = 0; j < 4; ++j) CHECK(std::abs(r.gates(t, j) - ref.gates[t][j]) < 1e-13);
  // the same token id always meets the same experts
  CHECK(r.expert_ids.row(0) == r.expert_ids.row(3));
  CHECK(r.expert_ids.row(4) == r.expert_ids.row(5));
}
