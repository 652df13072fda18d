// A user's program: includes the umbrella header, routes a batch and checks the answer by hand.
// Built by the find_package consumer, it also checks that moe::version() is the version of the
// package found (MOE_EXPECTED_VERSION: CMake's moe_VERSION). MOE_EXPECT_OPENMP: it linked
// moe::openmp, which must thread it; without it nothing may (OpenMP is the consumer's choice,
// whatever the package was installed with).
#include <cstdio>
#include <cstring>

#include <moe/moe.hpp>

#if defined(MOE_EXPECT_OPENMP) && !defined(_OPENMP)
#error "linked moe::openmp, yet _OPENMP is undefined: moe::openmp does not carry OpenMP"
#elif !defined(MOE_EXPECT_OPENMP) && defined(_OPENMP)
#error "_OPENMP is defined without moe::openmp: moe::moe (or moe.pc) carries OpenMP"
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

int main() {
  moe::RowMatrix<float> x(2, 2);
  x << 1, 0, 0, 1;
  moe::RowMatrix<float> w(3, 2);  // expert 0 likes feature 0, expert 2 likes feature 1
  w << 2, 0, 0, 0, 0, 2;
  moe::RouterConfig config;
  config.num_experts = 3;
  config.hidden = 2;
  config.top_k = 1;
  moe::Router<float> router(config);
  router.weight = w;
  moe::RouterContext<float> ctx;
  const moe::Routing<float> r = router.forward(x, ctx, moe::Mode::eval);
  bool ok = r.expert_ids(0, 0) == 0 && r.expert_ids(1, 0) == 2;
  std::printf("consumer: token experts %d %d -> %s\n", r.expert_ids(0, 0), r.expert_ids(1, 0),
              ok ? "ok" : "WRONG");
#if defined(_OPENMP)
  std::printf("consumer: OpenMP, up to %d threads\n", omp_get_max_threads());  // links the runtime
#endif
#ifdef MOE_EXPECTED_VERSION
  constexpr moe::Version v = moe::version();
  char version[48];
  std::snprintf(version, sizeof version, "%d.%d.%d", v.major, v.minor, v.patch);
  const bool version_ok = std::strcmp(version, MOE_EXPECTED_VERSION) == 0 &&
                          MOE_VERSION == v.major * 10000 + v.minor * 100 + v.patch;
  std::printf("consumer: moe::version() %s (MOE_VERSION %d), package version %s -> %s\n", version,
              MOE_VERSION, MOE_EXPECTED_VERSION, version_ok ? "ok" : "WRONG");
  ok = ok && version_ok;
#endif
  return ok ? 0 : 1;
}
