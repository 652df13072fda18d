// A user's program that includes one family header: the top-k selection, whose lane-parallel path
// uses the packet operations moe needs Eigen 3.4 or newer for. Small, so the consumer projects that
// test packaging alone (another Eigen package, add_subdirectory, pkg-config) compile quickly. With
// MOE_EXPECTED_VERSION (pkg-config's --modversion) it checks the version of the package found.
#include <cstdio>
#include <cstring>

#include <moe/routing/topk.hpp>
#include <moe/version.hpp>

// Built over moe::moe alone, which never carries OpenMP, even from a package installed with it.
#if defined(_OPENMP)
#error "_OPENMP is defined in a program that links moe::moe alone: moe::moe carries OpenMP"
#endif

int main() {
  // 16 tokens (more than one block of lanes) over 4 experts: token t prefers expert t % 4, then
  // expert (t + 1) % 4.
  moe::RowMatrix<float> scores = moe::RowMatrix<float>::Zero(16, 4);
  for (int t = 0; t < 16; ++t) {
    scores(t, t % 4) = 2;
    scores(t, (t + 1) % 4) = 1;
  }
  moe::ExpertIdMatrix ids;
  moe::RowMatrix<float> selected;
  moe::top_k_rows<float>(scores, 2, ids, selected);
  bool ok = true;
  for (int t = 0; t < 16; ++t)
    ok = ok && ids(t, 0) == t % 4 && ids(t, 1) == (t + 1) % 4 && selected(t, 0) == 2;
  constexpr moe::Version v = moe::version();
  std::printf("consumer: moe %d.%d.%d, top-2 of 16 tokens -> %s\n", v.major, v.minor, v.patch,
              ok ? "ok" : "WRONG");
#ifdef MOE_EXPECTED_VERSION
  // The version of the package found (pkg-config's --modversion) is that of the headers it gives.
  char version[48];
  std::snprintf(version, sizeof version, "%d.%d.%d", v.major, v.minor, v.patch);
  const bool version_ok = std::strcmp(version, MOE_EXPECTED_VERSION) == 0;
  std::printf("consumer: package version %s -> %s\n", MOE_EXPECTED_VERSION,
              version_ok ? "ok" : "WRONG");
  ok = ok && version_ok;
#endif
  return ok ? 0 : 1;
}
