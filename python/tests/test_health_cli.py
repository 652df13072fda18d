"""python3 -m moe_routing.health end to end: .npy [T, E] and [L, T, E], .npz of steps, the
outputs against the same pipeline run in-process, and the one-line errors (exit status 2)."""

import csv
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

import moe_routing as moe
import moe_routing.health as health_cli

OUTPUTS = ("health.txt", "health.csv", "health.jsonl", "alerts.txt")


def run_cli(*args):
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(moe.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in sys.path if p])
    return subprocess.run([sys.executable, "-m", "moe_routing.health", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=60)


def expected_csv(steps, top_k, capacity_factor=None, sigmoid=False):
    """The command's pipeline in-process: steps is a list of [L][T, E] logits."""
    experts = steps[0][0].shape[1]
    config = moe.RouterConfig(num_experts=experts, hidden=1, top_k=top_k,
                              score=moe.ScoreFunction.sigmoid if sigmoid
                              else moe.ScoreFunction.softmax, renormalize=sigmoid)
    monitor = moe.HealthMonitor(moe.MonitorConfig(num_layers=len(steps[0])))
    for step, layers in enumerate(steps):
        for layer, logits in enumerate(layers):
            routing = moe.select_experts(config, logits)
            if capacity_factor is None:
                report = moe.health_report(routing)
            else:
                plan = moe.make_capacity_plan(
                    routing, moe.CapacityConfig(train_factor=capacity_factor,
                                                eval_factor=capacity_factor), moe.Mode.eval)
                report = moe.health_report(routing, moe.capacity_stats(plan))
            monitor.record(step, layer, report)
    return moe.write_csv(monitor.records())


def read_rows(out):
    with open(out / "health.csv", newline="") as f:
        return list(csv.DictReader(f))


def check_outputs(out, result, layers, steps):
    assert result.returncode == 0, result.stderr
    for name in OUTPUTS + tuple(f"heatmap_layer{n}.svg" for n in range(layers)):
        assert (out / name).is_file(), name
    assert not (out / f"heatmap_layer{layers}.svg").exists()
    for layer in range(layers):
        root = ElementTree.parse(out / f"heatmap_layer{layer}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        cells = [r for r in root.iter("{http://www.w3.org/2000/svg}rect")
                 if "cell" in r.get("class", "")]
        assert len(cells) == steps * int(read_rows(out)[0]["experts"])
    rows = read_rows(out)
    assert [(int(r["step"]), int(r["layer"])) for r in rows] == [
        (s, n) for s in range(steps) for n in range(layers)]
    # The table: printed and saved, one line per layer of the last step.
    table = (out / "health.txt").read_text()
    assert result.stdout == table
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["layer", "step"] and len(lines) == 1 + layers
    assert [line.split()[:2] for line in lines[1:]] == [[str(n), str(steps - 1)]
                                                         for n in range(layers)]
    assert len((out / "health.jsonl").read_text().splitlines()) == steps * layers
    assert "Traceback" not in result.stderr
    return rows


def test_npy_one_layer_with_capacity(tmp_path, rng):
    logits = rng.normal(size=(96, 8)).astype(np.float32)
    logits[:, 2] += 1.0
    np.save(tmp_path / "z.npy", logits)
    out = tmp_path / "out"
    result = run_cli(tmp_path / "z.npy", "--top-k", 2, "--capacity-factor", 1.0, "--out", out)
    rows = check_outputs(out, result, layers=1, steps=1)
    assert float(rows[0]["drop_rate"]) > 0 and rows[0]["dropped"]
    assert (out / "health.csv").read_text() == expected_csv([[logits]], 2, 1.0)


def test_npy_layers_axis(tmp_path, rng):
    logits = rng.normal(size=(3, 40, 6))  # float64: routed in double
    np.save(tmp_path / "ltE.npy", logits)
    np.save(tmp_path / "tlE.npy", logits.transpose(1, 0, 2))
    out = tmp_path / "a"
    rows = check_outputs(out, run_cli(tmp_path / "ltE.npy", "--top-k", 2, "--layers-axis", 0,
                                      "--out", out), layers=3, steps=1)
    assert rows[0]["drop_rate"] == ""  # no capacity factor, no drop statistics
    csv_text = (out / "health.csv").read_text()
    assert csv_text == expected_csv([list(logits)], 2)
    # The same logits stored [T, L, E].
    result = run_cli(tmp_path / "tlE.npy", "--top-k", 2, "--layers-axis", 1, "--out",
                     tmp_path / "b")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b" / "health.csv").read_text() == csv_text


def test_npz_steps_in_natural_order(tmp_path, rng):
    steps = [rng.normal(size=(2, 32, 8)).astype(np.float32) for _ in range(3)]
    # Archive order differs from natural order (step_2 before step_10).
    np.savez(tmp_path / "run.npz", step_10=steps[2], step_1=steps[0], step_2=steps[1])
    out = tmp_path / "out"
    result = run_cli(tmp_path / "run.npz", "--top-k", 3, "--score", "sigmoid", "--out", out)
    rows = check_outputs(out, result, layers=2, steps=3)
    assert (out / "health.csv").read_text() == expected_csv([list(s) for s in steps], 3,
                                                            sigmoid=True)
    assert all(r["top_k"] == "3" for r in rows)


@pytest.mark.parametrize("make, args, message", [
    (None, ("--top-k", 2), "no such file"),
    (lambda: np.zeros(8, np.float32), ("--top-k", 2), "expected [T, E] or [L, T, E]"),
    (lambda: np.zeros((4, 3, 2, 8)), ("--top-k", 2), "4-D"),
    (lambda: np.zeros((16, 4), np.float32), ("--top-k", 5), "--top-k 5"),
    (lambda: np.zeros((2, 16, 4), np.float32), ("--top-k", 2, "--layers-axis", 2),
     "--layers-axis 2"),
    (lambda: np.full((16, 4), np.nan, np.float32), ("--top-k", 2), "logits"),
])
def test_errors_exit_2_with_one_line(tmp_path, make, args, message):
    path = tmp_path / "z.npy"
    if make is not None:
        np.save(path, make())
    result = run_cli(path, *args, "--out", tmp_path / "out")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_usage_error_exits_2():
    result = run_cli("--top-k", 2)  # no LOGITS, no --out: argparse's usage error
    assert result.returncode == 2 and "--out" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_says_order_and_renormalize(capsys):
    with pytest.raises(SystemExit):
        health_cli._parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "natural order of the array names" in help_text
    assert "renormalized over the k chosen experts with --score sigmoid" in help_text


def test_progress_does_not_flood_a_file(monkeypatch, capsys):
    clock = iter(np.arange(0.0, 100.0, 0.25))
    monkeypatch.setattr(health_cli.time, "monotonic", lambda: next(clock))
    progress = health_cli._Progress(40)
    for step in range(1, 41):  # 10 s of steps at 0.25 s each
        progress.update(step)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert 8 <= len(lines) <= 10 and lines[0].startswith("step ") and lines[-1].endswith("/40")
