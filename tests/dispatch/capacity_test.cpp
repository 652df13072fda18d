// Capacity formulas of each convention, checked against values worked out by hand from each
// system's arithmetic (including the float32 rounding of DeepSpeed and Python's half-to-even
// round).
#include <limits>

#include <moe/dispatch/capacity.hpp>

#include "dispatch/test_util.hpp"

using moe::CapacityConfig;
using moe::CapacityRounding;
using moe::Index;
using moe::Mode;

namespace {

Index cap(CapacityRounding rounding, Index tokens, Index k, Index experts, double cf,
          Index min_capacity = 0, Index alignment = 1) {
  CapacityConfig c;
  c.rounding = rounding;
  c.train_factor = cf;
  c.eval_factor = cf;
  c.min_capacity = min_capacity;
  c.alignment = alignment;
  return moe::expert_capacity(c, tokens, k, experts, Mode::train);
}

}  // namespace

TEST_CASE("megatron and deepspeed differ where float32 rounds 12.5 * 1.2 up", "[capacity]") {
  // 12.5 * 1.2 = 14.999999999999998... in double -> ceil 15; float32(1.2) = 1.2000000477, the
  // float32 product rounds to 15.00000095 -> ceil 16.
  CHECK(cap(CapacityRounding::megatron, 50, 1, 4, 1.2) == 15);
  CHECK(cap(CapacityRounding::deepspeed, 50, 1, 4, 1.2) == 16);
  // top-2: (100 / 4) * 1.2 -> 30 in double; float32(12.5) * float32(2.4) -> 30.0000019 -> 31.
  CHECK(cap(CapacityRounding::megatron, 50, 2, 4, 1.2) == 30);
  CHECK(cap(CapacityRounding::deepspeed, 50, 2, 4, 1.2) == 31);
  // 35 / 3 * 1.2 = 13.999999999999998 in double: megatron ceil 14, megablocks trunc 13,
  // deepspeed float32 gives 14.0000010 -> 15.
  CHECK(cap(CapacityRounding::megatron, 35, 1, 3, 1.2) == 14);
  CHECK(cap(CapacityRounding::megablocks, 35, 1, 3, 1.2) == 13);
  CHECK(cap(CapacityRounding::deepspeed, 35, 1, 3, 1.2) == 15);
  // Exact products agree everywhere.
  CHECK(cap(CapacityRounding::megatron, 64, 2, 8, 1.0) == 16);
  CHECK(cap(CapacityRounding::deepspeed, 64, 2, 8, 1.0) == 16);
  CHECK(cap(CapacityRounding::megablocks, 64, 2, 8, 1.0) == 16);
}

TEST_CASE("megablocks truncates", "[capacity]") {
  CHECK(cap(CapacityRounding::megablocks, 50, 1, 4, 1.2) == 15);  // 15.0 exactly
  CHECK(cap(CapacityRounding::megablocks, 10, 1, 4, 1.0) == 2);   // 2.5 -> 2
  CHECK(cap(CapacityRounding::megablocks, 10, 2, 4, 1.25) == 6);  // 6.25 -> 6
  CHECK(cap(CapacityRounding::megablocks, 3, 1, 4, 1.0) == 0);    // 0.75 -> 0
}

TEST_CASE("tutel multiplies k by trunc(cf * ceil(T / E))", "[capacity]") {
  CHECK(cap(CapacityRounding::tutel, 50, 2, 4, 1.2) == 30);  // ceil 12.5 = 13; 15.6 -> 15; x2
  CHECK(cap(CapacityRounding::tutel, 50, 1, 4, 1.0) == 13);  // fairseq top-1 int(cf ceil(T/E))
  CHECK(cap(CapacityRounding::tutel, 9, 3, 4, 1.25) == 9);   // ceil 2.25 = 3; 3.75 -> 3; x3
}

TEST_CASE("flaxformer rounds half to even and ignores k", "[capacity]") {
  CHECK(cap(CapacityRounding::flaxformer, 50, 2, 4, 1.25) == 16);   // 15.625 -> 16
  CHECK(cap(CapacityRounding::flaxformer, 10, 1, 4, 1.0) == 2);     // 2.5 -> 2 (even)
  CHECK(cap(CapacityRounding::flaxformer, 14, 1, 4, 1.0) == 4);     // 3.5 -> 4 (even)
  CHECK(cap(CapacityRounding::flaxformer, 10, 1, 4, 1.0, 4) == 4);  // min_expert_capacity 4
}

TEST_CASE("gshard is k * ceil(T / E) whatever the factor", "[capacity]") {
  CHECK(cap(CapacityRounding::gshard, 50, 2, 4, 1.0) == 26);
  CHECK(cap(CapacityRounding::gshard, 50, 2, 4, 3.0) == 26);
  CHECK(cap(CapacityRounding::gshard, 0, 2, 4, 1.0) == 0);
}

TEST_CASE("fixed capacity, min_capacity, alignment and eval factor", "[capacity]") {
  CapacityConfig c;
  c.rounding = CapacityRounding::fixed;
  c.fixed_capacity = 64;
  CHECK(moe::expert_capacity(c, 1000, 1, 8, Mode::train) == 64);
  CHECK(moe::expert_capacity(c, 0, 1, 8, Mode::eval) == 64);
  // DeepSpeed: ceil(8 / 4 * 1) = 2, then min_capacity 4.
  CHECK(cap(CapacityRounding::deepspeed, 8, 1, 4, 1.0, 4) == 4);
  // Tutel-style alignment is applied last: 15 -> 16, and 16 stays 16.
  CHECK(cap(CapacityRounding::megatron, 50, 1, 4, 1.2, 0, 8) == 16);
  CHECK(cap(CapacityRounding::megatron, 64, 2, 8, 1.0, 0, 8) == 16);
  CHECK(cap(CapacityRounding::megatron, 0, 1, 4, 1.0) == 0);
  CapacityConfig m;
  m.train_factor = 1.0;
  m.eval_factor = 2.0;
  CHECK(moe::expert_capacity(m, 64, 1, 8, Mode::train) == 8);
  CHECK(moe::expert_capacity(m, 64, 1, 8, Mode::eval) == 16);
}

TEST_CASE("bad capacity settings throw moe::Error naming the field", "[capacity][errors]") {
  auto throws_with = [](CapacityConfig c, const char* what) {
    CHECK_THROWS_WITH(moe::expert_capacity(c, 10, 1, 4, Mode::train), MOE_CONTAINS(what));
  };
  CapacityConfig c;
  c.train_factor = 0.0;
  throws_with(c, "train_factor");
  c = CapacityConfig{};
  c.eval_factor = -1.0;
  throws_with(c, "eval_factor");
  c = CapacityConfig{};
  c.train_factor = std::numeric_limits<double>::infinity();
  throws_with(c, "train_factor");
  c = CapacityConfig{};
  c.min_capacity = -1;
  throws_with(c, "min_capacity");
  c = CapacityConfig{};
  c.fixed_capacity = -2;
  throws_with(c, "fixed_capacity");
  c = CapacityConfig{};
  c.alignment = 0;
  throws_with(c, "alignment");
  c = CapacityConfig{};
  c.group_size = -3;
  throws_with(c, "group_size");
  c = CapacityConfig{};
  CHECK_THROWS_AS(moe::expert_capacity(c, -1, 1, 4, Mode::train), moe::Error);
  CHECK_THROWS_WITH(moe::expert_capacity(c, 10, 0, 4, Mode::train), MOE_CONTAINS("top_k"));
  CHECK_THROWS_WITH(moe::expert_capacity(c, 10, 1, 0, Mode::train), MOE_CONTAINS("num_experts"));
  c.train_factor = 1e300;
  CHECK_THROWS_WITH(moe::expert_capacity(c, 10, 1, 1, Mode::train),
                    MOE_CONTAINS("expert capacity"));
  // The factor is not read by the fixed and gshard conventions, so it is not checked there.
  CapacityConfig f;
  f.rounding = CapacityRounding::fixed;
  f.train_factor = 0.0;
  f.fixed_capacity = 3;
  CHECK(moe::expert_capacity(f, 10, 1, 4, Mode::train) == 3);
}
