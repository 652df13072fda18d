// moe::Error and the argument checks every public entry point runs.
#pragma once

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

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

/// Checks that every entry is finite; names the first offending row and column.
template <class Matrix>
void require_finite(const Matrix& matrix, const char* argument) {
  if (matrix.allFinite()) return;
  for (Index r = 0; r < matrix.rows(); ++r)
    for (Index c = 0; c < matrix.cols(); ++c)
      if (!std::isfinite(static_cast<double>(matrix(r, c))))
        detail::fail(argument, "finite values",
                     detail::concat(matrix(r, c), " at row ", r, ", column ", c));
}

}  // namespace moe
