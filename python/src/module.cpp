// The moe_routing extension module: moe::Error becomes moe_routing.Error (a ValueError), then each
// part of the library binds itself (bindings.hpp gives the order).
#include "bindings.hpp"

PYBIND11_MODULE(_core, m) {
  namespace py = pybind11;
  m.doc() = "moe-routing: Mixture-of-Experts routing, dispatch, balancing and health (C++ core).";
  m.attr("__version__") = std::to_string(MOE_VERSION_MAJOR) + "." +
                          std::to_string(MOE_VERSION_MINOR) + "." +
                          std::to_string(MOE_VERSION_PATCH);
  py::register_exception<moe::Error>(m, "Error", PyExc_ValueError);
  moe::python::bind_routing(m);
  moe::python::bind_dispatch(m);
  moe::python::bind_balance(m);
  moe::python::bind_health(m);
  moe::python::bind_layer(m);
}
