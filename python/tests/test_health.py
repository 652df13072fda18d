"""Health bindings: reports, the monitor and its exports against the C++ library (golden program,
bit for bit); load fractions, entropies and capacity drops re-implemented in NumPy; bad input."""

import csv
import io

import numpy as np
import pytest

import moe_routing as moe
from conftest import exact_inputs

DTYPES = {"f32": np.float32, "f64": np.float64}


def route(logits, top_k=2):
    config = moe.RouterConfig(num_experts=logits.shape[1], hidden=1, top_k=top_k)
    return moe.select_experts(config, logits)


def mask_stats(ids, experts):
    """golden/health.cpp's mask_stats: choice (t, j) kept unless (t k + j) % 5 == 0."""
    tokens, k = ids.shape
    mask = np.arange(tokens * k).reshape(tokens, k) % 5 != 0
    stats = moe.capacity_stats_from_mask(ids, mask, experts, 0)
    stats.capacity = int(stats.kept.max()) + 1
    return stats


def flatten(name, r):
    """Every numeric field of a report, laid out as golden/health.cpp's write_report."""
    f64 = lambda *v: np.array(v, dtype=np.float64)  # noqa: E731
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    out = {
        "ints": i64(r.tokens, r.experts, r.top_k, r.skipped_tokens, r.unused_slots),
        "scalars": f64(r.normalized_entropy, r.mean_token_entropy, r.mean_top1,
                       r.active_experts_per_token),
        "mean_distribution": r.mean_distribution,
        "margins": f64(r.margins.p1, r.margins.p10, r.margins.p50),
        "margins_tokens": i64(r.margins.tokens),
        "metrics": f64(*r.metrics().values()),
    }
    for part in ("soft", "hard"):
        s = getattr(r, part)
        out[part + "_load"] = s.load
        out[part + "_stats"] = f64(s.average_load, s.mean, s.variance, s.cv, s.max_vio, s.min,
                                   s.max, s.p10, s.p50, s.p90, s.hot_threshold, s.cold_threshold,
                                   s.entropy)
        out[part + "_hot"] = s.hot
        out[part + "_cold"] = s.cold
    if r.logits is not None:
        z = r.logits
        out["logits"] = f64(z.mean_logsumexp, z.mean_squared_logsumexp, z.mean_entropy)
        out["logits_counts"] = i64(z.nonfinite, z.tokens, z.skipped_tokens)
    if r.stability is not None:
        out["stability"] = i64(r.stability.tokens, r.stability.flipped_tokens,
                               r.stability.flipped_choices)
    if r.capacity is not None:
        c = r.capacity
        out["capacity"] = f64(c.drop_rate, c.tokens_left_behind, c.capacity_utilization)
        out["capacity_counts"] = i64(c.capacity, c.tokens_without_expert, c.overflowing_experts)
        out["capacity_kept"] = c.kept
        out["capacity_dropped"] = c.dropped
    return {f"{name}_{key}": np.asarray(value) for key, value in out.items()}


def assert_same_bits(got, expected, name):
    assert got.dtype == expected.dtype and got.shape == expected.shape, name
    assert got.tobytes() == expected.tobytes(), f"{name}: {got} != {expected}"


def text(array):
    return bytes(array.astype(np.uint8)).decode()


def assert_golden(golden, prefix, flat):
    assert {n for n in golden if n.startswith(prefix + "_")} == set(flat), prefix
    for key, value in flat.items():
        assert_same_bits(value, golden[key], key)


@pytest.mark.parametrize("suffix", DTYPES)
def test_reports_match_golden(golden, suffix):
    g = golden("health")
    logits = exact_inputs(50, 8, 1, DTYPES[suffix])
    routing = route(logits)
    selection = moe.HealthConfig(selection_metrics=True)
    per_token = moe.HealthConfig(average=moe.AverageLoad.per_token, hot_factor=1.1,
                                 cold_factor=0.5)
    reports = {
        "routing": moe.health_report(routing, selection),
        "capacity": moe.health_report(routing, mask_stats(routing.expert_ids, 8)),
        "probs_topk": moe.health_report(routing.scores, 2, per_token),
        "probs_ids": moe.health_report(routing.scores, routing.expert_ids, selection),
    }
    # Each report's optional parts are present exactly where the library's are.
    assert reports["routing"].stability is not None and reports["capacity"].capacity is not None
    assert reports["probs_topk"].logits is None
    for name, report in reports.items():
        assert_golden(g, f"{name}_{suffix}", flatten(f"{name}_{suffix}", report))
    assert list(reports["routing"].metrics()) == list(moe.HEALTH_METRIC_NAMES)
    assert np.array_equal(list(moe.health_metrics(reports["capacity"]).values()),
                          list(reports["capacity"].metrics().values()), equal_nan=True)


def golden_monitor(alerts_seen):
    """golden/health.cpp's monitor run."""
    config = moe.MonitorConfig(num_layers=2, window=2, cold_steps=2, min_normalized_entropy=0.99,
                               max_max_vio=0.5)
    monitor = moe.HealthMonitor(config, on_alert=alerts_seen.append)
    returned = []
    for step in (10, 20, 30):
        for layer in range(2):
            logits = exact_inputs(24, 6, 100 + 10 * step + layer, np.float32)
            logits[:, 0] += np.float32(1.5)
            logits[:, 5] -= np.float32(4.0)
            routing = route(logits)
            report = (moe.health_report(routing, mask_stats(routing.expert_ids, 6)) if layer
                      else moe.health_report(routing))
            returned += monitor.record(step, layer, report)
    return monitor, returned


def test_monitor_matches_golden(golden, tmp_path):
    g = golden("health")
    seen = []
    monitor, alerts = golden_monitor(seen)
    assert [a.reason for a in seen] == [a.reason for a in alerts]
    assert_same_bits(np.array([int(a.rule) for a in alerts], np.int64), g["monitor_alert_rule"],
                     "rule")
    for field in ("step", "layer", "expert"):
        assert_same_bits(np.array([getattr(a, field) for a in alerts], np.int64),
                         g["monitor_alert_" + field], field)
    for field in ("value", "threshold"):
        assert_same_bits(np.array([getattr(a, field) for a in alerts], np.float64),
                         g["monitor_alert_" + field], field)
    assert "".join(a.reason + "\n" for a in alerts) == text(g["monitor_alert_reasons"])
    assert {a.rule for a in alerts} == {moe.CollapseRule.cold_expert, moe.CollapseRule.low_entropy,
                                        moe.CollapseRule.high_drop_rate,
                                        moe.CollapseRule.high_max_vio}

    records = monitor.records()
    assert [(r.step, r.layer) for r in records] == [(s, n) for s in (10, 20, 30) for n in (0, 1)]
    assert moe.write_csv(records) == text(g["monitor_csv"])
    assert moe.write_jsonl(records) == text(g["monitor_jsonl"])
    assert moe.format_health_table(records) == text(g["monitor_table"])
    # Written to a path (str or os.PathLike): the same bytes, and None returned.
    assert moe.write_csv(records, tmp_path / "m.csv") is None
    assert (tmp_path / "m.csv").read_text() == text(g["monitor_csv"])
    assert moe.write_health_table(records, str(tmp_path / "t.txt")) is None
    assert (tmp_path / "t.txt").read_text() == text(g["monitor_table"])
    header = next(csv.reader(io.StringIO(moe.write_csv(records))))
    assert header == moe.health_columns()

    for layer in range(2):
        p = f"monitor_l{layer}_"
        options = moe.SvgHeatmapOptions(layer=layer, run="golden", hard=layer == 0)
        assert moe.write_svg_heatmap(records, options) == text(g[p + "svg"])
        assert_same_bits(np.array(list(monitor.ema(layer).values())), g[p + "ema"], "ema")
        window = monitor.window(layer)
        for view in ("mean", "min", "max"):
            values = getattr(window, view)
            assert list(values) == list(moe.HEALTH_METRIC_NAMES)
            assert_same_bits(np.array(list(values.values())), g[p + "window_" + view], view)
        assert window.records == g[p + "window_records"][0] == 2
        assert_same_bits(monitor.counts(layer).pack(), g[p + "counts_pack"], "counts")
        assert_same_bits(np.array([monitor.cold_streak(layer, e) for e in range(6)], np.int64),
                         g[p + "cold_streak"], "cold_streak")
        assert [r.step for r in monitor.history(layer)] == [10, 20, 30]


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_report_against_numpy(rng):
    tokens, experts, k = 300, 16, 4
    logits = rng.normal(size=(tokens, experts))
    logits[:, 3] += 2.0  # a hot expert
    routing = route(logits, k)
    r = moe.health_report(routing)
    p = softmax(logits)

    counts = np.bincount(routing.expert_ids.ravel(), minlength=experts)
    np.testing.assert_array_equal(r.hard.load, counts)
    # Load fractions and their balance statistics.
    np.testing.assert_allclose(r.hard.load / (tokens * k), counts / (tokens * k))
    np.testing.assert_allclose(r.soft.load, p.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(r.mean_distribution, p.mean(axis=0), rtol=1e-12)
    assert r.hard.average_load == tokens * k / experts
    assert r.hard.variance == pytest.approx(np.var(counts))
    assert r.hard.max_vio == pytest.approx((counts.max() - counts.mean()) / counts.mean())
    assert r.hard.p90 == pytest.approx(np.percentile(counts, 90))
    np.testing.assert_array_equal(r.hard.hot, np.flatnonzero(counts > 1.25 * tokens * k / experts))
    assert 3 in r.hard.hot
    # Entropies.
    q = p.mean(axis=0)
    assert r.normalized_entropy == pytest.approx(-(q * np.log(q)).sum() / np.log(experts),
                                                 rel=1e-12)
    assert r.mean_token_entropy == pytest.approx(-(p * np.log(p)).sum(axis=1).mean(), rel=1e-12)
    assert r.mean_top1 == pytest.approx(p.max(axis=1).mean(), rel=1e-12)
    lse = np.log(np.exp(logits).sum(axis=1))
    assert r.logits.mean_logsumexp == pytest.approx(lse.mean(), rel=1e-12)
    assert r.logits.mean_squared_logsumexp == pytest.approx((lse ** 2).mean(), rel=1e-12)


@pytest.mark.parametrize("factor", [0.75, 1.25])
def test_capacity_drops_against_numpy(rng, factor):
    tokens, experts, k = 200, 8, 2
    logits = rng.normal(size=(tokens, experts)).astype(np.float32)
    logits[:, 0] += 1.5  # overflows expert 0
    routing = route(logits, k)
    plan = moe.make_capacity_plan(routing, moe.CapacityConfig(train_factor=factor,
                                                              eval_factor=factor), moe.Mode.eval)
    r = moe.health_report(routing, moe.capacity_stats(plan))
    # Megatron's capacity, first choices before second choices (the defaults), in token order.
    capacity = int(np.ceil(tokens * k / experts * factor))
    kept = np.zeros(experts, np.int64)
    kept_mask = np.zeros((tokens, k), bool)
    for j in range(k):
        for t in range(tokens):
            e = routing.expert_ids[t, j]
            if kept[e] < capacity:
                kept[e] += 1
                kept_mask[t, j] = True
    dropped = np.bincount(routing.expert_ids.ravel(), minlength=experts) - kept
    assert r.capacity.capacity == capacity
    np.testing.assert_array_equal(r.capacity.kept, kept)
    np.testing.assert_array_equal(r.capacity.dropped, dropped)
    assert dropped.sum() > 0
    assert r.capacity.drop_rate == dropped.sum() / (tokens * k)
    assert r.capacity.tokens_without_expert == np.sum(~kept_mask.any(axis=1))
    assert r.capacity.overflowing_experts == np.sum(dropped > 0)
    assert r.capacity.capacity_utilization == kept.sum() / (experts * capacity)
    # The same counts from the mask.
    from_mask = moe.capacity_stats_from_mask(routing.expert_ids, kept_mask, experts, capacity)
    np.testing.assert_array_equal(from_mask.kept, kept)
    np.testing.assert_array_equal(from_mask.token_kept, kept_mask.sum(axis=1))


def test_precision_follows_the_dtype(rng):
    p = softmax(rng.normal(size=(100, 8)))
    double = moe.health_report(p, 2)
    # A float64 array that must be copied (Fortran order) is copied as float64, not float32.
    fortran = moe.health_report(np.asfortranarray(p), 2)
    single = moe.health_report(p.astype(np.float32), 2)
    assert fortran.soft.load.tobytes() == double.soft.load.tobytes()
    assert single.soft.load.tobytes() != double.soft.load.tobytes()
    # A float32 strided view is copied as float32.
    wide = np.zeros((100, 16), np.float32)
    wide[:, ::2] = p
    strided = moe.health_report(wide[:, ::2], 2)
    assert strided.soft.load.tobytes() == single.soft.load.tobytes()
    # A list runs in float32, as the functions bound per dtype choose.
    assert moe.health_report(p.tolist(), 2).soft.load.tobytes() == single.soft.load.tobytes()


def test_views_and_fields():
    routing = route(exact_inputs(40, 8, 7))
    r = moe.health_report(routing)
    a, b = r.mean_distribution, r.mean_distribution
    # Views of the report's own vector, not copies; read-only.
    assert a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    assert np.shares_memory(r.soft.load, r.soft.load) and not a.flags.writeable
    # Fields are writable under their C++ names and read back.
    r.hard.hot = [1, 2]
    assert r.hard.hot.dtype == np.int32 and list(r.hard.hot) == [1, 2]
    r.capacity = None
    assert r.capacity is None
    assert moe.HealthConfig(hot_factor=2.0).hot_factor == 2.0
    assert moe.MonitorConfig(window=3, history=5).history == 5
    assert moe.SvgHeatmapOptions(cell=4, title="x").title == "x"


def test_array_entry_points_agree_with_the_report():
    logits = exact_inputs(64, 8, 3)
    routing = route(logits, 2)
    r = moe.health_report(routing, moe.HealthConfig(selection_metrics=True))
    z = moe.logit_stats(logits)
    assert (z.mean_logsumexp, z.mean_entropy, z.nonfinite) == (
        r.logits.mean_logsumexp, r.logits.mean_entropy, r.logits.nonfinite)
    m = moe.topk_margins(routing.scores, 2)
    assert (m.p1, m.p10, m.p50, m.tokens) == (r.margins.p1, r.margins.p10, r.margins.p50,
                                              r.margins.tokens)
    s = moe.bf16_stability(logits, 2)
    assert (s.tokens, s.flipped_tokens) == (r.stability.tokens, r.stability.flipped_tokens)
    stacked = np.stack([routing.scores, routing.scores[::-1]])
    layers = moe.health_reports(stacked, 2)
    for layer, probs in zip(layers, stacked):
        assert layer.soft.load.tobytes() == moe.health_report(probs, 2).soft.load.tobytes()
    # Counts: pack/unpack round trip, merge is a sum.
    counts = moe.HealthCounts(8)
    counts.add(r)
    back = moe.HealthCounts.unpack(counts.pack())
    back.merge(counts)
    np.testing.assert_array_equal(back.hard_load, 2 * r.hard.load)
    assert back.steps == 2 and back.hard_stats().max_vio == r.hard.max_vio


def test_callback_errors_propagate():
    def fail(alert):
        raise RuntimeError("from the callback: " + alert.reason)

    monitor = moe.HealthMonitor(moe.MonitorConfig(min_normalized_entropy=1.0), on_alert=fail)
    report = moe.health_report(route(exact_inputs(16, 4, 2)))
    with pytest.raises(RuntimeError, match="normalized entropy"):
        monitor.record(0, 0, report)
    monitor.set_callback(None)
    assert monitor.record(1, 0, report)[0].rule == moe.CollapseRule.low_entropy


def test_bad_input_names_the_argument(tmp_path):
    routing = route(exact_inputs(16, 4, 2))
    report = moe.health_report(routing)
    probs = np.asarray(routing.scores)
    cases = [
        (lambda: moe.health_report(probs[None], 2), "probabilities"),
        (lambda: moe.health_report("probabilities", 2), "probabilities"),
        (lambda: moe.health_report(probs, 0), "top_k"),
        (lambda: moe.health_report(probs, probs), "expert_ids"),
        (lambda: moe.health_report(probs, routing.expert_ids[:3]), "expert_ids"),
        (lambda: moe.health_report(routing, moe.HealthConfig(hot_factor=-1.0)),
         "HealthConfig::hot_factor"),
        (lambda: moe.health_report(routing, moe.CapacityStats(capacity=4)),
         "CapacityStats::kept"),
        (lambda: moe.health_reports(probs, 2), "probabilities"),
        (lambda: moe.capacity_stats_from_mask(routing.expert_ids, np.ones((3, 2), bool), 4, 8),
         "kept_mask"),
        # a 0/1 float array is not taken for a mask
        (lambda: moe.capacity_stats_from_mask(routing.expert_ids, np.ones((16, 2)), 4, 8),
         "kept_mask"),
        # an int64 id past 2^31 is refused, not wrapped (2^32 + 1 would read as expert 1)
        (lambda: moe.health_report(probs, np.full((16, 2), 2**32 + 1, np.int64)), "expert_ids"),
        (lambda: moe.capacity_stats_from_mask(np.full((16, 2), 2**32 + 1), np.ones((16, 2), bool),
                                              4, 8), "expert_ids"),
        (lambda: moe.logit_stats(probs[0]), "logits"),
        (lambda: moe.topk_margins(probs, 5), "top_k"),
        (lambda: moe.bf16_stability(probs, 0), "top_k"),
        (lambda: moe.HealthMonitor(moe.MonitorConfig(num_layers=0)), "MonitorConfig::num_layers"),
        (lambda: moe.HealthMonitor().record(0, 1, report), "layer"),
        (lambda: moe.HealthMonitor(moe.MonitorConfig(num_layers=2)).record(0, [report]),
         "reports"),
        (lambda: moe.HealthMonitor().ema(3), "layer"),
        (lambda: moe.HealthMonitor().cold_streak(0, 0), "expert"),
        (lambda: moe.write_svg_heatmap([], moe.SvgHeatmapOptions(cell=1)),
         "SvgHeatmapOptions::cell"),
        (lambda: moe.write_csv([], tmp_path / "missing" / "x.csv"), "path"),
        (lambda: moe.HealthCounts.unpack([1.0, 2.0]), "flat"),
        (lambda: moe.HealthCounts(4).merge(moe.HealthCounts(5)), "other"),
        (lambda: moe.health_metric_index("nope"), "name"),
    ]
    for call, argument in cases:
        with pytest.raises(moe.Error, match=f"^{argument}: "):
            call()
    monitor = moe.HealthMonitor()
    monitor.record(3, 0, report)
    with pytest.raises(moe.Error, match="step"):
        monitor.record(3, 0, report)
    with pytest.raises(TypeError, match="bogus"):
        moe.HealthConfig(bogus=1)
    lone = moe.LoadStats()
    with pytest.raises(moe.Error, match="hot"):
        lone.hot = [[1, 2]]
    with pytest.raises(moe.Error, match="^cold: expected values that fit 32-bit"):
        lone.cold = np.array([2**31])
    # Float arrays of the other precision are refused where the precision is fixed.
    with pytest.raises(TypeError, match="^flat: expected float64"):
        moe.HealthCounts.unpack(moe.HealthCounts(4).pack().astype(np.float32))


def bf16(a):
    """a rounded to bfloat16 (nearest, ties to even), as float64: the float32 bits, rounded."""
    bits = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def test_bf16_what_if_against_numpy():
    # 12-bit values in [1, 2) over d = 4: x W^T is exact in float64 and, rounded to bfloat16
    # (8 bits), exact in float32, so NumPy's products give the library's logits to the bit.
    rng = np.random.default_rng(5)
    tokens, experts, d, k = 300, 8, 4, 2
    x = 1 + rng.integers(0, 4096, (tokens, d)) / 4096.0
    # Experts' weights within 2^-6 of each other: logits as close as bfloat16's rounding errors.
    w = 1 + (2048 + rng.integers(0, 64, (experts, d))) / 4096.0
    router = moe.Router(moe.RouterConfig(num_experts=experts, hidden=d, top_k=k), dtype=np.float64)
    router.weight[...] = w

    def top_k(z):
        return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in z]

    flips = 0
    for rounded, round_x, round_w in ((moe.Bf16Operands.x, True, False),
                                      (moe.Bf16Operands.weights, False, True),
                                      (moe.Bf16Operands.both, True, True)):
        before = top_k(x @ w.T)
        after = top_k((bf16(x) if round_x else x) @ (bf16(w) if round_w else w).T)
        lost, gained = [0] * experts, [0] * experts
        for b, a in zip(before, after):
            for e in b - a:
                lost[e] += 1
            for e in a - b:
                gained[e] += 1
        got = router.bf16_what_if(x, rounded)
        assert got.tokens == tokens
        assert got.flipped_tokens == sum(b != a for b, a in zip(before, after))
        flips += got.flipped_tokens
        assert got.flipped_choices == sum(lost)
        assert list(got.lost) == lost and list(got.gained) == gained
    assert flips > 0  # the case exercises flips (rounding the weights makes hundreds)
    with pytest.raises(moe.Error, match="x: expected"):
        router.bf16_what_if(x[:, :3].copy())
