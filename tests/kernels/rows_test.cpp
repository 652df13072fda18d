// The row kernels of dispatch and combine (copy, zero, weighted sums of rows) against plain loops,
// streaming or not, at every alignment of the destination and every batch size of summed rows.
#include <algorithm>
#include <vector>

#include "moe/kernels/rows.hpp"
#include "support/catch.hpp"

using moe::Index;

TEMPLATE_TEST_CASE("row kernels agree with plain loops, streaming or not, at any alignment",
                   "[kernels][rows]", float, double) {
  using S = TestType;
  for (Index n :
       {Index(0), Index(1), Index(5), Index(8), Index(13), Index(32), Index(64), Index(1001)})
    for (Index offset : {Index(0), Index(1), Index(3)})
      for (bool stream : {false, true})
        for (Index count : {Index(1), Index(3), Index(9)}) {
          INFO("n=" << n << " offset=" << offset << " stream=" << stream << " count=" << count);
          std::vector<S> storage(static_cast<std::size_t>((count + 2) * (n + 8)));
          for (std::size_t i = 0; i < storage.size(); ++i)
            storage[i] = static_cast<S>(0.25 * static_cast<double>(i % 17) - 1.0);
          std::vector<const S*> rows;
          for (Index j = 0; j < count; ++j) rows.push_back(storage.data() + j * (n + 8) + 1);
          S* dst = storage.data() + count * (n + 8) + offset;
          const S weights[9] = {S(0.5),   S(-2), S(0.125), S(1), S(3),
                                S(-0.25), S(2),  S(0.75),  S(-1)};
          std::vector<S> start(dst, dst + n);
          // What the kernels prefetch meanwhile: as many rows as they read, up to the limit.
          moe::kernels::RowsAhead<S> ahead;
          for (Index j = 0; j < count; ++j)
            ahead.add(rows[static_cast<std::size_t>(count - 1 - j)]);

          moe::kernels::sum_rows<true>(dst, n, rows.data(), weights, count, false, stream, ahead);
          moe::simd::stream_fence();
          for (Index i = 0; i < n; ++i) {
            S want = weights[0] * rows[0][i];
            for (Index j = 1; j < count; ++j) want += weights[j] * rows[j][i];
            CHECK(dst[i] == Approx(want));
          }
          std::copy(start.begin(), start.end(), dst);
          moe::kernels::sum_rows<false>(dst, n, rows.data(), weights, count, true, stream, ahead);
          moe::simd::stream_fence();
          for (Index i = 0; i < n; ++i) {
            S want = start[static_cast<std::size_t>(i)];
            for (Index j = 0; j < count; ++j) want += rows[j][i];
            CHECK(dst[i] == Approx(want));
          }
          moe::kernels::copy_row(dst, rows[0], n, stream, ahead);
          moe::simd::stream_fence();
          CHECK(std::equal(dst, dst + n, rows[0]));
          moe::kernels::zero_row(dst, n, stream);
          moe::simd::stream_fence();
          CHECK(std::all_of(dst, dst + n, [](S v) { return v == S(0); }));
        }
}
