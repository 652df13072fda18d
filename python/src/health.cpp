#include "bindings.hpp"

namespace moe::python {

void bind_health(py::module_& m) { (void)m; }

}  // namespace moe::python
