// The compiled component (CMake target moe::compiled): MoELayer<float> and MoELayer<double>
// instantiated once. Its headers declare these instantiations extern when MOE_COMPILED_LAYER is
// defined (moe::compiled defines it for whoever links it), so a translation unit that uses the
// layer compiles the layer's inline members only. Built in the project that links it, with that
// project's flags: the kernels' instruction set is the one this file is compiled for.
#include "moe/layer/moe_layer.hpp"

namespace moe {

template class MoELayer<float>;
template class MoELayer<double>;

}  // namespace moe
