// The bad-input catalogue of the experts family: configs, weights and their initialization, the
// dropless and capacity FFNs forward and backward (shapes, non-finite input, foreign contexts,
// overlapping outputs, sizes), their panel copies and the block-sparse products over panels.
#include <limits>
#include <vector>

#include <moe/experts/capacity_ffn.hpp>
#include <moe/experts/dropless_ffn.hpp>
#include <moe/experts/packed_expert_weights.hpp>
#include <moe/sparse/panel_ops.hpp>

#include "support/bad_input.hpp"
#include "support/catch.hpp"
#include "support/random_matrix.hpp"

namespace {

using moe::Index;
using moe::test::require_rejects;
using Matrix = moe::RowMatrix<double>;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

moe::ExpertFFNConfig config(Index experts = 3) {
  moe::ExpertFFNConfig c;
  c.num_experts = experts;
  c.hidden = 4;
  c.ffn_hidden = 5;
  c.activation = moe::Activation::swiglu;
  return c;
}

/// Three experts, four tokens routed top-2, and a forward that saved for backward.
struct Dropless {
  moe::ExpertWeights<double> weights{config()};
  moe::ExpertIdMatrix ids = (moe::ExpertIdMatrix(4, 2) << 0, 1, 1, 2, 2, 0, 0, 2).finished();
  moe::DroplessPlan plan = moe::make_dropless_plan(ids, 3, 2);
  Matrix x = moe::test::random_matrix(4, 4, 1);
  Matrix gates = Matrix::Constant(4, 2, 0.5);
  Matrix y = Matrix(4, 4);
  moe::DroplessFFNContext<double> ctx;
  Dropless() {
    weights.init_weights(2, 0.3);
    moe::dropless_ffn_forward<double>(weights, x, gates, plan, ctx, y);
  }
};

}  // namespace

TEST_CASE("expert configs, weights and their initialization refuse bad input",
          "[experts][errors]") {
  const auto build = [](const moe::ExpertFFNConfig& c) {
    return [c] { moe::ExpertWeights<float> w(c); };
  };
  auto c = config();
  c.num_experts = 0;
  require_rejects(build(c), "ExpertFFNConfig::num_experts", ">= 1", "0");
  c = config();
  c.hidden = -2;
  require_rejects(build(c), "ExpertFFNConfig::hidden", ">= 1", "-2");
  c = config();
  c.ffn_hidden = 0;
  require_rejects(build(c), "ExpertFFNConfig::ffn_hidden", ">= 1", "0");
  c = config();
  c.block_cols = 0;
  require_rejects(build(c), "ExpertFFNConfig::block_cols", ">= 1", "0");

  moe::ExpertWeights<double> w(config());
  require_rejects([&] { w.init_weights(1, kNaN); }, "stddev", "a finite value >= 0", "nan");
  require_rejects([&] { w.init_weights(1, -1.0); }, "stddev", "a finite value >= 0", "-1");
  require_rejects(
      [&] {
        w.init_weights(1, 0.1, {0, 1}, 3);
      },
      "global_ids", "3 ids (config.num_experts)", "2");
  require_rejects(
      [&] {
        w.init_weights(1, 0.1, {0, 1, 7}, 4);
      },
      "global_ids", "ids in [0, 4)", "7");

  std::vector<double> w1(60), w3(60), w2(60);
  moe::ExpertBuffers<double> b{{w1.data(), 59}, {w3.data(), 60}, {w2.data(), 60}, {}, {}, {}};
  require_rejects([&] { moe::ExpertWeights<double>::mapped(config(), b); }, "buffers.w1",
                  "60 elements ([12, 5])", "59");
  b.w1.size = 60;
  b.w3.data = nullptr;
  require_rejects([&] { moe::ExpertWeights<double>::mapped(config(), b); }, "buffers.w3",
                  "a non-null pointer", "nullptr");
}

TEST_CASE("the dropless FFN refuses bad input, foreign contexts and overlapping outputs",
          "[experts][errors]") {
  Dropless d;
  Matrix y(4, 4), wide(4, 5);
  const auto forward = [&](const moe::ExpertWeights<double>& weights, const Matrix& x,
                           const Matrix& gates, const moe::DroplessPlan& plan) {
    return [&, x, gates] {
      moe::DroplessFFNContext<double> ctx;
      moe::dropless_ffn_forward<double>(weights, x, gates, plan, ctx, y);
    };
  };
  const moe::DroplessPlan other_plan = moe::make_dropless_plan(d.ids, 4, 2);
  require_rejects(forward(d.weights, d.x, d.gates, other_plan), "plan.num_experts",
                  "3 (weights.config.num_experts)", "4");
  require_rejects(forward(d.weights, Matrix::Zero(4, 3), d.gates, d.plan), "x", "shape [4, 4]",
                  "[4, 3]");
  require_rejects(forward(d.weights, d.x, Matrix::Zero(4, 1), d.plan), "gates", "shape [4, 2]",
                  "[4, 1]");
  Matrix x = d.x;
  x(3, 3) = kNaN;
  require_rejects(forward(d.weights, x, d.gates, d.plan), "x", "finite values",
                  "nan at row 3, column 3");
  Matrix gates = d.gates;
  gates(0, 1) = kNaN;
  require_rejects(forward(d.weights, d.x, gates, d.plan), "gates", "finite values",
                  "nan at row 0, column 1");
  require_rejects(
      [&] {
        moe::DroplessFFNContext<double> ctx;
        moe::dropless_ffn_forward<double>(d.weights, d.x, d.gates, d.plan, ctx, wide);
      },
      "out", "shape [4, 4]", "[4, 5]");
  require_rejects(
      [&] {
        moe::DroplessFFNContext<double> ctx;
        Matrix in_place = d.x;
        moe::dropless_ffn_forward<double>(d.weights, in_place, d.gates, d.plan, ctx, in_place);
      },
      "out", "memory that does not overlap x", "a matrix overlapping x");
  moe::ExpertWeights<double> edited = d.weights;
  edited.config.ffn_hidden = 6;  // the parameters keep their shapes
  require_rejects(forward(edited, d.x, d.gates, d.plan), "weights.w1", "shape [12, 6]", "[12, 5]");

  moe::ExpertGradients<double> grads(config());
  Matrix grad_x(4, 4), grad_gates(4, 2);
  const auto backward = [&](const moe::ExpertWeights<double>& weights,
                            moe::DroplessFFNContext<double>& ctx, const Matrix& grad_out) {
    return [&, grad_out] {
      moe::dropless_ffn_backward<double>(weights, grad_out, d.plan, ctx, grads, grad_x, grad_gates);
    };
  };
  moe::DroplessFFNContext<double> empty;
  require_rejects(backward(d.weights, empty, d.y), "ctx",
                  "a context filled by dropless_ffn_forward", "an empty context");
  moe::ExpertWeights<double> gelu([] {
    auto c = config();
    c.activation = moe::Activation::gelu;
    return c;
  }());
  require_rejects(backward(gelu, d.ctx, d.y), "ctx",
                  "a context filled by the forward of these weights", "swiglu");
  Matrix grad_out = d.y;
  grad_out(2, 0) = -std::numeric_limits<double>::infinity();
  require_rejects(backward(d.weights, d.ctx, grad_out), "grad_out", "finite values",
                  "-inf at row 2, column 0");
  require_rejects(backward(d.weights, d.ctx, Matrix::Zero(4, 3)), "grad_out", "shape [4, 4]",
                  "[4, 3]");
  moe::DroplessFFNContext<double> unsaved;
  unsaved.save_for_backward = false;
  moe::dropless_ffn_forward<double>(d.weights, d.x, d.gates, d.plan, unsaved, y);
  require_rejects(backward(d.weights, unsaved, d.y), "ctx",
                  "a context whose forward ran with save_for_backward = true",
                  "save_for_backward = false");
  require_rejects([&] { moe::make_topology(d.plan, 4, -1); }, "block_cols",
                  ">= 0 (0: the plan's block size)", "-1");
}

TEST_CASE("the capacity FFN refuses bad input and foreign contexts", "[experts][errors]") {
  moe::ExpertWeights<double> weights(config(2));
  weights.init_weights(3, 0.3);
  const moe::IndexVector filled = (moe::IndexVector(2) << 2, 1).finished();
  Matrix x = moe::test::random_matrix(6, 4, 4), out(6, 4), big(6, 4);
  moe::CapacityFFNContext<double> ctx;
  const auto forward = [&](Index capacity, const moe::IndexVector& rows, const Matrix& in) {
    return [&, capacity, rows, in] {
      moe::capacity_ffn_forward<double>(weights, in, capacity, rows, ctx, out);
    };
  };
  require_rejects(forward(-1, filled, x), "capacity", ">= 0", "-1");
  require_rejects(forward(3, moe::IndexVector::Zero(3), x), "filled", "0 or 2 entries", "3");
  require_rejects(forward(3, (moe::IndexVector(2) << 2, 4).finished(), x), "filled",
                  "0 <= filled <= capacity (3) for expert 1", "4");
  require_rejects(forward(2, filled, x), "x", "shape [4, 4]", "[6, 4]");
  require_rejects(forward(std::numeric_limits<Index>::max() / 2 + 1, filled, x), "capacity",
                  "a size that fits a 64-bit index", "2 * ");
  Matrix nan_in = x;
  nan_in(3, 1) = kNaN;  // slot 0 of expert 1: filled
  require_rejects(forward(3, filled, nan_in), "x", "finite values", "nan at row 0, column 1");
  nan_in = x;
  nan_in(5, 1) = kNaN;  // slot 2 of expert 1: empty, never read
  CHECK_NOTHROW(forward(3, filled, nan_in)());

  moe::ExpertGradients<double> grads(config(2));
  Matrix grad_x(6, 4);
  moe::CapacityFFNContext<double> empty;
  require_rejects(
      [&] { moe::capacity_ffn_backward<double>(weights, x, out, empty, grads, grad_x); }, "ctx",
      "a context filled by capacity_ffn_forward", "an empty context");
  moe::capacity_ffn_forward<double>(weights, x, 3, filled, ctx, big);
  moe::ExpertWeights<double> other(config(2));
  other.config.ffn_hidden = 5;
  moe::ExpertWeights<double> wider([] {
    auto c = config(2);
    c.ffn_hidden = 7;
    return c;
  }());
  moe::ExpertGradients<double> wider_grads(wider.config);
  require_rejects(
      [&] { moe::capacity_ffn_backward<double>(wider, x, big, ctx, wider_grads, grad_x); }, "ctx",
      "f = 7", "f = 5");
}

TEST_CASE("panel copies and the products over them refuse weights they were not made from",
          "[experts][errors][panels]") {
  Dropless d;
  const moe::PackedExpertWeights<double> panels(d.weights), empty;
  moe::ExpertWeights<double> wider([] {
    auto c = config();
    c.ffn_hidden = 6;
    return c;
  }());
  wider.init_weights(4, 0.3);
  const moe::PackedExpertWeights<double> other(wider);
  Matrix y(4, 4);
  const auto forward = [&](const moe::PackedExpertWeights<double>& copy) {
    return [&] {
      moe::DroplessFFNContext<double> ctx;
      moe::dropless_ffn_forward<double>(d.weights, copy, d.x, d.gates, d.plan, ctx, y);
    };
  };
  require_rejects(forward(other), "panels",
                  "the panels of weights of the same config (PackedExpertWeights(weights))",
                  "the panels of weights of another shape");
  require_rejects(forward(empty), "panels", "the panels of weights of the same config",
                  "an empty PackedExpertWeights");
  CHECK_NOTHROW(forward(panels)());
  moe::CapacityFFNContext<double> capacity_ctx;
  Matrix slots = moe::test::random_matrix(6, 4, 5), out(6, 4);
  require_rejects(
      [&] {
        moe::capacity_ffn_forward<double>(d.weights, other, slots, 2, moe::IndexVector(),
                                          capacity_ctx, out);
      },
      "panels", "the panels of weights of the same config", "another shape");
  moe::ExpertWeights<double> edited = d.weights;
  edited.config.ffn_hidden = 6;  // the parameters keep their shapes
  require_rejects([&] { moe::PackedExpertWeights<double> copy(edited); }, "master.w1",
                  "shape [12, 6]", "[12, 5]");
  // The products over panels name the operand that does not fit the topology.
  const moe::BlockSparseTopology topo = moe::make_topology(d.plan, 5);
  Matrix h1(topo.rows(), 5), h3(topo.rows(), 5), grouped(topo.rows(), 4);
  require_rejects(
      [&] {
        moe::sdd_pair_panels<double>(grouped, panels.w1(), other.w3(), topo, h1, h3,
                                     moe::NoEpilogue{});
      },
      "b2", "panels of [4, 5] matrices", "panels of [4, 6]");
  require_rejects([&] { moe::dsd_panels<double>(h1, other.w2(), topo, grouped); }, "b",
                  "panels of [5, 4] matrices", "panels of [6, 4]");
}
