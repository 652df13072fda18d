// The bad-input catalogue of the dispatch family: capacity configs and plans, dispatch and combine
// (shapes, edited plans, overlapping outputs), expert choice, dropless plans and permutes, and the
// sizes that would overflow an index.
#include <cstdint>
#include <limits>

#include <moe/dispatch/capacity_planner.hpp>
#include <moe/dispatch/dispatch.hpp>
#include <moe/dispatch/dropless_permute.hpp>
#include <moe/dispatch/dropless_plan.hpp>
#include <moe/dispatch/expert_choice.hpp>

#include "support/bad_input.hpp"
#include "support/catch.hpp"
#include "support/random_matrix.hpp"

namespace {

using moe::Index;
using moe::test::require_rejects;
using Matrix = moe::RowMatrix<double>;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr Index kMaxIndex = std::numeric_limits<Index>::max();

/// 6 tokens, top-2 over 4 experts, every expert over capacity 2.
struct Planned {
  moe::ExpertIdMatrix ids =
      (moe::ExpertIdMatrix(6, 2) << 0, 1, 1, 2, 2, 3, 3, 0, 0, 2, 1, 3).finished();
  Matrix gates = Matrix::Constant(6, 2, 0.5);
  moe::CapacityConfig config = [] {
    moe::CapacityConfig c;
    c.rounding = moe::CapacityRounding::fixed;
    c.fixed_capacity = 2;
    return c;
  }();
  moe::CapacityPlan<double> plan =
      moe::make_capacity_plan<double>(ids, gates, 4, config, moe::Mode::train);
  Matrix x = moe::test::random_matrix(6, 3, 1);
};

}  // namespace

TEST_CASE("capacity configs and plans refuse bad input", "[dispatch][errors]") {
  Planned p;
  const auto plan_with = [&](const moe::CapacityConfig& c) {
    return [&p, c] { moe::make_capacity_plan<double>(p.ids, p.gates, 4, c, moe::Mode::train); };
  };
  auto c = p.config;
  c.rounding = moe::CapacityRounding::megatron;
  c.train_factor = 0;
  require_rejects(plan_with(c), "CapacityConfig::train_factor", "a finite value > 0", "0");
  c.train_factor = kNaN;
  require_rejects(plan_with(c), "CapacityConfig::train_factor", "a finite value > 0", "nan");
  c = p.config;
  c.rounding = moe::CapacityRounding::megatron;
  c.eval_factor = -1;
  require_rejects(plan_with(c), "CapacityConfig::eval_factor", "a finite value > 0", "-1");
  c = p.config;
  c.min_capacity = -1;
  require_rejects(plan_with(c), "CapacityConfig::min_capacity", ">= 0", "-1");
  c = p.config;
  c.fixed_capacity = -3;
  require_rejects(plan_with(c), "CapacityConfig::fixed_capacity", ">= 0", "-3");
  c = p.config;
  c.alignment = 0;
  require_rejects(plan_with(c), "CapacityConfig::alignment", ">= 1", "0");
  c = p.config;
  c.group_size = -2;
  require_rejects(plan_with(c), "CapacityConfig::group_size", ">= 0", "-2");
  c = p.config;
  c.group_size = 4;  // 6 tokens
  require_rejects(plan_with(c), "expert_ids", "a row count divisible by CapacityConfig::group_size",
                  "6");
  // Sizes past an index: C * groups, and E * C slots, are refused before anything is allocated.
  c = p.config;
  c.fixed_capacity = kMaxIndex / 2;
  require_rejects(plan_with(c), "expert capacity", "a size that fits a 64-bit index", "e+18");
  c.fixed_capacity = Index{1} << 40;  // fits an index, not memory
  require_rejects(plan_with(c), "expert capacity", "a plan whose E * C slots fit in memory",
                  "slots");

  const auto plan_of = [&](const moe::ExpertIdMatrix& ids, const Matrix& gates, Index experts) {
    return [&p, ids, gates, experts] {
      moe::make_capacity_plan<double>(ids, gates, experts, p.config, moe::Mode::train);
    };
  };
  moe::ExpertIdMatrix bad_ids = p.ids;
  bad_ids(4, 1) = 4;
  require_rejects(plan_of(bad_ids, p.gates, 4), "expert_ids", "ids in [0, 4)",
                  "4 at row 4, column 1");
  bad_ids(4, 1) = -2;  // -1 is an unused slot, any other negative id an error
  require_rejects(plan_of(bad_ids, p.gates, 4), "expert_ids", "ids in [0, 4) or -1 (unused)",
                  "-2 at row 4");
  require_rejects(plan_of(p.ids, p.gates, 0), "num_experts", ">= 1", "0");
  require_rejects(plan_of(p.ids, Matrix::Zero(6, 3), 4), "gates", "shape [6, 2]", "[6, 3]");
  Matrix nan_gates = p.gates;
  nan_gates(3, 0) = kNaN;
  require_rejects(plan_of(p.ids, nan_gates, 4), "gates", "finite values", "nan at row 3, column 0");
  require_rejects([] { moe::expert_capacity(moe::CapacityConfig(), -1, 1, 4, moe::Mode::train); },
                  "tokens", ">= 0", "-1");
  require_rejects([] { moe::expert_capacity(moe::CapacityConfig(), 8, 0, 4, moe::Mode::train); },
                  "top_k", ">= 1", "0");

  moe::Vector<double> grad_weight = moe::Vector<double>::Zero(p.plan.num_entries());
  require_rejects([&] { moe::capacity_plan_backward<double>(p.plan, grad_weight.head(5)); },
                  "grad_weight", "size 12", "5");
  grad_weight[7] = kNaN;
  require_rejects([&] { moe::capacity_plan_backward<double>(p.plan, grad_weight); }, "grad_weight",
                  "finite values", "nan at row 7");
}

TEST_CASE("dispatch and combine refuse wrong shapes, edited plans and overlapping outputs",
          "[dispatch][errors]") {
  Planned p;
  const Index slots = p.plan.num_slots();
  Matrix buffer(slots, 3), y(6, 3), narrow(slots, 2), wide(6, 4);
  require_rejects([&] { moe::dispatch<double>(p.plan, Matrix::Zero(5, 3), buffer); }, "x",
                  "shape [6, *]", "[5, 3]");
  require_rejects([&] { moe::dispatch<double>(p.plan, p.x, narrow); }, "buffer", "shape [8, 3]",
                  "[8, 2]");
  require_rejects([&] { moe::combine<double>(p.plan, Matrix::Zero(slots - 1, 3), y); },
                  "expert_out", "shape [8, *]", "[7, 3]");
  require_rejects([&] { moe::combine<double>(p.plan, Matrix::Zero(slots, 3), wide); }, "y",
                  "shape [6, 3]", "[6, 4]");
  require_rejects([&] { moe::dispatch_backward<double>(p.plan, Matrix::Zero(3, 3), y); },
                  "grad_buffer", "shape [8, *]", "[3, 3]");

  // Outputs that overlap an input.
  Matrix shared = Matrix::Zero(slots, 3);
  require_rejects([&] { moe::dispatch<double>(p.plan, shared.topRows(6), shared); }, "buffer",
                  "memory that does not overlap x", "a matrix overlapping x");
  require_rejects([&] { moe::combine<double>(p.plan, shared, shared.bottomRows(6)); }, "y",
                  "memory that does not overlap expert_out", "a matrix overlapping expert_out");
  require_rejects([&] { moe::dispatch_backward<double>(p.plan, shared, shared.topRows(6)); },
                  "grad_x", "memory that does not overlap grad_buffer",
                  "a matrix overlapping grad_buffer");
  Matrix grads(slots, 3);
  moe::Vector<double> weights(p.plan.num_entries());
  require_rejects(
      [&] { moe::combine_backward<double>(p.plan, grads, Matrix::Zero(6, 3), grads, weights); },
      "grad_expert_out", "memory that does not overlap expert_out",
      "a matrix overlapping expert_out");

  // A plan is plain data: an edited one is refused before the kernels index with it.
  auto edited = p.plan;
  edited.entry_slot[3] = slots;
  require_rejects([&] { moe::dispatch<double>(edited, p.x, buffer); }, "plan.entry_slot",
                  "-1 or a slot of the entry's expert", "8 at entry 3");
  edited = p.plan;
  edited.slot_token[1] = 6;
  require_rejects([&] { moe::combine<double>(edited, Matrix::Zero(slots, 3), y); },
                  "plan.slot_token", "-1, or a token and its entry", "token 6");
  edited = p.plan;
  edited.token_offsets[2] = 100;
  require_rejects([&] { moe::dispatch<double>(edited, p.x, buffer); }, "plan.token_offsets",
                  "non-decreasing offsets", "a decrease at token 2");
  edited = p.plan;
  edited.entry_expert[0] = 9;
  require_rejects([&] { moe::dispatch<double>(edited, p.x, buffer); }, "plan.entry_expert",
                  "experts in [0, 4)", "9 at entry 0");
  edited = p.plan;
  edited.slot_entry.resize(3);
  require_rejects([&] { moe::combine<double>(edited, Matrix::Zero(slots, 3), y); },
                  "plan.slot_entry", "size E * capacity = 8", "3");
  edited = p.plan;
  edited.entry_weight.resize(2);
  require_rejects([&] { moe::dispatch<double>(edited, p.x, buffer); }, "plan.entry_weight",
                  "size entries = " + std::to_string(p.plan.num_entries()), "2");
  edited = p.plan;
  edited.renormalized = true;
  edited.survivor_sum.resize(0);
  require_rejects([&] { moe::combine<double>(edited, Matrix::Zero(slots, 3), y); },
                  "plan.survivor_sum", "size T (renormalized) = 6", "0");
}

TEST_CASE("expert choice plans refuse bad input", "[dispatch][errors]") {
  moe::ExpertChoiceConfig c;
  const auto choose = [&](const Matrix& scores, const moe::ExpertChoiceConfig& config) {
    return [scores, config] {
      moe::make_expert_choice_plan<double>(scores, config, moe::Mode::train);
    };
  };
  Matrix scores = Matrix::Constant(4, 2, 0.5);
  require_rejects(choose(Matrix(4, 0), c), "scores", "[T, E] with E >= 1", "[4, 0]");
  scores(2, 1) = kNaN;
  require_rejects(choose(scores, c), "scores", "finite values", "nan at row 2, column 1");
  scores(2, 1) = 0.5;
  auto grouped = c;
  grouped.group_size = 3;
  require_rejects(choose(scores, grouped), "scores", "divisible by ExpertChoiceConfig::group_size",
                  "4");
  auto bad = c;
  bad.train_factor = 0;
  require_rejects(choose(scores, bad), "CapacityConfig::train_factor", "a finite value > 0", "0");
  auto plan = moe::make_expert_choice_plan<double>(scores, c, moe::Mode::train);
  require_rejects([&] { moe::expert_choice_backward<double>(plan, moe::Vector<double>::Zero(1)); },
                  "grad_weight", "size ", "1");
}

TEST_CASE("dropless plans and permutes refuse bad input", "[dispatch][errors]") {
  const moe::ExpertIdMatrix ids = (moe::ExpertIdMatrix(3, 2) << 0, 1, 1, 2, 2, 0).finished();
  require_rejects([&] { moe::make_dropless_plan(ids, 0, 4); }, "num_experts", ">= 1", "0");
  require_rejects([&] { moe::make_dropless_plan(ids, 3, 0); }, "block_size", ">= 1", "0");
  require_rejects([&] { moe::make_dropless_plan(ids, 2, 4); }, "expert_ids", "ids in [0, 2)",
                  "2 at row 1, column 1");
  require_rejects([&] { moe::make_dropless_plan(ids, 3, kMaxIndex / 2); }, "block_size",
                  "a size that fits a 64-bit index", "");
  const moe::DroplessPlan plan = moe::make_dropless_plan(ids, 3, 2);
  const Matrix x = moe::test::random_matrix(3, 4, 2);
  Matrix out(plan.padded_rows(), 4), y(3, 4), short_out(2, 4), thin_gates(3, 1);
  require_rejects([&] { moe::dropless_permute<double>(Matrix::Zero(4, 4), plan, out); }, "x",
                  "3 rows (the plan's tokens)", "4");
  require_rejects([&] { moe::dropless_permute<double>(x, plan, short_out); }, "out", "shape [6, 4]",
                  "[2, 4]");
  Matrix shared = Matrix::Zero(plan.padded_rows(), 4);
  require_rejects([&] { moe::dropless_permute<double>(shared.bottomRows(3), plan, shared); }, "out",
                  "memory that does not overlap x", "a matrix overlapping x");
  const Matrix gates = Matrix::Constant(3, 2, 0.5);
  require_rejects([&] { moe::dropless_unpermute<double>(out, Matrix::Zero(3, 3), plan, y); },
                  "gates", "shape [3, 2]", "[3, 3]");
  Matrix nan_gates = gates;
  nan_gates(2, 1) = std::numeric_limits<double>::quiet_NaN();
  require_rejects([&] { moe::dropless_unpermute<double>(out, nan_gates, plan, y); }, "gates",
                  "finite values", "nan at row 2, column 1");
  require_rejects([&] { moe::dropless_unpermute<double>(shared, gates, plan, shared.topRows(3)); },
                  "out", "memory that does not overlap y", "a matrix overlapping y");
  Matrix grad_y(plan.padded_rows(), 4), grad_gates(3, 2);
  require_rejects(
      [&] { moe::dropless_unpermute_backward<double>(y, out, gates, plan, grad_y, thin_gates); },
      "grad_gates", "shape [3, 2]", "[3, 1]");
  require_rejects(
      [&] {
        moe::dropless_unpermute_backward<double>(y, out, nan_gates, plan, grad_y, grad_gates);
      },
      "gates", "finite values", "nan at row 2, column 1");
  require_rejects(
      [&] { moe::dropless_unpermute_backward<double>(y, grad_y, gates, plan, grad_y, grad_gates); },
      "grad_y", "memory that does not overlap y", "a matrix overlapping y");
  require_rejects([&] { moe::dropless_permute_backward<double>(Matrix::Zero(5, 4), plan, y); },
                  "grad_out", "shape [6, *]", "[5, 4]");

  auto edited = plan;
  edited.pair_row[2] = 99;
  require_rejects([&] { moe::dropless_permute<double>(x, edited, out); }, "plan.pair_row",
                  "rows in [0, 6)", "99 at pair 2");
  edited = plan;
  edited.offsets[3] = 5;
  require_rejects([&] { moe::dropless_unpermute<double>(out, gates, edited, y); }, "plan.offsets",
                  "offsets from 0 to the routed pairs (sorted_pairs: 6", "0 to 5");
  edited = plan;
  edited.block_size = 0;
  require_rejects([&] { moe::dropless_permute<double>(x, edited, out); }, "plan",
                  "a plan from make_dropless_plan", "block 0");
}

TEST_CASE("the edges that must work: no tokens, k = E, one expert, every choice dropped",
          "[dispatch][edge]") {
  // T = 0
  const moe::ExpertIdMatrix none(0, 2);
  const auto empty = moe::make_capacity_plan<double>(none, Matrix(0, 2), 4, moe::CapacityConfig(),
                                                     moe::Mode::train);
  CHECK(empty.num_entries() == 0);
  CHECK(moe::dispatch<double>(empty, Matrix(0, 3)).rows() == 0);
  CHECK(moe::make_dropless_plan(none, 4, 8).padded_rows() == 0);
  // k = E = 1: one expert takes every token
  const moe::ExpertIdMatrix one = moe::ExpertIdMatrix::Zero(5, 1);
  const auto all = moe::make_capacity_plan<double>(one, Matrix::Ones(5, 1), 1,
                                                   moe::CapacityConfig(), moe::Mode::train);
  CHECK(all.total_kept == 5);
  // every choice dropped: capacity 0
  moe::CapacityConfig zero;
  zero.rounding = moe::CapacityRounding::fixed;
  zero.fixed_capacity = 0;
  const auto dropped =
      moe::make_capacity_plan<double>(one, Matrix::Ones(5, 1), 1, zero, moe::Mode::train);
  CHECK(dropped.total_dropped == 5);
  CHECK(dropped.tokens_without_expert == 5);
  CHECK(moe::combine<double>(dropped, Matrix(0, 3)).isZero(0));
}
