#!/usr/bin/env bash
# The whole test suite, as CI runs it: the include graph of the families, a Release build with g++
# (C++17, OpenMP, MPI; tests, examples, benches, the consumer projects and the Python module), the
# tests under AddressSanitizer + UBSan, and in a clang++ C++20 build the tests and the fuzz targets
# (15 s each). --quick (or QUICK=1) runs the include graph and the Release stage only. Installs
# what is missing first, and prints each stage's time and the total.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash scripts/test.sh [--quick]
  (no argument)  the full run, as CI makes it: include graph, release, asan-ubsan, clang-cxx20
  --quick        the include graph and the release stage only (QUICK=1 does the same)"
quick=${QUICK:-0}
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h | --help) echo "$usage"; exit 0 ;;
    *) printf "scripts/test.sh: unknown argument '%s'\n%s\n" "$arg" "$usage" >&2; exit 2 ;;
  esac
done
case "$quick" in
  0) presets=(release asan-ubsan clang-cxx20) ;;
  1) presets=(release) ;;
  *) printf "scripts/test.sh: QUICK must be 0 or 1, got '%s'\n%s\n" "$quick" "$usage" >&2; exit 2 ;;
esac

# The total counts the package installation, and is printed on failure too.
total=$SECONDS
trap 'echo "=== total: $((SECONDS - total)) s ==="' EXIT
source scripts/deps.sh
ensure_packages "${BUILD_PACKAGES[@]}"
jobs=$(nproc)

start=$SECONDS
echo "=== include graph ==="
bash scripts/check_includes.sh
echo "=== include graph: $((SECONDS - start)) s ==="

for preset in "${presets[@]}"; do
  echo "=== $preset ==="
  start=$SECONDS
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  ctest --preset "$preset" -j "$jobs"
  echo "=== $preset: $((SECONDS - start)) s ==="
done
