// A user's program: includes the umbrella header, routes a batch, checks the answer by hand.
#include <cstdio>

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
  const bool ok = r.expert_ids(0, 0) == 0 && r.expert_ids(1, 0) == 2;
  std::printf("consumer: token experts %d %d -> %s\n", r.expert_ids(0, 0), r.expert_ids(1, 0),
              ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
