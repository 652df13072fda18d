#include "bindings.hpp"

namespace moe::python {

void bind_dispatch(py::module_& m) { (void)m; }

}  // namespace moe::python
