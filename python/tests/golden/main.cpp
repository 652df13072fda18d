// moe_python_golden AREA DIR: writes the library's results for AREA's fixed inputs as .npy files
// into DIR, for the Python tests to compare with the module's (tests/conftest.py, `golden`).
#include <cstdio>
#include <string>

#include "areas.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: moe_python_golden AREA DIR\n");
    return 2;
  }
  const std::string area = argv[1], dir = argv[2];
  try {
    if (area == "routing")
      moe::golden::routing(dir);
    else if (area == "dispatch")
      moe::golden::dispatch(dir);
    else if (area == "balance")
      moe::golden::balance(dir);
    else if (area == "health")
      moe::golden::health(dir);
    else if (area == "layer")
      moe::golden::layer(dir);
    else {
      std::fprintf(stderr, "moe_python_golden: unknown area '%s'\n", area.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_python_golden %s: %s\n", area.c_str(), e.what());
    return 1;
  }
  return 0;
}
