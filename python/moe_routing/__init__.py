"""moe_routing: the moe-routing C++ library from NumPy and PyTorch.

Arrays are float32 or float64; the dtype picks the precision. A C-contiguous array of that dtype is
read in place (a PyTorch CPU tensor passes through ``torch.from_numpy`` / ``.numpy()`` without a
copy); anything else is converted once. Bad input raises :class:`moe_routing.Error`, a
``ValueError`` carrying the library's message (the argument, what was expected, what was given).

Classes over a dtype exist as ``<Name>_float32`` and ``<Name>_float64``; ``<Name>(...,
dtype=numpy.float32)`` makes either.
"""

import sys as _sys

import numpy as _np

from . import _core
from ._core import *  # noqa: F401,F403
from ._core import Error, __version__  # noqa: F401


def _dtype_factory(name):
    classes = {
        _np.dtype(_np.float32): getattr(_core, name + "_float32"),
        _np.dtype(_np.float64): getattr(_core, name + "_float64"),
    }

    def make(*args, dtype=_np.float32, **kwargs):
        try:
            cls = classes[_np.dtype(dtype)]
        except (KeyError, TypeError):
            raise Error(f"{name}: dtype: expected float32 or float64, got {dtype!r}") from None
        return cls(*args, **kwargs)

    make.__name__ = make.__qualname__ = name
    make.__doc__ = (f"{name}(..., dtype=numpy.float32): a {name}_float32 or {name}_float64.\n\n"
                    + (classes[_np.dtype(_np.float32)].__init__.__doc__ or ""))
    return make


for _name in getattr(_core, "_dtype_classes", []):
    globals()[_name] = _dtype_factory(_name)

# The C++ submodules, importable by name too (import moe_routing.presets).
for _name in ("presets", "aux_presets"):
    if hasattr(_core, _name):
        _sys.modules[f"{__name__}.{_name}"] = getattr(_core, _name)
