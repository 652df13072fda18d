"""Shared fixtures of the moe_routing tests."""

import os
import re
import subprocess

import numpy as np
import pytest

import moe_routing


@pytest.fixture
def rng():
    return np.random.default_rng(20261207)


def exact_inputs(rows, cols, salt, dtype=np.float32):
    """The inputs golden/npy.hpp's exact_inputs makes, bit for bit: element (i, j) is
    ((i * 7919 + j * 104729 + salt * 13) % 2001 - 1000) / 256."""
    i = np.arange(rows, dtype=np.int64)[:, None]
    j = np.arange(cols, dtype=np.int64)[None, :]
    return (((i * 7919 + j * 104729 + salt * 13) % 2001 - 1000) / 256.0).astype(dtype)


_golden_dirs = {}


@pytest.fixture(scope="session")
def golden(tmp_path_factory):
    """golden(area) -> {name: array}: what the C++ program moe_python_golden writes for the area
    (tests/golden/<area>.cpp), run once per area."""

    def load(area):
        if area not in _golden_dirs:
            program = os.environ.get("MOE_PYTHON_GOLDEN")
            if not program:
                pytest.fail("MOE_PYTHON_GOLDEN is not set: run the tests with ctest "
                            "(ctest -R python)")
            out = tmp_path_factory.mktemp("golden_" + area)
            subprocess.run([program, area, str(out)], check=True)
            _golden_dirs[area] = {p[:-4]: np.load(out / p)
                                  for p in os.listdir(out) if p.endswith(".npy")}
        return _golden_dirs[area]

    return load


def assert_arrays_named(calls, rows):
    """Each (argument, shape, call) of `calls` refuses, as moe_routing.Error starting with the
    argument's name, a 1-D array of `rows` where `shape` is expected and an object that is no
    array."""
    for argument, shape, call in calls:
        expected = f"^{re.escape(argument)}: expected a {re.escape(shape)} float array, got "
        with pytest.raises(moe_routing.Error, match=expected + "1-D array$"):
            call(np.zeros(rows, np.float32))
        with pytest.raises(moe_routing.Error, match=expected + "str$"):
            call("not an array")
