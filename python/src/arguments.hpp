// Argument conversions the dispatch and balance parts share: float arrays whose precision never
// changes on the way in, integer arrays (expert ids, offsets, counts) range-checked before they
// are narrowed, and boolean padding masks. Failures are moe::Error naming the argument.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "bindings.hpp"

namespace moe::python {

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
  using Scalar = typename R::Scalar;
  using Other = std::conditional_t<std::is_same_v<Scalar, float>, double, float>;

  static constexpr auto name = make_caster<R>::name;

  bool load(handle src, bool convert) {
    if (isinstance<array>(src)) {
      const dtype type = reinterpret_borrow<array>(src).dtype();
      if (type.kind() == 'f' && type.itemsize() == static_cast<ssize_t>(sizeof(Other)))
        return false;
    }
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

/// `object` as a C-contiguous array of the integer type Int with `ndim` dimensions. Int arrays are
/// taken as they are; other integer dtypes (and lists) are converted after checking that every
/// value fits Int, so an int64 id past 2^31 is refused rather than wrapped. `shape` describes the
/// expected array in the message, e.g. "[T, k]".
template <class Int>
py::array_t<Int, py::array::c_style> integer_array(const py::handle& object, const char* argument,
                                                   int ndim, const char* shape) {
  const std::string expected = detail::concat("a ", shape, " integer array");
  py::array a = py::array::ensure(object);
  if (!a)
    detail::fail(argument, expected, std::string(py::str(py::type::of(object).attr("__name__"))));
  if (a.ndim() != ndim) detail::fail(argument, expected, detail::concat(a.ndim(), "-D array"));
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

  Eigen::Map<const ExpertIdMatrix> map() const {
    return {array_.data(), static_cast<Index>(array_.shape(0)),
            static_cast<Index>(array_.shape(1))};
  }
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
  py::array a = py::array::ensure(object);
  if (!a)
    detail::fail(argument, expected, std::string(py::str(py::type::of(object).attr("__name__"))));
  if (a.ndim() != (vector ? 1 : 2))
    detail::fail(argument, expected, detail::concat(a.ndim(), "-D array"));
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
