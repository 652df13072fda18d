// moe::Error and the argument checks every public entry point runs.
#pragma once

#include <cmath>
#include <functional>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "moe/core/types.hpp"

namespace moe {

/// Raised for bad input. The message names the argument, what was expected and what was given.
class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

/// Parts streamed one after another, formatted only when read: an argument check on a hot path
/// builds no string unless it fails.
template <class... Parts>
class Concat {
 public:
  explicit Concat(Parts... parts) : parts_(std::move(parts)...) {}

  std::string str() const {
    std::ostringstream out;
    out << *this;
    return out.str();
  }
  operator std::string() const { return str(); }

  friend std::ostream& operator<<(std::ostream& out, const Concat& message) {
    std::apply([&out](const auto&... part) { (out << ... << part); }, message.parts_);
    return out;
  }

 private:
  std::tuple<Parts...> parts_;
};

template <class... Parts>
Concat<std::decay_t<const Parts&>...> concat(const Parts&... parts) {
  return Concat<std::decay_t<const Parts&>...>(parts...);
}

/// Throws `moe::Error("<argument>: expected <expected>, got <given>")`.
template <class Expected, class Given>
[[noreturn]] void fail(const char* argument, const Expected& expected, const Given& given) {
  throw Error(concat(argument, ": expected ", expected, ", got ", given).str());
}

}  // namespace detail

/// Checks `condition`; on failure names the argument with what was expected and what was given.
template <class Expected, class Given>
void require(bool condition, const char* argument, const Expected& expected, const Given& given) {
  if (!condition) detail::fail(argument, expected, given);
}

/// Checks that `matrix` is `[rows, cols]`; a negative expected extent is not checked.
template <class Matrix>
void require_shape(const Matrix& matrix, const char* argument, Index rows, Index cols) {
  const bool ok = (rows < 0 || matrix.rows() == rows) && (cols < 0 || matrix.cols() == cols);
  if (!ok) {
    auto extent = [](Index n) { return n < 0 ? std::string("*") : std::to_string(n); };
    detail::fail(argument, detail::concat("shape [", extent(rows), ", ", extent(cols), "]"),
                 detail::concat("[", matrix.rows(), ", ", matrix.cols(), "]"));
  }
}

namespace detail {

/// Whether every entry of `matrix` is finite. A matrix with direct access is scanned one
/// contiguous row (or column) at a time, which vectorizes; Eigen's allFinite over a strided Ref
/// walks coefficient by coefficient.
template <class Matrix>
bool all_finite(const Matrix& matrix) {
  using S = typename Matrix::Scalar;
  if constexpr ((Matrix::Flags & Eigen::DirectAccessBit) != 0 &&
                Matrix::InnerStrideAtCompileTime == 1) {
    const Index inner = Matrix::IsRowMajor ? matrix.cols() : matrix.rows();
    const Index outer = Matrix::IsRowMajor ? matrix.rows() : matrix.cols();
    for (Index o = 0; o < outer; ++o)
      if (!Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>(
               matrix.data() + o * matrix.outerStride(), inner)
               .allFinite())
        return false;
    return true;
  } else {
    return matrix.allFinite();
  }
}

}  // namespace detail

/// Checks that every entry is finite; names the first offending row and column.
template <class Matrix>
void require_finite(const Matrix& matrix, const char* argument) {
  if (detail::all_finite(matrix)) return;
  for (Index r = 0; r < matrix.rows(); ++r)
    for (Index c = 0; c < matrix.cols(); ++c)
      if (!std::isfinite(static_cast<double>(matrix(r, c))))
        detail::fail(argument, "finite values",
                     detail::concat(matrix(r, c), " at row ", r, ", column ", c));
}

/// a * b for sizes, refusing a product past Index's range: moe::Error naming `what` and the
/// factors, before anything is allocated from it.
inline Index checked_mul(Index a, Index b, const char* what) {
  const bool fits = a >= 0 && b >= 0 && (a == 0 || b <= std::numeric_limits<Index>::max() / a);
  if (!fits) detail::fail(what, "a size that fits a 64-bit index", detail::concat(a, " * ", b));
  return a * b;
}

/// a + b for sizes, refusing a sum past Index's range.
inline Index checked_add(Index a, Index b, const char* what) {
  const bool fits = a >= 0 && b >= 0 && b <= std::numeric_limits<Index>::max() - a;
  if (!fits) detail::fail(what, "a size that fits a 64-bit index", detail::concat(a, " + ", b));
  return a + b;
}

namespace detail {

/// The elements a matrix with direct access spans: [first, last).
template <class Matrix>
std::pair<const void*, const void*> span_of(const Matrix& m) {
  using S = typename Matrix::Scalar;
  const Index inner = Matrix::IsRowMajor ? m.cols() : m.rows();
  const Index outer = Matrix::IsRowMajor ? m.rows() : m.cols();
  const S* first = m.data();
  if (inner == 0 || outer == 0) return {first, first};
  return {first, first + (outer - 1) * m.outerStride() + inner};
}

}  // namespace detail

/// Refuses an output whose memory overlaps an input's: the kernels read the input while they
/// write the output, so an overlap would return wrong values.
template <class Out, class In>
void require_disjoint(const Out& out, const char* out_name, const In& in, const char* in_name) {
  const auto [out_first, out_last] = detail::span_of(out);
  const auto [in_first, in_last] = detail::span_of(in);
  const auto before = [](const void* a, const void* b) { return std::less<const void*>()(a, b); };
  const bool overlap = out_first != out_last && in_first != in_last && before(out_first, in_last) &&
                       before(in_first, out_last);
  if (overlap)
    detail::fail(out_name, detail::concat("memory that does not overlap ", in_name),
                 detail::concat("a matrix overlapping ", in_name));
}

}  // namespace moe
