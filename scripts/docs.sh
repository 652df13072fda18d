#!/usr/bin/env bash
# Builds the API reference with Doxygen (docs/Doxyfile) into build/docs/html; open
# build/docs/html/index.html. Installs doxygen if missing. Not run by CI (scripts/test.sh): the
# reference checks nothing the tests do not.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
source scripts/deps.sh
ensure_packages doxygen

# The version, as CMake reads it: from include/moe/version.hpp.
MOE_VERSION=$(sed -n 's/^#define MOE_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' \
  include/moe/version.hpp | paste -sd.)
export MOE_VERSION
rm -rf build/docs
mkdir -p build/docs
doxygen docs/Doxyfile
warnings=$(grep -c "warning:\|error:" build/docs/warnings.log || true)
echo "reference: build/docs/html/index.html (moe $MOE_VERSION; $warnings Doxygen warnings in" \
  "build/docs/warnings.log), $((SECONDS - start)) s"
