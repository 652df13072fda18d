// The bad-input catalogue of the health family: configs, probabilities, ids, Routing, capacity
// counts, the monitor and its accessors, mergeable counts and the exporters, one bad argument at a
// time; and the numerics at the edges of finite input that must still work.
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "moe/health/export.hpp"
#include "moe/health/health.hpp"
#include "support/bad_input.hpp"
#include "support/catch.hpp"
#include "support/seed_probabilities.hpp"

namespace {

using moe::Index;
using moe::RowMatrix;
using moe::test::require_rejects;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

using moe::test::seed_probs;

/// seed_probs() routed to expert 0 (k = 1) with zero logits.
moe::Routing<double> seed_routing() {
  moe::Routing<double> routing;
  routing.scores = seed_probs();
  routing.expert_ids = moe::ExpertIdMatrix::Zero(8, 1);
  routing.logits = RowMatrix<double>::Zero(8, 4);
  return routing;
}

/// A balanced report over `experts` experts: 2 tokens per expert, k = 1, uniform probabilities.
moe::HealthReport balanced_report(Index experts) {
  moe::Routing<double> r;
  r.scores = RowMatrix<double>::Constant(2 * experts, experts, 1.0 / static_cast<double>(experts));
  r.expert_ids.resize(2 * experts, 1);
  for (Index t = 0; t < 2 * experts; ++t)
    r.expert_ids(t, 0) = static_cast<moe::ExpertId>(t % experts);
  return moe::health_report(r);
}

template <class Change>
moe::HealthConfig health_config(Change change) {
  moe::HealthConfig c;
  change(c);
  return c;
}

template <class Change>
moe::MonitorConfig monitor_config(Change change) {
  moe::MonitorConfig c;
  change(c);
  return c;
}

}  // namespace

TEST_CASE("health reports refuse bad probabilities, ids and configs", "[health][errors]") {
  using C = moe::HealthConfig;
  const RowMatrix<double> p = seed_probs();
  RowMatrix<double> negative = p;
  negative(3, 2) = -0.25;
  require_rejects([&] { moe::health_report(negative, 1); }, "probabilities", "entries >= 0",
                  "-0.25 at row 3, column 2");
  require_rejects([&] { moe::health_report(p, 0); }, "top_k", "1 <= top_k <= number of experts (4)",
                  "0");
  require_rejects([&] { moe::health_report(p, 5); }, "top_k", "1 <= top_k <= number of experts (4)",
                  "5");
  require_rejects([&] { moe::health_report(RowMatrix<double>(3, 0), 1); }, "probabilities",
                  "at least one column (expert)", "0");
  moe::ExpertIdMatrix bad_ids = moe::ExpertIdMatrix::Zero(8, 1);
  bad_ids(4, 0) = 4;
  require_rejects([&] { moe::health_report(p, bad_ids); }, "expert_ids", "ids in [0, 4)",
                  "4 at row 4, column 0");
  bad_ids(4, 0) = -2;  // -1 is an unused slot, any other negative id an error
  require_rejects([&] { moe::health_report(p, bad_ids); }, "expert_ids",
                  "ids in [0, 4) or -1 (unused)", "-2 at row 4, column 0");
  require_rejects([&] { moe::health_report(p, moe::ExpertIdMatrix::Zero(7, 1)); }, "expert_ids",
                  "shape [8, *]", "[7, 1]");
  require_rejects([&] { moe::health_report(p, moe::ExpertIdMatrix::Zero(8, 0)); }, "expert_ids",
                  "at least one column (k >= 1)", "0");
  require_rejects(
      [&] { moe::health_report(RowMatrix<double>(8, 0), moe::ExpertIdMatrix::Zero(8, 1)); },
      "probabilities", "at least one column (expert)", "0");

  // HealthConfig, where every report checks it.
  const auto report = [&](const moe::HealthConfig& c) {
    return [&p, c] { moe::health_report(p, 1, c); };
  };
  require_rejects(report(health_config([](C& c) { c.hot_factor = 0; })), "HealthConfig::hot_factor",
                  "a finite value > 0", "0");
  require_rejects(report(health_config([](C& c) { c.hot_factor = -1; })),
                  "HealthConfig::hot_factor", "a finite value > 0", "-1");
  require_rejects(report(health_config([](C& c) { c.hot_factor = kNaN; })),
                  "HealthConfig::hot_factor", "a finite value > 0", "nan");
  require_rejects(report(health_config([](C& c) { c.hot_factor = kInf; })),
                  "HealthConfig::hot_factor", "a finite value > 0", "inf");
  require_rejects(report(health_config([](C& c) { c.cold_factor = -0.5; })),
                  "HealthConfig::cold_factor", "a finite value >= 0", "-0.5");
  require_rejects(report(health_config([](C& c) { c.cold_factor = kNaN; })),
                  "HealthConfig::cold_factor", "a finite value >= 0", "nan");
  require_rejects(report(health_config([](C& c) { c.cold_factor = 2.0; })),
                  "HealthConfig::cold_factor", "<= hot_factor (1.25)", "2");
  require_rejects(
      [] {
        moe::load_stats(Eigen::VectorXd::Ones(2), 1.0,
                        health_config([](C& c) { c.cold_factor = kInf; }));
      },
      "HealthConfig::cold_factor", "a finite value >= 0", "inf");
}

TEST_CASE("the load, distribution and logit passes refuse bad input", "[health][errors]") {
  const RowMatrix<double> p = seed_probs();
  require_rejects([] { moe::load_stats(Eigen::VectorXd(0), 1.0); }, "load", "at least one expert",
                  "0");
  require_rejects([] { moe::load_stats(Eigen::VectorXd::Ones(2), -1.0); }, "average_load",
                  "a finite value >= 0", "-1");
  require_rejects([] { moe::load_stats(Eigen::VectorXd::Ones(2), kNaN); }, "average_load",
                  "a finite value >= 0", "nan");
  require_rejects([] { moe::load_stats(Eigen::VectorXd::Ones(2), kInf); }, "average_load",
                  "a finite value >= 0", "inf");
  require_rejects([] { moe::hard_load(moe::ExpertIdMatrix::Zero(2, 1), 0); }, "num_experts", ">= 1",
                  "0");
  require_rejects([] { moe::hard_load((moe::ExpertIdMatrix(2, 1) << 0, 3).finished(), 3); },
                  "expert_ids", "ids in [0, 3)", "3 at row 1, column 0");
  require_rejects([] { moe::hard_load((moe::ExpertIdMatrix(2, 1) << -2, 0).finished(), 3); },
                  "expert_ids", "ids in [0, 3)", "-2 at row 0, column 0");
  require_rejects([&] { moe::topk_load(p, 0); }, "top_k", "1 <= top_k <= number of experts (4)",
                  "0");
  require_rejects([&] { moe::topk_load(p, 5); }, "top_k", "1 <= top_k <= number of experts (4)",
                  "5");
  require_rejects([] { moe::topk_load(RowMatrix<double>(2, 0), 1); }, "probabilities",
                  "at least one column (expert)", "0");
  require_rejects([] { moe::distribution_stats(RowMatrix<float>(2, 0)); }, "probabilities",
                  "at least one column (expert)", "0");
  RowMatrix<double> negative = p;
  negative(6, 3) = -1e-3;
  require_rejects([&] { moe::distribution_stats(negative); }, "probabilities", "entries >= 0",
                  "-0.001 at row 6, column 3");
  require_rejects([] { moe::logit_stats(RowMatrix<double>(2, 0)); }, "logits",
                  "at least one column (expert)", "0");
  require_rejects([&] { moe::topk_margins(p, 0); }, "top_k", "1 <= top_k <= number of experts (4)",
                  "0");
  require_rejects([&] { moe::topk_margins(p, 5); }, "top_k", "1 <= top_k <= number of experts (4)",
                  "5");
  require_rejects([] { moe::topk_margins(RowMatrix<double>(2, 0), 1); }, "scores",
                  "at least one column (expert)", "0");
  require_rejects([&] { moe::bf16_stability(p, 0); }, "top_k",
                  "1 <= top_k <= number of experts (4)", "0");
  require_rejects([&] { moe::bf16_stability(p, 5); }, "top_k",
                  "1 <= top_k <= number of experts (4)", "5");
  require_rejects([] { moe::bf16_stability(RowMatrix<float>(2, 0), 1); }, "logits",
                  "at least one column (expert)", "0");
}

TEST_CASE("a Routing's health report refuses bad scores, ids, logits and capacity counts",
          "[health][errors]") {
  const moe::Routing<double> good_routing = seed_routing();
  const auto report = [](moe::Routing<double> r) { return [r] { moe::health_report(r); }; };
  moe::Routing<double> routing = good_routing;
  routing.logits = RowMatrix<double>::Zero(8, 3);
  require_rejects(report(routing), "routing.logits", "shape [8, 4]", "[8, 3]");
  routing = good_routing;
  routing.scores = RowMatrix<double>(8, 0);
  routing.logits.resize(0, 0);
  require_rejects(report(routing), "routing.scores", "at least one column (expert)", "0");
  routing = good_routing;
  routing.expert_ids = moe::ExpertIdMatrix::Zero(8, 0);
  require_rejects(report(routing), "routing.expert_ids", "at least one column (k >= 1)", "0");
  routing = good_routing;
  routing.expert_ids = moe::ExpertIdMatrix::Zero(6, 1);
  require_rejects(report(routing), "routing.expert_ids", "shape [8, *]", "[6, 1]");
  // The Routing's fields by the names the caller wrote.
  routing = good_routing;
  routing.expert_ids(5, 0) = 4;
  require_rejects(report(routing), "routing.expert_ids", "ids in [0, 4)", "4 at row 5, column 0");
  routing = good_routing;
  routing.scores(2, 1) = -0.125;
  require_rejects(report(routing), "routing.scores", "entries >= 0", "-0.125 at row 2, column 1");

  // Capacity counts, checked against the routing's T, E and k.
  const moe::CapacityStats good =
      moe::capacity_stats_from_mask(good_routing.expert_ids, moe::ExpertIdMatrix::Ones(8, 1), 4, 8);
  CHECK_NOTHROW(moe::health_report(good_routing, good));
  const auto with = [&](moe::CapacityStats c) {
    return [&good_routing, c] { moe::health_report(good_routing, c); };
  };
  auto cap = good;
  cap.capacity = -1;
  require_rejects(with(cap), "CapacityStats::capacity", ">= 0", "-1");
  cap = good;
  cap.kept.resize(3);
  require_rejects(with(cap), "CapacityStats::kept", "size 4", "3");
  cap = good;
  cap.kept[1] = -1;
  require_rejects(with(cap), "CapacityStats::kept", "entries >= 0", "-1");
  cap = good;
  cap.capacity = 7;  // expert 0 kept 8
  require_rejects(with(cap), "CapacityStats::kept", "entries <= capacity (7)", "8");
  cap = good;
  cap.dropped.resize(5);
  require_rejects(with(cap), "CapacityStats::dropped", "size 4", "5");
  cap = good;
  cap.dropped[1] = -1;
  require_rejects(with(cap), "CapacityStats::dropped", "entries >= 0", "-1");
  cap = good;
  cap.dropped[1] = 1;
  require_rejects(with(cap), "CapacityStats::kept + dropped", "T * k less unused slots = 8", "9");
  cap = good;
  cap.token_kept.resize(7);
  require_rejects(with(cap), "CapacityStats::token_kept", "size 8", "7");
  cap = good;
  cap.token_kept[0] = 2;
  require_rejects(with(cap), "CapacityStats::token_kept", "entries in [0, 1]", "[1, 2]");
  cap = good;
  cap.token_kept[0] = 0;
  require_rejects(with(cap), "CapacityStats::token_kept", "entries summing to sum(kept) = 8", "7");

  // capacity_stats_from_mask itself.
  const moe::ExpertIdMatrix& ids = good_routing.expert_ids;
  require_rejects(
      [&] { moe::capacity_stats_from_mask(ids, moe::ExpertIdMatrix::Ones(7, 1), 4, 8); },
      "kept_mask", "shape [8, 1]", "[7, 1]");
  require_rejects(
      [&] { moe::capacity_stats_from_mask(ids, moe::ExpertIdMatrix::Ones(8, 1), 4, -1); },
      "capacity", ">= 0", "-1");
  require_rejects(
      [&] { moe::capacity_stats_from_mask(ids, moe::ExpertIdMatrix::Ones(8, 1), 0, 8); },
      "num_experts", ">= 1", "0");
  moe::ExpertIdMatrix out_of_range = ids;
  out_of_range(3, 0) = 9;
  require_rejects(
      [&] { moe::capacity_stats_from_mask(out_of_range, moe::ExpertIdMatrix::Ones(8, 1), 4, 8); },
      "expert_ids", "ids in [0, 4)", "9 at row 3, column 0");
}

TEST_CASE("the monitor refuses bad configs, records and accessor arguments", "[health][errors]") {
  using C = moe::MonitorConfig;
  const auto build = [](const moe::MonitorConfig& c) { return [c] { moe::HealthMonitor m(c); }; };
  require_rejects(build(monitor_config([](C& c) { c.num_layers = 0; })),
                  "MonitorConfig::num_layers", ">= 1", "0");
  require_rejects(build(monitor_config([](C& c) { c.window = 0; })), "MonitorConfig::window",
                  ">= 1", "0");
  require_rejects(build(monitor_config([](C& c) { c.history = -1; })), "MonitorConfig::history",
                  ">= 0 (0 keeps every step)", "-1");
  require_rejects(build(monitor_config([](C& c) { c.ema_decay = 1.0; })),
                  "MonitorConfig::ema_decay", "0 <= decay < 1", "1");
  require_rejects(build(monitor_config([](C& c) { c.ema_decay = -0.125; })),
                  "MonitorConfig::ema_decay", "0 <= decay < 1", "-0.125");
  require_rejects(build(monitor_config([](C& c) { c.ema_decay = kNaN; })),
                  "MonitorConfig::ema_decay", "0 <= decay < 1", "nan");
  require_rejects(build(monitor_config([](C& c) { c.cold_steps = -1; })),
                  "MonitorConfig::cold_steps", ">= 0", "-1");
  require_rejects(build(monitor_config([](C& c) { c.min_normalized_entropy = 1.5; })),
                  "MonitorConfig::min_normalized_entropy", "0 <= value <= 1", "1.5");
  require_rejects(build(monitor_config([](C& c) { c.min_normalized_entropy = -0.5; })),
                  "MonitorConfig::min_normalized_entropy", "0 <= value <= 1", "-0.5");
  require_rejects(build(monitor_config([](C& c) { c.min_normalized_entropy = kNaN; })),
                  "MonitorConfig::min_normalized_entropy", "0 <= value <= 1", "nan");
  require_rejects(build(monitor_config([](C& c) { c.max_drop_rate = -0.01; })),
                  "MonitorConfig::max_drop_rate", ">= 0", "-0.01");
  require_rejects(build(monitor_config([](C& c) { c.max_drop_rate = kNaN; })),
                  "MonitorConfig::max_drop_rate", ">= 0", "nan");
  require_rejects(build(monitor_config([](C& c) { c.max_max_vio = -1; })),
                  "MonitorConfig::max_max_vio", ">= 0", "-1");
  require_rejects(build(monitor_config([](C& c) { c.max_max_vio = kNaN; })),
                  "MonitorConfig::max_max_vio", ">= 0", "nan");

  moe::HealthMonitor monitor(monitor_config([](C& c) { c.num_layers = 2; }));
  const moe::HealthReport r = balanced_report(2);
  require_rejects([&] { monitor.record(0, 2, r); }, "layer", "in [0, 2)", "2");
  require_rejects([&] { monitor.record(0, -1, r); }, "layer", "in [0, 2)", "-1");
  monitor.record(3, 0, r);
  require_rejects([&] { monitor.record(3, 0, r); }, "step", "> the layer's last step (3)", "3");
  require_rejects([&] { monitor.record(4, 1, moe::HealthReport{}); }, "report.experts",
                  ">= 1 (a report of a routing step)", "0");
  require_rejects([&] { monitor.record(2, 0, r); }, "step", "> the layer's last step (3)", "2");
  require_rejects([&] { monitor.record(4, 0, balanced_report(3)); }, "report.experts",
                  "2 (the layer's first report)", "3");
  require_rejects([&] { monitor.record(4, std::vector<moe::HealthReport>{r}); }, "reports",
                  "2 reports (one per layer)", "1");
  require_rejects(
      [&] {
        monitor.record(4, std::vector<moe::HealthReport>{r, r, r});
      },
      "reports", "2 reports (one per layer)", "3");
  // A refused record changes nothing: the next step of layer 0 is still accepted.
  CHECK_NOTHROW(monitor.record(4, 0, r));
  CHECK(monitor.history(0).size() == 2);

  require_rejects([&] { monitor.cold_streak(0, 2); }, "expert", "in [0, 2)", "2");
  require_rejects([&] { monitor.cold_streak(0, -1); }, "expert", "in [0, 2)", "-1");
  require_rejects([&] { monitor.cold_streak(2, 0); }, "layer", "in [0, 2)", "2");
  require_rejects([&] { monitor.cold_streak(1, 0); }, "expert",
                  "an expert of a recorded layer (layer 1 has no report yet)", "0");
  require_rejects([&] { monitor.ema(2); }, "layer", "in [0, 2)", "2");
  require_rejects([&] { monitor.ema(-1); }, "layer", "in [0, 2)", "-1");
  require_rejects([&] { monitor.window(5); }, "layer", "in [0, 2)", "5");
  require_rejects([&] { monitor.history(-3); }, "layer", "in [0, 2)", "-3");
  require_rejects([&] { monitor.counts(2); }, "layer", "in [0, 2)", "2");
  require_rejects([] { moe::health_metric_index("no_such_metric"); }, "name",
                  "one of kHealthMetricNames", "no_such_metric");
}

TEST_CASE("counts and exporters refuse bad input", "[health][errors]") {
  require_rejects([] { moe::HealthCounts::unpack({1, 2, 3}); }, "flat", "9 + 4 E values", "3");
  require_rejects([] { moe::HealthCounts::unpack(std::vector<double>(11, 0.0)); }, "flat",
                  "9 + 4 E values", "11");
  moe::HealthCounts two(2), three(3);
  require_rejects([&] { two.merge(three); }, "other", "counts over 2 experts (this one's)", "3");
  require_rejects([&] { two.add(balanced_report(3)); }, "report.experts", "2 (the counts' experts)",
                  "3");
  require_rejects([] { moe::HealthCounts().hard_stats(); }, "HealthCounts",
                  "counts over at least one expert", "0");

  std::ostringstream sink;
  const auto heatmap = [&sink](std::vector<moe::HealthRecord> records, int cell) {
    return [&sink, records, cell] {
      moe::SvgHeatmapOptions options;
      options.cell = cell;
      moe::write_svg_heatmap(sink, records, options);
    };
  };
  require_rejects(heatmap({}, 1), "SvgHeatmapOptions::cell", ">= 2", "1");
  require_rejects(heatmap({}, 0), "SvgHeatmapOptions::cell", ">= 2", "0");
  require_rejects(heatmap({}, -3), "SvgHeatmapOptions::cell", ">= 2", "-3");
  require_rejects(heatmap({{1, 0, balanced_report(4)}, {2, 0, balanced_report(3)}}, 12), "records",
                  "4 experts in every record of the layer", "3");
  // Records of another layer are ignored, whatever their expert count.
  moe::HealthReport short_loads = balanced_report(4);
  short_loads.hard.load.resize(2);  // the heatmap shows hard loads by default
  require_rejects(heatmap({{1, 0, balanced_report(4)}, {2, 0, short_loads}}, 12), "records",
                  "loads of 4 experts (report.experts) in every record", "2");
  CHECK_NOTHROW(heatmap({{1, 0, balanced_report(4)}, {2, 1, balanced_report(3)}}, 12)());
}

TEST_CASE("health at the edges of finite input", "[health][edge]") {
  const double log4 = std::log(4.0);
  SECTION("double logits at -1e308: finite mean logsumexp, infinite mean square") {
    const auto s = moe::logit_stats(RowMatrix<double>::Constant(3, 4, -1e308));
    CHECK(s.tokens == 3);
    CHECK(s.nonfinite == 0);
    CHECK(s.skipped_tokens == 0);
    REQUIRE(std::isfinite(s.mean_logsumexp));
    const double lse = -1e308 + log4;  // -1e308 in double: log 4 is far below its half ulp
    CHECK(std::abs(s.mean_logsumexp - lse) <= 1e-15 * std::abs(lse));
    CHECK(s.mean_logsumexp == -1e308);
    CHECK(s.mean_squared_logsumexp == kInf);  // 1e616 rounds to +inf (LogitStats documents it)
    CHECK(s.mean_entropy == Approx(log4).epsilon(1e-15));
  }
  SECTION("float logits at lowest(): finite mean logsumexp, entropy log 4") {
    constexpr float lowest = std::numeric_limits<float>::lowest();
    const auto s = moe::logit_stats(RowMatrix<float>::Constant(3, 4, lowest));
    CHECK(s.nonfinite == 0);
    CHECK(s.skipped_tokens == 0);
    REQUIRE(std::isfinite(s.mean_logsumexp));
    // lowest + log 4, which float rounds back to lowest.
    CHECK(s.mean_logsumexp == Approx(double(lowest) + log4).epsilon(1e-7));
    CHECK(std::abs(s.mean_entropy - log4) <= 1e-6);
    CHECK(std::isfinite(s.mean_squared_logsumexp));  // 1.16e77 fits a double
  }
  SECTION("one logit 0 and three at lowest(): entropy 0, logsumexp 0") {
    // exp(lowest) is 0, so each e * (z - max) term is 0: a vectorized exp that returned its
    // clamped minimum instead would add about -1 per such logit to the entropy.
    RowMatrix<float> z = RowMatrix<float>::Constant(1, 4, std::numeric_limits<float>::lowest());
    z(0, 2) = 0.0f;
    const auto s = moe::logit_stats(z);
    CHECK(s.skipped_tokens == 0);
    CHECK(s.mean_entropy == 0.0);
    CHECK(s.mean_logsumexp == 0.0);
    CHECK(s.mean_squared_logsumexp == 0.0);
    RowMatrix<double> d = RowMatrix<double>::Constant(1, 4, std::numeric_limits<double>::lowest());
    d(0, 0) = 0.0;
    const auto t = moe::logit_stats(d);
    CHECK(t.mean_entropy == 0.0);
    CHECK(t.mean_logsumexp == 0.0);
  }
  SECTION("margins, entropies and bf16 stability stay finite at the extremes") {
    constexpr double big = std::numeric_limits<double>::max();
    moe::Routing<double> r;
    r.scores = RowMatrix<double>::Zero(3, 4);
    r.scores << big, 0, big / 2, 0,  //
        big, big, big, big,          //
        0, 0, 0, std::numeric_limits<double>::denorm_min();
    r.logits.resize(3, 4);
    r.logits << -big, big, 0, -1e308,  //
        big, big, -big, -big,          //
        1e-310, -1e-310, 0, 5e-324;
    r.expert_ids.resize(3, 2);
    r.expert_ids << 1, 3, 0, 1, 3, 2;  // not the top-2 of the scores: ranked again
    moe::HealthConfig on;
    on.selection_metrics = true;
    const auto report = moe::health_report(r, on);
    CHECK(report.margins.tokens == 3);
    for (double m : {report.margins.p1, report.margins.p10, report.margins.p50}) {
      CHECK(std::isfinite(m));
      CHECK(m >= 0.0);
    }
    CHECK(std::isfinite(report.hard.entropy));
    CHECK(std::isnan(report.soft.entropy));  // the soft load overflowed to +inf: no distribution
    REQUIRE(report.stability.has_value());
    CHECK(report.stability->tokens == 3);
    CHECK(report.stability->flipped_tokens <= 3);
    CHECK(report.stability->flipped_choices <= 6);
  }
  SECTION("a heatmap of cells 2^30 wide: width and height past 32 bits") {
    std::vector<moe::HealthRecord> records = {
        {1, 0, balanced_report(4)}, {2, 0, balanced_report(4)}, {3, 0, balanced_report(4)}};
    moe::SvgHeatmapOptions options;
    options.cell = 1 << 30;
    std::ostringstream out;
    moe::write_svg_heatmap(out, records, options);
    const std::string svg = out.str();
    const Index cell = Index(1) << 30;
    const Index width = 64 + 3 * cell + 16;   // 3221225552
    const Index height = 36 + 4 * cell + 64;  // 4294967396
    CHECK(width == 3221225552);
    CHECK(height == 4294967396);
    const std::string size = "width=\"" + std::to_string(width) + "\" height=\"" +
                             std::to_string(height) + "\" viewBox=\"0 0 " + std::to_string(width) +
                             ' ' + std::to_string(height) + '"';
    INFO(svg.substr(0, 300));
    CHECK(svg.find(size) != std::string::npos);
    CHECK(svg.find("width=\"-") == std::string::npos);
    CHECK(svg.find("height=\"-") == std::string::npos);
    CHECK(svg.find("</svg>") != std::string::npos);
  }
}
