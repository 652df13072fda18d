// Routing health over a short training run: two layers, one healthy and one collapsing onto a
// few experts. Each step's Routing is built from a probability matrix; the monitor raises
// collapse alerts through a callback; the run ends with the terminal table, a CSV, a JSON Lines
// file and an SVG heatmap (open heatmap_layer1.svg in a browser).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "moe/core/random.hpp"
#include "moe/health/export.hpp"
#include "moe/health/health.hpp"

namespace {

constexpr moe::Index kTokens = 512, kExperts = 16, kTopK = 2, kSteps = 30;

// Softmax over experts of N(0, 1) logits plus a per-expert bias; top-k with ties to the lower id.
moe::Routing<float> route(std::uint64_t seed, const Eigen::VectorXf& bias) {
  moe::CounterRng rng(seed, 0);
  moe::Routing<float> r;
  r.logits.resize(kTokens, kExperts);
  for (moe::Index t = 0; t < kTokens; ++t)
    for (moe::Index e = 0; e < kExperts; ++e)
      r.logits(t, e) =
          static_cast<float>(rng.normal(static_cast<std::uint64_t>(t * kExperts + e))) + bias[e];
  r.scores = (r.logits.colwise() - r.logits.rowwise().maxCoeff()).array().exp().matrix();
  r.scores.array().colwise() /= r.scores.rowwise().sum().array();
  r.expert_ids.resize(kTokens, kTopK);
  r.gates.resize(kTokens, kTopK);
  std::vector<moe::ExpertId> order(kExperts);
  for (moe::Index t = 0; t < kTokens; ++t) {
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + kTopK, order.end(), [&](int a, int b) {
      return r.scores(t, a) > r.scores(t, b) || (r.scores(t, a) == r.scores(t, b) && a < b);
    });
    for (moe::Index j = 0; j < kTopK; ++j) {
      r.expert_ids(t, j) = order[j];
      r.gates(t, j) = r.scores(t, order[j]);
    }
  }
  return r;
}

// A capacity dispatch in token order: C = ceil(1.25 T k / E) slots per expert; first come, first
// kept.
moe::CapacityStats dispatch(const moe::Routing<float>& r) {
  const auto capacity = static_cast<moe::Index>(std::ceil(1.25 * kTokens * kTopK / kExperts));
  Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> kept(kTokens, kTopK);
  moe::IndexVector used = moe::IndexVector::Zero(kExperts);
  for (moe::Index t = 0; t < kTokens; ++t)
    for (moe::Index j = 0; j < kTopK; ++j) kept(t, j) = used[r.expert_ids(t, j)]++ < capacity;
  return moe::capacity_stats_from_mask(r.expert_ids, kept, kExperts, capacity);
}

}  // namespace

int main() {
  moe::MonitorConfig config;
  config.num_layers = 2;
  config.cold_steps = 5;
  config.max_max_vio = 2.0;
  std::vector<moe::CollapseAlert> alerts;
  std::set<std::pair<moe::Index, moe::CollapseRule>> announced;  // print each kind once per layer
  moe::HealthMonitor monitor(config, [&](const moe::CollapseAlert& a) {
    if (announced.insert({a.layer, a.rule}).second)
      std::cout << "alert [" << moe::to_string(a.rule) << "] " << a.reason << '\n';
    alerts.push_back(a);
  });

  for (std::int64_t step = 0; step < kSteps; ++step) {
    // Layer 1's router drifts towards experts 0 and 1 as training goes on.
    Eigen::VectorXf drift = Eigen::VectorXf::Zero(kExperts);
    drift.head(2).setConstant(0.3f * static_cast<float>(step));
    std::vector<moe::HealthReport> reports;
    for (moe::Index layer = 0; layer < 2; ++layer) {
      const auto routing =
          route(1000 * step + layer, layer == 0 ? Eigen::VectorXf::Zero(kExperts) : drift);
      reports.push_back(moe::health_report(routing, dispatch(routing)));
    }
    monitor.record(step, std::move(reports));
  }

  const auto records = monitor.records();
  std::vector<moe::HealthRecord> last(records.end() - 2, records.end());
  std::cout << '\n' << moe::format_health_table(last);
  std::ofstream("health.csv") << [&] {
    std::ostringstream o;
    moe::write_csv(o, records);
    return o.str();
  }();
  {
    std::ofstream jsonl("health.jsonl");
    moe::write_jsonl(jsonl, records);
    std::ofstream svg("heatmap_layer1.svg");
    moe::SvgHeatmapOptions options;
    options.layer = 1;
    moe::write_svg_heatmap(svg, records, options);
  }

  // Checks: the healthy layer raised nothing; the drifting one went cold, dropped and collapsed.
  int failures = 0;
  const auto check = [&](bool ok, const char* what) {
    if (!ok) std::cerr << "FAILED: " << what << '\n';
    failures += ok ? 0 : 1;
  };
  const auto count = [&](moe::Index layer, moe::CollapseRule rule) {
    return std::count_if(alerts.begin(), alerts.end(),
                         [&](const auto& a) { return a.layer == layer && a.rule == rule; });
  };
  check(std::none_of(alerts.begin(), alerts.end(), [](const auto& a) { return a.layer == 0; }),
        "layer 0 stays healthy");
  check(count(1, moe::CollapseRule::cold_expert) >= 1, "layer 1 has cold experts");
  check(count(1, moe::CollapseRule::high_drop_rate) >= 1, "layer 1 drops more than 5%");
  check(count(1, moe::CollapseRule::low_entropy) >= 1, "layer 1's routing entropy collapses");
  const moe::HealthReport& first = monitor.history(0).front().report;
  check(std::abs(first.soft.load.sum() - kTokens) < 1e-2, "soft loads sum to T");
  check(first.hard.load.sum() == kTokens * kTopK, "hard loads sum to T k");
  const moe::HealthCounts& total = monitor.counts(1);
  check(total.steps == kSteps && total.hard_load.sum() == kSteps * kTokens * kTopK,
        "counts add up");
  std::ifstream csv("health.csv");
  const auto lines =
      std::count(std::istreambuf_iterator<char>(csv), std::istreambuf_iterator<char>(), '\n');
  check(lines == 1 + static_cast<long>(records.size()), "one CSV row per layer and step");
  std::cout << "\nglobal MaxVio of layer 1 over " << total.steps
            << " steps: " << total.hard_stats().max_vio << "; drop rate " << total.drop_rate()
            << '\n'
            << "wrote health.csv, health.jsonl, heatmap_layer1.svg\n";
  return failures == 0 ? 0 : 1;
}
