#!/usr/bin/env bash
# Builds and runs the main example. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_packages "${BUILD_PACKAGES[@]}"

demo=${DEMO:-07_train_tiny_moe}
cmake -S . -B build/demo -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_WITH_OPENMP=ON \
  -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_BENCH=OFF -DMOE_BUILD_EXAMPLES=ON >/dev/null
cmake --build build/demo --target "example_$demo" -j "$(nproc)"
mkdir -p out
cd out && "../build/demo/examples/example_$demo"
