// What every part of the moe_routing extension shares: the array conventions, the views over the
// library's memory, and keyword construction of the configs.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include <pybind11/eigen.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "moe/moe.hpp"

namespace moe::python {

namespace py = pybind11;

/// The docstring sentence every function taking arrays carries.
inline constexpr const char* kArrayNote =
    "Arrays: float32 or float64. A function computes in its arrays' precision, a method of "
    "Router_float32, MoELayer_float64, ... in its class's; float32 and float64 mixed in one call "
    "are a TypeError, never a silent rounding. A C-contiguous array of the precision is read in "
    "place; anything else (Fortran order, strided, integers, a list) is converted once into a "
    "temporary copy.";

/// "_float32" / "_float64": the suffix of a class template's bound instantiation.
template <class S>
constexpr const char* dtype_suffix() {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>, "float or double");
  return std::is_same_v<S, float> ? "_float32" : "_float64";
}

/// `name` followed by the dtype suffix, e.g. "Router_float32".
template <class S>
std::string dtype_name(const char* name) {
  return std::string(name) + dtype_suffix<S>();
}

/// Records that `<name>_float32` and `<name>_float64` exist, so that the package makes a factory
/// `name(..., dtype=numpy.float32)` choosing between them (moe_routing/__init__.py).
inline void register_dtype_pair(py::module_& m, const char* name) {
  if (!py::hasattr(m, "_dtype_classes")) m.attr("_dtype_classes") = py::list();
  m.attr("_dtype_classes").cast<py::list>().append(name);
}

/// A writable row-major [rows, cols] NumPy view of `data`, which `owner` keeps alive: the array's
/// data pointer is the library's buffer, and writing to the array writes to it.
template <class S>
py::array_t<S> matrix_view(S* data, Index rows, Index cols, py::handle owner) {
  return py::array_t<S>({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)},
                        {static_cast<py::ssize_t>(cols * sizeof(S)), py::ssize_t(sizeof(S))}, data,
                        owner);
}

/// A writable [size] NumPy view of `data`, which `owner` keeps alive.
template <class S>
py::array_t<S> vector_view(S* data, Index size, py::handle owner) {
  return py::array_t<S>({static_cast<py::ssize_t>(size)}, {py::ssize_t(sizeof(S))}, data, owner);
}

/// `array` made read-only: a view of results that are the library's, not the caller's to edit.
template <class Array>
Array read_only(Array array) {
  array.attr("setflags")(py::arg("write") = false);
  return array;
}

/// An Eigen result handed to NumPy without a copy: the array owns the moved matrix.
template <class Matrix>
py::object to_numpy(Matrix&& matrix) {
  static_assert(!std::is_lvalue_reference_v<Matrix>, "pass an rvalue: the array takes ownership");
  return py::cast(std::forward<Matrix>(matrix), py::return_value_policy::move);
}

/// Whether `key` names a field of the bound class `type`: a property (what def_readwrite binds)
/// not starting with '_'. Methods (RouterConfig.groups_enabled) are not fields.
inline bool is_field(const py::handle& type, const std::string& key) {
  if (key.rfind('_', 0) == 0 || !py::hasattr(type, key.c_str())) return false;
  // getattr on the class gives the property object itself, not a value.
  return py::isinstance(type.attr(key.c_str()), py::module_::import("builtins").attr("property"));
}

/// `Config(**kwargs)`: every keyword names a field (the C++ field's name) and sets it; an unknown
/// keyword (a method's name included) is a TypeError naming it, as for a Python function. Fields
/// are bound first, with def_readwrite.
template <class Config, class Class>
void def_keyword_init(Class& cls) {
  cls.def(py::init([](const py::kwargs& kwargs) {
            auto config = std::make_unique<Config>();
            const py::object self = py::cast(config.get(), py::return_value_policy::reference);
            for (const auto& item : kwargs) {
              const auto key = item.first.cast<std::string>();
              if (!is_field(py::type::of(self), key))
                throw py::type_error(std::string(py::str(py::type::of(self).attr("__name__"))) +
                                     "() got an unexpected keyword argument '" + key + "'");
              py::setattr(self, key.c_str(), item.second);
            }
            return config;
          }),
          "Keyword arguments set the fields of the same names; the others keep their defaults.");
}

/// `repr(config)`: the type and every field bound with def_readwrite (properties not starting with
/// '_'), e.g. RouterConfig(num_experts=8, hidden=64, ...).
template <class Class>
void def_fields_repr(Class& cls) {
  cls.def("__repr__", [](const py::object& self) {
    const py::object type = py::type::of(self);
    std::string out = std::string(py::str(type.attr("__name__"))) + "(";
    bool first = true;
    // __dict__ is a mappingproxy: copied into a dict to be walked.
    for (const auto& name : py::dict(type.attr("__dict__"))) {
      const auto key = name.first.cast<std::string>();
      if (!is_field(type, key)) continue;
      out += (first ? "" : ", ") + key + "=" + std::string(py::repr(self.attr(key.c_str())));
      first = false;
    }
    return out + ")";
  });
}

// Each part of the library binds itself; module.cpp calls them in this order, because a later
// part's defaults use the earlier part's types (a layer config holds a RouterConfig and a
// HealthConfig).
void bind_routing(py::module_& m);   // routing.cpp: configs, presets, Router, select_experts
void bind_dispatch(py::module_& m);  // dispatch.cpp: capacity and dropless plans
void bind_balance(py::module_& m);   // balance.cpp: balancing losses, z-loss, BiasBalancer
void bind_health(py::module_& m);    // health.cpp: health_report, HealthMonitor and its exports
void bind_layer(py::module_& m);     // layer.cpp: MoELayer

}  // namespace moe::python
