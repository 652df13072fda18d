// A user's program: includes the umbrella header, routes a batch and checks the answer by hand.
// Built by a find_package consumer, it also checks that moe::version() is the version of the
// package CMake found (MOE_EXPECTED_VERSION, the consumer's moe_VERSION).
#include <cstdio>
#include <cstring>

#include <moe/moe.hpp>

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
#ifdef MOE_EXPECTED_VERSION
  constexpr moe::Version v = moe::version();
  char version[48];
  std::snprintf(version, sizeof version, "%d.%d.%d", v.major, v.minor, v.patch);
  const bool version_ok = std::strcmp(version, MOE_EXPECTED_VERSION) == 0 &&
                          MOE_VERSION == v.major * 10000 + v.minor * 100 + v.patch;
  std::printf("consumer: moe::version() %s (MOE_VERSION %d), CMake package moe_VERSION %s -> %s\n",
              version, MOE_VERSION, MOE_EXPECTED_VERSION, version_ok ? "ok" : "WRONG");
  ok = ok && version_ok;
#endif
  return ok ? 0 : 1;
}
