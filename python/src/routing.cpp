#include "bindings.hpp"

namespace moe::python {

void bind_routing(py::module_& m) { (void)m; }

}  // namespace moe::python
