#!/usr/bin/env bash
# This library's MoE layer against PyTorch on the CPU, float32, the same thread count, in one go.
#   bench/compare_torch.sh            (from the repository root or anywhere)
# Builds bench_layer (Release preset), runs it, runs bench/compare_torch.py twice (as installed,
# then with the CPU settings PyTorch's performance guide recommends: OMP_WAIT_POLICY=passive and
# tcmalloc preloaded), and prints one table taking the faster PyTorch variant and setting per row.
# Outputs stay in build/release/compare/; TABLE_ONLY=1 reprints the table from them without running.
# Arguments go to bench_layer (e.g. --benchmark_min_time=0.1). Not part of the test suite.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
threads=${THREADS:-2}
out="$root/build/release/compare"
python=/usr/bin/python3
cd "$root"
have_torch=1
"$python" -c 'import torch' 2>/dev/null || have_torch=0
if [[ "${TABLE_ONLY:-0}" != 1 ]]; then
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)  threads: $threads"

cmake --preset release >/dev/null
cmake --build build/release --target bench_layer -j2
mkdir -p "$out"
OMP_NUM_THREADS=$threads build/release/bench/bench_layer --benchmark_format=json \
  "$@" >"$out/layer.json"

if [[ $have_torch == 0 ]]; then
  echo "torch is not installed for $python (apt-get install python3-torch): skipping PyTorch" >&2
  : >"$out/torch_default.jsonl"
  : >"$out/torch_tuned.jsonl"
else
  OMP_NUM_THREADS=$threads "$python" bench/compare_torch.py --threads "$threads" \
    >"$out/torch_default.jsonl"
  tcmalloc=$(ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 / && !found {print $NF; found = 1}')
  if [[ -z "$tcmalloc" ]] && command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]; then
    apt-get install -y libtcmalloc-minimal4 >/dev/null 2>&1 || true
    tcmalloc=$(ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 / && !found {print $NF; found = 1}')
  fi
  [[ -n "$tcmalloc" ]] || echo "libtcmalloc_minimal.so.4 not found: tuned run without it" >&2
  OMP_NUM_THREADS=$threads OMP_WAIT_POLICY=passive LD_PRELOAD="${tcmalloc}" \
    "$python" bench/compare_torch.py --threads "$threads" >"$out/torch_tuned.jsonl"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
fi

"$python" - "$out" "$have_torch" <<'PY'
import json, sys

out, have_torch = sys.argv[1], sys.argv[2] == "1"
ours = {}
for b in json.load(open(f"{out}/layer.json"))["benchmarks"]:
    label, name = b.get("label", ""), b["name"]
    if name.startswith(("BM_layer_forward/", "BM_layer_forward_backward/")):
        op = "forward_backward" if "forward_backward" in name else "forward"
        ours[(label, op)] = (b["layer_ms"] / 1e3, b["ratio"])
    elif name.startswith("BM_piece_") and "memcpy" not in name:
        piece = name.split("/")[0][len("BM_piece_"):]
        scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
        ours[(label, piece)] = (b["real_time"] * scale, None)

torch = {}
for setting in ("default", "tuned"):
    try:
        lines = open(f"{out}/torch_{setting}.jsonl").readlines()
    except FileNotFoundError:
        continue
    for line in lines:
        r = json.loads(line)
        shape, variant, op = r["name"].split("/")
        key = (shape, op)
        if key not in torch or r["seconds"] < torch[key][0]:
            torch[key] = (r["seconds"], f"{variant}, {setting}" if variant != "piece" else setting)

def fmt(s):
    return f"{s * 1e3:.3f} ms" if s < 1e-2 else f"{s * 1e3:.1f} ms"

print("| shape | op | ours | ours / limit | PyTorch best (variant, setting) | PyTorch / ours |")
print("|---|---|---|---|---|---|")
for shape in ("small", "medium", "fine_grained", "switch", "decode"):
    for op in ("forward", "forward_backward", "score_topk", "plan", "permute",
               "unpermute_combine"):
        mine = ours.get((f"{shape}/uniform", op))
        if mine is None:
            continue
        limit = f"{mine[1]:.2f}" if mine[1] is not None else ""
        theirs = torch.get((shape, op))
        if have_torch and theirs:
            print(f"| {shape} | {op} | {fmt(mine[0])} | {limit} | {fmt(theirs[0])} ({theirs[1]}) "
                  f"| {theirs[0] / mine[0]:.2f}x |")
        else:
            print(f"| {shape} | {op} | {fmt(mine[0])} | {limit} | | |")
    if shape == "decode" and have_torch:
        pieces = ("score_topk", "plan", "permute", "unpermute_combine")
        if all((shape, p) in torch for p in pieces):
            a = sum(ours[(f"{shape}/uniform", p)][0] for p in pieces)
            b = sum(torch[(shape, p)][0] for p in pieces)
            print(f"| decode | all routing pieces | {fmt(a)} | | {fmt(b)} | {b / a:.2f}x |")
            # An eval forward reads token rows in place: of our pieces it runs all but permute.
            a = sum(ours[(f"{shape}/uniform", p)][0] for p in pieces if p != "permute")
            print(f"| decode | routing pieces of an eval forward (ours: no permute) | {fmt(a)} | "
                  f"| {fmt(b)} | {b / a:.2f}x |")
print()
print("Other routing distributions (ours only):")
for (label, op), (s, r) in sorted(ours.items()):
    if not label.endswith("/uniform"):
        extra = f"  ours/limit {r:.2f}" if r is not None else ""
        print(f"  {label:26s} {op:18s} {fmt(s)}{extra}")
PY
