// The expert-parallel layer against the single-process MoELayer on the concatenated batch: every
// rank also runs the whole batch through MoELayer and compares its share (double, 1e-12). Runs
// under mpirun with 1, 2 and 4 processes. Checks that fail on one rank never skip a collective:
// every comparison is a CHECK, made after all collectives of the test case.
#include <mpi.h>

#include <algorithm>
#include <vector>

#include <moe/layer/moe_layer.hpp>
#include <moe/parallel/expert_parallel_layer.hpp>
#include <moe/routing/presets.hpp>

#include "support/catch.hpp"
#include "support/finite_difference.hpp"
#include "support/random_matrix.hpp"

namespace {

using moe::Index;
using moe::test::random_matrix;
using moe::test::relative_error;
using Matrix = moe::RowMatrix<double>;

constexpr double kTolerance = 1e-12;

/// Uneven tokens per rank, rank 1 with none: 7, 0, 12, 5, ...
Index tokens_of(Index rank) {
  const Index pattern[] = {7, 0, 12, 5};
  return pattern[rank % 4];
}

struct Batch {
  Matrix x, grad_y;  // the whole batch
  Index first = 0, tokens = 0, total = 0;
  Matrix own(const Matrix& m) const { return m.middleRows(first, tokens); }
};

Batch make_batch(const moe::Communicator& comm, Index hidden, std::uint64_t seed) {
  Batch b;
  for (Index q = 0; q < comm.size(); ++q) {
    if (q == comm.rank()) b.first = b.total;
    b.total += tokens_of(q);
  }
  b.tokens = tokens_of(comm.rank());
  b.x = random_matrix(b.total, hidden, seed);
  b.grad_y = random_matrix(b.total, hidden, seed + 1);
  return b;
}

moe::MoELayerConfig base_config() {
  moe::MoELayerConfig c;
  c.router.num_experts = 8;
  c.router.hidden = 6;
  c.router.top_k = 2;
  c.router.renormalize = true;
  c.router.linear_bias = true;
  c.ffn_hidden = 5;
  c.activation = moe::Activation::swiglu;
  c.expert_bias = true;
  c.block_size = 4;
  c.aux_loss = moe::aux_presets::megatron(2, 0.1);
  c.z_loss_coefficient = 0.01;
  c.shared = {3, true};
  return c;
}

/// The whole layer, with routing spread over the experts and expert 5 never chosen.
moe::MoELayer<double> whole_layer(const moe::MoELayerConfig& c) {
  moe::MoELayer<double> layer(c);
  layer.init_weights(11);
  layer.router.weight = random_matrix(c.router.num_experts, c.router.hidden, 12);
  layer.router.bias.setZero();
  layer.router.bias[5] = -50;  // an expert that receives nothing
  layer.experts.b1 = random_matrix(layer.experts.b1.rows(), layer.experts.b1.cols(), 13, 0.3);
  layer.experts.b2 = random_matrix(layer.experts.b2.rows(), layer.experts.b2.cols(), 14, 0.3);
  return layer;
}

/// Sum over ranks, in place.
template <class M>
void sum_over_ranks(const moe::Communicator& comm, M&& m) {
  comm.allreduce_sum(m.data(), m.size());
}

void sum_over_ranks(const moe::Communicator& comm, moe::ExpertGradients<double>& g) {
  for (auto* m : {&g.w1, &g.w3, &g.w2, &g.b1, &g.b3, &g.b2}) sum_over_ranks(comm, *m);
}

/// Expert `global` of a whole-layer parameter [E * rows, cols] (or [E, cols]).
Matrix expert_block(const moe::MatrixMap<double>& whole, Index experts, Index global) {
  const Index rows = whole.rows() / experts;
  return whole.middleRows(global * rows, rows);
}

/// Every routed-expert parameter (or gradient) of this rank against its block of the whole one.
double worst_expert_error(const moe::ExpertWeights<double>& local,
                          const moe::ExpertWeights<double>& whole,
                          const std::vector<Index>& owned) {
  double worst = 0;
  const Index E = whole.config.num_experts;
  const moe::MatrixMap<double> moe::ExpertWeights<double>::*members[] = {
      &moe::ExpertWeights<double>::w1, &moe::ExpertWeights<double>::w3,
      &moe::ExpertWeights<double>::w2, &moe::ExpertWeights<double>::b1,
      &moe::ExpertWeights<double>::b3, &moe::ExpertWeights<double>::b2};
  for (auto member : members) {
    const auto& l = local.*member;
    const auto& w = whole.*member;
    const Index rows = l.rows() / static_cast<Index>(owned.size());
    for (std::size_t i = 0; i < owned.size(); ++i)
      worst = std::max(worst, relative_error(l.middleRows(static_cast<Index>(i) * rows, rows),
                                             expert_block(w, E, owned[i])));
  }
  return worst;
}

struct Comparison {
  double y = 0, x = 0, aux = 0, z = 0, router = 0, router_bias = 0, experts = 0, shared = 0,
         shared_gate = 0, hard_load = 0, drop_rate = 0;
};

/// One train step of both layers on the same parameters; gradients summed over ranks where the
/// distributed layer leaves them per rank.
Comparison compare_step(const moe::Communicator& comm, const moe::MoELayerConfig& config,
                        std::optional<moe::ExpertPlacement> placement = std::nullopt) {
  moe::MoELayer<double> whole = whole_layer(config);
  moe::ExpertParallelMoELayer<double> ep(config, comm, placement);
  ep.load_from(whole);
  const Batch b = make_batch(comm, config.router.hidden, 21);

  moe::MoELayerContext<double> whole_ctx;
  const auto ref = whole.forward(b.x, whole_ctx, moe::Mode::train, 5);
  const auto ref_grads = whole.backward(b.x, whole_ctx, b.grad_y);

  moe::ExpertParallelContext<double> ctx;
  const Matrix x = b.own(b.x);
  const auto out = ep.forward(x, ctx, moe::Mode::train, 5);
  auto grads = ep.backward(x, ctx, b.own(b.grad_y));
  sum_over_ranks(comm, grads.router.weight);
  sum_over_ranks(comm, grads.router.bias);
  if (config.shared.ffn_hidden > 0) sum_over_ranks(comm, grads.shared);
  if (config.shared.gated) sum_over_ranks(comm, grads.shared_gate);

  Comparison c;
  c.y = b.tokens ? relative_error(out.y, b.own(ref.y)) : 0.0;
  c.x = b.tokens ? relative_error(grads.x, b.own(ref_grads.x)) : 0.0;
  c.aux = std::abs(out.aux_loss - ref.aux_loss) / std::max(1e-12, std::abs(ref.aux_loss));
  c.z = std::abs(out.z_loss - ref.z_loss) / std::max(1e-12, std::abs(ref.z_loss));
  c.router = relative_error(grads.router.weight, ref_grads.router.weight);
  c.router_bias = relative_error(grads.router.bias, ref_grads.router.bias);
  c.experts = ep.num_local_experts() > 0
                  ? worst_expert_error(grads.experts, ref_grads.experts, ep.local_experts())
                  : 0.0;
  if (config.shared.ffn_hidden > 0)
    c.shared = worst_expert_error(grads.shared, ref_grads.shared, {0});
  if (config.shared.gated) c.shared_gate = relative_error(grads.shared_gate, ref_grads.shared_gate);
  c.hard_load = relative_error(out.health.hard.load, ref.health.hard.load);
  if (config.dispatch == moe::DispatchKind::capacity)
    c.drop_rate = std::abs(out.health.capacity->drop_rate - ref.health.capacity->drop_rate);
  return c;
}

void check(const Comparison& c) {
  CHECK(c.y <= kTolerance);
  CHECK(c.x <= kTolerance);
  CHECK(c.aux <= kTolerance);
  CHECK(c.z <= kTolerance);
  CHECK(c.router <= kTolerance);
  CHECK(c.router_bias <= kTolerance);
  CHECK(c.experts <= kTolerance);
  CHECK(c.shared <= kTolerance);
  CHECK(c.shared_gate <= kTolerance);
  CHECK(c.hard_load == 0.0);
  CHECK(c.drop_rate == 0.0);
}

}  // namespace

TEST_CASE("expert placement: contiguous blocks and tables", "[parallel]") {
  const auto p = moe::ExpertPlacement::contiguous(10, 4);  // 3, 3, 2, 2
  CHECK(p.experts_of(0) == std::vector<Index>{0, 1, 2});
  CHECK(p.experts_of(3) == std::vector<Index>{8, 9});
  CHECK(p.owner(5) == 1);
  CHECK(p.local_index(5) == 2);
  CHECK(p.max_local_experts() == 3);

  const auto t = moe::ExpertPlacement::from_table({1, 0, 1, 1}, 3);  // rank 2 owns none
  CHECK(t.experts_of(1) == std::vector<Index>{0, 2, 3});
  CHECK(t.num_local_experts(2) == 0);
  CHECK(t.exchange_position(1) == 0);  // rank 0's expert first
  CHECK(t.exchange_position(3) == 3);

  CHECK_THROWS_AS(moe::ExpertPlacement::contiguous(2, 3), moe::Error);
  CHECK_THROWS_AS(moe::ExpertPlacement::from_table({0, 3}, 2), moe::Error);
  CHECK_THROWS_AS(moe::ExpertPlacement::from_table({}, 2), moe::Error);
}

TEST_CASE("expert-parallel init gives this rank's share of MoELayer::init_weights", "[parallel]") {
  const moe::Communicator comm;
  const moe::MoELayerConfig config = base_config();
  moe::MoELayer<double> whole(config);
  whole.init_weights(42);
  moe::ExpertParallelMoELayer<double> ep(config, comm);
  ep.init_weights(42);
  CHECK(worst_expert_error(ep.experts, whole.experts, ep.local_experts()) == 0.0);
  CHECK(ep.router.weight == whole.router.weight);
  CHECK(ep.shared.w1 == whole.shared.w1);
  CHECK(ep.shared_gate_weight == whole.shared_gate_weight);
}

TEST_CASE("expert-parallel dropless layer equals MoELayer on the whole batch", "[parallel]") {
  const moe::Communicator comm;
  check(compare_step(comm, base_config()));
}

TEST_CASE("expert-parallel layer with a placement table", "[parallel]") {
  const moe::Communicator comm;
  // Experts dealt round-robin, backwards: rank P-1 owns expert 0.
  std::vector<Index> owner(8);
  for (Index e = 0; e < 8; ++e)
    owner[static_cast<std::size_t>(e)] = comm.size() - 1 - e % comm.size();
  check(compare_step(comm, base_config(), moe::ExpertPlacement::from_table(owner, comm.size())));
}

TEST_CASE("expert-parallel capacity layer, global capacity, equals MoELayer", "[parallel]") {
  const moe::Communicator comm;
  for (auto policy : {moe::DropPolicy::choice_major, moe::DropPolicy::probability}) {
    moe::MoELayerConfig c = base_config();
    c.dispatch = moe::DispatchKind::capacity;
    c.capacity.train_factor = 0.75;  // some entries drop
    c.capacity.policy = policy;
    c.capacity.renormalize_survivors = true;
    const Comparison result = compare_step(comm, c);
    check(result);
  }
}

TEST_CASE("expert-parallel layer with adaptive k and zero-computation experts equals MoELayer",
          "[parallel][adaptive_k]") {
  const moe::Communicator comm;
  moe::MoELayerConfig c = base_config();
  c.router.top_k = 3;
  c.router.min_top_k = 1;
  c.router.top_k_threshold = 0.5;  // unused slots are never sent
  c.aux_loss = moe::aux_presets::megatron(3, 0.1);
  check(compare_step(comm, c));
  c.zero_computation_experts = 2;  // only the 6 FFN experts are placed over the ranks
  check(compare_step(comm, c));
  c.zero_computation_experts = 0;
  c.dispatch = moe::DispatchKind::capacity;
  c.capacity.train_factor = 0.75;
  check(compare_step(comm, c));
}

TEST_CASE("expert-parallel layer with the weight before the FFN (Llama 4) equals MoELayer",
          "[parallel][weight_before_ffn]") {
  const moe::Communicator comm;
  moe::MoELayerConfig c = base_config();
  c.router = moe::presets::llama4(moe::presets::Hidden{6}, moe::presets::Experts{8});
  c.router.linear_bias = true;
  c.weight_before_ffn = true;
  c.aux_loss = moe::aux_presets::megatron(1, 0.1, moe::ScoreFunction::sigmoid);
  c.shared = {3, false};
  check(compare_step(comm, c));
}

TEST_CASE("expert-parallel forward over packed sequences equals MoELayer on the whole batch",
          "[parallel][packed]") {
  const moe::Communicator comm;
  moe::MoELayerConfig c = base_config();
  c.aux_loss = moe::aux_presets::megatron_packed_sequence(2, 0.1);
  moe::MoELayer<double> whole = whole_layer(c);
  moe::ExpertParallelMoELayer<double> ep(c, comm);
  ep.load_from(whole);
  const Batch b = make_batch(comm, c.router.hidden, 31);
  // Each rank's tokens as two sequences (an empty rank gives one empty sequence); the whole
  // batch's offsets are the ranks' in rank order.
  const auto offsets_of = [](Index n) {
    return n >= 2 ? (moe::IndexVector(3) << 0, n / 2, n).finished()
                  : (moe::IndexVector(2) << 0, n).finished();
  };
  std::vector<Index> global = {0};
  for (Index q = 0, first = 0; q < comm.size(); first += tokens_of(q), ++q) {
    const moe::IndexVector own = offsets_of(tokens_of(q));
    for (Index i = 1; i < own.size(); ++i) global.push_back(first + own[i]);
  }
  const moe::IndexVector whole_offsets =
      Eigen::Map<const moe::IndexVector>(global.data(), static_cast<Index>(global.size()));
  moe::MoELayerContext<double> whole_ctx;
  const auto ref = whole.forward_packed(b.x, whole_offsets, whole_ctx, moe::Mode::train, 5);
  const auto ref_grads = whole.backward(b.x, whole_ctx, b.grad_y);
  moe::ExpertParallelContext<double> ctx;
  const Matrix x = b.own(b.x);
  const auto out = ep.forward_packed(x, offsets_of(b.tokens), ctx, moe::Mode::train, 5);
  const auto grads = ep.backward(x, ctx, b.own(b.grad_y));
  CHECK(std::abs(out.aux_loss - ref.aux_loss) <= kTolerance * std::abs(ref.aux_loss));
  CHECK(ref.aux_loss > 0);
  if (b.tokens > 0) CHECK(relative_error(grads.x, b.own(ref_grads.x)) <= kTolerance);
}

TEST_CASE("expert-parallel capacity layer, per-rank capacity, equals MoELayer per rank",
          "[parallel]") {
  const moe::Communicator comm;
  moe::MoELayerConfig c = base_config();
  c.dispatch = moe::DispatchKind::capacity;
  c.capacity.train_factor = 0.75;
  c.aux_loss.reset();  // the losses are whole-batch; the routed part is what differs per rank
  c.z_loss_coefficient = 0;
  c.shared = {};
  moe::MoELayer<double> whole = whole_layer(c);
  moe::ExpertParallelMoELayer<double> ep(c, comm, std::nullopt, moe::CapacityScope::per_rank);
  ep.load_from(whole);
  const Batch b = make_batch(comm, c.router.hidden, 31);
  const Matrix x = b.own(b.x), grad_y = b.own(b.grad_y);

  // Reference: MoELayer on this rank's tokens alone; its expert gradients summed over ranks.
  moe::MoELayerContext<double> whole_ctx;
  Matrix ref_y(0, c.router.hidden), ref_x(0, c.router.hidden);
  moe::ExpertGradients<double> ref_experts(c.experts());
  if (b.tokens > 0) {
    ref_y = whole.forward(x, whole_ctx, moe::Mode::train, 3).y;
    const auto g = whole.backward(x, whole_ctx, grad_y);
    ref_x = g.x;
    ref_experts = g.experts;
  }
  sum_over_ranks(comm, ref_experts);

  moe::ExpertParallelContext<double> ctx;
  const auto out = ep.forward(x, ctx, moe::Mode::train, 3);
  const auto grads = ep.backward(x, ctx, grad_y);
  if (b.tokens > 0) {
    CHECK(relative_error(out.y, ref_y) <= kTolerance);
    CHECK(relative_error(grads.x, ref_x) <= kTolerance);
  }
  CHECK(worst_expert_error(grads.experts, ref_experts, ep.local_experts()) <= kTolerance);
  // The whole batch's capacity per expert is the sum of the ranks' C.
  Index capacity = 0;
  for (Index q = 0; q < comm.size(); ++q)
    capacity += moe::expert_capacity(c.capacity, tokens_of(q), 2, 8, moe::Mode::train);
  CHECK(out.health.capacity->capacity == capacity);
}

TEST_CASE("expert-parallel bias balancer: every rank ends the step with the same bias",
          "[parallel]") {
  const moe::Communicator comm;
  moe::MoELayerConfig c = base_config();
  c.aux_loss.reset();
  c.bias_balancer = moe::BiasBalancerOptions{};
  moe::MoELayer<double> whole = whole_layer(c);
  moe::ExpertParallelMoELayer<double> ep(c, comm);
  ep.load_from(whole);
  const Batch b = make_batch(comm, c.router.hidden, 41);
  moe::MoELayerContext<double> whole_ctx;
  moe::ExpertParallelContext<double> ctx;
  for (int step = 0; step < 3; ++step) {
    whole.forward(b.x, whole_ctx, moe::Mode::train, static_cast<std::uint64_t>(step));
    whole.step_balancer();
    ep.forward(b.own(b.x), ctx, moe::Mode::train, static_cast<std::uint64_t>(step));
    ep.step_balancer();
  }
  moe::Vector<double> rank0 = ep.router.selection_bias;
  MPI_Bcast(rank0.data(), static_cast<int>(rank0.size()), MPI_DOUBLE, 0, comm.comm());
  CHECK(ep.router.selection_bias == rank0);  // bit-identical on every rank
  CHECK(ep.router.selection_bias == whole.router.selection_bias);
  CHECK(ep.router.selection_bias.cwiseAbs().maxCoeff() > 0);  // the balancer did move it
}

TEST_CASE("expert-parallel layer rejects a placement of another shape", "[parallel]") {
  const moe::Communicator comm;
  const moe::MoELayerConfig c = base_config();
  CHECK_THROWS_AS(moe::ExpertParallelMoELayer<double>(
                      c, comm, moe::ExpertPlacement::contiguous(8, comm.size() + 1)),
                  moe::Error);
  CHECK_THROWS_AS(moe::ExpertParallelMoELayer<double>(
                      c, comm, moe::ExpertPlacement::contiguous(4, comm.size())),
                  moe::Error);
}

TEST_CASE("expert-parallel layer: bad input on one rank raises moe::Error on every rank",
          "[parallel]") {
  const moe::Communicator comm;
  moe::MoELayerConfig c = base_config();
  moe::ExpertParallelMoELayer<double> ep(c, comm);
  ep.init_weights(1);
  moe::ExpertParallelContext<double> ctx;
  // The last rank passes one column too many; the others are fine and must not wait for it.
  const Index width = c.router.hidden + (comm.rank() == comm.size() - 1 ? 1 : 0);
  const Matrix x = random_matrix(4, width, 3);
  CHECK_THROWS_AS(ep.forward(x, ctx, moe::Mode::train, 0), moe::Error);

  const Matrix good = random_matrix(4, c.router.hidden, 3);
  ep.forward(good, ctx, moe::Mode::train, 0);
  const Matrix grad_y = random_matrix(comm.rank() == 0 ? 3 : 4, c.router.hidden, 4);
  CHECK_THROWS_AS(ep.backward(good, ctx, grad_y), moe::Error);
}

TEST_CASE("expert-parallel backward into kept gradients equals a fresh backward", "[parallel]") {
  const moe::Communicator comm;
  const moe::MoELayerConfig c = base_config();
  moe::MoELayer<double> whole = whole_layer(c);
  moe::ExpertParallelMoELayer<double> ep(c, comm);
  ep.load_from(whole);
  moe::ExpertParallelContext<double> ctx;
  moe::MoEGradients<double> kept;
  double worst = 0;
  for (std::uint64_t step = 0; step < 2; ++step) {
    // Step 0 spreads the tokens, step 1 sends every one to rank 0's experts: stale blocks would
    // show.
    ep.router.bias.setZero();
    if (step == 1) ep.router.bias.head(2).setConstant(50);
    const Batch b = make_batch(comm, c.router.hidden, 51 + step);
    const Matrix x = b.own(b.x), grad_y = b.own(b.grad_y);
    ep.forward(x, ctx, moe::Mode::train, step);
    ep.backward(x, ctx, grad_y, kept);
    ep.forward(x, ctx, moe::Mode::train, step);
    const auto fresh = ep.backward(x, ctx, grad_y);
    worst = std::max({worst, b.tokens ? relative_error(kept.x, fresh.x) : 0.0,
                      worst_expert_error(kept.experts, fresh.experts,
                                         [&] {
                                           std::vector<Index> all(
                                               static_cast<std::size_t>(ep.num_local_experts()));
                                           for (std::size_t i = 0; i < all.size(); ++i)
                                             all[i] = static_cast<Index>(i);
                                           return all;
                                         }()),
                      relative_error(kept.router.weight, fresh.router.weight)});
  }
  CHECK(worst == 0.0);
}

TEST_CASE("one rank: the all-to-all exchange computes the local exchange's result", "[parallel]") {
  // Every rank alone, over a communicator of itself: the exchange moves nothing. Dropless, the
  // experts see the same rows in the same order, so every output and gradient is bit for bit the
  // local exchange's. Under capacity the local experts read their slots in the drop policy's order
  // (choice-major here) and the exchanged rows arrive in token order, so the weight gradients sum
  // an expert's rows in another order: equal to 1e-12, outputs still bit for bit.
  const moe::Communicator self(MPI_COMM_SELF);
  for (auto dispatch : {moe::DispatchKind::dropless, moe::DispatchKind::capacity}) {
    INFO((dispatch == moe::DispatchKind::dropless ? "dropless" : "capacity"));
    moe::MoELayerConfig c = base_config();
    c.dispatch = dispatch;
    c.capacity.train_factor = 0.75;
    moe::MoELayer<double> local = whole_layer(c);
    moe::ExpertParallelMoELayer<double> ep(c, self);
    ep.load_from(local);
    const Matrix x = random_matrix(9, c.router.hidden, 61);
    const Matrix grad_y = random_matrix(9, c.router.hidden, 62);
    moe::MoELayerContext<double> local_ctx;
    moe::ExpertParallelContext<double> ctx;
    const auto ref = local.forward(x, local_ctx, moe::Mode::train, 7);
    const auto ref_grads = local.backward(x, local_ctx, grad_y);
    const auto out = ep.forward(x, ctx, moe::Mode::train, 7);
    const auto grads = ep.backward(x, ctx, grad_y);
    CHECK(out.y == ref.y);
    CHECK(out.aux_loss == ref.aux_loss);
    CHECK(grads.x == ref_grads.x);
    CHECK(grads.router.weight == ref_grads.router.weight);
    CHECK(grads.shared.w1 == ref_grads.shared.w1);
    if (dispatch == moe::DispatchKind::dropless) {
      CHECK(grads.experts.w1 == ref_grads.experts.w1);
      CHECK(grads.experts.w2 == ref_grads.experts.w2);
    } else {
      CHECK(relative_error(grads.experts.w1, ref_grads.experts.w1) <= kTolerance);
      CHECK(relative_error(grads.experts.w2, ref_grads.experts.w2) <= kTolerance);
    }
  }
}

TEST_CASE("an expert-parallel layer over caller buffers computes what the owned one does",
          "[parallel][parameters]") {
  const moe::Communicator comm;
  const moe::MoELayerConfig c = base_config();
  moe::ExpertParallelMoELayer<double> owned(c, comm);
  owned.load_from(whole_layer(c));

  // The caller's storage: one vector per parameter, holding a copy of the owned layer's values
  // (this rank's experts only).
  std::vector<std::vector<double>> storage;
  storage.reserve(16);
  const auto keep = [&](const auto& values) {
    storage.emplace_back(values.data(), values.data() + values.size());
    return moe::ParameterBuffer<double>{storage.back().data(),
                                        static_cast<Index>(storage.back().size())};
  };
  const auto keep_experts = [&](const moe::ExpertWeights<double>& w) {
    return moe::ExpertBuffers<double>{keep(w.w1), keep(w.w3), keep(w.w2),
                                      keep(w.b1), keep(w.b3), keep(w.b2)};
  };
  moe::MoELayerBuffers<double> buffers;
  buffers.router = {keep(owned.router.weight), keep(owned.router.bias),
                    keep(owned.router.noise_weight), keep(owned.router.selection_bias),
                    keep(owned.router.expert_scale)};
  buffers.experts = keep_experts(owned.experts);
  buffers.shared = keep_experts(owned.shared);
  buffers.shared_gate_weight = keep(owned.shared_gate_weight);
  auto mapped = moe::ExpertParallelMoELayer<double>::mapped(c, buffers, comm);
  CHECK(mapped.maps_caller_buffers());
  CHECK(mapped.experts.w1.data() == buffers.experts.w1.data);
  CHECK(mapped.router.weight.data() == buffers.router.weight.data);
  CHECK(mapped.num_local_experts() == owned.num_local_experts());

  const Batch b = make_batch(comm, c.router.hidden, 71);
  const Matrix x = b.own(b.x), grad_y = b.own(b.grad_y);
  moe::ExpertParallelContext<double> owned_ctx, mapped_ctx;
  const auto ref = owned.forward(x, owned_ctx, moe::Mode::train, 3);
  const auto ref_grads = owned.backward(x, owned_ctx, grad_y);
  const auto out = mapped.forward(x, mapped_ctx, moe::Mode::train, 3);
  const auto grads = mapped.backward(x, mapped_ctx, grad_y);
  CHECK(out.y == ref.y);
  CHECK(grads.x == ref_grads.x);
  CHECK(grads.experts.w1 == ref_grads.experts.w1);
  CHECK(grads.router.weight == ref_grads.router.weight);

  // An optimizer step through the members lands in the caller's buffer.
  mapped.experts.w2 -= 0.5 * grads.experts.w2;
  owned.experts.w2 -= 0.5 * ref_grads.experts.w2;
  CHECK(Eigen::Map<const Matrix>(buffers.experts.w2.data, owned.experts.w2.rows(),
                                 owned.experts.w2.cols()) == owned.experts.w2);
}
