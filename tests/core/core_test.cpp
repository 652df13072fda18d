// The core family: argument checks and their messages, aligned buffers and the workspace, the
// counter-based random numbers, and ParameterSet (owned or mapped parameters, copies, moves and
// assignment through caller buffers) on a set of its own, nested sets included.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "moe/core/aligned_buffer.hpp"
#include "moe/core/error.hpp"
#include "moe/core/parameters.hpp"
#include "moe/core/random.hpp"
#include "moe/core/workspace.hpp"
#include "support/catch.hpp"

using moe::Index;

namespace {

bool aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; }

/// A toy object's parameters: a matrix and a vector, shapes from n.
struct PairSlots {
  using Scalar = double;
  static constexpr const char* kName = "Pair";
  moe::MatrixMap<double> matrix{nullptr, 0, 0};
  moe::VectorMap<double> vector{nullptr, 0};
  static constexpr auto slots() {
    return std::make_tuple(moe::slot(&PairSlots::matrix, "matrix"),
                           moe::slot(&PairSlots::vector, "vector"));
  }
  explicit PairSlots(Index n)
      : matrix(moe::unbound<moe::MatrixMap<double>>(n, n + 1)),
        vector(moe::unbound<moe::VectorMap<double>>(n, 1)) {}
  PairSlots(Index n, std::vector<double>& m, std::vector<double>& v)
      : matrix(moe::map_buffer<moe::MatrixMap<double>>({m.data(), static_cast<Index>(m.size())}, n,
                                                       n + 1, "buffers.matrix")),
        vector(moe::map_buffer<moe::VectorMap<double>>({v.data(), static_cast<Index>(v.size())}, n,
                                                       1, "buffers.vector")) {}
};
using Pair = moe::ParameterSet<PairSlots>;

/// A set holding a nested set and a parameter of its own.
struct OuterSlots {
  using Scalar = double;
  static constexpr const char* kName = "Outer";
  Pair inner;
  moe::VectorMap<double> gate{nullptr, 0};
  static constexpr auto slots() {
    return std::make_tuple(moe::slot(&OuterSlots::inner, "inner"),
                           moe::slot(&OuterSlots::gate, "gate"));
  }
  explicit OuterSlots(Index n)
      : inner(std::in_place, n), gate(moe::unbound<moe::VectorMap<double>>(3, 1)) {}
  OuterSlots(Index n, std::vector<double>& m, std::vector<double>& v)
      : inner(std::in_place, n, m, v), gate(moe::unbound<moe::VectorMap<double>>(3, 1)) {}
};
using Outer = moe::ParameterSet<OuterSlots>;

}  // namespace

TEST_CASE("argument checks name the argument, the expectation and the value", "[core][errors]") {
  CHECK_THROWS_WITH(moe::require(false, "top_k", "1 <= top_k <= 8", 9),
                    "top_k: expected 1 <= top_k <= 8, got 9");
  const moe::RowMatrix<double> m = moe::RowMatrix<double>::Zero(2, 3);
  CHECK_THROWS_WITH(moe::require_shape(m, "x", 2, 4), "x: expected shape [2, 4], got [2, 3]");
  CHECK_NOTHROW(moe::require_shape(m, "x", -1, 3));
  moe::RowMatrix<double> bad = m;
  bad(1, 2) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(moe::require_finite(bad, "logits"),
                    "logits: expected finite values, got inf at row 1, column 2");
  CHECK_THROWS_AS(moe::require_finite(bad, "logits"), std::invalid_argument);
}

TEST_CASE("aligned buffers and the workspace hand out 64-byte aligned memory that is reused",
          "[core][memory]") {
  for (std::size_t n : {std::size_t(1), std::size_t(3), std::size_t(1000)}) {
    moe::AlignedBuffer<float> b(n, 2.5f);
    CHECK(aligned(b.data()));
    CHECK(b.size() == n);
    CHECK(b.data()[n - 1] == 2.5f);
  }
  moe::AlignedBuffer<double> empty;
  CHECK(empty.data() == nullptr);
  CHECK(empty.copy().data() == nullptr);
  moe::AlignedBuffer<int> counted(5);
  for (int i = 0; i < 5; ++i) counted.data()[i] = 3 * i + 1;
  const moe::AlignedBuffer<int> copy = counted.copy();  // its own memory, the same values
  CHECK(copy.data() != counted.data());
  CHECK(aligned(copy.data()));
  CHECK(copy.size() == 5);
  for (int i = 0; i < 5; ++i) CHECK(copy.data()[i] == 3 * i + 1);

  moe::Workspace ws;
  auto a = ws.matrix<float>(0, 10, 7);
  auto v = ws.vector<double>(1, 5);
  CHECK(aligned(a.data()));
  CHECK(aligned(v.data()));
  CHECK(static_cast<const void*>(a.data()) != static_cast<const void*>(v.data()));
  const std::size_t held = ws.capacity_bytes();
  const float* first = a.data();
  CHECK(ws.matrix<float>(0, 7, 10).data() == first);  // no larger: the same memory
  CHECK(ws.capacity_bytes() == held);
  ws.matrix<float>(0, 1000, 100);
  CHECK(ws.capacity_bytes() > held);
}

TEST_CASE("counter-based random numbers depend on (seed, stream, position) only", "[core][rng]") {
  const moe::CounterRng a = moe::make_rng(7, moe::RandomStream::jitter);
  const moe::CounterRng b = moe::make_rng(7, moe::RandomStream::jitter);
  const moe::CounterRng other = moe::make_rng(7, moe::RandomStream::gate_noise);
  double mean = 0;
  for (std::uint64_t i = 0; i < 4000; ++i) {
    const double u = a.uniform(i);
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    REQUIRE(u == b.uniform(i));
    mean += u / 4000;
  }
  CHECK(std::abs(mean - 0.5) < 0.03);
  CHECK(a.bits(3) != other.bits(3));
  CHECK(a.bits(3) == moe::make_rng(7, moe::RandomStream::jitter).bits(3));
}

TEST_CASE("a parameter set owns zeroed, aligned storage; copies own; moves keep the storage",
          "[core][parameters]") {
  Pair p(std::in_place, 3);
  CHECK(p.matrix.rows() == 3);
  CHECK(p.matrix.cols() == 4);
  CHECK(p.matrix.isZero(0));
  CHECK(p.vector.isZero(0));
  CHECK(aligned(p.matrix.data()));
  CHECK(aligned(p.vector.data()));
  CHECK_FALSE(p.maps_caller_buffers());
  p.matrix.setConstant(1.5);
  p.vector.setConstant(-2.0);

  Pair copy = p;
  CHECK(copy.matrix.data() != p.matrix.data());
  CHECK(copy.matrix == p.matrix);
  copy.matrix(0, 0) = 9.0;
  CHECK(p.matrix(0, 0) == 1.5);

  const double* storage = p.matrix.data();
  Pair moved = std::move(p);
  CHECK(moved.matrix.data() == storage);
  CHECK(p.matrix.size() == 0);  // the storage went with the move

  Pair other(std::in_place, 5);
  other = moved;  // an owning set takes the other's shapes and a copy of its values
  CHECK(other.matrix.rows() == 3);
  CHECK(other.matrix == moved.matrix);
  CHECK(other.matrix.data() != moved.matrix.data());
}

TEST_CASE("a mapped parameter set views the caller's buffers and assignment writes through",
          "[core][parameters]") {
  std::vector<double> m(12, 0.25), v(3, 0.5);
  Pair mapped(std::in_place, 3, m, v);
  CHECK(mapped.matrix.data() == m.data());
  CHECK(mapped.vector.data() == v.data());
  CHECK(mapped.maps_caller_buffers());
  m[5] = 7.0;
  CHECK(mapped.matrix(1, 1) == 7.0);  // a write into the buffer is what the set holds

  Pair source(std::in_place, 3);
  source.matrix.setConstant(4.0);
  source.vector.setConstant(-1.0);
  mapped = source;
  CHECK(mapped.matrix.data() == m.data());
  CHECK(m[11] == 4.0);
  CHECK(v[2] == -1.0);
  mapped = Pair(std::in_place, 3);  // a moved set too: the values land in the buffers
  CHECK(mapped.matrix.data() == m.data());
  CHECK(m[0] == 0.0);

  Pair detached = mapped;  // a copy of a mapped set owns its values
  CHECK_FALSE(detached.maps_caller_buffers());
  CHECK(detached.matrix.data() != m.data());

  const Pair wrong(std::in_place, 2);
  CHECK_THROWS_WITH(mapped = wrong, Catch::Contains("Pair::matrix") && Catch::Contains("[3, 4]") &&
                                        Catch::Contains("[2, 3]"));
  CHECK(m[0] == 0.0);  // nothing written

  std::vector<double> short_buffer(11);
  CHECK_THROWS_WITH(Pair(std::in_place, 3, short_buffer, v),
                    "buffers.matrix: expected 12 elements ([3, 4]), got 11");
}

TEST_CASE("nested parameter sets: copies, moves and checked assignment reach every level",
          "[core][parameters]") {
  std::vector<double> m(6, 1.0), v(2, 1.0);
  Outer mapped(std::in_place, 2, m, v);
  CHECK(mapped.maps_caller_buffers());  // through the nested set
  CHECK(aligned(mapped.gate.data()));

  Outer owned(std::in_place, 2);
  owned.inner.matrix.setConstant(6.0);
  owned.gate.setConstant(2.0);
  Outer copy = owned;
  CHECK(copy.inner.matrix.data() != owned.inner.matrix.data());
  CHECK(copy.gate.data() != owned.gate.data());
  CHECK(copy.inner.matrix == owned.inner.matrix);

  mapped = owned;
  CHECK(mapped.inner.matrix.data() == m.data());
  CHECK(m[0] == 6.0);
  CHECK(mapped.gate(0) == 2.0);

  const Outer wrong(std::in_place, 3);
  m[0] = -1.0;
  CHECK_THROWS_WITH(mapped = wrong, Catch::Contains("Outer::inner.matrix"));
  CHECK(m[0] == -1.0);
  CHECK(mapped.gate(0) == 2.0);  // nothing written, not even the outer set's own parameter

  const double* gate = owned.gate.data();
  Outer moved = std::move(owned);
  CHECK(moved.gate.data() == gate);
  CHECK(owned.gate.size() == 0);
}
