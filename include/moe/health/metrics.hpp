// The scalar metrics of a HealthReport as one fixed, named list: the columns of every export and
// the quantities the monitor smooths. Names and order are stable; new metrics are appended.
#pragma once

#include <array>
#include <cstddef>
#include <limits>
#include <string_view>

#include "moe/core/error.hpp"
#include "moe/health/report.hpp"

namespace moe {

inline constexpr std::array<std::string_view, 55> kHealthMetricNames = {
    "tokens",
    "experts",
    "top_k",
    "soft_average_load",
    "soft_mean",
    "soft_min",
    "soft_max",
    "soft_p10",
    "soft_p50",
    "soft_p90",
    "soft_variance",
    "soft_cv",
    "soft_max_vio",
    "soft_hot_count",
    "soft_cold_count",
    "hard_average_load",
    "hard_mean",
    "hard_min",
    "hard_max",
    "hard_p10",
    "hard_p50",
    "hard_p90",
    "hard_variance",
    "hard_cv",
    "hard_max_vio",
    "hard_hot_count",
    "hard_cold_count",
    "normalized_entropy",
    "mean_token_entropy",
    "mean_top1",
    "skipped_tokens",
    "mean_logsumexp",
    "mean_squared_logsumexp",
    "nonfinite_logits",
    "capacity",
    "drop_rate",
    "tokens_left_behind",
    "tokens_without_expert",
    "capacity_utilization",
    "overflowing_experts",
    // Appended in 0.2.0; the exports put them after the list columns of the above.
    "soft_hot_threshold",
    "soft_cold_threshold",
    "hard_hot_threshold",
    "hard_cold_threshold",
    "soft_entropy",
    "hard_entropy",
    "topk_margin_p1",
    "topk_margin_p10",
    "topk_margin_p50",
    "bf16_flipped_tokens",
    "bf16_flipped_choices",
    "active_experts_per_token",
    "unused_slots",
    // Appended in 0.3.0.
    "bf16_whatif_flipped_tokens",
    "bf16_whatif_flipped_choices",
};

/// Scalars named before the first export list column (kHealthMetricNames[0, 40)); the rest come
/// after the lists, so columns once written keep their positions.
inline constexpr std::size_t kHealthMetricsBeforeLists = 40;
/// Scalars of the names through 0.2.0 (kHealthMetricNames[0, 53)); 0.3.0's follow.
inline constexpr std::size_t kHealthMetricsThrough020 = 53;

inline constexpr std::size_t kHealthMetricCount = kHealthMetricNames.size();

/// One value per name of kHealthMetricNames; NaN where the report has no such value (no logits,
/// no capacity counts, an empty denominator, no margin with k = E, selection_metrics off).
using HealthMetrics = std::array<double, kHealthMetricCount>;

/// Position of `name` in kHealthMetricNames; raises moe::Error for an unknown name.
inline std::size_t health_metric_index(std::string_view name) {
  for (std::size_t i = 0; i < kHealthMetricCount; ++i)
    if (kHealthMetricNames[i] == name) return i;
  detail::fail("name", "one of kHealthMetricNames", name);
}

/// The report's scalars in kHealthMetricNames order.
inline HealthMetrics health_metrics(const HealthReport& r) {
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  const auto d = [](auto v) { return static_cast<double>(v); };
  HealthMetrics m{};
  std::size_t i = 0;
  m[i++] = d(r.tokens);
  m[i++] = d(r.experts);
  m[i++] = d(r.top_k);
  for (const LoadStats* s : {&r.soft, &r.hard}) {
    m[i++] = s->average_load;
    m[i++] = s->mean;
    m[i++] = s->min;
    m[i++] = s->max;
    m[i++] = s->p10;
    m[i++] = s->p50;
    m[i++] = s->p90;
    m[i++] = s->variance;
    m[i++] = s->cv;
    m[i++] = s->max_vio;
    m[i++] = d(s->hot_count());
    m[i++] = d(s->cold_count());
  }
  m[i++] = r.normalized_entropy;
  m[i++] = r.mean_token_entropy;
  m[i++] = r.mean_top1;
  m[i++] = d(r.skipped_tokens);
  m[i++] = r.logits ? r.logits->mean_logsumexp : nan;
  m[i++] = r.logits ? r.logits->mean_squared_logsumexp : nan;
  m[i++] = r.logits ? d(r.logits->nonfinite) : nan;
  m[i++] = r.capacity ? d(r.capacity->capacity) : nan;
  m[i++] = r.capacity ? r.capacity->drop_rate : nan;
  m[i++] = r.capacity ? r.capacity->tokens_left_behind : nan;
  m[i++] = r.capacity ? d(r.capacity->tokens_without_expert) : nan;
  m[i++] = r.capacity ? r.capacity->capacity_utilization : nan;
  m[i++] = r.capacity ? d(r.capacity->overflowing_experts) : nan;
  for (const LoadStats* s : {&r.soft, &r.hard}) {
    m[i++] = s->hot_threshold;
    m[i++] = s->cold_threshold;
  }
  m[i++] = r.soft.entropy;
  m[i++] = r.hard.entropy;
  m[i++] = r.margins.p1;
  m[i++] = r.margins.p10;
  m[i++] = r.margins.p50;
  m[i++] = r.stability ? d(r.stability->flipped_tokens) : nan;
  m[i++] = r.stability ? d(r.stability->flipped_choices) : nan;
  m[i++] = r.active_experts_per_token;
  m[i++] = d(r.unused_slots);
  m[i++] = r.what_if ? d(r.what_if->flipped_tokens) : nan;
  m[i++] = r.what_if ? d(r.what_if->flipped_choices) : nan;
  eigen_assert(i == kHealthMetricCount);
  return m;
}

}  // namespace moe
