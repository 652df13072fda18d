"""The package itself: version, the error type, the dtype factories."""

import numpy as np
import pytest

import moe_routing


def test_version_is_the_headers():
    header = open(__file__.rsplit("/python/", 1)[0] + "/include/moe/version.hpp").read()
    parts = [line.split()[2] for line in header.splitlines()
             if line.startswith("#define MOE_VERSION_") and line.split()[1][-5:] in ("MAJOR", "MINOR", "PATCH")]
    assert moe_routing.__version__ == ".".join(parts)


def test_error_is_a_value_error():
    assert issubclass(moe_routing.Error, ValueError)
