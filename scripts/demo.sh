#!/usr/bin/env bash
# Builds and runs the main example (DEMO=<name> another one). Installs what is missing first, only
# what the demo needs (DEMO_PACKAGES in scripts/deps.sh), and prints how long it all took.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
source scripts/deps.sh
ensure_packages "${DEMO_PACKAGES[@]}"

# g++: its OpenMP comes with it (clang's would need libomp-dev).
demo=${DEMO:-07_train_tiny_moe}
cmake -S . -B build/demo -G Ninja -DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=Release \
  -DMOE_WITH_OPENMP=ON -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_BENCH=OFF -DMOE_BUILD_EXAMPLES=ON >/dev/null
cmake --build build/demo --target "example_$demo" -j "$(nproc)"
mkdir -p out
(cd out && "../build/demo/examples/example_$demo")
echo "demo: $((SECONDS - start)) s"
