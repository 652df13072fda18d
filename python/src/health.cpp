// The health part of moe_routing: HealthReport and its parts, health_report over a routing or
// plain arrays, the HealthMonitor with its collapse alerts, and the exports (CSV, JSON Lines, SVG
// heatmap, text table) as strings or files.
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <pybind11/functional.h>
#include <pybind11/stl/filesystem.h>

#include "arguments.hpp"
#include "moe/health/export.hpp"

namespace moe::python {

namespace {

py::dict metrics_dict(const HealthMetrics& values) {
  py::dict out;
  for (std::size_t i = 0; i < kHealthMetricCount; ++i)
    out[py::str(std::string(kHealthMetricNames[i]))] = values[i];
  return out;
}

py::array_t<ExpertId> ids_array(const std::vector<ExpertId>& ids) {
  return py::array_t<ExpertId>(static_cast<py::ssize_t>(ids.size()), ids.data());
}

std::vector<ExpertId> ids_vector(const py::handle& object, const char* argument) {
  const auto a = integer_array<ExpertId>(object, argument, 1, "[n]");
  return std::vector<ExpertId>(a.data(), a.data() + a.size());
}

/// Runs `write(std::ostream&)` without the GIL: into a string returned as str when `path` is
/// None, else into the file at `path` (returns None).
template <class Write>
py::object text_or_file(const std::optional<std::filesystem::path>& path, Write&& write) {
  if (!path) {
    std::ostringstream out;
    {
      py::gil_scoped_release release;
      write(out);
    }
    return py::str(out.str());
  }
  bool written = false;
  {
    py::gil_scoped_release release;
    std::ofstream out(*path, std::ios::binary);
    if (out) {
      write(out);
      out.flush();
      written = static_cast<bool>(out);
    }
  }
  require(written, "path", "a file that can be written", path->string());
  return py::none();
}

constexpr const char* kPathNote =
    "With `path` (str or os.PathLike) the text is written to that file and None is returned; "
    "without, the text is returned as a str.";

void bind_configs(py::module_& m) {
  py::enum_<AverageLoad>(m, "AverageLoad",
                         "The average load hot and cold are measured against (T tokens, E experts, "
                         "k choices). per_choice: hard loads against T*k/E, soft loads against T/E "
                         "(NeMo Automodel's utilization ratio). per_token: T/E for both (the "
                         "reference JAX check's literal avg_load).")
      .value("per_choice", AverageLoad::per_choice)
      .value("per_token", AverageLoad::per_token);

  py::enum_<CollapseRule>(m, "CollapseRule", "What a CollapseAlert is about.")
      .value("cold_expert", CollapseRule::cold_expert)
      .value("low_entropy", CollapseRule::low_entropy)
      .value("high_drop_rate", CollapseRule::high_drop_rate)
      .value("high_max_vio", CollapseRule::high_max_vio)
      .value("nonfinite_logits", CollapseRule::nonfinite_logits);

  py::class_<HealthConfig> health(
      m, "HealthConfig",
      "Thresholds that classify an expert as hot (load > hot_factor * average, 1.25 as in the "
      "reference JAX check) or cold (load < cold_factor * average, 0.1), the average they use, "
      "and whether reports compute the top-k margins and bfloat16 stability "
      "(selection_metrics, off by default: one more pass over the scores and the logits).");
  health.def_readwrite("hot_factor", &HealthConfig::hot_factor)
      .def_readwrite("cold_factor", &HealthConfig::cold_factor)
      .def_readwrite("average", &HealthConfig::average)
      .def_readwrite("selection_metrics", &HealthConfig::selection_metrics)
      .def_readwrite("bf16_what_if", &HealthConfig::bf16_what_if,
                     "A MoELayer's report also holds bf16_what_if(router, x, both) (what_if).");
  def_keyword_init<HealthConfig>(health);
  def_fields_repr(health);

  py::class_<MonitorConfig> monitor(
      m, "MonitorConfig",
      "HealthMonitor settings: num_layers; window (records per layer the windowed view "
      "summarizes); history (records kept per layer for history/records/exports, 0 = every "
      "step); ema_decay; the collapse rules' thresholds: cold_steps (0 disables), "
      "min_normalized_entropy (0 disables), max_drop_rate and max_max_vio (inf disables), "
      "alert_nonfinite.");
  monitor.def_readwrite("num_layers", &MonitorConfig::num_layers)
      .def_readwrite("window", &MonitorConfig::window)
      .def_readwrite("history", &MonitorConfig::history)
      .def_readwrite("ema_decay", &MonitorConfig::ema_decay)
      .def_readwrite("cold_steps", &MonitorConfig::cold_steps)
      .def_readwrite("min_normalized_entropy", &MonitorConfig::min_normalized_entropy)
      .def_readwrite("max_drop_rate", &MonitorConfig::max_drop_rate)
      .def_readwrite("max_max_vio", &MonitorConfig::max_max_vio)
      .def_readwrite("alert_nonfinite", &MonitorConfig::alert_nonfinite);
  def_keyword_init<MonitorConfig>(monitor);
  def_fields_repr(monitor);

  py::class_<SvgHeatmapOptions> svg(
      m, "SvgHeatmapOptions",
      "Heatmap of one layer's expert load over steps: layer (other layers' records are "
      "ignored), hard (top-k counts; False: probability sums), cell (side in pixels, >= 2), run "
      "(names the run in the default title), title (replaces the default title).");
  svg.def_readwrite("layer", &SvgHeatmapOptions::layer)
      .def_readwrite("hard", &SvgHeatmapOptions::hard)
      .def_readwrite("cell", &SvgHeatmapOptions::cell)
      .def_readwrite("run", &SvgHeatmapOptions::run)
      .def_readwrite("title", &SvgHeatmapOptions::title);
  def_keyword_init<SvgHeatmapOptions>(svg);
  def_fields_repr(svg);
}

/// The report's parts: plain data, every field readable and writable under its C++ name;
/// per-expert vectors are NumPy arrays (views of the report's memory), expert id lists int32
/// arrays (copies).
void bind_report_parts(py::module_& m) {
  py::class_<LoadStats> load(
      m, "LoadStats",
      "Balance of one per-expert load vector (soft: probability sums; hard: top-k counts): "
      "load [E], average_load (what hot/cold compare with), mean, population variance, cv, "
      "max_vio ((max - mean) / mean, Wang et al. 2024), min, max, p10/p50/p90 (numpy's linear "
      "percentiles), hot/cold (ascending expert ids), their thresholds, entropy (nats).");
  load.def(py::init<>())
      .def_readwrite("load", &LoadStats::load)
      .def_readwrite("average_load", &LoadStats::average_load)
      .def_readwrite("mean", &LoadStats::mean)
      .def_readwrite("variance", &LoadStats::variance)
      .def_readwrite("cv", &LoadStats::cv)
      .def_readwrite("max_vio", &LoadStats::max_vio)
      .def_readwrite("min", &LoadStats::min)
      .def_readwrite("max", &LoadStats::max)
      .def_readwrite("p10", &LoadStats::p10)
      .def_readwrite("p50", &LoadStats::p50)
      .def_readwrite("p90", &LoadStats::p90)
      .def_property(
          "hot", [](const LoadStats& s) { return ids_array(s.hot); },
          [](LoadStats& s, const py::object& ids) { s.hot = ids_vector(ids, "hot"); },
          "int32 [n]: experts with load > hot_threshold, ascending")
      .def_property(
          "cold", [](const LoadStats& s) { return ids_array(s.cold); },
          [](LoadStats& s, const py::object& ids) { s.cold = ids_vector(ids, "cold"); },
          "int32 [n]: experts with load < cold_threshold, ascending")
      .def_readwrite("hot_threshold", &LoadStats::hot_threshold)
      .def_readwrite("cold_threshold", &LoadStats::cold_threshold)
      .def_readwrite("entropy", &LoadStats::entropy)
      .def("hot_count", &LoadStats::hot_count, "len(hot): experts over the hot threshold.")
      .def("cold_count", &LoadStats::cold_count, "len(cold): experts under the cold threshold.");
  def_fields_repr(load);

  py::class_<LogitStats> logits(
      m, "LogitStats",
      "What the router's logits say about a step: mean_logsumexp (the z-loss quantity), "
      "mean_squared_logsumexp (ST-MoE z-loss before its coefficient), mean_entropy (mean "
      "H(softmax(z)) in nats, fairseq entropy_gating), nonfinite (count of NaN/inf logits), "
      "tokens, skipped_tokens (rows with a non-finite logit, left out of the means).");
  logits.def(py::init<>())
      .def_readwrite("mean_logsumexp", &LogitStats::mean_logsumexp)
      .def_readwrite("mean_squared_logsumexp", &LogitStats::mean_squared_logsumexp)
      .def_readwrite("mean_entropy", &LogitStats::mean_entropy)
      .def_readwrite("nonfinite", &LogitStats::nonfinite)
      .def_readwrite("tokens", &LogitStats::tokens)
      .def_readwrite("skipped_tokens", &LogitStats::skipped_tokens);
  def_fields_repr(logits);

  py::class_<CapacityStats> stats(
      m, "CapacityStats",
      "What a capacity-limited dispatch kept and dropped, as plain counts: capacity (C, slots "
      "per expert), kept [E], dropped [E], token_kept [T] (kept choices per token), "
      "token_routed [T] (routed choices per token; empty when every token routes all k). "
      "int64 arrays.");
  stats.def_readwrite("capacity", &CapacityStats::capacity)
      .def_readwrite("kept", &CapacityStats::kept)
      .def_readwrite("dropped", &CapacityStats::dropped)
      .def_readwrite("token_kept", &CapacityStats::token_kept)
      .def_readwrite("token_routed", &CapacityStats::token_routed);
  def_keyword_init<CapacityStats>(stats);
  def_fields_repr(stats);

  py::class_<CapacityReport> capacity(
      m, "CapacityReport",
      "The capacity part of a HealthReport: capacity, drop_rate (sum dropped / routed choices, "
      "marin), tokens_left_behind (fraction of tokens with no choice kept, flaxformer), "
      "tokens_without_expert (their count), capacity_utilization (sum kept / (E C), flaxformer "
      "expert_usage), overflowing_experts, kept [E], dropped [E].");
  capacity.def(py::init<>())
      .def_readwrite("capacity", &CapacityReport::capacity)
      .def_readwrite("drop_rate", &CapacityReport::drop_rate)
      .def_readwrite("tokens_left_behind", &CapacityReport::tokens_left_behind)
      .def_readwrite("tokens_without_expert", &CapacityReport::tokens_without_expert)
      .def_readwrite("capacity_utilization", &CapacityReport::capacity_utilization)
      .def_readwrite("overflowing_experts", &CapacityReport::overflowing_experts)
      .def_readwrite("kept", &CapacityReport::kept)
      .def_readwrite("dropped", &CapacityReport::dropped);
  def_fields_repr(capacity);

  py::class_<TopkMargins> margins(
      m, "TopkMargins",
      "Percentiles over tokens of s_(k) - s_(k+1), the k-th minus the (k+1)-th largest score: "
      "p1, p10, p50 (NaN when no token has a margin), tokens (tokens with a margin).");
  margins.def(py::init<>())
      .def_readwrite("p1", &TopkMargins::p1)
      .def_readwrite("p10", &TopkMargins::p10)
      .def_readwrite("p50", &TopkMargins::p50)
      .def_readwrite("tokens", &TopkMargins::tokens);
  def_fields_repr(margins);

  py::class_<Bf16Stability> stability(
      m, "Bf16Stability",
      "Top-k selections that change when the logits are rounded to bfloat16: tokens (rows "
      "compared), flipped_tokens, flipped_choices (experts swapped out, summed over tokens).");
  stability.def(py::init<>())
      .def_readwrite("tokens", &Bf16Stability::tokens)
      .def_readwrite("flipped_tokens", &Bf16Stability::flipped_tokens)
      .def_readwrite("flipped_choices", &Bf16Stability::flipped_choices);
  def_fields_repr(stability);
}

void bind_report(py::module_& m) {
  py::class_<HealthReport> report(
      m, "HealthReport",
      "Every health metric of one routing step (one layer): tokens, experts, top_k; soft "
      "(LoadStats of the probability sums, the reference check's tokens_per_expert) and hard "
      "(of the top-k counts, before any drop); normalized_entropy (H(mean routing distribution) "
      "/ log E); mean_token_entropy (nats); mean_top1 (router confidence); skipped_tokens (rows "
      "with a non-finite probability); logits (LogitStats or None); capacity (CapacityReport or "
      "None); mean_distribution [E]; margins (TopkMargins, NaN unless "
      "HealthConfig.selection_metrics); stability (Bf16Stability or None); "
      "active_experts_per_token; unused_slots; what_if (Bf16WhatIf of a MoELayer's step with "
      "HealthConfig.bf16_what_if, or None). metrics() gives the scalars the exports write.");
  report.def(py::init<>())
      .def_readwrite("tokens", &HealthReport::tokens)
      .def_readwrite("experts", &HealthReport::experts)
      .def_readwrite("top_k", &HealthReport::top_k)
      .def_readwrite("soft", &HealthReport::soft)
      .def_readwrite("hard", &HealthReport::hard)
      .def_readwrite("normalized_entropy", &HealthReport::normalized_entropy)
      .def_readwrite("mean_token_entropy", &HealthReport::mean_token_entropy)
      .def_readwrite("mean_top1", &HealthReport::mean_top1)
      .def_readwrite("skipped_tokens", &HealthReport::skipped_tokens)
      .def_readwrite("logits", &HealthReport::logits)
      .def_readwrite("capacity", &HealthReport::capacity)
      .def_readwrite("mean_distribution", &HealthReport::mean_distribution)
      .def_readwrite("margins", &HealthReport::margins)
      .def_readwrite("stability", &HealthReport::stability)
      .def_readwrite("active_experts_per_token", &HealthReport::active_experts_per_token)
      .def_readwrite("unused_slots", &HealthReport::unused_slots)
      .def_readwrite("what_if", &HealthReport::what_if)
      .def(
          "metrics", [](const HealthReport& r) { return metrics_dict(health_metrics(r)); },
          "{name: float}: the report's scalars in HEALTH_METRIC_NAMES order, NaN where absent "
          "(no logits, no capacity, selection_metrics off).")
      .def("__repr__", [](const HealthReport& r) {
        return detail::concat("HealthReport(tokens=", r.tokens, ", experts=", r.experts,
                              ", top_k=", r.top_k, ", normalized_entropy=", r.normalized_entropy,
                              ", hard.max_vio=", r.hard.max_vio, ", hard.hot=", r.hard.hot_count(),
                              ", hard.cold=", r.hard.cold_count(),
                              ", capacity=", r.capacity ? "yes" : "None", ")")
            .str();
      });

  m.attr("HEALTH_METRIC_NAMES") = [] {
    py::list names;
    for (const auto& name : kHealthMetricNames) names.append(std::string(name));
    return py::tuple(names);
  }();
  m.def(
      "health_metrics", [](const HealthReport& r) { return metrics_dict(health_metrics(r)); },
      py::arg("report"),
      "{name: float}: the report's scalar metrics, keys in HEALTH_METRIC_NAMES order; NaN where "
      "the report has no such value.");
  m.def(
      "health_metric_index", [](const std::string& name) { return health_metric_index(name); },
      py::arg("name"),
      "Position of `name` in HEALTH_METRIC_NAMES; moe_routing.Error for an unknown name.");
  m.def(
      "health_columns",
      [] {
        std::vector<std::string> names;
        for (const auto& name : health_columns()) names.emplace_back(name);
        return names;
      },
      "Every column of the CSV and JSON Lines exports, in order: step, layer, then each "
      "generation's scalar metrics and per-expert lists.");

  m.def(
      "capacity_stats_from_mask",
      [](const py::object& expert_ids, const py::object& kept_mask, Index num_experts,
         Index capacity) {
        const ExpertIds ids(expert_ids, "expert_ids");
        const ChoiceMask mask = choice_mask(kept_mask, "kept_mask");
        py::gil_scoped_release release;
        return capacity_stats_from_mask(ids.map(), mask, num_experts, capacity);
      },
      py::arg("expert_ids"), py::arg("kept_mask"), py::arg("num_experts"), py::arg("capacity"),
      "CapacityStats from the router's expert_ids [T, k] (integers that fit int32; -1 = unused "
      "slot, neither kept nor dropped; a C-contiguous int32 array is read in place) and "
      "kept_mask [T, k] bool (True = the choice got a slot), for any dispatcher.");
  m.def("capacity_report", &capacity_report, py::arg("stats"), py::arg("tokens"),
        py::arg("experts"), py::arg("top_k"),
        "The capacity part of a report from CapacityStats: drop rate (marin), tokens left "
        "behind and expert usage (flaxformer); checks kept + dropped = T k less unused slots, "
        "sum token_kept = sum kept, kept <= capacity.");
}

/// The entry points over a Routing<S> or a CapacityPlan<S>, whose classes the routing and
/// dispatch parts bind (looked up when called).
template <class S>
void bind_health_for(py::module_& m) {
  m.def(
      "health_report",
      [](const Routing<S>& routing, const HealthConfig& config) {
        return health_report(routing, config);
      },
      py::arg("routing"), py::arg("config") = HealthConfig(),
      py::call_guard<py::gil_scoped_release>(),
      "Health of one router step: soft loads and top-k margins from routing.scores, hard loads "
      "from routing.expert_ids, logit metrics (and bfloat16 stability) from routing.logits "
      "unless it is empty; mean_token_entropy is then H(softmax(logits)) (fairseq "
      "entropy_gating).");
  m.def(
      "health_report",
      [](const Routing<S>& routing, const CapacityStats& capacity, const HealthConfig& config) {
        return health_report(routing, capacity, config);
      },
      py::arg("routing"), py::arg("capacity"), py::arg("config") = HealthConfig(),
      py::call_guard<py::gil_scoped_release>(),
      "As health_report(routing, config), plus the capacity metrics of the dispatch that "
      "followed (CapacityStats: capacity_stats(plan) or capacity_stats_from_mask).");
  m.def("capacity_stats", &capacity_stats<S>, py::arg("plan"),
        py::call_guard<py::gil_scoped_release>(),
        "CapacityStats of a capacity plan (capacity, kept and dropped per expert, kept choices "
        "per token), for health_report(routing, capacity).");
}

/// The entry points over plain arrays: one binding each, running in the array's precision
/// (in_precision), so that a float64 array that is not C-contiguous is copied as float64.
void bind_array_entry_points(py::module_& m) {
  const std::string note = std::string(" ") + kArrayNote;
  m.def(
      "health_report",
      [](const py::object& probabilities, Index top_k, const HealthConfig& config) {
        return in_precision(probabilities, [&](auto s) {
          using S = decltype(s);
          const auto p = float_array<S>(probabilities, "probabilities", 2, "[T, E]");
          py::gil_scoped_release release;
          return health_report(matrix_map(p), top_k, config);
        });
      },
      py::arg("probabilities"), py::arg("top_k"), py::arg("config") = HealthConfig(),
      ("The reference JAX check (tokens_per_expert = column sums, hot > 1.25 T/E, cold < 0.1 "
       "T/E, variance) extended with hard loads from the top-k of each row of probabilities "
       "[T, E] (ties to the lower expert), entropy/confidence metrics and top-k margins." +
       note)
          .c_str());
  m.def(
      "health_report",
      [](const py::object& probabilities, const py::object& expert_ids,
         const HealthConfig& config) {
        return in_precision(probabilities, [&](auto s) {
          using S = decltype(s);
          const auto p = float_array<S>(probabilities, "probabilities", 2, "[T, E]");
          const ExpertIds ids(expert_ids, "expert_ids");
          py::gil_scoped_release release;
          return health_report(matrix_map(p), ids.map(), config);
        });
      },
      py::arg("probabilities"), py::arg("expert_ids"), py::arg("config") = HealthConfig(),
      ("As health_report(probabilities, top_k, config) with the router's own choices "
       "expert_ids [T, k] (integers, -1 = unused slot) for the hard loads." +
       note)
          .c_str());
  m.def(
      "health_reports",
      [](const py::object& probabilities, Index top_k, const HealthConfig& config) {
        return in_precision(probabilities, [&](auto s) {
          using S = decltype(s);
          const auto p = float_array<S>(probabilities, "probabilities", 3, "[L, T, E]");
          py::gil_scoped_release release;
          // The loop of moe::health_reports over a row-major tensor, without Eigen's Tensor
          // module: each layer is a contiguous [T, E] matrix.
          const Index layers = p.shape(0), rows = p.shape(1), cols = p.shape(2);
          std::vector<HealthReport> reports;
          reports.reserve(static_cast<std::size_t>(layers));
          for (Index l = 0; l < layers; ++l)
            reports.push_back(health_report(
                Eigen::Map<const RowMatrix<S>>(p.data() + l * rows * cols, rows, cols), top_k,
                config));
          return reports;
        });
      },
      py::arg("probabilities"), py::arg("top_k"), py::arg("config") = HealthConfig(),
      ("One health_report(probabilities[l], top_k, config) per layer of probabilities "
       "[L, T, E]." +
       note)
          .c_str());
  m.def(
      "logit_stats",
      [](const py::object& logits) {
        return in_precision(logits, [&](auto s) {
          using S = decltype(s);
          const auto z = float_array<S>(logits, "logits", 2, "[T, E]");
          py::gil_scoped_release release;
          return logit_stats(matrix_map(z));
        });
      },
      py::arg("logits"),
      ("LogitStats of router logits [T, E]: mean logsumexp, mean squared logsumexp (the ST-MoE "
       "z-loss before its coefficient), mean H(softmax(z)), non-finite count; rows with a "
       "non-finite logit are left out of the means." +
       note)
          .c_str());
  m.def(
      "topk_margins",
      [](const py::object& scores, Index top_k) {
        return in_precision(scores, [&](auto s) {
          using S = decltype(s);
          const auto p = float_array<S>(scores, "scores", 2, "[T, E]");
          py::gil_scoped_release release;
          return topk_margins(matrix_map(p), top_k);
        });
      },
      py::arg("scores"), py::arg("top_k"),
      ("TopkMargins: percentiles over tokens of s_(k) - s_(k+1) of scores [T, E]; tokens with "
       "k = E or a non-finite score are left out." +
       note)
          .c_str());
  m.def(
      "bf16_stability",
      [](const py::object& logits, Index top_k) {
        return in_precision(logits, [&](auto s) {
          using S = decltype(s);
          const auto z = float_array<S>(logits, "logits", 2, "[T, E]");
          py::gil_scoped_release release;
          return bf16_stability(matrix_map(z), top_k);
        });
      },
      py::arg("logits"), py::arg("top_k"),
      ("Bf16Stability: tokens whose top-k set of logits [T, E] changes when the logits are "
       "rounded to bfloat16 (nearest, ties to even) and ranked again." +
       note)
          .c_str());
}

void bind_monitor(py::module_& m) {
  py::class_<HealthRecord> record(m, "HealthRecord",
                                  "One layer's report at one step: a row of every export.");
  record
      .def(py::init([](std::int64_t step, Index layer, HealthReport report) {
             return HealthRecord{step, layer, std::move(report)};
           }),
           py::arg("step") = 0, py::arg("layer") = 0, py::arg("report") = HealthReport())
      .def_readwrite("step", &HealthRecord::step)
      .def_readwrite("layer", &HealthRecord::layer)
      .def_readwrite("report", &HealthRecord::report)
      .def("__repr__", [](const HealthRecord& r) {
        return detail::concat("HealthRecord(step=", r.step, ", layer=", r.layer, ")").str();
      });

  py::class_<CollapseAlert> alert(
      m, "CollapseAlert",
      "A collapse rule that fired: rule, step, layer, expert (-1 for layer-wide rules), value "
      "(the measured quantity; the streak length for cold_expert), threshold, reason (one "
      "readable sentence).");
  alert.def(py::init<>())
      .def_readwrite("rule", &CollapseAlert::rule)
      .def_readwrite("step", &CollapseAlert::step)
      .def_readwrite("layer", &CollapseAlert::layer)
      .def_readwrite("expert", &CollapseAlert::expert)
      .def_readwrite("value", &CollapseAlert::value)
      .def_readwrite("threshold", &CollapseAlert::threshold)
      .def_readwrite("reason", &CollapseAlert::reason);
  def_fields_repr(alert);

  py::class_<WindowView>(m, "WindowView",
                         "Mean, min and max of every metric ({name: float}) over a layer's "
                         "last `window` records (NaN values left out); records: how many.")
      .def_property_readonly("mean", [](const WindowView& v) { return metrics_dict(v.mean); })
      .def_property_readonly("min", [](const WindowView& v) { return metrics_dict(v.min); })
      .def_property_readonly("max", [](const WindowView& v) { return metrics_dict(v.max); })
      .def_readonly("records", &WindowView::records);

  py::class_<HealthCounts> counts(
      m, "HealthCounts",
      "The additive part of many reports (loads, drops, token counts), merged across steps, "
      "layers or processes by plain sums: steps, tokens, assignments, hard_load [E], soft_load "
      "[E], kept [E], dropped [E], capacity_slots, capacity_assignments, capacity_tokens, "
      "tokens_without_expert, nonfinite_logits, skipped_tokens.");
  counts.def(py::init<>())
      .def(py::init<Index>(), py::arg("num_experts"))
      .def_readwrite("steps", &HealthCounts::steps)
      .def_readwrite("tokens", &HealthCounts::tokens)
      .def_readwrite("assignments", &HealthCounts::assignments)
      .def_readwrite("hard_load", &HealthCounts::hard_load)
      .def_readwrite("soft_load", &HealthCounts::soft_load)
      .def_readwrite("kept", &HealthCounts::kept)
      .def_readwrite("dropped", &HealthCounts::dropped)
      .def_readwrite("capacity_slots", &HealthCounts::capacity_slots)
      .def_readwrite("capacity_assignments", &HealthCounts::capacity_assignments)
      .def_readwrite("capacity_tokens", &HealthCounts::capacity_tokens)
      .def_readwrite("tokens_without_expert", &HealthCounts::tokens_without_expert)
      .def_readwrite("nonfinite_logits", &HealthCounts::nonfinite_logits)
      .def_readwrite("skipped_tokens", &HealthCounts::skipped_tokens)
      .def("experts", &HealthCounts::experts, "E, the length of the per-expert counts (hard_load).")
      .def("add", &HealthCounts::add, py::arg("report"), "Adds one report's counts (same E).")
      .def("merge", &HealthCounts::merge, py::arg("other"),
           "Element-wise sum: merging in any order gives the same counts.")
      .def(
          "pack",
          [](const HealthCounts& c) {
            std::vector<double> flat = c.pack();
            return py::array_t<double>(static_cast<py::ssize_t>(flat.size()), flat.data());
          },
          "float64 [9 + 4 E] whose element-wise sum over processes (an all-reduce) is the "
          "packed merge; unpack() reads it back.")
      .def_static(
          "unpack",
          [](const py::object& flat) {
            const auto a = float_array<double>(flat, "flat", 1, "[9 + 4 E]");
            return HealthCounts::unpack(std::vector<double>(a.data(), a.data() + a.size()));
          },
          py::arg("flat"))
      .def("hard_stats", &HealthCounts::hard_stats, py::arg("config") = HealthConfig(),
           "LoadStats of the summed hard loads: the global MaxVio (Wang et al. 2024) over many "
           "steps or processes.")
      .def("drop_rate", &HealthCounts::drop_rate,
           "sum dropped / sum T k over the reports with capacity counts (NaN if none).");
  def_fields_repr(counts);

  py::class_<HealthMonitor> monitor(
      m, "HealthMonitor",
      "Health reports of several layers over training steps: EMA and windowed views, collapse "
      "rules (cold expert streak, low entropy, high drop rate, high MaxVio, non-finite logits) "
      "delivered to a callback, mergeable counts, and the exports.");
  monitor
      .def(py::init([](const MonitorConfig& config, const py::object& on_alert) {
             HealthMonitor::Callback callback;
             if (!on_alert.is_none()) callback = on_alert.cast<HealthMonitor::Callback>();
             return std::make_unique<HealthMonitor>(config, std::move(callback));
           }),
           py::arg("config") = MonitorConfig(), py::arg("on_alert") = py::none(),
           "on_alert(alert: CollapseAlert) is called once per alert, during record().")
      .def_property_readonly(
          "config", [](const HealthMonitor& self) { return self.config(); },
          "The MonitorConfig (a copy: the rules read it on every record).")
      .def(
          "set_callback",
          [](HealthMonitor& self, const py::object& on_alert) {
            self.set_callback(on_alert.is_none() ? HealthMonitor::Callback()
                                                 : on_alert.cast<HealthMonitor::Callback>());
          },
          py::arg("on_alert"), "Replaces the alert callback (None: no callback).")
      .def("record", py::overload_cast<std::int64_t, Index, HealthReport>(&HealthMonitor::record),
           py::arg("step"), py::arg("layer"), py::arg("report"),
           "Records `layer`'s report at `step` (steps strictly increasing per layer, E fixed per "
           "layer), runs the collapse rules, calls the callback once per alert and returns the "
           "alerts (list of CollapseAlert).")
      .def("record",
           py::overload_cast<std::int64_t, std::vector<HealthReport>>(&HealthMonitor::record),
           py::arg("step"), py::arg("reports"),
           "Records one report per layer (reports[l] is layer l) at `step`; returns every alert.")
      .def(
          "ema",
          [](const HealthMonitor& self, Index layer) { return metrics_dict(self.ema(layer)); },
          py::arg("layer"),
          "{name: float}: exponential moving average of every metric; NaN for one never seen.")
      .def("window", &HealthMonitor::window, py::arg("layer"),
           "WindowView: mean, min and max of every metric over the last `window` records.")
      .def(
          "history",
          [](const HealthMonitor& self, Index layer) {
            const auto& kept = self.history(layer);
            return std::vector<HealthRecord>(kept.begin(), kept.end());
          },
          py::arg("layer"),
          "The records kept of `layer`, oldest first (copies): every step unless "
          "MonitorConfig.history limits them.")
      .def("records", &HealthMonitor::records,
           "Every layer's kept records, by step then layer (copies): what the exporters take.")
      .def("counts", &HealthMonitor::counts, py::arg("layer"),
           "HealthCounts (a copy) summed over every report of `layer` since construction.")
      .def("cold_streak", &HealthMonitor::cold_streak, py::arg("layer"), py::arg("expert"),
           "Consecutive steps (up to now) at which `expert` of `layer` was cold.");

  m.def(
      "write_csv",
      [](const std::vector<HealthRecord>& records,
         const std::optional<std::filesystem::path>& path) {
        return text_or_file(path, [&](std::ostream& out) { write_csv(out, records); });
      },
      py::arg("records"), py::arg("path") = py::none(),
      (std::string("CSV of health records (a list of HealthRecord, e.g. monitor.records()): "
                   "one row per layer and step, columns of health_columns(); NaN is an empty "
                   "cell, lists are ';'-separated (pandas.read_csv reads it). ") +
       kPathNote)
          .c_str());
  m.def(
      "write_jsonl",
      [](const std::vector<HealthRecord>& records,
         const std::optional<std::filesystem::path>& path) {
        return text_or_file(path, [&](std::ostream& out) { write_jsonl(out, records); });
      },
      py::arg("records"), py::arg("path") = py::none(),
      (std::string("JSON Lines of health records: one object per layer and step, keys of "
                   "health_columns() in order, NaN and infinities as null "
                   "(pandas.read_json(lines=True)). ") +
       kPathNote)
          .c_str());
  m.def(
      "write_svg_heatmap",
      [](const std::vector<HealthRecord>& records, const SvgHeatmapOptions& options,
         const std::optional<std::filesystem::path>& path) {
        return text_or_file(path,
                            [&](std::ostream& out) { write_svg_heatmap(out, records, options); });
      },
      py::arg("records"), py::arg("options") = SvgHeatmapOptions(), py::arg("path") = py::none(),
      (std::string("SVG heatmap of options.layer's expert load over the records' steps: experts "
                   "down, steps across, colour = load / average on a log scale (blue under, "
                   "white at 1, red over), hot cells outlined solid, cold dotted. ") +
       kPathNote)
          .c_str());
  m.def(
      "format_health_table",
      [](const std::vector<HealthRecord>& records) { return format_health_table(records); },
      py::arg("records"),
      "Compact text table, one line per record: layer, step, tokens, soft and hard CV, hard "
      "MaxVio, hard hot/cold counts, normalized entropy, mean top-1, mean logsumexp, drop rate "
      "(%), non-finite logits; '-' = absent.");
  m.def(
      "write_health_table",
      [](const std::vector<HealthRecord>& records,
         const std::optional<std::filesystem::path>& path) {
        return text_or_file(path, [&](std::ostream& out) { write_health_table(out, records); });
      },
      py::arg("records"), py::arg("path") = py::none(),
      (std::string("format_health_table(records) written out. ") + kPathNote).c_str());
}

}  // namespace

void bind_health(py::module_& m) {
  bind_configs(m);
  bind_report_parts(m);
  bind_report(m);
  // Routing overloads first: a Routing object must not reach the array overloads, which accept
  // any object.
  bind_health_for<float>(m);
  bind_health_for<double>(m);
  bind_array_entry_points(m);
  bind_monitor(m);
}

}  // namespace moe::python
