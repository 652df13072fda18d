// The monitor (EMA and windowed views, collapse rules, mergeable counts) and the exporters, whose
// output is parsed back: CSV and JSON Lines round trips, the SVG as well-formed XML.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "moe/health/export.hpp"
#include "moe/health/health.hpp"
#include "support/catch.hpp"

using moe::Index;
using moe::RowMatrix;

namespace {

// A report over T tokens and E experts whose hard loads are exactly `hard` (k = 1): each token
// puts probability 0.7 on its expert and spreads 0.3 over the others.
moe::HealthReport report_with_loads(const std::vector<Index>& hard, bool with_logits = true) {
  const Index experts = static_cast<Index>(hard.size());
  Index tokens = 0;
  for (Index c : hard) tokens += c;
  moe::Routing<double> r;
  r.scores = RowMatrix<double>::Constant(tokens, experts, experts > 1 ? 0.3 / (experts - 1) : 1.0);
  r.expert_ids.resize(tokens, 1);
  Index t = 0;
  for (Index e = 0; e < experts; ++e)
    for (Index i = 0; i < hard[e]; ++i, ++t) {
      r.expert_ids(t, 0) = static_cast<moe::ExpertId>(e);
      if (experts > 1) r.scores(t, e) = 0.7;
    }
  if (with_logits) r.logits = r.scores.array().log().matrix();
  moe::HealthConfig config;
  config.selection_metrics = true;  // the exports carry every column
  return moe::health_report(r, config);
}

moe::CapacityStats capacity_with_drops(const std::vector<Index>& hard, Index capacity) {
  moe::CapacityStats c;
  const Index experts = static_cast<Index>(hard.size());
  c.capacity = capacity;
  c.kept.resize(experts);
  c.dropped.resize(experts);
  std::vector<Index> token_kept;
  for (Index e = 0; e < experts; ++e) {
    c.kept[e] = std::min(hard[e], capacity);
    c.dropped[e] = hard[e] - c.kept[e];
    for (Index i = 0; i < hard[e]; ++i) token_kept.push_back(i < capacity ? 1 : 0);
  }
  c.token_kept =
      Eigen::Map<moe::IndexVector>(token_kept.data(), static_cast<Index>(token_kept.size()));
  return c;
}

std::vector<moe::CollapseRule> rules(const std::vector<moe::CollapseAlert>& alerts) {
  std::vector<moe::CollapseRule> out;
  for (const auto& a : alerts) out.push_back(a.rule);
  return out;
}

// ---- a tiny JSON reader for the flat objects of the JSON Lines export ----
struct JsonValue {
  bool is_null = false, is_array = false;
  double number = 0;
  std::vector<JsonValue> items;
};

struct JsonReader {
  const std::string& s;
  std::size_t i = 0;
  void ws() {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  }
  void expect(char c) {
    ws();
    REQUIRE(i < s.size());
    REQUIRE(s[i] == c);
    ++i;
  }
  std::string key() {
    expect('"');
    const std::size_t end = s.find('"', i);
    REQUIRE(end != std::string::npos);
    std::string k = s.substr(i, end - i);
    i = end + 1;
    return k;
  }
  JsonValue value() {
    ws();
    JsonValue v;
    if (s.compare(i, 4, "null") == 0) {
      v.is_null = true;
      i += 4;
    } else if (s[i] == '[') {
      v.is_array = true;
      ++i;
      ws();
      if (s[i] == ']') {
        ++i;
        return v;
      }
      while (true) {
        v.items.push_back(value());
        ws();
        if (s[i] == ']') {
          ++i;
          break;
        }
        expect(',');
      }
    } else {
      std::size_t used = 0;
      v.number = std::stod(s.substr(i), &used);
      REQUIRE(used > 0);
      i += used;
    }
    return v;
  }
  std::vector<std::pair<std::string, JsonValue>> object() {
    std::vector<std::pair<std::string, JsonValue>> out;
    expect('{');
    while (true) {
      std::string k = key();
      expect(':');
      out.emplace_back(k, value());
      ws();
      if (s[i] == '}') {
        ++i;
        break;
      }
      expect(',');
    }
    ws();
    REQUIRE(i == s.size());
    return out;
  }
};

// ---- a tiny XML checker: tags nest and close, attributes are quoted, entities are known ----
struct XmlSummary {
  bool well_formed = true;
  std::string error;
  std::map<std::string, int> elements;  // element name -> count
  std::vector<std::map<std::string, std::string>> rects;
};

XmlSummary check_xml(const std::string& s) {
  XmlSummary out;
  std::vector<std::string> stack;
  const auto bad = [&](const std::string& why) {
    out.well_formed = false;
    if (out.error.empty()) out.error = why;
  };
  std::size_t i = 0;
  bool root_seen = false;
  while (i < s.size()) {
    if (s[i] != '<') {
      if (s[i] == '&') {
        const std::size_t semi = s.find(';', i);
        const std::string ent = semi == std::string::npos ? "" : s.substr(i, semi - i + 1);
        if (!(ent == "&amp;" || ent == "&lt;" || ent == "&gt;" || ent == "&quot;" ||
              ent == "&apos;" || (ent.size() > 3 && ent[1] == '#')))
          bad("bad entity at " + std::to_string(i));
      } else if (stack.empty() && !std::isspace(static_cast<unsigned char>(s[i]))) {
        bad("text outside the root at " + std::to_string(i));
      }
      ++i;
      continue;
    }
    if (s.compare(i, 5, "<?xml") == 0) {
      i = s.find("?>", i) + 2;
      continue;
    }
    const std::size_t end = s.find('>', i);
    if (end == std::string::npos) {
      bad("unclosed tag");
      break;
    }
    std::string tag = s.substr(i + 1, end - i - 1);
    i = end + 1;
    if (!tag.empty() && tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name)
        bad("mismatched </" + name + ">");
      else
        stack.pop_back();
      continue;
    }
    const bool self_closing = !tag.empty() && tag.back() == '/';
    if (self_closing) tag.pop_back();
    std::size_t p = 0;
    while (p < tag.size() && !std::isspace(static_cast<unsigned char>(tag[p]))) ++p;
    const std::string name = tag.substr(0, p);
    if (name.empty()) bad("empty tag name");
    if (stack.empty()) {
      if (root_seen) bad("second root element");
      root_seen = true;
    }
    std::map<std::string, std::string> attributes;
    while (true) {
      while (p < tag.size() && std::isspace(static_cast<unsigned char>(tag[p]))) ++p;
      if (p >= tag.size()) break;
      const std::size_t eq = tag.find('=', p);
      if (eq == std::string::npos || eq + 1 >= tag.size() || tag[eq + 1] != '"') {
        bad("unquoted attribute in <" + name + ">");
        break;
      }
      const std::size_t close = tag.find('"', eq + 2);
      if (close == std::string::npos) {
        bad("unterminated attribute in <" + name + ">");
        break;
      }
      const std::string attr = tag.substr(p, eq - p);
      if (attributes.count(attr)) bad("duplicate attribute " + attr);
      attributes[attr] = tag.substr(eq + 2, close - eq - 2);
      if (attributes[attr].find('<') != std::string::npos) bad("< in an attribute");
      p = close + 1;
    }
    ++out.elements[name];
    if (name == "rect") out.rects.push_back(attributes);
    if (!self_closing) stack.push_back(name);
  }
  if (!stack.empty()) bad("unclosed <" + stack.back() + ">");
  if (!root_seen) bad("no root element");
  return out;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep)) out.push_back(cur);
  if (!s.empty() && s.back() == sep) out.emplace_back();
  return out;
}

}  // namespace

TEST_CASE("collapse rules fire, and do not fire, as configured", "[health][monitor]") {
  moe::MonitorConfig config;
  config.num_layers = 2;
  config.cold_steps = 3;
  config.max_max_vio = 1.0;
  std::vector<moe::CollapseAlert> delivered;
  moe::HealthMonitor monitor(config, [&](const moe::CollapseAlert& a) { delivered.push_back(a); });

  SECTION("balanced routing raises nothing") {
    for (int step = 0; step < 10; ++step)
      CHECK(monitor.record(step, {report_with_loads({4, 4, 4, 4}), report_with_loads({5, 3, 4, 4})})
                .empty());
    CHECK(delivered.empty());
  }
  SECTION("an expert cold for cold_steps consecutive steps: once per streak") {
    // Expert 3 gets nothing (cold: 0 < 0.1 * 4); MaxVio = (5.33 - 4) / 4 stays below 1.
    const std::vector<Index> starved = {6, 5, 5, 0};
    CHECK(monitor.record(1, 0, report_with_loads(starved)).empty());
    CHECK(monitor.record(2, 0, report_with_loads(starved)).empty());
    CHECK(monitor.cold_streak(0, 3) == 2);
    const auto alerts = monitor.record(3, 0, report_with_loads(starved));
    REQUIRE(alerts.size() == 1);
    CHECK(alerts[0].rule == moe::CollapseRule::cold_expert);
    CHECK(alerts[0].expert == 3);
    CHECK(alerts[0].layer == 0);
    CHECK(alerts[0].step == 3);
    CHECK(alerts[0].value == 3.0);
    CHECK(alerts[0].reason.find("expert 3 cold") != std::string::npos);
    CHECK(monitor.record(4, 0, report_with_loads(starved)).empty());  // streak continues, no repeat
    CHECK(monitor.record(5, 0, report_with_loads({4, 4, 4, 4})).empty());  // streak broken
    CHECK(monitor.cold_streak(0, 3) == 0);
    CHECK(monitor.record(6, 0, report_with_loads(starved)).empty());
    CHECK(delivered.size() == 1);
  }
  SECTION("MaxVio above the maximum, at it does not fire") {
    const auto at = monitor.record(1, 1, report_with_loads({8, 4, 2, 2}));  // (8-4)/4 = 1
    CHECK(at.empty());
    const auto above = monitor.record(2, 1, report_with_loads({9, 3, 2, 2}));
    REQUIRE(rules(above) == std::vector{moe::CollapseRule::high_max_vio});
    CHECK(above[0].value == Approx(1.25));
    CHECK(above[0].layer == 1);
  }
  SECTION("low normalized entropy") {
    // All tokens on expert 0 with probability 1: the mean distribution is one-hot, entropy 0.
    moe::Routing<double> r;
    r.scores = RowMatrix<double>::Zero(8, 4);
    r.scores.col(0).setOnes();
    r.expert_ids = moe::ExpertIdMatrix::Zero(8, 1);
    const auto alerts = monitor.record(1, 0, moe::health_report(r));
    const auto got = rules(alerts);
    CHECK(std::find(got.begin(), got.end(), moe::CollapseRule::low_entropy) != got.end());
    CHECK(std::find(got.begin(), got.end(), moe::CollapseRule::high_max_vio) != got.end());
    moe::MonitorConfig off = config;
    off.min_normalized_entropy = 0.0;
    off.max_max_vio = std::numeric_limits<double>::infinity();
    moe::HealthMonitor quiet(off);
    CHECK(quiet.record(1, 0, moe::health_report(r)).empty());
  }
  SECTION("drop rate above 5%, exactly 5% does not fire") {
    // 20 assignments per expert, 5 experts: 100 assignments; capacity 19 drops 5 = 5%.
    const std::vector<Index> loads = {20, 20, 20, 20, 20};
    auto r = report_with_loads(loads);
    r.capacity = moe::capacity_report(capacity_with_drops({24, 24, 19, 19, 14}, 19), 100, 5, 1);
    CHECK(r.capacity->drop_rate == Approx(0.10));
    const auto high = monitor.record(1, 0, r);
    REQUIRE(rules(high) == std::vector{moe::CollapseRule::high_drop_rate});
    CHECK(high[0].value == Approx(0.10));
    r.capacity = moe::capacity_report(capacity_with_drops({20, 20, 20, 20, 20}, 19), 100, 5, 1);
    CHECK(r.capacity->drop_rate == 0.05);
    CHECK(monitor.record(2, 0, r).empty());
  }
  SECTION("non-finite logits") {
    auto r = report_with_loads({4, 4, 4, 4});
    r.logits->nonfinite = 2;
    const auto alerts = monitor.record(1, 0, r);
    REQUIRE(rules(alerts) == std::vector{moe::CollapseRule::nonfinite_logits});
    CHECK(alerts[0].value == 2.0);
    REQUIRE(delivered.size() == 1);
    CHECK(delivered[0].reason == alerts[0].reason);
  }
}

TEST_CASE("EMA and windowed views", "[health][monitor]") {
  moe::MonitorConfig config;
  config.window = 2;
  config.ema_decay = 0.5;
  moe::HealthMonitor monitor(config);
  const std::size_t cv = moe::health_metric_index("hard_cv");
  const std::size_t drop = moe::health_metric_index("drop_rate");
  const auto a = report_with_loads({4, 4, 4, 4});
  const auto b = report_with_loads({6, 2, 4, 4});
  const auto c = report_with_loads({8, 0, 4, 4});
  CHECK(std::isnan(monitor.ema(0)[cv]));
  monitor.record(10, 0, a);
  CHECK(monitor.ema(0)[cv] == Approx(a.hard.cv));
  monitor.record(11, 0, b);
  CHECK(monitor.ema(0)[cv] == Approx(0.5 * a.hard.cv + 0.5 * b.hard.cv));
  monitor.record(12, 0, c);
  CHECK(monitor.ema(0)[cv] == Approx(0.5 * (0.5 * a.hard.cv + 0.5 * b.hard.cv) + 0.5 * c.hard.cv));
  CHECK(std::isnan(monitor.ema(0)[drop]));  // never measured

  const auto w = monitor.window(0);
  CHECK(w.records == 2);  // a fell out of the window
  CHECK(w.mean[cv] == Approx((b.hard.cv + c.hard.cv) / 2));
  CHECK(w.min[cv] == Approx(b.hard.cv));
  CHECK(w.max[cv] == Approx(c.hard.cv));
  CHECK(std::isnan(w.mean[drop]));
  // The history keeps every step unless told otherwise; the window only summarizes.
  REQUIRE(monitor.history(0).size() == 3);
  CHECK(monitor.history(0).front().step == 10);
  CHECK(monitor.records().size() == 3);
  // Counts cover every report, not only the window.
  CHECK(monitor.counts(0).steps == 3);
  CHECK(monitor.counts(0).hard_load == (moe::IndexVector(4) << 18, 6, 12, 12).finished());
}

TEST_CASE("a history limit keeps the last records; the window still summarizes its own",
          "[health][monitor]") {
  moe::MonitorConfig config;
  config.window = 3;
  config.history = 2;
  moe::HealthMonitor monitor(config);
  const std::size_t cv = moe::health_metric_index("hard_cv");
  const auto a = report_with_loads({4, 4, 4, 4});
  const auto b = report_with_loads({6, 2, 4, 4});
  const auto c = report_with_loads({8, 0, 4, 4});
  monitor.record(1, 0, a);
  monitor.record(2, 0, b);
  monitor.record(3, 0, c);
  REQUIRE(monitor.history(0).size() == 2);
  CHECK(monitor.history(0).front().step == 2);
  const auto records = monitor.records();
  REQUIRE(records.size() == 2);
  CHECK(records.front().step == 2);
  // Only two records are left to summarize, though the window would take three.
  const auto w = monitor.window(0);
  CHECK(w.records == 2);
  CHECK(w.mean[cv] == Approx((b.hard.cv + c.hard.cv) / 2));
  CHECK(monitor.counts(0).steps == 3);
}

TEST_CASE("counts merge by plain sums, across monitors and through a flat buffer",
          "[health][counts]") {
  moe::MonitorConfig config;
  moe::HealthMonitor rank0(config), rank1(config), both(config);
  const std::vector<std::vector<Index>> loads = {{4, 4, 4, 4}, {9, 1, 3, 3}, {2, 2, 6, 6}};
  for (int s = 0; s < 3; ++s) {
    auto r = report_with_loads(loads[s]);
    r.capacity = moe::capacity_report(capacity_with_drops(loads[s], 5), 16, 4, 1);
    (s % 2 ? rank1 : rank0).record(s, 0, r);
    both.record(s, 0, r);
  }
  moe::HealthCounts merged = rank0.counts(0);
  merged.merge(rank1.counts(0));
  const moe::HealthCounts& all = both.counts(0);
  CHECK(merged.steps == 3);
  CHECK(merged.tokens == 48);
  CHECK(merged.hard_load == all.hard_load);
  CHECK(merged.soft_load.isApprox(all.soft_load));
  CHECK(merged.dropped == all.dropped);
  CHECK(merged.dropped == (moe::IndexVector(4) << 4, 0, 1, 1).finished());
  CHECK(merged.drop_rate() == Approx(6.0 / 48));
  CHECK(merged.tokens_without_expert == 6);
  // Global MaxVio over the summed counts [15, 7, 13, 13]: (15 - 12) / 12.
  CHECK(merged.hard_stats().max_vio == Approx(0.25));

  const auto flat = merged.pack();
  CHECK(flat.size() == 9 + 4 * 4);
  const auto back = moe::HealthCounts::unpack(flat);
  CHECK(back.pack() == flat);
  CHECK(back.hard_load == merged.hard_load);
  // Sum-reducing two packed buffers equals merging.
  auto a = rank0.counts(0).pack();
  const auto b = rank1.counts(0).pack();
  for (std::size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  CHECK(moe::HealthCounts::unpack(a).pack() == flat);
}

TEST_CASE("CSV and JSON Lines round trip", "[health][export]") {
  std::vector<moe::HealthRecord> records;
  for (int step = 0; step < 3; ++step)
    for (Index layer = 0; layer < 2; ++layer) {
      auto r = report_with_loads({static_cast<Index>(6 + step), 4, 3, static_cast<Index>(3 - step)},
                                 layer == 0);
      if (layer == 1)
        r.capacity = moe::capacity_report(
            capacity_with_drops({static_cast<Index>(6 + step), 4, 3, static_cast<Index>(3 - step)},
                                5),
            r.tokens, 4, 1);
      records.push_back({step * 100, layer, r});
    }
  const auto columns = moe::health_columns();
  REQUIRE(columns.size() == 2 + moe::kHealthMetricCount + moe::kHealthListColumns.size());
  // 0.1.0's 49 columns keep their positions (readers by position keep working); 0.2.0's
  // columns follow them, then 0.3.0's.
  REQUIRE(columns.size() == 67);
  CHECK(columns[41] == "overflowing_experts");
  CHECK(columns[42] == "soft_hot_experts");
  CHECK(columns[48] == "dropped");
  const std::vector<std::string_view> appended = {"soft_hot_threshold",
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
                                                  "mean_distribution",
                                                  "bf16_whatif_flipped_tokens",
                                                  "bf16_whatif_flipped_choices",
                                                  "bf16_whatif_lost",
                                                  "bf16_whatif_gained"};
  CHECK(std::vector<std::string_view>(columns.begin() + 49, columns.end()) == appended);

  SECTION("CSV") {
    std::ostringstream out;
    moe::write_csv(out, records);
    const auto lines = split(out.str(), '\n');
    REQUIRE(lines.size() ==
            records.size() + 2);  // header, rows, the empty string after the last \n
    CHECK(lines.back().empty());
    const auto header = split(lines[0], ',');
    REQUIRE(header.size() == columns.size());
    for (std::size_t i = 0; i < columns.size(); ++i) CHECK(header[i] == columns[i]);
    for (std::size_t r = 0; r < records.size(); ++r) {
      const auto cells = split(lines[r + 1], ',');
      REQUIRE(cells.size() == columns.size());
      CHECK(std::stoll(cells[0]) == records[r].step);
      CHECK(std::stoll(cells[1]) == records[r].layer);
      const auto values = moe::health_metrics(records[r].report);
      const auto lists = moe::health_lists(records[r].report);
      std::size_t cell = 2;
      for (const auto& g : moe::kHealthColumnGroups) {
        for (std::size_t m = g.first_metric; m < g.end_metric; ++m, ++cell) {
          CAPTURE(r, moe::kHealthMetricNames[m], cells[cell]);
          CHECK(header[cell] == moe::kHealthMetricNames[m]);
          if (std::isnan(values[m]))
            CHECK(cells[cell].empty());
          else
            CHECK(std::stod(cells[cell]) == values[m]);  // shortest round-trip text: exact
        }
        for (std::size_t l = g.first_list; l < g.end_list; ++l, ++cell) {
          CHECK(header[cell] == moe::kHealthListColumns[l]);
          const auto items =
              cells[cell].empty() ? std::vector<std::string>{} : split(cells[cell], ';');
          REQUIRE(items.size() == lists[l].size());
          for (std::size_t i = 0; i < items.size(); ++i) CHECK(std::stod(items[i]) == lists[l][i]);
        }
      }
      CHECK(cell == columns.size());
    }
  }
  SECTION("JSON Lines") {
    std::ostringstream out;
    moe::write_jsonl(out, records);
    const auto lines = split(out.str(), '\n');
    REQUIRE(lines.size() == records.size() + 1);
    for (std::size_t r = 0; r < records.size(); ++r) {
      JsonReader reader{lines[r]};
      const auto object = reader.object();
      REQUIRE(object.size() == columns.size());
      for (std::size_t i = 0; i < columns.size(); ++i) CHECK(object[i].first == columns[i]);
      CHECK(object[0].second.number == records[r].step);
      CHECK(object[1].second.number == records[r].layer);
      const auto values = moe::health_metrics(records[r].report);
      const auto lists = moe::health_lists(records[r].report);
      std::size_t key = 2;
      for (const auto& g : moe::kHealthColumnGroups) {
        for (std::size_t m = g.first_metric; m < g.end_metric; ++m, ++key) {
          CAPTURE(r, moe::kHealthMetricNames[m]);
          const JsonValue& v = object[key].second;
          if (std::isnan(values[m]))
            CHECK(v.is_null);
          else
            CHECK(v.number == values[m]);
        }
        for (std::size_t l = g.first_list; l < g.end_list; ++l, ++key) {
          const JsonValue& v = object[key].second;
          REQUIRE(v.is_array);
          REQUIRE(v.items.size() == lists[l].size());
          for (std::size_t i = 0; i < lists[l].size(); ++i) CHECK(v.items[i].number == lists[l][i]);
        }
      }
    }
  }
}

TEST_CASE("SVG heatmap is well-formed XML with one cell per expert and step", "[health][export]") {
  moe::MonitorConfig config;
  config.num_layers = 2;
  moe::HealthMonitor monitor(config);
  const Index steps = 7, experts = 5;
  for (Index s = 0; s < steps; ++s)
    monitor.record(s * 10, {report_with_loads({static_cast<Index>(12 + s), 8, 5, 5, 0}),
                            report_with_loads({6, 6, 6, 6, 6})});
  const auto records = monitor.records();
  REQUIRE(records.size() == static_cast<std::size_t>(2 * steps));

  moe::SvgHeatmapOptions options;
  options.layer = 0;
  options.title = "layer 0 <hard> & \"quoted\"";
  std::ostringstream out;
  moe::write_svg_heatmap(out, records, options);
  const auto xml = check_xml(out.str());
  INFO(xml.error);
  REQUIRE(xml.well_formed);
  CHECK(xml.elements.at("svg") == 1);
  int cells = 0, hot = 0, cold = 0;
  for (const auto& rect : xml.rects) {
    const std::string cls = rect.count("class") ? rect.at("class") : "";
    if (cls.rfind("cell", 0) != 0) continue;
    ++cells;
    hot += cls.find("hot") != std::string::npos;
    cold += cls.find("cold") != std::string::npos;
    CHECK(rect.at("fill").size() == 7);
  }
  CHECK(cells == steps * experts);
  int expected_hot = 0, expected_cold = 0;
  for (const auto& r : records)
    if (r.layer == 0) {
      expected_hot += static_cast<int>(r.report.hard.hot_count());
      expected_cold += static_cast<int>(r.report.hard.cold_count());
    }
  CHECK(hot == expected_hot);
  CHECK(cold == expected_cold);
  CHECK(cold == steps);  // expert 4 is always empty
  CHECK(xml.elements.at("title") == 1 + steps * experts);
  CHECK(out.str().find("&lt;hard&gt; &amp; &quot;quoted&quot;") != std::string::npos);

  SECTION("the default title names the run, the layer, the loads and the steps") {
    moe::SvgHeatmapOptions named;
    named.run = "bias_balancer";
    named.layer = 1;
    std::ostringstream titled;
    moe::write_svg_heatmap(titled, records, named);
    CHECK(titled.str().find("<title>bias_balancer: layer 1: hard load / average load, steps 0-60"
                            "</title>") != std::string::npos);
  }
  SECTION("no records: still a valid document") {
    std::ostringstream empty;
    moe::write_svg_heatmap(empty, {}, {});
    CHECK(check_xml(empty.str()).well_formed);
  }
  SECTION("colour scale") {
    CHECK(moe::detail::ratio_colour(1.0) == "#ffffff");
    CHECK(moe::detail::ratio_colour(0.0) == moe::detail::ratio_colour(0.25));
    CHECK(moe::detail::ratio_colour(100.0) == moe::detail::ratio_colour(4.0));
    CHECK(moe::detail::ratio_colour(std::nan("")) == "#bbbbbb");
  }
}

TEST_CASE("terminal table", "[health][export]") {
  std::vector<moe::HealthRecord> records = {{5, 0, report_with_loads({4, 4, 4, 4})},
                                            {5, 1, report_with_loads({10, 2, 2, 2}, false)}};
  const std::string table = moe::format_health_table(records);
  const auto lines = split(table, '\n');
  REQUIRE(lines.size() == 4);
  CHECK(lines[0].find("layer") != std::string::npos);
  CHECK(lines[0].size() == lines[1].size());
  CHECK(lines[1].size() == lines[2].size());
  CHECK(lines[1].find("0.000") != std::string::npos);  // balanced: CV 0
  CHECK(lines[2].find("1.500") != std::string::npos);  // MaxVio (10 - 4) / 4
  CHECK(lines[2].find(" -") != std::string::npos);     // no logits in layer 1
}
