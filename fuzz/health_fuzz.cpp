// Health reports, the monitor and every exporter, over routings with ties, empty experts, NaN and
// infinite probabilities and logits, and capacity drops. Invariants: hard loads count every
// choice once; soft loads are the column sums of the finite rows; non-finite entries are counted,
// never averaged; ratios stay in their ranges; the monitor keeps every step or its history limit,
// and its window summarizes the last of them; CSV has a line per record, JSON Lines has no NaN or
// infinity, the SVG is one closed document; entropies lie in
// [0, log E], top-k margins are finite and >= 0, bf16 flips never exceed the selections compared.
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <moe/health/export.hpp>
#include <moe/health/health.hpp>

#include "fuzz_input.hpp"

namespace {

using moe::Index;
using Matrix = moe::RowMatrix<double>;

double maybe_nonfinite(moe::fuzz::FuzzInput& in, double v) {
  switch (in.byte() % 32) {
    case 0:
      return std::numeric_limits<double>::quiet_NaN();
    case 1:
      return std::numeric_limits<double>::infinity();
    case 2:
      return -std::numeric_limits<double>::infinity();
    default:
      return v;
  }
}

moe::HealthReport step_report(moe::fuzz::FuzzInput& in, Index T, Index E, Index k) {
  moe::Routing<double> r;
  r.scores.resize(T, E);
  r.logits.resize(in.flag() ? T : 0, E);
  r.expert_ids.resize(T, k);
  r.gates = Matrix::Zero(T, k);
  for (Index i = 0; i < r.scores.size(); ++i)
    r.scores.data()[i] = maybe_nonfinite(in, in.unit<double>());
  for (Index i = 0; i < r.logits.size(); ++i)
    r.logits.data()[i] = maybe_nonfinite(in, in.value<double>());
  for (Index i = 0; i < r.expert_ids.size(); ++i)
    r.expert_ids.data()[i] = static_cast<moe::ExpertId>(in.range(0, E - 1));

  moe::HealthConfig config;
  config.selection_metrics = true;
  moe::HealthReport report = moe::health_report(r, config);
  MOE_FUZZ_CHECK(report.tokens == T && report.experts == E && report.top_k == k);
  MOE_FUZZ_CHECK(static_cast<Index>(report.hard.load.sum()) == T * k);
  // Soft loads: column sums of the rows whose probabilities are all finite.
  Index skipped = 0;
  Eigen::VectorXd soft = Eigen::VectorXd::Zero(E);
  for (Index t = 0; t < T; ++t) {
    if (!r.scores.row(t).allFinite()) {
      ++skipped;
      continue;
    }
    soft += r.scores.row(t).transpose();
  }
  MOE_FUZZ_CHECK(report.skipped_tokens == skipped);
  for (Index e = 0; e < E; ++e)
    MOE_FUZZ_CHECK(moe::fuzz::close(report.soft.load[e], soft[e], 1e-12));
  if (skipped < T && soft.sum() > 0) {
    MOE_FUZZ_CHECK(report.normalized_entropy >= -1e-12 && report.normalized_entropy <= 1 + 1e-12);
    MOE_FUZZ_CHECK(std::isfinite(report.mean_top1));
  }
  if (r.logits.size() > 0) {
    MOE_FUZZ_CHECK(report.logits.has_value());
    Index nonfinite = 0, rows = 0;
    for (Index t = 0; t < T; ++t) {
      const Index bad = r.logits.row(t).size() - r.logits.row(t).array().isFinite().count();
      nonfinite += bad;
      rows += bad > 0;
    }
    MOE_FUZZ_CHECK(report.logits->nonfinite == nonfinite && report.logits->skipped_tokens == rows);
    if (rows < T) {
      MOE_FUZZ_CHECK(std::isfinite(report.logits->mean_logsumexp));
      MOE_FUZZ_CHECK(report.logits->mean_entropy >= -1e-9 &&
                     report.logits->mean_entropy <= std::log(double(E)) + 1e-9);
    }
  }
  // Issue #21's fields: thresholds finite, entropies in [0, log E] (NaN only with no load),
  // margins >= 0 and finite (NaN only with no margin), flips bounded by the selections.
  const double log_e = std::log(double(E));
  for (const moe::LoadStats* s : {&report.soft, &report.hard}) {
    MOE_FUZZ_CHECK(std::isfinite(s->hot_threshold) && std::isfinite(s->cold_threshold));
    MOE_FUZZ_CHECK(s->cold_threshold <= s->hot_threshold);
    if (!std::isnan(s->entropy)) MOE_FUZZ_CHECK(s->entropy >= 0 && s->entropy <= log_e);
  }
  MOE_FUZZ_CHECK(std::isnan(report.hard.entropy) == (T == 0));
  MOE_FUZZ_CHECK(report.mean_distribution.size() == E);
  if (skipped < T) MOE_FUZZ_CHECK(report.mean_distribution.allFinite());
  MOE_FUZZ_CHECK(report.margins.tokens == (k < E ? T - skipped : 0));
  for (double m : {report.margins.p1, report.margins.p10, report.margins.p50}) {
    if (report.margins.tokens == 0)
      MOE_FUZZ_CHECK(std::isnan(m));
    else
      MOE_FUZZ_CHECK(std::isfinite(m) && m >= 0);
  }
  MOE_FUZZ_CHECK(report.stability.has_value() == (r.logits.size() > 0));
  if (report.stability) {
    const moe::Bf16Stability& st = *report.stability;
    MOE_FUZZ_CHECK(st.tokens == T - report.logits->skipped_tokens);
    MOE_FUZZ_CHECK(st.flipped_tokens >= 0 && st.flipped_tokens <= st.tokens);
    MOE_FUZZ_CHECK(st.flipped_choices >= st.flipped_tokens && st.flipped_choices <= st.tokens * k);
    const moe::Bf16Stability unhinted = moe::bf16_stability(r.logits, k);
    MOE_FUZZ_CHECK(unhinted.flipped_tokens == st.flipped_tokens &&
                   unhinted.flipped_choices == st.flipped_choices);
  }
  if (!in.flag()) return report;

  // Capacity: a random kept mask under the capacity it implies.
  moe::ExpertIdMatrix kept(T, k);
  std::vector<Index> per_expert(static_cast<std::size_t>(E), 0);
  for (Index i = 0; i < kept.size(); ++i) {
    kept.data()[i] = in.flag();
    if (kept.data()[i]) ++per_expert[static_cast<std::size_t>(r.expert_ids.data()[i])];
  }
  Index capacity = 0;
  for (Index n : per_expert) capacity = std::max(capacity, n);
  const moe::CapacityStats stats = moe::capacity_stats_from_mask(r.expert_ids, kept, E, capacity);
  report = moe::health_report(r, stats, config);
  MOE_FUZZ_CHECK(report.capacity.has_value());
  if (T > 0) MOE_FUZZ_CHECK(report.capacity->drop_rate >= 0 && report.capacity->drop_rate <= 1);
  MOE_FUZZ_CHECK(report.capacity->kept.sum() + report.capacity->dropped.sum() == T * k);
  return report;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  moe::fuzz::FuzzInput in(data, size);
  moe::MonitorConfig config;
  config.num_layers = in.range(1, 2);
  config.window = in.range(1, 6);
  config.history = in.range(0, 6);  // 0: every step
  config.cold_steps = in.range(0, 3);
  const Index steps = in.range(0, 8), E = in.range(1, 12), k = in.range(1, std::min<Index>(E, 3));
  moe::HealthMonitor monitor(config);
  Index alerts = 0;
  for (Index s = 0; s < steps; ++s) {
    const Index T = in.range(0, 16);
    std::vector<moe::HealthReport> reports;
    for (Index l = 0; l < config.num_layers; ++l) reports.push_back(step_report(in, T, E, k));
    alerts += static_cast<Index>(monitor.record(s, reports).size());
  }
  const std::vector<moe::HealthRecord> records = monitor.records();
  const Index kept = config.history == 0 ? steps : std::min(steps, config.history);
  MOE_FUZZ_CHECK(static_cast<Index>(records.size()) == config.num_layers * kept);
  for (Index l = 0; l < config.num_layers; ++l)
    MOE_FUZZ_CHECK(monitor.window(l).records == std::min(kept, config.window));

  std::ostringstream csv, jsonl, svg, table;
  moe::write_csv(csv, records);
  moe::write_jsonl(jsonl, records);
  moe::SvgHeatmapOptions options;
  options.hard = in.flag();
  options.title = "t<&>\"'";
  moe::write_svg_heatmap(svg, records, options);
  moe::write_health_table(table, records);

  const auto lines = [](const std::string& text) {
    Index n = 0;
    for (char c : text) n += c == '\n';
    return n;
  };
  MOE_FUZZ_CHECK(lines(csv.str()) == static_cast<Index>(records.size()) + 1);
  MOE_FUZZ_CHECK(lines(jsonl.str()) == static_cast<Index>(records.size()));
  std::istringstream json_lines(jsonl.str());
  for (std::string line; std::getline(json_lines, line);) {
    MOE_FUZZ_CHECK(line.front() == '{' && line.back() == '}');
    MOE_FUZZ_CHECK(line.find("nan") == std::string::npos && line.find("inf") == std::string::npos);
  }
  const std::string doc = svg.str();
  MOE_FUZZ_CHECK(doc.rfind("<?xml", 0) == 0);
  MOE_FUZZ_CHECK(doc.size() >= 7 && doc.compare(doc.size() - 7, 7, "</svg>\n") == 0);
  MOE_FUZZ_CHECK(doc.find("t<&>") == std::string::npos);  // the title is escaped
  (void)alerts;
  return 0;
}
