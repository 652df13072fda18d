#include "bindings.hpp"

namespace moe::python {

void bind_layer(py::module_& m) { (void)m; }

}  // namespace moe::python
