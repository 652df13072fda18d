// The library's version: the one place it is written. CMake reads the three MOE_VERSION_* lines
// below for project(VERSION) and the installed moeConfigVersion.cmake, so the headers, the
// package and find_package(moe <version>) always agree.
#pragma once

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 2
#define MOE_VERSION_PATCH 0

/// The version as one integer, major * 10000 + minor * 100 + patch (0.2.0 is 200), for the
/// preprocessor: `#if MOE_VERSION >= 200`.
#define MOE_VERSION (MOE_VERSION_MAJOR * 10000 + MOE_VERSION_MINOR * 100 + MOE_VERSION_PATCH)

static_assert(MOE_VERSION_MINOR < 100 && MOE_VERSION_PATCH < 100,
              "MOE_VERSION holds minor and patch in two decimal digits each");

namespace moe {

/// A version as its three numbers.
struct Version {
  int major;
  int minor;
  int patch;
};

/// The version of these headers: `moe::version().minor` is MOE_VERSION_MINOR. For code that
/// reports which moe it was built with (a log line, a --version flag); compile-time checks use
/// the macros.
constexpr Version version() noexcept {
  return Version{MOE_VERSION_MAJOR, MOE_VERSION_MINOR, MOE_VERSION_PATCH};
}

}  // namespace moe
