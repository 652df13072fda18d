// Health: reports of routings chosen by select_experts on exact inputs (every numeric field), and a
// short monitor run (3 steps, 2 layers) with its alerts, views and exports as text.
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "areas.hpp"
#include "inputs.hpp"
#include "npy.hpp"

#include "moe/health/export.hpp"
#include "moe/moe.hpp"

namespace moe::golden {

namespace {

template <class S>
Routing<S> route(const RowMatrix<S>& logits, Index top_k) {
  RouterConfig config;
  config.num_experts = logits.cols();
  config.hidden = 1;
  config.top_k = top_k;
  Routing<S> routing;
  RowMatrix<S> selection;
  select_experts<S>(config, logits, Vector<S>(), routing, selection);
  routing.logits = logits;
  return routing;
}

/// Choice (t, j) is kept unless (t k + j) % 5 == 0; C = the largest kept count + 1 (the Python
/// test builds the same stats through capacity_stats_from_mask).
CapacityStats mask_stats(const ExpertIdMatrix& ids, Index experts) {
  Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> mask(ids.rows(), ids.cols());
  for (Index t = 0; t < ids.rows(); ++t)
    for (Index j = 0; j < ids.cols(); ++j) mask(t, j) = (t * ids.cols() + j) % 5 != 0;
  CapacityStats stats = capacity_stats_from_mask(ids, mask, experts, 0);
  stats.capacity = stats.kept.maxCoeff() + 1;
  return stats;
}

void write_doubles(const std::string& path, const std::vector<double>& v) {
  write_npy(path, v.data(), static_cast<Eigen::Index>(v.size()));
}

void write_ints(const std::string& path, const std::vector<std::int64_t>& v) {
  write_npy(path, v.data(), static_cast<Eigen::Index>(v.size()));
}

/// Text as an int32 array of its bytes: the fixture loads only .npy files.
void write_text(const std::string& path, const std::string& text) {
  std::vector<std::int32_t> bytes(text.begin(), text.end());
  write_npy(path, bytes.data(), static_cast<Eigen::Index>(bytes.size()));
}

void write_ids(const std::string& path, const std::vector<ExpertId>& ids) {
  write_npy(path, ids.data(), static_cast<Eigen::Index>(ids.size()));
}

void write_load(const std::string& prefix, const LoadStats& s) {
  write_npy(prefix + "_load.npy", s.load);
  write_doubles(prefix + "_stats.npy",
                {s.average_load, s.mean, s.variance, s.cv, s.max_vio, s.min, s.max, s.p10, s.p50,
                 s.p90, s.hot_threshold, s.cold_threshold, s.entropy});
  write_ids(prefix + "_hot.npy", s.hot);
  write_ids(prefix + "_cold.npy", s.cold);
}

/// Every numeric field of `r` as <name>_<part>.npy; test_health.py's flatten() mirrors the layout.
void write_report(const std::string& dir, const std::string& name, const HealthReport& r) {
  const std::string p = dir + "/" + name;
  write_ints(p + "_ints.npy", {r.tokens, r.experts, r.top_k, r.skipped_tokens, r.unused_slots});
  write_doubles(p + "_scalars.npy", {r.normalized_entropy, r.mean_token_entropy, r.mean_top1,
                                     r.active_experts_per_token});
  write_load(p + "_soft", r.soft);
  write_load(p + "_hard", r.hard);
  write_npy(p + "_mean_distribution.npy", r.mean_distribution);
  write_doubles(p + "_margins.npy", {r.margins.p1, r.margins.p10, r.margins.p50});
  write_ints(p + "_margins_tokens.npy", {r.margins.tokens});
  if (r.logits) {
    const LogitStats& z = *r.logits;
    write_doubles(p + "_logits.npy", {z.mean_logsumexp, z.mean_squared_logsumexp, z.mean_entropy});
    write_ints(p + "_logits_counts.npy", {z.nonfinite, z.tokens, z.skipped_tokens});
  }
  if (r.stability)
    write_ints(p + "_stability.npy",
               {r.stability->tokens, r.stability->flipped_tokens, r.stability->flipped_choices});
  if (r.capacity) {
    const CapacityReport& c = *r.capacity;
    write_doubles(p + "_capacity.npy", {c.drop_rate, c.tokens_left_behind, c.capacity_utilization});
    write_ints(p + "_capacity_counts.npy",
               {c.capacity, c.tokens_without_expert, c.overflowing_experts});
    write_npy(p + "_capacity_kept.npy", c.kept);
    write_npy(p + "_capacity_dropped.npy", c.dropped);
  }
  const HealthMetrics m = health_metrics(r);
  write_npy(p + "_metrics.npy", m.data(), static_cast<Eigen::Index>(m.size()));
}

template <class S>
void reports(const std::string& dir, const std::string& suffix) {
  const RowMatrix<S> logits = exact_inputs<S>(50, 8, 1);
  const Routing<S> routing = route(logits, 2);
  HealthConfig selection;
  selection.selection_metrics = true;
  HealthConfig per_token;
  per_token.average = AverageLoad::per_token;
  per_token.hot_factor = 1.1;
  per_token.cold_factor = 0.5;
  write_report(dir, "routing_" + suffix, health_report(routing, selection));
  write_report(dir, "capacity_" + suffix,
               health_report(routing, mask_stats(routing.expert_ids, 8), HealthConfig{}));
  write_report(dir, "probs_topk_" + suffix, health_report(routing.scores, 2, per_token));
  write_report(dir, "probs_ids_" + suffix,
               health_report(routing.scores, routing.expert_ids, selection));
}

/// 3 steps of 2 layers; layer 1 has capacity counts. Thresholds such that every rule but
/// nonfinite_logits fires.
void monitor(const std::string& dir) {
  MonitorConfig config;
  config.num_layers = 2;
  config.window = 2;
  config.cold_steps = 2;
  config.min_normalized_entropy = 0.99;
  config.max_max_vio = 0.5;
  HealthMonitor monitor(config);
  std::vector<CollapseAlert> alerts;
  for (std::int64_t step : {10, 20, 30})
    for (Index layer = 0; layer < 2; ++layer) {
      // Expert 0 favoured and expert 5 starved, so hot, cold and streak rules have work.
      RowMatrix<float> logits = exact_inputs<float>(24, 6, 100 + 10 * step + layer);
      logits.col(0).array() += 1.5f;
      logits.col(5).array() -= 4.0f;
      const Routing<float> routing = route(logits, 2);
      HealthReport r = layer == 1 ? health_report(routing, mask_stats(routing.expert_ids, 6))
                                  : health_report(routing);
      for (auto& a : monitor.record(step, layer, std::move(r))) alerts.push_back(a);
    }
  std::vector<std::int64_t> rule, step, layer, expert;
  std::vector<double> value, threshold;
  std::string reasons;
  for (const auto& a : alerts) {
    rule.push_back(static_cast<std::int64_t>(a.rule));
    step.push_back(a.step);
    layer.push_back(a.layer);
    expert.push_back(a.expert);
    value.push_back(a.value);
    threshold.push_back(a.threshold);
    reasons += a.reason + "\n";
  }
  const std::string p = dir + "/monitor_";
  write_ints(p + "alert_rule.npy", rule);
  write_ints(p + "alert_step.npy", step);
  write_ints(p + "alert_layer.npy", layer);
  write_ints(p + "alert_expert.npy", expert);
  write_doubles(p + "alert_value.npy", value);
  write_doubles(p + "alert_threshold.npy", threshold);
  write_text(p + "alert_reasons.npy", reasons);

  const std::vector<HealthRecord> records = monitor.records();
  std::ostringstream csv, jsonl;
  write_csv(csv, records);
  write_jsonl(jsonl, records);
  write_text(p + "csv.npy", csv.str());
  write_text(p + "jsonl.npy", jsonl.str());
  write_text(p + "table.npy", format_health_table(records));
  for (Index l = 0; l < 2; ++l) {
    const std::string lp = p + "l" + std::to_string(l) + "_";
    std::ostringstream svg;
    SvgHeatmapOptions options;
    options.layer = l;
    options.run = "golden";
    options.hard = l == 0;
    write_svg_heatmap(svg, records, options);
    write_text(lp + "svg.npy", svg.str());
    const HealthMetrics& ema = monitor.ema(l);
    write_npy(lp + "ema.npy", ema.data(), static_cast<Eigen::Index>(ema.size()));
    const WindowView w = monitor.window(l);
    write_npy(lp + "window_mean.npy", w.mean.data(), static_cast<Eigen::Index>(w.mean.size()));
    write_npy(lp + "window_min.npy", w.min.data(), static_cast<Eigen::Index>(w.min.size()));
    write_npy(lp + "window_max.npy", w.max.data(), static_cast<Eigen::Index>(w.max.size()));
    write_ints(lp + "window_records.npy", {w.records});
    write_doubles(lp + "counts_pack.npy", monitor.counts(l).pack());
    std::vector<std::int64_t> streaks;
    for (ExpertId e = 0; e < 6; ++e) streaks.push_back(monitor.cold_streak(l, e));
    write_ints(lp + "cold_streak.npy", streaks);
  }
}

}  // namespace

void health(const std::string& dir) {
  reports<float>(dir, "f32");
  reports<double>(dir, "f64");
  monitor(dir);
}

}  // namespace moe::golden
