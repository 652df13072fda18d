#!/usr/bin/env bash
# The whole test suite, as CI runs it: the include graph of the families, a Release build with g++
# (C++17, OpenMP, MPI; tests, examples, benches and the consumer projects), the tests under
# AddressSanitizer + UBSan, and in a clang++ C++20 build the tests and the fuzz targets (15 s
# each). Installs what is missing first, and prints each stage's time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_packages "${BUILD_PACKAGES[@]}"

jobs=$(nproc)
total=$SECONDS

start=$SECONDS
echo "=== include graph ==="
bash scripts/check_includes.sh
echo "=== include graph: $((SECONDS - start)) s ==="

for preset in release asan-ubsan clang-cxx20; do
  echo "=== $preset ==="
  start=$SECONDS
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  ctest --preset "$preset" -j "$jobs"
  echo "=== $preset: $((SECONDS - start)) s ==="
done
echo "=== all stages: $((SECONDS - total)) s ==="
