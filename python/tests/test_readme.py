"""Every ```python block of README.md runs as written (in a fresh namespace, in an empty directory),
so a block that stops working fails the tests, as the C++ blocks do (examples/readme/)."""

import os
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = README.read_text().count("\n", 0, README.read_text().index(BLOCKS[index]))
    code = compile("\n" * line + BLOCKS[index], str(README), "exec")  # tracebacks name README lines
    exec(code, {"__name__": f"readme_block_{index}"})
    assert os.getcwd() == str(tmp_path)
