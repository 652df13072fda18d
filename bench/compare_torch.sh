#!/usr/bin/env bash
# This library's MoE layer against PyTorch on the CPU, float32, the same thread count, in one go.
#   bench/compare_torch.sh            (from the repository root or anywhere)
# Builds bench_layer (Release preset), runs it, then runs bench/compare_torch.py (installing
# python3-torch when it can) on an optimized BLAS (below) for each OpenBLAS kernel type this CPU
# runs, each in two settings (as installed, and with the CPU settings PyTorch's performance guide recommends: OMP_WAIT_POLICY=passive and
# tcmalloc preloaded), and prints one table taking the fastest variant, setting and kernel type
# per row, each named. Outputs stay in build/release/compare/; TABLE_ONLY=1 reprints the table
# from them without running; CORETYPES="SkylakeX Zen" limits the kernel types tried. Arguments go
# to bench_layer (e.g. --benchmark_min_time=0.1). Not part of the test suite.
#
# PyTorch's BLAS: Debian's python3-torch calls the BLAS behind the libblas.so.3 alternative, which
# is the reference BLAS (libblas3, which python3-torch pulls in; 25-60x slower here) unless an
# optimized one is installed and selected. This script installs OpenBLAS (libopenblas0-pthread)
# when it can, and runs PyTorch on it (through LD_LIBRARY_PATH when the system alternative points
# elsewhere, leaving the system's choice alone). It refuses to compare against another BLAS
# unless ALLOW_ANY_BLAS=1, and then says so above the table. OpenBLAS's own pick of kernels is not
# always its fastest (Debian's 0.3.21 predates Zen 5; an environment may force OPENBLAS_CORETYPE):
# hence the kernel types the CPU can run are tried one by one, and the fastest kept per row.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
threads=${THREADS:-2}
out="$root/build/release/compare"
python=/usr/bin/python3
cd "$root"
have_torch=1
if ! "$python" -c 'import torch' 2>/dev/null && command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]
then
  echo "installing python3-torch (Debian's PyTorch) for the comparison" >&2
  apt-get install -y python3-torch >/dev/null 2>&1 || true
fi
"$python" -c 'import torch' 2>/dev/null || have_torch=0

blas_alternative=libblas.so.3-x86_64-linux-gnu
openblas_dir=/usr/lib/x86_64-linux-gnu/openblas-pthread
# Kernel types worth trying on this CPU: OpenBLAS's own pick (auto) and the x86-64 types whose
# instructions the CPU has.
coretypes() {
  local flags
  flags=$(grep -m1 '^flags' /proc/cpuinfo)
  local types="auto"
  [[ $flags == *" avx2 "* ]] && types+=" Haswell Zen"
  [[ $flags == *" avx512f "* && $flags == *" avx512bw "* ]] && types+=" SkylakeX"
  [[ $flags == *" avx512_bf16 "* ]] && types+=" Cooperlake"
  echo "${CORETYPES:-$types}"
}

if [[ "${TABLE_ONLY:-0}" != 1 ]]; then
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)  threads: $threads"

cmake --preset release >/dev/null
cmake --build build/release --target bench_layer -j2
mkdir -p "$out"
rm -f "$out"/torch_*.jsonl
OMP_NUM_THREADS=$threads build/release/bench/bench_layer --benchmark_format=json \
  "$@" >"$out/layer.json"

if [[ $have_torch == 0 ]]; then
  echo "torch is not installed for $python (apt-get install python3-torch): skipping PyTorch" >&2
else
  if [[ ! -e $openblas_dir/libblas.so.3 ]] && command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]
  then
    apt-get install -y libopenblas0-pthread >/dev/null 2>&1 || true
  fi
  selected=$(update-alternatives --query $blas_alternative 2>/dev/null | awk '/^Value:/ {print $2}')
  blas_path=""
  if [[ -e $openblas_dir/libblas.so.3 ]]; then
    if [[ $selected != "$openblas_dir/libblas.so.3" ]]; then
      echo "libblas.so.3 alternative: ${selected:-unset}; PyTorch runs on $openblas_dir instead" >&2
      blas_path=$openblas_dir
    fi
  elif [[ "${ALLOW_ANY_BLAS:-0}" != 1 ]]; then
    echo "no OpenBLAS for PyTorch (apt-get install libopenblas0-pthread) and the libblas.so.3" \
         "alternative is ${selected:-unset}: refusing to compare against it (ALLOW_ANY_BLAS=1" \
         "runs anyway)" >&2
    exit 1
  fi
  tcmalloc=$(ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 / && !found {print $NF; found = 1}')
  if [[ -z "$tcmalloc" ]] && command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]; then
    apt-get install -y libtcmalloc-minimal4 >/dev/null 2>&1 || true
    tcmalloc=$(ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 / && !found {print $NF; found = 1}')
  fi
  [[ -n "$tcmalloc" ]] || echo "libtcmalloc_minimal.so.4 not found: tuned run without it" >&2
  inherited=$(env | grep '^OPENBLAS_' | tr '\n' ' ' || true)
  echo "OpenBLAS settings inherited: ${inherited:-none}" >&2
  for coretype in $(coretypes); do
    core_env=(-u OPENBLAS_CORETYPE)  # auto: OpenBLAS's own pick, whatever the caller's setting
    [[ $coretype == auto ]] || core_env=(OPENBLAS_CORETYPE="$coretype")
    echo "PyTorch, OpenBLAS kernel type $coretype" >&2
    env "${core_env[@]}" ${blas_path:+LD_LIBRARY_PATH="$blas_path"} OMP_NUM_THREADS="$threads" \
      "$python" bench/compare_torch.py --threads "$threads" >"$out/torch_default_$coretype.jsonl"
    env "${core_env[@]}" ${blas_path:+LD_LIBRARY_PATH="$blas_path"} OMP_NUM_THREADS="$threads" \
      OMP_WAIT_POLICY=passive LD_PRELOAD="${tcmalloc}" \
      "$python" bench/compare_torch.py --threads "$threads" >"$out/torch_tuned_$coretype.jsonl"
  done
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
fi

"$python" - "$out" "$have_torch" <<'PY'
import glob, json, os, sys

out, have_torch = sys.argv[1], sys.argv[2] == "1"
ours = {}
for b in json.load(open(f"{out}/layer.json"))["benchmarks"]:
    label, name = b.get("label", ""), b["name"]
    if name.startswith(("BM_layer_forward/", "BM_layer_forward_backward/")):
        op = "forward_backward" if "forward_backward" in name else "forward"
        ours[(label, op)] = (b["layer_ms"] / 1e3, b["ratio"])
    elif name.startswith(("BM_layer_bf16_forward/", "BM_layer_bf16_forward_backward/")):
        # bf16 experts; "ours / limit" is then the bf16 layer over the float one
        op = "forward_backward_bf16" if "forward_backward" in name else "forward_bf16"
        ours[(label, op)] = (b["layer_ms"] / 1e3, b["ratio"])
    elif name.startswith("BM_piece_") and "memcpy" not in name:
        piece = name.split("/")[0][len("BM_piece_"):]
        scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
        ours[(label, piece)] = (b["real_time"] * scale, None)

torch, blas_seen = {}, {}
for path in sorted(glob.glob(f"{out}/torch_*.jsonl")):
    setting, requested = os.path.basename(path)[len("torch_"):-len(".jsonl")].split("_", 1)
    for line in open(path):
        r = json.loads(line)
        if "blas" in r:  # the first line: which BLAS and kernel type this run used
            blas_seen[(setting, requested)] = r
            continue
        shape, variant, op = r["name"].split("/")
        key = (shape, op)
        kernel = r.get("core") or "?"
        label = f"{variant}, {setting}, {kernel}" if variant != "piece" else f"{setting}, {kernel}"
        if key not in torch or r["seconds"] < torch[key][0]:
            torch[key] = (r["seconds"], label)

if have_torch and blas_seen:
    libs = sorted({b["blas"] for b in blas_seen.values()})
    configs = sorted({b["config"] for b in blas_seen.values() if b["config"]})
    print(f"PyTorch's BLAS: {', '.join(libs)}" + (f" ({'; '.join(configs)})" if configs else ""))
    tried = ", ".join(f"{req} -> {b['core'] or 'not OpenBLAS'}"
                      for (setting, req), b in sorted(blas_seen.items()) if setting == "default")
    print(f"OpenBLAS kernel types tried (OPENBLAS_CORETYPE -> kernels run): {tried}")
    if not all(b["core"] for b in blas_seen.values()):
        print("WARNING: PyTorch did not run on OpenBLAS in every run: those times are not its "
              "best on this CPU")
    print("Settings: default = as installed; tuned = OMP_WAIT_POLICY=passive + tcmalloc.")
    print()

def fmt(s):
    return f"{s * 1e3:.3f} ms" if s < 1e-2 else f"{s * 1e3:.1f} ms"

print("| shape | op | ours | ours / limit (bf16 ops: / our float layer) "
      "| PyTorch best (variant, setting, BLAS kernels) | PyTorch / ours |")
print("|---|---|---|---|---|---|")
for shape in ("small", "medium", "fine_grained", "switch", "decode"):
    for op in ("forward", "forward_backward", "forward_bf16", "forward_backward_bf16",
               "score_topk", "plan", "permute", "unpermute_combine"):
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
