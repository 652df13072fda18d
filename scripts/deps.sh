# Sourced by the scripts: installs the Debian packages a build needs, skipping those present.
ensure_packages() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# What every build of this project needs: compilers, CMake, Ninja, Eigen, Catch2, Google Benchmark,
# clang's OpenMP (g++ brings its own), Open MPI for the expert-parallel tests (mpirun runs them
# with 2 and 4 processes), pkg-config for the test of moe.pc (on Debian 12 pkgconf is pkg-config;
# the package named pkg-config only depends on it), Python for the README blocks' extraction, and
# the Python module's build (pybind11, Python's headers, NumPy) and tests (pytest; PyTorch for the
# cross-checks against short PyTorch re-implementations).
BUILD_PACKAGES=(g++ clang cmake ninja-build libeigen3-dev catch2 libbenchmark-dev libomp-dev
  libopenmpi-dev openmpi-bin pkgconf python3 pybind11-dev python3-dev python3-numpy python3-pytest
  python3-torch)

# What scripts/demo.sh needs: one example built with g++ and OpenMP (g++'s libgomp, no libomp).
DEMO_PACKAGES=(g++ cmake ninja-build libeigen3-dev)
