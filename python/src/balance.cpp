#include "bindings.hpp"

namespace moe::python {

void bind_balance(py::module_& m) { (void)m; }

}  // namespace moe::python
