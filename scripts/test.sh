#!/usr/bin/env bash
# The whole test suite, as CI runs it: a Release build with g++ (C++17, OpenMP, benches and the
# consumer projects compiled), the same tests under AddressSanitizer + UBSan, and a clang++ C++20
# build. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_packages "${BUILD_PACKAGES[@]}"

jobs=$(nproc)
for preset in release asan-ubsan clang-cxx20; do
  echo "=== $preset ==="
  start=$SECONDS
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  ctest --preset "$preset" -j "$jobs"
  echo "=== $preset: $((SECONDS - start)) s ==="
done
