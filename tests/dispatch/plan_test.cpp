// Token-choice capacity plans: hand-worked overflows for every drop policy, survivor
// renormalization, routing groups, agreement with the sort-based reference on random shapes,
// invariants, edge cases and bad input.
#include <moe/dispatch/capacity_planner.hpp>
#include <moe/health/capacity.hpp>

#include <cmath>
#include <vector>

#include "dispatch/test_util.hpp"
#include "support/dispatch_reference.hpp"

using moe::CapacityConfig;
using moe::CapacityPlan;
using moe::CapacityRounding;
using moe::DropPolicy;
using moe::ExpertIdMatrix;
using moe::Index;
using moe::Mode;
using moe::RowMatrix;

namespace {

// Four tokens, three experts, top-2, capacity 2 per expert.
//   token 0 -> (e0 .50, e1 .30)   token 1 -> (e0 .60, e2 .20)
//   token 2 -> (e1 .70, e0 .25)   token 3 -> (e0 .40, e1 .35)
// Expert 0 receives four entries, expert 1 three, expert 2 one.
struct HandCase {
  ExpertIdMatrix ids;
  RowMatrix<double> gates;
  HandCase() : ids(4, 2), gates(4, 2) {
    ids << 0, 1, 0, 2, 1, 0, 0, 1;
    gates << 0.50, 0.30, 0.60, 0.20, 0.70, 0.25, 0.40, 0.35;
  }
};

CapacityConfig fixed_config(Index c, DropPolicy policy) {
  CapacityConfig config;
  config.rounding = CapacityRounding::fixed;
  config.fixed_capacity = c;
  config.policy = policy;
  return config;
}

// Expected slots as (expert, c) per entry, (-1, -1) when dropped.
using Slots = std::vector<std::vector<std::pair<int, int>>>;

void check_slots(const CapacityPlan<double>& plan, const Slots& expected) {
  REQUIRE(plan.num_tokens == static_cast<Index>(expected.size()));
  for (Index t = 0; t < plan.num_tokens; ++t)
    for (Index j = 0; j < plan.top_k; ++j) {
      const auto [e, c] = expected[static_cast<std::size_t>(t)][static_cast<std::size_t>(j)];
      const Index want = e < 0 ? -1 : e * plan.capacity + c;
      INFO("token " << t << " choice " << j);
      CHECK(plan.entry_slot[plan.entry(t, j)] == want);
    }
}

}  // namespace

TEST_CASE("position policy keeps entries in (token, choice) order", "[plan][policy]") {
  HandCase h;
  auto plan = moe::make_capacity_plan<double>(h.ids, h.gates, 3,
                                              fixed_config(2, DropPolicy::position), Mode::train);
  check_slots(plan, {{{0, 0}, {1, 0}}, {{0, 1}, {2, 0}}, {{1, 1}, {-1, -1}}, {{-1, -1}, {-1, -1}}});
  CHECK(plan.kept == moe::IndexVector((moe::IndexVector(3) << 2, 2, 1).finished()));
  CHECK(plan.dropped == moe::IndexVector((moe::IndexVector(3) << 2, 1, 0).finished()));
  CHECK(plan.total_kept == 5);
  CHECK(plan.total_dropped == 3);
  CHECK(plan.tokens_without_expert == 1);
  CHECK(plan.drop_rate() == Approx(3.0 / 8.0));
  CHECK(plan.utilization() == Approx(5.0 / 6.0));
  CHECK(plan.utilization(2) == Approx(0.5));
  CHECK(plan.fraction_tokens_without_expert() == Approx(0.25));
  // Kept weights are the gates, dropped ones 0.
  CHECK(plan.entry_weight[plan.entry(0, 1)] == 0.30);
  CHECK(plan.entry_weight[plan.entry(2, 1)] == 0.0);
  // Expert side is the inverse map.
  CHECK(plan.slot_token[1 * plan.capacity + 1] == 2);
  CHECK(plan.slot_entry[1 * plan.capacity + 1] == plan.entry(2, 0));
  CHECK(plan.slot_token[2 * plan.capacity + 1] == -1);
}

TEST_CASE("choice-major policy serves every first choice before any second", "[plan][policy]") {
  HandCase h;
  auto plan = moe::make_capacity_plan<double>(
      h.ids, h.gates, 3, fixed_config(2, DropPolicy::choice_major), Mode::train);
  // Expert 1: token 2's first choice takes slot 0 before token 0's second choice.
  check_slots(plan, {{{0, 0}, {1, 1}}, {{0, 1}, {2, 0}}, {{1, 0}, {-1, -1}}, {{-1, -1}, {-1, -1}}});
  CHECK(plan.tokens_without_expert == 1);
}

TEST_CASE("probability policy keeps the largest gates, numbered in token order", "[plan][policy]") {
  HandCase h;
  auto plan = moe::make_capacity_plan<double>(
      h.ids, h.gates, 3, fixed_config(2, DropPolicy::probability), Mode::train);
  // Expert 0 keeps .60 and .50 (drops .40, .25); expert 1 keeps .70 and .35 (drops .30).
  check_slots(plan, {{{0, 0}, {-1, -1}}, {{0, 1}, {2, 0}}, {{1, 0}, {-1, -1}}, {{-1, -1}, {1, 1}}});
  CHECK(plan.tokens_without_expert == 0);
  CHECK(plan.dropped == moe::IndexVector((moe::IndexVector(3) << 2, 1, 0).finished()));
}

TEST_CASE("batch-prioritized policy orders tokens by their largest gate", "[plan][policy]") {
  HandCase h;
  auto plan = moe::make_capacity_plan<double>(
      h.ids, h.gates, 3, fixed_config(2, DropPolicy::batch_prioritized), Mode::train);
  // Importance order: token 2 (.70), 1 (.60), 0 (.50), 3 (.40); first choices first.
  check_slots(plan, {{{0, 1}, {1, 1}}, {{0, 0}, {2, 0}}, {{1, 0}, {-1, -1}}, {{-1, -1}, {-1, -1}}});
}

TEST_CASE("ties go to the lower token index", "[plan][policy]") {
  ExpertIdMatrix ids(4, 1);
  ids << 0, 0, 0, 0;
  RowMatrix<double> gates(4, 1);
  gates << 0.5, 0.9, 0.5, 0.9;
  auto prob = moe::make_capacity_plan<double>(
      ids, gates, 1, fixed_config(3, DropPolicy::probability), Mode::train);
  check_slots(prob, {{{0, 0}}, {{0, 1}}, {{-1, -1}}, {{0, 2}}});
  gates << 0.5, 0.9, 0.5, 0.9;
  auto bpr = moe::make_capacity_plan<double>(
      ids, gates, 1, fixed_config(3, DropPolicy::batch_prioritized), Mode::train);
  check_slots(bpr, {{{0, 2}}, {{0, 0}}, {{-1, -1}}, {{0, 1}}});
}

TEST_CASE("random token selection is seeded and keeps C per expert", "[plan][policy]") {
  auto r = moe::test::synthetic_routing(64, 4, 1, 5, moe::test::Load::all_to_one);
  const auto config = fixed_config(10, DropPolicy::random);
  auto a = moe::make_capacity_plan<double>(r.ids, r.gates, 4, config, Mode::train, 11);
  auto b = moe::make_capacity_plan<double>(r.ids, r.gates, 4, config, Mode::train, 11);
  auto c = moe::make_capacity_plan<double>(r.ids, r.gates, 4, config, Mode::train, 12);
  CHECK(a.entry_slot == b.entry_slot);
  CHECK(a.entry_slot != c.entry_slot);
  CHECK(a.kept[0] == 10);
  CHECK(a.dropped[0] == 54);
  // Not simply the first ten tokens, and kept entries numbered in token order.
  auto pos = moe::make_capacity_plan<double>(r.ids, r.gates, 4,
                                             fixed_config(10, DropPolicy::position), Mode::train);
  CHECK(a.entry_slot != pos.entry_slot);
  Index last = -1;
  for (Index t = 0; t < 64; ++t)
    if (a.entry_slot[t] >= 0) {
      CHECK(a.entry_slot[t] == last + 1);
      last = a.entry_slot[t];
    }
}

TEST_CASE("survivor renormalization divides by the kept sum", "[plan][renormalize]") {
  HandCase h;
  auto config = fixed_config(2, DropPolicy::position);
  config.renormalize_survivors = true;
  auto plan = moe::make_capacity_plan<double>(h.ids, h.gates, 3, config, Mode::train);
  CHECK(plan.renormalized);
  CHECK(plan.entry_weight[plan.entry(0, 0)] == Approx(0.5 / 0.8));
  CHECK(plan.entry_weight[plan.entry(0, 1)] == Approx(0.3 / 0.8));
  CHECK(plan.entry_weight[plan.entry(1, 0)] == Approx(0.75));
  CHECK(plan.entry_weight[plan.entry(2, 0)] == Approx(1.0));  // lone survivor gets weight 1
  CHECK(plan.entry_weight[plan.entry(2, 1)] == 0.0);
  CHECK(plan.entry_weight[plan.entry(3, 0)] == 0.0);  // all dropped: weights 0, no NaN
  CHECK(plan.entry_weight[plan.entry(3, 1)] == 0.0);
  CHECK(plan.survivor_sum[3] == 0.0);
}

TEST_CASE("groups apply capacity per sequence and pack slots per expert", "[plan][groups]") {
  // Hugging Face Switch: capacity 1 per sequence of 3 tokens.
  ExpertIdMatrix ids(6, 1);
  ids << 0, 0, 1, 1, 0, 0;
  RowMatrix<double> gates = RowMatrix<double>::Constant(6, 1, 0.5);
  auto config = fixed_config(1, DropPolicy::position);
  config.group_size = 3;
  auto plan = moe::make_capacity_plan<double>(ids, gates, 2, config, Mode::train);
  CHECK(plan.num_groups == 2);
  CHECK(plan.group_capacity == 1);
  CHECK(plan.capacity == 2);
  check_slots(plan, {{{0, 0}}, {{-1, -1}}, {{1, 0}}, {{1, 1}}, {{0, 1}}, {{-1, -1}}});
  // Without groups the same routing keeps the first two of expert 0 in the batch.
  config.group_size = 0;
  config.fixed_capacity = 2;
  auto batch = moe::make_capacity_plan<double>(ids, gates, 2, config, Mode::train);
  check_slots(batch, {{{0, 0}}, {{0, 1}}, {{1, 0}}, {{1, 1}}, {{-1, -1}}, {{-1, -1}}});
}

TEST_CASE("plans match the sort-based reference on random shapes", "[plan][reference]") {
  const DropPolicy policies[] = {DropPolicy::position, DropPolicy::choice_major,
                                 DropPolicy::probability, DropPolicy::batch_prioritized,
                                 DropPolicy::random};
  const moe::test::Load loads[] = {moe::test::Load::uniform, moe::test::Load::skewed,
                                   moe::test::Load::all_to_one};
  std::uint64_t seed = 1;
  for (Index tokens : {Index(1), Index(7), Index(48), Index(96)})
    for (Index experts : {Index(1), Index(3), Index(8)})
      for (Index k : {Index(1), Index(2), Index(3)}) {
        if (k > experts) continue;
        for (auto load : loads)
          for (auto policy : policies)
            for (Index group : {Index(0), Index(1), tokens % 2 == 0 ? tokens / 2 : tokens}) {
              ++seed;
              auto r = moe::test::synthetic_routing(tokens, experts, k, seed, load);
              // every third case with unused slots (adaptive k): no slot and not a drop
              Index unused = 0;
              for (Index p = 0; seed % 3 == 0 && p < tokens * k; p += 5, ++unused)
                r.ids(p / k, p % k) = moe::kUnusedSlot, r.gates(p / k, p % k) = 0;
              CapacityConfig config;
              config.policy = policy;
              config.train_factor = 0.3 + 0.4 * static_cast<double>(seed % 4);
              config.group_size = group;
              auto plan = moe::make_capacity_plan<double>(r.ids, r.gates, experts, config,
                                                          Mode::train, seed);
              auto ref = moe::test::reference_slots(r.ids, r.gates, experts, group,
                                                    plan.group_capacity, policy, seed);
              INFO("T=" << tokens << " E=" << experts << " k=" << k << " group=" << group
                        << " policy=" << static_cast<int>(policy));
              REQUIRE(plan.capacity == ref.capacity);
              bool same = true;
              for (Index t = 0; t < tokens; ++t)
                for (Index j = 0; j < k; ++j)
                  same = same && plan.entry_slot[plan.entry(t, j)] == ref.slot(t, j);
              CHECK(same);
              // Invariants.
              CHECK(plan.total_kept + plan.total_dropped == tokens * k - unused);
              CHECK(plan.kept.sum() == plan.total_kept);
              Index filled = 0;
              for (Index s = 0; s < plan.num_slots(); ++s) {
                const Index e = s / std::max<Index>(plan.capacity, 1);
                const Index c = s - e * plan.capacity;
                const bool occupied = plan.slot_entry[s] >= 0;
                CHECK(occupied == (c < plan.kept[e]));  // kept rows first, no gaps
                if (occupied) {
                  ++filled;
                  CHECK(plan.entry_slot[plan.slot_entry[s]] == s);
                  CHECK(plan.entry_expert[plan.slot_entry[s]] == e);
                }
              }
              CHECK(filled == plan.total_kept);
              for (Index e = 0; e < experts; ++e) CHECK(plan.kept[e] <= plan.capacity);
            }
      }
}

TEST_CASE("edge cases: T = 0, E = 1, k = E, C = 0 and 1, all tokens to one expert",
          "[plan][edge]") {
  CapacityConfig config;
  SECTION("no tokens") {
    ExpertIdMatrix ids(0, 2);
    RowMatrix<double> gates(0, 2);
    auto plan = moe::make_capacity_plan<double>(ids, gates, 4, config, Mode::train);
    CHECK(plan.num_entries() == 0);
    CHECK(plan.capacity == 0);
    CHECK(plan.token_offsets.size() == 1);
    CHECK(std::isnan(plan.drop_rate()));  // empty denominators give NaN, as in moe/health
    CHECK(std::isnan(plan.utilization()));
    CHECK(std::isnan(plan.fraction_tokens_without_expert()));
    config.group_size = 4;
    auto grouped = moe::make_capacity_plan<double>(ids, gates, 4, config, Mode::train);
    CHECK(grouped.num_groups == 0);
    CHECK(grouped.num_slots() == 0);
  }
  SECTION("one expert") {
    auto r = moe::test::synthetic_routing(10, 1, 1, 3);
    config.train_factor = 0.5;  // C = 5
    auto plan = moe::make_capacity_plan<double>(r.ids, r.gates, 1, config, Mode::train);
    CHECK(plan.capacity == 5);
    CHECK(plan.total_kept == 5);
    CHECK(plan.total_dropped == 5);
  }
  SECTION("k = E with room for everything") {
    auto r = moe::test::synthetic_routing(9, 3, 3, 4);
    auto plan = moe::make_capacity_plan<double>(r.ids, r.gates, 3, config, Mode::train);
    CHECK(plan.capacity == 9);
    CHECK(plan.total_dropped == 0);
    CHECK(plan.kept.minCoeff() == 9);
    CHECK(plan.utilization() == 1.0);
  }
  SECTION("capacity 0 drops everything, capacity 1 keeps one per expert") {
    auto r = moe::test::synthetic_routing(12, 4, 2, 5);
    config.rounding = CapacityRounding::megablocks;
    config.train_factor = 0.01;  // trunc(0.06) = 0
    auto none = moe::make_capacity_plan<double>(r.ids, r.gates, 4, config, Mode::train);
    CHECK(none.capacity == 0);
    CHECK(none.total_kept == 0);
    CHECK(none.total_dropped == 24);
    CHECK(none.tokens_without_expert == 12);
    CHECK(none.drop_rate() == 1.0);
    CHECK(none.entry_weight.cwiseAbs().maxCoeff() == 0.0);
    config.rounding = CapacityRounding::megatron;  // ceil(0.06) = 1
    auto one = moe::make_capacity_plan<double>(r.ids, r.gates, 4, config, Mode::train);
    CHECK(one.capacity == 1);
    CHECK(one.total_kept == 4);
  }
  SECTION("all tokens prefer one expert") {
    auto r = moe::test::synthetic_routing(40, 8, 2, 6, moe::test::Load::all_to_one);
    config.policy = DropPolicy::choice_major;
    auto plan = moe::make_capacity_plan<double>(r.ids, r.gates, 8, config, Mode::train);
    CHECK(plan.capacity == 10);  // ceil(40 * 2 / 8)
    CHECK(plan.kept[0] == 10);
    CHECK(plan.kept[1] == 10);
    CHECK(plan.kept.tail(6).sum() == 0);
    CHECK(plan.total_dropped == 60);
    CHECK(plan.tokens_without_expert == 30);
  }
  SECTION("a routing object") {
    moe::Routing<double> routing;
    auto r = moe::test::synthetic_routing(6, 4, 2, 8);
    routing.expert_ids = r.ids;
    routing.gates = r.gates;
    routing.scores = RowMatrix<double>::Zero(6, 4);
    auto plan = moe::make_capacity_plan(routing, config, Mode::eval);
    CHECK(plan.num_experts == 4);
    CHECK(plan.num_entries() == 12);
  }
}

TEST_CASE("bad planner input throws moe::Error naming the argument", "[plan][errors]") {
  HandCase h;
  CapacityConfig config;
  CHECK_THROWS_WITH(moe::make_capacity_plan<double>(h.ids, h.gates, 0, config, Mode::train),
                    MOE_CONTAINS("num_experts"));
  CHECK_THROWS_WITH(
      moe::make_capacity_plan<double>(h.ids, h.gates, 2, config, Mode::train),
      MOE_CONTAINS(
          "expert_ids: expected expert ids in [0, 2) or -1 (unused), got 2 at row 1, column 1"));
  ExpertIdMatrix negative = h.ids;
  negative(0, 0) = -2;  // -1 would be an unused slot
  CHECK_THROWS_WITH(moe::make_capacity_plan<double>(negative, h.gates, 3, config, Mode::train),
                    MOE_CONTAINS("expert_ids"));
  RowMatrix<double> narrow = h.gates.leftCols(1);
  CHECK_THROWS_WITH(moe::make_capacity_plan<double>(h.ids, narrow, 3, config, Mode::train),
                    MOE_CONTAINS("gates: expected shape [4, 2], got [4, 1]"));
  RowMatrix<double> nan = h.gates;
  nan(2, 1) = std::nan("");
  CHECK_THROWS_WITH(moe::make_capacity_plan<double>(h.ids, nan, 3, config, Mode::train),
                    MOE_CONTAINS("gates"));
  ExpertIdMatrix no_choice(4, 0);
  RowMatrix<double> no_gates(4, 0);
  CHECK_THROWS_WITH(moe::make_capacity_plan<double>(no_choice, no_gates, 3, config, Mode::train),
                    MOE_CONTAINS("top-k >= 1"));
  config.group_size = 3;
  CHECK_THROWS_WITH(moe::make_capacity_plan<double>(h.ids, h.gates, 3, config, Mode::train),
                    MOE_CONTAINS("group_size"));
  config.group_size = 0;
  config.train_factor = -1.0;
  CHECK_THROWS_WITH(moe::make_capacity_plan<double>(h.ids, h.gates, 3, config, Mode::train),
                    MOE_CONTAINS("train_factor"));
  moe::Routing<double> empty_scores;
  empty_scores.expert_ids = h.ids;
  empty_scores.gates = h.gates;
  CHECK_THROWS_WITH(moe::make_capacity_plan(empty_scores, CapacityConfig{}, Mode::train),
                    MOE_CONTAINS("routing.scores"));
}

TEST_CASE("a plan's counts feed the health capacity report", "[plan][health]") {
  HandCase h;
  auto plan = moe::make_capacity_plan<double>(h.ids, h.gates, 3,
                                              fixed_config(2, DropPolicy::position), Mode::train);
  const moe::CapacityStats stats = moe::capacity_stats(plan);
  CHECK(stats.token_kept == moe::IndexVector((moe::IndexVector(4) << 2, 2, 1, 0).finished()));
  const moe::CapacityReport report = moe::capacity_report(stats, 4, 3, 2);
  CHECK(report.drop_rate == Approx(plan.drop_rate()));
  CHECK(report.tokens_without_expert == plan.tokens_without_expert);
  CHECK(report.tokens_left_behind == Approx(plan.fraction_tokens_without_expert()));
  CHECK(report.capacity_utilization == Approx(plan.utilization()));
  CHECK(report.overflowing_experts == 2);
}
