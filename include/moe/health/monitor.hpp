// HealthMonitor: health reports of several layers over training steps, with EMA and windowed
// views, collapse rules delivered to a callback, and mergeable counts.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/health/counts.hpp"
#include "moe/health/metrics.hpp"
#include "moe/health/report.hpp"

namespace moe {

/// One layer's report at one step: a row of every export.
struct HealthRecord {
  std::int64_t step = 0;
  Index layer = 0;
  HealthReport report;
};

/// What a collapse alert is about.
enum class CollapseRule {
  cold_expert,       ///< an expert's hard load was cold for cold_steps consecutive steps
  low_entropy,       ///< normalized entropy of the mean routing distribution below the minimum
  high_drop_rate,    ///< capacity drop rate above the maximum (5%: dropped tokens lose a layer)
  high_max_vio,      ///< hard-load MaxVio above the maximum
  nonfinite_logits,  ///< a NaN or infinite logit (or probability) in the step
};

inline const char* to_string(CollapseRule rule) noexcept {
  switch (rule) {
    case CollapseRule::cold_expert:
      return "cold_expert";
    case CollapseRule::low_entropy:
      return "low_entropy";
    case CollapseRule::high_drop_rate:
      return "high_drop_rate";
    case CollapseRule::high_max_vio:
      return "high_max_vio";
    case CollapseRule::nonfinite_logits:
      return "nonfinite_logits";
  }
  return "unknown";
}

struct CollapseAlert {
  CollapseRule rule = CollapseRule::cold_expert;
  std::int64_t step = 0;
  Index layer = 0;
  ExpertId expert = -1;  ///< the expert concerned, -1 for layer-wide rules
  double value = 0.0;    ///< the measured quantity (streak length for cold_expert)
  double threshold = 0.0;
  std::string reason;  ///< one readable sentence
};

struct MonitorConfig {
  Index num_layers = 1;
  Index window = 64;  ///< the last records per layer the windowed view summarizes
  /// Records kept per layer for history(), records() and the exporters: 0 (the default) keeps
  /// every step, so a CSV or heatmap written at the end of a run starts at its first step. A
  /// limit n bounds memory on long runs: the exports then start n steps before the last.
  Index history = 0;
  double ema_decay = 0.9;  ///< ema = decay * ema + (1 - decay) * value
  Index cold_steps = 10;   ///< consecutive cold steps that make an alert; 0 disables the rule
  double min_normalized_entropy = 0.5;  ///< 0 disables (collapse onto E^0.5 experts gives 0.5)
  double max_drop_rate = 0.05;          ///< +inf disables
  double max_max_vio = 1.0;             ///< +inf disables (1: an expert at twice the mean)
  bool alert_nonfinite = true;
};

inline void validate(const MonitorConfig& c) {
  require(c.num_layers >= 1, "MonitorConfig::num_layers", ">= 1", c.num_layers);
  require(c.window >= 1, "MonitorConfig::window", ">= 1", c.window);
  require(c.history >= 0, "MonitorConfig::history", ">= 0 (0 keeps every step)", c.history);
  require(c.ema_decay >= 0.0 && c.ema_decay < 1.0, "MonitorConfig::ema_decay", "0 <= decay < 1",
          c.ema_decay);
  require(c.cold_steps >= 0, "MonitorConfig::cold_steps", ">= 0", c.cold_steps);
  require(c.min_normalized_entropy >= 0.0 && c.min_normalized_entropy <= 1.0,
          "MonitorConfig::min_normalized_entropy", "0 <= value <= 1", c.min_normalized_entropy);
  require(c.max_drop_rate >= 0.0, "MonitorConfig::max_drop_rate", ">= 0", c.max_drop_rate);
  require(c.max_max_vio >= 0.0, "MonitorConfig::max_max_vio", ">= 0", c.max_max_vio);
}

/// Mean, min and max of each metric over a layer's window (NaN values left out).
struct WindowView {
  HealthMetrics mean{}, min{}, max{};
  Index records = 0;
};

class HealthMonitor {
 public:
  using Callback = std::function<void(const CollapseAlert&)>;

  explicit HealthMonitor(MonitorConfig config, Callback on_alert = {})
      : config_(std::move(config)), on_alert_(std::move(on_alert)) {
    validate(config_);
    layers_.resize(static_cast<std::size_t>(config_.num_layers));
    for (auto& l : layers_) l.ema.fill(std::numeric_limits<double>::quiet_NaN());
  }

  const MonitorConfig& config() const noexcept { return config_; }
  void set_callback(Callback on_alert) { on_alert_ = std::move(on_alert); }

  /// Records `layer`'s report at `step` (steps strictly increasing per layer, E fixed per layer),
  /// runs the collapse rules, calls the callback once per alert and returns the alerts.
  std::vector<CollapseAlert> record(std::int64_t step, Index layer, HealthReport report) {
    require(layer >= 0 && layer < config_.num_layers, "layer",
            detail::concat("in [0, ", config_.num_layers, ")"), layer);
    Layer& l = layers_[static_cast<std::size_t>(layer)];
    if (!l.history.empty())
      require(step > l.history.back().step, "step",
              detail::concat("> the layer's last step (", l.history.back().step, ")"), step);
    require(report.experts >= 1, "report.experts", ">= 1 (a report of a routing step)",
            report.experts);
    if (l.counts.experts() == 0) {
      l.counts = HealthCounts(report.experts);
      l.cold_streak.assign(static_cast<std::size_t>(report.experts), 0);
    }
    require(report.experts == l.counts.experts(), "report.experts",
            detail::concat(l.counts.experts(), " (the layer's first report)"), report.experts);

    std::vector<CollapseAlert> alerts = check(step, layer, report, l);
    l.counts.add(report);
    const HealthMetrics values = health_metrics(report);
    for (std::size_t i = 0; i < kHealthMetricCount; ++i) {
      if (std::isnan(values[i])) continue;  // a missing value does not pull the average
      l.ema[i] = std::isnan(l.ema[i])
                     ? values[i]
                     : config_.ema_decay * l.ema[i] + (1.0 - config_.ema_decay) * values[i];
    }
    l.history.push_back(HealthRecord{step, layer, std::move(report)});
    if (config_.history > 0 && static_cast<Index>(l.history.size()) > config_.history)
      l.history.pop_front();
    if (on_alert_)
      for (const auto& a : alerts) on_alert_(a);
    return alerts;
  }

  /// Records one report per layer (reports[l] is layer l) at `step`.
  std::vector<CollapseAlert> record(std::int64_t step, std::vector<HealthReport> reports) {
    require(static_cast<Index>(reports.size()) == config_.num_layers, "reports",
            detail::concat(config_.num_layers, " reports (one per layer)"), reports.size());
    std::vector<CollapseAlert> all;
    for (std::size_t l = 0; l < reports.size(); ++l) {
      auto alerts = record(step, static_cast<Index>(l), std::move(reports[l]));
      all.insert(all.end(), alerts.begin(), alerts.end());
    }
    return all;
  }

  /// Exponential moving average of every metric; NaN for a metric never seen.
  const HealthMetrics& ema(Index layer) const { return at(layer).ema; }

  /// Mean, min and max of every metric over the last `window` records of `layer`.
  WindowView window(Index layer) const {
    WindowView v;
    const auto& kept = at(layer).history;
    const auto first = kept.size() > static_cast<std::size_t>(config_.window)
                           ? kept.end() - static_cast<std::ptrdiff_t>(config_.window)
                           : kept.begin();
    v.records = static_cast<Index>(kept.end() - first);
    constexpr double nan = std::numeric_limits<double>::quiet_NaN();
    v.mean.fill(nan);
    v.min.fill(nan);
    v.max.fill(nan);
    std::array<Index, kHealthMetricCount> seen{};
    std::array<double, kHealthMetricCount> sum{};
    for (auto rec = first; rec != kept.end(); ++rec) {
      const HealthMetrics m = health_metrics(rec->report);
      for (std::size_t i = 0; i < kHealthMetricCount; ++i) {
        if (std::isnan(m[i])) continue;
        sum[i] += m[i];
        v.min[i] = seen[i] == 0 ? m[i] : std::min(v.min[i], m[i]);
        v.max[i] = seen[i] == 0 ? m[i] : std::max(v.max[i], m[i]);
        ++seen[i];
      }
    }
    for (std::size_t i = 0; i < kHealthMetricCount; ++i)
      if (seen[i] > 0) v.mean[i] = sum[i] / static_cast<double>(seen[i]);
    return v;
  }

  /// The records kept of `layer` (every step unless MonitorConfig::history limits them), oldest
  /// first.
  const std::deque<HealthRecord>& history(Index layer) const { return at(layer).history; }

  /// Every layer's retained records, by step then layer: what the exporters take.
  std::vector<HealthRecord> records() const {
    // Sorts pointers, then copies each record once: a record holds vectors, and moving records
    // around in a sort costs more (and trips GCC 12's maybe-uninitialized on std::optional).
    std::vector<const HealthRecord*> order;
    for (const auto& l : layers_)
      for (const HealthRecord& record : l.history) order.push_back(&record);
    std::stable_sort(order.begin(), order.end(), [](const HealthRecord* a, const HealthRecord* b) {
      return a->step < b->step || (a->step == b->step && a->layer < b->layer);
    });
    std::vector<HealthRecord> out;
    out.reserve(order.size());
    for (const HealthRecord* record : order) out.push_back(*record);
    return out;
  }

  /// Sums over every report of `layer` since construction (not only the window).
  const HealthCounts& counts(Index layer) const { return at(layer).counts; }

  /// Consecutive steps (up to now) at which `expert` of `layer` was cold.
  Index cold_streak(Index layer, ExpertId expert) const {
    const auto& s = at(layer).cold_streak;
    require(!s.empty(), "expert",
            detail::concat("an expert of a recorded layer (layer ", layer, " has no report yet)"),
            expert);
    require(expert >= 0 && static_cast<std::size_t>(expert) < s.size(), "expert",
            detail::concat("in [0, ", s.size(), ")"), expert);
    return s[static_cast<std::size_t>(expert)];
  }

 private:
  struct Layer {
    std::deque<HealthRecord> history;
    HealthMetrics ema{};
    HealthCounts counts;
    std::vector<Index> cold_streak;
  };

  const Layer& at(Index layer) const {
    require(layer >= 0 && layer < config_.num_layers, "layer",
            detail::concat("in [0, ", config_.num_layers, ")"), layer);
    return layers_[static_cast<std::size_t>(layer)];
  }

  std::vector<CollapseAlert> check(std::int64_t step, Index layer, const HealthReport& r,
                                   Layer& l) const {
    std::vector<CollapseAlert> alerts;
    const auto alert = [&](CollapseRule rule, ExpertId expert, double value, double threshold,
                           std::string reason) {
      alerts.push_back(
          CollapseAlert{rule, step, layer, expert, value, threshold,
                        detail::concat("layer ", layer, ", step ", step, ": ", reason)});
    };
    // Cold streaks: the alert fires once, on the step the streak reaches cold_steps.
    std::vector<char> cold(l.cold_streak.size(), 0);
    for (ExpertId e : r.hard.cold) cold[static_cast<std::size_t>(e)] = 1;
    for (std::size_t e = 0; e < cold.size(); ++e) {
      l.cold_streak[e] = cold[e] ? l.cold_streak[e] + 1 : 0;
      if (config_.cold_steps > 0 && l.cold_streak[e] == config_.cold_steps)
        alert(CollapseRule::cold_expert, static_cast<ExpertId>(e),
              static_cast<double>(l.cold_streak[e]), static_cast<double>(config_.cold_steps),
              detail::concat("expert ", e, " cold (hard load ", r.hard.load[static_cast<Index>(e)],
                             ", average ", r.hard.average_load, ") for ", l.cold_streak[e],
                             " consecutive steps"));
    }
    if (r.normalized_entropy < config_.min_normalized_entropy)
      alert(CollapseRule::low_entropy, -1, r.normalized_entropy, config_.min_normalized_entropy,
            detail::concat("normalized entropy of the mean routing distribution ",
                           r.normalized_entropy, " < ", config_.min_normalized_entropy));
    if (r.capacity && r.capacity->drop_rate > config_.max_drop_rate)
      alert(CollapseRule::high_drop_rate, -1, r.capacity->drop_rate, config_.max_drop_rate,
            detail::concat("drop rate ", r.capacity->drop_rate, " > ", config_.max_drop_rate));
    if (r.hard.max_vio > config_.max_max_vio)
      alert(CollapseRule::high_max_vio, -1, r.hard.max_vio, config_.max_max_vio,
            detail::concat("MaxVio of the hard load ", r.hard.max_vio, " > ", config_.max_max_vio));
    const Index nonfinite = (r.logits ? r.logits->nonfinite : 0);
    if (config_.alert_nonfinite && (nonfinite > 0 || r.skipped_tokens > 0))
      alert(CollapseRule::nonfinite_logits, -1, static_cast<double>(nonfinite), 0.0,
            detail::concat(nonfinite, " non-finite logits, ", r.skipped_tokens,
                           " tokens with non-finite probabilities"));
    return alerts;
  }

  MonitorConfig config_;
  Callback on_alert_;
  std::vector<Layer> layers_;
};

}  // namespace moe
