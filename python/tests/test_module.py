"""The package itself: version, the error type, the dtype factories."""

import importlib
import inspect
import re

import numpy as np
import pytest

import moe_routing


def test_version_is_the_headers():
    header = open(__file__.rsplit("/python/", 1)[0] + "/include/moe/version.hpp").read()
    parts = [line.split()[2] for line in header.splitlines()
             if line.startswith("#define MOE_VERSION_")
             and line.split()[1][-5:] in ("MAJOR", "MINOR", "PATCH")]
    assert moe_routing.__version__ == ".".join(parts)


def test_error_is_a_value_error():
    assert issubclass(moe_routing.Error, ValueError)


def test_dtype_factories_pick_the_class_of_the_precision():
    assert moe_routing._core._dtype_classes  # the parts registered their classes
    config = moe_routing.RouterConfig(num_experts=4, hidden=8, top_k=2)
    for name in moe_routing._core._dtype_classes:
        factory = getattr(moe_routing, name)
        assert factory.__name__ == name and factory.__doc__
    assert type(moe_routing.Router(config)) is moe_routing.Router_float32
    assert type(moe_routing.Router(config, dtype=np.float64)) is moe_routing.Router_float64
    assert type(moe_routing.Router(config, dtype="float64")) is moe_routing.Router_float64
    for bad in (np.float16, np.int32, "bfloat16"):
        with pytest.raises(moe_routing.Error, match="^Router: dtype: expected float32 or float64"):
            moe_routing.Router(config, dtype=bad)


def test_submodules_import_by_name():
    assert importlib.import_module("moe_routing.presets") is moe_routing.presets
    assert importlib.import_module("moe_routing.aux_presets") is moe_routing.aux_presets


def _described(obj):
    """The docstring without pybind11's signature lines."""
    name = getattr(obj, "__name__", "")
    lines = [line.strip() for line in (obj.__doc__ or "").splitlines()]
    signature = re.compile(r"^(\d+\. )?" + re.escape(name) + r"\(")
    return [line for line in lines
            if line and not signature.match(line) and line != "Overloaded function."]


def _public(module, prefix=""):
    for name in dir(module):
        obj = getattr(module, name)
        if name.startswith("_") or (isinstance(obj, type) and issubclass(obj, BaseException)):
            continue
        if inspect.ismodule(obj):
            yield from _public(obj, prefix + name + ".")
        elif isinstance(obj, type):
            yield prefix + name, obj
            for member, value in vars(obj).items():
                if not member.startswith("_") and callable(value):
                    yield prefix + name + "." + member, value
        elif callable(obj):
            yield prefix + name, obj


def test_every_binding_says_what_it_does():
    undocumented = [name for name, obj in _public(moe_routing._core) if not _described(obj)]
    assert undocumented == []
