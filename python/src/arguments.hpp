// Argument conversions every part shares: float arrays whose precision never changes on the way
// in, integer arrays (expert ids, offsets, counts) range-checked before they are narrowed, and
// boolean padding masks. Failures are moe::Error naming the argument.
//
// A float array argument is taken one of two ways:
// - float_array<S>, by every function and by the methods of GlobalLoadBalancingLoss_*: it converts
//   each array argument and names it in every error (a wrong type or number of dimensions
//   included, which an overload set can only report as "incompatible function arguments"). S is
//   the precision an object argument fixes (a CapacityPlan_float32 passed in: the function is bound
//   per dtype on that object), else the one the first array asks for (in_precision(first array, f)
//   binds the function once for both and calls a generic lambda in that precision);
// - InMatrix<S> / InVector<S>, by the methods of Router_* and MoELayer_* (routing.cpp, layer.cpp):
//   the class fixes S, and pybind11's Eigen caster reads the array in place; a wrong array is
//   pybind11's TypeError, which does not name it.
// Either way a float array of the other precision is refused (TypeError), never rounded.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "bindings.hpp"

namespace moe::python {

/// Whether `object` is a float array of the precision S is not (float64 for float, float32 for
/// double): the one dtype an argument of S refuses, as converting it would override the precision
/// the caller chose.
template <class S>
bool other_precision(const py::handle& object) {
  using Other = std::conditional_t<std::is_same_v<S, float>, double, float>;
  if (!py::isinstance<py::array>(object)) return false;
  const py::dtype type = py::reinterpret_borrow<py::array>(object).dtype();
  return type.kind() == 'f' && type.itemsize() == static_cast<py::ssize_t>(sizeof(Other));
}

/// A read-only float array argument, bound as the Eigen::Ref `R` (ConstMatrixRef<S> or
/// ConstVectorRef<S>). pybind11's own Ref caster converts any dtype in its second, converting
/// overload pass, so a strided float64 array would reach the float32 overload of a function bound
/// for both and be silently rounded; this caster refuses the other float dtype outright, leaving
/// that array to its own overload.
template <class R>
struct Exact {
  const R* ref = nullptr;
  const R& operator*() const { return *ref; }
};

template <class S>
using InMatrix = Exact<ConstMatrixRef<S>>;
template <class S>
using InVector = Exact<ConstVectorRef<S>>;

}  // namespace moe::python

namespace pybind11::detail {

template <class R>
struct type_caster<moe::python::Exact<R>> {
  static constexpr auto name = make_caster<R>::name;

  bool load(handle src, bool convert) {
    if (moe::python::other_precision<typename R::Scalar>(src)) return false;
    if (!inner_.load(src, convert)) return false;
    value_.ref = &static_cast<R&>(inner_);
    return true;
  }

  template <class T>
  using cast_op_type = pybind11::detail::cast_op_type<T>;
  operator moe::python::Exact<R>&() { return value_; }
  operator moe::python::Exact<R>*() { return &value_; }

 private:
  make_caster<R> inner_;
  moe::python::Exact<R> value_;
};

}  // namespace pybind11::detail

namespace moe::python {

inline std::string type_name(const py::handle& object) {
  return py::str(py::type::of(object).attr("__name__"));
}

/// `object` as an array with `ndim` dimensions, converted when it is not one (a list); otherwise a
/// moe::Error naming `argument` with `expected` (e.g. "a [T, k] integer array").
inline py::array array_argument(const py::handle& object, const char* argument, int ndim,
                                const std::string& expected) {
  py::array a = py::array::ensure(object);
  // NumPy makes a 0-D array of anything, a str included: such an object is named by its type.
  constexpr std::string_view numeric = "biuf";
  if (!a || (!py::isinstance<py::array>(object) &&
             numeric.find(a.dtype().kind()) == std::string_view::npos))
    detail::fail(argument, expected, type_name(object));
  if (a.ndim() != ndim) detail::fail(argument, expected, detail::concat(a.ndim(), "-D array"));
  return a;
}

/// Read-only row-major Eigen views of a C-contiguous 2-D or 1-D array.
template <class T>
Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> matrix_map(
    const py::array_t<T, py::array::c_style>& a) {
  return {a.data(), static_cast<Index>(a.shape(0)), static_cast<Index>(a.shape(1))};
}
template <class T>
Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>> vector_map(
    const py::array_t<T, py::array::c_style>& a) {
  return {a.data(), static_cast<Index>(a.shape(0))};
}

/// Calls `f(S{})` with S the precision `array` asks for: double for a float64 array, float for
/// anything else (float32, integers, a list), as the overloads bound float32 first choose. Binds a
/// function once for both precisions; every array argument then goes through float_array<S>.
template <class F>
decltype(auto) in_precision(const py::handle& array, F&& f) {
  if (other_precision<float>(array)) return f(double{});
  return f(float{});
}

/// Runs `f()` with the GIL released, then moves its result into a Python object (an Eigen matrix
/// into the array that owns it, no copy): one return type for both precisions of an in_precision
/// lambda. `f` must touch no Python object; the arrays it reads are mapped before.
template <class F>
py::object without_gil(F&& f) {
  auto result = [&] {
    py::gil_scoped_release release;
    return f();
  }();
  return py::cast(std::move(result));
}

/// `object` as a C-contiguous float array of S with `ndim` dimensions (`shape` describes it in
/// messages, e.g. "[T, E]"): read in place when it already is one, else converted once (another
/// layout, integers, a list). The other float precision is a TypeError naming the argument.
template <class S>
py::array_t<S, py::array::c_style> float_array(const py::handle& object, const char* argument,
                                               int ndim, const char* shape) {
  const py::array a =
      array_argument(object, argument, ndim, detail::concat("a ", shape, " float array"));
  if (other_precision<S>(object))  // a list is converted: only an array has a precision
    throw py::type_error(
        detail::concat(argument, ": expected ", std::string(py::str(py::dtype::of<S>())),
                       " (the call's precision; float32 and float64 do not mix), got ",
                       std::string(py::str(a.dtype())))
            .str());
  return py::array_t<S, py::array::c_style | py::array::forcecast>::ensure(a);
}

/// float_array, or an empty array (size 0, which the library reads as "absent") for None.
template <class S>
py::array_t<S, py::array::c_style> optional_float_array(const py::handle& object,
                                                        const char* argument, int ndim,
                                                        const char* shape) {
  if (object.is_none())
    return py::array_t<S, py::array::c_style>(std::vector<py::ssize_t>(ndim, 0));
  return float_array<S>(object, argument, ndim, shape);
}

/// `object` as a C-contiguous array of the integer type Int with `ndim` dimensions. Int arrays are
/// taken as they are; other integer dtypes (and lists) are converted after checking that every
/// value fits Int, so an int64 id past 2^31 is refused rather than wrapped. `shape` describes the
/// expected array in the message, e.g. "[T, k]".
template <class Int>
py::array_t<Int, py::array::c_style> integer_array(const py::handle& object, const char* argument,
                                                   int ndim, const char* shape) {
  const std::string expected = detail::concat("a ", shape, " integer array");
  const py::array a = array_argument(object, argument, ndim, expected);
  if (a.size() == 0) return py::array_t<Int, py::array::c_style | py::array::forcecast>::ensure(a);
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u')
    detail::fail(argument, expected, "dtype " + std::string(py::str(a.dtype())));
  if (!a.dtype().is(py::dtype::of<Int>())) {
    const py::object low = a.attr("min")(), high = a.attr("max")();
    if (low < py::int_(std::numeric_limits<Int>::min()) ||
        high > py::int_(std::numeric_limits<Int>::max()))
      detail::fail(argument, detail::concat("values that fit ", sizeof(Int) * 8, "-bit integers"),
                   detail::concat("values from ", std::string(py::str(low)), " to ",
                                  std::string(py::str(high))));
  }
  return py::array_t<Int, py::array::c_style | py::array::forcecast>::ensure(a);
}

/// Expert ids [T, k] read in place when they are a C-contiguous int32 array: what the planners'
/// Eigen::Ref<const ExpertIdMatrix> takes without a copy. Keep the array alive while it is used.
class ExpertIds {
 public:
  ExpertIds(const py::handle& object, const char* argument)
      : array_(integer_array<ExpertId>(object, argument, 2, "[T, k]")) {}

  Eigen::Map<const ExpertIdMatrix> map() const { return matrix_map(array_); }
  /// A copy, for the entry points taking `const ExpertIdMatrix&`.
  ExpertIdMatrix matrix() const { return map(); }

 private:
  py::array_t<ExpertId, py::array::c_style> array_;
};

/// Expert ids as an ExpertIdMatrix; None gives the empty matrix (a recomputed selection).
inline ExpertIdMatrix expert_id_matrix(const py::object& object, const char* argument) {
  if (object.is_none()) return ExpertIdMatrix();
  return ExpertIds(object, argument).matrix();
}

/// A 1-D integer array (offsets, counts) as an IndexVector.
inline IndexVector index_vector(const py::handle& object, const char* argument) {
  const auto a = integer_array<std::int64_t>(object, argument, 1, "1-D");
  return Eigen::Map<const Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1>>(a.data(), a.size())
      .cast<Index>();
}

/// A boolean mask (TokenMask [T] or ChoiceMask [T, k]) from a bool array; None is the empty mask
/// (every token real, every choice kept). Another dtype is refused: a 0/1 float array as a mask is
/// more likely a mistake than a request.
template <class Mask>
Mask mask_argument(const py::object& object, const char* argument) {
  constexpr bool vector = Mask::ColsAtCompileTime == 1;
  const char* expected = vector ? "None or a [T] bool array" : "None or a [T, k] bool array";
  if (object.is_none()) return Mask();
  const py::array a = array_argument(object, argument, vector ? 1 : 2, expected);
  if (a.dtype().kind() != 'b' && a.size() != 0)
    detail::fail(argument, expected, "dtype " + std::string(py::str(a.dtype())));
  const auto b = py::array_t<bool, py::array::c_style | py::array::forcecast>::ensure(a);
  Mask mask;
  if constexpr (vector)
    mask.resize(b.shape(0));
  else
    mask.resize(b.shape(0), b.shape(1));
  std::copy(b.data(), b.data() + b.size(), mask.data());
  return mask;
}

inline TokenMask token_mask(const py::object& object, const char* argument = "mask") {
  return mask_argument<TokenMask>(object, argument);
}

inline ChoiceMask choice_mask(const py::object& object, const char* argument = "kept") {
  return mask_argument<ChoiceMask>(object, argument);
}

}  // namespace moe::python
