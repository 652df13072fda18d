"""Routing health of router logits saved from any framework.

``python3 -m moe_routing.health LOGITS --top-k K --out DIR`` routes the logits with the library's
router selection (``select_experts``), records every step and layer in a ``HealthMonitor`` and
writes its exports into DIR. Run it with ``--help`` for the inputs, the defaults and the outputs.
"""

import argparse
import os
import re
import sys
import time

import numpy as np

import moe_routing as moe

PROG = "python3 -m moe_routing.health"

DESCRIPTION = """\
Routing health of router logits saved from any framework (e.g. numpy.save(path,
logits.detach().float().cpu().numpy()) in PyTorch): each step is routed with the library's top-k
selection and recorded in a HealthMonitor, one monitor layer per logits layer.

LOGITS is
  - a .npy holding one step: [T, E] (one layer) or [L, T, E] (L layers; --layers-axis says
    which axis holds the layers when it is not the first);
  - a .npz holding one array per step, each [T, E] or [L, T, E] (the same L and E throughout).
    Steps are taken in natural order of the array names (step_2 before step_10), whatever the
    order inside the archive; the k-th array in that order is step k (from 0).
float64 logits are routed in double precision, any other dtype in float32.

Routing: RouterConfig(num_experts=E, top_k=K, score=SCORE), softmax before top-k. The gates
are renormalized over the k chosen experts with --score sigmoid (DeepSeek-V3's norm_topk_prob)
and not with --score softmax (Switch / GShard / DeepSeek-V2's default); --renormalize or
--no-renormalize overrides. With --capacity-factor, each step is dispatched by
make_capacity_plan (Megatron's capacity ceil(T k / E * CF), first choices before second choices)
and the capacity statistics (drop rate, drops per expert, tokens left behind) join the report."""

EPILOG = """\
written into DIR:
  health.txt            the table printed on stdout: per layer, the last step's key fields
  health.csv            every step and layer, one row each (columns: moe_routing.health_columns())
  health.jsonl          the same records as JSON Lines
  heatmap_layer<L>.svg  per layer, hard load / average load of each expert over the steps
  alerts.txt            the monitor's collapse alerts, one per line (empty when none fired)

exit status: 0 on success, 2 on bad arguments or unreadable input (one-line message)."""


class InputError(Exception):
    """A problem with the command's input, reported as one line and exit status 2."""


def _natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logits", metavar="LOGITS", help="a .npy ([T, E] or [L, T, E]) or .npz "
                        "(one array per step) of router logits")
    parser.add_argument("--top-k", type=int, required=True, metavar="K",
                        help="experts chosen per token (1 <= K <= E)")
    parser.add_argument("--score", choices=("softmax", "sigmoid"), default="softmax",
                        help="score function of the logits (default: softmax)")
    parser.add_argument("--renormalize", action=argparse.BooleanOptionalAction, default=None,
                        help="renormalize the gates over the chosen experts (default: only "
                        "with --score sigmoid)")
    parser.add_argument("--capacity-factor", type=float, metavar="CF",
                        help="dispatch with this capacity factor and report drops (default: "
                        "no capacity limit, no drop statistics)")
    parser.add_argument("--layers-axis", type=int, default=0, metavar="AXIS",
                        help="axis of a 3-D array that holds the layers: 0 for [L, T, E] "
                        "(default), 1 for [T, L, E]; the experts axis is always the last")
    parser.add_argument("--selection-metrics", action="store_true",
                        help="also report top-k margins and bfloat16 stability (one more pass "
                        "over the scores and the logits)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="directory for the outputs (created if missing)")
    return parser.parse_args(argv)


def _steps(path):
    """[(name, load)]: the steps of `path` in order, each loaded when called."""
    if not os.path.isfile(path):
        raise InputError(f"LOGITS: no such file: {path}")
    try:
        if path.endswith(".npz"):
            archive = np.load(path, allow_pickle=False)
            names = sorted(archive.files, key=_natural_key)
            if not names:
                raise InputError(f"LOGITS: {path} holds no array")
            return [(name, (lambda name=name: archive[name])) for name in names]
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"LOGITS: cannot read {path} as .npy/.npz: {error}") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"LOGITS: {path} is an .npz archive; name it *.npz")
    return [(os.path.basename(path), lambda: array)]


def _layers(array, name, layers_axis):
    """The [T, E] matrices of one step's array, C-contiguous, float32 or float64."""
    if array.dtype.kind not in "fiu":
        raise InputError(f"LOGITS {name}: expected numbers, got dtype {array.dtype}")
    dtype = np.float64 if array.dtype == np.float64 else np.float32
    if array.ndim == 2:
        return [np.ascontiguousarray(array, dtype=dtype)]
    if array.ndim != 3:
        raise InputError(f"LOGITS {name}: expected [T, E] or [L, T, E] logits, got a "
                         f"{array.ndim}-D array of shape {tuple(array.shape)}")
    if layers_axis not in (0, 1, -3, -2):
        raise InputError(f"--layers-axis {layers_axis}: must be 0 or 1 for a 3-D array (the "
                         "last axis holds the experts)")
    stacked = np.moveaxis(array, layers_axis, 0)
    return [np.ascontiguousarray(layer, dtype=dtype) for layer in stacked]


class _Progress:
    """'step i/N' on stderr: rewritten in place on a terminal, otherwise one line at most every
    second, so a log file does not fill with them."""

    def __init__(self, total):
        self.total = total
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.shown = False

    def update(self, done):
        now = time.monotonic()
        if now - self.last < (0.1 if self.tty else 1.0):
            return
        self.last = now
        text = f"step {done}/{self.total}"
        sys.stderr.write(f"\r{text}" if self.tty else text + "\n")
        sys.stderr.flush()
        self.shown = True

    def close(self):
        if self.tty and self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def run(args):
    """Routes and records every step; writes the outputs. Returns the exit status."""
    if args.top_k < 1:
        raise InputError(f"--top-k {args.top_k}: must be >= 1")
    if args.capacity_factor is not None and not (args.capacity_factor > 0
                                                 and np.isfinite(args.capacity_factor)):
        raise InputError(f"--capacity-factor {args.capacity_factor}: must be a finite value > 0")
    steps = _steps(args.logits)
    sigmoid = args.score == "sigmoid"
    renormalize = sigmoid if args.renormalize is None else args.renormalize
    health_config = moe.HealthConfig(selection_metrics=args.selection_metrics)
    capacity_config = None
    if args.capacity_factor is not None:
        capacity_config = moe.CapacityConfig(train_factor=args.capacity_factor,
                                             eval_factor=args.capacity_factor)
    monitor = router = None
    shape = None
    alerts = []
    progress = _Progress(len(steps))
    for step, (name, load) in enumerate(steps):
        layers = _layers(load(), name, args.layers_axis)
        experts = layers[0].shape[1]
        if shape is None:
            shape = (len(layers), experts)
            if args.top_k > experts:
                raise InputError(f"--top-k {args.top_k}: more than the {experts} experts of "
                                 f"the logits")
            router = moe.RouterConfig(
                num_experts=experts, hidden=1, top_k=args.top_k,
                score=moe.ScoreFunction.sigmoid if sigmoid else moe.ScoreFunction.softmax,
                renormalize=renormalize)
            monitor = moe.HealthMonitor(moe.MonitorConfig(num_layers=len(layers)))
        elif (len(layers), experts) != shape:
            raise InputError(f"LOGITS {name}: {len(layers)} layers of {experts} experts, but "
                             f"the first step has {shape[0]} layers of {shape[1]} experts")
        for layer, logits in enumerate(layers):
            routing = moe.select_experts(router, logits)
            if capacity_config is None:
                report = moe.health_report(routing, health_config)
            else:
                plan = moe.make_capacity_plan(routing, capacity_config, moe.Mode.eval)
                report = moe.health_report(routing, moe.capacity_stats(plan), health_config)
            alerts += monitor.record(step, layer, report)
        progress.update(step + 1)
    progress.close()
    _write_outputs(args, monitor, alerts, len(steps) - 1, shape[0])
    return 0


def _write_outputs(args, monitor, alerts, last_step, num_layers):
    os.makedirs(args.out, exist_ok=True)
    records = monitor.records()
    table = moe.format_health_table([r for r in records if r.step == last_step])
    with open(os.path.join(args.out, "health.txt"), "w", encoding="utf-8") as out:
        out.write(table)
    moe.write_csv(records, os.path.join(args.out, "health.csv"))
    moe.write_jsonl(records, os.path.join(args.out, "health.jsonl"))
    run_name = os.path.basename(args.logits)
    for layer in range(num_layers):
        options = moe.SvgHeatmapOptions(layer=layer, run=run_name)
        moe.write_svg_heatmap(records, options, os.path.join(args.out,
                                                             f"heatmap_layer{layer}.svg"))
    with open(os.path.join(args.out, "alerts.txt"), "w", encoding="utf-8") as out:
        out.writelines(a.reason + "\n" for a in alerts)
    sys.stdout.write(table)
    sys.stdout.flush()
    sys.stderr.write(f"{len(records)} records ({last_step + 1} steps x {num_layers} layers), "
                     f"{len(alerts)} collapse alerts; outputs in {args.out}\n")


def main(argv=None):
    """Entry point of ``python3 -m moe_routing.health``; returns the exit status."""
    args = _parse_args(argv)
    try:
        return run(args)
    except (InputError, moe.Error, OSError) as error:
        message = " ".join(str(error).split())
        sys.stderr.write(f"{PROG}: error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
